//! `backupctl`: the admin CLI. Also runs `wal-push`/`wal-fetch` as subcommands (the same code as the binaries).

use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};

use super::exit::{self, Program};
use super::output::{line, note};
use crate::Error;
use crate::repository::backup::{BackupType, Manifest};
use crate::repository::store;
use crate::storage::{Key, PutMode};

/// Administer a backupctl repository of PostgreSQL WAL and base backups: status, check, config-show; backup and
/// restore run base-backup and pitr-restore, wal-push and wal-fetch the archive and restore commands.
#[derive(Debug, Parser)]
#[command(name = "backupctl", version, after_long_help = exit::OTHER_HELP)]
pub struct Args {
    /// Configuration file (default: $BACKUPCTL_CONFIG, then /etc/backupctl/backupctl.toml).
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Print the results as JSON (as the subcommand's own --json-output; for init, config-show, check, status,
    /// backup and restore).
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Admin subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the effective configuration (after interpolation and defaults) as TOML; secrets are redacted.
    ConfigShow {
        /// Print it as JSON instead: {"path": FILE, "config": {...}}.
        #[arg(long = "json-output", visible_alias = "json")]
        json_output: bool,
    },
    /// Check configuration, spool and repository: write, read back and delete a probe object. Run it as the
    /// user that runs wal-push (the PostgreSQL OS user); it creates nothing but the probe.
    Check {
        /// Print the results as one JSON object on success.
        #[arg(long = "json-output", visible_alias = "json")]
        json_output: bool,
    },
    /// Create a new, empty repository at repository.url (wal-push's first push and base-backup also create one).
    /// Other commands refuse a URL where no repository exists. Run it as the PostgreSQL OS user.
    Init {
        /// Print the result as one JSON object: {"repository": URL, "format": N, "created": true|false}.
        #[arg(long = "json-output", visible_alias = "json")]
        json_output: bool,
    },
    /// Show the repository's cluster, the range of archived WAL (first and last segment, when the last was
    /// archived), and the backups with their descriptions.
    Status {
        /// Only the newest N backups.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// Only backups of this type (full or incremental).
        #[arg(long = "type", value_name = "TYPE", value_parser = super::base_backup::parse_type)]
        backup_type: Option<BackupType>,
        /// Print it as one JSON object instead: repository, cluster, wal (segments, first, last,
        /// last_archived_at, other_files, bytes_stored), backups, unusable_backups.
        #[arg(long = "json-output", visible_alias = "json")]
        json_output: bool,
    },
    /// Take a base backup (same as the base-backup binary).
    Backup {
        /// full or incremental.
        #[arg(value_name = "TYPE", value_parser = super::base_backup::parse_type)]
        backup_type: BackupType,
        /// Options.
        #[command(flatten)]
        args: super::base_backup::BackupArgs,
    },
    /// Restore a backup and set up point-in-time recovery (same as the pitr-restore binary).
    Restore(super::pitr_restore::RestoreArgs),
    /// PostgreSQL's archive_command: archive one WAL file (same as the wal-push binary).
    #[command(after_long_help = exit::WAL_PUSH_HELP)]
    WalPush {
        /// PostgreSQL's %p.
        wal_path: PathBuf,
    },
    /// PostgreSQL's restore_command: fetch one WAL file (same as the wal-fetch binary).
    #[command(after_long_help = exit::WAL_FETCH_HELP)]
    WalFetch {
        /// PostgreSQL's %f.
        name: String,
        /// PostgreSQL's %p.
        dest: PathBuf,
    },
}

/// Entry point of the `backupctl` binary.
pub fn main() -> ExitCode {
    let args = match super::parse_args::<Args>(Program::Other) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let command = match with_json(args.command, args.json_output) {
        Ok(c) => c,
        Err(e) => {
            super::report_error("backupctl", &e);
            return exit::exit_code(Program::Other, Err(&e));
        }
    };
    let (program, result) = match command {
        Command::WalPush { wal_path } => {
            let a = super::wal_push::Args { config: args.config, wal_path };
            (Program::WalPush, super::wal_push::run(&a))
        }
        Command::WalFetch { name, dest } => {
            exit::fatal_on_panic();
            let a = super::wal_fetch::Args {
                config: args.config,
                prefetch_worker: false,
                name: Some(name),
                dest: Some(dest),
            };
            (Program::WalFetch, super::wal_fetch::run(&a))
        }
        Command::Backup { backup_type, args: b } => {
            (Program::Other, super::base_backup::run(args.config.as_deref(), backup_type, &b))
        }
        Command::Restore(r) => (Program::Other, super::pitr_restore::run(args.config.as_deref(), &r)),
        other => (Program::Other, run(args.config, other)),
    };
    match &result {
        Err(e) if program == Program::WalFetch && e.is_not_in_archive() => {}
        Err(e) => super::report_error("backupctl", e),
        Ok(()) => {}
    }
    exit::exit_code(program, result.as_ref().map(|_| ()))
}

/// `command` with `backupctl --json-output <command>` (the flag before the subcommand) applied to the
/// subcommand's own flag. A command that prints no results (wal-push, wal-fetch) refuses it: [`Error::Usage`].
fn with_json(mut command: Command, json: bool) -> Result<Command, Error> {
    if !json {
        return Ok(command);
    }
    match &mut command {
        Command::ConfigShow { json_output }
        | Command::Check { json_output }
        | Command::Init { json_output }
        | Command::Status { json_output, .. } => *json_output = true,
        Command::Backup { args, .. } => args.json = true,
        Command::Restore(r) => r.json = true,
        Command::WalPush { .. } | Command::WalFetch { .. } => {
            return Err(Error::Usage("--json-output: wal-push and wal-fetch print no results".to_owned()));
        }
    }
    Ok(command)
}

fn run(config_flag: Option<PathBuf>, command: Command) -> Result<(), Error> {
    let (path, config) = super::load_config(config_flag.as_deref())?;
    super::init_tracing(Some(&config));
    if let Command::ConfigShow { json_output } = command {
        let shown = redacted(&config);
        if json_output {
            // Paths as text: json! would panic on a path that is not UTF-8.
            let value = serde_json::json!({ "path": path.display().to_string(), "config": shown });
            return line(value);
        }
        let text = toml::to_string_pretty(&shown).map_err(|e| Error::Task(e.to_string()))?;
        return line(format_args!("# {}\n{}", path.display(), text.trim_end()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Task(format!("cannot start runtime: {e}")))?;
    rt.block_on(async {
        let deadline = std::time::Duration::from_secs(config.archive.retry_deadline_seconds);
        let open = || crate::storage::open(&config.repository.url, &config.repository.s3, deadline);
        match command {
            Command::Init { json_output } => {
                super::check_repository_writer(&config.repository.url)?;
                let storage = open().await?;
                let (d, created) = store::init(storage.as_ref(), &super::now_rfc3339()).await?;
                if json_output {
                    line(serde_json::json!({
                        "repository": storage.to_string(),
                        "format": d.format,
                        "created": created,
                    }))
                } else if created {
                    line(format_args!("created repository {storage} (format {})", d.format))
                } else {
                    line(format_args!("repository {storage} already exists (format {}); nothing changed", d.format))
                }
            }
            Command::Check { json_output } => {
                let say = |text: std::fmt::Arguments<'_>| if json_output { Ok(()) } else { line(text) };
                say(format_args!("configuration: {} ok", path.display()))?;
                // Writes only the probe: the spool is checked, not created (wal-push creates it).
                use crate::storage::fs::owner;
                owner::check_writer(&config.spool.path, owner::Role::Spool)?;
                let spool_exists = config.spool.path.is_dir();
                let spool_state = if spool_exists { "ok" } else { "ok (wal-push creates it)" };
                say(format_args!("spool: {} {spool_state}", config.spool.path.display()))?;
                super::check_repository_writer(&config.repository.url)?;
                let storage = open().await?;
                let storage = storage.as_ref();
                store::require_existing(storage).await?;
                let d =
                    store::load::<crate::repository::Descriptor>(storage, &crate::repository::descriptor_key()).await?;
                match &d {
                    Some(d) => say(format_args!("repository: {storage} format {} ok", d.format))?,
                    None => say(format_args!("repository: {storage} ok (made by an earlier version: no descriptor)"))?,
                }
                let key =
                    Key::new(format!("check/probe-{}", std::process::id())).map_err(crate::storage::Error::from)?;
                let body = Bytes::from(format!("backupctl check {}", super::now_rfc3339()));
                storage.put(&key, body.clone(), PutMode::Overwrite).await?;
                let back = storage.get(&key).await?;
                storage.delete(&key).await?;
                if back != body {
                    return Err(Error::Task(format!("{storage}: probe object {key} read back different content")));
                }
                say(format_args!("storage round trip (put, get, delete): ok"))?;
                if json_output {
                    line(serde_json::json!({
                        "ok": true,
                        "configuration": path.display().to_string(),
                        "spool": config.spool.path.display().to_string(),
                        "spool_exists": spool_exists,
                        "repository": storage.to_string(),
                        "format": d.as_ref().map(|d| d.format),
                        "round_trip": "ok",
                    }))?;
                }
                Ok(())
            }
            Command::Status { last, backup_type, json_output } => {
                // A reader: touches neither the spool nor anything in the repository.
                let storage = open().await?;
                let storage = storage.as_ref();
                store::require_existing(storage).await?;
                let (mut backups, bad) = store::manifests(storage).await?;
                for (id, e) in &bad {
                    note(format_args!("backupctl: warning: backup {id} is unusable: {e}"));
                }
                backups.retain(|m| backup_type.is_none_or(|t| m.backup_type == t));
                if let Some(n) = last {
                    backups.drain(..backups.len().saturating_sub(n));
                }
                let cluster = store::cluster_info(storage).await?;
                let wal_objects = storage.list("wal/").await?;
                let wal = WalRange::of(&wal_objects);
                if json_output {
                    let list: Vec<serde_json::Value> = backups.iter().map(super::base_backup::summary).collect();
                    let unusable: Vec<serde_json::Value> = bad
                        .iter()
                        .map(|(id, e)| serde_json::json!({ "id": id.to_string(), "error": e.to_string() }))
                        .collect();
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
                        super::human_bytes(c.wal_segment_size)
                    ))?,
                    None => line("cluster: none yet (no WAL archived)")?,
                }
                line(wal.text())?;
                print_backups(&backups)
            }
            Command::ConfigShow { .. }
            | Command::WalPush { .. }
            | Command::WalFetch { .. }
            | Command::Backup { .. }
            | Command::Restore(_) => Ok(()),
        }
    })
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
            super::human_bytes(self.bytes_stored)
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
            super::human_bytes(m.stats.bytes),
            super::human_bytes(m.stats.bytes_stored),
            m.label
        ))?;
        if let Some(d) = m.description.as_deref().filter(|d| !d.is_empty()) {
            // Free text on its own line, under the id; control characters shown escaped.
            line(format_args!("  {:<17} description: {}", "", d.escape_debug()))?;
        }
    }
    Ok(())
}

fn redacted(config: &crate::config::Config) -> crate::config::Config {
    let mut c = config.clone();
    if let Some(ep) = c.repository.s3.endpoint.as_mut() {
        *ep = crate::config::redact_url(ep);
    }
    if c.repository.s3.sse_kms_key_id.is_some() {
        c.repository.s3.sse_kms_key_id = Some("<redacted>".to_owned());
    }
    if let Some(pg) = c.postgres.as_mut().filter(|pg| pg.password.is_some()) {
        pg.password = Some("<redacted>".to_owned());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 7: `init` takes `--json-output`/`--json`, and `--json-output` may come before the subcommand.
    #[test]
    fn issue_7_json_output_on_init_and_before_the_subcommand() {
        for argv in [&["backupctl", "init", "--json-output"][..], &["backupctl", "init", "--json"]] {
            let a = Args::try_parse_from(argv).expect("init --json-output");
            assert!(matches!(with_json(a.command, a.json_output), Ok(Command::Init { json_output: true })), "{argv:?}");
        }
        for (argv, want) in [
            (&["backupctl", "--json-output", "status"][..], true),
            (&["backupctl", "--json", "status"], true),
            (&["backupctl", "status", "--json"], true),
            (&["backupctl", "--config", "/x", "status"], false),
        ] {
            let a = Args::try_parse_from(argv).expect("parses");
            match with_json(a.command, a.json_output) {
                Ok(Command::Status { json_output, .. }) => assert_eq!(json_output, want, "{argv:?}"),
                other => panic!("{argv:?}: {other:?}"),
            }
        }
        let a = Args::try_parse_from(["backupctl", "--json-output", "config-show"]).expect("parses");
        assert!(matches!(with_json(a.command, a.json_output), Ok(Command::ConfigShow { json_output: true })));
        let a = Args::try_parse_from(["backupctl", "--json-output", "backup", "full"]).expect("parses");
        assert!(matches!(with_json(a.command, a.json_output), Ok(Command::Backup { args, .. }) if args.json));
        // wal-push prints no results: the flag is refused rather than ignored.
        let a = Args::try_parse_from(["backupctl", "--json-output", "wal-push", "/x"]).expect("parses");
        assert!(matches!(with_json(a.command, a.json_output), Err(Error::Usage(_))));
    }
}
