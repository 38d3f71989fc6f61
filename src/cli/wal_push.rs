//! `wal-push`: PostgreSQL's `archive_command`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Parser;

use super::exit::{self, Program};
use crate::Error;
use crate::archive::push::state::{self, CallOutcome};
use crate::archive::push::{self, segment::Stored};
use crate::config::Config;
use crate::spool::{Lock, Spool};
use crate::state::StateDir;

/// PostgreSQL's archive_command: archive one WAL file into the repository; exits 0 only once it is durable there.
///
/// Use in postgresql.conf as: archive_command = '/usr/bin/wal-push --config /etc/backupctl/backupctl.toml %p'
/// (PostgreSQL runs it as its own OS user; errors go to the server log).
#[derive(Debug, Parser)]
#[command(name = "wal-push", version, after_long_help = exit::WAL_PUSH_HELP)]
pub struct Args {
    /// Configuration file (default: $BACKUPCTL_CONFIG, then /etc/backupctl/backupctl.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Run as the background pusher (started by wal-push itself; not for interactive use): WAL_PATH is then the
    /// cluster's pg_wal directory.
    #[arg(long, hide = true)]
    pub push_worker: bool,
    /// The WAL file to archive: PostgreSQL's %p (a segment, .partial, .history or .backup file in pg_wal).
    #[arg(value_name = "WAL_PATH")]
    pub wal_path: PathBuf,
}

/// Entry point of the `wal-push` binary.
pub fn main() -> ExitCode {
    let args = match super::parse_args::<Args>(Program::WalPush) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let result = run(&args);
    if let Err(e) = &result {
        super::report_error("wal-push", e);
    }
    exit::exit_code(Program::WalPush, result.as_ref().map(|_| ()))
}

/// Run with parsed arguments. Every call, successful or not (once the configuration is loaded), is recorded in
/// `<spool>/state/archive.json` and, with `[metrics] textfile_dir`, in the archive textfile; a failure to record
/// is logged and never changes the exit status, which is about the WAL only.
pub fn run(args: &Args) -> Result<(), Error> {
    let (config_path, config) = super::load_wal_config(args.config.as_deref())?;
    super::init_tracing("wal-push", Some(&config));
    let rt = super::current_thread_runtime()?;
    if args.push_worker {
        return rt.block_on(push_worker(&config, &args.wal_path));
    }
    let result = rt.block_on(push(&config, &config_path, &args.wal_path));
    record(&config, &args.wal_path, &result);
    result
}

/// How long the background pusher waits for new work before it exits.
const WORKER_IDLE: Duration = Duration::from_secs(2);

/// The background pusher: see [`push::worker`]. It has no stderr (PostgreSQL's calls report failures); it logs
/// to `[log]`'s file or journal if configured.
async fn push_worker(config: &Config, pg_wal: &Path) -> Result<(), Error> {
    let ctx = super::archive_context(config)?;
    let report = push::worker::run(&ctx, pg_wal, WORKER_IDLE, &super::now_rfc3339()).await?;
    tracing::debug!(
        pushed = report.pushed,
        had_lock = report.had_lock,
        failed = report.failed.is_some(),
        "push worker done"
    );
    Ok(())
}

async fn push(config: &Config, config_path: &Path, wal_path: &Path) -> Result<(), Error> {
    let ctx = super::archive_context(config)?;
    let report = push::run(&ctx, wal_path, &super::now_rfc3339()).await?;
    if report.requested.is_none() && ctx.settings.push_ahead > 0 {
        // Answered from the spool: keep the look-ahead going in the background if no pusher runs.
        start_worker(config_path, wal_path, &ctx.spool.push_lock_path());
    }
    match &report.requested {
        None => tracing::info!(segment = %report.name, "already archived by look-ahead"),
        Some(p) if p.outcome == Stored::AlreadyPresent => tracing::warn!(
            segment = %report.name, backend = %ctx.repository_id,
            "already archived with the same checksum; nothing written"
        ),
        Some(p) => tracing::info!(
            segment = %report.name, bytes = p.raw_size, stored = p.stored_size, elapsed_ms = p.elapsed_ms,
            ahead = report.ahead.len(), backend = %ctx.repository_id,
            "archived {} as {}", super::human_bytes(p.raw_size), super::human_bytes(p.stored_size)
        ),
    }
    for (name, e) in &report.ahead_failed {
        tracing::warn!(segment = %name, error = %e, "look-ahead push failed; it will be pushed when PostgreSQL asks");
    }
    Ok(())
}

/// Start the detached background pusher on `wal_path`'s directory unless a pusher holds the spool lock. Failures
/// are logged: the next call that finds no record pushes its file itself.
fn start_worker(config_path: &Path, wal_path: &Path, lock_path: &Path) {
    match Lock::try_acquire(lock_path) {
        Ok(Some(lock)) => drop(lock),
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "push worker not started");
            return;
        }
    }
    // The wal-push binary, also when this is `backupctl wal-push` (then the one installed beside it).
    let exe = match std::env::current_exe() {
        Ok(p) if p.file_name().is_some_and(|n| n == "wal-push") => p,
        Ok(p) => p.with_file_name("wal-push"),
        Err(e) => {
            tracing::debug!(error = %e, "push worker not started");
            return;
        }
    };
    if !exe.is_file() {
        tracing::debug!(path = %exe.display(), "push worker not started: no wal-push binary there");
        return;
    }
    // Absolute, for the worker's log lines (PostgreSQL's %p is relative to the data directory).
    let pg_wal = match wal_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let pg_wal = std::path::absolute(&pg_wal).unwrap_or(pg_wal);
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--config").arg(config_path).arg("--push-worker").arg(pg_wal);
    // No stdio: PostgreSQL's log pipe (and a test's captured stderr) must not stay open for the worker's life.
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // Detach into its own session so that signals to the archiver's process group do not hit it.
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no Rust state in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if let Err(e) = cmd.spawn() {
        tracing::warn!(error = %e, "cannot start the background pusher; calls push their own files");
    }
}

/// Record the call in the state and the archive textfile; failures are logged as warnings. Only into a spool
/// that exists and belongs to the effective user: a refused call (root, a missing spool) must not create
/// directories the PostgreSQL OS user then cannot write.
fn record(config: &Config, wal_path: &Path, result: &Result<(), Error>) {
    use crate::storage::fs::owner::{self, Role};
    if let Err(e) = owner::check_owner(&config.spool.path, Role::Spool) {
        tracing::debug!(error = %e, "call not recorded in the state: the spool is not this user's");
        return;
    }
    let name =
        wal_path.file_name().map_or_else(|| wal_path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let error = result.as_ref().err().map(ToString::to_string);
    let outcome = match &error {
        None => CallOutcome::Archived,
        Some(e) => CallOutcome::Failed(e),
    };
    let spool = Spool::at(&config.spool.path, &crate::storage::canonical_url(&config.repository.url));
    let durable: HashSet<String> = spool.push_record_names().unwrap_or_default().into_iter().collect();
    let backlog = state::backlog(wal_path, &durable, result.is_ok().then_some(name.as_str()));
    let now = jiff::Timestamp::now();
    let recorded = state::record_call(&StateDir::new(&config.spool.path), &name, outcome, backlog, now);
    let archive = match recorded {
        Ok(a) => a,
        Err(e) => {
            let e = Error::from(e);
            tracing::warn!(segment = %name, error = %e, hint = e.hint().unwrap_or(""), "cannot record this call in the state");
            return;
        }
    };
    if let Some(dir) = &config.metrics.textfile_dir {
        let text = crate::metrics::archive_textfile(&archive, now);
        if let Err(e) = crate::metrics::write_textfile(dir, crate::metrics::ARCHIVE_TEXTFILE, &text) {
            tracing::warn!(segment = %name, error = %e, "cannot write the archive metrics textfile");
        }
    }
}
