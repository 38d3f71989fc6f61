//! pitr-restore's check of the archive before anything is written: the WAL the recovery will read is all there
//! (no hole along the timeline path, see [`crate::wal::continuity`]), and the target can be reached.
//!
//! What is refused (provably wrong) and what is only warned about (it depends on WAL content we do not read):
//! - A time target later than this host's clock: refused (no commit after it exists yet).
//! - An LSN target at or beyond the end of the newest archived segment on the path: refused.
//! - The backup's own WAL (start to stop segment) not all archived: refused (it never becomes consistent).
//! - A hole before the target: refused for the end of the archive and LSN targets (position is exact), and for a
//!   time target when the segment after the hole was archived before that time (so its WAL, and the missing
//!   segment's, precede it). A hole that may lie after the target (time past that, xid, restore point): a
//!   warning; wal-fetch stops recovery at the hole if PostgreSQL does ask for the segment. PostgreSQL 15+ asks
//!   for WAL ahead of replay: for any hole after the target (an LSN target before WAL that `prune` deleted
//!   included), [`check`] returns true and pitr-restore writes `recovery_prefetch = off`.
//! - A time target after the newest archived segment was written (object modification time, the repository's
//!   clock): a warning naming where the archive ends (the server will stop with "recovery ended before
//!   configured recovery target was reached" unless more WAL is archived first).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use time::OffsetDateTime;

use super::target::{Target, pg_timestamp};
use crate::Error;
use crate::repository::backup::Manifest;
use crate::storage::Storage;
use crate::wal::continuity::{self, PathStep};
use crate::wal::{SegmentName, SegmentSize, TimelineHistory, TimelineId, WalFileName};

/// Check the WAL for restoring `manifest` to `target` along `history` (the followed timeline's history; `None`:
/// the backup's own timeline). `now` is this host's clock. Returns true if the archive has a hole after the
/// target on the path (recovery's read-ahead must then be turned off). Errors: [`Error::UnreachableTarget`],
/// [`Error::WalGap`], storage errors.
pub async fn check(
    storage: &dyn Storage,
    manifest: &Manifest,
    history: Option<&TimelineHistory>,
    target: &Target,
    now: OffsetDateTime,
) -> Result<bool, Error> {
    let unreachable = |reason: String| Error::UnreachableTarget { target: target.to_string(), reason };
    if let Target::Time(t) = target
        && *t > now
    {
        return Err(unreachable(format!("it is in the future (this host's clock says {})", pg_timestamp(now))));
    }
    let size = SegmentSize::new(manifest.wal_segment_size)?;
    let start = SegmentName::containing(manifest.timeline_id(), manifest.start_lsn, size);
    let root = TimelineHistory::root(manifest.timeline_id());
    let path = continuity::recovery_path(start, history.unwrap_or(&root), size);
    let (present, modified) = archived(storage, &path, size).await?;
    let backend = storage.to_string();
    let name = |s: Option<SegmentName>| s.map_or_else(|| "no segment".to_owned(), |s| format!("segment {s}"));
    let end = continuity::path_end(&path, &present, size);
    let end_lsn = end.map(|e| e.start_lsn(size).map(|l| l.0 + size.bytes())).transpose()?;
    let end_text = || match (end, end_lsn) {
        (Some(e), Some(l)) => format!("{} (up to lsn {})", name(Some(e)), crate::wal::Lsn(l)),
        _ => "no segment of this backup's timeline path".to_owned(),
    };

    // The backup itself needs its WAL up to the stop point.
    let stop_segno = manifest.stop_lsn.0 / size.bytes();
    if end_lsn.is_none_or(|l| manifest.stop_lsn.0 > l) {
        return Err(unreachable(format!(
            "backup {} needs WAL up to lsn {} to become consistent, and the archive {backend} ends at {}",
            manifest.id,
            manifest.stop_lsn,
            end_text()
        )));
    }
    let upto = match target {
        Target::Lsn(l) => Some(l.0 / size.bytes()),
        _ => None,
    };
    // A hole anywhere after the target: replay's read-ahead must not ask for it.
    let is_hole_after =
        !matches!(target, Target::Latest) && continuity::first_gap(&path, &present, size, None).is_some();
    if let Some(gap) = continuity::first_gap(&path, &present, size, upto.map(|u| u.max(stop_segno))) {
        let next_time = modified.get(&(gap.next.timeline, gap.next.segno(size)?)).copied().flatten();
        let is_before_target = match target {
            Target::Latest | Target::Lsn(_) => true,
            Target::Time(t) => next_time.is_some_and(|m| OffsetDateTime::from(m) < *t),
            Target::Xid(_) | Target::Name(_) => false,
        } || gap.missing.segno(size)? <= stop_segno;
        if is_before_target {
            return Err(Error::WalGap {
                backup: manifest.id.to_string(),
                target: target.to_string(),
                missing: gap.missing.to_string(),
                next: gap.next.to_string(),
                backend,
            });
        }
        // PostgreSQL 15+ decodes WAL ahead of replay (recovery_prefetch) and would meet the hole early.
        let prefetch = if manifest.pg_version_num >= 150_000 {
            "; recovery_prefetch = off is written, so that the read-ahead does not stop at the hole before the target"
        } else {
            ""
        };
        tracing::warn!(
            segment = %gap.missing, next = %gap.next,
            "WAL segment {} is missing from the archive {backend} ({} is the next one present): if {target} lies after it, recovery will stop there{prefetch}",
            gap.missing, gap.next
        );
    }
    if let Target::Lsn(l) = target
        && end_lsn.is_none_or(|end| l.0 >= end)
    {
        return Err(unreachable(format!("the archive {backend} ends at {}", end_text())));
    }
    if let Target::Time(t) = target
        && let Some(m) = end.and_then(|e| modified.get(&(e.timeline, e.segno(size).ok()?)).copied().flatten())
        && OffsetDateTime::from(m) < *t
    {
        tracing::warn!(
            segment = %end.map_or_else(String::new, |e| e.to_string()),
            "{target} is after the newest archived WAL: the archive {backend} ends at {}, archived at {}; unless later WAL is archived before recovery gets there, the server will stop with \"recovery ended before configured recovery target was reached\"",
            end_text(),
            pg_timestamp(OffsetDateTime::from(m))
        );
    }
    Ok(is_hole_after)
}

/// The archived segments of each timeline on `path` from where the path starts on it, and when each was written.
type Archived = (BTreeSet<(TimelineId, u64)>, BTreeMap<(TimelineId, u64), Option<SystemTime>>);

async fn archived(storage: &dyn Storage, path: &[PathStep], size: SegmentSize) -> Result<Archived, Error> {
    let (mut present, mut modified) = (BTreeSet::new(), BTreeMap::new());
    for step in path {
        let prefix = format!("wal/{}", step.timeline);
        let start_after = match step.from.checked_sub(1) {
            Some(before) => {
                crate::repository::wal_key(&WalFileName::Segment(SegmentName::from_segno(step.timeline, before, size)))
                    .as_str()
                    .to_owned()
            }
            None => prefix.clone(),
        };
        for meta in storage.list_after(&prefix, &start_after, usize::MAX).await? {
            let Ok(WalFileName::Segment(s)) = meta.key.file_name().parse::<WalFileName>() else { continue };
            let Ok(segno) = s.segno(size) else { continue };
            if s.timeline == step.timeline {
                present.insert((s.timeline, segno));
                modified.insert((s.timeline, segno), meta.modified);
            }
        }
    }
    Ok((present, modified))
}
