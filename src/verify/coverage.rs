//! What the archived WAL covers (pure): per backup, the segments from its start to its stop that are missing and
//! how far it reaches; per timeline, the gaps, each classified and tied to the backups it breaks or cuts short.
//! Shared by `backupctl verify` (which fails on what is lost) and `backupctl status` (which shows it).
//!
//! A gap is classified by the modification time of the segment archived right after it (`next`):
//! - **pending** when `next` was written less than [`Clock::pending_within`] ago (either way: clocks differ):
//!   wal-push archives ahead in parallel, so a later segment can land before an earlier one that is still being
//!   uploaded (`backup.archive_timeout_seconds` plus `archive.retry_deadline_seconds`);
//! - **expired** when `next` was written before [`Clock::expired_before`] (the start of `[retention] pitr_days`'s
//!   window) and the gap breaks no backup: retention deletes WAL between old backups on purpose;
//! - **unused** when it lies before every backup: no backup's start..stop holds it, no backup's recovery path
//!   after its stop crosses it, and every backup of its timeline starts after it (WAL from before the first
//!   backup, e.g. while archiving was being set up). Nothing can be restored through it either way;
//! - **lost** otherwise.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::repository::backup::{BackupId, Manifest};
use crate::repository::wal_index::{BackupWal, SegmentRun, WalIndex, followed_history};
use crate::wal::continuity::{PathStep, recovery_path};
use crate::wal::{SegmentName, SegmentSize, TimelineHistory, TimelineId};

/// The time references gaps are classified by.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Now (this host's clock).
    pub now: SystemTime,
    /// A gap whose next segment is younger than this is pending.
    pub pending_within: Duration,
    /// A gap whose next segment is older than this, and that breaks no backup, is expired (`None`: never).
    pub expired_before: Option<SystemTime>,
}

/// How a gap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GapStatus {
    /// The segment after it was archived moments ago: an upload may still be in flight.
    Pending,
    /// Older than the PITR window and needed by no backup's start..stop: deleted by retention.
    Expired,
    /// Before every backup: no restore reads it.
    Unused,
    /// Missing.
    Lost,
}

impl std::fmt::Display for GapStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GapStatus::Pending => "pending",
            GapStatus::Expired => "expired",
            GapStatus::Unused => "unused",
            GapStatus::Lost => "lost",
        })
    }
}

/// A gap in one timeline's archived segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineGap {
    /// The missing segments.
    pub run: SegmentRun,
    /// The segment archived right after them.
    pub next: SegmentName,
    /// How it counts.
    pub status: GapStatus,
    /// Backups whose start..stop needs a segment of it: they cannot be restored.
    pub breaks: Vec<BackupId>,
    /// Backups whose WAL after their stop it interrupts: they restore only up to the segment before it.
    pub cuts: Vec<BackupId>,
}

/// One timeline's archived WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineCoverage {
    /// The timeline.
    pub timeline: TimelineId,
    /// Oldest archived segment.
    pub first: Option<SegmentName>,
    /// Newest archived segment, and when it was written.
    pub last: Option<(SegmentName, Option<SystemTime>)>,
    /// Segments archived.
    pub segments: u64,
    /// `.partial` files.
    pub partials: u64,
    /// Backup history files.
    pub backup_files: u64,
    /// Whether its history file is archived (timeline 1 has none).
    pub has_history: bool,
    /// Stored bytes of every object of this timeline.
    pub bytes_stored: u64,
    /// Gaps, oldest first.
    pub gaps: Vec<TimelineGap>,
}

/// One backup's WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupCoverage {
    /// The backup.
    pub id: BackupId,
    /// The timeline its recovery follows by default (the newest one that forked from its timeline after its stop).
    pub followed: TimelineId,
    /// Needed, missing, reach.
    pub wal: BackupWal,
    /// When the segment it reaches was written (the backend's clock).
    pub reach_written: Option<SystemTime>,
}

impl BackupCoverage {
    /// True if every segment from its start to its stop is archived.
    pub fn is_restorable(&self) -> bool {
        self.wal.missing.is_empty()
    }
}

/// The coverage of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Per backup, in the order given.
    pub backups: Vec<BackupCoverage>,
    /// Per timeline, oldest first.
    pub timelines: Vec<TimelineCoverage>,
}

/// The first and last WAL segment of a backup: its manifest's `start_wal`/`stop_wal` (pg_walfile_name of its
/// start and stop LSN, which PostgreSQL computes so that a stop on a segment boundary names the segment that ends
/// there), or the segments holding the LSNs when those do not parse.
pub fn backup_segments(m: &Manifest, size: SegmentSize) -> (SegmentName, SegmentName) {
    let start = m.start_wal.parse().unwrap_or_else(|_| SegmentName::containing(m.timeline_id(), m.start_lsn, size));
    let stop = m.stop_wal.parse().unwrap_or_else(|_| SegmentName::containing(m.timeline_id(), m.stop_lsn, size));
    (start, stop)
}

/// Compute the coverage of `backups` by the WAL in `index`, following `histories` (parsed history files).
pub fn coverage(
    index: &WalIndex,
    backups: &[Manifest],
    histories: &BTreeMap<TimelineId, TimelineHistory>,
    clock: &Clock,
) -> Coverage {
    let size = index.size;
    let mut covered = Vec::new();
    let mut paths: Vec<(Vec<PathStep>, u64, u64)> = Vec::new();
    for m in backups {
        let (start, stop) = backup_segments(m, size);
        let history = followed_history(histories, m.timeline_id(), m.stop_lsn);
        let wal = index.backup_wal(start, stop, &history);
        let reach_written = wal.reach.and_then(|r| index.segment(r)).and_then(|o| o.modified);
        paths.push((
            recovery_path(stop, &history, size),
            start.segno(size).unwrap_or(0),
            stop.segno(size).unwrap_or(0),
        ));
        covered.push(BackupCoverage { id: m.id.clone(), followed: history.timeline, wal, reach_written });
    }
    let mut timelines = Vec::new();
    for (&timeline, t) in &index.timelines {
        let mut gaps = Vec::new();
        for run in index.gaps(timeline) {
            let next = SegmentName::from_segno(timeline, run.last + 1, size);
            let breaks: Vec<BackupId> = backups
                .iter()
                .zip(&paths)
                .filter(|(m, (_, a, b))| m.timeline_id() == timeline && run.first <= *b && *a <= run.last)
                .map(|(m, _)| m.id.clone())
                .collect();
            let cuts: Vec<BackupId> = backups
                .iter()
                .zip(&paths)
                .filter(|(m, (path, _, b))| {
                    let on_path = |n: u64| {
                        path.iter().any(|s| s.timeline == timeline && s.from <= n && s.until.is_none_or(|u| n < u))
                    };
                    !(m.timeline_id() == timeline && run.first <= *b) && on_path(run.first)
                })
                .map(|(m, _)| m.id.clone())
                .collect();
            let written = index.segment(next).and_then(|o| o.modified);
            let is_before_every_backup = breaks.is_empty()
                && cuts.is_empty()
                && backups.iter().zip(&paths).all(|(m, (_, a, _))| m.timeline_id() != timeline || *a > run.last);
            let status = match classify(written, breaks.is_empty(), clock) {
                GapStatus::Lost if is_before_every_backup => GapStatus::Unused,
                other => other,
            };
            gaps.push(TimelineGap { run, next, status, breaks, cuts });
        }
        let first = t.segments.keys().next().map(|n| SegmentName::from_segno(timeline, *n, size));
        let last =
            t.segments.iter().next_back().map(|(n, o)| (SegmentName::from_segno(timeline, *n, size), o.modified));
        let bytes_stored =
            t.segments.values().chain(t.partials.values()).chain(&t.backup_files).map(|o| o.size).sum::<u64>()
                + index.histories.get(&timeline).map_or(0, |o| o.size);
        timelines.push(TimelineCoverage {
            timeline,
            first,
            last,
            segments: t.segments.len() as u64,
            partials: t.partials.len() as u64,
            backup_files: t.backup_files.len() as u64,
            has_history: index.histories.contains_key(&timeline),
            bytes_stored,
            gaps,
        });
    }
    Coverage { backups: covered, timelines }
}

/// The status of a gap whose next segment was written at `written` (see the module doc).
pub fn classify(written: Option<SystemTime>, breaks_nothing: bool, clock: &Clock) -> GapStatus {
    let Some(written) = written else { return GapStatus::Lost };
    let age = clock.now.duration_since(written).unwrap_or_else(|e| e.duration());
    if age < clock.pending_within {
        return GapStatus::Pending;
    }
    if breaks_nothing && clock.expired_before.is_some_and(|b| written < b) {
        return GapStatus::Expired;
    }
    GapStatus::Lost
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectMeta;
    use crate::wal::{Lsn, WalFileName};

    const SIZE: SegmentSize = SegmentSize::DEFAULT;
    const T0: u64 = 1_000_000;

    /// Segments `n` of timeline 1 written at `T0 + n * 60` seconds.
    fn index(segnos: &[u64]) -> WalIndex {
        let listing: Vec<ObjectMeta> = segnos
            .iter()
            .map(|&n| ObjectMeta {
                key: crate::repository::wal_key(&WalFileName::Segment(SegmentName::from_segno(TimelineId(1), n, SIZE))),
                size: 10,
                modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + n * 60)),
            })
            .collect();
        WalIndex::build(&listing, SIZE)
    }

    fn manifest(id: &str, start: u64, stop: u64) -> Manifest {
        Manifest {
            id: id.parse().expect("id"),
            start_time: "2026-11-30T00:00:00Z".into(),
            stop_time: "2026-11-30T00:01:00Z".into(),
            start_lsn: Lsn(start * SIZE.bytes() + 0x28),
            stop_lsn: Lsn(stop * SIZE.bytes() + 0x100),
            start_wal: SegmentName::from_segno(TimelineId(1), start, SIZE).to_string(),
            stop_wal: SegmentName::from_segno(TimelineId(1), stop, SIZE).to_string(),
            wal_segment_size: SIZE.bytes(),
            ..Manifest::example()
        }
    }

    fn clock(now_segno: u64) -> Clock {
        Clock {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + now_segno * 60),
            pending_within: Duration::from_secs(180),
            expired_before: None,
        }
    }

    /// The test: one segment removed from the middle breaks the backups whose start..stop needs it, cuts
    /// short the reach of the earlier ones, and leaves later backups alone.
    #[test]
    fn a_gap_breaks_and_cuts_the_right_backups() {
        // Backups A (2..3), B (5..6), C (9..10); segment 5 lost; the archive goes on to 12.
        let idx = index(&[2, 3, 4, 6, 7, 8, 9, 10, 11, 12]);
        let backups = [
            manifest("20261130-000000F", 2, 3),
            manifest("20261130-010000F", 5, 6),
            manifest("20261130-020000F", 9, 10),
        ];
        let c = coverage(&idx, &backups, &BTreeMap::new(), &clock(1000));
        let gap = &c.timelines[0].gaps[0];
        assert_eq!((gap.run.first, gap.run.last, gap.next.to_string()), (5, 5, "000000010000000000000006".to_owned()));
        assert_eq!(gap.status, GapStatus::Lost);
        assert_eq!(gap.breaks, vec![backups[1].id.clone()]);
        assert_eq!(gap.cuts, vec![backups[0].id.clone()]);
        assert!(c.backups[0].is_restorable() && !c.backups[1].is_restorable() && c.backups[2].is_restorable());
        assert_eq!(c.backups[0].wal.reach.map(|s| s.to_string()), Some("000000010000000000000004".into()));
        assert_eq!(c.backups[2].wal.reach.map(|s| s.to_string()), Some("00000001000000000000000C".into()));
        assert_eq!(c.backups[2].reach_written, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + 12 * 60)));
    }

    /// WAL from before every backup: unused, not lost; the same gap with a backup of its timeline started
    /// before it is lost.
    #[test]
    fn a_gap_before_every_backup_is_unused() {
        let idx = index(&[1, 2, 4, 5, 6, 7]);
        let c = coverage(&idx, &[manifest("20261130-000000F", 5, 6)], &BTreeMap::new(), &clock(1000));
        assert_eq!(c.timelines[0].gaps[0].status, GapStatus::Unused);
        let c = coverage(&idx, &[manifest("20261130-000000F", 1, 1)], &BTreeMap::new(), &clock(1000));
        assert_eq!(c.timelines[0].gaps[0].status, GapStatus::Lost);
    }

    /// Pending when the next segment is fresh (either side of now), expired only beyond the window and only when
    /// no backup needs the segments.
    #[test]
    fn classify_table() {
        let at = |s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let mut c = clock(0);
        c.now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(classify(at(10_000 - 100), true, &c), GapStatus::Pending);
        assert_eq!(classify(at(10_000 + 100), true, &c), GapStatus::Pending, "clock skew");
        assert_eq!(classify(at(10_000 - 200), true, &c), GapStatus::Lost);
        assert_eq!(classify(None, true, &c), GapStatus::Lost);
        c.expired_before = at(5_000);
        assert_eq!(classify(at(4_000), true, &c), GapStatus::Expired);
        assert_eq!(classify(at(4_000), false, &c), GapStatus::Lost, "a gap inside a backup is never expired");
        assert_eq!(classify(at(6_000), true, &c), GapStatus::Lost);
    }
}
