//! `backupctl verify`: re-read what the backups need and the archived WAL, and say what is missing or corrupt.

use clap::Args;

use super::Ctx;
use super::gc::{BackupOrDumpId, parse_backup_or_dump_id};
use crate::Error;
use crate::cli::output::line;
use crate::verify::{self, Options, Report};

/// `backupctl verify` options.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = "Exit status: 0 if nothing is missing or corrupt, no backup is broken and no WAL gap is \
lost; 1 otherwise (the report names each problem and the backups it breaks); 2 for a usage error.")]
pub struct VerifyArgs {
    /// Verify only this backup, or only this logical dump (an id ending in D, as `backupctl status --type dump`
    /// lists it; as `backupctl delete --backup-id` takes it). Default: every backup and every dump.
    #[arg(long = "backup-id", value_name = "ID", value_parser = parse_backup_or_dump_id)]
    pub backup_id: Option<BackupOrDumpId>,
    /// Re-read every archived WAL file (segments, .partial, .backup and .history). Without it, only the WAL
    /// segments from each verified backup's start to its stop (and its timeline's history file) are read; WAL
    /// continuity is checked from the listing either way.
    #[arg(long)]
    pub wal: bool,
    /// Objects read and checked at once (default: [restore] parallel).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: Option<u16>,
    /// Print the result as one JSON object: repository, ok, objects_checked, wal_objects_checked, bytes_read,
    /// all_wal, backups [{id, status, objects, wal_segments, reaches}], problems [{kind, what, reason, status,
    /// breaks, cuts, dump {id, database, stream}}], dumps {dumps, frames_checked, bytes_read, broken, results
    /// [{id, status, databases, frames}]} (absent when one base backup is verified).
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl verify`, and report the `verify` alert condition when alerts are configured: firing on any
/// failure but a mistyped command (an unknown --backup-id), missing credentials and a wrong user included, since
/// a verify that cannot run proves nothing; resolved only by a verify of every backup (not one with --backup-id).
///
/// With a `[catalog]`, the run is recorded there (`job_runs` and `checks`, started by hand).
pub(super) fn run(ctx: &Ctx, args: &VerifyArgs) -> Result<(), Error> {
    let started_at = jiff::Timestamp::now();
    let result = verify(ctx, args);
    super::catalog::record_manual_run(ctx, "verify", started_at, result.as_ref().map(String::as_str), None);
    let result = result.map(drop);
    let condition = match &result {
        Err(Error::Usage(_) | Error::Config(_)) => None,
        Err(Error::Dump(d)) if matches!(**d, crate::dump::Error::UnknownDump { .. }) => None,
        Err(e) => Some(crate::alert::Condition {
            key: crate::alert::VERIFY.to_owned(),
            firing: true,
            summary: format!("backupctl verify failed: {}", verify_summary(e)),
            detail: e.to_string(),
            reason: String::new(),
        }),
        Ok(()) if args.backup_id.is_none() => Some(crate::alert::Condition {
            key: crate::alert::VERIFY.to_owned(),
            firing: false,
            summary: "backupctl verify passed".to_owned(),
            detail: "backupctl verify: nothing missing, corrupt or lost".to_owned(),
            reason: String::new(),
        }),
        Ok(()) => None,
    };
    if let Some(c) = condition {
        super::alert_condition(ctx, c, false);
    }
    result
}

/// A short summary of a verify failure for a subject line.
fn verify_summary(e: &Error) -> String {
    match e {
        Error::VerifyFailed { problems, broken, broken_dumps: 0, .. } => {
            format!("{problems} problem(s), {broken} broken backup(s)")
        }
        Error::VerifyFailed { problems, broken, broken_dumps, .. } => {
            format!("{problems} problem(s), {broken} broken backup(s), {broken_dumps} broken dump(s)")
        }
        other => crate::alert::message::one_line(&other.to_string()),
    }
}

/// Verify and print; returns the one-line summary.
fn verify(ctx: &Ctx, args: &VerifyArgs) -> Result<String, Error> {
    let storage = ctx.existing_storage()?;
    let (backup_id, dump_id) = match &args.backup_id {
        None => (None, None),
        Some(BackupOrDumpId::Backup(id)) => (Some(id.clone()), None),
        Some(BackupOrDumpId::Dump(id)) => (None, Some(id)),
    };
    let mut report = match dump_id {
        // One logical dump: only its frames.
        Some(_) => Report::empty(storage.to_string()),
        None => {
            let options = Options {
                backup_id: backup_id.clone(),
                wal: args.wal,
                parallel: args.parallel.map_or(ctx.config.restore.parallel, usize::from),
                clock: verify::clock_from_config(&ctx.config, std::time::SystemTime::now()),
            };
            ctx.rt.block_on(verify::run(storage.clone(), &options))?
        }
    };
    // Logical dumps (issue 12): every frame read back, unless one base backup was asked for.
    if backup_id.is_none() {
        ctx.rt.block_on(verify::dumps::add(storage.as_ref(), dump_id, &mut report))?;
    }
    if args.json_output {
        line(serde_json::to_value(&report).map_err(|e| Error::Task(e.to_string()))?)?;
    } else {
        print_text(&report, dump_id.is_none())?;
    }
    if let Some(e) = report.failure() {
        return Err(e);
    }
    let what = match (&args.backup_id, &report.dumps) {
        (Some(BackupOrDumpId::Backup(id)), _) => format!("verified backup {id}"),
        (Some(BackupOrDumpId::Dump(id)), _) => format!("verified dump {id}"),
        (None, d) => {
            format!("verified {} backups and {} dumps", report.backups.len(), d.as_ref().map_or(0, |d| d.dumps))
        }
    };
    Ok(format!(
        "{what}: {} data objects and {} WAL files, {} read",
        report.objects_checked,
        report.wal_objects_checked,
        crate::cli::human_bytes(report.bytes_read)
    ))
}

/// The report as text: the backups' part unless only a dump was verified (`with_backups` false), then the dumps,
/// then every problem.
fn print_text(r: &Report, with_backups: bool) -> Result<(), Error> {
    if with_backups {
        let wal = if r.all_wal { "every archived WAL file" } else { "the WAL each backup needs from start to stop" };
        line(format_args!(
            "verified {}: {} data objects and {} WAL files ({wal}), {} read",
            r.repository,
            r.objects_checked,
            r.wal_objects_checked,
            crate::cli::human_bytes(r.bytes_read)
        ))?;
    }
    for b in &r.backups {
        let reach = b.reaches.as_deref().map(|s| format!(", reaches WAL up to {s}")).unwrap_or_default();
        line(format_args!(
            "backup {}: {} ({} objects, {} WAL segments{reach})",
            b.id, b.status, b.objects, b.wal_segments
        ))?;
    }
    if let Some(d) = r.dumps.as_ref().filter(|d| d.dumps > 0 || !d.results.is_empty()) {
        line(format_args!(
            "verified {} dump(s) in {}: {} frames, {} read",
            d.dumps,
            r.repository,
            d.frames_checked,
            crate::cli::human_bytes(d.bytes_read)
        ))?;
        for x in &d.results {
            line(format_args!(
                "dump {}: {} (databases {}, {} frames)",
                x.id,
                x.status,
                x.databases.join(", "),
                x.frames
            ))?;
        }
    }
    for p in &r.problems {
        let status = p.status.map(|s| format!(" ({s})")).unwrap_or_default();
        let breaks =
            if p.breaks.is_empty() { String::new() } else { format!("; breaks backup {}", p.breaks.join(", ")) };
        let cuts = if p.cuts.is_empty() { String::new() } else { format!("; cuts short backup {}", p.cuts.join(", ")) };
        let dump = match &p.dump {
            Some(d) => match &d.database {
                Some(db) => format!("; breaks dump {} (database {db:?}, {})", d.id, d.stream),
                None => format!("; breaks dump {} ({})", d.id, d.stream),
            },
            None => String::new(),
        };
        line(format_args!("{} {}{status}: {}{breaks}{cuts}{dump}", p.kind, p.what, p.reason))?;
    }
    if r.ok {
        let pending = r.problems.iter().filter(|p| p.status.is_some() && !p.is_failure()).count();
        let note =
            if pending == 0 { String::new() } else { format!("; {pending} gap(s) pending or expired, see above") };
        line(format_args!("ok: nothing missing, corrupt or lost{note}"))?;
    }
    Ok(())
}
