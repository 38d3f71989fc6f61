//! `backupctl check` (alias `test`): is everything that backups need working? One line per check; the checks
//! themselves are [`crate::check`].

use clap::Args;

use super::Ctx;
use crate::Error;
use crate::check::{self, Status};
use crate::cli::output::line;

/// `backupctl check` options.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Print the results as one JSON object: {"ok": true|false, "configuration": FILE, "repository": URL,
    /// "checks": [{"name", "status": "ok"|"failed"|"skipped", "detail"}]}.
    #[arg(long = "json-output", visible_alias = "json")]
    pub json_output: bool,
}

/// Run `backupctl check`: every check, then exit 0 only if none failed ([`Error::ChecksFailed`] otherwise).
/// Running as a user who may not write into the spool or a `file://` repository stops it first (exit 2). With a
/// `[catalog]`, the run is recorded there (`job_runs` and `checks`, started by hand).
pub(super) fn run(ctx: &Ctx, args: &CheckArgs) -> Result<(), Error> {
    let started_at = jiff::Timestamp::now();
    let result = check(ctx, args);
    super::catalog::record_manual_run(ctx, "check", started_at, result.as_ref().map(String::as_str), None);
    result.map(drop)
}

/// The checks and their output; returns the one-line summary.
fn check(ctx: &Ctx, args: &CheckArgs) -> Result<String, Error> {
    let (path, config) = (&ctx.path, &ctx.config);
    // Run as the wrong user, a probe would leave files PostgreSQL's wal-push cannot use: refuse before anything.
    use crate::storage::fs::owner;
    owner::check_writer(&config.spool.path, owner::Role::Spool)?;
    crate::cli::check_repository_writer(&config.repository.url)?;
    let now = time::OffsetDateTime::now_utc;
    let inputs = check::Inputs { config_path: path, config, storage: ctx.storage(), now: &now };
    let report = check::run(&ctx.rt, inputs);
    if args.json_output {
        line(serde_json::json!({
            "ok": report.is_ok(),
            "configuration": path.display().to_string(),
            "repository": crate::config::redact_url(&crate::storage::canonical_url(&config.repository.url)),
            "checks": report.checks,
        }))?;
    } else {
        for c in &report.checks {
            match c.status {
                Status::Ok => line(format_args!("{}: ok ({})", c.name, c.detail))?,
                Status::Failed => line(format_args!("{}: FAILED: {}", c.name, c.detail))?,
                Status::Skipped => line(format_args!("{}: skipped: {}", c.name, c.detail))?,
            }
        }
    }
    let failed: Vec<String> = report.failed().map(|c| format!("{}: {}", c.name, c.detail)).collect();
    super::alert_condition(ctx, check_condition(&failed, report.checks.len()), true);
    if !failed.is_empty() {
        return Err(Error::ChecksFailed { failed, total: report.checks.len() });
    }
    let skipped = report.checks.iter().filter(|c| c.status == Status::Skipped).count();
    let passed = report.checks.len() - skipped;
    let summary = match skipped {
        0 => format!("all {passed} checks passed"),
        n => format!("all {passed} checks that ran passed; {n} skipped"),
    };
    if !args.json_output {
        line(&summary)?;
    }
    Ok(summary)
}

/// The `check` alert condition: firing when any check failed, with each failure on its own line.
fn check_condition(failed: &[String], total: usize) -> crate::alert::Condition {
    let (summary, detail) = if failed.is_empty() {
        (format!("all {total} checks passed"), format!("backupctl check: all {total} checks passed"))
    } else {
        (format!("backupctl check: {} of {total} checks failed", failed.len()), failed.join("\n"))
    };
    let reason = crate::alert::check_reason(failed);
    crate::alert::Condition { key: crate::alert::CHECK.to_owned(), firing: !failed.is_empty(), summary, detail, reason }
}
