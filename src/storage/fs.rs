//! Local directory backend (`file:///path`).
//!
//! Invariants: a put writes a temp file in the target directory, fsyncs it, then renames it into place
//! (`Overwrite`) or hard-links it (`Create`, which fails atomically if the name exists), and fsyncs the directory.
//! A reader never sees a partial object; temp files are removed on drop.

use std::fmt;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Capabilities, Error, Key, ObjectMeta, PutMode, Result, Storage};

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
        let io = |e| self.map_err("put", key, e);
        create_dir_all_durable(&dir).map_err(io)?;
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&dir).map_err(io)?;
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
                    return Err(Error::AlreadyExists { backend: self.to_string(), key: key.clone() });
                }
                Err(e) => return Err(io(e)),
            },
        }
        sync_dir(&dir).map_err(io)
    }

    fn get_blocking(&self, key: &Key, range: Option<Range<u64>>) -> Result<Bytes> {
        let io = |e| self.map_err("get", key, e);
        let mut f = std::fs::File::open(self.path(key)).map_err(io)?;
        let mut buf = Vec::new();
        match range {
            None => {
                f.read_to_end(&mut buf).map_err(io)?;
            }
            Some(r) => {
                f.seek(SeekFrom::Start(r.start)).map_err(io)?;
                f.take(r.end.saturating_sub(r.start)).read_to_end(&mut buf).map_err(io)?;
            }
        }
        Ok(Bytes::from(buf))
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        // Walk only the deepest existing directory named by the prefix.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() { self.root.clone() } else { self.root.join(dir_part) };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.map_err("list", &prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.map_err("list", &prefix, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp-") {
                    continue;
                }
                let ft = entry.file_type().map_err(|e| self.map_err("list", &prefix, e))?;
                let path = entry.path();
                if ft.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else { continue };
                let rel = rel.to_string_lossy();
                if !rel.starts_with(prefix) {
                    continue;
                }
                let meta = entry.metadata().map_err(|e| self.map_err("list", &prefix, e))?;
                if let Ok(key) = Key::new(rel.into_owned()) {
                    out.push(ObjectMeta { key, size: meta.len(), last_modified: meta.modified().ok() });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// Create a directory and its parents, fsyncing each parent whose entry was added.
fn create_dir_all_durable(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all_durable(parent)?;
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
        blocking(move || this.get_blocking(&key, None)).await
    }

    async fn get_range(&self, key: &Key, range: Range<u64>) -> Result<Bytes> {
        let (this, key) = (self.clone(), key.clone());
        blocking(move || this.get_blocking(&key, Some(range))).await
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_file() => {
                Ok(ObjectMeta { key: key.clone(), size: m.len(), last_modified: m.modified().ok() })
            }
            Ok(_) => Err(Error::NotFound { backend: self.to_string(), key: key.clone() }),
            Err(e) => Err(self.map_err("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let (this, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || this.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.map_err("delete", key, e)),
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let key = key.clone();
        let this = self.clone();
        blocking(move || sync_dir(&dir).map_err(|e| this.map_err("delete", &key, e))).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { is_create_atomic: true, has_fsync_dir: true }
    }
}
