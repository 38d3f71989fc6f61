//! The logical dumps in `backupctl status` (`--type dump`, and the `dumps` key of `--json-output`).

use crate::Error;
use crate::cli::human_bytes;
use crate::cli::output::{line, note};
use crate::repository::dump::{self, DumpManifest};
use crate::storage::Storage;

/// What `--type` takes: a base backup type, or `dump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusType {
    /// Base backups of this type.
    Backup(crate::repository::backup::BackupType),
    /// Logical dumps.
    Dump,
}

/// Parse `full`, `incremental` or `dump`.
pub fn parse_status_type(s: &str) -> Result<StatusType, String> {
    if s == "dump" {
        return Ok(StatusType::Dump);
    }
    crate::cli::base_backup::parse_type(s)
        .map(StatusType::Backup)
        .map_err(|_| format!("{s:?} is not a type: full, incremental or dump"))
}

/// The dumps, oldest first; a damaged manifest is a warning on stderr (the dump is left out).
pub fn load(ctx: &super::super::Ctx, storage: &dyn Storage) -> Result<Vec<DumpManifest>, Error> {
    let (good, bad) = ctx.rt.block_on(dump::manifests(storage))?;
    for (id, e) in &bad {
        note(format_args!("backupctl: warning: dump {id} is unusable: {e}"));
    }
    Ok(good)
}

/// One dump as JSON: what `backupctl dump --json-output` prints, each dump of `status --json-output`, and the
/// document the catalog stores. Keys: id, label, started_at, finished_at, server_version_num, pg_dump_version,
/// databases [{name, format, files, bytes, stored_bytes, duration_ms}], has_globals, globals_bytes,
/// has_role_passwords, bytes, stored_bytes (bytes: raw, as pg_dump wrote them; stored_bytes: what the dump added
/// to the repository).
pub fn json(m: &DumpManifest) -> serde_json::Value {
    serde_json::json!({
        "id": m.id.to_string(),
        "label": m.label,
        "started_at": m.started_at,
        "finished_at": m.finished_at,
        "server_version_num": m.server_version_num,
        "pg_dump_version": m.pg_dump_version,
        "databases": m.databases.iter().map(|d| serde_json::json!({
            "name": d.name,
            "format": d.format.to_string(),
            "files": d.files.len(),
            "bytes": d.raw_bytes,
            "stored_bytes": d.stored_bytes,
            "duration_ms": d.duration_ms,
        })).collect::<Vec<_>>(),
        "has_globals": m.globals.is_some(),
        "globals_bytes": m.globals.as_ref().map_or(0, |g| g.raw_bytes),
        "has_role_passwords": m.has_role_passwords,
        "bytes": m.raw_bytes(),
        "stored_bytes": m.stored_bytes(),
    })
}

/// Print the dumps, one line each, newest last.
pub fn print(dumps: &[DumpManifest]) -> Result<(), Error> {
    print_json(&dumps.iter().map(json).collect::<Vec<_>>())
}

/// Print dumps from their JSON form ([`json`]; also what the catalog stores), one line each, newest last.
pub fn print_json(dumps: &[serde_json::Value]) -> Result<(), Error> {
    if dumps.is_empty() {
        return line("dumps: none");
    }
    line(format_args!("dumps: {}", dumps.len()))?;
    for d in dumps {
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
        let names: Vec<&str> =
            d["databases"].as_array().into_iter().flatten().filter_map(|db| db["name"].as_str()).collect();
        let label = d["label"].as_str().map(|l| format!(", label {l:?}")).unwrap_or_default();
        line(format_args!(
            "  {}  {} to {}  databases {}{}  {} dumped, {} stored{label}",
            text("id"),
            text("started_at"),
            text("finished_at"),
            names.join(", "),
            if d["has_globals"].as_bool() == Some(true) { " and globals" } else { "" },
            human_bytes(d["bytes"].as_u64().unwrap_or_default()),
            human_bytes(d["stored_bytes"].as_u64().unwrap_or_default()),
        ))?;
    }
    Ok(())
}
