//! Scheduled backups: a schedule with a seconds field fires and its policy
//! prunes; a controller killed across slots runs the newest once on
//! restart and records the older one skipped; a failing run is retried
//! and every attempt recorded.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hop3_tests::System;
use hop3_tests::fixtures::App;
use hop3_tests::harness::{free_port, wait_until};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `backup:schedules --json APP`: its one schedule.
fn schedule(sys: &System, app: &str) -> Result<Value> {
    let all: Vec<Value> = sys
        .hop3(["--json", "backup:schedules", app])
        .success()?
        .json()?;
    all.into_iter()
        .next()
        .with_context(|| format!("no schedule of {app}"))
}

/// The recorded runs of `app`'s schedule, newest first.
fn runs(sys: &System, app: &str) -> Result<Vec<Value>> {
    Ok(schedule(sys, app)?["recent_runs"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn parse(t: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(&t.replacen(' ', "T", 1), &Rfc3339)
        .with_context(|| format!("{t:?} is not a time"))
}

#[test]
fn a_schedule_with_seconds_fires_and_its_policy_prunes() -> Result<()> {
    let sys = System::builder()
        .controller_args(["--schedule-spread", "0s"])
        .start()?;
    let scratch = sys.scratch("fixtures")?;
    App::build(&sys.root, "alpha", 3, &scratch)?;

    // A typo shows at once: the expression is refused before anything is set.
    let bad = sys
        .hop3(["backup:schedule", "alpha", "--cron", "*/3 * * *"])
        .failure(&["cron expression \"*/3 * * *\""])?;
    ensure!(bad.status.code() == Some(2), "{}", bad.report());
    sys.hop3(["backup:schedule", "nobody", "--cron", "@daily"])
        .failure(&["Application not found: nobody"])?;

    let out = sys
        .hop3([
            "backup:schedule",
            "alpha",
            "--cron",
            "*/3 * * * * *",
            "--keep-last",
            "2",
        ])
        .success()?;
    let next: Vec<OffsetDateTime> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .map(parse)
        .collect::<Result<_>>()?;
    ensure!(next.len() == 5, "not 5 next runs\n{}", out.report());
    ensure!(
        next.windows(2)
            .all(|w| w[1] - w[0] == time::Duration::seconds(3)),
        "next runs not 3 s apart: {next:?}"
    );
    ensure!(out.stdout.contains("keep 2 last"), "{}", out.report());
    // The store holds the schedule too, for a rebuilt catalog.
    let stored = std::fs::read_to_string(sys.store.join("schedules/alpha.json"))?;
    ensure!(stored.contains("*/3 * * * * *"), "{stored}");

    let seen = wait_until(Duration::from_secs(90), "four scheduled backups", || {
        let runs = runs(&sys, "alpha")?;
        let ok: Vec<String> = runs
            .iter()
            .filter(|r| r["state"] == "SUCCEEDED")
            .filter_map(|r| {
                r["backup_ids"]
                    .as_array()?
                    .last()?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        Ok((ok.len() >= 4).then_some(ok))
    })?;
    // The schedule's policy, by name, for a prune by hand.
    let dry = sys
        .hop3([
            "backup:prune",
            "alpha",
            "--schedule",
            "default",
            "--dry-run",
        ])
        .success()?;
    ensure!(
        dry.stdout.contains("Policy: that of schedule default")
            && dry.stdout.contains("last backup"),
        "{}",
        dry.report()
    );
    sys.hop3(["backup:prune", "alpha", "--schedule", "hourly"])
        .failure(&["Schedule not found: hourly of app alpha"])?;
    let info = schedule(&sys, "alpha")?;
    ensure!(
        info["state"] == "ok" || info["state"] == "running",
        "{info:#}"
    );
    sys.hop3(["backup:unschedule", "alpha"]).success()?;
    ensure!(!sys.store.join("schedules/alpha.json").exists());
    sys.hop3(["backup:unschedule", "alpha"])
        .failure(&["Schedule not found: default of app alpha"])?;

    // Once the last run and its policy are done: the two newest remain.
    let kept = wait_until(Duration::from_secs(30), "the policy applied", || {
        let list = sys.list(&["alpha"])?;
        let done = list.iter().all(|b| b.status == "COMPLETED");
        Ok((done && list.len() == 2).then_some(list))
    })?;
    let mut seen = seen;
    seen.sort();
    ensure!(
        kept[1].backup_id >= seen[seen.len() - 2],
        "kept {kept:?}, but {seen:?} were made"
    );
    Ok(())
}

#[test]
fn missed_slots_run_once_after_a_restart_and_failures_are_retried() -> Result<()> {
    let mut sys = System::builder()
        .controller_args(["--schedule-spread", "0s", "--schedule-retry-backoff", "1s"])
        .start()?;
    let scratch = sys.scratch("fixtures")?;
    App::build(&sys.root, "beta", 4, &scratch)?;
    let delta = App::build(&sys.root, "delta", 5, &scratch)?;
    // delta's database is down: every backup of it fails.
    let url = format!("postgresql://app:s3cr3t-pw@127.0.0.1:{}/db", free_port());
    delta.set_services(&[("postgres", "db", &url)])?;

    // Two slots a few seconds ahead, in one minute (UTC).
    let mut first = OffsetDateTime::now_utc() + time::Duration::seconds(10);
    if first.second() > 50 {
        first += time::Duration::seconds(i64::from(62 - first.second()));
    }
    let second = first + time::Duration::seconds(2);
    let cron = format!(
        "{},{} {} {} * * *",
        first.second(),
        second.second(),
        first.minute(),
        first.hour()
    );
    sys.hop3(["backup:schedule", "beta", "--cron", &cron])
        .success()?;
    let single = format!(
        "{} {} {} * * *",
        second.second(),
        second.minute(),
        second.hour()
    );
    sys.hop3(["backup:schedule", "delta", "--cron", &single])
        .success()?;

    // Killed before both slots, started again after them.
    sys.controller().kill();
    wait_until(Duration::from_secs(30), "both slots past", || {
        Ok((OffsetDateTime::now_utc() > second + time::Duration::seconds(1)).then_some(()))
    })?;
    sys.restart_controller()?;

    let beta = wait_until(Duration::from_secs(60), "beta's late run", || {
        let runs = runs(&sys, "beta")?;
        Ok(runs
            .first()
            .is_some_and(|r| r["state"] == "SUCCEEDED")
            .then_some(runs))
    })?;
    ensure!(beta.len() == 2, "{beta:#?}");
    ensure!(parse(beta[0]["slot"].as_str().unwrap_or(""))? == second.replace_nanosecond(0)?);
    ensure!(
        beta[1]["state"] == "SKIPPED"
            && beta[1]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("missed: the controller was not running")),
        "the older missed slot: {:#}",
        beta[1]
    );
    ensure!(sys.list(&["beta"])?.len() == 1);

    // delta: three attempts, each a FAILED backup, the slot FAILED.
    let failed = wait_until(Duration::from_secs(60), "delta's attempts", || {
        let runs = runs(&sys, "delta")?;
        Ok(runs
            .first()
            .is_some_and(|r| r["state"] == "FAILED")
            .then_some(runs))
    })?;
    let run = &failed[0];
    ensure!(run["attempts"] == 3, "{run:#}");
    let reason = run["reason"].as_str().unwrap_or_default();
    ensure!(reason.starts_with("attempt 3: "), "{reason}");
    ensure!(!reason.contains("s3cr3t-pw"), "the password is in {reason}");
    let attempts: Vec<&str> = run["backup_ids"]
        .as_array()
        .context("no backup IDs")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let listed = sys.list(&["delta"])?;
    ensure!(
        attempts.len() == 3 && listed.len() == 3 && listed.iter().all(|b| b.status == "FAILED"),
        "attempts {attempts:?}, listed {listed:?}"
    );
    let human = sys.hop3(["backup:schedules"]).success()?;
    ensure!(
        human.stdout.contains("failing") && human.stdout.contains("delta/default: attempt 3: "),
        "{}",
        human.report()
    );

    // Another restart runs nothing again.
    sys.restart_controller()?;
    std::thread::sleep(Duration::from_secs(9));
    ensure!(runs(&sys, "beta")?.len() == 2);
    ensure!(sys.list(&["beta"])?.len() == 1);
    ensure!(sys.list(&["delta"])?.len() == 3);
    Ok(())
}
