//! Disaster recovery: the store is the source of truth and the catalog an
//! index of it. A controller killed mid-backup, a catalog lost and rebuilt
//! from the store, backups copied in by hand (this project's format and
//! Hop3's Python server's), an agent killed mid-restore.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hop3_proto::{BackupId, Manifest};
use hop3_tests::System;
use hop3_tests::cli::{self, BackupSummary};
use hop3_tests::fixtures::{App, MIB, run};
use hop3_tests::harness::{LOCAL_HOST_ID, du, list_dir, partial_id, wait_for_entries, wait_until};
use hop3_tests::servers::Postgres;
use hop3_tests::snapshot::{self, Snapshot, sha256_file};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long one create or restore of a few hundred MiB may take on a
/// loaded two-core machine with debug binaries.
const BIG_OPERATION: Duration = Duration::from_secs(300);

/// How long the product may take to settle after it answered or started:
/// leftovers removed, records marked.
const SETTLE: Duration = Duration::from_secs(30);

fn ids(list: &[BackupSummary]) -> BTreeSet<String> {
    list.iter().map(|b| b.backup_id.clone()).collect()
}

/// The second of an RFC 3339 time, whatever its precision or offset.
fn second_of(t: &str) -> Result<i64> {
    Ok(OffsetDateTime::parse(t, &Rfc3339)
        .with_context(|| format!("{t:?} is not RFC 3339"))?
        .unix_timestamp())
}

// ---------------------------------------------------------------------------
// A controller killed mid-backup

/// Kills the controller while a 200 MiB backup streams into the store,
/// restarts it on the same store and catalog, and checks what it finds.
fn controller_killed_mid_backup(mut sys: System) -> Result<()> {
    let scratch = sys.scratch("fixtures")?;
    let small = App::build(&sys.root, "small", 221, &scratch)?;
    let small_original = Snapshot::of(&small.dir)?;
    let earlier = sys.create("small")?;
    let big = App::build(&sys.root, "media", 222, &scratch)?;
    big.big_data(200)?;

    let mut create = sys.hop3_spawn(["--json", "backup:create", "media"])?;
    let partial = sys.wait_partial(&mut create, 4 * MIB, BIG_OPERATION)?;
    let id = partial_id(&partial);
    let during = sys.list(&["media"])?;
    ensure!(
        during
            .iter()
            .any(|b| b.backup_id == id && b.status == "STARTED"),
        "the backup in flight is not listed STARTED: {during:?}"
    );
    sys.controller().kill();
    create.wait(Duration::from_secs(60))?.failure(&[])?;
    ensure!(
        partial.is_dir(),
        "nothing was left to clean up: inconclusive ({} is gone)",
        partial.display()
    );

    sys.restart_controller()?;
    let failed: BackupSummary = wait_until(SETTLE, "the backup to be marked FAILED", || {
        Ok(sys
            .list(&["media"])?
            .into_iter()
            .find(|b| b.backup_id == id && b.status == "FAILED"))
    })
    .with_context(|| format!("backup:list media says {:?}", sys.list(&["media"])))?;
    ensure!(
        !failed.error().is_empty(),
        "FAILED without a reason: {failed:?}"
    );
    wait_until(SETTLE, "the .partial directory to be removed", || {
        Ok((sys.partials()?.is_empty() && sys.store_entries("media")?.is_empty()).then_some(()))
    })
    .with_context(|| format!("the store holds {:?}", sys.partials()))?;

    // What was there before is still there, and still restores.
    let listed = sys.list(&["small"])?;
    ensure!(
        listed.len() == 1
            && listed[0].backup_id == earlier.backup_id
            && listed[0].status == "COMPLETED"
            && listed[0].total_size == earlier.total_size,
        "{listed:?} vs {earlier:?}"
    );
    small.mutate(&scratch)?;
    sys.restore(&earlier.backup_id, None)?;
    small_original.assert_same(
        &Snapshot::of(&small.dir)?,
        "an earlier backup restored after the restart",
    )?;

    // And the app whose backup was cut short backs up again.
    let again = sys.create("media")?;
    ensure!(again.backup_id != id);
    let entries = sys.store_entries("media")?;
    ensure!(entries == [again.backup_id.as_str()], "{entries:?}");
    let mut statuses: Vec<(String, String)> = sys
        .list(&["media"])?
        .into_iter()
        .map(|b| (b.backup_id, b.status))
        .collect();
    statuses.sort();
    let mut expected = vec![
        (again.backup_id.clone(), "COMPLETED".to_owned()),
        (id, "FAILED".to_owned()),
    ];
    expected.sort();
    ensure!(statuses == expected, "{statuses:?}");
    Ok(())
}

#[test]
fn a_controller_killed_mid_backup_marks_it_failed_at_restart() -> Result<()> {
    controller_killed_mid_backup(System::start()?)
}

#[test]
fn a_controller_killed_mid_backup_recovers_on_a_postgres_catalog() -> Result<()> {
    let pg = Postgres::start()?;
    let url = pg.create_catalog("hop3_catalog")?;
    let sys = System::builder().catalog(url).start()?;
    controller_killed_mid_backup(sys)
}

// ---------------------------------------------------------------------------
// A catalog rebuilt from the store

/// Makes 3 backups of 2 apps, then starts the controller on the same store
/// with a new catalog from `fresh(name)` three times: everything listed
/// again; a garbage directory skipped with a WARN; a vanished directory
/// dropped.
fn catalog_rebuilt_from_the_store(
    mut sys: System,
    fresh: &dyn Fn(&System, &str) -> Result<String>,
) -> Result<()> {
    let scratch = sys.scratch("fixtures")?;
    let alpha = App::build(&sys.root, "alpha", 225, &scratch)?;
    App::build(&sys.root, "beta", 226, &scratch)?;
    let alpha_original = Snapshot::of(&alpha.dir)?;
    let made = [
        sys.create("alpha")?,
        sys.create("beta")?,
        sys.create("alpha")?,
    ];
    let before: BTreeMap<String, BackupSummary> = made
        .iter()
        .map(|b| (b.backup_id.clone(), b.clone()))
        .collect();

    let url = fresh(&sys, "rebuilt")?;
    ensure!(url != sys.catalog());
    sys.set_catalog(&url);
    sys.restart_controller()?;
    let listed = wait_until(SETTLE, "the rebuilt catalog to list 3 backups", || {
        let listed = sys.list(&[])?;
        Ok((listed.len() >= 3).then_some(listed))
    })?;
    ensure!(
        ids(&listed) == before.keys().cloned().collect(),
        "{listed:?}"
    );
    for b in &listed {
        let was = &before[&b.backup_id];
        ensure!(b.status == "COMPLETED", "{b:?}");
        ensure!(
            b.app == was.app && b.total_size == was.total_size && b.host == was.host,
            "rebuilt {b:?}\nwas {was:?}"
        );
        ensure!(
            second_of(&b.created_at)? == second_of(&was.created_at)?,
            "rebuilt {b:?}\nwas {was:?}"
        );
        ensure!(b.services == was.services, "rebuilt {b:?}\nwas {was:?}");
    }
    let newest_first: Vec<i64> = listed
        .iter()
        .map(|b| second_of(&b.created_at))
        .collect::<Result<_>>()?;
    ensure!(
        newest_first.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {listed:?}"
    );
    let alpha_ids = ids(&sys.list(&["alpha"])?);
    ensure!(
        alpha_ids == BTreeSet::from([made[0].backup_id.clone(), made[2].backup_id.clone()]),
        "{alpha_ids:?}"
    );
    let info = sys.info(&made[0].backup_id)?;
    ensure!(info.all_valid && info.status == "COMPLETED", "{info:?}");
    // A rebuilt entry restores like any other.
    sys.restore(&made[0].backup_id, Some("alpha-copy"))?;
    alpha_original.as_clone().assert_same(
        &Snapshot::of(&sys.root.join("apps/alpha-copy"))?,
        "a clone from a rebuilt catalog entry",
    )?;

    // Garbage in the store: skipped, with a WARN naming it.
    let garbage = sys.store.join("apps/x/20250101_000000_aaaaaa");
    fs::create_dir_all(&garbage)?;
    fs::write(garbage.join("metadata.json"), "{\"backup_id\": \"2025")?;
    let url = fresh(&sys, "rebuilt-again")?;
    sys.set_catalog(&url);
    sys.restart_controller()?;
    let listed = wait_until(SETTLE, "the rebuilt catalog to list 3 backups", || {
        let listed = sys.list(&[])?;
        Ok((listed.len() >= 3).then_some(listed))
    })?;
    ensure!(
        ids(&listed) == before.keys().cloned().collect(),
        "{listed:?}"
    );
    ensure!(sys.list(&["x"])?.is_empty());
    let log = sys.controller().log_path().to_owned();
    let warned = wait_until(SETTLE, "a WARN naming the garbage directory", || {
        let text = fs::read_to_string(&log)?;
        Ok(text
            .lines()
            .find(|l| l.contains(" WARN ") && l.contains("20250101_000000_aaaaaa"))
            .map(str::to_owned))
    })
    .with_context(|| hop3_tests::harness::tail(&log, 30))?;
    eprintln!("the controller warned: {warned}");

    // A backup directory removed by hand: its row goes at the next start.
    let gone = &made[1].backup_id;
    fs::remove_dir_all(sys.backup_dir("beta", gone))?;
    sys.restart_controller()?;
    let expected: BTreeSet<String> = [&made[0], &made[2]]
        .iter()
        .map(|b| b.backup_id.clone())
        .collect();
    wait_until(SETTLE, "the vanished backup's row to be dropped", || {
        Ok((ids(&sys.list(&[])?) == expected).then_some(()))
    })
    .with_context(|| format!("backup:list says {:?}", sys.list(&[])))?;
    sys.hop3(["backup:info", gone])
        .failure(&["Backup not found"])?;
    Ok(())
}

#[test]
fn a_lost_sqlite_catalog_is_rebuilt_from_the_store() -> Result<()> {
    catalog_rebuilt_from_the_store(System::start()?, &|sys, name| {
        Ok(sys.sqlite_catalog(&format!("{name}.db")))
    })
}

#[test]
fn a_lost_postgres_catalog_is_rebuilt_from_the_store() -> Result<()> {
    let pg = Postgres::start()?;
    let sys = System::builder()
        .catalog(pg.create_catalog("first")?)
        .start()?;
    catalog_rebuilt_from_the_store(sys, &|_, name| pg.create_catalog(&name.replace('-', "_")))
}

// ---------------------------------------------------------------------------
// A corrupt catalog

/// What `hop3` exits with when the controller refuses the caller.
const EXIT_UNAUTHENTICATED: i32 = 6;

/// Overwrites the middle pages of the SQLite file at `path` (all but its
/// first, which holds the header and the schema, and its last) with
/// garbage, as a failing disk would; returns how many it overwrote.
fn clobber_middle_pages(path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.starts_with(b"SQLite format 3\0"),
        "{} is not a SQLite file",
        path.display()
    );
    let page = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    let pages = bytes.len() as u64 / page;
    ensure!(pages >= 3, "{pages} pages: none in the middle");
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(page))?;
    let garbage: Vec<u8> = (0..page * (pages - 2))
        .map(|i| (i.wrapping_mul(131) + 7) as u8)
        .collect();
    file.write_all(&garbage)?;
    file.sync_all()?;
    Ok(pages - 2)
}

#[test]
fn a_corrupt_catalog_is_kept_aside_and_rebuilt_and_tokens_still_work() -> Result<()> {
    let mut sys = System::builder().tls().start()?;
    let alice = sys.create_token("alice")?;
    let bob = sys.create_token("bob")?;
    sys.admin(["tokens", "revoke", "bob"]).success()?;
    sys.set_token(Some(&alice));
    let scratch = sys.scratch("fixtures")?;
    tiny_app(&sys.root, "alpha", 251, &scratch)?;
    tiny_app(&sys.root, "beta", 252, &scratch)?;
    let made = [
        sys.create("alpha")?,
        sys.create("beta")?,
        sys.create("alpha")?,
    ];

    // Stopped cleanly, the controller writes the catalog's WAL back into its
    // file: the damage below then hits the only copy of the rows.
    let db = PathBuf::from(
        sys.catalog()
            .strip_prefix("sqlite://")
            .context("a SQLite catalog")?,
    );
    let dir = db.parent().context("the catalog's directory")?.to_owned();
    let name = db
        .file_name()
        .context("the catalog's file name")?
        .to_string_lossy()
        .into_owned();
    let complaint = sys.controller().stop();
    ensure!(complaint.is_none(), "{complaint:?}");
    let wal = dir.join(format!("{name}-wal"));
    let wal_len = fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    ensure!(
        wal_len == 0,
        "the WAL holds {wal_len} bytes after a clean stop: the damage would be masked"
    );
    let clobbered = clobber_middle_pages(&db)?;
    let damaged = sha256_file(&db)?;
    eprintln!("overwrote {clobbered} page(s) of {}", db.display());

    sys.restart_controller()?;
    // Every backup listed again, as it was, with alice's token.
    let listed = wait_until(SETTLE, "the rebuilt catalog to list 3 backups", || {
        let listed = sys.list(&[])?;
        Ok((listed.len() >= 3).then_some(listed))
    })?;
    ensure!(
        ids(&listed) == ids(&made),
        "listed {listed:?}\nmade {made:?}"
    );
    for b in &listed {
        let was = made
            .iter()
            .find(|m| m.backup_id == b.backup_id)
            .context("a made backup")?;
        ensure!(
            b.status == "COMPLETED"
                && b.app == was.app
                && b.total_size == was.total_size
                && b.host == was.host,
            "rebuilt {b:?}\nwas {was:?}"
        );
    }
    let human = sys.hop3(["backup:list"]).success()?;
    for b in &made {
        ensure!(human.stdout.contains(&b.backup_id), "{}", human.report());
    }

    // The damaged file kept aside, whole (its -wal and -shm go with it when
    // SQLite has not removed them: the catalog unit tests cover that).
    let entries = list_dir(&dir)?;
    let kept: Vec<&String> = entries
        .iter()
        .filter(|n| {
            n.strip_prefix(&format!("{name}.corrupt-"))
                .is_some_and(|stamp| stamp.len() == 16 && stamp.ends_with('Z'))
        })
        .collect();
    ensure!(kept.len() == 1, "kept aside: {entries:?}");
    let kept = dir.join(kept[0]);
    ensure!(
        sha256_file(&kept)? == damaged,
        "{} is not the damaged file",
        kept.display()
    );
    ensure!(db.is_file(), "no new catalog at {}", db.display());
    let log = sys.controller().log_path().to_owned();
    let kept_name = kept.to_string_lossy().into_owned();
    let warned = fs::read_to_string(&log)?
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains("corrupt") && l.contains(&kept_name))
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "no WARN names {kept_name}\n{}",
                hop3_tests::harness::tail(&log, 30)
            )
        })?;
    eprintln!("the controller warned: {warned}");

    // Tokens live in the store, not the catalog: alice's still works (every
    // call above), bob's is still revoked.
    sys.set_token(Some(&bob));
    let refused = sys.hop3(["backup:list"]).failure(&["not authorized"])?;
    ensure!(
        refused.status.code() == Some(EXIT_UNAUTHENTICATED),
        "{}",
        refused.report()
    );
    sys.set_token(Some(&alice));
    let tokens = sys.admin(["tokens", "list"]).success()?;
    let line = |who: &str| {
        tokens
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(who))
            .map(str::to_owned)
            .with_context(|| format!("tokens list has no {who}\n{}", tokens.report()))
    };
    ensure!(!line("alice")?.contains("revoked"), "{}", tokens.report());
    ensure!(line("bob")?.contains("revoked"), "{}", tokens.report());

    // The new catalog takes new backups, and the rebuilt rows restore.
    let again = sys.create("beta")?;
    ensure!(sys.list(&[])?.len() == 4);
    sys.restore(&made[0].backup_id, Some("alpha-copy"))?;
    ensure!(sys.info(&again.backup_id)?.all_valid);
    Ok(())
}

/// An app as small as an app gets: the fixture's git history and tree,
/// one data file.
fn tiny_app(root: &Path, name: &str, seed: u64, scratch: &Path) -> Result<App> {
    let app = App::build(root, name, seed, scratch)?;
    fs::remove_dir_all(app.data_dir())?;
    fs::create_dir(app.data_dir())?;
    fs::write(app.data_dir().join("counter.txt"), b"42\n")?;
    Ok(app)
}

/// Creates `<store>/apps/<app>/<id>/` from the backup directory `from`: its
/// artifacts hard-linked (same bytes, same checksums, no space), its
/// metadata.json rewritten with the new ID and time.
fn clone_backup_dir(from: &Path, to: &Path, id: &BackupId) -> Result<()> {
    fs::create_dir(to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "metadata.json" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            fs::create_dir(&target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o700))?;
            for inner in fs::read_dir(entry.path())? {
                let inner = inner?;
                fs::hard_link(inner.path(), target.join(inner.file_name()))?;
            }
        } else {
            fs::hard_link(entry.path(), &target)?;
        }
    }
    let mut manifest: Value = serde_json::from_slice(&fs::read(from.join("metadata.json"))?)?;
    manifest["backup_id"] = json!(id.as_str());
    manifest["created_at"] = json!(Manifest::format_time(id.timestamp()));
    let path = to.join("metadata.json");
    fs::write(&path, serde_json::to_vec_pretty(&manifest)?)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[test]
fn a_catalog_of_a_thousand_backups_is_rebuilt() -> Result<()> {
    const COUNT: usize = 1000;
    let mut sys = System::start()?;
    tiny_app(&sys.root, "bulk", 227, &sys.scratch("fixtures")?)?;
    let real = sys.create("bulk")?;
    let from = sys.backup_dir("bulk", &real.backup_id);

    // 999 more, a minute apart in 2025, each with an ID of its own.
    let first = OffsetDateTime::parse("2025-01-01T00:00:00Z", &Rfc3339)?;
    for i in 1..COUNT {
        let when = first + time::Duration::minutes(i as i64);
        let n = i as u32;
        let id = BackupId::at(when, [(n >> 16) as u8, (n >> 8) as u8, n as u8]);
        clone_backup_dir(&from, &sys.backup_dir("bulk", id.as_str()), &id)?;
    }
    ensure!(sys.store_entries("bulk")?.len() == COUNT);

    sys.controller().stop();
    let url = sys.sqlite_catalog("thousand.db");
    sys.set_catalog(&url);
    let start = Instant::now();
    sys.restart_controller()?;
    let healthy = start.elapsed();
    let listed = wait_until(BIG_OPERATION, "backup:list to return 1000", || {
        let listed = sys.list(&["--limit", "1000"])?;
        Ok((listed.len() == COUNT).then_some(listed))
    })
    .with_context(|| {
        format!(
            "backup:list --limit 1000 returns {:?} entries",
            sys.list(&["--limit", "1000"]).map(|l| l.len())
        )
    })?;
    let took = start.elapsed();
    eprintln!(
        "catalog of {COUNT} backups rebuilt: controller healthy after {healthy:.2?}, \
         backup:list --limit 1000 returned {COUNT} after {took:.2?}"
    );
    ensure!(
        listed
            .iter()
            .all(|b| b.status == "COMPLETED" && b.app == "bulk"),
        "{:?}",
        listed.iter().find(|b| b.status != "COMPLETED")
    );
    ensure!(listed[0].backup_id == real.backup_id, "{:?}", listed[0]);
    ensure!(sys.list(&[])?.len() == 20, "the default limit is 20");
    Ok(())
}

// ---------------------------------------------------------------------------
// Import

/// Copies a directory tree (files, directories; no links in a backup).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Every file under `dir`, by relative path, with its SHA-256.
fn file_hashes(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (path, entry) in snapshot::tree(dir)? {
        if let snapshot::Entry::File { sha256, .. } = entry {
            out.insert(path, sha256);
        }
    }
    Ok(out)
}

/// Fails unless every directory under `dir` (itself included) is 0700 and
/// every file 0600.
fn private(dir: &Path) -> Result<()> {
    for (path, entry) in snapshot::tree(dir)? {
        let (mode, want) = match entry {
            snapshot::Entry::Dir { mode } => (mode, 0o700),
            snapshot::Entry::File { mode, .. } => (mode, 0o600),
            snapshot::Entry::Symlink { target } => bail!("{path} is a link to {target}"),
            snapshot::Entry::Fifo { .. } => bail!("{path} is a FIFO"),
        };
        ensure!(
            mode == want,
            "{}/{path} has mode {mode:o}, not {want:o}",
            dir.display()
        );
    }
    Ok(())
}

/// Flips one byte in the middle of `file`.
fn flip_a_byte(file: &Path) -> Result<()> {
    let mut bytes = fs::read(file)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(file, bytes)?;
    Ok(())
}

/// The ID of the hand-made Python-server backup.
const PY_ID: &str = "20251108_143022_a8f3d9";

/// Writes, in `out/<PY_ID>/`, a backup of `app` as Hop3's Python server
/// makes them: `source.tar.gz` of `git/` only and `data.tar.gz` of `data/`
/// made with the real `tar`, `env.json`, an empty `addons/`, and a
/// metadata.json with `addons`, a `+00:00` time with microseconds and no
/// host.
fn python_backup(app: &App, out: &Path) -> Result<PathBuf> {
    let dir = out.join(PY_ID);
    fs::create_dir_all(dir.join("addons"))?;
    for (archive, top) in [("source.tar.gz", "git"), ("data.tar.gz", "data")] {
        let mut tar = Command::new("tar");
        tar.arg("-czf")
            .arg(dir.join(archive))
            .arg("-C")
            .arg(&app.dir)
            .arg(top);
        run(tar)?;
    }
    let env = Snapshot::of(&app.dir)?.env;
    fs::write(dir.join("env.json"), serde_json::to_string_pretty(&env)?)?;
    fs::set_permissions(dir.join("env.json"), fs::Permissions::from_mode(0o600))?;
    let mut checksums = serde_json::Map::new();
    let mut size = 0;
    for file in ["source.tar.gz", "data.tar.gz", "env.json"] {
        let path = dir.join(file);
        checksums.insert(
            file.into(),
            json!(format!("sha256:{}", sha256_file(&path)?)),
        );
        size += fs::metadata(&path)?.len();
    }
    let app_json = app.app_json()?;
    let manifest = json!({
        "backup_id": PY_ID,
        "app_name": app.name,
        "created_at": "2025-11-08T14:30:22.123456+00:00",
        "format_version": "1.0",
        "hop3_version": "0.4.2",
        "size_bytes": size,
        "checksums": checksums,
        "app_metadata": {
            "hostname": app_json["hostname"],
            "port": app_json["port"],
            "run_state": "RUNNING",
        },
        "addons": [],
        "env_vars_count": env.len(),
        "expires_after": 0,
    });
    fs::write(
        dir.join("metadata.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    Ok(dir)
}

/// Fails unless the app at `restored` holds what the Python-server backup
/// of `app` holds: the same git HEAD, refs and commits (and a sound
/// repository), the same data (bytes, modes, links), ENV, hostname and
/// port. `src/` was not in the backup: whatever the agent makes of it is
/// not compared.
fn same_as_python_backup(app: &App, restored: &Path) -> Result<()> {
    let expected = Snapshot::of(&app.dir)?;
    let (head, refs, commits) = snapshot::git_state(&restored.join("git"))?;
    ensure!(
        expected.head == head && expected.refs == refs,
        "git refs differ: {:?} vs {refs:?}",
        expected.refs
    );
    ensure!(expected.commits == commits, "git commits differ");
    snapshot::fsck(&restored.join("git"))?;
    let data = snapshot::tree(&restored.join("data"))?;
    ensure!(
        expected.data == data,
        "data/ differs: {:?}",
        expected
            .data
            .iter()
            .filter(|(k, v)| data.get(*k) != Some(v))
            .take(10)
            .collect::<Vec<_>>()
    );
    let env = snapshot::parse_env(&fs::read_to_string(restored.join("ENV"))?);
    ensure!(expected.env == env, "ENV differs: {env:?}");
    let app_json: Value = serde_json::from_slice(&fs::read(restored.join("app.json"))?)?;
    ensure!(
        app_json["hostname"].as_str() == expected.hostname.as_deref()
            && app_json["port"].as_u64() == expected.port,
        "app.json: {app_json}"
    );
    Ok(())
}

#[test]
fn backups_copied_in_by_hand_are_imported() -> Result<()> {
    let mut sys = System::start()?;
    let root_b = sys.start_agent("host-b")?.root.clone();
    let scratch = sys.scratch("fixtures")?;
    // Imports are read from below the store's import/ only.
    let outside = sys.store.join("import");
    fs::create_dir_all(&outside)?;
    let wiki = App::build(&sys.root, "wiki", 231, &scratch)?;
    let original = Snapshot::of(&wiki.dir)?;
    let created = sys.create("wiki")?;
    let id = created.backup_id.clone();
    let stored = sys.backup_dir("wiki", &id);

    // Copies out of the store: one as it is, three damaged.
    let copy = outside.join("good").join(&id);
    copy_dir(&stored, &copy)?;
    let flipped = outside.join("flipped").join(&id);
    copy_dir(&stored, &flipped)?;
    flip_a_byte(&flipped.join("data.tar.zst"))?;
    let invalid = outside.join("invalid").join(&id);
    copy_dir(&stored, &invalid)?;
    fs::write(invalid.join("metadata.json"), "{\"backup_id\": \"2025")?;
    let future = outside.join("future").join(&id);
    copy_dir(&stored, &future)?;
    let mut manifest: Value = serde_json::from_slice(&fs::read(stored.join("metadata.json"))?)?;
    manifest["format_version"] = json!("9.0");
    fs::write(
        future.join("metadata.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    let copied = file_hashes(&copy)?;

    sys.hop3(["backup:delete", &id, "--yes"]).success()?;
    ensure!(!stored.exists() && sys.list(&[])?.is_empty());

    let path = |p: &Path| p.display().to_string();
    sys.hop3(["backup:import", &path(&flipped)])
        .failure(&["Checksum mismatch"])?;
    sys.hop3(["--json", "backup:import", &path(&flipped)])
        .failure(&["Checksum mismatch"])?;
    sys.hop3(["backup:import", &path(&invalid)])
        .failure(&["metadata.json"])?;
    sys.hop3(["backup:import", &path(&future)])
        .failure(&["metadata.json"])?;
    ensure!(
        !stored.exists(),
        "a refused import left {}",
        stored.display()
    );
    ensure!(sys.list(&[])?.is_empty(), "{:?}", sys.list(&[])?);
    ensure!(sys.partials()?.is_empty(), "{:?}", sys.partials()?);

    let out = sys.hop3(["backup:import", &path(&copy)]).success()?;
    ensure!(out.human_backup_id()? == id, "{}", out.report());
    let listed = sys.list(&[])?;
    ensure!(
        listed.len() == 1
            && listed[0].backup_id == id
            && listed[0].app == "wiki"
            && listed[0].status == "COMPLETED"
            && listed[0].total_size == created.total_size
            && listed[0].host == LOCAL_HOST_ID,
        "{listed:?} vs {created:?}"
    );
    ensure!(stored.is_dir(), "the import is not in the store");
    private(&stored)?;
    ensure!(file_hashes(&stored)? == copied, "the store's copy differs");
    ensure!(
        file_hashes(&copy)? == copied,
        "the import changed what it was given"
    );
    sys.hop3(["backup:import", &path(&copy)])
        .failure(&["already"])?;
    sys.hop3(["--json", "backup:import", &path(&copy)])
        .failure(&["already"])?;
    ensure!(sys.list(&[])?.len() == 1);

    // A copy of this controller's own backup keeps its seal.
    wiki.mutate(&scratch)?;
    sys.restore(&id, None)?;
    original.assert_same(&Snapshot::of(&wiki.dir)?, "an imported backup restored")?;

    // Hop3's Python server's format, from a host no agent serves.
    let legacy = App::build(&scratch.join("python-host"), "legacy", 232, &scratch)?;
    let dir = python_backup(&legacy, &outside.join("python"))?;
    let out = sys
        .hop3(["--json", "backup:import", &path(&dir)])
        .success()?;
    let raw: Value = out.json()?;
    cli::require_keys(&raw, cli::BACKUP_KEYS)?;
    ensure!(
        raw["backup_id"] == PY_ID && raw["app"] == "legacy" && raw["status"] == "COMPLETED",
        "{raw}"
    );
    ensure!(
        raw["host"].is_null() || raw["host"] == "",
        "a Python-server backup names no host: {raw}"
    );
    let stored_py = sys.backup_dir("legacy", PY_ID);
    private(&stored_py)?;
    let info = sys.info(PY_ID)?;
    ensure!(info.all_valid && info.app == "legacy", "{info:?}");
    ensure!(
        sys.list(&["legacy"])?.iter().any(|b| b.backup_id == PY_ID),
        "{:?}",
        sys.list(&[])?
    );

    // Not sealed by this controller: restored only when trusted by hand.
    sys.hop3(["backup:restore", PY_ID, "--target-host", "host-b"])
        .failure(&["--trust-imported"])?;
    // Two agents are online: the restore must be told where.
    sys.hop3(["backup:restore", PY_ID, "--trust-imported"])
        .failure(&["--target-host"])?;
    ensure!(!root_b.join("apps/legacy").exists());
    ensure!(!sys.root.join("apps/legacy").exists());
    let trusted = ["--trust-imported"];
    let restored = sys.restore_with(PY_ID, None, Some("host-b"), &trusted)?;
    ensure!(
        restored.host == "host-b" && restored.app == "legacy",
        "{restored:?}"
    );
    same_as_python_backup(&legacy, &root_b.join("apps/legacy"))?;
    ensure!(!sys.root.join("apps/legacy").exists());

    // With exactly one agent online, that one is meant.
    let solo = System::start()?;
    let solo_dir = solo.store.join("import").join("python");
    copy_dir(&dir, &solo_dir)?;
    let out = solo.hop3(["backup:import", &path(&solo_dir)]).success()?;
    ensure!(out.human_backup_id()? == PY_ID, "{}", out.report());
    let restored = solo.restore_with(PY_ID, None, None, &trusted)?;
    ensure!(restored.host == LOCAL_HOST_ID, "{restored:?}");
    same_as_python_backup(&legacy, &solo.root.join("apps/legacy"))?;

    // Such a backup holds no deployed tree: restoring it over the app keeps
    // the tree the app had, as the Python server's own restore does.
    let src = solo.root.join("apps/legacy/src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("deployed.txt"), "still here")?;
    solo.restore_with(PY_ID, None, None, &trusted)?;
    same_as_python_backup(&legacy, &solo.root.join("apps/legacy"))?;
    ensure!(
        std::fs::read_to_string(src.join("deployed.txt"))
            .ok()
            .as_deref()
            == Some("still here"),
        "the deployed tree was lost by restoring a backup without one"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// An agent killed mid-restore

#[test]
fn an_agent_killed_mid_restore_leaves_the_old_app_whole() -> Result<()> {
    let mut sys = System::builder().local_agent(false).start()?;
    let root = sys.agent_root("host-a")?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&root, "media", 241, &scratch)?;
    app.big_data(200)?;
    let original = Snapshot::of(&app.dir)?;
    sys.start_agent("host-a")?;
    let created = sys.create("media")?;
    let id = created.backup_id.clone();

    app.mutate(&scratch)?;
    let before = Snapshot::of(&app.dir)?;
    ensure!(before != original);
    let apps = root.join("apps");
    let staging = apps.join(format!(".media.restore-{id}"));

    let mut restore = sys.hop3_spawn(["--json", "backup:restore", &id])?;
    let staged = wait_until(BIG_OPERATION, "a few MiB staged beside the app", || {
        let staged = du(&staging);
        if staged >= 8 * MIB {
            return Ok(Some(staged));
        }
        if !restore.is_running()? {
            bail!("the restore ended before 8 MiB were staged");
        }
        Ok(None)
    })?;
    sys.agent("host-a").process.kill();
    ensure!(
        staged < created.total_size && staging.is_dir(),
        "the restore had staged everything, or nothing is left to clean up: inconclusive"
    );
    // The controller rightly reports the lost restore at ERROR.
    sys.controller().allow_errors();
    restore.wait(Duration::from_secs(60))?.failure(&[])?;
    before.assert_same(
        &Snapshot::of(&app.dir)?,
        "the app right after its agent was killed mid-restore",
    )?;

    sys.agent("host-a").process.restart()?;
    wait_for_entries(&apps, &["media"], SETTLE)
        .context("the restarted agent left the interrupted restore's trees")?;
    before.assert_same(&Snapshot::of(&app.dir)?, "the app once its agent came back")?;

    // Retrying is safe, and brings the backup back.
    let restored = sys.restore(&id, None)?;
    ensure!(restored.host == "host-a", "{restored:?}");
    original.assert_same(
        &Snapshot::of(&app.dir)?,
        "the app after the retried restore",
    )?;
    wait_for_entries(&apps, &["media"], SETTLE)?;
    ensure!(list_dir(&apps)? == ["media"], "{:?}", list_dir(&apps)?);
    Ok(())
}
