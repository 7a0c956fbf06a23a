//! Running dump and load tools: stdout and stdin streamed, stderr kept
//! (bounded) for the error message with every secret blanked out, the
//! process killed if the operation is dropped.

use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;

use super::conn::ConnInfo;
use crate::error::{AgentError, Result};

/// Most of a tool's stderr kept for an error message.
const STDERR_LIMIT: u64 = 16 * 1024;

/// Which service and step a tool runs for, and what must never be shown.
pub struct Step<'a> {
    pub service: &'a str,
    pub step: &'static str,
    secrets: Vec<String>,
}

impl<'a> Step<'a> {
    /// Step `step` of `service`, whose connection's password is kept out of messages.
    pub fn new(service: &'a str, step: &'static str, conn: &ConnInfo) -> Self {
        Self {
            service,
            step,
            secrets: conn.secrets(),
        }
    }

    /// The same step, keeping `other`'s password out of messages too (a
    /// tool run with an administrative connection).
    pub fn hiding(&self, other: &ConnInfo) -> Self {
        let mut secrets = self.secrets.clone();
        secrets.extend(other.secrets());
        Self {
            service: self.service,
            step: self.step,
            secrets,
        }
    }

    /// The next step of the same service.
    pub fn then(&self, step: &'static str) -> Self {
        Self {
            service: self.service,
            step,
            secrets: self.secrets.clone(),
        }
    }

    /// The error for this step, with secrets removed from `detail`.
    pub fn error(&self, detail: impl AsRef<str>) -> AgentError {
        let mut detail = detail.as_ref().trim().to_owned();
        for s in self.secrets.iter().filter(|s| !s.is_empty()) {
            detail = detail.replace(s.as_str(), "***");
        }
        AgentError::Service {
            service: self.service.to_owned(),
            step: self.step,
            detail,
        }
    }
}

fn prepare(cmd: &mut Command) {
    cmd.kill_on_drop(true).stderr(Stdio::piped());
}

async fn finish(step: &Step<'_>, child: &mut tokio::process::Child) -> Result<()> {
    let mut err = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let _ = stderr.take(STDERR_LIMIT).read_to_end(&mut err).await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| step.error(format!("waiting for the tool: {e}")))?;
    if status.success() {
        return Ok(());
    }
    Err(step.error(format!(
        "{status}: {}",
        summarize(&String::from_utf8_lossy(&err))
    )))
}

/// The lines of a tool's stderr that say what went wrong: those naming an
/// error, else the last few (tools echo whole statements before the error).
fn summarize(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("fatal") || l.contains("denied")
        })
        .collect();
    let picked = if errors.is_empty() {
        &lines[lines.len().saturating_sub(3)..]
    } else {
        &errors[..]
    };
    picked
        .iter()
        .take(5)
        .copied()
        .collect::<Vec<_>>()
        .join("; ")
}

fn spawn(step: &Step<'_>, cmd: &mut Command) -> Result<tokio::process::Child> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    cmd.spawn()
        .map_err(|e| step.error(format!("cannot run {program}: {e}")))
}

/// Runs `cmd` and returns its stdout (small outputs: queries, versions).
pub async fn output(step: &Step<'_>, mut cmd: Command) -> Result<String> {
    prepare(&mut cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = spawn(step, &mut cmd)?;
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(1024 * 1024).read_to_end(&mut out).await;
    }
    finish(step, &mut child).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Runs `cmd` to its end, its output thrown away (a restore's psql prints
/// a row for every `setval` of a dump).
pub async fn run(step: &Step<'_>, mut cmd: Command) -> Result<()> {
    prepare(&mut cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let mut child = spawn(step, &mut cmd)?;
    finish(step, &mut child).await
}

/// Runs `cmd`, copying its stdout into `out` as it comes.
pub async fn dump_to<W>(step: &Step<'_>, mut cmd: Command, out: &mut W) -> Result<()>
where
    W: AsyncWrite + Unpin,
{
    prepare(&mut cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = spawn(step, &mut cmd)?;
    let mut stdout = child.stdout.take().expect("piped");
    let copied = tokio::io::copy(&mut stdout, out).await;
    // The tool's exit status explains a short read better than the read does.
    finish(step, &mut child).await?;
    copied.map_err(|e| step.error(format!("streaming the dump: {e}")))?;
    out.flush()
        .await
        .map_err(|e| step.error(format!("streaming the dump: {e}")))
}

/// Runs `cmd`, feeding `input` to its stdin.
pub async fn load_from<R>(step: &Step<'_>, mut cmd: Command, input: &mut R) -> Result<()>
where
    R: AsyncRead + Unpin,
{
    prepare(&mut cmd);
    cmd.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = spawn(step, &mut cmd)?;
    let mut stdin = child.stdin.take().expect("piped");
    let copied = tokio::io::copy(input, &mut stdin).await;
    drop(stdin);
    if copied.is_err() {
        // A cut-off input must not be taken for a whole one at EOF.
        let _ = child.start_kill();
    }
    let status = finish(step, &mut child).await;
    match copied {
        // The tool's own message says more than a broken pipe.
        Err(_) if status.is_err() => status,
        Err(e) => Err(step.error(format!("streaming the dump: {e}"))),
        Ok(_) => status,
    }
}
