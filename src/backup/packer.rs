//! Format 2: turn raw frames into packs (docs/design/format2.md, "Writing a backup").
//!
//! Invariants:
//! - A frame is named by the blake3 of its raw content; one the repository's index already has (or this backup
//!   already packed) is not stored again, whatever kind of backup this is: the 256-bit name proves the content.
//! - Packs are put create-only under the blake3 of their bytes; at most `parallel` puts are in flight, so memory
//!   is about `(parallel + 1) × pack_size`.
//! - [`Packer::finish`] returns only once every pack holding a frame handed out by [`Packer::add_frame`] is
//!   durable and named by a pack index object (or fails): the caller writes the manifest after it.
//! - Pack index objects are written as the backup goes ([`packs_per_index`]), each naming only packs whose put
//!   has completed, so that a backup killed with `-9` leaves its packs findable: the rerun loads every index object
//!   and reuses their frames instead of storing them again (docs/design/format2.md, "Writing a backup").

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
use crate::repository::packs::{PackBuilder, PackEntry, PackIndex, pack_key};
use crate::repository::packstore::{self, FrameIndex};
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
    /// Pack index objects created.
    pub index_written: AtomicU64,
    /// Stored bytes of the pack index objects created.
    pub index_bytes_new: AtomicU64,
}

/// Packs that wait for a pack index object before one is written, when `indexed` packs of this backup already have
/// one: 4 at first, then an eighth of what is indexed, at most 256 (4 GiB stored). A backup killed with `-9` so
/// loses (stores again on its rerun) at most the larger of 64 MiB and about an eighth of what it had written, plus
/// the packs in flight; a backup of 1 TB stored writes about a hundred index objects, one of 4 packs or fewer one.
pub fn packs_per_index(indexed: usize) -> usize {
    (indexed / 8).clamp(4, 256)
}

/// Packs that are durable but not yet named by a pack index object, and the index objects written so far.
#[derive(Debug, Default)]
struct Indexing {
    /// Durable packs no index object names yet, in the order their puts completed.
    pending: Vec<PackEntry>,
    /// Packs named by an index object written by this backup.
    indexed: usize,
    /// The index objects this backup wrote (or found already written: same content, same name), in order.
    written: Vec<ObjectId>,
}

impl Indexing {
    /// Take the pending packs if there are enough of them for an index object (all of them if `is_last`).
    fn take(&mut self, is_last: bool) -> Option<Vec<PackEntry>> {
        let is_due = self.pending.len() >= packs_per_index(self.indexed) || (is_last && !self.pending.is_empty());
        is_due.then(|| {
            self.indexed += self.pending.len();
            std::mem::take(&mut self.pending)
        })
    }
}

/// Write one pack index object naming `packs` (durable ones) and record it.
async fn write_index(
    storage: &DynStorage,
    level: i32,
    packs: Vec<PackEntry>,
    indexing: &Mutex<Indexing>,
    stats: &PackerStats,
) -> Result<(), Error> {
    let (id, stored) = packstore::save_index(storage.as_ref(), &PackIndex { packs }, level).await?;
    stats.index_written.fetch_add(u64::from(stored > 0), Ordering::Relaxed);
    stats.index_bytes_new.fetch_add(stored, Ordering::Relaxed);
    indexing.lock().map_err(|_| Error::Task("packer index state poisoned".into()))?.written.push(id);
    Ok(())
}

struct State {
    current: PackBuilder,
    /// Frames this backup packed (the repository's are in `Packer::index`).
    added: HashSet<ObjectId>,
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
    indexing: Arc<Mutex<Indexing>>,
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
                uploads: JoinSet::new(),
            }),
            indexing: Arc::new(Mutex::new(Indexing::default())),
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
        let (storage, stats, indexing, level) =
            (self.storage.clone(), self.stats.clone(), self.indexing.clone(), self.level);
        let key = pack_key(&entry.pack);
        let mut s = self.state()?;
        // The first failed put ends the backup: report it as soon as it is seen.
        while let Some(done) = s.uploads.try_join_next() {
            done.map_err(|e| Error::Task(e.to_string()))??;
        }
        s.uploads.spawn(async move {
            let stored = bytes.len() as u64;
            match storage.put(&key, Bytes::from(bytes), PutMode::Create).await {
                Ok(()) => {
                    stats.packs_written.fetch_add(1, Ordering::Relaxed);
                    stats.bytes_new.fetch_add(stored, Ordering::Relaxed);
                }
                // Named by its content: an existing pack of that name holds the same bytes.
                Err(storage::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            drop(permit);
            // Durable now: an index object may name it.
            let batch = {
                let mut i = indexing.lock().map_err(|_| Error::Task("packer index state poisoned".into()))?;
                i.pending.push(entry);
                i.take(false)
            };
            match batch {
                Some(packs) => write_index(&storage, level, packs, &indexing, &stats).await,
                None => Ok(()),
            }
        });
        Ok(())
    }

    /// Put the last pack, wait for every put, and name every pack no index object names yet in a last one; returns
    /// the pack index objects this backup wrote, in order (for the manifest).
    pub async fn finish(&self) -> Result<Vec<ObjectId>, Error> {
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
        let last = self.indexing.lock().map_err(|_| Error::Task("packer index state poisoned".into()))?.take(true);
        if let Some(packs) = last {
            write_index(&self.storage, self.level, packs, &self.indexing, &self.stats).await?;
        }
        let indexing = self.indexing.lock().map_err(|_| Error::Task("packer index state poisoned".into()))?;
        Ok(indexing.written.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::packs::INDEX_PREFIX;
    use crate::storage::fs::FsStorage;

    #[test]
    fn issue_10_index_objects_come_often_at_first_then_grow() {
        assert_eq!((0..4).map(packs_per_index).collect::<Vec<_>>(), [4, 4, 4, 4]);
        assert_eq!(packs_per_index(80), 10);
        assert_eq!(packs_per_index(1 << 20), 256);
        // A backup of 16,000 packs (1 TB stored at 4x): about a hundred index objects.
        let (mut indexed, mut objects) = (0, 0);
        while indexed < 16_000 {
            indexed += packs_per_index(indexed);
            objects += 1;
        }
        assert!((50..150).contains(&objects), "{objects} index objects");
    }

    /// Index objects are written while the backup goes, naming only packs that are stored: a backup killed before
    /// `finish` leaves its packs findable. `finish` names the rest.
    #[tokio::test]
    async fn issue_10_packs_are_indexed_as_they_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: DynStorage = Arc::new(FsStorage::new(dir.path()));
        // A pack per frame.
        let packer = Packer::new(storage.clone(), 1, 1, 2, Arc::new(FrameIndex::default()));
        let raws: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i; 3000]).collect();
        for raw in &raws {
            packer.add_frame(raw.clone()).await.expect("frame");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let listed = storage.list(INDEX_PREFIX).await.expect("list");
            if listed.len() >= 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "two index objects before finish: {listed:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mid = FrameIndex::load(storage.as_ref()).await.expect("load");
        assert!(mid.len() >= 8, "the first 8 packs are indexed before finish: {}", mid.len());
        for id in mid.ids() {
            let (pack, _) = mid.get(id).expect("indexed");
            assert!(storage.exists(&pack_key(pack)).await.expect("exists"), "an index names only stored packs");
        }
        let written = packer.finish().await.expect("finish");
        assert_eq!(written.len(), 3, "4 + 4 + the last one");
        let all = FrameIndex::load(storage.as_ref()).await.expect("load");
        assert_eq!(all.len(), 9);
        assert!(raws.iter().all(|r| all.contains(&ObjectId::of(r))));
        assert_eq!(packer.stats.index_written.load(Ordering::Relaxed), 3);
        assert!(packer.stats.index_bytes_new.load(Ordering::Relaxed) > 0);
    }
}
