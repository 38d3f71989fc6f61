//! Applying a retention plan (`backupctl prune`), and keep marks by backup id (`backupctl keep` / `unkeep`).
//!
//! Order, so that a run killed at any moment leaves every kept backup restorable and a rerun finishes the same
//! plan: (1) the plan is made from one listing of manifests, keep marks and `wal/`; (2) the backups it drops are
//! deleted oldest first with `retention::gc::delete_backup` (the manifest first, so each stops being listed at
//! once); (3) the WAL files it drops are deleted oldest segment first; (4) `retention::gc::collect` reclaims the
//! data objects no remaining backup references. A rerun plans again from what is left: the same backups are kept
//! (nothing the policy keeps was deleted), so it deletes the rest of the same list and nothing else.

use jiff::Timestamp;
use serde::Serialize;

use crate::repository::backup::BackupId;
use crate::repository::store;
use crate::retention::keep::{self, KeepMark};
use crate::retention::plan::{self, Backup, DoomedBackup, Plan, PlanError, Policy, WalRange};
use crate::storage::{ObjectMeta, Storage};
use crate::wal::{SegmentSize, TimelineHistory, TimelineId, WalFileName};

/// Why `prune`, `keep` or `unkeep` cannot go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No backup with this id in the repository.
    #[error("no backup {id} in {backend}")]
    UnknownBackup {
        /// Backend display.
        backend: String,
        /// The id asked for.
        id: BackupId,
    },
    /// Some manifests cannot be read: the plan would not know what they need, so prune does nothing.
    #[error("prune stopped: backups {ids} in {backend} have a damaged or unreadable manifest ({first})")]
    UnusableBackups {
        /// Backend display.
        backend: String,
        /// The ids, comma-separated.
        ids: String,
        /// The first one's error.
        first: String,
    },
    /// A manifest's fields the plan cannot use.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// `keep --until` that is not a date or a time, or not in the future.
    #[error("--until {value:?}: {reason}")]
    BadUntil {
        /// The text.
        value: String,
        /// Why.
        reason: String,
    },
}

/// What the plan is made from: one listing of the repository.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Every backup, with its keep mark.
    pub backups: Vec<Backup>,
    /// The listing of `wal/`.
    pub wal_objects: Vec<ObjectMeta>,
    /// The repository's `wal_segment_size` (none before the first WAL is archived).
    pub segment_size: Option<SegmentSize>,
    /// The newest timeline's history ([`newest_history`]).
    pub history: Option<TimelineHistory>,
}

/// Load the plan's inputs: `wal/` listed first, then the manifests (see [`run`] for why that order). A manifest
/// that cannot be read or used stops it ([`Error::UnusableBackups`]): deleting WAL without knowing what that
/// backup needs could break it.
pub async fn load_inputs(storage: &dyn Storage) -> Result<Inputs, crate::Error> {
    let wal_objects = storage.list("wal/").await?;
    load_backups(storage, wal_objects).await
}

/// The rest of [`load_inputs`], after `wal/` was listed.
async fn load_backups(storage: &dyn Storage, wal_objects: Vec<ObjectMeta>) -> Result<Inputs, crate::Error> {
    // Headers: retention needs each backup's times, LSNs and WAL, not its file entries.
    let (manifests, bad) = store::manifest_headers(storage).await?;
    if let Some((_, first)) = bad.first() {
        let ids: Vec<String> = bad.iter().map(|(id, _)| id.to_string()).collect();
        return Err(Error::UnusableBackups {
            backend: storage.to_string(),
            ids: ids.join(", "),
            first: first.to_string(),
        }
        .into());
    }
    let mut marks = keep::load_all(storage).await?;
    let backups = manifests
        .iter()
        .map(|m| Backup::from_manifest(m, marks.remove(&m.id)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::from)?;
    let segment_size = match store::cluster_info(storage).await? {
        Some(c) => Some(SegmentSize::new(c.wal_segment_size)?),
        None => None,
    };
    let history = newest_history(storage, &wal_objects).await?;
    Ok(Inputs { backups, wal_objects, segment_size, history })
}

/// The history of the newest timeline in a listing of `wal/` (timeline 1's, which has no file, when there is
/// none): the timeline recovery follows by default, whose PITR window `pitr-days` keeps. `None`, with a warning,
/// if its file vanished or does not read as a history file (the plan then treats every backup as on its path).
/// Errors: storage errors other than not found.
pub async fn newest_history(
    storage: &dyn Storage,
    wal_objects: &[ObjectMeta],
) -> Result<Option<TimelineHistory>, crate::storage::Error> {
    let newest = wal_objects
        .iter()
        .filter_map(|m| match plan::wal_file_of_key(&m.key) {
            Some(WalFileName::History(t)) => Some((t, &m.key)),
            _ => None,
        })
        .max_by_key(|(t, _)| *t);
    let Some((tli, key)) = newest else { return Ok(Some(TimelineHistory::root(TimelineId(1)))) };
    let object = match storage.get(key).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => {
            tracing::warn!(key = %key, "the newest timeline's history file vanished; planning without it");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    match crate::repository::decode_history(tli, &object) {
        Ok(h) => Ok(Some(h)),
        Err(reason) => {
            tracing::warn!(key = %key, reason, "unreadable timeline history; planning without it");
            Ok(None)
        }
    }
}

/// The WAL a prune deletes (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WalDeleted {
    /// Ranges per timeline.
    pub ranges: Vec<WalRange>,
    /// Files.
    pub files: u64,
    /// Stored bytes.
    pub bytes: u64,
}

/// What space reclamation did after the deletions (from `retention::gc::collect`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reclaimed {
    /// Data objects removed.
    pub objects_removed: u64,
    /// Their bytes.
    pub bytes_removed: u64,
    /// Temporary files of killed writers removed.
    pub temp_files_removed: u64,
    /// Their bytes.
    pub temp_bytes_removed: u64,
    /// Why some of the work was left for a later gc, if it was.
    pub deferred: Option<String>,
    /// Format 2: packs deleted and compacted, and what reading and writing them cost.
    pub packs: crate::retention::gc::PackReport,
}

/// The outcome of `prune`: the plan, and what was deleted (in a dry run, what would be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// True if nothing was deleted.
    pub dry_run: bool,
    /// The policy, as text.
    pub policy: String,
    /// The time the plan was made for.
    pub now: Timestamp,
    /// Kept backups with their reasons and reach, oldest first.
    pub kept_backups: Vec<plan::KeptBackup>,
    /// Deleted backups, oldest first.
    pub deleted_backups: Vec<DoomedBackup>,
    /// Deleted WAL.
    pub deleted_wal: WalDeleted,
    /// The first segment from which all WAL is kept.
    pub wal_kept_from: Option<String>,
    /// Notes of the plan.
    pub notes: Vec<String>,
    /// Space reclamation (none in a dry run).
    pub gc: Option<Reclaimed>,
}

impl Report {
    fn of(plan: &Plan, dry_run: bool) -> Self {
        Self {
            dry_run,
            policy: plan.policy.clone(),
            now: plan.now,
            kept_backups: plan.keep.clone(),
            deleted_backups: plan.delete.clone(),
            deleted_wal: WalDeleted { ranges: plan.wal.delete.clone(), files: plan.wal.files, bytes: plan.wal.bytes },
            wal_kept_from: plan.wal.keep_all_from.clone(),
            notes: plan.notes.clone(),
            gc: None,
        }
    }
}

/// The base-backup running on this repository (its live lease, described), if any; a logical dump's lease (also
/// of kind backup) does not count: a dump needs no WAL. Liveness by this host's clock against the leases'
/// renewal times (prune holds no lease of its own yet to learn the backend's).
async fn running_base_backup(storage: &dyn Storage, now: Timestamp) -> Result<Option<String>, crate::Error> {
    use crate::repository::lease::{self, LeaseKind};
    let live = lease::live_leases(storage, &[LeaseKind::Backup], None, None, to_offset_date_time(now)?, false).await?;
    let is_dump = |l: &lease::FoundLease| {
        l.record.as_ref().is_some_and(|r| r.what.parse::<crate::repository::dump::DumpId>().is_ok())
    };
    Ok(live.iter().find(|l| !is_dump(l)).map(lease::FoundLease::describe))
}

/// WAL files deleted per `delete_many` call (S3's DeleteObjects takes up to 1000 keys).
const WAL_DELETE_BATCH: usize = 1000;

/// Options of [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Plan and report only.
    pub dry_run: bool,
    /// `retention.gc_grace`, for the space reclamation.
    pub gc_grace: std::time::Duration,
}

/// `backupctl prune`: plan `policy` at `now` and, unless a dry run, apply it (see the module doc for the order).
#[tracing::instrument(skip_all, fields(backend = %storage, dry_run = options.dry_run))]
pub async fn run(
    storage: &dyn Storage,
    policy: &Policy,
    now: Timestamp,
    options: Options,
) -> Result<Report, crate::Error> {
    // The order is `wal/`, then the leases, then the manifests. A base-backup whose WAL is in the listing took its
    // lease before it (the lease comes before pg_backup_start): if the lease is gone when prune looks, the
    // backup's manifest was written before, and the manifest listing holds it.
    let wal_objects = storage.list("wal/").await?;
    let running = running_base_backup(storage, now).await?;
    let inputs = load_backups(storage, wal_objects).await?;
    let mut plan =
        plan::plan(&inputs.backups, &inputs.wal_objects, inputs.segment_size, inputs.history.as_ref(), policy, now);
    if plan.wal.files > 0
        && let Some(running) = running
    {
        plan.wal = plan::WalPlan { keep_all_from: plan.wal.keep_all_from.take(), ..plan::WalPlan::default() };
        plan.notes.push(format!(
            "{running} is running: no WAL is deleted now (the WAL it needs is in no manifest yet, and after a \
             restore to an earlier point it may lie below the kept backups' start); the next prune deletes it"
        ));
    }
    let mut report = Report::of(&plan, options.dry_run);
    if options.dry_run {
        return Ok(report);
    }
    let now_odt = to_offset_date_time(now)?;
    for b in &plan.delete {
        crate::retention::gc::delete_backup(storage, &b.id, now_odt, false).await?;
        tracing::info!(backup = %b.id, "deleted backup");
    }
    // In batches (one DeleteObjects request per 1000 keys on S3), the oldest batch first: every file here is older than
    // anything a kept backup or the restorable window needs, so an interruption part-way leaves nothing needed
    // missing, only some expired files for the next prune.
    for batch in plan.wal.keys.chunks(WAL_DELETE_BATCH) {
        storage.delete_many(batch, crate::retention::gc::DELETE_PARALLEL).await?;
        tracing::debug!(first = %batch[0], files = batch.len(), "deleted WAL files");
    }
    if plan.wal.files > 0 {
        tracing::info!(files = plan.wal.files, bytes = plan.wal.bytes, "deleted WAL");
    }
    let gc = crate::retention::gc::collect(
        storage,
        &crate::retention::gc::GcOptions { grace: options.gc_grace, dry_run: false, now: now_odt },
    )
    .await?;
    report.gc = Some(Reclaimed {
        objects_removed: gc.objects_removed,
        bytes_removed: gc.bytes_removed,
        temp_files_removed: gc.temp_files_removed,
        temp_bytes_removed: gc.temp_bytes_removed,
        deferred: gc.deferred,
        packs: gc.packs,
    });
    Ok(report)
}

fn to_offset_date_time(t: Timestamp) -> Result<time::OffsetDateTime, crate::Error> {
    time::OffsetDateTime::from_unix_timestamp_nanos(t.as_nanosecond())
        .map_err(|e| crate::Error::Task(format!("time {t} out of range: {e}")))
}

/// Until when `keep` keeps a backup: an RFC 3339 time, or a date `YYYY-MM-DD`, which keeps it through that whole
/// day in `tz` (until the next day begins there). It must be after `now`.
pub fn parse_until(text: &str, tz: &jiff::tz::TimeZone, now: Timestamp) -> Result<Timestamp, Error> {
    let bad = |reason: &str| Error::BadUntil { value: text.to_owned(), reason: reason.to_owned() };
    let t = if let Ok(t) = text.parse::<Timestamp>() {
        t
    } else {
        let date: jiff::civil::Date =
            text.parse().map_err(|_| bad("not a date (YYYY-MM-DD) or an RFC 3339 time (2027-01-31T00:00:00Z)"))?;
        let next = date.tomorrow().map_err(|_| bad("out of range"))?;
        next.to_zoned_datetime(tz.clone()).map_err(|_| bad("out of range"))?.timestamp()
    };
    if t <= now {
        return Err(bad(&format!("{t} is not in the future")));
    }
    Ok(t)
}

/// Until when `keep` keeps a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepUntil {
    /// Until `unkeep`.
    Forever,
    /// Until this time.
    Until(Timestamp),
}

/// `backupctl keep`: mark backup `id` kept (create-only record). Unknown id: [`Error::UnknownBackup`].
pub async fn keep(
    storage: &dyn Storage,
    id: &BackupId,
    until: KeepUntil,
    now: Timestamp,
) -> Result<KeepMark, crate::Error> {
    require_backup(storage, id).await?;
    let until = match until {
        KeepUntil::Forever => None,
        KeepUntil::Until(t) => Some(t.to_string()),
    };
    let mark = KeepMark { kept: true, until, set_at: now.to_string() };
    keep::set(storage, id, &mark, to_offset_date_time(now)?).await?;
    Ok(mark)
}

/// `backupctl unkeep`: remove backup `id`'s keep mark. Returns the mark it had (`None`, or one not in force: nothing
/// written).
pub async fn unkeep(storage: &dyn Storage, id: &BackupId, now: Timestamp) -> Result<Option<KeepMark>, crate::Error> {
    require_backup(storage, id).await?;
    let Some(old) = keep::load(storage, id).await?.filter(|m| m.kept) else { return Ok(None) };
    let mark = KeepMark { kept: false, until: None, set_at: now.to_string() };
    keep::set(storage, id, &mark, to_offset_date_time(now)?).await?;
    Ok(Some(old))
}

async fn require_backup(storage: &dyn Storage, id: &BackupId) -> Result<(), crate::Error> {
    if storage.exists(&id.manifest_key()).await? {
        Ok(())
    } else {
        Err(Error::UnknownBackup { backend: storage.to_string(), id: id.clone() }.into())
    }
}

mod dumps;
#[cfg(test)]
mod tests;

pub use dumps::prune_dumps;
