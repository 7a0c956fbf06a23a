//! Secure mode: mutual TLS between the controller and its agents, bearer
//! tokens for the CLI's API (stored only as hashes), agents registering
//! only as the host their certificate names, and plain gRPC refused off
//! loopback.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hop3_tests::cli::{self, Background};
use hop3_tests::harness::{
    self, CONTROLLER_NAME, Process, TlsProbe, binary, health_check_tls, list_dir, wait_until,
};
use hop3_tests::snapshot::{self, Snapshot};
use hop3_tests::{App, Output, System};

/// How long a refused agent may take to try (it retries every 2 s) and the
/// controller to log why it refused it, on a loaded machine.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(30);

/// How long a process refusing its arguments may take to exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// What `hop3` exits with when the controller refuses the caller.
const EXIT_UNAUTHENTICATED: i32 = 6;

/// Fails unless `token` looks like `hop3_<64 lowercase hex digits>`.
fn well_formed(token: &str) -> Result<()> {
    let hex = token
        .strip_prefix("hop3_")
        .with_context(|| format!("a token without the hop3_ prefix: {token:?}"))?;
    ensure!(
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "not hop3_ and 64 hex digits: {token:?}"
    );
    Ok(())
}

/// Fails unless `out` is the controller refusing the caller: exit 6 and
/// `not authorized`.
fn not_authorized(out: Output) -> Result<()> {
    ensure!(
        out.status.code() == Some(EXIT_UNAUTHENTICATED),
        "expected exit {EXIT_UNAUTHENTICATED} (unauthenticated)\n{}",
        out.report()
    );
    out.failure(&["not authorized"])?;
    Ok(())
}

/// The text of `path`, empty when it does not exist.
fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// Waits until the log at `path` has a line holding every one of `needles`,
/// and returns that line.
fn wait_for_log_line(path: &Path, needles: &[&str], deadline: Duration) -> Result<String> {
    wait_until(
        deadline,
        &format!("{needles:?} in {}", path.display()),
        || {
            Ok(read_lossy(path)
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_owned))
        },
    )
    .with_context(|| harness::tail(path, 30))
}

/// How many lines of the log at `path` hold `needle`.
fn count_lines(path: &Path, needle: &str) -> usize {
    read_lossy(path)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// The files of the SQLite catalog `url` (`sqlite://PATH`): the database
/// and its `-wal` / `-shm` companions.
fn catalog_files(url: &str) -> Result<Vec<PathBuf>> {
    let db = Path::new(
        url.strip_prefix("sqlite://")
            .with_context(|| format!("not a SQLite catalog: {url}"))?,
    );
    let dir = db.parent().context("the catalog file has a directory")?;
    let name = db
        .file_name()
        .context("the catalog has a file name")?
        .to_string_lossy()
        .into_owned();
    let files: Vec<PathBuf> = list_dir(dir)?
        .into_iter()
        .filter(|f| f.starts_with(&name))
        .map(|f| dir.join(f))
        .collect();
    ensure!(
        files.contains(&db.to_path_buf()),
        "no catalog database at {}: {files:?}",
        db.display()
    );
    Ok(files)
}

/// Whether the bytes of the file at `path` contain `needle`.
fn file_contains(path: &Path, needle: &str) -> Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// Copies `from/<from_name>.{pem,key}` to `to/<to_name>.{pem,key}` and
/// `from/ca.pem` to `to/ca.pem`: one host's certificate dressed up as
/// another's.
fn disguise(from: &Path, from_name: &str, to: &Path, to_name: &str) -> Result<()> {
    fs::copy(from.join("ca.pem"), to.join("ca.pem"))?;
    for ext in ["pem", "key"] {
        fs::copy(
            from.join(format!("{from_name}.{ext}")),
            to.join(format!("{to_name}.{ext}")),
        )?;
    }
    Ok(())
}

/// `Register` as `host_id` over TLS that trusts `ca` but presents no
/// certificate, as an agent without one would: the status it gets.
fn register_without_certificate(url: &str, ca: &Path, host_id: &str) -> Result<tonic::Status> {
    use hop3_proto::v1::RegisterRequest;
    use hop3_proto::v1::agent_registry_client::AgentRegistryClient;
    let tls = TlsProbe {
        ca: ca.to_owned(),
        domain: CONTROLLER_NAME.to_owned(),
        identity: None,
    }
    .client_config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .tls_config(tls)?
            .connect()
            .await?;
        let answer = AgentRegistryClient::new(channel)
            .register(RegisterRequest {
                instance: String::new(),
                host_id: host_id.to_owned(),
                address: "https://127.0.0.1:9".to_owned(),
                version: hop3_proto::HOP3_VERSION.to_owned(),
                apps: Vec::new(),
                ..Default::default()
            })
            .await;
        match answer {
            Ok(_) => bail!("the controller registered {host_id}, which has no certificate"),
            Err(status) => Ok(status),
        }
    })
}

/// `ListApps` on the agent at `url`, over TLS as `tls` says: the apps, or
/// the status the agent answered with.
fn list_apps(url: &str, tls: &TlsProbe) -> Result<std::result::Result<Vec<String>, tonic::Status>> {
    use hop3_proto::v1::ListAppsRequest;
    use hop3_proto::v1::agent_service_client::AgentServiceClient;
    let tls = tls.client_config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .tls_config(tls)?
            .connect()
            .await?;
        let answer = AgentServiceClient::new(channel)
            .list_apps(ListAppsRequest {})
            .await;
        Ok(answer.map(|r| r.into_inner().apps))
    })
}

/// `PROGRAM ARGS...` with the environment cleared but for PATH and HOME,
/// its output piped: for a server that is expected to refuse to start.
fn server_command(program: &str, args: &[OsString]) -> Command {
    let mut cmd = Command::new(binary(program));
    cmd.env_clear();
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Fails unless `out` (a server run to its end) exited non-zero saying it
/// refuses to serve plain gRPC there.
fn refused_plain(out: &Output) -> Result<()> {
    ensure!(
        !out.status.success(),
        "a plain server off loopback started\n{}",
        out.report()
    );
    ensure!(
        out.stderr.contains("refusing to serve plain") && out.stderr.contains("--tls-dir"),
        "it does not say why it refuses, nor what to do\n{}",
        out.report()
    );
    Ok(())
}

#[test]
fn backups_and_restores_run_over_mutual_tls_with_a_token() -> Result<()> {
    let mut sys = System::builder().local_agent(false).tls().start()?;
    ensure!(
        sys.url.starts_with("https://127.0.0.1:"),
        "the controller serves TLS: {}",
        sys.url
    );
    let tls_dir = sys.tls_dir().context("a system started with tls()")?;
    for file in [
        "ca.pem",
        "ca.key",
        "hop3-controller.pem",
        "hop3-controller.key",
    ] {
        ensure!(
            tls_dir.join(file).is_file(),
            "certs init wrote no {file}: {:?}",
            list_dir(tls_dir)?
        );
    }
    let token = sys.create_token("alice")?;
    well_formed(&token)?;
    sys.set_token(Some(&token));

    let scratch = sys.scratch("fixtures")?;
    let root = sys.agent_root("web-1")?;
    let app = App::build(&root, "shop", 301, &scratch)?;
    let original = Snapshot::of(&app.dir)?;
    let certs = sys.issue_agent_cert("web-1")?;
    ensure!(
        list_dir(&certs)? == ["ca.pem", "web-1.key", "web-1.pem"],
        "issue-agent --out wrote {:?}",
        list_dir(&certs)?
    );
    // Healthy means registered: over TLS, with web-1's certificate.
    sys.start_agent("web-1")?;
    let row = sys
        .agent_row("web-1")?
        .with_context(|| format!("web-1 not listed: {:?}", sys.agents()))?;
    ensure!(row.status == "online", "{row:?}");
    ensure!(
        row.address.starts_with("https://127.0.0.1:"),
        "an agent with --tls-dir advertises https://: {row:?}"
    );

    let created = sys.create("shop")?;
    ensure!(created.host == "web-1", "{created:?}");
    let listed = sys.list(&["shop"])?;
    ensure!(
        listed.len() == 1 && listed[0].backup_id == created.backup_id,
        "{listed:?}"
    );
    let human = sys.hop3(["backup:list"]).success()?;
    ensure!(
        human.stdout.contains(&created.backup_id),
        "{}",
        human.report()
    );
    let info = sys.info(&created.backup_id)?;
    ensure!(info.all_valid && info.host == "web-1", "{info:?}");

    app.mutate(&scratch)?;
    ensure!(
        original.assert_same(&Snapshot::of(&app.dir)?, "").is_err(),
        "the mutation changed nothing"
    );
    let restored = sys.restore(&created.backup_id, None)?;
    ensure!(
        restored.app == "shop" && restored.host == "web-1",
        "{restored:?}"
    );
    original.assert_same(&Snapshot::of(&app.dir)?, "shop restored over mutual TLS")?;
    snapshot::fsck(&app.git_dir())?;
    Ok(())
}

#[test]
fn only_a_live_token_opens_the_api_and_none_is_kept_in_clear() -> Result<()> {
    // With the controller's own agent: a local agent and TLS together.
    let mut sys = System::builder().tls().start()?;
    let app = App::build(&sys.root, "notes", 302, &sys.scratch("fixtures")?)?;
    let original = Snapshot::of(&app.dir)?;
    let alice = sys.create_token("alice")?;
    let bob = sys.create_token("bob")?;
    well_formed(&alice)?;
    well_formed(&bob)?;
    ensure!(alice != bob, "two tokens are the same");
    sys.admin(["tokens", "create", "alice"])
        .failure(&["already exists"])?;

    // No token: every call of the API is refused, before it is looked at
    // (an ID that does not exist is "not authorized", not "not found").
    sys.set_token(None);
    not_authorized(sys.hop3(["backup:list"]))?;
    not_authorized(sys.hop3(["backup:create", "notes"]))?;
    not_authorized(sys.hop3(["agent:list"]))?;
    let nobody = "20251108_143022_a8f3d9";
    not_authorized(sys.hop3(["backup:info", nobody]))?;
    not_authorized(sys.hop3(["backup:restore", nobody]))?;
    not_authorized(sys.hop3(["backup:delete", nobody, "--yes"]))?;
    not_authorized(sys.hop3(["backup:import", "/tmp"]))?;
    not_authorized(sys.hop3(["backup:check-age", "notes", "--max-age", "1h"]))?;
    not_authorized(sys.hop3(["agent:forget", "nobody"]))?;
    // A well-formed token the controller never made, and one digit off a
    // real one.
    let mut unknown = alice.clone();
    let last = if unknown.ends_with('0') { "1" } else { "0" };
    unknown.replace_range(unknown.len() - 1.., last);
    for wrong in [format!("hop3_{}", "0".repeat(64)), unknown.clone()] {
        sys.set_token(Some(&wrong));
        not_authorized(sys.hop3(["backup:list"]))?;
        not_authorized(sys.hop3(["backup:create", "notes"]))?;
    }
    ensure!(
        sys.store_entries("notes")?.is_empty(),
        "a refused create wrote {:?}",
        sys.store_entries("notes")?
    );

    // A live token.
    sys.set_token(Some(&alice));
    ensure!(sys.list(&[])?.is_empty());
    let created = sys.create("notes")?;
    let listed = sys.list(&["notes"])?;
    ensure!(
        listed.len() == 1 && listed[0].backup_id == created.backup_id,
        "{listed:?}"
    );

    // Revoked: refused at once; the other token still works.
    sys.admin(["tokens", "revoke", "alice"]).success()?;
    not_authorized(sys.hop3(["backup:list"]))?;
    not_authorized(sys.hop3(["backup:restore", &created.backup_id]))?;
    sys.admin(["tokens", "revoke", "alice"])
        .failure(&["alice"])?;
    let tokens = sys.admin(["tokens", "list"]).success()?;
    let line = |name: &str| {
        tokens
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(str::to_owned)
            .with_context(|| format!("tokens list has no {name}\n{}", tokens.report()))
    };
    ensure!(line("alice")?.contains("revoked"), "{}", tokens.report());
    ensure!(!line("bob")?.contains("revoked"), "{}", tokens.report());
    ensure!(
        !tokens.stdout.contains(&alice) && !tokens.stdout.contains(&bob),
        "tokens list shows a token\n{}",
        tokens.report()
    );
    // The token from the CLI's config file: only from a private one.
    sys.set_token(None);
    let config = sys.scratch("cli")?.join("config.toml");
    fs::write(&config, format!("token = \"{bob}\"\n"))?;
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644))?;
    let with_config = [
        "--config".as_ref(),
        config.as_os_str(),
        "backup:list".as_ref(),
    ];
    let out = sys.hop3(with_config).failure(&["chmod 600"])?;
    ensure!(
        !out.stderr.contains(&bob) && !out.stdout.contains(&bob),
        "the CLI printed the token\n{}",
        out.report()
    );
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600))?;
    let out = sys.hop3(with_config).success()?;
    ensure!(out.stdout.contains(&created.backup_id), "{}", out.report());

    sys.set_token(Some(&bob));
    app.mutate(&sys.scratch("mutations")?)?;
    sys.restore(&created.backup_id, None)?;
    original.assert_same(&Snapshot::of(&app.dir)?, "notes restored with bob's token")?;

    // The logs hold no token; the catalog (an index that can be rebuilt)
    // holds neither a token nor its hash; the store's 0600 tokens file
    // holds only the SHA-256 of each.
    let secrets = [&alice, &bob, &unknown];
    for log in sys.log_paths() {
        for secret in secrets {
            ensure!(
                !file_contains(&log, secret)?,
                "{} holds a token in clear",
                log.display()
            );
        }
    }
    let hashes: Vec<String> = [&alice, &bob]
        .iter()
        .map(|t| hop3_proto::Checksum::of(t.as_bytes()).to_string())
        .collect();
    for file in &catalog_files(sys.catalog())? {
        for needle in secrets
            .iter()
            .map(|s| s.as_str())
            .chain(hashes.iter().map(String::as_str))
        {
            ensure!(
                !file_contains(file, needle)?,
                "the catalog file {} holds a token or its hash",
                file.display()
            );
        }
    }
    let tokens_file = sys.store.join("tokens.json");
    let mode = fs::metadata(&tokens_file)
        .with_context(|| format!("no {}", tokens_file.display()))?
        .permissions()
        .mode();
    ensure!(mode & 0o777 == 0o600, "tokens.json has mode {mode:o}");
    for secret in secrets {
        ensure!(
            !file_contains(&tokens_file, secret)?,
            "tokens.json holds a token in clear"
        );
    }
    for hash in &hashes {
        ensure!(
            file_contains(&tokens_file, hash)?,
            "tokens.json does not hold {hash}"
        );
    }
    Ok(())
}

#[test]
fn an_agent_registers_only_as_the_host_its_certificate_names() -> Result<()> {
    let mut sys = System::builder().local_agent(false).tls().start()?;
    let token = sys.create_token("ops")?;
    sys.set_token(Some(&token));
    let ca = sys.tls_dir().context("tls()")?.join("ca.pem");
    let web1_url = sys.start_agent("web-1")?.process.url();

    // web-1's certificate, copied as web-2's.
    let web1_certs = sys.issue_agent_cert("web-1")?;
    let impostor = sys.scratch("web-2-tls")?;
    disguise(&web1_certs, "web-1", &impostor, "web-2")?;
    let port = sys
        .start_refused_agent("web-2", Some(&impostor))?
        .process
        .port();
    let controller_log = sys.controller().log_path().to_owned();
    let web2_log = sys.agent("web-2").process.log_path().to_owned();
    let why = wait_for_log_line(
        &controller_log,
        &[" WARN ", "another host"],
        REFUSAL_DEADLINE,
    )?;
    ensure!(
        why.contains("web-2") && why.contains("web-1"),
        "the controller's log names neither the host claimed nor the certificate's: {why}"
    );
    let told = wait_for_log_line(&web2_log, &["cannot register"], REFUSAL_DEADLINE)?;
    ensure!(
        told.contains("web-1"),
        "the agent is not told its certificate is web-1's: {told}"
    );
    // It keeps trying and keeps being refused: never SERVING.
    wait_until(REFUSAL_DEADLINE, "a second refusal of web-2", || {
        Ok((count_lines(&web2_log, "cannot register") >= 2).then_some(()))
    })?;
    let probe = TlsProbe {
        ca: ca.clone(),
        domain: "web-1".to_owned(),
        identity: Some((impostor.join("web-2.pem"), impostor.join("web-2.key"))),
    };
    ensure!(
        !health_check_tls(&format!("https://127.0.0.1:{port}"), Some(&probe))?,
        "the refused web-2 says SERVING"
    );

    // An agent without --tls-dir, pointed at the https:// controller, refuses
    // to start and says what it needs.
    let web3_root = sys.agent_root("web-3")?;
    let out = Command::new(binary("hop3-agent"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--controller",
            &sys.url,
            "--host-id",
            "web-3",
            "--root",
        ])
        .arg(&web3_root)
        .env_remove("HOP3_TLS_DIR")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("--tls-dir"),
        "an agent without --tls-dir for an https controller: {:?}\n{err}",
        out.status
    );

    // TLS without a client certificate: refused, and the controller says why.
    let status = register_without_certificate(&sys.url, &ca, "web-4")?;
    ensure!(
        status.code() == tonic::Code::Unauthenticated,
        "a registration without a certificate got {status:?}"
    );
    let why = wait_for_log_line(
        &controller_log,
        &[" WARN ", "without a certificate"],
        REFUSAL_DEADLINE,
    )?;
    ensure!(why.contains("web-4"), "{why}");

    // web-1 answers the controller's certificate, and not another of the
    // same authority (a host's).
    let tls_dir = sys.tls_dir().context("tls()")?.to_owned();
    let as_controller = TlsProbe {
        ca: ca.clone(),
        domain: "web-1".to_owned(),
        identity: Some((
            tls_dir.join("hop3-controller.pem"),
            tls_dir.join("hop3-controller.key"),
        )),
    };
    let apps = list_apps(&web1_url, &as_controller)?;
    ensure!(apps.is_ok(), "web-1 refused the controller: {apps:?}");
    let as_a_host = TlsProbe {
        identity: Some((web1_certs.join("web-1.pem"), web1_certs.join("web-1.key"))),
        ..as_controller
    };
    let answer = list_apps(&web1_url, &as_a_host)?;
    ensure!(
        matches!(&answer, Err(s) if s.code() == tonic::Code::PermissionDenied),
        "web-1 answered a caller with a host's certificate: {answer:?}"
    );
    let web1_log = sys.agent("web-1").process.log_path().to_owned();
    wait_for_log_line(
        &web1_log,
        &[" WARN ", "not the controller"],
        REFUSAL_DEADLINE,
    )?;

    // Only web-1 is known, at its own address.
    let agents = sys.agents()?;
    ensure!(
        agents.len() == 1 && agents[0].host == "web-1" && agents[0].status == "online",
        "{agents:?}"
    );
    ensure!(
        agents[0].address == web1_url,
        "web-1 is listed at {}, not at its own {web1_url}",
        agents[0].address
    );
    let human = sys.hop3(["agent:list"]).success()?;
    for refused in ["web-2", "web-3", "web-4"] {
        ensure!(
            !human.stdout.contains(refused),
            "agent:list shows {refused}\n{}",
            human.report()
        );
    }
    Ok(())
}

/// A plain controller's arguments.
fn controller_args(listen: &str, store: &Path, catalog: &str) -> Vec<OsString> {
    vec![
        "--listen".into(),
        listen.into(),
        // Never the machine's own /run/hop3-backup.
        "--socket".into(),
        store.join("ctl.sock").into(),
        "--store".into(),
        store.into(),
        "--catalog".into(),
        catalog.into(),
    ]
}

/// A plain agent's arguments, as host `web-1`.
fn agent_args(listen: &str, controller: &str, root: &Path) -> Vec<OsString> {
    vec![
        "--listen".into(),
        listen.into(),
        "--controller".into(),
        controller.into(),
        "--root".into(),
        root.into(),
        "--host-id".into(),
        "web-1".into(),
    ]
}

#[test]
fn plain_grpc_is_refused_off_loopback_unless_insecure() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("hop3-e2e-").tempdir()?;
    let base = dir.path();
    let (store, root, logs) = (base.join("store"), base.join("root"), base.join("logs"));
    for d in [&store, &root.join("apps"), &logs, &base.join("tmp")] {
        fs::create_dir_all(d)?;
    }
    let catalog = format!("sqlite://{}", base.join("catalog.db").display());
    let run = |program: &str, args: Vec<OsString>| -> Result<Output> {
        Background::spawn(server_command(program, &args), Vec::new())?.wait(EXIT_DEADLINE)
    };

    let port = harness::free_port();
    for listen in [format!("0.0.0.0:{port}"), format!("[::]:{port}")] {
        refused_plain(&run(
            "hop3-controller",
            controller_args(&listen, &store, &catalog),
        )?)?;
        refused_plain(&run(
            "hop3-agent",
            agent_args(&listen, "http://127.0.0.1:7410", &root),
        )?)?;
    }

    // Said explicitly, it is allowed: a controller and an agent on every
    // address, the agent registered with the controller in plain text.
    let env: Vec<(OsString, OsString)> = vec![("TMPDIR".into(), base.join("tmp").into())];
    let join_token = store.join("join-token");
    let socket = format!("unix:{}", store.join("ctl.sock").display());
    let mut controller = Process::start(
        "controller-insecure",
        binary("hop3-controller"),
        &logs,
        env.clone(),
        move |port| {
            let mut args = controller_args(&format!("0.0.0.0:{port}"), &store, &catalog);
            args.push("--insecure".into());
            args
        },
    )?;
    let controller_url = controller.url();
    let to = controller_url.clone();
    // Healthy means registered.
    let agent_env: Vec<(OsString, OsString)> = env
        .iter()
        .cloned()
        .chain([("HOP3_JOIN_TOKEN_FILE".into(), join_token.into())])
        .collect();
    let mut agent = Process::start(
        "agent-insecure",
        binary("hop3-agent"),
        &logs,
        agent_env,
        move |port| {
            let mut args = agent_args(&format!("0.0.0.0:{port}"), &to, &root);
            args.extend([
                "--advertise".into(),
                format!("http://127.0.0.1:{port}").into(),
                "--insecure".into(),
            ]);
            args
        },
    )?;
    let listed = cli::run_at(&socket, ["--json", "agent:list"]).success()?;
    ensure!(
        listed.stdout.contains("\"web-1\""),
        "the insecure agent is not listed\n{}",
        listed.report()
    );
    ensure!(agent.stop().is_none(), "the insecure agent did not stop");
    ensure!(
        controller.stop().is_none(),
        "the insecure controller did not stop"
    );
    Ok(())
}

#[test]
fn the_cli_over_https_without_a_ca_says_to_pass_one() -> Result<()> {
    let mut sys = System::builder().local_agent(false).tls().start()?;
    let token = sys.create_token("ops")?;
    sys.set_token(Some(&token));
    let with_ca = sys.hop3(["backup:list"]).success()?;
    ensure!(
        with_ca.stdout.contains("No backups"),
        "{}",
        with_ca.report()
    );

    // The harness adds --ca-cert; a bare command does not.
    let bare = |args: &[&str]| {
        let mut cmd = cli::command(&sys.url, args);
        cmd.env("HOP3_TOKEN", &token);
        let line = cli::describe(&cmd);
        Output::new(line, cmd.output().expect("running hop3"), sys.log_paths())
    };
    bare(&["backup:list"]).failure(&["--ca-cert", "TLS"])?;
    bare(&["--json", "backup:list"]).failure(&["--ca-cert"])?;
    bare(&["agent:list"]).failure(&["--ca-cert"])?;

    // A CA that did not sign the controller's certificate is no better,
    // and the CLI says to check the one given.
    let other = sys.scratch("other-ca")?;
    let args: [OsString; 4] = [
        "certs".into(),
        "init".into(),
        "--dir".into(),
        other.join("tls").into(),
    ];
    let mut init = server_command("hop3-controller", &args);
    Output::new(cli::describe(&init), init.output()?, Vec::new()).success()?;
    let mut cmd = cli::command(
        &sys.url,
        [
            OsString::from("--ca-cert"),
            other.join("tls").join("ca.pem").into(),
            "backup:list".into(),
        ],
    );
    cmd.env("HOP3_TOKEN", &token);
    let line = cli::describe(&cmd);
    Output::new(line, cmd.output()?, sys.log_paths()).failure(&["TLS", "--ca-cert"])?;
    Ok(())
}
