//! Configuration: TOML with `${VAR}` / `${VAR:default}` interpolation, validated once into an immutable value.
//!
//! Invariants:
//! - This is the only module that reads configuration files or the process environment.
//! - Unknown keys are errors (`deny_unknown_fields`); every problem names the file and the key.
//! - Every problem is reported at once, in words a DBA uses (no Rust type names), with the value that was given:
//!   `archive.push_concurrency = "x": expected a whole number`, `repository.compression_level = 50: must be
//!   between -7 and 19` (see `messages`).
//! - Secrets never reach logs: `Debug` is written by hand where a value may be secret.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod alerts;
mod backup;
mod catalog;
mod drill;
mod dump;
mod log;
mod messages;
mod metrics;
mod retention;
mod schedule;
mod tls;

pub use alerts::{
    AlertsConfig, EmailConfig, SmtpTls, WebhookConfig, WebhookFormat, is_loopback_host, redact_webhook_url,
};
pub use backup::{BackupConfig, PostgresConfig, RestoreConfig};
pub use catalog::CatalogConfig;
pub use drill::DrillConfig;
pub use dump::DumpConfig;
pub use log::LogConfig;
pub use messages::redact_url;
pub use metrics::MetricsConfig;
pub use retention::{CheckConfig, Duration, RetentionConfig};
pub use schedule::ScheduleConfig;
pub use tls::{SYSTEM_ROOT_CERTS, SslMode, TlsSettings};

/// Where the configuration is looked for when neither `--config` nor `$BACKUPCTL_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/backupctl/backupctl.toml";
/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "BACKUPCTL_CONFIG";

/// Configuration errors. Each names the file, and the key where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `${VAR}` names an unset variable and gives no default.
    #[error("{path}: line {line}: environment variable {var} is not set and has no default (write ${{{var}:default}})")]
    UnsetVariable {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The variable.
        var: String,
    },
    /// A `${` without a closing `}` or with an invalid name.
    #[error("{path}: line {line}: malformed interpolation {text:?}")]
    BadInterpolation {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The offending text.
        text: String,
    },
    /// TOML syntax, unknown keys, missing required keys or wrongly typed values; all problems at once.
    #[error("{path}: {}", problems.join("; "))]
    Parse {
        /// The file.
        path: PathBuf,
        /// One entry per problem, each starting with the key (`key = value: expected ...`) or the line.
        problems: Vec<String>,
    },
    /// Values that parse but make no sense; all problems at once.
    #[error("{path}: {}", problems.join("; "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One entry per problem, each starting with the key.
        problems: Vec<String>,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where backups and WAL are stored.
    pub repository: RepositoryConfig,
    /// Local working directory for status records and prefetched WAL.
    pub spool: SpoolConfig,
    /// WAL archiving (wal-push, wal-fetch).
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// Logging (`[log]`; `[logging]` is accepted too).
    #[serde(default, alias = "logging")]
    pub log: LogConfig,
    /// How base-backup connects to the cluster (required by base-backup only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresConfig>,
    /// Base backups.
    #[serde(default)]
    pub backup: BackupConfig,
    /// Restores.
    #[serde(default)]
    pub restore: RestoreConfig,
    /// Retention: which backups and WAL prune keeps.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Thresholds of `backupctl check`.
    #[serde(default)]
    pub check: CheckConfig,
    /// When the scheduler daemon runs each job.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Restore drills.
    #[serde(default)]
    pub drill: DrillConfig,
    /// Logical dumps (`backupctl dump`, `dump-restore`).
    #[serde(default)]
    pub dump: DumpConfig,
    /// Alerts by email and webhook.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The PostgreSQL catalog the repository is mirrored into (optional; docs/design/catalog.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogConfig>,
}

/// `[repository]`
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Repository URL: `file:///absolute/path` or `s3://bucket/optional/prefix`.
    pub url: String,
    /// zstd compression level for stored objects (1-19; negative levels are faster and compress less).
    #[serde(default = "default_compression_level")]
    pub compression_level: i32,
    /// Format of a repository created with this configuration (1 or 2; docs/design/format2.md). An existing
    /// repository keeps the format in its `backupctl.json`, whatever this says.
    #[serde(default = "default_repository_format")]
    pub format: u32,
    /// S3 settings, used when `url` starts with `s3://`.
    #[serde(default)]
    pub s3: S3Config,
}

fn default_compression_level() -> i32 {
    1
}

fn default_repository_format() -> u32 {
    crate::repository::NEW_REPOSITORY_FORMAT
}

impl fmt::Debug for RepositoryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryConfig")
            .field("url", &self.url)
            .field("compression_level", &self.compression_level)
            .field("format", &self.format)
            .field("s3", &self.s3)
            .finish()
    }
}

/// `[repository.s3]`
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// AWS region (default `us-east-1`).
    pub region: String,
    /// Endpoint URL of an S3-compatible service, e.g. `https://minio.internal:9000`; empty means AWS.
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint` (most S3-compatible services need this).
    pub force_path_style: bool,
    /// Server-side encryption: `"AES256"` (SSE-S3) or `"aws:kms"` (SSE-KMS).
    pub sse: Option<String>,
    /// KMS key id or ARN for `sse = "aws:kms"`; empty uses the bucket's default key.
    pub sse_kms_key_id: Option<String>,
    /// Storage class for new objects (e.g. `STANDARD_IA`); empty uses the bucket default.
    pub storage_class: Option<String>,
    /// Allow a plain `http://` endpoint. Off by default: traffic and credentials would travel unencrypted.
    pub allow_http: bool,
    /// Objects larger than this many MiB are uploaded in parts (multipart upload).
    pub multipart_threshold_mib: u64,
    /// Part size in MiB for multipart uploads (at least 5).
    pub multipart_part_size_mib: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            region: "us-east-1".to_owned(),
            endpoint: None,
            force_path_style: false,
            sse: None,
            sse_kms_key_id: None,
            storage_class: None,
            allow_http: false,
            multipart_threshold_mib: 64,
            multipart_part_size_mib: 16,
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("force_path_style", &self.force_path_style)
            .field("sse", &self.sse)
            .field("sse_kms_key_id", &self.sse_kms_key_id.as_ref().map(|_| "<redacted>"))
            .field("storage_class", &self.storage_class)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

/// `[spool]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Spool directory (must be writable by the PostgreSQL OS user). Holds status records and prefetched WAL.
    pub path: PathBuf,
}

/// `[archive]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// How many segments wal-push compresses at once (the requested one plus look-ahead; the background pusher
    /// also lets as many again wait on storage).
    pub push_concurrency: usize,
    /// How many `.ready` segments wal-push may push ahead of the one PostgreSQL is archiving, in the call itself
    /// and in the background pusher it starts (0 disables look-ahead and the background pusher).
    pub push_ahead: usize,
    /// How many segments wal-fetch prefetches ahead of the one PostgreSQL asked for (0 disables prefetch).
    pub fetch_prefetch: usize,
    /// How long to retry transient storage errors before failing, in seconds.
    pub retry_deadline_seconds: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self { push_concurrency: 2, push_ahead: 16, fetch_prefetch: 8, retry_deadline_seconds: 60 }
    }
}

impl Config {
    /// Choose the configuration path: the flag, else `$BACKUPCTL_CONFIG`, else [`DEFAULT_CONFIG_PATH`].
    pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        match std::env::var_os(CONFIG_ENV) {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    /// Read, interpolate from the process environment, parse and validate a file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::load_without(path, &[])
    }

    /// [`Config::load`] for a program that never reads the top-level sections named in `unused` (see
    /// [`NOT_READ_BY_WAL_COMMANDS`]): an unset `${VAR}` in them is no error (it reads as `""`), and they are reset
    /// to their defaults before validation. Their secrets (an SMTP password set only in the scheduler's
    /// environment) then need not be in this program's environment (PostgreSQL's, for wal-push).
    pub fn load_without(path: &Path, unused: &[&str]) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::parse_without(path, &text, &|name| env.get(name).cloned(), unused)
    }

    /// Interpolate, parse and validate text; `lookup` resolves environment variables.
    pub fn parse(path: &Path, text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Self::parse_without(path, text, lookup, &[])
    }

    /// [`Config::parse`], ignoring the sections in `unused` as [`Config::load_without`] does.
    pub fn parse_without(
        path: &Path,
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
        unused: &[&str],
    ) -> Result<Self, Error> {
        let text = interpolate(path, text, lookup, unused)?;
        // A problem in a section this program ignores (`alerts.notify_succes: unknown key`) is not its concern.
        let in_unused =
            |p: &String| unused.iter().any(|s| p.strip_prefix(s).is_some_and(|r| r.starts_with(['.', ' '])));
        let mut config: Config = match messages::from_str(&text) {
            Ok(c) => c,
            Err((problems, Some(rest))) if problems.iter().all(in_unused) => rest,
            Err((mut problems, rest)) => {
                // The values that did parse are checked too: every problem at once.
                problems.extend(rest.map(|c: Config| c.problems()).unwrap_or_default());
                return Err(Error::Parse { path: path.to_path_buf(), problems });
            }
        };
        for section in unused {
            match *section {
                "postgres" => config.postgres = None,
                "schedule" => config.schedule = ScheduleConfig::default(),
                "drill" => config.drill = DrillConfig::default(),
                "alerts" => config.alerts = AlertsConfig::default(),
                "catalog" => config.catalog = None,
                _ => {}
            }
        }
        config.validate(path)?;
        Ok(config)
    }

    /// Check values; report every problem at once.
    pub fn validate(&self, path: &Path) -> Result<(), Error> {
        let problems = self.problems();
        if problems.is_empty() { Ok(()) } else { Err(Error::Invalid { path: path.to_path_buf(), problems }) }
    }

    /// Every value that parses but makes no sense, each as `key = value: what is wrong`.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let url = &self.repository.url;
        if let Some(rest) = url.strip_prefix("file://") {
            let root = Path::new(rest);
            if !rest.starts_with('/') {
                problems.push(format!("repository.url = {url:?}: must be an absolute path (file:///...)"));
            } else if root.parent().is_none() {
                problems
                    .push(format!("repository.url = {url:?}: names the root directory; name a directory of its own"));
            } else if nests(root, &self.spool.path) {
                // gc and verify would take the spool's files for the repository's, and the spool's clean-up the
                // repository's for its own.
                problems.push(format!(
                    "spool.path = {:?}: must not be inside the repository ({url}) nor hold it",
                    self.spool.path
                ));
            }
        } else if let Some(rest) = url.strip_prefix("s3://") {
            if rest.split('/').next().is_none_or(str::is_empty) {
                problems.push(format!("repository.url = {url:?}: names no bucket"));
            }
            let s3 = &self.repository.s3;
            if let Some(ep) = &s3.endpoint {
                let shown = redact_url(ep);
                // Schemes are case-insensitive (RFC 3986 section 3.1): `HTTPS://` is `https://`.
                let scheme = ep.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
                if scheme.as_deref() == Some("http") && !s3.allow_http {
                    problems.push(format!(
                        "repository.s3.endpoint = {shown:?}: plain HTTP; set repository.s3.allow_http = true to allow it"
                    ));
                } else if !matches!(scheme.as_deref(), Some("http" | "https")) {
                    problems.push(format!("repository.s3.endpoint = {shown:?}: must start with https:// or http://"));
                } else if let Some(what) = endpoint_problem(ep) {
                    problems.push(format!("repository.s3.endpoint = {shown:?}: {what}"));
                }
            }
            match (s3.sse.as_deref(), &s3.sse_kms_key_id) {
                (None | Some("AES256"), Some(_)) => {
                    problems.push("repository.s3.sse_kms_key_id: requires sse = \"aws:kms\"".to_owned())
                }
                (None | Some("AES256") | Some("aws:kms"), _) => {}
                (Some(other), _) => {
                    problems.push(format!("repository.s3.sse = {other:?}: must be \"AES256\" or \"aws:kms\""))
                }
            }
            if s3.multipart_part_size_mib < 5 {
                problems.push(format!(
                    "repository.s3.multipart_part_size_mib = {}: must be at least 5",
                    s3.multipart_part_size_mib
                ));
            }
            if s3.region.is_empty() {
                problems.push("repository.s3.region = \"\": must not be empty".to_owned());
            }
        } else {
            problems.push(format!("repository.url = {url:?}: must start with file:// or s3://"));
        }
        let level = self.repository.compression_level;
        if !(-7..=19).contains(&level) {
            problems.push(format!("repository.compression_level = {level}: must be between -7 and 19"));
        } else if level == 0 {
            problems
                .push("repository.compression_level = 0: must not be 0 (1 to 19, or -7 to -1 for faster)".to_owned());
        }
        let format = self.repository.format;
        if !(1..=crate::repository::FORMAT_VERSION).contains(&format) {
            problems.push(format!("repository.format = {format}: must be 1 or {}", crate::repository::FORMAT_VERSION));
        }
        if !self.spool.path.is_absolute() {
            problems.push(format!("spool.path = {:?}: must be an absolute path", self.spool.path));
        }
        let a = &self.archive;
        if a.push_concurrency == 0 || a.push_concurrency > 64 {
            problems.push(format!("archive.push_concurrency = {}: must be between 1 and 64", a.push_concurrency));
        }
        if a.push_ahead > 1024 {
            problems.push(format!("archive.push_ahead = {}: must be at most 1024", a.push_ahead));
        }
        if a.fetch_prefetch > 256 {
            problems.push(format!("archive.fetch_prefetch = {}: must be at most 256", a.fetch_prefetch));
        }
        if a.retry_deadline_seconds == 0 {
            problems.push("archive.retry_deadline_seconds = 0: must be at least 1".to_owned());
        }
        problems.extend(log::validate(&self.log));
        problems.extend(backup::validate(self.postgres.as_ref(), &self.backup, &self.restore));
        problems.extend(retention::validate(&self.retention, &self.check));
        problems.extend(schedule::validate(&self.schedule));
        problems.extend(drill::validate(&self.drill));
        problems.extend(alerts::validate(&self.alerts));
        problems.extend(metrics::validate(&self.metrics));
        problems.extend(catalog::validate(self.catalog.as_ref()));
        problems
    }
}

/// What is wrong with an `http(s)://` endpoint URL that the SDK would only reject at the first request, or
/// connect to nowhere: not a URL by RFC 3986 (as the `url` crate parses it), no host, or port 0. None when it
/// is usable. A path is allowed (some S3-compatible gateways serve below one).
fn endpoint_problem(endpoint: &str) -> Option<String> {
    match url::Url::parse(endpoint) {
        Err(e) => Some(format!("is not a URL ({e})")),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Some("names no host".to_owned()),
        Ok(u) if u.port() == Some(0) => Some("port 0 is no port to connect to".to_owned()),
        Ok(_) => None,
    }
}

/// Whether one of two absolute paths is the other or inside it: compared component by component after `.` and
/// `..` are resolved as written (`/srv/spool/../repo` is `/srv/repo`), and again with the symbolic links of the
/// part of each path that exists already resolved (`realpath(3)`; a spool whose directory is a link into the
/// repository). The paths need not exist yet.
fn nests(a: &Path, b: &Path) -> bool {
    fn lexical(p: &Path) -> PathBuf {
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    out.pop();
                }
                c => out.push(c),
            }
        }
        out
    }
    /// The nearest existing ancestor's real path, with the rest of the path appended as written; the lexical
    /// path when no ancestor can be resolved (one that cannot be read, say).
    fn resolved(p: &Path) -> PathBuf {
        p.ancestors()
            .find_map(|a| Some(a.canonicalize().ok()?.join(p.strip_prefix(a).ok()?)))
            .unwrap_or_else(|| p.to_path_buf())
    }
    let (a, b) = (lexical(a), lexical(b));
    let (ra, rb) = (resolved(&a), resolved(&b));
    a.starts_with(&b) || b.starts_with(&a) || ra.starts_with(&rb) || rb.starts_with(&ra)
}

/// Replace `${VAR}` and `${VAR:default}`; `$$` stays a literal `$`. Comments are interpolated too.
/// The top-level sections wal-push and wal-fetch never read (they run in PostgreSQL's environment, which need
/// not hold the scheduler's or base-backup's secrets): see [`Config::load_without`].
pub const NOT_READ_BY_WAL_COMMANDS: &[&str] = &["postgres", "schedule", "drill", "alerts", "catalog"];

/// The top-level table a header line opens (`[alerts.email]` -> `alerts`), or None if `line` is no header.
fn header_section(line: &str) -> Option<&str> {
    let t = line.trim();
    let t = t.split_once('#').map_or(t, |(head, _)| head.trim_end());
    let inner = t.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(inner).trim();
    let ok =
        !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'));
    ok.then(|| inner.split('.').next().unwrap_or(inner).trim_matches('"'))
}

/// Whether the end of `line` (what precedes a `${VAR}`) is inside a TOML basic string (`"..."`), where the value
/// must be escaped: a password with `"` or `\` would otherwise end the string or become an escape sequence
/// (`\t` a tab: a wrong password without an error). Literal strings (`'...'`) are tracked so that a `"` in them
/// counts for nothing. Source: TOML 1.0, "String".
fn in_basic_string(line: &str) -> bool {
    let (mut basic, mut literal, mut escaped) = (false, false, false);
    for c in line.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if basic => escaped = true,
            '"' if !literal => basic = !basic,
            '\'' if !basic => literal = !literal,
            '#' if !basic && !literal => return false,
            _ => {}
        }
    }
    basic
}

/// Append `value` escaped for a TOML basic string.
fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
}

fn interpolate(
    path: &Path,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unused: &[&str],
) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    // The top-level table the current line belongs to (None before the first header).
    let mut section: Option<&str> = None;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let lineno = n + 1;
        // A comment line needs no interpolation; leave it alone so that examples in comments do not fail.
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        if let Some(name) = header_section(line) {
            section = Some(name);
        }
        // A dotted key at the top level (`alerts.email.password = ...`) belongs to its first part's table.
        let owner = section.or_else(|| line.trim_start().split(['.', '=']).next().map(str::trim));
        let ignored = owner.is_some_and(|o| unused.contains(&o));
        let mut rest = line;
        let line_start = out.len();
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some(body) = after.strip_prefix('{') {
                let Some(end) = body.find('}') else {
                    return Err(Error::BadInterpolation {
                        path: path.to_path_buf(),
                        line: lineno,
                        text: format!("${{{}", body.trim_end()),
                    });
                };
                let inner = &body[..end];
                let (name, default) = match inner.split_once(':') {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                if !valid {
                    return Err(Error::BadInterpolation {
                        path: path.to_path_buf(),
                        line: lineno,
                        text: format!("${{{inner}}}"),
                    });
                }
                match (lookup(name), default) {
                    (Some(v), _) if in_basic_string(&out[line_start..]) => push_escaped(&mut out, &v),
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    // A section this program resets to its defaults: the value is never used.
                    (None, None) if ignored => {}
                    (None, None) => {
                        return Err(Error::UnsetVariable {
                            path: path.to_path_buf(),
                            line: lineno,
                            var: name.to_owned(),
                        });
                    }
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        let env = |name: &str| match name {
            "BUCKET" => Some("my-bucket".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        Config::parse(Path::new("/etc/b.toml"), text, &env)
    }

    /// wal-push and wal-fetch run in PostgreSQL's environment, which need not hold the scheduler's secrets: an
    /// unset `${VAR}` in a section they never read is no error for them (and the section is left at its
    /// defaults); everyone else, and every other section, still refuses it.
    #[test]
    fn issue_9_wal_commands_ignore_unset_variables_of_sections_they_do_not_read() {
        let text = format!(
            "{MINIMAL}[postgres]\npassword = \"${{PGPW}}\"\n[alerts.email] # the daemon's\nhost = \"smtp.example.com\"\n\
             user = \"u\"\npassword = \"${{SMTP}}\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n\
             [alerts.webhook]\nurl = \"${{HOOK}}\"\nheaders = {{ Authorization = \"Bearer ${{TOKEN}}\" }}\n\
             [drill]\nsql = \"${{SQL}}\"\n[archive]\npush_ahead = 4\n"
        );
        let env = |_: &str| None;
        let path = Path::new("/etc/b.toml");
        let err = Config::parse(path, &text, &env).expect_err("unset");
        assert!(err.to_string().contains("PGPW is not set"), "{err}");
        let c = Config::parse_without(path, &text, &env, NOT_READ_BY_WAL_COMMANDS).expect("wal-push loads it");
        assert!(c.postgres.is_none() && c.alerts == AlertsConfig::default() && c.drill == DrillConfig::default());
        assert_eq!(c.archive.push_ahead, 4, "the sections it reads are read");
        let used = text.replace("[drill]", "[drill]\n[metrics]\ntextfile_dir = \"${TEXTFILE}\"");
        let err = Config::parse_without(path, &used, &env, NOT_READ_BY_WAL_COMMANDS).expect_err("used section");
        assert!(err.to_string().contains("TEXTFILE is not set"), "{err}");
        // A typo in an ignored section does not stop wal-push either; one in a section it reads does.
        let typo = text
            .replace("[drill]\n", "[drill]\nsmoke = 1\n")
            .replace("[alerts.webhook]\n", "[alerts.webhook]\nformat = 3\n");
        Config::parse_without(path, &typo, &env, NOT_READ_BY_WAL_COMMANDS).expect("typos in ignored sections");
        let typo = typo.replace("push_ahead = 4", "push_ahed = 4");
        let err = Config::parse_without(path, &typo, &env, NOT_READ_BY_WAL_COMMANDS).expect_err("typo");
        assert!(err.to_string().contains("archive.push_ahed: unknown key"), "{err}");
        assert_eq!(header_section("[[alerts.email]] # x"), Some("alerts"));
        assert_eq!(header_section("  [\"alerts\".webhook]"), Some("alerts"));
        assert_eq!(header_section("[1, 2],"), None);
    }

    /// A value with `"`, `\` or a control character, taken into a quoted string, arrives as it is in the
    /// environment (not as a TOML escape sequence or the end of the string).
    #[test]
    fn issue_9_interpolated_values_are_escaped_in_basic_strings() {
        let secret = "a\"b\\tc\u{1}d'e";
        let env = |name: &str| (name == "PW").then(|| secret.to_owned());
        let text = format!("{MINIMAL}[postgres]\npassword = \"x${{PW}}y\"\n");
        let c = Config::parse(Path::new("/etc/b.toml"), &text, &env).expect("parse");
        assert_eq!(c.postgres.and_then(|p| p.password).as_deref(), Some(format!("x{secret}y").as_str()));
        assert!(in_basic_string("url = \"s3://${"));
        assert!(!in_basic_string("url = 'it\"s ${"));
        assert!(in_basic_string("a = \"q\\\" ${"));
        assert!(!in_basic_string("a = \"x\" ${"));
    }

    /// A cron expression that parses but never matches (30 February) is refused when the configuration loads,
    /// as docs/operations.md promises: never a job that silently never runs. It costs wal-push nothing (it
    /// ignores `[schedule]`).
    #[test]
    fn issue_9_a_schedule_that_never_matches_is_refused() {
        let text = format!("{MINIMAL}[schedule]\nfull_backup = \"0 0 30 2 *\"\nprune = \"0 0 29 2 *\"\n");
        let started = std::time::Instant::now();
        let err = parse(&text).expect_err("never matches");
        let shown = err.to_string();
        assert!(shown.contains("schedule.full_backup = \"0 0 30 2 *\": never matches"), "{shown}");
        assert!(!shown.contains("schedule.prune"), "29 February exists in leap years: {shown}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        let path = Path::new("/etc/b.toml");
        Config::parse_without(path, &text, &|_| None, NOT_READ_BY_WAL_COMMANDS).expect("wal-push ignores it");
    }

    const MINIMAL: &str =
        "[repository]\nurl = \"file:///var/lib/backupctl/repo\"\n[spool]\npath = \"/var/lib/backupctl/spool\"\n";

    /// A spool beside the repository is fine, however the paths are written; only nesting is refused.
    #[test]
    fn a_spool_beside_a_file_repository_is_accepted() {
        for (url, spool) in [
            ("file:///srv/r", "/srv/r2"),
            ("file:///srv/r2/", "/srv/r"),
            ("file:///srv/spool/../repo", "/srv/spool"),
            ("file:///var/lib/backupctl/repo", "/var/lib/backupctl/spool/"),
        ] {
            let text = format!("[repository]\nurl = \"{url}\"\n[spool]\npath = \"{spool}\"\n");
            assert!(parse(&text).is_ok(), "{url} with spool {spool}: {:?}", parse(&text).err());
        }
        assert!(nests(Path::new("/srv/spool/../repo/x"), Path::new("/srv/repo")));
        assert!(!nests(Path::new("/srv/repo"), Path::new("/srv/repository")));
    }

    /// A spool reached through a symbolic link into the repository (or a repository through one into the spool)
    /// nests as much as one written inside it; a link elsewhere does not.
    #[test]
    fn a_spool_linked_into_a_file_repository_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (repo, other) = (dir.path().join("repo"), dir.path().join("other"));
        std::fs::create_dir_all(repo.join("spool")).expect("mkdir");
        std::fs::create_dir(&other).expect("mkdir");
        std::os::unix::fs::symlink(repo.join("spool"), dir.path().join("spool-link")).expect("symlink");
        std::os::unix::fs::symlink(&repo, dir.path().join("repo-link")).expect("symlink");
        std::os::unix::fs::symlink(&other, dir.path().join("other-link")).expect("symlink");
        let d = dir.path().display();
        for (url, spool, refused) in [
            (format!("file://{d}/repo"), format!("{d}/spool-link"), true),
            (format!("file://{d}/repo"), format!("{d}/spool-link/not-yet/made"), true),
            (format!("file://{d}/repo-link"), format!("{d}/repo/spool"), true),
            (format!("file://{d}/repo"), format!("{d}/other-link/spool"), false),
        ] {
            let text = format!("[repository]\nurl = \"{url}\"\n[spool]\npath = \"{spool}\"\n");
            match parse(&text) {
                Err(e) => assert!(
                    refused && e.to_string().contains("must not be inside the repository"),
                    "{url} {spool}: {e}"
                ),
                Ok(_) => assert!(!refused, "{url} with spool {spool} was accepted"),
            }
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL).expect("minimal config");
        assert_eq!(c.repository.url, "file:///var/lib/backupctl/repo");
        assert_eq!(c.archive, ArchiveConfig::default());
        assert_eq!(c.repository.compression_level, 1);
    }

    #[test]
    fn interpolation_with_and_without_default() {
        let c = parse("[repository]\nurl = \"s3://${BUCKET}/p\"\n[repository.s3]\nregion = \"${REGION:eu-west-1}\"\n[spool]\npath = \"/s${EMPTY}\"\n")
            .expect("config");
        assert_eq!(c.repository.url, "s3://my-bucket/p");
        assert_eq!(c.repository.s3.region, "eu-west-1");
        assert_eq!(c.spool.path, PathBuf::from("/s"));
    }

    #[test]
    fn error_table() {
        let cases: &[(&str, &str)] = &[
            (
                "[repository]\nurl = \"${NOPE}\"\n[spool]\npath = \"/s\"\n",
                "line 2: environment variable NOPE is not set",
            ),
            ("[repository]\nurl = \"${NOPE\"\n[spool]\npath = \"/s\"\n", "line 2: malformed interpolation"),
            ("[repository]\nurl = \"${1X}\"\n[spool]\npath = \"/s\"\n", "malformed interpolation"),
            ("[repository]\nurl = \"file:///r\"\nbogus = 1\n[spool]\npath = \"/s\"\n", "repository.bogus: unknown key"),
            ("[repository]\nurl = \"file:///r\"\n", "spool: missing"),
            ("[repository]\n[spool]\npath = \"/s\"\n", "repository.url: missing"),
            ("[repository]\nurl = \"ftp://x\"\n[spool]\npath = \"/s\"\n", "repository.url"),
            ("[repository]\nurl = \"file://rel\"\n[spool]\npath = \"/s\"\n", "absolute path"),
            ("[repository]\nurl = \"s3://\"\n[spool]\npath = \"/s\"\n", "names no bucket"),
            (
                "[repository]\nurl = \"s3://b\"\n[repository.s3]\nendpoint = \"http://127.0.0.1:9000\"\n[spool]\npath = \"/s\"\n",
                "allow_http",
            ),
            (
                "[repository]\nurl = \"s3://b\"\n[repository.s3]\nsse = \"rot13\"\n[spool]\npath = \"/s\"\n",
                "repository.s3.sse",
            ),
            (
                "[repository]\nurl = \"s3://b\"\n[repository.s3]\nsse_kms_key_id = \"k\"\n[spool]\npath = \"/s\"\n",
                "requires sse",
            ),
            ("[repository]\nurl = \"file:///r\"\ncompression_level = 0\n[spool]\npath = \"/s\"\n", "compression_level"),
            ("[repository]\nurl = \"file:///r\"\n[spool]\npath = \"rel\"\n", "spool.path"),
            ("[repository]\nurl = \"file:///\"\n[spool]\npath = \"/s\"\n", "names the root directory"),
            ("[repository]\nurl = \"file:///r\"\n[spool]\npath = \"/r/spool\"\n", "must not be inside the repository"),
            ("[repository]\nurl = \"file:///s/r/\"\n[spool]\npath = \"/s\"\n", "nor hold it"),
            ("[repository]\nurl = \"file:///r\"\n[spool]\npath = \"/r\"\n", "spool.path = \"/r\""),
            ("[repository]\nurl = \"file:///s/../r/./x\"\n[spool]\npath = \"/r\"\n", "nor hold it"),
            (
                "[repository]\nurl = \"file:///r\"\n[spool]\npath = \"/s\"\n[archive]\npush_concurrency = 0\n",
                "push_concurrency",
            ),
            (
                "[repository]\nurl = \"file:///r\"\n[spool]\npath = \"/s\"\n[archive]\nretry_deadline_seconds = 0\n",
                "retry_deadline",
            ),
            ("[repository]\nurl = \"file:///r\"\n[spool]\npath = \"/s\"\n[log]\nlevel = \"loud\"\n", "log.level"),
            (
                "[repository]\nurl = \"file:///r\"\n[spool]\npath = \"/s\"\n[archive]\npush_concurrency = \"x\"\n",
                "archive.push_concurrency = \"x\": expected a whole number",
            ),
            (
                "[repository]\nurl = \"file:///r\"\ncompression_level = 50\n[spool]\npath = \"/s\"\n",
                "repository.compression_level = 50: must be between -7 and 19",
            ),
            ("[repository]\nurl = \"file:///r\"\n[spool]\npath = \n", "line 4"),
            (
                "[repository]\nurl = \"s3://b\"\n[repository.s3]\nendpoint = \"ftp://k:s3cr3t@h\"\n[spool]\npath = \"/s\"\n",
                "repository.s3.endpoint = \"ftp://<redacted>@h\": must start with https://",
            ),
            (
                "[repository]\nurl = \"s3://b\"\n[repository.s3]\nendpoint = \"https://minio:0\"\n[spool]\npath = \"/s\"\n",
                "repository.s3.endpoint = \"https://minio:0\": port 0",
            ),
            (
                "[repository]\nurl = \"s3://b\"\n[repository.s3]\nendpoint = \"https://minio:99999\"\n[spool]\npath = \"/s\"\n",
                "repository.s3.endpoint = \"https://minio:99999\": is not a URL (invalid port number)",
            ),
            (
                "[repository]\nurl = \"s3://b\"\n[repository.s3]\nendpoint = \"https://k:s3cr3t@:9000\"\n[spool]\npath = \"/s\"\n",
                "repository.s3.endpoint = \"https://<redacted>@:9000\": is not a URL (empty host)",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err:?} should contain {want:?}");
            assert!(err.starts_with("/etc/b.toml") || err.contains("/etc/b.toml"), "{err} names the file");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    /// Every wrongly typed value at once, each with its key and the value given, none with a Rust type name.
    #[test]
    fn every_type_error_at_once() {
        let err = parse(
            "[repository]\nurl = \"file:///r\"\ncompression_level = \"high\"\n[spool]\npath = \"/s\"\n\
             [archive]\npush_concurrency = \"x\"\nfetch_prefetch = -1\n[log]\nlevel = 3\n\
             [postgres]\nport = 70000\n[repository.s3]\nallow_http = \"yes\"\n",
        )
        .expect_err("invalid")
        .to_string();
        for want in [
            "repository.compression_level = \"high\": expected a whole number",
            "archive.push_concurrency = \"x\": expected a whole number",
            "archive.fetch_prefetch = -1: expected a whole number (0 or more)",
            "log.level = 3: expected text",
            "postgres.port = 70000: expected a whole number from 0 to 65535",
            "repository.s3.allow_http = \"yes\": expected true or false",
        ] {
            assert!(err.contains(want), "{err}\nlacks {want:?}");
        }
        for rust in ["usize", "u16", "i32", "a string", "a boolean"] {
            assert!(!err.contains(rust), "{err} names {rust:?}");
        }
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn debug_and_messages_redact_endpoint_credentials() {
        let c = parse("[repository]\nurl = \"s3://b\"\n[repository.s3]\nendpoint = \"https://k:s3cr3t@minio:9000\"\n[spool]\npath = \"/s\"\n")
            .expect("config");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t") && dbg.contains("minio:9000"), "{dbg}");
    }

    /// Type errors and range errors together, in one message.
    #[test]
    fn type_and_value_problems_together() {
        let err = parse("[repository]\nurl = \"file:///r\"\ncompression_level = 50\n[spool]\npath = \"rel\"\n[archive]\npush_ahead = \"many\"\nbogus = 1\n")
            .expect_err("invalid")
            .to_string();
        for want in [
            "archive.push_ahead = \"many\": expected a whole number",
            "archive.bogus: unknown key",
            "repository.compression_level = 50: must be between -7 and 19",
            "spool.path = \"rel\": must be an absolute path",
        ] {
            assert!(err.contains(want), "{err}\nlacks {want:?}");
        }
    }

    /// Issue 7: the range message names the value given and says nothing the user may read as the value.
    #[test]
    fn issue_7_range_messages_name_the_value_given() {
        let err = parse("[repository]\nurl = \"file:///r\"\ncompression_level = 50\n[spool]\npath = \"/s\"\n")
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("repository.compression_level = 50: must be between -7 and 19"), "{err}");
        assert!(!err.contains("not 0"), "{err}");
        let err = parse("[repository]\nurl = \"file:///r\"\ncompression_level = 0\n[spool]\npath = \"/s\"\n")
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("repository.compression_level = 0: must not be 0"), "{err}");
    }

    /// Issue 7: a number TOML cannot hold names its key and value, and the other problems are still reported.
    #[test]
    fn issue_7_too_large_number_names_key_and_keeps_other_problems() {
        let err = parse(
            "[repository]\nurl = \"file:///r\"\n[spool]\npath = \"rel\"\n[archive]\n\
             retry_deadline_seconds = 99999999999999999999 # long\npush_concurrency = \"x\"\n",
        )
        .expect_err("invalid")
        .to_string();
        for want in [
            "archive.retry_deadline_seconds = 99999999999999999999: too large: at most 9223372036854775807",
            "archive.push_concurrency = \"x\": expected a whole number",
            "spool.path = \"rel\": must be an absolute path",
        ] {
            assert!(err.contains(want), "{err}\nlacks {want:?}");
        }
        assert!(!err.contains("target type"), "{err}");
    }

    /// Issue 7: URL schemes are case-insensitive (RFC 3986 section 3.1).
    #[test]
    fn issue_7_endpoint_scheme_is_case_insensitive() {
        parse("[repository]\nurl = \"s3://b\"\n[repository.s3]\nendpoint = \"HTTPS://minio:9000\"\n[spool]\npath = \"/s\"\n")
            .expect("HTTPS:// is https://");
        let err = parse("[repository]\nurl = \"s3://b\"\n[repository.s3]\nendpoint = \"Http://minio:9000\"\n[spool]\npath = \"/s\"\n")
            .expect_err("plain HTTP")
            .to_string();
        assert!(err.contains("plain HTTP"), "{err}");
    }

    /// Issue 9: the issue names the section `[logging]`; it is accepted as `[log]`, and shown as `[log]`.
    #[test]
    fn issue_9_logging_is_an_alias_of_log() {
        let c = parse(&format!("{MINIMAL}[logging]\nlevel = \"debug\"\nformat = \"json\"\njournald = true\n"))
            .expect("[logging]");
        assert_eq!((c.log.level.as_str(), c.log.format.as_str(), c.log.journald), ("debug", "json", true));
        let err = parse(&format!("{MINIMAL}[logging]\nlevel = \"loud\"\n")).expect_err("bad level").to_string();
        assert!(err.contains("log.level = \"loud\""), "{err}");
    }

    #[test]
    fn several_problems_reported_at_once() {
        let err = parse("[repository]\nurl = \"file:///r\"\ncompression_level = 99\n[spool]\npath = \"rel\"\n")
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("compression_level") && err.contains("spool.path"), "{err}");
    }

    #[test]
    fn dollar_escapes_and_comments() {
        let c =
            parse("# ${NOT_SET} in a comment is fine\n[repository]\nurl = \"file:///r$$x\"\n[spool]\npath = \"/s\"\n")
                .expect("config");
        assert_eq!(c.repository.url, "file:///r$x");
    }

    #[test]
    fn debug_redacts_kms_key() {
        let c = parse("[repository]\nurl = \"s3://b\"\n[repository.s3]\nsse = \"aws:kms\"\nsse_kms_key_id = \"secret-key-id\"\n[spool]\npath = \"/s\"\n")
            .expect("config");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret-key-id"), "{dbg}");
    }

    #[test]
    fn reference_lists_every_key() {
        let mut c = parse(MINIMAL).expect("config");
        c.repository.s3.endpoint = Some("https://e".into());
        c.repository.s3.sse = Some("aws:kms".into());
        c.repository.s3.sse_kms_key_id = Some("k".into());
        c.repository.s3.storage_class = Some("STANDARD".into());
        c.postgres = Some(PostgresConfig {
            password: Some("p".into()),
            data_directory: Some("/d".into()),
            ..PostgresConfig::default()
        });
        let n = Some(1);
        c.retention = RetentionConfig {
            keep_last: n,
            daily_retain: n,
            weekly_retain: n,
            monthly_retain: n,
            yearly_retain: n,
            full_days: n,
            pitr_days: n,
            max_backup_age: Some(Duration(std::time::Duration::from_secs(60))),
            ..RetentionConfig::default()
        };
        c.check.max_wal_age = Some(Duration(std::time::Duration::from_secs(60)));
        let cron = Some("@daily".to_owned());
        c.schedule = ScheduleConfig {
            time_zone: Some("UTC".to_owned()),
            full_backup: cron.clone(),
            incremental_backup: cron.clone(),
            prune: cron.clone(),
            verify: cron.clone(),
            check: cron.clone(),
            drill: cron,
            backup_max_rate_kib: Some(1),
            ..ScheduleConfig::default()
        };
        c.log.file = Some("/var/log/backupctl/{program}.log".into());
        c.metrics.textfile_dir = Some("/var/lib/node-exporter".into());
        c.catalog = Some(CatalogConfig { password: Some("p".into()), ..CatalogConfig::default() });
        c.retention.dump_daily_retain = n;
        c.retention.dump_weekly_retain = n;
        c.retention.dump_monthly_retain = n;
        c.retention.dump_yearly_retain = n;
        c.dump.bin_dir = Some("/usr/lib/postgresql/17/bin".into());
        c.dump.temp_dir = Some("/srv/tmp".into());
        let value = toml::Value::try_from(&c).expect("to toml");
        let doc = include_str!("../../docs/configuration.md");
        fn walk(prefix: &str, v: &toml::Value, doc: &str) {
            let Some(table) = v.as_table() else { return };
            for (k, v) in table {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                if v.is_table() {
                    assert!(doc.contains(&format!("## `[{path}]`")), "docs/configuration.md lacks section [{path}]");
                    walk(&path, v, doc);
                } else {
                    assert!(doc.contains(&format!("| `{k}` |")), "docs/configuration.md lacks key {path}");
                }
            }
        }
        walk("", &value, doc);
    }
}
