//! Format 2: write a backup's files from packs (docs/design/format2.md, "Reading a backup back").
//!
//! Invariants:
//! - Every byte written comes from a frame whose size and blake3 were verified, and every small-file piece is
//!   checked against its own blake3 (as in format 1).
//! - A delta block is rebuilt in memory: the delta frames of a batch are fetched first and their blocks' non-zero
//!   16-byte pieces kept (up to `DELTA_BUDGET`); each is XORed into its base as the base is written, and every
//!   one kept must have been by the end of the batch. Deltas past the budget are written in two passes: the base
//!   first, then the delta XORed into it on disk. Either way the result must have the digest the block map
//!   records, or the restore fails naming the block.
//! - Frames are fetched by pack and offset, neighbours less than [`MERGE_GAP`] apart merged into one ranged read
//!   of at most [`MAX_READ`] bytes. A read's frames are shared out to the `parallel` writers in units of at most
//!   [`MAX_READ_RAW`] decoded bytes, while more reads download, up to [`read_ahead`] bytes held in all (plus
//!   `DECODE_AHEAD` decoded frames per writer, and at most `DELTA_BUDGET` of deltas).
//! - Two writers never write into one file at once (`FileLocks`).
//! - Block-mapped files are planned and written a batch of at most
//!   [`NODES_PER_BATCH`] nodes at a time: memory does not grow with the cluster.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::batches::{NODES_PER_BATCH, plan_batches};
use super::write::{
    FileLocks, Layout, WriteOp, WriteStats, apply_ranges, created, open_for_write, plan, start_writeback,
};
use crate::Error;
use crate::archive::blocking;
use crate::progress::{NoProgress, Progress};
use crate::repository::backup::{FileEntry, Manifest, ObjectId};
use crate::repository::blockmap::{Node, Source, block_digest};
use crate::repository::packs::{FrameLocation, pack_key};
use crate::repository::packstore::{self, FrameIndex};
use crate::repository::path::Escaped;
use crate::repository::store::Error as StoreError;
use crate::storage::DynStorage;

/// Frames closer than this (bytes) in one pack are read with one request.
pub const MERGE_GAP: u64 = 1 << 20;

/// Most bytes one ranged read asks for.
pub const MAX_READ: u64 = 16 << 20;

/// Most stored bytes of ranged reads held at once, downloading or being decoded and written, with
/// `parallel` writers: a read of [`MAX_READ`] per writer and two more downloading, so that writers of data that
/// hardly compresses (one unit per read) do not wait for requests. 64 MiB for 2 writers, 96 MiB for 4.
pub fn read_ahead(parallel: usize) -> u64 {
    (parallel.max(1) as u64 + 2) * MAX_READ
}

/// Granularity (bytes) in which [`read_ahead`] is counted.
const READ_AHEAD_UNIT: u64 = 64 << 10;

/// Most raw (decoded) bytes one writer takes from a read at a time: a read of data that compresses 20x holds 300
/// MiB of decoding and writing, which would otherwise fall to one writer and leave the others idle.
pub const MAX_READ_RAW: u64 = 32 << 20;

/// Node objects loaded at a time.
const NODE_CONCURRENCY: usize = 16;

/// One write from a frame's raw content.
#[derive(Debug, Clone)]
enum Op {
    /// A small file's piece (checked against its blake3 unless it is the whole frame).
    Piece(WriteOp),
    /// Consecutive whole blocks: `length` bytes from `frame_offset` to `file_offset`.
    Blocks { path: Arc<PathBuf>, file_offset: u64, frame_offset: u64, length: u64 },
    /// One delta block: XOR `length` bytes from `frame_offset` into the file at `file_offset`, then check `digest`.
    Xor { path: Arc<PathBuf>, rel: Arc<str>, file_offset: u64, frame_offset: u64, length: u64, block: u64, digest: u64 },
}

impl Op {
    fn length(&self) -> u64 {
        match self {
            Op::Piece(w) => w.length,
            Op::Blocks { length, .. } | Op::Xor { length, .. } => *length,
        }
    }
}

type Needs = BTreeMap<ObjectId, Vec<Op>>;

/// Create directories and files, then write `files` of a format-2 `manifest` (`delta`: only what differs), finding
/// frames in `index` (the repository's pack indexes, loaded once per restore).
#[allow(clippy::too_many_arguments)]
pub async fn write_files(
    storage: DynStorage,
    manifest: &Manifest,
    files: &[&FileEntry],
    layout: &Layout,
    delta: bool,
    parallel: usize,
    index: Arc<FrameIndex>,
    progress: &dyn Progress,
) -> Result<WriteStats, Error> {
    let clock = std::time::Instant::now();
    let (piece_ops, mut stats, new_files) = plan(manifest, files, layout, delta).await?;
    let creating = new_files.spawn();
    tracing::debug!(seconds = clock.elapsed().as_secs_f64(), "files created");
    let pieces: Needs = piece_ops.into_iter().map(|(id, ops)| (id, ops.into_iter().map(Op::Piece).collect())).collect();

    let block_size = u64::from(manifest.block_size.unwrap_or(8192));
    let mapped: Vec<&FileEntry> = files.iter().copied().filter(|f| !f.nodes.is_empty()).collect();
    // The bar's total: small files' pieces plus every block-mapped byte; with `delta`, what is found identical is
    // counted as done when its batch is planned. Deltas' second pass is not counted (its blocks already were).
    let pieces_total: u64 = pieces.values().flatten().map(Op::length).sum();
    progress.start(pieces_total + mapped.iter().map(|f| f.size).sum::<u64>(), stats.files_written);
    let mut total = pieces_total;
    stats.objects = pieces.len() as u64;
    // Without --delta every file is new: an all-zero block need not be written.
    let mode = Mode { holes: !delta, block_size };

    // Block-mapped files, a bounded number of nodes at a time (memory does not grow with the cluster).
    let targets: Vec<(Arc<PathBuf>, Arc<str>)> = mapped
        .iter()
        .map(|f| {
            let (root, rel) = layout.resolve(&f.path);
            (Arc::new(root.join(rel)), Arc::<str>::from(Escaped(f.path.as_path()).to_string()))
        })
        .collect();
    let counts: Vec<usize> = mapped.iter().map(|f| f.nodes.len()).collect();
    let mut changed = vec![false; mapped.len()];
    for batch in plan_batches(&counts, NODES_PER_BATCH) {
        let node_ids: Vec<ObjectId> = {
            let mut ids: Vec<ObjectId> =
                batch.iter().flat_map(|p| mapped[p.file].nodes[p.nodes.clone()].iter().copied()).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let nodes: HashMap<ObjectId, Arc<Node>> = stream::iter(node_ids.into_iter().map(|id| {
            let storage = storage.clone();
            async move { Ok::<_, Error>((id, Arc::new(packstore::load_node(storage.as_ref(), &id).await?))) }
        }))
        .buffer_unordered(NODE_CONCURRENCY)
        .try_collect()
        .await?;
        let (mut first, mut second): (Needs, Needs) = (BTreeMap::new(), BTreeMap::new());
        let mut covered = 0u64;
        for part in &batch {
            let f = mapped[part.file];
            let f_nodes: Vec<Arc<Node>> =
                f.nodes[part.nodes.clone()].iter().filter_map(|id| nodes.get(id).cloned()).collect();
            covered += f_nodes
                .iter()
                .map(|n| {
                    let start = n.first_block * block_size;
                    f.size.min(start + n.digests.len() as u64 * block_size).saturating_sub(start)
                })
                .sum::<u64>();
            let (p, size, name) = (targets[part.file].0.clone(), f.size, targets[part.file].1.clone());
            let (a, b, is_changed) =
                blocking(move || plan_blocks(&p, &name, size, block_size, &f_nodes, delta)).await?;
            for (id, ops) in a {
                first.entry(id).or_default().extend(ops);
            }
            for (id, ops) in b {
                second.entry(id).or_default().extend(ops);
            }
            changed[part.file] |= is_changed;
        }
        drop(nodes);
        let planned: u64 = first.values().flatten().map(Op::length).sum();
        progress.advance(covered.saturating_sub(planned));
        stats.objects += (first.len() + second.len()) as u64;
        // Deltas first, kept in memory, so that each is XORed into its base as the base is written; what does not
        // fit in DELTA_BUDGET is applied as before, in a second pass over the written blocks (and written twice).
        let (deltas, second) = collect_deltas(&storage, &index, second, parallel).await?;
        total += planned + second.values().flatten().map(Op::length).sum::<u64>();
        fetch_and_apply(&storage, &index, first, parallel, Sink::Write { mode, deltas: deltas.clone() }, progress)
            .await?;
        if let Some(d) = &deltas {
            d.check_applied()?;
        }
        fetch_and_apply(&storage, &index, second, parallel, Sink::Write { mode, deltas: None }, &NoProgress).await?;
    }
    if delta {
        let unchanged = changed.iter().filter(|c| !**c).count() as u64;
        stats.files_written = stats.files_written.saturating_sub(unchanged);
        stats.files_unchanged += unchanged;
    }
    tracing::debug!(seconds = clock.elapsed().as_secs_f64(), "block-mapped files written");
    // Small files last: without --delta they are being created (largest first) while the large ones are written.
    fetch_and_apply(&storage, &index, pieces, parallel, Sink::Write { mode, deltas: None }, progress).await?;
    created(creating).await?;
    tracing::debug!(seconds = clock.elapsed().as_secs_f64(), "small files written");
    stats.bytes_written = total;
    Ok(stats)
}

/// The block writes of one file: whole blocks and delta bases (first pass) and deltas (second pass), per frame;
/// with `delta`, blocks whose destination copy already has the recorded digest are left out. Returns also
/// whether anything is to be written.
fn plan_blocks(
    path: &Arc<PathBuf>,
    rel: &Arc<str>,
    size: u64,
    block_size: u64,
    nodes: &[Arc<Node>],
    delta: bool,
) -> Result<(Needs, Needs, bool), Error> {
    let (mut first, mut second): (Needs, Needs) = (BTreeMap::new(), BTreeMap::new());
    let existing = if delta {
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path.as_path()).ok()
    } else {
        None
    };
    let mut buf = vec![0u8; block_size as usize];
    let mut changed = false;
    for node in nodes {
        for (i, (source, digest)) in node.sources.iter().zip(&node.digests).enumerate() {
            let block = node.first_block + i as u64;
            let file_offset = block * block_size;
            let length = block_size.min(size.saturating_sub(file_offset));
            if length == 0 {
                continue;
            }
            if let Some(f) = &existing
                && f.read_exact_at(&mut buf[..length as usize], file_offset).is_ok()
                && block_digest(&buf[..length as usize]) == *digest
            {
                continue;
            }
            changed = true;
            match *source {
                Source::Whole { frame, slot } => {
                    push_block(
                        &mut first,
                        node.frames[frame as usize],
                        path,
                        file_offset,
                        u64::from(slot) * block_size,
                        length,
                    );
                }
                Source::Delta { base_frame, base_slot, delta_frame, delta_slot } => {
                    push_block(
                        &mut first,
                        node.frames[base_frame as usize],
                        path,
                        file_offset,
                        u64::from(base_slot) * block_size,
                        length,
                    );
                    second.entry(node.frames[delta_frame as usize]).or_default().push(Op::Xor {
                        path: path.clone(),
                        rel: rel.clone(),
                        file_offset,
                        frame_offset: u64::from(delta_slot) * block_size,
                        length,
                        block,
                        digest: *digest,
                    });
                }
            }
        }
    }
    Ok((first, second, changed))
}

/// Add a whole block, extending the previous write when it continues it in both the frame and the file.
fn push_block(
    needs: &mut Needs,
    frame: ObjectId,
    path: &Arc<PathBuf>,
    file_offset: u64,
    frame_offset: u64,
    length: u64,
) {
    let ops = needs.entry(frame).or_default();
    if let Some(Op::Blocks { path: p, file_offset: fo, frame_offset: ro, length: l }) = ops.last_mut()
        && Arc::ptr_eq(p, path)
        && *fo + *l == file_offset
        && *ro + *l == frame_offset
    {
        *l += length;
        return;
    }
    ops.push(Op::Blocks { path: path.clone(), file_offset, frame_offset, length });
}

/// One ranged read of a pack and the frames in it.
struct Read {
    pack: ObjectId,
    start: u64,
    end: u64,
    frames: Vec<(FrameLocation, Vec<Op>)>,
}

/// How whole blocks are written.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// The files were created empty at their size (no `--delta`): all-zero blocks are left as holes, which read
    /// back as zeros (a sparse relation, or a table's unused tail, costs neither writes nor disk).
    holes: bool,
    /// Bytes per block.
    block_size: u64,
}

/// What [`fetch_and_apply`] does with each verified frame.
#[derive(Clone)]
enum Sink {
    /// Apply its writes; XOR the `deltas` kept in memory into the blocks written.
    Write { mode: Mode, deltas: Option<Arc<Deltas>> },
    /// Keep the non-zero bytes of its delta blocks (only [`Op::Xor`]s) in memory, up to [`DELTA_BUDGET`] bytes;
    /// the ops of a frame that does not fit go back to `left` (for the second pass).
    Collect { deltas: Arc<std::sync::Mutex<Deltas>>, left: Arc<std::sync::Mutex<Needs>> },
}

/// Most bytes of delta blocks (their non-zero runs) kept in memory per batch of nodes. A delta is stored only
/// when fewer than a quarter of its bytes are non-zero, and a changed page typically differs in a few dozen
/// bytes: 27,000 deltas of the bench's incrementals take about 4 MiB.
const DELTA_BUDGET: usize = 64 << 20;

/// Delta blocks kept in memory: per destination file, by offset in it.
#[derive(Default)]
struct Deltas {
    files: HashMap<Arc<PathBuf>, BTreeMap<u64, SparseDelta>>,
    /// Bytes held (runs and their offsets).
    bytes: usize,
    /// Deltas XORed into their blocks so far: after the first pass, every one kept must have been.
    applied: std::sync::atomic::AtomicUsize,
}

impl Deltas {
    /// Check that every delta kept was applied. Errors: [`Error::Task`] when some were not (their base blocks were
    /// never written: the plan and the deltas disagree, and the files would be left with the bases).
    fn check_applied(&self) -> Result<(), Error> {
        let kept: usize = self.files.values().map(BTreeMap::len).sum();
        let applied = self.applied.load(std::sync::atomic::Ordering::Relaxed);
        if applied == kept {
            return Ok(());
        }
        Err(Error::Task(format!(
            "{kept} delta blocks were kept in memory but {applied} applied: the restore does not match its plan"
        )))
    }
}

/// One delta block kept in memory: the 16-byte pieces of its XOR that are not zero, and what its result must hash
/// to.
struct SparseDelta {
    rel: Arc<str>,
    block: u64,
    length: u64,
    digest: u64,
    /// Runs of non-zero 16-byte pieces, one after another: offset in the block (u32 LE), length (u32 LE), bytes.
    runs: Box<[u8]>,
    /// The frame it came from, for a mismatch's message.
    frame: Arc<str>,
}

impl SparseDelta {
    /// Granularity (bytes) at which zeros are left out.
    const PIECE: usize = 16;

    /// The non-zero runs of `delta`, encoded as [`SparseDelta::runs`] says. Scans 16 bytes at a time (one
    /// comparison each), so that a page's XOR costs a fraction of hashing it.
    fn encode(delta: &[u8]) -> Box<[u8]> {
        let mut out = Vec::new();
        let mut run: Option<usize> = None;
        let push = |out: &mut Vec<u8>, from: usize, to: usize| {
            out.extend_from_slice(&(from as u32).to_le_bytes());
            out.extend_from_slice(&((to - from) as u32).to_le_bytes());
            out.extend_from_slice(&delta[from..to]);
        };
        for (i, piece) in delta.chunks(Self::PIECE).enumerate() {
            let is_zero = piece.iter().fold(0u8, |a, b| a | b) == 0;
            match (is_zero, run) {
                (false, None) => run = Some(i * Self::PIECE),
                (true, Some(from)) => {
                    push(&mut out, from, i * Self::PIECE);
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(from) = run {
            push(&mut out, from, delta.len());
        }
        out.into_boxed_slice()
    }

    /// Bytes this delta holds in memory, roughly (its runs, and its map entry).
    fn size(&self) -> usize {
        self.runs.len() + 96
    }

    /// XOR this delta into `base` (the block's bytes) and check the result's digest. Errors:
    /// [`Error::BlockMismatch`].
    fn apply(&self, base: &mut [u8]) -> Result<(), Error> {
        let mut rest = &self.runs[..];
        while let [a0, a1, a2, a3, l0, l1, l2, l3, tail @ ..] = rest {
            let at = u32::from_le_bytes([*a0, *a1, *a2, *a3]) as usize;
            let len = (u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize).min(tail.len());
            for (b, d) in base.iter_mut().skip(at).zip(&tail[..len]) {
                *b ^= d;
            }
            rest = &tail[len..];
        }
        if block_digest(base) != self.digest {
            return Err(self.mismatch());
        }
        Ok(())
    }

    fn mismatch(&self) -> Error {
        Error::BlockMismatch { path: self.rel.to_string(), block: self.block, frames: self.frame.to_string() }
    }
}

/// Fetch and decode the delta frames of `second` and keep their blocks' non-zero bytes in memory, up to
/// [`DELTA_BUDGET`]: the deltas kept (`None` if none), and the ops left for a second pass.
async fn collect_deltas(
    storage: &DynStorage,
    index: &Arc<FrameIndex>,
    second: Needs,
    parallel: usize,
) -> Result<(Option<Arc<Deltas>>, Needs), Error> {
    if second.is_empty() {
        return Ok((None, second));
    }
    let deltas = Arc::new(std::sync::Mutex::new(Deltas::default()));
    let left = Arc::new(std::sync::Mutex::new(Needs::new()));
    let sink = Sink::Collect { deltas: deltas.clone(), left: left.clone() };
    fetch_and_apply(storage, index, second, parallel, sink, &NoProgress).await?;
    let (deltas, left): (Deltas, Needs) = (unshare(deltas)?, unshare(left)?);
    tracing::debug!(
        blocks = deltas.files.values().map(BTreeMap::len).sum::<usize>(),
        bytes = deltas.bytes,
        left = left.values().map(Vec::len).sum::<usize>(),
        "deltas kept in memory"
    );
    Ok(((!deltas.files.is_empty()).then(|| Arc::new(deltas)), left))
}

/// The value of a mutex no one else holds any more (the tasks that filled it have ended).
fn unshare<T>(m: Arc<std::sync::Mutex<T>>) -> Result<T, Error> {
    let m = Arc::try_unwrap(m).map_err(|_| Error::Task("a collection is still shared".into()))?;
    m.into_inner().map_err(|e| Error::Task(e.to_string()))
}

/// Keep the delta blocks of one decoded frame (`raw`, ops `ops` of frame `id`) in `deltas`, or put the ops back in
/// `left` when they would take `deltas` past `budget` bytes ([`DELTA_BUDGET`]).
fn keep_deltas(
    what: &str,
    id: ObjectId,
    raw: &[u8],
    ops: &[Op],
    deltas: &std::sync::Mutex<Deltas>,
    left: &std::sync::Mutex<Needs>,
    budget: usize,
) -> Result<(), Error> {
    let mut kept = Vec::with_capacity(ops.len());
    let frame: Arc<str> = Arc::from(what);
    for op in ops {
        let Op::Xor { path, rel, file_offset, frame_offset, length, block, digest } = op else {
            return Err(Error::Task(format!("{what}: only delta blocks are collected")));
        };
        let end = frame_offset + length;
        let Some(delta) = raw.get(*frame_offset as usize..end as usize) else {
            return Err(Error::Corrupt {
                what: format!("{what} (part of {rel})"),
                source: crate::codec::Error::SizeMismatch { expected: end, actual: raw.len() as u64 },
            });
        };
        let sparse = SparseDelta {
            rel: rel.clone(),
            block: *block,
            length: *length,
            digest: *digest,
            runs: SparseDelta::encode(delta),
            frame: frame.clone(),
        };
        kept.push((path.clone(), *file_offset, sparse));
    }
    let size: usize = kept.iter().map(|(_, _, d)| d.size()).sum();
    let mut d = deltas.lock().map_err(|e| Error::Task(e.to_string()))?;
    if d.bytes + size > budget {
        drop(d);
        left.lock().map_err(|e| Error::Task(e.to_string()))?.entry(id).or_default().extend(ops.iter().cloned());
        return Ok(());
    }
    d.bytes += size;
    for (path, offset, sparse) in kept {
        if let Some(twice) = d.files.entry(path).or_default().insert(offset, sparse) {
            // One block with two deltas: the block map is malformed; applying either would be a guess.
            return Err(twice.mismatch());
        }
    }
    Ok(())
}

/// Fetch every frame of `needs` in merged ranged reads, `parallel` writers at a time, and hand each to `sink`.
async fn fetch_and_apply(
    storage: &DynStorage,
    index: &Arc<FrameIndex>,
    needs: Needs,
    parallel: usize,
    sink: Sink,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let mut by_pack: BTreeMap<ObjectId, Vec<(FrameLocation, Vec<Op>)>> = BTreeMap::new();
    for (id, ops) in needs {
        let Some((pack, loc)) = index.get(&id).copied() else {
            return Err(Error::MissingFrame {
                frame: id.to_string(),
                needed_by: ops.first().map_or_else(|| "?".into(), op_path),
                backend: storage.to_string(),
            });
        };
        by_pack.entry(pack).or_default().push((loc, ops));
    }
    let mut reads: Vec<Read> = Vec::new();
    for (pack, mut frames) in by_pack {
        frames.sort_by_key(|(loc, _)| loc.offset);
        for (loc, ops) in frames {
            let end = loc.offset + u64::from(loc.stored_length);
            match reads.last_mut() {
                Some(r)
                    if r.pack == pack && loc.offset.saturating_sub(r.end) < MERGE_GAP && end - r.start <= MAX_READ =>
                {
                    r.end = r.end.max(end);
                    r.frames.push((loc, ops));
                }
                _ => reads.push(Read { pack, start: loc.offset, end, frames: vec![(loc, ops)] }),
            }
        }
    }
    // Reads run ahead of the writers: while `parallel` writers decode and write, more reads download, so a writer
    // never waits for a request; a read holds its share of read_ahead until its last frame is written. A read's
    // frames are shared out to the writers in units of at most MAX_READ_RAW decoded bytes: one request can keep
    // every writer busy.
    let writers = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let budget = read_ahead(parallel) / READ_AHEAD_UNIT;
    let held = Arc::new(tokio::sync::Semaphore::new(budget as usize));
    let locks = Arc::new(FileLocks::default());
    let mut done = stream::iter(reads.into_iter().map(|r| {
        let (storage, writers, locks, sink, held) =
            (storage.clone(), writers.clone(), locks.clone(), sink.clone(), held.clone());
        async move {
            let key = pack_key(&r.pack);
            let len = r.end - r.start;
            let share = u32::try_from(len.div_ceil(READ_AHEAD_UNIT).min(budget)).unwrap_or(u32::MAX);
            let _held = held.acquire_many_owned(share).await.map_err(|e| Error::Task(e.to_string()))?;
            let bytes = storage.get_range(&key, r.start, len).await?;
            let units = stream::iter(units(r.frames, MAX_READ_RAW).into_iter().map(|frames| {
                let (writers, locks, sink, bytes, key) =
                    (writers.clone(), locks.clone(), sink.clone(), bytes.clone(), key.clone());
                async move {
                    let writer = writers.acquire_owned().await.map_err(|e| Error::Task(e.to_string()))?;
                    blocking(move || {
                        let _writer = writer;
                        write_unit(&key, &bytes, r.start, &frames, &sink, &locks)
                    })
                    .await
                }
            }))
            .buffer_unordered(parallel.max(1));
            // Progress moves per unit written, not per read (a read may hold 300 MiB of decoded data).
            units
                .try_for_each(|written| {
                    progress.advance(written);
                    std::future::ready(Ok(()))
                })
                .await
        }
    }))
    .buffer_unordered(2 * parallel.max(1));
    while let Some(read) = done.next().await {
        read?;
    }
    Ok(())
}

/// `frames` (in pack order) cut into runs of at most `raw_max` decoded bytes each (a larger frame alone).
fn units(frames: Vec<(FrameLocation, Vec<Op>)>, raw_max: u64) -> Vec<Vec<(FrameLocation, Vec<Op>)>> {
    let mut out: Vec<Vec<(FrameLocation, Vec<Op>)>> = Vec::new();
    let mut raw = 0u64;
    for frame in frames {
        let size = u64::from(frame.0.raw_length);
        match out.last_mut() {
            Some(unit) if raw + size <= raw_max => {
                raw += size;
                unit.push(frame);
            }
            _ => {
                raw = size;
                out.push(vec![frame]);
            }
        }
    }
    out
}

/// Decode, verify and hand to `sink` the `frames` of one unit of a ranged read (`bytes`, read from `start` of pack
/// `key`), in order; returns the bytes written. A frame whose file another writer holds waits, decoded, while the
/// next ones are decoded (up to [`DECODE_AHEAD`]).
fn write_unit(
    key: &crate::storage::Key,
    bytes: &[u8],
    start: u64,
    frames: &[(FrameLocation, Vec<Op>)],
    sink: &Sink,
    locks: &FileLocks,
) -> Result<u64, Error> {
    let mut written = 0;
    // Decoded frames not yet written, oldest first.
    let mut decoded: std::collections::VecDeque<(&FrameLocation, &[Op], Vec<u8>)> = Default::default();
    let mut frames = frames.iter();
    loop {
        let next = frames.next();
        if let Some((loc, ops)) = next {
            let at = (loc.offset - start) as usize;
            let slice = bytes.get(at..at + loc.stored_length as usize).unwrap_or_default();
            let raw = packstore::decode_frame(key, slice, loc).map_err(|e| match e {
                // Name a file the damaged frame belongs to, as format 1 does for a damaged object.
                StoreError::Corrupt { key, source } => Error::Corrupt {
                    what: format!("{key} (part of {})", ops.first().map_or_else(|| "?".into(), op_path)),
                    source,
                },
                e => e.into(),
            })?;
            decoded.push_back((loc, ops.as_slice(), raw));
        }
        let is_last = next.is_none();
        // Write what can be written now; wait for a file only at the end or with the queue full.
        while let Some((loc, ops, raw)) = decoded.front() {
            let what = format!("frame {} of {key}", loc.id);
            let deltas = match sink {
                Sink::Collect { deltas, left } => {
                    keep_deltas(&what, loc.id, raw, ops, deltas, left, DELTA_BUDGET)?;
                    decoded.pop_front();
                    continue;
                }
                Sink::Write { mode, deltas } => (*mode, deltas.as_deref()),
            };
            let _file = match block_target(ops) {
                None => None,
                Some(path) if is_last || decoded.len() >= DECODE_AHEAD => Some(locks.take(path)),
                Some(path) => match locks.try_take(path) {
                    Some(g) => Some(g),
                    None => break,
                },
            };
            written += apply(&what, raw, ops, deltas.0, deltas.1)?;
            decoded.pop_front();
        }
        if is_last {
            return Ok(written);
        }
    }
}

/// Decoded frames (of at most [`FRAME_RAW_MAX`](crate::repository::packs::FRAME_RAW_MAX) bytes each) a writer
/// keeps while the file they go to is being written by another writer.
const DECODE_AHEAD: usize = 4;

/// The file the first block write of `ops` goes to: the one a writer of this frame keeps to itself ([`FileLocks`]);
/// `None` for small files' pieces, which go to many small files.
fn block_target(ops: &[Op]) -> Option<&Arc<PathBuf>> {
    ops.iter().find_map(|o| match o {
        Op::Blocks { path, .. } | Op::Xor { path, .. } => Some(path),
        Op::Piece(_) => None,
    })
}

/// The destination file `path`, opened for reading and writing once per frame (without following a link).
fn open_in<'a>(
    opened: &'a mut HashMap<*const PathBuf, std::fs::File>,
    path: &Arc<PathBuf>,
) -> Result<&'a std::fs::File, Error> {
    Ok(match opened.entry(Arc::as_ptr(path)) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(
            open_for_write(path.as_path(), 0o600)
                .map_err(|source| Error::WriteDestination { path: path.to_path_buf(), source })?,
        ),
    })
}

fn op_path(op: &Op) -> String {
    match op {
        Op::Piece(w) => Escaped(w.path.as_path()).to_string(),
        Op::Blocks { path, .. } => Escaped(path.as_path()).to_string(),
        Op::Xor { rel, .. } => rel.to_string(),
    }
}

/// Apply one verified frame's writes, with the `deltas` kept in memory XORed into the blocks they change; returns
/// the bytes they cover (holes included).
fn apply(what: &str, raw: &[u8], ops: &[Op], mode: Mode, deltas: Option<&Deltas>) -> Result<u64, Error> {
    let pieces: Vec<WriteOp> =
        ops.iter().filter_map(|o| if let Op::Piece(w) = o { Some(w.clone()) } else { None }).collect();
    let mut written = apply_ranges(what, raw, &pieces)?;
    let short = |path: &PathBuf, end: u64| Error::Corrupt {
        what: format!("{what} (part of {})", Escaped(path.as_path())),
        source: crate::codec::Error::SizeMismatch { expected: end, actual: raw.len() as u64 },
    };
    let werr = |path: &PathBuf, e| Error::WriteDestination { path: path.clone(), source: e };
    // One open per file of this frame, not per write (an incremental's deltas are many single blocks).
    let mut opened: HashMap<*const PathBuf, std::fs::File> = HashMap::new();
    for op in ops {
        match op {
            Op::Piece(_) => {}
            Op::Blocks { path, file_offset, frame_offset, length } => {
                let end = frame_offset + length;
                let slice = raw.get(*frame_offset as usize..end as usize).ok_or_else(|| short(path, end))?;
                let patched = patch(slice, path, *file_offset, deltas)?;
                let slice = patched.as_deref().unwrap_or(slice);
                let file = open_in(&mut opened, path)?;
                for (at, run) in runs(slice, mode) {
                    file.write_all_at(run, file_offset + at).map_err(|e| werr(path, e))?;
                    start_writeback(file, file_offset + at, run.len() as u64);
                }
                written += length;
            }
            Op::Xor { path, rel, file_offset, frame_offset, length, block, digest } => {
                let end = frame_offset + length;
                let delta = raw.get(*frame_offset as usize..end as usize).ok_or_else(|| short(path, end))?;
                let file = open_in(&mut opened, path)?;
                let mut base = vec![0u8; *length as usize];
                file.read_exact_at(&mut base, *file_offset).map_err(|e| werr(path, e))?;
                for (b, d) in base.iter_mut().zip(delta) {
                    *b ^= d;
                }
                if block_digest(&base) != *digest {
                    return Err(Error::BlockMismatch { path: rel.to_string(), block: *block, frames: what.to_owned() });
                }
                file.write_all_at(&base, *file_offset).map_err(|e| werr(path, e))?;
                written += length;
            }
        }
    }
    Ok(written)
}

/// `slice` (the whole blocks to write at `file_offset` of `path`) with the `deltas` that fall in it applied (and
/// counted), or `None` if none does. Errors: [`Error::BlockMismatch`] when a result does not have its recorded digest.
fn patch(slice: &[u8], path: &PathBuf, file_offset: u64, deltas: Option<&Deltas>) -> Result<Option<Vec<u8>>, Error> {
    let Some((deltas, file)) = deltas.and_then(|d| Some((d, d.files.get(path)?))) else { return Ok(None) };
    let mut hits = file.range(file_offset..file_offset + slice.len() as u64).peekable();
    if hits.peek().is_none() {
        return Ok(None);
    }
    let mut out = slice.to_vec();
    for (offset, delta) in hits {
        let at = (offset - file_offset) as usize;
        let block = out.get_mut(at..at + delta.length as usize).ok_or_else(|| delta.mismatch())?;
        delta.apply(block)?;
        deltas.applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(Some(out))
}

/// The parts of `slice` to write, with their offsets in it: all of it, or with [`Mode::holes`] its runs of blocks
/// that are not all zero.
fn runs(slice: &[u8], mode: Mode) -> Vec<(u64, &[u8])> {
    if !mode.holes {
        return vec![(0, slice)];
    }
    let mut out: Vec<(u64, &[u8])> = Vec::new();
    let mut start: Option<usize> = None;
    let block = (mode.block_size as usize).max(1);
    for (i, chunk) in slice.chunks(block).enumerate() {
        let at = i * block;
        match (is_zero(chunk), start) {
            (false, None) => start = Some(at),
            (true, Some(s)) => {
                out.push((s as u64, &slice[s..at]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s as u64, &slice[s..]));
    }
    out
}

/// Whether every byte of `bytes` is zero (64 bytes at a time, which the compiler vectorises).
fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |a, b| a | b) == 0) && chunks.remainder().iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_keeps_the_file_of_its_first_block_write() {
        let (a, b) = (Arc::new(PathBuf::from("/r/a")), Arc::new(PathBuf::from("/r/b")));
        let piece = Op::Piece(WriteOp {
            path: Arc::new(PathBuf::from("/r/small")),
            file_offset: 0,
            object_offset: 0,
            length: 1,
            blake3: ObjectId::of(b"x"),
        });
        let blocks =
            |path: &Arc<PathBuf>| Op::Blocks { path: path.clone(), file_offset: 0, frame_offset: 0, length: 1 };
        assert!(block_target(std::slice::from_ref(&piece)).is_none());
        let ops = [piece, blocks(&a), blocks(&b)];
        assert!(block_target(&ops).is_some_and(|p| Arc::ptr_eq(p, &a)));
    }

    fn xor_op(path: &Arc<PathBuf>, file_offset: u64, frame_offset: u64, digest: u64) -> Op {
        Op::Xor {
            path: path.clone(),
            rel: Arc::from("base/5/16384"),
            file_offset,
            frame_offset,
            length: 8192,
            block: file_offset / 8192,
            digest,
        }
    }

    #[test]
    fn a_delta_kept_in_memory_rebuilds_its_block_or_names_it() {
        let base: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut changed = base.clone();
        changed[0..8].copy_from_slice(&[9; 8]); // pd_lsn
        changed[40] ^= 1; // one bit, alone in its 16 bytes
        changed[4000..4030].fill(0x55); // a tuple
        changed[8191] ^= 0xFF; // the last byte
        let xor: Vec<u8> = base.iter().zip(&changed).map(|(a, b)| a ^ b).collect();
        let runs = SparseDelta::encode(&xor);
        assert!(runs.len() < 200, "only the non-zero pieces are kept: {} bytes", runs.len());
        let delta = SparseDelta {
            rel: Arc::from("base/5/16384"),
            block: 3,
            length: 8192,
            digest: block_digest(&changed),
            runs,
            frame: Arc::from("frame x"),
        };
        let mut block = base.clone();
        delta.apply(&mut block).expect("the result has the recorded digest");
        assert_eq!(block, changed);
        let mut wrong = base.clone();
        wrong[100] ^= 1;
        let err = delta.apply(&mut wrong).expect_err("a wrong base is caught");
        assert!(err.to_string().contains("block 3 of base/5/16384"), "{err}");
        assert!(SparseDelta::encode(&[0u8; 8192]).is_empty());
    }

    #[test]
    fn deltas_are_patched_into_the_blocks_they_fall_in_and_the_rest_wait_for_the_second_pass() {
        let path = Arc::new(PathBuf::from("/r/base/5/16384"));
        let (b0, b1): (Vec<u8>, Vec<u8>) = (vec![1; 8192], vec![2; 8192]);
        let (mut n0, mut n1) = (b0.clone(), b1.clone());
        n0[10] = 7;
        n1[8000] = 9;
        let mut frame = Vec::new();
        for (a, b) in [(&b0, &n0), (&b1, &n1)] {
            frame.extend(a.iter().zip(b.iter()).map(|(x, y)| x ^ y));
        }
        let ops = [xor_op(&path, 8192, 0, block_digest(&n0)), xor_op(&path, 3 * 8192, 8192, block_digest(&n1))];
        let (deltas, left) = (std::sync::Mutex::new(Deltas::default()), std::sync::Mutex::new(Needs::new()));
        let id = ObjectId::of(&frame);
        keep_deltas("frame d", id, &frame, &ops, &deltas, &left, 1 << 20).expect("kept");
        let twice = keep_deltas("frame d", id, &frame, &ops, &deltas, &left, 1 << 20).expect_err("a block's 2nd delta");
        assert!(twice.to_string().contains("block 1 of base/5/16384"), "{twice}");
        let kept = deltas.into_inner().expect("lock");
        assert_eq!(kept.files[&path].len(), 2);
        // Blocks 0-3 written in one run: blocks 1 and 3 come out changed, 0 and 2 as they were.
        let run: Vec<u8> = [vec![0; 8192], b0.clone(), vec![5; 8192], b1.clone()].concat();
        assert!(kept.check_applied().is_err(), "none applied yet");
        let patched = patch(&run, &path, 0, Some(&kept)).expect("patched").expect("two deltas fall in it");
        assert_eq!(patched, [vec![0; 8192], n0, vec![5; 8192], n1].concat());
        kept.check_applied().expect("both applied");
        assert!(patch(&run[..8192], &path, 0, Some(&kept)).expect("no delta").is_none());
        assert!(patch(&run, &PathBuf::from("/r/other"), 0, Some(&kept)).expect("other file").is_none());
        assert!(patch(&run, &path, 0, None).expect("no deltas").is_none());
        // Past the budget, a frame's deltas go back to the second pass whole.
        let (none, left2) = (std::sync::Mutex::new(Deltas::default()), std::sync::Mutex::new(Needs::new()));
        keep_deltas("frame d", id, &frame, &ops, &none, &left2, 10).expect("left");
        assert!(none.into_inner().expect("lock").files.is_empty());
        assert_eq!(left2.into_inner().expect("lock")[&id].len(), 2);
        assert!(left.into_inner().expect("lock").is_empty());
    }

    #[test]
    fn a_read_is_shared_out_in_units_of_bounded_raw_size_in_pack_order() {
        let frame = |i: u8, raw: u32| {
            let loc = FrameLocation {
                id: ObjectId::of(&[i]),
                offset: u64::from(i) * 100,
                stored_length: 100,
                raw_length: raw,
            };
            (loc, Vec::new())
        };
        let frames = vec![frame(0, 10), frame(1, 20), frame(2, 5), frame(3, 40), frame(4, 30), frame(5, 30)];
        let got: Vec<Vec<u64>> =
            units(frames, 35).iter().map(|u| u.iter().map(|(loc, _)| loc.offset / 100).collect()).collect();
        // 10 + 20 + 5 fit; 40 is over the bound and goes alone; 30 + 30 would not fit.
        assert_eq!(got, vec![vec![0, 1, 2], vec![3], vec![4], vec![5]]);
        assert!(units(Vec::new(), 35).is_empty());
    }

    #[test]
    fn runs_leave_out_only_all_zero_blocks() {
        let mode = Mode { holes: true, block_size: 4 };
        let data = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3];
        let got: Vec<(u64, Vec<u8>)> = runs(&data, mode).into_iter().map(|(a, r)| (a, r.to_vec())).collect();
        assert_eq!(got, vec![(4, vec![1, 0, 0, 0, 0, 0, 0, 2]), (20, vec![3, 3])]);
        assert!(runs(&[0u8; 12], mode).is_empty());
        let all = runs(&data, Mode { holes: false, block_size: 4 });
        assert_eq!(all, vec![(0, &data[..])]);
        assert!(is_zero(&[0u8; 130]));
        let mut late = [0u8; 130];
        late[129] = 9;
        assert!(!is_zero(&late));
        late[129] = 0;
        late[3] = 1;
        assert!(!is_zero(&late));
    }
}
