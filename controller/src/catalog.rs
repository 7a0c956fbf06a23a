//! The catalog: one row per backup, in SQLite (one machine) or PostgreSQL (a
//! fleet), through sqlx's `Any` driver: the same SQL serves both (`$n`
//! placeholders, portable types). All SQL of the controller lives here.

use std::path::PathBuf;
use std::str::FromStr;

use hop3_proto::Manifest;
use hop3_proto::backup_id::{BackupId, InvalidBackupId};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod copies;
mod schedules;

pub use copies::{CopyDue, CopyRow, CopyState};
pub use schedules::{RunRow, RunState};

/// What the catalog can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog: {0}")]
    Db(#[from] sqlx::Error),
    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("catalog URL {0:?} is not supported (use sqlite://PATH or postgres://...)")]
    UnsupportedUrl(String),
    #[error("catalog row {0} is damaged: {1}")]
    BadRow(String, String),
    /// SQLite found the database file damaged (`PRAGMA quick_check`, or a
    /// query answered SQLITE_CORRUPT / SQLITE_NOTADB).
    #[error("the catalog database is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot set the corrupt catalog aside: {0}")]
    SetAside(#[source] std::io::Error),
}

impl CatalogError {
    /// Whether this says the SQLite file is damaged, as opposed to the
    /// database being unreachable or refusing a statement.
    pub fn is_corruption(&self) -> bool {
        match self {
            Self::Corrupt(_) => true,
            Self::Db(e)
            | Self::Migrate(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => corrupt_db(e),
            _ => false,
        }
    }
}

/// SQLite's primary result codes for a damaged file: SQLITE_CORRUPT (11)
/// and SQLITE_NOTADB (26). sqlx reports the extended code, whose low byte
/// is the primary one.
fn corrupt_db(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 11 | 26))
}

/// A token as a catalog written before tokens moved to the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub name: String,
    /// `sha256:<hex>`.
    pub hash: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// Where a backup stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupStatus {
    Started,
    Completed,
    Failed,
    /// Being removed: its store copy could not be deleted yet (or the
    /// controller stopped before it was); a retry deletes it, and until
    /// then it is listed, never restored.
    DeletePending,
}

impl BackupStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "STARTED",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::DeletePending => "DELETE_PENDING",
        }
    }
}

impl FromStr for BackupStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "STARTED" => Ok(Self::Started),
            "COMPLETED" => Ok(Self::Completed),
            "FAILED" => Ok(Self::Failed),
            "DELETE_PENDING" => Ok(Self::DeletePending),
            other => Err(format!("unknown status {other:?}")),
        }
    }
}

/// One backup as the catalog knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupRow {
    pub backup_id: BackupId,
    pub app: String,
    pub host: String,
    pub status: BackupStatus,
    /// When the backup was made (stored as RFC 3339 in UTC, whole seconds,
    /// so that the text sorts as the time).
    pub created_at: OffsetDateTime,
    pub total_size: u64,
    /// "type:name" of each service in the backup.
    pub services: Vec<String>,
    pub error: Option<String>,
    /// Never removed by a retention policy (`backup:pin`).
    pub pinned: bool,
}

/// The catalog of backups.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
    sqlite: bool,
}

/// A SELECT of every column, as the static string sqlx wants.
macro_rules! select_rows {
    ($rest:literal) => {
        concat!(
            "SELECT backup_id, app, host, status, created_at, total_size, services, error, pinned FROM backups ",
            $rest
        )
    };
}

impl Catalog {
    /// Opens (creating if missing) the catalog at `url`, checks a SQLite
    /// file for damage (`CatalogError::Corrupt`, see [`CatalogError::is_corruption`])
    /// and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, CatalogError> {
        let catalog = Self::connect(url).await?;
        if let Err(e) = sqlx::migrate!("./migrations").run(&catalog.pool).await {
            catalog.pool.close().await;
            return Err(corruption(e.into()));
        }
        Ok(catalog)
    }

    /// `PRAGMA quick_check` on a connection of its own, before the pool
    /// exists: the pool's per-connection set-up would meet a damaged file
    /// first, and sqlx retries a failing set-up until its timeout instead
    /// of saying why. quick_check finds every page unreadable or malformed;
    /// it skips `integrity_check`'s cross-checks of indexes against their
    /// tables, which cost 5x more: on a 100,000-backup catalog (29 MiB) here,
    /// 0.15-0.35 s against 0.8-1 s, once per start.
    async fn check(url: &str) -> Result<(), CatalogError> {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(url)
            .await
            .map_err(|e| corruption(e.into()))?;
        let rows = sqlx::query("PRAGMA quick_check(5)")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| corruption(e.into()));
        // Closing is only courtesy here: the verdict is in `rows`.
        let _ = conn.close().await;
        let found: Vec<String> = rows?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        if found.len() == 1 && found[0] == "ok" {
            Ok(())
        } else {
            Err(CatalogError::Corrupt(found.join("; ")))
        }
    }

    /// Connects, a SQLite file checked for damage first, without migrating.
    async fn connect(url: &str) -> Result<Self, CatalogError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        if !sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            // Never echo the URL: a PostgreSQL one holds a password.
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(CatalogError::UnsupportedUrl(format!("{scheme}:...")));
        }
        if sqlite {
            create_private(url)?;
        }
        let url = if sqlite && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        if sqlite {
            Self::check(&url).await?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Self { pool, sqlite })
    }

    /// At shutdown: writes a SQLite catalog's WAL back into its file, so that
    /// the file alone is whole (a copy of it, or a check of it, misses nothing).
    pub async fn checkpoint(&self) {
        if !self.sqlite {
            return;
        }
        match sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            Ok(_) => tracing::debug!("catalog checkpointed"),
            Err(e) => tracing::warn!(error = %e, "could not checkpoint the catalog"),
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The tokens a catalog written before tokens moved to the store holds.
    pub async fn legacy_tokens(&self) -> Result<Vec<TokenRow>, CatalogError> {
        legacy_tokens_in(&self.pool).await
    }

    /// Empties the catalog's old tokens table once its rows are in the
    /// tokens file, so that revocations made there can never be undone by
    /// moving the same rows again.
    pub async fn clear_legacy_tokens(&self) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM tokens")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a backup that has just started.
    pub async fn insert(&self, row: &BackupRow) -> Result<(), CatalogError> {
        insert_row(row, false).execute(&self.pool).await?;
        Ok(())
    }

    /// Marks a backup COMPLETED, with its final size and services.
    pub async fn complete(
        &self,
        id: &str,
        total_size: u64,
        services: &[String],
    ) -> Result<(), CatalogError> {
        sqlx::query("UPDATE backups SET status = 'COMPLETED', total_size = $1, services = $2, error = NULL WHERE backup_id = $3")
            .bind(total_size as i64)
            .bind(serde_json::to_string(services).expect("strings serialise"))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks a backup FAILED with the reason.
    pub async fn fail(&self, id: &str, reason: &str) -> Result<(), CatalogError> {
        sqlx::query("UPDATE backups SET status = 'FAILED', error = $1 WHERE backup_id = $2")
            .bind(reason)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks every STARTED backup FAILED: at start-up, none of them can still be running.
    pub async fn fail_interrupted(&self) -> Result<u64, CatalogError> {
        let done = sqlx::query(
            "UPDATE backups SET status = 'FAILED', error = 'interrupted: the controller stopped during the backup' WHERE status = 'STARTED'",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// One backup by ID.
    pub async fn get(&self, id: &str) -> Result<Option<BackupRow>, CatalogError> {
        let row = sqlx::query(select_rows!("WHERE backup_id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// Backups newest first, of one app or all.
    pub async fn list(
        &self,
        app: Option<&str>,
        status: Option<BackupStatus>,
        limit: u32,
    ) -> Result<Vec<BackupRow>, CatalogError> {
        if let Some(status) = status {
            let rows = sqlx::query(select_rows!(
                "WHERE ($1 = '' OR app = $1) AND status = $2 \
                 ORDER BY created_at DESC, backup_id DESC LIMIT $3"
            ))
            .bind(app.unwrap_or_default())
            .bind(status.as_str())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
            return rows.iter().map(from_row).collect();
        }
        let rows = match app {
            Some(app) => {
                sqlx::query(select_rows!(
                    "WHERE app = $1 ORDER BY created_at DESC, backup_id DESC LIMIT $2"
                ))
                .bind(app)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(select_rows!(
                    "ORDER BY created_at DESC, backup_id DESC LIMIT $1"
                ))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(from_row).collect()
    }

    /// Every backup of `app` (or of every app), in no particular order: what
    /// a retention policy judges.
    pub async fn history(&self, app: Option<&str>) -> Result<Vec<BackupRow>, CatalogError> {
        let rows = sqlx::query(select_rows!("WHERE ($1 = '' OR app = $1)"))
            .bind(app.unwrap_or_default())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Marks a backup DELETE_PENDING before its store copy is deleted, so
    /// that a failure or a crash in between never leaves it COMPLETED
    /// with its files gone.
    pub async fn mark_delete_pending(&self, id: &str) -> Result<(), CatalogError> {
        self.on_row(
            "UPDATE backups SET status = 'DELETE_PENDING' WHERE backup_id = $1",
            id,
        )
        .await
    }

    /// Runs `sql`, a statement on the row whose ID is `$1`.
    async fn on_row(&self, sql: &'static str, id: &str) -> Result<(), CatalogError> {
        sqlx::query(sql).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Records why the last attempt to delete a DELETE_PENDING backup failed.
    pub async fn delete_failed(&self, id: &str, reason: &str) -> Result<(), CatalogError> {
        sqlx::query(
            "UPDATE backups SET error = $1 WHERE backup_id = $2 AND status = 'DELETE_PENDING'",
        )
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Pins or unpins a backup.
    pub async fn set_pinned(&self, id: &str, pinned: bool) -> Result<(), CatalogError> {
        sqlx::query("UPDATE backups SET pinned = $1 WHERE backup_id = $2")
            .bind(i64::from(pinned))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the catalog holds no backup at all (new, or set aside as
    /// corrupt): then it is rebuilt from the store before the controller serves.
    pub async fn is_empty(&self) -> Result<bool, CatalogError> {
        Ok(sqlx::query("SELECT backup_id FROM backups LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .is_none())
    }

    /// Every backup's status by ID: what a check against the store compares
    /// with what it lists. Streamed from the database, so that the map
    /// (a few dozen bytes a backup) is all that is held.
    pub async fn statuses(
        &self,
    ) -> Result<std::collections::HashMap<String, BackupStatus>, CatalogError> {
        use futures::TryStreamExt;
        let mut out = std::collections::HashMap::new();
        let mut rows = sqlx::query("SELECT backup_id, status FROM backups").fetch(&self.pool);
        while let Some(r) = rows.try_next().await? {
            let id: String = r.try_get("backup_id")?;
            let status: String = r.try_get("status")?;
            let status = status
                .parse()
                .map_err(|e| CatalogError::BadRow(id.clone(), e))?;
            out.insert(id, status);
        }
        Ok(out)
    }

    /// Adds the COMPLETED backups `found` in the store, in one transaction;
    /// a backup the catalog already holds is left as it is. Returns how
    /// many were added.
    pub async fn add_found(&self, found: &[BackupRow]) -> Result<usize, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let mut added = 0;
        for row in found {
            added += insert_row(row, true)
                .execute(&mut *tx)
                .await?
                .rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Forgets a backup and its copies.
    pub async fn delete(&self, id: &str) -> Result<(), CatalogError> {
        self.on_row("DELETE FROM backup_copies WHERE backup_id = $1", id)
            .await?;
        self.on_row("DELETE FROM backups WHERE backup_id = $1", id)
            .await
    }
}

/// `e`, as `CatalogError::Corrupt` when it says the file is damaged.
fn corruption(e: CatalogError) -> CatalogError {
    if e.is_corruption() && !matches!(e, CatalogError::Corrupt(_)) {
        CatalogError::Corrupt(e.to_string())
    } else {
        e
    }
}

async fn legacy_tokens_in(pool: &AnyPool) -> Result<Vec<TokenRow>, CatalogError> {
    let rows = sqlx::query("SELECT name, hash, created_at, revoked_at FROM tokens ORDER BY name")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(TokenRow {
                name: r.try_get("name")?,
                hash: r.try_get("hash")?,
                created_at: r.try_get("created_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Reads what it can of the tokens of a SQLite catalog found corrupt,
/// before it is set aside: their pages may well be intact. One connection,
/// no check, no migration, only a SELECT (and no file created if missing).
pub async fn salvage_tokens(url: &str) -> Result<Vec<TokenRow>, CatalogError> {
    sqlx::any::install_default_drivers();
    let Some(path) = sqlite_path(url) else {
        return Ok(Vec::new());
    };
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", path.display()))
        .await?;
    let rows = legacy_tokens_in(&pool).await;
    pool.close().await;
    rows
}

/// The file of a SQLite catalog URL (None for PostgreSQL or in memory).
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let path = url
        .strip_prefix("sqlite:")?
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Moves the SQLite catalog file of `url` and its `-wal` and `-shm`
/// companions aside, as `NAME.corrupt-STAMP` (and `NAME.corrupt-STAMP-wal`,
/// `-shm`, the names SQLite looks for beside a database, so the kept file
/// opens with what its WAL held). `stamp` is a UTC time like
/// `20261201T204500Z`. Returns the kept database's path.
pub async fn set_aside(url: &str, stamp: &str) -> Result<PathBuf, CatalogError> {
    let db = sqlite_path(url).ok_or_else(|| {
        CatalogError::SetAside(std::io::Error::other("not a SQLite catalog file"))
    })?;
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Two corruptions within a second must not overwrite the first one kept.
    let mut kept = db.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut n = 1;
    while tokio::fs::try_exists(&kept)
        .await
        .map_err(CatalogError::SetAside)?
    {
        n += 1;
        kept = db.with_file_name(format!("{name}.corrupt-{stamp}-{n}"));
    }
    let kept_name = kept
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The companions first: a database renamed without its WAL would open
    // with the WAL of nothing, the new file with the old WAL.
    for suffix in ["-wal", "-shm"] {
        let from = db.with_file_name(format!("{name}{suffix}"));
        let to = db.with_file_name(format!("{kept_name}{suffix}"));
        match tokio::fs::rename(&from, &to).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CatalogError::SetAside(e)),
        }
    }
    tokio::fs::rename(&db, &kept)
        .await
        .map_err(CatalogError::SetAside)?;
    Ok(kept)
}

/// Creates a SQLite catalog file 0600 before SQLite does (its -wal and -shm
/// files copy its mode): it lists every app and the tokens' hashes.
fn create_private(url: &str) -> Result<(), CatalogError> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = sqlite_path(url) else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(CatalogError::Db(sqlx::Error::Io(e))),
        })
}

/// The INSERT of `row`; with `unless_known`, one that leaves a row with
/// the same ID as it is.
fn insert_row(
    row: &BackupRow,
    unless_known: bool,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    const INSERT: &str = "INSERT INTO backups (backup_id, app, host, status, created_at, total_size, services, error, pinned)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    const INSERT_NEW: &str = "INSERT INTO backups (backup_id, app, host, status, created_at, total_size, services, error, pinned)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (backup_id) DO NOTHING";
    sqlx::query(if unless_known { INSERT_NEW } else { INSERT })
        .bind(row.backup_id.to_string())
        .bind(&row.app)
        .bind(&row.host)
        .bind(row.status.as_str())
        .bind(Manifest::format_time(row.created_at))
        .bind(row.total_size as i64)
        .bind(serde_json::to_string(&row.services).expect("strings serialise"))
        .bind(row.error.as_deref())
        .bind(i64::from(row.pinned))
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<BackupRow, CatalogError> {
    let id: String = r.try_get("backup_id")?;
    let bad = |what: String| CatalogError::BadRow(id.clone(), what);
    let status: String = r.try_get("status")?;
    let services: String = r.try_get("services")?;
    let total_size: i64 = r.try_get("total_size")?;
    let created_at: String = r.try_get("created_at")?;
    let pinned: i64 = r.try_get("pinned")?;
    Ok(BackupRow {
        backup_id: id
            .parse()
            .map_err(|e: InvalidBackupId| bad(e.to_string()))?,
        app: r.try_get("app")?,
        host: r.try_get("host")?,
        status: status.parse().map_err(bad)?,
        created_at: OffsetDateTime::parse(&created_at, &Rfc3339)
            .map_err(|e| bad(format!("created_at {created_at:?}: {e}")))?,
        total_size: total_size.max(0) as u64,
        services: serde_json::from_str(&services).map_err(|e| bad(e.to_string()))?,
        error: r.try_get("error")?,
        pinned: pinned != 0,
    })
}

/// Test helpers that need SQL.
#[cfg(test)]
impl Catalog {
    /// Writes a token row as a catalog from before the tokens file did.
    pub(crate) async fn insert_legacy_token(&self, name: &str, hash: &str, revoked: bool) {
        sqlx::query(
            "INSERT INTO tokens (name, hash, created_at, revoked_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(hash)
        .bind("2026-01-01T00:00:00Z")
        .bind(revoked.then_some("2026-01-02T00:00:00Z"))
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// The page number (from 1) of a table's b-tree root.
    pub(crate) async fn root_page(&self, table: &str) -> u64 {
        let row = sqlx::query("SELECT rootpage FROM sqlite_master WHERE name = $1")
            .bind(table)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        row.try_get::<i64, _>(0).unwrap() as u64
    }
}

/// Overwrites page `page` (from 1) of the SQLite file at `path` with
/// garbage, as a failing disk or a stray write would.
#[cfg(test)]
pub(crate) fn clobber_page(path: &std::path::Path, page: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let header = std::fs::read(path).unwrap();
    let size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    assert!(header.len() as u64 >= page * size, "no page {page}");
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start((page - 1) * size)).unwrap();
    let garbage: Vec<u8> = (0..size).map(|i| (i * 131 + 7) as u8).collect();
    f.write_all(&garbage).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, app: &str) -> BackupRow {
        let backup_id: BackupId = id.parse().unwrap();
        BackupRow {
            created_at: backup_id.timestamp(),
            backup_id,
            app: app.into(),
            host: "h".into(),
            status: BackupStatus::Started,
            total_size: 0,
            services: vec![],
            error: None,
            pinned: false,
        }
    }

    #[tokio::test]
    async fn lifecycle_and_ordering() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", tmp.path().join("c.db").display());
        let c = Catalog::open(&url).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("c.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "catalog file mode {mode:o}");
        c.insert(&row("20250101_000000_aaaaaa", "a")).await.unwrap();
        c.insert(&row("20250102_000000_bbbbbb", "b")).await.unwrap();
        c.insert(&row("20250103_000000_cccccc", "a")).await.unwrap();
        c.complete("20250101_000000_aaaaaa", 42, &["postgres:db".into()])
            .await
            .unwrap();
        c.fail("20250102_000000_bbbbbb", "boom").await.unwrap();
        let all = c.list(None, None, 20).await.unwrap();
        let ids: Vec<_> = all.iter().map(|r| r.backup_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "20250103_000000_cccccc",
                "20250102_000000_bbbbbb",
                "20250101_000000_aaaaaa"
            ]
        );
        assert_eq!(
            c.list(Some("a"), None, 1).await.unwrap()[0]
                .backup_id
                .as_str(),
            "20250103_000000_cccccc"
        );
        let failed = c.list(None, Some(BackupStatus::Failed), 20).await.unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].backup_id.as_str(), "20250102_000000_bbbbbb");
        let completed_a = c
            .list(Some("a"), Some(BackupStatus::Completed), 20)
            .await
            .unwrap();
        assert_eq!(completed_a.len(), 1);
        assert!(
            c.list(Some("b"), Some(BackupStatus::Completed), 20)
                .await
                .unwrap()
                .is_empty()
        );
        let done = c.get("20250101_000000_aaaaaa").await.unwrap().unwrap();
        assert_eq!(done.status, BackupStatus::Completed);
        assert_eq!(done.total_size, 42);
        assert_eq!(done.services, ["postgres:db"]);
        assert_eq!(c.fail_interrupted().await.unwrap(), 1);
        let stale = c.get("20250103_000000_cccccc").await.unwrap().unwrap();
        assert_eq!(stale.status, BackupStatus::Failed);
        c.delete("20250103_000000_cccccc").await.unwrap();
        assert!(c.get("20250103_000000_cccccc").await.unwrap().is_none());
        drop(c);
        // Reopening keeps the data and does not re-run migrations.
        let c = Catalog::open(&url).await.unwrap();
        assert_eq!(c.list(None, None, 20).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_older_catalog_gains_pins_and_delete_pending_with_its_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", tmp.path().join("c.db").display());
        // The catalog as the version before retention left it.
        let old = Catalog::connect(&url).await.unwrap();
        let mut before = sqlx::migrate!("./migrations");
        before.migrations = std::borrow::Cow::Owned(before.migrations[..2].to_vec());
        before.run(&old.pool).await.unwrap();
        sqlx::query(
            "INSERT INTO backups (backup_id, app, host, status, created_at, total_size, services, error)
             VALUES ('20250101_000000_aaaaaa', 'a', 'h', 'COMPLETED', '2025-01-01T00:00:00Z', 42, '[\"postgres:db\"]', NULL),
                    ('20250102_000000_bbbbbb', 'a', 'h', 'FAILED', '2025-01-02T00:00:00Z', 0, '[]', 'boom')",
        )
        .execute(&old.pool)
        .await
        .unwrap();
        old.close().await;

        let c = Catalog::open(&url).await.unwrap();
        let done = c.get("20250101_000000_aaaaaa").await.unwrap().unwrap();
        assert_eq!(
            (done.status, done.total_size, done.pinned),
            (BackupStatus::Completed, 42, false)
        );
        assert_eq!(done.services, ["postgres:db"]);
        let failed = c.get("20250102_000000_bbbbbb").await.unwrap().unwrap();
        assert_eq!(failed.error.as_deref(), Some("boom"));
        assert_eq!(c.history(Some("a")).await.unwrap().len(), 2);
        assert!(c.history(Some("b")).await.unwrap().is_empty());

        c.set_pinned("20250101_000000_aaaaaa", true).await.unwrap();
        assert!(
            c.get("20250101_000000_aaaaaa")
                .await
                .unwrap()
                .unwrap()
                .pinned
        );
        c.mark_delete_pending("20250102_000000_bbbbbb")
            .await
            .unwrap();
        c.delete_failed("20250102_000000_bbbbbb", "deletion failed: EIO")
            .await
            .unwrap();
        let pending = c
            .list(None, Some(BackupStatus::DeletePending), 10)
            .await
            .unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].error.as_deref(), Some("deletion failed: EIO"));

        // What the store holds is added once; the rest is left as it is.
        assert!(!c.is_empty().await.unwrap());
        let found = BackupRow {
            backup_id: "20250103_000000_cccccc".parse().unwrap(),
            ..done.clone()
        };
        assert_eq!(
            c.add_found(&[found.clone(), done.clone()]).await.unwrap(),
            1
        );
        assert_eq!(c.add_found(&[found]).await.unwrap(), 0);
        let statuses = c.statuses().await.unwrap();
        assert_eq!(statuses.len(), 3);
        assert_eq!(
            statuses["20250102_000000_bbbbbb"],
            BackupStatus::DeletePending
        );
        c.delete("20250102_000000_bbbbbb").await.unwrap();
        assert!(c.get("20250102_000000_bbbbbb").await.unwrap().is_none());
    }

    async fn filled(dir: &std::path::Path) -> (String, Catalog) {
        let url = format!("sqlite://{}", dir.join("c.db").display());
        let c = Catalog::open(&url).await.unwrap();
        for i in 0..50 {
            c.insert(&row(&format!("20250101_0000{i:02}_aaaaaa"), "a"))
                .await
                .unwrap();
        }
        (url, c)
    }

    #[tokio::test]
    async fn a_damaged_page_is_found_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let (url, c) = filled(tmp.path()).await;
        let page = c.root_page("backups").await;
        c.checkpoint().await;
        c.close().await;
        // Whole again after a checkpoint: reopening finds nothing wrong.
        Catalog::open(&url).await.unwrap().close().await;
        clobber_page(&tmp.path().join("c.db"), page);
        let err = Catalog::open(&url)
            .await
            .err()
            .expect("the damage is found");
        assert!(err.is_corruption(), "{err}");
        assert!(matches!(err, CatalogError::Corrupt(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let url = format!("sqlite://{}", path.display());
        let err = Catalog::open(&url).await.err().expect("refused");
        assert!(err.is_corruption(), "{err:?}");
    }

    #[tokio::test]
    async fn a_corrupt_catalog_is_set_aside_with_its_companions() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("c.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        for (name, text) in [("c.db", "db"), ("c.db-wal", "wal"), ("c.db-shm", "shm")] {
            std::fs::write(tmp.path().join(name), text).unwrap();
        }
        let kept = set_aside(&url, "20261201T204500Z").await.unwrap();
        assert_eq!(kept, tmp.path().join("c.db.corrupt-20261201T204500Z"));
        std::fs::write(&db, "db2").unwrap();
        let again = set_aside(&url, "20261201T204500Z").await.unwrap();
        assert_eq!(again, tmp.path().join("c.db.corrupt-20261201T204500Z-2"));
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "c.db.corrupt-20261201T204500Z",
                "c.db.corrupt-20261201T204500Z-2",
                "c.db.corrupt-20261201T204500Z-shm",
                "c.db.corrupt-20261201T204500Z-wal",
            ]
        );
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "db");
        assert!(set_aside("postgres://u@h/db", "x").await.is_err());
    }

    #[tokio::test]
    async fn legacy_tokens_are_read_and_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        let (url, c) = filled(tmp.path()).await;
        let hash = format!("sha256:{}", "a".repeat(64));
        c.insert_legacy_token("alice", &hash, false).await;
        let rows = c.legacy_tokens().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].name.as_str(), rows[0].hash.as_str()),
            ("alice", hash.as_str())
        );
        assert_eq!(rows[0].revoked_at, None);
        // Readable from a damaged file whose tokens' pages are whole.
        let page = c.root_page("backups").await;
        c.checkpoint().await;
        c.close().await;
        clobber_page(&tmp.path().join("c.db"), page);
        assert_eq!(salvage_tokens(&url).await.unwrap(), rows);
        for name in ["c.db", "c.db-wal", "c.db-shm"] {
            let _ = std::fs::remove_file(tmp.path().join(name));
        }
        let c = Catalog::open(&url).await.unwrap();
        c.insert_legacy_token("bob", &hash, true).await;
        c.clear_legacy_tokens().await.unwrap();
        assert!(c.legacy_tokens().await.unwrap().is_empty());
    }
}
