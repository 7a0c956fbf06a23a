//! The catalog: one row per backup, in SQLite (one machine) or PostgreSQL (a
//! fleet), through sqlx's `Any` driver: the same SQL serves both (`$n`
//! placeholders, portable types). All SQL of the controller lives here.

use std::collections::HashSet;
use std::str::FromStr;

use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;

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
}

/// Where a backup stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupStatus {
    Started,
    Completed,
    Failed,
}

impl BackupStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "STARTED",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
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
            other => Err(format!("unknown status {other:?}")),
        }
    }
}

/// One backup as the catalog knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupRow {
    pub backup_id: String,
    pub app: String,
    pub host: String,
    pub status: BackupStatus,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub total_size: u64,
    /// "type:name" of each service in the backup.
    pub services: Vec<String>,
    pub error: Option<String>,
}

/// The catalog of backups.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
}

/// A SELECT of every column, as the static string sqlx wants.
macro_rules! select_rows {
    ($rest:literal) => {
        concat!(
            "SELECT backup_id, app, host, status, created_at, total_size, services, error FROM backups ",
            $rest
        )
    };
}

impl Catalog {
    /// Opens (creating if missing) the catalog at `url` and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, CatalogError> {
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
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Records a backup that has just started.
    pub async fn insert(&self, row: &BackupRow) -> Result<(), CatalogError> {
        insert_row(row).execute(&self.pool).await?;
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
        limit: u32,
    ) -> Result<Vec<BackupRow>, CatalogError> {
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

    /// Makes the catalog agree with the store: `found` are the COMPLETED
    /// backups the store holds. Missing ones are added, COMPLETED rows whose
    /// directory is gone are dropped. Returns (added, dropped).
    pub async fn reconcile(&self, found: &[BackupRow]) -> Result<(usize, usize), CatalogError> {
        let known: Vec<(String, String)> = sqlx::query("SELECT backup_id, status FROM backups")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("backup_id")?, r.try_get("status")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let in_store: HashSet<&str> = found.iter().map(|r| r.backup_id.as_str()).collect();
        let in_catalog: HashSet<&str> = known.iter().map(|(id, _)| id.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        let mut added = 0;
        for row in found
            .iter()
            .filter(|r| !in_catalog.contains(r.backup_id.as_str()))
        {
            insert_row(row).execute(&mut *tx).await?;
            added += 1;
        }
        let mut dropped = 0;
        for (id, _) in known
            .iter()
            .filter(|(id, status)| status == "COMPLETED" && !in_store.contains(id.as_str()))
        {
            sqlx::query("DELETE FROM backups WHERE backup_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            dropped += 1;
        }
        tx.commit().await?;
        Ok((added, dropped))
    }

    /// Records a new API token by its hash; false if the name is taken.
    pub async fn create_token(
        &self,
        name: &str,
        hash: &str,
        now: &str,
    ) -> Result<bool, CatalogError> {
        let done = sqlx::query(
            "INSERT INTO tokens (name, hash, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes a token; false if there is no live token of that name.
    pub async fn revoke_token(&self, name: &str, now: &str) -> Result<bool, CatalogError> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(name)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The name of the live token with this hash.
    pub async fn token_name(&self, hash: &str) -> Result<Option<String>, CatalogError> {
        let row = sqlx::query("SELECT name FROM tokens WHERE hash = $1 AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("name")).transpose()?)
    }

    /// Every token: name, creation time, revocation time.
    pub async fn list_tokens(&self) -> Result<Vec<(String, String, Option<String>)>, CatalogError> {
        let rows = sqlx::query("SELECT name, created_at, revoked_at FROM tokens ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name")?,
                    r.try_get("created_at")?,
                    r.try_get("revoked_at")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Forgets a backup.
    pub async fn delete(&self, id: &str) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM backups WHERE backup_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Creates a SQLite catalog file 0600 before SQLite does (its -wal and -shm
/// files copy its mode): it lists every app and the tokens' hashes.
fn create_private(url: &str) -> Result<(), CatalogError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" || std::path::Path::new(path).exists() {
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

fn insert_row(row: &BackupRow) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO backups (backup_id, app, host, status, created_at, total_size, services, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&row.backup_id)
    .bind(&row.app)
    .bind(&row.host)
    .bind(row.status.as_str())
    .bind(&row.created_at)
    .bind(row.total_size as i64)
    .bind(serde_json::to_string(&row.services).expect("strings serialise"))
    .bind(row.error.as_deref())
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<BackupRow, CatalogError> {
    let id: String = r.try_get("backup_id")?;
    let bad = |what: String| CatalogError::BadRow(id.clone(), what);
    let status: String = r.try_get("status")?;
    let services: String = r.try_get("services")?;
    let total_size: i64 = r.try_get("total_size")?;
    Ok(BackupRow {
        backup_id: id.clone(),
        app: r.try_get("app")?,
        host: r.try_get("host")?,
        status: status.parse().map_err(bad)?,
        created_at: r.try_get("created_at")?,
        total_size: total_size.max(0) as u64,
        services: serde_json::from_str(&services).map_err(|e| bad(e.to_string()))?,
        error: r.try_get("error")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, app: &str) -> BackupRow {
        BackupRow {
            backup_id: id.into(),
            app: app.into(),
            host: "h".into(),
            status: BackupStatus::Started,
            created_at: format!(
                "{}-{}-{}T{}:{}:{}Z",
                &id[..4],
                &id[4..6],
                &id[6..8],
                &id[9..11],
                &id[11..13],
                &id[13..15]
            ),
            total_size: 0,
            services: vec![],
            error: None,
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
        let all = c.list(None, 20).await.unwrap();
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
            c.list(Some("a"), 1).await.unwrap()[0].backup_id,
            "20250103_000000_cccccc"
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
        assert_eq!(c.list(None, 20).await.unwrap().len(), 2);
    }
}
