//! The attacks of an unprivileged local user and of the holder of an agent's
//! certificate, scripted as they were tried: each is refused with a clear
//! message and changes nothing, and the legitimate paths still work.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hop3_proto::v1::agent_registry_client::AgentRegistryClient;
use hop3_proto::v1::agent_service_client::AgentServiceClient;
use hop3_proto::v1::{ListAppsRequest, RegisterRequest};
use hop3_tests::cli::{self, Output};
use hop3_tests::fixtures::run;
use hop3_tests::harness::{LOCAL_HOST_ID, TlsProbe, binary};
use hop3_tests::{App, System};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::metadata::MetadataValue;

/// The unprivileged user the attacks run as.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A copy of `hop3` that the unprivileged user can run (the build tree may
/// not be open to it), in `dir`.
fn hop3_for_nobody(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("hop3");
    fs::copy(binary("hop3"), &bin)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

/// `hop3 --controller URL ARGS` run as the user nobody, with `groups` as its
/// supplementary groups.
fn as_nobody(hop3: &Path, groups: &[u32], url: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg(hop3)
        .arg("--controller")
        .arg(url)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    let line = cli::describe(&cmd);
    Output::new(line, cmd.output().expect("running setpriv"), Vec::new())
}

/// The error line `hop3` printed.
fn first_line(out: &Output) -> &str {
    out.stderr.lines().next().unwrap_or("")
}

fn exit_code(out: &Output, code: i32) -> Result<()> {
    ensure!(
        out.status.code() == Some(code),
        "expected exit {code}\n{}",
        out.report()
    );
    Ok(())
}

/// Lets every user traverse the test's directory (tempdirs are 0700), so
/// that only the socket's own permissions and the controller decide.
fn open_the_way(sys: &System) -> Result<()> {
    let base = sys.store.parent().context("the store is in the test dir")?;
    fs::set_permissions(base, fs::Permissions::from_mode(0o711))?;
    Ok(())
}

#[test]
fn an_unprivileged_user_gets_permission_denied_and_how_to_be_allowed() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root to act as another user");
        return Ok(());
    }
    let sys = System::builder()
        .controller_args(["--socket-group", "4242"])
        .start()?;
    open_the_way(&sys)?;
    let scratch = sys.scratch("bin")?;
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(
        scratch.parent().context("scratch/")?,
        fs::Permissions::from_mode(0o755),
    )?;
    let hop3 = hop3_for_nobody(&scratch)?;
    let socket = sys.cli_url().to_owned();

    // The socket (0660, group 4242) is closed to a user outside the group.
    let out = as_nobody(&hop3, &[], &socket, &["backup:list"]);
    exit_code(&out, 6)?;
    let err = first_line(&out);
    ensure!(
        err.contains("Permission denied") && out.stderr.contains("usermod -aG"),
        "the refusal does not say how to be allowed\n{}",
        out.report()
    );
    // Over TCP, without a token: refused too.
    let out = as_nobody(&hop3, &[], &sys.url, &["backup:list"]);
    exit_code(&out, 6)?;
    ensure!(
        first_line(&out).contains("not authorized") && out.stderr.contains("HOP3_TOKEN"),
        "{}",
        out.report()
    );
    // A member of the socket's group gets in (its supplementary groups are
    // read from the kernel's credentials of its process).
    as_nobody(&hop3, &[4242], &socket, &["backup:list"]).success()?;

    // With the socket's mode opened by mistake, the controller still
    // checks who calls.
    let path = socket.strip_prefix("unix:").context("unix: URL")?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
    let out = as_nobody(&hop3, &[], &socket, &["backup:list"]);
    exit_code(&out, 6)?;
    ensure!(
        first_line(&out).contains("permission denied") && first_line(&out).contains("group 4242"),
        "{}",
        out.report()
    );
    // Root needs nothing more.
    sys.hop3(["backup:list"]).success()?;
    Ok(())
}

/// A backup of the app `bait` whose data archive holds a set-user-ID root
/// copy of a shell, under a new ID: what the user built in /tmp. Returns
/// the directory and the ID.
fn forged_backup(sys: &System, out_dir: &Path) -> Result<(PathBuf, String)> {
    let scratch = sys.scratch("bait-fixtures")?;
    App::build(&sys.root, "bait", 7, &scratch)?;
    let made = sys.create("bait")?;
    let forged_id = "20200101_000000_abcdef";
    let dir = out_dir.join("evil");
    let mut cp = Command::new("cp");
    cp.arg("-a")
        .arg(sys.backup_dir("bait", &made.backup_id))
        .arg(&dir)
        .stdin(Stdio::null());
    run(cp)?;
    let payload = sys.scratch("payload")?;
    fs::create_dir_all(payload.join("data"))?;
    fs::copy("/bin/sh", payload.join("data/sh"))?;
    fs::set_permissions(payload.join("data/sh"), fs::Permissions::from_mode(0o4755))?;
    let archive = dir.join("data.tar.zst");
    fs::remove_file(&archive)?;
    let mut tar = Command::new("tar");
    tar.arg("--zstd")
        .arg("--owner=0")
        .arg("--group=0")
        .arg("--numeric-owner")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&payload)
        .arg("data")
        .stdin(Stdio::null());
    run(tar)?;
    let digest = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(fs::read(&archive)?))
    );
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("metadata.json"))?)?;
    manifest["backup_id"] = forged_id.into();
    manifest["checksums"]["data.tar.zst"] = digest.into();
    fs::write(
        dir.join("metadata.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    // The seal copied along is the store's seal of another metadata.json.
    ensure!(
        dir.join("metadata.seal").is_file(),
        "a created backup is sealed"
    );
    Ok((dir, forged_id.to_owned()))
}

fn chown_r(path: &Path, uid: u32) -> Result<()> {
    let mut chown = Command::new("chown");
    chown
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .stdin(Stdio::null());
    run(chown)?;
    Ok(())
}

#[test]
fn a_set_user_id_shell_imported_by_hand_never_comes_back_as_root_s() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root to own files as another user");
        return Ok(());
    }
    let mut sys = System::start()?;
    sys.controller().allow_errors();
    open_the_way(&sys)?;
    let bin = sys.scratch("bin")?;
    fs::set_permissions(
        bin.parent().context("scratch/")?,
        fs::Permissions::from_mode(0o755),
    )?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    let hop3 = hop3_for_nobody(&bin)?;
    let tmp = sys.scratch("tmp")?;
    let (forged, id) = forged_backup(&sys, &tmp)?;
    chown_r(&forged, NOBODY)?;

    // 1. The user's own import, as the attack was tried: refused outright.
    let out = as_nobody(
        &hop3,
        &[],
        sys.cli_url(),
        &["backup:import", forged.to_str().unwrap()],
    );
    exit_code(&out, 6)?;

    // 2. Root imports it where it lies: outside the import directory, and
    // the answer is the same whether a path exists or not.
    let import_dir = sys.store.join("import");
    let outside = sys.hop3(["backup:import", forged.to_str().unwrap()]);
    exit_code(&outside, 2)?;
    ensure!(
        first_line(&outside).contains("only below the import directory"),
        "{}",
        outside.report()
    );
    let missing = sys.hop3(["backup:import", "/nonexistent/backup"]);
    let etc = sys.hop3(["backup:import", "/etc"]);
    for other in [&missing, &etc] {
        ensure!(
            first_line(other) == first_line(&outside),
            "the answer tells paths apart:\n{}\n{}",
            outside.report(),
            other.report()
        );
    }

    // 3. Copied into the import directory but owned by the user: refused.
    fs::create_dir_all(&import_dir)?;
    let placed = import_dir.join("evil");
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(&forged).arg(&placed).stdin(Stdio::null());
    run(cp)?;
    let out = sys.hop3(["backup:import", placed.to_str().unwrap()]);
    exit_code(&out, 2)?;
    ensure!(
        first_line(&out).contains("owned by the controller's user"),
        "{}",
        out.report()
    );
    // A link to it in the import directory: refused, not followed.
    chown_r(&forged, 0)?;
    std::os::unix::fs::symlink(&forged, import_dir.join("link"))?;
    let out = sys.hop3(["backup:import", import_dir.join("link").to_str().unwrap()]);
    exit_code(&out, 2)?;
    ensure!(first_line(&out).contains("not a link"), "{}", out.report());
    ensure!(
        sys.list(&[])?.iter().all(|b| b.backup_id != id),
        "imported anyway"
    );

    // 4. Owned by root below the import directory: imported, but not sealed.
    chown_r(&placed, 0)?;
    sys.hop3(["backup:import", placed.to_str().unwrap()])
        .success()?;
    let info: serde_json::Value = sys.hop3(["--json", "backup:info", &id]).success()?.json()?;
    ensure!(
        info["trusted"] == false,
        "an imported backup is sealed: {info}"
    );
    ensure!(
        sys.hop3(["backup:info", &id])
            .success()?
            .stdout
            .contains("--trust-imported"),
        "backup:info does not say the backup is not sealed"
    );

    // 5. Restoring it needs --trust-imported, and changes nothing without.
    let out = sys.hop3(["backup:restore", &id, "--target-app", "x"]);
    exit_code(&out, 4)?;
    ensure!(
        first_line(&out).contains("--trust-imported"),
        "{}",
        out.report()
    );
    ensure!(
        !sys.root.join("apps/x").exists(),
        "a refused restore made the app"
    );

    // 6. With it, the shell comes back as the app's plain file.
    sys.hop3([
        "backup:restore",
        &id,
        "--target-app",
        "x",
        "--trust-imported",
    ])
    .success()?;
    let sh = fs::metadata(sys.root.join("apps/x/data/sh"))?;
    ensure!(
        sh.mode() & 0o6000 == 0,
        "the restore made a set-ID file: mode {:o}, owner {}",
        sh.mode(),
        sh.uid()
    );
    Ok(())
}

#[test]
fn set_user_id_files_come_back_only_to_their_own_app() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "tool", 11, &scratch)?;
    let helper = app.data_dir().join("helper");
    fs::write(&helper, b"#!/bin/sh\n")?;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o4755))?;
    let made = sys.create("tool")?;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o644))?;
    sys.restore(&made.backup_id, None)?;
    let mode = fs::metadata(&helper)?.mode() & 0o7777;
    ensure!(
        mode == 0o4755,
        "a sealed backup of this app lost its set-user-ID bit: {mode:o}"
    );
    sys.restore(&made.backup_id, Some("tool-copy"))?;
    let mode = fs::metadata(sys.root.join("apps/tool-copy/data/helper"))?.mode() & 0o7777;
    ensure!(mode == 0o755, "a clone kept a set-user-ID bit: {mode:o}");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `message` as a request bearing `token`, when given.
fn bearing<T>(message: T, token: Option<&str>) -> Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(message);
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {t}"))?,
        );
    }
    Ok(req)
}

/// `Register` at `url` (plain) as `host_id` from `address`, with `token` as
/// the join token when given: the status it gets.
fn register(url: &str, host_id: &str, address: &str, token: Option<&str>) -> Result<Code> {
    runtime()?.block_on(async {
        let mut client = AgentRegistryClient::connect(url.to_owned()).await?;
        let req = bearing(
            RegisterRequest {
                host_id: host_id.to_owned(),
                address: address.to_owned(),
                version: hop3_proto::HOP3_VERSION.to_owned(),
                apps: vec!["evil-app".to_owned()],
                instance: "impostor".to_owned(),
                ..Default::default()
            },
            token,
        )?;
        Ok(match client.register(req).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        })
    })
}

/// `ListApps` on the plain agent at `url`, with `token` when given.
fn list_apps_plain(url: &str, token: Option<&str>) -> Result<Code> {
    runtime()?.block_on(async {
        let mut client = AgentServiceClient::connect(url.to_owned()).await?;
        let req = bearing(ListAppsRequest {}, token)?;
        Ok(match client.list_apps(req).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        })
    })
}

#[test]
fn no_local_process_can_take_over_or_fake_an_agent() -> Result<()> {
    let mut sys = System::start()?;
    sys.controller().allow_errors();
    let scratch = sys.scratch("fixtures")?;
    App::build(&sys.root, "shop", 21, &scratch)?;
    let token = fs::read_to_string(sys.store.join("join-token"))?;
    let token = token.trim();
    ensure!(
        fs::metadata(sys.store.join("join-token"))?.mode() & 0o077 == 0,
        "the join token is readable by others"
    );

    // The in-process agent: no network registration takes its host id,
    // with or without the join token.
    ensure!(
        register(&sys.url, LOCAL_HOST_ID, "http://127.0.0.1:9", None)? == Code::Unauthenticated
    );
    ensure!(
        register(&sys.url, LOCAL_HOST_ID, "http://127.0.0.1:9", Some(token))?
            == Code::PermissionDenied
    );
    // A fake host without the token is not registered, so no restore can
    // be sent to it.
    ensure!(register(&sys.url, "evil", "http://127.0.0.1:9", None)? == Code::Unauthenticated);
    let hosts: Vec<String> = sys.agents()?.into_iter().map(|a| a.host).collect();
    ensure!(hosts == [LOCAL_HOST_ID], "agents: {hosts:?}");
    let made = sys.create("shop")?;
    let out = sys.hop3([
        "backup:restore",
        &made.backup_id,
        "--target-app",
        "shop2",
        "--target-host",
        "evil",
    ]);
    ensure!(
        !out.status.success(),
        "a restore went to an unregistered host\n{}",
        out.report()
    );

    // A standalone agent registers with the token; a second process cannot
    // take its host id while it lives, and its API is closed to callers
    // without the token.
    let web_url = sys.start_agent("web-1")?.process.url();
    ensure!(
        register(&sys.url, "web-1", "http://127.0.0.1:9", Some(token))? == Code::AlreadyExists,
        "a live agent's host id was taken over"
    );
    let web = sys.agent_row("web-1")?.context("web-1 listed")?;
    ensure!(
        web.address == web_url,
        "web-1 now points at {}",
        web.address
    );
    ensure!(list_apps_plain(&web_url, None)? == Code::Unauthenticated);
    ensure!(list_apps_plain(&web_url, Some("hop3join_0000"))? == Code::Unauthenticated);
    // Nor does the join token open it: every agent holds that one, and
    // none may pass for the controller.
    ensure!(list_apps_plain(&web_url, Some(token))? == Code::Unauthenticated);
    // The controller's own calls still reach it.
    App::build(&sys.agent_root("web-1")?, "blog", 22, &scratch)?;
    sys.create_on("blog", "web-1")?;

    // The local agent still serves.
    sys.restore(&made.backup_id, Some("shop3"))?;

    // An agent without the join token refuses to start, and says why.
    let out = Command::new(binary("hop3-agent"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--controller",
            &sys.url,
            "--host-id",
            "web-9",
        ])
        .arg("--root")
        .arg(sys.agent_root("web-9")?)
        .env("HOP3_JOIN_TOKEN_FILE", sys.store.join("nope"))
        .env_remove("HOP3_JOIN_TOKEN")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("join token"),
        "{:?}\n{err}",
        out.status
    );
    Ok(())
}

/// A certificate named `hop3-controller`, signed by the fleet's authority
/// but without the controller's marker (as an agent's certificate under
/// that name would be), made with openssl into `dir`.
fn markerless_controller_cert(tls: &Path, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let key = dir.join("fake.key");
    let csr = dir.join("fake.csr");
    let pem = dir.join("fake.pem");
    let ext = dir.join("ext.cnf");
    fs::write(
        &ext,
        "subjectAltName=DNS:hop3-controller\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    )?;
    let openssl = |args: &[OsString]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    openssl(&[
        "req".into(),
        "-new".into(),
        "-newkey".into(),
        "ec".into(),
        "-pkeyopt".into(),
        "ec_paramgen_curve:P-256".into(),
        "-nodes".into(),
        "-subj".into(),
        "/CN=hop3-controller".into(),
        "-keyout".into(),
        key.clone().into(),
        "-out".into(),
        csr.clone().into(),
    ])?;
    openssl(&[
        "x509".into(),
        "-req".into(),
        "-in".into(),
        csr.into(),
        "-CA".into(),
        tls.join("ca.pem").into(),
        "-CAkey".into(),
        tls.join("ca.key").into(),
        "-CAcreateserial".into(),
        "-days".into(),
        "2".into(),
        "-extfile".into(),
        ext.into(),
        "-out".into(),
        pem.clone().into(),
    ])?;
    Ok((pem, key))
}

#[test]
fn an_agent_certificate_cannot_pass_for_the_controller() -> Result<()> {
    let mut sys = System::builder().local_agent(false).tls().start()?;
    sys.controller().allow_errors();
    let token = sys.create_token("ops")?;
    sys.set_token(Some(&token));
    let tls = sys.tls_dir().context("tls()")?.to_owned();

    // issue-agent refuses the controller's name, in any case.
    for name in [
        "hop3-controller",
        "HOP3-Controller",
        "localhost",
        "127.0.0.1",
    ] {
        let out = sys.admin(["certs", "issue-agent", name, "--dir", tls.to_str().unwrap()]);
        ensure!(
            !out.status.success() && out.stderr.contains("reserved"),
            "issue-agent {name}\n{}",
            out.report()
        );
    }

    let scratch = sys.scratch("fixtures")?;
    let root = sys.agent_root("web-1")?;
    App::build(&root, "shop", 31, &scratch)?;
    let web_url = sys.start_agent("web-1")?.process.url();

    // A certificate of the authority with the controller's name but not
    // its marker: the agent refuses it, for backups as for listing.
    let fake_dir = sys.scratch("fake-controller")?;
    let (pem, key) = markerless_controller_cert(&tls, &fake_dir)?;
    let probe = TlsProbe {
        ca: tls.join("ca.pem"),
        domain: "web-1".to_owned(),
        identity: Some((pem, key)),
    };
    let config = probe.client_config()?;
    let answer = runtime()?.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(web_url.clone())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .tls_config(config)?
            .connect()
            .await?;
        let mut agent = AgentServiceClient::new(channel);
        let listed = agent
            .list_apps(ListAppsRequest {})
            .await
            .err()
            .map(|s| s.code());
        let backup = agent
            .backup_app(hop3_proto::v1::BackupAppRequest {
                app: "shop".into(),
                ..Default::default()
            })
            .await
            .err()
            .map(|s| s.code());
        anyhow::Ok((listed, backup))
    })?;
    ensure!(
        answer == (Some(Code::PermissionDenied), Some(Code::PermissionDenied)),
        "a marker-less controller certificate got {answer:?}"
    );
    // The real controller still backs web-1 up.
    sys.create_on("shop", "web-1")?;
    Ok(())
}

#[test]
fn backups_made_before_seals_are_sealed_once_and_a_new_key_blesses_nothing() -> Result<()> {
    let mut sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    App::build(&sys.root, "old", 41, &scratch)?;
    let id = sys.create("old")?.backup_id;
    // A store as a version before seals left it.
    sys.controller().stop();
    for f in ["seal.key", ".sealed-once"] {
        fs::remove_file(sys.store.join(f))?;
    }
    fs::remove_file(sys.backup_dir("old", &id).join("metadata.seal"))?;
    sys.restart_controller()?;
    // The upgrade seals it: it restores as before.
    sys.restore(&id, Some("old-copy"))?;

    // The key lost later: nothing is sealed anew, the backup needs
    // --trust-imported, and the controller says why.
    sys.controller().stop();
    fs::remove_file(sys.store.join("seal.key"))?;
    sys.controller().allow_errors();
    sys.restart_controller()?;
    sys.hop3(["backup:restore", &id, "--target-app", "old-copy2"])
        .failure(&["--trust-imported"])?;
    let log = fs::read_to_string(sys.controller().log_path())?;
    ensure!(
        log.contains("the seal key was made anew"),
        "the controller does not say its seal key is new"
    );
    sys.restore_with(&id, Some("old-copy2"), None, &["--trust-imported"])?;
    Ok(())
}

#[test]
fn a_second_controller_never_takes_the_socket_nor_binds_it_where_others_write() -> Result<()> {
    let sys = System::start()?;
    let socket = sys
        .cli_url()
        .strip_prefix("unix:")
        .context("a unix: URL")?
        .to_owned();
    let other = sys.scratch("other-store")?;
    let controller = |socket: &Path| {
        Command::new(binary("hop3-controller"))
            .args(["--listen", "127.0.0.1:0", "--store"])
            .arg(&other)
            .arg("--socket")
            .arg(socket)
            .env_remove("HOP3_CONFIG")
            .output()
    };
    let out = controller(Path::new(&socket))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("another controller is serving on"),
        "{err}"
    );
    // The first still serves on it.
    sys.hop3(["backup:list"]).success()?;
    // A directory anyone may write (and rename in): refused.
    let open = sys.scratch("open")?;
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777))?;
    let out = controller(&open.join("ctl.sock"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("can be written by other users"),
        "{err}"
    );
    ensure!(!open.join("ctl.sock").exists());
    Ok(())
}

#[test]
fn a_clone_on_the_same_machine_keeps_an_owner_that_has_no_name() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root to give files away");
        return Ok(());
    }
    let sys = System::start()?;
    let app = App::build(&sys.root, "owned", 62, &sys.scratch("fixtures")?)?;
    // A uid and gid without passwd or group entries.
    chown_r(&app.dir, 4242)?;
    let id = sys.create("owned")?.backup_id;
    sys.restore(&id, Some("owned-copy"))?;
    let clone = sys.root.join("apps/owned-copy");
    for p in ["", "ENV", "data", "data/db/app.sqlite", "src"] {
        let m = fs::symlink_metadata(clone.join(p))?;
        ensure!(
            (m.uid(), m.gid()) == (4242, 4242),
            "{p:?} of the clone is {}:{}",
            m.uid(),
            m.gid()
        );
    }
    Ok(())
}
