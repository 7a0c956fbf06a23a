//! Running `hop3` and reading what it prints, as a script would.

use std::ffi::OsStr;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::harness::{self, System};

/// `hop3 --controller URL ARGS...` with a cleared environment (PATH, HOME),
/// stdin closed and stdout/stderr piped.
pub fn command<I, S>(url: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(harness::binary("hop3"));
    cmd.env_clear();
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.env("NO_COLOR", "1")
        .arg("--controller")
        .arg(url)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `hop3 --controller URL ARGS...` to completion against any URL (one
/// where nothing listens, to show a command fails before any RPC).
pub fn run_at<I, S>(url: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = command(url, args);
    let line = describe(&cmd);
    let out = cmd.output().expect("running hop3");
    Output::new(line, out, Vec::new())
}

/// A `hop3` running in the background. Its stdout and stderr are drained by
/// threads, so that a chatty progress log can never fill a pipe and stall it.
#[derive(Debug)]
pub struct Background {
    command: String,
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    logs: Vec<PathBuf>,
}

impl Background {
    /// Spawns `cmd` (from [`command`]); `logs` are quoted when a check fails.
    pub fn spawn(mut cmd: Command, logs: Vec<PathBuf>) -> Result<Self> {
        let command = describe(&cmd);
        let mut child = cmd.spawn().context("spawning hop3")?;
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = child.stdout.take().map(|p| drain(Box::new(p)));
        let stderr = child.stderr.take().map(|p| drain(Box::new(p)));
        Ok(Self {
            command,
            child,
            stdout,
            stderr,
            logs,
        })
    }

    /// Sends `sig`, e.g. INT as a Ctrl-C would.
    pub fn signal(&self, sig: rustix::process::Signal) {
        harness::signal(&self.child, sig);
    }

    /// True while it has not exited.
    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Waits for it to exit, for at most `deadline` (then kills it and fails).
    pub fn wait(mut self, deadline: Duration) -> Result<Output> {
        let status = harness::wait_child(&mut self.child, deadline)
            .with_context(|| format!("{} still running after {deadline:?}", self.command))?;
        let join = |h: Option<JoinHandle<Vec<u8>>>| h.map(|h| h.join().unwrap_or_default());
        let out = std::process::Output {
            status,
            stdout: join(self.stdout.take()).unwrap_or_default(),
            stderr: join(self.stderr.take()).unwrap_or_default(),
        };
        Ok(Output::new(self.command.clone(), out, self.logs.clone()))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // A test that failed half-way leaves no hop3 behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// What one run of `hop3` did. The checking methods return errors that
/// carry the command, its output and the tails of the servers' logs.
#[derive(Debug)]
pub struct Output {
    /// The command line that ran.
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    logs: Vec<PathBuf>,
}

impl Output {
    /// Wraps a finished process's output; `logs` are the servers' logs to
    /// quote when a check fails.
    pub fn new(command: String, out: std::process::Output, logs: Vec<PathBuf>) -> Self {
        Self {
            command,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            logs,
        }
    }

    /// A description of this run for error messages.
    pub fn report(&self) -> String {
        let tails: Vec<String> = self.logs.iter().map(|p| harness::tail(p, 25)).collect();
        format!(
            "$ {}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            self.command,
            self.status,
            self.stdout,
            self.stderr,
            tails.join("\n")
        )
    }

    /// Ok when `hop3` exited 0.
    pub fn success(self) -> Result<Self> {
        if !self.status.success() {
            bail!(
                "hop3 failed where it should have succeeded\n{}",
                self.report()
            );
        }
        Ok(self)
    }

    /// Ok when `hop3` exited non-zero with an error message on stderr that
    /// mentions every one of `needles` (case-sensitive). The human form
    /// reads `Error: ...`; with `--json` the CLI reports errors as JSON on
    /// stderr (`{"error": {"code", "message"}}`), whose message is searched.
    pub fn failure(self, needles: &[&str]) -> Result<Self> {
        if self.status.success() {
            bail!(
                "hop3 succeeded where it should have failed\n{}",
                self.report()
            );
        }
        let message = if self.is_json() {
            match self.json_error() {
                Some((_, message)) => message,
                None => bail!(
                    "hop3 --json failed without a JSON error on stderr\n{}",
                    self.report()
                ),
            }
        } else if self.stderr.contains("Error: ") {
            self.stderr.clone()
        } else {
            bail!(
                "hop3 failed without an `Error: ...` message\n{}",
                self.report()
            );
        };
        for needle in needles {
            if !message.contains(needle) {
                bail!("hop3's error does not say {needle:?}\n{}", self.report());
            }
        }
        Ok(self)
    }

    /// Whether the command ran with `--json`.
    pub fn is_json(&self) -> bool {
        self.command.split(' ').any(|w| w == "--json")
    }

    /// `(code, message)` of the JSON error the CLI printed on stderr with
    /// `--json`, if any: the last stderr line that parses as one.
    pub fn json_error(&self) -> Option<(String, String)> {
        self.stderr.lines().rev().find_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            let error = value.get("error")?;
            Some((
                error.get("code")?.as_str()?.to_owned(),
                error.get("message")?.as_str()?.to_owned(),
            ))
        })
    }

    /// stdout parsed as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not the JSON expected ({})\n{}",
                std::any::type_name::<T>(),
                self.report()
            )
        })
    }

    /// The backup ID of the human output's `Backup ID: ID` line.
    pub fn human_backup_id(&self) -> Result<String> {
        self.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Backup ID:"))
            .map(|id| id.trim().to_owned())
            .with_context(|| format!("no `Backup ID:` line\n{}", self.report()))
    }
}

/// A JSON `null` (an absent value) as the type's default.
fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One catalog row: the JSON of `backup:create` and of each `backup:list`
/// entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BackupSummary {
    pub backup_id: String,
    pub app: String,
    #[serde(deserialize_with = "null_as_default")]
    pub host: String,
    /// STARTED, COMPLETED or FAILED.
    pub status: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub total_size: u64,
    /// `type:name` of each service included.
    pub services: Vec<String>,
    pub location: String,
    /// Why a FAILED backup failed; empty or null otherwise.
    #[serde(default)]
    pub error: Option<String>,
    /// Entries the backup could not hold, and why (null in listings).
    #[serde(default, deserialize_with = "null_as_default")]
    pub skipped: Vec<Skipped>,
    /// No retention policy and no delete removes it.
    #[serde(default)]
    pub pinned: bool,
    /// Where it is: the primary store, then each copy store.
    #[serde(default, deserialize_with = "null_as_default")]
    pub locations: Vec<Location>,
}

/// One place a backup is kept (`locations` of a backup).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Location {
    pub url: String,
    /// `ok`, `pending`, `failed` (a copy) or `deleting` (the primary).
    pub state: String,
    #[serde(deserialize_with = "null_as_default")]
    pub reason: String,
    pub primary: bool,
    pub attempts: u32,
}

/// An entry a backup left out.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

impl BackupSummary {
    /// The failure reason, empty when there is none.
    pub fn error(&self) -> &str {
        self.error.as_deref().unwrap_or("")
    }
}

/// One file's verification in `backup:info`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct FileCheck {
    pub path: String,
    pub expected: String,
    #[serde(deserialize_with = "null_as_default")]
    pub actual: String,
    pub size: u64,
    pub valid: bool,
}

/// Hostname, port and run state as recorded in a backup.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct AppState {
    #[serde(deserialize_with = "null_as_default")]
    pub hostname: String,
    #[serde(deserialize_with = "null_as_default")]
    pub port: u32,
    #[serde(deserialize_with = "null_as_default")]
    pub run_state: String,
}

/// The JSON of `backup:info`: the backup object's keys, then the details.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BackupInfo {
    pub backup_id: String,
    pub app: String,
    #[serde(deserialize_with = "null_as_default")]
    pub host: String,
    pub status: String,
    pub created_at: String,
    pub total_size: u64,
    /// `type:name` of each dump, as in a listing.
    pub services: Vec<String>,
    pub location: String,
    #[serde(default)]
    pub error: Option<String>,
    pub format_version: String,
    pub hop3_version: String,
    pub env_vars_count: u32,
    pub services_included: bool,
    pub files: Vec<FileCheck>,
    /// Each dump's type, name, file and size.
    pub service_dumps: Vec<serde_json::Value>,
    pub app_state: AppState,
    pub all_valid: bool,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Where it is: the primary store, then each copy store.
    #[serde(default, deserialize_with = "null_as_default")]
    pub locations: Vec<Location>,
}

impl BackupInfo {
    /// The check of the file at `path`.
    pub fn file(&self, path: &str) -> Result<&FileCheck> {
        self.files
            .iter()
            .find(|f| f.path == path)
            .with_context(|| format!("backup:info lists no {path}: {:?}", self.files))
    }
}

/// The JSON of `backup:restore`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RestoreResult {
    pub backup_id: String,
    pub app: String,
    #[serde(deserialize_with = "null_as_default")]
    pub host: String,
    #[serde(deserialize_with = "null_as_default")]
    pub hostname: String,
    #[serde(deserialize_with = "null_as_default")]
    pub port: u32,
    #[serde(deserialize_with = "null_as_default")]
    pub run_state: String,
    /// What the restore did that its user should know.
    #[serde(default)]
    pub notes: Vec<String>,
    /// What became of the app's process.
    pub start: String,
    /// Where the backup was read from.
    #[serde(default, deserialize_with = "null_as_default")]
    pub source: String,
}

/// The JSON of `backup:delete`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Deleted {
    pub deleted: String,
}

/// One agent of `agent:list --json`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct AgentRow {
    #[serde(deserialize_with = "null_as_default")]
    pub host: String,
    pub address: String,
    pub version: String,
    /// `online` or `offline`.
    pub status: String,
    /// RFC 3339.
    pub last_seen: String,
    /// The apps it served when last heard from.
    pub apps: Vec<String>,
}

/// The keys every `agent:list --json` entry has.
pub const AGENT_KEYS: &[&str] = &["host", "address", "version", "status", "last_seen", "apps"];

/// The keys of the backup object: every `backup:create`, `backup:list`,
/// `backup:import` and `backup:info` document has them.
pub const BACKUP_KEYS: &[&str] = &[
    "backup_id",
    "app",
    "host",
    "status",
    "created_at",
    "total_size",
    "services",
    "location",
    "error",
    "skipped",
    "pinned",
];

/// Fails unless the JSON object `value` has every key of `keys`: the typed
/// structs above accept a missing `error`, a script would not.
pub fn require_keys(value: &serde_json::Value, keys: &[&str]) -> Result<()> {
    let object = value
        .as_object()
        .with_context(|| format!("not a JSON object: {value}"))?;
    let missing: Vec<&&str> = keys.iter().filter(|k| !object.contains_key(**k)).collect();
    if !missing.is_empty() {
        bail!("JSON lacks {missing:?}: {value}");
    }
    Ok(())
}

/// Typed shortcuts for the commands, each checking success.
impl System {
    /// `hop3 --json backup:create APP`, checked to succeed with a COMPLETED backup.
    pub fn create(&self, app: &str) -> Result<BackupSummary> {
        let out = self.hop3(["--json", "backup:create", app]).success()?;
        let summary: BackupSummary = out.json()?;
        if summary.status != "COMPLETED" || summary.app != app {
            bail!("unexpected create result {summary:?}\n{}", out.report());
        }
        Ok(summary)
    }

    /// `hop3 --json backup:create APP --format FORMAT`, checked to succeed
    /// with a COMPLETED backup.
    pub fn create_in_format(&self, app: &str, format: &str) -> Result<BackupSummary> {
        let out = self
            .hop3(["--json", "backup:create", app, "--format", format])
            .success()?;
        let summary: BackupSummary = out.json()?;
        if summary.status != "COMPLETED" || summary.app != app {
            bail!("unexpected create result {summary:?}\n{}", out.report());
        }
        Ok(summary)
    }

    /// Starts `hop3 ARGS...` in the background.
    pub fn hop3_spawn<I, S>(&self, args: I) -> Result<Background>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Background::spawn(self.hop3_command(args), self.log_paths())
    }

    /// `hop3 --json backup:list ARGS...`.
    pub fn list(&self, args: &[&str]) -> Result<Vec<BackupSummary>> {
        let mut all = vec!["--json", "backup:list"];
        all.extend(args);
        self.hop3(all).success()?.json()
    }

    /// `hop3 --json backup:info ID`, checked to succeed.
    pub fn info(&self, id: &str) -> Result<BackupInfo> {
        self.hop3(["--json", "backup:info", id]).success()?.json()
    }

    /// `hop3 --json backup:restore ID [--target-app NAME]`, checked to succeed.
    pub fn restore(&self, id: &str, target_app: Option<&str>) -> Result<RestoreResult> {
        self.restore_to(id, target_app, None)
    }

    /// `hop3 --json backup:restore ID [--target-app NAME] [--target-host
    /// HOST]`, checked to succeed.
    pub fn restore_to(
        &self,
        id: &str,
        target_app: Option<&str>,
        target_host: Option<&str>,
    ) -> Result<RestoreResult> {
        self.restore_with(id, target_app, target_host, &[])
    }

    /// [`restore_to`](Self::restore_to) with more flags (`--trust-imported`).
    pub fn restore_with(
        &self,
        id: &str,
        target_app: Option<&str>,
        target_host: Option<&str>,
        flags: &[&str],
    ) -> Result<RestoreResult> {
        let mut args = vec!["--json", "backup:restore", id];
        args.extend(flags);
        if let Some(target) = target_app {
            args.extend(["--target-app", target]);
        }
        if let Some(host) = target_host {
            args.extend(["--target-host", host]);
        }
        self.hop3(args).success()?.json()
    }

    /// `hop3 --json backup:create APP --host HOST`, checked to succeed with a
    /// COMPLETED backup of that host's copy.
    pub fn create_on(&self, app: &str, host: &str) -> Result<BackupSummary> {
        let out = self
            .hop3(["--json", "backup:create", app, "--host", host])
            .success()?;
        let summary: BackupSummary = out.json()?;
        if summary.status != "COMPLETED" || summary.app != app || summary.host != host {
            bail!("unexpected create result {summary:?}\n{}", out.report());
        }
        Ok(summary)
    }

    /// `hop3 --json agent:list`, each entry checked to have every key.
    pub fn agents(&self) -> Result<Vec<AgentRow>> {
        let out = self.hop3(["--json", "agent:list"]).success()?;
        let raw: Vec<serde_json::Value> = out.json()?;
        for value in &raw {
            require_keys(value, AGENT_KEYS)?;
        }
        out.json()
    }

    /// The `agent:list --json` entry of `host`, if listed.
    pub fn agent_row(&self, host: &str) -> Result<Option<AgentRow>> {
        Ok(self.agents()?.into_iter().find(|a| a.host == host))
    }
}
