//! Starting, watching and stopping the real binaries.
//!
//! Every process gets free ports, a cleared environment (PATH, HOME, a
//! `RUST_LOG`), and a log file of its own holding its stdout and stderr. A
//! process counts as started once its `grpc.health.v1` service answers
//! SERVING (over TLS for one that serves TLS); nothing here sleeps for a
//! fixed time. Dropping a [`Process`] (or the [`System`] that owns it) sends
//! SIGTERM, then SIGKILL after a grace period, and fails the test if a log
//! holds an ` ERROR ` line the test did not allow, or a panic.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::{Pid, Signal};
use tempfile::TempDir;

use crate::cli::{self, Output};

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
fn base_env() -> Vec<(OsString, OsString)> {
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
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
        // memory of the parent. It makes the kernel kill the process if the
        // test thread that started it dies without dropping it (e.g. the
        // test binary is interrupted), so no server outlives the suite.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                    .map_err(io::Error::from)
            });
        }
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
    fn terminate(&mut self) {
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
    fn judge(&mut self) -> Vec<String> {
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
/// Sends `sig` to `child`, if it is still there.
pub fn signal(child: &Child, sig: Signal) {
    let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// One `grpc.health.v1.Health/Check` for the whole server (service ""):
/// `Ok(true)` when SERVING. Runs on a thread of its own with its own
/// runtime, so it works from plain tests and from async ones alike.
pub fn health_check(url: &str) -> Result<bool> {
    health_check_tls(url, None)
}

/// [`health_check`] over TLS as `tls` says (plain without it): for an
/// `https://` controller or agent.
pub fn health_check_tls(url: &str, tls: Option<&TlsProbe>) -> Result<bool> {
    let url = url.to_owned();
    let tls = tls.map(TlsProbe::client_config).transpose()?;
    std::thread::scope(|s| {
        s.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                use tonic_health::pb::health_check_response::ServingStatus;
                use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
                let mut endpoint = tonic::transport::Endpoint::from_shared(url)?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(2));
                if let Some(tls) = tls {
                    endpoint = endpoint.tls_config(tls)?;
                }
                let channel = endpoint.connect().await?;
                let response = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                Ok(response.into_inner().status == ServingStatus::Serving as i32)
            })
        })
        .join()
        .map_err(|_| anyhow!("the health check thread panicked"))?
    })
}

/// How a process serving TLS is health-checked: the authority its
/// certificate must chain to, the name it must be for (`hop3-controller`
/// for the controller, the host ID for an agent), and the client
/// certificate to present to a server that requires one (an agent does).
#[derive(Clone, Debug)]
pub struct TlsProbe {
    /// PEM of the certificate authority (`ca.pem`).
    pub ca: PathBuf,
    /// The name the server's certificate must be valid for.
    pub domain: String,
    /// PEM certificate and key to present, if any.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsProbe {
    /// The client side of TLS to the server probed.
    pub fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |path: &Path| {
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .domain_name(self.domain.clone());
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }
}

/// What counts as a started process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// Its health service answers SERVING.
    Serving,
    /// It accepts TCP connections: for one that is not meant to turn
    /// healthy (an agent its controller refuses).
    Listening,
}

impl Ready {
    fn describe(self) -> &'static str {
        match self {
            Ready::Serving => "SERVING",
            Ready::Listening => "listening",
        }
    }
}

/// Where and how [`Process::start_probed`] checks that a process started.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The address it listens on and is checked at.
    pub host: String,
    /// TLS for its health check, when it serves TLS.
    pub tls: Option<TlsProbe>,
    /// What counts as started.
    pub ready: Ready,
}

impl Probe {
    /// Plain gRPC health at `host`, until SERVING.
    pub fn plain(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            tls: None,
            ready: Ready::Serving,
        }
    }

    /// Health over TLS at 127.0.0.1, until SERVING.
    pub fn tls(tls: TlsProbe) -> Self {
        Self {
            tls: Some(tls),
            ..Self::plain("127.0.0.1")
        }
    }

    /// The same probe, waiting only until the process listens.
    pub fn listening(self) -> Self {
        Self {
            ready: Ready::Listening,
            ..self
        }
    }
}

/// The sorted names in `dir`; none when it does not exist (yet, or any
/// more: the product creates and removes these directories under us).
pub fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => names.push(entry.file_name().to_string_lossy().into_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        }
    }
    names.sort();
    Ok(names)
}

/// Waits until the names in `dir` are exactly `expected` (sorted), for at
/// most `deadline`: the product may remove leftovers (an old tree after a
/// restore, a failed backup's files) in the background, after it answered.
pub fn wait_for_entries(dir: &Path, expected: &[&str], deadline: Duration) -> Result<()> {
    let mut last = Vec::new();
    let waited = wait_until(deadline, "the directory to settle", || {
        last = list_dir(dir)?;
        Ok((last == expected).then_some(()))
    });
    waited.with_context(|| format!("{} holds {last:?}, expected {expected:?}", dir.display()))
}

/// Total size of the regular files under `dir` (0 when it is gone).
pub fn du(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
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

/// A standalone agent started by [`System::start_agent`].
#[derive(Debug)]
pub struct Agent {
    /// Its host ID.
    pub host_id: String,
    /// Its HOP3_ROOT; apps go in `root/apps/<app>`.
    pub root: PathBuf,
    /// The process, to kill or restart it.
    pub process: Process,
}

/// What [`SystemBuilder::start`] starts.
#[derive(Debug)]
pub struct SystemBuilder {
    local_agent: bool,
    hooks: bool,
    catalog: Option<String>,
    controller_args: Vec<OsString>,
    controller_env: Vec<(OsString, OsString)>,
    controller_host: Option<String>,
    store: Option<PathBuf>,
    tls: bool,
}

impl SystemBuilder {
    /// The address the controller listens on instead of 127.0.0.1 (the
    /// root end of a test's own veth pair, so that an agent in a network
    /// namespace reaches it).
    pub fn controller_host(mut self, host: impl Into<String>) -> Self {
        self.controller_host = Some(host.into());
        self
    }

    /// The store directory instead of `<tmp>/store` (on a small file system
    /// of the test's own, say); created if needed, made 0700.
    pub fn store(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store = Some(dir.into());
        self
    }

    /// Secure mode: the harness makes a certificate authority
    /// (`hop3-controller certs init` into [`System::tls_dir`]) and starts
    /// the controller with `--tls-dir`; its URL is `https://`, `hop3` is run
    /// with `--ca-cert` (and the token given to [`System::set_token`]), and
    /// standalone agents get certificates of their host and `--tls-dir`.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Whether the controller runs an agent in-process (default: yes).
    pub fn local_agent(mut self, yes: bool) -> Self {
        self.local_agent = yes;
        self
    }

    /// Configures every agent with stop/start commands that append
    /// `stop <app>` / `start <app>` to [`System::hooks_log`].
    pub fn hooks(mut self) -> Self {
        self.hooks = true;
        self
    }

    /// The controller's `--catalog` URL (default: a SQLite file of the
    /// test's own, `sqlite://<tmp>/catalog/catalog.db`).
    pub fn catalog(mut self, url: impl Into<String>) -> Self {
        self.catalog = Some(url.into());
        self
    }

    /// More arguments for the controller, after those the harness gives it.
    pub fn controller_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.controller_args
            .extend(args.into_iter().map(Into::into));
        self
    }

    /// A variable for the controller's environment, on top of the base one.
    pub fn controller_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.controller_env.push((key.into(), value.into()));
        self
    }

    /// Starts the controller and waits until it is healthy.
    pub fn start(self) -> Result<System> {
        let dir = tempfile::Builder::new().prefix("hop3-e2e-").tempdir()?;
        let base = dir.path().to_owned();
        let root = base.join("root");
        let store = self.store.unwrap_or_else(|| base.join("store"));
        let catalog = base.join("catalog");
        let logs = base.join("logs");
        for d in [
            &root.join("apps"),
            &store,
            &catalog,
            &logs,
            &base.join("tmp"),
        ] {
            fs::create_dir_all(d)?;
        }
        // A provisioned store directory is private to the service.
        fs::set_permissions(&store, fs::Permissions::from_mode(0o700))?;
        let hooks_log = base.join("hooks.log");
        let hook_args = if self.hooks {
            hook_args(&hooks_log)
        } else {
            Vec::new()
        };

        let mut local_agent: Vec<OsString> = Vec::new();
        if self.local_agent {
            local_agent.extend([
                "--local-agent".into(),
                "--root".into(),
                root.clone().into(),
                "--host-id".into(),
                LOCAL_HOST_ID.into(),
            ]);
            local_agent.extend(hook_args.iter().cloned());
        }
        let socket = base.join("ctl.sock");
        let mut config = ControllerConfig {
            socket: socket.clone(),
            store: store.clone(),
            catalog: self
                .catalog
                .unwrap_or_else(|| format!("sqlite://{}", catalog.join("catalog.db").display())),
            local_agent,
            extra: self.controller_args,
            host: self
                .controller_host
                .unwrap_or_else(|| "127.0.0.1".to_owned()),
        };
        let mut probe = Probe::plain(&config.host);
        let tls_dir = if self.tls {
            let dir = base.join("tls");
            // Valid for the address the CLI reaches it at, as well.
            let mut args: Vec<OsString> = vec![
                "certs".into(),
                "init".into(),
                "--dir".into(),
                dir.clone().into(),
            ];
            for name in ["localhost", "127.0.0.1", config.host.as_str()] {
                args.extend(["--name".into(), name.into()]);
            }
            run_admin(&base, args, Vec::new()).success()?;
            config
                .extra
                .extend(["--tls-dir".into(), dir.clone().into()]);
            probe.tls = Some(TlsProbe {
                ca: dir.join("ca.pem"),
                domain: CONTROLLER_NAME.to_owned(),
                identity: None,
            });
            Some(dir)
        } else {
            None
        };
        let mut env = tmpdir_env(&base);
        env.extend(self.controller_env);
        let controller = Process::start_probed(
            "controller",
            binary("hop3-controller"),
            &logs,
            env,
            probe,
            config.args(),
        )?;
        let cli_url = match &tls_dir {
            Some(_) => None,
            None => Some(format!("unix:{}", socket.display())),
        };
        Ok(System {
            root,
            store,
            url: controller.url(),
            cli_url,
            hooks_log,
            hooks: self.hooks,
            logs,
            base,
            dir: Some(dir),
            controller,
            controller_config: config,
            agents: Vec::new(),
            tls_dir,
            token: None,
        })
    }
}

/// What the controller is started with, kept so that it can be started
/// again on the same store with another catalog.
#[derive(Clone, Debug)]
struct ControllerConfig {
    /// Its Unix socket, which `hop3` uses in plain mode.
    socket: PathBuf,
    store: PathBuf,
    catalog: String,
    /// `--local-agent` and its options, when it runs one.
    local_agent: Vec<OsString>,
    extra: Vec<OsString>,
    /// The address it listens on.
    host: String,
}

impl ControllerConfig {
    /// The controller's arguments for a port.
    fn args(&self) -> impl Fn(u16) -> Vec<OsString> + Send + 'static {
        let mut fixed: Vec<OsString> = vec![
            "--socket".into(),
            self.socket.clone().into(),
            "--store".into(),
            self.store.clone().into(),
            "--catalog".into(),
            self.catalog.clone().into(),
        ];
        fixed.extend(self.local_agent.iter().cloned());
        fixed.extend(self.extra.iter().cloned());
        let host = self.host.clone();
        move |port| {
            let mut args: Vec<OsString> = vec!["--listen".into(), format!("{host}:{port}").into()];
            args.extend(fixed.iter().cloned());
            args
        }
    }
}

/// A gRPC channel to the Unix socket `path`.
pub async fn socket_channel(path: &Path) -> Result<tonic::transport::Channel> {
    let path = path.to_owned();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        }
    });
    Ok(
        tonic::transport::Endpoint::from_static("http://controller.invalid")
            .connect_with_connector(connector)
            .await?,
    )
}

/// Points TMPDIR inside the test's directory, so that whatever temporary
/// files a process makes are looked at and removed with it.
fn tmpdir_env(base: &Path) -> Vec<(OsString, OsString)> {
    vec![("TMPDIR".into(), base.join("tmp").into())]
}

/// The host ID given to the controller's local agent.
pub const LOCAL_HOST_ID: &str = "e2e-local";

/// The name the controller's certificate is for (and the agents check).
pub const CONTROLLER_NAME: &str = "hop3-controller";

/// `hop3-controller ARGS...` (an administration command: certs, tokens)
/// run to completion with the base environment and TMPDIR in `base`;
/// `logs` are quoted when a check of its output fails.
fn run_admin<I, S>(base: &Path, args: I, logs: Vec<PathBuf>) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(binary("hop3-controller"));
    cmd.args(args)
        .env_clear()
        .envs(base_env())
        .envs(tmpdir_env(base))
        .stdin(Stdio::null());
    let line = cli::describe(&cmd);
    Output::new(line, cmd.output().expect("running hop3-controller"), logs)
}

/// `--stop-cmd` / `--start-cmd` arguments that record each call in `log`.
fn hook_args(log: &Path) -> Vec<OsString> {
    let quoted = format!("'{}'", log.display());
    vec![
        "--stop-cmd".into(),
        format!("printf 'stop %s\\n' \"$HOP3_APP\" >> {quoted}").into(),
        "--start-cmd".into(),
        format!("printf 'start %s\\n' \"$HOP3_APP\" >> {quoted}").into(),
    ]
}

/// A controller (by default with a local agent), its store and catalog, and
/// any standalone agents, all in one temporary directory. Dropping it stops
/// every process and judges their logs; the directory is removed when the
/// test passed and kept (its path printed) when it failed, or always with
/// `HOP3_KEEP_TEST_DIRS` set.
pub struct System {
    /// HOP3_ROOT of the local agent: apps go in `root/apps/<app>`. Without a
    /// local agent it is an empty directory that nothing serves.
    pub root: PathBuf,
    /// The backup store (`--store`).
    pub store: PathBuf,
    /// The controller's TCP URL, which agents register at (and `hop3`
    /// uses in secure mode, with a token).
    pub url: String,
    /// In plain mode, the controller's Unix socket (`unix:PATH`), which
    /// `hop3` uses as root.
    pub cli_url: Option<String>,
    /// Where the stop/start hooks write, when configured.
    pub hooks_log: PathBuf,
    hooks: bool,
    logs: PathBuf,
    base: PathBuf,
    dir: Option<TempDir>,
    controller: Process,
    controller_config: ControllerConfig,
    agents: Vec<Agent>,
    /// The certificate authority's directory, in secure mode.
    tls_dir: Option<PathBuf>,
    /// The token `hop3` is run with (HOP3_TOKEN), if any.
    token: Option<String>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("base", &self.base)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl System {
    /// A controller with a local agent, no hooks.
    pub fn start() -> Result<System> {
        Self::builder().start()
    }

    /// Options for [`start`](SystemBuilder::start).
    pub fn builder() -> SystemBuilder {
        SystemBuilder {
            local_agent: true,
            hooks: false,
            catalog: None,
            controller_args: Vec::new(),
            controller_env: Vec::new(),
            controller_host: None,
            store: None,
            tls: false,
        }
    }

    /// Starts a standalone agent with a root of its own
    /// (`<tmp>/hosts/<host_id>`) registered with this controller, and waits
    /// until it is healthy (which it is only once registered).
    pub fn start_agent(&mut self, host_id: &str) -> Result<&mut Agent> {
        self.start_agent_with(host_id, &[])
    }

    /// [`start_agent`](Self::start_agent) with more arguments after those
    /// the harness gives (`--max-jobs 1`, say).
    ///
    /// In secure mode the agent gets a certificate of its host
    /// ([`issue_agent_cert`](Self::issue_agent_cert)) and `--tls-dir`, and
    /// its health is checked over TLS.
    pub fn start_agent_with(&mut self, host_id: &str, extra: &[&str]) -> Result<&mut Agent> {
        self.start_agent_env(host_id, extra, &[])
    }

    /// [`start_agent_with`](Self::start_agent_with) with variables added to
    /// the agent's environment (`HOP3_FAILPOINTS`, say).
    pub fn start_agent_env(
        &mut self,
        host_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<&mut Agent> {
        let env: Vec<(OsString, OsString)> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let Some(ca) = self.tls_dir.as_ref().map(|d| d.join("ca.pem")) else {
            return self.launch_agent(host_id, extra, None, Probe::plain("127.0.0.1"), env);
        };
        let dir = self.issue_agent_cert(host_id)?;
        let probe = Probe::tls(TlsProbe {
            ca,
            domain: host_id.to_owned(),
            // The agent answers only certificates of our authority.
            identity: Some((
                dir.join(format!("{host_id}.pem")),
                dir.join(format!("{host_id}.key")),
            )),
        });
        self.launch_agent(host_id, extra, Some(&dir), probe, env)
    }

    /// Starts a standalone agent the controller is expected to refuse: with
    /// the TLS material in `tls_dir` (`--tls-dir`; none: plain), pointed at
    /// this controller's URL, and waited on only until it listens (it never
    /// turns SERVING: that needs a registration).
    pub fn start_refused_agent(
        &mut self,
        host_id: &str,
        tls_dir: Option<&Path>,
    ) -> Result<&mut Agent> {
        self.launch_agent(
            host_id,
            &[],
            tls_dir,
            Probe::plain("127.0.0.1").listening(),
            Vec::new(),
        )
    }

    /// Starts a standalone agent `host_id` (with `--tls-dir` when given),
    /// checked as `probe` says.
    fn launch_agent(
        &mut self,
        host_id: &str,
        extra: &[&str],
        tls_dir: Option<&Path>,
        probe: Probe,
        env: Vec<(OsString, OsString)>,
    ) -> Result<&mut Agent> {
        let root = self.agent_root(host_id)?;
        let mut fixed: Vec<OsString> = vec![
            "--controller".into(),
            self.url.clone().into(),
            "--root".into(),
            root.clone().into(),
            "--host-id".into(),
            host_id.into(),
        ];
        if self.hooks {
            fixed.extend(hook_args(&self.hooks_log));
        }
        if let Some(dir) = tls_dir {
            fixed.extend(["--tls-dir".into(), dir.into()]);
        }
        fixed.extend(extra.iter().map(OsString::from));
        let process = Process::start_probed(
            &format!("agent-{host_id}"),
            binary("hop3-agent"),
            &self.logs,
            tmpdir_env(&self.base)
                .into_iter()
                .chain(self.agent_env())
                .chain(env)
                .collect(),
            probe,
            move |port| {
                let mut args: Vec<OsString> =
                    vec!["--listen".into(), format!("127.0.0.1:{port}").into()];
                args.extend(fixed.iter().cloned());
                args
            },
        )?;
        self.agents.push(Agent {
            host_id: host_id.to_owned(),
            root,
            process,
        });
        Ok(self.agents.last_mut().expect("just pushed"))
    }

    /// The HOP3_ROOT a standalone agent `host_id` gets (with its `apps/`),
    /// so that apps can be put on the host before its agent starts.
    pub fn agent_root(&self, host_id: &str) -> Result<PathBuf> {
        let root = self.base.join("hosts").join(host_id);
        fs::create_dir_all(root.join("apps"))?;
        Ok(root)
    }

    /// The standalone agent with this host ID.
    pub fn agent(&mut self, host_id: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.host_id == host_id)
            .unwrap_or_else(|| panic!("no agent {host_id:?} was started"))
    }

    /// The controller process.
    pub fn controller(&mut self) -> &mut Process {
        &mut self.controller
    }

    /// The controller's `--catalog` URL.
    pub fn catalog(&self) -> &str {
        &self.controller_config.catalog
    }

    /// `sqlite://<tmp>/catalog/<name>`: a catalog file of the test's own that
    /// does not exist yet, for [`set_catalog`](Self::set_catalog).
    pub fn sqlite_catalog(&self, name: &str) -> String {
        format!(
            "sqlite://{}",
            self.base.join("catalog").join(name).display()
        )
    }

    /// Makes the controller's next start use the catalog `url` (on the same
    /// store); the running controller is left alone until
    /// [`restart_controller`](Self::restart_controller).
    pub fn set_catalog(&mut self, url: &str) {
        self.controller_config.catalog = url.to_owned();
        self.controller.set_args(self.controller_config.args());
    }

    /// Stops the controller (SIGTERM, unless it is already gone, e.g. after
    /// [`Process::kill`]) and starts it again on the same store with the
    /// catalog it was last given, on the same port when it is still free,
    /// and waits for its health. Standalone agents keep the URL they were
    /// started with, so they find it again when the port was kept.
    pub fn restart_controller(&mut self) -> Result<()> {
        self.controller.restart()?;
        self.url = self.controller.url();
        Ok(())
    }

    /// A scratch directory inside the test's directory, created on demand.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let dir = self.base.join("scratch").join(name);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Runs `hop3 --controller URL ARGS...` to completion, stdin closed.
    pub fn hop3<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.hop3_command(args);
        let args = cli::describe(&cmd);
        let out = cmd.output().expect("running hop3");
        Output::new(args, out, self.log_paths())
    }

    /// The `hop3` command, ready to spawn in the background (stdin null,
    /// stdout and stderr piped).
    pub fn hop3_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<OsString> = Vec::new();
        if let Some(dir) = &self.tls_dir {
            all.extend(["--ca-cert".into(), dir.join("ca.pem").into()]);
        }
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        let mut cmd = cli::command(self.cli_url(), all);
        if let Some(token) = &self.token {
            cmd.env("HOP3_TOKEN", token);
        }
        cmd
    }

    /// The URL `hop3` is run with: the socket in plain mode, the TCP URL in
    /// secure mode.
    pub fn cli_url(&self) -> &str {
        self.cli_url.as_deref().unwrap_or(&self.url)
    }

    /// A gRPC channel to the controller's Unix socket (as root: no token).
    pub async fn socket_channel(&self) -> Result<tonic::transport::Channel> {
        let path = self.controller_config.socket.clone();
        socket_channel(&path).await
    }

    /// What a standalone plain-mode agent needs in its environment to
    /// register: the controller's join token file.
    pub fn agent_env(&self) -> Vec<(OsString, OsString)> {
        match &self.tls_dir {
            Some(_) => Vec::new(),
            None => vec![(
                "HOP3_JOIN_TOKEN_FILE".into(),
                self.store.join("join-token").into(),
            )],
        }
    }

    /// The certificate authority's directory in secure mode
    /// ([`SystemBuilder::tls`]): `ca.pem`, `ca.key`, `hop3-controller.pem`
    /// and `.key`.
    pub fn tls_dir(&self) -> Option<&Path> {
        self.tls_dir.as_deref()
    }

    /// The token `hop3` is run with from now on (HOP3_TOKEN); none: no token.
    pub fn set_token(&mut self, token: Option<&str>) {
        self.token = token.map(str::to_owned);
    }

    /// `hop3-controller --store STORE --catalog CATALOG ARGS...` (tokens
    /// create, say) run to completion next to the running controller.
    pub fn admin<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<OsString> = vec![
            "--store".into(),
            self.store.clone().into(),
            "--catalog".into(),
            self.controller_config.catalog.clone().into(),
        ];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run_admin(&self.base, all, self.log_paths())
    }

    /// `hop3-controller tokens create NAME`: the token it prints once.
    pub fn create_token(&self, name: &str) -> Result<String> {
        let out = self.admin(["tokens", "create", name]).success()?;
        Ok(out.stdout.trim().to_owned())
    }

    /// The certificate of agent host `host_id`, issued by this system's
    /// authority (`certs issue-agent HOST --out`) on the first call: the
    /// directory holding `ca.pem`, `HOST.pem` and `HOST.key`, for the
    /// agent's `--tls-dir`. Only in secure mode.
    pub fn issue_agent_cert(&self, host_id: &str) -> Result<PathBuf> {
        let ca_dir = self
            .tls_dir
            .as_ref()
            .context("agent certificates need a system started with tls()")?;
        let out = self.base.join("agent-tls").join(host_id);
        if out.join(format!("{host_id}.pem")).is_file() {
            return Ok(out);
        }
        let args: [OsString; 7] = [
            "certs".into(),
            "issue-agent".into(),
            host_id.into(),
            "--dir".into(),
            ca_dir.into(),
            "--out".into(),
            out.clone().into(),
        ];
        run_admin(&self.base, args, Vec::new()).success()?;
        Ok(out)
    }

    /// Every log file of every process, controller first.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.controller.log_paths();
        for agent in &self.agents {
            paths.extend(agent.process.log_paths());
        }
        paths
    }

    /// `<store>/apps/<app>/<id>`.
    pub fn backup_dir(&self, app: &str, id: &str) -> PathBuf {
        self.store.join("apps").join(app).join(id)
    }

    /// The names in `<store>/apps/<app>/` (none when it does not exist).
    pub fn store_entries(&self, app: &str) -> Result<Vec<String>> {
        list_dir(&self.store.join("apps").join(app))
    }

    /// Every in-flight backup directory, `<store>/apps/*/*.partial`.
    pub fn partials(&self) -> Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for app in list_dir(&self.store.join("apps"))? {
            for name in list_dir(&self.store.join("apps").join(&app))? {
                if name.ends_with(".partial") {
                    found.push(self.store.join("apps").join(&app).join(name));
                }
            }
        }
        Ok(found)
    }

    /// The lines the hooks wrote, in order (`["stop app", "start app"]`).
    pub fn hook_calls(&self) -> Result<Vec<String>> {
        match fs::read_to_string(&self.hooks_log) {
            Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).context("reading the hooks log"),
        }
    }

    /// The last lines of every log, each under its path.
    pub fn log_tails(&self) -> String {
        let mut tails = vec![self.controller.log_tails()];
        tails.extend(self.agents.iter().map(|a| a.process.log_tails()));
        tails.join("\n")
    }
}

impl Drop for System {
    fn drop(&mut self) {
        // Stop the agents before the controller, as an operator would, but
        // send every SIGTERM before waiting on any so the grace periods overlap.
        for agent in &mut self.agents {
            agent.process.terminate();
        }
        self.controller.terminate();
        let mut complaints = Vec::new();
        for agent in &mut self.agents {
            complaints.extend(agent.process.judge());
        }
        complaints.extend(self.controller.judge());

        let panicking = std::thread::panicking();
        // A test that returns an error (rather than panicking) cannot be
        // told apart from one that passed here; this keeps its directory.
        let keep = std::env::var_os("HOP3_KEEP_TEST_DIRS").is_some();
        if keep
            && !panicking
            && complaints.is_empty()
            && let Some(kept) = self.dir.take().map(TempDir::keep)
        {
            eprintln!("test directory kept at {}", kept.display());
        }
        if panicking || !complaints.is_empty() {
            let kept = self.dir.take().map(TempDir::keep);
            eprintln!("{}", self.log_tails());
            if let Some(kept) = kept {
                eprintln!("test directory kept at {}", kept.display());
            }
        }
        if !panicking && !complaints.is_empty() {
            panic!(
                "unexpected errors in the logs (call allow_errors() if the test provokes them):\n{}",
                complaints.join("\n")
            );
        }
    }
}
