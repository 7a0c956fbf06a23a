//! Copies of every backup in other stores (`--copy-to`): made in the
//! background once a backup is COMPLETED in the primary store, checked by
//! digest, retried with backoff until they succeed, and recorded in the
//! catalog so that `backup:info` and `backup:list` say where each backup
//! is and a restore can read from a copy when the primary has lost it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hop3_proto::v1;
use tokio::sync::Notify;

use crate::catalog::{BackupRow, BackupStatus, CopyDue, CopyRow, CopyState};
use crate::error::{ControllerError, Result};
use crate::locks::BackupUse;
use crate::state::Controller;
use crate::store::{Copied, Store};

/// How many due copies one catalog query fetches.
const BATCH: u32 = 32;

/// How often the copier looks for failed copies whose retry is due, when
/// no new backup wakes it.
const TICK: Duration = Duration::from_secs(30);

/// How soon a pass that found a backup busy (a create or a delete holding
/// it) looks again.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// The wait after a first failure; doubled at each failure after it, up to
/// [`MAX_BACKOFF`]. Copies are retried for as long as they fail: a copy
/// store down for a week gets every backup once it is back.
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The copy stores and the copier's wake-up call.
#[derive(Default)]
pub struct Copies {
    stores: Vec<Store>,
    wake: Notify,
}

impl Copies {
    /// Copies into `stores`, in this order of preference for restores.
    pub fn new(stores: Vec<Store>) -> Self {
        Self {
            stores,
            wake: Notify::new(),
        }
    }

    /// The copy stores.
    pub fn stores(&self) -> &[Store] {
        &self.stores
    }

    /// Tells the copier a backup completed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The wait before attempt `attempts + 1`, after `attempts` failed.
fn backoff(attempts: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Runs the copier: at start (for backups made before a copy store was
/// added, or whose copy a stop interrupted), after every backup, and every
/// [`TICK`] for the retries due.
pub fn spawn(ctl: Arc<Controller>) {
    if ctl.copies.stores.is_empty() {
        return;
    }
    tokio::spawn(async move {
        // Everything at start and after a backup; the retries due between.
        let mut scope = Scope::All;
        loop {
            // A backup passed by because it was busy is not a failure
            // with a retry time: only a pass over everything finds it.
            let busy = match pass_at(&ctl, Utc::now(), scope).await {
                Ok(pass) => pass.busy > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "the copier could not read the catalog; next try soon");
                    false
                }
            };
            let (wait, then) = if busy {
                (BUSY_RETRY, Scope::All)
            } else {
                (TICK, Scope::Retries)
            };
            scope = tokio::select! {
                () = ctl.copies.wake.notified() => Scope::All,
                () = tokio::time::sleep(wait) => then,
            };
        }
    });
}

/// [`pass_at`] now, over every backup; how many copies were made.
#[cfg(test)]
pub async fn pass(ctl: &Controller) -> Result<usize> {
    Ok(pass_at(ctl, Utc::now(), Scope::All).await?.made)
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pass {
    /// Copies made.
    pub made: usize,
    /// Backups passed by because they were busy.
    pub busy: usize,
}

/// Which backups a pass looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every backup not copied yet.
    All,
    /// Only those whose copy failed before.
    Retries,
}

/// Copies every backup of `scope` due by `now` to every copy store.
pub(crate) async fn pass_at(
    ctl: &Controller,
    now: chrono::DateTime<Utc>,
    scope: Scope,
) -> Result<Pass> {
    let mut pass = Pass::default();
    for store in &ctl.copies.stores {
        let location = store.describe();
        loop {
            let due = ctl
                .catalog
                .copies_due(&location, now, BATCH, scope == Scope::Retries)
                .await?;
            let mut tried = 0;
            for d in &due {
                match copy_one(ctl, store, &location, d).await? {
                    Attempt::Busy => pass.busy += 1,
                    Attempt::Gone => {}
                    Attempt::Made => {
                        pass.made += 1;
                        tried += 1;
                    }
                    Attempt::Failed => tried += 1,
                }
            }
            // A short batch was the last; a batch of nothing but busy
            // backups waits for the next pass rather than spin on them.
            if due.len() < BATCH as usize || tried == 0 {
                break;
            }
        }
    }
    Ok(pass)
}

enum Attempt {
    Made,
    Failed,
    /// Held by a create or a delete: nothing recorded, looked at again
    /// soon.
    Busy,
    /// No longer COMPLETED: nothing to copy.
    Gone,
}

async fn copy_one(
    ctl: &Controller,
    store: &Store,
    location: &str,
    due: &CopyDue,
) -> Result<Attempt> {
    // Kept from a delete while it is read; a delete or create holding it
    // now makes this wait for the next pass.
    let Ok(_reading) = ctl.use_backup(&due.backup_id, BackupUse::Copy) else {
        return Ok(Attempt::Busy);
    };
    match ctl.catalog.get(&due.backup_id).await? {
        Some(row) if row.status == BackupStatus::Completed => {}
        _ => return Ok(Attempt::Gone),
    }
    let started = std::time::Instant::now();
    match ctl
        .store
        .replicate_to(store, &due.app, &due.backup_id)
        .await
    {
        Ok(copied) => {
            ctl.catalog
                .record_copy(&due.backup_id, location, None)
                .await?;
            let bytes = match copied {
                Copied::Bytes(n) => n,
                Copied::AlreadyThere => 0,
            };
            tracing::info!(backup_id = %due.backup_id, app = %due.app, to = %location, bytes, ms = started.elapsed().as_millis() as u64, "backup copied");
            Ok(Attempt::Made)
        }
        Err(e) => {
            let e = ControllerError::from(e);
            let wait = backoff(due.attempts + 1);
            let next = Utc::now() + chrono::Duration::from_std(wait).expect("a short wait");
            tracing::warn!(backup_id = %due.backup_id, app = %due.app, to = %location, error = %e, attempt = due.attempts + 1, retry_in_s = wait.as_secs(), "could not copy a backup; will retry");
            ctl.catalog
                .record_copy(&due.backup_id, location, Some((&e.to_string(), next)))
                .await?;
            Ok(Attempt::Failed)
        }
    }
}

/// Where each of `rows` is: the primary store, then every copy store
/// (configured or recorded), for `backup:list` and `backup:info`.
pub async fn locate(ctl: &Controller, rows: &[BackupRow]) -> Result<Vec<Vec<v1::BackupLocation>>> {
    let ids: Vec<String> = rows.iter().map(|r| r.backup_id.to_string()).collect();
    let mut copies = if ctl.copies.stores.is_empty() {
        Default::default()
    } else {
        ctl.catalog.copies_of(&ids).await?
    };
    Ok(rows
        .iter()
        .map(|row| {
            locations(
                ctl,
                row,
                copies.remove(row.backup_id.as_str()).unwrap_or_default(),
            )
        })
        .collect())
}

fn locations(
    ctl: &Controller,
    row: &BackupRow,
    mut recorded: Vec<CopyRow>,
) -> Vec<v1::BackupLocation> {
    let primary = v1::BackupLocation {
        url: ctl.store.location(&row.app, &row.backup_id),
        state: match row.status {
            BackupStatus::Completed => "ok",
            BackupStatus::Started => "pending",
            BackupStatus::Failed => "failed",
            BackupStatus::DeletePending => "deleting",
        }
        .into(),
        primary: true,
        ..Default::default()
    };
    let mut out = vec![primary];
    if !matches!(
        row.status,
        BackupStatus::Completed | BackupStatus::DeletePending
    ) {
        return out;
    }
    for store in &ctl.copies.stores {
        let described = store.describe();
        let found = recorded
            .iter()
            .position(|c| c.location == described)
            .map(|i| recorded.remove(i));
        out.push(copy_location(
            store.location(&row.app, &row.backup_id),
            found,
        ));
    }
    // Copies in stores no longer configured: still somewhere, say so.
    for c in recorded {
        let url = format!(
            "{}/apps/{}/{}",
            c.location.trim_end_matches('/'),
            row.app,
            row.backup_id
        );
        out.push(copy_location(url, Some(c)));
    }
    out
}

fn copy_location(url: String, found: Option<CopyRow>) -> v1::BackupLocation {
    let (state, reason, attempts, updated_at) = match found {
        None => ("pending", String::new(), 0, String::new()),
        Some(c) => match c.state {
            CopyState::Ok => ("ok", String::new(), c.attempts, c.updated_at),
            CopyState::Failed(why) => ("failed", why, c.attempts, c.updated_at),
        },
    };
    v1::BackupLocation {
        url,
        state: state.into(),
        reason,
        attempts,
        updated_at,
        primary: false,
    }
}

/// The stores a restore of `row` may read from, in order: the primary,
/// then each copy store holding a checked copy.
pub async fn sources(ctl: &Controller, row: &BackupRow) -> Result<Vec<Store>> {
    let mut out = vec![ctl.store.clone()];
    if ctl.copies.stores.is_empty() {
        return Ok(out);
    }
    let recorded = ctl
        .catalog
        .copies_of(&[row.backup_id.to_string()])
        .await?
        .remove(row.backup_id.as_str())
        .unwrap_or_default();
    for store in &ctl.copies.stores {
        let described = store.describe();
        if recorded
            .iter()
            .any(|c| c.location == described && c.state == CopyState::Ok)
        {
            out.push(store.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(30));
        assert_eq!(backoff(2), Duration::from_secs(60));
        assert_eq!(backoff(5), Duration::from_secs(480));
        assert_eq!(backoff(8), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
