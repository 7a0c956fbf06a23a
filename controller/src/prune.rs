//! Applying a retention policy (`backup:prune`): the planner decides, app
//! by app; each removal goes through [`crate::delete`], store first.

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use hop3_proto::v1;
use hop3_wire::events::{EventReceiver, EventSender};

use crate::catalog::BackupRow;
use crate::error::{ControllerError, Result};
use crate::retention::{self, Decision, Policy};
use crate::state::Controller;

/// A prune to run.
pub struct PruneRequest {
    /// None: every app.
    pub app: Option<String>,
    pub policy: Policy,
    /// The zone calendar periods are counted in.
    pub tz: Tz,
    pub dry_run: bool,
}

impl PruneRequest {
    /// The request of the wire, checked; with `schedule`, the policy and
    /// zone are that schedule's.
    pub async fn from_wire(ctl: &Controller, req: v1::PruneBackupsRequest) -> Result<Self> {
        let app = (!req.app.is_empty()).then_some(req.app);
        if let Some(app) = &app {
            hop3_proto::names::validate_app_name(app)
                .map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
        }
        let (policy, tz) = if req.schedule.is_empty() {
            policy_from_wire(&req.policy.unwrap_or_default())?
        } else {
            let app = app.as_deref().ok_or_else(|| {
                ControllerError::InvalidArgument("--schedule needs the schedule's APP".into())
            })?;
            let s = crate::schedules::find(ctl, app, &req.schedule).await?;
            (s.retention, zone(&s.time_zone)?)
        };
        Ok(Self {
            app,
            policy,
            tz,
            dry_run: req.dry_run,
        })
    }
}

/// A policy of the wire, checked: a count of 0 or a window of 0 would keep
/// nothing and is surely a typo; an unknown zone is named.
pub fn policy_from_wire(wire: &v1::RetentionPolicy) -> Result<(Policy, Tz)> {
    let counts = [
        ("keep-last", wire.keep_last),
        ("keep-hourly", wire.keep_hourly),
        ("keep-daily", wire.keep_daily),
        ("keep-weekly", wire.keep_weekly),
        ("keep-monthly", wire.keep_monthly),
        ("keep-yearly", wire.keep_yearly),
    ];
    if let Some((flag, _)) = counts.iter().find(|(_, n)| *n == Some(0)) {
        return Err(ControllerError::InvalidArgument(format!(
            "--{flag} 0 would keep nothing: give a count of at least 1, or leave the flag out to turn the rule off"
        )));
    }
    if wire.keep_within_seconds == Some(0) {
        return Err(ControllerError::InvalidArgument(
            "--keep-within 0 would keep nothing: give a duration such as 7d, or leave the flag out"
                .into(),
        ));
    }
    let policy = Policy {
        keep_last: wire.keep_last,
        keep_hourly: wire.keep_hourly,
        keep_daily: wire.keep_daily,
        keep_weekly: wire.keep_weekly,
        keep_monthly: wire.keep_monthly,
        keep_yearly: wire.keep_yearly,
        keep_within: wire.keep_within_seconds.map(Duration::from_secs),
        max_total_size: wire.max_total_size,
    };
    Ok((policy, zone(&wire.time_zone)?))
}

/// `policy` as the wire carries it, its periods in `zone`.
pub fn policy_to_wire(policy: &Policy, zone: &str) -> v1::RetentionPolicy {
    v1::RetentionPolicy {
        keep_last: policy.keep_last,
        keep_hourly: policy.keep_hourly,
        keep_daily: policy.keep_daily,
        keep_weekly: policy.keep_weekly,
        keep_monthly: policy.keep_monthly,
        keep_yearly: policy.keep_yearly,
        keep_within_seconds: policy.keep_within.map(|d| d.as_secs()),
        max_total_size: policy.max_total_size,
        time_zone: zone.to_owned(),
    }
}

/// An IANA zone by name; empty: UTC.
pub fn zone(name: &str) -> Result<Tz> {
    match name {
        "" => Ok(Tz::UTC),
        zone => zone.parse().map_err(|_| {
            ControllerError::InvalidArgument(format!(
                "unknown time zone {zone:?}: use an IANA name such as UTC, Europe/Paris or America/New_York"
            ))
        }),
    }
}

/// What became of one backup.
#[derive(Debug)]
pub struct Judged {
    pub row: BackupRow,
    pub decision: Decision,
    /// For a backup to remove, without dry run: Ok when it was removed,
    /// or why not.
    pub removal: Option<std::result::Result<(), String>>,
}

/// Plans `req` over the catalog; returns the decisions in the order they
/// are shown (app by app, newest first), without removing anything.
pub async fn plan(ctl: &Controller, req: &PruneRequest) -> Result<Vec<(BackupRow, Decision)>> {
    let mut rows = ctl.catalog.history(req.app.as_deref()).await?;
    if let (Some(app), true) = (&req.app, rows.is_empty()) {
        return Err(ControllerError::NoBackups(app.clone()));
    }
    rows.sort_by(|a, b| {
        (&a.app, b.created_at, b.backup_id.as_str()).cmp(&(
            &b.app,
            a.created_at,
            a.backup_id.as_str(),
        ))
    });
    let decisions = retention::plan(&req.policy, req.tz, &rows);
    Ok(rows.into_iter().zip(decisions).collect())
}

/// Runs `req` to its end (a scheduled run's policy, after its backup):
/// returns how many backups were removed and how many could not be.
pub async fn apply(ctl: &Controller, req: &PruneRequest) -> Result<(u64, u64)> {
    let (mut removed, mut failed) = (0, 0);
    for (row, decision) in plan(ctl, req).await? {
        match carry_out(ctl, row, decision, req.dry_run).await.removal {
            Some(Ok(())) => removed += 1,
            Some(Err(_)) => failed += 1,
            None => {}
        }
    }
    Ok((removed, failed))
}

/// Runs `req`: every decision goes out on the stream as it is carried out.
/// Removals continue if the caller goes away (each one is whole on its
/// own, and the rest would only wait for the next prune).
pub async fn start(
    ctl: &Arc<Controller>,
    req: PruneRequest,
) -> Result<EventReceiver<v1::PruneDecision>> {
    let planned = plan(ctl, &req).await?;
    let (tx, rx) = EventSender::channel();
    let ctl = ctl.clone();
    tokio::spawn(async move {
        let (mut removed, mut failed) = (0u64, 0u64);
        for (row, decision) in planned {
            let judged = carry_out(&ctl, row, decision, req.dry_run).await;
            match &judged.removal {
                Some(Ok(())) => removed += 1,
                Some(Err(_)) => failed += 1,
                None => {}
            }
            let _ = tx.send(to_wire(&ctl, &judged)).await;
        }
        if !req.dry_run {
            tracing::info!(
                app = req.app.as_deref().unwrap_or("*"),
                removed,
                failed,
                "prune done"
            );
        }
    });
    Ok(rx)
}

/// Removes the backup of a decision to remove (unless `dry_run`).
async fn carry_out(ctl: &Controller, row: BackupRow, decision: Decision, dry_run: bool) -> Judged {
    let removal = if decision.keep || dry_run {
        None
    } else {
        let removed = crate::delete::delete(ctl, &row).await;
        if removed.is_ok() {
            crate::telemetry::retention_removed(&row.app, 1);
        }
        Some(removed.map_err(|e| e.to_string()))
    };
    Judged {
        row,
        decision,
        removal,
    }
}

fn to_wire(ctl: &Controller, j: &Judged) -> v1::PruneDecision {
    v1::PruneDecision {
        backup: Some(ctl.summary(&j.row)),
        keep: j.decision.keep,
        reasons: j.decision.reasons.iter().map(ToString::to_string).collect(),
        removed: matches!(j.removal, Some(Ok(()))),
        error: match &j.removal {
            Some(Err(e)) => e.clone(),
            _ => String::new(),
        },
    }
}
