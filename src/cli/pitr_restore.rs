//! `pitr-restore`: restore a base backup into a new data directory, set up to recover to a target.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use super::exit::Program;
use crate::Error;
use crate::repository::backup::BackupId;
use crate::repository::lease::{Held, LeaseKind};
use crate::restore::target::{self, Target, TargetAction, TargetTimeline};
use crate::restore::{self, RestoreRequest};

/// Restore a base backup into a new data directory, set up for PostgreSQL's point-in-time recovery to a target;
/// then start PostgreSQL on it (as the PostgreSQL OS user).
///
/// Without --backup-id, picks the newest backup that can reach the target: for --to, the newest that finished
/// before TIME; for --to-lsn, the newest that stopped at or before LSN; for --to-xid and --to-name, whose time is
/// not known, the newest (pass --backup-id when the target is older; on PostgreSQL 13, which would promote past
/// a target it never meets, --backup-id is required when there is a choice). Writes recovery.signal and, in postgresql.auto.conf, restore_command (wal-fetch with this
/// configuration), the recovery_target_* settings, and every other recovery setting at its default (so none left
/// in postgresql.conf applies).
#[derive(Debug, Clone, Parser)]
#[command(name = "pitr-restore", version, after_long_help = super::exit::OTHER_HELP)]
pub struct Args {
    /// Configuration file (default: $BACKUPCTL_CONFIG, then /etc/backupctl/backupctl.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to restore and where.
    #[command(flatten)]
    pub restore: RestoreArgs,
}

/// The restore options (shared with `backupctl restore`).
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The data directory to restore into: new or empty (or an old copy with --delta), no server running in it.
    #[arg(long, value_name = "DIR")]
    pub destination: PathBuf,
    /// Restore this backup (see `backupctl status`) instead of choosing one. A logical dump's id (ending in D) is
    /// refused: those restore with `backupctl dump-restore`.
    #[arg(long, value_name = "ID", value_parser = parse_backup_id)]
    pub backup_id: Option<BackupId>,
    /// Recover to this time: RFC 3339 (2025-10-20T12:30:00Z) or PostgreSQL's format with a zone
    /// (2025-10-20 12:30:00+02).
    #[arg(long = "to", value_name = "TIME", group = "target", value_parser = target::parse_time)]
    pub to_time: Option<time::OffsetDateTime>,
    /// Recover to this WAL location (e.g. 0/5000028).
    #[arg(long, value_name = "LSN", group = "target")]
    pub to_lsn: Option<crate::wal::Lsn>,
    /// Recover to this transaction id: a normal one, 3 or more (0, 1 and 2 are PostgreSQL's invalid, bootstrap
    /// and frozen ids, never committed; src/include/access/transam.h). An epoch-qualified 64-bit id is accepted,
    /// but PostgreSQL compares only its low 32 bits, which must then be 3 or more too.
    #[arg(long, value_name = "XID", group = "target", value_parser = parse_xid)]
    pub to_xid: Option<u64>,
    /// Recover to this restore point (made with pg_create_restore_point).
    #[arg(long, value_name = "NAME", group = "target")]
    pub to_name: Option<String>,
    /// What the server does at the target (ignored without one: it then replays the whole archive and promotes).
    #[arg(long, value_enum, default_value = "promote")]
    pub target_action: TargetAction,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    pub target_exclusive: bool,
    /// Timeline to follow: latest, current (the backup's), or a number.
    #[arg(long, value_name = "TIMELINE", default_value = "latest")]
    pub target_timeline: TargetTimeline,
    /// preserve: keep the backup's archive settings (a replacement of the lost primary archives on, into this
    /// repository, on a new timeline); off: add archive_mode = off (a copy for inspection or testing).
    #[arg(long, value_enum, default_value = "preserve")]
    pub archive_mode: ArchiveMode,
    /// Restore over an existing copy: rewrite only files that differ, remove files the backup does not have.
    #[arg(long)]
    pub delta: bool,
    /// Restore the tablespace at OLDDIR into NEWDIR instead (repeatable), as pg_basebackup's option.
    #[arg(long, value_name = "OLDDIR=NEWDIR", value_parser = parse_mapping)]
    pub tablespace_mapping: Vec<(PathBuf, PathBuf)>,
    /// Print a JSON summary on stdout (and no progress bar).
    #[arg(long = "json-output", visible_alias = "json")]
    pub json: bool,
}

/// What the restored cluster does about archiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchiveMode {
    /// Keep the backup's settings.
    Preserve,
    /// Turn archiving off.
    Off,
}

/// A base backup's id; a logical dump's id is refused with the command that restores it.
fn parse_backup_id(s: &str) -> Result<BackupId, String> {
    if s.parse::<crate::dump::DumpId>().is_ok() {
        return Err(format!(
            "{s} is a logical dump (backupctl dump), not a base backup: restore it with \
             'backupctl dump-restore --backup-id {s} --database DB'"
        ));
    }
    s.parse()
}

fn parse_mapping(s: &str) -> Result<(PathBuf, PathBuf), String> {
    let (old, new) = s.split_once('=').ok_or_else(|| format!("{s:?} is not OLDDIR=NEWDIR"))?;
    if !old.starts_with('/') || !new.starts_with('/') {
        return Err(format!("{s:?}: both directories must be absolute"));
    }
    Ok((PathBuf::from(old), PathBuf::from(new)))
}

/// Entry point of the `pitr-restore` binary.
pub fn main() -> ExitCode {
    let args = match super::parse_args::<Args>(Program::Other) {
        Ok(a) => a,
        Err(code) => return code,
    };
    super::base_backup::finish("pitr-restore", run(args.config.as_deref(), &args.restore))
}

/// Run with parsed arguments.
pub fn run(config: Option<&Path>, args: &RestoreArgs) -> Result<(), Error> {
    let (config_path, config) = super::load_config(config)?;
    super::init_tracing("pitr-restore", Some(&config));
    // restore_command runs in the data directory: the path must be absolute.
    let config_path = std::fs::canonicalize(&config_path)
        .or_else(|_| std::path::absolute(&config_path))
        .map_err(|e| Error::Usage(format!("--config {}: {e}", config_path.display())))?;
    let target = match (&args.to_time, &args.to_lsn, &args.to_xid, &args.to_name) {
        (Some(t), ..) => Target::Time(*t),
        (_, Some(l), ..) => Target::Lsn(*l),
        (_, _, Some(x), _) => Target::Xid(*x),
        (.., Some(n)) => Target::Name(n.clone()),
        _ => Target::Latest,
    };
    let request = RestoreRequest {
        destination: args.destination.clone(),
        backup_id: args.backup_id.clone(),
        target,
        action: args.target_action,
        inclusive: !args.target_exclusive,
        timeline: args.target_timeline,
        is_archive_off: args.archive_mode == ArchiveMode::Off,
        delta: args.delta,
        tablespace_mapping: args.tablespace_mapping.clone(),
        restore_command: restore_command(&config_path),
        parallel: config.restore.parallel,
        now: time::OffsetDateTime::now_utc(),
    };
    let rt = super::multi_thread_runtime()?;
    let progress = super::progress::for_terminal(args.json);
    let report = rt.block_on(async {
        let deadline = Duration::from_secs(config.archive.retry_deadline_seconds);
        let storage = crate::storage::open(&config.repository.url, &config.repository.s3, deadline).await?;
        crate::repository::store::require_existing(storage.as_ref()).await?;
        // A lease makes gc defer its sweep while this restore reads objects (a backup deleted meanwhile keeps its
        // data until the restore ends). Only a user who may write into the repository takes one: a reader's
        // restore creates nothing there (on file://, a lease written by another user would lock wal-push out).
        let lease = if super::check_repository_writer(&config.repository.url).is_ok() {
            let what = args.backup_id.as_ref().map(ToString::to_string).unwrap_or_default();
            match Held::acquire(storage.clone(), LeaseKind::Restore, &what).await {
                Ok(l) => {
                    // A gc compacting a format-2 repository copies live frames, then deletes the old packs:
                    // let one running now finish before the pack indexes are read (one that starts later
                    // defers its deletions while this lease is live).
                    let waiting = |who: &str| tracing::info!(holder = who, "waiting for a running gc to finish");
                    if let Err(e) = l.wait_while_live(&[LeaseKind::Gc], Duration::from_secs(30 * 60), &waiting).await {
                        tracing::warn!(error = %e, "a gc is still running; reading the repository anyway");
                    }
                    Some(l)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "restoring without a lease: a gc running meanwhile may remove objects of a backup deleted meanwhile");
                    None
                }
            }
        } else {
            None
        };
        let result = restore::run(storage, &request, progress.as_ref()).await;
        if let Some(l) = lease
            && let Err(e) = l.release().await
        {
            tracing::warn!(error = %e, "could not remove the restore's lease; it expires by itself");
        }
        result
    })?;
    let s = &report.stats;
    // A summary for people at a terminal; silence on success under cron and systemd.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        super::output::note(format_args!(
            "pitr-restore: restored backup {} into {}: {} files written ({}), {} unchanged, {} removed, {:.1} s; \
         start PostgreSQL on it to recover to {}",
            report.backup.id,
            args.destination.display(),
            s.files_written,
            super::human_bytes(s.bytes_written),
            s.files_unchanged,
            s.removed,
            report.duration_ms as f64 / 1000.0,
            request.target
        ));
    }
    if args.json {
        let json = serde_json::json!({
            "backup": report.backup.id.to_string(),
            "destination": args.destination.display().to_string(),
            "target": request.target.to_string(),
            "files_written": s.files_written,
            "bytes_written": s.bytes_written,
            "files_unchanged": s.files_unchanged,
            "removed": s.removed,
            "objects": s.objects,
            "duration_ms": report.duration_ms,
        });
        super::output::line(json)?;
    }
    Ok(())
}

/// `wal-fetch --config <config> %f %p`, with wal-fetch from beside this program when it is there. Each path is
/// quoted for /bin/sh, then every `%` in it doubled: PostgreSQL replaces `%f`, `%p`, `%r` and `%%` in
/// restore_command before the shell runs it, and from 16 refuses any other `%` escape (src/common/percentrepl.c;
/// BuildRestoreCommand in src/common/archive.c before 16).
pub fn restore_command(config: &Path) -> OsString {
    let wal_fetch = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("wal-fetch")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("wal-fetch"));
    let mut command = percent_escape(&super::shell_quote(wal_fetch.as_os_str().as_bytes()));
    command.extend_from_slice(b" --config ");
    command.extend_from_slice(&percent_escape(&super::shell_quote(config.as_os_str().as_bytes())));
    command.extend_from_slice(b" %f %p");
    OsString::from_vec(command)
}

/// Every `%` doubled, so that PostgreSQL's placeholder replacement in restore_command gives back `s`.
fn percent_escape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        if b == b'%' {
            out.push(b'%');
        }
        out.push(b);
    }
    out
}

/// `--to-xid`: a transaction id PostgreSQL can reach. `recovery_target_xid` is read as a 64-bit number and cast to
/// a 32-bit `TransactionId` (check_recovery_target_xid in src/backend/utils/misc/guc_funcs.c or guc.c), so an
/// epoch-qualified id whose low 32 bits are 0, 1 or 2 would name an id that never commits, and recovery would run
/// to the end of the archive.
fn parse_xid(text: &str) -> Result<u64, String> {
    let xid: u64 = text.parse().map_err(|e| format!("{text:?} is not a transaction id: {e}"))?;
    if xid & 0xFFFF_FFFF < 3 {
        return Err(format!(
            "{xid} is not a normal transaction id: its low 32 bits (all PostgreSQL compares) are {}, and 0, 1 and 2 never commit",
            xid & 0xFFFF_FFFF
        ));
    }
    Ok(xid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_mappings() {
        assert_eq!(crate::cli::shell_quote(b"/usr/bin/wal-fetch"), b"/usr/bin/wal-fetch");
        assert_eq!(crate::cli::shell_quote(b"/a b/it's"), b"'/a b/it'\\''s'");
        assert_eq!(percent_escape(b"/x/100%/%f"), b"/x/100%%/%%f");
        let cmd = restore_command(Path::new("/etc/it's 100%/b.toml"));
        assert!(cmd.as_bytes().ends_with(b" --config '/etc/it'\\''s 100%%/b.toml' %f %p"), "{cmd:?}");
        assert!(parse_mapping("/a=/b").is_ok());
        assert!(parse_mapping("a=/b").is_err());
        assert!(parse_mapping("/a").is_err());
        let args = Args::try_parse_from(["pitr-restore", "--destination", "/d", "--to", "2025-10-20 12:30:00+02"]);
        assert!(args.is_ok(), "{args:?}");
        let both = Args::try_parse_from(["pitr-restore", "--destination", "/d", "--to-lsn", "0/1", "--to-xid", "5"]);
        assert!(both.is_err(), "two targets must be refused");
        let bad_time = Args::try_parse_from(["pitr-restore", "--destination", "/d", "--to", "yesterday"]);
        assert!(bad_time.is_err());
        for (xid, ok) in [
            ("0", false),
            ("2", false),
            ("3", true),
            ("4294967296", false),
            ("4294967298", false),
            ("4294967299", true),
            ("-1", false),
            ("x", false),
        ] {
            let a = Args::try_parse_from(["pitr-restore", "--destination", "/d", "--to-xid", xid]);
            assert_eq!(a.is_ok(), ok, "--to-xid {xid}: {a:?}");
        }
    }

    /// Found in a DBA trial: `pitr-restore --backup-id <dump id>` said only that it is not a backup id.
    #[test]
    fn issue_12_a_dump_id_points_at_dump_restore() {
        for argv in [
            vec!["pitr-restore", "--destination", "/d", "--backup-id", "20261201-083000D"],
            vec!["backupctl", "restore", "--destination", "/d", "--backup-id", "20261201-083000D"],
        ] {
            let e = if argv[0] == "backupctl" {
                crate::cli::admin::Args::try_parse_from(&argv).map(|_| ()).expect_err("refused")
            } else {
                Args::try_parse_from(&argv).map(|_| ()).expect_err("refused")
            };
            let text = e.to_string();
            assert!(text.contains("20261201-083000D is a logical dump"), "{text}");
            assert!(text.contains("backupctl dump-restore --backup-id 20261201-083000D --database DB"), "{text}");
        }
        let ok = Args::try_parse_from(["pitr-restore", "--destination", "/d", "--backup-id", "20261201-083000F"]);
        assert!(ok.is_ok(), "{ok:?}");
    }
}
