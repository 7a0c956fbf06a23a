//! Scenario 5: what a user sees when something is wrong, and that nothing
//! changed because of it.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hop3_tests::System;
use hop3_tests::cli::{self, BackupInfo};
use hop3_tests::fixtures::App;
use hop3_tests::harness::{free_port, list_dir, wait_for_entries};
use hop3_tests::snapshot::Snapshot;

/// Well formed, but no backup has it.
const UNKNOWN_ID: &str = "20200101_000000_abcdef";

#[test]
fn create_of_an_unknown_app_is_refused() -> Result<()> {
    let sys = System::start()?;
    App::build(&sys.root, "real", 8, &sys.scratch("fixtures")?)?;
    sys.hop3(["backup:create", "ghost"])
        .failure(&["Application not found"])?;
    sys.hop3(["--json", "backup:create", "ghost"])
        .failure(&["Application not found"])?;
    let apps = list_dir(&sys.store.join("apps"))?;
    ensure!(
        !apps.contains(&"ghost".to_owned()),
        "the store has {apps:?}"
    );
    let listed = sys.list(&[])?;
    ensure!(listed.is_empty(), "a refused create left {listed:?}");
    Ok(())
}

#[test]
fn unknown_backup_ids_are_reported() -> Result<()> {
    let sys = System::start()?;
    App::build(&sys.root, "real", 9, &sys.scratch("fixtures")?)?;
    let id = sys.create("real")?.backup_id;
    for args in [
        vec!["backup:info", UNKNOWN_ID],
        vec!["backup:restore", UNKNOWN_ID],
        vec!["backup:restore", UNKNOWN_ID, "--target-app", "other"],
        vec!["backup:delete", UNKNOWN_ID, "--yes"],
    ] {
        sys.hop3(&args).failure(&["Backup not found"])?;
    }
    ensure!(sys.backup_dir("real", &id).is_dir());
    wait_for_entries(&sys.root.join("apps"), &["real"], Duration::from_secs(30))
        .context("a restore of an unknown backup left something in apps/")?;
    let listed = sys.list(&[])?;
    ensure!(listed.len() == 1 && listed[0].backup_id == id, "{listed:?}");
    Ok(())
}

#[test]
fn malformed_backup_ids_are_rejected_before_any_rpc() -> Result<()> {
    // Nothing listens there: a command that got as far as an RPC would
    // report a connection error instead.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let bad_ids = [
        "../../etc",
        "../../etc/passwd",
        "20251108_143022_A8F3D9",
        "20251108_143022",
        "20251108_143022_a8f3d9/../../x",
        "nope",
    ];
    for id in bad_ids {
        for args in [
            vec!["backup:info", id],
            vec!["backup:restore", id],
            vec!["backup:delete", id, "--yes"],
        ] {
            cli::run_at(&nowhere, &args).failure(&["invalid backup ID"])?;
        }
    }

    // And against a live controller, nothing happens either.
    let sys = System::start()?;
    App::build(&sys.root, "real", 10, &sys.scratch("fixtures")?)?;
    let id = sys.create("real")?.backup_id;
    for id in bad_ids {
        sys.hop3(["backup:delete", id, "--yes"])
            .failure(&["invalid backup ID"])?;
        sys.hop3(["backup:restore", id])
            .failure(&["invalid backup ID"])?;
    }
    ensure!(sys.backup_dir("real", &id).is_dir());
    ensure!(sys.list(&[])?.len() == 1);
    Ok(())
}

/// Flips one byte in the middle of `file`.
fn flip_a_byte(file: &Path) -> Result<()> {
    let mut f = OpenOptions::new().read(true).write(true).open(file)?;
    let middle = f.metadata()?.len() / 2;
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(middle))?;
    f.read_exact(&mut byte)?;
    byte[0] ^= 0xff;
    f.seek(SeekFrom::Start(middle))?;
    f.write_all(&byte)?;
    Ok(())
}

/// Cuts `file` to half its size.
fn truncate(file: &Path) -> Result<()> {
    let f = OpenOptions::new().write(true).open(file)?;
    let len = f.metadata()?.len();
    f.set_len(len / 2)?;
    Ok(())
}

#[test]
fn a_flipped_byte_in_data_is_detected_and_nothing_is_restored() -> Result<()> {
    damaged_backup_is_refused("data.tar.zst", flip_a_byte, 11)
}

#[test]
fn a_truncated_source_archive_is_detected_and_nothing_is_restored() -> Result<()> {
    damaged_backup_is_refused("source.tar.zst", truncate, 12)
}

/// Damages `file` of a backup with `damage`, then checks that info reports
/// it and that restores, in place and to a new name, refuse to start and
/// change nothing: not the app, not apps/, not its run state.
fn damaged_backup_is_refused(file: &str, damage: fn(&Path) -> Result<()>, seed: u64) -> Result<()> {
    let sys = System::builder().hooks().start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "api", seed, &scratch)?;
    let id = sys.create("api")?.backup_id;
    let dir = sys.backup_dir("api", &id);
    damage(&dir.join(file))?;

    let out = sys.hop3(["--json", "backup:info", &id]);
    ensure!(
        !out.status.success(),
        "backup:info of a damaged backup exited 0\n{}",
        out.report()
    );
    let info: BackupInfo = out.json()?;
    ensure!(!info.all_valid, "{info:?}");
    for check in &info.files {
        let damaged = check.path == file;
        ensure!(check.valid != damaged, "{check:?}");
        ensure!((check.actual == check.expected) != damaged, "{check:?}");
    }
    info.file(file)?;
    let human = sys.hop3(["backup:info", &id]);
    let text = format!("{}{}", human.stdout, human.stderr);
    ensure!(
        !human.status.success() && text.contains(file) && !text.contains("All checksums valid"),
        "human backup:info of a damaged backup\n{}",
        human.report()
    );

    // The app has moved on since the backup, so a restore that started
    // would show.
    app.mutate(&scratch)?;
    let before = Snapshot::of(&app.dir)?;
    sys.hop3(["backup:restore", &id])
        .failure(&["Checksum mismatch", file])?;
    before.assert_same(&Snapshot::of(&app.dir)?, "the app after a refused restore")?;
    sys.hop3(["backup:restore", &id, "--target-app", "api-copy"])
        .failure(&["Checksum mismatch", file])?;
    wait_for_entries(&sys.root.join("apps"), &["api"], Duration::from_secs(30))
        .context("a refused restore left something in apps/")?;
    ensure!(
        sys.hook_calls()?.is_empty(),
        "a refused restore stopped or started the app: {:?}",
        sys.hook_calls()?
    );
    // The damaged backup stays for the operator to look at.
    ensure!(dir.join(file).is_file() && fs::metadata(dir.join("metadata.json")).is_ok());
    Ok(())
}
