//! `backupctl schedule [--daemon]`: print each job's next run times, or run the jobs in the foreground.

use clap::Args;

use super::Ctx;
use crate::Error;

/// `backupctl schedule` options.
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// Run the scheduled jobs in the foreground until SIGTERM or SIGINT (for systemd: Type=notify or simple).
    #[arg(long)]
    pub daemon: bool,
    /// Print the schedule as JSON.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl schedule`.
pub(super) fn run(_ctx: &Ctx, _args: &ScheduleArgs) -> Result<(), Error> {
    Err(Error::Task("backupctl schedule is not built yet".to_owned()))
}
