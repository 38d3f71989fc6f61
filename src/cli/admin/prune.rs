//! `backupctl prune`, `keep` and `unkeep`: retention by policy, and backups exempted from it.

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::repository::backup::BackupId;

/// `backupctl prune` options.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// The policy, instead of `[retention]` in the configuration: comma-separated `key=value` from keep-last,
    /// daily-retain, weekly-retain, monthly-retain, yearly-retain, full-days and pitr-days, e.g.
    /// "daily-retain=7,weekly-retain=4,monthly-retain=12,yearly-retain=3,pitr-days=14".
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<String>,
    /// Print exactly what would be deleted (backups, WAL ranges per timeline, bytes) and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// `backupctl keep` options.
#[derive(Debug, Clone, Args)]
pub struct KeepArgs {
    /// The backup to keep.
    #[arg(long = "backup-id", value_name = "ID")]
    pub backup_id: BackupId,
    /// Keep it until this date (YYYY-MM-DD, or an RFC 3339 time), then retention decides again.
    #[arg(long, value_name = "DATE", conflicts_with = "forever", required_unless_present = "forever")]
    pub until: Option<String>,
    /// Keep it until `backupctl unkeep`.
    #[arg(long)]
    pub forever: bool,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// `backupctl unkeep` options.
#[derive(Debug, Clone, Args)]
pub struct UnkeepArgs {
    /// The backup whose keep mark is removed.
    #[arg(long = "backup-id", value_name = "ID")]
    pub backup_id: BackupId,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl prune`.
pub(super) fn run(_ctx: &Ctx, _args: &PruneArgs) -> Result<(), Error> {
    Err(Error::NotImplemented("backupctl prune"))
}

/// Run `backupctl keep`.
pub(super) fn keep(_ctx: &Ctx, _args: &KeepArgs) -> Result<(), Error> {
    Err(Error::NotImplemented("backupctl keep"))
}

/// Run `backupctl unkeep`.
pub(super) fn unkeep(_ctx: &Ctx, _args: &UnkeepArgs) -> Result<(), Error> {
    Err(Error::NotImplemented("backupctl unkeep"))
}
