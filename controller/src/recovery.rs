//! Recovery from the store, the source of truth: rebuilding the catalog at
//! start-up, and importing backup directories copied in by hand.

use std::collections::HashSet;
use std::path::Path;

use hop3_proto::manifest::{MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest, ManifestError};

use crate::catalog::{self, BackupRow, BackupStatus, Catalog, TokenRow};
use crate::error::{ControllerError, Result};
use crate::import_source::ImportSource;
use crate::seal::SEAL_FILE;
use crate::state::Controller;
use crate::store::{BackupKey, CopyError, Spare};
use crate::tokens::{TokenRecord, Tokens};

/// The catalog row of a complete backup, from its (validated) manifest.
pub fn completed_row(m: &Manifest) -> std::result::Result<BackupRow, ManifestError> {
    Ok(BackupRow {
        backup_id: m.backup_id.parse()?,
        app: m.app_name.clone(),
        host: m.host.clone().unwrap_or_default(),
        status: BackupStatus::Completed,
        // Python writes +00:00 and microseconds: the catalog one spelling.
        created_at: m.created_at()?,
        total_size: m.size_bytes,
        services: m
            .services
            .iter()
            .map(|s| format!("{}:{}", s.kind, s.name))
            .collect(),
        error: None,
        pinned: false,
    })
}

/// Opens the catalog for a controller's start. A SQLite catalog found
/// corrupt is kept aside (its file renamed with a timestamp, its `-wal` and
/// `-shm` too) and replaced by a new one, which [`rebuild_catalog`] then
/// fills from the store, the source of truth; a WARN names the kept file.
/// Tokens still in a catalog from before the tokens file move to it first,
/// also from a corrupt one when their pages can still be read.
pub async fn open_catalog(url: &str, tokens: &Tokens) -> Result<Catalog> {
    let corrupt = match Catalog::open(url).await {
        Ok(catalog) => {
            adopt_tokens(&catalog, tokens).await?;
            return Ok(catalog);
        }
        Err(e) if e.is_corruption() && catalog::sqlite_path(url).is_some() => e,
        Err(e) => return Err(e.into()),
    };
    if !tokens.exists().await? {
        let salvaged = match catalog::salvage_tokens(url).await {
            Ok(rows) => rows,
            Err(why) => {
                tracing::warn!(error = %why, "could not read the API tokens of the corrupt catalog: create them again (hop3-controller tokens create NAME)");
                Vec::new()
            }
        };
        let n = salvaged.len();
        if tokens.adopt(records(salvaged)).await? && n > 0 {
            tracing::warn!(tokens = n, file = %tokens.path().display(), "API tokens read from the corrupt catalog and moved to the tokens file");
        }
    }
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .expect("a UTC time formats");
    let kept = catalog::set_aside(url, &stamp).await?;
    tracing::warn!(
        kept = %kept.display(),
        reason = %corrupt,
        "the catalog is corrupt: kept it aside and rebuilding it from the store"
    );
    Ok(Catalog::open(url).await?)
}

/// Moves the tokens of a catalog written before the tokens file existed
/// into it, once: when the file does not exist yet. The catalog's rows are
/// then deleted, so that the file is the one place tokens live.
pub async fn adopt_tokens(catalog: &Catalog, tokens: &Tokens) -> Result<()> {
    if tokens.exists().await? {
        return Ok(());
    }
    let rows = catalog.legacy_tokens().await?;
    let n = rows.len();
    if tokens.adopt(records(rows)).await? && n > 0 {
        tracing::info!(tokens = n, file = %tokens.path().display(), "API tokens moved from the catalog to the tokens file");
    }
    catalog.clear_legacy_tokens().await?;
    Ok(())
}

fn records(rows: Vec<TokenRow>) -> Vec<TokenRecord> {
    rows.into_iter()
        .map(|r| TokenRecord {
            name: r.name,
            hash: r.hash,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        })
        .collect()
}

/// How many backups are examined at once: on object storage each is a few
/// round trips, which overlap; on a local disk 16 beat 1 by a fifth (each
/// read is a hand-off to a blocking thread either way).
const EXAMINING: usize = 16;

/// How many backups found in the store and not in the catalog are
/// examined (manifest read, files looked for) before they are written to
/// the catalog in one transaction: what bounds a rebuild's memory.
const BATCH: usize = 256;

/// At start-up, before serving. A catalog with backups serves at once and
/// is checked against the store in the background ([`check_in_background`]):
/// a start never waits on the store, which may be a slow or unreachable
/// bucket. An empty catalog (new, or set aside as corrupt) has nothing
/// true to serve: it is rebuilt from the store first ([`rebuild_catalog`]).
pub async fn start_up(ctl: &std::sync::Arc<Controller>) -> Result<()> {
    let interrupted = ctl.catalog.fail_interrupted_runs().await?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "scheduled runs cut short by the last stop are recorded FAILED"
        );
    }
    if ctl.catalog.is_empty().await? {
        return rebuild_catalog(ctl).await;
    }
    // A store of before seals has its backups sealed before any restore
    // could refuse one as not sealed. A missing mark may also be a store
    // that cannot be read: then the catalog serves, checked once it answers.
    if let Ok(false) = ctl.store.sealed_once().await {
        match rebuild_catalog(ctl).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "the store cannot be read: serving from the catalog, checked against the store once it answers")
            }
        }
    }
    let ctl = ctl.clone();
    tokio::spawn(async move {
        let mut wait = std::time::Duration::from_secs(5);
        loop {
            match check_in_background(&ctl).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "could not check the catalog against the store")
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(300));
        }
    });
    Ok(())
}

/// Checks a catalog that is already serving against the store.
async fn check_in_background(ctl: &Controller) -> Result<()> {
    reconcile(ctl).await?;
    retry_deletes(ctl).await?;
    checked();
    Ok(())
}

/// Said once the catalog agrees with the store and the deletions left
/// pending were retried: not before, or a reader of the log (a test, an
/// operator's script) would see DELETE_PENDING rows about to go.
fn checked() {
    tracing::info!("catalog checked against the store");
}

/// At start-up, before serving: removes what an interrupted run left in the
/// store, makes the catalog list exactly the complete backups of the store
/// (and of the copy stores, for those the primary lost), reads the
/// schedules from the store; logs every directory that cannot be used, and
/// carries on.
pub async fn rebuild_catalog(ctl: &Controller) -> Result<()> {
    reconcile(ctl).await?;
    rebuild_schedules(ctl).await?;
    retry_deletes(ctl).await?;
    checked();
    Ok(())
}

async fn retry_deletes(ctl: &Controller) -> Result<()> {
    let pending = crate::delete::retry_pending(ctl, None).await?;
    if pending > 0 {
        tracing::warn!(
            pending,
            "backups whose deletion failed are still DELETE_PENDING: the next prune or backup:delete retries them"
        );
    }
    Ok(())
}

/// Makes the catalog agree with the store, in bounded memory: one listing
/// of the store; the backups it holds that the catalog does not are
/// examined and added in batches; COMPLETED and DELETE_PENDING rows whose
/// backup is gone (looked for again, one by one, so that a backup that
/// came after the listing stays) are dropped, unless a copy store holds
/// them. What the catalog already lists is not read again: its rows came
/// from this controller's own writes. The backups in use (being written,
/// imported, deleted: every write to the store holds its backup's lock)
/// are left alone, so that this may run while the controller serves.
async fn reconcile(ctl: &Controller) -> Result<()> {
    use futures::StreamExt;
    let spare: Spare<'_> = &|key: &BackupKey| ctl.backup_locks.in_use(&key.id);
    let started = std::time::Instant::now();
    let scan = ctl.store.scan(spare).await?;
    if scan.removed > 0 {
        tracing::warn!(
            leftovers = scan.removed,
            "removed partial backups of an interrupted run"
        );
    }
    let known = ctl.catalog.statuses().await?;
    let in_store: HashSet<&str> = scan.backups.iter().map(|(_, id)| id.as_str()).collect();
    let sealing = !ctl.store.sealed_once().await?;
    if !sealing && ctl.store.newly_keyed() {
        tracing::warn!(
            "the seal key was made anew: backups sealed with the old one restore only with --trust-imported"
        );
    }
    // Sealing once, every backup is examined (and sealed), known or not.
    let new: Vec<&(String, String)> = scan
        .backups
        .iter()
        .filter(|(_, id)| sealing || !known.contains_key(id.as_str()))
        .collect();
    let mut added = 0;
    for batch in new.chunks(BATCH) {
        let mut examining = Vec::with_capacity(batch.len());
        for entry in batch {
            examining.push(ctl.store.examine(&entry.0, &entry.1));
        }
        let examined: Vec<_> = futures::stream::iter(examining)
            .buffered(EXAMINING)
            .collect()
            .await;
        let mut rows = Vec::with_capacity(examined.len());
        for s in examined {
            match s
                .manifest
                .and_then(|m| completed_row(&m).map_err(|e| e.to_string()))
            {
                Ok(mut row) => {
                    row.pinned = ctl.store.pinned(&row.app, &row.backup_id).await;
                    rows.push(row);
                }
                Err(why) => {
                    tracing::warn!(dir = %s.location, reason = %why, "skipping an unusable backup directory")
                }
            }
        }
        if sealing {
            seal_existing(ctl, &rows).await?;
        }
        added += ctl.catalog.add_found(&rows).await?;
    }
    if sealing {
        finish_sealing(ctl, in_store.len()).await?;
    }
    let copied: HashSet<String> = ctl.catalog.copied_ids().await?.into_iter().collect();
    let mut dropped = 0;
    for (id, status) in &known {
        if in_store.contains(id.as_str())
            || !matches!(
                status,
                BackupStatus::Completed | BackupStatus::DeletePending
            )
            || copied.contains(id)
        {
            continue;
        }
        let Some(row) = ctl.catalog.get(id).await? else {
            continue;
        };
        if spare(&BackupKey::new(&row.app, id)) || ctl.store.exists(&row.app, id).await? {
            continue;
        }
        ctl.catalog.delete(id).await?;
        dropped += 1;
    }
    tracing::info!(
        backups = in_store.len(),
        added,
        dropped,
        ms = started.elapsed().as_millis() as u64,
        "catalog reconciled with the store"
    );
    Ok(())
}

/// At start-up: the catalog's schedules become the store's (their source
/// of truth).
async fn rebuild_schedules(ctl: &Controller) -> Result<()> {
    let schedules = ctl.store.all_schedules().await?;
    ctl.catalog.replace_all_schedules(&schedules).await?;
    tracing::info!(schedules = schedules.len(), "schedules read from the store");
    Ok(())
}

/// At the first start of a version with seals: seals the complete backups
/// the store already holds, which this controller made (or was given)
/// before backups were sealed, so that they restore as before; once in the
/// store's life (see [`finish_sealing`]), so that a seal key lost later
/// does not bless whatever lies in the store.
async fn seal_existing(ctl: &Controller, rows: &[BackupRow]) -> Result<()> {
    for row in rows {
        ctl.store.seal_stored(&row.app, &row.backup_id).await?;
    }
    Ok(())
}

/// Records that the store's backups of before seals are sealed.
async fn finish_sealing(ctl: &Controller, backups: usize) -> Result<()> {
    if backups > 0 {
        tracing::info!(backups, "sealed the backups made before seals");
    }
    Ok(ctl.store.mark_sealed_once().await?)
}

/// Verifies the backup directory `requested` below the import directory and
/// copies it into the store, then records it as COMPLETED. It stays sealed
/// only when it carries this controller's seal (exported and brought back).
pub async fn import(ctl: &Controller, requested: &Path) -> Result<BackupRow> {
    let src = ImportSource::open(&ctl.import_dir, requested).await?;
    let bytes = src.read(MANIFEST_FILE, MAX_MANIFEST_BYTES).await?;
    let manifest = Manifest::from_json(&bytes).map_err(|e| {
        ControllerError::InvalidArgument(format!(
            "{}: {e}",
            src.shown().join(MANIFEST_FILE).display()
        ))
    })?;
    // The bytes are copied as they are: a plain backup would sit in the
    // clear in a bucket that takes only encrypted ones.
    if let Some(stores) = &ctl.keys.clear_refused_by
        && !manifest.any_encrypted()
    {
        return Err(ControllerError::InvalidArgument(format!(
            "{}: the backup is not encrypted, and {stores} takes only encrypted backups (--allow-plaintext-store allows it); restore it with a controller on a local store, then back the app up here",
            src.shown().display()
        )));
    }
    let sealed = match src.read(SEAL_FILE, 1024).await {
        Ok(seal) => ctl.store.seal_verifies(&bytes, &seal),
        Err(_) => false,
    };
    let (app, id) = (manifest.app_name.clone(), manifest.backup_id.clone());
    let host = manifest.host.clone().unwrap_or_default();
    let _lock = ctl.lock_app(&host, &app, "an import")?;
    let _reading = ctl.use_backup(&id, crate::locks::BackupUse::Import)?;
    if ctl.catalog.get(&id).await?.is_some() {
        return Err(ControllerError::AlreadyExists(id));
    }
    if ctl.store.exists(&app, &id).await? {
        return Err(ControllerError::AlreadyExists(id));
    }
    copy_in(ctl, &src, &manifest, sealed).await?;
    let row =
        completed_row(&manifest).map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
    ctl.catalog.insert(&row).await?;
    tracing::info!(app, backup_id = %id, sealed, "backup imported");
    Ok(row)
}

/// Copies every file the manifest lists, hashing as it copies.
async fn copy_in(
    ctl: &Controller,
    src: &ImportSource,
    manifest: &Manifest,
    sealed: bool,
) -> Result<()> {
    let mut partial = ctl
        .store
        .begin(&manifest.app_name, &manifest.backup_id)
        .await?;
    let copied = async {
        for (path, expected) in &manifest.checksums {
            let mut file = src.file(path).await?;
            let (sum, _) = partial.copy(path, &mut file).await.map_err(|e| match e {
                CopyError::Read(e) => {
                    ControllerError::InvalidArgument(format!("cannot read {path}: {e}"))
                }
                CopyError::Store(e) => e.into(),
            })?;
            if sum != *expected {
                return Err(ControllerError::ChecksumMismatch {
                    path: path.clone(),
                    detail: format!("expected {expected}, found {sum}"),
                });
            }
        }
        Ok(())
    }
    .await;
    match copied {
        Ok(()) => {
            partial.commit(manifest, sealed).await?;
            Ok(())
        }
        Err(e) => {
            partial.abort().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::clobber_page;

    fn hash(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn tokens_move_out_of_a_healthy_catalog_once() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", tmp.path().join("c.db").display());
        let c = Catalog::open(&url).await.unwrap();
        c.insert_legacy_token("alice", &hash('a'), false).await;
        c.insert_legacy_token("bob", &hash('b'), true).await;
        c.close().await;
        let tokens = Tokens::new(tmp.path());
        let c = open_catalog(&url, &tokens).await.unwrap();
        assert!(c.legacy_tokens().await.unwrap().is_empty());
        let moved: Vec<_> = tokens
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.revoked_at.is_some()))
            .collect();
        assert_eq!(moved, [("alice".into(), false), ("bob".into(), true)]);
        assert_eq!(
            tokens.name_of(&hash('a')).await.unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(tokens.name_of(&hash('b')).await.unwrap(), None);
        // Rows that reappear in the catalog (an old binary, say) are not
        // taken again: the file decides.
        c.insert_legacy_token("carol", &hash('c'), false).await;
        c.close().await;
        open_catalog(&url, &tokens).await.unwrap().close().await;
        assert_eq!(tokens.name_of(&hash('c')).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_corrupt_catalog_is_kept_aside_and_its_tokens_salvaged() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let db = tmp.path().join("c.db");
        let url = format!("sqlite://{}", db.display());
        let c = Catalog::open(&url).await.unwrap();
        c.insert(&BackupRow {
            backup_id: "20250101_000000_aaaaaa".parse().unwrap(),
            app: "a".into(),
            host: "h".into(),
            status: BackupStatus::Completed,
            created_at: time::macros::datetime!(2025-01-01 00:00:00 UTC),
            total_size: 1,
            services: vec![],
            error: None,
            pinned: false,
        })
        .await
        .unwrap();
        c.insert_legacy_token("alice", &hash('a'), false).await;
        let page = c.root_page("backups").await;
        c.checkpoint().await;
        c.close().await;
        clobber_page(&db, page);
        let damaged = std::fs::read(&db).unwrap();

        let tokens = Tokens::new(&store);
        let c = open_catalog(&url, &tokens).await.unwrap();
        // A new, empty catalog (rebuild_catalog fills it from the store).
        assert!(c.list(None, None, 10).await.unwrap().is_empty());
        assert_eq!(
            tokens.name_of(&hash('a')).await.unwrap().as_deref(),
            Some("alice")
        );
        let all = names(tmp.path());
        let kept: Vec<&String> = all
            .iter()
            .filter(|n| {
                n.starts_with("c.db.corrupt-") && !n.ends_with("-shm") && !n.ends_with("-wal")
            })
            .collect();
        assert_eq!(kept.len(), 1, "{all:?}");
        assert_eq!(std::fs::read(tmp.path().join(kept[0])).unwrap(), damaged);
        assert!(all.contains(&"c.db".to_owned()), "{all:?}");
    }
}
