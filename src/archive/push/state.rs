//! wal-push's record of every call in `<spool>/state/archive.json` ([`ArchiveState`]), read by alerts and metrics.
//!
//! Invariants: one read-modify-write of the record per call, under its lock ([`StateDir::update`]); the backlog
//! (`.ready` files not yet durable in the repository) is counted from one listing of `pg_wal/archive_status`
//! and one of the spool's push records. The caller decides what a failure to record means: wal-push logs it and
//! its exit status stays about the WAL only.

use std::collections::HashSet;
use std::path::Path;

use crate::state::{self, ARCHIVE, ArchiveState, Archived, Failure, StateDir};

/// How one wal-push call ended, for the record.
#[derive(Debug, Clone, Copy)]
pub enum CallOutcome<'a> {
    /// The requested file is durable in the repository (stored now, found identical, or pushed ahead earlier).
    Archived,
    /// The call failed with this error (its `Display`, made one line here).
    Failed(&'a str),
}

/// The `.ready` backlog: files PostgreSQL has handed over for archiving that are not yet durable in the
/// repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// How many.
    pub count: u64,
    /// Their size in bytes (segments count their file size, which is the cluster's segment size).
    pub bytes: u64,
}

/// Count the backlog in `pg_wal` (the directory of `wal_path`, PostgreSQL's `%p`): every `<name>.ready` in
/// `archive_status`, except the names in `durable` (pushed ahead, see the spool's push records) and `done` (the
/// file this call archived: PostgreSQL renames its `.ready` to `.done` only after the call returns). A missing
/// `archive_status` (wal-push run by hand on a copy) is an empty backlog.
pub fn backlog(wal_path: &Path, durable: &HashSet<String>, done: Option<&str>) -> Backlog {
    let pg_wal = wal_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(pg_wal.join("archive_status")) else { return Backlog::default() };
    let mut out = Backlog::default();
    let mut segment_size: Option<u64> = None;
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".ready")) else { continue };
        if Some(name) == done || durable.contains(name) {
            continue;
        }
        out.count += 1;
        // Segments are all the same size: stat one. Other files (.history, .backup, .partial) are few: stat each.
        let is_segment = name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
        let size = match (is_segment, segment_size) {
            (true, Some(s)) => s,
            _ => {
                let s = std::fs::metadata(pg_wal.join(name)).map(|m| m.len()).unwrap_or(0);
                if is_segment && s > 0 {
                    segment_size = Some(s);
                }
                s
            }
        };
        out.bytes += size;
    }
    out
}

/// Record one call of wal-push for `name` (the WAL file's name) in `state`, at `now`, with the backlog after it.
/// Returns the record as stored.
///
/// On success: `last_success`, `archived_total + 1`, `failing_since` cleared. On failure: `failing_since` (kept
/// if already set), `last_failure` with the error on one line, `failures_total + 1`. Always: the backlog and
/// `updated_at`.
///
/// Errors: [`state::Error`] when the record cannot be locked, read (a damaged record is moved aside and started afresh: [`StateDir::update_or_reset`]) or written.
pub fn record_call(
    state: &StateDir,
    name: &str,
    outcome: CallOutcome<'_>,
    backlog: Backlog,
    now: jiff::Timestamp,
) -> Result<ArchiveState, state::Error> {
    state.update_or_reset(ARCHIVE, |s: &mut ArchiveState| apply(s, name, outcome, backlog, now))
}

/// The change [`record_call`] makes (pure).
pub fn apply(s: &mut ArchiveState, name: &str, outcome: CallOutcome<'_>, backlog: Backlog, now: jiff::Timestamp) {
    match outcome {
        CallOutcome::Archived => {
            s.last_success = Some(Archived { name: name.to_owned(), at: now });
            s.archived_total += 1;
            s.failing_since = None;
        }
        CallOutcome::Failed(error) => {
            s.failing_since.get_or_insert(now);
            let error = error.split_whitespace().collect::<Vec<_>>().join(" ");
            s.last_failure = Some(Failure { at: now, name: name.to_owned(), error });
            s.failures_total += 1;
        }
    }
    s.ready_count = backlog.count;
    s.ready_bytes = backlog.bytes;
    s.updated_at = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).expect("timestamp")
    }

    #[test]
    fn success_failure_sequence() {
        let mut s = ArchiveState::default();
        let b = Backlog { count: 3, bytes: 3 << 24 };
        apply(&mut s, "000000010000000000000001", CallOutcome::Archived, b, at(0));
        assert_eq!(s.archived_total, 1);
        assert_eq!(s.failing_since, None);
        apply(&mut s, "000000010000000000000002", CallOutcome::Failed("storage\nis down"), b, at(10));
        apply(&mut s, "000000010000000000000002", CallOutcome::Failed("still down"), b, at(20));
        assert_eq!(s.failing_since, Some(at(10)), "the start of the streak is kept");
        assert_eq!(s.failures_total, 2);
        let f = s.last_failure.clone().expect("failure");
        assert_eq!((f.at, f.error.as_str()), (at(20), "still down"));
        apply(&mut s, "000000010000000000000002", CallOutcome::Archived, Backlog::default(), at(30));
        assert_eq!(s.failing_since, None);
        assert_eq!(s.last_success.as_ref().map(|a| a.at), Some(at(30)));
        assert_eq!((s.ready_count, s.ready_bytes, s.updated_at), (0, 0, Some(at(30))));
        assert!(s.last_failure.is_some(), "the last failure stays on record");
        // One line, whatever the error looked like.
        apply(&mut s, "x", CallOutcome::Failed("a\n  b\r\nc"), b, at(40));
        assert_eq!(s.last_failure.map(|f| f.error), Some("a b c".to_owned()));
    }

    #[test]
    fn backlog_skips_durable_and_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = dir.path().join("archive_status");
        std::fs::create_dir(&status).expect("mkdir");
        for (n, size) in [
            ("000000010000000000000003", 1024),
            ("000000010000000000000004", 1024),
            ("000000010000000000000005", 1024),
            ("000000010000000000000006", 1024),
            ("00000002.history", 42),
        ] {
            std::fs::write(dir.path().join(n), vec![0u8; size]).expect("write");
            std::fs::write(status.join(format!("{n}.ready")), b"").expect("write");
        }
        std::fs::write(status.join("000000010000000000000002.done"), b"").expect("write");
        let durable: HashSet<String> = ["000000010000000000000005".to_owned()].into_iter().collect();
        let wal = dir.path().join("000000010000000000000003");
        let b = backlog(&wal, &durable, Some("000000010000000000000003"));
        assert_eq!(b, Backlog { count: 3, bytes: 2 * 1024 + 42 });
        assert_eq!(backlog(&dir.path().join("nowhere/x"), &durable, None), Backlog::default());
    }
}
