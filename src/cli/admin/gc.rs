//! `backupctl delete` and `backupctl gc`: remove one backup; reclaim the space nothing references.

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::cli::human_bytes;
use crate::cli::output::{line, note};
use crate::dump::DumpId;
use crate::repository::backup::BackupId;
use crate::retention::gc;

/// `backupctl delete` options.
#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// The backup or logical dump to delete (as `backupctl status` lists it, e.g. 20261126-083000F, or
    /// 20261201-083000D for a dump).
    #[arg(long = "backup-id", value_name = "ID", value_parser = parse_backup_or_dump_id)]
    pub backup_id: BackupOrDumpId,
    /// Print what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete it even if it is marked kept (`backupctl keep`).
    #[arg(long)]
    pub force: bool,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// What `backupctl delete --backup-id` (and `verify --backup-id`) names: a base backup or a logical dump (by the
/// id's last letter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupOrDumpId {
    /// A base backup (`...F`, `...I`).
    Backup(BackupId),
    /// A logical dump (`...D`).
    Dump(DumpId),
}

pub(super) fn parse_backup_or_dump_id(s: &str) -> Result<BackupOrDumpId, String> {
    match s.parse::<DumpId>() {
        Ok(d) => Ok(BackupOrDumpId::Dump(d)),
        Err(_) => s
            .parse::<BackupId>()
            .map(BackupOrDumpId::Backup)
            .map_err(|_| format!("{s:?} is not a backup id like 20261126-083000F or a dump id like 20261201-083000D")),
    }
}

/// `backupctl gc` options.
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Print what would be removed (objects and bytes) and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl delete`.
pub(super) fn delete(ctx: &Ctx, args: &DeleteArgs) -> Result<(), Error> {
    if !args.dry_run {
        crate::cli::check_repository_writer(&ctx.config.repository.url)?;
    }
    let storage = ctx.existing_storage()?;
    let id = match &args.backup_id {
        BackupOrDumpId::Backup(id) => id,
        BackupOrDumpId::Dump(id) => return delete_dump(ctx, storage.as_ref(), id, args),
    };
    let now = time::OffsetDateTime::now_utc();
    let plan = ctx.rt.block_on(gc::plan_delete(storage.as_ref(), id, now, args.force))?;
    let deleted = if args.dry_run {
        plan.keys.len() as u64
    } else {
        let n = ctx.rt.block_on(gc::delete_backup(storage.as_ref(), id, now, args.force))?.objects_deleted;
        super::catalog::update_after(&ctx.config, &ctx.rt, "delete");
        n
    };
    if args.json_output {
        return line(serde_json::json!({
            "backup": id.to_string(),
            "repository": storage.to_string(),
            "dry_run": args.dry_run,
            "objects_deleted": deleted,
            "keys": plan.keys.iter().map(|m| m.key.to_string()).collect::<Vec<_>>(),
            "was_unfinished": plan.was_unfinished,
            "was_newest": plan.is_newest,
            "was_only": plan.is_only,
        }));
    }
    let note = if plan.is_only {
        "; it was the only backup: the repository holds none now"
    } else if plan.is_newest {
        "; it was the newest backup"
    } else {
        ""
    };
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    if plan.was_unfinished {
        return line(format_args!(
            "{verb} what an interrupted delete of backup {id} left ({deleted} records under backups/{id}/); run backupctl gc to reclaim its data"
        ));
    }
    line(format_args!(
        "{verb} backup {id} ({deleted} objects under backups/{id}/, the manifest first){note}; run backupctl gc to reclaim its data"
    ))
}

/// `backupctl delete` of a logical dump: its manifest (and anything else under `dumps/<id>/`).
fn delete_dump(ctx: &Ctx, storage: &dyn crate::storage::Storage, id: &DumpId, args: &DeleteArgs) -> Result<(), Error> {
    let keys = ctx.rt.block_on(crate::dump::delete(storage, id, args.dry_run))?;
    if !args.dry_run {
        super::catalog::update_after(&ctx.config, &ctx.rt, "delete");
    }
    if args.json_output {
        return line(serde_json::json!({
            "dump": id.to_string(),
            "repository": storage.to_string(),
            "dry_run": args.dry_run,
            "objects_deleted": keys.len(),
            "keys": keys.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }));
    }
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    line(format_args!(
        "{verb} dump {id} ({} objects under dumps/{id}/, the manifest first); run backupctl gc to reclaim its data",
        keys.len()
    ))
}

/// Run `backupctl gc`.
pub(super) fn run(ctx: &Ctx, args: &GcArgs) -> Result<(), Error> {
    if !args.dry_run {
        crate::cli::check_repository_writer(&ctx.config.repository.url)?;
    }
    let storage = ctx.existing_storage()?;
    let options = gc::GcOptions {
        grace: ctx.config.retention.gc_grace.0,
        dry_run: args.dry_run,
        now: time::OffsetDateTime::now_utc(),
    };
    let report = ctx.rt.block_on(gc::collect(storage.as_ref(), &options))?;
    if let Some(why) = &report.deferred {
        note(format_args!("backupctl: warning: the data sweep was deferred: {why}; run backupctl gc again after it"));
    }
    if args.json_output {
        let mut value = serde_json::to_value(&report).map_err(|e| Error::Task(e.to_string()))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("repository".to_owned(), serde_json::Value::String(storage.to_string()));
        }
        return line(value);
    }
    let verb = if args.dry_run { "would remove" } else { "removed" };
    if args.dry_run {
        for item in &report.removed {
            let what = match item.kind {
                gc::RemovedKind::Object => "unreferenced object",
                gc::RemovedKind::Temp => "temporary file",
                gc::RemovedKind::Record => "record of a deleted backup",
                gc::RemovedKind::Pack => "pack",
                gc::RemovedKind::Index => "pack index",
                gc::RemovedKind::Node => "unreferenced map (block-map node or file map)",
            };
            line(format_args!("{verb} {what} {} ({})", item.name, human_bytes(item.bytes)))?;
        }
    }
    let sweep = match &report.deferred {
        Some(_) => "data sweep deferred".to_owned(),
        None => format!(
            "{} manifests read (backups and dumps); they reference {} format-1 data objects; {} unreferenced data \
             objects younger than {} left",
            report.backups, report.objects_referenced, report.objects_in_grace, ctx.config.retention.gc_grace
        ),
    };
    let p = &report.packs;
    if p.packs > 0 || p.nodes_deleted > 0 {
        // A dry run counts what a gc would delete and compact, and does none of it (nothing is copied or written).
        let (deleted, compacted, work, freed) = if args.dry_run {
            ("to delete", "to compact", String::new(), "would be freed, less the live frames compaction copies")
        } else {
            let work = format!(
                " ({} frames copied, {} packs and {} index objects written, {} read in {} requests, {} written)",
                p.frames_copied,
                p.packs_written,
                p.index_written,
                human_bytes(p.bytes_read),
                p.read_requests,
                human_bytes(p.bytes_written),
            );
            ("deleted", "compacted", work, "freed")
        };
        line(format_args!(
            "gc {storage}: packs: {} {deleted}, {} {compacted}{work}, {} left in grace; {} index objects and {} nodes \
             {deleted}; {} {freed}",
            p.packs_deleted,
            p.packs_compacted,
            p.packs_in_grace,
            p.index_deleted,
            p.nodes_deleted,
            human_bytes(p.bytes_deleted.saturating_sub(p.bytes_written)),
        ))?;
    }
    line(format_args!(
        "gc {storage}: {verb} {} unreferenced objects ({}), {} temporary files ({}), {} records of deleted backups; {sweep}",
        report.objects_removed,
        human_bytes(report.bytes_removed),
        report.temp_files_removed,
        human_bytes(report.temp_bytes_removed),
        report.records_removed,
    ))
}
