//! `backup:check-age APP --max-age DURATION`: the guide's monitoring recipe
//! (`check-backup-age.sh`) as a command, for cron, Nagios or a systemd
//! timer: one line on stdout, exit 0 when APP's newest COMPLETED backup is
//! younger than the limit, 1 when it is older or there is none.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::client::ControllerClient;
use crate::error::CliError;
use crate::output::{Output, parse_utc};
use crate::views::BackupView;

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct AgeView {
    app: String,
    /// `ok`, `stale` or `missing`.
    status: &'static str,
    max_age_seconds: u64,
    /// Age of the newest COMPLETED backup; null when there is none.
    age_seconds: Option<u64>,
    newest: Option<BackupView>,
}

/// Checks the age of `app`'s newest COMPLETED backup against `max_age`.
pub async fn run(
    controller: &mut ControllerClient,
    out: Output,
    app: &str,
    max_age: Duration,
) -> Result<(), CliError> {
    let newest = controller
        .list_backups(Some(app), 1, Some("COMPLETED"))
        .await?
        .into_iter()
        .next();
    let now = OffsetDateTime::now_utc();
    let age = newest.as_ref().and_then(|b| {
        let created = parse_utc(&b.created_at)?;
        Some(Duration::try_from(now - created).unwrap_or_default())
    });
    let (status, line) = verdict(
        app,
        newest.as_ref().map(|b| b.backup_id.as_str()),
        age,
        max_age,
    );
    if out.is_json() {
        out.json(&AgeView {
            app: app.to_owned(),
            status,
            max_age_seconds: max_age.as_secs(),
            age_seconds: age.map(|a| a.as_secs()),
            newest: newest.map(BackupView::listed),
        })?;
    } else {
        out.text(&format!("{line}\n"))?;
    }
    match status {
        "ok" => Ok(()),
        _ => Err(CliError::CheckFailed(line)),
    }
}

/// The status and the line saying it.
fn verdict(
    app: &str,
    id: Option<&str>,
    age: Option<Duration>,
    max_age: Duration,
) -> (&'static str, String) {
    let limit = humantime::format_duration(max_age);
    match (id, age) {
        (Some(id), Some(age)) => {
            // Whole minutes: seconds are noise in a monitoring line.
            let shown = humantime::format_duration(Duration::from_secs(age.as_secs() / 60 * 60));
            if age <= max_age {
                (
                    "ok",
                    format!(
                        "OK: {app}'s newest COMPLETED backup {id} is {shown} old (limit {limit})"
                    ),
                )
            } else {
                (
                    "stale",
                    format!(
                        "STALE: {app}'s newest COMPLETED backup {id} is {shown} old (limit {limit})"
                    ),
                )
            }
        }
        _ => (
            "missing",
            format!("MISSING: {app} has no COMPLETED backup (limit {limit})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn young_old_and_missing() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        let (s, line) = verdict(
            "shop",
            Some("ID"),
            Some(h(3) + Duration::from_secs(75)),
            h(26),
        );
        assert_eq!(
            (s, line.as_str()),
            (
                "ok",
                "OK: shop's newest COMPLETED backup ID is 3h 1m old (limit 1day 2h)"
            )
        );
        let (s, line) = verdict("shop", Some("ID"), Some(h(27)), h(26));
        assert_eq!(s, "stale");
        assert!(
            line.starts_with("STALE: shop's newest COMPLETED backup ID is 1day 3h old"),
            "{line}"
        );
        let (s, line) = verdict("shop", None, None, h(26));
        assert_eq!(
            (s, line.as_str()),
            (
                "missing",
                "MISSING: shop has no COMPLETED backup (limit 1day 2h)"
            )
        );
    }
}
