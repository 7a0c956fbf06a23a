use super::*;
use hop3_proto::BackupId;
use proptest::prelude::*;
use time::macros::datetime;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn row(app: &str, at: OffsetDateTime, status: BackupStatus, n: u32) -> BackupRow {
    let b = n.to_be_bytes();
    BackupRow {
        backup_id: BackupId::at(at, [b[1], b[2], b[3]]),
        app: app.into(),
        host: "h".into(),
        status,
        created_at: at,
        total_size: 100,
        services: Vec::new(),
        error: None,
        pinned: false,
    }
}

/// One successful backup of `app` at each of `times`.
fn history(app: &str, times: &[OffsetDateTime]) -> Vec<BackupRow> {
    times
        .iter()
        .enumerate()
        .map(|(n, t)| row(app, *t, BackupStatus::Completed, n as u32))
        .collect()
}

/// The times of the kept rows, in the rows' order.
fn kept(policy: &Policy, tz: Tz, rows: &[BackupRow]) -> Vec<OffsetDateTime> {
    plan(policy, tz, rows)
        .iter()
        .zip(rows)
        .filter(|(d, _)| d.keep)
        .map(|(_, r)| r.created_at)
        .collect()
}

/// Fails unless the first of `rows` is kept only as the oldest daily backup.
fn kept_as_oldest_daily(policy: &Policy, tz: Tz, rows: &[BackupRow]) {
    let plan = plan(policy, tz, rows);
    let oldest = Reason::Rule {
        rule: Rule::Daily,
        oldest: true,
    };
    assert_eq!(plan[0].reasons, [oldest]);
}

fn daily(from: OffsetDateTime, days: i64) -> Vec<OffsetDateTime> {
    (0..days).map(|d| from + time::Duration::days(d)).collect()
}

#[test]
fn an_empty_policy_keeps_everything() {
    let mut rows = history("a", &daily(datetime!(2025-01-01 3:00 UTC), 5));
    rows.push(row(
        "a",
        datetime!(2024-01-01 0:00 UTC),
        BackupStatus::Failed,
        9,
    ));
    let plan = plan(&Policy::default(), Tz::UTC, &rows);
    assert!(
        plan.iter()
            .all(|d| d.keep && d.reasons == [Reason::EmptyPolicy])
    );
}

#[test]
fn keep_last_keeps_the_newest_whatever_the_order_given() {
    let mut rows = history("a", &daily(datetime!(2025-01-01 3:00 UTC), 10));
    rows.reverse();
    let policy = Policy {
        keep_last: Some(3),
        ..Default::default()
    };
    let mut k = kept(&policy, Tz::UTC, &rows);
    k.sort();
    assert_eq!(k, daily(datetime!(2025-01-08 3:00 UTC), 3));
    let plan = plan(&policy, Tz::UTC, &rows);
    assert_eq!(
        plan[0].reasons,
        [
            Reason::Rule {
                rule: Rule::Last,
                oldest: false
            },
            Reason::NewestSuccess
        ]
    );
    assert_eq!(plan[9].reasons, [Reason::NoRule]);
}

#[test]
fn daily_counts_days_that_have_backups_newest_of_each() {
    // Two a day on the 1st to the 3rd, none on the 4th and 5th, one on the 6th.
    let times = [
        datetime!(2025-03-01 08:00 UTC),
        datetime!(2025-03-01 20:00 UTC),
        datetime!(2025-03-02 08:00 UTC),
        datetime!(2025-03-02 20:00 UTC),
        datetime!(2025-03-03 08:00 UTC),
        datetime!(2025-03-03 20:00 UTC),
        datetime!(2025-03-06 12:00 UTC),
    ];
    let rows = history("a", &times);
    let policy = |n| Policy {
        keep_daily: Some(n),
        ..Default::default()
    };
    assert_eq!(
        kept(&policy(3), Tz::UTC, &rows),
        [times[3], times[5], times[6]],
        "the gap days do not count"
    );
    // A count left at the oldest backup keeps it too (restic's rule).
    assert_eq!(
        kept(&policy(10), Tz::UTC, &rows),
        [times[0], times[1], times[3], times[5], times[6]]
    );
    kept_as_oldest_daily(&policy(10), Tz::UTC, &rows);
}

#[test]
fn weekly_is_by_iso_week_monthly_and_yearly_by_the_calendar() {
    // Sunday 2024-12-29 is in ISO week 2024-W52, Monday 2024-12-30 in 2025-W01.
    let times = [
        datetime!(2024-12-28 12:00 UTC),
        datetime!(2024-12-29 12:00 UTC),
        datetime!(2024-12-30 12:00 UTC),
        datetime!(2024-12-31 12:00 UTC),
    ];
    let rows = history("a", &times);
    let weekly = Policy {
        keep_weekly: Some(2),
        ..Default::default()
    };
    assert_eq!(kept(&weekly, Tz::UTC, &rows), [times[1], times[3]]);
    let monthly = Policy {
        keep_monthly: Some(1),
        ..Default::default()
    };
    assert_eq!(kept(&monthly, Tz::UTC, &rows), [times[3]]);
    let years = [
        datetime!(2023-06-01 0:00 UTC),
        datetime!(2024-06-01 0:00 UTC),
        datetime!(2024-07-01 0:00 UTC),
    ];
    let yearly = Policy {
        keep_yearly: Some(5),
        ..Default::default()
    };
    assert_eq!(
        kept(&yearly, Tz::UTC, &history("a", &years)),
        [years[0], years[2]]
    );
}

#[test]
fn keep_within_counts_from_the_newest_success_not_from_now() {
    // An app that stopped backing up two years ago keeps its last week.
    let times = daily(datetime!(2023-01-01 3:00 UTC), 30);
    let rows = history("a", &times);
    let policy = Policy {
        keep_within: Some(7 * DAY),
        ..Default::default()
    };
    assert_eq!(kept(&policy, Tz::UTC, &rows), times[23..]);
    let plan = plan(&policy, Tz::UTC, &rows);
    assert_eq!(plan[23].reasons, [Reason::Within(7 * DAY)]);
    assert_eq!(plan[23].reasons[0].to_string(), "within 7days");
}

#[test]
fn days_are_the_policy_time_zones() {
    // 23:30 and 00:30 UTC are two UTC days but one day in Paris (UTC+1).
    let times = [
        datetime!(2025-01-10 23:30 UTC),
        datetime!(2025-01-11 00:30 UTC),
    ];
    let rows = history("a", &times);
    let policy = Policy {
        keep_daily: Some(1),
        keep_last: Some(0),
        ..Default::default()
    };
    assert_eq!(kept(&policy, Tz::UTC, &rows), [times[1]]);
    let paris: Tz = "Europe/Paris".parse().unwrap();
    let two_days = Policy {
        keep_daily: Some(2),
        ..Default::default()
    };
    assert_eq!(kept(&two_days, Tz::UTC, &rows), times);
    // In Paris one day: the count of 2 remains, so the oldest is kept too
    // (as the oldest, not as another day).
    kept_as_oldest_daily(&two_days, paris, &rows);
}

#[test]
fn the_repeated_hour_of_a_dst_change_is_one_hour() {
    // 2025-11-02 in New York: 01:30 EDT (05:30 UTC) and 01:30 EST (06:30 UTC).
    let ny: Tz = "America/New_York".parse().unwrap();
    let times = [
        datetime!(2025-11-02 04:45 UTC),
        datetime!(2025-11-02 05:30 UTC),
        datetime!(2025-11-02 06:30 UTC),
    ];
    let rows = history("a", &times);
    let policy = Policy {
        keep_hourly: Some(2),
        ..Default::default()
    };
    assert_eq!(kept(&policy, ny, &rows), [times[0], times[2]]);
    assert_eq!(kept(&policy, Tz::UTC, &rows), [times[1], times[2]]);
}

#[test]
fn rails_newest_success_pinned_in_progress_and_failures() {
    let rows = vec![
        row(
            "a",
            datetime!(2025-01-01 0:00 UTC),
            BackupStatus::Completed,
            1,
        ),
        row(
            "a",
            datetime!(2025-01-02 0:00 UTC),
            BackupStatus::Completed,
            2,
        ),
        row("a", datetime!(2025-01-03 0:00 UTC), BackupStatus::Failed, 3),
        row(
            "a",
            datetime!(2025-01-04 0:00 UTC),
            BackupStatus::Completed,
            4,
        ),
        row("a", datetime!(2025-01-05 0:00 UTC), BackupStatus::Failed, 5),
        row(
            "a",
            datetime!(2025-01-06 0:00 UTC),
            BackupStatus::Started,
            6,
        ),
    ];
    // A rule that keeps nothing: only the rails keep anything.
    let policy = Policy {
        keep_last: Some(0),
        ..Default::default()
    };
    let mut rows = rows;
    rows[0].pinned = true;
    let plan = plan(&policy, Tz::UTC, &rows);
    let reasons: Vec<(bool, &Reason)> = plan.iter().map(|d| (d.keep, &d.reasons[0])).collect();
    assert_eq!(
        reasons,
        [
            (true, &Reason::Pinned),
            (false, &Reason::NoRule),
            (false, &Reason::FailedBeforeSuccess),
            (true, &Reason::NewestSuccess),
            (true, &Reason::FailedSinceSuccess),
            (true, &Reason::InProgress),
        ]
    );
    // Failures with no success at all stay.
    let failed = vec![row(
        "b",
        datetime!(2025-01-01 0:00 UTC),
        BackupStatus::Failed,
        1,
    )];
    assert!(super::plan(&policy, Tz::UTC, &failed)[0].keep);
    // A removal that did not finish is finished, even by an empty policy.
    let pending = vec![
        row(
            "c",
            datetime!(2025-01-01 0:00 UTC),
            BackupStatus::DeletePending,
            1,
        ),
        row(
            "c",
            datetime!(2025-01-02 0:00 UTC),
            BackupStatus::Completed,
            2,
        ),
    ];
    for policy in [Policy::default(), policy] {
        let plan = super::plan(&policy, Tz::UTC, &pending);
        assert_eq!(
            plan[0],
            Decision::remove(Reason::DeletePending),
            "{policy:?}"
        );
        assert!(plan[1].keep);
    }
}

#[test]
fn the_size_cap_removes_the_oldest_first_but_never_the_newest() {
    let rows = history("a", &daily(datetime!(2025-01-01 3:00 UTC), 5));
    let policy = |cap| Policy {
        keep_last: Some(5),
        max_total_size: Some(cap),
        ..Default::default()
    };
    assert_eq!(
        kept(&policy(250), Tz::UTC, &rows),
        daily(datetime!(2025-01-04 3:00 UTC), 2)
    );
    assert_eq!(
        kept(&policy(0), Tz::UTC, &rows),
        [datetime!(2025-01-05 3:00 UTC)]
    );
    let plan = plan(&policy(250), Tz::UTC, &rows);
    assert_eq!(plan[0].reasons, [Reason::OverSizeCap(250)]);
}

#[test]
fn each_app_is_judged_on_its_own() {
    let mut rows = history("a", &daily(datetime!(2025-01-01 3:00 UTC), 3));
    rows.extend(history("b", &daily(datetime!(2020-01-01 3:00 UTC), 3)));
    let policy = Policy {
        keep_last: Some(1),
        ..Default::default()
    };
    assert_eq!(
        kept(&policy, Tz::UTC, &rows),
        [
            datetime!(2025-01-03 3:00 UTC),
            datetime!(2020-01-03 3:00 UTC)
        ]
    );
}

fn any_policy() -> impl Strategy<Value = Policy> {
    let count = || proptest::option::of(0u32..6);
    (
        (count(), count(), count(), count(), count(), count()),
        proptest::option::of(0u64..40 * 24 * 3600),
        proptest::option::of(0u64..2_000),
    )
        .prop_map(|((l, h, d, w, m, y), within, cap)| Policy {
            keep_last: l,
            keep_hourly: h,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            keep_yearly: y,
            keep_within: within.map(Duration::from_secs),
            max_total_size: cap,
        })
}

fn any_history() -> impl Strategy<Value = Vec<BackupRow>> {
    proptest::collection::vec((0i64..400 * 24 * 3600, 0u8..10, 0u64..300), 0..40).prop_map(
        |entries| {
            entries
                .into_iter()
                .enumerate()
                .map(|(n, (secs, status, size))| {
                    let status = match status {
                        0 => BackupStatus::Failed,
                        1 => BackupStatus::Started,
                        2 => BackupStatus::DeletePending,
                        _ => BackupStatus::Completed,
                    };
                    let at = datetime!(2024-01-01 0:00 UTC) + time::Duration::seconds(secs);
                    BackupRow {
                        total_size: size,
                        ..row(["a", "b"][n % 2], at, status, n as u32)
                    }
                })
                .collect()
        },
    )
}

proptest! {
    #[test]
    fn the_rails_always_hold_and_a_second_pass_removes_nothing(
        policy in any_policy(),
        rows in any_history(),
        pin_every in 2usize..8,
        zone in prop::sample::select(vec!["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]),
    ) {
        let tz: Tz = zone.parse().unwrap();
        let mut rows = rows;
        for r in rows.iter_mut().step_by(pin_every) {
            r.pinned = true;
        }
        let first = plan(&policy, tz, &rows);
        for app in ["a", "b"] {
            let newest = rows
                .iter()
                .zip(&first)
                .filter(|(r, _)| r.app == app && r.status == BackupStatus::Completed)
                .max_by_key(|(r, _)| (r.created_at, r.backup_id.to_string()));
            if let Some((r, d)) = newest {
                prop_assert!(d.keep, "the newest success of {} was removed: {:?}", app, r);
            }
        }
        for (r, d) in rows.iter().zip(&first) {
            prop_assert_eq!(d.reasons.is_empty(), false);
            if r.pinned || r.status == BackupStatus::Started {
                prop_assert!(d.keep, "{:?} removed: {:?}", r, d);
            }
        }
        let kept: Vec<BackupRow> = rows
            .iter()
            .zip(&first)
            .filter(|(_, d)| d.keep)
            .map(|(r, _)| r.clone())
            .collect();
        let second = plan(&policy, tz, &kept);
        for (r, d) in kept.iter().zip(&second) {
            prop_assert!(d.keep, "kept once, removed by a second pass: {:?} {:?}", r, d);
        }
    }
}
