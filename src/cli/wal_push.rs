//! `wal-push`: PostgreSQL's `archive_command`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use super::exit::{self, Program};
use crate::Error;
use crate::archive::push::{self, segment::Stored};

/// PostgreSQL's archive_command: archive one WAL file into the repository; exits 0 only once it is durable there.
///
/// Use in postgresql.conf as: archive_command = '/usr/local/bin/wal-push --config /etc/backupctl/backupctl.toml %p'
/// (PostgreSQL runs it as its own OS user; errors go to the server log).
#[derive(Debug, Parser)]
#[command(name = "wal-push", version, after_long_help = exit::WAL_PUSH_HELP)]
pub struct Args {
    /// Configuration file (default: $BACKUPCTL_CONFIG, then /etc/backupctl/backupctl.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
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

/// Run with parsed arguments.
pub fn run(args: &Args) -> Result<(), Error> {
    let (_, config) = super::load_config(args.config.as_deref())?;
    super::init_tracing(Some(&config));
    let rt = super::current_thread_runtime()?;
    rt.block_on(async {
        let ctx = super::archive_context(&config)?;
        let report = push::run(&ctx, &args.wal_path, &super::now_rfc3339()).await?;
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
    })
}
