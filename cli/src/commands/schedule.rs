//! `backup:schedule`, `backup:schedules` and `backup:unschedule`.

use hop3_proto::v1::{RetentionPolicy, ScheduleInfo};
use serde::Serialize;

use crate::args::{RetentionFlags, ScheduleSpec};
use crate::client::ControllerClient;
use crate::commands::prune::describe;
use crate::error::CliError;
use crate::output::{Output, render_table};

/// A schedule in `--json` documents.
#[derive(Debug, Serialize)]
struct ScheduleView {
    app: String,
    name: String,
    cron: String,
    time_zone: String,
    no_services: bool,
    host: Option<String>,
    /// Cut to its host.
    ping_url: Option<String>,
    retention: RetentionView,
    /// The next 5 starts, RFC 3339 in the schedule's zone.
    next_runs: Vec<String>,
    spread_seconds: u64,
    expected_interval_seconds: u64,
    /// `ok`, `running`, `failing`, `skipped`, `overdue` or `new`.
    state: String,
    last_run: Option<LastRunView>,
    last_success: Option<LastSuccessView>,
    /// The newest recorded slots (at most 10), newest first.
    recent_runs: Vec<RunView>,
}

#[derive(Debug, Serialize)]
struct RunView {
    slot: String,
    state: String,
    attempts: u32,
    backup_ids: Vec<String>,
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct RetentionView {
    keep_last: Option<u32>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    keep_yearly: Option<u32>,
    keep_within_seconds: Option<u64>,
    max_total_size: Option<u64>,
}

#[derive(Debug, Serialize)]
struct LastRunView {
    slot: String,
    state: String,
    attempts: u32,
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct LastSuccessView {
    slot: String,
    backup_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct UnscheduledView {
    unscheduled: String,
    app: String,
}

fn present(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn view(info: ScheduleInfo) -> ScheduleView {
    let s = info.schedule.unwrap_or_default();
    let r = s.retention.unwrap_or_default();
    ScheduleView {
        app: s.app,
        name: s.name,
        cron: s.cron,
        time_zone: s.time_zone,
        no_services: s.no_services,
        host: present(s.host),
        ping_url: present(s.ping_url),
        retention: RetentionView {
            keep_last: r.keep_last,
            keep_hourly: r.keep_hourly,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            keep_yearly: r.keep_yearly,
            keep_within_seconds: r.keep_within_seconds,
            max_total_size: r.max_total_size,
        },
        next_runs: info.next_runs,
        spread_seconds: info.spread_seconds,
        expected_interval_seconds: info.expected_interval_seconds,
        state: info.state,
        last_run: present(info.last_slot).map(|slot| LastRunView {
            slot,
            state: info.last_state,
            attempts: info.last_attempts,
            reason: present(info.last_reason),
        }),
        last_success: present(info.last_success).map(|slot| LastSuccessView {
            slot,
            backup_id: present(info.last_backup_id),
        }),
        recent_runs: info
            .recent_runs
            .into_iter()
            .map(|r| RunView {
                slot: r.slot,
                state: r.state,
                attempts: r.attempts,
                backup_ids: r.backup_ids,
                reason: present(r.reason),
            })
            .collect(),
    }
}

/// `backup:schedule`: sets the schedule and echoes its next runs, so that
/// a typo in the expression shows at once.
pub async fn set(
    controller: &mut ControllerClient,
    out: Output,
    spec: &ScheduleSpec,
) -> Result<(), CliError> {
    let info = controller.set_schedule(spec.to_wire()).await?;
    if out.is_json() {
        out.json(&view(info))
    } else {
        out.text(&render_set(&info))
    }
}

/// `backup:schedules [APP]`.
pub async fn list(
    controller: &mut ControllerClient,
    out: Output,
    app: Option<&str>,
) -> Result<(), CliError> {
    let schedules = controller.list_schedules(app).await?;
    if out.is_json() {
        let views: Vec<ScheduleView> = schedules.into_iter().map(view).collect();
        out.json(&views)
    } else {
        out.text(&render_list(&schedules))
    }
}

/// `backup:unschedule APP [--name NAME]`.
pub async fn delete(
    controller: &mut ControllerClient,
    out: Output,
    app: &str,
    name: &str,
) -> Result<(), CliError> {
    controller.delete_schedule(app, name).await?;
    if out.is_json() {
        out.json(&UnscheduledView {
            unscheduled: name.to_owned(),
            app: app.to_owned(),
        })
    } else {
        out.text(&format!(
            "✓ Schedule {name} of {app} removed (its backups stay)\n"
        ))
    }
}

/// An RFC 3339 time as a line shows it: `2026-12-04 03:02:14+01:00`.
fn when(t: &str) -> String {
    if t.is_empty() {
        "-".to_owned()
    } else {
        t.replacen('T', " ", 1)
    }
}

/// The policy of the wire in words.
fn policy_words(r: &RetentionPolicy) -> String {
    describe(&RetentionFlags::from_wire(r))
}

/// What `backup:schedule` prints.
pub fn render_set(info: &ScheduleInfo) -> String {
    let s = info.schedule.clone().unwrap_or_default();
    let mut text = format!(
        "✓ Schedule {} of {}: {} ({}), {}\n  Retention after each success: {}\n",
        s.name,
        s.app,
        s.cron,
        s.time_zone,
        if s.no_services {
            "without services"
        } else {
            "with services"
        },
        policy_words(&s.retention.unwrap_or_default()),
    );
    if info.spread_seconds > 0 {
        text.push_str(&format!(
            "  Next runs ({} after each slot, to spread load):\n",
            humantime::format_duration(std::time::Duration::from_secs(info.spread_seconds))
        ));
    } else {
        text.push_str("  Next runs:\n");
    }
    for run in &info.next_runs {
        text.push_str(&format!("    {}\n", when(run)));
    }
    text
}

/// The table of `backup:schedules`.
pub fn render_list(schedules: &[ScheduleInfo]) -> String {
    if schedules.is_empty() {
        return "No schedules (hop3 backup:schedule APP --cron EXPR sets one).\n".to_owned();
    }
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|i| {
            let s = i.schedule.clone().unwrap_or_default();
            let last = if i.last_slot.is_empty() {
                "-".to_owned()
            } else {
                format!("{} {}", when(&i.last_slot), i.last_state)
            };
            vec![
                s.app,
                s.name,
                s.cron,
                s.time_zone,
                i.next_runs.first().map_or("-".to_owned(), |t| when(t)),
                last,
                when(&i.last_success),
                i.state.clone(),
            ]
        })
        .collect();
    let mut text = render_table(
        &[
            "APP",
            "NAME",
            "CRON",
            "ZONE",
            "NEXT RUN",
            "LAST RUN",
            "LAST SUCCESS",
            "STATE",
        ],
        &rows,
    );
    for i in schedules.iter().filter(|i| !i.last_reason.is_empty()) {
        let s = i.schedule.clone().unwrap_or_default();
        text.push_str(&format!("{}/{}: {}\n", s.app, s.name, i.last_reason));
    }
    text
}

#[cfg(test)]
mod tests {
    use hop3_proto::v1::Schedule;

    use super::*;

    fn info() -> ScheduleInfo {
        ScheduleInfo {
            schedule: Some(Schedule {
                app: "blog".into(),
                name: "default".into(),
                cron: "0 3 * * *".into(),
                time_zone: "Europe/Paris".into(),
                no_services: false,
                host: String::new(),
                ping_url: String::new(),
                retention: Some(RetentionPolicy {
                    keep_daily: Some(7),
                    time_zone: "Europe/Paris".into(),
                    ..Default::default()
                }),
            }),
            next_runs: vec![
                "2026-12-04T03:02:14+01:00".into(),
                "2026-12-05T03:02:14+01:00".into(),
            ],
            spread_seconds: 134,
            state: "new".into(),
            ..Default::default()
        }
    }

    #[test]
    fn setting_echoes_the_next_runs() {
        assert_eq!(
            render_set(&info()),
            "\
✓ Schedule default of blog: 0 3 * * * (Europe/Paris), with services
  Retention after each success: keep 7 daily (periods in Europe/Paris)
  Next runs (2m 14s after each slot, to spread load):
    2026-12-04 03:02:14+01:00
    2026-12-05 03:02:14+01:00
"
        );
    }

    #[test]
    fn the_list_shows_state_and_why() {
        let failing = ScheduleInfo {
            last_slot: "2026-12-03T03:00:00+01:00".into(),
            last_state: "FAILED".into(),
            last_attempts: 3,
            last_reason: "attempt 3: host web-1 is offline".into(),
            state: "failing".into(),
            ..info()
        };
        let text = render_list(&[failing]);
        assert!(text.starts_with("APP   NAME     CRON       ZONE"), "{text}");
        assert!(
            text.contains("2026-12-03 03:00:00+01:00 FAILED  -             failing"),
            "{text}"
        );
        assert!(
            text.ends_with("blog/default: attempt 3: host web-1 is offline\n"),
            "{text}"
        );
        assert!(render_list(&[]).starts_with("No schedules"));
    }
}
