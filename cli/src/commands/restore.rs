//! `backup:restore ID [--target-app NAME] [--target-host HOST] [--replace] [--hostname NAME]`.

use hop3_proto::BackupId;
use hop3_proto::v1::RestoreResult;

use crate::args::RestoreTarget;
use crate::client::Controller;
use crate::error::{CliError, Subject};
use crate::output::{Output, or_na};
use crate::progress;
use crate::stream::follow;
use crate::views::RestoreView;

/// Restores backup `id` (into `target`'s app on its host when given),
/// showing progress on stderr.
pub async fn run(
    controller: &mut Controller,
    out: Output,
    id: &BackupId,
    target: &RestoreTarget,
) -> Result<(), CliError> {
    if !out.is_json() {
        out.text(&format!("Restoring backup {id}...\n"))?;
    }
    let stream = controller.restore_backup(id, target).await?;
    let mut progress = progress::for_stderr();
    let on_error = |status| controller.error(status, Subject::Backup);
    let result = follow(stream, progress.as_mut(), on_error, "restore").await?;
    if out.is_json() {
        out.json(&RestoreView::from(result))
    } else {
        out.text(&render(&result))
    }
}

/// The guide's text after the heading.
pub fn render(r: &RestoreResult) -> String {
    let state = r.app_state.clone().unwrap_or_default();
    let port = if state.port == 0 {
        String::new()
    } else {
        state.port.to_string()
    };
    let mut text = format!(
        "\nRestore completed successfully!\n\n\
         Application: {app}\n\
         Host: {host}\n\
         Hostname: {hostname}\n\
         Port: {port}\n",
        app = r.app,
        host = or_na(&r.host),
        hostname = or_na(&state.hostname),
        port = or_na(&port),
    );
    if !r.notes.is_empty() {
        text.push_str("\nNotes:\n");
        for note in &r.notes {
            text.push_str(&format!("  - {note}\n"));
        }
    }
    text.push_str(&format!(
        "\nTo start the application:\n  hop3 app:restart {}\n",
        r.app
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use hop3_proto::v1::AppState;

    #[test]
    fn renders_the_guide_output() {
        let result = RestoreResult {
            backup_id: "20251108_143022_a8f3d9".into(),
            app: "my-app".into(),
            host: "h1".into(),
            app_state: Some(AppState {
                hostname: "myapp.example.com".into(),
                port: 8000,
                run_state: "STOPPED".into(),
            }),
            notes: Vec::new(),
        };
        assert_eq!(
            render(&result),
            "
Restore completed successfully!

Application: my-app
Host: h1
Hostname: myapp.example.com
Port: 8000

To start the application:
  hop3 app:restart my-app
"
        );
    }
}
