//! Retention of logical dumps (pure): which dumps the `dump-*-retain` keys of `[retention]` keep, by the same
//! calendar rules as base backups ([`super::gfs`]; docs/operations.md, "Retention of dumps").
//!
//! Invariants: the newest dump is never deleted; with no dump rule set, no dump is deleted; dumps are ordered by
//! their start time, then id.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{Reason, Rules};
use crate::config::RetentionConfig;
use crate::repository::dump::DumpId;

/// The rules of the `dump-*-retain` keys (the calendar rules only).
pub fn rules_from_config(c: &RetentionConfig) -> Rules {
    Rules {
        daily_retain: c.dump_daily_retain,
        weekly_retain: c.dump_weekly_retain,
        monthly_retain: c.dump_monthly_retain,
        yearly_retain: c.dump_yearly_retain,
        ..Rules::default()
    }
}

/// What the dump rules keep and delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpPlan {
    /// Kept dumps, oldest first, each with its reasons.
    pub keep: Vec<(DumpId, Vec<Reason>)>,
    /// Dumps to delete, oldest first.
    pub delete: Vec<DumpId>,
}

/// Decide which of `dumps` (id and start time, any order) `rules` keep at `now`, counting calendar days in `tz`.
pub fn plan(dumps: &[(DumpId, Timestamp)], rules: &Rules, tz: &TimeZone, now: Timestamp) -> DumpPlan {
    let mut sorted: Vec<&(DumpId, Timestamp)> = dumps.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let times: Vec<Timestamp> = sorted.iter().map(|d| d.1).collect();
    let has_rule = rules.has_backup_rule();
    let mut reasons =
        if has_rule { super::gfs::reasons_at(&times, rules, tz, now) } else { vec![vec![Reason::NoRule]; times.len()] };
    if let Some(last) = reasons.last_mut() {
        last.insert(0, Reason::Newest);
    }
    let mut out = DumpPlan::default();
    for (d, r) in sorted.into_iter().zip(reasons) {
        if r.is_empty() { out.delete.push(d.0.clone()) } else { out.keep.push((d.0.clone(), r)) }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn dump(s: &str) -> (DumpId, Timestamp) {
        let t = at(s);
        let odt = time::OffsetDateTime::from_unix_timestamp(t.as_second()).expect("time");
        (DumpId::new(odt), t)
    }

    /// Daily dumps over 40 days plus two on the last day: daily 3 keeps the newest of the last 3 days, weekly 2 the
    /// newest of 2 ISO weeks, monthly 2 the newest of 2 months; the rest goes, and the newest is always kept.
    #[test]
    fn issue_12_dump_retention_plan() {
        let mut dumps: Vec<(DumpId, Timestamp)> =
            (1..=30).map(|d| dump(&format!("2026-11-{d:02}T03:00:00Z"))).collect();
        dumps.extend((1..=10).map(|d| dump(&format!("2026-10-{d:02}T03:00:00Z"))));
        dumps.push(dump("2026-11-30T15:00:00Z"));
        let tz = TimeZone::UTC;
        let now = at("2026-11-30T16:00:00Z");
        let rules =
            Rules { daily_retain: Some(3), weekly_retain: Some(2), monthly_retain: Some(2), ..Rules::default() };
        let p = plan(&dumps, &rules, &tz, now);
        let kept: Vec<String> = p.keep.iter().map(|(id, _)| id.to_string()).collect();
        // 2026-11-30 is a Monday (ISO week 49); 29 Nov closes week 48; 10 Oct is October's newest.
        assert_eq!(kept, ["20261010-030000D", "20261128-030000D", "20261129-030000D", "20261130-150000D"]);
        let newest = &p.keep.last().expect("kept").1;
        assert_eq!(newest[0], Reason::Newest);
        assert!(newest.iter().any(|r| matches!(r, Reason::Monthly(2026, 11))), "{newest:?}");
        assert_eq!(p.keep.len() + p.delete.len(), dumps.len());
        assert!(p.delete.iter().any(|d| d.to_string() == "20261130-030000D"), "not the newest of its day");

        // No dump rule: every dump is kept.
        let none = plan(&dumps, &Rules::default(), &tz, now);
        assert!(none.delete.is_empty() && none.keep.len() == dumps.len());
        // A rule keeping nothing old still keeps the newest.
        let one = plan(&dumps, &Rules { yearly_retain: Some(1), ..Rules::default() }, &tz, now);
        assert_eq!(one.keep.len(), 1);
        assert_eq!(one.keep[0].1, vec![Reason::Newest, Reason::Yearly(2026)]);
    }
}
