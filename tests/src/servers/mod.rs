//! Throwaway database servers for the attached-service scenarios:
//! PostgreSQL ([`Postgres`]), MariaDB ([`MariaDb`]) and Redis ([`Redis`]).
//!
//! Each instance is started from the machine's own binaries as a child of
//! the test, listening on a free port of 127.0.0.1 only, with its data,
//! socket, configuration and log in a temporary directory of its own. No
//! configuration file of the machine is read and no default port is used,
//! so the machine's own servers (5432, 3306, 6379) are never touched. An
//! instance counts as started once the real client (`psql`, `mariadb`,
//! `redis-cli`) gets an answer from it, polled with a deadline; nothing
//! sleeps for a fixed time. Dropping an instance stops its server and
//! removes its directory; the kernel kills the server if the test thread
//! dies without dropping it.
//!
//! Passwords reach the clients through their environment (`PGPASSWORD`,
//! `MYSQL_PWD`, `REDISCLI_AUTH`) and the servers through files, never
//! through a command line: the secrets scenario watches the process table.

pub mod mariadb;
pub mod moto;
pub mod postgres;
pub mod redis;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::RngCore;
use rustix::process::Signal;

pub use mariadb::MariaDb;
pub use moto::Moto;
pub use postgres::Postgres;
pub use redis::Redis;

use crate::cli::describe;
use crate::harness::{POLL_INTERVAL, die_with_parent, free_port, signal, tail};

/// How long a server may take to answer its client after it was started.
/// Generous because parallel tests share two cores.
pub const READY_DEADLINE: Duration = Duration::from_secs(90);

/// How long a server has to exit after its stop signal before SIGKILL.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// How often a start is retried when another process took the port picked.
const PORT_RETRIES: usize = 3;

/// A password for a database user: random, with an `@` so that it must be
/// percent-encoded in a URL. The hex part alone is distinctive enough to
/// search logs and process tables for, in either form.
pub fn password() -> String {
    format!("pw@{}", random_hex())
}

/// 12 random hex digits.
fn random_hex() -> String {
    let mut bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// `s` with the characters that may not appear in the user-info part of a
/// URL percent-encoded.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whom a server that refuses to run as root runs as: the system user
/// `name` (uid, gid) when the tests run as root, else the current user.
fn server_ids(name: &str) -> Result<(u32, u32)> {
    if is_root() {
        user_ids(name)
    } else {
        Ok((
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ))
    }
}

/// Whether the tests run as root.
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `name` as found on `PATH`, else the first of `fallbacks` that exists
/// (`/usr/sbin` is not on every user's `PATH`).
fn program(name: &str, fallbacks: &[&str]) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| fallbacks.iter().map(PathBuf::from).find(|p| p.is_file()))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The uid and gid of a system user, from `/etc/passwd`.
fn user_ids(name: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == name {
            return Ok((fields[2].parse()?, fields[3].parse()?));
        }
    }
    bail!("no user {name:?} in /etc/passwd (is the database server package installed?)")
}

/// Runs a client command to completion; its stdout when it exits 0, else an
/// error with its command line and output. Command lines never hold a
/// password here, so they can be shown.
pub fn run_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    cmd.stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("running {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} exited with {}\n{}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// [`run_bytes`], feeding `input` to its stdin.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", describe(cmd)))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    // A thread writes while we read, so that neither side blocks on a full pipe.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let written = writer.join().expect("the stdin writer does not panic");
    if !out.status.success() {
        bail!(
            "{} exited with {}\n{}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    written.with_context(|| format!("feeding {}", describe(cmd)))?;
    Ok(out.stdout)
}

/// [`run_bytes`] as text (the clients print UTF-8).
pub fn run_text(cmd: &mut Command) -> Result<String> {
    let out = run_bytes(cmd)?;
    String::from_utf8(out).with_context(|| format!("{} printed invalid UTF-8", describe(cmd)))
}

/// A command with an empty environment but `PATH`, and the C.UTF-8 locale so
/// that messages are in English and text is UTF-8.
fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("LC_ALL", "C.UTF-8");
    cmd
}

/// A server process, its log, and how it is asked to stop.
#[derive(Debug)]
struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    stop_signal: Signal,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr appended to `log`, stdin closed,
    /// and the parent-death signal set (after any change of user, which
    /// would clear it).
    fn spawn(name: &str, mut cmd: Command, log: &Path, stop_signal: Signal) -> Result<Daemon> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {}", describe(&cmd)))?;
        Ok(Daemon {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            stop_signal,
        })
    }

    /// The exit status, once the server has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Polls `ready` until it returns true. Fails if the server exits first
    /// (with [`PortTaken`] in the chain when its port was in use) or the
    /// deadline passes.
    fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                if log.to_lowercase().contains("address already in use") {
                    return Err(PortTaken.into());
                }
                bail!(
                    "{} exited with {status} before it was ready\n{}",
                    self.name,
                    tail(&self.log, 30)
                );
            }
            if ready() {
                return Ok(());
            }
            if start.elapsed() > READY_DEADLINE {
                bail!(
                    "{} not ready after {READY_DEADLINE:?}\n{}",
                    self.name,
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends the stop signal and waits for the exit; SIGKILL after
    /// [`STOP_DEADLINE`], which is reported as an error.
    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(&child, self.stop_signal);
        let start = Instant::now();
        while start.elapsed() < STOP_DEADLINE {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        signal(&child, Signal::KILL);
        let _ = child.wait();
        bail!(
            "{} did not stop within {STOP_DEADLINE:?} and was killed\n{}",
            self.name,
            tail(&self.log, 30)
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e:#}");
        }
    }
}

/// The server exited because its port was taken between our probe and its bind.
#[derive(Debug)]
struct PortTaken;

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the port was taken by another process")
    }
}

impl std::error::Error for PortTaken {}

/// Starts a server with `start(port)` on a free port (or on `port`, for a
/// restart, without retrying), retrying on another port when a parallel
/// test took it first.
fn start_on_free_port(
    port: Option<u16>,
    mut start: impl FnMut(u16) -> Result<Daemon>,
) -> Result<(u16, Daemon)> {
    let retries = if port.is_some() { 1 } else { PORT_RETRIES };
    let mut port = port.unwrap_or_else(free_port);
    for attempt in 1..=retries {
        match start(port) {
            Ok(daemon) => return Ok((port, daemon)),
            Err(e) if attempt < retries && e.downcast_ref::<PortTaken>().is_some() => {
                eprintln!("port {port} was taken, retrying on another");
                port = free_port();
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Lines that differ between two listings, for messages: `-` only in
/// `expected`, `+` only in `actual`, at most `limit` of each.
pub fn diff_lines(expected: &[String], actual: &[String], limit: usize) -> String {
    let missing: Vec<&String> = expected.iter().filter(|l| !actual.contains(l)).collect();
    let extra: Vec<&String> = actual.iter().filter(|l| !expected.contains(l)).collect();
    let mut out = Vec::new();
    for l in missing.iter().take(limit) {
        out.push(format!("- {l}"));
    }
    for l in extra.iter().take(limit) {
        out.push(format!("+ {l}"));
    }
    if missing.len() > limit || extra.len() > limit {
        out.push(format!(
            "({} missing and {} extra lines in all)",
            missing.len(),
            extra.len()
        ));
    }
    if out.is_empty() {
        out.push("(same lines in another order)".into());
    }
    out.join("\n")
}
