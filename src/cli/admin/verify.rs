//! `backupctl verify`: re-read what the backups need and the archived WAL, and say what is missing or corrupt.

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::repository::backup::BackupId;

/// `backupctl verify` options.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Verify only this backup (default: every backup).
    #[arg(long = "backup-id", value_name = "ID")]
    pub backup_id: Option<BackupId>,
    /// Also re-read every archived WAL file and check WAL continuity per timeline.
    #[arg(long)]
    pub wal: bool,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl verify`.
pub(super) fn run(_ctx: &Ctx, _args: &VerifyArgs) -> Result<(), Error> {
    Err(Error::NotImplemented("backupctl verify"))
}
