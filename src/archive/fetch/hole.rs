//! wal-fetch's answer when the archive lacks a segment: the end of the archive (exit 1, PostgreSQL ends
//! recovery) or a hole (exit 255, recovery stops), decided as [`crate::wal::continuity::hole_evidence`] says.
//!
//! Invariants:
//! - Only the absent path pays, and boundedly: one listing of at most [`LATER_LIMIT`] keys of the segment's
//!   timeline after it (a few more only while they are all the segment's own `.partial`/`.backup` files); only if that finds nothing, one listing of at most [`MAX_HISTORIES`] newer timelines'
//!   history files and a read of each. A found segment (recovery's normal case) costs nothing more.
//! - `.history`, `.partial` and `.backup` names are never checked: their absence is always an answer.
//! - A hole whose evidence was archived moments ago may be a push still in flight (wal-push archives ahead in
//!   parallel, so a later segment can land first): the segment is looked for again for [`RECHECK_FOR`] and
//!   served if it arrives.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::Error;
use crate::repository::{self, store};
use crate::storage::{ObjectMeta, Storage};
use crate::wal::continuity::{LaterWal, fork_evidence, later_file_evidence};
use crate::wal::{SegmentName, SegmentSize, WalFileName};

/// Keys of the same timeline looked at after the absent segment (its own `.partial` and `.backup` files come
/// first, then the next segments).
const LATER_LIMIT: usize = 8;
/// Pages of [`LATER_LIMIT`] keys read at most while they hold only the segment's own `.partial`/`.backup` files.
const MAX_PAGES: usize = 4;
/// Newer timelines' history files read at most.
const MAX_HISTORIES: usize = 16;
/// Evidence written less than this long ago (either way: clocks differ) may belong to a push still in flight.
const FRESH: Duration = Duration::from_secs(120);
/// How long a segment with fresh evidence of a hole is looked for again.
const RECHECK_FOR: Duration = Duration::from_secs(10);
const RECHECK_EVERY: Duration = Duration::from_millis(250);

/// `seg` is absent from `storage`: `Ok(None)` if that is the end of the archive, `Ok(Some(object))` if it
/// arrived while being looked for again, [`Error::ArchiveHole`] if the archive goes on after it, or
/// [`Error::OlderThanArchive`] if it does and nothing of `seg`'s timeline is archived before it. `now` is this
/// host's clock, to tell fresh evidence.
pub(super) async fn absent_segment(
    storage: &dyn Storage,
    seg: SegmentName,
    now: SystemTime,
) -> Result<Option<Bytes>, Error> {
    let key = repository::wal_key(&WalFileName::Segment(seg));
    let prefix = format!("wal/{}", seg.timeline);
    // The segment's own `.partial` and `.backup` files sort right after it; page past them (a few pages at most).
    let mut later = Vec::new();
    let mut after = key.as_str().to_owned();
    for _ in 0..MAX_PAGES {
        let page = storage.list_after(&prefix, &after, LATER_LIMIT).await?;
        let is_full = page.len() == LATER_LIMIT;
        let Some(last) = page.last() else { break };
        after = last.key.as_str().to_owned();
        let is_own = last.key.file_name().parse::<WalFileName>().ok().and_then(|n| n.segment()) == Some(seg);
        later.extend(page);
        if !is_full || !is_own {
            break;
        }
    }
    let names: Vec<WalFileName> = later.iter().filter_map(|m| m.key.file_name().parse().ok()).collect();
    let mut evidence = later_file_evidence(seg, &names).map(|e| {
        let modified = later.iter().find(|m| m.key.file_name() == e.to_string()).and_then(|m| m.modified);
        (e, modified)
    });
    if evidence.is_none() {
        evidence = newer_timeline_evidence(storage, seg).await?;
    }
    let Some((later, modified)) = evidence else { return Ok(None) };
    let is_fresh = modified.is_none_or(|m| {
        let age = now.duration_since(m).unwrap_or_else(|e| e.duration());
        age < FRESH
    });
    if is_fresh {
        let deadline = tokio::time::Instant::now() + RECHECK_FOR;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(RECHECK_EVERY).await;
            match storage.get(&key).await {
                Ok(object) => return Ok(Some(object)),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    // Nothing of the timeline archived before it: WAL older than the archive (retention pruned it: a standby that
    // was away too long), not a gap in the middle of it. Still fatal to recovery, with its own message and hint.
    let first = storage.list_after(&prefix, "", 1).await?;
    let oldest = first.first().and_then(|m| m.key.file_name().parse::<WalFileName>().ok()?.segment());
    if let Some(oldest) = oldest.filter(|&o| o > seg) {
        return Err(Error::OlderThanArchive {
            missing: seg.to_string(),
            oldest: oldest.to_string(),
            backend: storage.to_string(),
        });
    }
    Err(Error::ArchiveHole { missing: seg.to_string(), later: later.to_string(), backend: storage.to_string() })
}

/// A newer timeline whose history says `seg`'s timeline went on past `seg`, with when its history was archived.
async fn newer_timeline_evidence(
    storage: &dyn Storage,
    seg: SegmentName,
) -> Result<Option<(LaterWal, Option<SystemTime>)>, Error> {
    let own = repository::wal_key(&WalFileName::History(seg.timeline));
    let listed: Vec<ObjectMeta> = storage.list_after("wal/timelines/", own.as_str(), MAX_HISTORIES).await?;
    if listed.is_empty() {
        return Ok(None);
    }
    // Switchpoints are LSNs: comparing them with a segment needs the cluster's segment size.
    let Some(cluster) = store::cluster_info(storage).await? else { return Ok(None) };
    let size = SegmentSize::new(cluster.wal_segment_size)?;
    for meta in listed {
        let Ok(WalFileName::History(tli)) = meta.key.file_name().parse::<WalFileName>() else { continue };
        let object = match storage.get(&meta.key).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let history = match repository::decode_history(tli, &object) {
            Ok(h) => h,
            Err(reason) => {
                tracing::warn!(key = %meta.key, reason, "ignoring an unreadable timeline history");
                continue;
            }
        };
        if let Some(e) = fork_evidence(seg, size, std::slice::from_ref(&history)) {
            return Ok(Some((e, meta.modified)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FsStorage;
    use crate::storage::{Key, PutMode};

    /// The segment's own `.backup` files (more than a page of them) do not hide the next segment; the segment
    /// after the last one is the end of the archive.
    #[tokio::test]
    async fn own_files_do_not_hide_the_next_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = FsStorage::new(dir.path());
        let put = |k: String| {
            let st = st.clone();
            async move { st.put(&Key::new(k).expect("key"), Bytes::from_static(b"x"), PutMode::Create).await }
        };
        for off in 0..(LATER_LIMIT as u32 * 2 + 3) {
            put(format!("wal/0000000100000000/000000010000000000000003.{off:08X}.backup")).await.expect("put");
        }
        put("wal/0000000100000000/000000010000000000000003.partial".into()).await.expect("put");
        put("wal/0000000100000000/000000010000000000000004".into()).await.expect("put");
        // An hour ahead: the evidence is old, decided without looking again.
        let later = SystemTime::now() + Duration::from_secs(3600);
        let seg = |s: &str| s.parse::<SegmentName>().expect("name");
        match absent_segment(&st, seg("000000010000000000000003"), later).await {
            Err(Error::ArchiveHole { missing, later, .. }) => {
                assert_eq!(
                    (missing.as_str(), later.as_str()),
                    ("000000010000000000000003", "000000010000000000000004")
                );
            }
            other => panic!("expected a hole, got {other:?}"),
        }
        assert!(absent_segment(&st, seg("000000010000000000000005"), later).await.expect("end").is_none());
    }

    /// A segment older than everything archived on its timeline (retention pruned it; a standby that was away too
    /// long asks for it) is told apart from a hole in the middle of the archive, and still stops recovery.
    #[tokio::test]
    async fn a_segment_older_than_the_archive_is_not_called_a_hole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = FsStorage::new(dir.path());
        for name in ["000000010000000000000005.00000028.backup", "000000010000000000000005", "000000010000000000000007"]
        {
            let key = Key::new(format!("wal/0000000100000000/{name}")).expect("key");
            st.put(&key, Bytes::from_static(b"x"), PutMode::Create).await.expect("put");
        }
        let later = SystemTime::now() + Duration::from_secs(3600);
        let seg = |s: &str| s.parse::<SegmentName>().expect("name");
        match absent_segment(&st, seg("000000010000000000000003"), later).await {
            Err(e @ Error::OlderThanArchive { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("000000010000000000000003 is older than")
                        && text.contains("000000010000000000000005"),
                    "{text}"
                );
            }
            other => panic!("expected older than the archive, got {other:?}"),
        }
        assert!(matches!(
            absent_segment(&st, seg("000000010000000000000006"), later).await,
            Err(Error::ArchiveHole { .. })
        ));
        assert!(absent_segment(&st, seg("000000010000000000000008"), later).await.expect("end").is_none());
    }
}
