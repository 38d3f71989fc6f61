//! Talk to the cluster being backed up (the `postgres` crate, synchronous): version, identity, backup start/stop.
//!
//! Invariants:
//! - One session holds the whole non-exclusive backup: start and stop run on the same connection. If the session
//!   ends before stop (crash, error), PostgreSQL aborts the backup by itself.
//! - Call these only outside an async runtime's worker threads (the client blocks).

use std::path::PathBuf;

use crate::config::PostgresConfig;
use crate::wal::Lsn;
use crate::wal::version::{self, Major};

pub mod tls;

/// Errors talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Could not connect.
    #[error("cannot connect to PostgreSQL at {target}: {}", server_says(source))]
    Connect {
        /// host:port and user.
        target: String,
        /// Cause.
        #[source]
        source: postgres::Error,
    },
    /// The TLS client could not be set up (a configured certificate or key file is missing or unusable).
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Tls {
        /// host:port and user.
        target: String,
        /// Cause.
        #[source]
        source: tls::SetupError,
    },
    /// A query failed.
    #[error("PostgreSQL {what} failed: {}", server_says(source))]
    Query {
        /// What was asked.
        what: &'static str,
        /// Cause.
        #[source]
        source: postgres::Error,
    },
    /// The server answered something this build cannot use.
    #[error("PostgreSQL {what}: unexpected answer {answer:?}")]
    Unexpected {
        /// What was asked.
        what: &'static str,
        /// The answer.
        answer: String,
    },
    /// A server of a major this build does not support ([`version::SUPPORTED`]: by `server_version_num`, or a
    /// `pg_control` format that is not its major's).
    #[error("PostgreSQL at {target}: {source}")]
    Unsupported {
        /// host:port.
        target: String,
        /// The version and the supported range.
        #[source]
        source: version::Unsupported,
    },
}

/// The server's own words for a failure (`ERROR: permission denied ...`), not just "db error".
pub(crate) fn server_says(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                s.push_str(&format!(" ({detail})"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                s.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            if let Some(meaning) = tls::explain(e) {
                s.push_str(&format!(" ({meaning})"));
            }
            s
        }
    }
}

/// What the server says about itself.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `server_version_num`, e.g. 150004.
    pub version_num: u32,
    /// `pg_control` system identifier, decimal.
    pub system_identifier: String,
    /// `data_directory`, when asked for (reading it needs superuser or pg_read_all_settings).
    pub data_directory: Option<PathBuf>,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// True on a standby.
    pub is_in_recovery: bool,
    /// `archive_mode` is on (or always).
    pub is_archiving: bool,
}

/// How the cluster lays out its relation files and whether its pages carry checksums (`pg_control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLayout {
    /// Data checksums are on (`initdb --data-checksums`, `pg_checksums --enable`; `SHOW data_checksums`).
    pub has_checksums: bool,
    /// `BLCKSZ` in bytes (`database_block_size` of `pg_control_init()`; 8192 unless PostgreSQL was built otherwise).
    pub block_size: u32,
    /// Blocks per relation segment file (`RELSEG_SIZE`, `blocks_per_segment` of `pg_control_init()`; 131072 = 1 GiB
    /// with 8 KiB blocks).
    pub blocks_per_segment: u32,
}

/// What pg_backup_stop returned.
#[derive(Debug, Clone)]
pub struct BackupStop {
    /// Where the backup becomes consistent.
    pub lsn: Lsn,
    /// Content for `backup_label`.
    pub labelfile: String,
    /// Content for `tablespace_map` (empty without tablespaces).
    pub spcmapfile: String,
}

/// One connection, to a server of a supported major.
pub struct Session {
    client: postgres::Client,
    version_num: u32,
    major: &'static Major,
    target: String,
}

impl Session {
    /// The connection itself, for queries of other modules (`dump`: the databases to dump, whether a restore target
    /// is empty). Map their failures to [`Error::Query`].
    pub fn client(&mut self) -> &mut postgres::Client {
        &mut self.client
    }

    /// `host:port` of the server, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("version_num", &self.version_num).finish_non_exhaustive()
    }
}

/// Connect as configured (a `host` starting with `/` is a Unix-socket directory, as with libpq).
pub fn connect(cfg: &PostgresConfig) -> Result<Session, Error> {
    let mut c = postgres::Config::new();
    c.connect_timeout(std::time::Duration::from_secs(30));
    connect_with(cfg, c)
}

/// [`connect`] for a short-lived probe (`backupctl check`): connecting may take at most `timeout`, and every
/// statement of the session is cancelled by the server after `timeout` (`statement_timeout`, PostgreSQL's
/// "Client Connection Defaults"); on TCP, unacknowledged data and a silent peer end the connection after about
/// `timeout` too (`tcp_user_timeout`, keepalives).
pub fn connect_within(cfg: &PostgresConfig, timeout: std::time::Duration) -> Result<Session, Error> {
    let mut c = postgres::Config::new();
    c.connect_timeout(timeout)
        .tcp_user_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(timeout)
        .options(&format!("-c statement_timeout={}", timeout.as_millis()));
    connect_with(cfg, c)
}

fn connect_with(cfg: &PostgresConfig, mut c: postgres::Config) -> Result<Session, Error> {
    c.host(&cfg.host).port(cfg.port).user(&cfg.user).dbname(&cfg.dbname).application_name("backupctl");
    if let Some(p) = &cfg.password {
        c.password(p);
    }
    let target = format!("{}:{} as {}", cfg.host, cfg.port, cfg.user);
    let mut client = tls::connect(&mut c, &cfg.host, &cfg.tls()).map_err(|e| match e {
        tls::ConnectError::Setup(source) => Error::Tls { target: target.clone(), source },
        tls::ConnectError::Connect(source) => Error::Connect { target: target.clone(), source },
    })?;
    let version_num = query_one_text(&mut client, "server_version_num", "show server_version_num")?;
    let version_num: u32 =
        version_num.parse().map_err(|_| Error::Unexpected { what: "server_version_num", answer: version_num })?;
    let target = format!("{}:{}", cfg.host, cfg.port);
    // Refused before anything else is asked: the backup functions and catalogs of an untested major may differ.
    let major =
        Major::of_version_num(version_num).map_err(|source| Error::Unsupported { target: target.clone(), source })?;
    Ok(Session { client, version_num, major, target })
}

fn query_one_text(client: &mut postgres::Client, what: &'static str, sql: &str) -> Result<String, Error> {
    let row = client.query_one(sql, &[]).map_err(|source| Error::Query { what, source })?;
    row.try_get::<_, String>(0).map_err(|source| Error::Query { what, source })
}

impl Session {
    fn text(&mut self, what: &'static str, sql: &str) -> Result<String, Error> {
        query_one_text(&mut self.client, what, sql)
    }

    /// The server's major (supported: [`connect`] refuses any other).
    pub fn major(&self) -> &'static Major {
        self.major
    }

    /// Version, identity, WAL settings, and the data directory if `ask_data_directory`. Errors: besides a failed
    /// query, a `pg_control` format that is not the one of the server's major ([`Error::Unsupported`]).
    pub fn server_info(&mut self, ask_data_directory: bool) -> Result<ServerInfo, Error> {
        let control = self.text(
            "pg_control_system",
            "select system_identifier::text || ' ' || pg_control_version::text from pg_control_system()",
        )?;
        let unexpected = || Error::Unexpected { what: "pg_control_system", answer: control.clone() };
        let (system_identifier, control_version) = control.split_once(' ').ok_or_else(unexpected)?;
        let control_version: u32 = control_version.parse().map_err(|_| unexpected())?;
        self.major
            .check_control_version(control_version)
            .map_err(|source| Error::Unsupported { target: self.target.clone(), source })?;
        let system_identifier = system_identifier.to_owned();
        let data_directory = match ask_data_directory {
            true => Some(PathBuf::from(self.text("data_directory", "show data_directory")?)),
            false => None,
        };
        let seg = self.text("wal_segment_size", "select setting from pg_settings where name = 'wal_segment_size'")?;
        let wal_segment_size: u64 =
            seg.parse().map_err(|_| Error::Unexpected { what: "wal_segment_size", answer: seg })?;
        let is_in_recovery = self.text("pg_is_in_recovery", "select pg_is_in_recovery()::text")? == "true";
        let is_archiving = self.text("archive_mode", "show archive_mode")? != "off";
        Ok(ServerInfo {
            version_num: self.version_num,
            system_identifier,
            data_directory,
            wal_segment_size,
            is_in_recovery,
            is_archiving,
        })
    }

    /// WAL files the archiver has archived since its statistics were last reset, and the name of the last one
    /// (`archived_count` and `last_archived_wal` of the `pg_stat_archiver` view, PostgreSQL's "Monitoring Database
    /// Activity" chapter). Errors: the query fails or answers something that is not a count.
    pub fn archived(&mut self) -> Result<(u64, Option<String>), Error> {
        let text = self.text(
            "pg_stat_archiver",
            "select archived_count::text || ' ' || coalesce(last_archived_wal, '') from pg_stat_archiver",
        )?;
        let (count, last) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let count: u64 =
            count.parse().map_err(|_| Error::Unexpected { what: "pg_stat_archiver", answer: text.clone() })?;
        Ok((count, (!last.is_empty()).then(|| last.to_owned())))
    }

    /// How often the archiver failed since its statistics were last reset, and the last file it failed on
    /// (`failed_count`, `last_failed_wal` of `pg_stat_archiver`). Errors: as [`Session::archived`].
    pub fn archive_failures(&mut self) -> Result<(u64, Option<String>), Error> {
        let text = self.text(
            "pg_stat_archiver",
            "select failed_count::text || ' ' || coalesce(last_failed_wal, '') from pg_stat_archiver",
        )?;
        let (count, last) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let count: u64 =
            count.parse().map_err(|_| Error::Unexpected { what: "pg_stat_archiver", answer: text.clone() })?;
        Ok((count, (!last.is_empty()).then(|| last.to_owned())))
    }

    /// Tablespaces other than pg_default and pg_global: (oid, location).
    pub fn tablespaces(&mut self) -> Result<Vec<(u32, String)>, Error> {
        let rows = self
            .client
            .query(
                "select oid::int8, pg_tablespace_location(oid) from pg_tablespace \
                 where spcname not in ('pg_default', 'pg_global') order by oid",
                &[],
            )
            .map_err(|source| Error::Query { what: "tablespace list", source })?;
        rows.iter()
            .map(|r| {
                let oid: i64 = r.try_get(0).map_err(|source| Error::Query { what: "tablespace list", source })?;
                let loc: String = r.try_get(1).map_err(|source| Error::Query { what: "tablespace list", source })?;
                let oid = u32::try_from(oid)
                    .map_err(|_| Error::Unexpected { what: "tablespace oid", answer: oid.to_string() })?;
                Ok((oid, loc))
            })
            .collect()
    }

    /// The server's clock now, RFC 3339 UTC with microseconds.
    pub fn clock(&mut self) -> Result<String, Error> {
        self.text("clock", "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    }

    /// Start a non-exclusive backup; returns its start LSN. `fast` requests an immediate checkpoint.
    pub fn backup_start(&mut self, label: &str, fast: bool) -> Result<Lsn, Error> {
        let sql = if self.major.has_pg_backup_start {
            "select pg_backup_start($1, $2)::text"
        } else {
            "select pg_start_backup($1, $2, false)::text"
        };
        let row = self
            .client
            .query_one(sql, &[&label, &fast])
            .map_err(|source| Error::Query { what: "backup start", source })?;
        let text: String = row.try_get(0).map_err(|source| Error::Query { what: "backup start", source })?;
        text.parse().map_err(|_| Error::Unexpected { what: "backup start lsn", answer: text })
    }

    /// Stop the backup without waiting for archiving (the caller waits, with a timeout, for the WAL to reach the
    /// repository); returns the stop LSN, `backup_label` and `tablespace_map` contents.
    pub fn backup_stop(&mut self) -> Result<BackupStop, Error> {
        let sql = if self.major.has_pg_backup_start {
            "select lsn::text, labelfile, spcmapfile from pg_backup_stop(false)"
        } else {
            "select lsn::text, labelfile, spcmapfile from pg_stop_backup(false, false)"
        };
        let what = "backup stop";
        let row = self.client.query_one(sql, &[]).map_err(|source| Error::Query { what, source })?;
        let lsn: String = row.try_get(0).map_err(|source| Error::Query { what, source })?;
        let labelfile: String = row.try_get(1).map_err(|source| Error::Query { what, source })?;
        let spcmapfile: Option<String> = row.try_get(2).map_err(|source| Error::Query { what, source })?;
        let lsn = lsn.parse().map_err(|_| Error::Unexpected { what: "backup stop lsn", answer: lsn })?;
        Ok(BackupStop { lsn, labelfile, spcmapfile: spcmapfile.unwrap_or_default() })
    }

    /// Whether the cluster's pages carry checksums, and its block and segment sizes (PostgreSQL's "System
    /// Information Functions": `pg_control_init()`; "Preset Options": `data_checksums`).
    pub fn page_layout(&mut self) -> Result<PageLayout, Error> {
        let what = "pg_control_init";
        let row = self
            .client
            .query_one(
                "select current_setting('data_checksums'), database_block_size, blocks_per_segment \
                 from pg_control_init()",
                &[],
            )
            .map_err(|source| Error::Query { what, source })?;
        let checksums: String = row.try_get(0).map_err(|source| Error::Query { what, source })?;
        let block_size: i32 = row.try_get(1).map_err(|source| Error::Query { what, source })?;
        let blocks_per_segment: i32 = row.try_get(2).map_err(|source| Error::Query { what, source })?;
        let unexpected =
            || Error::Unexpected { what, answer: format!("{checksums} {block_size} {blocks_per_segment}") };
        Ok(PageLayout {
            has_checksums: checksums == "on",
            block_size: u32::try_from(block_size).ok().filter(|b| *b > 0).ok_or_else(unexpected)?,
            blocks_per_segment: u32::try_from(blocks_per_segment).ok().filter(|b| *b > 0).ok_or_else(unexpected)?,
        })
    }

    /// The server's version as it names it (`server_version`, e.g. `15.4 (Debian 15.4-1)`).
    pub fn version_text(&mut self) -> Result<String, Error> {
        self.text("server_version", "show server_version")
    }

    /// A setting's current value from `pg_settings`, or `None` where this server has no such setting (e.g.
    /// `archive_library` before PostgreSQL 15). Some settings are shown only to superusers and members of
    /// `pg_read_all_settings`; for others the server answers with an error.
    pub fn setting(&mut self, name: &str) -> Result<Option<String>, Error> {
        let what = "pg_settings";
        let rows = self
            .client
            .query("select setting from pg_settings where name = $1", &[&name])
            .map_err(|source| Error::Query { what, source })?;
        match rows.first() {
            Some(row) => row.try_get::<_, Option<String>>(0).map_err(|source| Error::Query { what, source }),
            None => Ok(None),
        }
    }

    /// Write a named restore point into the WAL (`pg_create_restore_point`; primary only, `wal_level` replica or
    /// higher); returns its LSN.
    pub fn create_restore_point(&mut self, name: &str) -> Result<Lsn, Error> {
        let what = "pg_create_restore_point";
        let row = self
            .client
            .query_one("select pg_create_restore_point($1)::text", &[&name])
            .map_err(|source| Error::Query { what, source })?;
        let text: String = row.try_get(0).map_err(|source| Error::Query { what, source })?;
        text.parse().map_err(|_| Error::Unexpected { what, answer: text })
    }

    /// Force a switch to a new WAL file (`pg_switch_wal`) and return the name of the file it completed
    /// (`pg_walfile_name` of the returned end location, which names the segment holding the byte before it).
    /// Without WAL written since the last switch, the server does not switch and names the previous segment.
    pub fn switch_wal(&mut self) -> Result<String, Error> {
        self.text("pg_switch_wal", "select pg_walfile_name(pg_switch_wal())")
    }

    /// The WAL file holding `lsn` on the current timeline (`pg_walfile_name`; primary only).
    pub fn walfile_name(&mut self, lsn: Lsn) -> Result<String, Error> {
        let what = "pg_walfile_name";
        let row = self
            .client
            .query_one("select pg_walfile_name($1::text::pg_lsn)", &[&lsn.to_string()])
            .map_err(|source| Error::Query { what, source })?;
        row.try_get(0).map_err(|source| Error::Query { what, source })
    }
}

/// The `START WAL LOCATION` file name and `START TIMELINE` of a backup label.
pub fn parse_label(label: &str) -> Option<(String, u32)> {
    let mut file = None;
    let mut timeline = None;
    for line in label.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            file = rest.split("(file ").nth(1).map(|s| s.trim_end_matches(')').trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
            timeline = rest.trim().parse().ok();
        }
    }
    Some((file?, timeline?))
}

/// Make a PostgreSQL program started with `command` (a server, pg_dump, pg_restore, psql) receive `signal` when
/// the thread that starts it dies, for instance when backupctl is killed with `kill -9`: a restore or dump must
/// not go on unwatched, with nobody to report its outcome or clean up after it (`PR_SET_PDEATHSIG`, prctl(2);
/// Linux only). Errors: none here; `spawn` fails if the kernel refuses it.
pub(crate) fn die_with_parent(command: &mut std::process::Command, signal: libc::c_int) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls prctl, which is async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_parsing() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n\
                     BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-26 08:00:00 UTC\nLABEL: x\n\
                     START TIMELINE: 1\n";
        assert_eq!(super::parse_label(label), Some(("000000010000000000000002".to_owned(), 1)));
        assert_eq!(super::parse_label("LABEL: x\n"), None);
    }
}
