//! Deleting a backup: its files, then its catalog row.

use crate::catalog::BackupRow;
use crate::error::Result;
use crate::locks::BackupUse;
use crate::state::Controller;

/// Deletes the backup of `row`, once nothing reads or writes it.
pub async fn delete(ctl: &Controller, row: &BackupRow) -> Result<()> {
    // A backup being written, restored or verified stays until that ends.
    // Other operations on its app (a create of the next backup, a restore
    // of another) do not touch its files, so they do not stop it.
    let _deleting = ctl.use_backup(&row.backup_id, BackupUse::Delete)?;
    ctl.store.delete(&row.app, &row.backup_id).await?;
    ctl.catalog.delete(&row.backup_id).await?;
    tracing::info!(backup_id = %row.backup_id, app = %row.app, "backup deleted");
    Ok(())
}
