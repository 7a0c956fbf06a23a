//! Pinning a backup: no retention policy, and no `backup:delete`, removes
//! it until it is unpinned.

use crate::catalog::{BackupRow, BackupStatus};
use crate::error::{ControllerError, Result};
use crate::locks::BackupUse;
use crate::state::Controller;

/// Pins (or unpins) backup `id`: in the store first, which a rebuilt
/// catalog reads the pin back from, then in the catalog. Only a COMPLETED
/// backup can be pinned; unpinning works on any.
pub async fn set_pinned(ctl: &Controller, id: &str, pinned: bool) -> Result<BackupRow> {
    let row = ctl.backup_row(id).await?;
    let _marking = ctl.use_backup(&row.backup_id, BackupUse::Pin)?;
    if pinned && row.status != BackupStatus::Completed {
        return Err(ControllerError::NotPinnable {
            id: row.backup_id.to_string(),
            status: row.status.as_str(),
        });
    }
    if row.pinned == pinned {
        return Ok(row);
    }
    if row.status == BackupStatus::Completed {
        ctl.store
            .set_pinned(&row.app, &row.backup_id, pinned)
            .await?;
        // The copies' pins matter only to a catalog rebuilt from a copy:
        // one that cannot be written now is logged, not a refusal.
        for copy in ctl.copies.stores() {
            if copy.holds(&row.app, &row.backup_id).await.is_ok()
                && let Err(e) = copy.set_pinned(&row.app, &row.backup_id, pinned).await
            {
                tracing::warn!(backup_id = %row.backup_id, store = %copy.describe(), error = %e, "could not change the pin of a copy");
            }
        }
    }
    ctl.catalog.set_pinned(&row.backup_id, pinned).await?;
    tracing::info!(backup_id = %row.backup_id, app = %row.app, pinned, "backup pin changed");
    Ok(BackupRow { pinned, ..row })
}
