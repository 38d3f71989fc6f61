//! Restore drills: prove that a backup restores by restoring it into a temporary directory, starting PostgreSQL of
//! its major version on it, letting it recover to the end of the archive (or a time), checking it with
//! `pg_amcheck --all` (PostgreSQL 14+) and `[drill] sql`, and recording the result, the recovery time (RTO) and
//! the WAL range replayed in `<spool>/state/drill.json`.
//!
//! Invariants:
//! - Nothing is left behind, whatever happens: the server is stopped and the temporary directory removed on
//!   success, on failure, when the caller's abandon flag is raised (Ctrl-C, the scheduler's shutdown), and on a
//!   panic (drop guards). A SIGKILL of this process leaves the directory, but the server still shuts down
//!   (its parent-death signal).
//! - The restore is pitr-restore's own library code ([`crate::restore::run`]), with `archive_mode = off` and
//!   every tablespace mapped into the temporary directory: the copy never archives into the repository and never
//!   touches the source's directories. The server listens on 127.0.0.1 and a Unix socket in the temporary
//!   directory (mode 0700) only.
//! - Every drill that gets past the root check is recorded, passed or failed, before `run` returns; an abandoned
//!   one is not (it proved nothing either way, and the last result stands).
//! - A drill refuses to start when the work directory's file system cannot hold the backup ([`budget`]).

pub mod budget;
mod checks;
pub mod error;
pub mod server;
mod workspace;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use checks::{amcheck_skipped, replayed_segment};
pub use error::Error;
use workspace::Workspace;

use crate::config::Config;
use crate::repository::backup::BackupId;
use crate::repository::store;
use crate::restore::target::{Target, TargetAction, TargetTimeline};
use crate::restore::{self, RestoreRequest, auto_conf};
use crate::state::{self, DrillRecord, DrillState, StateDir};

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Restore this backup; `None`: the newest that reaches the target.
    pub backup_id: Option<BackupId>,
    /// Recover to this time (and promote there); `None`: to the end of the archive.
    pub to: Option<time::OffsetDateTime>,
    /// The restore_command the restored server runs: this installation's wal-fetch with this configuration file,
    /// as pitr-restore writes it (`cli::pitr_restore::restore_command`).
    pub restore_command: OsString,
}

/// The steps of a drill, in order; a failure names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Open the repository and choose the backup.
    Backup,
    /// Find server binaries of the backup's major version.
    Binaries,
    /// Check free space in the work directory.
    DiskBudget,
    /// Restore the backup into the temporary directory.
    Restore,
    /// Start PostgreSQL on it.
    Start,
    /// Wait until recovery has finished and the server accepts connections.
    Recovery,
    /// `pg_amcheck --all`.
    Amcheck,
    /// `[drill] sql`.
    SmokeQuery,
    /// Stop the server.
    Stop,
    /// Remove the temporary directory.
    Cleanup,
}

impl Step {
    /// The step's name, as in the JSON report and the state record.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Backup => "backup",
            Step::Binaries => "binaries",
            Step::DiskBudget => "disk_budget",
            Step::Restore => "restore",
            Step::Start => "start",
            Step::Recovery => "recovery",
            Step::Amcheck => "amcheck",
            Step::SmokeQuery => "smoke_query",
            Step::Stop => "stop",
            Step::Cleanup => "cleanup",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a drill did (printed by `backupctl drill`, as JSON with `--json-output`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillReport {
    /// Every step passed.
    pub passed: bool,
    /// The backup restored (None if the drill failed before choosing one).
    pub backup_id: Option<String>,
    /// Its `server_version_num`.
    pub pg_version_num: Option<u32>,
    /// The recovery target (`--to`, as written into `recovery_target_time`); None: the end of the archive.
    pub target: Option<String>,
    /// When the drill started.
    pub started: jiff::Timestamp,
    /// When it ended (after cleanup).
    pub finished: jiff::Timestamp,
    /// The step that failed.
    pub failed_step: Option<Step>,
    /// Its one-line error.
    pub error: Option<String>,
    /// Seconds from the start of the restore until the server accepted connections with recovery finished.
    pub rto_seconds: Option<f64>,
    /// Seconds the restore of the files took (part of the RTO).
    pub restore_seconds: Option<f64>,
    /// First WAL segment recovery needed: the backup's start segment.
    pub wal_start: Option<String>,
    /// Last WAL segment replayed (from `pg_last_wal_replay_lsn()` on the timeline recovery followed).
    pub wal_end: Option<String>,
    /// The LSN where replay ended.
    pub replay_lsn: Option<String>,
    /// Bytes the restore wrote.
    pub bytes_restored: u64,
    /// `passed`, or why pg_amcheck was skipped.
    pub amcheck: Option<String>,
    /// The first column of the first row `[drill] sql` returned (None: no row, or not run).
    pub smoke_result: Option<String>,
    /// The server binaries used.
    pub server_bin: Option<String>,
    /// The directory the temporary directory was created in.
    pub work_dir: String,
}

impl DrillReport {
    /// The report of a drill that starts at `started`: nothing passed, measured or found yet.
    pub(crate) fn begun(
        started: jiff::Timestamp,
        backup_id: Option<String>,
        target: Option<String>,
        work_dir: String,
    ) -> Self {
        Self {
            passed: false,
            backup_id,
            pg_version_num: None,
            target,
            started,
            finished: started,
            failed_step: None,
            error: None,
            rto_seconds: None,
            restore_seconds: None,
            wal_start: None,
            wal_end: None,
            replay_lsn: None,
            bytes_restored: 0,
            amcheck: None,
            smoke_result: None,
            server_bin: None,
            work_dir,
        }
    }
}

/// Run a drill as `config` and `opts` say. Blocks (call it outside the runtime's worker threads, e.g. in
/// `spawn_blocking`); `rt` runs the storage calls. Polls `abandon` while it restores, waits and checks: once it is
/// set, the drill stops the server, removes its directory and fails with [`Error::Abandoned`].
///
/// Records the result in `<spool>/state/drill.json` (also on failure; not when abandoned, which proves nothing
/// either way: see [`Error::is_abandoned`]), then returns the report, or [`Error::Failed`] naming the step (with
/// the report). Refuses to run as root ([`Error::RunAsRoot`], nothing recorded).
#[tracing::instrument(name = "drill", skip_all)]
pub fn run(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    opts: &DrillOptions,
    abandon: &AtomicBool,
) -> Result<DrillReport, crate::Error> {
    if nix::unistd::geteuid().is_root() {
        return Err(Error::RunAsRoot { user: owner_of(&config.spool.path) }.into());
    }
    let mut report = DrillReport::begun(
        jiff::Timestamp::now(),
        opts.backup_id.as_ref().map(ToString::to_string),
        opts.to.map(restore::target::pg_timestamp),
        config.drill.work_dir().display().to_string(),
    );
    tracing::info!(work_dir = %report.work_dir, "restore drill starting");
    let outcome = drive(rt, config, opts, abandon, &mut report);
    report.finished = jiff::Timestamp::now();
    match &outcome {
        Ok(()) => report.passed = true,
        Err(failed) => {
            report.failed_step = Some(failed.0);
            report.error = Some(failed.1.to_string());
        }
    }
    // An abandoned drill proved nothing either way: the last result stands.
    let is_abandoned = outcome.as_ref().is_err_and(|f| matches!(&f.1, crate::Error::Drill(d) if d.is_abandoned()));
    let recorded = if is_abandoned { Ok(()) } else { record(&StateDir::new(&config.spool.path), &report) };
    match outcome {
        Ok(()) => {
            recorded?;
            tracing::info!(
                backup = report.backup_id.as_deref().unwrap_or(""),
                rto_seconds = report.rto_seconds.unwrap_or(0.0),
                wal_end = report.wal_end.as_deref().unwrap_or(""),
                "restore drill passed"
            );
            Ok(report)
        }
        Err(failed) => {
            let (step, source) = *failed;
            if let Err(e) = recorded {
                tracing::error!(error = %e, "could not record the failed drill");
            }
            Err(Error::Failed { step, report: Box::new(report), source: Box::new(source) }.into())
        }
    }
}

/// A failed step: which one, and why (boxed: `crate::Error` is large).
pub(crate) type StepError = Box<(Step, crate::Error)>;

pub(crate) fn at<E: Into<crate::Error>>(step: Step) -> impl FnOnce(E) -> StepError {
    move |e| Box::new((step, e.into()))
}

pub(crate) fn check_abandon(abandon: &AtomicBool, step: Step) -> Result<(), StepError> {
    if abandon.load(Ordering::Relaxed) { Err(at(step)(Error::Abandoned)) } else { Ok(()) }
}

/// Resolves once `abandon` is set (polled every 200 ms).
pub(crate) async fn abandoned(abandon: &AtomicBool) {
    while !abandon.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn drive(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    opts: &DrillOptions,
    abandon: &AtomicBool,
    report: &mut DrillReport,
) -> Result<(), StepError> {
    let drill = &config.drill;
    // The backup.
    let deadline = Duration::from_secs(config.archive.retry_deadline_seconds);
    let storage = rt
        .block_on(async {
            let s = crate::storage::open(&config.repository.url, &config.repository.s3, deadline).await?;
            store::require_existing(s.as_ref()).await?;
            Ok::<_, crate::Error>(s)
        })
        .map_err(at(Step::Backup))?;
    let mut request = RestoreRequest {
        destination: PathBuf::new(),
        backup_id: opts.backup_id.clone(),
        target: opts.to.map_or(Target::Latest, Target::Time),
        action: TargetAction::Promote,
        inclusive: true,
        timeline: TargetTimeline::Latest,
        is_archive_off: true,
        delta: false,
        tablespace_mapping: Vec::new(),
        restore_command: opts.restore_command.clone(),
        parallel: config.restore.parallel,
        now: time::OffsetDateTime::now_utc(),
    };
    let (manifest, _) = rt.block_on(restore::choose(storage.as_ref(), &request)).map_err(at(Step::Backup))?;
    let id = manifest.id.to_string();
    tracing::info!(backup = %id, stop_time = %manifest.stop_time, "restore drill: backup chosen");
    report.backup_id = Some(id.clone());
    report.pg_version_num = Some(manifest.pg_version_num);
    report.wal_start = Some(manifest.start_wal.clone());

    let major = auto_conf::major(manifest.pg_version_num);
    let bin = server::find_binaries(drill.pg_bin_dir.as_deref(), major, &id).map_err(at(Step::Binaries))?;
    report.server_bin = Some(bin.display().to_string());

    let work_dir = drill.work_dir();
    let available = fs2::available_space(&work_dir).map_err(|source| {
        at(Step::DiskBudget)(Error::Io { what: "read the free space of", path: work_dir.clone(), source })
    })?;
    let logical = manifest.stats.bytes;
    budget::check(logical, manifest.wal_segment_size, available).map_err(|needed| {
        let e = Error::DiskBudget { path: work_dir.clone(), backup: id.clone(), logical, needed, available };
        at(Step::DiskBudget)(e)
    })?;
    check_abandon(abandon, Step::DiskBudget)?;

    let mut ws = Workspace::create(&work_dir).map_err(at(Step::Restore))?;
    let outcome =
        workspace::in_workspace(rt, config, &storage, &manifest, &mut request, &bin, &mut ws, abandon, report);
    // Whatever happened: stop the server, remove the directory.
    let stopped = ws.stop_server();
    let removed = ws.remove();
    if outcome.is_err() {
        // The first failure is the drill's error; these are logged for the operator to clean up.
        if let Err(e) = &stopped {
            tracing::error!(error = %e, "could not stop the drill's server");
        }
        if let Err(e) = &removed {
            tracing::error!(error = %e, "could not remove the drill's directory");
        }
    }
    outcome?;
    stopped.map_err(at(Step::Stop))?;
    removed.map_err(at(Step::Cleanup))
}

/// The user who owns `dir` (the spool: the PostgreSQL OS user), or `postgres` when that is root or unknown.
fn owner_of(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let owner = dir
        .ancestors()
        .find_map(|d| std::fs::metadata(d).ok())
        .map(|m| crate::storage::fs::owner::user_name(m.uid()))
        .filter(|u| u != "root");
    owner.unwrap_or_else(|| "postgres".to_owned())
}

/// Record `report` in `<spool>/state/drill.json`.
fn record(state: &StateDir, report: &DrillReport) -> Result<(), crate::Error> {
    let rec = DrillRecord {
        started: report.started,
        finished: report.finished,
        backup_id: report.backup_id.clone().unwrap_or_default(),
        target: report.target.clone(),
        passed: report.passed,
        error: report.error.clone(),
        rto_seconds: report.rto_seconds,
        wal_start: report.wal_start.clone(),
        wal_end: report.wal_end.clone(),
        failed_step: report.failed_step.map(|s| s.as_str().to_owned()),
        amcheck: report.amcheck.clone(),
    };
    state.update(state::DRILL, |s: &mut DrillState| {
        if rec.passed {
            s.passed_total += 1;
            s.last_success = Some(rec.finished);
        } else {
            s.failed_total += 1;
        }
        s.last = Some(rec.clone());
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_count_passes_and_failures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let now = jiff::Timestamp::now();
        let mut r = DrillReport {
            passed: true,
            backup_id: Some("20261126-100000F".into()),
            pg_version_num: Some(150004),
            target: None,
            started: now,
            finished: now,
            failed_step: None,
            error: None,
            rto_seconds: Some(1.5),
            restore_seconds: Some(0.5),
            wal_start: Some("000000010000000000000002".into()),
            wal_end: Some("000000010000000000000004".into()),
            replay_lsn: Some("0/4000108".into()),
            bytes_restored: 1,
            amcheck: Some("passed".into()),
            smoke_result: Some("3".into()),
            server_bin: None,
            work_dir: "/tmp".into(),
        };
        record(&state, &r).expect("record");
        r.passed = false;
        r.failed_step = Some(Step::Recovery);
        r.error = Some("x".into());
        record(&state, &r).expect("record");
        let s: DrillState = state.load(state::DRILL).expect("load");
        assert_eq!((s.passed_total, s.failed_total), (1, 1));
        assert_eq!(s.last_success, Some(now));
        let last = s.last.expect("last");
        assert_eq!(last.failed_step.as_deref(), Some("recovery"));
        assert_eq!(last.rto_seconds, Some(1.5));
        assert_eq!(serde_json::to_value(Step::SmokeQuery).expect("json"), "smoke_query");
    }
}
