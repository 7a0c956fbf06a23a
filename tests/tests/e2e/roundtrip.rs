//! Scenarios 1 and 2: a backup brings an app back exactly, in place or
//! under a new name.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hop3_proto::BackupId;
use hop3_tests::System;
use hop3_tests::cli::{self, BackupSummary};
use hop3_tests::fixtures::{self, App};
use hop3_tests::harness::{LOCAL_HOST_ID, wait_for_entries};
use hop3_tests::snapshot::{self, Snapshot};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long leftovers (the replaced tree) may outlive a restore.
const SETTLE: Duration = Duration::from_secs(30);

#[test]
fn restore_brings_the_app_back_and_is_idempotent() -> Result<()> {
    let sys = System::builder().hooks().start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "shop", 1, &scratch)?;
    let original = Snapshot::of(&app.dir)?;

    let out = sys.hop3(["--json", "backup:create", "shop"]).success()?;
    cli::require_keys(&out.json()?, cli::BACKUP_KEYS)?;
    let created: BackupSummary = out.json()?;
    let id = created.backup_id.clone();
    id.parse::<BackupId>()
        .with_context(|| format!("create returned a malformed ID: {created:?}"))?;
    ensure!(created.app == "shop", "{created:?}");
    ensure!(created.host == LOCAL_HOST_ID, "{created:?}");
    ensure!(created.status == "COMPLETED", "{created:?}");
    ensure!(created.error().is_empty(), "{created:?}");
    ensure!(created.services.is_empty(), "{created:?}");
    ensure!(created.total_size > 0, "{created:?}");
    ensure!(
        Path::new(&created.location) == sys.backup_dir("shop", &id),
        "location {:?} is not the backup's directory {}",
        created.location,
        sys.backup_dir("shop", &id).display()
    );
    let created_at = OffsetDateTime::parse(&created.created_at, &Rfc3339)
        .with_context(|| format!("created_at is not RFC 3339: {created:?}"))?;
    let age = OffsetDateTime::now_utc() - created_at;
    ensure!(
        age >= -time::Duration::seconds(2) && age < time::Duration::minutes(5),
        "created_at {} is not about now",
        created.created_at
    );
    ensure!(
        sys.hook_calls()?.is_empty(),
        "a backup stopped or started the app: {:?}",
        sys.hook_calls()?
    );
    original.assert_same(&Snapshot::of(&app.dir)?, "the app after its backup")?;

    // A bad deploy: every part of the app changes.
    app.mutate(&scratch)?;
    let mutated = Snapshot::of(&app.dir)?;
    ensure!(mutated.refs != original.refs && mutated.commits != original.commits);
    ensure!(mutated.src != original.src && mutated.data != original.data);
    ensure!(mutated.env != original.env && mutated.port != original.port);
    ensure!(mutated.hostname != original.hostname);

    for round in 1..=2 {
        let restored = sys.restore(&id, None)?;
        ensure!(restored.backup_id == id, "{restored:?}");
        ensure!(restored.app == "shop", "{restored:?}");
        ensure!(restored.host == LOCAL_HOST_ID, "{restored:?}");
        ensure!(
            Some(restored.hostname.as_str()) == original.hostname.as_deref(),
            "{restored:?}"
        );
        ensure!(
            Some(u64::from(restored.port)) == original.port,
            "{restored:?}"
        );

        original.assert_same(
            &Snapshot::of(&app.dir)?,
            &format!("the app after restore #{round}"),
        )?;
        snapshot::fsck(&app.git_dir())?;
        // The replaced tree may be removed in the background; not for long.
        wait_for_entries(&sys.root.join("apps"), &["shop"], SETTLE)?;

        let mut expected = Vec::new();
        for _ in 0..round {
            expected.extend(["stop shop", "start shop"]);
        }
        ensure!(
            sys.hook_calls()? == expected,
            "after restore #{round}, hooks ran {:?}, expected {expected:?}",
            sys.hook_calls()?
        );
    }
    Ok(())
}

#[test]
fn restore_to_another_name_makes_an_independent_clone() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "blog", 2, &scratch)?;
    let original = Snapshot::of(&app.dir)?;
    let id = sys.create("blog")?.backup_id;

    let restored = sys.restore(&id, Some("blog-staging"))?;
    wait_for_entries(&sys.root.join("apps"), &["blog", "blog-staging"], SETTLE)?;
    ensure!(restored.app == "blog-staging", "{restored:?}");
    ensure!(restored.backup_id == id, "{restored:?}");
    let clone = App::existing(&sys.root, "blog-staging");
    original
        .as_clone()
        .assert_same(&Snapshot::of(&clone.dir)?, "the clone")?;
    snapshot::fsck(&clone.git_dir())?;
    original.assert_same(&Snapshot::of(&app.dir)?, "the source after cloning")?;

    // Change the clone, files in place (same inode: a hard link between the
    // two would show), its environment and its history.
    fixtures::overwrite_in_place(&clone.data_dir().join("db/app.sqlite"), 0, b"staging")?;
    fixtures::overwrite_in_place(&clone.src_dir().join("README.md"), 0, b"# staging")?;
    let mut env = original.env.clone();
    env.insert("DEBUG".into(), "true".into());
    clone.write_env(&env)?;
    clone.commit_to(&scratch, "main", &[("STAGING", b"yes\n")], "Staging only")?;
    ensure!(
        Snapshot::of(&clone.dir)? != original,
        "changing the clone changed nothing"
    );
    original.assert_same(
        &Snapshot::of(&app.dir)?,
        "the source after changing the clone",
    )?;
    snapshot::fsck(&app.git_dir())?;

    let listed = sys.list(&["blog"])?;
    ensure!(
        listed.len() == 1 && listed[0].backup_id == id,
        "restoring changed the catalog: {listed:?}"
    );
    Ok(())
}

/// Format 1.0 on request: the same round trip through the guide's gzip
/// archives, which `tar -tzf` reads by hand; 1.1's names are not written.
#[test]
fn format_1_0_round_trips_through_gzip_archives() -> Result<()> {
    let sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "zshop", 3, &scratch)?;
    let original = Snapshot::of(&app.dir)?;
    let created: BackupSummary = sys
        .hop3(["--json", "backup:create", "zshop", "--format", "1.0"])
        .success()?
        .json()?;
    let dir = sys.backup_dir("zshop", &created.backup_id);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("metadata.json"))?)?;
    ensure!(manifest["format_version"] == "1.0", "{manifest}");
    for f in ["source.tar.gz", "data.tar.gz"] {
        ensure!(dir.join(f).exists(), "{f} missing");
        ensure!(
            !manifest["checksums"][f].is_null(),
            "{f} has no checksum: {manifest}"
        );
    }
    ensure!(!dir.join("source.tar.zst").exists() && !dir.join("data.tar.zst").exists());
    let listing = fixtures::run({
        let mut c = std::process::Command::new("tar");
        c.arg("-tzf").arg(dir.join("data.tar.gz"));
        c
    })?;
    ensure!(listing.lines().any(|l| l.starts_with("data/")), "{listing}");
    let info = sys
        .hop3(["--json", "backup:info", &created.backup_id])
        .success()?;
    let info: serde_json::Value = info.json()?;
    ensure!(
        info["all_valid"] == true && info["format_version"] == "1.0",
        "{info}"
    );

    app.mutate(&scratch)?;
    sys.hop3(["backup:restore", &created.backup_id]).success()?;
    original.assert_same(&Snapshot::of(&app.dir)?, "the app restored from format 1.0")?;
    snapshot::fsck(&app.git_dir())?;

    let bad = sys.hop3(["backup:create", "zshop", "--format", "2.0"]);
    ensure!(!bad.status.success(), "format 2.0 was accepted");
    Ok(())
}

/// Restores whose stop or start command fails: a failing stop changes
/// nothing; a restored app that will not start is swapped back out, so the
/// app is as it was before the restore, and the error says which command.
#[test]
fn a_failing_stop_or_start_command_leaves_the_app_as_it_was() -> Result<()> {
    let flags = tempfile::tempdir()?;
    let log = flags.path().join("hooks.log");
    let flag = |what: &str| flags.path().join(format!("{what}.fails"));
    let hook = |what: &str| {
        format!(
            "printf '{what} %s\\n' \"$HOP3_APP\" >> '{}'; [ ! -e '{}' ]",
            log.display(),
            flag(what).display()
        )
    };
    let (stop, start) = (hook("stop"), hook("start"));
    let mut sys = System::builder()
        .controller_args(["--stop-cmd", stop.as_str(), "--start-cmd", start.as_str()])
        .start()?;
    sys.controller().allow_errors();
    let scratch = sys.scratch("fixtures")?;
    let app = App::build(&sys.root, "hooked", 5, &scratch)?;
    let id = sys.create("hooked")?.backup_id;
    app.mutate(&scratch)?;
    let before = Snapshot::of(&app.dir)?;
    let apps = sys.root.join("apps");

    std::fs::write(flag("stop"), "")?;
    sys.hop3(["backup:restore", &id])
        .failure(&["stop command failed"])?;
    before.assert_same(&Snapshot::of(&app.dir)?, "the app after a failed stop")?;
    wait_for_entries(&apps, &["hooked"], SETTLE)?;
    std::fs::remove_file(flag("stop"))?;

    std::fs::write(flag("start"), "")?;
    sys.hop3(["backup:restore", &id])
        .failure(&["start command failed"])?;
    before.assert_same(&Snapshot::of(&app.dir)?, "the app after a failed start")?;
    wait_for_entries(&apps, &["hooked"], SETTLE)?;
    let calls = std::fs::read_to_string(&log)?;
    // stop (refused), then stop, start (fails on the restored tree), start
    // again on the old one after the swap back.
    ensure!(
        calls == "stop hooked\nstop hooked\nstart hooked\nstart hooked\n",
        "hook calls:\n{calls}"
    );
    std::fs::remove_file(flag("start"))?;

    // With both commands working again the same backup restores.
    sys.hop3(["backup:restore", &id]).success()?;
    Ok(())
}
