//! `backupctl status`'s picture of a repository, from listings and manifests ([`collect`]; reads no data object):
//! the archived WAL per timeline with its gaps, the restorable window, what each backup reaches, whether it is
//! kept and why, and its sizes (logical, stored, unique to it). A format-2 backup's unique size needs the
//! block-map nodes and pack index objects as well: [`unique_format2`] reads them (each distinct node once).
//!
//! Needs only read access: `list` of `wal/`, `data/`, `packs/`, `maps/`, `index/` and `backups/`, and `get` of the
//! descriptor, the cluster record, the manifests, the keep marks and the history files (and, for
//! [`unique_format2`], of the nodes and index objects).
//!
//! [`collect_with`] computes the same picture from backups already known ([`Backups::Known`]: each manifest
//! without its file entries, its digest and its sizes, as an earlier run computed them for the same
//! [`Listings::backup_inputs`]); then it reads no manifest, file map, node or index object. The catalog's sync
//! does that when nothing the backups' sizes depend on changed (docs/design/catalog.md).

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::coverage::{self, BackupCoverage, Clock, Coverage, GapStatus};
use crate::Error;
use crate::repository::backup::{BackupId, Manifest, ObjectId};
use crate::repository::store;
use crate::repository::wal_index::WalIndex;
use crate::repository::{ClusterInfo, store::Error as StoreError};
use crate::retention::keep::{self, KeepMark};
use crate::retention::plan::{self, Policy, Reach};
use crate::storage::{ObjectMeta, Storage};

mod listings;
mod unique;

pub use listings::{BackupInputs, Backups, KnownBackup, Listings};
pub use unique::{UniqueCost, unique_format2, unique_format2_listed};

/// A backup's sizes. Serialized as `status --json-output` shows them (`sizes` of each backup).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sizes {
    /// Bytes of its files (what a restore writes).
    pub logical: u64,
    /// Stored bytes of every object it references (shared ones included).
    pub stored: u64,
    /// Stored bytes of the objects no other backup references: what deleting it (and gc) would free. For a
    /// format-2 backup, the stored lengths of the frames and the nodes no other backup names, filled in by
    /// [`unique_format2`] (`None` until then, or if it could not be computed); see there for how close that is.
    pub unique: Option<u64>,
    /// Distinct objects it references.
    pub objects: u64,
    /// Of those, objects the listing of `data/` does not hold.
    pub objects_missing: u64,
}

/// One backup as status shows it.
#[derive(Debug, Clone)]
pub struct BackupStatus {
    /// The manifest.
    pub manifest: Manifest,
    /// The manifest object's content digest: its header's blake3 of the manifest's JSON as stored.
    pub manifest_digest: crate::codec::Digest,
    /// Its WAL.
    pub coverage: BackupCoverage,
    /// Its keep mark, if any.
    pub keep: Option<KeepMark>,
    /// Whether the keep mark keeps it now.
    pub is_kept: bool,
    /// Its sizes.
    pub sizes: Sizes,
    /// What the configured retention policy decides about it (`None`: no plan could be made, see
    /// [`PolicyStatus::error`]).
    pub retention: Option<Retention>,
}

/// What the configured retention policy decides about one backup: what `prune` would do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retention {
    /// Kept: every reason ("newest", "daily 2026-11-30", "kept forever", ...) and what it can reach once prune
    /// has deleted the WAL the policy does not keep.
    Kept {
        /// Why, as `prune` prints it.
        reasons: Vec<String>,
        /// Onward, or its stop only.
        reach: Reach,
    },
    /// The next `prune` deletes it.
    Deleted,
}

/// The configured retention policy as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    /// The policy (`Policy`'s `Display`).
    pub policy: String,
    /// False when no rule chooses backups or WAL: prune deletes no backup and no WAL.
    pub has_rules: bool,
    /// The logical dumps' policy ([`Policy::dumps_text`]).
    pub dumps: String,
    /// False when no `dump_*_retain` key is set: prune deletes no dump.
    pub has_dump_rules: bool,
    /// The plan's notes (a policy that keeps nothing, WAL left alone and why).
    pub notes: Vec<String>,
    /// Why no plan could be made (a manifest the plan cannot read).
    pub error: Option<String>,
}

/// The earliest and latest point a restore can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The oldest restorable backup (its stop time is the earliest point).
    pub earliest_backup: BackupId,
    /// Its stop time (RFC 3339).
    pub earliest: String,
    /// The backup that reaches furthest.
    pub latest_backup: BackupId,
    /// The last segment it reaches without a gap.
    pub latest_segment: String,
    /// When that segment was archived (RFC 3339, the repository's clock): the latest point is at or before it.
    pub latest: Option<String>,
}

/// Everything `status` shows.
#[derive(Debug)]
pub struct Status {
    /// The cluster on record.
    pub cluster: Option<ClusterInfo>,
    /// The archived WAL.
    pub index: WalIndex,
    /// Its coverage.
    pub coverage: Coverage,
    /// Every backup, oldest first.
    pub backups: Vec<BackupStatus>,
    /// Backups whose manifest cannot be read, with why.
    pub unusable: Vec<(BackupId, StoreError)>,
    /// Damaged history files (key, why): not followed.
    pub bad_histories: Vec<(String, String)>,
    /// The restorable window (`None`: no backup can be restored).
    pub window: Option<Window>,
    /// Seconds since the newest backup stopped.
    pub newest_backup_age_seconds: Option<i64>,
    /// The configured retention policy.
    pub policy: PolicyStatus,
    /// Stored bytes of every object under `data/` (referenced or not).
    pub data_bytes_stored: u64,
    /// Stored bytes of the repository by kind, from listings.
    pub repository_bytes: RepositoryBytes,
}

/// Stored bytes of the repository by kind, from one listing of each prefix (what the backend holds, referenced
/// or not; format 1 uses `data/`, format 2 `packs/`, `maps/` and `index/`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepositoryBytes {
    /// `data/` (format 1 chunks and small-file packs).
    pub data: u64,
    /// `packs/` (format 2).
    pub packs: u64,
    /// `maps/`: block-map nodes (format 2).
    pub maps: u64,
    /// `index/`: pack indexes (format 2).
    pub index: u64,
    /// `wal/`: archived WAL.
    pub wal: u64,
    /// `backups/`: manifests and keep records.
    pub backups: u64,
}

impl RepositoryBytes {
    /// Stored bytes of backup data in either format: `data/` + `packs/` + `maps/` + `index/` (manifests and WAL
    /// excluded).
    pub fn backup_data(&self) -> u64 {
        self.data + self.packs + self.maps + self.index
    }
}

impl Status {
    /// True if no timeline has a gap other than an expired one (pruned on purpose).
    pub fn is_wal_complete(&self) -> bool {
        self.coverage.timelines.iter().flat_map(|t| &t.gaps).all(|g| g.status == GapStatus::Expired)
    }
}

/// Collect the status of the repository in `storage` at `clock.now`, with what `policy` decides about each backup:
/// the listings, then every listed manifest, then [`collect_with`].
pub async fn collect(storage: &dyn Storage, clock: &Clock, policy: &Policy) -> Result<Status, Error> {
    let listings = Listings::read(storage).await?;
    let (loaded, unusable) = store::manifests_with_digests_of(storage, listings.backup_ids()).await?;
    collect_with(storage, clock, policy, &listings, Backups::Read { loaded, unusable }).await
}

/// [`collect`] from `listings` (read by [`Listings::read`]) and `backups`: reads the cluster record, the history
/// files and the keep marks (nothing else). With [`Backups::Known`], every backup's sizes are the given ones and
/// its `unique` is set; with [`Backups::Read`] a format-2 backup's `unique` is left to [`unique_format2`].
/// Errors: storage errors, a keep mark that cannot be read.
pub async fn collect_with(
    storage: &dyn Storage,
    clock: &Clock,
    policy: &Policy,
    listings: &Listings,
    backups: Backups,
) -> Result<Status, Error> {
    let (manifests, digests, known_sizes, unusable) = match backups {
        Backups::Read { loaded, unusable } => {
            let (manifests, digests): (Vec<Manifest>, Vec<crate::codec::Digest>) = loaded.into_iter().unzip();
            (manifests, digests, None, unusable)
        }
        Backups::Known(known) => {
            let mut out = (Vec::new(), Vec::new(), Vec::new());
            for k in known {
                out.0.push(k.manifest);
                out.1.push(k.manifest_digest);
                out.2.push(k.sizes);
            }
            (out.0, out.1, Some(out.2), Vec::new())
        }
    };
    let cluster = store::cluster_info(storage).await?;
    let size = crate::wal::SegmentSize::new(match &cluster {
        Some(c) => c.wal_segment_size,
        None => manifests.first().map_or(crate::wal::SegmentSize::DEFAULT.bytes(), |m| m.wal_segment_size),
    })?;
    let wal_listing = &listings.wal;
    let index = WalIndex::build(wal_listing, size);
    let (histories, bad) = super::load_histories(storage, &index).await?;
    let coverage = coverage::coverage(&index, &manifests, &histories, clock);
    let marks = keep::load_listed(storage, &listings.backups).await?;
    let stored: HashMap<ObjectId, u64> =
        listings.data.iter().filter_map(|m| ObjectId::from_key(m.key.as_str()).map(|id| (id, m.size))).collect();
    let now = OffsetDateTime::from(clock.now);
    let data_bytes_stored = stored.values().sum();
    let total = |list: &[ObjectMeta]| list.iter().map(|m| m.size).sum::<u64>();
    let nodes: HashMap<ObjectId, u64> = listings
        .maps
        .iter()
        .filter_map(|m| crate::repository::blockmap::node_from_key(m.key.as_str()).map(|id| (id, m.size)))
        .collect();
    let repository_bytes = RepositoryBytes {
        data: data_bytes_stored,
        packs: total(&listings.packs),
        maps: nodes.values().sum(),
        index: total(&listings.index),
        wal: total(wal_listing),
        backups: total(&listings.backups),
    };
    let sizes = match known_sizes {
        Some(known) => known,
        None => {
            let mut sizes = sizes(&manifests, &stored);
            for (m, s) in manifests.iter().zip(sizes.iter_mut()) {
                if m.repository_format >= 2 {
                    *s = sizes_format2(m, &nodes);
                }
            }
            sizes
        }
    };
    let history = crate::retention::expire::newest_history(storage, wal_listing).await?;
    let (policy, mut decisions) =
        retention(&manifests, &unusable, &marks, wal_listing, size, history.as_ref(), policy, clock.now);
    let backups: Vec<BackupStatus> = manifests
        .into_iter()
        .zip(coverage.backups.iter().cloned())
        .zip(sizes)
        .zip(digests)
        .map(|(((manifest, coverage), sizes), manifest_digest)| {
            let keep = marks.get(&manifest.id).cloned();
            let is_kept = keep.as_ref().is_some_and(|k| k.is_kept_at(now));
            let retention = decisions.remove(&manifest.id);
            BackupStatus { manifest, manifest_digest, coverage, keep, is_kept, sizes, retention }
        })
        .collect();
    let window = window(&backups);
    let newest_backup_age_seconds = backups
        .iter()
        .filter_map(|b| OffsetDateTime::parse(&b.manifest.stop_time, &Rfc3339).ok())
        .max()
        .map(|t| (now - t).whole_seconds());
    Ok(Status {
        cluster,
        index,
        coverage,
        backups,
        unusable,
        bad_histories: bad.into_iter().map(|p| (p.what, p.reason)).collect(),
        window,
        newest_backup_age_seconds,
        policy,
        data_bytes_stored,
        repository_bytes,
    })
}

/// What `policy` decides at `now` about each backup: the plan `prune` would apply (pure). A repository with
/// unusable manifests gets no plan (prune refuses it too), and says why.
#[allow(clippy::too_many_arguments)] // the plan's inputs, each from a different listing
fn retention(
    manifests: &[Manifest],
    unusable: &[(BackupId, StoreError)],
    marks: &HashMap<BackupId, KeepMark>,
    wal_listing: &[ObjectMeta],
    size: crate::wal::SegmentSize,
    history: Option<&crate::wal::TimelineHistory>,
    policy: &Policy,
    now: SystemTime,
) -> (PolicyStatus, HashMap<BackupId, Retention>) {
    let mut status = PolicyStatus {
        policy: policy.to_string(),
        has_rules: policy.rules.has_rule(),
        dumps: policy.dumps_text(),
        has_dump_rules: policy.dump_rules.has_backup_rule(),
        notes: vec![],
        error: None,
    };
    let mut out = HashMap::new();
    if let Some((id, _)) = unusable.first() {
        status.error = Some(format!("backup {id} is unusable: prune refuses to plan until it is deleted"));
        return (status, out);
    }
    let backups: Result<Vec<plan::Backup>, _> =
        manifests.iter().map(|m| plan::Backup::from_manifest(m, marks.get(&m.id).cloned())).collect();
    let (backups, now) = match (backups, jiff::Timestamp::try_from(now)) {
        (Ok(b), Ok(now)) => (b, now),
        (Err(e), _) => {
            status.error = Some(e.to_string());
            return (status, out);
        }
        (_, Err(e)) => {
            status.error = Some(format!("the clock: {e}"));
            return (status, out);
        }
    };
    let p = plan::plan(&backups, wal_listing, Some(size), history, policy, now);
    for k in p.keep {
        let reasons = k.reasons.iter().map(ToString::to_string).collect();
        out.insert(k.id, Retention::Kept { reasons, reach: k.reach });
    }
    for d in p.delete {
        out.insert(d.id, Retention::Deleted);
    }
    status.notes = p.notes;
    (status, out)
}

/// Per manifest, its sizes; `stored` maps each listed data object to its stored bytes.
pub fn sizes(manifests: &[Manifest], stored: &HashMap<ObjectId, u64>) -> Vec<Sizes> {
    let mut users: HashMap<ObjectId, u32> = HashMap::new();
    let per_backup: Vec<std::collections::BTreeSet<ObjectId>> =
        manifests.iter().map(|m| m.files.iter().flat_map(|f| &f.pieces).map(|p| p.object).collect()).collect();
    for objects in &per_backup {
        for o in objects {
            *users.entry(*o).or_default() += 1;
        }
    }
    manifests
        .iter()
        .zip(&per_backup)
        .map(|(m, objects)| {
            let mut s =
                Sizes { logical: m.stats.bytes, objects: objects.len() as u64, unique: Some(0), ..Sizes::default() };
            for o in objects {
                match stored.get(o) {
                    Some(&n) => {
                        s.stored += n;
                        if users.get(o) == Some(&1) {
                            s.unique = s.unique.map(|u| u + n);
                        }
                    }
                    None => s.objects_missing += 1,
                }
            }
            s
        })
        .collect()
}

/// A format-2 backup's sizes: `stored` is what it added to the repository (`stats.bytes_stored`: the packs, nodes
/// and pack index it created), `unique` is left to [`unique_format2`] (it needs every node of every backup),
/// `objects` counts the nodes and small-file frames it names, and `objects_missing` the nodes the listing of
/// `maps/` does not hold.
fn sizes_format2(m: &Manifest, nodes: &HashMap<ObjectId, u64>) -> Sizes {
    let named: std::collections::BTreeSet<ObjectId> =
        m.files.iter().flat_map(|f| f.pieces.iter().map(|p| p.object).chain(f.nodes.iter().copied())).collect();
    let own_nodes: std::collections::BTreeSet<&ObjectId> = m.files.iter().flat_map(|f| &f.nodes).collect();
    Sizes {
        logical: m.stats.bytes,
        stored: m.stats.bytes_stored,
        unique: None,
        objects: named.len() as u64,
        objects_missing: own_nodes.iter().filter(|n| !nodes.contains_key(**n)).count() as u64,
    }
}

/// From the oldest restorable backup's stop to the furthest WAL a restorable backup reaches.
fn window(backups: &[BackupStatus]) -> Option<Window> {
    let restorable: Vec<&BackupStatus> =
        backups.iter().filter(|b| b.coverage.is_restorable() && b.sizes.objects_missing == 0).collect();
    let oldest = restorable.iter().min_by(|a, b| a.manifest.stop_time.cmp(&b.manifest.stop_time))?;
    let furthest = restorable.iter().filter(|b| b.coverage.wal.reach.is_some()).max_by_key(|b| {
        (
            b.coverage.reach_written.unwrap_or(SystemTime::UNIX_EPOCH),
            b.coverage.wal.reach.map(|r| (r.timeline, r.log, r.seg)),
        )
    })?;
    Some(Window {
        earliest_backup: oldest.manifest.id.clone(),
        earliest: oldest.manifest.stop_time.clone(),
        latest_backup: furthest.manifest.id.clone(),
        latest_segment: furthest.coverage.wal.reach.map(|r| r.to_string()).unwrap_or_default(),
        latest: furthest.coverage.reach_written.and_then(rfc3339),
    })
}

/// `t` as RFC 3339 UTC.
pub fn rfc3339(t: SystemTime) -> Option<String> {
    OffsetDateTime::from(t).format(&Rfc3339).ok()
}

/// Backups by id, for lookups.
pub fn by_id(backups: &[BackupStatus]) -> BTreeMap<&BackupId, &BackupStatus> {
    backups.iter().map(|b| (&b.manifest.id, b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unique bytes are those of objects no other backup references; a missing object is counted, not sized.
    #[test]
    fn sizes_logical_stored_unique() {
        let piece = |o: ObjectId| crate::repository::backup::Piece { object: o, offset: 0, length: 1, blake3: o };
        let (a, b, c) = (ObjectId::of(b"a"), ObjectId::of(b"b"), ObjectId::of(b"c"));
        let manifest = |objects: &[ObjectId], bytes: u64| {
            let mut m: Manifest = serde_json::from_value(serde_json::json!({
                "format": 1, "id": "20261130-000000F", "label": "l", "description": null, "type": "full",
                "start_time": "", "stop_time": "", "start_lsn": "0/0", "stop_lsn": "0/0", "timeline": 1,
                "start_wal": "", "stop_wal": "", "pg_version_num": 150000, "system_identifier": "1",
                "wal_segment_size": 16777216, "chunk_size": 1048576, "backup_label": "", "tablespace_map": null,
                "tablespaces": [], "directories": [], "files": [],
                "stats": {"files": 0, "bytes": bytes, "objects_written": 0, "bytes_written": 0, "bytes_stored": 0, "bytes_reused": 0, "duration_ms": 0}
            }))
            .expect("manifest");
            m.files.push(crate::repository::backup::FileEntry {
                path: "f".into(),
                size: objects.len() as u64,
                mode: 0o600,
                mtime: 0,
                pieces: objects.iter().map(|o| piece(*o)).collect(),
                nodes: vec![],
            });
            m
        };
        let stored: HashMap<ObjectId, u64> = [(a, 10), (b, 20)].into_iter().collect();
        let s = sizes(&[manifest(&[a, b], 100), manifest(&[b, c], 200)], &stored);
        assert_eq!(s[0], Sizes { logical: 100, stored: 30, unique: Some(10), objects: 2, objects_missing: 0 });
        assert_eq!(s[1], Sizes { logical: 200, stored: 20, unique: Some(0), objects: 2, objects_missing: 1 });
    }
}
