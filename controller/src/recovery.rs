//! Recovery from the store, the source of truth: rebuilding the catalog at
//! start-up, and importing backup directories copied in by hand.

use std::path::Path;

use hop3_proto::manifest::{MANIFEST_FILE, Manifest};
use tokio::io::AsyncReadExt;

use crate::catalog::{BackupRow, BackupStatus};
use crate::error::{ControllerError, Result};
use crate::state::Controller;

/// The catalog row of a complete backup, from its manifest.
pub fn completed_row(m: &Manifest) -> BackupRow {
    BackupRow {
        backup_id: m.backup_id.clone(),
        app: m.app_name.clone(),
        host: m.host.clone().unwrap_or_default(),
        status: BackupStatus::Completed,
        // One spelling of times (Python writes +00:00 and microseconds) keeps the order right.
        created_at: m
            .created_at()
            .map(Manifest::format_time)
            .unwrap_or_else(|_| m.created_at.clone()),
        total_size: m.size_bytes,
        services: m
            .services
            .iter()
            .map(|s| format!("{}:{}", s.kind, s.name))
            .collect(),
        error: None,
    }
}

/// At start-up: removes what an interrupted run left in the store, and makes
/// the catalog list exactly the complete backups of the store; logs every
/// directory that cannot be used, and carries on.
pub async fn rebuild_catalog(ctl: &Controller) -> Result<()> {
    let started = std::time::Instant::now();
    let (scanned, leftovers) = ctl.store.recover().await?;
    if leftovers > 0 {
        tracing::warn!(leftovers, "removed partial backups of an interrupted run");
    }
    let mut rows = Vec::with_capacity(scanned.len());
    for s in scanned {
        match s.manifest {
            Ok(m) => rows.push(completed_row(&m)),
            Err(why) => {
                tracing::warn!(dir = %s.path.display(), reason = %why, "skipping an unusable backup directory")
            }
        }
    }
    let (added, dropped) = ctl.catalog.reconcile(&rows).await?;
    tracing::info!(
        backups = rows.len(),
        added,
        dropped,
        ms = started.elapsed().as_millis() as u64,
        "catalog checked against the store"
    );
    Ok(())
}

/// Verifies the backup directory `src` and copies it into the store, then
/// records it as COMPLETED.
pub async fn import(ctl: &Controller, src: &Path) -> Result<BackupRow> {
    let manifest = read_manifest(src).await?;
    let (app, id) = (manifest.app_name.clone(), manifest.backup_id.clone());
    let _lock = ctl
        .locks
        .try_lock(&app)
        .ok_or_else(|| ControllerError::Busy(app.clone()))?;
    let _reading = ctl.use_backup(&id, crate::locks::BackupUse::Import)?;
    if ctl.catalog.get(&id).await?.is_some() {
        return Err(ControllerError::AlreadyExists(id));
    }
    let dest = ctl.store.backup_dir(&app, &id);
    let same_place = match (
        tokio::fs::canonicalize(src).await,
        tokio::fs::canonicalize(&dest).await,
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same_place {
        // Copied straight into the store: check it where it lies.
        let checks = ctl.store.verify(&app, &id, &manifest, &|_| {}).await;
        if let Some(bad) = checks.iter().find(|c| !c.valid()) {
            return Err(ControllerError::ChecksumMismatch {
                path: bad.path.clone(),
                detail: "the file differs from metadata.json".into(),
            });
        }
    } else {
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return Err(ControllerError::AlreadyExists(id));
        }
        copy_in(ctl, src, &manifest).await?;
    }
    let row = completed_row(&manifest);
    ctl.catalog.insert(&row).await?;
    tracing::info!(app, backup_id = %id, "backup imported");
    Ok(row)
}

async fn read_manifest(src: &Path) -> Result<Manifest> {
    // Bad input from the user, whatever went wrong with it: named by path.
    crate::store::read_manifest_in(src).await.map_err(|e| {
        ControllerError::InvalidArgument(format!("{}: {e}", src.join(MANIFEST_FILE).display()))
    })
}

/// Copies every file the manifest lists, hashing as it copies.
async fn copy_in(ctl: &Controller, src: &Path, manifest: &Manifest) -> Result<()> {
    let mut partial = ctl
        .store
        .begin(&manifest.app_name, &manifest.backup_id)
        .await?;
    let copied = async {
        for (path, expected) in &manifest.checksums {
            let mut file = tokio::fs::File::open(src.join(path)).await.map_err(|_| {
                ControllerError::ChecksumMismatch {
                    path: path.clone(),
                    detail: "the file is missing".into(),
                }
            })?;
            let mut w = partial.create(path).await?;
            let mut buf = vec![0u8; hop3_proto::CHUNK_SIZE];
            loop {
                let n = file.read(&mut buf).await.map_err(|e| {
                    ControllerError::InvalidArgument(format!("cannot read {path}: {e}"))
                })?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n]).await?;
            }
            let (sum, size) = w.finish().await?;
            if sum != *expected {
                return Err(ControllerError::ChecksumMismatch {
                    path: path.clone(),
                    detail: format!("expected {expected}, found {sum}"),
                });
            }
            partial.record(path.clone(), sum, size);
        }
        Ok(())
    }
    .await;
    match copied {
        Ok(()) => {
            partial.commit(manifest).await?;
            Ok(())
        }
        Err(e) => {
            partial.abort().await;
            Err(e)
        }
    }
}
