//! `[schedule]`: when the daemon (`backupctl schedule --daemon`) runs each job.

use serde::{Deserialize, Serialize};

use super::Duration;

/// `[schedule]`: when the daemon (`backupctl schedule --daemon`) runs each job. Each job key is a cron
/// expression (see [`crate::schedule::cron`]): five fields as in crontab(5) (`minute hour day-of-month month
/// day-of-week`), six with a leading seconds field, or a name such as `@daily`. A job without a key never runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// IANA time zone the expressions are read in (e.g. `Europe/Berlin`); default the system's zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Full base backups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_backup: Option<String>,
    /// Incremental base backups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental_backup: Option<String>,
    /// `backupctl prune` with the `[retention]` policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<String>,
    /// `backupctl verify` (with `verify_wal`, of every archived WAL file too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
    /// `backupctl check`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// `backupctl drill` of the newest backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<String>,
    /// Scheduled verify jobs re-read every archived WAL file, not only what each backup needs.
    pub verify_wal: bool,
    /// Scheduled backups request an immediate checkpoint instead of a spread one.
    pub fast_checkpoint: bool,
    /// Scheduled backups read the data directory at most this fast, in KiB per second (as base-backup's
    /// `--max-rate`), to spare a busy primary; unset means no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_max_rate_kib: Option<u64>,
    /// On SIGTERM, how long running jobs may go on before the daemon abandons them and exits.
    pub grace_period: Duration,
    /// How often the daemon evaluates the health alerts (archive failing or behind, newest backup too old).
    pub health_interval: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            time_zone: None,
            full_backup: None,
            incremental_backup: None,
            prune: None,
            verify: None,
            check: None,
            drill: None,
            verify_wal: false,
            fast_checkpoint: false,
            backup_max_rate_kib: None,
            grace_period: Duration(std::time::Duration::from_secs(60)),
            health_interval: Duration(std::time::Duration::from_secs(60)),
        }
    }
}

impl ScheduleConfig {
    /// The job keys with their expressions, in the order of [`crate::schedule::Job::ALL`].
    pub fn expressions(&self) -> [(&'static str, Option<&str>); 6] {
        [
            ("full_backup", self.full_backup.as_deref()),
            ("incremental_backup", self.incremental_backup.as_deref()),
            ("prune", self.prune.as_deref()),
            ("verify", self.verify.as_deref()),
            ("check", self.check.as_deref()),
            ("drill", self.drill.as_deref()),
        ]
    }
}

/// Every value of the section that parses but makes no sense, each as `key = value: what is wrong`.
pub(super) fn validate(c: &ScheduleConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(tz) = &c.time_zone
        && let Err(e) = jiff::tz::TimeZone::get(tz)
    {
        problems.push(format!("schedule.time_zone = {tz:?}: not a known time zone ({e})"));
    }
    // An expression that parses but names no date (`0 0 30 2 *`) is a job that silently never runs: refuse it too.
    let now = jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC);
    for (key, expr) in c.expressions() {
        let Some(expr) = expr else { continue };
        match crate::schedule::cron::parse(expr) {
            Err(e) => problems.push(format!("schedule.{key} = {expr:?}: {e}")),
            Ok(parsed) if parsed.next_after(&now).is_none() => problems
                .push(format!("schedule.{key} = {expr:?}: never matches (no such date): the job would never run")),
            Ok(_) => {}
        }
    }
    if c.backup_max_rate_kib == Some(0) {
        problems.push("schedule.backup_max_rate_kib = 0: must be more than 0 (leave it out for no limit)".to_owned());
    }
    if c.health_interval.0 < std::time::Duration::from_secs(1) {
        problems.push(format!("schedule.health_interval = \"{}\": must be at least 1s", c.health_interval));
    }
    problems
}
