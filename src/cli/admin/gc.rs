//! `backupctl delete` and `backupctl gc`: remove one backup; reclaim the space nothing references.

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::repository::backup::BackupId;

/// `backupctl delete` options.
#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// The backup to delete (as `backupctl status` lists it, e.g. 20261126-083000F).
    #[arg(long = "backup-id", value_name = "ID")]
    pub backup_id: BackupId,
    /// Print what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// `backupctl gc` options.
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Print what would be removed (objects and bytes) and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl delete`.
pub(super) fn delete(_ctx: &Ctx, _args: &DeleteArgs) -> Result<(), Error> {
    Err(Error::NotImplemented("backupctl delete"))
}

/// Run `backupctl gc`.
pub(super) fn run(_ctx: &Ctx, _args: &GcArgs) -> Result<(), Error> {
    Err(Error::NotImplemented("backupctl gc"))
}
