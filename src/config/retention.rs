//! `[retention]` and `[check]`: how long backups and WAL are kept, and the thresholds `backupctl check` applies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A length of time written the way people write it: `"26h"`, `"2 days"`, `"90m"`, `"1d 12h"` (jiff's friendly
/// format, <https://docs.rs/jiff/latest/jiff/fmt/friendly/>), or ISO 8601 (`"PT26H"`). Days are 24 hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a length of time like \"26h\", \"90m\" or \"7 days\"");
        let span: jiff::Span = s.trim().parse().map_err(|_| bad())?;
        let parsed = span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()).map_err(|_| bad())?;
        let d = std::time::Duration::try_from(parsed).map_err(|_| format!("{s:?} is negative"))?;
        Ok(Self(d))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::SignedDuration::try_from(self.0) {
            Ok(d) => write!(f, "{d:#}"),
            Err(_) => write!(f, "{}s", self.0.as_secs()),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[retention]`: which backups and WAL `backupctl prune` keeps (see docs/operations.md, "Retention"). With no
/// policy key set, prune deletes nothing. `backupctl prune --policy` replaces the policy keys given here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep the newest N backups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the newest N days that have one (in `time_zone`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_retain: Option<u32>,
    /// Keep the newest backup of each of the newest N ISO weeks that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weekly_retain: Option<u32>,
    /// Keep the newest backup of each of the newest N months that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_retain: Option<u32>,
    /// Keep the newest backup of each of the newest N years that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yearly_retain: Option<u32>,
    /// Keep every backup that started in the last D days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_days: Option<u32>,
    /// The point-in-time-recovery window in days: all WAL of the last D days is kept, so any moment in it can be
    /// restored; older kept backups keep only the WAL from their start to their stop. Unset: all WAL from the
    /// oldest kept backup on is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pitr_days: Option<u32>,
    /// Logical dumps (`backupctl dump`): keep the newest dump of each of the newest N days that have one. The
    /// dump keys apply to dumps only, with the same rules as the base-backup keys; with none set, prune keeps
    /// every dump. The newest dump is always kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump_daily_retain: Option<u32>,
    /// Logical dumps: keep the newest dump of each of the newest N ISO weeks that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump_weekly_retain: Option<u32>,
    /// Logical dumps: keep the newest dump of each of the newest N months that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump_monthly_retain: Option<u32>,
    /// Logical dumps: keep the newest dump of each of the newest N years that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump_yearly_retain: Option<u32>,
    /// IANA time zone whose calendar days, weeks, months and years the policy counts in (e.g. `Europe/Berlin`).
    pub time_zone: String,
    /// `backupctl check` fails when the newest complete backup is older than this (e.g. `"26h"`). Unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backup_age: Option<Duration>,
    /// `backupctl gc` leaves alone unreferenced objects and temporary files younger than this, in case a writer
    /// that does not hold a lease (an older version) is still using them.
    pub gc_grace: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            keep_last: None,
            daily_retain: None,
            weekly_retain: None,
            monthly_retain: None,
            yearly_retain: None,
            full_days: None,
            pitr_days: None,
            dump_daily_retain: None,
            dump_weekly_retain: None,
            dump_monthly_retain: None,
            dump_yearly_retain: None,
            time_zone: "UTC".to_owned(),
            max_backup_age: None,
            gc_grace: Duration(std::time::Duration::from_secs(3600)),
        }
    }
}

/// `[check]`: thresholds of `backupctl check`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CheckConfig {
    /// Fail when the newest archived WAL segment is older than this (e.g. `"1h"`; set it above `archive_timeout`
    /// on an idle cluster). Unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wal_age: Option<Duration>,
    /// How long the forced WAL switch may take to reach the repository.
    pub wal_switch_timeout: Duration,
    /// Fail when the spool's file system has less free space than this, in MiB.
    pub min_spool_free_mib: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            max_wal_age: None,
            wal_switch_timeout: Duration(std::time::Duration::from_secs(60)),
            min_spool_free_mib: 1024,
        }
    }
}

/// Problems with these sections, each starting with its key.
pub(super) fn validate(retention: &RetentionConfig, check: &CheckConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if jiff::tz::TimeZone::get(&retention.time_zone).is_err() {
        problems.push(format!(
            "retention.time_zone = {:?}: not a time zone this host knows (an IANA name such as \"UTC\" or \"Europe/Berlin\")",
            retention.time_zone
        ));
    }
    if retention.keep_last == Some(0) {
        problems.push("retention.keep_last = 0: must be at least 1 (leave it out to not use it)".to_owned());
    }
    if check.wal_switch_timeout.0.is_zero() {
        problems.push("check.wal_switch_timeout = \"0s\": must be longer than 0".to_owned());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, secs) in [("26h", 93600), ("90m", 5400), ("7 days", 604800), ("1d 12h", 129600), ("PT1H", 3600)] {
            let d: Duration = text.parse().expect(text);
            assert_eq!(d.0.as_secs(), secs, "{text}");
            assert_eq!(d.to_string().parse::<Duration>(), Ok(d), "{text} round trip via {d}");
        }
        for bad in ["", "x", "-1h", "26"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?}");
        }
    }
}
