//! Timeline history files (`<timeline>.history`): which timelines a timeline descends from, and where each forked.
//!
//! Format, as PostgreSQL writes it: one line per ancestor, `<parent timeline><TAB><switch lsn><TAB><reason>`, in
//! ascending timeline order; blank lines and `#` comments are ignored.

use super::{Lsn, TimelineId};

/// One ancestor: WAL of `parent` is followed up to `switchpoint`, then the next timeline begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: TimelineId,
    /// Where the history left it.
    pub switchpoint: Lsn,
}

/// A parsed `.history` file of `timeline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    /// The timeline the file describes.
    pub timeline: TimelineId,
    /// Its ancestors, oldest first.
    pub entries: Vec<HistoryEntry>,
}

impl TimelineHistory {
    /// The history of a timeline with no ancestors (timeline 1, or any timeline without a history file).
    pub fn root(timeline: TimelineId) -> Self {
        Self { timeline, entries: Vec::new() }
    }

    /// Parse the text of `<timeline>.history`; the error says which line is wrong.
    pub fn parse(timeline: TimelineId, text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let parent = fields.next().and_then(|t| t.parse::<u32>().ok()).filter(|t| *t > 0);
            let switchpoint = fields.next().and_then(|l| l.parse::<Lsn>().ok());
            let (Some(parent), Some(switchpoint)) = (parent, switchpoint) else {
                return Err(format!("line {} is not \"<timeline> <lsn> <reason>\"", n + 1));
            };
            entries.push(HistoryEntry { parent: TimelineId(parent), switchpoint });
        }
        if entries.is_empty() {
            return Err("it has no timeline entries".to_owned());
        }
        Ok(Self { timeline, entries })
    }

    /// Where WAL of `tli` ends on the way to this timeline: `Some(switchpoint)` for an ancestor, `Some(Lsn(MAX))`
    /// for the timeline itself, `None` if `tli` is not on its path.
    pub fn end_of(&self, tli: TimelineId) -> Option<Lsn> {
        if tli == self.timeline {
            return Some(Lsn(u64::MAX));
        }
        self.entries.iter().find(|e| e.parent == tli).map(|e| e.switchpoint)
    }

    /// True if a backup taken on `tli` and consistent at `lsn` can recover along this timeline.
    pub fn can_reach_from(&self, tli: TimelineId, lsn: Lsn) -> bool {
        self.end_of(tli).is_some_and(|end| lsn <= end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_ancestry() {
        let h = TimelineHistory::parse(
            TimelineId(3),
            "1\t0/3000000\tno recovery target specified\n\n# c\n2\t0/5000158\tat restore point \"x\"\n",
        )
        .expect("history");
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.end_of(TimelineId(1)), Some(Lsn(0x300_0000)));
        assert_eq!(h.end_of(TimelineId(2)), Some(Lsn(0x500_0158)));
        assert_eq!(h.end_of(TimelineId(3)), Some(Lsn(u64::MAX)));
        assert_eq!(h.end_of(TimelineId(4)), None);
        assert!(h.can_reach_from(TimelineId(1), Lsn(0x200_0000)));
        assert!(h.can_reach_from(TimelineId(1), Lsn(0x300_0000)));
        assert!(!h.can_reach_from(TimelineId(1), Lsn(0x300_0001)));
        assert!(h.can_reach_from(TimelineId(3), Lsn(0x900_0000)));
        assert!(TimelineHistory::root(TimelineId(1)).can_reach_from(TimelineId(1), Lsn(1)));
        assert!(!TimelineHistory::root(TimelineId(1)).can_reach_from(TimelineId(2), Lsn(1)));
    }

    #[test]
    fn rejects_what_postgres_does_not_write() {
        for bad in ["", "garbage line\n", "1\tnot-an-lsn\treason\n", "0\t0/1\treason\n", "# only a comment\n"] {
            assert!(TimelineHistory::parse(TimelineId(2), bad).is_err(), "{bad:?}");
        }
    }
}
