//! Schedules: when an app is backed up and which retention policy follows.
//! This module is pure (what a schedule is, its fire times, its spread and
//! its lateness); `scheduler.rs` runs them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::retention::Policy;

/// The name of a schedule given none.
pub const DEFAULT_NAME: &str = "default";

/// One schedule of one app, as the catalog and the store keep it (the
/// store's `schedules/<app>.json` holds every schedule of the app).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub app: String,
    pub name: String,
    /// The cron expression as given: 5 fields, or 6 with leading seconds,
    /// or `@hourly`, `@daily`, ...
    pub cron: String,
    /// The IANA zone the expression, and the policy's periods, are read in.
    pub time_zone: String,
    pub no_services: bool,
    /// The host whose copy of the app to back up; None: the one serving it.
    pub host: Option<String>,
    /// Applied to the app after each successful run.
    #[serde(default)]
    pub retention: Policy,
    /// Pinged as healthchecks.io defines at each run's start and end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_url: Option<String>,
    /// RFC 3339, UTC: slots before it were never due.
    pub created_at: String,
}

/// A parsed cron expression in its zone.
#[derive(Clone, Debug)]
pub struct Timing {
    cron: Cron,
    tz: Tz,
}

/// Why an expression or zone was refused.
#[derive(Debug, thiserror::Error)]
pub enum TimingError {
    #[error(
        "cron expression {expr:?}: {reason} (e.g. \"0 3 * * *\", \"*/15 * * * *\", \"@daily\", or 6 fields with seconds first)"
    )]
    Cron { expr: String, reason: String },
    #[error("cron expression {0:?} never fires")]
    Never(String),
    #[error(
        "unknown time zone {0:?}: use an IANA name such as UTC, Europe/Paris or America/New_York"
    )]
    Zone(String),
}

impl Timing {
    /// Parses `expr` (5 fields, 6 with leading seconds, or a `@` form) in
    /// zone `tz` (empty: UTC), and checks that it fires at all.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, TimingError> {
        let tz: Tz = match tz {
            "" => Tz::UTC,
            zone => zone
                .parse()
                .map_err(|_| TimingError::Zone(zone.to_owned()))?,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| TimingError::Cron {
                expr: expr.to_owned(),
                reason: e.to_string(),
            })?;
        let timing = Self { cron, tz };
        if timing.next_after(Utc::now()).is_none() {
            return Err(TimingError::Never(expr.to_owned()));
        }
        Ok(timing)
    }

    /// The zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The `n` next fire times after `t`.
    pub fn next_n(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            let Some(next) = self.next_after(at) else {
                break;
            };
            out.push(next);
            at = next;
        }
        out
    }

    /// The fire times in `(after, upto]`, oldest first, at most `cap` of
    /// the newest ones (older ones beyond the cap are counted in the
    /// second value).
    pub fn between(
        &self,
        after: DateTime<Utc>,
        upto: DateTime<Utc>,
        cap: usize,
    ) -> (Vec<DateTime<Utc>>, u64) {
        let mut slots = std::collections::VecDeque::new();
        let mut dropped = 0u64;
        let mut at = after;
        while let Some(next) = self.next_after(at) {
            if next > upto {
                break;
            }
            if slots.len() == cap {
                slots.pop_front();
                dropped += 1;
            }
            slots.push_back(next);
            at = next;
        }
        (slots.into(), dropped)
    }

    /// How long after `slot` the next one comes: the schedule's period
    /// there (a month varies; DST shortens or lengthens a day).
    pub fn period_at(&self, slot: DateTime<Utc>) -> Duration {
        self.next_after(slot)
            .and_then(|n| (n - slot).to_std().ok())
            .unwrap_or(Duration::from_secs(24 * 3600))
    }
}

/// How long after each slot `app`'s schedule `name` starts: a delay that
/// is the same every time for the same schedule (a hash of its names), so
/// that 200 apps on `@daily` do not all start at midnight, and within a
/// quarter of the period, so that a frequent schedule stays on time.
pub fn spread(app: &str, name: &str, window: Duration, period: Duration) -> Duration {
    let limit = window.min(period / 4).as_secs();
    if limit == 0 {
        return Duration::ZERO;
    }
    let digest = Sha256::new()
        .chain_update(app.as_bytes())
        .chain_update([0])
        .chain_update(name.as_bytes())
        .finalize();
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    Duration::from_secs(n % limit)
}

/// Formats a slot as the catalog keeps it: RFC 3339 in UTC, whole seconds,
/// so that the text sorts as the time.
pub fn slot_text(slot: DateTime<Utc>) -> String {
    slot.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses a slot (or any RFC 3339 time) back.
pub fn parse_slot(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn five_fields_six_with_seconds_and_the_at_forms() {
        let t = utc(2026, 12, 3, 10, 0, 0);
        let daily = Timing::parse("@daily", "").unwrap();
        assert_eq!(daily.next_after(t), Some(utc(2026, 12, 4, 0, 0, 0)));
        let hourly = Timing::parse("@hourly", "UTC").unwrap();
        assert_eq!(hourly.next_after(t), Some(utc(2026, 12, 3, 11, 0, 0)));
        let five = Timing::parse("30 3 * * *", "").unwrap();
        assert_eq!(five.next_after(t), Some(utc(2026, 12, 4, 3, 30, 0)));
        let six = Timing::parse("*/10 * * * * *", "").unwrap();
        assert_eq!(
            six.next_n(t, 3),
            [
                utc(2026, 12, 3, 10, 0, 10),
                utc(2026, 12, 3, 10, 0, 20),
                utc(2026, 12, 3, 10, 0, 30)
            ]
        );
        assert_eq!(six.period_at(t), Duration::from_secs(10));
    }

    #[test]
    fn a_zone_moves_the_fire_times_and_follows_dst() {
        // 03:00 in Paris: 02:00 UTC in winter, 01:00 UTC in summer.
        let paris = Timing::parse("0 3 * * *", "Europe/Paris").unwrap();
        assert_eq!(
            paris.next_after(utc(2026, 12, 3, 10, 0, 0)),
            Some(utc(2026, 12, 4, 2, 0, 0))
        );
        assert_eq!(
            paris.next_after(utc(2026, 7, 3, 10, 0, 0)),
            Some(utc(2026, 7, 4, 1, 0, 0))
        );
        // The day of the spring change is 23 hours long.
        let spring = utc(2026, 3, 28, 2, 0, 0);
        assert_eq!(paris.period_at(spring), Duration::from_secs(23 * 3600));
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        for bad in ["", "* * *", "61 * * * *", "hello", "* * * * * * *"] {
            let err = Timing::parse(bad, "").unwrap_err();
            assert!(matches!(err, TimingError::Cron { .. }), "{bad:?}: {err}");
        }
        let err = Timing::parse("@daily", "Mars/Olympus").unwrap_err();
        assert!(err.to_string().contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn the_slots_between_two_times_are_capped_to_the_newest() {
        let hourly = Timing::parse("0 * * * *", "").unwrap();
        let (slots, dropped) =
            hourly.between(utc(2026, 12, 3, 0, 0, 0), utc(2026, 12, 3, 10, 30, 0), 3);
        assert_eq!(
            slots,
            [
                utc(2026, 12, 3, 8, 0, 0),
                utc(2026, 12, 3, 9, 0, 0),
                utc(2026, 12, 3, 10, 0, 0)
            ]
        );
        assert_eq!(dropped, 7);
        let (none, _) = hourly.between(utc(2026, 12, 3, 10, 0, 0), utc(2026, 12, 3, 10, 30, 0), 3);
        assert!(none.is_empty());
    }

    #[test]
    fn the_spread_is_stable_bounded_and_spreads() {
        let day = Duration::from_secs(24 * 3600);
        let window = Duration::from_secs(3600);
        let a = spread("blog", "default", window, day);
        assert_eq!(a, spread("blog", "default", window, day));
        assert!(a < window);
        // Within a quarter of a short period.
        assert!(spread("blog", "default", window, Duration::from_secs(2)) == Duration::ZERO);
        assert!(spread("blog", "x", window, Duration::from_secs(40)) < Duration::from_secs(10));
        // 200 apps do not start in the same minute.
        let minutes: std::collections::HashSet<u64> = (0..200)
            .map(|i| spread(&format!("app-{i}"), "default", window, day).as_secs() / 60)
            .collect();
        assert!(minutes.len() > 40, "{} distinct minutes", minutes.len());
    }

    #[test]
    fn a_schedule_round_trips_through_its_stored_form() {
        let s = Schedule {
            app: "blog".into(),
            name: DEFAULT_NAME.into(),
            cron: "0 3 * * *".into(),
            time_zone: "Europe/Paris".into(),
            no_services: false,
            host: None,
            retention: Policy {
                keep_daily: Some(7),
                keep_within: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
            ping_url: None,
            created_at: "2026-12-03T10:00:00Z".into(),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(
            text.contains("\"keep_daily\":7")
                && text.contains("\"keep_within_seconds\":3600")
                && !text.contains("keep_last"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Schedule>(&text).unwrap(), s);
        assert_eq!(slot_text(utc(2026, 12, 3, 1, 2, 3)), "2026-12-03T01:02:03Z");
        assert_eq!(
            parse_slot("2026-12-03T01:02:03Z"),
            Some(utc(2026, 12, 3, 1, 2, 3))
        );
    }
}
