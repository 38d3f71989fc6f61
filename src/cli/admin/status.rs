//! `backupctl status`: what the repository holds and what it can restore. A reader: touches neither the spool nor
//! anything in the repository.

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::cli::output::{line, note};
use crate::repository::backup::{BackupType, Manifest};
use crate::repository::store;

/// `backupctl status` options.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Only the newest N backups.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Only backups of this type (full or incremental).
    #[arg(long = "type", value_name = "TYPE", value_parser = crate::cli::base_backup::parse_type)]
    pub backup_type: Option<BackupType>,
    /// Print it as one JSON object instead: repository, cluster, wal (segments, first, last,
    /// last_archived_at, other_files, bytes_stored), backups, unusable_backups.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl status`.
pub(super) fn run(ctx: &Ctx, args: &StatusArgs) -> Result<(), Error> {
    let storage = ctx.existing_storage()?;
    let storage = storage.as_ref();
    let (mut backups, bad) = ctx.rt.block_on(store::manifests(storage))?;
    for (id, e) in &bad {
        note(format_args!("backupctl: warning: backup {id} is unusable: {e}"));
    }
    backups.retain(|m| args.backup_type.is_none_or(|t| m.backup_type == t));
    if let Some(n) = args.last {
        backups.drain(..backups.len().saturating_sub(n));
    }
    let cluster = ctx.rt.block_on(store::cluster_info(storage))?;
    let wal_objects = ctx.rt.block_on(storage.list("wal/"))?;
    let wal = WalRange::of(&wal_objects);
    if args.json_output {
        let list: Vec<serde_json::Value> = backups.iter().map(crate::cli::base_backup::summary).collect();
        let unusable: Vec<serde_json::Value> =
            bad.iter().map(|(id, e)| serde_json::json!({ "id": id.to_string(), "error": e.to_string() })).collect();
        return line(serde_json::json!({
            "repository": storage.to_string(),
            "cluster": cluster,
            "wal": wal.json(),
            "backups": list,
            "unusable_backups": unusable,
        }));
    }
    line(format_args!("repository: {storage}"))?;
    match cluster {
        Some(c) => line(format_args!(
            "cluster: system identifier {}, PostgreSQL {}, wal segment size {}",
            c.system_identifier,
            c.pg_version,
            crate::cli::human_bytes(c.wal_segment_size)
        ))?,
        None => line("cluster: none yet (no WAL archived)")?,
    }
    line(wal.text())?;
    print_backups(&backups)
}

/// The archived WAL as `status` shows it: segment files (24-hex-digit names) and everything else.
struct WalRange<'a> {
    /// Segment objects in name (WAL) order.
    segments: Vec<&'a crate::storage::ObjectMeta>,
    /// `.history`, `.backup` and `.partial` files.
    other_files: usize,
    /// Bytes stored under `wal/`.
    bytes_stored: u64,
}

impl<'a> WalRange<'a> {
    fn of(objects: &'a [crate::storage::ObjectMeta]) -> Self {
        let mut segments: Vec<&crate::storage::ObjectMeta> =
            objects.iter().filter(|m| m.key.file_name().len() == 24).collect();
        segments.sort_unstable_by(|a, b| a.key.file_name().cmp(b.key.file_name()));
        Self {
            other_files: objects.len() - segments.len(),
            bytes_stored: objects.iter().map(|m| m.size).sum(),
            segments,
        }
    }

    /// When the newest segment was written to the repository, RFC 3339 UTC, if the backend says.
    fn last_archived_at(&self) -> Option<String> {
        let when = self.segments.last()?.modified?;
        time::OffsetDateTime::from(when).format(&time::format_description::well_known::Rfc3339).ok()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "segments": self.segments.len(),
            "first": self.segments.first().map(|m| m.key.file_name()),
            "last": self.segments.last().map(|m| m.key.file_name()),
            "last_archived_at": self.last_archived_at(),
            "other_files": self.other_files,
            "bytes_stored": self.bytes_stored,
        })
    }

    fn text(&self) -> String {
        let (Some(first), Some(last)) = (self.segments.first(), self.segments.last()) else {
            return "wal: none".to_owned();
        };
        let when = self.last_archived_at().map(|t| format!(" (archived {t})")).unwrap_or_default();
        format!(
            "wal: {} segments from {} to {}{when}, {} other files, {} stored",
            self.segments.len(),
            first.key.file_name(),
            last.key.file_name(),
            self.other_files,
            crate::cli::human_bytes(self.bytes_stored)
        )
    }
}

fn print_backups(backups: &[Manifest]) -> Result<(), Error> {
    if backups.is_empty() {
        return line("backups: none");
    }
    line("backups:")?;
    let header = ["id", "type", "start", "stop", "start lsn", "stop lsn", "size", "stored", "label"];
    line(format_args!(
        "  {:<17} {:<11} {:<27} {:<27} {:<11} {:<11} {:>10} {:>10}  {}",
        header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7], header[8]
    ))?;
    for m in backups {
        line(format_args!(
            "  {:<17} {:<11} {:<27} {:<27} {:<11} {:<11} {:>10} {:>10}  {}",
            m.id.to_string(),
            m.backup_type.to_string(),
            m.start_time,
            m.stop_time,
            m.start_lsn.to_string(),
            m.stop_lsn.to_string(),
            crate::cli::human_bytes(m.stats.bytes),
            crate::cli::human_bytes(m.stats.bytes_stored),
            m.label
        ))?;
        if let Some(d) = m.description.as_deref().filter(|d| !d.is_empty()) {
            // Free text on its own line, under the id; control characters shown escaped.
            line(format_args!("  {:<17} description: {}", "", d.escape_debug()))?;
        }
    }
    Ok(())
}
