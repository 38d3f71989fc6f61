//! Packs and pack indexes (repository format 2, docs/design/format2.md). Pure.
//!
//! ```text
//! packs/<2 hex>/<64 hex>    a pack: codec-encoded frames one after another, named by the blake3 of its bytes
//! index/<2 hex>/<64 hex>    a pack index (codec-encoded), named by the blake3 of its raw content
//! ```
//!
//! A frame is an ordinary codec object (64-byte self-checking header with raw size and blake3, then zstd) of up to
//! [`FRAME_RAW_MAX`] raw bytes, named by the blake3 of its raw content (its [`ObjectId`]). A ranged read of one
//! frame is verified on its own by [`crate::codec::decode`]; nothing else in a pack needs to be read.
//!
//! Index binary layout (little-endian, see [`super::wire`]): magic `BKPIDX01`, pack count u32, then per pack:
//! pack id (32 bytes), frame count u32, and per frame: frame id (32 bytes), offset u64, stored length u32, raw
//! length u32. [`PackIndex::decode`] checks that each pack's frames lie one after another from offset 0 without
//! overlapping.

use super::backup::ObjectId;
use super::wire::{Reader, WireError, Writer};
use super::{content_key, id_from_key};
use crate::storage::Key;

/// Most raw bytes in one frame: 1 MiB.
pub const FRAME_RAW_MAX: usize = 1 << 20;

/// Prefix of the packs.
pub const PACKS_PREFIX: &str = "packs/";

/// Prefix of the pack indexes.
pub const INDEX_PREFIX: &str = "index/";

const MAGIC: &[u8; 8] = b"BKPIDX01";

/// Where pack `id` is stored.
pub fn pack_key(id: &ObjectId) -> Key {
    content_key(PACKS_PREFIX, id)
}

/// The pack named by `key`, if it is one.
pub fn pack_from_key(key: &str) -> Option<ObjectId> {
    id_from_key(PACKS_PREFIX, key)
}

/// Where pack index `id` is stored.
pub fn index_key(id: &ObjectId) -> Key {
    content_key(INDEX_PREFIX, id)
}

/// The pack index named by `key`, if it is one.
pub fn index_from_key(key: &str) -> Option<ObjectId> {
    id_from_key(INDEX_PREFIX, key)
}

/// Where one frame lies in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLocation {
    /// The frame (blake3 of its raw content).
    pub id: ObjectId,
    /// Offset of its header in the pack, in bytes.
    pub offset: u64,
    /// Stored length (header and compressed body), in bytes.
    pub stored_length: u32,
    /// Raw (decoded) length, in bytes.
    pub raw_length: u32,
}

/// The frames of one pack, in pack order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackEntry {
    /// The pack (blake3 of its bytes).
    pub pack: ObjectId,
    /// Its frames.
    pub frames: Vec<FrameLocation>,
}

/// A pack index object: where the frames of some packs lie.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackIndex {
    /// The packs.
    pub packs: Vec<PackEntry>,
}

impl PackIndex {
    /// Encode to the binary layout in the module doc.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(MAGIC);
        w.u32(self.packs.len() as u32);
        for p in &self.packs {
            w.id(&p.pack.0);
            w.u32(p.frames.len() as u32);
            for f in &p.frames {
                w.id(&f.id.0);
                w.u64(f.offset);
                w.u32(f.stored_length);
                w.u32(f.raw_length);
            }
        }
        w.out
    }

    /// Decode and check (module doc).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes, MAGIC, "pack index")?;
        let npacks = r.count(36, "packs")?;
        let mut packs = Vec::with_capacity(npacks);
        for _ in 0..npacks {
            let pack = ObjectId(r.id("pack id")?);
            let nframes = r.count(48, "frames")?;
            let mut frames = Vec::with_capacity(nframes);
            let mut end = 0u64;
            for _ in 0..nframes {
                let f = FrameLocation {
                    id: ObjectId(r.id("frame id")?),
                    offset: r.u64("frame offset")?,
                    stored_length: r.u32("frame length")?,
                    raw_length: r.u32("frame length")?,
                };
                if f.offset != end || (f.stored_length as usize) < crate::codec::HEADER_LEN {
                    return Err(WireError {
                        what: format!(
                            "pack {pack}: frame {} at offset {} does not follow the previous one",
                            f.id, f.offset
                        ),
                    });
                }
                end = f.offset + u64::from(f.stored_length);
                frames.push(f);
            }
            packs.push(PackEntry { pack, frames });
        }
        r.finish()?;
        Ok(Self { packs })
    }
}

/// Collects encoded frames into a pack until it is big enough to store.
#[derive(Debug, Default)]
pub struct PackBuilder {
    bytes: Vec<u8>,
    frames: Vec<FrameLocation>,
}

impl PackBuilder {
    /// Append one encoded frame (a codec object) whose raw content is named `id` and is `raw_length` bytes.
    pub fn push(&mut self, id: ObjectId, encoded: &[u8], raw_length: u32) {
        self.frames.push(FrameLocation {
            id,
            offset: self.bytes.len() as u64,
            stored_length: encoded.len() as u32,
            raw_length,
        });
        self.bytes.extend_from_slice(encoded);
    }

    /// Stored bytes so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True if no frame was pushed.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The pack's bytes and its index entry (the pack is named by the blake3 of its bytes).
    pub fn seal(self) -> (Vec<u8>, PackEntry) {
        let pack = ObjectId::of(&self.bytes);
        (self.bytes, PackEntry { pack, frames: self.frames })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn pack_frames_are_readable_by_range_and_the_index_round_trips() {
        let mut b = PackBuilder::default();
        let raws: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 5000 + usize::from(i)]).collect();
        for raw in &raws {
            let id = ObjectId::of(raw);
            let (enc, _) = codec::encode_hashed(raw, codec::Digest::Blake3(id.0), 3).expect("encode");
            b.push(id, &enc, raw.len() as u32);
        }
        let (bytes, entry) = b.seal();
        assert_eq!(entry.pack, ObjectId::of(&bytes));
        for (f, raw) in entry.frames.iter().zip(&raws) {
            let slice = &bytes[f.offset as usize..(f.offset + u64::from(f.stored_length)) as usize];
            let mut out = Vec::new();
            let h = codec::decode(slice, &mut out).expect("a frame decodes on its own");
            assert_eq!((&out, h.raw_size), (raw, u64::from(f.raw_length)));
        }
        let index = PackIndex { packs: vec![entry.clone()] };
        assert_eq!(PackIndex::decode(&index.encode()), Ok(index));
        let mut gap = entry;
        gap.frames[1].offset += 1;
        let bad = PackIndex { packs: vec![gap] }.encode();
        assert!(PackIndex::decode(&bad).expect_err("gap").what.contains("does not follow"));
        let id = ObjectId::of(b"x");
        assert_eq!(pack_from_key(pack_key(&id).as_str()), Some(id));
        assert_eq!(index_from_key(index_key(&id).as_str()), Some(id));
        assert_eq!(pack_from_key(index_key(&id).as_str()), None);
    }
}
