//! `[drill]`: restore drills (`backupctl drill`): where they run, which server binaries, how long recovery may
//! take, and the smoke query.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Duration;

/// `[drill]`: restore drills (`backupctl drill`, the scheduler's `drill` job; docs/operations.md, "Restore drills").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DrillConfig {
    /// Directory each drill creates its temporary directory in (removed when the drill ends). Its file system needs
    /// room for the backup's logical size plus a margin (10% and 1 GiB). Unset: the system's temporary directory
    /// (`$TMPDIR`, else `/tmp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// Directory of the PostgreSQL server binaries (`postgres`, `pg_ctl`, `pg_amcheck`) of the backup's major
    /// version. Unset: `/usr/lib/postgresql/<major>/bin`, else the directory `pg_config --bindir` names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_bin_dir: Option<PathBuf>,
    /// How long the restored server may take to start and finish recovery before the drill fails (e.g. `"1h"`).
    pub timeout: Duration,
    /// SQL run on the restored server once recovery has finished; any error fails the drill (e.g. a count of a
    /// table that must not be empty: `select 1/count(*) from orders`).
    pub sql: String,
    /// The database role the drill connects as (over a Unix socket in its temporary directory, with `trust`
    /// authentication): a superuser of the backed-up cluster, as pg_amcheck needs.
    pub user: String,
    /// The database `sql` runs in.
    pub database: String,
}

impl Default for DrillConfig {
    fn default() -> Self {
        Self {
            work_dir: None,
            pg_bin_dir: None,
            timeout: Duration(std::time::Duration::from_secs(3600)),
            sql: "select count(*) from pg_database".to_owned(),
            user: "postgres".to_owned(),
            database: "postgres".to_owned(),
        }
    }
}

impl DrillConfig {
    /// `work_dir`, or the system's temporary directory when unset (`std::env::temp_dir`: `$TMPDIR`, else `/tmp`).
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

/// Every value of the section that parses but makes no sense, each as `key = value: what is wrong`.
pub(super) fn validate(c: &DrillConfig) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, dir) in [("work_dir", &c.work_dir), ("pg_bin_dir", &c.pg_bin_dir)] {
        if let Some(d) = dir.as_ref().filter(|d| !d.is_absolute()) {
            problems.push(format!("drill.{key} = {d:?}: must be an absolute path"));
        }
    }
    if c.timeout.0 < std::time::Duration::from_secs(1) {
        problems.push(format!("drill.timeout = \"{}\": must be at least 1s", c.timeout));
    }
    for (key, value) in [("sql", &c.sql), ("user", &c.user), ("database", &c.database)] {
        if value.trim().is_empty() {
            problems.push(format!("drill.{key} = {value:?}: must not be empty"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_problems() {
        let d = DrillConfig::default();
        assert!(validate(&d).is_empty());
        assert_eq!(d.timeout.0.as_secs(), 3600);
        let bad = DrillConfig {
            work_dir: Some("rel".into()),
            pg_bin_dir: Some("bin".into()),
            timeout: Duration(std::time::Duration::ZERO),
            sql: " ".into(),
            user: String::new(),
            database: "postgres".into(),
        };
        let p = validate(&bad).join("; ");
        for want in [
            "drill.work_dir = \"rel\": must be an absolute path",
            "drill.pg_bin_dir = \"bin\"",
            "drill.timeout = \"0s\": must be at least 1s",
            "drill.sql = \" \": must not be empty",
            "drill.user = \"\"",
        ] {
            assert!(p.contains(want), "{p} lacks {want}");
        }
        let set = DrillConfig { work_dir: Some("/srv/drill".into()), ..DrillConfig::default() };
        assert_eq!(set.work_dir(), PathBuf::from("/srv/drill"));
    }
}
