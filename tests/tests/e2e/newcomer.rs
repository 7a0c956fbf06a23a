//! What a newcomer and an operator meet first: the quick start's demo app,
//! what a restore says of the app's process, the monitoring check, config
//! files found without flags, reflection and health by name, and the
//! provisioning script bringing up a TLS agent on a fresh host.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hop3_tests::cli::{self, Background, Output};
use hop3_tests::fixtures::MIB;
use hop3_tests::harness::{du, partial_id, wait_until};
use hop3_tests::snapshot::Snapshot;
use hop3_tests::{App, System};
use rustix::process::Signal;

#[test]
fn a_restore_says_what_became_of_the_app_and_restarts_it_only_when_it_can() -> Result<()> {
    // With stop/start commands: the agent restarts the app and says so.
    let sys = System::builder().hooks().start()?;
    let scratch = sys.scratch("fixtures")?;
    App::build(&sys.root, "shop", 51, &scratch)?;
    let id = sys.create("shop")?.backup_id;
    let restored = sys.restore(&id, None)?;
    ensure!(restored.start == "restarted", "{restored:?}");
    ensure!(
        sys.hook_calls()? == ["stop shop", "start shop"],
        "{:?}",
        sys.hook_calls()?
    );
    let out = sys.hop3(["backup:restore", &id]).success()?;
    ensure!(
        out.stdout
            .contains("shop was restarted by the host's start command")
            && !out.stdout.contains("app:restart"),
        "{}",
        out.report()
    );
    // --no-start: stopped, swapped, left stopped.
    let before = sys.hook_calls()?.len();
    let out = sys.hop3(["backup:restore", &id, "--no-start"]).success()?;
    ensure!(
        out.stdout.contains("left stopped (--no-start)"),
        "{}",
        out.report()
    );
    ensure!(
        sys.hook_calls()?[before..] == ["stop shop"],
        "{:?}",
        sys.hook_calls()?
    );
    // A clone is new on the host: not started, and said so.
    let clone = sys.restore(&id, Some("shop-copy"))?;
    ensure!(clone.start == "new", "{clone:?}");

    // Without them: the restore neither stopped nor started it, and says
    // how to have it read the restored files.
    let plain = System::start()?;
    App::build(&plain.root, "blog", 52, &plain.scratch("fixtures")?)?;
    let id = plain.create("blog")?.backup_id;
    let out = plain.hop3(["backup:restore", &id]).success()?;
    ensure!(
        out.stdout.contains("no stop/start commands") && out.stdout.contains("Restart it"),
        "{}",
        out.report()
    );
    ensure!(plain.restore(&id, None)?.start == "unmanaged");
    Ok(())
}

#[test]
fn tokens_are_made_on_a_fresh_store_before_the_first_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    // The catalog where the controller will make it at its first start, in
    // a directory that does not exist yet.
    let catalog = format!(
        "sqlite://{}",
        dir.path().join("catalog/catalog.db").display()
    );
    let out = std::process::Command::new(hop3_tests::harness::binary("hop3-controller"))
        .arg("--store")
        .arg(&store)
        .arg("--catalog")
        .arg(&catalog)
        .args(["tokens", "create", "alice"])
        .env_remove("HOP3_CATALOG")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim().starts_with("hop3_"),
        "tokens create on a fresh store: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(store.join("tokens.json").is_file());
    Ok(())
}

#[test]
fn check_age_tells_cron_whether_the_newest_backup_is_young_enough() -> Result<()> {
    let sys = System::start()?;
    App::build(&sys.root, "shop", 53, &sys.scratch("fixtures")?)?;
    let out = sys.hop3(["backup:check-age", "shop", "--max-age", "26h"]);
    ensure!(
        out.status.code() == Some(1)
            && out
                .stdout
                .starts_with("MISSING: shop has no COMPLETED backup"),
        "{}",
        out.report()
    );
    let id = sys.create("shop")?.backup_id;
    let out = sys
        .hop3(["backup:check-age", "shop", "--max-age", "26h"])
        .success()?;
    ensure!(
        out.stdout
            .starts_with(&format!("OK: shop's newest COMPLETED backup {id} is")),
        "{}",
        out.report()
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = sys.hop3(["backup:check-age", "shop", "--max-age", "1s"]);
    ensure!(
        out.status.code() == Some(1) && out.stdout.starts_with("STALE: "),
        "{}",
        out.report()
    );
    let json: serde_json::Value = sys
        .hop3(["--json", "backup:check-age", "shop", "--max-age", "26h"])
        .success()?
        .json()?;
    ensure!(
        json["status"] == "ok"
            && json["newest"]["backup_id"] == id.as_str()
            && json["age_seconds"].is_u64(),
        "{json}"
    );
    // backup:list filters by status.
    ensure!(sys.list(&["--status", "completed"])?.len() == 1);
    ensure!(sys.list(&["--status", "FAILED"])?.is_empty());
    Ok(())
}

/// `hop3-agent --root ROOT demo-app NAME`.
fn demo_app(root: &std::path::Path, name: &str) -> Result<std::process::Output> {
    Ok(
        std::process::Command::new(hop3_tests::harness::binary("hop3-agent"))
            .arg("--root")
            .arg(root)
            .args(["demo-app", name])
            .output()?,
    )
}

#[test]
fn the_quick_start_makes_a_demo_app_backs_it_up_restores_and_clones_it() -> Result<()> {
    use hop3_tests::Snapshot;
    let sys = System::start()?;
    // The README's quick start, step by step.
    let out = demo_app(&sys.root, "my-app")?;
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("hop3 backup:create my-app"),
        "demo-app: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let app = sys.root.join("apps/my-app");
    for part in [
        "git/HEAD",
        "src/app.py",
        "data/uploads/hello.txt",
        "ENV",
        "app.json",
    ] {
        ensure!(app.join(part).exists(), "the demo app has no {part}");
    }
    let original = Snapshot::of(&app)?;
    let created = sys.hop3(["backup:create", "my-app"]).success()?;
    let id = created.human_backup_id()?;
    ensure!(
        sys.list(&[])?
            .iter()
            .any(|b| b.backup_id == id && b.status == "COMPLETED")
    );
    sys.hop3(["backup:info", &id]).success()?;
    // Lose something, then restore it.
    std::fs::remove_file(app.join("data/uploads/hello.txt"))?;
    sys.hop3(["backup:restore", &id]).success()?;
    original.assert_same(&Snapshot::of(&app)?, "the demo app restored")?;
    // And clone it.
    sys.hop3(["backup:restore", &id, "--target-app", "my-app-staging"])
        .success()?;
    let clone = sys.root.join("apps/my-app-staging");
    ensure!(
        std::fs::read(clone.join("data/uploads/hello.txt"))? == b"an upload\n",
        "the clone lacks the app's data"
    );
    // A second demo app of the same name is refused, and says why.
    let again = demo_app(&sys.root, "my-app")?;
    ensure!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    Ok(())
}

#[test]
fn each_daemon_reads_its_own_config_file_and_refuses_the_others() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let controller_toml = dir.path().join("controller.toml");
    std::fs::write(
        &controller_toml,
        "store = \"/var/hop3/backups\"\nlocal_agent = true\n",
    )?;
    let agent = |env: &[(&str, &std::path::Path)]| -> Result<std::process::Output> {
        let mut cmd = std::process::Command::new(hop3_tests::harness::binary("hop3-agent"));
        cmd.args(["--listen", "127.0.0.1:0", "--root"])
            .arg(dir.path())
            .env_remove("HOP3_CONFIG")
            .env_remove("HOP3_AGENT_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(cmd.output()?)
    };
    // The controller's file given to the agent: refused as a whole.
    let out = agent(&[("HOP3_AGENT_CONFIG", &controller_toml)])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("controller.toml: unknown setting"),
        "{err}"
    );
    // The old shared variable: refused, naming the agent's own.
    let out = agent(&[("HOP3_CONFIG", &controller_toml)])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("HOP3_AGENT_CONFIG"),
        "{err}"
    );
    Ok(())
}

/// `tests/scripts/reflect.py HOST:PORT SERVICE`: what a Python grpcio client
/// learns by reflection alone.
fn reflect(target: &str, service: &str) -> Result<Vec<String>> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reflect.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([target, service])
        .output()?;
    ensure!(
        out.status.success(),
        "reflect.py {target} {service}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

#[test]
fn both_servers_answer_reflection_and_health_by_service_name() -> Result<()> {
    let mut sys = System::builder().local_agent(false).start()?;
    let agent_url = sys.start_agent("web-1")?.process.url();
    let controller = sys.url.trim_start_matches("http://").to_owned();
    let lines = reflect(&controller, "hop3.backup.v1.BackupService")?;
    for needed in [
        "hop3.backup.v1.BackupService",
        "hop3.backup.v1.AgentRegistry",
        "grpc.health.v1.Health",
        "hop3.backup.v1.BackupService/CreateBackup",
        "hop3.backup.v1.BackupService/RestoreBackup",
    ] {
        ensure!(
            lines.iter().any(|l| l == needed),
            "no {needed} in {lines:?}"
        );
    }
    ensure!(
        !lines.iter().any(|l| l == "hop3.backup.v1.AgentService"),
        "the controller lists a service it does not serve: {lines:?}"
    );
    let agent = agent_url.trim_start_matches("http://").to_owned();
    let lines = reflect(&agent, "hop3.backup.v1.AgentService")?;
    ensure!(
        lines
            .iter()
            .any(|l| l == "hop3.backup.v1.AgentService/BackupApp"),
        "{lines:?}"
    );
    // Health by service name, as grpc-health-probe and load balancers ask.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (url, service) in [
        (sys.url.clone(), "hop3.backup.v1.BackupService"),
        (sys.url.clone(), "hop3.backup.v1.AgentRegistry"),
        (agent_url.clone(), "hop3.backup.v1.AgentService"),
    ] {
        let status = rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(url)?
                .connect()
                .await?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let resp = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await?;
            anyhow::Ok(resp.into_inner().status)
        })?;
        ensure!(
            status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}: {status}"
        );
    }
    Ok(())
}

/// Kills the agent a provisioning script started in the background, by the
/// pid file it wrote, when the test ends.
struct ProvisionedAgent(std::path::PathBuf);

impl Drop for ProvisionedAgent {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

#[test]
fn the_provisioning_script_brings_up_a_tls_agent_on_a_fresh_host() -> Result<()> {
    use hop3_tests::harness::{bin_dir, free_port};
    let Some(link) = hop3_tests::netns::Link::new()? else {
        return Ok(());
    };
    let mut sys = System::builder()
        .local_agent(false)
        .tls()
        .controller_host(link.host_ip().to_string())
        .start()?;
    let token = sys.create_token("ops")?;
    sys.set_token(Some(&token));
    // The fresh host: its own network namespace and its own filesystem root.
    let host = sys.scratch("web-ns")?;
    let root = host.join("home/hop3");
    App::build(&root, "shop", 61, &sys.scratch("fixtures")?)?;
    let certs = sys.issue_agent_cert("web-ns")?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/provision-agent.sh");
    let ns_ip = link.ns_ip().to_string();
    let port = free_port();
    let provision = |tls: bool| -> Result<std::process::Output> {
        let (ip, prefix) = link.exec_prefix("bash");
        let mut cmd = std::process::Command::new(ip);
        cmd.args(prefix)
            .arg(&script)
            .args(["--controller", &sys.url, "--host-id", "web-ns"])
            .args(["--listen", &format!("0.0.0.0:{port}")])
            .args(["--advertise", &format!("https://{ns_ip}:{port}")])
            .arg("--bin")
            .arg(bin_dir())
            .arg("--root")
            .arg(&root)
            .arg("--prefix")
            .arg(&host)
            .arg("--no-systemd")
            .stdin(std::process::Stdio::null());
        if tls {
            cmd.arg("--tls-from").arg(&certs);
        }
        Ok(cmd.output()?)
    };
    // Off loopback without TLS: refused before anything is installed.
    let out = provision(false)?;
    ensure!(
        out.status.code() == Some(2) && String::from_utf8_lossy(&out.stderr).contains("needs TLS"),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!host.join("etc/hop3/agent.env").exists());
    // As written, with the host's certificate: it registers over mutual TLS.
    let out = provision(true)?;
    let _agent = ProvisionedAgent(host.join("run/hop3-agent.pid"));
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("web-ns is registered"),
        "{:?}\n{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(host.join("var/log/hop3-agent.log")).unwrap_or_default()
    );
    let env = std::fs::read_to_string(host.join("etc/hop3/agent.env"))?;
    ensure!(env.contains("HOP3_TLS_DIR="), "{env}");
    let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(
        host.join("etc/hop3/tls/web-ns.key"),
    )?);
    ensure!(mode & 0o077 == 0, "the key is readable by others: {mode:o}");
    let row = sys.agent_row("web-ns")?.context("web-ns listed")?;
    ensure!(
        row.status == "online" && row.address.starts_with("https://"),
        "{row:?}"
    );
    // And it serves: a backup and a restore through it.
    let id = sys.create_on("shop", "web-ns")?.backup_id;
    sys.restore(&id, Some("shop-copy"))?;
    ensure!(root.join("apps/shop-copy/app.json").is_file());
    Ok(())
}

#[test]
fn the_systemd_units_verify_score_below_5_and_readiness_is_sent() -> Result<()> {
    // Type=notify: the controller says READY=1 once it serves.
    let dir = tempfile::tempdir()?;
    let notify = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify)?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let _sys = System::builder()
        .controller_env("NOTIFY_SOCKET", notify.as_os_str())
        .start()?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf)?;
    ensure!(
        String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: systemd-analyze is not installed");
        return Ok(());
    }
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    for unit in ["hop3-agent", "hop3-controller"] {
        // verify needs the binary the unit names: the one under test.
        let text = std::fs::read_to_string(units.join(format!("{unit}.service")))?;
        let text = text.replace(
            &format!("/usr/local/bin/{unit}"),
            &hop3_tests::harness::binary(unit).display().to_string(),
        );
        let file = dir.path().join(format!("{unit}.service"));
        std::fs::write(&file, text)?;
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .output()?;
        ensure!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify {unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(&file)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no exposure level for {unit}:\n{text}"))?;
        ensure!(level < 5.0, "{unit}: exposure {level}\n{text}");
        eprintln!("{unit}.service: systemd-analyze security exposure {level}");
    }
    Ok(())
}

#[test]
fn progress_is_json_lines_with_json_and_every_trace_ends_at_100_percent() -> Result<()> {
    let sys = System::start()?;
    App::build(&sys.root, "shop", 54, &sys.scratch("fixtures")?)?;
    let out = sys.hop3(["--json", "backup:create", "shop"]).success()?;
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("stderr is not JSON lines:\n{}", out.stderr))?;
    ensure!(
        lines.iter().all(|l| l["progress"]["step"].is_string()),
        "{}",
        out.stderr
    );
    let last = lines.last().context("no progress at all")?;
    ensure!(last["progress"]["percent"] == 100, "{}", out.stderr);
    let id: serde_json::Value = out.json()?;
    let id = id["backup_id"].as_str().context("backup_id")?.to_owned();
    let out = sys.hop3(["backup:restore", &id]).success()?;
    let last = out.stderr.lines().last().unwrap_or_default();
    ensure!(
        last.starts_with("progress: ") && last.contains("100%"),
        "the plain trace ends with {last:?}\n{}",
        out.stderr
    );
    Ok(())
}

/// How long one operation on a few hundred MiB may take on a loaded machine.
const OPERATION: Duration = Duration::from_secs(300);

/// Waits until `restore` has a few MiB in `staging`.
fn wait_staged(staging: &Path, restore: &mut Background) -> Result<()> {
    wait_until(OPERATION, "a few MiB staged", || {
        ensure!(
            restore.is_running()?,
            "the restore ended before 4 MiB were staged"
        );
        Ok((staging.exists() && du(staging) >= 4 * MIB).then_some(()))
    })
}

/// Freezes host-a's agent (so the job cannot end meanwhile), sends `cli`
/// a Ctrl-C and returns what it printed. The caller lets the agent go on.
fn interrupt_frozen(sys: &mut System, cli: Background) -> Result<Output> {
    sys.agent("host-a").process.signal(Signal::STOP);
    cli.signal(Signal::INT);
    cli.wait(Duration::from_secs(30))
}

/// Ctrl-C in the middle: the CLI says what goes on, and the controller
/// does it: the job runs to its end, or with --cancel-on-interrupt ends
/// there, leaving nothing half done. The agent is frozen (SIGSTOP) while
/// the CLI is interrupted, so no job can finish before the Ctrl-C lands.
#[test]
fn ctrl_c_says_what_happens_next_and_the_controller_does_it() -> Result<()> {
    let mut sys = System::builder().local_agent(false).start()?;
    let root = sys.agent_root("host-a")?;
    let app = App::build(&root, "media", 53, &sys.scratch("fixtures")?)?;
    app.big_data(200)?;
    sys.start_agent("host-a")?;
    let original = Snapshot::of(&app.dir)?;

    // Without the flag: the backup goes on, and completes.
    let mut create = sys.hop3_spawn(["backup:create", "media"])?;
    let id = partial_id(&sys.wait_partial(&mut create, 4 * MIB, OPERATION)?);
    let out = interrupt_frozen(&mut sys, create)?;
    let said = out.stderr.clone();
    ensure!(out.status.code() == Some(130), "{}", out.report());
    ensure!(
        said.contains(&format!("backup {id} of media goes on on the controller"))
            && said.contains(&format!("hop3 backup:info {id}"))
            && said.contains("--cancel-on-interrupt"),
        "{}",
        out.report()
    );
    sys.wait_status("media", &id, "STARTED", OPERATION)?;
    sys.agent("host-a").process.signal(Signal::CONT);
    sys.wait_status("media", &id, "COMPLETED", OPERATION)?;
    ensure!(sys.info(&id)?.all_valid);

    // With it: FAILED, its partial files gone, the app free for the next.
    let mut create = sys.hop3_spawn(["backup:create", "media", "--cancel-on-interrupt"])?;
    let cancelled = partial_id(&sys.wait_partial(&mut create, 4 * MIB, OPERATION)?);
    let out = interrupt_frozen(&mut sys, create)?;
    ensure!(
        out.status.code() == Some(130)
            && out
                .stderr
                .contains(&format!("backup {cancelled} of media is cancelled")),
        "{}",
        out.report()
    );
    let failed = sys.wait_status("media", &cancelled, "FAILED", OPERATION)?;
    ensure!(failed.error().contains("cancelled"), "{failed:?}");
    wait_until(Duration::from_secs(30), "the partial files to go", || {
        Ok(sys.partials()?.is_empty().then_some(()))
    })?;
    sys.agent("host-a").process.signal(Signal::CONT);

    // A restore with the flag, interrupted while the agent receives: the
    // clone is not made, its staging is removed.
    let staging = root.join(format!("apps/.media-copy.restore-{id}"));
    let mut restore = sys.hop3_spawn([
        "backup:restore",
        &id,
        "--target-app",
        "media-copy",
        "--cancel-on-interrupt",
    ])?;
    wait_staged(&staging, &mut restore)?;
    let out = interrupt_frozen(&mut sys, restore)?;
    ensure!(
        out.status.code() == Some(130)
            && out.stderr.contains(&format!(
                "the restore of {id} into media-copy on host-a is cancelled"
            )),
        "{}",
        out.report()
    );
    sys.agent("host-a").process.signal(Signal::CONT);
    wait_until(Duration::from_secs(60), "the staging to go", || {
        Ok((!staging.exists()).then_some(()))
    })?;
    ensure!(
        !root.join("apps/media-copy").exists(),
        "a cancelled clone was made"
    );

    // Without it: the restore goes on and the clone is whole.
    let mut restore = sys.hop3_spawn(["backup:restore", &id, "--target-app", "media-copy"])?;
    wait_staged(&staging, &mut restore)?;
    let out = interrupt_frozen(&mut sys, restore)?;
    ensure!(
        out.status.code() == Some(130)
            && out.stderr.contains("goes on on the controller")
            && out.stderr.contains("media-copy stays locked"),
        "{}",
        out.report()
    );
    sys.agent("host-a").process.signal(Signal::CONT);
    let log = sys.controller().log_path().to_path_buf();
    wait_until(Duration::from_secs(120), "the restore to complete", || {
        let text = std::fs::read_to_string(&log)?;
        Ok(text
            .lines()
            .any(|l| l.contains("restore completed") && l.contains("app=media-copy"))
            .then_some(()))
    })?;
    original.as_clone().assert_same(
        &Snapshot::of(&root.join("apps/media-copy"))?,
        "a restore that went on after Ctrl-C",
    )?;
    Ok(())
}

/// A backup is one JSON object: `backup:create`, `backup:list`,
/// `backup:check-age` and `backup:info` give it with the same keys and
/// values (`skipped` is null in listings, which read no manifest).
#[test]
fn a_backup_is_the_same_json_object_everywhere() -> Result<()> {
    let sys = System::builder().start()?;
    App::build(&sys.root, "shop", 54, &sys.scratch("fixtures")?)?;
    let created: serde_json::Value = sys
        .hop3(["--json", "backup:create", "shop"])
        .success()?
        .json()?;
    let id = created["backup_id"].as_str().context("an ID")?.to_owned();
    let listed: serde_json::Value = sys
        .hop3(["--json", "backup:list", "shop"])
        .success()?
        .json()?;
    let age: serde_json::Value = sys
        .hop3(["--json", "backup:check-age", "shop", "--max-age", "1h"])
        .success()?
        .json()?;
    let info: serde_json::Value = sys.hop3(["--json", "backup:info", &id]).success()?.json()?;
    let views = [
        ("backup:list", &listed[0]),
        ("backup:check-age", &age["newest"]),
        ("backup:info", &info),
    ];
    for key in cli::BACKUP_KEYS {
        for (command, view) in views {
            let (want, got) = (&created[key], &view[key]);
            if *key == "skipped" && command != "backup:info" {
                ensure!(got.is_null(), "{command}'s {key}: {got}");
                continue;
            }
            ensure!(
                want == got,
                "{key}: backup:create says {want}, {command} says {got}"
            );
        }
    }
    ensure!(info["service_dumps"].is_array(), "{info}");
    Ok(())
}
