//! `[log]` (also accepted as `[logging]`): level, format and destinations of every program's log records.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[log]` (also accepted as `[logging]`): level, format and destinations of the log. Every record carries its
/// time, level, program, and what it is working on (segment, backup id, job); see docs/operations.md, "Logging".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Minimum level: `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// Output format: `text` (one line per record) or `json` (one JSON object per line).
    pub format: String,
    /// Write records to standard error (wal-push's and wal-fetch's land in the PostgreSQL server log).
    pub stderr: bool,
    /// Also append records to this file, rotated by size. `{program}` in the path is replaced by the program's
    /// name (`wal-push`, `backupctl`...): give each program its own file, since rotation is not shared between
    /// processes. The directory must exist and be writable by the user the program runs as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Rotate `file` when it reaches this size, in MiB.
    pub max_size_mib: u64,
    /// Rotated files kept (`file.1` the newest ... `file.N`); older ones are deleted.
    pub keep: usize,
    /// Also send records to the systemd journal (with the program as `SYSLOG_IDENTIFIER`). When the journal is
    /// not reachable the program says so once on stderr and goes on.
    pub journald: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: "text".to_owned(),
            stderr: true,
            file: None,
            max_size_mib: 64,
            keep: 5,
            journald: false,
        }
    }
}

impl LogConfig {
    /// `file` for `program`: `{program}` replaced by its name.
    pub fn file_for(&self, program: &str) -> Option<PathBuf> {
        let file = self.file.as_ref()?;
        let text = file.to_string_lossy();
        Some(if text.contains("{program}") { PathBuf::from(text.replace("{program}", program)) } else { file.clone() })
    }
}

/// Every value of the section that parses but makes no sense, each as `key = value: what is wrong`.
pub(super) fn validate(c: &LogConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if !["error", "warn", "info", "debug", "trace"].contains(&c.level.as_str()) {
        problems.push(format!("log.level = {:?}: must be error, warn, info, debug or trace", c.level));
    }
    if !["text", "json"].contains(&c.format.as_str()) {
        problems.push(format!("log.format = {:?}: must be text or json", c.format));
    }
    if let Some(f) = &c.file
        && !f.is_absolute()
    {
        problems.push(format!("log.file = {:?}: must be an absolute path", f.display().to_string()));
    }
    if c.max_size_mib == 0 || c.max_size_mib > 1024 * 1024 {
        problems.push(format!("log.max_size_mib = {}: must be between 1 and 1048576", c.max_size_mib));
    }
    if c.keep == 0 || c.keep > 1000 {
        problems.push(format!("log.keep = {}: must be between 1 and 1000", c.keep));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_for_substitutes_the_program() {
        let c = LogConfig { file: Some("/var/log/backupctl/{program}.log".into()), ..LogConfig::default() };
        assert_eq!(c.file_for("wal-push"), Some(PathBuf::from("/var/log/backupctl/wal-push.log")));
        let c = LogConfig { file: Some("/var/log/b.log".into()), ..LogConfig::default() };
        assert_eq!(c.file_for("wal-push"), Some(PathBuf::from("/var/log/b.log")));
        assert_eq!(LogConfig::default().file_for("x"), None);
    }

    #[test]
    fn validate_table() {
        assert!(validate(&LogConfig::default()).is_empty());
        let cases = [
            (LogConfig { file: Some("rel.log".into()), ..LogConfig::default() }, "log.file = \"rel.log\""),
            (LogConfig { max_size_mib: 0, ..LogConfig::default() }, "log.max_size_mib = 0"),
            (LogConfig { keep: 0, ..LogConfig::default() }, "log.keep = 0"),
            (LogConfig { level: "loud".into(), ..LogConfig::default() }, "log.level"),
        ];
        for (c, want) in cases {
            let p = validate(&c).join("; ");
            assert!(p.contains(want), "{c:?}: {p}");
        }
    }
}
