//! Format 2's pack objects (issue 18): many chunks in one stored object of
//! ~16-32 MiB, so that a backup is a few large writes and a restore a few
//! large ranged reads, whatever the number of files.
//!
//! ```text
//! "hop3pk2\n" | blob | blob | ... | index (JSON) | index length (u32 LE) | "hpk2"
//! ```
//!
//! A blob is one chunk compressed with zstd and, in an encrypted store, then
//! encrypted as a standard age file of its own, so that any one blob can be
//! read with a ranged read and opened alone (`age -d` opens it, `zstd -d`
//! after). The index lists each blob's chunk id, offset and stored length,
//! in the clear: the controller garbage-collects packs without an identity,
//! and the ids of an encrypted store are keyed (see
//! [`crate::chunking::DedupKey`]), its chunk sizes seeded; a blob's
//! plaintext length is only inside it.

use std::io::{self, Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chunking::{ChunkId, DedupKey};
use crate::encryption::{EncryptionError, Identities, Recipients};

/// The first bytes of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"hop3pk2\n";

/// The last bytes of every pack, after the index's length.
const TRAILER_MAGIC: &[u8; 4] = b"hpk2";

/// A pack is closed once it holds this much.
pub const PACK_TARGET: usize = 16 << 20;

/// The largest index read: a pack of 8 MiB chunks that did not compress
/// holds few, one of small chunks some thousands.
const MAX_INDEX: usize = 4 << 20;

/// zstd's level for chunks: its fast default.
const LEVEL: i32 = 3;

/// Why a pack or one of its blobs cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("not a pack: {0}")]
    NotAPack(&'static str),
    #[error("the pack's index is not valid: {0}")]
    BadIndex(String),
    #[error("blob {id}: {detail}")]
    BadBlob { id: ChunkId, detail: String },
    #[error("blob {0}: it is encrypted and no identity was given")]
    IdentityNeeded(ChunkId),
    #[error(transparent)]
    Encryption(#[from] EncryptionError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One blob of a pack, as its index lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    #[serde(with = "hex_id")]
    pub id: ChunkId,
    /// From the start of the pack.
    pub offset: u64,
    /// Stored bytes.
    pub length: u32,
}

mod hex_id {
    use super::ChunkId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &ChunkId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChunkId, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a chunk id is 32 bytes"))?;
        Ok(ChunkId(bytes))
    }
}

/// A pack's name: the SHA-256 of its bytes, so that a copy or a listing
/// checks it without reading an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackId(pub [u8; 32]);

impl std::fmt::Display for PackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A finished pack: its bytes, its id, what it holds.
#[derive(Debug)]
pub struct Pack {
    pub bytes: Vec<u8>,
    pub id: PackId,
    pub blobs: Vec<BlobEntry>,
}

/// Fills one pack with chunks.
pub struct PackWriter {
    out: Vec<u8>,
    blobs: Vec<BlobEntry>,
    recipients: Option<Arc<Recipients>>,
}

impl PackWriter {
    /// An empty pack; its blobs are encrypted to `recipients` when given.
    pub fn new(recipients: Option<Arc<Recipients>>) -> Self {
        let mut out = Vec::with_capacity(PACK_TARGET + (1 << 20));
        out.extend_from_slice(PACK_MAGIC);
        Self {
            out,
            blobs: Vec::new(),
            recipients,
        }
    }

    /// Compresses (and encrypts) chunk `data`, whose id is `id`, into the pack.
    pub fn add(&mut self, id: ChunkId, data: &[u8]) -> io::Result<()> {
        let offset = self.out.len() as u64;
        let compressed = zstd::bulk::compress(data, LEVEL)?;
        match &self.recipients {
            None => self.out.extend_from_slice(&compressed),
            Some(r) => {
                let mut w = r.encrypt_into(&mut self.out).map_err(io::Error::other)?;
                w.write_all(&compressed)?;
                w.finish()?;
            }
        }
        let length = u32::try_from(self.out.len() as u64 - offset)
            .map_err(|_| io::Error::other("a blob of 4 GiB or more"))?;
        self.blobs.push(BlobEntry { id, offset, length });
        Ok(())
    }

    /// Bytes so far: a caller closes the pack from [`PACK_TARGET`] on.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Writes the index and the trailer.
    pub fn finish(mut self) -> Pack {
        let index = serde_json::to_vec(&self.blobs).expect("an index serialises");
        self.out.extend_from_slice(&index);
        self.out
            .extend_from_slice(&(index.len() as u32).to_le_bytes());
        self.out.extend_from_slice(TRAILER_MAGIC);
        let id = PackId(Sha256::digest(&self.out).into());
        Pack {
            bytes: self.out,
            id,
            blobs: self.blobs,
        }
    }
}

/// How many bytes from a pack's end hold its index's length and trailer.
pub const TRAILER_LEN: usize = 8;

/// The length of the index that ends `tail` (a pack's last
/// [`TRAILER_LEN`] bytes or more): what to read before [`read_index`].
pub fn index_len(tail: &[u8]) -> Result<usize, PackError> {
    let t = tail
        .len()
        .checked_sub(TRAILER_LEN)
        .map(|at| &tail[at..])
        .ok_or(PackError::NotAPack("shorter than its trailer"))?;
    if &t[4..] != TRAILER_MAGIC {
        return Err(PackError::NotAPack("no trailer"));
    }
    let len = u32::from_le_bytes(t[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_INDEX {
        return Err(PackError::BadIndex(format!("{len} bytes")));
    }
    Ok(len)
}

/// The index at the end of `tail` (the pack's last `index_len +
/// TRAILER_LEN` bytes or more), `pack_len` being the whole pack's size:
/// every blob lies between the magic and the index, none overlapping.
pub fn read_index(tail: &[u8], pack_len: u64) -> Result<Vec<BlobEntry>, PackError> {
    let len = index_len(tail)?;
    let end = tail.len() - TRAILER_LEN;
    let start = end
        .checked_sub(len)
        .ok_or(PackError::NotAPack("shorter than its index"))?;
    let blobs: Vec<BlobEntry> = serde_json::from_slice(&tail[start..end])
        .map_err(|e| PackError::BadIndex(e.to_string()))?;
    let index_at = pack_len
        .checked_sub((len + TRAILER_LEN) as u64)
        .ok_or(PackError::NotAPack("shorter than its index"))?;
    let mut at = PACK_MAGIC.len() as u64;
    for b in &blobs {
        if b.offset < at || b.offset + u64::from(b.length) > index_at {
            return Err(PackError::BadIndex(format!(
                "blob {} at {}..{} is outside the blobs or overlaps another",
                b.id,
                b.offset,
                b.offset + u64::from(b.length)
            )));
        }
        at = b.offset + u64::from(b.length);
    }
    Ok(blobs)
}

/// The chunk stored as `blob` (its stored bytes, as `entry` lists them):
/// decrypted with `identities` when it is an age file, decompressed, and
/// checked against its id (keyed with `key` in an encrypted store). At
/// most `max_plain` bytes are decompressed.
pub fn open_blob(
    blob: &[u8],
    entry: &BlobEntry,
    identities: Option<&Identities>,
    key: Option<&DedupKey>,
    max_plain: usize,
) -> Result<Vec<u8>, PackError> {
    let bad = |detail: String| PackError::BadBlob {
        id: entry.id,
        detail,
    };
    if blob.len() != entry.length as usize {
        return Err(bad(format!(
            "{} bytes, the index says {}",
            blob.len(),
            entry.length
        )));
    }
    let compressed = if crate::encryption::is_encrypted_file(blob) {
        let ids = identities.ok_or(PackError::IdentityNeeded(entry.id))?;
        let mut plain = Vec::new();
        ids.open(io::BufReader::new(blob), "the store's keys")?
            .read_to_end(&mut plain)
            .map_err(|e| bad(format!("it does not decrypt: {e}")))?;
        plain
    } else {
        blob.to_vec()
    };
    let data = zstd::bulk::decompress(&compressed, max_plain)
        .map_err(|e| bad(format!("it does not decompress: {e}")))?;
    if ChunkId::of(&data, key) != entry.id {
        return Err(bad("its bytes are not the chunk it names".into()));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::{Chunker, MAX_CHUNK};

    fn chunks(n: usize) -> Vec<(ChunkId, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let data: Vec<u8> = (0..100_000 + i * 7_919)
                    .map(|j| (j * (i + 3) % 251) as u8)
                    .collect();
                (ChunkId::of(&data, None), data)
            })
            .collect()
    }

    fn slice<'a>(pack: &'a Pack, e: &BlobEntry) -> &'a [u8] {
        &pack.bytes[e.offset as usize..(e.offset + u64::from(e.length)) as usize]
    }

    #[test]
    fn a_plain_pack_holds_its_chunks_and_lists_them() {
        let all = chunks(5);
        let mut w = PackWriter::new(None);
        for (id, data) in &all {
            w.add(*id, data).unwrap();
        }
        let pack = w.finish();
        assert!(pack.bytes.starts_with(PACK_MAGIC));
        assert_eq!(pack.id, PackId(Sha256::digest(&pack.bytes).into()));
        let index = read_index(&pack.bytes, pack.bytes.len() as u64).unwrap();
        assert_eq!(index, pack.blobs);
        for ((id, data), e) in all.iter().zip(&index) {
            assert_eq!(e.id, *id);
            let back = open_blob(slice(&pack, e), e, None, None, MAX_CHUNK).unwrap();
            assert_eq!(&back, data);
        }
        // Only the tail is needed for the index.
        let tail_len = index_len(&pack.bytes).unwrap() + TRAILER_LEN;
        let tail = &pack.bytes[pack.bytes.len() - tail_len..];
        assert_eq!(read_index(tail, pack.bytes.len() as u64).unwrap(), index);
    }

    #[test]
    fn an_encrypted_pack_opens_only_with_an_identity_and_hides_its_chunks() {
        let identity = Identities::generate();
        let text = Identities::file_text(&identity, "now");
        let ids = Identities::from_file_text(&text).unwrap();
        let to = Arc::new(Recipients::parse(&[identity.to_public().to_string()]).unwrap());
        let key = DedupKey::from_bytes([9; 32]);
        let data: Vec<u8> = b"a secret row, ".repeat(50_000);
        let chunk = Chunker::new(Some(key.clone()))
            .chunks(&data[..])
            .next()
            .unwrap()
            .unwrap();
        let mut w = PackWriter::new(Some(to));
        w.add(chunk.id, &chunk.data).unwrap();
        let pack = w.finish();
        let e = &pack.blobs[0];
        assert!(!pack.bytes.windows(12).any(|w| w == b"a secret row"));
        assert!(matches!(
            open_blob(slice(&pack, e), e, None, Some(&key), MAX_CHUNK),
            Err(PackError::IdentityNeeded(_))
        ));
        let back = open_blob(slice(&pack, e), e, Some(&ids), Some(&key), MAX_CHUNK).unwrap();
        assert_eq!(back, chunk.data);
        // Checked against the keyed id: the plain digest is not it.
        assert!(open_blob(slice(&pack, e), e, Some(&ids), None, MAX_CHUNK).is_err());
    }

    #[test]
    fn damage_is_found_and_named() {
        let all = chunks(3);
        let mut w = PackWriter::new(None);
        for (id, data) in &all {
            w.add(*id, data).unwrap();
        }
        let pack = w.finish();
        let e = pack.blobs[1];
        let mut blob = slice(&pack, &e).to_vec();
        let at = blob.len() / 2;
        blob[at] ^= 0x20;
        let err = open_blob(&blob, &e, None, None, MAX_CHUNK).unwrap_err();
        assert!(err.to_string().contains(&e.id.to_string()), "{err}");
        // A bomb is cut off at the limit given.
        assert!(open_blob(slice(&pack, &e), &e, None, None, 1024).is_err());
        // Indexes that point outside the blobs, or trailers that lie.
        let mut overlapping = pack.blobs.clone();
        overlapping[1].offset -= 1;
        let mut forged =
            pack.bytes[..pack.bytes.len() - TRAILER_LEN - index_len(&pack.bytes).unwrap()].to_vec();
        let index = serde_json::to_vec(&overlapping).unwrap();
        forged.extend_from_slice(&index);
        forged.extend_from_slice(&(index.len() as u32).to_le_bytes());
        forged.extend_from_slice(TRAILER_MAGIC);
        assert!(matches!(
            read_index(&forged, forged.len() as u64),
            Err(PackError::BadIndex(_))
        ));
        assert!(matches!(
            read_index(
                &pack.bytes[..pack.bytes.len() - 1],
                pack.bytes.len() as u64 - 1
            ),
            Err(PackError::NotAPack(_))
        ));
        assert!(index_len(b"hpk2").is_err());
    }
}
