//! The controller's seal on the backups it made: an HMAC-SHA256 over each
//! backup's `metadata.json` as stored, with a key only the controller holds
//! (`STORE/seal.key`, 0600, never inside a backup directory). Since
//! metadata.json lists the SHA-256 of every artifact, the seal vouches for
//! the whole backup. A directory imported or copied in by hand carries no
//! seal of this key, and is restored only when the operator says so.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::AsyncWriteExt;

/// The seal's file, beside metadata.json.
pub const SEAL_FILE: &str = "metadata.seal";

/// The key's file in the store.
pub const KEY_FILE: &str = "seal.key";

const PREFIX: &str = "hmac-sha256:";

/// The sealing key. Its `Debug` does not show it.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(***)")
    }
}

impl SealKey {
    /// The store's key, made when there is none; also says whether it was
    /// just made.
    pub async fn load_or_create(store: &Path) -> std::io::Result<(Self, bool)> {
        let path = store.join(KEY_FILE);
        match tokio::fs::read(&path).await {
            Ok(text) => {
                let key = hex::decode(String::from_utf8_lossy(&text).trim())
                    .ok()
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{} is not a seal key", path.display()),
                        )
                    })?;
                Ok((Self(key), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                let mut f = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .await?;
                f.write_all(format!("{}\n", hex::encode(key)).as_bytes())
                    .await?;
                f.sync_all().await?;
                Ok((Self(key), true))
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, manifest: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(manifest);
        mac
    }

    /// The seal of the bytes of a metadata.json.
    pub fn seal(&self, manifest: &[u8]) -> String {
        format!(
            "{PREFIX}{}\n",
            hex::encode(self.mac(manifest).finalize().into_bytes())
        )
    }

    /// One seal that holds for either of two metadata.json: written while a
    /// rewrite replaces one with the other, so that a stop between the
    /// manifest's write and the seal's leaves a sealed backup.
    pub fn seal_either(&self, old: &[u8], new: &[u8]) -> String {
        format!("{}{}", self.seal(old), self.seal(new))
    }

    /// Whether `seal` (any of its lines) is this key's seal of `manifest`
    /// (in constant time).
    pub fn verify(&self, manifest: &[u8], seal: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(seal) else {
            return false;
        };
        text.lines().any(|line| {
            line.trim()
                .strip_prefix(PREFIX)
                .and_then(|h| hex::decode(h).ok())
                .is_some_and(|tag| self.mac(manifest).verify_slice(&tag).is_ok())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_seal_holds_for_its_bytes_and_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let (key, made) = SealKey::load_or_create(dir.path()).await.unwrap();
        assert!(made);
        let (again, made) = SealKey::load_or_create(dir.path()).await.unwrap();
        assert!(!made);
        let seal = key.seal(b"{\"a\":1}");
        assert!(again.verify(b"{\"a\":1}", seal.as_bytes()));
        assert!(!again.verify(b"{\"a\":2}", seal.as_bytes()));
        let other = tempfile::tempdir().unwrap();
        let (stranger, _) = SealKey::load_or_create(other.path()).await.unwrap();
        assert!(!stranger.verify(b"{\"a\":1}", seal.as_bytes()));
        assert!(!key.verify(b"{\"a\":1}", b"hmac-sha256:00"));
        let either = key.seal_either(b"{\"a\":1}", b"{\"a\":2}");
        assert!(key.verify(b"{\"a\":1}", either.as_bytes()));
        assert!(key.verify(b"{\"a\":2}", either.as_bytes()));
        assert!(!key.verify(b"{\"a\":3}", either.as_bytes()));
        assert!(!stranger.verify(b"{\"a\":2}", either.as_bytes()));
    }
}
