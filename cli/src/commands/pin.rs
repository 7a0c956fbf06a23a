//! `backup:pin ID` and `backup:unpin ID`.

use hop3_proto::BackupId;
use serde::Serialize;

use crate::client::ControllerClient;
use crate::error::CliError;
use crate::output::Output;
use crate::views::BackupView;

/// What `--json` prints: the backup, as every document shows one.
#[derive(Debug, Serialize)]
struct PinView {
    backup: BackupView,
}

/// Pins (or unpins) backup `id`.
pub async fn run(
    controller: &mut ControllerClient,
    out: Output,
    id: &BackupId,
    pinned: bool,
) -> Result<(), CliError> {
    let backup = controller.pin_backup(id, pinned).await?;
    if out.is_json() {
        out.json(&PinView {
            backup: BackupView::listed(backup),
        })
    } else if pinned {
        out.text(&format!(
            "✓ Backup {id} pinned: no retention policy and no backup:delete removes it until backup:unpin\n"
        ))
    } else {
        out.text(&format!(
            "✓ Backup {id} unpinned: retention policies apply to it again\n"
        ))
    }
}
