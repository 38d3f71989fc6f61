//! Retention of logical dumps (pure): which dumps the `dump-*-retain` keys of `[retention]` keep, by the same
//! calendar rules as base backups (the `gfs` module; docs/operations.md, "Retention of dumps").
//!
//! The rules apply **per database**: a dump of some databases is one point in the history of each database it
//! holds, and it is kept if the rules keep it for any of them. So a dump of one database never makes the rules
//! delete the only dump of another (counting dump runs instead would: `dump --database a` after a dump of
//! everything would be "the newest of the day" and leave the other databases with none).
//!
//! Invariants: the newest dump of each database is never deleted; with no dump rule set, no dump is deleted;
//! dumps are ordered by their start time, then id.

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

/// `rules` (from [`rules_from_config`]) spelled as the `[retention]` keys, kebab-case as `--policy` spells the
/// others: `dump-daily-retain=2,dump-monthly-retain=12`; empty when no calendar rule is set. Pure.
pub fn describe(rules: &Rules) -> String {
    let keys = [
        ("dump-daily-retain", rules.daily_retain),
        ("dump-weekly-retain", rules.weekly_retain),
        ("dump-monthly-retain", rules.monthly_retain),
        ("dump-yearly-retain", rules.yearly_retain),
    ];
    keys.iter().filter_map(|(k, v)| v.map(|n| format!("{k}={n}"))).collect::<Vec<_>>().join(",")
}

/// Why a dump is kept: one rule's reason, and the databases of the dump it holds for (empty for a dump that holds
/// no database: only roles and tablespaces). Shown as `daily 2026-12-01 (app, shop)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpReason {
    /// The rule.
    pub reason: Reason,
    /// The databases whose history the rule keeps this dump in, sorted.
    pub databases: Vec<String>,
}

impl std::fmt::Display for DumpReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.databases.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{} ({})", self.reason, self.databases.join(", "))
        }
    }
}

/// What the dump rules keep and delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpPlan {
    /// Kept dumps, oldest first, each with its reasons (`newest` first) and the databases each holds for.
    pub keep: Vec<(DumpId, Vec<DumpReason>)>,
    /// Dumps to delete, oldest first.
    pub delete: Vec<DumpId>,
}

/// One dump as the plan sees it: its id, its start time and the databases it holds.
pub type DumpItem = (DumpId, Timestamp, Vec<String>);

/// Decide which of `dumps` (any order) `rules` keep at `now`, counting calendar days in `tz`: for each database,
/// the rules run over the dumps that hold it, and the newest of them is always kept ([`Reason::Newest`]: the
/// newest dump of a database it holds); a dump is kept with the union of its databases' reasons, each naming the
/// databases it holds for. A dump that holds no database (only roles and tablespaces) is one history of its own.
pub fn plan(dumps: &[DumpItem], rules: &Rules, tz: &TimeZone, now: Timestamp) -> DumpPlan {
    let mut sorted: Vec<&DumpItem> = dumps.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let mut histories: std::collections::BTreeMap<Option<&str>, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, d) in sorted.iter().enumerate() {
        if d.2.is_empty() {
            histories.entry(None).or_default().push(i);
        }
        for db in &d.2 {
            histories.entry(Some(db.as_str())).or_default().push(i);
        }
    }
    let mut reasons: Vec<Vec<DumpReason>> = vec![Vec::new(); sorted.len()];
    for (database, members) in &histories {
        let times: Vec<Timestamp> = members.iter().map(|&i| sorted[i].1).collect();
        let mut r = if rules.has_backup_rule() {
            super::gfs::reasons_at(&times, rules, tz, now)
        } else {
            vec![vec![Reason::NoRule]; times.len()]
        };
        if let Some(last) = r.last_mut() {
            last.insert(0, Reason::Newest);
        }
        for (&i, r) in members.iter().zip(r) {
            for reason in r {
                let kept = &mut reasons[i];
                let entry = match kept.iter().position(|k| k.reason == reason) {
                    Some(at) => &mut kept[at],
                    None => {
                        kept.push(DumpReason { reason, databases: Vec::new() });
                        kept.last_mut().expect("just pushed")
                    }
                };
                // Histories are visited in database order, so each list stays sorted.
                entry.databases.extend(database.map(str::to_owned));
            }
        }
    }
    let mut out = DumpPlan::default();
    for (d, mut r) in sorted.into_iter().zip(reasons) {
        // `newest` first, as for backups.
        r.sort_by_key(|x| x.reason != Reason::Newest);
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

    fn dump(s: &str) -> DumpItem {
        dump_of(s, &["app"])
    }

    fn dump_of(s: &str, databases: &[&str]) -> DumpItem {
        let t = at(s);
        let odt = time::OffsetDateTime::from_unix_timestamp(t.as_second()).expect("time");
        (DumpId::new(odt), t, databases.iter().map(|d| (*d).to_owned()).collect())
    }

    /// Daily dumps over 40 days plus two on the last day: daily 3 keeps the newest of the last 3 days, weekly 2 the
    /// newest of 2 ISO weeks, monthly 2 the newest of 2 months; the rest goes, and the newest is always kept.
    #[test]
    fn issue_12_dump_retention_plan() {
        let mut dumps: Vec<DumpItem> = (1..=30).map(|d| dump(&format!("2026-11-{d:02}T03:00:00Z"))).collect();
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
        assert_eq!(newest[0].reason, Reason::Newest);
        assert!(newest.iter().any(|r| matches!(r.reason, Reason::Monthly(2026, 11))), "{newest:?}");
        assert_eq!(p.keep.len() + p.delete.len(), dumps.len());
        assert!(p.delete.iter().any(|d| d.to_string() == "20261130-030000D"), "not the newest of its day");

        // No dump rule: every dump is kept.
        let none = plan(&dumps, &Rules::default(), &tz, now);
        assert!(none.delete.is_empty() && none.keep.len() == dumps.len());
        // A rule keeping nothing old still keeps the newest.
        let one = plan(&dumps, &Rules { yearly_retain: Some(1), ..Rules::default() }, &tz, now);
        assert_eq!(one.keep.len(), 1);
        let reasons: Vec<String> = one.keep[0].1.iter().map(ToString::to_string).collect();
        assert_eq!(reasons, ["newest (app)", "yearly 2026 (app)"]);
    }

    #[test]
    fn issue_12_dump_rules_are_described_with_their_keys() {
        let c = RetentionConfig { dump_daily_retain: Some(2), dump_yearly_retain: Some(3), ..Default::default() };
        assert_eq!(describe(&rules_from_config(&c)), "dump-daily-retain=2,dump-yearly-retain=3");
        assert_eq!(describe(&rules_from_config(&RetentionConfig::default())), "");
        // Only dump keys: the backup policy has no rules, the dump policy has.
        let p =
            super::super::Policy::resolve(&RetentionConfig { dump_daily_retain: Some(2), ..Default::default() }, None)
                .expect("policy");
        assert_eq!(p.to_string(), "no rules (time zone UTC)");
        assert_eq!(p.dumps_text(), "dump-daily-retain=2 (time zone UTC)");
        let p = super::super::Policy::resolve(&RetentionConfig::default(), Some("keep-last=1")).expect("policy");
        assert_eq!(p.dumps_text(), "no rules");
    }

    /// Retention is per database: a later dump of one database does not make the rules delete the only dump of
    /// another (found by trying it: `dump_daily_retain = 2` deleted every database's dump but the one dumped last).
    #[test]
    fn issue_12_dump_retention_is_per_database() {
        let tz = TimeZone::UTC;
        let now = at("2026-12-01T18:00:00Z");
        let dumps = vec![
            dump_of("2026-12-01T10:00:00Z", &["shop", "big", "postgres"]),
            dump_of("2026-12-01T11:00:00Z", &["big", "shop"]),
            dump_of("2026-12-01T12:00:00Z", &["my db"]),
            dump_of("2026-11-20T12:00:00Z", &["shop"]),
        ];
        let p = plan(&dumps, &Rules { daily_retain: Some(2), ..Rules::default() }, &tz, now);
        let kept: Vec<String> = p.keep.iter().map(|(id, _)| id.to_string()).collect();
        // postgres is only in the first; shop and big's newest is the second; "my db" only in the third. The
        // 20 November dump of shop is its second daily one: kept too.
        assert_eq!(kept, ["20261120-120000D", "20261201-100000D", "20261201-110000D", "20261201-120000D"]);
        assert!(p.delete.is_empty(), "{p:?}");
        // Each reason names the databases it holds for (found by trying it: "newest" did not say of which).
        let text = |i: usize| p.keep[i].1.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(text(0), ["daily 2026-11-20 (shop)"]);
        assert_eq!(text(1), ["newest (postgres)", "daily 2026-12-01 (postgres)"]);
        assert_eq!(text(2), ["newest (big, shop)", "daily 2026-12-01 (big, shop)"]);
        assert_eq!(text(3), ["newest (my db)", "daily 2026-12-01 (my db)"]);
        // A dump of the globals only is a history of its own, with no database to name.
        let globals = plan(&[dump_of("2026-12-01T09:00:00Z", &[])], &Rules::default(), &tz, now);
        assert_eq!(
            globals.keep[0].1.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["newest", "no backup rule in the policy"]
        );
        // With daily 1, shop's 20 November dump goes; nothing else does.
        let p = plan(&dumps, &Rules { daily_retain: Some(1), ..Rules::default() }, &tz, now);
        assert_eq!(p.delete.iter().map(ToString::to_string).collect::<Vec<_>>(), ["20261120-120000D"]);
    }
}
