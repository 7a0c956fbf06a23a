//! Rewriting a complete backup in place (`keys retire`): new artifacts under
//! new paths, then the manifest switched, then what it no longer names
//! removed. A stop at any step leaves the old backup or the new one, each
//! whole and sealed; what the stop left over is removed by the next
//! [`Store::tidy`].

use std::sync::Arc;

use hop3_proto::format::ENCRYPTED_SUFFIX;
use hop3_proto::manifest::{MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest};

use super::{ArtifactWriter, Backend, BackupKey, PartialBackup, Result, Store, StoreError};
use crate::seal::SEAL_FILE;

/// A complete backup being rewritten: new artifacts, then a new manifest.
pub struct Rewrite {
    partial: PartialBackup,
    /// The manifest's bytes as stored when the rewrite began.
    previous: Vec<u8>,
    backend: Arc<dyn Backend>,
    key: BackupKey,
}

impl Store {
    /// Starts rewriting backup `id` of `app`, which must carry this
    /// controller's seal (a rewrite seals it anew, and must not vouch for
    /// what it did not make); returns its manifest as stored now.
    pub async fn rewrite(&self, app: &str, id: &str) -> Result<(Manifest, Rewrite)> {
        let key = BackupKey::new(app, id);
        let previous = self
            .backend
            .read_small(&key, MANIFEST_FILE, MAX_MANIFEST_BYTES)
            .await
            .map_err(StoreError::io("reading metadata.json"))?;
        let seal = self
            .backend
            .read_small(&key, SEAL_FILE, 1024)
            .await
            .unwrap_or_default();
        if !self.seal.verify(&previous, &seal) {
            return Err(StoreError::Unsealed(self.location(app, id)));
        }
        let manifest = Manifest::from_json(&previous)?;
        // What a rewrite stopped before its switch left, which would
        // stand in the way of the new objects.
        self.tidy(app, id, &manifest).await?;
        let staging = self
            .backend
            .rewrite(&key)
            .await
            .map_err(StoreError::io("starting the rewrite"))?;
        let partial = PartialBackup {
            staging,
            files: Default::default(),
            seal: self.seal.clone(),
        };
        Ok((
            manifest,
            Rewrite {
                partial,
                previous,
                backend: self.backend.clone(),
                key,
            },
        ))
    }

    /// Removes the encrypted artifacts (`.age`) of backup `id` of `app`
    /// that `manifest`, its own, does not name: what a rewrite replaced, or
    /// wrote before a stop. Nothing else is touched. Returns how many went.
    pub async fn tidy(&self, app: &str, id: &str, manifest: &Manifest) -> Result<usize> {
        let key = BackupKey::new(app, id);
        let listed = self
            .backend
            .list(&key)
            .await
            .map_err(StoreError::io("listing the backup"))?;
        let mut removed = 0;
        for path in listed {
            if path.ends_with(ENCRYPTED_SUFFIX) && !manifest.checksums.contains_key(&path) {
                self.backend
                    .remove(&key, &path)
                    .await
                    .map_err(StoreError::io(format!("removing {path}")))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Rewrite {
    /// Creates the new artifact `path` (validated by the caller), which the
    /// backup must not hold.
    pub async fn create(&mut self, path: &str) -> Result<ArtifactWriter> {
        self.partial.create(path).await
    }

    /// Switches the backup to `manifest`: the seal first made to hold for
    /// the old manifest and the new, then the manifest, then the seal of
    /// the new alone.
    pub async fn commit(self, manifest: &Manifest) -> Result<()> {
        self.commit_bytes(manifest.to_json()).await
    }

    /// [`Rewrite::commit`] with the manifest's bytes as they are to be
    /// stored (a copy's, the same as its primary's).
    pub(super) async fn commit_bytes(self, bytes: Vec<u8>) -> Result<()> {
        let seal = self.partial.seal.clone();
        let either = seal.seal_either(&self.previous, &bytes).into_bytes();
        self.partial
            .staging
            .commit(vec![(SEAL_FILE.to_owned(), either)], bytes.clone())
            .await
            .map_err(StoreError::io("switching the manifest"))?;
        if let Err(e) = self
            .backend
            .replace_small(&self.key, SEAL_FILE, seal.seal(&bytes).as_bytes())
            .await
        {
            // The seal written before holds for the new manifest too.
            tracing::warn!(app = %self.key.app, backup_id = %self.key.id, error = %e,
                "could not narrow the seal to the new manifest");
        }
        Ok(())
    }

    /// The staging the new artifacts are created in.
    pub(super) fn staging(&mut self) -> &mut dyn super::Staging {
        self.partial.staging.as_mut()
    }

    /// Removes what the rewrite wrote; the backup stays as it was.
    pub async fn abort(self) {
        self.partial.abort().await
    }
}
