//! Opening encrypted backups for a restore: the manifest's encrypted
//! section, and each artifact as a stream of plaintext. Decryption happens
//! here, on the controller, so that an identity never goes to a host.

use std::io::{self, Read};
use std::sync::Arc;

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
    Ok(Some(manifest.opened(&plain)?))
}

/// Why an artifact's bytes did not decrypt: carried inside the
/// [`io::Error`] the reader returns, so that the sender can tell it from a
/// store's read error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Undecryptable(pub String);

/// The plaintext of the age file `stream` holds, decrypted on a blocking
/// thread. Damage shows as a read error wrapping [`Undecryptable`].
pub fn plaintext(
    stream: ByteStream,
    identities: Arc<Identities>,
    keys: String,
) -> impl AsyncRead + Unpin + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(BLOCKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let input =
            io::BufReader::with_capacity(PLAIN_READ, SyncIoBridge::new(StreamReader::new(stream)));
        let mut reader = match identities.open(input, &keys) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(io::Error::other(Undecryptable(e.to_string()))));
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
                        let _ =
                            tx.blocking_send(Err(io::Error::other(Undecryptable(e.to_string()))));
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
