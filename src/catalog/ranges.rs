//! Archived WAL as ranges for the catalog (pure): consecutive segments of one timeline archived on the same UTC day.

use std::time::SystemTime;

use crate::repository::wal_index::WalIndex;
use crate::wal::{SegmentName, TimelineId};

/// One run of archived segments: consecutive segments of one timeline archived on the same UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRange {
    /// The timeline.
    pub timeline: TimelineId,
    /// Its first segment.
    pub first: SegmentName,
    /// Its last segment.
    pub last: SegmentName,
    /// Segments in it.
    pub segments: u64,
    /// Stored bytes.
    pub bytes: u64,
    /// Oldest and newest archive time (the repository's clock).
    pub first_archived: Option<SystemTime>,
    /// Newest archive time.
    pub last_archived: Option<SystemTime>,
}

/// The UTC day (days since 1970-01-01) `t` falls on.
fn day(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs() / 86_400)
}

/// The archived segments of `index` cut into [`WalRange`]s (pure): a range ends at a missing segment, a
/// timeline's end, or where the archive day (UTC) changes, so that "WAL per day" is a sum over rows.
pub fn wal_ranges(index: &WalIndex) -> Vec<WalRange> {
    let size = index.size;
    let mut out: Vec<WalRange> = Vec::new();
    for (timeline, t) in &index.timelines {
        let mut current: Option<(u64, u64, WalRange)> = None; // (first segno, last segno, range)
        for (&segno, o) in &t.segments {
            if let Some((_, last, r)) = current.as_mut()
                && segno == *last + 1
                && day(o.modified) == day(r.last_archived)
            {
                *last = segno;
                r.last = SegmentName::from_segno(*timeline, segno, size);
                r.segments += 1;
                r.bytes += o.size;
                r.first_archived = match (r.first_archived, o.modified) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                r.last_archived = r.last_archived.max(o.modified);
                continue;
            }
            if let Some((_, _, r)) = current.take() {
                out.push(r);
            }
            let name = SegmentName::from_segno(*timeline, segno, size);
            current = Some((
                segno,
                segno,
                WalRange {
                    timeline: *timeline,
                    first: name,
                    last: name,
                    segments: 1,
                    bytes: o.size,
                    first_archived: o.modified,
                    last_archived: o.modified,
                },
            ));
        }
        if let Some((_, _, r)) = current {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::{Key, ObjectMeta};
    use crate::wal::SegmentSize;

    /// Issue 12: ranges break at a missing segment, at a new timeline and where the archive day (UTC) changes;
    /// counts, bytes and times add up.
    #[test]
    fn issue_12_wal_ranges_per_timeline_and_day() {
        let day = |d: u64, s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(d * 86_400 + s));
        let meta = |name: &str, at: Option<SystemTime>| ObjectMeta {
            key: Key::new(format!("wal/{}/{name}", &name[..16])).expect("key"),
            size: 10,
            modified: at,
        };
        let listing = vec![
            meta("000000010000000000000001", day(100, 10)),
            meta("000000010000000000000002", day(100, 20)),
            meta("000000010000000000000003", day(101, 5)), // next day
            meta("000000010000000000000005", day(101, 6)), // after a gap
            meta("000000020000000000000005", day(101, 7)), // another timeline
            meta("000000020000000000000006", None),        // no time: a day of its own
        ];
        let size = SegmentSize::new(16 * 1024 * 1024).expect("size");
        let index = WalIndex::build(&listing, size);
        let got: Vec<(String, String, u64, u64)> =
            wal_ranges(&index).iter().map(|r| (r.first.to_string(), r.last.to_string(), r.segments, r.bytes)).collect();
        let want = [
            ("000000010000000000000001", "000000010000000000000002", 2, 20),
            ("000000010000000000000003", "000000010000000000000003", 1, 10),
            ("000000010000000000000005", "000000010000000000000005", 1, 10),
            ("000000020000000000000005", "000000020000000000000005", 1, 10),
            ("000000020000000000000006", "000000020000000000000006", 1, 10),
        ];
        let want: Vec<(String, String, u64, u64)> =
            want.iter().map(|(a, b, n, s)| (a.to_string(), b.to_string(), *n, *s)).collect();
        assert_eq!(got, want);
        let first = &wal_ranges(&index)[0];
        assert_eq!((first.first_archived, first.last_archived), (day(100, 10), day(100, 20)));
    }
}
