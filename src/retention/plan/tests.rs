//! Unit tests of the retention plan over synthetic backups and an injected clock.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::storage::Key;
use crate::wal::TimelineId;

const MB16: SegmentSize = SegmentSize::DEFAULT;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn seg(tli: u32, n: u64) -> SegmentName {
    SegmentName::from_segno(TimelineId(tli), n, MB16)
}

/// A backup started at `start` (10 minutes long) on timeline `tli`, its WAL in segments `a..=z`.
fn backup_at(start: Timestamp, tli: u32, a: u64, z: u64) -> Backup {
    let id: BackupId = start.strftime("%Y%m%d-%H%M%SF").to_string().parse().expect("id");
    Backup {
        id,
        backup_type: BackupType::Full,
        start_time: start,
        stop_time: start + SignedDuration::from_mins(10),
        start_lsn: Lsn(a * MB16.bytes() + 0x28),
        stop_lsn: Lsn(z * MB16.bytes() + 0x100),
        start_segment: seg(tli, a),
        stop_segment: seg(tli, z),
        keep: None,
    }
}

/// One backup a day at `hour`:00 UTC from `first` to `last` (inclusive), each in its own segment.
fn daily(first: &str, last: &str, hour: i8) -> Vec<Backup> {
    let mut out = Vec::new();
    let mut d: jiff::civil::Date = first.parse().expect("first");
    let last: jiff::civil::Date = last.parse().expect("last");
    let mut n = 10;
    while d <= last {
        let t = d.at(hour, 0, 0, 0).to_zoned_datetime(jiff::tz::TimeZone::UTC).expect("utc").timestamp();
        out.push(backup_at(t, 1, n, n));
        n += 2;
        d = d.tomorrow().expect("tomorrow");
    }
    out
}

fn policy(text: &str, tz: &str) -> Policy {
    Policy::new(text.parse().expect(text), tz).expect(tz)
}

/// The kept backups' start dates (UTC, `YYYY-MM-DD`) with their reasons.
fn kept(p: &Plan) -> Vec<(String, String)> {
    p.keep
        .iter()
        .map(|k| {
            let reasons: Vec<String> = k.reasons.iter().map(ToString::to_string).collect();
            (k.start_time.strftime("%Y-%m-%dT%H").to_string(), reasons.join(", "))
        })
        .collect()
}

fn has(p: &Plan, start_hour: &str, reason: &str) -> bool {
    kept(p).iter().any(|(s, r)| s == start_hour && r.split(", ").any(|x| x == reason))
}

/// Years of daily backups: each calendar rule keeps the newest backup of its newest N buckets, month ends and
/// leap days included, and the rest is deleted.
#[test]
fn gfs_over_years_of_daily_backups() {
    let backups = daily("2025-06-01", "2028-03-05", 2);
    let p = plan(
        &backups,
        &[],
        None,
        None,
        &policy("daily-retain=7,weekly-retain=4,monthly-retain=12,yearly-retain=3", "UTC"),
        ts("2028-03-05T12:00:00Z"),
    );
    // Daily: 2028-02-28 .. 2028-03-05. Weekly (ISO weeks start on Monday): 2028-03-05 is a Sunday, so the newest
    // four weeks end 03-05, 02-27, 02-20, 02-13. Monthly: each month's last day, the leap day for February 2028.
    // Yearly: 2028, 2027-12-31, 2026-12-31.
    let mut want: BTreeSet<&str> = BTreeSet::new();
    for d in ["2028-02-28", "2028-02-29", "2028-03-01", "2028-03-02", "2028-03-03", "2028-03-04", "2028-03-05"] {
        want.insert(d);
    }
    want.extend(["2028-02-27", "2028-02-20", "2028-02-13"]);
    want.extend(["2027-04-30", "2027-05-31", "2027-06-30", "2027-07-31", "2027-08-31", "2027-09-30"]);
    want.extend(["2027-10-31", "2027-11-30", "2027-12-31", "2028-01-31", "2028-02-29"]);
    want.extend(["2026-12-31"]);
    let got: BTreeSet<String> = p.keep.iter().map(|k| k.start_time.strftime("%Y-%m-%d").to_string()).collect();
    let want: BTreeSet<String> = want.into_iter().map(str::to_owned).collect();
    assert_eq!(got, want);
    assert!(has(&p, "2028-02-29T02", "monthly 2028-02"));
    assert!(has(&p, "2028-02-29T02", "daily 2028-02-29"));
    assert!(has(&p, "2028-03-05T02", "newest"));
    assert!(has(&p, "2028-03-05T02", "weekly 2028-W09"));
    assert!(has(&p, "2028-03-05T02", "yearly 2028"));
    assert!(has(&p, "2027-12-31T02", "yearly 2027"));
    assert!(has(&p, "2026-12-31T02", "yearly 2026"));
    assert!(!has(&p, "2027-03-31T02", "monthly 2027-03"), "only the newest 12 months");
    assert_eq!(p.keep.len() + p.delete.len(), backups.len());
    assert!(p.notes.is_empty(), "{:?}", p.notes);
}

/// ISO week 53: 2026-12-28 .. 2027-01-03 is week 53 of ISO year 2026, and the calendar year 2026 ends inside it.
#[test]
fn iso_week_53_and_year_end() {
    let backups = daily("2026-12-20", "2027-01-10", 23);
    let p =
        plan(&backups, &[], None, None, &policy("weekly-retain=3,yearly-retain=2", "UTC"), ts("2027-01-11T00:00:00Z"));
    assert!(has(&p, "2027-01-10T23", "weekly 2027-W01"));
    assert!(has(&p, "2027-01-03T23", "weekly 2026-W53"), "{:?}", kept(&p));
    assert!(has(&p, "2026-12-27T23", "weekly 2026-W52"));
    assert!(has(&p, "2026-12-31T23", "yearly 2026"));
    assert!(has(&p, "2027-01-10T23", "yearly 2027"));
    assert_eq!(p.keep.len(), 4, "{:?}", kept(&p));
    assert!(!kept(&p).iter().any(|(s, _)| s == "2026-12-20T23"), "the fourth week is out");
}

/// Days are counted in the policy's time zone: across Europe/Berlin's DST changes (a 23- and a 25-hour day) and in
/// a zone where the UTC date differs (Pacific/Auckland, UTC+13 in summer).
#[test]
fn time_zones_and_dst() {
    // One backup an hour around the autumn change (2026-10-25 03:00 CEST -> 02:00 CET) and the spring change
    // (2026-03-29 02:00 CET -> 03:00 CEST).
    for (first, hours, day, last_of_day) in [
        ("2026-10-24T12:00:00Z", 40, "daily 2026-10-25", "2026-10-25T22"),
        ("2026-03-28T12:00:00Z", 40, "daily 2026-03-29", "2026-03-29T21"),
    ] {
        let t0 = ts(first);
        let backups: Vec<Backup> = (0..hours)
            .map(|h| backup_at(t0 + SignedDuration::from_hours(h), 1, 10 + h as u64, 10 + h as u64))
            .collect();
        let now = t0 + SignedDuration::from_hours(hours);
        let p = plan(&backups, &[], None, None, &policy("daily-retain=5", "Europe/Berlin"), now);
        assert!(has(&p, last_of_day, day), "{day}: {:?}", kept(&p));
        // The 25-hour day holds 25 hourly backups and keeps one: every other one of that local day is deleted.
        let utc = plan(&backups, &[], None, None, &policy("daily-retain=5", "UTC"), now);
        assert!(!has(&utc, last_of_day, day), "in UTC the day ends at 23:00Z");
    }
    // 2026-11-30T12:00Z is already 2026-12-01 in Auckland.
    let backups = vec![
        backup_at(ts("2026-11-30T10:00:00Z"), 1, 10, 10),
        backup_at(ts("2026-11-30T12:00:00Z"), 1, 12, 12),
        backup_at(ts("2026-11-30T14:00:00Z"), 1, 14, 14),
    ];
    let now = ts("2026-11-30T15:00:00Z");
    let p = plan(&backups, &[], None, None, &policy("monthly-retain=2", "Pacific/Auckland"), now);
    assert!(has(&p, "2026-11-30T10", "monthly 2026-11"), "{:?}", kept(&p));
    assert!(has(&p, "2026-11-30T14", "monthly 2026-12"));
    assert_eq!(p.delete.len(), 1);
    let p = plan(&backups, &[], None, None, &policy("monthly-retain=2", "America/Los_Angeles"), now);
    assert!(has(&p, "2026-11-30T14", "monthly 2026-11"));
    assert_eq!(p.keep.len(), 1, "one month only in Los Angeles: {:?}", kept(&p));
}

/// Several backups a day: only each day's newest counts for the day.
#[test]
fn several_backups_a_day() {
    let t0 = ts("2026-11-27T00:30:00Z");
    let backups: Vec<Backup> = (0..16)
        .map(|i| backup_at(t0 + SignedDuration::from_hours(6 * i), 1, 10 + i as u64 * 2, 11 + i as u64 * 2))
        .collect();
    let p = plan(&backups, &[], None, None, &policy("daily-retain=2", "UTC"), ts("2026-12-01T00:00:00Z"));
    let got: Vec<String> = p.keep.iter().map(|k| k.start_time.to_string()).collect();
    assert_eq!(got, ["2026-11-29T18:30:00Z", "2026-11-30T18:30:00Z"]);
    let p = plan(&backups, &[], None, None, &policy("keep-last=3", "UTC"), ts("2026-12-01T00:00:00Z"));
    assert_eq!(p.keep.len(), 3);
    assert!(p.keep.iter().all(|k| k.reasons.contains(&Reason::KeepLast)));
    let p = plan(&backups, &[], None, None, &policy("full-days=1", "UTC"), ts("2026-11-30T12:00:00Z"));
    let got: Vec<String> = p.keep.iter().map(|k| k.start_time.to_string()).collect();
    assert_eq!(
        got,
        [
            "2026-11-29T12:30:00Z",
            "2026-11-29T18:30:00Z",
            "2026-11-30T00:30:00Z",
            "2026-11-30T06:30:00Z",
            "2026-11-30T12:30:00Z",
            "2026-11-30T18:30:00Z"
        ]
    );
}

/// Backups are ordered by start time then LSN, never by id (wal-g#636: after pg_upgrade, name order deleted the
/// new backups).
#[test]
fn order_is_start_time_not_id() {
    let mut a = backup_at(ts("2026-01-01T00:00:00Z"), 1, 10, 10);
    a.id = "20300101-000000F".parse().expect("id");
    let mut b = backup_at(ts("2026-02-01T00:00:00Z"), 1, 20, 20);
    b.id = "20200101-000000F".parse().expect("id");
    let p = plan(&[a.clone(), b.clone()], &[], None, None, &policy("keep-last=1", "UTC"), ts("2026-03-01T00:00:00Z"));
    assert_eq!(p.keep.len(), 1);
    assert_eq!(p.keep[0].id, b.id, "the newer backup by start time is kept");
    assert_eq!(p.delete[0].id, a.id);
    // Same start time: the LSN decides.
    let mut c = b.clone();
    c.id = "20100101-000000F".parse().expect("id");
    c.start_lsn = Lsn(b.start_lsn.0 + 1);
    let p = plan(&[c.clone(), b.clone()], &[], None, None, &policy("keep-last=1", "UTC"), ts("2026-03-01T00:00:00Z"));
    assert_eq!(p.keep[0].id, c.id);
}

/// Keep marks: forever, until a later time, expired, and removed; the newest backup is kept whatever the policy;
/// a policy that keeps nothing deletes nothing that matters and says so; no rule keeps every backup.
#[test]
fn marks_newest_and_empty_policies() {
    let mut backups = daily("2026-11-01", "2026-11-10", 3);
    let now = ts("2026-11-30T00:00:00Z");
    let mark =
        |kept: bool, until: Option<&str>| KeepMark { kept, until: until.map(str::to_owned), set_at: String::new() };
    backups[0].keep = Some(mark(true, None));
    backups[1].keep = Some(mark(true, Some("2026-12-01T00:00:00Z")));
    backups[2].keep = Some(mark(true, Some("2026-11-29T00:00:00Z")));
    backups[3].keep = Some(mark(false, None));
    let p = plan(&backups, &[], None, None, &policy("full-days=1", "UTC"), now);
    let got: Vec<String> = kept(&p).into_iter().map(|(s, r)| format!("{s}: {r}")).collect();
    assert_eq!(
        got,
        ["2026-11-01T03: kept forever", "2026-11-02T03: kept until 2026-12-01T00:00:00Z", "2026-11-10T03: newest",]
    );
    assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
    assert!(p.notes[0].contains("keeps no backup") && p.notes[0].contains("20261110-030000F"), "{:?}", p.notes);
    let p = plan(&backups, &[], None, None, &policy("", "UTC"), now);
    assert_eq!(p.keep.len(), backups.len(), "no rule: keep everything");
    assert!(p.delete.is_empty());
    // No rule at all: not even the WAL older than every backup goes.
    let (b2, objects) = two_timelines();
    let p = plan(&b2, &objects, Some(MB16), None, &policy("", "UTC"), now);
    assert!(p.is_empty() && p.keep.len() == b2.len(), "{:?}", p.wal.delete);
    assert_eq!(p.notes, ["the backup policy has no rules: no backup or WAL is deleted"]);
    // keep-last as large as the history keeps every backup, and the WAL before the oldest goes.
    let p = plan(&b2, &objects, Some(MB16), None, &policy("keep-last=10", "UTC"), now);
    assert!(p.delete.is_empty() && p.wal.files == 9, "segments 1..=9 and nothing else: {:?}", p.wal.delete);
    let p = plan(&backups, &[], None, None, &policy("pitr-days=3", "UTC"), now);
    assert_eq!(p.keep.len(), backups.len(), "pitr-days alone chooses no backup");
    assert!(plan(&[], &[], Some(MB16), None, &policy("keep-last=1", "UTC"), now).is_empty());
}

fn object(name: &str, size: u64) -> ObjectMeta {
    let key = match name.parse::<crate::wal::WalFileName>() {
        Ok(n) => crate::repository::wal_key(&n),
        Err(_) => Key::new(format!("wal/{name}")).expect("key"),
    };
    ObjectMeta { key, size, modified: None }
}

/// Timeline 1 segments 1..=65 (it went on past the fork as the old primary, and ends in a `.partial`), timeline 2
/// forked in segment 60 and goes to 100; backups start in segments 10, 30, 50 (timeline 1) and 70, 90 (timeline 2).
fn two_timelines() -> (Vec<Backup>, Vec<ObjectMeta>) {
    let t0 = ts("2026-01-01T00:00:00Z");
    let day = |d: i64| t0 + SignedDuration::from_hours(24 * d);
    let backups = vec![
        backup_at(day(0), 1, 10, 11),
        backup_at(day(10), 1, 30, 31),
        backup_at(day(20), 1, 50, 52),
        backup_at(day(30), 2, 70, 71),
        backup_at(day(40), 2, 90, 90),
    ];
    let mut objects = Vec::new();
    for n in 1..=65 {
        objects.push(object(&seg(1, n).to_string(), 1000 + n));
    }
    objects.push(object(&format!("{}.partial", seg(1, 66)), 7));
    for n in 60..=100 {
        objects.push(object(&seg(2, n).to_string(), 2000 + n));
    }
    for b in &backups {
        objects.push(object(&format!("{}.00000028.backup", b.start_segment), 3));
    }
    objects.push(object("00000002.history", 42));
    objects.push(object("0000000100000000/junk.tmp", 5));
    (backups, objects)
}

fn deleted_names(p: &Plan) -> Vec<String> {
    p.wal.keys.iter().map(|k| k.as_str().rsplit('/').next().expect("name").to_owned()).collect()
}

/// Without pitr-days all WAL from the oldest kept backup's start is kept; with it, older kept backups keep their
/// own start..stop (and `.backup` file) and the WAL between them goes, on every timeline; `.history` files and
/// objects that are not WAL stay.
#[test]
fn wal_plan_with_and_without_a_pitr_window() {
    let (mut backups, objects) = two_timelines();
    backups[1].keep = Some(KeepMark { kept: true, until: None, set_at: String::new() });
    backups[2].keep = Some(KeepMark { kept: true, until: None, set_at: String::new() });
    let now = ts("2026-02-15T00:00:00Z");
    let p = plan(&backups, &objects, Some(MB16), None, &policy("keep-last=1", "UTC"), now);
    let ids: Vec<String> = p.delete.iter().map(|d| d.id.to_string()).collect();
    assert_eq!(ids, ["20260101-000000F", "20260131-000000F"]);
    assert_eq!(p.wal.keep_all_from.as_deref(), Some(seg(1, 30).to_string().as_str()));
    // Segments 1..=29 of timeline 1 and the .backup file of the backup in segment 10.
    assert_eq!(p.wal.files, 30);
    assert_eq!(p.wal.delete.len(), 1);
    let r = &p.wal.delete[0];
    assert_eq!((r.first.as_str(), r.last.as_str()), (seg(1, 1).to_string().as_str(), seg(1, 29).to_string().as_str()));
    assert_eq!(r.bytes, (1..=29).map(|n| 1000 + n).sum::<u64>() + 3);
    assert!(p.keep.iter().all(|k| k.reach == Reach::Onward));

    // A window of 3 days: B0 is the newest kept backup that stopped before 2026-02-12, the one in segment 90.
    let p = plan(&backups, &objects, Some(MB16), None, &policy("keep-last=1,pitr-days=3", "UTC"), now);
    assert_eq!(p.wal.keep_all_from.as_deref(), Some(seg(2, 90).to_string().as_str()));
    let reach: Vec<(String, Reach)> = p.keep.iter().map(|k| (k.id.to_string(), k.reach)).collect();
    assert_eq!(
        reach,
        [
            ("20260111-000000F".to_owned(), Reach::StopOnly),
            ("20260121-000000F".to_owned(), Reach::StopOnly),
            ("20260210-000000F".to_owned(), Reach::Onward),
        ]
    );
    let names = deleted_names(&p);
    let kept_names: BTreeSet<String> = objects
        .iter()
        .map(|o| o.key.as_str().rsplit('/').next().expect("name").to_owned())
        .filter(|n| !names.contains(n))
        .collect();
    for must in [
        seg(1, 30).to_string(),
        seg(1, 31).to_string(),
        format!("{}.00000028.backup", seg(1, 30)),
        seg(1, 50).to_string(),
        seg(1, 52).to_string(),
        format!("{}.00000028.backup", seg(1, 50)),
        seg(2, 90).to_string(),
        seg(2, 100).to_string(),
        "00000002.history".to_owned(),
        "junk.tmp".to_owned(),
    ] {
        assert!(kept_names.contains(&must), "{must} must be kept");
    }
    for gone in [seg(1, 29), seg(1, 32), seg(1, 53), seg(1, 65), seg(2, 60), seg(2, 89)] {
        assert!(names.contains(&gone.to_string()), "{gone} must go");
    }
    let ranges: Vec<(String, String, String, u64)> =
        p.wal.delete.iter().map(|r| (r.timeline.clone(), r.first.clone(), r.last.clone(), r.files)).collect();
    assert_eq!(
        ranges,
        [
            ("00000001".into(), seg(1, 1).to_string(), seg(1, 29).to_string(), 30),
            ("00000001".into(), seg(1, 32).to_string(), seg(1, 49).to_string(), 18),
            ("00000001".into(), seg(1, 53).to_string(), format!("{}.partial", seg(1, 66)), 14),
            ("00000002".into(), seg(2, 60).to_string(), seg(2, 89).to_string(), 31),
        ]
    );
    assert_eq!(p.wal.files, 30 + 18 + 14 + 31);
    assert_eq!(p.wal.bytes, p.wal.delete.iter().map(|r| r.bytes).sum::<u64>());
    // Oldest segment first.
    assert_eq!(names.first().map(String::as_str), Some(seg(1, 1).to_string().as_str()));

    // A window longer than the history: the oldest backup is the window's base (kept for it), and every kept
    // backup reaches onward.
    let p = plan(&backups, &objects, Some(MB16), None, &policy("keep-last=1,pitr-days=400", "UTC"), now);
    assert_eq!(p.wal.keep_all_from.as_deref(), Some(seg(1, 10).to_string().as_str()));
    assert!(has(&p, "2026-01-01T00", "pitr-days 400"), "{:?}", kept(&p));
    assert!(p.keep.iter().all(|k| k.reach == Reach::Onward));
    // No segment size known (no WAL archived yet): no WAL plan.
    assert_eq!(plan(&backups, &objects, None, None, &policy("keep-last=1", "UTC"), now).wal.files, 0);
}

/// After a restore to an earlier point, the newest backup (on the new timeline) starts below an older kept
/// backup: it still reaches onward, and the new timeline's WAL after its stop stays (before, the older backup was
/// B0, the newest one was stop-only and every prune deleted the new timeline's WAL between them).
#[test]
fn a_newer_backup_below_an_older_one_reaches_onward() {
    let t0 = ts("2026-03-01T00:00:00Z");
    let day = |d: i64| t0 + SignedDuration::from_hours(24 * d);
    // Timeline 1: backups in segments 30 and 50; timeline 2 forked in segment 40 (a restore to before the
    // second backup), its first backup in segment 42, ten days later.
    let backups = vec![backup_at(day(0), 1, 30, 30), backup_at(day(10), 1, 50, 50), backup_at(day(20), 2, 42, 42)];
    let mut objects: Vec<ObjectMeta> = (1..=60).map(|n| object(&seg(1, n).to_string(), 16)).collect();
    objects.extend((40..=70).map(|n| object(&seg(2, n).to_string(), 16)));
    let now = day(21);
    let tl2 = crate::wal::TimelineHistory::parse(TimelineId(2), &format!("1\t{}\tx\n", Lsn(40 * MB16.bytes())))
        .expect("history");
    for text in ["keep-last=2", "keep-last=2,pitr-days=3", "keep-last=1,pitr-days=15"] {
        let p = plan(&backups, &objects, Some(MB16), Some(&tl2), &policy(text, "UTC"), now);
        let newest = p.keep.last().expect("kept");
        assert_eq!((newest.start_time, newest.reach), (day(20), Reach::Onward), "{text}: {:?}", p.keep);
        let names = deleted_names(&p);
        for n in 42..=70 {
            assert!(!names.contains(&seg(2, n).to_string()), "{text}: {} deleted", seg(2, n));
        }
        assert!(p.wal.keep_all_from.as_deref() <= Some(seg(2, 42).to_string().as_str()), "{text}");
    }
    // A window of 3 days (from day 18): its base is the backup of day 0, the newest on timeline 2's path; the one
    // of day 10 is on timeline 1 past the fork and cannot reach timeline 2. Timeline 2's WAL from the fork stays.
    let p = plan(&backups, &objects, Some(MB16), Some(&tl2), &policy("keep-last=2,pitr-days=3", "UTC"), now);
    assert!(has(&p, "2026-03-01T00", "pitr-days 3"), "{:?}", kept(&p));
    let names = deleted_names(&p);
    assert!((40..=41).all(|n| !names.contains(&seg(2, n).to_string())), "{names:?}");
}

/// `pitr-days` keeps the backup its window restores from: the newest that stopped before the window began, even
/// when no other rule keeps it (before, keep-last=3,pitr-days=14 silently kept a 3-day window).
#[test]
fn the_pitr_window_keeps_its_base_backup() {
    let backups = daily("2026-01-01", "2026-01-31", 2);
    let objects: Vec<ObjectMeta> = (1..=80).map(|n| object(&seg(1, n).to_string(), 16)).collect();
    let now = ts("2026-01-31T12:00:00Z");
    let p = plan(&backups, &objects, Some(MB16), None, &policy("keep-last=3,pitr-days=14", "UTC"), now);
    // The window begins 2026-01-17T12:00; the backup of 2026-01-17 02:00 stopped before it.
    assert!(has(&p, "2026-01-17T02", "pitr-days 14"), "{:?}", kept(&p));
    assert_eq!(p.keep.len(), 4, "{:?}", kept(&p));
    let base = backups.iter().find(|b| b.start_time == ts("2026-01-17T02:00:00Z")).expect("base");
    assert_eq!(p.wal.keep_all_from, Some(base.start_segment.to_string()));
    let base_from = base.start_segment.segno(MB16).expect("segno");
    let names = deleted_names(&p);
    assert!((base_from..=80).all(|n| !names.contains(&seg(1, n).to_string())), "the window's WAL stays");
    assert!(names.contains(&seg(1, base_from - 1).to_string()), "WAL before the base goes");
    // The window's base is kept once: applying and planning again changes nothing.
    let gone: BTreeSet<&BackupId> = p.delete.iter().map(|d| &d.id).collect();
    let rest: Vec<Backup> = backups.iter().filter(|b| !gone.contains(&b.id)).cloned().collect();
    let again = plan(&rest, &[], Some(MB16), None, &policy("keep-last=3,pitr-days=14", "UTC"), now);
    assert!(again.delete.is_empty(), "{:?}", again.delete);
}

/// Applying a plan and planning again with the same clock deletes nothing more, over two years of daily backups
/// with one WAL segment each and a PITR window.
#[test]
fn applying_then_replanning_deletes_nothing_more() {
    let backups = daily("2025-01-01", "2026-12-31", 1);
    let mut objects: Vec<ObjectMeta> = Vec::new();
    for b in &backups {
        for n in b.start_segment.segno(MB16).expect("segno")..=b.start_segment.segno(MB16).expect("segno") + 1 {
            objects.push(object(&seg(1, n).to_string(), 16));
        }
    }
    let now = ts("2027-01-01T00:00:00Z");
    for text in [
        "daily-retain=7,weekly-retain=4,monthly-retain=12,yearly-retain=3,pitr-days=5",
        "keep-last=3",
        "monthly-retain=6",
    ] {
        let pol = policy(text, "Europe/Berlin");
        let first = plan(&backups, &objects, Some(MB16), None, &pol, now);
        assert!(!first.delete.is_empty() && first.wal.files > 0, "{text}");
        let gone_ids: BTreeSet<&BackupId> = first.delete.iter().map(|d| &d.id).collect();
        let rest: Vec<Backup> = backups.iter().filter(|b| !gone_ids.contains(&b.id)).cloned().collect();
        let gone_keys: BTreeSet<&Key> = first.wal.keys.iter().collect();
        let left: Vec<ObjectMeta> = objects.iter().filter(|o| !gone_keys.contains(&o.key)).cloned().collect();
        let second = plan(&rest, &left, Some(MB16), None, &pol, now);
        assert!(second.is_empty(), "{text}: {:?} {:?}", second.delete, second.wal.delete);
        assert_eq!(second.keep, first.keep, "{text}");
    }
}

mod properties;
