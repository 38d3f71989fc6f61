//! `backupctl`: the admin CLI. Also runs `wal-push`/`wal-fetch` as subcommands (the same code as the binaries).

use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};

use super::exit::{self, Program};
use crate::Error;
use crate::repository::{self, store};
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
    /// Check configuration, spool and repository: write, read back and delete a probe object.
    Check,
    /// Show the repository's cluster and the range of archived WAL.
    Status,
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
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::clap_code(Program::Other, &e));
        }
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
        let ctx = super::archive_context(&config)?;
        let storage = ctx.storage().await?.as_ref();
        match command {
            Command::Check => {
                println!("configuration: {} ok", path.display());
                println!("spool: {} ok", ctx.spool.root().display());
                let d = store::ensure_descriptor(storage, &super::now_rfc3339()).await?;
                println!("repository: {storage} format {} ok", d.format);
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
            Command::Status => {
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
                let _ = repository::descriptor_key();
                Ok(())
            }
            Command::ConfigShow | Command::WalPush { .. } | Command::WalFetch { .. } => Ok(()),
        }
    })
}

fn redacted(config: &crate::config::Config) -> crate::config::Config {
    let mut c = config.clone();
    if c.repository.s3.sse_kms_key_id.is_some() {
        c.repository.s3.sse_kms_key_id = Some("<redacted>".to_owned());
    }
    c
}
