//! An index of the archived WAL built from one listing of `wal/` (pure): per timeline the segments (with sizes and
//! modification times), `.partial` and `.backup` files, the history files; contiguous ranges and gaps per
//! timeline; and, for a backup, which of the segments from its start to its stop are missing and how far
//! contiguous WAL goes after its stop along the timeline path recovery follows
//! ([`crate::wal::continuity::recovery_path`], after PostgreSQL's `XLogFileReadAnyTLI`).
//!
//! Invariants:
//! - A gap is a run of absent segments with a present segment after it on the same timeline (or, along a path,
//!   later on the path): what comes after the last present segment is the end of the archive, never a gap.
//! - The index never reads an object; listing sizes and modification times are what the backend reports.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::storage::{Key, ObjectMeta};
use crate::wal::continuity::{PathStep, Present};
use crate::wal::{SegmentName, SegmentSize, TimelineHistory, TimelineId, WalFileName};

/// One archived object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalObject {
    /// Its key.
    pub key: Key,
    /// Stored (compressed) bytes.
    pub size: u64,
    /// When the backend says it was written, if it says.
    pub modified: Option<SystemTime>,
}

impl From<&ObjectMeta> for WalObject {
    fn from(m: &ObjectMeta) -> Self {
        Self { key: m.key.clone(), size: m.size, modified: m.modified }
    }
}

/// What one timeline holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimelineWal {
    /// Segments by segment number.
    pub segments: BTreeMap<u64, WalObject>,
    /// `.partial` files (the end of this timeline where a later one forked), by segment number.
    pub partials: BTreeMap<u64, WalObject>,
    /// Backup history files (`<segment>.<offset>.backup`).
    pub backup_files: Vec<WalObject>,
}

/// A run of segment numbers `first..=last` on one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRun {
    /// The timeline.
    pub timeline: TimelineId,
    /// First segment number.
    pub first: u64,
    /// Last segment number (inclusive).
    pub last: u64,
}

impl SegmentRun {
    /// Segments in the run.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Never true: a run holds at least one segment.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The first segment's name.
    pub fn first_name(&self, size: SegmentSize) -> SegmentName {
        SegmentName::from_segno(self.timeline, self.first, size)
    }

    /// The last segment's name.
    pub fn last_name(&self, size: SegmentSize) -> SegmentName {
        SegmentName::from_segno(self.timeline, self.last, size)
    }
}

/// A hole along a recovery path: the segments `first..=last` (which may lie on two timelines when the hole spans
/// a switch) are absent and `next` is the next segment present after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathGap {
    /// The first missing segment.
    pub first: SegmentName,
    /// The last missing segment.
    pub last: SegmentName,
    /// How many segments are missing.
    pub count: u64,
    /// The next segment present after the hole.
    pub next: SegmentName,
    /// The last segment present before the hole (`None` when the path starts with it).
    pub after: Option<SegmentName>,
}

/// What a backup needs of the archive and what it can reach, from [`WalIndex::backup_wal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupWal {
    /// Segments of the backup's own timeline from its start segment to its stop segment (inclusive), all of
    /// which recovery reads before the backup is consistent.
    pub needed: Vec<SegmentName>,
    /// The needed segments that are absent (any one makes the backup unrestorable).
    pub missing: Vec<SegmentName>,
    /// The last segment reachable from the stop without a gap along the path (`None` when something needed is
    /// missing): the backup restores to any point up to the end of this segment.
    pub reach: Option<SegmentName>,
    /// Gaps along the path after the stop segment, oldest first: each cuts what the backup can reach.
    pub gaps_after_stop: Vec<PathGap>,
}

/// The archived WAL of a repository, from one listing of `wal/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalIndex {
    /// The cluster's segment size.
    pub size: SegmentSize,
    /// Per timeline, what it holds.
    pub timelines: BTreeMap<TimelineId, TimelineWal>,
    /// `<timeline>.history` files.
    pub histories: BTreeMap<TimelineId, WalObject>,
    /// Objects under `wal/` whose names are not archived WAL names of this segment size.
    pub unknown: Vec<WalObject>,
}

impl WalIndex {
    /// Index a listing of `wal/` (any order; other keys are ignored).
    pub fn build(listing: &[ObjectMeta], size: SegmentSize) -> Self {
        let mut index = Self { size, timelines: BTreeMap::new(), histories: BTreeMap::new(), unknown: Vec::new() };
        for meta in listing.iter().filter(|m| m.key.as_str().starts_with("wal/")) {
            let object = WalObject::from(meta);
            let name = meta.key.file_name().parse::<WalFileName>().ok();
            let segno = name.as_ref().and_then(|n| n.segment()).map(|s| (s.timeline, s.segno(size)));
            match (name, segno) {
                (Some(WalFileName::History(t)), _) => {
                    index.histories.insert(t, object);
                }
                (Some(WalFileName::Segment(_)), Some((t, Ok(n)))) => {
                    index.timelines.entry(t).or_default().segments.insert(n, object);
                }
                (Some(WalFileName::Partial(_)), Some((t, Ok(n)))) => {
                    index.timelines.entry(t).or_default().partials.insert(n, object);
                }
                (Some(WalFileName::BackupHistory(..)), Some((t, Ok(_)))) => {
                    index.timelines.entry(t).or_default().backup_files.push(object);
                }
                _ => index.unknown.push(object),
            }
        }
        index
    }

    /// Every object of the index (segments, partials, backup and history files, unknown names).
    pub fn objects(&self) -> impl Iterator<Item = &WalObject> {
        self.timelines
            .values()
            .flat_map(|t| t.segments.values().chain(t.partials.values()).chain(t.backup_files.iter()))
            .chain(self.histories.values())
            .chain(self.unknown.iter())
    }

    /// The segment objects, oldest timeline and segment first.
    pub fn segments(&self) -> impl Iterator<Item = (SegmentName, &WalObject)> {
        self.timelines.iter().flat_map(move |(t, w)| {
            w.segments.iter().map(move |(n, o)| (SegmentName::from_segno(*t, *n, self.size), o))
        })
    }

    /// The segment of `name`, if archived.
    pub fn segment(&self, name: SegmentName) -> Option<&WalObject> {
        let n = name.segno(self.size).ok()?;
        self.timelines.get(&name.timeline)?.segments.get(&n)
    }

    /// The contiguous runs of archived segments of `timeline`, oldest first.
    pub fn runs(&self, timeline: TimelineId) -> Vec<SegmentRun> {
        let mut out: Vec<SegmentRun> = Vec::new();
        let Some(t) = self.timelines.get(&timeline) else { return out };
        for &n in t.segments.keys() {
            match out.last_mut() {
                Some(run) if run.last + 1 == n => run.last = n,
                _ => out.push(SegmentRun { timeline, first: n, last: n }),
            }
        }
        out
    }

    /// The runs of absent segments between the first and the last archived segment of `timeline`.
    pub fn gaps(&self, timeline: TimelineId) -> Vec<SegmentRun> {
        self.runs(timeline)
            .windows(2)
            .map(|w| SegmentRun { timeline, first: w[0].last + 1, last: w[1].first - 1 })
            .collect()
    }

    /// The segments of `timeline` from `start` to `stop` (inclusive) and which of them are absent.
    fn needed(&self, start: SegmentName, stop: SegmentName) -> (Vec<SegmentName>, Vec<SegmentName>) {
        let (Ok(a), Ok(b)) = (start.segno(self.size), stop.segno(self.size)) else { return (vec![start], vec![start]) };
        let needed: Vec<SegmentName> =
            (a..=b.max(a)).map(|n| SegmentName::from_segno(start.timeline, n, self.size)).collect();
        let missing = needed.iter().copied().filter(|s| self.segment(*s).is_none()).collect();
        (needed, missing)
    }

    /// Gaps along `path` (from its start to where the archive ends on it), oldest first. Costs one range lookup
    /// per archived segment on the path, whatever the distance between them (years of WAL pruned to a few
    /// backups' own segments).
    pub fn path_gaps(&self, path: &[PathStep]) -> Vec<PathGap> {
        let size = self.size;
        let Some(end) = crate::wal::continuity::path_end(path, self, size) else { return Vec::new() };
        let Ok(end_segno) = end.segno(size) else { return Vec::new() };
        // The path as spans `from..to` of one timeline each, cut at the end of the archive.
        let mut spans: Vec<(TimelineId, u64, u64)> = Vec::new();
        for step in path {
            let to = step.until.unwrap_or(u64::MAX).min(end_segno.saturating_add(1));
            if step.from < to {
                spans.push((step.timeline, step.from, to));
            }
            if step.timeline == end.timeline && to > end_segno {
                break;
            }
        }
        let name = |(i, n): (usize, u64)| SegmentName::from_segno(spans[i].0, n, size);
        let next = |(i, n): (usize, u64)| {
            if n + 1 < spans[i].2 { (i, n + 1) } else { (i + 1, spans.get(i + 1).map_or(0, |s| s.1)) }
        };
        let before = |(i, n): (usize, u64)| if n > spans[i].1 { (i, n - 1) } else { (i - 1, spans[i - 1].2 - 1) };
        let distance = |a: (usize, u64), b: (usize, u64)| {
            if a.0 == b.0 {
                b.1 - a.1
            } else {
                (spans[a.0].2 - a.1) + spans[a.0 + 1..b.0].iter().map(|s| s.2 - s.1).sum::<u64>() + (b.1 - spans[b.0].1)
            }
        };
        let mut gaps = Vec::new();
        let Some(&(_, start, _)) = spans.first() else { return gaps };
        let (mut expect, mut last_present) = ((0usize, start), None);
        for (i, &(timeline, from, to)) in spans.iter().enumerate() {
            let Some(t) = self.timelines.get(&timeline) else { continue };
            for &n in t.segments.range(from..to).map(|(n, _)| n) {
                let here = (i, n);
                if here != expect {
                    gaps.push(PathGap {
                        first: name(expect),
                        last: name(before(here)),
                        count: distance(expect, here),
                        next: name(here),
                        after: last_present.map(name),
                    });
                }
                last_present = Some(here);
                expect = next(here);
            }
        }
        gaps
    }

    /// What a backup whose WAL runs from `start` to `stop` (segments of its timeline, both inclusive) needs and
    /// can reach, following `history` (the timeline recovery follows; [`TimelineHistory::root`] for the backup's
    /// own).
    pub fn backup_wal(&self, start: SegmentName, stop: SegmentName, history: &TimelineHistory) -> BackupWal {
        let (needed, missing) = self.needed(start, stop);
        let stop_segno = stop.segno(self.size).unwrap_or(0);
        let path = crate::wal::continuity::recovery_path(stop, history, self.size);
        let gaps_after_stop: Vec<PathGap> = self.path_gaps(&path);
        let reach = if missing.is_empty() {
            match gaps_after_stop.first() {
                // The last segment before the first gap.
                Some(g) => g.after,
                None => crate::wal::continuity::path_end(&path, self, self.size),
            }
            .filter(|r| r.segno(self.size).is_ok_and(|n| n >= stop_segno))
        } else {
            None
        };
        BackupWal { needed, missing, reach, gaps_after_stop }
    }

    /// The newest archived segment by name (highest timeline, then highest segment number).
    pub fn newest_segment(&self) -> Option<(SegmentName, &WalObject)> {
        self.timelines.iter().rev().find_map(|(t, w)| {
            w.segments.iter().next_back().map(|(n, o)| (SegmentName::from_segno(*t, *n, self.size), o))
        })
    }

    /// The most recently written segment (by modification time), if the backend reports times.
    pub fn last_written_segment(&self) -> Option<(SegmentName, &WalObject)> {
        self.segments().filter(|(_, o)| o.modified.is_some()).max_by_key(|(_, o)| o.modified)
    }
}

impl Present for WalIndex {
    fn has(&self, timeline: TimelineId, segno: u64) -> bool {
        self.timelines.get(&timeline).is_some_and(|t| t.segments.contains_key(&segno))
    }
    fn last_in(&self, timeline: TimelineId, from: u64, until: Option<u64>) -> Option<u64> {
        let end = until.unwrap_or(u64::MAX);
        if from >= end {
            return None;
        }
        self.timelines.get(&timeline)?.segments.range(from..end).next_back().map(|(n, _)| *n)
    }
    fn first_in(&self, timeline: TimelineId, from: u64, until: Option<u64>) -> Option<u64> {
        let end = until.unwrap_or(u64::MAX);
        if from >= end {
            return None;
        }
        self.timelines.get(&timeline)?.segments.range(from..end).next().map(|(n, _)| *n)
    }
}

/// The history recovery of a backup taken on `timeline` and consistent at `stop_lsn` follows by default
/// (PostgreSQL's `recovery_target_timeline = 'latest'`): the newest timeline among `histories` whose history
/// leaves `timeline` at or after `stop_lsn`, or the backup's own timeline when none does.
pub fn followed_history(
    histories: &BTreeMap<TimelineId, TimelineHistory>,
    timeline: TimelineId,
    stop_lsn: crate::wal::Lsn,
) -> TimelineHistory {
    histories
        .values()
        .rev()
        .find(|h| h.timeline > timeline && h.can_reach_from(timeline, stop_lsn))
        .cloned()
        .unwrap_or_else(|| TimelineHistory::root(timeline))
}

#[cfg(test)]
mod tests;
