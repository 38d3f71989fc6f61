//! The WAL plan (pure): which archived WAL files no kept backup and no moment of the PITR window needs.
//!
//! - Without `pitr-days`: every WAL file from the oldest kept backup's start segment on is kept, so every kept
//!   backup can reach any later moment (what pgBackRest, WAL-G and Barman do).
//! - With `pitr-days = D`: B0 is the window's base, which the plan keeps (see `plan`): the newest backup on the
//!   newest timeline's path that stopped at or before `now - D days`, or the oldest on it if none did (the oldest
//!   kept backup if no backup is on it). Every WAL file from B0's start segment on is kept (so every moment since B0's stop, which includes the whole window, can be
//!   restored); each older kept backup keeps only the segments from its start to its stop, its `.backup` file
//!   among them, and can restore to its consistent point only.
//!
//! "From B0's start" means from the lowest start segment of B0 and every kept backup newer than it in time: after
//! a restore to an earlier point, a newer backup on the new timeline starts below B0.
//!
//! The test is by segment number, on every timeline at once: a file is deleted only if its segment number is
//! below that start and outside every older kept backup's start..=stop. Timelines share one LSN space and a
//! recovery never reads a segment numbered below its backup's start on any timeline (the recovery path, see
//! `wal::continuity::recovery_path`, only moves forward), so this keeps at least what following the history
//! files would keep, on every timeline, and never less. `.history` files are always kept (they are tiny and a
//! recovery reads them all), as is every object under `wal/` whose key is not a WAL file name.

use serde::Serialize;

use super::Backup;
use crate::repository::backup::BackupId;
use crate::repository::wal_key;
use crate::storage::{Key, ObjectMeta};
use crate::wal::{SegmentName, SegmentSize, TimelineId, WalFileName};

/// A run of WAL files of one timeline, consecutive in segment number, that the plan deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalRange {
    /// The timeline (8 hex digits).
    pub timeline: String,
    /// The first file's name.
    pub first: String,
    /// The last file's name.
    pub last: String,
    /// Files in the range (segments, `.partial` and `.backup` files).
    pub files: u64,
    /// Their stored bytes (from the listing).
    pub bytes: u64,
}

/// The WAL part of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WalPlan {
    /// The first segment from which all WAL is kept (B0's start), if any backup is kept.
    pub keep_all_from: Option<String>,
    /// Ranges to delete, by timeline then segment number.
    pub delete: Vec<WalRange>,
    /// Files to delete.
    pub files: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// The keys to delete, oldest segment first (what `prune` deletes, in this order).
    #[serde(skip)]
    pub keys: Vec<Key>,
    /// Kept backups that keep only their own WAL (start to stop).
    #[serde(skip)]
    pub stop_only: Vec<BackupId>,
}

/// The WAL file name of an archived object's key, if the key is exactly where the repository puts that name.
pub fn wal_file_of_key(key: &Key) -> Option<WalFileName> {
    let name: WalFileName = key.as_str().rsplit('/').next()?.parse().ok()?;
    (wal_key(&name) == *key).then_some(name)
}

/// Group the files to delete into ranges (ascending): `(timeline, segno, name, size)`.
pub(super) fn ranges(mut files: Vec<(TimelineId, u64, String, u64)>) -> Vec<WalRange> {
    files.sort();
    let mut out: Vec<(TimelineId, u64, WalRange)> = Vec::new();
    for (tli, segno, name, size) in files {
        match out.last_mut() {
            Some((t, last, r)) if *t == tli && segno <= *last + 1 => {
                *last = segno;
                r.last = name;
                r.files += 1;
                r.bytes += size;
            }
            _ => out.push((
                tli,
                segno,
                WalRange { timeline: tli.to_string(), first: name.clone(), last: name, files: 1, bytes: size },
            )),
        }
    }
    out.into_iter().map(|(_, _, r)| r).collect()
}

/// The WAL plan for `kept` (oldest first), see the module doc. `window_base`: the backup the `pitr-days` window
/// restores from (kept; `None` without `pitr-days`: then B0 is the oldest kept backup). Adds to `notes` why
/// nothing is deleted when so.
pub(super) fn plan(
    kept: &[&Backup],
    wal_objects: &[ObjectMeta],
    segment_size: Option<SegmentSize>,
    window_base: Option<&BackupId>,
    notes: &mut Vec<String>,
) -> WalPlan {
    let Some(size) = segment_size else {
        return WalPlan::default();
    };
    let segno = |s: &SegmentName| s.segno(size).ok();
    // B0: the backup from whose start all WAL is kept.
    let b0 = window_base.and_then(|id| kept.iter().find(|b| b.id == *id)).or(kept.first()).copied();
    let Some(b0) = b0 else {
        if !wal_objects.is_empty() {
            notes.push("no backup is kept, so no WAL is deleted".to_owned());
        }
        return WalPlan::default();
    };
    // An unreadable segment number keeps everything (the safe way).
    if let Some(b) = kept.iter().find(|b| segno(&b.start_segment).is_none() || segno(&b.stop_segment).is_none()) {
        notes.push(format!("backup {}: its WAL segments do not fit the segment size, so no WAL is deleted", b.id));
        return WalPlan::default();
    }
    // Every kept backup from B0 on in time reaches onward, whatever its LSN: after a restore to an earlier point
    // (a new timeline forked below B0's start), a newer backup on the new timeline starts at a lower LSN than
    // B0, and the WAL its window needs lies below B0's start.
    let b0_at = kept.iter().position(|b| b.id == b0.id).unwrap_or(0);
    let keep_from = kept[b0_at..].iter().filter_map(|b| segno(&b.start_segment)).min().unwrap_or(0);
    let older: Vec<&&Backup> =
        kept[..b0_at].iter().filter(|b| segno(&b.start_segment).is_some_and(|s| s < keep_from)).collect();
    let ranges_own: Vec<(u64, u64)> = older
        .iter()
        .filter_map(|b| Some((segno(&b.start_segment)?, segno(&b.stop_segment)?)))
        .map(|(a, z)| (a, z.max(a)))
        .collect();
    let needed = |n: u64| n >= keep_from || ranges_own.iter().any(|&(a, z)| a <= n && n <= z);
    let mut doomed: Vec<(TimelineId, u64, String, u64)> = Vec::new();
    let mut keys: Vec<(u64, String, Key)> = Vec::new();
    for meta in wal_objects {
        let Some(name) = wal_file_of_key(&meta.key) else { continue };
        let Some(seg) = name.segment() else { continue };
        let Some(n) = segno(&seg) else { continue };
        if needed(n) {
            continue;
        }
        doomed.push((seg.timeline, n, name.to_string(), meta.size));
        keys.push((n, name.to_string(), meta.key.clone()));
    }
    keys.sort();
    let stop_only = older.iter().map(|b| b.id.clone()).collect();
    let files = doomed.len() as u64;
    let bytes = doomed.iter().map(|d| d.3).sum();
    let from = kept[b0_at..].iter().find(|b| segno(&b.start_segment) == Some(keep_from)).unwrap_or(&b0);
    WalPlan {
        keep_all_from: Some(SegmentName::from_segno(from.start_segment.timeline, keep_from, size).to_string()),
        delete: ranges(doomed),
        files,
        bytes,
        keys: keys.into_iter().map(|(_, _, k)| k).collect(),
        stop_only,
    }
}
