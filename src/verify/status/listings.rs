//! The listings [`super::collect`] reads, what the backups' sizes depend on in them ([`BackupInputs`]), and the
//! backups [`super::collect_with`] starts from ([`Backups`]: read now, or known from an earlier run).

use std::time::SystemTime;

use super::Sizes;
use crate::Error;
use crate::codec::Digest;
use crate::repository::backup::{BackupId, DATA_PREFIX, Manifest};
use crate::repository::store::Error as StoreError;
use crate::storage::{ObjectMeta, Storage};

/// One listing of each prefix [`super::collect`] reads, `backups/` first: a manifest listed there was complete
/// before the other prefixes were listed, so every object it references is in their listings.
#[derive(Debug, Clone, Default)]
pub struct Listings {
    /// `backups/`: manifests and keep marks.
    pub backups: Vec<ObjectMeta>,
    /// `wal/`.
    pub wal: Vec<ObjectMeta>,
    /// `data/` (format 1).
    pub data: Vec<ObjectMeta>,
    /// `packs/` (format 2).
    pub packs: Vec<ObjectMeta>,
    /// `maps/`: block-map nodes and file maps (format 2).
    pub maps: Vec<ObjectMeta>,
    /// `index/`: pack indexes (format 2).
    pub index: Vec<ObjectMeta>,
}

/// What the backups' manifests, manifest digests and sizes are computed from, as listed: a digest of the manifest
/// objects, and one of the objects under `data/`, `maps/` and `index/` up to a time. Recorded by a sync that read
/// the backups, compared by the next ([`Listings::is_unchanged_since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupInputs {
    /// Digest (`blake3:<hex>`) of every manifest object: key, stored size, modification time.
    pub manifests: String,
    /// The newest modification time among the objects under `data/`, `maps/` and `index/` (nanoseconds since
    /// 1970, the backend's clock); `None` when none has one.
    pub objects_upto: Option<u64>,
    /// Digest (`blake3:<hex>`) of those objects (prefix, key, stored size) not modified after `objects_upto`.
    pub objects: String,
}

/// An object's modification time in nanoseconds since 1970 (`None`: the backend did not say).
fn nanos(m: &ObjectMeta) -> Option<u64> {
    m.modified
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
}

impl Listings {
    /// List the six prefixes (six listings; more requests on S3 for more than 1000 objects each). Errors: storage.
    pub async fn read(storage: &dyn Storage) -> Result<Self, Error> {
        use crate::repository::{backup::BACKUPS_PREFIX, blockmap::MAPS_PREFIX, packs};
        Ok(Self {
            backups: storage.list(BACKUPS_PREFIX).await?,
            wal: storage.list("wal/").await?,
            data: storage.list(DATA_PREFIX).await?,
            packs: storage.list(packs::PACKS_PREFIX).await?,
            maps: storage.list(MAPS_PREFIX).await?,
            index: storage.list(packs::INDEX_PREFIX).await?,
        })
    }

    /// The backups whose manifest is listed, oldest first.
    pub fn backup_ids(&self) -> Vec<BackupId> {
        let mut ids: Vec<BackupId> =
            self.backups.iter().filter_map(|m| BackupId::from_manifest_key(m.key.as_str())).collect();
        ids.sort();
        ids
    }

    fn objects(&self) -> impl Iterator<Item = (&'static str, &ObjectMeta)> {
        self.data
            .iter()
            .map(|m| ("data", m))
            .chain(self.maps.iter().map(|m| ("maps", m)))
            .chain(self.index.iter().map(|m| ("index", m)))
    }

    fn manifests_digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for m in self.backups.iter().filter(|m| BackupId::from_manifest_key(m.key.as_str()).is_some()) {
            h.update(format!("{} {} {:?}\n", m.key, m.size, nanos(m)).as_bytes());
        }
        Digest::Blake3(*h.finalize().as_bytes()).to_string()
    }

    /// Digest of the objects under `data/`, `maps/` and `index/` not modified after `upto` (all those without a
    /// time included; with `upto` `None`, only those).
    fn objects_digest(&self, upto: Option<u64>) -> String {
        let mut h = blake3::Hasher::new();
        for (kind, m) in self.objects().filter(|(_, m)| !is_after(m, upto)) {
            h.update(format!("{kind} {} {}\n", m.key, m.size).as_bytes());
        }
        Digest::Blake3(*h.finalize().as_bytes()).to_string()
    }

    /// What the backups depend on in these listings (see [`BackupInputs`]).
    pub fn backup_inputs(&self) -> BackupInputs {
        let upto = self.objects().filter_map(|(_, m)| nanos(m)).max();
        BackupInputs { manifests: self.manifests_digest(), objects_upto: upto, objects: self.objects_digest(upto) }
    }

    /// Whether the backups' manifests, digests and sizes computed from listings with the inputs `recorded` are
    /// still theirs in these listings: the same manifest objects, every object under `data/`, `maps/` and
    /// `index/` listed then still listed unmodified, and any other object modified after `recorded.objects_upto`,
    /// that is, added since. Objects added change no backup's sizes when `is_complete` (every object the backups
    /// referenced was found then: no missing object, node or frame); otherwise nothing may have been added.
    ///
    /// Keys under those prefixes are digests of the content, so an object listed then and now is the same object;
    /// one written again under its key has a later time and counts as removed. An object added but stamped at or
    /// before `objects_upto` (a clock going back, the same second on S3) also makes the answer false: reading
    /// again is the safe side.
    pub fn is_unchanged_since(&self, recorded: &BackupInputs, is_complete: bool) -> bool {
        let upto = recorded.objects_upto;
        self.manifests_digest() == recorded.manifests
            && self.objects_digest(upto) == recorded.objects
            && (is_complete || !self.objects().any(|(_, m)| is_after(m, upto)))
    }
}

/// Whether `m` was modified after `upto` (never, for an object without a time).
fn is_after(m: &ObjectMeta, upto: Option<u64>) -> bool {
    match (nanos(m), upto) {
        (Some(t), Some(u)) => t > u,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The backups [`super::collect_with`] starts from.
#[derive(Debug)]
pub enum Backups {
    /// Read from the repository now: each manifest (with its file entries) and its digest, oldest first, and the
    /// backups whose manifest is unusable. Their sizes are computed ([`super::unique_format2`] completes them).
    Read {
        /// The manifests and their digests.
        loaded: Vec<(Manifest, Digest)>,
        /// Unusable manifests, with why.
        unusable: Vec<(BackupId, StoreError)>,
    },
    /// Known from an earlier run whose inputs still hold ([`Listings::is_unchanged_since`]; the caller checked):
    /// each manifest without its file entries, its digest and its complete sizes, oldest first. Nothing is read
    /// for them.
    Known(Vec<KnownBackup>),
}

/// One backup as [`Backups::Known`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownBackup {
    /// The manifest; its file entries may be left out (only the sizes need them).
    pub manifest: Manifest,
    /// The manifest object's content digest.
    pub manifest_digest: Digest,
    /// Its sizes, `unique` included.
    pub sizes: Sizes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn meta(key: &str, size: u64, secs: Option<u64>) -> ObjectMeta {
        ObjectMeta {
            key: key.parse().expect("key"),
            size,
            modified: secs.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        }
    }

    /// Issue 12: the recorded inputs hold while the manifests are the same and objects were only added after the
    /// recorded time (and only if every referenced object was found); a removed, rewritten or back-dated object, a
    /// new or rewritten manifest, each makes them fail.
    #[test]
    fn issue_12_backup_inputs_table() {
        let base = Listings {
            backups: vec![
                meta("backups/20261130-000000F/manifest", 10, Some(100)),
                meta("backups/x/keep/1", 1, Some(5)),
            ],
            maps: vec![meta("maps/aa", 5, Some(90)), meta("maps/bb", 6, Some(95))],
            index: vec![meta("index/cc", 7, Some(99))],
            ..Listings::default()
        };
        let recorded = base.backup_inputs();
        assert_eq!(recorded.objects_upto, Some(99_000_000_000));
        let with = |f: &dyn Fn(&mut Listings)| {
            let mut l = base.clone();
            f(&mut l);
            l
        };
        assert!(base.is_unchanged_since(&recorded, false));
        let more_wal_and_marks = with(&|l| {
            l.wal.push(meta("wal/x", 1, Some(500)));
            l.backups.push(meta("backups/x/keep/2", 1, Some(500)));
            l.packs.push(meta("packs/zz", 1, Some(500)));
        });
        assert!(more_wal_and_marks.is_unchanged_since(&recorded, false), "WAL, keep marks and packs do not count");
        let added = with(&|l| l.index.push(meta("index/dd", 8, Some(200))));
        assert!(added.is_unchanged_since(&recorded, true), "an index object added (a dump), all found");
        assert!(!added.is_unchanged_since(&recorded, false), "added, but something was missing then");
        let back_dated = with(&|l| l.index.push(meta("index/dd", 8, Some(99))));
        assert!(!back_dated.is_unchanged_since(&recorded, true), "stamped at the recorded time: read again");
        let removed = with(&|l| {
            l.maps.remove(0);
        });
        assert!(!removed.is_unchanged_since(&recorded, true), "a node removed (gc)");
        let rewritten = with(&|l| l.maps[1] = meta("maps/bb", 6, Some(300)));
        assert!(!rewritten.is_unchanged_since(&recorded, true), "written again");
        let new_backup = with(&|l| l.backups.push(meta("backups/20261130-010000I/manifest", 3, Some(400))));
        assert!(!new_backup.is_unchanged_since(&recorded, true), "a new backup");
        let touched = with(&|l| l.backups[0] = meta("backups/20261130-000000F/manifest", 10, Some(101)));
        assert!(!touched.is_unchanged_since(&recorded, true), "a manifest written again");
        let untimed = Listings { maps: vec![meta("maps/aa", 5, None)], ..Listings::default() };
        let r = untimed.backup_inputs();
        assert_eq!(r.objects_upto, None);
        assert!(untimed.is_unchanged_since(&r, true));
        let added = Listings { maps: vec![meta("maps/aa", 5, None), meta("maps/bb", 1, None)], ..Listings::default() };
        assert!(!added.is_unchanged_since(&r, true), "without times, any addition is a change");
    }
}
