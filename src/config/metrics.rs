//! `[metrics]`: the Prometheus endpoint of the daemon and the node-exporter textfile.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Duration;

/// The address the daemon serves `/metrics` on unless `[metrics] listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9850";

/// `[metrics]`: the Prometheus endpoint of the daemon and the node-exporter textfile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port the scheduler daemon serves `GET /metrics` on (Prometheus text format). A loopback
    /// address unless `allow_remote = true`.
    pub listen: String,
    /// Allow `listen` to be an address other than loopback (the metrics name backups and hosts, and the endpoint
    /// has no authentication: put it behind a firewall or a reverse proxy).
    pub allow_remote: bool,
    /// Directory of node-exporter's textfile collector (`--collector.textfile.directory`). When set, wal-push
    /// rewrites `backupctl_archive.prom` there after every call, and `backupctl metrics --textfile` writes
    /// `backupctl.prom`. Must be writable by the PostgreSQL OS user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub textfile_dir: Option<PathBuf>,
    /// How long the endpoint reuses what it read from the repository (backups, WAL, sizes) before reading it
    /// again; local state (wal-push, jobs, drills) is read on every scrape. `"0s"` reads the repository on
    /// every scrape.
    pub repository_refresh: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            allow_remote: false,
            textfile_dir: None,
            repository_refresh: Duration(std::time::Duration::from_secs(60)),
        }
    }
}

impl MetricsConfig {
    /// `listen` as a socket address (`None` if it is not one; `validate` reports that).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.trim().parse().ok()
    }
}

/// Every value of the section that parses but makes no sense, each as `key = value: what is wrong`.
pub(super) fn validate(c: &MetricsConfig) -> Vec<String> {
    let mut problems = Vec::new();
    match c.listen_addr() {
        None if c.listen.trim().is_empty() => {}
        None => problems.push(format!(
            "metrics.listen = {:?}: expected an IP address and port such as {DEFAULT_LISTEN} or [::1]:9850",
            c.listen
        )),
        Some(a) if !a.ip().is_loopback() && !c.allow_remote => problems.push(format!(
            "metrics.listen = {:?}: not a loopback address; set metrics.allow_remote = true to serve metrics to \
             other hosts",
            c.listen
        )),
        Some(_) => {}
    }
    if let Some(dir) = &c.textfile_dir
        && !dir.is_absolute()
    {
        problems.push(format!("metrics.textfile_dir = {:?}: must be an absolute path", dir.display().to_string()));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_and_textfile_dir_table() {
        let ok = |listen: &str, remote: bool| MetricsConfig {
            listen: listen.to_owned(),
            allow_remote: remote,
            ..MetricsConfig::default()
        };
        assert!(validate(&MetricsConfig::default()).is_empty());
        assert!(validate(&ok("[::1]:9850", false)).is_empty());
        assert!(validate(&ok("0.0.0.0:9850", true)).is_empty());
        let cases = [
            (ok("0.0.0.0:9850", false), "not a loopback address"),
            (ok("192.168.1.5:9850", false), "allow_remote"),
            (ok("localhost:9850", false), "expected an IP address and port"),
            (ok("127.0.0.1", false), "expected an IP address and port"),
            (MetricsConfig { textfile_dir: Some("rel".into()), ..MetricsConfig::default() }, "absolute path"),
        ];
        for (c, want) in cases {
            let p = validate(&c).join("; ");
            assert!(p.contains(want), "{c:?}: {p}");
        }
    }
}
