//! Prometheus metrics (`--metrics-listen ADDR` serves them): counters and
//! histograms recorded where jobs end, gauges refreshed from the catalog,
//! the registry and the store. Names follow Velero's where they mean the
//! same. Labels carry app, schedule and host names, never a secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::catalog::RunState;
use crate::schedule::{Timing, parse_slot};
use crate::state::Controller;

/// How often the gauges are read again.
const REFRESH: Duration = Duration::from_secs(5);

/// Buckets of `hop3_backup_duration_seconds`: a second to a few hours.
const DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Serves `/metrics` on `addr` and keeps the gauges fresh.
pub fn serve(ctl: Arc<Controller>, addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("hop3_backup_duration_seconds".into()),
            DURATION_BUCKETS,
        )?
        .install()?;
    describe();
    tracing::info!(listen = %addr, "metrics served");
    tokio::spawn(async move {
        loop {
            refresh(&ctl).await;
            tokio::time::sleep(REFRESH).await;
        }
    });
    Ok(())
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "hop3_backup_total",
        "Backups that ended, COMPLETED or FAILED"
    );
    describe_counter!("hop3_backup_failure_total", "Backups that ended FAILED");
    describe_histogram!(
        "hop3_backup_duration_seconds",
        Unit::Seconds,
        "How long backups took, COMPLETED or FAILED"
    );
    describe_gauge!(
        "hop3_backup_size_bytes",
        Unit::Bytes,
        "Size of the app's newest COMPLETED backup"
    );
    describe_counter!("hop3_restore_total", "Restores that ended");
    describe_counter!("hop3_restore_failure_total", "Restores that failed");
    describe_counter!(
        "hop3_retention_removed_total",
        "Backups removed by retention policies"
    );
    describe_counter!(
        "hop3_alert_failure_total",
        "Alert deliveries that failed after every retry"
    );
    describe_gauge!(
        "hop3_backup_last_successful_timestamp",
        Unit::Seconds,
        "Unix time of the slot of the schedule's newest successful run"
    );
    describe_gauge!(
        "hop3_backup_last_status",
        "The schedule's newest run: 1 succeeded, 0 failed or skipped, -1 none yet"
    );
    describe_gauge!(
        "hop3_schedule_expected_interval_seconds",
        Unit::Seconds,
        "Time between the schedule's slots"
    );
    describe_gauge!("hop3_agent_up", "1 when the host's agent is online");
    describe_gauge!(
        "hop3_store_free_bytes",
        Unit::Bytes,
        "Bytes free in the store (local stores only)"
    );
}

/// A backup of `app` ended.
pub fn backup_ended(app: &str, completed: bool, took: Duration, size: u64) {
    let app = app.to_owned();
    counter!("hop3_backup_total", "app" => app.clone()).increment(1);
    histogram!("hop3_backup_duration_seconds", "app" => app.clone()).record(took.as_secs_f64());
    if completed {
        gauge!("hop3_backup_size_bytes", "app" => app).set(size as f64);
    } else {
        counter!("hop3_backup_failure_total", "app" => app).increment(1);
    }
}

/// A restore into `app` ended.
pub fn restore_ended(app: &str, ok: bool) {
    counter!("hop3_restore_total", "app" => app.to_owned()).increment(1);
    if !ok {
        counter!("hop3_restore_failure_total", "app" => app.to_owned()).increment(1);
    }
}

/// A policy removed `n` backups of `app`.
pub fn retention_removed(app: &str, n: u64) {
    counter!("hop3_retention_removed_total", "app" => app.to_owned()).increment(n);
}

/// An alert could not be delivered.
pub fn alert_failed() {
    counter!("hop3_alert_failure_total").increment(1);
}

/// Reads the gauges again; what cannot be read keeps its last value.
async fn refresh(ctl: &Controller) {
    for agent in ctl.registry.list() {
        gauge!("hop3_agent_up", "host" => agent.host_id).set(if agent.online { 1.0 } else { 0.0 });
    }
    if let Ok(Some(free)) = ctl.store.free_space().await {
        gauge!("hop3_store_free_bytes").set(free as f64);
    }
    let Ok(schedules) = ctl.catalog.schedules().await else {
        return;
    };
    for s in schedules {
        let labels = [("app", s.app.clone()), ("schedule", s.name.clone())];
        if let Ok(timing) = Timing::parse(&s.cron, &s.time_zone)
            && let Some(next) = timing.next_after(chrono::Utc::now())
        {
            gauge!("hop3_schedule_expected_interval_seconds", &labels)
                .set(timing.period_at(next).as_secs_f64());
        }
        if let Ok(Some(run)) = ctl.catalog.last_success(&s.app, &s.name).await
            && let Some(at) = parse_slot(&run.slot)
        {
            gauge!("hop3_backup_last_successful_timestamp", &labels).set(at.timestamp() as f64);
        }
        // A run in progress says nothing new: the last one that ended
        // stands. Taking the newest row instead would, for a schedule whose
        // period matches the refresh, miss every ended run.
        let Ok(runs) = ctl.catalog.recent_runs(&s.app, &s.name, 4).await else {
            continue;
        };
        let status = match runs.iter().find(|r| r.state != RunState::Running) {
            Some(run) if run.state == RunState::Succeeded => 1.0,
            Some(_) => 0.0,
            None if runs.is_empty() => -1.0,
            None => continue,
        };
        gauge!("hop3_backup_last_status", &labels).set(status);
    }
}
