//! Unit tests of the WAL index: names, runs and gaps, a backup's needs and reach, timelines.
use super::*;

const SIZE: SegmentSize = SegmentSize::DEFAULT;

fn listing(names: &[&str]) -> Vec<ObjectMeta> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let name: WalFileName = n.parse().expect(n);
            let key = crate::repository::wal_key(&name);
            let modified = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            ObjectMeta { key, size: 100 + i as u64, modified: Some(modified) }
        })
        .collect()
}
fn seg(s: &str) -> SegmentName {
    s.parse().expect(s)
}

/// Every kind of name lands in its place; foreign keys are kept aside, not dropped.
#[test]
fn build_sorts_every_kind_of_name() {
    let mut l = listing(&[
        "000000010000000000000002",
        "000000010000000000000003",
        "000000010000000000000003.00000028.backup",
        "000000010000000000000005.partial",
        "00000002.history",
        "000000020000000000000005",
    ]);
    l.push(ObjectMeta { key: Key::new("wal/0000000100000000/junk").expect("key"), size: 1, modified: None });
    l.push(ObjectMeta { key: Key::new("backups/x/manifest").expect("key"), size: 1, modified: None });
    let i = WalIndex::build(&l, SIZE);
    assert_eq!(i.timelines[&TimelineId(1)].segments.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(i.timelines[&TimelineId(1)].partials.keys().copied().collect::<Vec<_>>(), vec![5]);
    assert_eq!(i.timelines[&TimelineId(1)].backup_files.len(), 1);
    assert!(i.histories.contains_key(&TimelineId(2)));
    assert_eq!(i.unknown.len(), 1, "the foreign key under wal/ is reported, the one outside ignored");
    assert_eq!(i.objects().count(), 7);
    assert_eq!(i.newest_segment().map(|(s, _)| s), Some(seg("000000020000000000000005")));
    assert_eq!(i.last_written_segment().map(|(s, _)| s), Some(seg("000000020000000000000005")));
}

/// Runs and gaps per timeline: the example, one segment removed from the middle.
#[test]
fn runs_and_gaps_per_timeline() {
    let names: Vec<String> = (1..=0x11u64)
        .filter(|n| *n != 0x9)
        .map(|n| SegmentName::from_segno(TimelineId(1), n, SIZE).to_string())
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let i = WalIndex::build(&listing(&refs), SIZE);
    let runs = i.runs(TimelineId(1));
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[0].first, runs[0].last, runs[1].first, runs[1].last), (1, 8, 10, 0x11));
    let gaps = i.gaps(TimelineId(1));
    assert_eq!(gaps, vec![SegmentRun { timeline: TimelineId(1), first: 9, last: 9 }]);
    assert_eq!(gaps[0].first_name(SIZE), seg("000000010000000000000009"));
    assert!(i.gaps(TimelineId(2)).is_empty());
    // A segment past the 4 GiB boundary: ...000000FF is followed by ...0000000100000000.
    let i = WalIndex::build(&listing(&["0000000100000000000000FE", "000000010000000100000000"]), SIZE);
    assert_eq!(i.gaps(TimelineId(1)), vec![SegmentRun { timeline: TimelineId(1), first: 0xFF, last: 0xFF }]);
}

/// A backup's needs and reach: a hole inside start..stop breaks it; a hole after its stop cuts its reach; the
/// end of the archive is no hole.
#[test]
fn backup_needs_and_reach() {
    let all = ["000000010000000000000002", "000000010000000000000003", "000000010000000000000004"];
    let more = ["000000010000000000000005", "000000010000000000000006", "000000010000000000000007"];
    let root = TimelineHistory::root(TimelineId(1));
    let build = |skip: &str| {
        let names: Vec<&str> = all.iter().chain(more.iter()).copied().filter(|n| *n != skip).collect();
        WalIndex::build(&listing(&names), SIZE)
    };
    let (start, stop) = (seg("000000010000000000000002"), seg("000000010000000000000003"));
    let w = build("").backup_wal(start, stop, &root);
    assert_eq!(w.needed.len(), 2);
    assert!(w.missing.is_empty() && w.gaps_after_stop.is_empty());
    assert_eq!(w.reach, Some(seg("000000010000000000000007")));
    // Its stop segment missing: broken, reaches nothing.
    let w = build("000000010000000000000003").backup_wal(start, stop, &root);
    assert_eq!(w.missing, vec![stop]);
    assert_eq!(w.reach, None);
    // A hole after the stop: reaches up to the segment before it.
    let w = build("000000010000000000000005").backup_wal(start, stop, &root);
    assert!(w.missing.is_empty());
    assert_eq!(w.reach, Some(seg("000000010000000000000004")));
    let g = w.gaps_after_stop[0];
    assert_eq!(
        (g.first, g.last, g.count, g.next),
        (seg("000000010000000000000005"), seg("000000010000000000000005"), 1, seg("000000010000000000000006"))
    );
    // The hole right after the stop: reaches its stop only.
    let w = build("000000010000000000000004").backup_wal(start, stop, &root);
    assert_eq!(w.reach, Some(stop));
    // The last segment gone: the end of the archive, not a hole.
    let w = build("000000010000000000000007").backup_wal(start, stop, &root);
    assert!(w.gaps_after_stop.is_empty());
    assert_eq!(w.reach, Some(seg("000000010000000000000006")));
    // The backup's WAL not archived at all yet.
    let w = WalIndex::build(&listing(&["000000010000000000000002"]), SIZE).backup_wal(start, stop, &root);
    assert_eq!((w.missing.clone(), w.reach), (vec![stop], None));
}

/// Pruned WAL: a backup's own segments a million segments apart from the next ones are one gap of the right
/// length, found without walking every segment number.
#[test]
fn far_apart_segments_are_one_gap() {
    let names = ["000000010000000000000002", "000000010000000000000003", "0000000100001000000000A0"];
    let i = WalIndex::build(&listing(&names), SIZE);
    let (start, stop) = (seg("000000010000000000000002"), seg("000000010000000000000003"));
    let w = i.backup_wal(start, stop, &TimelineHistory::root(TimelineId(1)));
    assert_eq!(w.reach, Some(stop));
    let g = w.gaps_after_stop[0];
    assert_eq!((g.first, g.next), (seg("000000010000000000000004"), seg("0000000100001000000000A0")));
    assert_eq!(g.count, 0x1000 * 256 + 0xA0 - 4);
    assert_eq!(g.last, seg("00000001000010000000009F"));
}

/// Following the history: after timeline 2 forked inside segment 5, the backup reaches timeline 2's WAL; a
/// hole spanning the switch is one gap; timeline 1's own later segments are not on the path.
#[test]
fn reach_follows_the_history() {
    let tl2 = TimelineHistory::parse(TimelineId(2), "1\t0/5000158\tx\n").expect("h2");
    let mut histories = BTreeMap::new();
    histories.insert(TimelineId(2), tl2.clone());
    let (start, stop) = (seg("000000010000000000000002"), seg("000000010000000000000003"));
    assert_eq!(followed_history(&histories, TimelineId(1), crate::wal::Lsn(0x300_0000)), tl2);
    // A backup that stopped after the fork cannot follow timeline 2.
    assert_eq!(followed_history(&histories, TimelineId(1), crate::wal::Lsn(0x600_0000)).timeline, TimelineId(1));
    let names = [
        "000000010000000000000002",
        "000000010000000000000003",
        "000000010000000000000004",
        "000000010000000000000005.partial",
        "000000010000000000000008", // timeline 1 after the fork (the old primary went on): not on the path
        "00000002.history",
        "000000020000000000000005",
        "000000020000000000000006",
    ];
    let i = WalIndex::build(&listing(&names), SIZE);
    let w = i.backup_wal(start, stop, &tl2);
    assert!(w.gaps_after_stop.is_empty(), "{:?}", w.gaps_after_stop);
    assert_eq!(w.reach, Some(seg("000000020000000000000006")));
    // Timeline 1's segment 4 and timeline 2's segment 5 lost: one gap across the switch.
    let holes: Vec<&str> =
        names.iter().copied().filter(|n| !n.ends_with("04") && !n.ends_with("20000000000000005")).collect();
    let i = WalIndex::build(&listing(&holes), SIZE);
    let w = i.backup_wal(start, stop, &tl2);
    assert_eq!(w.gaps_after_stop.len(), 1);
    let g = w.gaps_after_stop[0];
    assert_eq!((g.first, g.last, g.count), (seg("000000010000000000000004"), seg("000000020000000000000005"), 2));
    assert_eq!(g.next, seg("000000020000000000000006"));
    assert_eq!(g.after, Some(stop));
    assert_eq!(w.reach, Some(stop));
}
