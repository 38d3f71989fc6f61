//! `backupctl status`: what the repository holds and what it can restore. A reader: touches neither the spool nor
//! anything in the repository, and needs only read access (docs/operations.md, "Reading status").

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::cli::output::{line, note};
use crate::verify::coverage::TimelineCoverage;
use crate::verify::status::{self, BackupStatus, Retention, Status, rfc3339};

pub(super) mod dumps;

/// `backupctl status` options.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Only the newest N backups.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Only backups of this type: full, incremental, or dump (the logical dumps of `backupctl dump`).
    #[arg(long = "type", value_name = "TYPE", value_parser = dumps::parse_status_type)]
    pub backup_type: Option<dumps::StatusType>,
    /// Print it as one JSON object instead: repository, cluster, wal (segments, first, last, last_archived_at,
    /// other_files, bytes_stored, complete, gaps, timelines [{timeline, first, last, last_archived_at, segments,
    /// partials, backup_files, has_history, bytes_stored, gaps [{first, last, count, next, status, breaks,
    /// cuts}]}]), restorable_window, newest_backup_age_seconds, retention (policy, has_rules, notes, error: the base backups' and WAL's;
    /// dumps {policy, has_rules}: the logical dumps'), backups
    /// (each with manifest_checksum, restorable, missing_wal, reaches, keep, sizes), unusable_backups.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
    /// Answer from the catalog ([catalog]) as of its last sync instead of reading the repository: the same text
    /// and JSON (the backups' age is computed now).
    #[arg(long)]
    pub from_catalog: bool,
}

/// Run `backupctl status`.
pub(super) fn run(ctx: &Ctx, args: &StatusArgs) -> Result<(), Error> {
    if args.from_catalog {
        return super::catalog::status(ctx, args);
    }
    let storage = ctx.existing_storage()?;
    let storage = storage.as_ref();
    let dump_list = dumps::load(ctx, storage)?;
    if args.backup_type == Some(dumps::StatusType::Dump) {
        let mut list = dump_list;
        if let Some(n) = args.last {
            list.drain(..list.len().saturating_sub(n));
        }
        if args.json_output {
            let all: Vec<serde_json::Value> = list.iter().map(dumps::json).collect();
            return line(serde_json::json!({ "repository": storage.to_string(), "dumps": all }));
        }
        line(format_args!("repository: {storage}"))?;
        return dumps::print(&list);
    }
    let clock = crate::verify::clock_from_config(&ctx.config, std::time::SystemTime::now());
    let policy = crate::retention::plan::Policy::resolve(&ctx.config.retention, None)?;
    let mut s = ctx.rt.block_on(status::collect(storage, &clock, &policy))?;
    ctx.rt.block_on(status::unique_format2(storage, &mut s.backups))?;
    for (id, e) in &s.unusable {
        note(format_args!("backupctl: warning: backup {id} is unusable: {e}"));
    }
    for (key, why) in &s.bad_histories {
        note(format_args!("backupctl: warning: timeline history {key} is unreadable ({why}); not followed"));
    }
    s.backups.retain(|b| args.backup_type.is_none_or(|t| t == dumps::StatusType::Backup(b.manifest.backup_type)));
    if let Some(n) = args.last {
        s.backups.drain(..s.backups.len().saturating_sub(n));
    }
    let mut v = json(&s, &storage.to_string());
    if let Some(map) = v.as_object_mut() {
        map.insert("dumps".to_owned(), dump_list.iter().map(dumps::json).collect());
    }
    if args.json_output {
        return line(v);
    }
    super::status_text::print(&v)?;
    if args.backup_type.is_none() {
        dumps::print(&dump_list)?;
    }
    Ok(())
}

/// The status as the catalog stores it: the JSON form without `backups` and `newest_backup_age_seconds`, and
/// each backup's JSON (see [`json`]).
pub(super) fn documents(s: &Status, repository: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut v = json(s, repository);
    let backups = match v.as_object_mut() {
        Some(o) => {
            o.remove("newest_backup_age_seconds");
            match o.remove("backups") {
                Some(serde_json::Value::Array(list)) => list,
                _ => Vec::new(),
            }
        }
        None => Vec::new(),
    };
    (v, backups)
}

/// The JSON form; the keys of earlier versions are kept.
pub(super) fn json(s: &Status, repository: &str) -> serde_json::Value {
    let segments: Vec<_> = s.index.segments().collect();
    let last_written = s.index.last_written_segment();
    let other_files = s.index.objects().count() - segments.len();
    let timelines: Vec<serde_json::Value> = s.coverage.timelines.iter().map(|t| timeline_json(t, s)).collect();
    let gaps: usize = s.coverage.timelines.iter().map(|t| t.gaps.len()).sum();
    let window = s.window.as_ref().map(|w| {
        serde_json::json!({
            "earliest": w.earliest,
            "earliest_backup": w.earliest_backup.to_string(),
            "latest": w.latest,
            "latest_segment": w.latest_segment,
            "latest_backup": w.latest_backup.to_string(),
        })
    });
    let backups: Vec<serde_json::Value> = s.backups.iter().map(backup_json).collect();
    let unusable: Vec<serde_json::Value> =
        s.unusable.iter().map(|(id, e)| serde_json::json!({ "id": id.to_string(), "error": e.to_string() })).collect();
    serde_json::json!({
        "repository": repository,
        "cluster": s.cluster,
        "wal": {
            "segments": segments.len(),
            "first": segments.first().map(|(n, _)| n.to_string()),
            "last": segments.last().map(|(n, _)| n.to_string()),
            "last_archived": last_written.map(|(n, _)| n.to_string()),
            "last_archived_at": last_written.and_then(|(_, o)| o.modified).and_then(rfc3339),
            "other_files": other_files,
            "bytes_stored": s.index.objects().map(|o| o.size).sum::<u64>(),
            "complete": s.is_wal_complete(),
            "gaps": gaps,
            "timelines": timelines,
        },
        "repository_bytes": {
            "data": s.repository_bytes.data,
            "packs": s.repository_bytes.packs,
            "maps": s.repository_bytes.maps,
            "index": s.repository_bytes.index,
            "wal": s.repository_bytes.wal,
            "backups": s.repository_bytes.backups,
        },
        "restorable_window": window,
        "retention": {
            "policy": s.policy.policy,
            "has_rules": s.policy.has_rules,
            "notes": s.policy.notes,
            "error": s.policy.error,
            "dumps": { "policy": s.policy.dumps, "has_rules": s.policy.has_dump_rules },
        },
        "newest_backup_age_seconds": s.newest_backup_age_seconds,
        "backups": backups,
        "unusable_backups": unusable,
    })
}

fn timeline_json(t: &TimelineCoverage, s: &Status) -> serde_json::Value {
    let size = s.index.size;
    let gaps: Vec<serde_json::Value> = t
        .gaps
        .iter()
        .map(|g| {
            serde_json::json!({
                "first": g.run.first_name(size).to_string(),
                "last": g.run.last_name(size).to_string(),
                "count": g.run.len(),
                "next": g.next.to_string(),
                "status": g.status,
                "breaks": g.breaks.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "cuts": g.cuts.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "timeline": t.timeline.0,
        "first": t.first.map(|n| n.to_string()),
        "last": t.last.map(|(n, _)| n.to_string()),
        "last_archived_at": t.last.and_then(|(_, w)| w).and_then(rfc3339),
        "segments": t.segments,
        "partials": t.partials,
        "backup_files": t.backup_files,
        "has_history": t.has_history,
        "bytes_stored": t.bytes_stored,
        "gaps": gaps,
    })
}

fn backup_json(b: &BackupStatus) -> serde_json::Value {
    let mut v = crate::cli::base_backup::summary(&b.manifest);
    let c = &b.coverage;
    let restorable = c.is_restorable() && b.sizes.objects_missing == 0;
    let extra = serde_json::json!({
        // The manifest object's header digest: blake3 of the manifest's JSON as stored ("blake3:<hex>").
        "manifest_checksum": b.manifest_digest.to_string(),
        "restorable": restorable,
        "missing_wal": c.wal.missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "reaches": c.wal.reach.map(|r| serde_json::json!({
            "segment": r.to_string(),
            "timeline": r.timeline.0,
            "archived_at": c.reach_written.and_then(rfc3339),
            "to_stop_only": c.wal.needed.last() == Some(&r),
        })),
        "keep": {
            "kept": b.is_kept,
            "reason": b.keep.as_ref().filter(|_| b.is_kept).map(|k| k.describe()),
            "policy": match &b.retention {
                Some(Retention::Kept { reasons, reach }) => serde_json::json!({
                    "kept": true, "reasons": reasons, "reach_after_prune": reach,
                }),
                Some(Retention::Deleted) => serde_json::json!({ "kept": false, "reasons": [] }),
                None => serde_json::Value::Null,
            },
        },
        // logical, stored, unique, objects, objects_missing (the catalog's sync reads them back: Sizes's serde).
        "sizes": b.sizes,
    });
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
        if !restorable {
            obj.insert("status".to_owned(), serde_json::Value::from("broken"));
        }
    }
    v
}
