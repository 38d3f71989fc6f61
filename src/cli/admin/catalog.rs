//! `backupctl catalog migrate|sync`, `status --from-catalog`, and the catalog updates other commands make after
//! their repository work (docs/design/catalog.md).

use clap::{Args, Subcommand};

use super::Ctx;
use super::status::StatusArgs;
use crate::Error;
use crate::catalog::{self, Catalog};
use crate::cli::output::{line, note};
use crate::config::{CatalogConfig, Config};
use crate::storage::Storage;

mod sync;

pub use sync::{sync, sync_storage};

/// `backupctl catalog` options.
#[derive(Debug, Clone, Args)]
pub struct CatalogArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CatalogCommand,
}

/// `backupctl catalog` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum CatalogCommand {
    /// Create schema backupctl in the [catalog] database, or migrate it: apply the migrations it lacks, up to the
    /// newest (or --to-version). Writes the schema only (its tables and indexes, and the versions applied in
    /// backupctl.schema_history), no data rows. `catalog sync` migrates too; base-backup, dump, prune, delete and
    /// the scheduler only create a missing schema, never migrate an older one.
    Migrate {
        /// Stop at this schema version instead of the newest (for a staged upgrade).
        #[arg(long, value_name = "N")]
        to_version: Option<u32>,
        /// Print the result as one JSON object: {"catalog", "version", "applied": [N...]}.
        #[arg(long = "json-output", visible_alias = "json")]
        json_output: bool,
    },
    /// Mirror the repository into the catalog, in one transaction: its backups (table backups), logical dumps
    /// (dumps), archived WAL as ranges per timeline and UTC day (wal_ranges), the WAL each backup needs and reaches
    /// (backup_wal), and the status `backupctl status` computes (repositories). Writes only rows that changed;
    /// rows of backups, dumps and WAL ranges no longer in the repository are marked removed (removed_at), never
    /// deleted. Reads only what changed since the last sync: with no backup added or deleted, the listings and the
    /// repository's small records (cluster record, keep marks, history files), no manifest; after a new or deleted
    /// backup, every manifest (unique sizes depend on all backups); a dump's manifest only when it is new. Creates
    /// or migrates the schema first, as `catalog migrate` does, and says so. Writes no job runs, checks or drills:
    /// the scheduler records those (job_runs, checks, drills) after each job.
    Sync {
        /// Print the rows written per table as one JSON object: {"catalog", "migrated": null or {"from", "to",
        /// "applied"}, "rows_written": {"repositories", "backups", "backups_removed", "backup_wal", "wal_ranges",
        /// "wal_ranges_removed", "dumps", "dumps_removed"}, "total"}.
        #[arg(long = "json-output", visible_alias = "json")]
        json_output: bool,
    },
}

fn config_of(config: &Config) -> Result<&CatalogConfig, Error> {
    config.catalog.as_ref().ok_or_else(|| {
        Error::Usage("no [catalog] section in the configuration: nothing to connect to (docs/configuration.md)".into())
    })
}

/// Run `backupctl catalog`.
pub(super) fn run(ctx: &Ctx, args: &CatalogArgs) -> Result<(), Error> {
    let cfg = config_of(&ctx.config)?;
    match &args.command {
        CatalogCommand::Migrate { to_version, json_output } => {
            let known = catalog::latest_version();
            if let Some(v) = to_version.filter(|v| *v == 0 || i64::from(*v) > known) {
                return Err(Error::Usage(format!(
                    "--to-version {v}: this backupctl knows schema versions 1 to {known}"
                )));
            }
            let storage = ctx.existing_storage()?;
            let mut c = open(&ctx.config, &ctx.rt, storage.as_ref())?;
            let found = c.schema_version()?;
            if let Some(v) = to_version.filter(|v| i64::from(*v) < found) {
                return Err(Error::Usage(format!(
                    "--to-version {v}: schema backupctl is at version {found} already; migrations only go forward"
                )));
            }
            let applied = c.migrate(*to_version)?;
            let version = c.schema_version()?;
            if *json_output {
                return line(serde_json::json!({ "catalog": c.target(), "version": version, "applied": applied }));
            }
            match applied.as_slice() {
                [] => {
                    line(format_args!("catalog {}: schema backupctl at version {version}; nothing to do", c.target()))
                }
                a => line(format_args!(
                    "catalog {}: schema backupctl migrated to version {version} (applied {})",
                    c.target(),
                    a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                )),
            }
        }
        CatalogCommand::Sync { json_output } => {
            let (report, change) = sync(&ctx.config, &ctx.rt, true)?;
            if *json_output {
                let rows = serde_json::to_value(report).map_err(|e| Error::Task(e.to_string()))?;
                return line(serde_json::json!({
                    "catalog": target(cfg),
                    "migrated": change,
                    "rows_written": rows,
                    "total": report.total(),
                }));
            }
            let migrated = match &change {
                None => String::new(),
                Some(c) if c.from == 0 => format!("schema backupctl created at version {}; ", c.to),
                Some(c) => format!("schema backupctl migrated from version {} to {}; ", c.from, c.to),
            };
            line(format_args!(
                "catalog {}: {migrated}synced; {} rows written ({} backups, {} marked removed; {} WAL ranges, {} marked \
                 removed; {} dumps, {} marked removed)",
                target(cfg),
                report.total(),
                report.backups,
                report.backups_removed,
                report.wal_ranges,
                report.wal_ranges_removed,
                report.dumps,
                report.dumps_removed
            ))
        }
    }
}

fn target(cfg: &CatalogConfig) -> String {
    format!("{}:{}/{}", cfg.host, cfg.port, cfg.dbname)
}

/// Connect to the catalog and refuse it if it is in the cluster the repository in `storage` archives (its
/// cluster record; with nothing archived yet there is nothing to compare).
fn open(config: &Config, rt: &tokio::runtime::Runtime, storage: &dyn Storage) -> Result<Catalog, Error> {
    let cfg = config_of(config)?;
    let cluster = rt.block_on(crate::repository::store::cluster_info(storage))?;
    let archived = archived_system_identifier(config, cluster.map(|c| c.system_identifier));
    let mut c = catalog::connect(cfg)?;
    c.refuse_archived_cluster(archived.as_deref())?;
    Ok(c)
}

/// The archived cluster's `system_identifier`: the repository's cluster record, or, before any WAL reached the
/// repository, what the `[postgres]` server says (if it answers within 10 s; otherwise there is nothing to compare).
fn archived_system_identifier(config: &Config, recorded: Option<String>) -> Option<String> {
    recorded.or_else(|| {
        let pg = config.postgres.as_ref()?;
        let mut session = crate::pg::connect_within(pg, std::time::Duration::from_secs(10)).ok()?;
        session.server_info(false).ok().map(|i| i.system_identifier)
    })
}

/// After `command`'s repository work: sync the catalog when one is configured. It creates the schema if there
/// is none but never migrates an older one (a DBA may have staged it): that, and any failure, is one warning on
/// stderr (and in the log), never the command's failure: the repository is the source of truth. Returns whether
/// the catalog was updated.
pub fn update_after(config: &Config, rt: &tokio::runtime::Runtime, command: &str) -> bool {
    if config.catalog.is_none() {
        return false;
    }
    match sync(config, rt, false) {
        Ok((r, change)) => {
            if let Some(c) = change {
                tracing::info!(version = c.to, "{command}: catalog schema backupctl created");
            }
            tracing::info!(rows = r.total(), "{command}: catalog updated");
            true
        }
        Err(e) => {
            // One line on stderr; the record goes to the log file and the journal only.
            tracing::warn!(target: crate::cli::logging::OUTCOME_TARGET, error = %e, "{command}: catalog not updated");
            note(format_args!("{command}: warning: catalog not updated: {e}"));
            false
        }
    }
}

/// Record one run of a job in the catalog, when one is configured (creating the schema if there is none, never
/// migrating an older one). A failure is logged, never fatal: as a warning (for a run by hand, also one line on
/// stderr), or at debug level when `is_warned` (the job's catalog update already warned, so the log says it once).
pub fn record_job_run(config: &Config, rt: &tokio::runtime::Runtime, run: &catalog::JobRun, is_warned: bool) {
    if config.catalog.is_none() {
        return;
    }
    let result = (|| -> Result<i64, Error> {
        let deadline = std::time::Duration::from_secs(config.archive.retry_deadline_seconds);
        let storage = rt.block_on(crate::storage::open(&config.repository.url, &config.repository.s3, deadline))?;
        let mut c = open(config, rt, storage.as_ref())?;
        Ok(c.record_job_run(&storage.to_string(), run)?)
    })();
    match result {
        Err(e) if is_warned => tracing::debug!(job = %run.job, error = %e, "job run not recorded in the catalog"),
        Err(e) if run.started_by == catalog::StartedBy::Manual => {
            tracing::warn!(target: crate::cli::logging::OUTCOME_TARGET, job = %run.job, error = %e,
                "run not recorded in the catalog");
            note(format_args!("backupctl {}: warning: run not recorded in the catalog: {e}", run.job));
        }
        Err(e) => tracing::warn!(job = %run.job, error = %e, "job run not recorded in the catalog"),
        Ok(_) => {}
    }
}

/// Record a `check`, `verify` or `drill` run by hand (`started_by` manual), when a catalog is configured:
/// `outcome` is the command's one-line summary or its error. Runs that never started (a usage or configuration
/// error) are not recorded. Warns on failure (see [`record_job_run`]).
pub(super) fn record_manual_run(
    ctx: &Ctx,
    job: &str,
    started_at: jiff::Timestamp,
    outcome: Result<&str, &Error>,
    drill: Option<catalog::DrillFacts>,
) {
    if ctx.config.catalog.is_none() || matches!(outcome, Err(Error::Usage(_) | Error::Config(_))) {
        return;
    }
    let run = catalog::JobRun {
        job: job.to_owned(),
        started_by: catalog::StartedBy::Manual,
        started_at: started_at.to_string(),
        finished_at: jiff::Timestamp::now().to_string(),
        summary: outcome.ok().map(str::to_owned),
        error: outcome.err().map(ToString::to_string),
        drill,
    };
    record_job_run(&ctx.config, &ctx.rt, &run, false);
}

/// `backupctl status --from-catalog`: the status document as the last sync stored it, filtered as `status`
/// filters, with the newest backup's age computed now; printed by the same code as `status`.
pub(super) fn status(ctx: &Ctx, args: &StatusArgs) -> Result<(), Error> {
    let storage = ctx.storage()?;
    let repository = storage.to_string();
    // The same refusal as every other catalog command: a catalog in the archived cluster was never synced, and
    // saying so would send the user to a sync that is refused too.
    let mut c = open(&ctx.config, &ctx.rt, storage.as_ref())?;
    let cluster = ctx.rt.block_on(crate::repository::store::cluster_info(storage.as_ref()))?;
    let sysid = cluster.as_ref().map(|c| c.system_identifier.as_str());
    let catalog::StatusDocuments { status: mut v, backups, mut dumps } = c.status_documents(&repository, sysid)?;
    if args.backup_type == Some(super::status::dumps::StatusType::Dump) {
        if let Some(n) = args.last {
            dumps.drain(..dumps.len().saturating_sub(n));
        }
        if args.json_output {
            return line(serde_json::json!({ "repository": repository, "dumps": dumps }));
        }
        line(format_args!("repository: {repository}"))?;
        return super::status::dumps::print_json(&dumps);
    }
    for u in v["unusable_backups"].as_array().into_iter().flatten() {
        note(format_args!(
            "backupctl: warning: backup {} is unusable: {}",
            u["id"].as_str().unwrap_or_default(),
            u["error"].as_str().unwrap_or_default()
        ));
    }
    let now = time::OffsetDateTime::now_utc();
    let newest = backups
        .iter()
        .filter_map(|b| b["stop_time"].as_str())
        .filter_map(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .max()
        .map(|t| (now - t).whole_seconds());
    let mut backups: Vec<serde_json::Value> = backups
        .into_iter()
        .filter(|b| {
            args.backup_type.is_none_or(|t| match t {
                super::status::dumps::StatusType::Backup(t) => b["type"].as_str() == Some(t.to_string().as_str()),
                super::status::dumps::StatusType::Dump => false,
            })
        })
        .collect();
    if let Some(n) = args.last {
        backups.drain(..backups.len().saturating_sub(n));
    }
    if let Some(o) = v.as_object_mut() {
        o.insert("newest_backup_age_seconds".into(), serde_json::json!(newest));
        o.insert("backups".into(), serde_json::Value::Array(backups));
        o.insert("dumps".into(), serde_json::Value::Array(dumps.clone()));
    }
    if args.json_output {
        return line(v);
    }
    super::status_text::print(&v)?;
    if args.backup_type.is_none() {
        super::status::dumps::print_json(&dumps)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The long help of `catalog SUBCOMMAND`.
    fn help(subcommand: &str) -> String {
        let mut cmd = crate::cli::admin::Args::command();
        let catalog = cmd.find_subcommand_mut("catalog").expect("catalog");
        catalog.find_subcommand_mut(subcommand).expect("subcommand").render_long_help().to_string()
    }

    /// Issue 12: each catalog subcommand's help says what it mirrors and which tables it writes, dumps and job
    /// runs included.
    #[test]
    fn issue_12_catalog_help_says_what_is_written() {
        let sync = help("sync");
        for what in
            ["backups", "dumps", "wal_ranges", "backup_wal", "repositories", "removed_at", "job_runs", "no manifest"]
        {
            assert!(sync.contains(what), "sync --help lacks {what}: {sync}");
        }
        assert!(sync.contains("Writes no job runs"), "{sync}");
        let migrate = help("migrate");
        for what in ["schema_history", "no data rows", "never migrate an older one"] {
            assert!(migrate.contains(what), "migrate --help lacks {what}: {migrate}");
        }
    }
}
