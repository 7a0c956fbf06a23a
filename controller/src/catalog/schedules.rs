//! The catalog's schedules and the record of their slots.

use sqlx::Row;

use super::{Catalog, CatalogError};
use crate::schedule::Schedule;

/// Where a slot stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl RunState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Skipped => "SKIPPED",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RUNNING" => Self::Running,
            "SUCCEEDED" => Self::Succeeded,
            "FAILED" => Self::Failed,
            "SKIPPED" => Self::Skipped,
            _ => return None,
        })
    }
}

/// One slot of one schedule, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRow {
    pub app: String,
    pub name: String,
    /// RFC 3339, UTC.
    pub slot: String,
    pub state: RunState,
    pub attempts: u32,
    /// Every backup an attempt made (a failed attempt's row stays FAILED).
    pub backup_ids: Vec<String>,
    /// Why it failed or was skipped; what retention did after a success.
    pub reason: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

fn now() -> String {
    crate::schedule::slot_text(chrono::Utc::now())
}

impl Catalog {
    /// Every schedule, by app then name.
    pub async fn schedules(&self) -> Result<Vec<Schedule>, CatalogError> {
        let rows = sqlx::query("SELECT app, name, spec FROM schedules ORDER BY app, name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let spec: String = r.try_get("spec")?;
                let app: String = r.try_get("app")?;
                serde_json::from_str(&spec)
                    .map_err(|e| CatalogError::BadRow(format!("schedule of {app}"), e.to_string()))
            })
            .collect()
    }

    /// Makes `app`'s schedules exactly `schedules`.
    pub async fn replace_schedules(
        &self,
        app: &str,
        schedules: &[Schedule],
    ) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM schedules WHERE app = $1")
            .bind(app)
            .execute(&mut *tx)
            .await?;
        for s in schedules {
            sqlx::query("INSERT INTO schedules (app, name, spec) VALUES ($1, $2, $3)")
                .bind(&s.app)
                .bind(&s.name)
                .bind(serde_json::to_string(s).expect("a schedule serialises"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes every schedule of the catalog exactly `schedules` (from the
    /// store, at start).
    pub async fn replace_all_schedules(&self, schedules: &[Schedule]) -> Result<(), CatalogError> {
        let mut apps: Vec<&str> = schedules.iter().map(|s| s.app.as_str()).collect();
        apps.dedup();
        sqlx::query("DELETE FROM schedules")
            .execute(&self.pool)
            .await?;
        for app in apps {
            let of_app: Vec<Schedule> =
                schedules.iter().filter(|s| s.app == app).cloned().collect();
            self.replace_schedules(app, &of_app).await?;
        }
        Ok(())
    }

    /// Claims `slot` of schedule `name` of `app` for a run: true for the
    /// one caller that recorded it first, false when it is recorded already
    /// (run, running or skipped): a slot runs at most once.
    pub async fn claim_slot(
        &self,
        app: &str,
        name: &str,
        slot: &str,
    ) -> Result<bool, CatalogError> {
        self.record_slot(app, name, slot, RunState::Running, None)
            .await
    }

    /// Records `slot` as skipped with `reason`, unless it is recorded already.
    pub async fn skip_slot(
        &self,
        app: &str,
        name: &str,
        slot: &str,
        reason: &str,
    ) -> Result<bool, CatalogError> {
        self.record_slot(app, name, slot, RunState::Skipped, Some(reason))
            .await
    }

    async fn record_slot(
        &self,
        app: &str,
        name: &str,
        slot: &str,
        state: RunState,
        reason: Option<&str>,
    ) -> Result<bool, CatalogError> {
        let finished = (state != RunState::Running).then(now);
        let done = sqlx::query(
            "INSERT INTO schedule_runs (app, name, slot, state, reason, started_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (app, name, slot) DO NOTHING",
        )
        .bind(app)
        .bind(name)
        .bind(slot)
        .bind(state.as_str())
        .bind(reason)
        .bind(now())
        .bind(finished)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records an attempt of a claimed slot: its count, the backup it made,
    /// and (when `state` is not RUNNING) how the slot ended.
    pub async fn record_attempt(&self, run: &RunRow) -> Result<(), CatalogError> {
        let finished = (run.state != RunState::Running).then(now);
        sqlx::query(
            "UPDATE schedule_runs SET state = $1, attempts = $2, backup_ids = $3, reason = $4, finished_at = $5
             WHERE app = $6 AND name = $7 AND slot = $8",
        )
        .bind(run.state.as_str())
        .bind(i64::from(run.attempts))
        .bind(serde_json::to_string(&run.backup_ids).expect("strings serialise"))
        .bind(run.reason.as_deref())
        .bind(finished)
        .bind(&run.app)
        .bind(&run.name)
        .bind(&run.slot)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// At start: every slot still RUNNING was cut short by the stop.
    pub async fn fail_interrupted_runs(&self) -> Result<u64, CatalogError> {
        let done = sqlx::query(
            "UPDATE schedule_runs SET state = 'FAILED', finished_at = $1,
                 reason = 'interrupted: the controller stopped during the run'
             WHERE state = 'RUNNING'",
        )
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The newest recorded slot of a schedule, in any state.
    pub async fn last_run(&self, app: &str, name: &str) -> Result<Option<RunRow>, CatalogError> {
        self.newest_run(app, name, None).await
    }

    /// The newest SUCCEEDED slot of a schedule.
    pub async fn last_success(
        &self,
        app: &str,
        name: &str,
    ) -> Result<Option<RunRow>, CatalogError> {
        self.newest_run(app, name, Some(RunState::Succeeded)).await
    }

    async fn newest_run(
        &self,
        app: &str,
        name: &str,
        state: Option<RunState>,
    ) -> Result<Option<RunRow>, CatalogError> {
        let row = sqlx::query(
            "SELECT app, name, slot, state, attempts, backup_ids, reason, started_at, finished_at
             FROM schedule_runs WHERE app = $1 AND name = $2 AND ($3 = '' OR state = $3)
             ORDER BY slot DESC LIMIT 1",
        )
        .bind(app)
        .bind(name)
        .bind(state.map_or("", RunState::as_str))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| run_row(&r)).transpose()
    }

    /// The `limit` newest recorded slots of a schedule, newest first.
    pub async fn recent_runs(
        &self,
        app: &str,
        name: &str,
        limit: u32,
    ) -> Result<Vec<RunRow>, CatalogError> {
        let rows = sqlx::query(
            "SELECT app, name, slot, state, attempts, backup_ids, reason, started_at, finished_at
             FROM schedule_runs WHERE app = $1 AND name = $2 ORDER BY slot DESC LIMIT $3",
        )
        .bind(app)
        .bind(name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_row).collect()
    }
}

fn run_row(r: &sqlx::any::AnyRow) -> Result<RunRow, CatalogError> {
    let slot: String = r.try_get("slot")?;
    let bad = |what: String| CatalogError::BadRow(format!("run {slot}"), what);
    let state: String = r.try_get("state")?;
    let attempts: i64 = r.try_get("attempts")?;
    let backup_ids: String = r.try_get("backup_ids")?;
    Ok(RunRow {
        app: r.try_get("app")?,
        name: r.try_get("name")?,
        state: RunState::parse(&state).ok_or_else(|| bad(format!("state {state:?}")))?,
        attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
        backup_ids: serde_json::from_str(&backup_ids).map_err(|e| bad(e.to_string()))?,
        reason: r.try_get("reason")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        slot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    fn schedule(app: &str, name: &str) -> Schedule {
        Schedule {
            app: app.into(),
            name: name.into(),
            cron: "@daily".into(),
            time_zone: "UTC".into(),
            no_services: false,
            host: None,
            retention: Default::default(),
            ping_url: None,
            created_at: "2026-12-01T00:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn a_slot_is_claimed_once_and_every_ending_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Catalog::open(&format!("sqlite://{}", tmp.path().join("c.db").display()))
            .await
            .unwrap();
        c.replace_schedules("a", &[schedule("a", "hourly"), schedule("a", "daily")])
            .await
            .unwrap();
        c.replace_all_schedules(&[schedule("b", "default"), schedule("a", "daily")])
            .await
            .unwrap();
        let names: Vec<(String, String)> = c
            .schedules()
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.app, s.name))
            .collect();
        assert_eq!(
            names,
            [("a".into(), "daily".into()), ("b".into(), "default".into())]
        );

        let slot = "2026-12-02T00:00:00Z";
        assert!(c.claim_slot("a", "daily", slot).await.unwrap());
        // A second controller, or a second look, gets nothing.
        assert!(!c.claim_slot("a", "daily", slot).await.unwrap());
        assert!(!c.skip_slot("a", "daily", slot, "late").await.unwrap());
        // Another schedule's slot at the same time is its own.
        assert!(c.claim_slot("b", "default", slot).await.unwrap());
        assert!(
            c.skip_slot("a", "daily", "2026-12-01T00:00:00Z", "missed")
                .await
                .unwrap()
        );
        let mut run = c.last_run("a", "daily").await.unwrap().unwrap();
        assert_eq!((run.slot.as_str(), run.state), (slot, RunState::Running));
        run.attempts = 2;
        run.backup_ids = vec!["x".into(), "y".into()];
        run.state = RunState::Succeeded;
        run.reason = Some("retention removed 1 backup(s)".into());
        c.record_attempt(&run).await.unwrap();
        let done = c.last_success("a", "daily").await.unwrap().unwrap();
        assert_eq!(done.backup_ids, ["x", "y"]);
        assert!(done.finished_at.is_some());
        let recent = c.recent_runs("a", "daily", 10).await.unwrap();
        assert_eq!(
            recent.iter().map(|r| r.state).collect::<Vec<_>>(),
            [RunState::Succeeded, RunState::Skipped]
        );
        // A stop cuts b's run short: recorded FAILED at the next start.
        assert_eq!(c.fail_interrupted_runs().await.unwrap(), 1);
        let b = c.last_run("b", "default").await.unwrap().unwrap();
        assert_eq!(b.state, RunState::Failed);
        assert!(b.reason.unwrap().starts_with("interrupted"));
    }
}
