//! gc on format 2: the plan (pure), and the whole sweep on a real file-system repository, crashed after every
//! single write or delete it makes, then checked and finished by a rerun.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::*;
use crate::codec;
use crate::repository::backup::{FileEntry, Manifest, Piece};
use crate::repository::blockmap::{Node, Source, block_digest};
use crate::repository::packstore::FrameIndex;
use crate::retention::gc::{GcOptions, delete_backup};
use crate::storage::fs::FsStorage;
use crate::storage::{Capabilities, DynStorage, Incomplete};

const BLOCK: usize = 8192;

/// Incompressible bytes named by `seed`.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// A frame of `blocks` blocks: its id, raw bytes and encoded form.
fn frame(seed: &str, blocks: usize) -> (ObjectId, Vec<u8>, Vec<u8>) {
    let raw = noise(seed, blocks * BLOCK);
    let id = ObjectId::of(&raw);
    let (enc, _) = codec::encode_hashed(&raw, codec::Digest::Blake3(id.0), 1).expect("encode");
    (id, raw, enc)
}

/// Put a pack of `frames`; index it unless `indexed` is false. Returns its entry.
async fn put_pack(s: &dyn Storage, frames: &[&(ObjectId, Vec<u8>, Vec<u8>)], indexed: bool) -> PackEntry {
    let mut b = PackBuilder::default();
    for (id, raw, enc) in frames {
        b.push(*id, enc, raw.len() as u32);
    }
    let (bytes, entry) = b.seal();
    s.put(&pack_key(&entry.pack), Bytes::from(bytes), PutMode::Create).await.expect("pack");
    if indexed {
        packstore::save_index(s, &PackIndex { packs: vec![entry.clone()] }, 1).await.expect("index");
    }
    entry
}

/// A node over the blocks of `frames` (whole), in order.
fn node(frames: &[&(ObjectId, Vec<u8>, Vec<u8>)]) -> Node {
    let mut n = Node { block_size: BLOCK as u32, first_block: 0, frames: vec![], digests: vec![], sources: vec![] };
    for (i, (id, raw, _)) in frames.iter().enumerate() {
        n.frames.push(*id);
        for (slot, block) in raw.chunks(BLOCK).enumerate() {
            n.digests.push(block_digest(block));
            n.sources.push(Source::Whole { frame: i as u32, slot: slot as u32 });
        }
    }
    n
}

async fn manifest(s: &dyn Storage, id: &str, node: Option<&Node>, small: Option<(&ObjectId, &[u8])>) {
    let mut files = Vec::new();
    if let Some(n) = node {
        let (nid, _) = packstore::save_node(s, n, 1).await.expect("node");
        let size = (n.digests.len() * BLOCK) as u64;
        files.push(FileEntry {
            path: "base/1/16384".into(),
            size,
            mode: 0o600,
            mtime: 0,
            pieces: vec![],
            nodes: vec![nid],
        });
    }
    if let Some((frame, raw)) = small {
        let piece = Piece { object: *frame, offset: 0, length: 100, blake3: ObjectId::of(&raw[..100]) };
        files.push(FileEntry {
            path: "PG_VERSION".into(),
            size: 100,
            mode: 0o600,
            mtime: 0,
            pieces: vec![piece],
            nodes: vec![],
        });
    }
    let mut m = Manifest { id: id.parse().expect("id"), files, ..Manifest::example() };
    m.repository_format = 2;
    m.block_size = Some(BLOCK as u32);
    m.format = m.required_format();
    assert!(store::save_manifest(s, &mut m).await.expect("manifest"));
}

type Frame = (ObjectId, Vec<u8>, Vec<u8>);

/// A repository where, once backup 1 is deleted: pack A (f1..f4) holds one live frame of four (compacted), pack B
/// (f5, f6) is all live (kept), pack C (f7, indexed with B) is dead (deleted), pack D is indexed by nothing (deleted), node n1 is
/// unreferenced (deleted). Returns the frames backup 2 needs.
async fn scenario(s: &dyn Storage) -> Vec<Frame> {
    let f: Vec<Frame> = (1..=7).map(|i| frame(&format!("f{i}"), 4)).collect();
    put_pack(s, &[&f[0], &f[1], &f[2], &f[3]], true).await;
    // B and C share one index object: it is replaced by one naming B only.
    let b = put_pack(s, &[&f[4], &f[5]], false).await;
    let c = put_pack(s, &[&f[6]], false).await;
    packstore::save_index(s, &PackIndex { packs: vec![b, c] }, 1).await.expect("index");
    put_pack(s, &[&frame("orphan", 2)], false).await;
    manifest(s, "20261130-010000F", Some(&node(&[&f[0], &f[1], &f[2], &f[6]])), None).await;
    manifest(s, "20261130-020000F", Some(&node(&[&f[0], &f[4]])), Some((&f[5].0, &f[5].1))).await;
    let now = OffsetDateTime::now_utc();
    delete_backup(s, &"20261130-010000F".parse().expect("id"), now, false).await.expect("delete");
    vec![f[0].clone(), f[4].clone(), f[5].clone()]
}

fn options(dry_run: bool) -> GcOptions {
    GcOptions { grace: Duration::from_secs(60), dry_run, now: OffsetDateTime::now_utc() + time::Duration::hours(1) }
}

/// Every frame of `live` is found through the pack indexes and reads back (verified), and every index entry names
/// a pack that exists.
async fn assert_readable(s: &dyn Storage, live: &[Frame], when: &str) {
    let index = FrameIndex::load(s).await.unwrap_or_else(|e| panic!("{when}: index: {e}"));
    for (id, raw, _) in live {
        let (pack, loc) = index.get(id).unwrap_or_else(|| panic!("{when}: frame {id} is indexed"));
        let got = packstore::read_frame(s, pack, loc).await.unwrap_or_else(|e| panic!("{when}: frame {id}: {e}"));
        assert_eq!(&got, raw, "{when}");
    }
    let packs: HashSet<String> = s.list(PACKS_PREFIX).await.expect("list").iter().map(|m| m.key.to_string()).collect();
    for m in s.list(INDEX_PREFIX).await.expect("list") {
        let id = index_from_key(m.key.as_str()).expect("index key");
        for e in packstore::load_index(s, &id).await.expect("index").packs {
            assert!(packs.contains(pack_key(&e.pack).as_str()), "{when}: {} names a pack that is gone", m.key);
        }
    }
}

#[test]
fn plan_owns_each_live_frame_once_and_frees_duplicates() {
    let id = |s: &str| ObjectId::of(s.as_bytes());
    let loc = |f: &str, offset: u64| FrameLocation { id: id(f), offset, stored_length: 100, raw_length: 100 };
    let entry = |p: &str, frames: &[&str]| PackEntry {
        pack: id(p),
        frames: frames.iter().enumerate().map(|(i, f)| loc(f, i as u64 * 100)).collect(),
    };
    // P (a, b, c, d: only a live) was compacted into Q (a) by a run killed before it replaced P's index: P owns
    // nothing (its live frame's copy in Q is all live) and goes; nothing is copied again.
    let live: HashSet<ObjectId> = [id("a"), id("e")].into_iter().collect();
    let packs: HashMap<ObjectId, (u64, bool)> =
        [(id("P"), (400, true)), (id("Q"), (100, true)), (id("R"), (200, true)), (id("Y"), (100, false))]
            .into_iter()
            .collect();
    let indexes = vec![
        (id("i1"), PackIndex { packs: vec![entry("P", &["a", "b", "c", "d"]), entry("R", &["e", "f"])] }),
        (id("i2"), PackIndex { packs: vec![entry("Q", &["a"])] }),
        (id("i3"), PackIndex { packs: vec![entry("Y", &["z"])] }),
    ];
    let p = plan(&live, &packs, &indexes);
    assert_eq!(p.delete, vec![id("P")], "{p:?}");
    assert!(p.compact.is_empty() && p.copy.is_empty(), "R is half live: kept; {p:?}");
    assert_eq!(p.rewrite, vec![(id("i1"), Some(PackIndex { packs: vec![entry("R", &["e", "f"])] }))]);
    assert_eq!((p.frames_live, p.frames_missing, p.in_grace), (2, 0, 1), "Y is young: left alone");

    // Without Q: P is a quarter live and is compacted (a copied); a frame in no pack is counted missing.
    let live: HashSet<ObjectId> = [id("a"), id("e"), id("gone")].into_iter().collect();
    let p = plan(&live, &packs, &indexes[..1]);
    assert_eq!(p.compact, vec![id("P")]);
    assert_eq!(p.copy, vec![(id("P"), loc("a", 0))]);
    assert_eq!(p.delete, vec![id("Q")], "Q is indexed by nothing here");
    assert_eq!(p.frames_missing, 1);
}

/// The index objects of a base-backup killed with `-9` (written as it went, named by no manifest): a pack whose
/// frames the rerun reused stays, and so does the index entry that finds them; a pack of frames nothing uses goes
/// once past the grace period, and the index object that named it is replaced without it (or deleted when it
/// named nothing else); a young one is left alone.
#[test]
fn issue_10_killed_backups_index_objects_keep_reused_frames_and_free_the_rest() {
    let id = |s: &str| ObjectId::of(s.as_bytes());
    let loc = |f: &str, offset: u64| FrameLocation { id: id(f), offset, stored_length: 100, raw_length: 100 };
    let entry = |p: &str, frames: &[&str]| PackEntry {
        pack: id(p),
        frames: frames.iter().enumerate().map(|(i, f)| loc(f, i as u64 * 100)).collect(),
    };
    // Killed run: i1 (K1: a, b; K2: c, d), i2 (K3: e), i3 (K4: g, young). The rerun's manifest names a, b, c and
    // its own pack N (h) in its own index object i9.
    let live: HashSet<ObjectId> = ["a", "b", "c", "h"].iter().map(|f| id(f)).collect();
    let packs: HashMap<ObjectId, (u64, bool)> =
        [("K1", 200, true), ("K2", 200, true), ("K3", 100, true), ("K4", 200, false), ("N", 100, true)]
            .into_iter()
            .map(|(p, size, old)| (id(p), (size, old)))
            .collect();
    let indexes = vec![
        (id("i1"), PackIndex { packs: vec![entry("K1", &["a", "b"]), entry("K2", &["c", "d"])] }),
        (id("i2"), PackIndex { packs: vec![entry("K3", &["e"])] }),
        (id("i3"), PackIndex { packs: vec![entry("K4", &["g"])] }),
        (id("i9"), PackIndex { packs: vec![entry("N", &["h"])] }),
    ];
    let p = plan(&live, &packs, &indexes);
    assert_eq!(p.delete, vec![id("K3")], "{p:?}");
    assert!(p.compact.is_empty(), "K2 is half live: kept; {p:?}");
    assert_eq!(p.rewrite, vec![(id("i2"), None)], "i1 still finds a, b, c; i2 named only K3");
    assert_eq!((p.frames_live, p.frames_missing, p.in_grace), (4, 0, 1));
}

/// Fails every put and delete outside `locks/` once `budget` of them were made (a process killed right after
/// its budget-th write), and counts them.
#[derive(Debug)]
struct Crash {
    inner: DynStorage,
    budget: AtomicI64,
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.inner, f)
    }
}

impl Crash {
    fn gate(&self, key: &Key) -> storage::Result<()> {
        if key.as_str().starts_with("locks/") {
            return Ok(());
        }
        if self.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(storage::Error::transient(&self.inner, "write", key, "killed"));
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for Crash {
    async fn put(&self, key: &Key, body: Bytes, mode: PutMode) -> storage::Result<()> {
        self.gate(key)?;
        self.inner.put(key, body, mode).await
    }
    async fn get(&self, key: &Key) -> storage::Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> storage::Result<Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn head(&self, key: &Key) -> storage::Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> storage::Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &Key) -> storage::Result<()> {
        self.gate(key)?;
        self.inner.delete(key).await
    }
    async fn list_incomplete(&self, prefix: &str) -> storage::Result<Vec<Incomplete>> {
        self.inner.list_incomplete(prefix).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// gc killed after each of its writes and deletes in turn (0, 1, 2, ... until it completes): every live frame
/// still reads back and every index entry names a pack that exists; a rerun finishes the job, after which the
/// repository holds exactly the kept pack and the compaction's pack, and another gc has nothing to do.
#[tokio::test]
async fn killed_at_every_write_then_rerun() {
    let mut writes = 0;
    loop {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner: DynStorage = Arc::new(FsStorage::new(dir.path()));
        let live = scenario(inner.as_ref()).await;
        let crash = Crash { inner: inner.clone(), budget: AtomicI64::new(writes) };
        let first = crate::retention::gc::collect(&crash, &options(false)).await;
        assert_readable(inner.as_ref(), &live, &format!("killed after {writes} writes")).await;
        let rerun = crate::retention::gc::collect(inner.as_ref(), &options(false)).await.expect("rerun");
        assert!(rerun.deferred.is_none(), "{rerun:?}");
        assert_readable(inner.as_ref(), &live, &format!("rerun after {writes}")).await;
        let packs = inner.list(PACKS_PREFIX).await.expect("list");
        assert_eq!(packs.len(), 2, "after {writes}: B and the compacted pack: {packs:?}");
        assert_eq!(inner.list(MAPS_PREFIX).await.expect("list").len(), 1, "n1 went");
        let again = crate::retention::gc::collect(inner.as_ref(), &options(true)).await.expect("dry");
        assert_eq!(again.objects_removed, 0, "after {writes}: {again:?}");
        match first {
            Ok(report) => {
                let p = &report.packs;
                assert_eq!((p.packs_deleted, p.packs_compacted, p.frames_copied), (2, 1, 1), "{p:?}");
                assert_eq!((p.packs_written, p.index_written, p.nodes_deleted), (1, 2, 1), "{p:?}");
                assert_eq!(p.read_requests, 1);
                assert!(p.bytes_deleted > p.bytes_written && p.bytes_read > 0, "{p:?}");
                assert!(writes > 5, "the uninterrupted run made several writes");
                break;
            }
            Err(e) => assert!(e.to_string().contains("killed"), "{e}"),
        }
        writes += 1;
    }
}

/// A dry run lists exactly what the real run removes, and removes nothing.
#[tokio::test]
async fn dry_run_lists_what_the_real_run_removes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = FsStorage::new(dir.path());
    scenario(&s).await;
    let before = s.list("").await.expect("list").len();
    let dry = crate::retention::gc::collect(&s, &options(true)).await.expect("dry");
    assert_eq!(s.list("").await.expect("list").len(), before);
    let real = crate::retention::gc::collect(&s, &options(false)).await.expect("real");
    let names = |r: &GcReport| r.removed.iter().map(|x| x.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&dry), names(&real));
    assert_eq!(dry.objects_removed, 1 + 3 + 2, "node, packs A C D, index objects of A and of B+C: {dry:?}");
}
