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
pub mod error;
pub mod server;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use error::Error;
use server::Server;

use crate::config::Config;
use crate::progress::NoProgress;
use crate::repository::backup::{BackupId, Manifest};
use crate::repository::lease::{Held, LeaseKind};
use crate::repository::store;
use crate::restore::target::{Target, TargetAction, TargetTimeline};
use crate::restore::{self, RestoreRequest, auto_conf};
use crate::state::{self, DrillRecord, DrillState, StateDir};
use crate::wal::{Lsn, SegmentName, SegmentSize, TimelineHistory, TimelineId, WalFileName};

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
    let started = jiff::Timestamp::now();
    let mut report = DrillReport {
        passed: false,
        backup_id: opts.backup_id.as_ref().map(ToString::to_string),
        pg_version_num: None,
        target: opts.to.map(restore::target::pg_timestamp),
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
        work_dir: config.drill.work_dir().display().to_string(),
    };
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
type StepError = Box<(Step, crate::Error)>;

fn at<E: Into<crate::Error>>(step: Step) -> impl FnOnce(E) -> StepError {
    move |e| Box::new((step, e.into()))
}

fn check_abandon(abandon: &AtomicBool, step: Step) -> Result<(), StepError> {
    if abandon.load(Ordering::Relaxed) { Err(at(step)(Error::Abandoned)) } else { Ok(()) }
}

/// Resolves once `abandon` is set (polled every 200 ms).
async fn abandoned(abandon: &AtomicBool) {
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
    let outcome = in_workspace(rt, config, &storage, &manifest, &mut request, &bin, &mut ws, abandon, report);
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

#[allow(clippy::too_many_arguments)]
fn in_workspace(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    storage: &crate::storage::DynStorage,
    manifest: &Manifest,
    request: &mut RestoreRequest,
    bin: &Path,
    ws: &mut Workspace,
    abandon: &AtomicBool,
    report: &mut DrillReport,
) -> Result<(), StepError> {
    let drill = &config.drill;
    let root = ws.path().to_path_buf();
    let data = root.join("data");
    request.destination = data.clone();
    request.backup_id = Some(manifest.id.clone());
    request.tablespace_mapping = manifest
        .tablespaces
        .iter()
        .map(|t| (t.location.as_path().to_path_buf(), root.join("tablespaces").join(t.oid.to_string())))
        .collect();

    // The restore (the RTO clock starts here).
    let t0 = Instant::now();
    tracing::info!(backup = %manifest.id, destination = %data.display(), "restore drill: restoring");
    let may_lease = crate::storage::local_path(&config.repository.url).is_none_or(|root| {
        use crate::storage::fs::owner;
        owner::check_writer(&root, owner::Role::Repository).is_ok()
    });
    let restored = rt
        .block_on(async {
            // As pitr-restore: a lease makes gc keep the objects this restore reads.
            let lease = if may_lease {
                match Held::acquire(storage.clone(), LeaseKind::Restore, &manifest.id.to_string()).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "drilling without a lease: a gc meanwhile may remove objects of a backup deleted meanwhile");
                        None
                    }
                }
            } else {
                None
            };
            let result = tokio::select! {
                r = restore::run(storage.clone(), request, &NoProgress) => r,
                () = abandoned(abandon) => Err(Error::Abandoned.into()),
            };
            if let Some(l) = lease
                && let Err(e) = l.release().await
            {
                tracing::warn!(error = %e, "could not remove the drill's lease; it expires by itself");
            }
            result
        })
        .map_err(at(Step::Restore))?;
    report.bytes_restored = restored.stats.bytes_written;
    report.restore_seconds = Some(t0.elapsed().as_secs_f64());
    tracing::info!(bytes = restored.stats.bytes_written, elapsed_ms = restored.duration_ms, "restore drill: restored");
    check_abandon(abandon, Step::Restore)?;

    // The server's settings and start.
    let port = server::free_port().map_err(|source| {
        at(Step::Start)(Error::Io { what: "find a free port on", path: "127.0.0.1".into(), source })
    })?;
    configure(&root, &data, port, manifest.wal_segment_size).map_err(at(Step::Start))?;
    let mut srv = Server::new(bin, &data, &root, &root.join("server.log"), port);
    srv.start().map_err(at(Step::Start))?;
    let srv = ws.adopt(srv);
    tracing::info!(port, bin = %bin.display(), "restore drill: server started, recovering");

    // Recovery.
    let mut client = wait_for_recovery(srv, drill, abandon, t0, &manifest.id).map_err(at(Step::Recovery))?;
    report.rto_seconds = Some(t0.elapsed().as_secs_f64());
    let (replay, wal_end) = replay_end(&mut client, &data, manifest.wal_segment_size).map_err(at(Step::Recovery))?;
    report.replay_lsn = replay.map(|l| l.to_string());
    report.wal_end = wal_end.map(|s| s.to_string());
    tracing::info!(
        rto_seconds = report.rto_seconds.unwrap_or(0.0),
        wal_end = report.wal_end.as_deref().unwrap_or(""),
        "restore drill: recovery finished"
    );

    // Checks.
    let major = auto_conf::major(manifest.pg_version_num);
    report.amcheck = Some(if let Some(note) = amcheck_skipped(major) {
        tracing::info!(major, "restore drill: pg_amcheck skipped (PostgreSQL 14 or later has it)");
        note
    } else {
        let program = server::find_amcheck(srv.bin(), major).map_err(at(Step::Amcheck))?;
        amcheck(&program, srv, drill, &root, abandon).map_err(at(Step::Amcheck))?;
        if program.parent() == Some(srv.bin()) {
            "passed".to_owned()
        } else {
            format!("passed ({})", program.display())
        }
    });
    check_abandon(abandon, Step::Amcheck)?;
    report.smoke_result = smoke_query(&mut client, &drill.sql, abandon).map_err(at(Step::SmokeQuery))?;
    drop(client);
    Ok(())
}

/// Write the drill's overrides after the restore's recovery settings, an empty `postgresql.conf` if the backup
/// has none (Debian keeps it in /etc), and the drill's `pg_hba.conf` and `pg_ident.conf`.
fn configure(root: &Path, data: &Path, port: u16, wal_segment_size: u64) -> Result<(), Error> {
    use std::io::Write;
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    let text = server::overrides(port, root, wal_segment_size).map_err(|e| Error::Io {
        what: "write the drill's settings into",
        path: data.join("postgresql.auto.conf"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
    })?;
    let auto = data.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&auto).map_err(io("open", &auto))?;
    f.write_all(&text).map_err(io("write", &auto))?;
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "# backupctl drill: the backup holds no postgresql.conf\n")
            .map_err(io("write", &conf))?;
    }
    let hba = root.join(server::HBA_FILE);
    std::fs::write(&hba, server::HBA).map_err(io("write", &hba))?;
    let ident = root.join(server::IDENT_FILE);
    std::fs::write(&ident, "").map_err(io("write", &ident))?;
    Ok(())
}

/// Poll the server until it accepts connections with recovery finished; log progress every 10 s.
fn wait_for_recovery(
    srv: &mut Server,
    drill: &crate::config::DrillConfig,
    abandon: &AtomicBool,
    t0: Instant,
    backup: &BackupId,
) -> Result<postgres::Client, Error> {
    let deadline = Instant::now() + drill.timeout.0;
    let mut client: Option<postgres::Client> = None;
    let mut replayed: Option<String> = None;
    let mut last_note = Instant::now();
    loop {
        if abandon.load(Ordering::Relaxed) {
            return Err(Error::Abandoned);
        }
        if let Some(status) = srv.exited() {
            return Err(srv.exited_error(status));
        }
        if client.is_none() {
            match srv.connect(&drill.user, &drill.database, Duration::from_secs(5)) {
                Ok(c) => client = Some(c),
                // Starting up, or not consistent yet: try again. Anything else the server said is final.
                Err(e) => match e.as_db_error() {
                    Some(db) if *db.code() != postgres::error::SqlState::CANNOT_CONNECT_NOW => {
                        return Err(Error::Query {
                            what: format!("connecting as {} to database {}", drill.user, drill.database),
                            reason: format!("{}: {}", db.severity(), db.message()),
                        });
                    }
                    _ => tracing::debug!(error = %e, "not accepting connections yet"),
                },
            }
        }
        if let Some(c) = client.as_mut() {
            match c.query_one("select pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, '')", &[]) {
                Ok(row) => {
                    let in_recovery: bool = row.try_get(0).unwrap_or(true);
                    let lsn: String = row.try_get(1).unwrap_or_default();
                    if !lsn.is_empty() {
                        replayed = Some(lsn);
                    }
                    if !in_recovery {
                        return client.take().ok_or(Error::Abandoned);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "lost the connection to the drill's server");
                    client = None;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                limit: drill.timeout.to_string(),
                replayed: replayed.unwrap_or_else(|| "nothing".to_owned()),
            });
        }
        if last_note.elapsed() >= Duration::from_secs(10) {
            last_note = Instant::now();
            tracing::info!(
                backup = %backup,
                replayed = replayed.as_deref().unwrap_or("nothing yet"),
                elapsed_ms = t0.elapsed().as_millis() as u64,
                "restore drill: recovery in progress"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where replay ended, and the segment that holds it on the timeline recovery followed (the parent of the
/// timeline promotion created, from its history file in `pg_wal`).
fn replay_end(
    client: &mut postgres::Client,
    data: &Path,
    wal_segment_size: u64,
) -> Result<(Option<Lsn>, Option<SegmentName>), Error> {
    let query =
        |e: postgres::Error| Error::Query { what: "pg_last_wal_replay_lsn()".to_owned(), reason: e.to_string() };
    let row = client
        .query_one(
            "select coalesce(pg_last_wal_replay_lsn()::text, ''), pg_walfile_name(pg_current_wal_insert_lsn())",
            &[],
        )
        .map_err(query)?;
    let lsn: String = row.try_get(0).map_err(query)?;
    let current: String = row.try_get(1).map_err(query)?;
    let Ok(lsn) = lsn.parse::<Lsn>() else { return Ok((None, None)) };
    let Ok(size) = SegmentSize::new(wal_segment_size) else { return Ok((Some(lsn), None)) };
    let tli = current.parse::<SegmentName>().map(|s| s.timeline).unwrap_or(TimelineId(1));
    let history_path = data.join("pg_wal").join(WalFileName::History(tli).to_string());
    let history = std::fs::read_to_string(&history_path).ok().and_then(|t| TimelineHistory::parse(tli, &t).ok());
    Ok((Some(lsn), Some(replayed_segment(lsn, tli, history.as_ref(), size))))
}

/// The segment holding the last byte replayed before `replay_end` (as `pg_walfile_name` counts: an LSN on a
/// segment boundary belongs to the segment before), on the timeline recovery followed: the parent of
/// `current` in its history, or `current` itself without one.
pub fn replayed_segment(
    replay_end: Lsn,
    current: TimelineId,
    history: Option<&TimelineHistory>,
    size: SegmentSize,
) -> SegmentName {
    let tli = history.and_then(|h| h.entries.last()).map_or(current, |e| e.parent);
    SegmentName::containing(tli, Lsn(replay_end.0.saturating_sub(1)), size)
}

/// Why pg_amcheck does not run on a server of `major`, if it does not: it came with PostgreSQL 14.
pub fn amcheck_skipped(major: u32) -> Option<String> {
    (major < 14).then(|| format!("skipped: PostgreSQL {major} has no pg_amcheck (14 or later)"))
}

/// `program --all --install-missing` (pg_amcheck) over the drill's socket; polls `abandon`.
fn amcheck(
    program: &Path,
    srv: &Server,
    drill: &crate::config::DrillConfig,
    root: &Path,
    abandon: &AtomicBool,
) -> Result<(), Error> {
    let program = program.to_path_buf();
    let out_path = root.join("pg_amcheck.out");
    let io = |source| Error::Io { what: "write", path: out_path.clone(), source };
    let out = std::fs::File::create(&out_path).map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    tracing::info!("restore drill: pg_amcheck --all");
    let mut child = std::process::Command::new(&program)
        .arg("--all")
        .arg("--install-missing")
        .arg("--no-password")
        .arg("-h")
        .arg(srv.socket_dir())
        .arg("-p")
        .arg(srv.port().to_string())
        .arg("-U")
        .arg(&drill.user)
        .arg("--maintenance-db")
        .arg(&drill.database)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| Error::Program { program: program.clone(), detail: e.to_string() })?;
    let status = loop {
        if abandon.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Abandoned);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(Error::Program { program, detail: e.to_string() }),
        }
    };
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read(&out_path).unwrap_or_default();
    let lines: Vec<&str> =
        std::str::from_utf8(&text).unwrap_or("").lines().filter(|l| !l.trim().is_empty()).take(3).collect();
    Err(Error::Amcheck { status: status.to_string(), detail: server::one_line(lines.join(" | ").as_bytes()) })
}

/// Run `[drill] sql`; the first column of the first row it returns. Cancels the query (PostgreSQL's cancel
/// request) once `abandon` is set.
fn smoke_query(client: &mut postgres::Client, sql: &str, abandon: &AtomicBool) -> Result<Option<String>, Error> {
    tracing::info!(sql, "restore drill: smoke query");
    let token = client.cancel_token();
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if abandon.load(Ordering::Relaxed) {
                    if let Err(e) = token.cancel_query(postgres::NoTls) {
                        tracing::warn!(error = %e, "could not cancel the smoke query");
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = client.simple_query(sql);
        done.store(true, Ordering::Relaxed);
        r
    });
    if abandon.load(Ordering::Relaxed) {
        return Err(Error::Abandoned);
    }
    let messages = result.map_err(|e| Error::Query {
        what: format!("[drill] sql {:?}", server::one_line(sql.as_bytes())),
        reason: match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => e.to_string(),
        },
    })?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .flatten())
}

/// The drill's temporary directory and the server running in it: stopped and removed on drop.
#[derive(Debug)]
struct Workspace {
    server: Option<Server>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Workspace {
    /// A new directory `backupctl-drill-XXXXXX` in `work_dir`, mode 0700.
    fn create(work_dir: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("backupctl-drill-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(work_dir)
            .map_err(|source| Error::Io { what: "create a directory in", path: work_dir.to_path_buf(), source })?;
        let path = dir.path().to_path_buf();
        Ok(Self { server: None, dir: Some(dir), path })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Keep `server` to stop it before the directory goes.
    fn adopt(&mut self, server: Server) -> &mut Server {
        self.server.insert(server)
    }

    fn stop_server(&mut self) -> Result<(), Error> {
        match self.server.take() {
            Some(mut s) => s.stop(),
            None => Ok(()),
        }
    }

    /// Remove the directory. Tasks of an abandoned restore may still be finishing a file in it: retry for 10 s.
    fn remove(&mut self) -> Result<(), Error> {
        let Some(dir) = self.dir.take() else { return Ok(()) };
        let path = dir.keep();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) if Instant::now() >= deadline => {
                    return Err(Error::Io { what: "remove", path, source });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(e) = self.stop_server() {
            tracing::error!(error = %e, "could not stop the drill's server");
        }
        if let Err(e) = self.remove() {
            tracing::error!(error = %e, "could not remove the drill's directory");
        }
    }
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
    fn replayed_segment_is_on_the_followed_timeline() {
        let size = SegmentSize::DEFAULT;
        // Promotion made timeline 3 from 2: replay ended on 2.
        let h =
            TimelineHistory::parse(TimelineId(3), "1\t0/3000000\tx\n2\t0/5000108\tno recovery target\n").expect("h");
        assert_eq!(
            replayed_segment(Lsn(0x5000108), TimelineId(3), Some(&h), size).to_string(),
            "000000020000000000000005"
        );
        // A boundary belongs to the segment before (pg_walfile_name).
        assert_eq!(replayed_segment(Lsn(0x6000000), TimelineId(2), None, size).to_string(), "000000020000000000000005");
        assert_eq!(replayed_segment(Lsn(0), TimelineId(1), None, size).to_string(), "000000010000000000000000");
    }

    #[test]
    fn amcheck_runs_from_14() {
        assert_eq!(amcheck_skipped(13).as_deref(), Some("skipped: PostgreSQL 13 has no pg_amcheck (14 or later)"));
        assert!([14, 15, 18].iter().all(|m| amcheck_skipped(*m).is_none()));
    }

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
