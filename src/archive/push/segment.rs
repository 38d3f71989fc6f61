//! Push one WAL file: validate, dedupe against the repository, compress, create-only put.
//!
//! Takes every input as a parameter so that several can run in parallel. Invariants:
//! - A segment's long page header must agree with its name and size before anything is written.
//! - An existing object with the same digest is success; with a different digest, an error. Never overwritten.
//! - Returns `Ok` only after the backend confirmed a durable write (or an identical object exists).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::Error;
use crate::archive::blocking;
use crate::codec::{self, Digest, HEADER_LEN, ObjectHeader};
use crate::repository::{self, ClusterInfo};
use crate::spool::FileIdentity;
use crate::storage::{self, PutMode, Storage};
use crate::wal::{LONG_HEADER_LEN, LongPageHeader, WalFileName};

/// The largest `.history` or `.backup` file accepted.
const MAX_TEXT_FILE: u64 = 1 << 20;

/// What the repository did with a pushed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Written now.
    New,
    /// An identical object was already there.
    AlreadyPresent,
}

/// One pushed file.
#[derive(Debug, Clone)]
pub struct PushedFile {
    /// Its name.
    pub name: WalFileName,
    /// Digest of the raw content.
    pub digest: Digest,
    /// Raw size.
    pub raw_size: u64,
    /// The file as it was when pushed.
    pub identity: FileIdentity,
    /// Bytes written to the repository (0 if already present).
    pub stored_size: u64,
    /// New or already present.
    pub outcome: Stored,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// A file checked against its name.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// Size at open.
    pub size: u64,
    /// Size, mtime and inode at open.
    pub identity: FileIdentity,
    /// The cluster this segment says it belongs to (segments and partials only).
    pub cluster: Option<ClusterInfo>,
}

/// Check a WAL file's content against its name, without reading more than the first page of a segment.
pub fn inspect(name: &WalFileName, path: &Path) -> Result<Inspected, Error> {
    let read_err = |source| Error::ReadWal { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let (size, identity) = (meta.len(), FileIdentity::of(&meta));
    match name {
        WalFileName::Segment(seg) | WalFileName::Partial(seg) => {
            let mut first = vec![0u8; LONG_HEADER_LEN];
            let n = codec::read_full(&mut file, &mut first).map_err(read_err)?;
            let bad = |source| Error::BadSegment { path: path.to_path_buf(), source };
            let header = LongPageHeader::parse(&name.to_string(), &first[..n]).map_err(bad)?;
            let seg_size = header.validate(seg, &name.to_string(), size).map_err(bad)?;
            let cluster = ClusterInfo {
                system_identifier: header.system_identifier.to_string(),
                wal_segment_size: seg_size.bytes(),
                pg_version: header.major(&name.to_string()).map_err(bad)?.major,
            };
            Ok(Inspected { size, identity, cluster: Some(cluster) })
        }
        WalFileName::History(_) | WalFileName::BackupHistory(..) => {
            let kind = if matches!(name, WalFileName::History(_)) { "timeline history" } else { "backup history" };
            let bad = |reason: String| Error::BadTextFile { path: path.to_path_buf(), kind, reason };
            if size > MAX_TEXT_FILE {
                return Err(bad(format!("{size} bytes is too large")));
            }
            let mut text = String::new();
            file.read_to_string(&mut text).map_err(|e| bad(e.to_string()))?;
            match name {
                WalFileName::History(tli) => {
                    crate::wal::TimelineHistory::parse(*tli, &text).map_err(bad)?;
                }
                _ => {
                    if !text.starts_with("START WAL LOCATION: ") {
                        return Err(bad("does not start with \"START WAL LOCATION: \"".to_owned()));
                    }
                }
            }
            Ok(Inspected { size, identity, cluster: None })
        }
    }
}

/// Read the whole file through zstd and blake3 in one pass, checking it did not change size. On one thread, as
/// independent 1 MiB frames ([`codec::encode_framed`]: less CPU per segment); on several, as one frame that
/// zstd's own worker threads compress.
fn encode_file(path: &Path, expected: u64, level: i32, workers: u32) -> Result<(Vec<u8>, ObjectHeader), Error> {
    let read_err = |source| Error::ReadWal { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let encoded = if workers > 1 {
        codec::encode(&mut file, level, expected, workers)
    } else {
        codec::encode_framed(&mut file, level, expected)
    };
    let (object, header) = encoded.map_err(|e| match e {
        codec::Error::Io(source) => Error::ReadWal { path: path.to_path_buf(), source },
        other => Error::Corrupt { what: path.display().to_string(), source: other },
    })?;
    if header.raw_size != expected {
        return Err(Error::FileChanged { path: path.to_path_buf(), expected, actual: header.raw_size });
    }
    Ok((object, header))
}

/// Digest of a file (for comparing with an object already stored, without compressing).
fn digest_file(path: &Path, expected: u64) -> Result<Digest, Error> {
    let read_err = |source| Error::ReadWal { path: path.to_path_buf(), source };
    let mut hasher = blake3::Hasher::new();
    let file = File::open(path).map_err(read_err)?;
    let n = std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, file), &mut hasher).map_err(read_err)?;
    if n != expected {
        return Err(Error::FileChanged { path: path.to_path_buf(), expected, actual: n });
    }
    Ok(Digest::Blake3(*hasher.finalize().as_bytes()))
}

/// The header of the stored object for `key`, or `None` if absent.
async fn stored_header(storage: &dyn Storage, key: &storage::Key) -> Result<Option<ObjectHeader>, Error> {
    let corrupt = |source| Error::Corrupt { what: format!("{storage}/{key}"), source };
    match storage.get_range(key, 0, HEADER_LEN as u64).await {
        Ok(bytes) => ObjectHeader::parse(&bytes).map(Some).map_err(corrupt),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) if e.is_range_beyond_end() => {
            Err(corrupt(crate::codec::Error::BadHeader { reason: "object shorter than its header" }))
        }
        Err(e) => Err(e.into()),
    }
}

fn compare(name: &WalFileName, stored: &ObjectHeader, offered: Digest, size: u64) -> Result<(), Error> {
    if stored.digest == offered && stored.raw_size == size {
        Ok(())
    } else {
        Err(Error::DifferentContent { name: name.to_string(), stored: stored.digest, offered })
    }
}

/// A permit of `cpu`, if one is given (the semaphore is never closed).
async fn cpu_permit(cpu: Option<&Semaphore>) -> Result<Option<SemaphorePermit<'_>>, Error> {
    match cpu {
        None => Ok(None),
        Some(s) => s.acquire().await.map(Some).map_err(|e| Error::Task(format!("cpu permit: {e}"))),
    }
}

/// Push one file. `cluster` is the repository's cluster record, checked against segment headers. `workers` is
/// how many threads compress it (more than 1 only when it is the only file being pushed). `cpu`, when given,
/// bounds the CPU-heavy steps (hashing, compressing): a permit is held only while they run, so that other files'
/// storage round trips and fsyncs overlap them (see [`super::worker`]).
pub async fn push_file(
    storage: &dyn Storage,
    level: i32,
    workers: u32,
    name: &WalFileName,
    path: &Path,
    cluster: Option<&ClusterInfo>,
    cpu: Option<&Semaphore>,
) -> Result<PushedFile, Error> {
    let started = Instant::now();
    let (n, p) = (name.clone(), path.to_path_buf());
    let inspected = blocking(move || inspect(&n, &p)).await?;
    if let (Some(on_record), Some(offered)) = (cluster, &inspected.cluster) {
        repository::store::check_cluster(storage, on_record, offered)?;
    }
    let key = repository::wal_key(name);
    let size = inspected.size;
    let done = |digest, stored_size, outcome| PushedFile {
        name: name.clone(),
        digest,
        raw_size: size,
        identity: inspected.identity,
        stored_size,
        outcome,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };

    if let Some(existing) = stored_header(storage, &key).await? {
        let p: PathBuf = path.to_path_buf();
        let _permit = cpu_permit(cpu).await?;
        let digest = blocking(move || digest_file(&p, size)).await?;
        compare(name, &existing, digest, size)?;
        // A pusher killed after the object appeared may not have synced it: exit 0 means durable.
        storage.make_durable(&key).await?;
        return Ok(done(digest, 0, Stored::AlreadyPresent));
    }

    let p: PathBuf = path.to_path_buf();
    let permit = cpu_permit(cpu).await?;
    let (object, header) = blocking(move || encode_file(&p, size, level, workers)).await?;
    drop(permit);
    let stored_size = object.len() as u64;
    match storage.put(&key, Bytes::from(object), PutMode::Create).await {
        Ok(()) => Ok(done(header.digest, stored_size, Stored::New)),
        Err(storage::Error::AlreadyExists { .. }) => {
            // Raced with another pusher: theirs must be identical.
            let existing = stored_header(storage, &key)
                .await?
                .ok_or_else(|| storage::Error::NotFound { backend: storage.to_string(), key: key.clone() })?;
            compare(name, &existing, header.digest, size)?;
            Ok(done(header.digest, 0, Stored::AlreadyPresent))
        }
        Err(e) => Err(e.into()),
    }
}
