//! `base-backup`: take a base backup of the running cluster into the repository.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use super::exit::{self, Program};
use crate::Error;
use crate::backup::{self, BackupRequest};
use crate::repository::backup::{BackupType, Manifest};

/// Take a base backup of the running PostgreSQL cluster into the repository (run it on the database host, as
/// the PostgreSQL OS user).
///
/// Connects with the [postgres] section of the configuration, runs pg_backup_start/pg_backup_stop on one session,
/// copies the data directory and tablespaces as content-addressed objects, waits until the WAL up to the stop point
/// is archived, then writes the manifest: a backup is listed by `backupctl status` only once it is restorable.
#[derive(Debug, Clone, Parser)]
#[command(name = "base-backup", version, after_long_help = exit::OTHER_HELP)]
pub struct Args {
    /// Configuration file (default: $BACKUPCTL_CONFIG, then /etc/backupctl/backupctl.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to back up and how.
    #[command(flatten)]
    pub backup: BackupArgs,
    /// incremental: store only what changed since the last backup (pages in a format-2 repository, 1 MiB chunks
    /// in format 1); full: read and verify everything and trust no earlier backup's digests (format 2 still
    /// stores only frames the repository lacks; format 1 writes every chunk again). Either restores on its own.
    #[arg(long = "type", value_name = "TYPE", default_value = "incremental", value_parser = parse_type)]
    pub backup_type: BackupType,
}

/// The backup options (shared with `backupctl backup`).
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// Label passed to pg_backup_start and stored in the manifest (default: "backupctl <id>").
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Free text stored in the manifest.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Request an immediate checkpoint instead of waiting for a spread one.
    #[arg(long)]
    pub fast: bool,
    /// Read the data directory at most this fast, to spare a busy primary: kilobytes per second, or with a suffix
    /// k or M (as pg_basebackup's --max-rate), e.g. 500k, 40M.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_rate: Option<u64>,
    /// When the cluster has data checksums, fail (no backup recorded, exit 1) if a page fails its checksum, naming
    /// the files, instead of recording the pages in the backup with a warning ([backup] fail_on_checksum_error).
    #[arg(long)]
    pub fail_on_checksum_error: bool,
    /// Print a JSON summary on stdout (and no progress bar).
    #[arg(long = "json-output", visible_alias = "json")]
    pub json: bool,
}

/// Bytes per second from `RATE`: kilobytes by default, or with a `k`/`M` suffix (pg_basebackup's syntax).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a rate such as 500k or 40M"))?;
    let mult = match unit.trim() {
        "" | "k" | "K" | "kB" => 1024,
        "M" | "MB" => 1024 * 1024,
        _ => return Err(format!("{s:?}: the unit must be k or M")),
    };
    if n == 0 {
        return Err("--max-rate must be more than 0".to_owned());
    }
    Ok(n.saturating_mul(mult))
}

/// Parse `full` or `incremental`.
pub fn parse_type(s: &str) -> Result<BackupType, String> {
    s.parse()
}

/// Entry point of the `base-backup` binary.
pub fn main() -> ExitCode {
    let args = match super::parse_args::<Args>(Program::Other) {
        Ok(a) => a,
        Err(code) => return code,
    };
    finish("base-backup", run(args.config.as_deref(), args.backup_type, &args.backup))
}

/// Print the error (if any) and map it to an exit code.
pub fn finish(program: &str, result: Result<(), Error>) -> ExitCode {
    if let Err(e) = &result {
        super::report_error(program, e);
    }
    exit::exit_code(Program::Other, result.as_ref().map(|_| ()))
}

/// Run with parsed arguments.
pub fn run(config: Option<&std::path::Path>, backup_type: BackupType, args: &BackupArgs) -> Result<(), Error> {
    let (_, mut config) = super::load_config(config)?;
    config.backup.fail_on_checksum_error |= args.fail_on_checksum_error;
    super::init_tracing("base-backup", Some(&config));
    let rt = super::multi_thread_runtime()?;
    let progress = super::progress::for_terminal(args.json);
    let request = BackupRequest {
        label: args.label.clone(),
        description: args.description.clone(),
        backup_type,
        fast: args.fast,
        max_rate: args.max_rate,
    };
    let manifest = backup::run(&rt, &config, &request, progress.as_ref())?;
    super::admin::catalog::update_after(&config, &rt, "base-backup");
    let s = &manifest.stats;
    // A summary for people at a terminal; silence on success under cron and systemd.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        super::output::note(format_args!(
            "base-backup: backup {} complete: {} files, {} read, {} added to the repository ({} rewritten), {} reused, {:.1} s{}",
            manifest.id,
            s.files,
            super::human_bytes(s.bytes),
            super::human_bytes(s.bytes_new),
            super::human_bytes(s.bytes_rewritten),
            super::human_bytes(s.bytes_reused),
            s.duration_ms as f64 / 1000.0,
            match &manifest.page_checksums {
                Some(p) if p.corrupt.is_empty() => format!(", {} pages verified", p.pages_verified),
                Some(p) => format!(", {} corrupt pages", p.corrupt.iter().map(|c| c.blocks.len()).sum::<usize>()),
                None => String::new(),
            }
        ));
    }
    if args.json {
        super::output::line(summary(&manifest))?;
    }
    Ok(())
}

/// The JSON summary of a backup (also used by `backupctl status --json-output`).
pub fn summary(m: &Manifest) -> serde_json::Value {
    serde_json::json!({
        "id": m.id.to_string(),
        "type": m.backup_type.to_string(),
        "label": m.label,
        "description": m.description,
        "start_time": m.start_time,
        "stop_time": m.stop_time,
        "start_lsn": m.start_lsn.to_string(),
        "stop_lsn": m.stop_lsn.to_string(),
        "timeline": m.timeline,
        "start_wal": m.start_wal,
        "stop_wal": m.stop_wal,
        "pg_version_num": m.pg_version_num,
        "files": m.stats.files,
        "bytes": m.stats.bytes,
        "bytes_written": m.stats.bytes_written,
        "bytes_stored": m.stats.bytes_stored,
        "bytes_reused": m.stats.bytes_reused,
        // Stored bytes the repository's data grew by, and stored bytes written again with the same content.
        "bytes_new": m.stats.bytes_new,
        "bytes_rewritten": m.stats.bytes_rewritten,
        "objects_written": m.stats.objects_written,
        "duration_ms": m.stats.duration_ms,
        // "verified" or "off" (the cluster has no data checksums, or the backup predates verification).
        "page_checksums": if m.page_checksums.is_some() { "verified" } else { "off" },
        "pages_verified": m.page_checksums.as_ref().map(|p| p.pages_verified),
        "corrupt_pages": m.corrupt_pages(),
        "status": "ok",
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates() {
        assert_eq!(super::parse_rate("500"), Ok(500 * 1024));
        assert_eq!(super::parse_rate("500k"), Ok(500 * 1024));
        assert_eq!(super::parse_rate("40M"), Ok(40 << 20));
        for bad in ["", "0", "fast", "10G", "-5"] {
            assert!(super::parse_rate(bad).is_err(), "{bad:?}");
        }
    }
}
