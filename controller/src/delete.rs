//! Deleting a backup: marked DELETE_PENDING, its files deleted (in the
//! primary store and every copy store), then its
//! catalog row, so that no failure or crash in between leaves a row that
//! says COMPLETED over missing files, or files no row lists.

use crate::catalog::{BackupRow, BackupStatus};
use crate::error::{ControllerError, Result};
use crate::locks::BackupUse;
use crate::state::Controller;

/// Deletes the backup of `row` (`backup:delete`, a retention policy),
/// once nothing reads or writes it: marks it DELETE_PENDING, deletes the
/// store's copy, then the row. A pinned backup is refused (unpin it
/// first). When the store refuses, the row stays DELETE_PENDING with the
/// reason, for a retry ([`retry_pending`], or `backup:delete` again).
pub async fn delete(ctl: &Controller, row: &BackupRow) -> Result<()> {
    // A backup being written, restored or verified stays until that ends.
    // Other operations on its app (a create of the next backup, a restore
    // of another) do not touch its files, so they do not stop it.
    let _deleting = ctl.use_backup(&row.backup_id, BackupUse::Delete)?;
    // Read again under the lock: a pin may have come since the caller
    // read the row (a prune plans from rows read before).
    let Some(row) = ctl.catalog.get(&row.backup_id).await? else {
        return Ok(());
    };
    if row.pinned {
        return Err(ControllerError::Pinned(row.backup_id.to_string()));
    }
    if row.status != BackupStatus::DeletePending {
        ctl.catalog.mark_delete_pending(&row.backup_id).await?;
    }
    // The copies too: a backup deleted from the primary store alone would
    // come back in a catalog rebuilt from a copy.
    for store in std::iter::once(&ctl.store).chain(ctl.copies.stores()) {
        if let Err(e) = store.delete(&row.app, &row.backup_id).await {
            let e = ControllerError::from(e);
            let place = store.describe();
            tracing::warn!(backup_id = %row.backup_id, app = %row.app, store = %place, error = %e, "could not delete a backup's files: left DELETE_PENDING");
            ctl.catalog
                .delete_failed(&row.backup_id, &format!("deletion failed: {place}: {e}"))
                .await?;
            return Err(e);
        }
    }
    ctl.catalog.delete(&row.backup_id).await?;
    tracing::info!(backup_id = %row.backup_id, app = %row.app, "backup deleted");
    Ok(())
}

/// Retries the deletion of every DELETE_PENDING backup of `app` (or of
/// every app); returns how many are still pending. Failures are logged by
/// [`delete`] and kept in the row.
pub async fn retry_pending(ctl: &Controller, app: Option<&str>) -> Result<usize> {
    let pending = ctl
        .catalog
        .list(app, Some(BackupStatus::DeletePending), u32::MAX)
        .await?;
    let mut left = 0;
    for row in &pending {
        if delete(ctl, row).await.is_err() {
            left += 1;
        }
    }
    Ok(left)
}
