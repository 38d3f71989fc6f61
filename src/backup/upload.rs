//! Store content-addressed objects: hash, skip what the repository holds (incremental), compress, put.
//!
//! Invariants:
//! - An object's key is the blake3 of its uncompressed content, so a put can only ever write the same content
//!   under a key: overwriting (full backups) replaces bytes with equal content, never with different content.
//! - An object is counted as present only once its put returned (durable) or the repository listed it.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::Error;
use crate::archive::blocking;
use crate::codec;
use crate::repository::backup::ObjectId;
use crate::storage::{self, DynStorage, PutMode};

/// Writes objects for one backup.
#[derive(Debug)]
pub struct ObjectWriter {
    storage: DynStorage,
    mode: PutMode,
    level: i32,
    /// Objects known to be in the repository (listed at start for incrementals) or written by this backup.
    present: Mutex<HashSet<ObjectId>>,
    /// Full backups: the objects listed at the start, which this backup writes again (counted as rewritten).
    before: HashSet<ObjectId>,
    pub(super) objects_written: AtomicU64,
    pub(super) bytes_written: AtomicU64,
    pub(super) bytes_stored: AtomicU64,
    pub(super) bytes_reused: AtomicU64,
    pub(super) bytes_new: AtomicU64,
    pub(super) bytes_rewritten: AtomicU64,
}

impl ObjectWriter {
    /// A writer; `present` are the objects the repository holds: an incremental reuses them, a full backup writes
    /// every object again and counts those as rewritten.
    pub fn new(storage: DynStorage, full: bool, level: i32, present: HashSet<ObjectId>) -> Self {
        let (present, before) = if full { (HashSet::new(), present) } else { (present, HashSet::new()) };
        Self {
            storage,
            mode: if full { PutMode::Overwrite } else { PutMode::Create },
            level,
            present: Mutex::new(present),
            before,
            objects_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            bytes_stored: AtomicU64::new(0),
            bytes_reused: AtomicU64::new(0),
            bytes_new: AtomicU64::new(0),
            bytes_rewritten: AtomicU64::new(0),
        }
    }

    /// True if `id` may be referenced without writing it.
    pub fn is_present(&self, id: &ObjectId) -> bool {
        self.present.lock().is_ok_and(|p| p.contains(id))
    }

    /// Count bytes served by an object that was already there.
    pub fn note_reused(&self, bytes: u64) {
        self.bytes_reused.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Store `raw` unless the repository has it; returns its id.
    pub async fn store(&self, raw: Vec<u8>) -> Result<ObjectId, Error> {
        let len = raw.len() as u64;
        let level = self.level;
        let (id, raw) = blocking(move || Ok((ObjectId::of(&raw), raw))).await?;
        // Claim the id: a concurrent task with equal content then reuses it instead of writing it twice.
        let is_new = self.present.lock().map_err(|_| Error::Task("object set poisoned".into()))?.insert(id);
        if !is_new {
            self.note_reused(len);
            return Ok(id);
        }
        let (object, _) = blocking(move || {
            codec::encode_hashed(&raw, codec::Digest::Blake3(id.0), level)
                .map_err(|source| Error::Corrupt { what: format!("chunk {id}"), source })
        })
        .await?;
        let stored = object.len() as u64;
        match self.storage.put(&id.key(), Bytes::from(object), self.mode).await {
            Ok(()) if self.before.contains(&id) => {
                self.bytes_rewritten.fetch_add(stored, Ordering::Relaxed);
            }
            Ok(()) => {
                self.bytes_new.fetch_add(stored, Ordering::Relaxed);
            }
            // A concurrent writer stored the same content first: it added it, not this backup.
            Err(storage::Error::AlreadyExists { .. }) => {}
            Err(e) => {
                if let Ok(mut p) = self.present.lock() {
                    p.remove(&id);
                }
                return Err(e.into());
            }
        }
        self.objects_written.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(len, Ordering::Relaxed);
        self.bytes_stored.fetch_add(stored, Ordering::Relaxed);
        Ok(id)
    }
}

/// Every data object the repository holds.
pub async fn list_objects(storage: &dyn storage::Storage) -> Result<HashSet<ObjectId>, Error> {
    let listed = storage.list(crate::repository::backup::DATA_PREFIX).await?;
    Ok(listed.iter().filter_map(|m| ObjectId::from_key(m.key.as_str())).collect())
}
