//! `backupctl`: the admin CLI. Also runs `wal-push`/`wal-fetch` as subcommands (the same code as the binaries).

use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};

use super::exit::{self, Program};
use crate::Error;
use crate::repository::backup::{BackupType, Manifest};
use crate::repository::store;
use crate::storage::{Key, PutMode};

/// Administer a backupctl repository.
#[derive(Debug, Parser)]
#[command(name = "backupctl", version, about, long_about = None)]
pub struct Args {
    /// Configuration file (default: $BACKUPCTL_CONFIG, then /etc/backupctl/backupctl.toml).
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Admin subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the effective configuration (after interpolation and defaults) as TOML.
    ConfigShow,
    /// Check configuration, spool and repository: write, read back and delete a probe object. Run it as the
    /// user that runs wal-push (the PostgreSQL OS user); it creates nothing but the probe.
    Check,
    /// Create a new, empty repository at repository.url (wal-push's first push and base-backup also create one).
    /// Other commands refuse a URL where no repository exists. Run it as the PostgreSQL OS user.
    Init,
    /// Show the repository's cluster, the range of archived WAL, and the backups.
    Status {
        /// Only the newest N backups.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// Only backups of this type (full or incremental).
        #[arg(long = "type", value_name = "TYPE", value_parser = super::base_backup::parse_type)]
        backup_type: Option<BackupType>,
        /// Print the backups as JSON on stdout instead.
        #[arg(long, alias = "json")]
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
    /// Archive one WAL file (same as the wal-push binary).
    WalPush {
        /// PostgreSQL's %p.
        wal_path: PathBuf,
    },
    /// Fetch one WAL file (same as the wal-fetch binary; exit 1 = not in archive, 255 = any other failure).
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
    let (program, result) = match args.command {
        Command::WalPush { wal_path } => {
            let a = super::wal_push::Args { config: args.config, wal_path };
            (Program::WalPush, super::wal_push::run(&a))
        }
        Command::WalFetch { name, dest } => {
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

fn run(config_flag: Option<PathBuf>, command: Command) -> Result<(), Error> {
    let (path, config) = super::load_config(config_flag.as_deref())?;
    super::init_tracing(Some(&config));
    if let Command::ConfigShow = command {
        let text = toml::to_string_pretty(&redacted(&config)).map_err(|e| Error::Task(e.to_string()))?;
        println!("# {}\n{text}", path.display());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Task(format!("cannot start runtime: {e}")))?;
    rt.block_on(async {
        let deadline = std::time::Duration::from_secs(config.archive.retry_deadline_seconds);
        let open = || crate::storage::open(&config.repository.url, &config.repository.s3, deadline);
        match command {
            Command::Init => {
                super::check_repository_writer(&config.repository.url)?;
                let storage = open().await?;
                let (d, created) = store::init(storage.as_ref(), &super::now_rfc3339()).await?;
                if created {
                    println!("created repository {storage} (format {})", d.format);
                } else {
                    println!("repository {storage} already exists (format {}); nothing changed", d.format);
                }
                Ok(())
            }
            Command::Check => {
                println!("configuration: {} ok", path.display());
                // Writes only the probe: the spool is checked, not created (wal-push creates it).
                use crate::storage::fs::owner;
                owner::check_writer(&config.spool.path, owner::Role::Spool)?;
                let spool_state = if config.spool.path.is_dir() { "ok" } else { "ok (wal-push creates it)" };
                println!("spool: {} {spool_state}", config.spool.path.display());
                super::check_repository_writer(&config.repository.url)?;
                let storage = open().await?;
                let storage = storage.as_ref();
                store::require_existing(storage).await?;
                let d =
                    store::load::<crate::repository::Descriptor>(storage, &crate::repository::descriptor_key()).await?;
                match d {
                    Some(d) => println!("repository: {storage} format {} ok", d.format),
                    None => println!("repository: {storage} ok (made by an earlier version: no descriptor)"),
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
                println!("storage round trip (put, get, delete): ok");
                Ok(())
            }
            Command::Status { last, backup_type, json_output } => {
                // A reader: touches neither the spool nor anything in the repository.
                let storage = open().await?;
                let storage = storage.as_ref();
                store::require_existing(storage).await?;
                let (mut backups, bad) = store::manifests(storage).await?;
                for (id, e) in &bad {
                    eprintln!("backupctl: warning: backup {id} is unusable: {e}");
                }
                backups.retain(|m| backup_type.is_none_or(|t| m.backup_type == t));
                if let Some(n) = last {
                    backups.drain(..backups.len().saturating_sub(n));
                }
                if json_output {
                    let list: Vec<serde_json::Value> = backups.iter().map(super::base_backup::summary).collect();
                    println!("{}", serde_json::Value::Array(list));
                    return Ok(());
                }
                println!("repository: {storage}");
                match store::cluster_info(storage).await? {
                    Some(c) => println!(
                        "cluster: system identifier {}, PostgreSQL {}, wal segment size {}",
                        c.system_identifier,
                        c.pg_version,
                        super::human_bytes(c.wal_segment_size)
                    ),
                    None => println!("cluster: none yet (no WAL archived)"),
                }
                let wal = storage.list("wal/").await?;
                let mut segments: Vec<&str> = wal.iter().map(|m| m.key.file_name()).filter(|n| n.len() == 24).collect();
                segments.sort_unstable();
                let bytes: u64 = wal.iter().map(|m| m.size).sum();
                match (segments.first(), segments.last()) {
                    (Some(first), Some(last)) => println!(
                        "wal: {} segments from {first} to {last}, {} other files, {} stored",
                        segments.len(),
                        wal.len() - segments.len(),
                        super::human_bytes(bytes)
                    ),
                    _ => println!("wal: none"),
                }
                print_backups(&backups);
                Ok(())
            }
            Command::ConfigShow
            | Command::WalPush { .. }
            | Command::WalFetch { .. }
            | Command::Backup { .. }
            | Command::Restore(_) => Ok(()),
        }
    })
}

fn print_backups(backups: &[Manifest]) {
    if backups.is_empty() {
        println!("backups: none");
        return;
    }
    println!("backups:");
    let header = ["id", "type", "start", "stop", "start lsn", "stop lsn", "size", "stored", "label"];
    println!(
        "  {:<17} {:<11} {:<27} {:<27} {:<11} {:<11} {:>10} {:>10}  {}",
        header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7], header[8]
    );
    for m in backups {
        println!(
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
        );
    }
}

fn redacted(config: &crate::config::Config) -> crate::config::Config {
    let mut c = config.clone();
    if c.repository.s3.sse_kms_key_id.is_some() {
        c.repository.s3.sse_kms_key_id = Some("<redacted>".to_owned());
    }
    if let Some(pg) = c.postgres.as_mut().filter(|pg| pg.password.is_some()) {
        pg.password = Some("<redacted>".to_owned());
    }
    c
}
