//! A whole system under test: a controller, its agents, their roots, the
//! store and the CLI, built by [`SystemBuilder`].

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::cli::{self, Output};

use super::probes::{Probe, TlsProbe, du, list_dir};
use super::process::{Process, base_env, binary, wait_until};

/// The backup ID a `.partial` directory of the store is for.
pub fn partial_id(partial: &Path) -> String {
    partial
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".partial"))
        .expect("a .partial name")
        .to_owned()
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
    /// `--store URL` (an `s3://` one), the state directory then the store dir.
    store_url: Option<String>,
    tls: bool,
    encrypted: bool,
    keys_passphrase: Option<PathBuf>,
}

impl SystemBuilder {
    /// Backups encrypted with age: the harness makes the keys
    /// (`hop3-controller keys init` into [`System::keys_dir`]) and, for a
    /// local store, passes `--encrypt`. Every controller gets a keys
    /// directory of the test's own, so none reads the machine's.
    pub fn encrypted(mut self) -> Self {
        self.encrypted = true;
        self
    }

    /// [`Self::encrypted`], the identity protected by the passphrase in
    /// `file` (`keys init --passphrase`), which the controller is given
    /// (`--keys-passphrase-file`).
    pub fn keys_passphrase(mut self, file: impl Into<PathBuf>) -> Self {
        self.encrypted = true;
        self.keys_passphrase = Some(file.into());
        self
    }

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

    /// The store at `url` (`s3://BUCKET/PREFIX`; pass the service's
    /// variables with [`Self::controller_env`]); the controller's own files
    /// (seal key, tokens) go in the usual store directory, `--state-dir`.
    pub fn store_url(mut self, url: impl Into<String>) -> Self {
        self.store_url = Some(url.into());
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
            store: match &self.store_url {
                Some(url) => vec![
                    "--store".into(),
                    url.into(),
                    "--state-dir".into(),
                    store.clone().into(),
                ],
                None => vec!["--store".into(), store.clone().into()],
            },
            catalog: self
                .catalog
                .unwrap_or_else(|| format!("sqlite://{}", catalog.join("catalog.db").display())),
            local_agent,
            extra: self.controller_args,
            host: self
                .controller_host
                .unwrap_or_else(|| "127.0.0.1".to_owned()),
        };
        let keys_dir = base.join("keys");
        config
            .extra
            .extend(["--keys-dir".into(), keys_dir.clone().into()]);
        if self.encrypted {
            let mut init: Vec<OsString> = vec![
                "keys".into(),
                "init".into(),
                "--keys-dir".into(),
                keys_dir.clone().into(),
            ];
            if let Some(file) = &self.keys_passphrase {
                let pass: Vec<OsString> = vec!["--keys-passphrase-file".into(), file.into()];
                init.push("--passphrase".into());
                init.extend(pass.iter().cloned());
                config.extra.extend(pass);
            }
            run_admin(&base, init, Vec::new()).success()?;
            if self.store_url.is_none() {
                config.extra.push("--encrypt".into());
            }
        }
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
        env.extend(self.controller_env.iter().cloned());
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
            controller_env: self.controller_env,
            agents: Vec::new(),
            tls_dir,
            keys_dir,
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
    /// `--store` and, for a store that is no directory, `--state-dir`.
    store: Vec<OsString>,
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
            "--catalog".into(),
            self.catalog.clone().into(),
        ];
        fixed.extend(self.store.iter().cloned());
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
    let mut cmd = admin_command(base, args);
    let line = cli::describe(&cmd);
    Output::new(line, cmd.output().expect("running hop3-controller"), logs)
}

/// `hop3-controller ARGS...` in the test's clean environment.
fn admin_command<I, S>(base: &Path, args: I) -> Command
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
    cmd
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
    /// The variables the controller was given beyond the base ones.
    controller_env: Vec<(OsString, OsString)>,
    agents: Vec<Agent>,
    /// The certificate authority's directory, in secure mode.
    tls_dir: Option<PathBuf>,
    /// The controller's keys directory (`--keys-dir`; holds keys when
    /// [`SystemBuilder::encrypted`]).
    pub keys_dir: PathBuf,
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
            store_url: None,
            tls: false,
            encrypted: false,
            keys_passphrase: None,
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
    /// A catalog with backups serves at once and is checked against the
    /// store in the background: this also waits for that check (or its
    /// first failure, the store unreachable), so that what a test did to
    /// the store by hand is in the catalog.
    pub fn restart_controller(&mut self) -> Result<()> {
        self.controller.restart()?;
        self.url = self.controller.url();
        let log = self.controller.log_path().to_owned();
        super::process::wait_until(
            std::time::Duration::from_secs(60),
            "the catalog checked against the store",
            || {
                let text = fs::read_to_string(&log).unwrap_or_default();
                Ok((text.contains("catalog checked against the store")
                    || text.contains("could not check the catalog against the store"))
                .then_some(()))
            },
        )
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
    /// create, say) run to completion next to the running controller, with
    /// the variables it was given (a bucket's credentials).
    pub fn admin<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<OsString> = self.controller_config.store.clone();
        all.extend([
            "--catalog".into(),
            self.controller_config.catalog.clone().into(),
        ]);
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        let mut cmd = admin_command(&self.base, all);
        cmd.envs(self.controller_env.iter().cloned());
        let line = cli::describe(&cmd);
        Output::new(
            line,
            cmd.output().expect("running hop3-controller"),
            self.log_paths(),
        )
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

    /// Waits until an in-flight backup's `.partial` directory holds at
    /// least `bytes` (0: at least one entry), failing early if `create`
    /// ends first; see [`partial_id`] for its backup's ID.
    pub fn wait_partial(
        &self,
        create: &mut cli::Background,
        bytes: u64,
        deadline: Duration,
    ) -> Result<PathBuf> {
        wait_until(deadline, "the .partial directory to fill", || {
            for p in self.partials()? {
                let started = if bytes == 0 {
                    !list_dir(&p)?.is_empty()
                } else {
                    du(&p) >= bytes
                };
                if started {
                    return Ok(Some(p));
                }
            }
            if !create.is_running()? {
                bail!("the create ended before the .partial directory filled");
            }
            Ok(None)
        })
    }

    /// The catalog row of backup `id` of `app`, once it has `status`.
    pub fn wait_status(
        &self,
        app: &str,
        id: &str,
        status: &str,
        deadline: Duration,
    ) -> Result<cli::BackupSummary> {
        let mut last = None;
        wait_until(deadline, &format!("{id} to be {status}"), || {
            last = self
                .list(&[app, "--limit", "100"])?
                .into_iter()
                .find(|b| b.backup_id == id);
            Ok(last.clone().filter(|b| b.status == status))
        })
        .with_context(|| format!("backup:list says {last:?}"))
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
