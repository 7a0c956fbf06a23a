//! Retention: `backup:prune` with a policy, `backup:pin`, and a removal the
//! store refuses, left DELETE_PENDING and finished by a restart.

use anyhow::{Context, Result, ensure};
use hop3_tests::System;
use hop3_tests::cli::BackupSummary;
use hop3_tests::fixtures::App;
use hop3_tests::harness::next_second;
use serde_json::Value;

fn ids(list: &[BackupSummary]) -> Vec<&str> {
    list.iter().map(|b| b.backup_id.as_str()).collect()
}

/// `backup:prune --json`'s decisions, as (backup ID, action).
fn decisions(doc: &Value) -> Result<Vec<(String, String)>> {
    doc["decisions"]
        .as_array()
        .context("no decisions array")?
        .iter()
        .map(|d| {
            Ok((
                d["backup"]["backup_id"]
                    .as_str()
                    .context("no ID")?
                    .to_owned(),
                d["action"].as_str().context("no action")?.to_owned(),
            ))
        })
        .collect()
}

#[test]
fn prune_keeps_what_the_policy_and_pins_say_and_finishes_refused_removals() -> Result<()> {
    let mut sys = System::start()?;
    let scratch = sys.scratch("fixtures")?;
    App::build(&sys.root, "alpha", 3, &scratch)?;
    App::build(&sys.root, "beta", 3, &scratch)?;
    let beta = sys.create("beta")?;
    // Four backups of alpha, a second apart: a1 oldest .. a4 newest.
    let mut alpha = Vec::new();
    for _ in 0..4 {
        let b = sys.create("alpha")?;
        next_second(&b.created_at)?;
        alpha.push(b.backup_id);
    }
    let [a1, a2, a3, a4] = [&alpha[0], &alpha[1], &alpha[2], &alpha[3]];

    // Pinned: shown in listings, never deleted until unpinned.
    sys.hop3(["backup:pin", a1]).success()?;
    let listed = sys.list(&["alpha"])?;
    ensure!(
        listed.iter().all(|b| b.pinned == (b.backup_id == *a1)),
        "{listed:?}"
    );
    let refused = sys
        .hop3(["backup:delete", a1, "--yes"])
        .failure(&[&format!(
            "Backup {a1} is pinned: unpin it first (hop3 backup:unpin {a1})"
        )])?;
    ensure!(refused.status.code() == Some(4), "{}", refused.report());

    // A dry run says what and why, and removes nothing.
    let dry = sys
        .hop3(["backup:prune", "alpha", "--keep-last", "2", "--dry-run"])
        .success()?;
    for line in [
        format!("keep    {a4}"),
        format!("keep    {a3}"),
        format!("remove  {a2}"),
        format!("keep    {a1}"),
        "alpha: 4 backups, keep 3, remove 1".to_owned(),
        "Dry run: 1 backup(s)".to_owned(),
        "pinned".to_owned(),
        "last backup, newest successful backup".to_owned(),
        "no rule keeps it".to_owned(),
    ] {
        ensure!(
            dry.stdout.contains(&line),
            "{line:?} not in\n{}",
            dry.report()
        );
    }
    ensure!(
        sys.backup_dir("alpha", a2).is_dir(),
        "a dry run removed {a2}"
    );
    ensure!(ids(&sys.list(&["alpha"])?) == [a4, a3, a2, a1]);

    // For real: a2 goes, store first; beta, another app, is untouched.
    let done: Value = sys
        .hop3(["--json", "backup:prune", "alpha", "--keep-last", "2"])
        .success()?
        .json()?;
    let judged = decisions(&done)?;
    ensure!(
        judged
            .iter()
            .map(|(id, action)| (id.as_str(), action.as_str()))
            .collect::<Vec<_>>()
            == [
                (a4.as_str(), "keep"),
                (a3.as_str(), "keep"),
                (a2.as_str(), "remove"),
                (a1.as_str(), "keep")
            ],
        "{done:#}"
    );
    ensure!(done["removed"] == 1 && done["failed"] == 0, "{done:#}");
    ensure!(
        !sys.backup_dir("alpha", a2).exists(),
        "{a2} is still in the store"
    );
    ensure!(ids(&sys.list(&["alpha"])?) == [a4, a3, a1]);
    ensure!(ids(&sys.list(&["beta"])?) == [beta.backup_id.as_str()]);

    // Mistakes are named before anything is judged.
    for (args, needle) in [
        (vec!["--keep-last", "0"], "would keep nothing"),
        (vec!["--keep-within", "6m"], "minutes or months"),
        (vec!["--max-total-size", "lots"], "50GiB"),
    ] {
        // Refused by the argument parser, before any call.
        let out = sys.hop3(
            ["backup:prune", "alpha"]
                .into_iter()
                .chain(args.iter().copied()),
        );
        ensure!(
            out.status.code() == Some(2) && out.stderr.contains(needle),
            "{}",
            out.report()
        );
    }
    let out = sys
        .hop3([
            "backup:prune",
            "alpha",
            "--keep-daily",
            "1",
            "--tz",
            "Mars/Olympus",
        ])
        .failure(&["unknown time zone \"Mars/Olympus\""])?;
    ensure!(out.status.code() == Some(2), "{}", out.report());
    let out = sys
        .hop3(["backup:prune", "gamma", "--keep-last", "1"])
        .failure(&["No backups of app gamma"])?;
    ensure!(out.status.code() == Some(3), "{}", out.report());

    // The store refuses to delete a3 (its .deleting name is taken by a
    // directory that is not empty, so the rename fails, even for root).
    let blocker = sys.store.join("apps/alpha").join(format!("{a3}.deleting"));
    std::fs::create_dir_all(blocker.join("in-the-way"))?;
    let out = sys
        .hop3(["--json", "backup:prune", "alpha", "--keep-last", "1"])
        .failure(&["1 backup(s) could not be removed"])?;
    let doc: Value = out.json()?;
    ensure!(doc["failed"] == 1 && doc["removed"] == 0, "{doc:#}");
    let listed = sys.list(&["alpha"])?;
    let pending = listed
        .iter()
        .find(|b| b.backup_id == *a3)
        .context("a3 left the list")?;
    ensure!(pending.status == "DELETE_PENDING", "{listed:?}");
    ensure!(
        pending.error().starts_with("deletion failed: "),
        "{pending:?}"
    );
    ensure!(
        sys.backup_dir("alpha", a3).join("metadata.json").is_file(),
        "a3's files went although its removal failed"
    );
    sys.hop3(["backup:restore", a3]).failure(&[&format!(
        "Backup {a3} is DELETE_PENDING and cannot be restored"
    )])?;
    let pending_only = sys.list(&["alpha", "--status", "DELETE_PENDING"])?;
    ensure!(ids(&pending_only) == [a3], "{pending_only:?}");

    // A restart clears the store's leftovers and finishes the removal.
    sys.restart_controller()?;
    ensure!(ids(&sys.list(&["alpha"])?) == [a4, a1]);
    ensure!(!sys.backup_dir("alpha", a3).exists());
    ensure!(!blocker.exists());

    // Unpinned, a1 goes like any other; the newest always stays.
    sys.hop3(["backup:unpin", a1]).success()?;
    sys.hop3(["backup:prune", "alpha", "--keep-within", "1s"])
        .success()?;
    ensure!(ids(&sys.list(&["alpha"])?) == [a4]);
    ensure!(sys.store_entries("alpha")? == std::slice::from_ref(a4));
    Ok(())
}
