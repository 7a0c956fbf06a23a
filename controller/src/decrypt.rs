//! Opening encrypted backups for a restore: the manifest's encrypted
//! section, and each artifact as a stream of plaintext. Decryption happens
//! here, on the controller, so that an identity never goes to a host.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hop3_proto::manifest::{Manifest, ManifestError, Plaintexts};
use hop3_wire::encryption::{EncryptionError, Identities};
use tokio::io::AsyncRead;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::{ControllerError, Result};
use crate::store::ByteStream;

/// Plaintext read at a time: a few age chunks, few channel sends per MiB.
const PLAIN_READ: usize = 256 * 1024;

/// Decrypted blocks in flight between the decrypting thread and the sender.
const BLOCKS_IN_FLIGHT: usize = 4;

/// The manifest as the agent must see it (plain paths, plaintext digests),
/// when the backup is encrypted; None when it is not.
pub fn open_manifest(identities: &Identities, manifest: &Manifest) -> Result<Option<Manifest>> {
    match open_plaintexts(identities, manifest)? {
        None => Ok(None),
        Some(plain) => Ok(Some(manifest.opened(&plain)?)),
    }
}

/// The manifest's encrypted section, opened: the plaintext digests of its
/// encrypted artifacts; None when the backup is not encrypted.
pub fn open_plaintexts(identities: &Identities, manifest: &Manifest) -> Result<Option<Plaintexts>> {
    let Some(section) = &manifest.encrypted else {
        return Ok(None);
    };
    let keys = section.keys.join(", ");
    let needed = || ControllerError::IdentityNeeded {
        id: manifest.backup_id.clone(),
        keys: keys.clone(),
        which: if section.keys.len() > 1 {
            "any of them"
        } else {
            "it"
        },
    };
    if identities.is_empty() {
        return Err(needed());
    }
    let json = identities
        .open_armored(&section.payload, &keys)
        .map_err(|e| match e {
            EncryptionError::NoMatchingIdentity { .. } => needed(),
            other => ControllerError::Decryption {
                path: "the encrypted section of metadata.json".into(),
                detail: other.to_string(),
            },
        })?;
    let plain: Plaintexts = serde_json::from_slice(&json)
        .map_err(|e| ManifestError::BadEncryptedSection(e.to_string()))?;
    Ok(Some(plain))
}

/// Why an artifact's bytes did not decrypt: carried inside the
/// [`io::Error`] the reader returns, so that the sender can tell it from a
/// store's read error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Undecryptable(pub String);

/// The store's side of a decryption: keeps the store's read error, so that
/// it is reported as the store's and not taken for damage (age passes it
/// up as its own read error).
struct Watched<R> {
    inner: R,
    failed: Arc<Mutex<Option<io::Error>>>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            *self.failed.lock().expect("not poisoned") =
                Some(io::Error::new(e.kind(), e.to_string()));
        })
    }
}

/// The plaintext of the age file `stream` holds, decrypted on a blocking
/// thread. Damage shows as a read error wrapping [`Undecryptable`]; the
/// store's own read errors as they are.
pub fn plaintext(
    stream: ByteStream,
    identities: Arc<Identities>,
    keys: String,
) -> impl AsyncRead + Unpin + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(BLOCKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let failed = Arc::new(Mutex::new(None));
        let watched = Watched {
            inner: SyncIoBridge::new(StreamReader::new(stream)),
            failed: failed.clone(),
        };
        let error = |e: &dyn std::fmt::Display| match failed.lock().expect("not poisoned").take() {
            Some(store) => store,
            None => io::Error::other(Undecryptable(e.to_string())),
        };
        let input = io::BufReader::with_capacity(PLAIN_READ, watched);
        let mut reader = match identities.open(input, &keys) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(error(&e)));
                return;
            }
        };
        loop {
            // Whole blocks: age hands out 64 KiB at a time.
            let mut buf = vec![0u8; PLAIN_READ];
            let mut filled = 0;
            while filled < PLAIN_READ {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(error(&e)));
                        return;
                    }
                }
            }
            if filled == 0 {
                return;
            }
            buf.truncate(filled);
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                // The sender stopped: the restore ended.
                return;
            }
        }
    });
    StreamReader::new(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use hop3_wire::encryption::Recipients;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    fn sealed(plain: &[u8]) -> (Arc<Identities>, Vec<u8>) {
        let id = Identities::generate();
        let text = Identities::file_text(&id, "now");
        let recipients = Recipients::parse(&[id.to_public().to_string()]).unwrap();
        let mut w = recipients.encrypt_into(Vec::new()).unwrap();
        w.write_all(plain).unwrap();
        let (bytes, _) = w.finish().unwrap();
        (Arc::new(Identities::from_file_text(&text).unwrap()), bytes)
    }

    async fn read_all(stream: ByteStream, ids: Arc<Identities>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        plaintext(stream, ids, "k".into())
            .read_to_end(&mut out)
            .await
            .map(|_| out)
    }

    #[tokio::test]
    async fn damage_is_undecryptable_and_a_store_error_stays_the_stores() {
        let plain = vec![5u8; 300_000];
        let (ids, bytes) = sealed(&plain);
        let whole = futures::stream::iter([Ok(Bytes::from(bytes.clone()))]).boxed();
        assert_eq!(read_all(whole, ids.clone()).await.unwrap(), plain);

        let mut flipped = bytes.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 1;
        let damaged = futures::stream::iter([Ok(Bytes::from(flipped))]).boxed();
        let err = read_all(damaged, ids.clone()).await.unwrap_err();
        assert!(
            err.get_ref().is_some_and(|e| e.is::<Undecryptable>()),
            "{err:?}"
        );

        let half = Bytes::from(bytes[..bytes.len() / 2].to_vec());
        let cut = futures::stream::iter([
            Ok(half),
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the bucket went away",
            )),
        ])
        .boxed();
        let err = read_all(cut, ids).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err:?}");
        assert!(err.to_string().contains("the bucket went away"), "{err}");
    }
}
