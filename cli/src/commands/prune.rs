//! `backup:prune [APP] [policy flags] [--dry-run]`: for every backup, keep
//! or remove and the reason, as `restic forget --dry-run` shows it.

use hop3_proto::v1::{PruneBackupsRequest, PruneDecision};
use serde::Serialize;

use crate::args::RetentionFlags;
use crate::client::ControllerClient;
use crate::error::CliError;
use crate::output::{Output, format_created, format_size, render_table};
use crate::views::BackupView;

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct PruneView {
    dry_run: bool,
    /// Backups kept.
    kept: usize,
    /// Backups removed (with `dry_run`: that would be).
    removed: usize,
    /// Backups to remove that could not be.
    failed: usize,
    decisions: Vec<DecisionView>,
}

#[derive(Debug, Serialize)]
struct DecisionView {
    backup: BackupView,
    /// `keep` or `remove`.
    action: &'static str,
    reasons: Vec<String>,
    /// For a backup to remove, without dry run: whether it was.
    removed: bool,
    /// Why it could not be removed; null otherwise.
    error: Option<String>,
}

/// Which policy a prune applies.
pub enum Policy<'a> {
    Flags(&'a RetentionFlags),
    /// The policy of this schedule of the app.
    Schedule(&'a str),
}

/// Applies `policy` to `app`'s backups (every app's when None).
pub async fn run(
    controller: &mut ControllerClient,
    out: Output,
    app: Option<&str>,
    policy: Policy<'_>,
    dry_run: bool,
) -> Result<(), CliError> {
    let (wire, schedule) = match policy {
        Policy::Flags(flags) => (Some(flags.to_wire()), String::new()),
        Policy::Schedule(name) => (None, name.to_owned()),
    };
    let decisions = controller
        .prune_backups(PruneBackupsRequest {
            app: app.unwrap_or_default().to_owned(),
            policy: wire,
            dry_run,
            schedule: schedule.clone(),
        })
        .await?;
    let described = match policy {
        Policy::Flags(flags) => describe(flags),
        Policy::Schedule(_) => format!("that of schedule {schedule}"),
    };
    let failed = decisions
        .iter()
        .filter(|d| !d.keep && !d.error.is_empty())
        .count();
    if out.is_json() {
        let kept = decisions.iter().filter(|d| d.keep).count();
        out.json(&PruneView {
            dry_run,
            kept,
            removed: decisions.len() - kept - failed,
            failed,
            decisions: decisions.into_iter().map(view).collect(),
        })?;
    } else {
        out.text(&render(&decisions, &described, dry_run))?;
    }
    if failed > 0 {
        return Err(CliError::PruneIncomplete { failed });
    }
    Ok(())
}

fn view(d: PruneDecision) -> DecisionView {
    DecisionView {
        backup: BackupView::listed(d.backup.unwrap_or_default()),
        action: if d.keep { "keep" } else { "remove" },
        reasons: d.reasons,
        removed: d.removed,
        error: (!d.error.is_empty()).then_some(d.error),
    }
}

/// The policy in words, as the first line says it.
pub fn describe(policy: &RetentionFlags) -> String {
    let counts = [
        (policy.keep_last, "last"),
        (policy.keep_hourly, "hourly"),
        (policy.keep_daily, "daily"),
        (policy.keep_weekly, "weekly"),
        (policy.keep_monthly, "monthly"),
        (policy.keep_yearly, "yearly"),
    ];
    let mut parts: Vec<String> = counts
        .iter()
        .filter_map(|(n, what)| n.map(|n| format!("{n} {what}")))
        .collect();
    if let Some(d) = policy.keep_within {
        parts.push(format!("all within {}", humantime::format_duration(d)));
    }
    if let Some(cap) = policy.max_total_size {
        parts.push(format!("at most {} per app", format_size(cap)));
    }
    if parts.is_empty() {
        return "no rule: every backup is kept".to_owned();
    }
    let zone = policy.tz.as_deref().unwrap_or("UTC");
    format!("keep {} (periods in {zone})", parts.join(", "))
}

/// One table per app, then what was (or would be) removed.
pub fn render(decisions: &[PruneDecision], policy: &str, dry_run: bool) -> String {
    let mut text = format!("Policy: {policy}\n");
    if decisions.is_empty() {
        text.push_str("No backups found.\n");
        return text;
    }
    let mut start = 0;
    while start < decisions.len() {
        let app = app_of(&decisions[start]);
        let end = decisions[start..]
            .iter()
            .position(|d| app_of(d) != app)
            .map_or(decisions.len(), |n| start + n);
        let group = &decisions[start..end];
        let kept = group.iter().filter(|d| d.keep).count();
        text.push_str(&format!(
            "\n{app}: {} backups, keep {kept}, remove {}\n",
            group.len(),
            group.len() - kept
        ));
        let rows: Vec<Vec<String>> = group.iter().map(|d| row(d, dry_run)).collect();
        text.push_str(&render_table(
            &["ACTION", "BACKUP ID", "CREATED", "SIZE", "STATUS", "WHY"],
            &rows,
        ));
        start = end;
    }
    let gone: Vec<&PruneDecision> = decisions.iter().filter(|d| !d.keep).collect();
    let failed = gone.iter().filter(|d| !d.error.is_empty()).count();
    let bytes: u64 = gone
        .iter()
        .filter(|d| d.error.is_empty())
        .filter_map(|d| d.backup.as_ref())
        .map(|b| b.total_size)
        .sum();
    let n = gone.len() - failed;
    text.push('\n');
    text.push_str(&if dry_run {
        format!(
            "Dry run: {n} backup(s) ({}) would be removed; nothing was.\n",
            format_size(bytes)
        )
    } else {
        format!("Removed {n} backup(s) ({}).\n", format_size(bytes))
    });
    text
}

fn app_of(d: &PruneDecision) -> &str {
    d.backup.as_ref().map_or("", |b| b.app.as_str())
}

fn row(d: &PruneDecision, dry_run: bool) -> Vec<String> {
    let b = d.backup.clone().unwrap_or_default();
    let (action, why) = match (d.keep, dry_run, d.error.as_str()) {
        (true, _, _) => ("keep", d.reasons.join(", ")),
        (false, true, _) => ("remove", d.reasons.join(", ")),
        (false, false, "") => ("removed", d.reasons.join(", ")),
        (false, false, error) => (
            "FAILED",
            format!("{}; not removed: {error}", d.reasons.join(", ")),
        ),
    };
    vec![
        action.to_owned(),
        b.backup_id.clone(),
        format_created(&b.created_at, &b.backup_id),
        format_size(b.total_size),
        b.status,
        why,
    ]
}

#[cfg(test)]
mod tests {
    use hop3_proto::v1::BackupSummary;

    use super::*;

    fn decision(app: &str, id: &str, keep: bool, reasons: &[&str], error: &str) -> PruneDecision {
        PruneDecision {
            backup: Some(BackupSummary {
                backup_id: id.into(),
                app: app.into(),
                status: "COMPLETED".into(),
                created_at: format!(
                    "{}-{}-{}T{}:{}:{}Z",
                    &id[0..4],
                    &id[4..6],
                    &id[6..8],
                    &id[9..11],
                    &id[11..13],
                    &id[13..15]
                ),
                total_size: 1_000_000,
                ..Default::default()
            }),
            keep,
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
            removed: !keep && error.is_empty(),
            error: error.into(),
        }
    }

    #[test]
    fn a_dry_run_says_what_and_why_per_app() {
        let decisions = [
            decision(
                "blog",
                "20251108_020000_aaaaaa",
                true,
                &["daily backup", "newest successful backup"],
                "",
            ),
            decision(
                "blog",
                "20251107_020000_bbbbbb",
                false,
                &["no rule keeps it"],
                "",
            ),
            decision(
                "shop",
                "20251108_030000_cccccc",
                true,
                &["daily backup"],
                "",
            ),
        ];
        let policy = RetentionFlags {
            keep_daily: Some(1),
            keep_within: Some(std::time::Duration::from_secs(36 * 3600)),
            ..Default::default()
        };
        assert_eq!(
            render(&decisions, &describe(&policy), true),
            "\
Policy: keep 1 daily, all within 1day 12h (periods in UTC)

blog: 2 backups, keep 1, remove 1
ACTION  BACKUP ID               CREATED              SIZE      STATUS     WHY
keep    20251108_020000_aaaaaa  2025-11-08 02:00:00  976.6 KB  COMPLETED  daily backup, newest successful backup
remove  20251107_020000_bbbbbb  2025-11-07 02:00:00  976.6 KB  COMPLETED  no rule keeps it

shop: 1 backups, keep 1, remove 0
ACTION  BACKUP ID               CREATED              SIZE      STATUS     WHY
keep    20251108_030000_cccccc  2025-11-08 03:00:00  976.6 KB  COMPLETED  daily backup

Dry run: 1 backup(s) (976.6 KB) would be removed; nothing was.
"
        );
    }

    #[test]
    fn a_failed_removal_is_shown_and_not_counted_as_removed() {
        let decisions = [
            decision("blog", "20251108_020000_aaaaaa", true, &["last backup"], ""),
            decision(
                "blog",
                "20251107_020000_bbbbbb",
                false,
                &["no rule keeps it"],
                "",
            ),
            decision(
                "blog",
                "20251106_020000_cccccc",
                false,
                &["no rule keeps it"],
                "Backup 20251106_020000_cccccc is being restored; wait for it to finish",
            ),
        ];
        let text = render(&decisions, &describe(&RetentionFlags::default()), false);
        assert!(text.contains("FAILED   20251106_020000_cccccc"), "{text}");
        assert!(text.contains("not removed: Backup 20251106_020000_cccccc is being restored"));
        assert!(
            text.ends_with("Removed 1 backup(s) (976.6 KB).\n"),
            "{text}"
        );
        assert!(text.starts_with("Policy: no rule: every backup is kept\n"));
    }
}
