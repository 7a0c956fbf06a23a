//! Which backups a retention policy keeps, and why: restic's `forget`
//! rules (`internal/restic/snapshot_policy.go`), which operators already
//! know, over an app's successful backups, with rails restic lacks: the
//! newest success and pinned backups are never removed, backups still
//! being written are never touched, a failed backup is kept until a later
//! success, and an empty policy keeps everything.
//!
//! Planning is pure: it reads catalog rows and decides; removing is the
//! caller's (store first, then the row).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{Datelike, TimeZone, Timelike};
use chrono_tz::Tz;
use time::OffsetDateTime;

use crate::catalog::{BackupRow, BackupStatus};

/// A retention policy. Counts are of periods *that have backups* (as in
/// restic), not calendar periods; None turns a rule off. Stored with a
/// schedule as JSON, absent rules left out, the window in seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Policy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Keep every backup this much younger than the newest success (not
    /// than now: an app that stopped backing up keeps its history).
    #[serde(
        rename = "keep_within_seconds",
        with = "seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_within: Option<Duration>,
    /// After the rules: remove the oldest kept backups while the app's
    /// kept total exceeds this many bytes (the rails still hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_total_size: Option<u64>,
}

/// A window as whole seconds in the stored form.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

impl Policy {
    /// No rule at all: everything is kept.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a backup is kept or removed, as `backup:prune --dry-run` says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Kept by a counting rule: "last", "hourly", ..., and whether as the
    /// oldest backup while the rule's count remained.
    Rule { rule: Rule, oldest: bool },
    /// Kept by `keep_within`.
    Within(Duration),
    /// Kept: pinned (`backup:pin`).
    Pinned,
    /// Kept: the app's newest successful backup.
    NewestSuccess,
    /// Kept: the policy is empty.
    EmptyPolicy,
    /// Kept: still being written.
    InProgress,
    /// Kept: failed after the app's newest success (or with none yet),
    /// so that its error stays visible until a backup succeeds.
    FailedSinceSuccess,
    /// Removed: failed before a later success.
    FailedBeforeSuccess,
    /// Removed: no rule keeps it.
    NoRule,
    /// Removed: the kept total was over `max_total_size`.
    OverSizeCap(u64),
    /// Removed: an earlier removal did not finish (DELETE_PENDING).
    DeletePending,
}

/// A counting rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule { rule, oldest } => {
                let name = match rule {
                    Rule::Last => "last",
                    Rule::Hourly => "hourly",
                    Rule::Daily => "daily",
                    Rule::Weekly => "weekly",
                    Rule::Monthly => "monthly",
                    Rule::Yearly => "yearly",
                };
                if *oldest {
                    write!(f, "oldest {name} backup")
                } else {
                    write!(f, "{name} backup")
                }
            }
            Self::Within(d) => write!(f, "within {}", humantime::format_duration(*d)),
            Self::Pinned => f.write_str("pinned"),
            Self::NewestSuccess => f.write_str("newest successful backup"),
            Self::EmptyPolicy => f.write_str("policy is empty"),
            Self::InProgress => f.write_str("being written"),
            Self::FailedSinceSuccess => f.write_str("failed, no success since"),
            Self::FailedBeforeSuccess => f.write_str("failed, a later backup succeeded"),
            Self::NoRule => f.write_str("no rule keeps it"),
            Self::OverSizeCap(cap) => write!(f, "over the size cap of {cap} bytes"),
            Self::DeletePending => f.write_str("an earlier deletion did not finish"),
        }
    }
}

/// What the policy does with one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub keep: bool,
    /// Every reason that keeps it, or the one that removes it.
    pub reasons: Vec<Reason>,
}

impl Decision {
    fn keep(reason: Reason) -> Self {
        Self {
            keep: true,
            reasons: vec![reason],
        }
    }

    fn remove(reason: Reason) -> Self {
        Self {
            keep: false,
            reasons: vec![reason],
        }
    }
}

/// The policy's decision for each of `rows`, in their order, grouped by
/// app (each app's history is judged on its own), with calendar periods
/// in `tz` and pinned backups kept whatever the rules say.
pub fn plan(policy: &Policy, tz: Tz, rows: &[BackupRow]) -> Vec<Decision> {
    let mut by_app: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        by_app.entry(&row.app).or_default().push(i);
    }
    let mut decisions = vec![Decision::keep(Reason::EmptyPolicy); rows.len()];
    for indices in by_app.values() {
        for (i, d) in indices.iter().zip(plan_app(policy, tz, rows, indices)) {
            decisions[*i] = d;
        }
    }
    decisions
}

/// [`plan`] for the rows of one app, at `indices`.
fn plan_app(policy: &Policy, tz: Tz, rows: &[BackupRow], indices: &[usize]) -> Vec<Decision> {
    if policy.is_empty() {
        // Even an empty policy finishes what an earlier removal started:
        // those files are half gone, and no rule could keep them.
        return indices
            .iter()
            .map(|&i| match rows[i].status {
                BackupStatus::DeletePending if !rows[i].pinned => {
                    Decision::remove(Reason::DeletePending)
                }
                _ => Decision::keep(Reason::EmptyPolicy),
            })
            .collect();
    }
    // Newest first; equal times by ID, so that a plan never depends on
    // the order the catalog returned.
    let mut successes: Vec<usize> = (0..indices.len())
        .filter(|&k| rows[indices[k]].status == BackupStatus::Completed)
        .collect();
    successes.sort_by(|&a, &b| {
        let (a, b) = (&rows[indices[a]], &rows[indices[b]]);
        (b.created_at, b.backup_id.as_str()).cmp(&(a.created_at, a.backup_id.as_str()))
    });
    let mut out: Vec<Option<Decision>> = vec![None; indices.len()];
    let newest = successes.first().map(|&k| rows[indices[k]].created_at);

    let rules = [
        (Rule::Last, policy.keep_last),
        (Rule::Hourly, policy.keep_hourly),
        (Rule::Daily, policy.keep_daily),
        (Rule::Weekly, policy.keep_weekly),
        (Rule::Monthly, policy.keep_monthly),
        (Rule::Yearly, policy.keep_yearly),
    ];
    let mut left: Vec<u32> = rules.iter().map(|(_, n)| n.unwrap_or(0)).collect();
    let mut last: Vec<Option<i64>> = vec![None; rules.len()];
    for (nr, &k) in successes.iter().enumerate() {
        let row = &rows[indices[k]];
        let mut reasons = Vec::new();
        if row.pinned {
            reasons.push(Reason::Pinned);
        }
        if let (Some(within), Some(newest)) = (policy.keep_within, newest)
            && row.created_at > newest - within
        {
            reasons.push(Reason::Within(within));
        }
        let oldest = nr == successes.len() - 1;
        for (r, (rule, _)) in rules.iter().enumerate() {
            if left[r] == 0 {
                continue;
            }
            let period = bucket(*rule, row.created_at, tz, nr);
            if last[r] != Some(period) || oldest {
                reasons.push(Reason::Rule {
                    rule: *rule,
                    oldest: oldest && last[r] == Some(period),
                });
                last[r] = Some(period);
                left[r] -= 1;
            }
        }
        if nr == 0 {
            reasons.push(Reason::NewestSuccess);
        }
        out[k] = Some(if reasons.is_empty() {
            Decision::remove(Reason::NoRule)
        } else {
            Decision {
                keep: true,
                reasons,
            }
        });
    }

    for (k, &i) in indices.iter().enumerate() {
        let row = &rows[i];
        out[k].get_or_insert_with(|| match row.status {
            BackupStatus::Completed => unreachable!("every success was judged"),
            BackupStatus::Started => Decision::keep(Reason::InProgress),
            // Pinned before a removal was started: the pin wins, as ever
            // (backup:delete refuses a pinned backup anyway).
            BackupStatus::DeletePending | BackupStatus::Failed if row.pinned => {
                Decision::keep(Reason::Pinned)
            }
            BackupStatus::DeletePending => Decision::remove(Reason::DeletePending),
            BackupStatus::Failed => match newest {
                Some(t) if row.created_at < t => Decision::remove(Reason::FailedBeforeSuccess),
                _ => Decision::keep(Reason::FailedSinceSuccess),
            },
        });
    }
    let mut out: Vec<Decision> = out.into_iter().map(|d| d.expect("all judged")).collect();

    if let Some(cap) = policy.max_total_size {
        let mut total: u64 = (0..indices.len())
            .filter(|&k| out[k].keep)
            .map(|k| rows[indices[k]].total_size)
            .sum();
        // Oldest first, and only what no rail protects.
        for &k in successes.iter().rev() {
            if total <= cap {
                break;
            }
            let protected = out[k]
                .reasons
                .iter()
                .any(|r| matches!(r, Reason::Pinned | Reason::NewestSuccess));
            if out[k].keep && !protected {
                total -= rows[indices[k]].total_size;
                out[k] = Decision::remove(Reason::OverSizeCap(cap));
            }
        }
    }
    out
}

/// The period of `t` in `tz` a rule counts by; `Last` counts backups.
fn bucket(rule: Rule, t: OffsetDateTime, tz: Tz, nr: usize) -> i64 {
    let local = tz
        .timestamp_opt(t.unix_timestamp(), 0)
        .single()
        .expect("a UTC instant has one local time");
    let (y, m, d, h) = (
        i64::from(local.year()),
        i64::from(local.month()),
        i64::from(local.day()),
        i64::from(local.hour()),
    );
    match rule {
        Rule::Last => nr as i64,
        Rule::Hourly => ((y * 100 + m) * 100 + d) * 100 + h,
        Rule::Daily => (y * 100 + m) * 100 + d,
        Rule::Weekly => {
            let week = local.iso_week();
            i64::from(week.year()) * 100 + i64::from(week.week())
        }
        Rule::Monthly => y * 100 + m,
        Rule::Yearly => y,
    }
}

#[cfg(test)]
mod tests;
