//! The local spool: push status records, the fetch prefetch queue, and their lock files.
//!
//! ```text
//! <spool>/push.lock            held by the wal-push that is pushing
//! <spool>/push/<name>.ok       "durably stored" record: repository, digest, raw size (written after the upload)
//! <spool>/push/<name>.taken    a record a wal-push call answered from, kept until PostgreSQL marks the file done
//! push.lock                    also held for its whole life by the background pusher (`wal-push --push-worker`)
//! <spool>/fetch.lock           held by the one prefetcher
//! <spool>/fetch/<repo>/<name>.<blake3>  a prefetched segment, decompressed and verified, named with its digest
//!                              (verified again when served); <repo> is a short hash of the repository URL, so a
//!                              spool reused for another repository never serves the old one's files
//! <spool>/fetch/<repo>/wanted  the newest name PostgreSQL asked for (the prefetcher follows it)
//! ```
//! Invariants: every file is written atomically (temp file, fsync, rename, fsync of the directory), so a
//! `kill -9` leaves either no record or a complete one. A record is written only after the repository has
//! confirmed the object is durable. The spool never holds copies of WAL on the push side.

pub mod lock;

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use lock::Lock;

use crate::codec::Digest;

/// Spool failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file in the spool could not be read or written.
    #[error("spool {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The effective user may not write into the spool (see [`crate::storage::fs::owner`]).
    #[error(transparent)]
    Owner(#[from] crate::storage::fs::owner::Error),
    /// Another process holds the lock.
    #[error("spool lock {path} is held by another process ({holder})")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote (pid, start time).
        holder: String,
    },
}

/// Which file on disk a record is about: a segment rewritten under the same name has another mtime (PostgreSQL
/// recycles segments by renaming and rewriting them), so a record never vouches for different content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode number.
    pub inode: u64,
}

impl FileIdentity {
    /// The identity of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// A "durably stored" record for one pushed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    /// The repository it was stored in (display form of the backend).
    pub repository: String,
    /// Digest of the raw content.
    pub digest: String,
    /// The file that was pushed.
    pub file: FileIdentity,
}

impl PushRecord {
    /// Build a record.
    pub fn new(repository: &str, digest: Digest, file: FileIdentity) -> Self {
        Self { repository: repository.to_owned(), digest: digest.to_string(), file }
    }
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    repository_scope: String,
}

impl Spool {
    /// Open (and create if needed) the spool at `root` for the repository displayed as `repository`.
    ///
    /// Refuses with [`Error::Owner`], before creating anything, unless the effective user owns the spool (or may
    /// create it): see [`crate::storage::fs::owner`].
    pub fn open(root: &Path, repository: &str) -> Result<Self, Error> {
        crate::storage::fs::owner::check_writer(root, crate::storage::fs::owner::Role::Spool)?;
        let spool = Self::at(root, repository);
        for dir in [spool.root.clone(), spool.push_dir(), spool.fetch_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        }
        Ok(spool)
    }

    /// A handle on the spool at `root` for the repository displayed as `repository`, without touching the disk
    /// (for readers that may not write into it: they must not call any method that writes).
    pub fn at(root: &Path, repository: &str) -> Self {
        let scope = blake3::hash(repository.as_bytes()).to_hex()[..16].to_owned();
        Self { root: root.to_path_buf(), repository_scope: scope }
    }

    /// True if the effective user may write into this spool (owns it, or may create it).
    pub fn is_writable(&self) -> bool {
        crate::storage::fs::owner::is_writable_by_caller(&self.root, crate::storage::fs::owner::Role::Spool)
    }

    /// The spool root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn push_dir(&self) -> PathBuf {
        self.root.join("push")
    }

    /// Directory of prefetched objects (of this spool's repository).
    pub fn fetch_dir(&self) -> PathBuf {
        self.root.join("fetch").join(&self.repository_scope)
    }

    /// Lock file for wal-push.
    pub fn push_lock_path(&self) -> PathBuf {
        self.root.join("push.lock")
    }

    /// Lock file for the prefetcher.
    pub fn fetch_lock_path(&self) -> PathBuf {
        self.root.join("fetch.lock")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.push_dir().join(format!("{name}.ok"))
    }

    /// The push record for `name`, if one exists and parses (a damaged record counts as absent).
    pub fn push_record(&self, name: &str) -> Result<Option<PushRecord>, Error> {
        let path = self.record_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Durably record that `name` is stored.
    pub fn write_push_record(&self, name: &str, record: &PushRecord) -> Result<(), Error> {
        // invariant: serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(record).unwrap_or_default();
        write_atomic(&self.record_path(name), &json, true)
    }

    /// Remove the push record for `name` (after PostgreSQL has been told it is archived).
    pub fn remove_push_record(&self, name: &str) -> Result<(), Error> {
        remove_if_exists(&self.record_path(name))
    }

    /// Mark the push record for `name` as taken: a wal-push call answered PostgreSQL from it. The record becomes
    /// `<name>.taken`, which answers no call but tells the background pusher not to push the file again while
    /// PostgreSQL has not yet renamed its `.ready` (not fsynced: a lost marker only costs an idempotent re-push).
    pub fn take_push_record(&self, name: &str) -> Result<(), Error> {
        let (from, to) = (self.record_path(name), self.push_dir().join(format!("{name}.taken")));
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { path: from, source }),
        }
    }

    /// Names whose push record was taken ([`Spool::take_push_record`]), sorted.
    pub fn taken_names(&self) -> Result<Vec<String>, Error> {
        let mut names = list_names(&self.push_dir())?
            .into_iter()
            .filter_map(|n| n.strip_suffix(".taken").map(str::to_owned))
            .collect::<Vec<_>>();
        names.sort();
        Ok(names)
    }

    /// Remove the taken marker of `name` (once PostgreSQL no longer lists it as `.ready`).
    pub fn remove_taken(&self, name: &str) -> Result<(), Error> {
        remove_if_exists(&self.push_dir().join(format!("{name}.taken")))
    }

    /// Names that have a push record, sorted.
    pub fn push_record_names(&self) -> Result<Vec<String>, Error> {
        let mut names = list_names(&self.push_dir())?
            .into_iter()
            .filter_map(|n| n.strip_suffix(".ok").map(str::to_owned))
            .collect::<Vec<_>>();
        names.sort();
        Ok(names)
    }

    /// A temp file in the prefetch directory, for [`Spool::publish_prefetched`]; removed if dropped.
    pub fn prefetch_temp(&self) -> Result<tempfile::NamedTempFile, Error> {
        let dir = self.fetch_dir();
        tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir).map_err(|source| Error::Io { path: dir, source })
    }

    /// Publish a decompressed, verified segment under `<name>.<digest hex>` (atomic rename; not fsynced: a lost
    /// prefetch is simply fetched again).
    pub fn publish_prefetched(&self, tmp: tempfile::NamedTempFile, name: &str, digest: Digest) -> Result<(), Error> {
        let Digest::Blake3(d) = digest;
        let path = self.fetch_dir().join(format!("{name}.{}", hex::encode(d)));
        tmp.persist(&path).map_err(|e| Error::Io { path, source: e.error })?;
        Ok(())
    }

    /// A prefetched segment written within `max_age`, with the digest it must have (older files are left over
    /// from an earlier recovery and are not trusted to be current).
    pub fn find_prefetched(
        &self,
        name: &str,
        max_age: std::time::Duration,
    ) -> Result<Option<(PathBuf, Digest)>, Error> {
        for file in list_names(&self.fetch_dir())? {
            let Some((n, digest)) = split_prefetched(&file) else { continue };
            if n != name {
                continue;
            }
            let path = self.fetch_dir().join(&file);
            let fresh = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age <= max_age));
            return Ok(fresh.then_some((path, digest)));
        }
        Ok(None)
    }

    /// Remove every prefetched copy of `name`.
    pub fn remove_prefetched(&self, name: &str) -> Result<(), Error> {
        for file in list_names(&self.fetch_dir())? {
            if split_prefetched(&file).is_some_and(|(n, _)| n == name) {
                remove_if_exists(&self.fetch_dir().join(&file))?;
            }
        }
        Ok(())
    }

    /// Names in the prefetch queue (excluding the `wanted` marker and temp files), sorted.
    pub fn prefetched_names(&self) -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = list_names(&self.fetch_dir())?
            .iter()
            .filter_map(|f| split_prefetched(f).map(|(n, _)| n.to_owned()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Record the newest name PostgreSQL asked wal-fetch for.
    pub fn set_wanted(&self, name: &str) -> Result<(), Error> {
        write_atomic(&self.fetch_dir().join("wanted"), name.as_bytes(), false)
    }

    /// The newest name PostgreSQL asked for, if recorded.
    pub fn wanted(&self) -> Result<Option<String>, Error> {
        let path = self.fetch_dir().join("wanted");
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }
}

/// `<name>.<64 hex digits>` → (name, digest).
fn split_prefetched(file: &str) -> Option<(&str, Digest)> {
    let (name, hexpart) = file.rsplit_once('.')?;
    let bytes: [u8; 32] = hex::decode(hexpart).ok()?.try_into().ok()?;
    Some((name, Digest::Blake3(bytes)))
}

fn list_names(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { path: dir.to_path_buf(), source }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            out.push(name);
        }
    }
    Ok(out)
}

fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
    }
}

/// Write `bytes` to `path` through a temp file in the same directory and a rename; with `durable`, fsync the
/// file before the rename and the directory after it.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    if durable {
        tmp.as_file().sync_all().map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    if durable {
        crate::storage::fs::sync_dir(dir).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_records_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), "file:///r").expect("open");
        let name = "000000010000000000000003";
        assert_eq!(spool.push_record(name).expect("read"), None);
        let rec = PushRecord::new("file:///r", Digest::of(b"x"), FileIdentity { size: 16, mtime_ns: 5, inode: 7 });
        spool.write_push_record(name, &rec).expect("write");
        assert_eq!(spool.push_record(name).expect("read"), Some(rec.clone()));
        assert_eq!(spool.push_record_names().expect("names"), vec![name.to_owned()]);
        spool.take_push_record(name).expect("take");
        assert_eq!(spool.push_record(name).expect("read"), None, "a taken record answers no call");
        assert_eq!(spool.taken_names().expect("taken"), vec![name.to_owned()]);
        spool.take_push_record(name).expect("taking twice is fine");
        spool.remove_taken(name).expect("remove taken");
        assert!(spool.taken_names().expect("taken").is_empty());
        spool.write_push_record(name, &rec).expect("write");
        spool.remove_push_record(name).expect("remove");
        spool.remove_push_record(name).expect("remove twice is fine");
        assert!(spool.push_record_names().expect("names").is_empty());
        // A damaged record counts as absent.
        std::fs::write(dir.path().join("push").join(format!("{name}.ok")), b"{trunc").expect("write");
        assert_eq!(spool.push_record(name).expect("read"), None);
    }

    #[test]
    fn prefetch_queue() {
        use std::io::Write;
        use std::time::Duration;
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), "file:///r").expect("open");
        for (name, body) in [("B", b"2"), ("A", b"1")] {
            let mut tmp = spool.prefetch_temp().expect("temp");
            tmp.write_all(body).expect("write");
            spool.publish_prefetched(tmp, name, Digest::of(body)).expect("publish");
        }
        spool.set_wanted("A").expect("wanted");
        assert_eq!(spool.prefetched_names().expect("names"), vec!["A", "B"]);
        let (path, digest) = spool.find_prefetched("A", Duration::from_secs(60)).expect("find").expect("present");
        assert_eq!(std::fs::read(path).expect("read"), b"1");
        assert_eq!(digest, Digest::of(b"1"));
        assert_eq!(spool.find_prefetched("A", Duration::ZERO).expect("find"), None, "too old");
        assert_eq!(spool.wanted().expect("wanted"), Some("A".to_owned()));
        spool.remove_prefetched("A").expect("remove");
        assert_eq!(spool.find_prefetched("A", Duration::from_secs(60)).expect("find"), None);
        let other = Spool::open(dir.path(), "s3://other").expect("open");
        assert!(other.prefetched_names().expect("names").is_empty(), "scoped by repository");
    }
}
