//! `wal-fetch`: PostgreSQL's `restore_command`.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Parser;

use super::exit::{self, Program};
use crate::Error;
use crate::archive::{ArchiveContext, fetch};
use crate::spool::Lock;
use crate::wal::WalFileName;

/// PostgreSQL's restore_command: fetch one WAL file from the repository, verify it, and write it atomically.
///
/// Use in postgresql.conf (pitr-restore writes it for you) as:
/// restore_command = '/usr/bin/wal-fetch --config /etc/backupctl/backupctl.toml %f %p'
#[derive(Debug, Parser)]
#[command(name = "wal-fetch", version, after_long_help = exit::WAL_FETCH_HELP)]
pub struct Args {
    /// Configuration file (default: $BACKUPCTL_CONFIG, then /etc/backupctl/backupctl.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Run as the background prefetcher (started by wal-fetch itself; not for interactive use). It conflicts with
    /// NAME and DEST, which makes them optional for it only: the usage shows them as required.
    #[arg(long, hide = true, conflicts_with_all = ["name", "dest"])]
    pub prefetch_worker: bool,
    /// The file PostgreSQL asks for: %f (a segment, .partial, .history or .backup file name).
    #[arg(value_name = "NAME", required = true)]
    pub name: Option<String>,
    /// Where to write it: %p (often pg_wal/RECOVERYXLOG).
    #[arg(value_name = "DEST", required = true)]
    pub dest: Option<PathBuf>,
}

/// Entry point of the `wal-fetch` binary.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::clap_code(Program::WalFetch, &e));
        }
    };
    exit::fatal_on_panic();
    let result = run(&args);
    match &result {
        Err(e) if e.is_not_in_archive() => tracing::debug!("{e}"),
        Err(e) => super::report_error("wal-fetch", e),
        Ok(()) => {}
    }
    exit::exit_code(Program::WalFetch, result.as_ref().map(|_| ()))
}

/// Run with parsed arguments.
pub fn run(args: &Args) -> Result<(), Error> {
    let (config_path, config) = super::load_wal_config(args.config.as_deref())?;
    super::init_tracing("wal-fetch", Some(&config));
    if args.prefetch_worker {
        lower_priority();
        return super::current_thread_runtime()?.block_on(async {
            let ctx = super::reader_context(&config)?;
            let n = fetch::prefetch(&ctx, Duration::from_secs(2)).await?;
            tracing::debug!(fetched = n, "prefetcher done");
            Ok(())
        });
    }
    let (Some(name), Some(dest)) = (&args.name, &args.dest) else {
        return Err(Error::Usage("wal-fetch needs NAME and DEST (%f %p)".to_owned()));
    };
    // A reader: any user who can read the repository may fetch. The spool (prefetch queue) is used only by the
    // user who may write into it, so a manual run as another user creates nothing there.
    let ctx = super::reader_context(&config)?;
    let is_spooled = ctx.spool.is_writable();
    let prefetch = is_spooled && ctx.settings.fetch_prefetch > 0 && matches!(name.parse(), Ok(WalFileName::Segment(_)));
    // PostgreSQL waits for every call: a prefetched segment is served without building a runtime at all.
    let served = if is_spooled { fetch::from_spool(&ctx, name, dest)? } else { None };
    if prefetch {
        // Before a repository fetch, so that the prefetcher gets the next segments meanwhile.
        start_prefetcher(&config_path, &ctx.spool.fetch_lock_path());
    }
    let report = match served {
        Some(report) => report,
        None => super::current_thread_runtime()?.block_on(from_repository(&ctx, name, dest))?,
    };
    tracing::info!(
        segment = %report.name, bytes = report.raw_size, elapsed_ms = report.elapsed_ms, source = ?report.source,
        "restored {}", super::human_bytes(report.raw_size)
    );
    Ok(())
}

/// [`fetch::from_repository`], except that "not in the archive" (which ends recovery) is only answered when there
/// is a repository at all: a typo in the URL is [`crate::repository::store::Error::NoRepository`] (exit 255).
async fn from_repository(ctx: &ArchiveContext, name: &str, dest: &Path) -> Result<fetch::FetchReport, Error> {
    match fetch::from_repository(ctx, name, dest).await {
        Err(e) if e.is_not_in_archive() => {
            crate::repository::store::require_existing(ctx.storage().await?.as_ref()).await?;
            Err(e)
        }
        other => other,
    }
}

/// Added to the prefetch worker's nice value.
const PREFETCH_NICE: libc::c_int = 10;

/// Run the prefetch worker below PostgreSQL's priority (before it starts threads, which inherit it): when the
/// cores are busy, the startup process (replay) and the wal-fetch it waits for go first. A prefetch that falls
/// behind costs little: wal-fetch then gets that segment from the repository itself.
fn lower_priority() {
    // SAFETY: nice(2) only changes this process's scheduling priority.
    if unsafe { libc::nice(PREFETCH_NICE) } == -1 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "prefetcher: cannot lower priority");
    }
}

/// Start the detached prefetcher unless one is running (it follows the newest wanted segment by itself).
fn start_prefetcher(config_path: &std::path::Path, lock_path: &std::path::Path) {
    match Lock::try_acquire(lock_path) {
        Ok(Some(lock)) => drop(lock),
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "prefetch disabled for this call");
            return;
        }
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start prefetcher");
            return;
        }
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--config").arg(config_path).arg("--prefetch-worker");
    // No standard stream of the caller's: a detached worker that held restore_command's stderr would keep a
    // caller that reads it to the end (a wrapper script, a test) waiting for the worker's exit. The worker's
    // messages go to the log file and the journal ([log]); a failed prefetch costs only speed, and wal-fetch
    // reports what it cannot fetch itself.
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // Detach into its own session so that signals to PostgreSQL's restore_command process group do not hit it.
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no Rust state in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if let Err(e) = cmd.spawn() {
        tracing::warn!(error = %e, "cannot start prefetcher");
    }
}
