//! Format 2's content-defined chunking (issue 18): where a file's bytes are
//! cut into chunks, and the ids chunks are stored under.
//!
//! The cut points are FastCDC 2020's (the `fastcdc` crate, pinned to one
//! version in the workspace), with restic's sizes (512 KiB .. 1 MiB average
//! .. 8 MiB): an edit moves only the boundaries near it, so the chunks of
//! the rest of a file are found again in the next backup. They are part of
//! the format: a change of version or parameter that moves them would make
//! every stored chunk unmatchable, so [`tests::cut_points_are_golden`] pins
//! them.
//!
//! In an encrypted store both are keyed by the store's [`DedupKey`] (which
//! agents hold; it opens no backup): chunk ids are HMAC-SHA256 instead of
//! SHA-256, so equal content is not recognisable from outside, and the gear
//! table is seeded from it, so chunk sizes do not fingerprint known files
//! either (restic's and borg's plain content hashes and unseeded cut
//! points allow both).

use std::fmt;
use std::io::{self, Read};

use fastcdc::v2020::{Normalization, StreamCDC};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The smallest chunk, but for a file's last.
pub const MIN_CHUNK: usize = 512 * 1024;
/// The size chunks are cut around.
pub const AVG_CHUNK: usize = 1024 * 1024;
/// The largest chunk.
pub const MAX_CHUNK: usize = 8 * 1024 * 1024;

/// A store's secret for chunking: keys the chunk ids and seeds the cut
/// points. Its `Debug` does not show it.
#[derive(Clone)]
pub struct DedupKey([u8; 32]);

impl fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DedupKey(***)")
    }
}

impl DedupKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The key of these bytes (as stored).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The bytes to store (encrypted, beside the store's keys).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("any key length")
    }

    /// The gear table's seed: derived, so that the seed says nothing of
    /// the key that makes the ids.
    fn seed(&self) -> u64 {
        let mut mac = self.mac();
        mac.update(b"hop3 format 2 cut-point seed");
        let tag = mac.finalize().into_bytes();
        u64::from_le_bytes(tag[..8].try_into().expect("8 bytes"))
    }
}

/// The id a chunk is stored under: the SHA-256 of its bytes, or their
/// HMAC-SHA256 under the store's [`DedupKey`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`, keyed when the store is.
    pub fn of(data: &[u8], key: Option<&DedupKey>) -> Self {
        let bytes: [u8; 32] = match key {
            None => Sha256::digest(data).into(),
            Some(k) => {
                let mut mac = k.mac();
                mac.update(data);
                mac.finalize().into_bytes().into()
            }
        };
        Self(bytes)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// One chunk of a stream: where it starts, its bytes, its id.
#[derive(Debug)]
pub struct Chunk {
    pub offset: u64,
    pub data: Vec<u8>,
    pub id: ChunkId,
}

/// Cuts streams into chunks, keyed by `key` when the store is encrypted.
#[derive(Clone, Debug, Default)]
pub struct Chunker {
    key: Option<DedupKey>,
}

impl Chunker {
    /// A chunker for a store whose chunks are keyed by `key` (none: plain).
    pub fn new(key: Option<DedupKey>) -> Self {
        Self { key }
    }

    /// The chunks of `source`, read on the caller's (blocking) thread; at
    /// most [`MAX_CHUNK`] bytes of it are held at a time.
    pub fn chunks<R: Read>(&self, source: R) -> impl Iterator<Item = io::Result<Chunk>> + use<R> {
        let seed = self.key.as_ref().map_or(0, DedupKey::seed);
        let key = self.key.clone();
        StreamCDC::with_level_and_seed(
            source,
            MIN_CHUNK,
            AVG_CHUNK,
            MAX_CHUNK,
            Normalization::Level1,
            seed,
        )
        .map(move |c| {
            let c = c.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(e) => e,
                other => io::Error::other(other.to_string()),
            })?;
            Ok(Chunk {
                offset: c.offset,
                id: ChunkId::of(&c.data, key.as_ref()),
                data: c.data,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 24 MiB of reproducible, incompressible bytes (xorshift64*).
    fn sample() -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..24 << 20)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    fn cuts(chunker: &Chunker, data: &[u8]) -> Vec<u64> {
        chunker.chunks(data).map(|c| c.unwrap().offset).collect()
    }

    /// The format's cut points for the sample, plain and keyed: if this
    /// fails, a dependency or parameter change moved them, and every chunk
    /// stored before would stop matching. Do not update the numbers;
    /// restore what moved them.
    #[test]
    fn cut_points_are_golden() {
        let data = sample();
        assert_eq!(cuts(&Chunker::new(None), &data), GOLDEN_PLAIN);
        let key = DedupKey::from_bytes([7; 32]);
        assert_eq!(cuts(&Chunker::new(Some(key)), &data), GOLDEN_KEYED);
    }

    const GOLDEN_PLAIN: &[u64] = &[
        0, 1828660, 3005258, 4312547, 6538258, 7786590, 8591424, 9117745, 10802954, 12351189,
        13461949, 15255227, 16421856, 17606647, 19059799, 19616639, 20764480, 21896605, 23682675,
    ];
    const GOLDEN_KEYED: &[u64] = &[
        0, 1706107, 2455132, 4665853, 5431440, 6059970, 6908007, 8275580, 9432314, 11871352,
        13414910, 14369091, 15751402, 17065492, 18752729, 19498021, 20400228, 21678823, 23119819,
        24311139,
    ];

    #[test]
    fn chunks_are_within_bounds_and_make_up_the_stream() {
        let data = sample();
        let mut joined = Vec::new();
        let chunks: Vec<Chunk> = Chunker::new(None)
            .chunks(&data[..])
            .map(Result::unwrap)
            .collect();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset as usize, joined.len());
            let last = i + 1 == chunks.len();
            assert!(c.data.len() <= MAX_CHUNK);
            assert!(
                last || c.data.len() >= MIN_CHUNK,
                "chunk {i}: {}",
                c.data.len()
            );
            assert_eq!(c.id, ChunkId::of(&c.data, None));
            joined.extend_from_slice(&c.data);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn an_insertion_moves_only_the_boundaries_near_it() {
        let data = sample();
        let mut edited = data.clone();
        edited.splice(10 << 20..10 << 20, *b"a few bytes inserted in the middle");
        let ids = |d: &[u8]| -> Vec<ChunkId> {
            Chunker::new(None)
                .chunks(d)
                .map(|c| c.unwrap().id)
                .collect()
        };
        let (before, after) = (ids(&data), ids(&edited));
        let kept = after.iter().filter(|id| before.contains(id)).count();
        assert!(
            kept + 2 >= before.len(),
            "{kept} of {} chunks found again",
            before.len()
        );
    }

    #[test]
    fn a_keyed_store_cuts_and_names_chunks_its_own_way() {
        let data = sample();
        let plain = Chunker::new(None);
        let (a, b) = (
            Chunker::new(Some(DedupKey::from_bytes([1; 32]))),
            Chunker::new(Some(DedupKey::from_bytes([2; 32]))),
        );
        assert_ne!(cuts(&a, &data), cuts(&plain, &data));
        assert_ne!(cuts(&a, &data), cuts(&b, &data));
        let id = |c: &Chunker| c.chunks(&data[..]).next().unwrap().unwrap().id;
        assert_ne!(id(&a), ChunkId::of(&data[..MIN_CHUNK], None));
        assert_eq!(
            format!("{:?}", DedupKey::from_bytes([1; 32])),
            "DedupKey(***)"
        );
    }
}
