//! `backupctl check` (alias `test`): an end-to-end self-test of everything backups need, one verdict per check.
//!
//! Invariants:
//! - Every check runs, whatever an earlier one found; a check that cannot run because of an earlier failure (or
//!   a missing `[postgres]` section) is [`Status::Skipped`] with the reason, never silently left out.
//! - Nothing waits without a deadline: PostgreSQL calls go through [`session::TimedSession`] (connect and every
//!   statement within [`PG_TIMEOUT`]); storage steps are bounded by the backend's own attempt timeouts and
//!   retry deadline and, as a whole, by [`storage_limit`]; the forced WAL switch waits `[check] wal_switch_timeout`.
//! - The only writes are a probe object (written, read back, deleted) and, on the server, a restore point and a
//!   WAL switch (as pgBackRest's `check` does: `src/command/check/check.c`). A repository that does not exist is
//!   reported, never created.

pub mod archive_command;
pub mod judge;
pub mod session;
mod steps;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Config;
use crate::repository::store;
use crate::storage::DynStorage;
use session::TimedSession;
use steps::{Probe, describe_server, parse_time, probe_within, repository_outcome, within};

/// How long connecting to PostgreSQL and each statement may take.
pub const PG_TIMEOUT: Duration = Duration::from_secs(10);

/// The checks' names, in the order they are reported (also the `name` of each JSON entry).
pub mod names {
    /// The configuration file loaded and validated.
    pub const CONFIGURATION: &str = "configuration";
    /// PostgreSQL reachable with the `[postgres]` settings.
    pub const POSTGRESQL: &str = "postgresql";
    /// `archive_mode` on or always.
    pub const ARCHIVE_MODE: &str = "archive_mode";
    /// `wal_level` replica or logical.
    pub const WAL_LEVEL: &str = "wal_level";
    /// `archive_command` calls wal-push with this configuration.
    pub const ARCHIVE_COMMAND: &str = "archive_command";
    /// The repository exists and takes a write, read and delete of a probe.
    pub const REPOSITORY: &str = "repository";
    /// The repository's cluster is this server's.
    pub const SYSTEM_IDENTIFIER: &str = "system_identifier";
    /// A forced WAL switch reaches the repository in time.
    pub const WAL_SWITCH: &str = "wal_switch";
    /// Free space of the spool's file system.
    pub const SPOOL_SPACE: &str = "spool_space";
    /// Age of the newest complete backup.
    pub const BACKUP_AGE: &str = "backup_age";
    /// Age of the newest archived WAL segment.
    pub const WAL_AGE: &str = "wal_age";
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It passed.
    Ok,
    /// It failed; the detail says why.
    Failed,
    /// It could not run; the detail says why.
    Skipped,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Which check (one of [`names`]).
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What it found (ok), why it failed, or why it was skipped; one line.
    pub detail: String,
}

impl Outcome {
    /// A pass.
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self { name, status: Status::Ok, detail: detail.into() }
    }
    /// A failure.
    pub fn failed(name: &'static str, detail: impl Into<String>) -> Self {
        Self { name, status: Status::Failed, detail: detail.into() }
    }
    /// A check that could not run.
    pub fn skipped(name: &'static str, detail: impl Into<String>) -> Self {
        Self { name, status: Status::Skipped, detail: detail.into() }
    }
}

/// All checks' results, in [`names`] order.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// One entry per check.
    pub checks: Vec<Outcome>,
}

impl Report {
    /// True when no check failed (skipped ones do not count against it).
    pub fn is_ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Failed)
    }

    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Outcome> {
        self.checks.iter().filter(|c| c.status == Status::Failed)
    }
}

/// What the checks run with.
pub struct Inputs<'a> {
    /// The configuration file that was loaded (what archive_command's wal-push must read).
    pub config_path: &'a Path,
    /// The validated configuration.
    pub config: &'a Config,
    /// The repository's backend, or why it could not be opened.
    pub storage: Result<DynStorage, crate::Error>,
    /// The clock.
    pub now: &'a dyn Fn() -> OffsetDateTime,
}

/// How long one storage step (the probe, a listing, loading the manifests) may take as a whole: the retry
/// deadline (`archive.retry_deadline_seconds`) plus 30 s for the attempts in flight when it passes.
pub fn storage_limit(config: &Config) -> Duration {
    Duration::from_secs(config.archive.retry_deadline_seconds.saturating_add(30))
}

/// What the server said about itself and its archiving.
pub(super) struct Server {
    session: TimedSession,
    info: crate::pg::ServerInfo,
    version: String,
    archive_mode: Option<String>,
    wal_level: Option<String>,
    archive_command: Option<String>,
    archive_library: Option<String>,
    data_directory: Option<PathBuf>,
    /// `pg_stat_archiver.archived_count`.
    archived_count: u64,
}

/// Run every check. Blocking: storage steps run on `rt`, PostgreSQL calls on a thread of their own.
#[tracing::instrument(skip_all)]
pub fn run(rt: &tokio::runtime::Runtime, inputs: Inputs<'_>) -> Report {
    use names::*;
    let Inputs { config_path, config, storage, now } = inputs;
    let limit = storage_limit(config);
    let mut out = vec![Outcome::ok(CONFIGURATION, config_path.display().to_string())];

    // PostgreSQL and its archive settings.
    let server = match &config.postgres {
        None => Err("no [postgres] section in the configuration".to_owned()),
        Some(pg) => match describe_server(pg) {
            Ok(s) => {
                let role = if s.info.is_in_recovery { ", a standby" } else { "" };
                let target = format!("{}:{} as {}", pg.host, pg.port, pg.user);
                out.push(Outcome::ok(POSTGRESQL, format!("PostgreSQL {} at {target}{role}", s.version)));
                Ok(s)
            }
            Err(e) => {
                out.push(Outcome::failed(POSTGRESQL, e.to_string()));
                Err("the postgresql check failed (unreachable, or a version this build does not support)".to_owned())
            }
        },
    };
    if let Err(why) = &server {
        if config.postgres.is_none() {
            out.push(Outcome::skipped(POSTGRESQL, why.clone()));
        }
        for name in [ARCHIVE_MODE, WAL_LEVEL, ARCHIVE_COMMAND] {
            out.push(Outcome::skipped(name, why.clone()));
        }
    }
    let mut archives = false;
    if let Ok(s) = &server {
        let mode = judge::archive_mode(s.archive_mode.as_deref());
        archives = mode.status == Status::Ok;
        out.push(mode);
        out.push(judge::wal_level(s.wal_level.as_deref()));
        out.push(steps::archive_command_outcome(s, config_path, config));
    }

    // The repository. One that does not exist yet, on a server that has archived nothing yet, is what wal-push's
    // first push creates: the forced WAL switch below may create it, and the probe runs again after it (check
    // itself never creates one). A server that has archived WAL already writes it somewhere else.
    let (handle, probed) = match storage {
        Ok(s) => {
            let probed = rt.block_on(probe_within(limit, s.as_ref(), now()));
            (Some(s), probed)
        }
        Err(e) => (None, Err(Probe::Failed(e.to_string()))),
    };
    let first_push_creates = match (&probed, &server) {
        (Err(Probe::Missing(_)), Ok(s)) => s.archived_count == 0,
        _ => false,
    };
    let archived = server.as_ref().ok().map(|s| s.archived_count);
    out.push(repository_outcome(&handle, &probed, archived));
    let repo_index = out.len() - 1;
    let storage = match (&probed, first_push_creates) {
        (Ok(_), _) | (Err(Probe::Missing(_)), true) => handle.clone(),
        _ => None,
    };

    // The repository's cluster, then the forced WAL switch.
    let identity = || match (&server, &storage) {
        (Err(why), _) => Outcome::skipped(SYSTEM_IDENTIFIER, why.clone()),
        (_, None) => Outcome::skipped(SYSTEM_IDENTIFIER, "the repository check failed"),
        (Ok(s), Some(st)) => {
            let on_record =
                rt.block_on(within(limit, &st.to_string(), async { Ok(store::cluster_info(st.as_ref()).await?) }));
            steps::system_identifier(on_record, &s.info, st.as_ref())
        }
    };
    let id_outcome = identity();
    let id_index = out.len();
    let unrecorded = id_outcome.status == Status::Ok && id_outcome.detail.starts_with("none recorded");
    let foreign = id_outcome.status == Status::Failed;
    out.push(id_outcome);
    let switch = match (&server, &storage) {
        (Err(why), _) => Outcome::skipped(WAL_SWITCH, why.clone()),
        (Ok(s), _) if s.info.is_in_recovery => Outcome::skipped(
            WAL_SWITCH,
            "the server is a standby (in recovery): run check against the primary, where WAL is switched",
        ),
        (Ok(_), _) if !archives => Outcome::skipped(WAL_SWITCH, "archive_mode is off: nothing would be archived"),
        (Ok(s), _) if s.archive_library.as_deref().is_some_and(|l| !l.is_empty()) => {
            Outcome::skipped(WAL_SWITCH, "archive_library is set: PostgreSQL does not run archive_command")
        }
        (Ok(s), _) if s.archive_command.as_deref().is_none_or(|c| c.trim().is_empty()) => {
            Outcome::skipped(WAL_SWITCH, "archive_command is empty: nothing would be archived")
        }
        (_, None) => Outcome::skipped(WAL_SWITCH, "the repository check failed"),
        (_, Some(_)) if foreign => {
            Outcome::skipped(WAL_SWITCH, "the repository belongs to another cluster: wal-push refuses this one's WAL")
        }
        (Ok(s), Some(st)) => steps::wal_switch(rt, s, st.as_ref(), now(), config.check.wal_switch_timeout.0),
    };
    let switched = switch.status == Status::Ok;
    out.push(switch);
    if first_push_creates && let Some(h) = &handle {
        let probed = rt.block_on(probe_within(limit, h.as_ref(), now()));
        out[repo_index] = repository_outcome(&handle, &probed, None);
    }
    if unrecorded && switched {
        // The switched segment recorded the cluster: check it now.
        out[id_index] = identity();
    }
    let storage = if out[repo_index].status == Status::Ok { storage } else { None };

    // Space, and how fresh the newest backup and WAL are.
    let spool = &config.spool.path;
    let exists = spool.is_dir();
    let measured = spool.ancestors().find(|p| p.exists()).unwrap_or(spool);
    out.push(judge::spool_space(spool, fs2::available_space(measured), config.check.min_spool_free_mib, exists));
    match &storage {
        None => {
            out.push(Outcome::skipped(BACKUP_AGE, "the repository check failed"));
            out.push(Outcome::skipped(WAL_AGE, "the repository check failed"));
        }
        Some(st) => {
            let name = st.to_string();
            let backups = rt.block_on(within(limit, &name, async { Ok(store::manifest_headers(st.as_ref()).await?) }));
            out.push(match backups {
                Ok((manifests, _)) => {
                    let newest = manifests
                        .iter()
                        .filter_map(|m| Some((m.id.to_string(), parse_time(&m.stop_time)?)))
                        .max_by_key(|(_, t)| *t);
                    judge::backup_age(
                        newest.as_ref().map(|(id, t)| (id.as_str(), *t)),
                        now(),
                        config.retention.max_backup_age,
                    )
                }
                Err(e) => Outcome::failed(BACKUP_AGE, e),
            });
            let wal = rt.block_on(within(limit, &name, async { Ok(st.list("wal/").await?) }));
            out.push(match wal {
                Ok(objects) => {
                    let newest = objects
                        .iter()
                        .filter(|m| m.key.file_name().len() == 24)
                        .max_by_key(|m| (m.modified, m.key.file_name().to_owned()))
                        .map(|m| (m.key.file_name(), m.modified.map(OffsetDateTime::from)));
                    judge::wal_age(newest, now(), config.check.max_wal_age)
                }
                Err(e) => Outcome::failed(WAL_AGE, e),
            });
        }
    }
    Report { checks: out }
}
