//! Retention planning over 100,000 backups of 1,000 apps (a year of
//! roughly daily backups each, some failed), beside the baseline every
//! planner pays: sorting the same rows by app and time. Prints the median
//! of 7 runs of each and the process's peak RSS.
//!
//!   cargo bench -p hop3-controller --bench retention

use std::time::{Duration, Instant};

use hop3_controller::catalog::{BackupRow, BackupStatus};
use hop3_controller::retention::{Policy, plan};
use hop3_proto::BackupId;
use time::macros::datetime;

fn rows(n: usize, apps: usize) -> Vec<BackupRow> {
    let start = datetime!(2025-01-01 0:00 UTC);
    (0..n)
        .map(|i| {
            let app = i % apps;
            let nth = (i / apps) as i64;
            // Daily, at an hour of the app's own, some days twice.
            let at = start
                + time::Duration::days(nth * 365 / (n / apps) as i64)
                + time::Duration::minutes((app as i64 * 37) % 1440 + (i as i64 % 3) * 5);
            let b = (i as u32).to_be_bytes();
            BackupRow {
                backup_id: BackupId::at(at, [b[1], b[2], b[3]]),
                app: format!("app-{app:04}"),
                host: "h".into(),
                status: if i % 29 == 0 {
                    BackupStatus::Failed
                } else {
                    BackupStatus::Completed
                },
                created_at: at,
                total_size: 1 << 20,
                services: Vec::new(),
                error: None,
                pinned: false,
            }
        })
        .collect()
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let rows = rows(100_000, 1_000);
    let before = peak_rss_mib();
    let policy = Policy {
        keep_last: Some(3),
        keep_daily: Some(7),
        keep_weekly: Some(4),
        keep_monthly: Some(12),
        keep_within: Some(Duration::from_secs(2 * 24 * 3600)),
        ..Default::default()
    };
    let tz: chrono_tz::Tz = "Europe/Paris".parse().expect("a known zone");
    let mut sort_runs = Vec::new();
    let mut plan_runs = Vec::new();
    let mut removed = 0;
    for _ in 0..7 {
        let mut copy: Vec<&BackupRow> = rows.iter().collect();
        let t = Instant::now();
        copy.sort_by(|a, b| (&a.app, a.created_at).cmp(&(&b.app, b.created_at)));
        sort_runs.push(t.elapsed());
        let t = Instant::now();
        let decisions = plan(&policy, tz, &rows);
        plan_runs.push(t.elapsed());
        removed = decisions.iter().filter(|d| !d.keep).count();
    }
    let (sort, planned) = (median(sort_runs), median(plan_runs));
    println!("=== retention planning: 100,000 backups of 1,000 apps, medians of 7 runs ===");
    println!(
        "sort by app and time (baseline)  {:>8.1} ms",
        sort.as_secs_f64() * 1e3
    );
    println!(
        "plan (last 3, daily 7, weekly 4, monthly 12, within 2d, Europe/Paris) {:>8.1} ms  = {:.1}x the sort; {removed} to remove",
        planned.as_secs_f64() * 1e3,
        planned.as_secs_f64() / sort.as_secs_f64()
    );
    println!(
        "peak RSS: {before:.1} MiB with the rows loaded, {:.1} MiB after planning",
        peak_rss_mib()
    );
}
