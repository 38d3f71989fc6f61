//! Local directory backend (`file:///path`).
//!
//! Invariants: a put writes a temp file in the target directory, fsyncs it, then renames it into place
//! (`Overwrite`) or hard-links it (`Create`, which fails atomically if the name exists), and fsyncs the directory
//! and every directory above it up to the root. A reader never sees a partial object; temp files are removed on
//! drop. A delete fsyncs the directory it unlinked from (or the nearest one left) and then removes the
//! directories it emptied below the top level (docs/design/architecture.md, storage).

pub mod owner;

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Capabilities, Error, Incomplete, Key, ObjectMeta, PutMode, Result, Storage};

/// Name prefix of the temp files a put writes before renaming or linking them into place.
pub const TEMP_PREFIX: &str = ".tmp-";

/// A repository in a local directory.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: PathBuf,
}

impl FsStorage {
    /// A backend rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn map_err(&self, op: &'static str, key: &dyn fmt::Display, e: std::io::Error) -> Error {
        let backend = self.to_string();
        match e.kind() {
            ErrorKind::NotFound => match Key::new(key.to_string()) {
                Ok(key) => Error::NotFound { backend, key },
                Err(e) => Error::InvalidKey(e),
            },
            ErrorKind::PermissionDenied => Error::PermissionDenied { backend, key: key.to_string(), source: e.into() },
            ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                Error::Transient { backend, op, key: key.to_string(), attempts: 1, source: e.into() }
            }
            _ => Error::Other { backend, op, key: key.to_string(), source: e.into() },
        }
    }

    fn put_blocking(&self, key: &Key, body: &[u8], mode: PutMode) -> Result<()> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        // A put's NotFound is its directory vanishing, never "no such object".
        let io = |e: std::io::Error| match e.kind() {
            ErrorKind::NotFound => Error::other(self, "put", key, e),
            _ => self.map_err("put", key, e),
        };
        // A delete removes a directory it emptied (`remove_empty_dirs`): one can vanish between being made and
        // the temp file's creation in it, so that is tried again. A directory holding the temp file is never
        // empty, so nothing after this can race with it.
        let mut attempt = 0;
        let mut tmp = loop {
            attempt += 1;
            let made = make_dir_all(&dir).and_then(|()| tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(&dir));
            match made {
                Ok(tmp) => break tmp,
                Err(e) if e.kind() == ErrorKind::NotFound && attempt < PUT_DIR_ATTEMPTS => {}
                // Not "object not found": the write's own directory kept vanishing.
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let why = format!("{}: {e} ({attempt} times: concurrent deletes kept removing it)", dir.display());
                    return Err(Error::other(self, "put", key, why));
                }
                Err(e) => return Err(io(e)),
            }
        };
        // The temp file keeps `dir` and its parents in place while they are synced.
        sync_parents(&self.root, &dir).map_err(io)?;
        tmp.write_all(body).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        match mode {
            PutMode::Overwrite => {
                tmp.persist(&path).map_err(|e| io(e.error))?;
            }
            // The link fails atomically if the name exists; the temp name is removed when `tmp` drops.
            PutMode::Create => match std::fs::hard_link(tmp.path(), &path) {
                Ok(()) => drop(tmp),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    // The other writer may have been killed before syncing the directory, and the caller counts
                    // the object as stored.
                    sync_dir(&dir).map_err(io)?;
                    return Err(Error::AlreadyExists { backend: self.to_string(), key: key.clone() });
                }
                Err(e) => return Err(io(e)),
            },
        }
        sync_dir(&dir).map_err(io)
    }

    fn get_blocking(&self, key: &Key) -> Result<Bytes> {
        let io = |e| self.map_err("get", key, e);
        let mut f = std::fs::File::open(self.path(key)).map_err(io)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io)?;
        Ok(Bytes::from(buf))
    }

    /// [`Storage::get_range`]: the size from `fstat`, then one positioned read (`pread`) of exactly `len` bytes;
    /// the file offset is never moved and nothing outside the range is read. Objects are replaced only by rename,
    /// so the open file cannot shrink under the read; if it did, the read fails as [`Error::RangeBeyondEnd`].
    fn get_range_blocking(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        use std::os::unix::fs::FileExt as _;
        let io = |e| self.map_err("get", key, e);
        let f = std::fs::File::open(self.path(key)).map_err(io)?;
        let beyond = |size| Error::RangeBeyondEnd { backend: self.to_string(), key: key.clone(), offset, len, size };
        let size = f.metadata().map_err(io)?.len();
        if !super::range_fits(size, offset, len) {
            return Err(beyond(size));
        }
        // invariant: len <= size, the length of a file on this machine, so it fits in usize.
        let mut buf = vec![0u8; usize::try_from(len).map_err(|e| io(std::io::Error::other(e)))?];
        match f.read_exact_at(&mut buf, offset) {
            Ok(()) => Ok(Bytes::from(buf)),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(beyond(f.metadata().map_err(io)?.len())),
            Err(e) => Err(io(e)),
        }
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        self.walk_files(prefix, |rel, is_temp, meta| {
            let rel = rel.to_string_lossy();
            if is_temp || !rel.starts_with(prefix) {
                return;
            }
            if let Ok(key) = Key::new(rel.into_owned()) {
                out.push(ObjectMeta { key, size: meta.len(), modified: meta.modified().ok() });
            }
        })?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Call `visit(path relative to the root, is a temp file, metadata)` for every file under the deepest
    /// existing directory `prefix` names. An entry removed while the walk runs (a concurrent delete or gc) is
    /// skipped, not an error.
    fn walk_files(&self, prefix: &str, mut visit: impl FnMut(&Path, bool, &std::fs::Metadata)) -> Result<()> {
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() { self.root.clone() } else { self.root.join(dir_part) };
        let err = |e| self.map_err("list", &prefix, e);
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            };
            for entry in entries {
                let entry = entry.map_err(err)?;
                let ft = match entry.file_type() {
                    Ok(ft) => ft,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(err(e)),
                };
                let path = entry.path();
                if ft.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else { continue };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(err(e)),
                };
                visit(rel, entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX), &meta);
            }
        }
        Ok(())
    }

    /// [`Storage::list_after`]: walk in key order from the deepest directory the prefix names, skipping
    /// directories that cannot hold a matching key or whose keys all sort before `start_after`, and stop after
    /// `limit` objects.
    fn list_after_blocking(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<ObjectMeta>> {
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let mut out = Vec::new();
        self.walk_after(dir_part, prefix, start_after, limit, &mut out)?;
        Ok(out)
    }

    fn walk_after(
        &self,
        rel_dir: &str,
        prefix: &str,
        start_after: &str,
        limit: usize,
        out: &mut Vec<ObjectMeta>,
    ) -> Result<()> {
        let dir = if rel_dir.is_empty() { self.root.clone() } else { self.root.join(rel_dir) };
        let err = |e| self.map_err("list", &prefix, e);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(e)),
        };
        // (sort key, relative path, is a directory): a directory sorts as "name/", which puts its keys where
        // they belong among its siblings' keys in byte order.
        let mut items: Vec<(String, String, bool)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(err)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let rel = if rel_dir.is_empty() { name } else { format!("{rel_dir}/{name}") };
            let is_dir = match entry.file_type() {
                Ok(ft) => ft.is_dir(),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            };
            if is_dir {
                let d = format!("{rel}/");
                let may_match = d.starts_with(prefix) || prefix.starts_with(&d);
                let all_before = d.as_str() < start_after && !start_after.starts_with(&d);
                if may_match && !all_before {
                    items.push((d, rel, true));
                }
            } else if rel.starts_with(prefix) && rel.as_str() > start_after {
                items.push((rel.clone(), rel, false));
            }
        }
        items.sort();
        for (_, rel, is_dir) in items {
            if out.len() >= limit {
                break;
            }
            if is_dir {
                self.walk_after(&rel, prefix, start_after, limit, out)?;
                continue;
            }
            let meta = match std::fs::metadata(self.root.join(&rel)) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            };
            if let Ok(key) = Key::new(rel) {
                out.push(ObjectMeta { key, size: meta.len(), modified: meta.modified().ok() });
            }
        }
        Ok(())
    }
}

impl FsStorage {
    /// [`Storage::list_incomplete`]: the temp files under the deepest directory `prefix` names (a temp file is
    /// written in the directory its object was to go to).
    fn list_incomplete_blocking(&self, prefix: &str) -> Result<Vec<Incomplete>> {
        let mut out = Vec::new();
        self.walk_files(prefix, |rel, is_temp, meta| {
            if let (true, Some(rel)) = (is_temp, rel.to_str()) {
                let (size, modified) = (meta.len(), meta.modified().ok());
                out.push(Incomplete { name: rel.to_owned(), upload_id: None, size, modified });
            }
        })?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// [`Storage::remove_incomplete`]: only a temp file (by its name) is ever removed.
    fn remove_incomplete_blocking(&self, item: &Incomplete) -> Result<()> {
        let rel = std::path::Path::new(&item.name);
        let is_temp = rel.file_name().is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX));
        let is_inside = rel.is_relative() && rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !is_temp || !is_inside {
            return Err(Error::other(self, "remove", &item.name, "not a temp file of this repository"));
        }
        let path = self.root.join(rel);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.map_err("remove", &item.name, e)),
        }
        let dir = path.parent().unwrap_or(&self.root);
        sync_nearest_dir(&self.root, dir).map_err(|e| self.map_err("remove", &item.name, e))?;
        // A killed writer's temp file may have been all its new directory held.
        remove_empty_dirs(&self.root, dir);
        Ok(())
    }
}

/// How many times a put makes its directory and temp file when a concurrent delete removed the directory
/// in between (each time takes a delete emptying that directory at that moment).
const PUT_DIR_ATTEMPTS: u32 = 16;

/// Remove `dir` if it is empty, then its parents while they are, below the repository's top-level directories
/// (`root`'s own children, such as `wal` and `packs`, stay). A file:// repository thus does not keep one empty
/// directory per expired WAL range or deleted backup. Best effort: a directory that is not empty (or anything
/// else that stops `rmdir(2)`) ends it, and a put that finds its directory gone makes it again.
fn remove_empty_dirs(root: &Path, dir: &Path) {
    let mut dir = dir;
    while let Some(parent) = dir.parent() {
        if !parent.starts_with(root) || parent == root || std::fs::remove_dir(dir).is_err() {
            return;
        }
        // Best effort: a failure leaves at worst an empty directory after a crash. (A racing delete that finds
        // this directory gone syncs the nearest one left itself, `sync_nearest_dir`.)
        let _ = sync_dir(parent);
        dir = parent;
    }
}

/// fsync `dir`, or if a concurrent delete removed it (`remove_empty_dirs`), the nearest directory above it that
/// still exists, up to `root`: an unlink in a directory that another delete then removed is durable once the
/// removal is. Errors: any but `NotFound` from `fsync(2)` or `open(2)`, and `NotFound` for `root` itself.
fn sync_nearest_dir(root: &Path, dir: &Path) -> std::io::Result<()> {
    for d in dir.ancestors() {
        match sync_dir(d) {
            Err(e) if e.kind() == ErrorKind::NotFound && d != root && d.starts_with(root) => continue,
            other => return other,
        }
    }
    Ok(())
}

/// fsync every directory from `dir`'s parent up to `root`, so that the entries leading from `root` to `dir`
/// are durable whoever made them: a directory that another writer has just made ([`make_dir_all`]) is visible
/// before that writer has fsynced its parent, so finding it proves nothing about a crash, and a put acknowledged
/// in it must not depend on the other writer. Costs one `fsync(2)` per level below `root` (about 45 µs each on a
/// clean directory here). Errors: those of `open(2)` and `fsync(2)`.
fn sync_parents(root: &Path, dir: &Path) -> std::io::Result<()> {
    for d in dir.ancestors().skip(1) {
        if !d.starts_with(root) {
            break;
        }
        sync_dir(d)?;
    }
    Ok(())
}

/// Create a directory and its parents, fsyncing each parent whose entry was added (those above the repository's
/// root included, when the first put makes it).
fn make_dir_all(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsync a directory so that a rename or link in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl fmt::Display for FsStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file://{}", self.root.display())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Error::Other { backend: "file".into(), op: "spawn", key: String::new(), source: e.into() })
    })
}

#[async_trait]
impl Storage for FsStorage {
    async fn put(&self, key: &Key, body: Bytes, mode: PutMode) -> Result<()> {
        let (this, key) = (self.clone(), key.clone());
        blocking(move || this.put_blocking(&key, &body, mode)).await
    }

    async fn get(&self, key: &Key) -> Result<Bytes> {
        let (this, key) = (self.clone(), key.clone());
        blocking(move || this.get_blocking(&key)).await
    }

    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        let (this, key) = (self.clone(), key.clone());
        blocking(move || this.get_range_blocking(&key, offset, len)).await
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_file() => Ok(ObjectMeta { key: key.clone(), size: m.len(), modified: m.modified().ok() }),
            Ok(_) => Err(Error::NotFound { backend: self.to_string(), key: key.clone() }),
            Err(e) => Err(self.map_err("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let (this, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || this.list_blocking(&prefix)).await
    }

    async fn list_after(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<ObjectMeta>> {
        let (this, prefix, start_after) = (self.clone(), prefix.to_owned(), start_after.to_owned());
        blocking(move || this.list_after_blocking(&prefix, &start_after, limit)).await
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let path = self.path(key);
        let is_gone = match tokio::fs::remove_file(&path).await {
            Ok(()) => false,
            Err(e) if e.kind() == ErrorKind::NotFound => true,
            Err(e) => return Err(self.map_err("delete", key, e)),
        };
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let key = key.clone();
        let this = self.clone();
        blocking(move || {
            // Synced also when the object was already gone: a racing delete of the same key (or this one, retried)
            // may have unlinked it without syncing yet, and this call must not return before the unlink is durable.
            match sync_nearest_dir(&this.root, &dir) {
                Err(e) if is_gone && e.kind() == ErrorKind::NotFound => return Ok(()),
                r => r.map_err(|e| this.map_err("delete", &key, e))?,
            }
            if !is_gone {
                remove_empty_dirs(&this.root, &dir);
            }
            Ok(())
        })
        .await
    }

    async fn list_incomplete(&self, prefix: &str) -> Result<Vec<Incomplete>> {
        let (this, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || this.list_incomplete_blocking(&prefix)).await
    }

    async fn remove_incomplete(&self, item: &Incomplete) -> Result<()> {
        let (this, item) = (self.clone(), item.clone());
        blocking(move || this.remove_incomplete_blocking(&item)).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { is_create_atomic: true, has_fsync_dir: true }
    }

    /// [`Storage::make_durable`]: the object's content was fsynced before it got its name; its directory and
    /// every one up to the root are fsynced here.
    async fn make_durable(&self, key: &Key) -> Result<()> {
        let (this, key) = (self.clone(), key.clone());
        blocking(move || {
            let path = this.path(&key);
            let dir = path.parent().unwrap_or(&this.root);
            if !path.is_file() {
                return Err(Error::NotFound { backend: this.to_string(), key });
            }
            sync_dir(dir).and_then(|()| sync_parents(&this.root, dir)).map_err(|e| this.map_err("sync", &key, e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::new(s.to_owned()).expect("key")
    }

    #[tokio::test]
    async fn a_delete_removes_the_directories_it_empties_below_the_top_level() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStorage::new(dir.path());
        for k in ["wal/a/b/one", "wal/a/two"] {
            s.put(&key(k), Bytes::from_static(b"x"), PutMode::Create).await.expect("put");
        }
        s.delete(&key("wal/a/b/one")).await.expect("delete");
        assert!(!dir.path().join("wal/a/b").exists(), "the emptied directory is removed");
        assert!(dir.path().join("wal/a").is_dir(), "a directory that still holds an object stays");
        s.delete(&key("wal/a/two")).await.expect("delete");
        assert!(!dir.path().join("wal/a").exists(), "emptied in turn, it goes too");
        assert!(dir.path().join("wal").is_dir(), "a top-level directory stays");
        s.put(&key("wal/a/b/one"), Bytes::from_static(b"y"), PutMode::Create).await.expect("put again");
        assert_eq!(&s.get(&key("wal/a/b/one")).await.expect("get")[..], b"y");
    }

    /// Writers putting and deleting objects of one directory at once: every put lands, although each delete of
    /// the directory's last object removes the directory that another writer may just have made.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn puts_racing_deletes_that_empty_their_directory_all_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStorage::new(dir.path());
        let tasks: Vec<_> = (0..4)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    for i in 0..300 {
                        let k = key(&format!("packs/ab/cd/{w}-{i}"));
                        s.put(&k, Bytes::from_static(b"x"), PutMode::Create).await.expect("every put lands");
                        s.delete(&k).await.expect("delete");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        assert!(!dir.path().join("packs/ab").exists(), "the last delete left no empty directory");
    }

    /// A killed writer's temp file, alone in the directory it made: removing it removes the directory too.
    #[tokio::test]
    async fn removing_a_lone_temp_file_removes_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStorage::new(dir.path());
        std::fs::create_dir_all(dir.path().join("packs/zz")).expect("mkdir");
        std::fs::write(dir.path().join(format!("packs/zz/{TEMP_PREFIX}killed")), b"x").expect("temp file");
        let found = s.list_incomplete("packs/").await.expect("list");
        assert_eq!(found.len(), 1, "{found:?}");
        s.remove_incomplete(&found[0]).await.expect("remove");
        assert!(!dir.path().join("packs/zz").exists(), "the emptied directory is removed");
        assert!(dir.path().join("packs").is_dir(), "a top-level directory stays");
    }

    /// A delete whose directory another delete has removed syncs the nearest directory that still exists, which
    /// holds the removal; it never goes above the repository's root, and a missing root is an error.
    #[test]
    fn the_nearest_existing_directory_is_synced_up_to_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("wal")).expect("mkdir");
        sync_nearest_dir(&root, &root.join("wal/a/b")).expect("wal exists");
        sync_nearest_dir(&root, &root).expect("the root exists");
        std::fs::remove_dir_all(&root).expect("rm");
        let err = sync_nearest_dir(&root, &root.join("wal/a/b")).expect_err("the root is gone");
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    /// An object found is made durable in place; one missing is NotFound. Deleting what is gone, in a directory
    /// that is gone or a repository that is gone, is not an error (it syncs the nearest directory left).
    #[tokio::test]
    async fn make_durable_and_deletes_of_what_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStorage::new(dir.path().join("repo"));
        s.put(&key("packs/ab/x"), Bytes::from_static(b"x"), PutMode::Create).await.expect("put");
        s.make_durable(&key("packs/ab/x")).await.expect("present");
        let err = s.make_durable(&key("packs/ab/y")).await.expect_err("missing");
        assert!(err.is_not_found(), "{err}");
        let again = s.put(&key("packs/ab/x"), Bytes::from_static(b"x"), PutMode::Create).await;
        assert!(matches!(again, Err(Error::AlreadyExists { .. })), "{again:?}");
        s.delete(&key("packs/ab/x")).await.expect("delete");
        s.delete(&key("packs/ab/x")).await.expect("gone already");
        s.delete(&key("packs/cd/z")).await.expect("never there");
        std::fs::remove_dir_all(dir.path().join("repo")).expect("rm");
        s.delete(&key("packs/ab/x")).await.expect("the repository is gone");
    }

    /// A put's parent directories are synced from its directory's parent up to the root and no further; a
    /// directory missing fails.
    #[test]
    fn a_put_s_parents_are_synced_up_to_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        make_dir_all(&root.join("packs/ab")).expect("made");
        sync_parents(&root, &root.join("packs/ab")).expect("synced");
        sync_parents(&root, &root).expect("nothing between the root and itself");
        std::fs::remove_dir(root.join("packs/ab")).expect("rmdir");
        std::fs::remove_dir(root.join("packs")).expect("rmdir");
        let err = sync_parents(&root, &root.join("packs/ab")).expect_err("packs is gone");
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
}
