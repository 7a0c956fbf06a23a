//! Stopping and starting an app around a restore, with commands from the
//! agent's configuration (e.g. a systemd unit per app).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::error::{AgentError, Result};

/// How long a stop or start command may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// The configured stop and start commands; with none, run state is only recorded.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// Run with `sh -c`, with `HOP3_APP` set to the app's name.
    pub stop: Option<String>,
    /// Run with `sh -c`, with `HOP3_APP` set to the app's name.
    pub start: Option<String>,
}

impl Hooks {
    /// Stops `app`, if a stop command is configured.
    pub async fn stop(&self, app: &str) -> Result<()> {
        run("stop", self.stop.as_deref(), app).await
    }

    /// Starts `app`, if a start command is configured.
    pub async fn start(&self, app: &str) -> Result<()> {
        run("start", self.start.as_deref(), app).await
    }
}

async fn run(what: &'static str, cmd: Option<&str>, app: &str) -> Result<()> {
    let Some(cmd) = cmd else { return Ok(()) };
    tracing::info!(app, "running {what} command");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("HOP3_APP", app)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| AgentError::Hook {
            what,
            detail: format!("cannot run sh: {e}"),
        })?;
    let mut stderr = child.stderr.take().expect("piped");
    let wait = async {
        let mut err = Vec::new();
        // Keep only a bounded tail of what the command prints.
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut err).await;
        let status = child.wait().await;
        (status, err)
    };
    let (status, err) = tokio::time::timeout(HOOK_TIMEOUT, wait)
        .await
        .map_err(|_| AgentError::Hook {
            what,
            detail: format!("timed out after {}s", HOOK_TIMEOUT.as_secs()),
        })?;
    let status = status.map_err(|e| AgentError::Hook {
        what,
        detail: e.to_string(),
    })?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&err);
    let tail: String = text
        .trim()
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(AgentError::Hook {
        what,
        detail: format!("{status}: {tail}"),
    })
}
