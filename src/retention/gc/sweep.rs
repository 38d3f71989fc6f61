//! `collect`: mark and sweep under a gc lease, deferred while a base-backup or restore runs.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use super::{BLOCKING, DELETE_PARALLEL, Error, is_older_than, mark, split_backups};
use crate::repository::backup::{BACKUPS_PREFIX, DATA_PREFIX, ObjectId};
use crate::repository::lease::{self, Lease, LeaseKind};
use crate::storage::{Key, Storage};

/// Deletes per step; the gc lease is renewed between steps.
const STEP: usize = 1000;

/// How [`collect`] runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced objects and temporary files younger than this (by the backend's modified time) are left alone
    /// (`[retention] gc_grace`): a writer without a lease (an older version) may still be using them.
    pub grace: Duration,
    /// List what would be removed and remove nothing (and take no lease).
    pub dry_run: bool,
    /// The current time (injectable); objects are aged against it.
    pub now: OffsetDateTime,
}

/// What was (or, in a dry run, would be) removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemovedKind {
    /// A data object no manifest references.
    Object,
    /// A temporary file or incomplete multipart upload.
    Temp,
    /// A record under `backups/<id>/` of a backup without a manifest (keep records of a deleted backup).
    Record,
    /// Format 2: a pack with no live frame, or one compacted (its live frames copied first).
    Pack,
    /// Format 2: a pack index object naming only deleted packs, or replaced by one without them.
    Index,
    /// Format 2: a block-map node no manifest names.
    Node,
}

/// One removed item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// What it is.
    pub kind: RemovedKind,
    /// Its key, or for a temporary file its path in the repository (an upload: the key it was for).
    pub name: String,
    /// Bytes.
    pub bytes: u64,
}

/// What [`collect`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Objects removed (would be, in a dry run): unreferenced data objects, and on format 2 packs, index
    /// objects and nodes (detailed in `packs`).
    pub objects_removed: u64,
    /// Their stored bytes.
    pub bytes_removed: u64,
    /// Temporary files and incomplete uploads removed.
    pub temp_files_removed: u64,
    /// Their bytes.
    pub temp_bytes_removed: u64,
    /// Why the data sweep was skipped (a running base-backup, restore or other gc, named), if it was.
    pub deferred: Option<String>,
    /// Records of backups without a manifest removed.
    pub records_removed: u64,
    /// Manifests (of backups and of logical dumps) whose objects were marked.
    pub backups: u64,
    /// Distinct data objects they reference.
    pub objects_referenced: u64,
    /// Unreferenced data objects left because they are younger than the grace period.
    pub objects_in_grace: u64,
    /// True for a dry run: nothing was removed.
    pub dry_run: bool,
    /// Format 2: packs, compaction, index objects and nodes, with what reading and writing cost.
    pub packs: super::PackReport,
    /// Every item removed (or that would be), in the order removed.
    pub removed: Vec<Removed>,
}

/// Reclaim space: remove temporary files killed writers left, records of deleted backups, and (mark and sweep)
/// data objects no manifest references, each older than `options.grace`. The data sweep and the temporary files
/// are skipped, with the reason in [`GcReport::deferred`], while a base-backup, a pitr-restore or another gc holds a live lease. Takes a gc lease for
/// the run (none in a dry run) and releases it at the end, on failure too.
#[tracing::instrument(skip_all, fields(backend = %storage, dry_run = options.dry_run))]
pub async fn collect(storage: &dyn Storage, options: &GcOptions) -> Result<GcReport, crate::Error> {
    let lease =
        if options.dry_run { None } else { Some(Lease::take(storage, LeaseKind::Gc, "").await.map_err(Error::from)?) };
    let result = run(storage, options, lease.as_ref()).await;
    if let Some(l) = lease
        && let Err(e) = l.release(storage).await
    {
        tracing::warn!(error = %e, "could not remove the gc lease; it expires by itself");
    }
    Ok(result?)
}

async fn run(storage: &dyn Storage, options: &GcOptions, lease: Option<&Lease>) -> Result<GcReport, Error> {
    let mut report = GcReport { dry_run: options.dry_run, ..GcReport::default() };
    let own = lease.map(Lease::key);
    let backend_now = lease.and_then(Lease::backend_now);
    // Another gc stops this one too: two sweeps planned from different marks (a `delete` or the grace boundary
    // between them) could each keep an index object naming a pack the other deletes. Both taking their leases
    // before either looks makes both wait for a later run, never both sweep. Later checks look for backups and
    // restores only: a gc that took its lease after this check defers itself here.
    let all = [LeaseKind::Backup, LeaseKind::Restore, LeaseKind::Gc];
    let live = lease::live_leases(storage, &all, own, backend_now, options.now, !options.dry_run).await?;
    report.deferred = blocking(&live);

    // Temporary files: never a complete object; old ones are a killed writer's. Left alone while a backup or
    // restore runs, so that its puts in flight are safe whatever the grace period.
    let mut temps = Vec::new();
    let incomplete = if report.deferred.is_some() { Vec::new() } else { storage.list_incomplete("").await? };
    for item in incomplete {
        if is_older_than(item.modified, options.grace, options.now) {
            temps.push(item);
        }
    }
    for item in temps {
        if !options.dry_run {
            storage.remove_incomplete(&item).await?;
        }
        report.temp_files_removed += 1;
        report.temp_bytes_removed += item.size;
        report.removed.push(Removed { kind: RemovedKind::Temp, name: item.name, bytes: item.size });
    }

    // Records of backups without a manifest: nothing uses them.
    let listing = storage.list(BACKUPS_PREFIX).await?;
    let (ids, orphans) = split_backups(&listing);
    let orphan_keys: Vec<Key> = orphans.iter().map(|m| m.key.clone()).collect();
    if !options.dry_run {
        storage.delete_many(&orphan_keys, DELETE_PARALLEL).await?;
    }
    for m in orphans {
        report.records_removed += 1;
        report.removed.push(Removed { kind: RemovedKind::Record, name: m.key.to_string(), bytes: m.size });
    }
    if report.deferred.is_some() {
        return Ok(report);
    }

    // Mark, then list the candidates.
    let mut marked = mark(storage, &ids, lease).await?;
    super::mark_dumps(storage, &mut marked, lease).await?;
    let referenced = &marked.objects;
    report.backups = marked.read;
    report.objects_referenced = referenced.len() as u64;
    let mut candidates = Vec::new();
    for meta in storage.list(DATA_PREFIX).await? {
        let Some(id) = ObjectId::from_key(meta.key.as_str()) else { continue };
        if referenced.contains(&id) {
            continue;
        }
        if is_older_than(meta.modified, options.grace, options.now) {
            candidates.push(meta);
        } else {
            report.objects_in_grace += 1;
        }
    }

    // Re-check just before sweeping: a backup that took its lease after the first check is seen here; one that
    // takes it after this check sees our lease and waits before listing what it reuses.
    if let Some(l) = lease {
        l.renew_if_due(storage).await?;
    }
    let live = lease::live_leases(storage, &BLOCKING, own, backend_now, options.now, false).await?;
    report.deferred = blocking(&live);
    if report.deferred.is_some() {
        return Ok(report);
    }

    for step in candidates.chunks(STEP) {
        if let Some(l) = lease {
            l.renew_if_due(storage).await?;
        }
        if !options.dry_run {
            let keys: Vec<Key> = step.iter().map(|m| m.key.clone()).collect();
            storage.delete_many(&keys, DELETE_PARALLEL).await?;
        }
        for m in step {
            report.objects_removed += 1;
            report.bytes_removed += m.size;
            report.removed.push(Removed { kind: RemovedKind::Object, name: m.key.to_string(), bytes: m.size });
        }
    }
    // Format 2: packs, index objects and nodes (with compaction); nothing to do on a format-1 repository.
    super::packs::sweep(storage, &marked, options, lease, &mut report).await?;
    tracing::debug!(
        objects = report.objects_removed,
        bytes = report.bytes_removed,
        temp_files = report.temp_files_removed,
        "gc done"
    );
    Ok(report)
}

/// The first live lease that stops a sweep (the caller lists only the kinds that do), described.
pub(super) fn blocking(live: &[lease::FoundLease]) -> Option<String> {
    live.first().map(|l| format!("{} is running", l.describe()))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::repository::backup::{BackupId, FileEntry, Manifest, Piece};
    use crate::repository::store;
    use crate::storage::PutMode;
    use crate::storage::fs::FsStorage;

    fn manifest(id: &str, objects: &[ObjectId]) -> Manifest {
        let pieces: Vec<Piece> =
            objects.iter().map(|o| Piece { object: *o, offset: 0, length: 1, blake3: *o }).collect();
        Manifest {
            id: id.parse().expect("id"),
            files: vec![FileEntry {
                path: "f".into(),
                size: pieces.len() as u64,
                mode: 0o600,
                mtime: 0,
                pieces,
                nodes: vec![],
            }],
            ..Manifest::example()
        }
    }

    /// Unreferenced old objects, old temp files and orphan records go; referenced and young objects stay; a dry
    /// run lists exactly what the real run removes; a live backup lease or another gc's defers the data sweep, a
    /// dead holder's lease does not.
    #[tokio::test]
    async fn mark_and_sweep_with_an_injected_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStorage::new(dir.path());
        let ids: Vec<ObjectId> = (0..4u8).map(|i| ObjectId::of(&[i])).collect();
        for id in &ids {
            s.put(&id.key(), Bytes::from_static(b"xx"), PutMode::Create).await.expect("put");
        }
        assert!(store::save_manifest(&s, &mut manifest("20261130-010000F", &ids[..2])).await.expect("manifest"));
        let orphan: BackupId = "20261129-010000F".parse().expect("id");
        let mark = crate::retention::keep::KeepMark { kept: true, until: None, set_at: String::new() };
        crate::retention::keep::set(&s, &orphan, &mark, OffsetDateTime::now_utc()).await.expect("keep");
        std::fs::write(dir.path().join("data").join(".tmp-killed"), b"half").expect("tmp");

        let grace = Duration::from_secs(3600);
        let now = OffsetDateTime::now_utc();
        let young = collect(&s, &GcOptions { grace, dry_run: false, now }).await.expect("gc");
        assert_eq!((young.objects_removed, young.objects_in_grace, young.temp_files_removed), (0, 2, 0));
        assert_eq!(young.records_removed, 1, "orphan records need no grace");

        let later = now + time::Duration::hours(2);
        let dry = collect(&s, &GcOptions { grace, dry_run: true, now: later }).await.expect("dry run");
        assert_eq!((dry.objects_removed, dry.temp_files_removed, dry.temp_bytes_removed), (2, 1, 4));
        assert_eq!(s.list(DATA_PREFIX).await.expect("list").len(), 4, "a dry run removes nothing");

        // A live base-backup lease (this process): the data sweep is deferred, naming it.
        let held = Lease::take(&s, LeaseKind::Backup, "20261130-020000F").await.expect("lease");
        let deferred = collect(&s, &GcOptions { grace, dry_run: false, now: later }).await.expect("gc");
        let why = deferred.deferred.expect("deferred");
        assert!(why.starts_with("base-backup 20261130-020000F (pid "), "{why}");
        assert_eq!(deferred.objects_removed, 0);
        assert_eq!(deferred.temp_files_removed, 0, "temp files stay while a backup runs: its puts may be in flight");
        held.release(&s).await.expect("release");
        // So does another gc's: two sweeps at once could each keep what the other deletes.
        let other = Lease::take(&s, LeaseKind::Gc, "").await.expect("lease");
        let deferred = collect(&s, &GcOptions { grace, dry_run: false, now: later }).await.expect("gc");
        let why = deferred.deferred.expect("deferred");
        assert!(why.starts_with("backupctl gc (pid "), "{why}");
        assert_eq!((deferred.objects_removed, deferred.temp_files_removed), (0, 0));
        other.release(&s).await.expect("release");

        let real = collect(&s, &GcOptions { grace, dry_run: false, now: later }).await.expect("gc");
        let names = |r: &GcReport| {
            r.removed.iter().filter(|x| x.kind == RemovedKind::Object).map(|x| x.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&real), names(&dry), "the real run removes what the dry run listed");
        let left: Vec<String> = s.list(DATA_PREFIX).await.expect("list").iter().map(|m| m.key.to_string()).collect();
        assert_eq!(left, {
            let mut v: Vec<String> = ids[..2].iter().map(|i| i.key().to_string()).collect();
            v.sort();
            v
        });
        assert!(s.list(lease::LOCKS_PREFIX).await.expect("list").is_empty(), "gc released its lease");

        // A damaged manifest stops the sweep.
        s.put(&"backups/20261130-030000F/manifest".parse().expect("key"), Bytes::from_static(b"junk"), PutMode::Create)
            .await
            .expect("put");
        let e = collect(&s, &GcOptions { grace, dry_run: false, now: later }).await.expect_err("unreadable");
        assert!(e.to_string().contains("manifest of backup 20261130-030000F is unreadable"), "{e}");
    }
}
