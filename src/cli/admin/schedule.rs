//! `backupctl schedule [--daemon]`: print each job's next run times, or run the jobs in the foreground.

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::cli::output::line;
use crate::schedule::{Schedule, next_slot};
use crate::state::{self, JobsState, StateDir};

/// `backupctl schedule` options.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = "Without --daemon: prints each job of [schedule] with its expression and next run \
times (in [schedule] time_zone), and the last run recorded by a daemon. With --daemon: runs until SIGTERM or \
SIGINT, then lets running jobs finish for [schedule] grace_period before abandoning them. Exit status: 0 after a \
clean stop; 1 if it could not start (no job scheduled, wrong user, damaged state record, another daemon \
running on this spool); 2 for a usage error. SIGHUP is logged and ignored (restart to apply a new configuration).")]
pub struct ScheduleArgs {
    /// Run the scheduled jobs in the foreground until SIGTERM or SIGINT (for systemd: Type=notify, with
    /// WatchdogSec= if wanted, or Type=simple). Logs go to [log]'s destinations.
    #[arg(long)]
    pub daemon: bool,
    /// How many next run times to print per job.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub count: u16,
    /// Print the schedule as JSON: {"time_zone", "jobs": [{"job", "schedule", "next": [RFC 3339...], "last_run":
    /// {...} | null}]}.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl schedule`.
pub(super) fn run(ctx: &Ctx, args: &ScheduleArgs) -> Result<(), Error> {
    if args.daemon {
        return crate::schedule::daemon::run(&ctx.rt, ctx.config.clone(), ctx.path.clone());
    }
    let schedule = Schedule::from_config(&ctx.config.schedule).map_err(Error::Usage)?;
    // The record is only read, and may be unreadable for this user: show the schedule anyway.
    let record: JobsState = StateDir::new(&ctx.config.spool.path).load(state::JOBS).unwrap_or_default();
    let now = schedule.now();
    let zone = schedule.time_zone.iana_name().unwrap_or("system").to_owned();
    let mut jobs = Vec::new();
    for (job, expr) in &schedule.entries {
        let last = record.jobs.get(job.name());
        let mut times = Vec::new();
        let mut at = next_slot(expr, &now, last.and_then(|r| r.last_slot));
        while let Some(t) = at.filter(|_| times.len() < usize::from(args.count)) {
            at = expr.next_after(&t);
            times.push(t);
        }
        jobs.push((job, expr, times, last));
    }
    if args.json_output {
        let list: Vec<serde_json::Value> = jobs
            .iter()
            .map(|(job, expr, times, last)| {
                serde_json::json!({
                    "job": job.name(),
                    "schedule": expr.text(),
                    "next": times.iter().map(|t| t.timestamp().to_string()).collect::<Vec<_>>(),
                    "last_run": last,
                })
            })
            .collect();
        return line(serde_json::json!({ "time_zone": zone, "jobs": list }));
    }
    if jobs.is_empty() {
        return line(
            "no job is scheduled: [schedule] sets none of full_backup, incremental_backup, prune, verify, check, drill",
        );
    }
    line(format_args!("time zone {zone}"))?;
    for (job, expr, times, last) in &jobs {
        let next: Vec<String> = times.iter().map(|t| t.strftime("%Y-%m-%d %H:%M:%S %Z").to_string()).collect();
        let next = if next.is_empty() { "never".to_owned() } else { next.join(", ") };
        line(format_args!("{:<18} {:<20} next: {next}", job.name(), expr.text()))?;
        if let Some(r) = last {
            let outcome =
                r.last_outcome.map(|o| format!("{o:?}").to_lowercase()).unwrap_or_else(|| "started".to_owned());
            if let Some(at) = r.last_started {
                line(format_args!("{:<18} last run {at}: {outcome}", ""))?;
            }
        }
    }
    Ok(())
}
