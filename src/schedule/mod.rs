//! The scheduler: cron schedules of the jobs, and the daemon that runs them in-process (issue 9).

pub mod cron;
