//! The catalog's record of the copies of backups in other stores.

use std::collections::HashMap;

use sqlx::Row;

use super::{Catalog, CatalogError};

/// Where the copy of a backup in one location stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyState {
    /// Copied and checked.
    Ok,
    /// The last attempt failed, for this reason; tried again later.
    Failed(String),
}

/// The copy of one backup in one location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyRow {
    /// The copy store, as `Store::describe` names it.
    pub location: String,
    pub state: CopyState,
    pub attempts: u32,
    /// RFC 3339, UTC: when the state last changed.
    pub updated_at: String,
}

/// A COMPLETED backup that a copy store does not hold yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyDue {
    pub backup_id: String,
    pub app: String,
    /// Attempts made so far.
    pub attempts: u32,
}

use chrono::{DateTime, Utc};

use crate::schedule::slot_text as text;

impl Catalog {
    /// COMPLETED backups not copied to `location` yet, newest first (the
    /// most precious after a disaster), skipping those whose last attempt
    /// failed less than their backoff ago. With `retries_only`, only those
    /// that failed before, found through the copies' index: the whole
    /// catalog is not walked (110 ms for 100,000 backups in SQLite here,
    /// against well under a millisecond).
    pub async fn copies_due(
        &self,
        location: &str,
        now: DateTime<Utc>,
        limit: u32,
        retries_only: bool,
    ) -> Result<Vec<CopyDue>, CatalogError> {
        const ALL: &str = "SELECT b.backup_id, b.app, COALESCE(c.attempts, 0) AS attempts FROM backups b \
             LEFT JOIN backup_copies c ON c.backup_id = b.backup_id AND c.location = $1 \
             WHERE b.status = 'COMPLETED' AND (c.state IS NULL OR (c.state = 'FAILED' AND c.next_attempt_at <= $2)) \
             ORDER BY b.created_at DESC, b.backup_id DESC LIMIT $3";
        const RETRIES: &str = "SELECT b.backup_id, b.app, c.attempts FROM backup_copies c \
             JOIN backups b ON b.backup_id = c.backup_id \
             WHERE c.location = $1 AND c.state = 'FAILED' AND c.next_attempt_at <= $2 AND b.status = 'COMPLETED' \
             ORDER BY b.created_at DESC, b.backup_id DESC LIMIT $3";
        let rows = sqlx::query(if retries_only { RETRIES } else { ALL })
            .bind(location)
            .bind(text(now))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(CopyDue {
                    backup_id: r.try_get("backup_id")?,
                    app: r.try_get("app")?,
                    attempts: r.try_get::<i64, _>("attempts")? as u32,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Records the end of an attempt to copy `id` to `location`: None for a
    /// success, else why it failed and when to try again.
    pub async fn record_copy(
        &self,
        id: &str,
        location: &str,
        failure: Option<(&str, DateTime<Utc>)>,
    ) -> Result<(), CatalogError> {
        let now = Utc::now();
        let (state, reason, next) = match failure {
            None => ("OK", None, now),
            Some((why, next)) => ("FAILED", Some(why), next),
        };
        sqlx::query(
            "INSERT INTO backup_copies (backup_id, location, state, reason, attempts, updated_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $6) \
             ON CONFLICT (backup_id, location) DO UPDATE SET state = $3, reason = $4, \
             attempts = backup_copies.attempts + 1, updated_at = $5, next_attempt_at = $6",
        )
        .bind(id)
        .bind(location)
        .bind(state)
        .bind(reason)
        .bind(text(now))
        .bind(text(next))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The copies recorded for each of `ids`.
    pub async fn copies_of(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<CopyRow>>, CatalogError> {
        let mut out: HashMap<String, Vec<CopyRow>> = HashMap::new();
        // In batches: one statement's placeholders are limited (SQLite: 32,766).
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT backup_id, location, state, reason, attempts, updated_at FROM backup_copies \
                 WHERE backup_id IN ({}) ORDER BY location",
                marks.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.pool).await? {
                let id: String = r.try_get("backup_id")?;
                let state: String = r.try_get("state")?;
                let state = match state.as_str() {
                    "OK" => CopyState::Ok,
                    _ => CopyState::Failed(
                        r.try_get::<Option<String>, _>("reason")?
                            .unwrap_or_default(),
                    ),
                };
                out.entry(id).or_default().push(CopyRow {
                    location: r.try_get("location")?,
                    state,
                    attempts: r.try_get::<i64, _>("attempts")? as u32,
                    updated_at: r.try_get("updated_at")?,
                });
            }
        }
        Ok(out)
    }

    /// The IDs of the backups with a checked copy somewhere: a catalog
    /// checked against a lost primary store keeps them (they restore from
    /// the copy).
    pub async fn copied_ids(&self) -> Result<Vec<String>, CatalogError> {
        let rows = sqlx::query("SELECT DISTINCT backup_id FROM backup_copies WHERE state = 'OK'")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("backup_id"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}
