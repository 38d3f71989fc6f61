//! Grandfather-father-son and the other backup rules: the reasons each backup is kept (pure).
//!
//! A backup is kept by a calendar rule if it is the newest backup of its bucket (its day, ISO week, month or
//! year in the policy's time zone) and that bucket is among the newest N buckets of its kind that hold a backup.
//! Buckets are compared by their calendar key, so a clock change that repeats or skips local hours (DST) moves no
//! backup to another bucket than the one its local date says.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::{Backup, Reason, Rules};

/// The reasons each of `sorted` (oldest first) is kept by the rules (marks and "newest" are added by the caller).
pub(super) fn reasons(sorted: &[&Backup], rules: &Rules, tz: &TimeZone, now: Timestamp) -> Vec<Vec<Reason>> {
    let times: Vec<Timestamp> = sorted.iter().map(|b| b.start_time).collect();
    reasons_at(&times, rules, tz, now)
}

/// [`reasons`] of items started at `times` (oldest first): the same rules for logical dumps.
pub(super) fn reasons_at(times: &[Timestamp], rules: &Rules, tz: &TimeZone, now: Timestamp) -> Vec<Vec<Reason>> {
    let sorted = times;
    let mut out: Vec<Vec<Reason>> = vec![Vec::new(); sorted.len()];
    if let Some(n) = rules.keep_last {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        for r in out.iter_mut().rev().take(n) {
            r.push(Reason::KeepLast);
        }
    }
    let dates: Vec<Date> = sorted.iter().map(|t| t.to_zoned_datetime(tz.clone()).date()).collect();
    bucket(
        &mut out,
        &dates,
        rules.daily_retain,
        |d| (i32::from(d.year()), i32::from(d.month()) * 100 + i32::from(d.day())),
        |d| Reason::Daily(*d),
    );
    bucket(
        &mut out,
        &dates,
        rules.weekly_retain,
        |d| {
            let w = d.iso_week_date();
            (i32::from(w.year()), i32::from(w.week()))
        },
        |d| {
            let w = d.iso_week_date();
            Reason::Weekly(w.year(), w.week())
        },
    );
    bucket(
        &mut out,
        &dates,
        rules.monthly_retain,
        |d| (i32::from(d.year()), i32::from(d.month())),
        |d| Reason::Monthly(d.year(), d.month()),
    );
    bucket(&mut out, &dates, rules.yearly_retain, |d| (i32::from(d.year()), 0), |d| Reason::Yearly(d.year()));
    if let Some(days) = rules.full_days {
        let since = now.checked_sub(SignedDuration::from_hours(i64::from(days) * 24)).unwrap_or(Timestamp::MIN);
        for (t, r) in sorted.iter().zip(out.iter_mut()) {
            if *t >= since {
                r.push(Reason::FullDays(days));
            }
        }
    }
    out
}

/// Keep the newest backup of each of the newest `n` buckets (by `key`, from each backup's local date).
fn bucket(
    out: &mut [Vec<Reason>],
    dates: &[Date],
    n: Option<u32>,
    key: impl Fn(&Date) -> (i32, i32),
    reason: impl Fn(&Date) -> Reason,
) {
    let Some(n) = n else { return };
    // Bucket key -> index of its newest backup (the input is oldest first, so the last one seen).
    let mut newest: BTreeMap<(i32, i32), usize> = BTreeMap::new();
    for (i, d) in dates.iter().enumerate() {
        newest.insert(key(d), i);
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    for &i in newest.values().rev().take(n) {
        out[i].push(reason(&dates[i]));
    }
}
