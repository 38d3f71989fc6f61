//! Logical dumps: `pg_dump` of each database (and `pg_dumpall --globals-only`) streamed into the repository as
//! frames in packs, and `dump-restore` through `pg_restore` (docs/design/dumps.md).
//!
//! Invariants:
//! - A dump is listed only once complete: its manifest (`dumps/<id>/manifest`, create-only) is written last,
//!   after every pack and pack index it needs is durable and was checked to exist; a dump killed at any moment,
//!   or whose `pg_dump` failed, leaves no manifest (its packs are reclaimed by gc).
//! - While it runs, a dump holds a `locks/backup-<token>` lease (as base-backup), so gc sweeps nothing meanwhile,
//!   and it waits for a running gc before it lists the frames it may reuse.
//! - `dump-restore` fetches and verifies every byte of what it restores (each frame's size and blake3, then each
//!   stream's size and blake3) into a temporary directory before `pg_restore` or `psql` touches the target.
//! - `pg_dump` is never older than the server ([`tools`]).

mod create;
mod restore;
mod store;
mod temp;
#[cfg(test)]
mod tests;
pub mod tools;
mod verify;
mod write;

use std::path::PathBuf;

pub use restore::{RestoreOutcome, RestoreRequest, restore};
pub use verify::{DumpProblem, DumpResult, DumpVerifyReport, stream_name, verify};
pub use write::{DumpRequest, run};

pub use crate::repository::dump::{
    DatabaseGrant, DatabaseProperties, DumpFile, DumpFormat, DumpId, DumpManifest, DumpedDatabase, FrameRef,
    RoleSettings,
};

/// Every complete dump in the repository, oldest first. Errors: storage errors, and the first manifest that
/// cannot be read or fails its checks (use [`crate::repository::dump::manifests`] to list around damage).
pub async fn list(storage: &dyn crate::storage::Storage) -> Result<Vec<DumpManifest>, crate::Error> {
    let (good, bad) = crate::repository::dump::manifests(storage).await?;
    match bad.into_iter().next() {
        Some((_, e)) => Err(e.into()),
        None => Ok(good),
    }
}

/// Delete dump `id`: its manifest first (it stops being listed at once), then anything else under `dumps/<id>/`.
/// Its frames are reclaimed by gc. With `dry_run`, only lists. Returns the keys (to be) deleted. Errors:
/// [`Error::UnknownDump`] if nothing of it exists, storage errors.
pub async fn delete(
    storage: &dyn crate::storage::Storage,
    id: &DumpId,
    dry_run: bool,
) -> Result<Vec<crate::storage::Key>, crate::Error> {
    let manifest = id.manifest_key();
    let mut keys: Vec<crate::storage::Key> = storage.list(&id.prefix()).await?.into_iter().map(|m| m.key).collect();
    if keys.is_empty() {
        let ids = crate::repository::dump::dump_ids(storage).await?;
        let known = if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        return Err(Error::UnknownDump { id: id.clone(), backend: storage.to_string(), known }.into());
    }
    keys.sort_by_key(|k| (*k != manifest, k.clone()));
    if !dry_run {
        for k in &keys {
            storage.delete(k).await?;
        }
    }
    Ok(keys)
}

/// Why a dump or a dump-restore failed or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No client tool of a major new enough was found.
    #[error("no {tool} of PostgreSQL {need} or newer found ({found})")]
    NoTool {
        /// `pg_dump` or `pg_restore`.
        tool: &'static str,
        /// The oldest acceptable major (the server's, or the dump's pg_dump's).
        need: u32,
        /// What was found where, `; `-separated.
        found: String,
    },
    /// The configured tool is older than needed.
    #[error("{} is PostgreSQL {tool_major}, older than PostgreSQL {need} (the server's or the dump's)", path.display())]
    ToolTooOld {
        /// `pg_dump` or `pg_restore`.
        tool: &'static str,
        /// The tool.
        path: PathBuf,
        /// Its major.
        tool_major: u32,
        /// The oldest acceptable major.
        need: u32,
    },
    /// A tool could not be started, or its output not read.
    #[error("cannot run {}: {source}", path.display())]
    Spawn {
        /// The tool.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A tool exited with a failure.
    #[error("{tool} of {what} failed ({status}): {last_line}")]
    ToolFailed {
        /// `pg_dump`, `pg_dumpall`, `pg_restore` or `psql`.
        tool: &'static str,
        /// What it worked on, e.g. `database "app"`.
        what: String,
        /// Its exit status.
        status: String,
        /// The last line it wrote to stderr.
        last_line: String,
    },
    /// A database asked for is not in the cluster, or cannot be dumped (a template, or connections not allowed).
    #[error("database {database:?} {reason} on {target} (databases a dump takes: {known})")]
    NoSuchDatabase {
        /// The name asked for.
        database: String,
        /// `does not exist`, or `is a template or does not allow connections`.
        reason: &'static str,
        /// host:port.
        target: String,
        /// The databases that can be dumped, comma-separated.
        known: String,
    },
    /// No dump has this id.
    #[error("dump {id} does not exist in {backend} (dumps: {known})")]
    UnknownDump {
        /// The id.
        id: DumpId,
        /// Backend display.
        backend: String,
        /// The ids that exist, or `none`.
        known: String,
    },
    /// The dump does not hold this database (or no globals script).
    #[error("dump {id} holds no {what} (it holds: {known})")]
    NotInDump {
        /// The dump.
        id: DumpId,
        /// `database "x"` or `globals script`.
        what: String,
        /// What it holds.
        known: String,
    },
    /// A table asked for is not in the dump of the database.
    #[error("dump {id}: database {database:?} has no table {table:?}")]
    NoSuchTable {
        /// The dump.
        id: DumpId,
        /// The database.
        database: String,
        /// The table as given to `--table`.
        table: String,
    },
    /// A `--table` without a schema names tables of more than one schema.
    #[error("dump {id}: database {database:?} has a table {table:?} in schemas {schemas}; name one as SCHEMA.TABLE")]
    AmbiguousTable {
        /// The dump.
        id: DumpId,
        /// The database.
        database: String,
        /// The table as given to `--table`.
        table: String,
        /// The schemas holding a table of that name, comma-separated.
        schemas: String,
    },
    /// The restore target does not exist and was not asked to be created.
    #[error("database {database:?} does not exist on {target}; pass --create to create it")]
    NoTarget {
        /// The target database.
        database: String,
        /// host:port.
        target: String,
    },
    /// The restore target holds objects and `--clean` was not given.
    #[error("database {database:?} on {target} is not empty ({objects} objects); pass --clean to restore over it")]
    TargetNotEmpty {
        /// The target database.
        database: String,
        /// host:port.
        target: String,
        /// User objects found (relations, functions, types, schemas, extensions, large objects).
        objects: i64,
    },
    /// A stream's content does not match the manifest (after each frame was verified on its own).
    #[error("dump {id}: {stream} is damaged: {what}")]
    Damaged {
        /// The dump.
        id: DumpId,
        /// Which stream (`database "x"`, its file name).
        stream: String,
        /// What differs.
        what: String,
    },
    /// A frame the dump names is in no pack the repository holds.
    #[error("dump {id}: frame {frame} of {stream} is in no pack of {backend}")]
    MissingFrame {
        /// The dump.
        id: DumpId,
        /// Which stream.
        stream: String,
        /// The frame.
        frame: crate::repository::backup::ObjectId,
        /// Backend display.
        backend: String,
    },
    /// A local temporary file could not be written or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// One sentence of guidance, if any.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Error::NoTool { .. } | Error::ToolTooOld { .. } => {
                "install the PostgreSQL client tools of the server's major (or newer) and set [dump] bin_dir to their directory"
            }
            Error::ToolFailed { .. } => {
                "fix what the tool's last line names (permissions, connection, disk space) and run again"
            }
            Error::NoSuchDatabase { .. } => {
                "name one of the databases listed (as 'psql -l' spells them), or leave --database out to dump every one"
            }
            Error::UnknownDump { .. } | Error::NotInDump { .. } => {
                "run 'backupctl status --type dump' to list the dumps and the databases each holds"
            }
            Error::NoSuchTable { .. } | Error::AmbiguousTable { .. } => {
                "name the table as TABLE or SCHEMA.TABLE, as pg_restore -l lists them"
            }
            Error::NoTarget { .. } => "pass --create, or --target-database NAME for a new database",
            Error::TargetNotEmpty { .. } => {
                "restore into a new database with --target-database NAME, or pass --clean to drop and recreate the dumped objects"
            }
            Error::Damaged { .. } | Error::MissingFrame { .. } => {
                "the target was not touched; run 'backupctl verify --backup-id ID' with this dump's id to list what is damaged, and restore from another dump ('backupctl status --type dump' lists them)"
            }
            Error::Spawn { .. } | Error::Io { .. } => return None,
        })
    }
}
