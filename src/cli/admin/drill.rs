//! `backupctl drill`: prove that a backup restores, by restoring it and starting PostgreSQL on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::cli::output::line;
use crate::drill::{DrillOptions, DrillReport};
use crate::repository::backup::BackupId;
use crate::restore::target;

/// `backupctl drill` options.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = "Run it as the PostgreSQL OS user (runuser -u postgres -- backupctl drill): PostgreSQL \
refuses to run as root. Exit status: 0 if the drill passed; 1 if a step failed (the error names it; the server is \
stopped and the directory removed either way); 2 for a usage error or when run as root. The result is recorded in \
<spool>/state/drill.json. Ctrl-C or SIGTERM abandon the drill cleanly.")]
pub struct DrillArgs {
    /// Restore this backup (see `backupctl status`) instead of the newest.
    #[arg(long, value_name = "ID")]
    pub backup_id: Option<BackupId>,
    /// Recover to this time instead of the end of the archive: RFC 3339 (2025-10-20T12:30:00Z) or PostgreSQL's
    /// format with a zone (2025-10-20 12:30:00+02). Without --backup-id, the newest backup finished before it.
    #[arg(long = "to", value_name = "TIME", value_parser = target::parse_time)]
    pub to: Option<time::OffsetDateTime>,
    /// Print the result as one JSON object: passed, backup_id, pg_version_num, target, started, finished,
    /// failed_step, error, rto_seconds, restore_seconds, wal_start, wal_end, replay_lsn, bytes_restored, amcheck,
    /// smoke_result, server_bin, work_dir (also when the drill fails).
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl drill`.
pub(super) fn run(ctx: &Ctx, args: &DrillArgs) -> Result<(), Error> {
    // restore_command runs in the data directory: the configuration's path must be absolute.
    let config_path = std::fs::canonicalize(&ctx.path)
        .or_else(|_| std::path::absolute(&ctx.path))
        .map_err(|e| Error::Usage(format!("--config {}: {e}", ctx.path.display())))?;
    let opts = DrillOptions {
        backup_id: args.backup_id.clone(),
        to: args.to,
        restore_command: crate::cli::pitr_restore::restore_command(&config_path),
    };
    let abandon = Arc::new(AtomicBool::new(false));
    let watcher = ctx.rt.spawn(abandon_on_signal(abandon.clone()));
    let started_at = jiff::Timestamp::now();
    let result = crate::drill::run(&ctx.rt, &ctx.config, &opts, &abandon);
    watcher.abort();
    if let Some(condition) = drill_condition(&result) {
        // The alert condition and the catalog's record come from the same outcome: a drill abandoned or refused
        // before it started proves nothing, and is neither.
        let facts = crate::catalog::DrillFacts::of_result(&result);
        let summary = format!("{}: {}", condition.summary, condition.detail);
        let outcome = result.as_ref().map(|_| summary.as_str());
        super::catalog::record_manual_run(ctx, "drill", started_at, outcome, facts);
        super::alert_condition(ctx, condition, false);
    }
    match result {
        Ok(report) => print(&report, args.json_output),
        Err(Error::Drill(d)) => {
            if let crate::drill::Error::Failed { report, .. } = d.as_ref()
                && args.json_output
            {
                print(report, true)?;
            }
            Err(Error::Drill(d))
        }
        Err(e) => Err(e),
    }
}

/// Set `abandon` on SIGINT (Ctrl-C) or SIGTERM; the drill then stops its server and removes its directory.
async fn abandon_on_signal(abandon: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    crate::cli::output::note("backupctl drill: stopping the server and removing the drill's directory");
    abandon.store(true, Ordering::Relaxed);
}

fn print(r: &DrillReport, json: bool) -> Result<(), Error> {
    if json {
        let value = serde_json::to_value(r).map_err(|e| Error::Task(e.to_string()))?;
        return line(value);
    }
    let version = r.pg_version_num.map(|v| format!(" (PostgreSQL {})", v / 10_000)).unwrap_or_default();
    let target = r.target.as_deref().map_or("the end of the archive".to_owned(), |t| format!("time {t}"));
    line(format_args!(
        "drill {}: backup {}{version} restored ({}) and recovered to {target} in {:.1} s (RTO; restore {:.1} s)",
        if r.passed { "passed" } else { "failed" },
        r.backup_id.as_deref().unwrap_or("-"),
        crate::cli::human_bytes(r.bytes_restored),
        r.rto_seconds.unwrap_or(0.0),
        r.restore_seconds.unwrap_or(0.0),
    ))?;
    line(format_args!(
        "WAL replayed: {} .. {} (replay ended at {})",
        r.wal_start.as_deref().unwrap_or("-"),
        r.wal_end.as_deref().unwrap_or("-"),
        r.replay_lsn.as_deref().unwrap_or("-")
    ))?;
    line(format_args!(
        "pg_amcheck: {}; [drill] sql returned {}",
        r.amcheck.as_deref().unwrap_or("-"),
        r.smoke_result.as_deref().unwrap_or("no row")
    ))
}

/// The `drill` alert condition of a drill that ran: firing when a step failed, clear when it passed. None for a
/// drill that was abandoned or refused before it started (a usage error proves nothing about the backups).
fn drill_condition(result: &Result<crate::drill::DrillReport, Error>) -> Option<crate::alert::Condition> {
    let key = crate::alert::DRILL.to_owned();
    match result {
        Ok(r) => Some(crate::alert::Condition {
            key,
            firing: false,
            summary: format!("restore drill of backup {} passed", r.backup_id.as_deref().unwrap_or("?")),
            detail: format!("RTO {:.1} s", r.rto_seconds.unwrap_or_default()),
            reason: String::new(),
        }),
        Err(Error::Drill(d)) if matches!(d.as_ref(), crate::drill::Error::Failed { .. }) && !d.is_abandoned() => {
            Some(crate::alert::Condition {
                key,
                firing: true,
                summary: "restore drill failed".to_owned(),
                detail: d.to_string(),
                reason: String::new(),
            })
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Args, Command};

    #[test]
    fn drill_arguments() {
        let a = Args::try_parse_from([
            "backupctl",
            "drill",
            "--backup-id",
            "20261126-100000F",
            "--to",
            "2026-11-26 10:30:00+00",
        ])
        .expect("parses");
        match a.command {
            Command::Drill(d) => {
                assert_eq!(d.backup_id.map(|b| b.to_string()).as_deref(), Some("20261126-100000F"));
                assert!(d.to.is_some() && !d.json_output);
            }
            other => panic!("{other:?}"),
        }
        assert!(Args::try_parse_from(["backupctl", "drill", "--to", "yesterday"]).is_err());
        assert!(Args::try_parse_from(["backupctl", "drill", "--json"]).is_ok());
    }
}
