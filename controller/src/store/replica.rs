//! Copying a complete backup into another store (`--copy-to`): the same
//! bytes under the same keys, every artifact checked against the
//! manifest's digest on the way, the manifest and seal copied as they are
//! (so that the seal still verifies), and the manifest written last, as
//! every backup is.

use std::io;

use futures::StreamExt;
use hop3_proto::Tally;
use hop3_proto::manifest::{MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest};

use super::{BackupKey, PIN_FILE, Result, Store, StoreError};
use crate::seal::SEAL_FILE;

/// What copying one backup did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// The artifacts' bytes were copied, this many.
    Bytes(u64),
    /// The copy store held this very backup already (a copy whose end
    /// the catalog missed).
    AlreadyThere,
}

impl Store {
    /// Copies backup `id` of `app` into `to`, checked by digest. A copy
    /// store holding another backup under the same key is refused, never
    /// overwritten; leftovers of an interrupted copy, and a copy of this
    /// very backup that lost files, are replaced.
    pub async fn replicate_to(&self, to: &Store, app: &str, id: &str) -> Result<Copied> {
        let key = BackupKey::new(app, id);
        let manifest_bytes = self
            .backend
            .read_small(&key, MANIFEST_FILE, MAX_MANIFEST_BYTES)
            .await
            .map_err(StoreError::io("reading metadata.json"))?;
        let manifest = Manifest::from_json(&manifest_bytes)?;
        match to
            .backend
            .read_small(&key, MANIFEST_FILE, MAX_MANIFEST_BYTES)
            .await
        {
            // This very backup; if its files are not all there any more,
            // the copy is made again below.
            Ok(there) if there == manifest_bytes => {
                if to.check_stored(app, id).await.is_ok() {
                    return Ok(Copied::AlreadyThere);
                }
            }
            // An earlier version of this backup, which this controller
            // sealed: its artifacts were encrypted again (`keys retire`).
            Ok(there) if to.seal_verifies_stored(&key, &there).await => {
                return self.refresh(to, app, id, &manifest, manifest_bytes).await;
            }
            Ok(_) => {
                return Err(StoreError::Conflict(format!(
                    "{} holds another backup under this ID",
                    to.location(app, id)
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("looking in the copy store")(e)),
        }
        if to
            .backend
            .exists(&key)
            .await
            .map_err(StoreError::io("looking in the copy store"))?
        {
            // What an interrupted copy left, or a copy that lost files.
            to.backend.discard(&key).await;
        }
        let seal = match self.backend.read_small(&key, SEAL_FILE, 1024).await {
            Ok(seal) => Some(seal),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io("reading the seal")(e)),
        };
        let mut staging = to
            .backend
            .begin(&key)
            .await
            .map_err(StoreError::io("starting the copy"))?;
        let mut total = 0;
        for (path, expected) in &manifest.checksums {
            match self
                .copy_checked(&key, path, expected, staging.as_mut())
                .await
            {
                Ok(size) => total += size,
                Err(e) => {
                    staging.abort().await;
                    return Err(e);
                }
            }
        }
        let extra = seal
            .map(|s| vec![(SEAL_FILE.to_owned(), s)])
            .unwrap_or_default();
        staging
            .commit(extra, manifest_bytes)
            .await
            .map_err(StoreError::io("completing the copy"))?;
        if self.pinned(app, id).await {
            // Outside the backup's bytes: a pin missing from a copy loses nothing.
            if let Err(e) = to.set_pinned(app, id, true).await {
                tracing::warn!(backup_id = id, file = PIN_FILE, error = %e, "could not copy the pin");
            }
        }
        Ok(Copied::Bytes(total))
    }

    /// Brings `to`'s copy of backup `id` up to `manifest` (whose bytes are
    /// `manifest_bytes`), as the rewrite of the primary did: the new
    /// artifacts first, then the manifest switched, then the objects no
    /// longer named removed.
    async fn refresh(
        &self,
        to: &Store,
        app: &str,
        id: &str,
        manifest: &Manifest,
        manifest_bytes: Vec<u8>,
    ) -> Result<Copied> {
        let key = BackupKey::new(app, id);
        let (there, mut rewrite) = to.rewrite(app, id).await?;
        if there.backup_id != manifest.backup_id || there.created_at != manifest.created_at {
            rewrite.abort().await;
            return Err(StoreError::Conflict(format!(
                "{} holds another backup under this ID",
                to.location(app, id)
            )));
        }
        let mut total = 0;
        for (path, expected) in &manifest.checksums {
            let outcome = match there.checksums.get(path) {
                Some(held) if held == expected => continue,
                // Write-once: a path keeps its bytes for good.
                Some(_) => Err(StoreError::Conflict(format!(
                    "{} holds another {path}",
                    to.location(app, id)
                ))),
                None => {
                    self.copy_checked(&key, path, expected, rewrite.staging())
                        .await
                }
            };
            match outcome {
                Ok(size) => total += size,
                Err(e) => {
                    rewrite.abort().await;
                    return Err(e);
                }
            }
        }
        rewrite.commit_bytes(manifest_bytes).await?;
        if let Err(e) = to.tidy(app, id, manifest).await {
            tracing::warn!(backup_id = id, location = %to.location(app, id), error = %e,
                "could not remove the objects the copy no longer needs");
        }
        Ok(Copied::Bytes(total))
    }

    /// Whether `manifest`, read from backup `key` here, carries this
    /// controller's seal.
    async fn seal_verifies_stored(&self, key: &BackupKey, manifest: &[u8]) -> bool {
        match self.backend.read_small(key, SEAL_FILE, 1024).await {
            Ok(seal) => self.seal.verify(manifest, &seal),
            Err(_) => false,
        }
    }

    /// [`Store::copy_artifact`], refused unless the bytes are those the
    /// manifest records; their size.
    async fn copy_checked(
        &self,
        key: &BackupKey,
        path: &str,
        expected: &hop3_proto::Checksum,
        staging: &mut dyn super::Staging,
    ) -> Result<u64> {
        let (sum, size) = self.copy_artifact(key, path, staging).await?;
        if sum != *expected {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("expected {expected}, read {sum}"),
            });
        }
        Ok(size)
    }

    async fn copy_artifact(
        &self,
        key: &BackupKey,
        path: &str,
        staging: &mut dyn super::Staging,
    ) -> Result<(hop3_proto::Checksum, u64)> {
        let mut stream = self
            .backend
            .open(key, path)
            .await
            .map_err(StoreError::io(format!("opening {path}")))?;
        let mut sink = staging
            .create(path)
            .await
            .map_err(StoreError::io(format!("creating {path} in the copy store")))?;
        let mut tally = Tally::default();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(StoreError::io(format!("reading {path}")))?;
            tally.add(&bytes);
            sink.write(&bytes)
                .await
                .map_err(StoreError::io(format!("writing {path} to the copy store")))?;
        }
        sink.finish()
            .await
            .map_err(StoreError::io(format!("writing {path} to the copy store")))?;
        Ok(tally.finish())
    }
}
