//! Scenario 6: one operation at a time per app, any number across apps;
//! a backup being read (restored, verified) is not deleted under its readers.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hop3_tests::System;
use hop3_tests::cli::{BackupSummary, RestoreResult};
use hop3_tests::fixtures::{App, MIB};
use hop3_tests::harness::{du, list_dir, wait_until};
use hop3_tests::snapshot::Snapshot;

/// How long one create or restore of a few hundred MiB may take on a
/// loaded two-core machine with debug binaries.
const BIG_OPERATION: Duration = Duration::from_secs(300);

#[test]
fn a_second_operation_on_a_busy_app_is_refused() -> Result<()> {
    let sys = System::start()?;
    let app = App::build(&sys.root, "big", 13, &sys.scratch("fixtures")?)?;
    app.big_data(200)?;

    // A create is in flight once its .partial directory exists.
    let mut first = sys.hop3_spawn(["--json", "backup:create", "big"])?;
    wait_until(
        BIG_OPERATION,
        "the first create's .partial directory",
        || {
            if !sys.partials()?.is_empty() {
                return Ok(Some(()));
            }
            if !first.is_running()? {
                bail!("the first create ended before a .partial directory appeared");
            }
            Ok(None)
        },
    )?;
    let second = sys.hop3(["backup:create", "big"]);
    ensure!(
        first.is_running()?,
        "the first create finished before the second was refused: inconclusive, make the app bigger"
    );
    // It says what holds the app.
    second.failure(&["in progress", "(a backup, started "])?;

    let out = first.wait(BIG_OPERATION)?.success()?;
    let created: BackupSummary = out.json()?;
    ensure!(created.status == "COMPLETED", "{created:?}");
    ensure!(sys.partials()?.is_empty(), "{:?}", sys.partials()?);
    let listed = sys.list(&["big"])?;
    ensure!(
        listed.len() == 1 && listed[0].backup_id == created.backup_id,
        "the refused create left a trace in the catalog: {listed:?}"
    );

    // The same for a restore: in flight once it stages beside the app.
    let mut restore = sys.hop3_spawn(["--json", "backup:restore", &created.backup_id])?;
    wait_until(
        BIG_OPERATION,
        "the restore's staging directory in apps/",
        || {
            let apps = list_dir(&sys.root.join("apps"))?;
            if apps.iter().any(|name| name.starts_with('.')) {
                return Ok(Some(()));
            }
            if !restore.is_running()? {
                bail!("the restore ended before anything was staged in apps/ ({apps:?})");
            }
            Ok(None)
        },
    )?;
    let during = sys.hop3(["backup:create", "big"]);
    ensure!(
        restore.is_running()?,
        "the restore finished before the create was refused: inconclusive, make the app bigger"
    );
    during.failure(&["in progress", "(a restore, started "])?;
    restore.wait(BIG_OPERATION)?.success()?;
    ensure!(sys.list(&["big"])?.len() == 1);
    Ok(())
}

#[test]
fn creates_of_two_apps_run_side_by_side() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    for (name, seed) in [("left", 14), ("right", 15)] {
        App::build(&sys.root, name, seed, &scratch)?.big_data(48)?;
    }
    let left = sys.hop3_spawn(["--json", "backup:create", "left"])?;
    let right = sys.hop3_spawn(["--json", "backup:create", "right"])?;
    let left: BackupSummary = left.wait(BIG_OPERATION)?.success()?.json()?;
    let right: BackupSummary = right.wait(BIG_OPERATION)?.success()?.json()?;
    ensure!(left.status == "COMPLETED" && left.app == "left", "{left:?}");
    ensure!(
        right.status == "COMPLETED" && right.app == "right",
        "{right:?}"
    );
    ensure!(left.backup_id != right.backup_id);
    for b in [&left, &right] {
        ensure!(sys.backup_dir(&b.app, &b.backup_id).is_dir(), "{b:?}");
    }
    ensure!(sys.list(&[])?.len() == 2);
    ensure!(sys.partials()?.is_empty());
    Ok(())
}

#[test]
fn a_backup_being_restored_is_not_deleted_under_it() -> Result<()> {
    let sys = System::start()?;
    let app = App::build(&sys.root, "media", 16, &sys.scratch("fixtures")?)?;
    app.big_data(300)?;
    let original = Snapshot::of(&app.dir)?;
    let created = sys.create("media")?;
    let id = created.backup_id.clone();

    // Into another app: the per-app lock is the target's, so it never kept
    // the source backup from being deleted.
    let apps = sys.root.join("apps");
    let mut restore = sys.hop3_spawn([
        "--json",
        "backup:restore",
        &id,
        "--target-app",
        "media-copy",
    ])?;
    wait_until(BIG_OPERATION, "the restore to stage its first MiB", || {
        let staged = list_dir(&apps)?
            .into_iter()
            .filter(|n| n.starts_with(".media-copy"))
            .map(|n| du(&apps.join(n)))
            .max()
            .unwrap_or(0);
        if staged >= 8 * MIB {
            return Ok(Some(()));
        }
        if !restore.is_running()? {
            bail!("the restore ended before 8 MiB were staged");
        }
        Ok(None)
    })?;
    let refused = sys.hop3(["backup:delete", &id, "--yes"]);
    let refused_json = sys.hop3(["--json", "backup:delete", &id, "--yes"]);
    // Another reader at the same time is welcome.
    let info = sys.info(&id)?;
    ensure!(
        restore.is_running()?,
        "the restore finished before the deletes were refused: inconclusive, make the app bigger"
    );
    let refused = refused.failure(&[&format!(
        "Backup {id} is being restored; wait for it to finish"
    )])?;
    ensure!(
        refused.status.code() == Some(4),
        "a refused delete exits 4 (failed precondition)\n{}",
        refused.report()
    );
    let refused_json = refused_json.failure(&["being restored"])?;
    ensure!(
        refused_json.json_error().map(|(code, _)| code).as_deref() == Some("FAILED_PRECONDITION"),
        "{}",
        refused_json.report()
    );
    ensure!(info.all_valid, "verified during the restore: {info:?}");

    let restored: RestoreResult = restore.wait(BIG_OPERATION)?.success()?.json()?;
    ensure!(restored.app == "media-copy", "{restored:?}");
    let copy = Snapshot::of(&apps.join("media-copy"))?;
    // A clone gets a hostname of its own; the rest is the backup's.
    let expected = Snapshot {
        hostname: copy.hostname.clone(),
        ..original.clone()
    };
    expected.assert_same(&copy, "the clone restored while deletes were refused")?;
    original.assert_same(&Snapshot::of(&app.dir)?, "the source app")?;
    ensure!(
        sys.backup_dir("media", &id).is_dir(),
        "the backup's directory is gone"
    );
    ensure!(
        sys.info(&id)?.all_valid,
        "the backup does not verify after the refused deletes"
    );

    // Once the restore is over, the delete goes through.
    sys.hop3(["--json", "backup:delete", &id, "--yes"])
        .success()
        .context("deleting after the restore")?;
    ensure!(sys.list(&["media"])?.is_empty());
    ensure!(
        sys.store_entries("media")?.is_empty(),
        "{:?}",
        sys.store_entries("media")?
    );
    Ok(())
}
