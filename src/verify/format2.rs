//! Verify on repository format 2 (docs/design/format2.md): the block-map nodes of the verified backups, every
//! frame they and their small files need (found through the union of the pack indexes, read by merged ranged
//! reads), each frame checked on its own (codec header, size, blake3), every whole block against the digest its
//! node records, and every delta block rebuilt (base XOR delta) and checked the same way.
//!
//! Invariants: memory is bounded by the reads in flight (`parallel` × 16 MiB) plus, while deltas are checked,
//! [`DELTA_BUDGET`] bytes of decoded delta frames (deltas are checked in rounds that fit it; each round reads the
//! base frames it needs again). A pack that is gone when read (gc compacted it meanwhile: its frames are in
//! another pack by then) makes verify load the pack indexes again and retry those frames once. The CPU work
//! (zstd decoding, blake3 of frames, pieces and blocks, rebuilding deltas) runs on blocking threads, one task per
//! ranged read, so the async threads keep `parallel` reads in flight while earlier ones are checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use super::read::PieceCheck;
use crate::Error;
use crate::archive::blocking;
use crate::repository::backup::{BackupId, Manifest, ObjectId};
use crate::repository::blockmap::{Node, Source, block_digest, node_key};
use crate::repository::packs::{FrameLocation, pack_key};
use crate::repository::packstore::{self, FrameIndex, RangeRead, merge_reads};
use crate::repository::store;
use crate::storage::DynStorage;

/// Decoded delta frames held at once while deltas are checked (bytes).
pub const DELTA_BUDGET: usize = 64 << 20;

/// Frames closer than this (bytes) in one pack are read with one request.
const MERGE_GAP: u64 = 1 << 20;

/// Most bytes one ranged read asks for.
const MAX_READ: u64 = 16 << 20;

/// One damaged or missing object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// `missing` or `corrupt`.
    pub kind: &'static str,
    /// The object: `maps/..` (a node), `packs/..@offset` (a frame in a pack), `packs/..` (a pack), or
    /// `frame <id>` (a frame no pack index names).
    pub what: String,
    /// Why, in one line.
    pub reason: String,
    /// The backups that need it (as far as verify read their nodes).
    pub users: BTreeSet<BackupId>,
}

/// What checking the format-2 backups found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Nodes and frames checked.
    pub objects: u64,
    /// Stored bytes read.
    pub bytes_read: u64,
    /// Every problem.
    pub damage: Vec<Damage>,
}

/// What one frame must satisfy.
#[derive(Debug, Default)]
struct Needs {
    pieces: BTreeSet<PieceCheck>,
    /// (byte offset in the frame, length, digest) of whole blocks.
    blocks: BTreeSet<(u64, u64, u64)>,
    users: BTreeSet<BackupId>,
}

/// One delta block: base and delta frames, byte offsets in them, length, digest, and what to call it.
#[derive(Debug, Clone)]
struct Delta {
    base: ObjectId,
    base_at: u64,
    delta: ObjectId,
    delta_at: u64,
    length: u64,
    digest: u64,
    what: String,
}

/// A check of one decoded frame, run on a blocking thread: the frame's id and raw content in; out, a value for the
/// caller, or why the frame is damaged (one line).
type FrameCheck<T> = Arc<dyn Fn(&ObjectId, Vec<u8>) -> Result<T, String> + Send + Sync>;

/// Check the format-2 backups among `selected` (reads only); `manifests` are all of them (for who needs what).
pub async fn check(
    storage: &DynStorage,
    manifests: &[Manifest],
    selected: &BTreeSet<&BackupId>,
    parallel: usize,
) -> Result<Checked, Error> {
    let mut out = Checked::default();
    let mine: Vec<&Manifest> =
        manifests.iter().filter(|m| m.repository_format >= 2 && selected.contains(&m.id)).collect();
    if mine.is_empty() {
        return Ok(out);
    }
    let mut node_users: BTreeMap<ObjectId, BTreeSet<BackupId>> = BTreeMap::new();
    let mut needs: HashMap<ObjectId, Needs> = HashMap::new();
    for m in manifests.iter().filter(|m| m.repository_format >= 2) {
        for f in &m.files {
            for n in &f.nodes {
                node_users.entry(*n).or_default().insert(m.id.clone());
            }
            for p in &f.pieces {
                let n = needs.entry(p.object).or_default();
                n.users.insert(m.id.clone());
                if selected.contains(&m.id) {
                    n.pieces.insert(PieceCheck { offset: p.offset, length: p.length, blake3: p.blake3 });
                }
            }
        }
    }
    // Small-file frames of backups not verified are only there to name their users.
    needs.retain(|_, n| !n.pieces.is_empty());

    // Nodes, each distinct one once.
    let wanted: BTreeSet<ObjectId> =
        mine.iter().flat_map(|m| m.files.iter().flat_map(|f| f.nodes.iter().copied())).collect();
    let mut loads = stream::iter(wanted.iter().map(|id| {
        let storage = storage.clone();
        async move { (*id, packstore::load_node(storage.as_ref(), id).await) }
    }))
    .buffer_unordered(parallel.max(1));
    let mut nodes: HashMap<ObjectId, Arc<Node>> = HashMap::new();
    while let Some((id, loaded)) = loads.next().await {
        out.objects += 1;
        let users = node_users.get(&id).cloned().unwrap_or_default();
        match loaded {
            Ok(n) => {
                nodes.insert(id, Arc::new(n));
            }
            Err(store::Error::Storage(e)) if e.is_not_found() => out.damage.push(Damage {
                kind: "missing",
                what: node_key(&id).to_string(),
                reason: "block-map node absent from the repository".into(),
                users,
            }),
            Err(e @ store::Error::Storage(_)) => return Err(e.into()),
            Err(e) => out.damage.push(Damage {
                kind: "corrupt",
                what: node_key(&id).to_string(),
                reason: e.to_string(),
                users,
            }),
        }
    }
    drop(loads);

    // What each frame must hold, per block.
    let mut deltas: Vec<Delta> = Vec::new();
    for m in &mine {
        let bs = u64::from(m.block_size.unwrap_or(8192));
        for f in m.files.iter().filter(|f| !f.nodes.is_empty()) {
            for node in f.nodes.iter().filter_map(|id| nodes.get(id)) {
                for (i, (source, digest)) in node.sources.iter().zip(&node.digests).enumerate() {
                    let block = node.first_block + i as u64;
                    let length = bs.min(f.size.saturating_sub(block * bs));
                    if length == 0 {
                        continue;
                    }
                    let frame = |k: u32| node.frames.get(k as usize).copied();
                    match *source {
                        Source::Whole { frame: k, slot } => {
                            if let Some(id) = frame(k) {
                                let n = needs.entry(id).or_default();
                                n.blocks.insert((u64::from(slot) * bs, length, *digest));
                                n.users.insert(m.id.clone());
                            }
                        }
                        Source::Delta { base_frame, base_slot, delta_frame, delta_slot } => {
                            if let (Some(base), Some(delta)) = (frame(base_frame), frame(delta_frame)) {
                                for id in [base, delta] {
                                    needs.entry(id).or_default().users.insert(m.id.clone());
                                }
                                deltas.push(Delta {
                                    base,
                                    base_at: u64::from(base_slot) * bs,
                                    delta,
                                    delta_at: u64::from(delta_slot) * bs,
                                    length,
                                    digest: *digest,
                                    what: format!(
                                        "block {block} of {}",
                                        crate::repository::path::Escaped(f.path.as_path())
                                    ),
                                });
                            }
                        }
                    }
                }
            }
        }
    }

    // Pass 1: every frame, checked whole, by its pieces and by its whole blocks.
    let mut index = FrameIndex::load(storage.as_ref()).await?;
    let ids: Vec<ObjectId> = needs.keys().copied().collect();
    let needs = Arc::new(needs);
    let shared = Arc::clone(&needs);
    let check_whole: FrameCheck<()> = Arc::new(move |id, raw| {
        let Some(n) = shared.get(id) else { return Ok(()) };
        for p in &n.pieces {
            let slice = usize::try_from(p.offset)
                .ok()
                .zip(usize::try_from(p.offset + p.length).ok())
                .and_then(|(a, b)| raw.get(a..b));
            match slice {
                Some(s) if blake3::hash(s).as_bytes() == &p.blake3.0 => {}
                Some(_) => {
                    return Err(format!(
                        "the piece at {}..{} differs from the manifest's blake3",
                        p.offset,
                        p.offset + p.length
                    ));
                }
                None => {
                    return Err(format!(
                        "a piece at {}..{} lies outside its {} bytes",
                        p.offset,
                        p.offset + p.length,
                        raw.len()
                    ));
                }
            }
        }
        for (at, len, digest) in &n.blocks {
            let slice = raw.get(*at as usize..(*at + *len) as usize);
            if slice.map(block_digest) != Some(*digest) {
                return Err(format!("the block at byte {at} does not have the digest its block map records"));
            }
        }
        Ok(())
    });
    let damaged = read_frames(storage, &mut index, ids, parallel, &mut out, check_whole, |_, ()| {}).await?;
    for (id, d) in damaged {
        let users = needs.get(&id).map(|n| n.users.clone()).unwrap_or_default();
        out.damage.push(Damage { users, ..d });
    }

    // Pass 2: deltas, in rounds of at most DELTA_BUDGET bytes of decoded delta frames.
    let bad: BTreeSet<String> = out.damage.iter().map(|d| d.what.clone()).collect();
    deltas.sort_by_key(|d| d.delta);
    let mut start = 0;
    while start < deltas.len() {
        let mut end = start;
        let mut frames: BTreeSet<ObjectId> = BTreeSet::new();
        while end < deltas.len()
            && (frames.len() * packstore_frame_max() < DELTA_BUDGET || frames.contains(&deltas[end].delta))
        {
            frames.insert(deltas[end].delta);
            end += 1;
        }
        let mut by_base: HashMap<ObjectId, Vec<Delta>> = HashMap::new();
        for d in &deltas[start..end] {
            by_base.entry(d.base).or_default().push(d.clone());
        }
        start = end;
        let mut held: HashMap<ObjectId, Vec<u8>> = HashMap::new();
        let mut sink = Checked::default();
        let keep: FrameCheck<Vec<u8>> = Arc::new(|_, raw| Ok(raw));
        read_frames(storage, &mut index, frames.into_iter().collect(), parallel, &mut sink, keep, |id, raw| {
            held.insert(id, raw);
        })
        .await?;
        let held = Arc::new(held);
        let bases: Vec<ObjectId> = by_base.keys().copied().collect();
        let by_base = Arc::new(by_base);
        let rebuild: FrameCheck<Vec<(ObjectId, String)>> = Arc::new(move |id, base_raw| {
            let mut failures = Vec::new();
            for d in by_base.get(id).into_iter().flatten() {
                let Some(delta_raw) = held.get(&d.delta) else { continue };
                let (a, b) = (d.base_at as usize, d.delta_at as usize);
                let (Some(x), Some(y)) =
                    (base_raw.get(a..a + d.length as usize), delta_raw.get(b..b + d.length as usize))
                else {
                    failures.push((d.delta, format!("{}: a slot lies outside its frame", d.what)));
                    continue;
                };
                let rebuilt: Vec<u8> = x.iter().zip(y).map(|(p, q)| p ^ q).collect();
                if block_digest(&rebuilt) != d.digest {
                    failures.push((
                        d.delta,
                        format!("{}: base XOR delta does not have the digest its block map records", d.what),
                    ));
                }
            }
            Ok(failures)
        });
        let mut failures: Vec<(ObjectId, String)> = Vec::new();
        read_frames(storage, &mut index, bases, parallel, &mut sink, rebuild, |_, f| failures.extend(f)).await?;
        out.bytes_read += sink.bytes_read;
        for (delta, reason) in failures {
            let what = format!("frame {delta}");
            if bad.contains(&what) || out.damage.iter().any(|d| d.what == what) {
                continue;
            }
            let users = needs.get(&delta).map(|n| n.users.clone()).unwrap_or_default();
            out.damage.push(Damage { kind: "corrupt", what, reason, users });
        }
    }
    Ok(out)
}

/// Largest decoded frame (bytes): a round of deltas counts each delta frame at this size.
fn packstore_frame_max() -> usize {
    crate::repository::packs::FRAME_RAW_MAX
}

/// Read `ids` by merged ranged reads, `parallel` at a time; on a blocking thread per read, decode and verify each
/// frame and pass it to `check`; hand what `check` returns to `take` (on the caller's task, in the order reads
/// complete). Returns the frames found damaged or missing (without users). A pack that is gone: the indexes are
/// loaded again and its frames retried once.
async fn read_frames<T: Send + 'static>(
    storage: &DynStorage,
    index: &mut FrameIndex,
    ids: Vec<ObjectId>,
    parallel: usize,
    out: &mut Checked,
    check: FrameCheck<T>,
    mut take: impl FnMut(ObjectId, T),
) -> Result<Vec<(ObjectId, Damage)>, Error> {
    let mut damaged = Vec::new();
    let mut todo = ids;
    for attempt in 0..2 {
        let mut located: Vec<(ObjectId, FrameLocation, ())> = Vec::new();
        for id in todo.drain(..) {
            match index.get(&id) {
                Some((pack, loc)) => located.push((*pack, *loc, ())),
                None => damaged.push((
                    id,
                    Damage {
                        kind: "missing",
                        what: format!("frame {id}"),
                        reason: "no pack index names it".into(),
                        users: BTreeSet::new(),
                    },
                )),
            }
        }
        let reads: Vec<RangeRead<()>> = merge_reads(located, MERGE_GAP, MAX_READ);
        let mut fetched = stream::iter(reads.into_iter().map(|r| {
            let storage = storage.clone();
            let check = Arc::clone(&check);
            async move {
                let key = pack_key(&r.pack);
                let bytes = match storage.get_range(&key, r.start, r.end - r.start).await {
                    Ok(b) => b,
                    Err(e) => return Ok((r, Err(e))),
                };
                let len = bytes.len() as u64;
                blocking(move || {
                    let checked: Vec<(FrameLocation, Result<T, String>)> = r
                        .frames
                        .iter()
                        .map(|(loc, ())| {
                            let result = packstore::decode_frame(&key, r.slice(&bytes, loc), loc)
                                .map_err(|e| e.to_string())
                                .and_then(|raw| check(&loc.id, raw));
                            (*loc, result)
                        })
                        .collect();
                    Ok((r, Ok((len, checked))))
                })
                .await
            }
        }))
        .buffer_unordered(parallel.max(1));
        let mut gone: Vec<(ObjectId, ObjectId)> = Vec::new();
        while let Some(done) = fetched.next().await {
            let (read, got) = done?;
            let key = pack_key(&read.pack);
            let (len, checked) = match got {
                Ok(c) => c,
                Err(e) if e.is_not_found() => {
                    gone.extend(read.frames.iter().map(|(l, ())| (l.id, read.pack)));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            out.bytes_read += len;
            for (loc, result) in checked {
                out.objects += 1;
                match result {
                    Ok(value) => take(loc.id, value),
                    Err(reason) => damaged.push((
                        loc.id,
                        Damage {
                            kind: "corrupt",
                            what: format!("{key}@{}", loc.offset),
                            reason,
                            users: BTreeSet::new(),
                        },
                    )),
                }
            }
        }
        if gone.is_empty() {
            break;
        }
        if attempt == 0 {
            *index = FrameIndex::load(storage.as_ref()).await?;
            todo = gone.into_iter().map(|(id, _)| id).collect();
        } else {
            damaged.extend(gone.into_iter().map(|(id, pack)| {
                (
                    id,
                    Damage {
                        kind: "missing",
                        what: pack_key(&pack).to_string(),
                        reason: format!("pack absent from the repository (holds frame {id})"),
                        users: BTreeSet::new(),
                    },
                )
            }));
        }
    }
    Ok(damaged)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec;
    use crate::repository::backup::FileEntry;
    use crate::repository::packs::{PackBuilder, PackIndex};
    use crate::storage::fs::FsStorage;
    use crate::storage::{PutMode, Storage};

    const BS: usize = 8192;

    /// Store `frames` (raw contents) in one indexed pack; their ids.
    async fn pack(s: &dyn Storage, frames: &[Vec<u8>]) -> Vec<ObjectId> {
        let mut b = PackBuilder::default();
        let mut ids = Vec::new();
        for raw in frames {
            let id = ObjectId::of(raw);
            let (enc, _) = codec::encode_hashed(raw, codec::Digest::Blake3(id.0), 1).expect("encode");
            b.push(id, &enc, raw.len() as u32);
            ids.push(id);
        }
        let (bytes, entry) = b.seal();
        s.put(&pack_key(&entry.pack), Bytes::from(bytes), PutMode::Create).await.expect("pack");
        packstore::save_index(s, &PackIndex { packs: vec![entry] }, 1).await.expect("index");
        ids
    }

    /// A backup of one 3-block file: blocks 0 and 1 whole from `base`, block 2 = base block 2 XOR `delta` block
    /// 0; the node records `digests`.
    async fn backup(s: &dyn Storage, base: &[u8], delta: &[u8], digests: Vec<u64>) -> Manifest {
        let ids = pack(s, &[base.to_vec(), delta.to_vec()]).await;
        let node = Node {
            block_size: BS as u32,
            first_block: 0,
            frames: ids.clone(),
            digests,
            sources: vec![
                Source::Whole { frame: 0, slot: 0 },
                Source::Whole { frame: 0, slot: 1 },
                Source::Delta { base_frame: 0, base_slot: 2, delta_frame: 1, delta_slot: 0 },
            ],
        };
        let (nid, _) = packstore::save_node(s, &node, 1).await.expect("node");
        let file = FileEntry {
            path: "base/1/1".into(),
            size: 3 * BS as u64,
            mode: 0o600,
            mtime: 0,
            pieces: vec![],
            nodes: vec![nid],
        };
        let mut m = Manifest { files: vec![file], ..Manifest::example() };
        m.repository_format = 2;
        m.block_size = Some(BS as u32);
        m
    }

    fn noise(seed: u8, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut out);
        out
    }

    /// Frames are decoded and checked on blocking threads, never on the task that keeps the reads in flight
    /// (a current-thread runtime: its one thread is the async thread), and what the checks return reaches the
    /// caller.
    #[tokio::test]
    async fn frames_are_checked_off_the_async_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s: DynStorage = Arc::new(FsStorage::new(dir.path()));
        let ids = pack(s.as_ref(), &[noise(3, BS), noise(4, 2 * BS)]).await;
        let mut index = FrameIndex::load(s.as_ref()).await.expect("index");
        let here = std::thread::current().id();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let check: FrameCheck<usize> = Arc::new(move |_, raw| {
            record.lock().expect("lock").push(std::thread::current().id());
            Ok(raw.len())
        });
        let mut sizes = Vec::new();
        let mut out = Checked::default();
        let damaged = read_frames(&s, &mut index, ids, 2, &mut out, check, |_, n| sizes.push(n)).await.expect("read");
        assert!(damaged.is_empty(), "{damaged:?}");
        sizes.sort_unstable();
        assert_eq!(sizes, vec![BS, 2 * BS]);
        assert_eq!(out.objects, 2);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|t| *t != here), "a frame was checked on the async thread");
    }

    /// Sound blocks and a sound delta pass; a whole block or a rebuilt delta whose digest differs from the node's
    /// is reported corrupt (the frames themselves are sound), naming the backup.
    #[tokio::test]
    async fn blocks_and_deltas_are_checked_against_the_block_map() {
        let base = noise(1, 3 * BS);
        let mut delta = vec![0u8; BS];
        delta[100] = 0x5a;
        let mut new = base[2 * BS..].to_vec();
        new[100] ^= 0x5a;
        let good = vec![block_digest(&base[..BS]), block_digest(&base[BS..2 * BS]), block_digest(&new)];
        async fn check_one(base: &[u8], delta: &[u8], digests: Vec<u64>) -> Checked {
            let dir = tempfile::tempdir().expect("tempdir");
            let s: DynStorage = Arc::new(FsStorage::new(dir.path()));
            let m = backup(s.as_ref(), base, delta, digests).await;
            let selected: BTreeSet<&BackupId> = [&m.id].into_iter().collect();
            check(&s, std::slice::from_ref(&m), &selected, 2).await.expect("check")
        }
        let check_one = |digests| check_one(&base, &delta, digests);
        let ok = check_one(good.clone()).await;
        assert!(ok.damage.is_empty(), "{:?}", ok.damage);
        assert_eq!(ok.objects, 3, "one node and two frames");

        let mut whole = good.clone();
        whole[1] ^= 1;
        let bad = check_one(whole).await;
        assert_eq!(bad.damage.len(), 1, "{:?}", bad.damage);
        assert!(
            bad.damage[0].what.starts_with("packs/") && bad.damage[0].reason.contains("byte 8192"),
            "{:?}",
            bad.damage
        );
        assert_eq!(bad.damage[0].users.len(), 1);

        let mut rebuilt = good;
        rebuilt[2] ^= 1;
        let bad = check_one(rebuilt).await;
        assert_eq!(bad.damage.len(), 1, "{:?}", bad.damage);
        assert!(bad.damage[0].reason.contains("block 2 of base/1/1: base XOR delta"), "{:?}", bad.damage);
    }
}
