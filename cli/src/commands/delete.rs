//! `backup:delete ID [--yes]`: asks for `yes` at a terminal, refuses to
//! guess when nobody is there to ask.

use std::io::{self, BufRead, IsTerminal, Write};

use hop3_proto::BackupId;
use hop3_proto::v1::BackupSummary;

use crate::client::ControllerClient;
use crate::error::CliError;
use crate::output::{Output, format_created, format_size};
use crate::views::DeletedView;

/// Deletes backup `id`, after confirmation unless `yes`.
pub async fn run(
    controller: &mut ControllerClient,
    out: Output,
    id: &BackupId,
    yes: bool,
) -> Result<(), CliError> {
    if !yes {
        check_can_confirm(id, yes)?;
        // The prompt only shows what the backup is: no need to hash its files.
        let details = controller.get_backup(id, true).await?;
        let prompt = render_prompt(id, &details.summary.unwrap_or_default());
        if !confirm(prompt).await? {
            return Err(CliError::NotConfirmed {
                backup_id: id.to_string(),
            });
        }
    }
    controller.delete_backup(id).await?;
    if out.is_json() {
        out.json(&DeletedView {
            deleted: id.to_string(),
        })
    } else {
        out.text("✓ Backup deleted successfully\n")
    }
}

/// Without `--yes`, someone must be at a terminal to answer the prompt: a
/// script must learn it needs `--yes`, never hang on or be fed a `yes`.
/// Also called before connecting, so the answer does not depend on the
/// controller being up.
pub fn check_can_confirm(id: &BackupId, yes: bool) -> Result<(), CliError> {
    if yes || io::stdin().is_terminal() {
        Ok(())
    } else {
        Err(CliError::ConfirmationRequired {
            backup_id: id.to_string(),
        })
    }
}

/// Shows `prompt` on stderr (stdout stays the command's result) and reads
/// one line; true only for exactly `yes`. Reading stdin blocks, so it runs
/// on the blocking pool, not on a runtime thread.
async fn confirm(prompt: String) -> Result<bool, CliError> {
    tokio::task::spawn_blocking(move || {
        let mut err = io::stderr().lock();
        err.write_all(prompt.as_bytes())
            .and_then(|()| err.flush())
            .map_err(CliError::Prompt)?;
        let mut answer = String::new();
        io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(CliError::Prompt)?;
        Ok(is_yes(&answer))
    })
    .await
    .map_err(|e| CliError::Prompt(io::Error::other(e)))?
}

/// Only the exact word, without its line end.
fn is_yes(answer: &str) -> bool {
    answer.trim_end_matches(['\n', '\r']) == "yes"
}

/// The guide's confirmation prompt.
pub fn render_prompt(id: &BackupId, s: &BackupSummary) -> String {
    format!(
        "Delete backup {id}?\n\n\
         Backup details:\n  \
         Application: {app}\n  \
         Size: {size}\n  \
         Created: {created}\n\n\
         This action cannot be undone.\n\
         Type 'yes' to confirm: ",
        app = s.app,
        size = format_size(s.total_size),
        created = format_created(&s.created_at, id.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_guide_prompt() {
        let id: BackupId = "20251108_143022_a8f3d9".parse().unwrap();
        let summary = BackupSummary {
            app: "my-app".into(),
            total_size: 16_357_785,
            created_at: "2025-11-08T14:30:22Z".into(),
            ..Default::default()
        };
        assert_eq!(
            render_prompt(&id, &summary),
            "Delete backup 20251108_143022_a8f3d9?

Backup details:
  Application: my-app
  Size: 15.6 MB
  Created: 2025-11-08 14:30:22

This action cannot be undone.
Type 'yes' to confirm: "
        );
    }

    #[test]
    fn only_exactly_yes_confirms() {
        assert!(is_yes("yes\n"));
        assert!(is_yes("yes\r\n"));
        assert!(is_yes("yes"));
        for no in ["", "\n", "y\n", "YES\n", "yes please\n", " yes\n", "no\n"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }
}
