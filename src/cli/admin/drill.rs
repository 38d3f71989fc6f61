//! `backupctl drill`: prove that a backup restores, by restoring it and starting PostgreSQL on it.

use clap::Args;

use super::Ctx;
use crate::Error;

/// `backupctl drill` options.
#[derive(Debug, Clone, Args)]
pub struct DrillArgs {
    /// Print the result as JSON.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl drill`.
pub(super) fn run(_ctx: &Ctx, _args: &DrillArgs) -> Result<(), Error> {
    Err(Error::Task("backupctl drill is not built yet".to_owned()))
}
