//! `[postgres]`, `[backup]` and `[restore]`: how base-backup reaches the cluster, and how backups are cut and restored.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::tls::{SslMode, TlsSettings};

/// `[postgres]`: the connection base-backup uses to run the backup API (on the database host).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Host name, address, or (as with libpq) a Unix-socket directory such as `/var/run/postgresql`.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name (needs the pg_backup_start/pg_backup_stop privileges, e.g. a superuser or pg_checkpoint member).
    pub user: String,
    /// Password; write it as `${VAR}` so it stays in the environment. Redacted in logs and config-show.
    pub password: Option<String>,
    /// Database to connect to.
    pub dbname: String,
    /// Data directory; empty asks the server (`SHOW data_directory`).
    pub data_directory: Option<PathBuf>,
    /// TLS over TCP, as libpq's `sslmode`: `disable`, `prefer` (TLS if the server offers it), `require` (TLS or
    /// fail), `verify-ca` (and the server's certificate chains to `sslrootcert`), `verify-full` (and it names
    /// `host`). `prefer` and `require` check the certificate only when `sslrootcert` is set. A Unix socket never
    /// uses TLS. `backupctl dump` and `dump-restore` pass these to pg_dump and pg_restore (`PGSSLMODE` and the
    /// others).
    pub sslmode: SslMode,
    /// PEM file of the CA certificates to trust (absolute path), or `system` for the operating system's (with
    /// `verify-full` only).
    pub sslrootcert: Option<PathBuf>,
    /// PEM file of a client certificate to present (absolute path; with `sslkey`), for `cert` authentication.
    pub sslcert: Option<PathBuf>,
    /// PEM file of `sslcert`'s private key (absolute path; mode 0600, or 0640 if owned by root, as libpq requires).
    pub sslkey: Option<PathBuf>,
}

impl PostgresConfig {
    /// This connection's TLS settings.
    pub fn tls(&self) -> TlsSettings<'_> {
        TlsSettings {
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.as_deref(),
            sslcert: self.sslcert.as_deref(),
            sslkey: self.sslkey.as_deref(),
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            host: "/var/run/postgresql".to_owned(),
            port: 5432,
            user: "postgres".to_owned(),
            password: None,
            dbname: "postgres".to_owned(),
            data_directory: None,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("data_directory", &self.data_directory)
            .field("tls", &self.tls())
            .finish()
    }
}

/// `[backup]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// How many chunks base-backup reads, compresses and uploads at once.
    pub parallel: usize,
    /// Size of the chunks large files are cut into, in KiB (a multiple of 8, the page size). Smaller chunks make
    /// incremental backups of scattered changes smaller and cost more objects.
    pub chunk_size_kib: u64,
    /// How long base-backup waits for the WAL of the backup's stop point to reach the archive, in seconds.
    pub archive_timeout_seconds: u64,
    /// Fail the backup (no manifest written) when a page of the cluster fails its data checksum, instead of
    /// recording it in the backup with a warning (flag `--fail-on-checksum-error`). Only for clusters with data
    /// checksums.
    pub fail_on_checksum_error: bool,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self { parallel: 2, chunk_size_kib: 1024, archive_timeout_seconds: 60, fail_on_checksum_error: false }
    }
}

/// `[restore]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RestoreConfig {
    /// How many objects pitr-restore downloads, verifies and writes at once.
    pub parallel: usize,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        Self { parallel: 4 }
    }
}

/// Problems with these sections, each starting with its key.
pub(super) fn validate(
    postgres: Option<&PostgresConfig>,
    backup: &BackupConfig,
    restore: &RestoreConfig,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(pg) = postgres {
        if pg.host.is_empty() {
            problems.push("postgres.host = \"\": must not be empty".to_owned());
        }
        if pg.user.is_empty() {
            problems.push("postgres.user = \"\": must not be empty".to_owned());
        }
        if let Some(d) = pg.data_directory.as_ref().filter(|d| !d.is_absolute()) {
            problems.push(format!("postgres.data_directory = {d:?}: must be an absolute path"));
        }
        problems.extend(super::tls::validate("postgres", &pg.tls()));
    }
    if backup.parallel == 0 || backup.parallel > 64 {
        problems.push(format!("backup.parallel = {}: must be between 1 and 64", backup.parallel));
    }
    let c = backup.chunk_size_kib;
    if c == 0 || !c.is_multiple_of(8) || c > 64 * 1024 {
        problems.push(format!("backup.chunk_size_kib = {c}: must be a multiple of 8 between 8 and 65536"));
    }
    if backup.archive_timeout_seconds == 0 {
        problems.push("backup.archive_timeout_seconds = 0: must be at least 1".to_owned());
    }
    if restore.parallel == 0 || restore.parallel > 64 {
        problems.push(format!("restore.parallel = {}: must be between 1 and 64", restore.parallel));
    }
    problems
}
