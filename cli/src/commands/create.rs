//! `backup:create APP [--no-services] [--host HOST] [--format V]
//! [--cancel-on-interrupt]`.

use hop3_proto::v1::BackupSummary;

use crate::args::CreateOptions;
use crate::client::ControllerClient;
use crate::error::{CliError, InterruptedJob, Subject};
use crate::output::{Output, format_size};
use crate::progress;
use crate::stream::{Following, ctrl_c, follow};
use crate::views::BackupView;

/// The status of a backup the controller gave up on.
const FAILED: &str = "FAILED";

/// Backs `app` up, showing progress on stderr. Ctrl-C leaves the backup to
/// run on the controller, or cancels it with `--cancel-on-interrupt`.
pub async fn run(
    controller: &mut ControllerClient,
    out: Output,
    app: &str,
    options: &CreateOptions,
) -> Result<(), CliError> {
    if !out.is_json() {
        out.text(&format!("Creating backup for app '{app}'...\n"))?;
    }
    let stream = controller.create_backup(app, options).await?;
    let mut progress = progress::for_stderr(out.is_json());
    let how = Following {
        progress: progress.as_mut(),
        on_error: |status| controller.error(status, Subject::App),
        interrupt: ctrl_c(),
        operation: "backup",
    };
    let interrupted = |started: Option<BackupSummary>| {
        CliError::Interrupted(InterruptedJob::Backup {
            id: started.map(|s| s.backup_id),
            app: app.to_owned(),
            cancelled: options.cancel_on_interrupt,
        })
    };
    let summary = follow(stream, how, interrupted).await?;
    // A `completed` event for a FAILED backup is still a failure: scripts
    // must not pick up its ID as a usable backup.
    if summary.status == FAILED {
        return Err(CliError::BackupFailed {
            backup_id: summary.backup_id,
            reason: summary.error,
        });
    }
    if out.is_json() {
        out.json(&BackupView::from(summary))
    } else {
        out.text(&render(&summary))
    }
}

/// The guide's text after the heading. Scripts take the ID with
/// `grep "Backup ID:" | awk '{print $3}'`.
pub fn render(s: &BackupSummary) -> String {
    let mut text = format!(
        "\nBackup created successfully!\n\n\
         Backup ID: {id}\n\
         Location: {location}\n\
         Total size: {size}\n\n\
         To restore this backup:\n  \
         hop3 backup:restore {id}\n",
        id = s.backup_id,
        location = s.location,
        size = format_size(s.total_size),
    );
    text.push_str(&skipped(&s.skipped));
    text
}

/// The entries a backup left out, as a section of their own; empty if none.
pub fn skipped(entries: &[hop3_proto::v1::SkippedEntry]) -> String {
    if entries.is_empty() {
        return String::new();
    }
    let mut text = format!("\nNot in the backup ({} entries):\n", entries.len());
    for e in entries {
        text.push_str(&format!("  - {}: {}\n", e.path, e.reason));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_guide_output() {
        let summary = BackupSummary {
            backup_id: "20251108_143022_a8f3d9".into(),
            app: "my-app".into(),
            status: "COMPLETED".into(),
            total_size: 16_357_785,
            location: "/var/hop3/backups/apps/my-app/20251108_143022_a8f3d9".into(),
            ..Default::default()
        };
        let text = render(&summary);
        assert_eq!(
            text,
            "
Backup created successfully!

Backup ID: 20251108_143022_a8f3d9
Location: /var/hop3/backups/apps/my-app/20251108_143022_a8f3d9
Total size: 15.6 MB

To restore this backup:
  hop3 backup:restore 20251108_143022_a8f3d9
"
        );
        let id_line = text.lines().find(|l| l.contains("Backup ID:")).unwrap();
        assert_eq!(
            id_line.split_whitespace().nth(2),
            Some("20251108_143022_a8f3d9")
        );
    }
}
