//! Running one job in-process: the same library calls the CLI commands make, with a one-line summary of what
//! was done on success and the command's own error on failure.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::Job;
use crate::Error;
use crate::config::Config;
use crate::repository::backup::BackupType;
use crate::repository::store;
use crate::storage::DynStorage;

/// Run `job` to its end on the calling thread (which must not be inside a tokio runtime: the job builds its own).
/// `config_path` is the configuration file the daemon loaded (check compares it with archive_command's).
/// `abandon` is set by the daemon when the grace period after SIGTERM has passed: a drill then stops its server
/// and removes its directory before returning.
///
/// Returns a one-line summary of what the run did. Errors are those of the matching CLI command
/// (`Error::BackupLocked` when another base backup holds the lock, `Error::ChecksFailed`, `Error::VerifyFailed`,
/// ...).
pub fn run(job: Job, config: &Config, config_path: &Path, abandon: &AtomicBool) -> Result<String, Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(format!("{}-worker", job.name()))
        .build()
        .map_err(|e| Error::Task(format!("cannot start runtime: {e}")))?;
    let started_at = jiff::Timestamp::now();
    let mut drill_facts = None;
    let result = match job {
        Job::FullBackup => backup(&rt, config, BackupType::Full),
        Job::IncrementalBackup => backup(&rt, config, BackupType::Incremental),
        Job::Prune => prune(&rt, config),
        Job::Verify => verify(&rt, config),
        Job::Check => check(&rt, config, config_path),
        Job::Drill => drill(&rt, config, config_path, abandon, &mut drill_facts),
    };
    catalog_after(&rt, config, job, started_at, &result, drill_facts);
    result
}

/// With a `[catalog]`: after a job that changed the repository (backup, prune), sync the catalog; then record the
/// run (a slot skipped because another base backup holds the lock is not a run). Failures are logged only.
fn catalog_after(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    job: Job,
    started_at: jiff::Timestamp,
    result: &Result<String, Error>,
    drill: Option<crate::catalog::DrillFacts>,
) {
    if config.catalog.is_none() || matches!(result, Err(Error::BackupLocked { .. })) {
        return;
    }
    // The update warns when the catalog is unusable (unreachable, a schema staged at an older version): the record
    // of the run then says nothing more about it.
    let is_warned = result.is_ok()
        && matches!(job, Job::FullBackup | Job::IncrementalBackup | Job::Prune)
        && !crate::cli::admin::catalog::update_after(config, rt, job.name());
    let run = crate::catalog::JobRun {
        job: job.name().to_owned(),
        started_by: crate::catalog::StartedBy::Scheduler,
        started_at: started_at.to_string(),
        finished_at: jiff::Timestamp::now().to_string(),
        summary: result.as_ref().ok().cloned(),
        error: result.as_ref().err().map(ToString::to_string),
        drill,
    };
    crate::cli::admin::catalog::record_job_run(config, rt, &run, is_warned);
}

fn backup(rt: &tokio::runtime::Runtime, config: &Config, backup_type: BackupType) -> Result<String, Error> {
    let request = crate::backup::BackupRequest {
        label: None,
        description: Some("scheduled".to_owned()),
        backup_type,
        fast: config.schedule.fast_checkpoint,
        max_rate: config.schedule.backup_max_rate_kib.map(|k| k.saturating_mul(1024)),
    };
    let m = crate::backup::run(rt, config, &request, &crate::progress::NoProgress)?;
    let s = &m.stats;
    Ok(format!(
        "backup {} ({}): {} files, {} read, {} stored, {:.1} s",
        m.id,
        m.backup_type,
        s.files,
        crate::cli::human_bytes(s.bytes),
        crate::cli::human_bytes(s.bytes_stored),
        s.duration_ms as f64 / 1000.0
    ))
}

/// The repository's backend, which must exist already.
fn existing_storage(rt: &tokio::runtime::Runtime, config: &Config) -> Result<DynStorage, Error> {
    let deadline = std::time::Duration::from_secs(config.archive.retry_deadline_seconds);
    let storage = rt.block_on(crate::storage::open(&config.repository.url, &config.repository.s3, deadline))?;
    rt.block_on(store::require_existing(storage.as_ref()))?;
    Ok(storage)
}

fn prune(rt: &tokio::runtime::Runtime, config: &Config) -> Result<String, Error> {
    use crate::retention::{expire, plan::Policy};
    let policy = Policy::resolve(&config.retention, None)?;
    crate::cli::check_repository_writer(&config.repository.url)?;
    let storage = existing_storage(rt, config)?;
    let options = expire::Options { dry_run: false, gc_grace: config.retention.gc_grace.0 };
    // Dumps first, so that the gc at the end of expire reclaims what they held (as `backupctl prune`).
    let dumps = rt.block_on(expire::prune_dumps(storage.as_ref(), &policy, jiff::Timestamp::now(), false))?;
    let r = rt.block_on(expire::run(storage.as_ref(), &policy, jiff::Timestamp::now(), options))?;
    let freed = r.gc.as_ref().map_or(0, |g| g.bytes_removed + g.temp_bytes_removed);
    Ok(format!(
        "policy {}: kept {} backups, deleted {} backups and {} WAL files; dumps ({}): kept {}, deleted {}; gc freed {}",
        r.policy,
        r.kept_backups.len(),
        r.deleted_backups.len(),
        r.deleted_wal.files,
        policy.dumps_text(),
        dumps.keep.len(),
        dumps.delete.len(),
        crate::cli::human_bytes(freed)
    ))
}

fn verify(rt: &tokio::runtime::Runtime, config: &Config) -> Result<String, Error> {
    use crate::verify::{self, Options};
    let storage = existing_storage(rt, config)?;
    let options = Options {
        backup_id: None,
        wal: config.schedule.verify_wal,
        parallel: config.restore.parallel,
        clock: verify::clock_from_config(config, std::time::SystemTime::now()),
    };
    let mut r = rt.block_on(verify::run(storage.clone(), &options))?;
    rt.block_on(verify::dumps::add(storage.as_ref(), None, &mut r))?;
    if let Some(e) = r.failure() {
        return Err(e);
    }
    Ok(format!(
        "verified {} backups: {} data objects and {} WAL files, {} read; {} dumps",
        r.backups.len(),
        r.objects_checked,
        r.wal_objects_checked,
        crate::cli::human_bytes(r.bytes_read),
        r.dumps.as_ref().map_or(0, |d| d.dumps)
    ))
}

fn check(rt: &tokio::runtime::Runtime, config: &Config, config_path: &Path) -> Result<String, Error> {
    let deadline = std::time::Duration::from_secs(config.archive.retry_deadline_seconds);
    let storage =
        rt.block_on(crate::storage::open(&config.repository.url, &config.repository.s3, deadline)).map_err(Error::from);
    let now = time::OffsetDateTime::now_utc;
    let inputs = crate::check::Inputs { config_path, config, storage, now: &now };
    let report = crate::check::run(rt, inputs);
    let failed: Vec<String> = report.failed().map(|c| format!("{}: {}", c.name, c.detail)).collect();
    if !failed.is_empty() {
        return Err(Error::ChecksFailed { failed, total: report.checks.len() });
    }
    Ok(format!("all {} checks passed or were skipped", report.checks.len()))
}

fn drill(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    config_path: &Path,
    abandon: &AtomicBool,
    facts: &mut Option<crate::catalog::DrillFacts>,
) -> Result<String, Error> {
    // restore_command runs in the restored data directory: the configuration's path must be absolute.
    let absolute =
        std::path::absolute(config_path).map_err(|e| Error::Usage(format!("{}: {e}", config_path.display())))?;
    let opts = crate::drill::DrillOptions {
        backup_id: None,
        to: None,
        restore_command: crate::cli::pitr_restore::restore_command(&absolute),
    };
    let result = crate::drill::run(rt, config, &opts, abandon);
    *facts = crate::catalog::DrillFacts::of_result(&result);
    let r = result?;
    Ok(format!(
        "restore drill of backup {} passed: recovered WAL {} to {} in {:.1} s (RTO)",
        r.backup_id.as_deref().unwrap_or("?"),
        r.wal_start.as_deref().unwrap_or("?"),
        r.wal_end.as_deref().unwrap_or("?"),
        r.rto_seconds.unwrap_or_default()
    ))
}
