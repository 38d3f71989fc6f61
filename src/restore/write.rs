//! Write a backup's files into the destination (and tablespace directories): safe paths, parallel verified
//! object downloads, `--delta` comparison, durable finish.
//!
//! Invariants:
//! - Only paths validated by the manifest are written, always below the destination or a tablespace directory
//!   chosen here; an existing symbolic link inside them is never followed (directories are checked component by
//!   component, files are opened with `O_NOFOLLOW`).
//! - Every byte written comes from an object whose blake3 was verified, and every slice of a pack is checked
//!   against its own blake3 before it is written.
//! - `global/pg_control` is written last, after everything else is synced: an interrupted restore cannot be
//!   started by mistake.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Error;
use crate::archive::blocking;
use crate::codec;
use crate::progress::Progress;
use crate::repository::backup::{FileEntry, Manifest, ManifestPath, ObjectId};
use crate::repository::packstore::FrameIndex;
use crate::repository::path::{Escaped, is_file_system_artefact};
use crate::storage::DynStorage;

/// Where each part of the backup goes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The data directory.
    pub destination: PathBuf,
    /// Tablespace oid → its directory.
    pub tablespaces: BTreeMap<u32, PathBuf>,
}

impl Layout {
    /// The root and path below it for a manifest path (byte for byte: names need not be UTF-8).
    pub fn resolve(&self, rel: &ManifestPath) -> (PathBuf, PathBuf) {
        let mut parts = rel.as_bytes().splitn(3, |b| *b == b'/');
        if let (Some(b"pg_tblspc"), Some(oid), Some(below)) = (parts.next(), parts.next(), parts.next())
            && let Some(dir) =
                std::str::from_utf8(oid).ok().and_then(|o| o.parse::<u32>().ok()).and_then(|o| self.tablespaces.get(&o))
        {
            return (dir.clone(), PathBuf::from(OsStr::from_bytes(below)));
        }
        (self.destination.clone(), rel.as_path().to_path_buf())
    }

    fn roots(&self) -> Vec<PathBuf> {
        std::iter::once(self.destination.clone()).chain(self.tablespaces.values().cloned()).collect()
    }
}

/// Refuse a data directory destination with a live server in it, or (without `delta`) one that holds anything
/// but [`FILE_SYSTEM_ARTEFACTS`](crate::repository::path::FILE_SYSTEM_ARTEFACTS). A symbolic link to a directory
/// is followed and kept (the restore goes into its target), as initdb does. Touches nothing.
pub fn check_root(dir: &Path, delta: bool) -> Result<(), Error> {
    match first_entry(dir)? {
        Some(name) if !delta => Err(Error::Destination {
            path: dir.to_path_buf(),
            reason: format!(
                "is not empty: it holds {} (use --delta to restore over an old copy of this cluster)",
                Escaped(Path::new(&name))
            ),
        }),
        _ => Ok(()),
    }
}

/// With `--delta`, refuse a non-empty destination that is not an old copy of the backed-up cluster: delta removes
/// every entry the backup does not hold, so a mistyped path (a parent of several data directories, `/srv`) would
/// lose everything in it. An old copy has a `PG_VERSION` of the backup's major, or a `global/pg_control` whose
/// system identifier (its first 8 bytes, native byte order: `ControlFileData` in PostgreSQL's
/// `src/include/catalog/pg_control.h`) is the backup's; neither may say otherwise. (An interrupted delta restore
/// removed `pg_control` first and left `PG_VERSION`; a damaged copy may have lost `PG_VERSION`.) Touches nothing.
pub fn check_old_copy(dir: &Path, manifest: &Manifest) -> Result<(), Error> {
    if first_entry(dir)?.is_none() {
        return Ok(());
    }
    let refuse = |reason: String| Error::Destination {
        path: dir.to_path_buf(),
        reason: format!(
            "{reason}: --delta restores only over an old copy of the backed-up cluster, and removes everything \
             else in it; name that data directory, or restore into a new or empty directory"
        ),
    };
    let major = (manifest.pg_version_num / 10_000).to_string();
    let version = match std::fs::read_to_string(dir.join("PG_VERSION")) {
        Ok(v) => Some(v.trim().to_owned()),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(refuse(format!("its PG_VERSION cannot be read ({e})"))),
    };
    if let Some(v) = version.as_ref().filter(|v| **v != major) {
        return Err(refuse(format!(
            "holds a PostgreSQL {} data directory, and the backup is of PostgreSQL {major}",
            v.escape_debug()
        )));
    }
    let control = std::fs::read(dir.join("global/pg_control")).ok();
    let id = control.as_deref().and_then(|c| c.first_chunk::<8>()).map(|b| u64::from_ne_bytes(*b));
    if let Some(id) = id.filter(|id| id.to_string() != manifest.system_identifier) {
        return Err(refuse(format!(
            "holds another cluster's data directory (system identifier {id}; the backup's is {})",
            manifest.system_identifier
        )));
    }
    if version.is_none() && id.is_none() {
        return Err(refuse(
            "is not a PostgreSQL data directory (it has neither PG_VERSION nor global/pg_control)".into(),
        ));
    }
    Ok(())
}

/// Refuse the directory of tablespace `oid` as [`check_root`] does, and, when it is not empty, unless it is the
/// tablespace of the old copy being restored over: with `delta`, the destination's own `pg_tblspc/<oid>` must
/// lead to it. A tablespace directory that holds data but is not linked from the destination may be a running
/// cluster's (the source's own, when a restore on the same host keeps the backup's locations): writing there would
/// destroy it, whatever `--delta` says. Touches nothing.
pub fn check_tablespace_root(destination: &Path, oid: u32, dir: &Path, delta: bool) -> Result<(), Error> {
    let Some(name) = first_entry(dir)? else { return Ok(()) };
    let link = destination.join("pg_tblspc").join(oid.to_string());
    let is_linked_here = |link: &Path| match (std::fs::canonicalize(link), std::fs::canonicalize(dir)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if delta && is_linked_here(&link) {
        return Ok(());
    }
    let why = if delta {
        format!("{} does not lead to it", Escaped(&link))
    } else {
        "a tablespace directory must be new or empty".to_owned()
    };
    Err(Error::Destination {
        path: dir.to_path_buf(),
        reason: format!(
            "tablespace {oid}'s directory is not empty (it holds {}) and {why}: it may belong to another cluster, \
             such as the running source when the backup's locations are kept; restore the tablespace elsewhere with \
             --tablespace-mapping OLD=NEW",
            Escaped(Path::new(&name))
        ),
    })
}

/// Check a restore root: absent, a directory, or a symbolic link to one; no live postmaster in it. Returns the
/// first entry that is not a file-system artefact (`None`: absent or empty for a restore).
fn first_entry(dir: &Path) -> Result<Option<std::ffi::OsString>, Error> {
    let refuse = |reason: String| Error::Destination { path: dir.to_path_buf(), reason };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse(e.to_string())),
        Ok(m) if m.file_type().is_symlink() => {
            let to = std::fs::read_link(dir).map_or_else(|e| format!("? ({e})"), |t| Escaped(&t).to_string());
            match std::fs::metadata(dir) {
                Ok(t) if t.is_dir() => {}
                Ok(_) => return Err(refuse(format!("is a symbolic link to {to}, which is not a directory"))),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(refuse(format!("is a symbolic link to {to}, which does not exist")));
                }
                Err(e) => return Err(refuse(format!("is a symbolic link to {to}: {e}"))),
            }
        }
        Ok(m) if !m.is_dir() => return Err(refuse("exists and is not a directory".into())),
        Ok(_) => {}
    }
    if let Some(pid) = live_postmaster(dir) {
        return Err(refuse(format!("a PostgreSQL server (pid {pid}) is running in it; stop it first")));
    }
    for entry in std::fs::read_dir(dir).map_err(|e| refuse(e.to_string()))? {
        let name = entry.map_err(|e| refuse(e.to_string()))?.file_name();
        if !is_file_system_artefact(&name) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Create a checked root directory if it does not exist, and give it mode 0700 (PostgreSQL refuses to start on a
/// data directory that others can read).
pub fn create_root(dir: &Path) -> Result<(), Error> {
    let fail =
        |what: &str, e: std::io::Error| Error::Destination { path: dir.to_path_buf(), reason: format!("{what}: {e}") };
    if !dir.is_dir() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| fail("cannot create it", e))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| fail("cannot set its mode", e))
}

/// The pid in `postmaster.pid` if that process is alive.
fn live_postmaster(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    let alive = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(pid)
}

/// Create `rel` (and its parents) below `root` as real directories, refusing to pass through a symbolic link.
fn ensure_dir(root: &Path, rel: &Path, mode: Option<u32>) -> Result<PathBuf, Error> {
    let mut path = root.to_path_buf();
    let werr = |p: &Path, e: std::io::Error| Error::WriteDestination { path: p.to_path_buf(), source: e };
    // Validated manifest paths have plain components only.
    for component in rel.components().filter_map(|c| if let Component::Normal(c) = c { Some(c) } else { None }) {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => continue,
            // A linked pg_wal (initdb --waldir) is the operator's choice: followed, as PostgreSQL does.
            Ok(m) if m.file_type().is_symlink() && path == root.join("pg_wal") && path.is_dir() => continue,
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::Destination {
                    path: path.clone(),
                    reason: "is a symbolic link where the backup has a directory; refusing to follow it".into(),
                });
            }
            Ok(_) => std::fs::remove_file(&path).map_err(|e| werr(&path, e))?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(werr(&path, e)),
        }
        std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(|e| werr(&path, e))?;
    }
    if let Some(mode) = mode {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(|e| werr(&path, e))?;
    }
    Ok(path)
}

/// Open (creating) a regular file for writing without following a link at its name.
fn open_file(path: &Path, mode: u32) -> Result<std::fs::File, Error> {
    let werr = |e| Error::WriteDestination { path: path.to_path_buf(), source: e };
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
        remove_any(path).map_err(werr)?;
    }
    open_for_write(path, mode).map_err(werr)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// One range of an object to write into a file.
#[derive(Debug, Clone)]
pub(super) struct WriteOp {
    /// Shared by every piece of the file (a large cluster has millions of pieces).
    pub(super) path: Arc<PathBuf>,
    pub(super) file_offset: u64,
    pub(super) object_offset: u64,
    pub(super) length: u64,
    pub(super) blake3: ObjectId,
}

/// What writing the files did.
#[derive(Debug, Clone, Default)]
pub struct WriteStats {
    /// Files written (all of them, or those that differed with `--delta`).
    pub files_written: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Files found already identical (`--delta`).
    pub files_unchanged: u64,
    /// Entries removed because the backup does not have them (`--delta`).
    pub removed: u64,
    /// Objects downloaded.
    pub objects: u64,
}

impl WriteStats {
    /// Add another batch's counts (files, bytes, objects; `removed` is counted once, apart).
    pub fn add(&mut self, other: &WriteStats) {
        self.files_written += other.files_written;
        self.bytes_written += other.bytes_written;
        self.files_unchanged += other.files_unchanged;
        self.objects += other.objects;
    }
}

/// Create directories, then write `files` from their objects (`delta`: only the pieces that differ). Format 2
/// finds frames in `index`, loaded here when `None` (pass it when writing in several calls).
#[allow(clippy::too_many_arguments)]
pub async fn write_files(
    storage: DynStorage,
    manifest: &Manifest,
    files: &[&FileEntry],
    layout: &Layout,
    delta: bool,
    parallel: usize,
    index: Option<&Arc<FrameIndex>>,
    progress: &dyn Progress,
) -> Result<WriteStats, Error> {
    if manifest.repository_format >= 2 {
        let index = match index {
            Some(index) => index.clone(),
            None => Arc::new(FrameIndex::load(storage.as_ref()).await?),
        };
        return super::write2::write_files(storage, manifest, files, layout, delta, parallel, index, progress).await;
    }
    let (ops, mut stats, new_files) = plan(manifest, files, layout, delta).await?;
    let creating = new_files.spawn();
    let total: u64 = ops.values().flatten().map(|o| o.length).sum();
    progress.start(total, stats.files_written);
    let semaphore = Arc::new(Semaphore::new(parallel.max(1)));
    let locks = Arc::new(FileLocks::default());
    let mut tasks: JoinSet<Result<u64, Error>> = JoinSet::new();
    stats.objects = ops.len() as u64;
    for (id, ops) in ops {
        let permit = semaphore.clone().acquire_owned().await.map_err(|e| Error::Task(e.to_string()))?;
        while let Some(done) = tasks.try_join_next() {
            progress.advance(done.map_err(|e| Error::Task(e.to_string()))??);
        }
        let (storage, locks) = (storage.clone(), locks.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let key = id.key();
            let object = storage.get(&key).await?;
            blocking(move || apply_object(&key.to_string(), &object, &ops, &locks)).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        progress.advance(done.map_err(|e| Error::Task(e.to_string()))??);
    }
    created(creating).await?;
    stats.bytes_written = total;
    Ok(stats)
}

/// Which writer is writing which large file: striped locks, keyed by the destination path's `Arc`.
///
/// The kernel lets one buffered `pwrite` into a file run at a time (ext4 and tmpfs hold the inode's lock for it),
/// and a second writer of the same file spins on that lock while the first copies: two writers on 2 cores then do
/// the work of one and burn the other core (restoring the scale-100 bench into tmpfs: 2.5-5.6 s of system CPU
/// against 1.0 s with writers kept apart). Writers take a file's lock around their writes into it, and one that
/// finds it taken sleeps, or (format 2) decodes its next frames meanwhile. The locks order nothing: they only keep
/// writers apart, so two files sharing a stripe cost time, not correctness.
pub(super) struct FileLocks([std::sync::Mutex<()>; 64]);

impl Default for FileLocks {
    fn default() -> Self {
        Self(std::array::from_fn(|_| std::sync::Mutex::new(())))
    }
}

impl FileLocks {
    fn stripe(&self, path: &Arc<PathBuf>) -> &std::sync::Mutex<()> {
        &self.0[(Arc::as_ptr(path) as usize / std::mem::size_of::<PathBuf>()) % self.0.len()]
    }

    /// The lock of `path`, after any writer holding it is done. A poisoned stripe only means that a writer panicked
    /// while holding it: the lock still keeps writers apart.
    pub(super) fn take(&self, path: &Arc<PathBuf>) -> std::sync::MutexGuard<'_, ()> {
        self.stripe(path).lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lock of `path` if no writer holds it.
    pub(super) fn try_take(&self, path: &Arc<PathBuf>) -> Option<std::sync::MutexGuard<'_, ()>> {
        match self.stripe(path).try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// Decode one object (verifying it) and write each of its ranges, keeping the file of its first range to itself
/// meanwhile (an object is one chunk of one file, or pieces of small files).
fn apply_object(key: &str, object: &[u8], ops: &[WriteOp], locks: &FileLocks) -> Result<u64, Error> {
    let corrupt = |what: String, source| Error::Corrupt { what, source };
    let (_, raw) = codec::decode_vec(object).map_err(|e| {
        corrupt(
            format!(
                "object {key} (part of {})",
                ops.first().map_or(String::from("?"), |o| Escaped(&o.path).to_string())
            ),
            e,
        )
    })?;
    let _file = ops.first().map(|o| locks.take(&o.path));
    apply_ranges(&format!("object {key}"), &raw, ops)
}

/// Write each range of `raw` (a verified object's or frame's content, `what` in messages) that `ops` name; a range
/// that is not the whole content is checked against its own blake3 first.
pub(super) fn apply_ranges(what: &str, raw: &[u8], ops: &[WriteOp]) -> Result<u64, Error> {
    let corrupt = |what: String, source| Error::Corrupt { what, source };
    let mut written = 0;
    for op in ops {
        let end = op.object_offset + op.length;
        let slice = raw.get(op.object_offset as usize..end as usize).ok_or_else(|| {
            corrupt(
                format!("{what} (part of {})", Escaped(&op.path)),
                codec::Error::SizeMismatch { expected: end, actual: raw.len() as u64 },
            )
        })?;
        let is_whole = op.object_offset == 0 && op.length == raw.len() as u64;
        if !is_whole {
            let actual = blake3::hash(slice);
            if actual.as_bytes() != &op.blake3.0 {
                return Err(corrupt(
                    format!("{what} (part of {})", Escaped(&op.path)),
                    codec::Error::ChecksumMismatch {
                        expected: codec::Digest::Blake3(op.blake3.0),
                        actual: codec::Digest::Blake3(*actual.as_bytes()),
                    },
                ));
            }
        }
        let file = open_for_write(op.path.as_path(), 0o600)
            .map_err(|e| Error::WriteDestination { path: op.path.to_path_buf(), source: e })?;
        file.write_all_at(slice, op.file_offset)
            .map_err(|e| Error::WriteDestination { path: op.path.to_path_buf(), source: e })?;
        start_writeback(&file, op.file_offset, op.length);
        written += op.length;
    }
    Ok(written)
}

/// Ask the kernel to start writing `len` bytes at `offset` of `file` to disk now, without waiting
/// (`sync_file_range(2)` with `SYNC_FILE_RANGE_WRITE`, as PostgreSQL's `pg_flush_data` does), so that the disk works
/// while the next frames are decoded and the final fsync finds little left to do. Durability still comes from
/// that fsync; a failure here only loses the overlap, so it is ignored.
pub(super) fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else { return };
    // SAFETY: the descriptor is open for the duration of the call; the call reads no memory of ours.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}

/// The writes per object, the counts, and (without `--delta`) the files still to create.
pub(super) type Plan = (BTreeMap<ObjectId, Vec<WriteOp>>, WriteStats, NewFiles);

/// Files of a restore without `--delta`, created at their size and mode by [`NewFiles::create`] while the
/// writers already work (a writer that comes first creates the file itself, empty, mode 0600): creating a thousand
/// files costs about a second on some file systems, which would otherwise come before the first write.
#[derive(Debug, Default)]
pub(super) struct NewFiles(Vec<(PathBuf, u64, u32)>);

impl NewFiles {
    /// Create each file (without following a link at its name), extend it to its size and set its mode. The
    /// destination was found empty, so a file already there was made by a writer of this restore.
    pub(super) fn create(mut self) -> Result<(), Error> {
        // Largest first: the writers start with the large files.
        self.0.sort_by_key(|(_, size, _)| std::cmp::Reverse(*size));
        for (path, size, mode) in self.0 {
            let werr = |e| Error::WriteDestination { path: path.clone(), source: e };
            let file = open_file(&path, mode)?;
            file.set_len(size).map_err(werr)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(werr)?;
        }
        Ok(())
    }

    /// [`Self::create`] on a blocking thread, at once; await the handle after the writes.
    pub(super) fn spawn(self) -> tokio::task::JoinHandle<Result<(), Error>> {
        tokio::task::spawn_blocking(move || self.create())
    }
}

/// Wait for [`NewFiles::spawn`]'s task.
pub(super) async fn created(handle: tokio::task::JoinHandle<Result<(), Error>>) -> Result<(), Error> {
    handle.await.map_err(|e| Error::Task(e.to_string()))?
}

/// Open `path` for writing and reading, creating it empty with `mode` if it does not exist (a writer passes 0600
/// and [`NewFiles`] sets the real mode); never through a link at its name.
pub(super) fn open_for_write(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// [`plan_writes`] for `files` of `manifest`, off the async threads.
pub(super) async fn plan(
    manifest: &Manifest,
    files: &[&FileEntry],
    layout: &Layout,
    delta: bool,
) -> Result<Plan, Error> {
    let (layout, files): (Layout, Vec<FileEntry>) = (layout.clone(), files.iter().map(|f| (*f).clone()).collect());
    let dirs = manifest.directories.clone();
    blocking(move || plan_writes(&layout, &dirs, &files, delta)).await
}

/// Directories first; then, per piece, a write unless `delta` finds it equal. With `delta` each file is created (or
/// kept) at its size now; without, the files are listed for [`NewFiles::create`].
fn plan_writes(
    layout: &Layout,
    dirs: &[crate::repository::backup::DirEntry],
    files: &[FileEntry],
    delta: bool,
) -> Result<Plan, Error> {
    for d in dirs {
        let (root, rel) = layout.resolve(&d.path);
        if rel.as_os_str().is_empty() {
            continue;
        }
        ensure_dir(&root, &rel, Some(d.mode))?;
    }
    let mut ops: BTreeMap<ObjectId, Vec<WriteOp>> = BTreeMap::new();
    let mut stats = WriteStats::default();
    let mut new_files = NewFiles::default();
    for f in files {
        let (root, rel) = layout.resolve(&f.path);
        let Some(name) = rel.file_name() else {
            return Err(Error::Destination { path: root.join(&rel), reason: "is not a file name".into() });
        };
        let dir = ensure_dir(&root, rel.parent().unwrap_or(Path::new("")), None)?;
        let path = dir.join(name);
        let shared = Arc::new(path.clone());
        let (file, existing) = if delta {
            let werr = |e| Error::WriteDestination { path: path.clone(), source: e };
            let file = open_file(&path, f.mode)?;
            let existing = file.metadata().map_err(werr)?.len();
            file.set_len(f.size).map_err(werr)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode)).map_err(werr)?;
            (Some(file), existing)
        } else {
            // Every file is new (the destination was found empty): the writers leave all-zero blocks as holes.
            new_files.0.push((path.clone(), f.size, f.mode));
            (None, 0)
        };
        let mut file_offset = 0;
        let mut any = false;
        for piece in &f.pieces {
            let same = file_offset + piece.length <= existing
                && file.as_ref().is_some_and(|file| {
                    let mut buf = vec![0u8; piece.length as usize];
                    file.read_exact_at(&mut buf, file_offset).is_ok()
                        && blake3::hash(&buf).as_bytes() == &piece.blake3.0
                });
            if !same {
                any = true;
                ops.entry(piece.object).or_default().push(WriteOp {
                    path: shared.clone(),
                    file_offset,
                    object_offset: piece.offset,
                    length: piece.length,
                    blake3: piece.blake3,
                });
            }
            file_offset += piece.length;
        }
        // A block-mapped file's blocks are compared later (restore::write2); it counts as written until then.
        if any || !f.nodes.is_empty() || !delta || existing != f.size {
            stats.files_written += 1;
        } else {
            stats.files_unchanged += 1;
        }
    }
    Ok((ops, stats, new_files))
}

/// `--delta`: remove what the backup does not have (files, links, directories), without following links, except
/// the contents of a linked `pg_wal` (stale WAL there could be replayed). `lost+found` at the root of the
/// destination or of a tablespace directory is a file-system artefact, never PostgreSQL's: it is left alone.
/// `files` are the paths of the backup's files (they may be held apart from the manifest: those of its file maps).
pub fn remove_extraneous(manifest: &Manifest, files: &[ManifestPath], layout: &Layout) -> Result<u64, Error> {
    let mut keep: HashSet<PathBuf> = HashSet::new();
    for path in files.iter().chain(manifest.directories.iter().map(|d| &d.path)) {
        let (root, rel) = layout.resolve(path);
        let mut p = root.clone();
        for c in rel.components() {
            p.push(c);
            keep.insert(p.clone());
        }
    }
    for oid in layout.tablespaces.keys() {
        keep.insert(layout.destination.join("pg_tblspc").join(oid.to_string()));
    }
    let mut removed = prune_dir(&layout.destination, &keep, Top::DataDirectory)?;
    // In a tablespace's directory only this major's version directories (`PG_15_202209061`: PostgreSQL's
    // TABLESPACE_VERSION_DIRECTORY) are this cluster's: another major's (pg_upgrade puts the new cluster's beside
    // the old one in the same directory) is another cluster's, running perhaps, and stays.
    let own = format!("PG_{}_", manifest.pg_version_num / 10_000);
    for root in layout.tablespaces.values() {
        removed += prune_dir(root, &keep, Top::Tablespace(&own))?;
    }
    let wal = layout.destination.join("pg_wal");
    if std::fs::symlink_metadata(&wal).is_ok_and(|m| m.file_type().is_symlink()) {
        removed += prune_dir(&wal, &keep, Top::No)?;
    }
    Ok(removed)
}

/// Where [`prune_dir`] is: at the top of the data directory, at the top of a tablespace's directory (only the
/// entries whose names start with this major's version-directory prefix are the cluster's), or below.
#[derive(Clone, Copy)]
enum Top<'a> {
    DataDirectory,
    Tablespace(&'a str),
    No,
}

/// Remove what is in `dir` and not in `keep`, recursively; `lost+found` stays at the top of a root.
fn prune_dir(dir: &Path, keep: &HashSet<PathBuf>, top: Top<'_>) -> Result<u64, Error> {
    let werr = |p: &Path, e| Error::WriteDestination { path: p.to_path_buf(), source: e };
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(werr(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| werr(dir, e))?;
        let path = entry.path();
        match top {
            Top::DataDirectory | Top::Tablespace(_) if is_file_system_artefact(&entry.file_name()) => continue,
            Top::Tablespace(own) if !entry.file_name().as_bytes().starts_with(own.as_bytes()) => {
                tracing::info!(path = %Escaped(&path), "not this cluster's (another major's, or not PostgreSQL's): left alone");
                continue;
            }
            _ => {}
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|e| werr(&path, e))?;
        if !keep.contains(&path) {
            remove_any(&path).map_err(|e| werr(&path, e))?;
            removed += 1;
        } else if meta.is_dir() {
            removed += prune_dir(&path, keep, Top::No)?;
        }
    }
    Ok(removed)
}

/// Create `pg_tblspc/<oid>` links to the tablespace directories (replacing whatever is there).
pub fn link_tablespaces(layout: &Layout) -> Result<(), Error> {
    if layout.tablespaces.is_empty() {
        return Ok(());
    }
    let dir = ensure_dir(&layout.destination, Path::new("pg_tblspc"), None)?;
    for (oid, target) in &layout.tablespaces {
        let link = dir.join(oid.to_string());
        let werr = |e| Error::WriteDestination { path: link.clone(), source: e };
        remove_any(&link).map_err(werr)?;
        std::os::unix::fs::symlink(target, &link).map_err(werr)?;
    }
    Ok(())
}

/// Write a small file atomically below the destination (temp, fsync, rename).
pub fn write_small(layout: &Layout, rel: &str, content: &[u8]) -> Result<(), Error> {
    let path = layout.destination.join(rel);
    let werr = |e| Error::WriteDestination { path: path.clone(), source: e };
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&path).map_err(werr)?;
    }
    let mut tmp = tempfile::Builder::new().prefix(".pitr-restore-").tempfile_in(&layout.destination).map_err(werr)?;
    std::io::Write::write_all(&mut tmp, content).map_err(werr)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(&path).map_err(|e| werr(e.error))?;
    Ok(())
}

/// fsync the directory `dir` of the destination, so that the names created or renamed in it are durable.
/// Errors: [`Error::WriteDestination`] naming it.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    crate::storage::fs::sync_dir(dir).map_err(|e| Error::WriteDestination { path: dir.to_path_buf(), source: e })
}

/// fsyncs in flight at once when a restore flushes what it wrote. An fsync mostly waits (for the device, and on
/// ext4 or XFS for a journal commit), and the file system commits the fsyncs that arrive together at once. With
/// `[restore] parallel` (2) in flight, the flush of the scale-100 bench's files took 0.046-0.054 s on this
/// project's VM, and with 32 0.015-0.020 s; on a disk whose cache flush takes 1 ms, two at a time would cost half
/// a second per 1,000 files.
const SYNC_IN_FLIGHT: usize = 32;

/// Flush `files` (manifest paths) to disk, 32 at a time (`SYNC_IN_FLIGHT`). Only what the restore wrote is flushed
/// (a `syncfs` would also flush a production cluster sharing the filesystem); the directories are flushed by
/// [`sync_dirs`].
pub async fn sync_files(files: &[&FileEntry], layout: &Layout) -> Result<(), Error> {
    let paths: Vec<(PathBuf, bool)> = files
        .iter()
        .map(|f| {
            let (root, rel) = layout.resolve(&f.path);
            (root.join(rel), false)
        })
        .collect();
    sync_paths(paths, SYNC_IN_FLIGHT).await
}

/// Flush every directory of the backup and the roots (the destination and the tablespace directories).
pub async fn sync_dirs(manifest: &Manifest, layout: &Layout) -> Result<(), Error> {
    let mut paths: Vec<(PathBuf, bool)> = manifest
        .directories
        .iter()
        .map(|d| {
            let (root, rel) = layout.resolve(&d.path);
            (root.join(rel), true)
        })
        .collect();
    paths.extend(layout.roots().into_iter().map(|r| (r, true)));
    sync_paths(paths, 2).await
}

/// fsync each path (`true`: a directory), `parallel` at a time.
async fn sync_paths(paths: Vec<(PathBuf, bool)>, parallel: usize) -> Result<(), Error> {
    let per_task = paths.len().div_ceil(parallel.max(1)).max(1);
    let mut tasks = JoinSet::new();
    for batch in paths.chunks(per_task).map(<[(PathBuf, bool)]>::to_vec) {
        tasks.spawn_blocking(move || -> Result<(), Error> {
            for (path, is_dir) in batch {
                let werr = |e| Error::WriteDestination { path: path.clone(), source: e };
                let file = if is_dir {
                    std::fs::File::open(&path)
                } else {
                    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path)
                };
                file.and_then(|f| f.sync_all()).map_err(werr)?;
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| Error::Task(e.to_string()))??;
    }
    Ok(())
}

/// Tablespace directories: the manifest's locations, remapped by `--tablespace-mapping OLD=NEW`.
pub fn tablespace_dirs(manifest: &Manifest, mapping: &[(PathBuf, PathBuf)]) -> Result<BTreeMap<u32, PathBuf>, Error> {
    let mut out = BTreeMap::new();
    let mut used: HashMap<PathBuf, u32> = HashMap::new();
    for t in &manifest.tablespaces {
        let original = t.location.as_path().to_path_buf();
        let dir = mapping.iter().find(|(old, _)| *old == original).map_or(original, |(_, new)| new.clone());
        if !dir.is_absolute() {
            return Err(Error::Usage(format!("tablespace directory {} must be absolute", dir.display())));
        }
        if let Some(other) = used.insert(dir.clone(), t.oid) {
            return Err(Error::Usage(format!("tablespaces {other} and {} both map to {}", t.oid, dir.display())));
        }
        out.insert(t.oid, dir);
    }
    for (old, _) in mapping {
        if !manifest.tablespaces.iter().any(|t| t.location.as_path() == old) {
            return Err(Error::Usage(format!(
                "--tablespace-mapping: the backup has no tablespace at {}",
                old.display()
            )));
        }
    }
    Ok(out)
}

/// `tablespace_map` with each location replaced by where it was restored. A record is `<oid> <path>` up to an
/// unescaped newline; in the path, `\`, newline and carriage return are escaped with a backslash (as
/// `do_pg_backup_start` in PostgreSQL's xlog.c writes it and `read_tablespace_map` reads it). Bytes, since a
/// directory's name need not be UTF-8.
pub fn remap_tablespace_map(map: &str, layout: &Layout) -> Vec<u8> {
    let mut records = Vec::new();
    let (mut record, mut is_escaped) = (String::new(), false);
    for c in map.chars() {
        match c {
            '\n' if !is_escaped => records.push(std::mem::take(&mut record)),
            _ => {
                is_escaped = c == '\\' && !is_escaped;
                record.push(c);
            }
        }
    }
    if !record.is_empty() {
        records.push(record);
    }
    let mut out = Vec::new();
    for record in records {
        match record.split_once(' ').and_then(|(oid, _)| oid.parse::<u32>().ok().map(|o| (o, oid))) {
            Some((oid, text)) if layout.tablespaces.contains_key(&oid) => {
                out.extend_from_slice(text.as_bytes());
                out.push(b' ');
                for &b in layout.tablespaces[&oid].as_os_str().as_bytes() {
                    if matches!(b, b'\\' | b'\n' | b'\r') {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
            }
            _ => out.extend_from_slice(record.as_bytes()),
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_taken_by_one_writer_is_skipped_or_waited_for_by_another() {
        let locks = Arc::new(FileLocks::default());
        let a = Arc::new(PathBuf::from("/r/a"));
        let held = locks.try_take(&a).expect("a free file");
        assert!(locks.try_take(&a).is_none(), "a file being written is not taken again");
        let waiter = {
            let (locks, a) = (locks.clone(), a.clone());
            std::thread::spawn(move || drop(locks.take(&a)))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a writer that must write waits for the holder");
        drop(held);
        assert!(waiter.join().is_ok());
        assert!(locks.try_take(&a).is_some(), "free again");
    }

    /// `--delta` goes only over an old copy of the backed-up cluster: a directory that is none (a parent of data
    /// directories), another major's or another cluster's is refused untouched; an old copy that lost its
    /// `PG_VERSION` or (an interrupted delta restore) its `pg_control` is accepted.
    #[test]
    fn delta_goes_only_over_an_old_copy_of_the_cluster() {
        let manifest = Manifest { pg_version_num: 150004, system_identifier: "7001".into(), ..Manifest::example() };
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        check_old_copy(d, &manifest).expect("empty");
        std::fs::create_dir_all(d.join("main/base")).expect("mkdir");
        std::fs::write(d.join("notes.txt"), b"x").expect("write");
        let err = check_old_copy(d, &manifest).expect_err("a parent of data directories").to_string();
        assert!(err.contains("is not a PostgreSQL data directory") && err.contains("--delta"), "{err}");
        std::fs::write(d.join("PG_VERSION"), b"16\n").expect("write");
        let err = check_old_copy(d, &manifest).expect_err("another major").to_string();
        assert!(err.contains("PostgreSQL 16 data directory") && err.contains("PostgreSQL 15"), "{err}");
        std::fs::write(d.join("PG_VERSION"), b"15\n").expect("write");
        check_old_copy(d, &manifest).expect("PG_VERSION of the major, no pg_control (an interrupted delta)");
        std::fs::create_dir(d.join("global")).expect("mkdir");
        let mut control = 7002u64.to_ne_bytes().to_vec();
        control.resize(8192, 0);
        std::fs::write(d.join("global/pg_control"), &control).expect("write");
        let err = check_old_copy(d, &manifest).expect_err("another cluster").to_string();
        assert!(err.contains("system identifier 7002; the backup's is 7001"), "{err}");
        control[..8].copy_from_slice(&7001u64.to_ne_bytes());
        std::fs::write(d.join("global/pg_control"), &control).expect("write");
        check_old_copy(d, &manifest).expect("the cluster's own copy");
        std::fs::remove_file(d.join("PG_VERSION")).expect("rm");
        check_old_copy(d, &manifest).expect("its own copy without PG_VERSION");
        assert!(d.join("notes.txt").exists(), "nothing touched");
    }

    /// Locations are written escaped as PostgreSQL reads them, whatever bytes they hold; escaped newlines in the
    /// source's map do not split a record.
    #[test]
    fn tablespace_map_is_escaped_like_postgres() {
        let layout = Layout {
            destination: PathBuf::from("/d"),
            tablespaces: BTreeMap::from([
                (16384, PathBuf::from(OsStr::from_bytes(b"/new/a\\b\n\xe9"))),
                (16385, PathBuf::from("/plain")),
            ]),
        };
        let map = "16384 /old/x\\\ny\n16385 /old/z\n";
        assert_eq!(remap_tablespace_map(map, &layout), b"16384 /new/a\\\\b\\\n\xe9\n16385 /plain\n".to_vec());
        let (root, rel) = layout.resolve(&ManifestPath::new(b"pg_tblspc/16384/PG_15/\xff".to_vec()));
        assert_eq!(root, layout.tablespaces[&16384]);
        assert_eq!(rel.as_os_str().as_bytes(), b"PG_15/\xff");
        let (root, rel) = layout.resolve(&ManifestPath::from("pg_tblspc/99/x"));
        assert_eq!((root.as_path(), rel.as_path()), (Path::new("/d"), Path::new("pg_tblspc/99/x")));
    }
}
