//! The periodic sweep of the store: what a failed write or delete could not
//! clean up at the time (the service unreachable, the controller killed
//! before its next start) is removed within one interval, not left to be
//! billed and to confuse a reader of the bucket.

use std::sync::Arc;
use std::time::Duration;

use crate::catalog::BackupStatus;
use crate::error::ControllerError;
use crate::state::Controller;

/// Sweeps the store every `every`, the backups being written spared.
pub fn spawn(ctl: Arc<Controller>, every: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match sweep(&ctl).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "swept the leftovers of failed writes"),
                Err(e) => {
                    tracing::warn!(error = %e, "the store sweep failed; next try in one interval")
                }
            }
        }
    });
}

/// One sweep; how many places were cleaned. Spared: the backups being
/// written, and those in use (a `keys retire` rewriting one has its
/// uploads journalled in a mark beside the manifest, which a sweep would
/// otherwise abort).
pub async fn sweep(ctl: &Controller) -> Result<usize, ControllerError> {
    let mut busy: Vec<(String, String)> = ctl
        .catalog
        .list(None, Some(BackupStatus::Started), u32::MAX)
        .await?
        .into_iter()
        .map(|r| (r.app, r.backup_id.to_string()))
        .collect();
    for id in ctl.backup_locks.held_ids() {
        if let Some(row) = ctl.catalog.get(&id).await? {
            busy.push((row.app, id));
        }
    }
    Ok(ctl.store.sweep(&busy).await?)
}
