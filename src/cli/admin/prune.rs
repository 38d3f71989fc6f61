//! `backupctl prune`, `keep` and `unkeep`: retention by policy, and backups exempted from it.

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::cli::human_bytes;
use crate::cli::output::line;
use crate::repository::backup::BackupId;
use crate::retention::expire::{self, KeepUntil};
use crate::retention::plan::{Policy, Reach};

/// `backupctl prune` options.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// The policy, instead of `[retention]` in the configuration: comma-separated `key=value` from keep-last,
    /// daily-retain, weekly-retain, monthly-retain, yearly-retain, full-days and pitr-days, e.g.
    /// "daily-retain=7,weekly-retain=4,monthly-retain=12,yearly-retain=3,pitr-days=14".
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<String>,
    /// Print exactly what would be deleted (backups, WAL ranges per timeline, bytes) and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// `backupctl keep` options.
#[derive(Debug, Clone, Args)]
pub struct KeepArgs {
    /// The backup to keep.
    #[arg(long = "backup-id", value_name = "ID")]
    pub backup_id: BackupId,
    /// Keep it until this date (YYYY-MM-DD, or an RFC 3339 time), then retention decides again.
    #[arg(long, value_name = "DATE", conflicts_with = "forever", required_unless_present = "forever")]
    pub until: Option<String>,
    /// Keep it until `backupctl unkeep`.
    #[arg(long)]
    pub forever: bool,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// `backupctl unkeep` options.
#[derive(Debug, Clone, Args)]
pub struct UnkeepArgs {
    /// The backup whose keep mark is removed.
    #[arg(long = "backup-id", value_name = "ID")]
    pub backup_id: BackupId,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl prune`: the dumps' policy (the `dump_*_retain` keys) on the logical dumps, then the backups'
/// policy on the base backups and WAL, then gc.
pub(super) fn run(ctx: &Ctx, args: &PruneArgs) -> Result<(), Error> {
    let policy = Policy::resolve(&ctx.config.retention, args.policy.as_deref())?;
    if !args.dry_run {
        super::super::check_repository_writer(&ctx.config.repository.url)?;
    }
    let storage = ctx.existing_storage()?;
    // Dumps first, so that the gc at the end of expire reclaims what they held.
    let now = jiff::Timestamp::now();
    let dumps = ctx.rt.block_on(expire::prune_dumps(storage.as_ref(), &policy, now, args.dry_run))?;
    let options = expire::Options { dry_run: args.dry_run, gc_grace: ctx.config.retention.gc_grace.0 };
    let report = ctx.rt.block_on(expire::run(storage.as_ref(), &policy, jiff::Timestamp::now(), options))?;
    if !args.dry_run {
        super::catalog::update_after(&ctx.config, &ctx.rt, "prune");
    }
    if args.json_output {
        let mut value = serde_json::to_value(&report).map_err(|e| Error::Task(e.to_string()))?;
        if let Some(map) = value.as_object_mut() {
            let kept: Vec<serde_json::Value> = dumps
                .keep
                .iter()
                .map(|(id, r)| {
                    let reasons: Vec<String> = r.iter().map(|k| k.reason.to_string()).collect();
                    let mut by_database: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
                    for k in r {
                        for db in &k.databases {
                            by_database.entry(db.as_str()).or_default().push(k.reason.to_string());
                        }
                    }
                    serde_json::json!({ "id": id.to_string(), "reasons": reasons, "reasons_by_database": by_database })
                })
                .collect();
            let deleted: Vec<String> = dumps.delete.iter().map(ToString::to_string).collect();
            map.insert("dump_policy".to_owned(), policy.dumps_text().into());
            map.insert("kept_dumps".to_owned(), kept.into());
            map.insert("deleted_dumps".to_owned(), deleted.into());
        }
        return line(value);
    }
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    line(format_args!("policy (backups and WAL): {}", report.policy))?;
    line(format_args!("policy (dumps): {}", policy.dumps_text()))?;
    for (id, reasons) in &dumps.keep {
        let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
        line(format_args!("keep   dump {id}  {}", reasons.join(", ")))?;
    }
    for id in &dumps.delete {
        line(format_args!("{verb} dump {id}"))?;
    }
    print_report(&report, dumps.delete.len())
}

fn print_report(r: &expire::Report, dumps_deleted: usize) -> Result<(), Error> {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    for k in &r.kept_backups {
        let reasons: Vec<String> = k.reasons.iter().map(ToString::to_string).collect();
        let reach = match k.reach {
            Reach::Onward => format!("restores to any moment from {} on", k.stop_time),
            Reach::StopOnly => format!("restores to its end, {}, only", k.stop_time),
        };
        line(format_args!("keep   {}  {}; {reach}", k.id, reasons.join(", ")))?;
    }
    for d in &r.deleted_backups {
        line(format_args!("{verb} {}  started {}, stopped {}", d.id, d.start_time, d.stop_time))?;
    }
    let w = &r.deleted_wal;
    line(format_args!(
        "WAL: {verb} {} files ({}) in {} ranges{}",
        w.files,
        human_bytes(w.bytes),
        w.ranges.len(),
        r.wal_kept_from.as_deref().map(|s| format!("; all WAL from {s} on is kept")).unwrap_or_default()
    ))?;
    for range in &w.ranges {
        line(format_args!(
            "  timeline {}: {} .. {} ({} files, {})",
            range.timeline,
            range.first,
            range.last,
            range.files,
            human_bytes(range.bytes)
        ))?;
    }
    for n in &r.notes {
        line(format_args!("note: {n}"))?;
    }
    match &r.gc {
        None => line("dry run: nothing was deleted"),
        Some(gc) => {
            line(format_args!(
                "gc: removed {} objects ({}) and {} temporary files ({}){}",
                gc.objects_removed,
                human_bytes(gc.bytes_removed),
                gc.temp_files_removed,
                human_bytes(gc.temp_bytes_removed),
                gc.deferred.as_deref().map(|d| format!("; deferred: {d}")).unwrap_or_default()
            ))?;
            line(format_args!(
                "deleted {} backups, {dumps_deleted} dumps and {} WAL files ({})",
                r.deleted_backups.len(),
                w.files,
                human_bytes(w.bytes)
            ))
        }
    }
}

/// Run `backupctl keep`.
pub(super) fn keep(ctx: &Ctx, args: &KeepArgs) -> Result<(), Error> {
    super::super::check_repository_writer(&ctx.config.repository.url)?;
    let now = jiff::Timestamp::now();
    let until = match &args.until {
        Some(text) => {
            let policy = Policy::resolve(&ctx.config.retention, None)?;
            KeepUntil::Until(expire::parse_until(text, &policy.time_zone, now)?)
        }
        None => KeepUntil::Forever,
    };
    let storage = ctx.existing_storage()?;
    let mark = ctx.rt.block_on(expire::keep(storage.as_ref(), &args.backup_id, until, now))?;
    if args.json_output {
        line(serde_json::json!({ "backup_id": args.backup_id.to_string(), "kept": true, "until": mark.until }))
    } else {
        line(format_args!("backup {} is {}", args.backup_id, mark.describe()))
    }
}

/// Run `backupctl unkeep`.
pub(super) fn unkeep(ctx: &Ctx, args: &UnkeepArgs) -> Result<(), Error> {
    super::super::check_repository_writer(&ctx.config.repository.url)?;
    let storage = ctx.existing_storage()?;
    let old = ctx.rt.block_on(expire::unkeep(storage.as_ref(), &args.backup_id, jiff::Timestamp::now()))?;
    if args.json_output {
        return line(serde_json::json!({
            "backup_id": args.backup_id.to_string(),
            "kept": false,
            "was": old.as_ref().map(crate::retention::keep::KeepMark::describe),
        }));
    }
    match old {
        Some(m) => line(format_args!(
            "backup {} is no longer kept (it was {}); retention decides about it again",
            args.backup_id,
            m.describe()
        )),
        None => line(format_args!("backup {} was not kept; nothing changed", args.backup_id)),
    }
}
