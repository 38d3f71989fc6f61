//! `backupctl status`: what the repository holds and what it can restore. A reader: touches neither the spool nor
//! anything in the repository, and needs only read access (docs/operations.md, "Reading status").

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::cli::human_bytes;
use crate::cli::output::{line, note};
use crate::retention::plan::Reach;
use crate::verify::coverage::{TimelineCoverage, TimelineGap};
use crate::verify::status::{self, BackupStatus, Retention, Status, rfc3339};

mod dumps;

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
    /// cuts}]}]), restorable_window, newest_backup_age_seconds, retention (policy, has_rules, notes, error), backups
    /// (each with restorable, missing_wal, reaches, keep, sizes), unusable_backups.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl status`.
pub(super) fn run(ctx: &Ctx, args: &StatusArgs) -> Result<(), Error> {
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
    if args.json_output {
        let mut value = json(&s, &storage.to_string());
        if let Some(map) = value.as_object_mut() {
            map.insert("dumps".to_owned(), dump_list.iter().map(dumps::json).collect());
        }
        return line(value);
    }
    line(format_args!("repository: {storage}"))?;
    match &s.cluster {
        Some(c) => line(format_args!(
            "cluster: system identifier {}, PostgreSQL {}, wal segment size {}",
            c.system_identifier,
            c.pg_version,
            human_bytes(c.wal_segment_size)
        ))?,
        None => line("cluster: none yet (no WAL archived)")?,
    }
    print_wal(&s)?;
    match &s.window {
        // Without backup ids: --last and --type filter the backups listed, not the window.
        Some(w) => line(format_args!(
            "restorable: from {} (end of the oldest restorable backup) to the end of segment {}{}",
            w.earliest,
            w.latest_segment,
            w.latest.as_deref().map(|t| format!(" (archived {t})")).unwrap_or_default(),
        ))?,
        None => line("restorable: nothing (no backup whose data and WAL are all present)")?,
    }
    if let Some(age) = s.newest_backup_age_seconds {
        line(format_args!("newest backup: finished {} ago", human_age(age)))?;
    }
    match (&s.policy.error, s.policy.has_rules) {
        (Some(e), _) => line(format_args!("retention: {}; no plan: {e}", s.policy.policy))?,
        (None, true) => {
            line(format_args!("retention: {} (what prune would do now is shown per backup)", s.policy.policy))?
        }
        (None, false) => line("retention: no policy in [retention]: prune deletes nothing")?,
    }
    for n in &s.policy.notes {
        line(format_args!("retention: note: {n}"))?;
    }
    let newest = s.index.segments().map(|(n, _)| n).max();
    print_backups(&s.backups, newest)?;
    if args.backup_type.is_none() {
        dumps::print(&dump_list)?;
    }
    Ok(())
}

/// The JSON form; the keys of earlier versions are kept.
fn json(s: &Status, repository: &str) -> serde_json::Value {
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
        "sizes": {
            "logical": b.sizes.logical,
            "stored": b.sizes.stored,
            "unique": b.sizes.unique,
            "objects": b.sizes.objects,
            "objects_missing": b.sizes.objects_missing,
        },
    });
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
        if !restorable {
            obj.insert("status".to_owned(), serde_json::Value::from("broken"));
        }
    }
    v
}

fn print_wal(s: &Status) -> Result<(), Error> {
    let segments: Vec<_> = s.index.segments().collect();
    let (Some(first), Some(last)) = (segments.first(), segments.last()) else { return line("wal: none") };
    let gaps: usize = s.coverage.timelines.iter().map(|t| t.gaps.len()).sum();
    let completeness = match gaps {
        0 => "no gaps".to_owned(),
        1 => "1 GAP".to_owned(),
        n => format!("{n} GAPS"),
    };
    let when = s
        .index
        .last_written_segment()
        .and_then(|(n, o)| Some(format!(", last archived {n} at {}", rfc3339(o.modified?)?)))
        .unwrap_or_default();
    line(format_args!(
        "wal: {} segments from {} to {}, {completeness}{when}, {} other files, {} stored",
        segments.len(),
        first.0,
        last.0,
        s.index.objects().count() - segments.len(),
        human_bytes(s.index.objects().map(|o| o.size).sum())
    ))?;
    let size = s.index.size;
    for t in &s.coverage.timelines {
        let (Some(f), Some((l, w))) = (t.first, t.last) else { continue };
        let at = w.and_then(rfc3339).map(|t| format!(" (archived {t})")).unwrap_or_default();
        line(format_args!(
            "  timeline {}: {f} to {l}{at}, {} segments, {} partial",
            t.timeline.0, t.segments, t.partials
        ))?;
        for g in &t.gaps {
            line(format_args!("    gap: {}", gap_text(g, size)))?;
        }
    }
    Ok(())
}

fn gap_text(g: &TimelineGap, size: crate::wal::SegmentSize) -> String {
    let (a, b) = (g.run.first_name(size), g.run.last_name(size));
    let range = if a == b { a.to_string() } else { format!("{a} to {b} ({} segments)", g.run.len()) };
    let mut out = format!("{range} missing ({}; {} is the next archived)", g.status, g.next);
    if !g.breaks.is_empty() {
        out.push_str(&format!(", breaks backup {}", ids(&g.breaks)));
    }
    if !g.cuts.is_empty() {
        out.push_str(&format!(", cuts short backup {}", ids(&g.cuts)));
    }
    out
}

fn ids(ids: &[crate::repository::backup::BackupId]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The backups, one line each and one line of what it reaches and whether it is kept; `newest` is the newest
/// archived segment (a backup whose stop is in it reaches the end of the archive, not "its stop only").
fn print_backups(backups: &[BackupStatus], newest: Option<crate::wal::SegmentName>) -> Result<(), Error> {
    if backups.is_empty() {
        return line("backups: none");
    }
    line("backups:")?;
    let header = ["id", "type", "start", "stop", "start lsn", "stop lsn", "size", "stored", "unique", "label"];
    line(format_args!(
        "  {:<17} {:<11} {:<27} {:<27} {:<11} {:<11} {:>10} {:>10} {:>10}  {}",
        header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7], header[8], header[9]
    ))?;
    for b in backups {
        let m = &b.manifest;
        line(format_args!(
            "  {:<17} {:<11} {:<27} {:<27} {:<11} {:<11} {:>10} {:>10} {:>10}  {}",
            m.id.to_string(),
            m.backup_type.to_string(),
            m.start_time,
            m.stop_time,
            m.start_lsn.to_string(),
            m.stop_lsn.to_string(),
            human_bytes(b.sizes.logical),
            human_bytes(b.sizes.stored),
            b.sizes.unique.map_or_else(|| "-".to_owned(), human_bytes),
            m.label
        ))?;
        let c = &b.coverage;
        let reach = if !c.wal.missing.is_empty() {
            let missing: Vec<String> = c.wal.missing.iter().map(ToString::to_string).collect();
            format!("BROKEN: WAL {} missing from its start..stop", missing.join(", "))
        } else if b.sizes.objects_missing > 0 {
            format!("BROKEN: {} data objects missing", b.sizes.objects_missing)
        } else {
            match c.wal.reach {
                Some(r) if Some(r) == newest => format!("reaches {r}, the newest archived segment"),
                Some(r) if c.wal.needed.last() == Some(&r) => format!("reaches its stop only ({r})"),
                Some(r) => {
                    let at = c.reach_written.and_then(rfc3339).map(|t| format!(", archived {t}")).unwrap_or_default();
                    format!("reaches {r}{at}")
                }
                None => "reaches nothing".to_owned(),
            }
        };
        let kept = match &b.retention {
            Some(Retention::Kept { reasons, reach }) => {
                let after = match reach {
                    Reach::Onward => "",
                    Reach::StopOnly => " (after prune it reaches its stop only)",
                };
                format!("kept: {}{after}", reasons.join(", "))
            }
            Some(Retention::Deleted) => "the next prune deletes it".to_owned(),
            None => match &b.keep {
                Some(k) if b.is_kept => k.describe(),
                _ => "not kept by a mark".to_owned(),
            },
        };
        line(format_args!("  {:<17} {reach}; {kept}", ""))?;
        if let Some(d) = m.description.as_deref().filter(|d| !d.is_empty()) {
            // Free text on its own line, under the id; control characters shown escaped.
            line(format_args!("  {:<17} description: {}", "", d.escape_debug()))?;
        }
    }
    Ok(())
}
