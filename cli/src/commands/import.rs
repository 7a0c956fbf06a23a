//! `backup:import DIR`: registers a backup directory that sits on the
//! controller's machine (copied in by hand, or written by Hop3's Python
//! server). The controller verifies it and copies it into the store.

use hop3_proto::v1::BackupSummary;

use crate::client::ControllerClient;
use crate::error::CliError;
use crate::output::{Output, format_size};
use crate::views::BackupView;

/// Imports the backup directory at `path`, an absolute path on the
/// controller's machine.
pub async fn run(
    controller: &mut ControllerClient,
    out: Output,
    path: &str,
) -> Result<(), CliError> {
    let summary = controller.import_backup(path).await?;
    if out.is_json() {
        out.json(&BackupView::from(summary))
    } else {
        out.text(&render(&summary))
    }
}

/// Like `backup:create`'s text, naming the application too, since it comes
/// from the imported directory rather than the command line.
pub fn render(s: &BackupSummary) -> String {
    format!(
        "Backup imported successfully!\n\n\
         Backup ID: {id}\n\
         Application: {app}\n\
         Location: {location}\n\
         Total size: {size}\n\n\
         To restore this backup:\n  \
         hop3 backup:restore {id}\n",
        id = s.backup_id,
        app = s.app,
        location = s.location,
        size = format_size(s.total_size),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_summary_and_how_to_restore() {
        let summary = BackupSummary {
            backup_id: "20251108_143022_a8f3d9".into(),
            app: "my-app".into(),
            status: "COMPLETED".into(),
            total_size: 16_357_785,
            location: "/var/hop3/backups/apps/my-app/20251108_143022_a8f3d9".into(),
            ..Default::default()
        };
        assert_eq!(
            render(&summary),
            "\
Backup imported successfully!

Backup ID: 20251108_143022_a8f3d9
Application: my-app
Location: /var/hop3/backups/apps/my-app/20251108_143022_a8f3d9
Total size: 15.6 MB

To restore this backup:
  hop3 backup:restore 20251108_143022_a8f3d9
"
        );
    }
}
