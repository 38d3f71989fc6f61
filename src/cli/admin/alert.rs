//! `backupctl alert test`: send a test message through each configured alert channel.

use clap::{Args, Subcommand};

use super::Ctx;
use crate::Error;

/// `backupctl alert` options.
#[derive(Debug, Clone, Args)]
pub struct AlertArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AlertCommand,
}

/// `backupctl alert` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AlertCommand {
    /// Send a test message through each configured channel and print each server's answer.
    Test {
        /// Print the results as JSON.
        #[arg(long = "json-output", visible_alias = "json")]
        json_output: bool,
    },
}

/// Run `backupctl alert`.
pub(super) fn run(_ctx: &Ctx, _args: &AlertArgs) -> Result<(), Error> {
    Err(Error::Task("backupctl alert is not built yet".to_owned()))
}
