//! `[dump]`: logical dumps (`backupctl dump`, `backupctl dump-restore`): which client tools, where temporary files
//! go.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[dump]`: logical dumps (docs/operations.md, "Logical dumps"; docs/design/dumps.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DumpConfig {
    /// Directory of the PostgreSQL client tools (`pg_dump`, `pg_dumpall`, `pg_restore`, `psql`); they must not be
    /// older than the server (nor, for a restore, than the `pg_dump` that wrote the dump). Unset: the newest
    /// suitable of the server's own binary directory, `PATH` and `/usr/lib/postgresql/<major>/bin`, choosing the
    /// oldest major that is new enough.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
    /// Directory for temporary files: a directory-format dump (`--jobs` above 1) before it is stored, and what
    /// dump-restore fetches and verifies before `pg_restore` runs (room for the database's dump is needed). Unset:
    /// the system's temporary directory (`$TMPDIR`, else `/tmp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temp_dir: Option<PathBuf>,
}
