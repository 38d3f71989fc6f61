//! Property tests of the retention plan's safety invariants.

use super::*;
use proptest::prelude::*;

fn rules() -> impl Strategy<Value = Rules> {
    let n = || proptest::option::of(0u32..6);
    (proptest::option::of(1u32..6), n(), n(), n(), n(), n(), n()).prop_map(|(k, d, w, m, y, f, p)| Rules {
        keep_last: k,
        daily_retain: d,
        weekly_retain: w,
        monthly_retain: m,
        yearly_retain: y,
        full_days: f,
        pitr_days: p,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the backups, marks, policy, zone and clock: the newest and the marked backups are kept; every
    /// kept backup keeps its own WAL, and all WAL after its start if it reaches onward; and applying the plan
    /// then planning again deletes nothing more.
    #[test]
    fn plans_are_safe_and_idempotent(
        gaps in proptest::collection::vec(1i64..24 * 40, 1..30),
        marks in proptest::collection::vec(0u8..4, 30),
        rules in rules(),
        tz in prop::sample::select(vec!["UTC", "Europe/Berlin", "Pacific/Auckland", "America/Los_Angeles"]),
        later in 0i64..24 * 30,
    ) {
        let mut t = ts("2025-12-20T00:00:00Z");
        let mut backups = Vec::new();
        for (i, gap) in gaps.iter().enumerate() {
            t += SignedDuration::from_hours(*gap);
            let a = 5 + 3 * i as u64;
            let mut b = backup_at(t, 1, a, a + 1);
            b.keep = match marks[i] {
                1 => Some(KeepMark { kept: true, until: None, set_at: String::new() }),
                2 => Some(KeepMark { kept: true, until: Some("2025-01-01T00:00:00Z".into()), set_at: String::new() }),
                3 => Some(KeepMark { kept: false, until: None, set_at: String::new() }),
                _ => None,
            };
            backups.push(b);
        }
        let last_seg = 5 + 3 * gaps.len() as u64 + 3;
        let objects: Vec<ObjectMeta> = (1..=last_seg).map(|n| object(&seg(1, n).to_string(), n)).collect();
        let now = t + SignedDuration::from_hours(later);
        let pol = Policy::new(rules, tz).expect("tz");
        let p = plan(&backups, &objects, Some(MB16), None, &pol, now);
        prop_assert_eq!(p.keep.len() + p.delete.len(), backups.len());
        let newest = backups.last().expect("one");
        prop_assert!(p.keep.iter().any(|k| k.id == newest.id));
        let deleted: BTreeSet<u64> = p.wal.keys.iter().filter_map(|k| {
            let name: crate::wal::WalFileName = k.as_str().rsplit('/').next()?.parse().ok()?;
            name.segment()?.segno(MB16).ok()
        }).collect();
        for b in &backups {
            let kept = p.keep.iter().find(|k| k.id == b.id);
            if b.keep.as_ref().is_some_and(|m| m.kept && m.until.is_none()) {
                prop_assert!(kept.is_some(), "marked {} deleted", b.id);
            }
            let Some(k) = kept else { continue };
            let (a, z) = (b.start_segment.segno(MB16).expect("a"), b.stop_segment.segno(MB16).expect("z"));
            prop_assert!(!(a..=z).any(|n| deleted.contains(&n)), "{} lost its own WAL", b.id);
            if k.reach == Reach::Onward {
                prop_assert!(!deleted.iter().any(|n| *n >= a), "{} reaches onward but WAL after it went", b.id);
            }
        }
        if !rules.has_backup_rule() {
            prop_assert!(p.delete.is_empty());
        }
        // The PITR window: some kept backup that reaches onward stopped before it began, if any backup did (else
        // the oldest backup is kept and reaches onward).
        if let Some(days) = rules.pitr_days {
            let cutoff = now - SignedDuration::from_hours(i64::from(days) * 24);
            let base = backups.iter().rev().find(|b| b.stop_time <= cutoff).unwrap_or(&backups[0]);
            let covered = p.keep.iter().any(|k| k.reach == Reach::Onward && k.stop_time <= base.stop_time);
            prop_assert!(covered, "no kept backup covers the window from {} ({:?})", cutoff, p.keep);
        }
        let gone: BTreeSet<&BackupId> = p.delete.iter().map(|d| &d.id).collect();
        let rest: Vec<Backup> = backups.iter().filter(|b| !gone.contains(&b.id)).cloned().collect();
        let gone_keys: BTreeSet<&Key> = p.wal.keys.iter().collect();
        let left: Vec<ObjectMeta> = objects.iter().filter(|o| !gone_keys.contains(&o.key)).cloned().collect();
        let again = plan(&rest, &left, Some(MB16), None, &pol, now);
        prop_assert!(again.is_empty(), "{:?} {:?}", again.delete, again.wal.delete);
    }
}
