//! Local state of unattended running: small JSON records in `<spool>/state/`, shared by wal-push, the scheduler
//! daemon, alerts and metrics.
//!
//! ```text
//! <spool>/state/archive.json   ArchiveState: wal-push's last success and current failure streak, .ready backlog
//! <spool>/state/jobs.json      JobsState: the scheduler's jobs (last slot run, outcome, durations, counters)
//! <spool>/state/drill.json     DrillState: the last restore drill's result, recovery time and WAL range
//! <spool>/state/alerts.json    the alert conditions that fired and when each was last sent (see `alert`)
//! <spool>/state/<name>.lock    serialises read-modify-write of <name>.json between processes
//! <spool>/state/scheduler.lock held by the running scheduler daemon for its lifetime (one daemon per spool)
//! ```
//!
//! Invariants: each record is replaced atomically (temp file and rename; no fsync: losing the last update in a
//! power cut is harmless, and wal-push must stay cheap), so a reader sees either the old or the new record. A
//! missing record reads as the type's default; a damaged one is an error naming the file (never silently reset:
//! the jobs record is what stops a restarted daemon from running a slot twice). Read-modify-write goes through
//! [`StateDir::update`], which holds `<name>.lock` (an `fs2` lock, released by the kernel if the holder dies).
//! The spool belongs to the PostgreSQL OS user; so does this directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::spool::{self, Lock};

/// How long [`StateDir::update`] waits for another process's update to finish before failing.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// State-record failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The directory or a record could not be read, written or locked.
    #[error(transparent)]
    Spool(#[from] spool::Error),
    /// A record exists but is not valid JSON of the expected shape.
    #[error("state record {path} is damaged ({reason}); move it aside to start afresh")]
    Damaged {
        /// The record.
        path: PathBuf,
        /// What the JSON parser said.
        reason: String,
    },
}

/// The state directory `<spool>/state`.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory of the spool at `spool_root` (`[spool] path`); nothing is created until a write.
    pub fn new(spool_root: &Path) -> Self {
        Self { root: spool_root.join("state") }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of record `name` (`<root>/<name>.json`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.json"))
    }

    /// Read record `name`; `T::default()` if it does not exist (or the directory does not).
    ///
    /// Errors: [`Error::Spool`] when it cannot be read, [`Error::Damaged`] when it is not valid JSON for `T`.
    pub fn load<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, Error> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Damaged { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(source) => Err(spool::Error::Io { path, source }.into()),
        }
    }

    /// Replace record `name` with `value` atomically, creating the directory (mode 0700) if needed.
    pub fn store<T: Serialize>(&self, name: &str, value: &T) -> Result<(), Error> {
        self.create_dir()?;
        let path = self.path(name);
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::Damaged { path: path.clone(), reason: e.to_string() })?;
        spool::write_atomic(&path, &bytes, false)?;
        Ok(())
    }

    /// Read record `name`, let `change` modify it, and store it, all under `<name>.lock` so that concurrent
    /// updaters (wal-push calls, the daemon, a CLI command) never lose each other's changes. Returns the stored
    /// value. Waits up to 10 s for the lock, then fails with [`spool::Error::Locked`].
    pub fn update<T, F>(&self, name: &str, change: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned + Default,
        F: FnOnce(&mut T),
    {
        self.create_dir()?;
        let _lock = Lock::acquire(&self.root.join(format!("{name}.lock")), LOCK_WAIT)?;
        let mut value: T = self.load(name)?;
        change(&mut value);
        self.store(name, &value)?;
        Ok(value)
    }

    /// [`StateDir::update`] for a record whose history is expendable (wal-push's rolling archive record): a damaged
    /// record is moved aside to `<name>.json.damaged` (with a warning) and the update starts from the default, so
    /// that one bad write never stops the record (and the alerts and metrics that read it) for good. Never use it
    /// for the jobs record, whose `last_slot` stops a slot from running twice.
    pub fn update_or_reset<T, F>(&self, name: &str, change: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned + Default,
        F: FnOnce(&mut T),
    {
        self.create_dir()?;
        let _lock = Lock::acquire(&self.root.join(format!("{name}.lock")), LOCK_WAIT)?;
        let mut value: T = match self.load(name) {
            Err(Error::Damaged { path, reason }) => {
                let aside = path.with_extension("json.damaged");
                tracing::warn!(record = %path.display(), %reason, moved_to = %aside.display(), "state record damaged; starting it afresh");
                std::fs::rename(&path, &aside).map_err(|source| spool::Error::Io { path: path.clone(), source })?;
                T::default()
            }
            other => other?,
        };
        change(&mut value);
        self.store(name, &value)?;
        Ok(value)
    }

    /// Take `<root>/<name>.lock` (creating the directory), waiting up to `wait`: for callers that must serialise
    /// more than one read-modify-write (the alerter holds `alerts-send` while it sends, so that two processes
    /// never send the same alert twice). Blocks the thread while it waits.
    ///
    /// Errors: [`Error::Spool`] when the directory cannot be created or the lock is still held after `wait`.
    pub fn lock(&self, name: &str, wait: Duration) -> Result<Lock, Error> {
        self.create_dir()?;
        Ok(Lock::acquire(&self.root.join(format!("{name}.lock")), wait)?)
    }

    fn create_dir(&self) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.root) {
            Ok(()) => Ok(()),
            Err(source) => Err(spool::Error::Io { path: self.root.clone(), source }.into()),
        }
    }
}

/// Record name of [`ArchiveState`].
pub const ARCHIVE: &str = "archive";
/// Record name of [`JobsState`].
pub const JOBS: &str = "jobs";
/// Record name of [`DrillState`].
pub const DRILL: &str = "drill";

/// What wal-push last saw (`<spool>/state/archive.json`), written on every call so that alerts and metrics can
/// tell a failing or lagging archive without wal-push itself ever alerting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchiveState {
    /// The last segment (or other WAL file) stored durably, and when.
    pub last_success: Option<Archived>,
    /// Start of the current run of failed calls (None once a call succeeds).
    pub failing_since: Option<jiff::Timestamp>,
    /// The most recent failure, with its one-line error.
    pub last_failure: Option<Failure>,
    /// Failed calls since this record was created.
    pub failures_total: u64,
    /// Files stored since this record was created.
    pub archived_total: u64,
    /// `.ready` files in `pg_wal/archive_status` at the end of the last call that are not yet durable in the
    /// repository (files pushed ahead, which keep their `.ready` until PostgreSQL asks for them, and the file the
    /// call archived do not count): the archive's backlog, in files.
    pub ready_count: u64,
    /// Their size in bytes (segments count the segment size; `.history` and `.backup` files their own).
    pub ready_bytes: u64,
    /// When the record was last written.
    pub updated_at: Option<jiff::Timestamp>,
}

/// One archived WAL file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Archived {
    /// WAL file name (`000000010000000000000003`, `00000002.history`, ...).
    pub name: String,
    /// When wal-push confirmed it durable.
    pub at: jiff::Timestamp,
}

/// One failed call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// When it failed.
    pub at: jiff::Timestamp,
    /// The WAL file it was asked to archive.
    pub name: String,
    /// The one-line error it printed.
    pub error: String,
}

/// The scheduler's record of every job (`<spool>/state/jobs.json`), keyed by job name (`full_backup`, `prune`...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobsState {
    /// Per job.
    pub jobs: std::collections::BTreeMap<String, JobRecord>,
}

/// How a job run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It did what it was for.
    Succeeded,
    /// It failed (the error is in [`JobRecord::last_error`]).
    Failed,
    /// It was abandoned at shutdown after the grace period.
    Abandoned,
}

/// One job's history, as the scheduler keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRecord {
    /// The newest schedule slot a run was started for: a restarted daemon never starts this slot (or an earlier
    /// one) again.
    pub last_slot: Option<jiff::Timestamp>,
    /// When the last run started.
    pub last_started: Option<jiff::Timestamp>,
    /// When the last run ended.
    pub last_finished: Option<jiff::Timestamp>,
    /// How the last run ended.
    pub last_outcome: Option<Outcome>,
    /// The last failed run's one-line error.
    pub last_error: Option<String>,
    /// The last run's duration in seconds.
    pub last_duration_seconds: Option<f64>,
    /// When a run last succeeded.
    pub last_success: Option<jiff::Timestamp>,
    /// Runs that succeeded.
    pub succeeded_total: u64,
    /// Runs that failed.
    pub failed_total: u64,
    /// Slots skipped because the previous run of the job (or another backup) was still going.
    pub missed_total: u64,
}

/// Restore drills run on this host (`<spool>/state/drill.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrillState {
    /// The most recent drill.
    pub last: Option<DrillRecord>,
    /// When a drill last passed.
    pub last_success: Option<jiff::Timestamp>,
    /// Drills that passed.
    pub passed_total: u64,
    /// Drills that failed.
    pub failed_total: u64,
}

/// One restore drill's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// When it started.
    pub started: jiff::Timestamp,
    /// When it ended.
    pub finished: jiff::Timestamp,
    /// The backup it restored.
    pub backup_id: String,
    /// The recovery target (`--to`), if one was given; otherwise recovery ran to the end of the archive.
    pub target: Option<String>,
    /// Whether every step passed.
    pub passed: bool,
    /// The first failure, one line.
    pub error: Option<String>,
    /// Recovery time objective measured: seconds from the start of the restore until PostgreSQL accepted
    /// connections with recovery finished.
    pub rto_seconds: Option<f64>,
    /// First WAL segment replayed (the backup's start segment).
    pub wal_start: Option<String>,
    /// Last WAL segment replayed.
    pub wal_end: Option<String>,
    /// The step that failed (`backup`, `binaries`, `disk_budget`, `restore`, `start`, `recovery`, `amcheck`,
    /// `smoke_query`, `stop`, `cleanup`; see `drill::Step`).
    #[serde(default)]
    pub failed_step: Option<String>,
    /// `passed`, or why pg_amcheck was skipped (PostgreSQL 13 has none); None when the drill did not get there.
    #[serde(default)]
    pub amcheck: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_record_is_default_and_update_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let empty: ArchiveState = state.load(ARCHIVE).expect("load");
        assert_eq!(empty, ArchiveState::default());
        let after = state
            .update(ARCHIVE, |s: &mut ArchiveState| {
                s.failures_total += 1;
                s.ready_count = 7;
            })
            .expect("update");
        assert_eq!(after.failures_total, 1);
        let read: ArchiveState = state.load(ARCHIVE).expect("load");
        assert_eq!(read, after);
    }

    #[test]
    fn damaged_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        std::fs::create_dir_all(state.root()).expect("mkdir");
        std::fs::write(state.path(JOBS), b"{\"jobs\": ").expect("write");
        let err = state.load::<JobsState>(JOBS).expect_err("damaged").to_string();
        assert!(err.contains("jobs.json") && err.contains("damaged"), "{err}");
    }

    /// Found by the trial: a damaged archive record was never replaced, so the archive alerts stayed blind.
    #[test]
    fn a_damaged_expendable_record_is_moved_aside_and_restarted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        std::fs::create_dir_all(state.root()).expect("mkdir");
        std::fs::write(state.path(ARCHIVE), b"{\"ready_count\": ").expect("write");
        assert!(state.update(ARCHIVE, |a: &mut ArchiveState| a.ready_count = 1).is_err(), "update keeps refusing");
        let a = state.update_or_reset(ARCHIVE, |a: &mut ArchiveState| a.ready_count = 3).expect("reset");
        assert_eq!(a.ready_count, 3);
        assert_eq!(state.load::<ArchiveState>(ARCHIVE).expect("load").ready_count, 3);
        assert!(state.root().join("archive.json.damaged").exists(), "the damaged record is kept aside");
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = state.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        s.update(ARCHIVE, |a: &mut ArchiveState| a.archived_total += 1).expect("update");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        let a: ArchiveState = state.load(ARCHIVE).expect("load");
        assert_eq!(a.archived_total, 100);
    }
}
