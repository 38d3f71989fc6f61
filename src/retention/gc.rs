//! Deleting backups and reclaiming space (mark and sweep), safe against a concurrent base-backup.
//! See docs/design/retention.md, "Deleting a backup and garbage collection".
//!
//! Invariants:
//! - [`delete_backup`] removes the manifest first (the backup stops existing at once), then the rest of
//!   `backups/<id>/`; it never touches `data/` or `wal/`. Killed at any moment, every other backup is intact and
//!   a rerun (of delete or gc) finishes the job.
//! - [`collect`] removes a data object only if no manifest references it (mark: the union of every manifest's
//!   pieces), it is older than the grace period, and no base-backup or restore held a live lease at the start of
//!   the run or just before the sweep, while gc held its own lease throughout (which makes a base-backup that
//!   starts meanwhile wait before listing the objects it may reuse). A manifest that cannot be read stops the
//!   sweep: what it references is unknown.
//! - Temporary files (a `file://` put's `.tmp-*`, an S3 incomplete multipart upload) older than the grace period
//!   are never a complete object: removing them is always safe.

mod packs;
mod sweep;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use time::OffsetDateTime;

use super::keep;
use crate::repository::backup::{BACKUPS_PREFIX, BackupId, ObjectId};
use crate::repository::lease::{self, Lease, LeaseKind};
use crate::repository::store;
use crate::storage::{Key, ObjectMeta, Storage};

pub use packs::PackReport;
pub use sweep::{GcOptions, GcReport, Removed, RemovedKind, collect};

/// Deletes at once (requests in flight; on S3 each is a `DeleteObjects` batch of up to 1000 keys).
pub const DELETE_PARALLEL: usize = 16;

/// Why a delete or gc was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No backup has this id (and nothing is left of one).
    #[error("backup {id} does not exist in {backend} (backups: {known})")]
    UnknownBackup {
        /// The id asked for.
        id: BackupId,
        /// Backend display.
        backend: String,
        /// The ids that exist, or `none`.
        known: String,
    },
    /// The backup has a keep mark in force.
    #[error("backup {id} is {mark}; not deleted")]
    Kept {
        /// The backup.
        id: BackupId,
        /// The mark, described (`kept forever`, `kept until ...`).
        mark: String,
    },
    /// A manifest could not be read: what it references is unknown, so nothing is swept.
    #[error("cannot collect garbage in {backend}: manifest of backup {id} is unreadable ({source})")]
    UnreadableManifest {
        /// The backup.
        id: BackupId,
        /// Backend display.
        backend: String,
        /// Cause.
        #[source]
        source: store::Error,
    },
    /// A dump manifest could not be read: the frames it names are unknown, so nothing is swept.
    #[error("cannot collect garbage in {backend}: manifest of dump {id} is unreadable ({source})")]
    UnreadableDumpManifest {
        /// The dump.
        id: crate::repository::dump::DumpId,
        /// Backend display.
        backend: String,
        /// Cause.
        #[source]
        source: store::Error,
    },
    /// A block-map node a manifest names could not be read: the frames it references are unknown, so no pack is
    /// swept or compacted.
    #[error("cannot collect garbage in {backend}: block-map node {node} of backup {id} is unreadable ({source})")]
    UnreadableNode {
        /// A backup that names it.
        id: String,
        /// The node's key.
        node: Key,
        /// Backend display.
        backend: String,
        /// Cause.
        #[source]
        source: store::Error,
    },
    /// A blocking task failed (a panic or cancellation).
    #[error("gc task failed: {0}")]
    Task(String),
    /// A repository record could not be read or written.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A lease failed.
    #[error(transparent)]
    Lease(#[from] lease::Error),
}

impl Error {
    /// One sentence of guidance, if any.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Error::UnknownBackup { .. } => "run 'backupctl status' to list the backups",
            Error::Kept { .. } => "remove the mark first with 'backupctl unkeep --backup-id ID', or pass --force",
            Error::UnreadableManifest { .. } => {
                "run 'backupctl verify'; delete the damaged backup with 'backupctl delete --backup-id ID' (its data is then collected) or restore its manifest from a copy"
            }
            Error::UnreadableDumpManifest { .. } => {
                "run 'backupctl verify'; delete the damaged dump with 'backupctl delete --backup-id ID' (its data is then collected) or restore its manifest from a copy"
            }
            Error::UnreadableNode { .. } => {
                "run 'backupctl verify'; delete the backups that name it with 'backupctl delete --backup-id ID' (their data is then collected)"
            }
            Error::Store(_) | Error::Lease(_) | Error::Task(_) => return None,
        })
    }
}

impl From<crate::storage::Error> for Error {
    fn from(e: crate::storage::Error) -> Self {
        Error::Store(e.into())
    }
}

/// What [`delete_backup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedBackup {
    /// The backup.
    pub id: BackupId,
    /// Objects removed under `backups/<id>/` (the manifest and keep records).
    pub objects_deleted: u64,
    /// True if the manifest was already gone (an earlier delete was killed) and only its leftovers were removed.
    pub was_unfinished: bool,
}

/// What deleting a backup would do: [`plan_delete`].
#[derive(Debug, Clone)]
pub struct DeletePlan {
    /// The backup.
    pub id: BackupId,
    /// Everything under `backups/<id>/`, the manifest first.
    pub keys: Vec<ObjectMeta>,
    /// The manifest is already gone (a killed delete's leftovers only).
    pub was_unfinished: bool,
    /// It is the newest backup.
    pub is_newest: bool,
    /// It is the only backup.
    pub is_only: bool,
}

/// Check that `id` can be deleted and list what would go. Refuses an unknown id ([`Error::UnknownBackup`]) and,
/// unless `force`, a backup whose keep mark is in force at `now` ([`Error::Kept`]).
pub async fn plan_delete(
    storage: &dyn Storage,
    id: &BackupId,
    now: OffsetDateTime,
    force: bool,
) -> Result<DeletePlan, Error> {
    let prefix = format!("{BACKUPS_PREFIX}{id}/");
    let manifest = id.manifest_key();
    let mut keys = storage.list(&prefix).await?;
    let has_manifest = keys.iter().any(|m| m.key == manifest);
    if keys.is_empty() {
        let ids = store::backup_ids(storage).await?;
        let known = if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        return Err(Error::UnknownBackup { id: id.clone(), backend: storage.to_string(), known });
    }
    if has_manifest
        && !force
        && let Some(mark) = keep::load(storage, id).await?
        && mark.is_kept_at(now)
    {
        return Err(Error::Kept { id: id.clone(), mark: mark.describe() });
    }
    // The manifest goes first.
    keys.sort_by_key(|m| (m.key != manifest, m.key.clone()));
    let ids = store::backup_ids(storage).await?;
    Ok(DeletePlan {
        id: id.clone(),
        keys,
        was_unfinished: !has_manifest,
        is_newest: has_manifest && ids.last() == Some(id),
        is_only: has_manifest && ids.len() == 1,
    })
}

/// Delete one backup: its manifest first (it stops being listed at once), then everything else under
/// `backups/<id>/` (keep records). Never touches data objects or WAL (gc and prune reclaim them). Refuses a backup
/// with a keep mark in force ([`keep::KeepMark::is_kept_at`] `now`) unless `force`, and an unknown id. When the
/// manifest is already gone but records are left (a killed delete), removes them: a rerun finishes the job.
pub async fn delete_backup(
    storage: &dyn Storage,
    id: &BackupId,
    now: OffsetDateTime,
    force: bool,
) -> Result<DeletedBackup, crate::Error> {
    let plan = plan_delete(storage, id, now, force).await?;
    let mut deleted = 0u64;
    let mut rest: Vec<Key> = plan.keys.iter().map(|m| m.key.clone()).collect();
    if !plan.was_unfinished && !rest.is_empty() {
        let manifest = rest.remove(0);
        storage.delete(&manifest).await?;
        deleted += 1;
        tracing::debug!(backup = %id, key = %manifest, backend = %storage, "backup deleted (manifest removed)");
    }
    deleted += storage.delete_many(&rest, DELETE_PARALLEL).await?;
    Ok(DeletedBackup { id: id.clone(), objects_deleted: deleted, was_unfinished: plan.was_unfinished })
}

/// What the manifests reference (mark).
#[derive(Debug, Default)]
pub(crate) struct Marked {
    /// Format 1: the `data/` objects their pieces name.
    pub objects: HashSet<ObjectId>,
    /// Format 2: the block-map nodes their block-mapped files name.
    pub nodes: HashSet<ObjectId>,
    /// Format 2: the frames their small files' pieces name (frames named by nodes are added by
    /// `packs::mark_nodes`).
    pub frames: HashSet<ObjectId>,
    /// Manifest format 4: the file maps the manifests name (swept under `maps/` with the nodes when unnamed).
    pub file_maps: HashSet<ObjectId>,
    /// Format 2: per node, one backup that names it (for messages).
    pub node_users: HashMap<ObjectId, BackupId>,
    /// Manifests read.
    pub read: u64,
}

/// Everything referenced by a manifest (mark), and how many manifests were read. A manifest that cannot be read
/// is an error; one that vanished meanwhile (deleted) is skipped. Renews `lease` between manifests.
pub(crate) async fn mark(storage: &dyn Storage, ids: &[BackupId], lease: Option<&Lease>) -> Result<Marked, Error> {
    let mut marked = Marked::default();
    let mut maps = store::FileMapCache::new();
    for id in ids {
        if let Some(l) = lease {
            l.renew_if_due(storage).await?;
        }
        match store::load_manifest_cached(storage, id, &mut maps).await.map(|m| m.map(|(m, _)| m)) {
            Ok(Some(m)) => {
                marked.read += 1;
                let pieces = m.files.iter().flat_map(|f| f.pieces.iter().map(|p| p.object));
                if m.repository_format >= 2 {
                    marked.file_maps.extend(m.file_maps.iter().map(|r| r.id));
                    marked.frames.extend(pieces);
                    for n in m.files.iter().flat_map(|f| &f.nodes) {
                        marked.nodes.insert(*n);
                        marked.node_users.entry(*n).or_insert_with(|| id.clone());
                    }
                } else {
                    marked.objects.extend(pieces);
                }
            }
            Ok(None) => {}
            Err(e @ store::Error::Storage(_)) => return Err(e.into()),
            Err(source) => {
                return Err(Error::UnreadableManifest { id: id.clone(), backend: storage.to_string(), source });
            }
        }
    }
    Ok(marked)
}

/// Add the frames every dump manifest names to `marked` (issue 12: logical dumps keep their content in packs).
/// A dump manifest that cannot be read is an error ([`Error::UnreadableDumpManifest`]); one deleted meanwhile is
/// skipped. Renews `lease` between manifests.
pub(crate) async fn mark_dumps(storage: &dyn Storage, marked: &mut Marked, lease: Option<&Lease>) -> Result<(), Error> {
    use crate::repository::dump;
    for id in dump::dump_ids(storage).await? {
        if let Some(l) = lease {
            l.renew_if_due(storage).await?;
        }
        match dump::load_manifest(storage, &id).await {
            Ok(Some(m)) => {
                marked.read += 1;
                marked.frames.extend(m.frames());
            }
            Ok(None) => {}
            Err(e @ store::Error::Storage(_)) => return Err(e.into()),
            Err(source) => {
                return Err(Error::UnreadableDumpManifest { id, backend: storage.to_string(), source });
            }
        }
    }
    Ok(())
}

/// One listing of `backups/`: the ids with a manifest, and the keys under `backups/<id>/` of ids without one
/// (keep records of deleted backups, a killed delete's leftovers).
pub(crate) fn split_backups(listing: &[ObjectMeta]) -> (Vec<BackupId>, Vec<ObjectMeta>) {
    let mut by_id: BTreeMap<BackupId, (bool, Vec<&ObjectMeta>)> = BTreeMap::new();
    for meta in listing {
        let Some(rest) = meta.key.as_str().strip_prefix(BACKUPS_PREFIX) else { continue };
        let Some((id, _)) = rest.split_once('/') else { continue };
        let Ok(id) = id.parse::<BackupId>() else { continue };
        let entry = by_id.entry(id).or_default();
        entry.0 |= BackupId::from_manifest_key(meta.key.as_str()).is_some();
        entry.1.push(meta);
    }
    let mut ids = Vec::new();
    let mut orphans = Vec::new();
    for (id, (has_manifest, keys)) in by_id {
        if has_manifest {
            ids.push(id);
        } else {
            orphans.extend(keys.into_iter().cloned());
        }
    }
    (ids, orphans)
}

/// True if an object modified at `modified` is older than `grace` at `now`; an unknown time is new.
pub(crate) fn is_older_than(modified: Option<std::time::SystemTime>, grace: Duration, now: OffsetDateTime) -> bool {
    let Some(m) = modified else { return false };
    let now = std::time::SystemTime::from(now);
    now.duration_since(m).is_ok_and(|age| age > grace)
}

/// The kinds of lease that stop a sweep.
pub(crate) const BLOCKING: [LeaseKind; 2] = [LeaseKind::Backup, LeaseKind::Restore];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FsStorage;

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta { key: Key::new(key).expect("key"), size: 1, modified: None }
    }

    #[test]
    fn orphans_are_records_without_a_manifest() {
        let listing = [
            meta("backups/20261130-010000F/keep/20261130T010000.000000000Z"),
            meta("backups/20261130-010000F/manifest"),
            meta("backups/20261130-020000F/keep/20261130T020000.000000000Z"),
            meta("backups/not-an-id/x"),
        ];
        let (ids, orphans) = split_backups(&listing);
        assert_eq!(ids, vec!["20261130-010000F".parse::<BackupId>().expect("id")]);
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].key.as_str(), "backups/20261130-020000F/keep/20261130T020000.000000000Z");
    }

    #[test]
    fn grace_table() {
        let now = time::macros::datetime!(2026-11-30 12:00:00 UTC);
        let t = |secs_ago: u64| Some(std::time::SystemTime::from(now) - Duration::from_secs(secs_ago));
        let hour = Duration::from_secs(3600);
        assert!(is_older_than(t(3601), hour, now));
        assert!(!is_older_than(t(3600), hour, now));
        assert!(!is_older_than(t(0), hour, now));
        assert!(!is_older_than(None, hour, now), "no time: treated as new");
        // A time in the future (backend clock ahead): new.
        assert!(!is_older_than(Some(std::time::SystemTime::from(now) + hour), hour, now));
    }

    #[tokio::test]
    async fn delete_refuses_kept_and_unknown_and_finishes_a_killed_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStorage::new(dir.path());
        let id: BackupId = "20261130-010000F".parse().expect("id");
        let now = time::macros::datetime!(2026-11-30 12:00:00 UTC);
        let e = delete_backup(&s, &id, now, false).await.expect_err("unknown");
        assert!(
            e.to_string().contains("backup 20261130-010000F does not exist") && e.to_string().contains("none"),
            "{e}"
        );
        s.put(&id.manifest_key(), bytes::Bytes::from_static(b"m"), crate::storage::PutMode::Create).await.expect("put");
        let mark = keep::KeepMark { kept: true, until: None, set_at: String::new() };
        keep::set(&s, &id, &mark, now).await.expect("keep");
        let e = delete_backup(&s, &id, now, false).await.expect_err("kept");
        assert_eq!(e.to_string(), "backup 20261130-010000F is kept forever; not deleted");
        // A killed delete: the manifest is gone, a keep record is left; a rerun removes it.
        s.delete(&id.manifest_key()).await.expect("delete");
        let done = delete_backup(&s, &id, now, false).await.expect("finish");
        assert!(done.was_unfinished && done.objects_deleted == 1, "{done:?}");
        assert!(s.list(BACKUPS_PREFIX).await.expect("list").is_empty());
        // Forced: manifest first, then the records.
        s.put(&id.manifest_key(), bytes::Bytes::from_static(b"m"), crate::storage::PutMode::Create).await.expect("put");
        keep::set(&s, &id, &mark, now).await.expect("keep");
        let done = delete_backup(&s, &id, now, true).await.expect("forced");
        assert_eq!((done.objects_deleted, done.was_unfinished), (2, false));
    }
}
