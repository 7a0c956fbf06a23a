//! One process under test: its start (free port, cleared environment,
//! health), its log, its stop, and the helpers that wait on it.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal};

use super::probes::{Probe, Ready, TlsProbe, health_check_tls};

/// How long a process may take to report SERVING on its health service.
/// Generous because parallel tests share two cores; a healthy start costs
/// only the time it really takes.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// How long a process has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Pause between two polls of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Lines of each log printed when a test fails.
const TAIL_LINES: usize = 40;

/// How often a start is retried when the port picked turned out to be taken
/// by a parallel test between our probe and the process's bind.
const PORT_RETRIES: usize = 3;

/// The directory holding the binaries under test: `$HOP3_BIN_DIR` if set,
/// else the directory two levels above this test executable
/// (`target/debug/deps/e2e-xxxx` -> `target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOP3_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// The path of one of the binaries under test (`hop3`, `hop3-controller`,
/// `hop3-agent`). Panics with what to do if it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (or set HOP3_BIN_DIR)",
        path.display()
    );
    path
}

/// A TCP port free on 127.0.0.1 right now. Another process may take it
/// before ours binds it; [`Process::start`] retries when that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// Waits until the clock has left the second of `created_at` (RFC 3339),
/// so that the next backup is strictly newer and "newest first" has one
/// right answer.
pub fn next_second(created_at: &str) -> Result<()> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(created_at, &Rfc3339)
        .with_context(|| format!("created_at {created_at:?} is not RFC 3339"))?;
    wait_until(Duration::from_secs(5), "the next second", || {
        Ok((time::OffsetDateTime::now_utc() >= t + time::Duration::seconds(1)).then_some(()))
    })
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Some`, for at most
/// `deadline`. An error from `check` ends the wait at once.
pub fn wait_until<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits for `child` to exit, for at most `deadline`; kills it if it does not.
pub fn wait_child(child: &mut Child, deadline: Duration) -> Result<ExitStatus> {
    let waited = wait_until(
        deadline,
        "a child process to exit",
        || Ok(child.try_wait()?),
    );
    if waited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    waited
}

/// The environment every started process gets, on top of an empty one.
pub(super) fn base_env() -> Vec<(OsString, OsString)> {
    let mut env = Vec::new();
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            env.push((key.into(), value));
        }
    }
    for (key, value) in [
        ("RUST_LOG", "info,hop3=debug"),
        // Plain log lines: the ERROR scan reads them as text.
        ("NO_COLOR", "1"),
        ("RUST_BACKTRACE", "1"),
    ] {
        env.push((key.into(), value.into()));
    }
    env
}

/// Builds a process's arguments given the port it should listen on.
type ArgsFn = Box<dyn Fn(u16) -> Vec<OsString> + Send>;

/// One run of a process: its log and whether errors in it are expected.
#[derive(Debug)]
struct Run {
    log: PathBuf,
    allow_errors: bool,
}

/// A running server binary (controller or agent), stopped on drop.
pub struct Process {
    name: String,
    program: PathBuf,
    args: ArgsFn,
    env: Vec<(OsString, OsString)>,
    log_dir: PathBuf,
    /// The address it listens on and is checked at (127.0.0.1 by default).
    host: String,
    /// How its health is checked over TLS, when it serves TLS.
    tls: Option<TlsProbe>,
    /// What counts as started.
    ready: Ready,
    port: u16,
    child: Option<Child>,
    runs: Vec<Run>,
    /// Set once the logs have been judged, so that drop does not judge twice.
    judged: bool,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("runs", &self.runs)
            .finish()
    }
}

impl Process {
    /// Starts `program` with the arguments `args(port)` for a free port and
    /// waits until its health service says SERVING. `name` names its log
    /// file in `log_dir`; `env` comes on top of the base environment.
    pub fn start(
        name: &str,
        program: PathBuf,
        log_dir: &Path,
        env: Vec<(OsString, OsString)>,
        args: impl Fn(u16) -> Vec<OsString> + Send + 'static,
    ) -> Result<Process> {
        Self::start_on("127.0.0.1", name, program, log_dir, env, args)
    }

    /// [`start`](Self::start) for a process that listens on `host` (an
    /// address of a test's own network namespace, say) rather than on
    /// 127.0.0.1: its health is checked there, and [`url`](Self::url) says
    /// `http://HOST:PORT`. `args` must make it listen there.
    pub fn start_on(
        host: &str,
        name: &str,
        program: PathBuf,
        log_dir: &Path,
        env: Vec<(OsString, OsString)>,
        args: impl Fn(u16) -> Vec<OsString> + Send + 'static,
    ) -> Result<Process> {
        Self::start_probed(name, program, log_dir, env, Probe::plain(host), args)
    }

    /// [`start`](Self::start) checked as `probe` says: at its host, over TLS
    /// for a process that serves TLS (then [`url`](Self::url) says
    /// `https://`), and until it is SERVING or only until it listens.
    pub fn start_probed(
        name: &str,
        program: PathBuf,
        log_dir: &Path,
        env: Vec<(OsString, OsString)>,
        probe: Probe,
        args: impl Fn(u16) -> Vec<OsString> + Send + 'static,
    ) -> Result<Process> {
        let mut process = Process {
            name: name.to_owned(),
            program,
            args: Box::new(args),
            env,
            log_dir: log_dir.to_owned(),
            host: probe.host,
            tls: probe.tls,
            ready: probe.ready,
            port: 0,
            child: None,
            runs: Vec::new(),
            judged: false,
        };
        process.launch(None)?;
        Ok(process)
    }

    /// Spawns the process and waits for its health. With `port`, tries that
    /// port first (a restart keeps its address, as a real one would).
    fn launch(&mut self, port: Option<u16>) -> Result<()> {
        let mut port = port.unwrap_or_else(free_port);
        for attempt in 1..=PORT_RETRIES {
            self.port = port;
            self.spawn()?;
            match self.wait_healthy() {
                Ok(()) => return Ok(()),
                Err(e) if attempt < PORT_RETRIES && self.lost_port_race() => {
                    // That run's complaint about the port is ours, not a bug.
                    if let Some(run) = self.runs.last_mut() {
                        run.allow_errors = true;
                    }
                    eprintln!(
                        "{}: port {port} was taken, retrying on another ({e:#})",
                        self.name
                    );
                    port = free_port();
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// True when the process exited because its port was in use.
    fn lost_port_race(&mut self) -> bool {
        let exited = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        exited
            && self.runs.last().is_some_and(|run| {
                fs::read_to_string(&run.log)
                    .unwrap_or_default()
                    .to_lowercase()
                    .contains("address already in use")
            })
    }

    fn spawn(&mut self) -> Result<()> {
        let n = self.runs.len() + 1;
        let log = if n == 1 {
            self.log_dir.join(format!("{}.log", self.name))
        } else {
            self.log_dir.join(format!("{}.{n}.log", self.name))
        };
        // O_APPEND: stdout and stderr share the file without overwriting
        // each other, and whatever else writes to it is kept.
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args((self.args)(self.port))
            .env_clear()
            .envs(base_env())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        self.runs.push(Run {
            log,
            allow_errors: false,
        });
        Ok(())
    }

    /// Polls the health service until it answers SERVING, the process exits,
    /// or [`STARTUP_DEADLINE`] passes.
    fn wait_healthy(&mut self) -> Result<()> {
        let url = self.url();
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited with {status} before it was healthy\n{}",
                    self.name,
                    self.log_tails()
                );
            }
            match self.check_ready(&url) {
                Ok(true) => return Ok(()),
                Ok(false) | Err(_) if start.elapsed() < STARTUP_DEADLINE => {
                    std::thread::sleep(POLL_INTERVAL)
                }
                outcome => bail!(
                    "{} not {} on {url} after {STARTUP_DEADLINE:?} (last check: {outcome:?})\n{}",
                    self.name,
                    self.ready.describe(),
                    self.log_tails()
                ),
            }
        }
    }

    /// One check of whether the process has started, as its probe says.
    fn check_ready(&self, url: &str) -> Result<bool> {
        match self.ready {
            Ready::Serving => health_check_tls(url, self.tls.as_ref()),
            Ready::Listening => {
                let addr = (self.host.as_str(), self.port)
                    .to_socket_addrs()?
                    .next()
                    .with_context(|| format!("{} resolves to no address", self.host))?;
                Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
            }
        }
    }

    /// The process's name, as in its log file's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (or the host given to [`start_on`](Self::start_on));
    /// `https://` for a process probed over TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// Its process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file of the current (or last) run.
    pub fn log_path(&self) -> &Path {
        &self.runs.last().expect("a started process has a run").log
    }

    /// The log files of every run, oldest first.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.runs.iter().map(|r| r.log.clone()).collect()
    }

    /// Says that ` ERROR ` lines in the current run's log are expected (the
    /// test provokes a failure the process rightly reports at that level).
    pub fn allow_errors(&mut self) {
        if let Some(run) = self.runs.last_mut() {
            run.allow_errors = true;
        }
    }

    /// Sends `sig` (e.g. STOP and CONT, to freeze it and let it go on).
    pub fn signal(&self, sig: Signal) {
        if let Some(child) = &self.child {
            signal(child, sig);
        }
    }

    /// SIGKILL now, as a crash would; waits until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, Signal::KILL);
            let _ = child.wait();
        }
    }

    /// Starts the process again after [`kill`](Self::kill) or
    /// [`stop`](Self::stop), with the same arguments, on the same port when it
    /// is still free, with a new log file, and waits for its health.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch(Some(self.port))
    }

    /// Replaces the extra environment the next [`restart`](Self::restart)
    /// starts the process with; the running process, if any, is left alone.
    pub fn set_env(&mut self, env: Vec<(OsString, OsString)>) {
        self.env = env;
    }

    /// Replaces the arguments the next [`restart`](Self::restart) starts the
    /// process with (`args(port)`, as for [`start`](Self::start)); the
    /// running process, if any, is left alone.
    pub fn set_args(&mut self, args: impl Fn(u16) -> Vec<OsString> + Send + 'static) {
        self.args = Box::new(args);
    }

    /// SIGTERM, then SIGKILL if the process has not exited after
    /// [`STOP_GRACE`]. Returns a complaint when SIGKILL was needed.
    pub fn stop(&mut self) -> Option<String> {
        self.terminate();
        self.reap()
    }

    /// Sends SIGTERM without waiting, so that several processes stop at once.
    pub(super) fn terminate(&mut self) {
        if let Some(child) = &self.child {
            signal(child, Signal::TERM);
        }
    }

    /// Waits for the process to exit after SIGTERM, SIGKILLing it after
    /// [`STOP_GRACE`].
    fn reap(&mut self) -> Option<String> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        signal(&child, Signal::KILL);
        let _ = child.wait();
        Some(format!(
            "{} did not exit within {STOP_GRACE:?} of SIGTERM and was killed ({})",
            self.name,
            self.log_path().display()
        ))
    }

    /// Lines of the logs a test should fail on: ` ERROR ` lines in runs that
    /// do not allow them, and panics in any run (but a failpoint's, in a
    /// run that allows errors: the test injected it).
    pub fn unexpected_log_lines(&self) -> Vec<String> {
        let mut found = Vec::new();
        for run in &self.runs {
            let text = fs::read(&run.log).unwrap_or_default();
            let text = strip_ansi(&String::from_utf8_lossy(&text));
            for line in text.lines() {
                // A failpoint's panic is the fault a test injects on purpose.
                let panic = line.contains("panicked at")
                    && !(run.allow_errors && line.contains("src/failpoint.rs"));
                if panic || (!run.allow_errors && line.contains(" ERROR ")) {
                    found.push(format!("{}: {line}", run.log.display()));
                }
            }
        }
        found
    }

    /// The last lines of each of this process's logs, each under its path.
    pub fn log_tails(&self) -> String {
        self.runs
            .iter()
            .map(|run| tail(&run.log, TAIL_LINES))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the process and returns what the test should fail on; after
    /// this, drop does nothing.
    pub(super) fn judge(&mut self) -> Vec<String> {
        let mut complaints: Vec<String> = self.reap().into_iter().collect();
        if !self.judged {
            self.judged = true;
            complaints.extend(self.unexpected_log_lines());
        }
        complaints
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.judged {
            self.reap();
            return;
        }
        self.terminate();
        let complaints = self.judge();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        } else if !complaints.is_empty() {
            panic!(
                "{} logged unexpected errors:\n{}\n{}",
                self.name,
                complaints.join("\n"),
                self.log_tails()
            );
        }
    }
}

/// Sends `sig` to `child`. A process that has already exited but was not
/// yet reaped is still a zombie with this pid, so the pid is never reused
/// under us.
/// Makes the kernel kill `cmd`'s process when the test thread that started
/// it dies without dropping it (the test binary interrupted, say), so no
/// server outlives the suite. Set after any change of user (std runs it
/// after setuid/setgid), which would otherwise clear it.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                .map_err(io::Error::from)
        });
    }
}

/// Sends `sig` to `child`, if it is still there.
pub fn signal(child: &Child, sig: Signal) {
    let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Removes ANSI colour sequences, in case a process colours its log
/// despite `NO_COLOR`.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` lines of a file, under a header naming it.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    match text {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            format!(
                "----- last {} lines of {} -----\n{}",
                lines.len() - from,
                path.display(),
                lines[from..].join("\n")
            )
        }
        Err(e) => format!("----- {}: {e} -----", path.display()),
    }
}
