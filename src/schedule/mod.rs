//! The scheduler: cron schedules of the jobs (`[schedule]`), and the daemon that runs them in-process.
//!
//! Invariants:
//! - A job runs the same library code as its CLI command (`backup::run`, `retention::expire::run`,
//!   `verify::run`, `check::run`, `drill::run`), in a thread of the daemon; the daemon never runs itself.
//! - One run of a job at a time, and one base backup at a time (full and incremental share a lane): a slot that
//!   comes while the previous run is still going is skipped, logged and counted as missed.
//! - Every slot started is recorded (`<spool>/state/jobs.json`, `last_slot`) before the job starts, and the next
//!   slot is always after it: a restarted daemon (or a clock stepped back) never runs a slot twice.

pub mod cron;
pub mod daemon;
pub mod jobs;

use std::fmt;

use crate::config::ScheduleConfig;

/// A job the scheduler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    /// A full base backup.
    FullBackup,
    /// An incremental base backup.
    IncrementalBackup,
    /// Retention: `backupctl prune`.
    Prune,
    /// `backupctl verify`.
    Verify,
    /// `backupctl check`.
    Check,
    /// `backupctl drill` of the newest backup.
    Drill,
}

impl Job {
    /// Every job, in the order of `[schedule]`'s keys.
    pub const ALL: [Job; 6] =
        [Job::FullBackup, Job::IncrementalBackup, Job::Prune, Job::Verify, Job::Check, Job::Drill];

    /// The job's name: its `[schedule]` key, the `job` label of its metrics and log records.
    pub fn name(self) -> &'static str {
        match self {
            Job::FullBackup => "full_backup",
            Job::IncrementalBackup => "incremental_backup",
            Job::Prune => "prune",
            Job::Verify => "verify",
            Job::Check => "check",
            Job::Drill => "drill",
        }
    }

    /// Jobs in the same lane never run at once: both kinds of base backup share one.
    pub fn lane(self) -> &'static str {
        match self {
            Job::FullBackup | Job::IncrementalBackup => "backup",
            other => other.name(),
        }
    }

    /// The alert condition a failed run raises: `check`, `verify` and `drill` share theirs with the CLI commands
    /// (so a fault is one alert however it was found); the others are `job:<name>`.
    pub fn alert_key(self) -> String {
        match self {
            Job::Check | Job::Verify | Job::Drill => self.name().to_owned(),
            other => format!("job:{}", other.name()),
        }
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The parsed `[schedule]`: each scheduled job with its expression, and the zone they are read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The time zone of the expressions.
    pub time_zone: jiff::tz::TimeZone,
    /// Jobs that have an expression, in [`Job::ALL`] order.
    pub entries: Vec<(Job, cron::Expression)>,
}

impl Schedule {
    /// Parse the section. Errors (`Error::Usage`-style text) only for what validation already rejects; a config
    /// that loaded never fails here.
    pub fn from_config(c: &ScheduleConfig) -> Result<Self, String> {
        let time_zone = match &c.time_zone {
            Some(name) => jiff::tz::TimeZone::get(name).map_err(|e| format!("schedule.time_zone = {name:?}: {e}"))?,
            None => jiff::tz::TimeZone::system(),
        };
        let mut entries = Vec::new();
        for (job, (key, expr)) in Job::ALL.into_iter().zip(c.expressions()) {
            if let Some(expr) = expr {
                entries.push((job, cron::parse(expr).map_err(|e| format!("schedule.{key} = {expr:?}: {e}"))?));
            }
        }
        Ok(Self { time_zone, entries })
    }

    /// Now, in the schedule's zone.
    pub fn now(&self) -> jiff::ZonedDateTime {
        jiff::Timestamp::now().to_zoned_datetime(self.time_zone.clone())
    }
}

/// The slot to run next: the first time the expression names strictly after both `now` and `last_slot` (the
/// newest slot already started, from the jobs record), so that no slot runs twice. `None` if it never matches.
pub fn next_slot(
    expr: &cron::Expression,
    now: &jiff::ZonedDateTime,
    last_slot: Option<jiff::Timestamp>,
) -> Option<jiff::ZonedDateTime> {
    let from = match last_slot {
        Some(last) if last > now.timestamp() => last.to_zoned_datetime(now.time_zone().clone()),
        _ => now.clone(),
    };
    expr.next_after(&from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::ZonedDateTime {
        s.parse().expect("zoned")
    }

    /// A restart right after a slot started, or a clock stepped back, never runs that slot again.
    #[test]
    fn next_slot_is_after_the_last_one_started() {
        let every_minute = cron::parse("* * * * *").expect("parse");
        let now = at("2026-12-01T10:00:30+00:00[UTC]");
        assert_eq!(next_slot(&every_minute, &now, None), Some(at("2026-12-01T10:01:00+00:00[UTC]")));
        // The clock went back 5 minutes after the 10:05 slot started.
        let last = at("2026-12-01T10:05:00+00:00[UTC]").timestamp();
        assert_eq!(next_slot(&every_minute, &now, Some(last)), Some(at("2026-12-01T10:06:00+00:00[UTC]")));
        // An old last slot changes nothing.
        let old = at("2026-11-01T00:00:00+00:00[UTC]").timestamp();
        assert_eq!(next_slot(&every_minute, &now, Some(old)), Some(at("2026-12-01T10:01:00+00:00[UTC]")));
    }

    #[test]
    fn schedule_from_config_keeps_job_order_and_zone() {
        let c = ScheduleConfig {
            time_zone: Some("Europe/Lisbon".to_owned()),
            drill: Some("@weekly".to_owned()),
            full_backup: Some("0 1 * * sun".to_owned()),
            ..ScheduleConfig::default()
        };
        let s = Schedule::from_config(&c).expect("schedule");
        let jobs: Vec<Job> = s.entries.iter().map(|(j, _)| *j).collect();
        assert_eq!(jobs, vec![Job::FullBackup, Job::Drill]);
        assert_eq!(s.time_zone.iana_name(), Some("Europe/Lisbon"));
        assert_eq!(Job::FullBackup.lane(), Job::IncrementalBackup.lane());
        assert_eq!(Job::Check.alert_key(), "check");
        assert_eq!(Job::Prune.alert_key(), "job:prune");
    }
}
