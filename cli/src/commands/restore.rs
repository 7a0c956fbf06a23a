//! `backup:restore ID [--target-app NAME] [--target-host HOST] [--replace]
//! [--hostname NAME] [--trust-imported] [--no-start] [--cancel-on-interrupt]`.

use hop3_proto::BackupId;
use hop3_proto::v1::{RestoreResult, RestoreStarted};

use crate::args::RestoreTarget;
use crate::client::ControllerClient;
use crate::error::{CliError, InterruptedJob, Subject};
use crate::output::{Output, or_na};
use crate::progress;
use crate::stream::{Following, ctrl_c, follow};
use crate::views::RestoreView;

/// Restores backup `id` (into `target`'s app on its host when given),
/// showing progress on stderr. Ctrl-C leaves the restore to run on the
/// controller, or cancels it with `--cancel-on-interrupt`.
pub async fn run(
    controller: &mut ControllerClient,
    out: Output,
    id: &BackupId,
    target: &RestoreTarget,
) -> Result<(), CliError> {
    if !out.is_json() {
        out.text(&format!("Restoring backup {id}...\n"))?;
    }
    let stream = controller.restore_backup(id, target).await?;
    let mut progress = progress::for_stderr(out.is_json());
    let how = Following {
        progress: progress.as_mut(),
        on_error: |status| controller.error(status, Subject::Backup),
        interrupt: ctrl_c(),
        operation: "restore",
    };
    let interrupted = |started: Option<RestoreStarted>| {
        CliError::Interrupted(InterruptedJob::Restore {
            id: id.to_string(),
            target: started.map(|s| (s.app, s.host)),
            cancelled: target.cancel_on_interrupt,
        })
    };
    let result = follow(stream, how, interrupted).await?;
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
    text.push('\n');
    text.push_str(&start_line(r));
    text
}

/// What became of the app's process, and what to do about it: the agent
/// restarts an app only when it has start/stop commands.
fn start_line(r: &RestoreResult) -> String {
    let app = &r.app;
    match r.start.as_str() {
        "restarted" => format!("{app} was restarted by the host's start command.\n"),
        "stopped" => format!(
            "{app} was left stopped (--no-start): start it as the host starts its apps \
             (the agent's --start-cmd).\n"
        ),
        "new" => format!(
            "{app} is new on this host and was not started: start it as the host starts \
             its apps (the agent's --start-cmd).\n"
        ),
        _ => format!(
            "The host's agent has no stop/start commands (--stop-cmd, --start-cmd): the \
             restore neither stopped nor restarted {app}. Restart it so that it reads the \
             restored files.\n"
        ),
    }
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
            start: "unmanaged".into(),
            source: String::new(),
        };
        assert_eq!(
            render(&result),
            "
Restore completed successfully!

Application: my-app
Host: h1
Hostname: myapp.example.com
Port: 8000

The host's agent has no stop/start commands (--stop-cmd, --start-cmd): the restore neither stopped nor restarted my-app. Restart it so that it reads the restored files.
"
        );
    }
}
