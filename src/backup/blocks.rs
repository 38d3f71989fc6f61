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
//! - A base block read back from the repository is verified (frame blake3) before it is used.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

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
    bases: Mutex<LruCache<ObjectId, Arc<Vec<u8>>>>,
    nodes: Mutex<LruCache<ObjectId, Arc<Node>>>,
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
            stats: BlockStats::default(),
        }
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

    /// The raw content of frame `id` of the repository (cached), or `None` if the index does not have it. On a
    /// miss, the frames that follow `id` in `next` (the previous node's frame table, in file order) and lie just
    /// behind it in the same pack are read with it, in one ranged request, and cached ([`BASE_READ_FRAMES`]).
    async fn frame(&self, id: &ObjectId, next: &[ObjectId]) -> Result<Option<Arc<Vec<u8>>>, Error> {
        if let Some(f) = self.bases.lock().ok().and_then(|mut c| c.get(id).cloned()) {
            return Ok(Some(f));
        }
        let Some((pack, loc)) = self.index.get(id).copied() else { return Ok(None) };
        let mut run = vec![loc];
        let mut end = loc.offset + u64::from(loc.stored_length);
        let after = next.iter().position(|f| f == id).map_or(&[][..], |i| &next[i + 1..]);
        for f in after {
            if run.len() >= BASE_READ_FRAMES {
                break;
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
        let decoded: Vec<(ObjectId, Vec<u8>)> = blocking(move || {
            run.iter()
                .map(|l| {
                    let at = (l.offset - start) as usize;
                    let slice = bytes.get(at..at + l.stored_length as usize).unwrap_or_default();
                    Ok((l.id, packstore::decode_frame(&key, slice, l)?))
                })
                .collect()
        })
        .await?;
        let decoded: Vec<(ObjectId, Arc<Vec<u8>>)> = decoded.into_iter().map(|(f, raw)| (f, Arc::new(raw))).collect();
        let wanted = decoded.iter().find(|(f, _)| f == id).map(|(_, raw)| raw.clone());
        if let Ok(mut c) = self.bases.lock() {
            for (f, raw) in decoded {
                c.put(f, raw);
            }
        }
        Ok(wanted)
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
    digests: Vec<u64>,
    sources: Vec<Pending>,
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
            digests: Vec::new(),
            sources: Vec::new(),
            whole: Vec::new(),
            whole_seq: 0,
            delta: Vec::new(),
            delta_seq: 1,
            next_seq: 2,
            in_flight: std::collections::VecDeque::new(),
        }
    }

    fn frame_index(&mut self, id: ObjectId) -> u32 {
        match self.frames.iter().position(|f| *f == id) {
            Some(i) => i as u32,
            None => {
                self.frames.push(id);
                (self.frames.len() - 1) as u32
            }
        }
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
        self.digests.push(digest);
        self.sources.push(Pending::Whole { seq: self.whole_seq, slot });
    }

    fn add_delta(&mut self, digest: u64, base: ObjectId, base_slot: u32, xor: &[u8]) {
        let base_frame = self.frame_index(base);
        let slot = (self.delta.len() / self.block_size as usize) as u32;
        self.delta.extend_from_slice(xor);
        self.delta.resize(self.delta.len().next_multiple_of(self.block_size as usize), 0);
        self.digests.push(digest);
        self.sources.push(Pending::Delta { base_frame, base_slot, seq: self.delta_seq, slot });
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
        for s in &mut self.sources {
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

/// Bytes of block `slot` in a frame's raw content (`len` bytes at most), if the frame holds it.
fn slot_bytes(raw: &[u8], slot: u32, block_size: u32, len: usize) -> Option<&[u8]> {
    let start = slot as usize * block_size as usize;
    raw.get(start..start + len)
}

/// What [`copy_file`] made of a file.
#[derive(Debug)]
pub struct CopiedFile {
    /// Bytes read (the file's size in the backup).
    pub size: u64,
    /// Its nodes.
    pub nodes: Vec<ObjectId>,
    /// Frames the nodes name (for the final presence check).
    pub frames: Vec<ObjectId>,
}

/// Read `file` once and store its blocks; `prev` are the previous backup's nodes of the same path (incremental).
/// `None` if the file vanished before its first read. Each read waits for `pacer` (`--max-rate`); `on_read` is told
/// the bytes it got (progress).
pub async fn copy_file(
    ctx: &BlockContext,
    file: &SourceFile,
    prev: &[ObjectId],
    pacer: &tokio::sync::Mutex<super::copy::Pacer>,
    on_read: &(dyn Fn(u64) + Sync),
) -> Result<Option<CopiedFile>, Error> {
    let bs = u64::from(ctx.block_size);
    let read_len = (FRAME_RAW_MAX as u64 / bs).max(1) * bs;
    let mut offset = 0u64;
    let mut nodes = Vec::new();
    let mut frames = Vec::new();
    let mut is_eof = false;
    let mut node_no = 0u64;
    while !is_eof {
        let first_block = node_no * NODE_BLOCKS;
        let prev_node = match prev.get(node_no as usize) {
            Some(id) if !ctx.is_full => Some(ctx.node(id).await?).filter(|n| n.block_size == ctx.block_size),
            _ => None,
        };
        let mut b = NodeBuilder::new(ctx.block_size, first_block);
        let node_end = (first_block + NODE_BLOCKS) * bs;
        while offset < node_end {
            let len = read_len.min(node_end - offset);
            pacer.lock().await.wait(len).await;
            let (path, rel, pages, at) = (file.abs.clone(), file.rel.clone(), ctx.pages.clone(), offset);
            let data = blocking(move || {
                let data = super::copy::read_range(&path, at, len)?;
                pages.check(&rel, &path, at, data.as_deref()).map(|()| data)
            })
            .await?;
            let Some(data) = data else {
                if offset == 0 {
                    return Ok(None);
                }
                is_eof = true;
                break;
            };
            on_read(data.len() as u64);
            let blocks: Arc<Vec<u8>> = Arc::new(data);
            let shared = blocks.clone();
            let digests: Vec<u64> =
                blocking(move || Ok(shared.chunks(bs as usize).map(block_digest).collect())).await?;
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
                        let xor = match ctx.frame(&base, &p.frames).await? {
                            Some(raw) => slot_bytes(&raw, base_slot, ctx.block_size, block.len()).and_then(|old| {
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
        let (id, stored) = packstore::save_node(ctx.storage.as_ref(), &node, ctx.level).await?;
        ctx.stats.node_bytes_new.fetch_add(stored, std::sync::atomic::Ordering::Relaxed);
        ctx.stats.nodes_written.fetch_add(u64::from(stored > 0), std::sync::atomic::Ordering::Relaxed);
        nodes.push(id);
        node_no += 1;
    }
    Ok(Some(CopiedFile { size: offset, nodes, frames }))
}
