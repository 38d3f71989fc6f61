//! Load and save the repository's own records (descriptor, cluster identity), each checksummed by the codec.
//!
//! Invariants: records are written create-only; a concurrent creator's record wins and is then compared.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backup::{BackupId, InvalidManifest, Manifest};
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

/// Write a backup's manifest, create-only (compact JSON: manifests list every file). False if it existed.
pub async fn save_manifest(storage: &dyn Storage, manifest: &Manifest) -> Result<bool, Error> {
    let key = manifest.id.manifest_key();
    let json = serde_json::to_vec(manifest).map_err(|source| Error::BadJson { key: key.clone(), source })?;
    create_json(storage, &key, json).await
}

/// Load and validate one backup's manifest, or `None` if the backup does not exist.
pub async fn load_manifest(storage: &dyn Storage, id: &BackupId) -> Result<Option<Manifest>, Error> {
    Ok(load_manifest_with_digest(storage, id).await?.map(|(m, _)| m))
}

/// [`load_manifest`], with the manifest object's content digest (its header's: the blake3 of the manifest's JSON
/// as stored, what `backupctl status --json-output` shows as `manifest_checksum`).
pub async fn load_manifest_with_digest(
    storage: &dyn Storage,
    id: &BackupId,
) -> Result<Option<(Manifest, codec::Digest)>, Error> {
    let key = id.manifest_key();
    let Some((manifest, digest)) = load_with_digest::<Manifest>(storage, &key).await? else { return Ok(None) };
    manifest.validate().map_err(|source| Error::InvalidManifest { key, source })?;
    Ok(Some((manifest, digest)))
}

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
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for id in backup_ids(storage).await? {
        match load_manifest_with_digest(storage, &id).await {
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
