//! Running the schedules: a loop that notices each slot as it comes (or,
//! at start, the slots missed while the controller was down), claims it in
//! the catalog, backs the app up, retries a failure with backoff until the
//! next slot, and applies the schedule's retention policy after a success.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hop3_proto::v1::{self, create_backup_event};

use crate::alerts::{Alert, Event, Ping};
use crate::catalog::{RunRow, RunState};
use crate::create::{self, CreateRequest};
use crate::error::ControllerError;
use crate::prune::{self, PruneRequest};
use crate::schedule::{Schedule, Timing, parse_slot, slot_text, spread};
use crate::state::Controller;

/// How the scheduler runs schedules.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Each schedule starts a fixed delay after its slots, below this (and
    /// below a quarter of its period), so that many apps on one slot do
    /// not all start at once.
    pub spread_window: Duration,
    /// A slot missed by more than this (None: by more than one period) is
    /// recorded as skipped instead of run late.
    pub lateness: Option<Duration>,
    /// Attempts per slot; a failed one is retried after `retry_backoff`,
    /// doubled each time, while the next slot is not due.
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    /// How long a run waits for a backup or restore of its app to end
    /// before it is recorded as skipped.
    pub busy_wait: Duration,
    /// How long past its expected interval a schedule without a new
    /// success is overdue (None: half the interval, at least a minute).
    pub overdue_grace: Option<Duration>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            spread_window: Duration::from_secs(300),
            lateness: None,
            max_attempts: 3,
            retry_backoff: Duration::from_secs(60),
            busy_wait: Duration::from_secs(600),
            overdue_grace: None,
        }
    }
}

/// How often the loop looks at the clock: slots have whole seconds.
const TICK: Duration = Duration::from_millis(500);
/// Every how many ticks overdue schedules are looked for.
const OVERDUE_EVERY: u64 = 4;
/// How often a run whose app is busy tries again.
const BUSY_POLL: Duration = Duration::from_secs(2);
/// The most missed slots recorded one by one at start (older ones are
/// counted in the log).
const MAX_MISSED: usize = 1000;

/// A schedule the loop follows, and its next slot.
struct Followed {
    schedule: Schedule,
    timing: Timing,
    slot: DateTime<Utc>,
}

/// Raises an `overdue` alert once for each schedule that became overdue:
/// no success within its interval and grace, whatever the reason (runs
/// failing, an agent gone, slots skipped). It may be raised again once a
/// success has ended the spell.
async fn watch_overdue(
    ctl: &Controller,
    followed: &HashMap<(String, String), Followed>,
    overdue: &mut HashSet<(String, String)>,
) {
    let now = Utc::now();
    for (key, f) in followed {
        let Ok(success) = ctl.catalog.last_success(&key.0, &key.1).await else {
            continue;
        };
        if !crate::schedules::is_overdue(ctl, &f.schedule, &f.timing, success.as_ref(), now) {
            overdue.remove(key);
            continue;
        }
        if overdue.insert(key.clone()) {
            tracing::warn!(app = %key.0, schedule = %key.1, "schedule overdue: no success within its interval");
            let mut alert = Alert::new(Event::Overdue, &key.0, &key.1);
            alert.slot = success.as_ref().map(|r| r.slot.clone());
            alert.reason = Some(match &success {
                Some(r) => format!("no successful backup since the slot of {}", r.slot),
                None => "no successful backup yet".to_owned(),
            });
            ctl.alerts.send(alert);
        }
    }
    overdue.retain(|k| followed.contains_key(k));
}

/// When schedule `s` runs next after `slot` (its start, spread included).
pub fn start_of(
    s: &Schedule,
    timing: &Timing,
    slot: DateTime<Utc>,
    cfg: &SchedulerConfig,
) -> DateTime<Utc> {
    let delay = spread(&s.app, &s.name, cfg.spread_window, timing.period_at(slot));
    slot + chrono::Duration::from_std(delay).unwrap_or_default()
}

/// Starts the loop; it runs as long as the controller.
pub fn spawn(ctl: Arc<Controller>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Agents that were registered before a restart call in again within
        // a heartbeat: a slot caught up before that would fail for nothing.
        tokio::time::sleep(crate::registry::HEARTBEAT + Duration::from_secs(1)).await;
        let mut followed: HashMap<(String, String), Followed> = HashMap::new();
        let mut overdue = HashSet::new();
        for n in 0u64.. {
            if let Err(e) = tick(&ctl, &mut followed).await {
                tracing::warn!(error = %e, "the scheduler could not read its schedules");
            }
            if n % OVERDUE_EVERY == 0 {
                watch_overdue(&ctl, &followed, &mut overdue).await;
            }
            tokio::time::sleep(TICK).await;
        }
    })
}

/// One look at the clock: follows new and changed schedules, drops removed
/// ones, and starts every run that is due.
async fn tick(
    ctl: &Arc<Controller>,
    followed: &mut HashMap<(String, String), Followed>,
) -> Result<(), ControllerError> {
    let cfg = &ctl.scheduler;
    let schedules = ctl.catalog.schedules().await?;
    let now = Utc::now();
    // Dropped or changed schedules are followed anew (one lookup each:
    // this runs every tick, over every schedule).
    let current: HashMap<(&str, &str), &Schedule> = schedules
        .iter()
        .map(|s| ((s.app.as_str(), s.name.as_str()), s))
        .collect();
    followed.retain(|key, f| current.get(&(key.0.as_str(), key.1.as_str())) == Some(&&f.schedule));
    for s in schedules {
        let key = (s.app.clone(), s.name.clone());
        if followed.contains_key(&key) {
            continue;
        }
        let timing = match Timing::parse(&s.cron, &s.time_zone) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(app = %s.app, schedule = %s.name, error = %e, "ignoring a schedule that does not parse");
                continue;
            }
        };
        if let Some(slot) = catch_up(ctl, &s, &timing, now).await? {
            followed.insert(
                key,
                Followed {
                    schedule: s,
                    timing,
                    slot,
                },
            );
        }
    }
    for f in followed.values_mut() {
        while start_of(&f.schedule, &f.timing, f.slot, cfg) <= now {
            let next = f.timing.next_after(f.slot);
            let deadline = next.map(|n| start_of(&f.schedule, &f.timing, n, cfg));
            tokio::spawn(run_slot(ctl.clone(), f.schedule.clone(), f.slot, deadline));
            match next {
                Some(n) => f.slot = n,
                None => break,
            }
        }
    }
    Ok(())
}

/// The first slot to follow for a schedule seen for the first time (at
/// start, or just created): the slots after its last recorded one that are
/// past are recorded as skipped, except the newest, which is returned to
/// run late when it is within the lateness limit.
async fn catch_up(
    ctl: &Controller,
    s: &Schedule,
    timing: &Timing,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, ControllerError> {
    let cfg = &ctl.scheduler;
    let since = match ctl.catalog.last_run(&s.app, &s.name).await? {
        Some(run) => parse_slot(&run.slot),
        None => parse_slot(&s.created_at),
    }
    .unwrap_or(now);
    let (missed, uncounted) = timing.between(since, now, MAX_MISSED);
    if uncounted > 0 {
        tracing::warn!(app = %s.app, schedule = %s.name, uncounted, "more slots were missed than are recorded one by one");
    }
    let Some((&newest, older)) = missed.split_last() else {
        return Ok(timing.next_after(now));
    };
    if !older.is_empty() {
        let mut alert = Alert::new(Event::BackupSkipped, &s.app, &s.name);
        alert.slot = older.last().map(|t| slot_text(*t));
        alert.reason = Some(format!(
            "{} slot(s) missed while the controller was not running",
            older.len() as u64 + uncounted
        ));
        ctl.alerts.send(alert);
    }
    for slot in older {
        ctl.catalog
            .skip_slot(
                &s.app,
                &s.name,
                &slot_text(*slot),
                "missed: the controller was not running at its time",
            )
            .await?;
    }
    let lateness = cfg.lateness.unwrap_or_else(|| timing.period_at(newest));
    let late = (now - start_of(s, timing, newest, cfg))
        .to_std()
        .unwrap_or_default();
    if late <= lateness {
        return Ok(Some(newest));
    }
    let reason = format!(
        "missed by {} (more than the lateness limit of {}): the controller was not running",
        humantime::format_duration(Duration::from_secs(late.as_secs())),
        humantime::format_duration(lateness)
    );
    ctl.catalog
        .skip_slot(&s.app, &s.name, &slot_text(newest), &reason)
        .await?;
    tracing::warn!(app = %s.app, schedule = %s.name, slot = %slot_text(newest), %reason, "slot skipped");
    let mut alert = Alert::new(Event::BackupSkipped, &s.app, &s.name);
    alert.slot = Some(slot_text(newest));
    alert.reason = Some(reason);
    ctl.alerts.send(alert);
    Ok(timing.next_after(now))
}

/// What one attempt came to.
enum Attempt {
    Done(String),
    /// The app is being backed up or restored: wait, or skip.
    Busy(String),
    Failed {
        backup_id: Option<String>,
        error: String,
    },
}

/// Runs `slot` of `s` once, if this controller claims it first; retries a
/// failure with backoff while the next slot's start (`deadline`) is ahead.
async fn run_slot(
    ctl: Arc<Controller>,
    s: Schedule,
    slot: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
) {
    let cfg = ctl.scheduler.clone();
    let slot_s = slot_text(slot);
    let before = ctl
        .catalog
        .last_run(&s.app, &s.name)
        .await
        .ok()
        .flatten()
        .map(|r| r.state);
    match ctl.catalog.claim_slot(&s.app, &s.name, &slot_s).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(app = %s.app, schedule = %s.name, slot = %slot_s, error = %e, "could not claim a slot");
            return;
        }
    }
    tracing::info!(app = %s.app, schedule = %s.name, slot = %slot_s, "scheduled backup due");
    let rid = run_id(&s, &slot_s);
    if let Some(url) = &s.ping_url {
        ctl.alerts.ping(url, Ping::Start, &rid, String::new());
    }
    let mut run = RunRow {
        app: s.app.clone(),
        name: s.name.clone(),
        slot: slot_s.clone(),
        state: RunState::Running,
        attempts: 0,
        backup_ids: Vec::new(),
        reason: None,
        started_at: slot_text(Utc::now()),
        finished_at: None,
    };
    let busy_until = Utc::now() + chrono::Duration::from_std(cfg.busy_wait).unwrap_or_default();
    let busy_until = deadline.map_or(busy_until, |d| d.min(busy_until));
    let mut backoff = cfg.retry_backoff;
    loop {
        run.attempts += 1;
        match attempt(&ctl, &s).await {
            Attempt::Done(id) => {
                run.backup_ids.push(id.clone());
                run.state = RunState::Succeeded;
                let (said, failed) = retention(&ctl, &s).await;
                if failed {
                    let mut alert = Alert::new(Event::RetentionFailed, &s.app, &s.name);
                    alert.slot = Some(slot_s.clone());
                    alert.reason = said.clone();
                    ctl.alerts.send(alert);
                }
                run.reason = said;
                tracing::info!(app = %s.app, schedule = %s.name, slot = %slot_s, backup_id = %id, "scheduled backup completed");
                break;
            }
            Attempt::Busy(why) => {
                run.attempts -= 1;
                if Utc::now() + chrono::Duration::from_std(BUSY_POLL).unwrap_or_default()
                    < busy_until
                {
                    tokio::time::sleep(BUSY_POLL).await;
                    continue;
                }
                run.state = RunState::Skipped;
                run.reason = Some(format!("the app stayed busy: {why}"));
                tracing::warn!(app = %s.app, schedule = %s.name, slot = %slot_s, reason = %why, "scheduled backup skipped");
                break;
            }
            Attempt::Failed { backup_id, error } => {
                run.backup_ids.extend(backup_id);
                run.reason = Some(format!("attempt {}: {error}", run.attempts));
                let retry_at = Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default();
                let in_time = deadline.is_none_or(|d| retry_at < d);
                tracing::warn!(app = %s.app, schedule = %s.name, slot = %slot_s, attempt = run.attempts, %error, "scheduled backup failed");
                if run.attempts < cfg.max_attempts && in_time {
                    let _ = ctl.catalog.record_attempt(&run).await;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
                run.state = RunState::Failed;
                break;
            }
        }
    }
    if let Err(e) = ctl.catalog.record_attempt(&run).await {
        tracing::warn!(app = %s.app, schedule = %s.name, slot = %slot_s, error = %e, "could not record a run");
    }
    tell(&ctl, &s, &run, before, &rid);
}

/// The alert and the ping an ended run calls for: a failure or a skip, or
/// a success after either.
fn tell(ctl: &Controller, s: &Schedule, run: &RunRow, before: Option<RunState>, rid: &str) {
    let event = match run.state {
        RunState::Succeeded => {
            matches!(before, Some(RunState::Failed | RunState::Skipped)).then_some(Event::Recovered)
        }
        RunState::Failed => Some(Event::BackupFailed),
        RunState::Skipped => Some(Event::BackupSkipped),
        RunState::Running => None,
    };
    if let Some(event) = event {
        let mut alert = Alert::new(event, &s.app, &s.name);
        alert.slot = Some(run.slot.clone());
        alert.attempts = Some(run.attempts);
        alert.backup_ids = run.backup_ids.clone();
        alert.reason = run.reason.clone();
        ctl.alerts.send(alert);
    }
    if let Some(url) = &s.ping_url {
        let ping = if run.state == RunState::Succeeded {
            Ping::Success
        } else {
            Ping::Fail
        };
        ctl.alerts
            .ping(url, ping, rid, run.reason.clone().unwrap_or_default());
    }
}

/// A UUID that pairs a run's start ping with its end ping: the same for
/// the same slot of the same schedule.
fn run_id(s: &Schedule, slot: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::new()
        .chain_update(s.app.as_bytes())
        .chain_update([0])
        .chain_update(s.name.as_bytes())
        .chain_update([0])
        .chain_update(slot.as_bytes())
        .finalize();
    let h = hex::encode(&d[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// One backup of the schedule's app.
async fn attempt(ctl: &Arc<Controller>, s: &Schedule) -> Attempt {
    let req = CreateRequest {
        app: s.app.clone(),
        host: s.host.clone(),
        include_services: !s.no_services,
        format: None,
        cancel_on_disconnect: false,
    };
    let mut rx = match create::start(ctl, req).await {
        Ok(rx) => rx,
        Err(e @ ControllerError::Busy { .. }) => return Attempt::Busy(e.to_string()),
        Err(e) => {
            return Attempt::Failed {
                backup_id: None,
                error: e.to_string(),
            };
        }
    };
    let mut id = None;
    while let Some(event) = rx.recv().await {
        match event.map(|e| e.event) {
            Ok(Some(create_backup_event::Event::Started(v1::BackupSummary {
                backup_id, ..
            }))) => {
                id = Some(backup_id);
            }
            Ok(Some(create_backup_event::Event::Completed(summary))) => {
                return Attempt::Done(summary.backup_id);
            }
            Ok(_) => {}
            Err(status) => {
                return Attempt::Failed {
                    backup_id: id,
                    error: status.message().to_owned(),
                };
            }
        }
    }
    Attempt::Failed {
        backup_id: id,
        error: "the backup ended without a result".into(),
    }
}

/// Applies the schedule's policy to its app after a success; says what it
/// did, for the run's record (None when the policy is empty), and whether
/// it failed.
async fn retention(ctl: &Controller, s: &Schedule) -> (Option<String>, bool) {
    let policy = s.retention.clone();
    if policy.is_empty() {
        return (None, false);
    }
    let tz = prune::zone(&s.time_zone).unwrap_or(chrono_tz::Tz::UTC);
    let req = PruneRequest {
        app: Some(s.app.clone()),
        policy,
        tz,
        dry_run: false,
    };
    match prune::apply(ctl, &req).await {
        Ok((removed, 0)) => (
            Some(format!("retention removed {removed} backup(s)")),
            false,
        ),
        Ok((removed, failed)) => {
            tracing::warn!(app = %s.app, schedule = %s.name, failed, "retention could not remove every backup");
            (
                Some(format!(
                    "retention removed {removed} backup(s); {failed} could not be removed (left DELETE_PENDING)"
                )),
                true,
            )
        }
        Err(e) => {
            tracing::warn!(app = %s.app, schedule = %s.name, error = %e, "retention failed");
            (Some(format!("retention failed: {e}")), true)
        }
    }
}
