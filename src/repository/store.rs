//! Load and save the repository's own records (descriptor, cluster identity), each checksummed by the codec.
//!
//! Invariants: records are written create-only; a concurrent creator's record wins and is then compared.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::backup::{BackupId, FileEntry, InvalidManifest, Manifest, ObjectId};
use super::filemap::{FileMapRef, file_map_key};
use super::{ClusterInfo, Descriptor, FORMAT_VERSION, cluster_key, descriptor_key};
use crate::codec;
use crate::storage::{self, Key, PutMode, Storage};

/// Errors reading or writing repository records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// A record is corrupt.
    #[error("repository record {key} is corrupt: {source}")]
    Corrupt {
        /// The key.
        key: Key,
        /// Cause.
        #[source]
        source: codec::Error,
    },
    /// A record is not valid JSON of the expected shape.
    #[error("repository record {key} is unreadable: {source}")]
    BadJson {
        /// The key.
        key: Key,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest fails its own checks (hostile or damaged repository).
    #[error("backup manifest {key} is invalid: {source}")]
    InvalidManifest {
        /// The key.
        key: Key,
        /// What is wrong.
        #[source]
        source: InvalidManifest,
    },
    /// A dump manifest fails its own checks (hostile or damaged repository).
    #[error("dump manifest {key} is invalid: {source}")]
    InvalidDump {
        /// The key.
        key: Key,
        /// What is wrong.
        #[source]
        source: super::dump::InvalidDumpManifest,
    },
    /// A binary metadata object (format 2: a block-map node, a pack index) fails its own checks.
    #[error("repository object {key} is malformed: {source}")]
    Malformed {
        /// The key.
        key: Key,
        /// What is wrong.
        #[source]
        source: super::wire::WireError,
    },
    /// A format-4 manifest names a file map that is not in the repository (the backup cannot be restored).
    #[error("backup manifest {manifest} names file map {map}, which is missing")]
    MissingFileMap {
        /// The manifest's key.
        manifest: Key,
        /// The map's key.
        map: Key,
    },
    /// Nothing at the URL is a repository (no descriptor, no WAL, no backup): most often a typo in the URL.
    #[error("no repository at {backend}")]
    NoRepository {
        /// Backend display.
        backend: String,
    },
    /// The repository was written by a newer format.
    #[error("repository {backend} has format {found}; this build reads format {FORMAT_VERSION}")]
    UnsupportedFormat {
        /// Backend display.
        backend: String,
        /// Its format version.
        found: u32,
    },
    /// WAL from another cluster.
    #[error(
        "repository {backend} belongs to cluster {expected} (wal segment size {expected_seg_size}), not to cluster {found} (wal segment size {found_seg_size})"
    )]
    WrongCluster {
        /// Backend display.
        backend: String,
        /// System id on record.
        expected: String,
        /// Segment size on record.
        expected_seg_size: u64,
        /// System id offered.
        found: String,
        /// Segment size offered.
        found_seg_size: u64,
    },
}

/// Read a checksummed JSON record, or `None` if absent.
pub async fn load<T: DeserializeOwned>(storage: &dyn Storage, key: &Key) -> Result<Option<T>, Error> {
    Ok(load_with_digest(storage, key).await?.map(|(value, _)| value))
}

/// Read a checksummed JSON record with its object header's content digest (the blake3 of the JSON as stored,
/// checked against it while decoding), or `None` if absent.
pub async fn load_with_digest<T: DeserializeOwned>(
    storage: &dyn Storage,
    key: &Key,
) -> Result<Option<(T, codec::Digest)>, Error> {
    let bytes = match storage.get(key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut json = Vec::new();
    let header = codec::decode(&bytes, &mut json).map_err(|source| Error::Corrupt { key: key.clone(), source })?;
    let value = serde_json::from_slice(&json).map_err(|source| Error::BadJson { key: key.clone(), source })?;
    Ok(Some((value, header.digest)))
}

/// Write a checksummed JSON record create-only. Returns false if the key already existed (nothing written).
pub async fn create<T: Serialize>(storage: &dyn Storage, key: &Key, value: &T) -> Result<bool, Error> {
    let json = serde_json::to_vec_pretty(value).map_err(|source| Error::BadJson { key: key.clone(), source })?;
    create_json(storage, key, json).await
}

/// Write a checksummed JSON record, replacing any existing one (leases, which their holder renews).
pub async fn put_record<T: Serialize>(storage: &dyn Storage, key: &Key, value: &T) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(value).map_err(|source| Error::BadJson { key: key.clone(), source })?;
    let (object, _) = codec::encode(&json[..], 3, json.len() as u64, 1)
        .map_err(|source| Error::Corrupt { key: key.clone(), source })?;
    Ok(storage.put(key, Bytes::from(object), PutMode::Overwrite).await?)
}

async fn create_json(storage: &dyn Storage, key: &Key, json: Vec<u8>) -> Result<bool, Error> {
    let (object, _) = codec::encode(&json[..], 3, json.len() as u64, 1)
        .map_err(|source| Error::Corrupt { key: key.clone(), source })?;
    match storage.put(key, Bytes::from(object), PutMode::Create).await {
        Ok(()) => Ok(true),
        Err(storage::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Make sure the repository has a descriptor this build understands, creating it on first use.
/// Creating it is logged (INFO `created repository`): wal-push and base-backup print nothing else about it.
///
/// `format` is the format of a repository this call creates (`[repository] format`); an existing repository keeps
/// its own.
pub async fn ensure_descriptor(storage: &dyn Storage, now_rfc3339: &str, format: u32) -> Result<Descriptor, Error> {
    let (d, created) = descriptor(storage, now_rfc3339, format).await?;
    if created {
        tracing::info!(backend = %storage, "created repository");
    }
    Ok(d)
}

/// [`ensure_descriptor`] without the log line; true if this call created the descriptor.
async fn descriptor(storage: &dyn Storage, now_rfc3339: &str, format: u32) -> Result<(Descriptor, bool), Error> {
    let key = descriptor_key();
    if let Some(d) = load::<Descriptor>(storage, &key).await? {
        return Ok((check_format(storage, d)?, false));
    }
    let d = Descriptor {
        format,
        created_by: format!("backupctl {}", env!("CARGO_PKG_VERSION")),
        created_at: now_rfc3339.to_owned(),
    };
    if create(storage, &key, &d).await? {
        return Ok((d, true));
    }
    // Someone else created it first: theirs is the one.
    match load::<Descriptor>(storage, &key).await? {
        Some(d) => Ok((check_format(storage, d)?, false)),
        None => Err(storage::Error::NotFound { backend: storage.to_string(), key }.into()),
    }
}

/// Check that `storage` holds a repository this build can read, without creating anything.
///
/// A repository is marked by its descriptor (written by `backupctl init`, wal-push's first push or base-backup).
/// A repository of an earlier version that has no descriptor still counts when it holds the cluster record (any
/// archived WAL) or a backup. Otherwise [`Error::NoRepository`]. On S3, a missing bucket is a storage error
/// (`NoSuchBucket`), never "no repository".
pub async fn require_existing(storage: &dyn Storage) -> Result<(), Error> {
    if let Some(d) = load::<Descriptor>(storage, &descriptor_key()).await? {
        check_format(storage, d)?;
        return Ok(());
    }
    if storage.exists(&cluster_key()).await? || !backup_ids(storage).await?.is_empty() {
        return Ok(());
    }
    Err(Error::NoRepository { backend: storage.to_string() })
}

/// Create the repository (its descriptor, of `format`) unless one exists: `backupctl init`. Returns the descriptor
/// and whether this call created it.
pub async fn init(storage: &dyn Storage, now_rfc3339: &str, format: u32) -> Result<(Descriptor, bool), Error> {
    if let Some(d) = load::<Descriptor>(storage, &descriptor_key()).await? {
        return Ok((check_format(storage, d)?, false));
    }
    let existed = require_existing(storage).await.is_ok();
    Ok((descriptor(storage, now_rfc3339, format).await?.0, !existed))
}

fn check_format(storage: &dyn Storage, d: Descriptor) -> Result<Descriptor, Error> {
    if d.format > FORMAT_VERSION {
        return Err(Error::UnsupportedFormat { backend: storage.to_string(), found: d.format });
    }
    Ok(d)
}

/// The cluster on record, if any WAL has been archived.
pub async fn cluster_info(storage: &dyn Storage) -> Result<Option<ClusterInfo>, Error> {
    load(storage, &cluster_key()).await
}

/// Check `offered` against the cluster on record, recording it if the repository has none yet.
pub async fn claim_cluster(storage: &dyn Storage, offered: &ClusterInfo) -> Result<ClusterInfo, Error> {
    let on_record = match cluster_info(storage).await? {
        Some(c) => c,
        None => {
            if create(storage, &cluster_key(), offered).await? {
                tracing::info!(backend = %storage, system_identifier = %offered.system_identifier, "repository now belongs to this cluster");
                return Ok(offered.clone());
            }
            cluster_info(storage)
                .await?
                .ok_or_else(|| storage::Error::NotFound { backend: storage.to_string(), key: cluster_key() })?
        }
    };
    check_cluster(storage, &on_record, offered)?;
    Ok(on_record)
}

/// Refuse WAL whose system identifier or segment size differs from the record.
pub fn check_cluster(storage: &dyn Storage, on_record: &ClusterInfo, offered: &ClusterInfo) -> Result<(), Error> {
    if on_record.system_identifier != offered.system_identifier
        || on_record.wal_segment_size != offered.wal_segment_size
    {
        return Err(Error::WrongCluster {
            backend: storage.to_string(),
            expected: on_record.system_identifier.clone(),
            expected_seg_size: on_record.wal_segment_size,
            found: offered.system_identifier.clone(),
            found_seg_size: offered.wal_segment_size,
        });
    }
    Ok(())
}

/// Write a backup's manifest, create-only (compact JSON). With file maps (manifest format 4), the file entries are
/// in the maps, which the caller saved first ([`super::packstore::save_file_maps`]), and `files` is left out of
/// the object. False if it existed.
pub async fn save_manifest(storage: &dyn Storage, manifest: &mut Manifest) -> Result<bool, Error> {
    let key = manifest.id.manifest_key();
    let files = if manifest.file_maps.is_empty() { Vec::new() } else { std::mem::take(&mut manifest.files) };
    let json = serde_json::to_vec(manifest).map_err(|source| Error::BadJson { key: key.clone(), source });
    if !files.is_empty() {
        manifest.files = files;
    }
    create_json(storage, &key, json?).await
}

/// File maps already loaded, by id (maps are shared by backups: [`manifests`] reads each once).
pub type FileMapCache = std::collections::HashMap<ObjectId, std::sync::Arc<Vec<FileEntry>>>;

/// Load and validate one backup's manifest, or `None` if the backup does not exist. The entries of a format-4
/// manifest are read from its file maps (each checked against its reference) into `files`.
pub async fn load_manifest(storage: &dyn Storage, id: &BackupId) -> Result<Option<Manifest>, Error> {
    Ok(load_manifest_with_digest(storage, id).await?.map(|(m, _)| m))
}

/// [`load_manifest`], with the manifest object's content digest (its header's: the blake3 of the manifest's JSON
/// as stored, what `backupctl status --json-output` shows as `manifest_checksum`).
pub async fn load_manifest_with_digest(
    storage: &dyn Storage,
    id: &BackupId,
) -> Result<Option<(Manifest, codec::Digest)>, Error> {
    load_manifest_cached(storage, id, &mut FileMapCache::new()).await
}

/// [`load_manifest_with_digest`], taking file maps from `cache` when they are there and adding the ones it reads.
pub async fn load_manifest_cached(
    storage: &dyn Storage,
    id: &BackupId,
    cache: &mut FileMapCache,
) -> Result<Option<(Manifest, codec::Digest)>, Error> {
    let Some((mut manifest, digest)) = load_header_with_digest(storage, id).await? else { return Ok(None) };
    read_file_maps(storage, &mut manifest, cache).await?;
    manifest.validate().map_err(|source| Error::InvalidManifest { key: id.manifest_key(), source })?;
    Ok(Some((manifest, digest)))
}

/// One backup's manifest as stored, validated as far as it goes: the entries of a format-4 manifest are not read
/// (`files` is empty; [`read_file_maps`] reads them), those of an older one are. `None` if the backup does not
/// exist.
pub async fn load_header(storage: &dyn Storage, id: &BackupId) -> Result<Option<Manifest>, Error> {
    Ok(load_header_with_digest(storage, id).await?.map(|(m, _)| m))
}

/// [`load_header`] with the manifest object's content digest.
async fn load_header_with_digest(
    storage: &dyn Storage,
    id: &BackupId,
) -> Result<Option<(Manifest, codec::Digest)>, Error> {
    let key = id.manifest_key();
    let Some((manifest, digest)) = load_with_digest::<Manifest>(storage, &key).await? else { return Ok(None) };
    if !manifest.file_maps.is_empty() && !manifest.files.is_empty() {
        let source = InvalidManifest { what: "lists files and file maps both".into() };
        return Err(Error::InvalidManifest { key, source });
    }
    manifest.validate().map_err(|source| Error::InvalidManifest { key, source })?;
    Ok(Some((manifest, digest)))
}

/// Read the entries of `manifest`'s file maps (format 4) into its `files`, in order, each map checked against its
/// reference; nothing to do for an older manifest or one already read. Errors: [`Error::MissingFileMap`], a
/// damaged map ([`Error::Corrupt`], [`Error::Malformed`]), storage errors.
pub async fn read_file_maps(
    storage: &dyn Storage,
    manifest: &mut Manifest,
    cache: &mut FileMapCache,
) -> Result<(), Error> {
    if manifest.file_maps.is_empty() || !manifest.files.is_empty() {
        return Ok(());
    }
    let missing: Vec<FileMapRef> = manifest.file_maps.iter().filter(|r| !cache.contains_key(&r.id)).cloned().collect();
    let loaded = load_maps(storage, &manifest.id, &missing).await?;
    cache.extend(missing.iter().map(|r| r.id).zip(loaded.into_iter().map(std::sync::Arc::new)));
    let mut files = Vec::with_capacity(manifest.file_maps.iter().map(|r| r.files as usize).sum());
    for r in &manifest.file_maps {
        // invariant: every map of this manifest was either cached or just loaded into the cache.
        if let Some(entries) = cache.get(&r.id) {
            files.extend(entries.iter().cloned());
        }
    }
    manifest.files = files;
    Ok(())
}

/// Every backup's manifest without the entries of format-4 manifests ([`load_header`]; those of older ones are
/// dropped once validated, so memory is per backup, not per file), oldest first, and the backups whose manifest
/// is damaged or invalid. For choosing among backups; read the chosen one whole with [`load_manifest`].
pub async fn manifest_headers(storage: &dyn Storage) -> Result<(Vec<Manifest>, Vec<(BackupId, Error)>), Error> {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for id in backup_ids(storage).await? {
        match load_header(storage, &id).await {
            Ok(Some(mut m)) => {
                m.files = Vec::new();
                good.push(m);
            }
            Ok(None) => {}
            Err(e @ Error::Storage(_)) => return Err(e),
            Err(e) => bad.push((id, e)),
        }
    }
    Ok((good, bad))
}

/// The entries of the file maps `maps` of backup `id`, one vector per map in order, `MAP_CONCURRENCY` maps read at
/// a time, each checked against its reference. The caller validates the entries
/// ([`Manifest::validate_files`]). Errors as [`read_file_maps`].
pub async fn load_maps(
    storage: &dyn Storage,
    id: &BackupId,
    maps: &[FileMapRef],
) -> Result<Vec<Vec<FileEntry>>, Error> {
    let key = id.manifest_key();
    let loads: Vec<_> = maps.iter().map(|r| load_map(storage, &key, r)).collect();
    stream::iter(loads).buffered(MAP_CONCURRENCY).try_collect().await
}

/// One map of [`load_maps`]; a missing one is [`Error::MissingFileMap`] naming the manifest `key`.
async fn load_map(storage: &dyn Storage, key: &Key, r: &FileMapRef) -> Result<Vec<FileEntry>, Error> {
    match super::packstore::load_file_map(storage, r).await {
        Ok(files) => Ok(files),
        Err(Error::Storage(e)) if e.is_not_found() => {
            Err(Error::MissingFileMap { manifest: key.clone(), map: file_map_key(&r.id) })
        }
        Err(e) => Err(e),
    }
}

/// File maps loaded at a time.
const MAP_CONCURRENCY: usize = 16;

/// The ids of every backup (every manifest), oldest first.
pub async fn backup_ids(storage: &dyn Storage) -> Result<Vec<BackupId>, Error> {
    let mut ids: Vec<BackupId> = storage
        .list(super::backup::BACKUPS_PREFIX)
        .await?
        .iter()
        .filter_map(|m| BackupId::from_manifest_key(m.key.as_str()))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Every backup's manifest, oldest first, and the backups whose manifest is damaged or invalid (left out, so one
/// bad manifest does not hide the others). Storage failures are errors.
pub async fn manifests(storage: &dyn Storage) -> Result<(Vec<Manifest>, Vec<(BackupId, Error)>), Error> {
    let (good, bad) = manifests_with_digests(storage).await?;
    Ok((good.into_iter().map(|(m, _)| m).collect(), bad))
}

/// [`manifests`], each with its object's content digest (see [`load_manifest_with_digest`]).
#[allow(clippy::type_complexity)]
pub async fn manifests_with_digests(
    storage: &dyn Storage,
) -> Result<(Vec<(Manifest, codec::Digest)>, Vec<(BackupId, Error)>), Error> {
    manifests_with_digests_of(storage, backup_ids(storage).await?).await
}

/// [`manifests_with_digests`] of the backups `ids` (listed by the caller, oldest first); one that is gone by now is
/// left out. Errors: storage failures (a damaged manifest is one of the unusable ones, not an error).
#[allow(clippy::type_complexity)]
pub async fn manifests_with_digests_of(
    storage: &dyn Storage,
    ids: Vec<BackupId>,
) -> Result<(Vec<(Manifest, codec::Digest)>, Vec<(BackupId, Error)>), Error> {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let mut cache = FileMapCache::new();
    for id in ids {
        match load_manifest_cached(storage, &id, &mut cache).await {
            Ok(Some(m)) => good.push(m),
            Ok(None) => {}
            Err(e @ Error::Storage(_)) => return Err(e),
            Err(e) => bad.push((id, e)),
        }
    }
    Ok((good, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FsStorage;

    /// Manifest format 4: the entries go to file maps and come back on load; the header has none; a missing map
    /// is named; a second backup with the same entries writes no new map.
    #[tokio::test]
    async fn issue_10_file_maps_round_trip() {
        use crate::repository::backup::{FileEntry, ManifestPath};
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStorage::new(dir.path().to_path_buf());
        let files: Vec<FileEntry> = (0..3000)
            .map(|i| FileEntry {
                path: ManifestPath::from(format!("base/5/{i}").as_str()),
                size: 0,
                mode: 0o600,
                mtime: i,
                pieces: vec![],
                nodes: vec![],
            })
            .collect();
        let (maps, created, bytes) = super::super::packstore::save_file_maps(&s, &files, 3).await.expect("maps");
        assert!(maps.len() > 1 && created == maps.len() as u64 && bytes > 0, "{} maps", maps.len());
        let mut m = Manifest { files: files.clone(), file_maps: maps.clone(), ..Manifest::example() };
        m.repository_format = 2;
        m.block_size = Some(8192);
        m.format = m.required_format();
        assert_eq!(m.format, 4);
        assert!(save_manifest(&s, &mut m).await.expect("save"));
        assert_eq!(m.files.len(), 3000, "the caller's manifest keeps its entries");
        let raw = s.get(&m.id.manifest_key()).await.expect("get");
        let (_, json) = codec::decode_vec(&raw).expect("decode");
        assert!(!String::from_utf8_lossy(&json).contains("base/5/17"), "entries are not in the manifest object");
        let back = load_manifest(&s, &m.id).await.expect("load").expect("exists");
        assert_eq!(back, m);
        let header = load_header(&s, &m.id).await.expect("header").expect("exists");
        assert!(header.files.is_empty() && header.file_maps == maps);

        let again = super::super::packstore::save_file_maps(&s, &files, 3).await.expect("maps");
        assert_eq!((again.0, again.1, again.2), (maps.clone(), 0, 0), "equal runs are shared, nothing new");

        s.delete(&file_map_key(&maps[1].id)).await.expect("delete a map");
        let e = load_manifest(&s, &m.id).await.expect_err("a map is missing");
        assert!(matches!(e, Error::MissingFileMap { .. }), "{e:?}");
        assert!(e.to_string().contains(file_map_key(&maps[1].id).as_str()), "{e}");
    }

    /// What marks a repository: the descriptor, or for an earlier version's repository without one, the cluster
    /// record or a backup manifest. Nothing at all (or an empty directory) is "no repository", and checking
    /// creates nothing.
    #[tokio::test]
    async fn require_existing_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = FsStorage::new(dir.path().join("typo"));
        let e = require_existing(&missing).await.expect_err("no repository");
        assert!(matches!(e, Error::NoRepository { .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("no repository at file://{}/typo", dir.path().display()));
        assert!(!dir.path().join("typo").exists(), "checking created the path");

        let described = FsStorage::new(dir.path().join("new"));
        let (d, created) = init(&described, "2026-11-30T00:00:00Z", 1).await.expect("init");
        assert!(created && d.format == 1);
        require_existing(&described).await.expect("initialised");
        let again = init(&described, "later", 2).await.expect("init again");
        assert!(!again.1, "init twice creates once");
        assert_eq!(again.0.format, 1, "an existing repository keeps its format");

        let legacy_wal = FsStorage::new(dir.path().join("legacy-wal"));
        let info = ClusterInfo { system_identifier: "1".into(), wal_segment_size: 16 << 20, pg_version: 15 };
        assert!(create(&legacy_wal, &cluster_key(), &info).await.expect("cluster record"));
        require_existing(&legacy_wal).await.expect("a repository with WAL and no descriptor counts");

        let legacy_backup = FsStorage::new(dir.path().join("legacy-backup"));
        let key = Key::new("backups/20261130-000000F/manifest").expect("key");
        legacy_backup.put(&key, Bytes::from_static(b"x"), PutMode::Create).await.expect("put");
        require_existing(&legacy_backup).await.expect("a repository with a backup and no descriptor counts");

        let other = FsStorage::new(dir.path().join("other"));
        other.put(&Key::new("unrelated").expect("key"), Bytes::from_static(b"x"), PutMode::Create).await.expect("put");
        assert!(matches!(require_existing(&other).await, Err(Error::NoRepository { .. })), "unrelated files");
    }
}
