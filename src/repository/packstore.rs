//! Format 2 I/O (docs/design/format2.md): the pack indexes as one lookup table, frames read by range and
//! verified, block-map nodes and pack indexes saved and loaded.
//!
//! Invariants: every frame returned was decoded and matched its id (blake3 of the raw content) and its indexed
//! raw length; every node and index returned passed its own checks; everything is written create-only under the
//! blake3 of its raw content, so an existing key already holds the same content.

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::backup::FileEntry;
use super::backup::ObjectId;
use super::blockmap::{Node, node_key};
use super::filemap::{self, FileMapRef, file_map_key};
use super::packs::{FrameLocation, INDEX_PREFIX, PackEntry, PackIndex, index_from_key, index_key, pack_key};
use super::store::Error;
use crate::codec;
use crate::storage::{self, Key, PutMode, Storage};

/// Requests in flight when loading many small objects (index objects, nodes).
const LOAD_CONCURRENCY: usize = 16;

/// Where every indexed frame lies: the union of the repository's pack indexes.
///
/// Kept as one vector sorted by frame id (binary search), 80 bytes per frame (pack id and location; the location
/// holds the frame id), so that a 1 TB cluster (about a million 1 MiB frames) costs about 80 MiB: a hash map of the
/// same entries took 148-237 bytes per frame (key stored twice, power-of-two bucket counts), over 256 MiB of memory
/// for base-backup and pitr-restore at that size (issue 10, "Bounded memory").
#[derive(Debug, Default, Clone)]
pub struct FrameIndex {
    /// `(pack, location)`, sorted by `location.id`, one entry per frame id (the first one added wins).
    frames: Vec<(ObjectId, FrameLocation)>,
}

impl FrameIndex {
    /// Load every pack index object of the repository (one listing of `index/`, then the objects, 16 at a time).
    /// An index object listed but gone when read was replaced by gc meanwhile (its replacement is created before
    /// it is deleted, so it is in the listing too): skipped. Errors: storage errors; a damaged index object
    /// ([`Error::Corrupt`], [`Error::Malformed`]).
    pub async fn load(storage: &dyn Storage) -> Result<Self, Error> {
        let ids: Vec<ObjectId> =
            storage.list(INDEX_PREFIX).await?.iter().filter_map(|m| index_from_key(m.key.as_str())).collect();
        Self::load_listed(storage, &ids).await
    }

    /// [`FrameIndex::load`] of the index objects `ids` (listed by the caller); one that is gone by now is skipped.
    /// Errors as [`FrameIndex::load`].
    pub async fn load_listed(storage: &dyn Storage, ids: &[ObjectId]) -> Result<Self, Error> {
        let indexes: Vec<Option<PackIndex>> = stream::iter(ids.iter().map(|id| async move {
            match load_index(storage, id).await {
                Err(Error::Storage(e)) if e.is_not_found() => Ok(None),
                other => other.map(Some),
            }
        }))
        .buffer_unordered(LOAD_CONCURRENCY)
        .try_collect()
        .await?;
        Ok(Self::from_entries(indexes.iter().flatten().flat_map(|index| index.packs.iter())))
    }

    /// The index of the frames of `entries` (for an id in more than one, the first entry's location).
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a PackEntry>) -> Self {
        let mut frames: Vec<(ObjectId, FrameLocation)> =
            entries.into_iter().flat_map(|e| e.frames.iter().map(|f| (e.pack, *f))).collect();
        // stable: among equal ids the first added stays first, and dedup keeps it
        frames.sort_by_key(|a| a.1.id);
        frames.dedup_by(|later, first| later.1.id == first.1.id);
        frames.shrink_to_fit();
        Self { frames }
    }

    /// Record the frames of one pack (a pack this backup just wrote); a frame already indexed keeps its location.
    pub fn add(&mut self, entry: &PackEntry) {
        for f in &entry.frames {
            if let Err(at) = self.position(&f.id) {
                self.frames.insert(at, (entry.pack, *f));
            }
        }
    }

    fn position(&self, id: &ObjectId) -> Result<usize, usize> {
        self.frames.binary_search_by(|(_, loc)| loc.id.cmp(id))
    }

    /// The pack and location of frame `id`, if indexed.
    pub fn get(&self, id: &ObjectId) -> Option<&(ObjectId, FrameLocation)> {
        self.position(id).ok().and_then(|i| self.frames.get(i))
    }

    /// True if frame `id` is indexed.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.position(id).is_ok()
    }

    /// The ids of every indexed frame (in id order).
    pub fn ids(&self) -> impl Iterator<Item = &ObjectId> {
        self.frames.iter().map(|(_, loc)| &loc.id)
    }

    /// Number of indexed frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True if no frame is indexed.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes of memory the entries take (their vector's capacity).
    pub fn heap_bytes(&self) -> usize {
        self.frames.capacity() * std::mem::size_of::<(ObjectId, FrameLocation)>()
    }
}

/// Load and check one pack index object.
pub async fn load_index(storage: &dyn Storage, id: &ObjectId) -> Result<PackIndex, Error> {
    let key = index_key(id);
    let raw = load_raw(storage, &key, id).await?;
    PackIndex::decode(&raw).map_err(|source| Error::Malformed { key, source })
}

/// Load and check one block-map node.
pub async fn load_node(storage: &dyn Storage, id: &ObjectId) -> Result<Node, Error> {
    let key = node_key(id);
    let raw = load_raw(storage, &key, id).await?;
    Node::decode(&raw).map_err(|source| Error::Malformed { key, source })
}

/// Load and check one file map (manifest format 4): its entries, which must agree with the manifest's reference
/// `r`. Errors: storage errors (a map that is gone is `NotFound`), [`Error::Corrupt`] (damaged object),
/// [`Error::Malformed`] (not a file map, or one that disagrees with `r`).
pub async fn load_file_map(storage: &dyn Storage, r: &FileMapRef) -> Result<Vec<FileEntry>, Error> {
    let key = file_map_key(&r.id);
    let raw = load_raw(storage, &key, &r.id).await?;
    filemap::decode(&raw, r).map_err(|source| Error::Malformed { key, source })
}

/// Save the file maps of `files` (in listing order; see [`filemap::runs`]), `LOAD_CONCURRENCY` at a time.
/// Returns their references in order, the number of map objects this call created and their stored bytes (maps
/// that existed, shared with another backup, count 0).
pub async fn save_file_maps(
    storage: &dyn Storage,
    files: &[FileEntry],
    level: i32,
) -> Result<(Vec<FileMapRef>, u64, u64), Error> {
    let saved: Vec<(FileMapRef, u64)> =
        stream::iter(filemap::runs(files).into_iter().map(|run| save_file_map(storage, &files[run], level)))
            .buffered(LOAD_CONCURRENCY)
            .try_collect()
            .await?;
    let created = saved.iter().filter(|(_, s)| *s > 0).count() as u64;
    let bytes = saved.iter().map(|(_, s)| s).sum();
    Ok((saved.into_iter().map(|(r, _)| r).collect(), created, bytes))
}

/// Save one run of entries (not empty) as a file map, create-only. Returns its reference and the stored bytes if
/// this call created it (0 if it existed).
pub async fn save_file_map(storage: &dyn Storage, run: &[FileEntry], level: i32) -> Result<(FileMapRef, u64), Error> {
    let malformed = |key, what: &str| Error::Malformed { key, source: super::wire::WireError { what: what.into() } };
    // Serialising these types cannot fail; the error is passed on rather than assumed away (no id exists yet).
    let raw = filemap::encode(run).map_err(|e| malformed(file_map_key(&ObjectId([0; 32])), &e.to_string()))?;
    let (id, stored) = save_raw(storage, &raw, file_map_key, level).await?;
    let r = filemap::reference(id, run).ok_or_else(|| malformed(file_map_key(&id), "an empty run of files"))?;
    Ok((r, stored))
}

/// Get a codec object and decode it, checking that its content is `id`.
async fn load_raw(storage: &dyn Storage, key: &Key, id: &ObjectId) -> Result<Vec<u8>, Error> {
    let object = storage.get(key).await?;
    let (header, raw) = codec::decode_vec(&object).map_err(|source| Error::Corrupt { key: key.clone(), source })?;
    check_digest(key, header.digest, id)?;
    Ok(raw)
}

fn check_digest(key: &Key, digest: codec::Digest, id: &ObjectId) -> Result<(), Error> {
    let codec::Digest::Blake3(d) = digest;
    if d != id.0 {
        return Err(Error::Corrupt {
            key: key.clone(),
            source: codec::Error::ChecksumMismatch { expected: codec::Digest::Blake3(id.0), actual: digest },
        });
    }
    Ok(())
}

/// Read frame `loc` of `pack` by range, decode and verify it. Errors: storage errors (a pack that is gone is
/// `NotFound`), [`Error::Corrupt`] naming the pack and offset when the bytes are not that frame.
pub async fn read_frame(storage: &dyn Storage, pack: &ObjectId, loc: &FrameLocation) -> Result<Vec<u8>, Error> {
    let key = pack_key(pack);
    let bytes = storage.get_range(&key, loc.offset, u64::from(loc.stored_length)).await?;
    decode_frame(&key, &bytes, loc)
}

/// Decode `bytes`, which should be frame `loc` of pack `key`, and verify it (size and blake3). Errors:
/// [`Error::Corrupt`] naming the pack and offset.
pub fn decode_frame(key: &Key, bytes: &[u8], loc: &FrameLocation) -> Result<Vec<u8>, Error> {
    decode_frame_checked(key, bytes, loc, true)
}

/// As [`decode_frame`], checking the frame's size and its header's digest against `loc` but not hashing the content
/// ([`codec::decode_vec_unverified`]): for a caller that checks each block it uses against the block's digest.
pub fn decode_frame_unverified(key: &Key, bytes: &[u8], loc: &FrameLocation) -> Result<Vec<u8>, Error> {
    decode_frame_checked(key, bytes, loc, false)
}

fn decode_frame_checked(key: &Key, bytes: &[u8], loc: &FrameLocation, verify: bool) -> Result<Vec<u8>, Error> {
    let corrupt = |source| Error::Corrupt { key: frame_key(key, loc.offset), source };
    let decoded = if verify { codec::decode_vec(bytes) } else { codec::decode_vec_unverified(bytes) };
    let (header, raw) = decoded.map_err(corrupt)?;
    check_digest(&frame_key(key, loc.offset), header.digest, &loc.id)?;
    if raw.len() != loc.raw_length as usize {
        return Err(corrupt(codec::Error::SizeMismatch {
            expected: u64::from(loc.raw_length),
            actual: raw.len() as u64,
        }));
    }
    Ok(raw)
}

/// Check `raw`, the content of frame `loc` of pack `key` decoded by [`decode_frame_unverified`], against the frame's
/// blake3. Errors: [`Error::Corrupt`] naming the pack and offset.
pub fn verify_frame(key: &Key, loc: &FrameLocation, raw: &[u8]) -> Result<(), Error> {
    check_digest(&frame_key(key, loc.offset), codec::Digest::of(raw), &loc.id)
}

/// `packs/<..>@<offset>`, for messages about one frame of a pack.
fn frame_key(pack: &Key, offset: u64) -> Key {
    Key::new(format!("{pack}@{offset}")).unwrap_or_else(|_| pack.clone())
}

/// Save `raw` (a node's or an index's binary content) create-only under the blake3 of `raw` with prefix-specific
/// `key_of`. Returns the id and the stored bytes if this call created the object (0 if it existed).
pub async fn save_raw(
    storage: &dyn Storage,
    raw: &[u8],
    key_of: fn(&ObjectId) -> Key,
    level: i32,
) -> Result<(ObjectId, u64), Error> {
    let id = ObjectId::of(raw);
    let key = key_of(&id);
    if storage.exists(&key).await? {
        // A writer killed after the object appeared may not have synced it; the backup will reference it.
        storage.make_durable(&key).await?;
        return Ok((id, 0));
    }
    let (object, _) = codec::encode_hashed(raw, codec::Digest::Blake3(id.0), level)
        .map_err(|source| Error::Corrupt { key: key.clone(), source })?;
    let stored = object.len() as u64;
    match storage.put(&key, Bytes::from(object), PutMode::Create).await {
        Ok(()) => Ok((id, stored)),
        Err(storage::Error::AlreadyExists { .. }) => Ok((id, 0)),
        Err(e) => Err(e.into()),
    }
}

/// Save a node (see [`save_raw`]).
pub async fn save_node(storage: &dyn Storage, node: &Node, level: i32) -> Result<(ObjectId, u64), Error> {
    save_raw(storage, &node.encode(), node_key, level).await
}

/// Save a pack index (see [`save_raw`]).
pub async fn save_index(storage: &dyn Storage, index: &PackIndex, level: i32) -> Result<(ObjectId, u64), Error> {
    save_raw(storage, &index.encode(), index_key, level).await
}

/// One ranged read of a pack covering several frames (docs/design/format2.md, "Reading a backup back"): bytes
/// `[start, end)` of `pack`, and the frames in it with what the caller wants done with each.
#[derive(Debug)]
pub struct RangeRead<T> {
    /// The pack.
    pub pack: ObjectId,
    /// First byte read (offset in the pack).
    pub start: u64,
    /// One past the last byte read.
    pub end: u64,
    /// The frames the read covers, by offset, each with its payload.
    pub frames: Vec<(FrameLocation, T)>,
}

impl<T> RangeRead<T> {
    /// The stored bytes of frame `loc` inside `bytes` (what [`Storage::get_range`] returned for this read), empty
    /// if the read came back short (decoding then fails and names the frame).
    pub fn slice<'a>(&self, bytes: &'a [u8], loc: &FrameLocation) -> &'a [u8] {
        let at = loc.offset.saturating_sub(self.start) as usize;
        bytes.get(at..at + loc.stored_length as usize).unwrap_or_default()
    }
}

/// Group frames into ranged reads: per pack, by offset, a frame less than `gap` bytes after the previous read's
/// end joins it while the read stays within `max` bytes. Pure.
pub fn merge_reads<T>(frames: Vec<(ObjectId, FrameLocation, T)>, gap: u64, max: u64) -> Vec<RangeRead<T>> {
    let mut frames = frames;
    frames.sort_by_key(|(pack, loc, _)| (*pack, loc.offset));
    let mut reads: Vec<RangeRead<T>> = Vec::new();
    for (pack, loc, payload) in frames {
        let end = loc.offset + u64::from(loc.stored_length);
        match reads.last_mut() {
            Some(r) if r.pack == pack && loc.offset.saturating_sub(r.end) < gap && end - r.start <= max => {
                r.end = r.end.max(end);
                r.frames.push((loc, payload));
            }
            _ => reads.push(RangeRead { pack, start: loc.offset, end, frames: vec![(loc, payload)] }),
        }
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_id(n: u64) -> ObjectId {
        ObjectId::of(&n.to_le_bytes())
    }

    fn pack_of(pack: u64, frames: impl Iterator<Item = u64>) -> PackEntry {
        PackEntry {
            pack: frame_id(u64::MAX - pack),
            frames: frames
                .enumerate()
                .map(|(i, n)| FrameLocation {
                    id: frame_id(n),
                    offset: i as u64 * 100,
                    stored_length: 100,
                    raw_length: 1 << 20,
                })
                .collect(),
        }
    }

    #[test]
    fn issue_10_frame_index_memory_per_frame_is_bounded() {
        // 100,000 frames (100 GB of 1 MiB frames) in 100 packs: at most 80 bytes a frame. The hash map this
        // replaced took 148 bytes a frame here (2^17 buckets of a 112-byte entry and a control byte), 237 at
        // a million frames, and base-backup kept a second set of the ids: over 256 MiB for a 1 TB cluster.
        let packs: Vec<PackEntry> = (0..100).map(|p| pack_of(p, p * 1000..(p + 1) * 1000)).collect();
        let index = FrameIndex::from_entries(&packs);
        assert_eq!(index.len(), 100_000);
        let per_frame = index.heap_bytes() / index.len();
        assert!(per_frame <= 80, "{per_frame} bytes per frame");
    }

    #[test]
    fn frame_index_finds_every_frame_and_keeps_the_first_location() {
        let a = pack_of(1, [5, 3, 9].into_iter());
        let b = pack_of(2, [3, 7].into_iter());
        let mut index = FrameIndex::from_entries([&a, &b]);
        assert_eq!(index.len(), 4);
        for (n, pack) in [(5, a.pack), (3, a.pack), (9, a.pack), (7, b.pack)] {
            let (p, loc) = index.get(&frame_id(n)).expect("indexed");
            assert_eq!((*p, loc.id), (pack, frame_id(n)));
            assert!(index.contains(&frame_id(n)));
        }
        assert!(index.get(&frame_id(4)).is_none() && !index.contains(&frame_id(4)));
        let c = pack_of(3, [4, 9].into_iter());
        index.add(&c);
        assert_eq!(index.len(), 5);
        assert_eq!(index.get(&frame_id(4)).map(|(p, _)| *p), Some(c.pack));
        assert_eq!(index.get(&frame_id(9)).map(|(p, _)| *p), Some(a.pack), "an indexed frame keeps its location");
        let ids: Vec<ObjectId> = index.ids().copied().collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted, each id once");
    }
    use crate::repository::blockmap::Source;
    use crate::repository::packs::PackBuilder;
    use crate::storage::fs::FsStorage;

    #[test]
    fn reads_merge_neighbours_per_pack_up_to_a_limit() {
        let (a, b) = (ObjectId::of(b"a"), ObjectId::of(b"b"));
        let loc = |offset: u64, len: u32| FrameLocation {
            id: ObjectId::of(&offset.to_le_bytes()),
            offset,
            stored_length: len,
            raw_length: len,
        };
        let frames = vec![
            (a, loc(200, 100), 2),
            (b, loc(0, 100), 3),
            (a, loc(0, 100), 1),
            (a, loc(5000, 100), 4),
            (a, loc(5100, 100), 5),
        ];
        let reads = merge_reads(frames, 1000, 5150);
        let got: Vec<(ObjectId, u64, u64, Vec<i32>)> =
            reads.iter().map(|r| (r.pack, r.start, r.end, r.frames.iter().map(|f| f.1).collect())).collect();
        // a: 0 and 200 merge (gap 100 < 1000); 5000 is too far from 300; 5100 joins it.
        let mut want = vec![(a, 0, 300, vec![1, 2]), (a, 5000, 5200, vec![4, 5]), (b, 0, 100, vec![3])];
        want.sort_by_key(|w| (w.0, w.1));
        assert_eq!(got, want, "by pack, then offset");
        let first = reads.iter().find(|r| r.pack == a && r.start == 0).expect("read");
        assert_eq!(first.slice(&[7u8; 300], &loc(200, 100)).len(), 100);
        assert!(first.slice(&[7u8; 250], &loc(200, 100)).is_empty(), "a short read gives nothing");
    }

    #[tokio::test]
    async fn frames_nodes_and_indexes_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStorage::new(dir.path());
        let raw = vec![42u8; 20_000];
        let id = ObjectId::of(&raw);
        let (enc, _) = codec::encode_hashed(&raw, codec::Digest::Blake3(id.0), 1).expect("encode");
        let mut b = PackBuilder::default();
        b.push(ObjectId::of(b"other"), &codec::encode(&b"other"[..], 1, 5, 1).expect("enc").0, 5);
        b.push(id, &enc, raw.len() as u32);
        let (bytes, entry) = b.seal();
        s.put(&pack_key(&entry.pack), Bytes::from(bytes), PutMode::Create).await.expect("pack");
        let index = PackIndex { packs: vec![entry.clone()] };
        let (index_id, stored) = save_index(&s, &index, 1).await.expect("index");
        assert!(stored > 0);
        assert_eq!(save_index(&s, &index, 1).await.expect("again").1, 0, "an existing index is not rewritten");
        let loaded = FrameIndex::load(&s).await.expect("load");
        assert_eq!(loaded.len(), 2);
        let (pack, loc) = *loaded.get(&id).expect("indexed");
        assert_eq!(read_frame(&s, &pack, &loc).await.expect("frame"), raw);
        assert_eq!(load_index(&s, &index_id).await.expect("index"), index);

        // A location that names the wrong frame is refused, naming the pack and offset.
        let wrong = FrameLocation { id: ObjectId::of(b"nope"), ..loc };
        let e = read_frame(&s, &pack, &wrong).await.expect_err("wrong id");
        assert!(e.to_string().contains(&format!("@{}", loc.offset)), "{e}");

        let node = Node {
            block_size: 8192,
            first_block: 0,
            frames: vec![id],
            digests: vec![1, 2],
            sources: vec![Source::Whole { frame: 0, slot: 0 }, Source::Whole { frame: 0, slot: 1 }],
        };
        let (node_id, _) = save_node(&s, &node, 1).await.expect("node");
        assert_eq!(load_node(&s, &node_id).await.expect("node"), node);
        // A node stored under another node's name is refused.
        let other = ObjectId::of(b"x");
        let src = dir.path().join(node_key(&node_id).as_str());
        let dst = dir.path().join(node_key(&other).as_str());
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("dir");
        std::fs::copy(src, dst).expect("copy");
        assert!(matches!(load_node(&s, &other).await, Err(Error::Corrupt { .. })));
    }
}
