//! Continuity of archived WAL (pure): which segments a recovery reads along a timeline path, where the archive
//! has a hole in them, and whether an absent segment is the end of the archive or a hole.
//!
//! The path follows PostgreSQL's `XLogFileReadAnyTLI` (src/backend/access/transam/xlogrecovery.c): segment `n` is
//! read from the newest timeline of the path that has begun by `n` (a timeline begins in the segment holding its
//! switchpoint), so an ancestor timeline is read only up to the segment before the one where the next timeline
//! begins; the partial switch segment of the old timeline (archived as `.partial`) is never read.
//!
//! Invariants: a segment counts as missing only if a later segment of the same path is present (the archive goes
//! on after it); an absent segment after the last present one is the end of the archive, not a hole.

use std::collections::BTreeSet;

use super::{Lsn, SegmentName, SegmentSize, TimelineHistory, TimelineId, WalFileName};

/// Why an absent segment must have existed: WAL that the archive holds after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaterWal {
    /// A later segment (or `.partial`) of the same timeline.
    File(WalFileName),
    /// A later timeline whose history says the requested timeline went on to `switchpoint`, past the segment.
    Fork {
        /// The later timeline.
        timeline: TimelineId,
        /// Where it left the requested segment's timeline.
        switchpoint: Lsn,
    },
}

impl std::fmt::Display for LaterWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaterWal::File(name) => write!(f, "{name}"),
            LaterWal::Fork { timeline, switchpoint } => {
                write!(f, "{timeline}.history, whose timeline forked from this one later, at {switchpoint}")
            }
        }
    }
}

/// Decide whether the archive lacking `requested` is a hole (`Some`: the evidence) or its end (`None`):
/// [`later_file_evidence`], then [`fork_evidence`].
pub fn hole_evidence(
    requested: SegmentName,
    size: SegmentSize,
    later_on_timeline: &[WalFileName],
    later_histories: &[TimelineHistory],
) -> Option<LaterWal> {
    later_file_evidence(requested, later_on_timeline).or_else(|| fork_evidence(requested, size, later_histories))
}

/// The first later segment or `.partial` of `requested`'s timeline among `later_on_timeline` (archived names, any
/// order). `.backup` files and `requested`'s own `.partial` prove nothing: both exist before the segment is
/// complete or instead of it.
pub fn later_file_evidence(requested: SegmentName, later_on_timeline: &[WalFileName]) -> Option<LaterWal> {
    later_on_timeline
        .iter()
        .filter(|n| match n {
            WalFileName::Segment(s) | WalFileName::Partial(s) => s.timeline == requested.timeline && *s > requested,
            _ => false,
        })
        .min_by_key(|n| n.segment())
        .map(|n| LaterWal::File(n.clone()))
}

/// A history among `later_histories` (of timelines newer than `requested`'s) that left `requested`'s timeline in
/// a later segment, which proves that timeline was written past `requested`. A fork inside `requested` itself
/// proves nothing: that old segment ends as a `.partial`.
pub fn fork_evidence(
    requested: SegmentName,
    size: SegmentSize,
    later_histories: &[TimelineHistory],
) -> Option<LaterWal> {
    let segno = requested.segno(size).ok()?;
    later_histories
        .iter()
        .filter(|h| h.timeline > requested.timeline)
        .filter_map(|h| {
            let entry = h.entries.iter().find(|e| e.parent == requested.timeline)?;
            let switch_segno = entry.switchpoint.0 / size.bytes();
            (segno < switch_segno).then_some(LaterWal::Fork { timeline: h.timeline, switchpoint: entry.switchpoint })
        })
        .next()
}

/// One timeline's share of the segments a recovery reads: segment numbers `from..until` (`None`: to the end of
/// the archive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStep {
    /// The timeline these segments are read from.
    pub timeline: TimelineId,
    /// First segment number.
    pub from: u64,
    /// One past the last segment number read from this timeline; `None` for the followed timeline itself.
    pub until: Option<u64>,
}

/// The segments a recovery reads from a backup whose WAL starts in `start`, following `history` (the history of
/// the timeline recovery follows; [`TimelineHistory::root`] for the backup's own). If `start`'s timeline is not on
/// the path, the path is `start`'s timeline alone.
pub fn recovery_path(start: SegmentName, history: &TimelineHistory, size: SegmentSize) -> Vec<PathStep> {
    let start_segno = u64::from(start.log) * size.segments_per_log() + u64::from(start.seg);
    // (timeline, first segment it is read from, segment where the next timeline begins)
    let mut all: Vec<(TimelineId, u64, Option<u64>)> = Vec::new();
    let mut begin = 0u64;
    for e in &history.entries {
        let switch = e.switchpoint.0 / size.bytes();
        all.push((e.parent, begin, Some(switch)));
        begin = switch;
    }
    all.push((history.timeline, begin, None));
    let Some(first) = all.iter().position(|(t, ..)| *t == start.timeline) else {
        return vec![PathStep { timeline: start.timeline, from: start_segno, until: None }];
    };
    all[first..]
        .iter()
        .map(|&(timeline, from, until)| PathStep { timeline, from: from.max(start_segno), until })
        .filter(|s| s.until.is_none_or(|u| s.from < u))
        .collect()
}

/// What the archive holds of a path: segment numbers present per timeline.
pub trait Present {
    /// True if segment `segno` of `timeline` is archived.
    fn has(&self, timeline: TimelineId, segno: u64) -> bool;
    /// The newest archived segment number of `timeline` in `from..until` (`None`: no bound), if any.
    fn last_in(&self, timeline: TimelineId, from: u64, until: Option<u64>) -> Option<u64>;
    /// The oldest archived segment number of `timeline` in `from..until` (`None`: no bound), if any.
    fn first_in(&self, timeline: TimelineId, from: u64, until: Option<u64>) -> Option<u64>;
}

impl Present for BTreeSet<(TimelineId, u64)> {
    fn has(&self, timeline: TimelineId, segno: u64) -> bool {
        self.contains(&(timeline, segno))
    }
    fn last_in(&self, timeline: TimelineId, from: u64, until: Option<u64>) -> Option<u64> {
        let end = until.unwrap_or(u64::MAX);
        if from >= end {
            return None;
        }
        self.range((timeline, from)..(timeline, end)).next_back().map(|(_, n)| *n)
    }
    fn first_in(&self, timeline: TimelineId, from: u64, until: Option<u64>) -> Option<u64> {
        let end = until.unwrap_or(u64::MAX);
        if from >= end {
            return None;
        }
        self.range((timeline, from)..(timeline, end)).next().map(|(_, n)| *n)
    }
}

/// A hole in the WAL a recovery reads: `missing` is absent while `next`, later on the path, is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The first missing segment.
    pub missing: SegmentName,
    /// The next segment present after it on the path.
    pub next: SegmentName,
}

/// The last archived segment along `path` (where the archive ends for this recovery), if any.
pub fn path_end(path: &[PathStep], present: &impl Present, size: SegmentSize) -> Option<SegmentName> {
    path.iter().rev().find_map(|s| {
        present.last_in(s.timeline, s.from, s.until).map(|n| SegmentName::from_segno(s.timeline, n, size))
    })
}

/// The first hole along `path` up to segment number `upto` (inclusive; `None`: the end of the archive).
pub fn first_gap(path: &[PathStep], present: &impl Present, size: SegmentSize, upto: Option<u64>) -> Option<Gap> {
    let cap = |until: Option<u64>| match (until, upto) {
        (Some(u), Some(c)) => Some(u.min(c.saturating_add(1))),
        (Some(u), None) => Some(u),
        (None, Some(c)) => Some(c.saturating_add(1)),
        (None, None) => None,
    };
    for (i, step) in path.iter().enumerate() {
        // Where this step's segments end: its own bound, or (open-ended) its newest present segment.
        let until = cap(step.until).or_else(|| present.last_in(step.timeline, step.from, None).map(|n| n + 1));
        let Some(until) = until else { continue };
        for segno in step.from..until {
            if present.has(step.timeline, segno) {
                continue;
            }
            // The first segment present after `segno` on the rest of the path (within the cap).
            let next = std::iter::once(PathStep { from: segno + 1, ..*step })
                .chain(path[i + 1..].iter().copied())
                .find_map(|s| {
                    let n = present.first_in(s.timeline, s.from, cap(s.until))?;
                    Some(SegmentName::from_segno(s.timeline, n, size))
                });
            return next.map(|next| Gap { missing: SegmentName::from_segno(step.timeline, segno, size), next });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(s: &str) -> SegmentName {
        s.parse().expect(s)
    }
    fn name(s: &str) -> WalFileName {
        s.parse().expect(s)
    }
    const SIZE: SegmentSize = SegmentSize::DEFAULT;

    /// Hole or end of archive, across timelines: the table of what PostgreSQL asks for and what the archive holds.
    #[test]
    fn hole_or_end_of_archive() {
        // Timeline 2 left timeline 1 inside segment 5; timeline 3 left timeline 2 inside segment 9.
        let tl2 = TimelineHistory::parse(TimelineId(2), "1\t0/5000158\tx\n").expect("h2");
        let tl3 = TimelineHistory::parse(TimelineId(3), "1\t0/5000158\tx\n2\t0/9000000\ty\n").expect("h3");
        let hole = |req: &str, later: &[&str], hist: &[&TimelineHistory]| {
            let later: Vec<WalFileName> = later.iter().map(|n| name(n)).collect();
            let hist: Vec<TimelineHistory> = hist.iter().map(|h| (*h).clone()).collect();
            hole_evidence(seg(req), SIZE, &later, &hist).map(|e| e.to_string())
        };
        let s = |n: &str| Some(n.to_owned());
        // The segment after the last archived one: the end of the archive.
        assert_eq!(hole("000000010000000000000007", &[], &[]), None);
        // A later segment of the same timeline: a hole, naming the next present one.
        assert_eq!(
            hole("000000010000000000000004", &["000000010000000000000006", "000000010000000000000005"], &[]),
            s("000000010000000000000005")
        );
        // Its own .partial and backup history files prove nothing; a later .partial does.
        assert_eq!(
            hole(
                "000000010000000000000005",
                &["000000010000000000000005.partial", "000000010000000000000005.00000028.backup"],
                &[]
            ),
            None
        );
        assert_eq!(
            hole("000000010000000000000004", &["000000010000000000000005.partial"], &[]),
            s("000000010000000000000005.partial")
        );
        // Other timelines' files in the listing are not evidence.
        assert_eq!(hole("000000010000000000000007", &["000000020000000000000008"], &[]), None);
        // Timeline 1's segment 4 is before timeline 2's fork (segment 5): a hole even with nothing later on 1.
        assert!(hole("000000010000000000000004", &[], &[&tl2]).is_some_and(|e| e.contains("00000002.history")));
        // Segment 5 holds the fork: the old timeline's copy ends as .partial, so its absence is no hole; nor are
        // the segments of timeline 1 after the fork, which timeline 2 never needed.
        assert_eq!(hole("000000010000000000000005", &[], &[&tl2]), None);
        assert_eq!(hole("000000010000000000000008", &[], &[&tl2, &tl3]), None);
        // Timeline 2's segment 7 is before timeline 3 left it (segment 9); its segment 9 is not.
        assert!(hole("000000020000000000000007", &[], &[&tl3]).is_some_and(|e| e.contains("00000003.history")));
        assert_eq!(hole("000000020000000000000009", &[], &[&tl3]), None);
        // The end of the newest timeline.
        assert_eq!(hole("00000003000000000000000C", &[], &[]), None);
    }

    #[test]
    fn path_follows_the_timeline_switches() {
        let tl3 = TimelineHistory::parse(TimelineId(3), "1\t0/5000158\tx\n2\t0/9000000\ty\n").expect("h3");
        let path = recovery_path(seg("000000010000000000000002"), &tl3, SIZE);
        let step = |t: u32, from: u64, until: Option<u64>| PathStep { timeline: TimelineId(t), from, until };
        assert_eq!(path, vec![step(1, 2, Some(5)), step(2, 5, Some(9)), step(3, 9, None)]);
        // A backup taken on timeline 2 starts there.
        let path = recovery_path(seg("000000020000000000000006"), &tl3, SIZE);
        assert_eq!(path, vec![step(2, 6, Some(9)), step(3, 9, None)]);
        // Following the backup's own timeline.
        let path = recovery_path(seg("000000010000000000000002"), &TimelineHistory::root(TimelineId(1)), SIZE);
        assert_eq!(path, vec![step(1, 2, None)]);
    }

    #[test]
    fn gaps_along_the_path() {
        let tl2 = TimelineHistory::parse(TimelineId(2), "1\t0/5000158\tx\n").expect("h2");
        let path = recovery_path(seg("000000010000000000000002"), &tl2, SIZE);
        let set = |names: &[&str]| -> BTreeSet<(TimelineId, u64)> {
            names.iter().map(|n| seg(n)).map(|s| (s.timeline, s.segno(SIZE).expect("segno"))).collect()
        };
        let full = [
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000009", // timeline 1 after the fork: not on the path
            "000000020000000000000005",
            "000000020000000000000006",
        ];
        let present = set(&full);
        assert_eq!(first_gap(&path, &present, SIZE, None), None);
        assert_eq!(path_end(&path, &present, SIZE), Some(seg("000000020000000000000006")));
        // Timeline 1's segment 4 lost: a gap, the next present is on timeline 2.
        let without4: Vec<&str> = full.iter().copied().filter(|n| !n.ends_with("04")).collect();
        let gap = first_gap(&path, &set(&without4), SIZE, None).expect("gap");
        assert_eq!((gap.missing, gap.next), (seg("000000010000000000000004"), seg("000000020000000000000005")));
        // ... but not if the target is before it.
        assert_eq!(first_gap(&path, &set(&without4), SIZE, Some(3)), None);
        // The end of the archive is no gap: segment 6 of timeline 2 missing with nothing after it.
        let without6: Vec<&str> = full.iter().copied().filter(|n| !n.ends_with("06")).collect();
        assert_eq!(first_gap(&path, &set(&without6), SIZE, None), None);
        assert_eq!(path_end(&path, &set(&without6), SIZE), Some(seg("000000020000000000000005")));
        // The first segment (the backup's start) missing.
        let without2: Vec<&str> = full.iter().copied().filter(|n| !n.ends_with("02")).collect();
        let gap = first_gap(&path, &set(&without2), SIZE, None).expect("gap");
        assert_eq!((gap.missing, gap.next), (seg("000000010000000000000002"), seg("000000010000000000000003")));
    }
}
