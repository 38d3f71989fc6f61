//! Format 2: turn raw frames into packs (docs/design/format2.md, "Writing a backup").
//!
//! Invariants:
//! - A frame is named by the blake3 of its raw content; one the repository's index already has (or this backup
//!   already packed) is not stored again, whatever kind of backup this is: the 256-bit name proves the content.
//! - Packs are put create-only under the blake3 of their bytes; at most `parallel` puts are in flight, so memory
//!   is about `(parallel + 1) × pack_size`.
//! - [`Packer::finish`] returns only once every pack holding a frame handed out by [`Packer::add_frame`] is
//!   durable (or fails): the caller writes the index and the manifest after it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Error;
use crate::archive::blocking;
use crate::codec;
use crate::repository::backup::ObjectId;
use crate::repository::packs::{PackBuilder, PackEntry, pack_key};
use crate::repository::packstore::FrameIndex;
use crate::storage::{self, DynStorage, PutMode};

/// What the packer wrote and reused.
#[derive(Debug, Default)]
pub struct PackerStats {
    /// Packs created.
    pub packs_written: AtomicU64,
    /// Frames stored.
    pub frames_written: AtomicU64,
    /// Raw bytes of the frames stored.
    pub raw_written: AtomicU64,
    /// Stored bytes of the packs created (what the repository grew by).
    pub bytes_new: AtomicU64,
    /// Raw bytes of frames that were already in the repository or in this backup.
    pub raw_reused: AtomicU64,
}

struct State {
    current: PackBuilder,
    /// Frames this backup packed (the repository's are in `Packer::index`).
    added: HashSet<ObjectId>,
    written: Vec<PackEntry>,
    uploads: JoinSet<Result<(), Error>>,
}

/// Collects frames into packs and stores them.
pub struct Packer {
    storage: DynStorage,
    level: i32,
    pack_size: usize,
    slots: Arc<Semaphore>,
    index: Arc<FrameIndex>,
    state: Mutex<State>,
    /// Counters.
    pub stats: Arc<PackerStats>,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer").field("level", &self.level).field("pack_size", &self.pack_size).finish()
    }
}

impl Packer {
    /// A packer writing packs of about `pack_size` stored bytes at zstd `level`, `parallel` puts at a time;
    /// `index` holds the frames the repository has (its pack indexes; shared, not copied: it is the largest
    /// structure of a backup of a large cluster).
    pub fn new(storage: DynStorage, level: i32, pack_size: usize, parallel: usize, index: Arc<FrameIndex>) -> Self {
        Self {
            storage,
            level,
            pack_size,
            slots: Arc::new(Semaphore::new(parallel.max(1))),
            index,
            state: Mutex::new(State {
                current: PackBuilder::default(),
                added: HashSet::new(),
                written: Vec::new(),
                uploads: JoinSet::new(),
            }),
            stats: Arc::new(PackerStats::default()),
        }
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, Error> {
        self.state.lock().map_err(|_| Error::Task("packer state poisoned".into()))
    }

    /// True if frame `id` is in the repository or already packed by this backup.
    pub fn is_known(&self, id: &ObjectId) -> bool {
        self.index.contains(id) || self.state().is_ok_and(|s| s.added.contains(id))
    }

    /// Count `bytes` raw bytes served by a frame that was already stored.
    pub fn note_reused(&self, bytes: u64) {
        self.stats.raw_reused.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Store `raw` as a frame unless it is known; returns its id. A full pack is put before this returns (so a
    /// slow repository slows the readers down instead of filling memory).
    pub async fn add_frame(&self, raw: Vec<u8>) -> Result<ObjectId, Error> {
        let len = raw.len() as u64;
        let (id, raw) = blocking(move || Ok((ObjectId::of(&raw), raw))).await?;
        let is_new = !self.index.contains(&id) && self.state()?.added.insert(id);
        if !is_new {
            self.note_reused(len);
            return Ok(id);
        }
        let level = self.level;
        let encoded = blocking(move || {
            codec::encode_hashed(&raw, codec::Digest::Blake3(id.0), level)
                .map(|(e, _)| e)
                .map_err(|source| Error::Corrupt { what: format!("frame {id}"), source })
        })
        .await?;
        self.stats.frames_written.fetch_add(1, Ordering::Relaxed);
        self.stats.raw_written.fetch_add(len, Ordering::Relaxed);
        let sealed = {
            let mut s = self.state()?;
            s.current.push(id, &encoded, len as u32);
            (s.current.len() >= self.pack_size).then(|| std::mem::take(&mut s.current).seal())
        };
        if let Some((bytes, entry)) = sealed {
            self.upload(bytes, entry).await?;
        }
        Ok(id)
    }

    async fn upload(&self, bytes: Vec<u8>, entry: PackEntry) -> Result<(), Error> {
        let permit = self.slots.clone().acquire_owned().await.map_err(|e| Error::Task(e.to_string()))?;
        let (storage, stats) = (self.storage.clone(), self.stats.clone());
        let key = pack_key(&entry.pack);
        let mut s = self.state()?;
        // The first failed put ends the backup: report it as soon as it is seen.
        while let Some(done) = s.uploads.try_join_next() {
            done.map_err(|e| Error::Task(e.to_string()))??;
        }
        s.written.push(entry);
        s.uploads.spawn(async move {
            let _permit = permit;
            let stored = bytes.len() as u64;
            match storage.put(&key, Bytes::from(bytes), PutMode::Create).await {
                Ok(()) => {
                    stats.packs_written.fetch_add(1, Ordering::Relaxed);
                    stats.bytes_new.fetch_add(stored, Ordering::Relaxed);
                    Ok(())
                }
                // Named by its content: an existing pack of that name holds the same bytes.
                Err(storage::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        });
        Ok(())
    }

    /// Put the last pack and wait for every put; returns the packs written, for the pack index.
    pub async fn finish(&self) -> Result<Vec<PackEntry>, Error> {
        let last = {
            let mut s = self.state()?;
            (!s.current.is_empty()).then(|| std::mem::take(&mut s.current).seal())
        };
        if let Some((bytes, entry)) = last {
            self.upload(bytes, entry).await?;
        }
        let mut uploads = std::mem::take(&mut self.state()?.uploads);
        while let Some(done) = uploads.join_next().await {
            done.map_err(|e| Error::Task(e.to_string()))??;
        }
        Ok(std::mem::take(&mut self.state()?.written))
    }
}
