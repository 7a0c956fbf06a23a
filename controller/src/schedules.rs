//! The schedules API's jobs: set, list and delete an app's schedules, each
//! written to the store first (the source of truth), then the catalog.

use std::time::Duration;

use chrono::Utc;
use hop3_proto::names::{validate_app_name, validate_host_id};
use hop3_proto::v1;

use crate::error::{ControllerError, Result};
use crate::prune::{policy_from_wire, policy_to_wire};
use crate::schedule::{DEFAULT_NAME, Schedule, Timing, parse_slot, slot_text, spread};
use crate::scheduler::start_of;
use crate::state::Controller;

/// How many next runs `backup:schedule` and `backup:schedules` show.
const NEXT_RUNS: usize = 5;
/// How many recorded slots they show.
const RECENT_RUNS: u32 = 10;

fn name_or_default(name: &str) -> &str {
    if name.is_empty() { DEFAULT_NAME } else { name }
}

/// Sets (or replaces) the schedule `wire` describes.
pub async fn set(ctl: &Controller, wire: v1::Schedule) -> Result<v1::ScheduleInfo> {
    let invalid = |e: String| ControllerError::InvalidArgument(e);
    validate_app_name(&wire.app).map_err(|e| invalid(e.to_string()))?;
    let name = name_or_default(&wire.name).to_owned();
    validate_app_name(&name).map_err(|e| invalid(format!("schedule name: {e}")))?;
    let host = (!wire.host.is_empty()).then_some(wire.host);
    if let Some(host) = &host {
        validate_host_id(host).map_err(|e| invalid(e.to_string()))?;
    }
    Timing::parse(&wire.cron, &wire.time_zone).map_err(|e| invalid(e.to_string()))?;
    let (policy, _) = policy_from_wire(&wire.retention.unwrap_or_default())?;
    // A schedule of an app no host serves would only ever fail.
    ctl.registry.find_app(&wire.app, host.as_deref()).await?;
    let schedule = Schedule {
        app: wire.app,
        name,
        cron: wire.cron.trim().to_owned(),
        time_zone: if wire.time_zone.is_empty() {
            "UTC".to_owned()
        } else {
            wire.time_zone
        },
        no_services: wire.no_services,
        host,
        retention: policy,
        ping_url: check_ping_url(wire.ping_url)?,
        created_at: slot_text(Utc::now()),
    };
    let mut all: Vec<Schedule> = of_app(ctl, &schedule.app).await?;
    all.retain(|s| s.name != schedule.name);
    all.push(schedule.clone());
    all.sort_by(|a, b| a.name.cmp(&b.name));
    save(ctl, &schedule.app, &all).await?;
    tracing::info!(app = %schedule.app, schedule = %schedule.name, cron = %schedule.cron, tz = %schedule.time_zone, "schedule set");
    info(ctl, &schedule).await
}

/// Every schedule (of `app` when given), with where it stands.
pub async fn list(ctl: &Controller, app: Option<&str>) -> Result<Vec<v1::ScheduleInfo>> {
    let mut out = Vec::new();
    for s in ctl.catalog.schedules().await? {
        if app.is_none_or(|a| a == s.app) {
            out.push(info(ctl, &s).await?);
        }
    }
    Ok(out)
}

/// Removes schedule `name` of `app`; its record of runs stays.
pub async fn delete(ctl: &Controller, app: &str, name: &str) -> Result<()> {
    let name = name_or_default(name);
    let mut all = of_app(ctl, app).await?;
    let before = all.len();
    all.retain(|s| s.name != name);
    if all.len() == before {
        return Err(ControllerError::ScheduleNotFound {
            app: app.to_owned(),
            name: name.to_owned(),
        });
    }
    save(ctl, app, &all).await?;
    tracing::info!(app, schedule = name, "schedule removed");
    Ok(())
}

/// Schedule `name` of `app`.
pub async fn find(ctl: &Controller, app: &str, name: &str) -> Result<Schedule> {
    let name = name_or_default(name);
    of_app(ctl, app)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ControllerError::ScheduleNotFound {
            app: app.to_owned(),
            name: name.to_owned(),
        })
}

/// A ping URL, when given: http(s) only.
fn check_ping_url(url: String) -> Result<Option<String>> {
    if url.is_empty() {
        return Ok(None);
    }
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(Some(url)),
        _ => Err(ControllerError::InvalidArgument(format!(
            "--ping-url {}: not an http:// or https:// URL",
            crate::alerts::redact(&url)
        ))),
    }
}

async fn of_app(ctl: &Controller, app: &str) -> Result<Vec<Schedule>> {
    Ok(ctl
        .catalog
        .schedules()
        .await?
        .into_iter()
        .filter(|s| s.app == app)
        .collect())
}

async fn save(ctl: &Controller, app: &str, all: &[Schedule]) -> Result<()> {
    ctl.store.save_schedules(app, all).await?;
    ctl.catalog.replace_schedules(app, all).await?;
    Ok(())
}

/// How long after the expected interval a schedule without a new success
/// is overdue: the configured grace, or half the interval (at least a
/// minute).
pub fn grace(ctl: &Controller, interval: Duration) -> Duration {
    ctl.scheduler
        .overdue_grace
        .unwrap_or_else(|| (interval / 2).max(Duration::from_secs(60)))
}

/// Whether schedule `s` is overdue at `now`: no success (`last_success`)
/// within its interval plus the grace after the last one (or after its
/// creation).
pub fn is_overdue(
    ctl: &Controller,
    s: &Schedule,
    timing: &Timing,
    last_success: Option<&crate::catalog::RunRow>,
    now: chrono::DateTime<Utc>,
) -> bool {
    let since = last_success.map_or(s.created_at.as_str(), |r| r.slot.as_str());
    let Some(since) = parse_slot(since) else {
        return false;
    };
    let interval = timing.period_at(since);
    let due = start_of(s, timing, since, &ctl.scheduler)
        + chrono::Duration::from_std(interval + grace(ctl, interval)).unwrap_or_default();
    now > due
}

/// Where schedule `s` stands.
pub async fn info(ctl: &Controller, s: &Schedule) -> Result<v1::ScheduleInfo> {
    let timing = Timing::parse(&s.cron, &s.time_zone)
        .map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
    let now = Utc::now();
    let cfg = &ctl.scheduler;
    let slots = timing.next_n(now, NEXT_RUNS);
    let interval = slots
        .first()
        .map_or(Duration::from_secs(24 * 3600), |&n| timing.period_at(n));
    let in_zone = |t: chrono::DateTime<Utc>| t.with_timezone(&timing.tz()).to_rfc3339();
    // The newest recorded slot is the first of the recent ones.
    let recent = ctl
        .catalog
        .recent_runs(&s.app, &s.name, RECENT_RUNS)
        .await?;
    let last = recent.first().cloned();
    let success = ctl.catalog.last_success(&s.app, &s.name).await?;
    let overdue = is_overdue(ctl, s, &timing, success.as_ref(), now);
    let last_state = last.as_ref().map(|r| r.state);
    use crate::catalog::RunState as R;
    let state = match last_state {
        Some(R::Running) => "running",
        _ if overdue => "overdue",
        Some(R::Succeeded) => "ok",
        Some(R::Failed) => "failing",
        Some(R::Skipped) => "skipped",
        None => "new",
    };
    Ok(v1::ScheduleInfo {
        schedule: Some(to_wire(s)),
        next_runs: slots
            .iter()
            .map(|&slot| in_zone(start_of(s, &timing, slot, cfg)))
            .collect(),
        spread_seconds: spread(&s.app, &s.name, cfg.spread_window, interval).as_secs(),
        last_slot: last
            .as_ref()
            .and_then(|r| parse_slot(&r.slot))
            .map(in_zone)
            .unwrap_or_default(),
        last_state: last_state
            .map(|st| st.as_str().to_owned())
            .unwrap_or_default(),
        last_attempts: last.as_ref().map_or(0, |r| r.attempts),
        last_reason: last.and_then(|r| r.reason).unwrap_or_default(),
        last_success: success
            .as_ref()
            .and_then(|r| parse_slot(&r.slot))
            .map(in_zone)
            .unwrap_or_default(),
        last_backup_id: success
            .and_then(|r| r.backup_ids.last().cloned())
            .unwrap_or_default(),
        state: state.to_owned(),
        expected_interval_seconds: interval.as_secs(),
        recent_runs: recent
            .into_iter()
            .map(|r| v1::ScheduleRun {
                slot: parse_slot(&r.slot).map(in_zone).unwrap_or(r.slot),
                state: r.state.as_str().to_owned(),
                attempts: r.attempts,
                backup_ids: r.backup_ids,
                reason: r.reason.unwrap_or_default(),
            })
            .collect(),
    })
}

fn to_wire(s: &Schedule) -> v1::Schedule {
    v1::Schedule {
        app: s.app.clone(),
        name: s.name.clone(),
        cron: s.cron.clone(),
        time_zone: s.time_zone.clone(),
        no_services: s.no_services,
        host: s.host.clone().unwrap_or_default(),
        retention: Some(policy_to_wire(&s.retention, &s.time_zone)),
        // Its path is as good as a password: shown cut to its host.
        ping_url: s
            .ping_url
            .as_deref()
            .map(crate::alerts::redact)
            .unwrap_or_default(),
    }
}
