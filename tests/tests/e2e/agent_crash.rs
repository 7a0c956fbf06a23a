//! Scenario 7: an agent dies in the middle of a backup.

use std::time::Duration;

use anyhow::{Result, ensure};
use hop3_tests::System;
use hop3_tests::cli::BackupSummary;
use hop3_tests::fixtures::{App, MIB};
use hop3_tests::harness::{partial_id, wait_until};

#[test]
fn an_agent_killed_mid_backup_leaves_a_failed_record_and_no_files() -> Result<()> {
    let mut sys = System::builder().local_agent(false).start()?;
    // The app is on the host before its agent starts, as after a reboot.
    let root = sys.agent_root("host-a")?;
    let app = App::build(&root, "media", 16, &sys.scratch("fixtures")?)?;
    app.big_data(300)?;
    sys.start_agent("host-a")?;

    let mut create = sys.hop3_spawn(["--json", "backup:create", "media"])?;
    let id = partial_id(&sys.wait_partial(&mut create, 4 * MIB, Duration::from_secs(300))?);
    sys.agent("host-a").process.kill();
    // The controller rightly reports the lost backup at ERROR.
    sys.controller().allow_errors();

    create.wait(Duration::from_secs(60))?.failure(&[])?;
    let failed: BackupSummary = wait_until(
        Duration::from_secs(30),
        "the catalog to mark the backup FAILED",
        || {
            let listed = sys.list(&["media"])?;
            Ok(listed
                .into_iter()
                .find(|b| b.backup_id == id && b.status == "FAILED"))
        },
    )?;
    ensure!(
        !failed.error().is_empty(),
        "FAILED without a reason: {failed:?}"
    );
    wait_until(
        Duration::from_secs(30),
        "the store to be cleaned up",
        || Ok(sys.store_entries("media")?.is_empty().then_some(())),
    )?;

    // The host comes back; backups work again.
    sys.agent("host-a").process.restart()?;
    let created = sys.create("media")?;
    ensure!(created.backup_id != id);
    let listed = sys.list(&["media"])?;
    // Both may carry the same second, so compare without order.
    let mut statuses: Vec<(&str, &str)> = listed
        .iter()
        .map(|b| (b.backup_id.as_str(), b.status.as_str()))
        .collect();
    statuses.sort();
    let mut expected = vec![
        (created.backup_id.as_str(), "COMPLETED"),
        (id.as_str(), "FAILED"),
    ];
    expected.sort();
    ensure!(statuses == expected, "{listed:?}");
    let entries = sys.store_entries("media")?;
    ensure!(entries == [created.backup_id.as_str()], "{entries:?}");
    Ok(())
}
