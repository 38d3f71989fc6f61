//! `backupctl alert test`: send a test message through each configured alert channel.

use clap::{Args, Subcommand};

use super::Ctx;
use crate::Error;
use crate::alert::{self, Alerter};
use crate::cli::output::line;

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
    /// Send a test message through each configured channel and print each server's answer (SMTP reply; HTTP
    /// status and body). Exit 1 if any channel failed, 2 if none is configured.
    Test {
        /// Print the results as one JSON object: {"ok": true|false, "channels": [{"channel": "email"|"webhook",
        /// "ok": true|false, "answer": TEXT}]}.
        #[arg(long = "json-output", visible_alias = "json")]
        json_output: bool,
    },
}

/// Run `backupctl alert`.
pub(super) fn run(ctx: &Ctx, args: &AlertArgs) -> Result<(), Error> {
    let AlertCommand::Test { json_output } = args.command;
    let alerter = Alerter::new(&ctx.config);
    if !alerter.is_configured() {
        return Err(alert::Error::NotConfigured { path: ctx.path.clone() }.into());
    }
    let deliveries = ctx.rt.block_on(alerter.test());
    if json_output {
        line(serde_json::json!({
            "ok": deliveries.iter().all(|d| d.ok),
            "channels": deliveries,
        }))?;
    } else {
        for d in &deliveries {
            if d.ok {
                line(format_args!("{}: ok ({})", d.channel, d.answer))?;
            } else {
                line(format_args!("{}: FAILED: {}", d.channel, d.answer))?;
            }
        }
    }
    let failed: Vec<String> =
        deliveries.iter().filter(|d| !d.ok).map(|d| format!("{}: {}", d.channel, d.answer)).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(alert::Error::DeliveryFailed { failed, total: deliveries.len() }.into())
    }
}
