//! Format 2: back up one large file as blocks (docs/design/format2.md, "Writing a backup", step 3).
//!
//! Invariants:
//! - The file is read once, 1 MiB at a time; every block's 8-byte digest is of the bytes read.
//! - Incremental: a block whose digest equals the previous backup's for the same block number keeps the previous
//!   source; a changed block is stored as an XOR delta against its previous whole version when fewer than a
//!   quarter of the XOR's bytes are non-zero, and whole otherwise. A delta's base is always a whole block (the
//!   previous whole source, or the base of the previous delta), so a block never needs more than two frames.
//! - Full: every block is stored whole, in frames of the 1 MiB reads (aligned, so an unchanged MiB gives the
//!   same frame as last time and is found by its 256-bit name); nothing of an earlier backup is trusted.
//! - A base block read back from the repository is verified before it is used: against the previous node's digest
//!   of that block when the block was stored whole there (8 KiB hashed, not the frame's 1 MiB), otherwise (the
//!   block was a delta, or a short last block) against the whole frame's blake3, once per frame.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use lru::LruCache;

use super::packer::Packer;
use super::pages::PageVerifier;
use super::walk::SourceFile;
use crate::Error;
use crate::archive::blocking;
use crate::repository::backup::ObjectId;
use crate::repository::blockmap::{NODE_BLOCKS, Node, Source, block_digest};
use crate::repository::packs::FRAME_RAW_MAX;
use crate::repository::packstore::{self, FrameIndex};
use crate::storage::DynStorage;

/// Decoded frames kept for base blocks: 32 frames of at most 1 MiB (two files in progress, each with a base read
/// of [`BASE_READ_FRAMES`] ahead).
const BASE_CACHE_FRAMES: usize = 32;

/// Base frames read with one ranged request: the one needed and the previous backup's next frames of the same file
/// that lie close behind it in the same pack (a changed page in most 1 MiB regions would otherwise cost one request
/// per region: on S3, a round trip each, one after another).
const BASE_READ_FRAMES: usize = 8;

/// Largest gap (bytes of other frames) a base read spans to take the next frame along.
const BASE_READ_GAP: u64 = 256 << 10;

/// Reads of a file (1 MiB each, with their blocks' digests) in flight ahead of the one being compared: the next
/// MiB is read and hashed on another core while this one's changed blocks are compared with their bases.
const READ_AHEAD: usize = 2;

/// A base frame being decoded on a blocking thread, or decoded (`None`: decoding failed; the caller decodes it
/// again itself, for the error).
type Decoding = Shared<BoxFuture<'static, Option<Arc<BaseFrame>>>>;

/// A frame of the repository read back as the base of deltas: decoded, its size and header checked, its content
/// checked block by block as blocks are used ([`BaseFrame::block`]).
struct BaseFrame {
    key: crate::storage::Key,
    loc: crate::repository::packs::FrameLocation,
    raw: Vec<u8>,
    /// Set once the whole content matched the frame's blake3.
    is_verified: std::sync::OnceLock<()>,
}

impl BaseFrame {
    fn decode(
        key: crate::storage::Key,
        bytes: &[u8],
        loc: crate::repository::packs::FrameLocation,
    ) -> Result<Self, Error> {
        let raw = packstore::decode_frame_unverified(&key, bytes, &loc)?;
        Ok(Self { key, loc, raw, is_verified: std::sync::OnceLock::new() })
    }

    /// The first `len` bytes of block `slot` (`None` if the frame does not hold them), checked: its whole block
    /// against `digest` (the previous node's digest for a block it stored whole), or else the whole frame against
    /// its blake3. Errors: [`Error::Corrupt`]-kind errors naming the pack and offset.
    fn block(&self, slot: u32, block_size: u32, len: usize, digest: Option<u64>) -> Result<Option<&[u8]>, Error> {
        let start = slot as usize * block_size as usize;
        let Some(bytes) = self.raw.get(start..start + len) else { return Ok(None) };
        let whole = self.raw.get(start..start + block_size as usize);
        let is_checked = matches!((digest, whole), (Some(d), Some(w)) if block_digest(w) == d);
        if !is_checked && self.is_verified.get().is_none() {
            packstore::verify_frame(&self.key, &self.loc, &self.raw)?;
            let _ = self.is_verified.set(());
        }
        Ok(Some(bytes))
    }
}

/// What one backup's block copy shares between files.
pub struct BlockContext {
    /// The repository.
    pub storage: DynStorage,
    /// Where frames go.
    pub packer: Arc<Packer>,
    /// The repository's frames at the start of the backup (bases are looked up here).
    pub index: Arc<FrameIndex>,
    /// Verifies page checksums of what is read.
    pub pages: Arc<PageVerifier>,
    /// Block size in bytes.
    pub block_size: u32,
    /// Full backup: store every block whole, trust no earlier digest.
    pub is_full: bool,
    /// zstd level of nodes.
    pub level: i32,
    bases: Mutex<LruCache<ObjectId, Decoding>>,
    nodes: Mutex<LruCache<ObjectId, Arc<Node>>>,
    /// Nodes being saved right now: identical files (a database copied from a template) give identical nodes in
    /// concurrent workers, and the second must neither save nor count what the first is saving.
    saving: Mutex<std::collections::HashSet<ObjectId>>,
    /// Counters.
    pub stats: BlockStats,
}

/// Blocks by how they were stored.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Blocks that kept the previous backup's source.
    pub unchanged: std::sync::atomic::AtomicU64,
    /// Blocks stored whole.
    pub whole: std::sync::atomic::AtomicU64,
    /// Blocks stored as deltas.
    pub delta: std::sync::atomic::AtomicU64,
    /// Stored bytes of the nodes this backup created.
    pub node_bytes_new: std::sync::atomic::AtomicU64,
    /// Nodes this backup created.
    pub nodes_written: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for BlockContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockContext").field("block_size", &self.block_size).field("is_full", &self.is_full).finish()
    }
}

impl BlockContext {
    /// A context; see the fields.
    pub fn new(
        storage: DynStorage,
        packer: Arc<Packer>,
        index: Arc<FrameIndex>,
        pages: Arc<PageVerifier>,
        block_size: u32,
        is_full: bool,
        level: i32,
    ) -> Self {
        let cap = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Self {
            storage,
            packer,
            index,
            pages,
            block_size,
            is_full,
            level,
            bases: Mutex::new(LruCache::new(cap(BASE_CACHE_FRAMES))),
            nodes: Mutex::new(LruCache::new(cap(16))),
            saving: Mutex::new(std::collections::HashSet::new()),
            stats: BlockStats::default(),
        }
    }

    /// Save an encoded node (`id`: [`ObjectId::of`] `raw`) unless it exists or another worker of this backup is
    /// saving it: its id, and the bytes this call added to the repository (0 when it existed or was being saved).
    /// Counting only what this call created keeps a backup's `bytes_stored` equal to the repository's growth even
    /// against a server that lets two concurrent create-only puts of one key both succeed. A node left to another
    /// worker is confirmed by the final presence check, and a failed save fails the backup.
    ///
    /// # Errors
    /// The storage's, from [`packstore::save_raw`].
    async fn save_node(&self, id: ObjectId, raw: &[u8]) -> Result<(ObjectId, u64), Error> {
        let claimed = self.saving.lock().map_or(true, |mut s| s.insert(id));
        if !claimed {
            return Ok((id, 0));
        }
        let saved =
            packstore::save_raw(self.storage.as_ref(), raw, crate::repository::blockmap::node_key, self.level).await;
        if let Ok(mut s) = self.saving.lock() {
            s.remove(&id);
        }
        Ok(saved?)
    }

    /// A node of the previous backup (cached).
    async fn node(&self, id: &ObjectId) -> Result<Arc<Node>, Error> {
        if let Some(n) = self.nodes.lock().ok().and_then(|mut c| c.get(id).cloned()) {
            return Ok(n);
        }
        let node = Arc::new(packstore::load_node(self.storage.as_ref(), id).await?);
        if let Ok(mut c) = self.nodes.lock() {
            c.put(*id, node.clone());
        }
        Ok(node)
    }

    /// Start loading node `id` of the previous backup on its own task (so that it progresses while the copy is
    /// busy elsewhere); the returned future gives it. A node already cached is given at once.
    pub fn prefetch_node(&self, id: ObjectId) -> BoxFuture<'static, Result<Arc<Node>, Error>> {
        if let Some(n) = self.nodes.lock().ok().and_then(|mut c| c.get(&id).cloned()) {
            return futures_util::future::ready(Ok(n)).boxed();
        }
        let storage = self.storage.clone();
        let task = tokio::spawn(async move { packstore::load_node(storage.as_ref(), &id).await.map(Arc::new) });
        async move { Ok(task.await.map_err(|e| Error::Task(e.to_string()))??) }.boxed()
    }

    /// The raw content of frame `id` of the repository (cached), or `None` if the index does not have it. On a
    /// miss, the frames that follow `id` in `next` (the previous node's frame table, in file order), lie just
    /// behind it in the same pack and are not cached yet are read with it, in one ranged request
    /// ([`BASE_READ_FRAMES`]), and decoded on blocking threads in the background while this one is used. (Before
    /// cached frames were left out, a random 5% change decoded 2,240 frames for 1,560 distinct ones.)
    async fn frame(&self, id: &ObjectId, next: &[ObjectId]) -> Result<Option<Arc<BaseFrame>>, Error> {
        let cached = self.bases.lock().ok().and_then(|mut c| c.get(id).cloned());
        if let Some(decoding) = cached
            && let Some(raw) = decoding.await
        {
            return Ok(Some(raw));
        }
        let Some((pack, loc)) = self.index.get(id).copied() else { return Ok(None) };
        let mut run = vec![loc];
        let mut end = loc.offset + u64::from(loc.stored_length);
        let after = next.iter().position(|f| f == id).map_or(&[][..], |i| &next[i + 1..]);
        let cached: std::collections::HashSet<&ObjectId> =
            self.bases.lock().map(|c| after.iter().filter(|f| c.contains(f)).collect()).unwrap_or_default();
        for f in after {
            if run.len() >= BASE_READ_FRAMES {
                break;
            }
            if cached.contains(f) {
                // Decoded or being decoded already (an earlier read took it along): not decoded twice. Its bytes
                // count as a gap, which the next frame's distance below includes.
                continue;
            }
            match self.index.get(f) {
                Some((p, l)) if *p == pack && l.offset >= end && l.offset - end <= BASE_READ_GAP => {
                    end = l.offset + u64::from(l.stored_length);
                    run.push(*l);
                }
                Some((p, l)) if *p == pack && l.offset + u64::from(l.stored_length) <= end => {} // already in
                _ => break,
            }
        }
        let start = loc.offset;
        let key = crate::repository::packs::pack_key(&pack);
        let bytes = self.storage.get_range(&key, start, end - start).await?;
        let slice = |l: &crate::repository::packs::FrameLocation| {
            let at = (l.offset - start) as usize;
            let range = at..at + l.stored_length as usize;
            if range.end <= bytes.len() { bytes.slice(range) } else { bytes::Bytes::new() }
        };
        // The frames behind the one wanted decode in the background; the wanted one here, for its error.
        let mut decoding = Vec::with_capacity(run.len());
        for l in run.iter().skip(1) {
            let (key, frame, l) = (key.clone(), slice(l), *l);
            let task = tokio::task::spawn_blocking(move || BaseFrame::decode(key, &frame, l).ok().map(Arc::new));
            decoding.push((l.id, async move { task.await.ok().flatten() }.boxed().shared()));
        }
        let frame = slice(&loc);
        let raw = Arc::new(blocking(move || BaseFrame::decode(key, &frame, loc)).await?);
        if let Ok(mut c) = self.bases.lock() {
            c.put(loc.id, futures_util::future::ready(Some(raw.clone())).boxed().shared());
            for (f, d) in decoding {
                c.put(f, d);
            }
        }
        Ok(Some(raw))
    }
}

/// A source whose frame is either in the node's table or not stored yet (frame `seq` of this node).
#[derive(Debug, Clone, Copy)]
enum Pending {
    Done(Source),
    /// Slot `slot` of whole-block frame `seq`.
    Whole {
        seq: u32,
        slot: u32,
    },
    /// Base (frame table index, slot) and slot of delta frame `seq`.
    Delta {
        base_frame: u32,
        base_slot: u32,
        seq: u32,
        slot: u32,
    },
}

/// Frames of one file being compressed and packed while the next blocks are read.
const FRAMES_IN_FLIGHT: usize = 2;

/// Builds one node while its blocks are read.
struct NodeBuilder {
    block_size: u32,
    first_block: u64,
    frames: Vec<ObjectId>,
    /// Each of `frames`' position, so that naming a frame costs the same however many the node has.
    frame_positions: std::collections::HashMap<ObjectId, u32>,
    digests: Vec<u64>,
    sources: Vec<Pending>,
    /// Per frame being filled or in flight (`seq`), the positions in `sources` of the blocks waiting for it: a
    /// frame's completion touches only its own blocks, not every block of the node.
    waiting: std::collections::HashMap<u32, Vec<u32>>,
    whole: Vec<u8>,
    whole_seq: u32,
    delta: Vec<u8>,
    delta_seq: u32,
    next_seq: u32,
    /// Frames handed to the packer, oldest first; always completed in this order, so the frame table (and so
    /// the node's content and name) depends only on the data, never on timing.
    in_flight: std::collections::VecDeque<(u32, tokio::task::JoinHandle<Result<ObjectId, Error>>)>,
}

impl NodeBuilder {
    fn new(block_size: u32, first_block: u64) -> Self {
        Self {
            block_size,
            first_block,
            frames: Vec::new(),
            frame_positions: std::collections::HashMap::new(),
            digests: Vec::new(),
            sources: Vec::new(),
            waiting: std::collections::HashMap::new(),
            whole: Vec::new(),
            whole_seq: 0,
            delta: Vec::new(),
            delta_seq: 1,
            next_seq: 2,
            in_flight: std::collections::VecDeque::new(),
        }
    }

    fn frame_index(&mut self, id: ObjectId) -> u32 {
        let next = self.frames.len() as u32;
        let at = *self.frame_positions.entry(id).or_insert(next);
        if at == next {
            self.frames.push(id);
        }
        at
    }

    /// Add a block waiting for frame `seq`.
    fn push_pending(&mut self, digest: u64, pending: Pending, seq: u32) {
        self.waiting.entry(seq).or_default().push(self.sources.len() as u32);
        self.digests.push(digest);
        self.sources.push(pending);
    }

    /// Keep a block of the previous node as it was.
    fn reuse(&mut self, prev: &Node, at: usize) {
        let mut map = |i: u32| self.frame_index(prev.frames[i as usize]);
        let source = match prev.sources[at] {
            Source::Whole { frame, slot } => Source::Whole { frame: map(frame), slot },
            Source::Delta { base_frame, base_slot, delta_frame, delta_slot } => {
                Source::Delta { base_frame: map(base_frame), base_slot, delta_frame: map(delta_frame), delta_slot }
            }
        };
        self.digests.push(prev.digests[at]);
        self.sources.push(Pending::Done(source));
    }

    fn add_whole(&mut self, digest: u64, block: &[u8]) {
        let slot = (self.whole.len() / self.block_size as usize) as u32;
        // A short (last) block is padded to the block size inside the frame; its length comes from the file size.
        self.whole.extend_from_slice(block);
        self.whole.resize(self.whole.len().next_multiple_of(self.block_size as usize), 0);
        self.push_pending(digest, Pending::Whole { seq: self.whole_seq, slot }, self.whole_seq);
    }

    fn add_delta(&mut self, digest: u64, base: ObjectId, base_slot: u32, xor: &[u8]) {
        let base_frame = self.frame_index(base);
        let slot = (self.delta.len() / self.block_size as usize) as u32;
        self.delta.extend_from_slice(xor);
        self.delta.resize(self.delta.len().next_multiple_of(self.block_size as usize), 0);
        self.push_pending(digest, Pending::Delta { base_frame, base_slot, seq: self.delta_seq, slot }, self.delta_seq);
    }

    /// Hand `raw` (frame `seq`) to the packer; wait for the oldest frames beyond [`FRAMES_IN_FLIGHT`].
    async fn submit(&mut self, packer: &Arc<Packer>, seq: u32, raw: Vec<u8>) -> Result<(), Error> {
        let p = packer.clone();
        self.in_flight.push_back((seq, tokio::spawn(async move { p.add_frame(raw).await })));
        while self.in_flight.len() > FRAMES_IN_FLIGHT {
            self.complete_oldest().await?;
        }
        Ok(())
    }

    async fn complete_oldest(&mut self) -> Result<(), Error> {
        let Some((seq, task)) = self.in_flight.pop_front() else { return Ok(()) };
        let id = task.await.map_err(|e| Error::Task(e.to_string()))??;
        let frame = self.frame_index(id);
        for at in self.waiting.remove(&seq).unwrap_or_default() {
            let Some(s) = self.sources.get_mut(at as usize) else { continue };
            match *s {
                Pending::Whole { seq: q, slot } if q == seq => *s = Pending::Done(Source::Whole { frame, slot }),
                Pending::Delta { base_frame, base_slot, seq: q, slot } if q == seq => {
                    *s = Pending::Done(Source::Delta { base_frame, base_slot, delta_frame: frame, delta_slot: slot });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Store the whole-block frame being filled (if any).
    async fn flush_whole(&mut self, packer: &Arc<Packer>) -> Result<(), Error> {
        if self.whole.is_empty() {
            return Ok(());
        }
        let (seq, raw) = (self.whole_seq, std::mem::take(&mut self.whole));
        self.whole_seq = self.next_seq;
        self.next_seq += 1;
        self.submit(packer, seq, raw).await
    }

    /// Store the delta frame being filled (if any).
    async fn flush_delta(&mut self, packer: &Arc<Packer>) -> Result<(), Error> {
        if self.delta.is_empty() {
            return Ok(());
        }
        let (seq, raw) = (self.delta_seq, std::mem::take(&mut self.delta));
        self.delta_seq = self.next_seq;
        self.next_seq += 1;
        self.submit(packer, seq, raw).await
    }

    async fn finish(mut self, packer: &Arc<Packer>) -> Result<Node, Error> {
        self.flush_whole(packer).await?;
        self.flush_delta(packer).await?;
        while !self.in_flight.is_empty() {
            self.complete_oldest().await?;
        }
        let sources = self
            .sources
            .iter()
            .map(|s| match s {
                Pending::Done(s) => Ok(*s),
                _ => Err(Error::Task("a block was left without a frame".into())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Node {
            block_size: self.block_size,
            first_block: self.first_block,
            frames: self.frames,
            digests: self.digests,
            sources,
        })
    }
}

/// The whole base of a previous source: `(frame id, slot)`.
fn base_of(prev: &Node, at: usize) -> (ObjectId, u32) {
    match prev.sources[at] {
        Source::Whole { frame, slot } => (prev.frames[frame as usize], slot),
        Source::Delta { base_frame, base_slot, .. } => (prev.frames[base_frame as usize], base_slot),
    }
}

/// What [`copy_nodes`] made of a part of a file.
#[derive(Debug)]
pub struct CopiedNodes {
    /// Bytes read.
    pub size: u64,
    /// The nodes, in order, from the first one asked for.
    pub nodes: Vec<ObjectId>,
    /// Frames the nodes name (for the final presence check).
    pub frames: Vec<ObjectId>,
    /// The read ended before the part did (the file is shorter): later nodes of the file are not part of it.
    pub is_eof: bool,
}

/// Bytes of a file one node covers: [`NODE_BLOCKS`] blocks of `block_size` bytes.
pub fn node_bytes(block_size: u32) -> u64 {
    NODE_BLOCKS * u64::from(block_size)
}

/// Read nodes `first_node..` of `file` once and store their blocks: only `first_node` when `is_one`, else every
/// node to the end of the file (however far it has grown). `prev` are the previous backup's nodes of the same path
/// (incremental); `first_prev` is `prev[first_node]` if the caller has loaded it already (prefetched), else it is
/// loaded here. `None` if the file is gone at the first read. Each read waits for `pacer` (`--max-rate`);
/// `on_read` is told the bytes it got (progress). The nodes of a large file are copied in parallel this way, each
/// part on its own (a node depends on nothing but its blocks and the previous backup's node of the same number).
#[allow(clippy::too_many_arguments)]
pub async fn copy_nodes(
    ctx: &BlockContext,
    file: &SourceFile,
    prev: &[ObjectId],
    first_prev: Option<Arc<Node>>,
    first_node: u64,
    is_one: bool,
    pacer: &tokio::sync::Mutex<super::copy::Pacer>,
    on_read: &(dyn Fn(u64) + Sync),
) -> Result<Option<CopiedNodes>, Error> {
    let bs = u64::from(ctx.block_size);
    let read_len = (FRAME_RAW_MAX as u64 / bs).max(1) * bs;
    // The reads, in order: 1 MiB at a time, never across a node's end; a short one is the end of the file.
    let node_bytes = node_bytes(ctx.block_size);
    let start = first_node * node_bytes;
    let reads = std::iter::successors(Some((start, read_len.min(node_bytes))), |&(at, len)| {
        let next = at + len;
        Some((next, read_len.min((next / node_bytes + 1) * node_bytes - next)))
    });
    let reads = futures_util::stream::iter(reads)
        .map(|(at, len)| async move {
            pacer.lock().await.wait(len).await;
            let (path, rel, pages) = (file.abs.clone(), file.rel.clone(), ctx.pages.clone());
            blocking(move || {
                let data = super::copy::read_range(&path, at, len)?;
                pages.check(&rel, &path, at, data.as_deref())?;
                let digests: Vec<u64> =
                    data.as_deref().map(|d| d.chunks(bs as usize).map(block_digest).collect()).unwrap_or_default();
                Ok((len, data, digests))
            })
            .await
        })
        .buffered(READ_AHEAD);
    let mut reads = std::pin::pin!(reads);
    let mut offset = start;
    let mut nodes = Vec::new();
    let mut frames = Vec::new();
    let mut is_eof = false;
    let mut node_no = first_node;
    let is_done = |node_no: u64| is_one && node_no > first_node;
    let mut first_prev = first_prev;
    while !is_eof && !is_done(node_no) {
        let first_block = node_no * NODE_BLOCKS;
        let prev_node = match (prev.get(node_no as usize), first_prev.take()) {
            (Some(_), Some(n)) if !ctx.is_full => Some(n),
            (Some(id), _) if !ctx.is_full => Some(ctx.node(id).await?),
            _ => None,
        };
        let prev_node = prev_node.filter(|n| n.block_size == ctx.block_size);
        let mut b = NodeBuilder::new(ctx.block_size, first_block);
        let node_end = (first_block + NODE_BLOCKS) * bs;
        while offset < node_end {
            let Some(read) = reads.next().await else { break };
            let (len, data, digests) = read?;
            let Some(data) = data else {
                if offset == start {
                    return Ok(None);
                }
                is_eof = true;
                break;
            };
            on_read(data.len() as u64);
            let blocks = data;
            for (i, (block, digest)) in blocks.chunks(bs as usize).zip(digests).enumerate() {
                let at = ((offset / bs) + i as u64 - first_block) as usize;
                let prev = prev_node.as_deref().filter(|p| at < p.digests.len());
                match prev {
                    Some(p) if p.digests[at] == digest => {
                        b.reuse(p, at);
                        ctx.stats.unchanged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some(p) => {
                        let (base, base_slot) = base_of(p, at);
                        let known = matches!(p.sources[at], Source::Whole { .. }).then_some(p.digests[at]);
                        let xor = match ctx.frame(&base, &p.frames).await? {
                            Some(f) => f.block(base_slot, ctx.block_size, block.len(), known)?.and_then(|old| {
                                let xor: Vec<u8> = block.iter().zip(old).map(|(a, b)| a ^ b).collect();
                                let nonzero = xor.iter().filter(|b| **b != 0).count();
                                (nonzero < block.len() / 4).then_some(xor)
                            }),
                            None => None,
                        };
                        match xor {
                            Some(xor) => {
                                b.add_delta(digest, base, base_slot, &xor);
                                ctx.stats.delta.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            None => {
                                b.add_whole(digest, block);
                                ctx.stats.whole.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                    None => {
                        b.add_whole(digest, block);
                        ctx.stats.whole.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            offset += blocks.len() as u64;
            if (blocks.len() as u64) < len {
                is_eof = true;
            }
            // A full keeps frames aligned to the reads; an incremental fills frames with changed blocks.
            if ctx.is_full || b.whole.len() >= FRAME_RAW_MAX {
                b.flush_whole(&ctx.packer).await?;
            }
            if b.delta.len() >= FRAME_RAW_MAX {
                b.flush_delta(&ctx.packer).await?;
            }
            if is_eof {
                break;
            }
        }
        if b.digests.is_empty() {
            break;
        }
        let node = b.finish(&ctx.packer).await?;
        frames.extend(node.frames.iter().copied());
        // A node equal to the previous backup's (no block of it changed) exists: the previous manifest names it and
        // the lease keeps gc away, and the final presence check confirms it. Not asking (a HEAD per node, one after
        // another in each worker) saves a round trip per unchanged node on S3.
        let raw = node.encode();
        let id = ObjectId::of(&raw);
        let (id, stored) = if prev.get(node_no as usize) == Some(&id) && !ctx.is_full {
            (id, 0)
        } else {
            ctx.save_node(id, &raw).await?
        };
        ctx.stats.node_bytes_new.fetch_add(stored, std::sync::atomic::Ordering::Relaxed);
        ctx.stats.nodes_written.fetch_add(u64::from(stored > 0), std::sync::atomic::Ordering::Relaxed);
        nodes.push(id);
        node_no += 1;
    }
    Ok(Some(CopiedNodes { size: offset - start, nodes, frames, is_eof }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::repository::packs::{FrameLocation, pack_key};

    const BS: u32 = 8192;
    const B: usize = BS as usize;

    /// Two workers saving the same node at once (identical files, such as a database copied from its template):
    /// one saves it and counts its bytes, the other neither asks the repository nor counts. Before, both asked and
    /// both could count it, on a server that lets two concurrent create-only puts of one key succeed (moto).
    #[tokio::test]
    async fn a_node_saved_by_two_workers_at_once_is_saved_and_counted_once() {
        use crate::storage::{fs::FsStorage, testing::Faulty};
        let dir = tempfile::tempdir().expect("tempdir");
        let faulty =
            Arc::new(Faulty::new(Arc::new(FsStorage::new(dir.path())), 0, std::time::Duration::from_millis(50)));
        let storage: DynStorage = faulty.clone();
        let index = Arc::new(FrameIndex::default());
        let packer = Arc::new(Packer::new(storage.clone(), 1, 1 << 20, 2, index.clone()));
        let ctx = BlockContext::new(storage, packer, index, Arc::new(PageVerifier::disabled()), BS, true, 1);
        let raw = vec![7u8; 700];
        let id = ObjectId::of(&raw);
        let (a, b) = tokio::join!(ctx.save_node(id, &raw), ctx.save_node(id, &raw));
        let (a, b) = (a.expect("first"), b.expect("second"));
        assert_eq!(a.0, b.0);
        assert!((a.1 == 0) != (b.1 == 0), "exactly one of them counts the node: {a:?} {b:?}");
        assert_eq!(faulty.calls(), 2, "one existence check and one put");
        let (_, again) = ctx.save_node(id, &raw).await.expect("third");
        assert_eq!(again, 0, "saved before: nothing new");
    }

    #[test]
    fn base_blocks_are_checked_before_use() {
        let raw: Vec<u8> = (0..4 * B).map(|i| (i % 251) as u8).collect();
        let id = ObjectId::of(&raw);
        let (enc, _) = codec::encode_hashed(&raw, codec::Digest::Blake3(id.0), 1).expect("encode");
        let loc = FrameLocation { id, offset: 0, stored_length: enc.len() as u32, raw_length: raw.len() as u32 };
        let key = pack_key(&ObjectId::of(b"pack"));
        let digest = |slot: usize| Some(block_digest(&raw[slot * B..(slot + 1) * B]));

        let good = BaseFrame::decode(key.clone(), &enc, loc).expect("decode");
        assert_eq!(good.block(1, BS, B, digest(1)).expect("checked"), Some(&raw[B..2 * B]));
        assert!(good.is_verified.get().is_none(), "a block whose digest is known is checked alone");
        assert_eq!(good.block(2, BS, 100, None).expect("checked"), Some(&raw[2 * B..2 * B + 100]));
        assert!(good.is_verified.get().is_some(), "a delta's base: the whole frame was checked");
        assert_eq!(good.block(4, BS, B, None).expect("beyond"), None);

        // Content that is not what the frame is named after (as if decoding had gone wrong).
        let mut wrong = raw.clone();
        wrong[2 * B + 5] ^= 1;
        let bad = BaseFrame { key, loc, raw: wrong, is_verified: std::sync::OnceLock::new() };
        let e = bad.block(2, BS, B, digest(2)).expect_err("the changed block");
        assert!(e.to_string().contains("@0"), "names the pack and offset: {e}");
        assert!(bad.block(0, BS, B, None).is_err(), "without a digest the whole frame is checked");
        assert!(bad.block(0, BS, B, digest(0)).is_ok(), "an intact block with a known digest is usable");
    }
}
