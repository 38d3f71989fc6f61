//! Block-map nodes (repository format 2, docs/design/format2.md): where each block of one range of a large file
//! is stored, with the digest of its content. Pure.
//!
//! ```text
//! maps/<2 hex>/<64 hex>     a node: blocks [n × NODE_BLOCKS, (n + 1) × NODE_BLOCKS) of a file, codec-encoded,
//!                           named by the blake3 of its raw (binary) content
//! ```
//!
//! Invariants checked by [`Node::decode`]: every frame index names an entry of the frame table and there is
//! exactly one source per block. A delta names its base as a slot of a frame of whole blocks, never another delta,
//! so a block needs at most two frames (the writer guarantees it). That a slot lies inside its frame is checked
//! when the frame is read (its raw length is known then).
//!
//! Binary layout (little-endian, see [`super::wire`]): magic `BKMAPN01`, `block_size` u32, `first_block` u64,
//! block count u32, frame count u32, frame ids (32 bytes each), digests (u64 each), source count u32, then the
//! sources: tag 0 = whole run (`frame` u32, `slot` u32, `count` u32: blocks taking consecutive slots of one frame),
//! tag 1 = delta (`base_frame`, `base_slot`, `delta_frame`, `delta_slot`, u32 each: one block).

use super::backup::ObjectId;
use super::wire::{Reader, WireError, Writer};
use super::{content_key, id_from_key};
use crate::storage::Key;

/// Blocks per node: 16,384 blocks of 8 KiB are 128 MiB of a file.
pub const NODE_BLOCKS: u64 = 16_384;

/// Prefix of the node objects.
pub const MAPS_PREFIX: &str = "maps/";

const MAGIC: &[u8; 8] = b"BKMAPN01";

/// The 8-byte digest of a block: the first 8 bytes of its blake3, little-endian. Used to tell whether a block
/// changed since the previous backup; what is stored is verified with the frame's full blake3.
///
/// An all-zero block of 8 KiB (PostgreSQL's `BLCKSZ` default; sparse and new relation pages) is common enough,
/// 20 GB of a sparse table in `bench/scale.sh`, that its digest is computed once: checking for zeros costs a
/// fraction of hashing, and stops at the first non-zero byte of any other block.
pub fn block_digest(block: &[u8]) -> u64 {
    const ZERO_LEN: usize = 8192;
    static ZERO_DIGEST: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    if block.len() == ZERO_LEN && is_zero(block) {
        return *ZERO_DIGEST.get_or_init(|| hash_digest(&[0u8; ZERO_LEN]));
    }
    hash_digest(block)
}

fn hash_digest(block: &[u8]) -> u64 {
    let h = blake3::hash(block);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Whether every byte of `bytes` is zero, 16 bytes at a time; stops at the first non-zero 16 bytes.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let chunks = bytes.chunks_exact(16);
    let rest = chunks.remainder();
    chunks.map(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16]))).all(|w| w == 0) && rest.iter().all(|b| *b == 0)
}

/// Where one block's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Bytes `[slot × block_size, +block_size)` of the raw content of frame `frame` (an index into
    /// [`Node::frames`]); the last block of a file may be shorter.
    Whole {
        /// Frame table index.
        frame: u32,
        /// Block slot inside the frame.
        slot: u32,
    },
    /// The XOR of a whole block (the base) and a block of a delta frame.
    Delta {
        /// Frame table index of the base.
        base_frame: u32,
        /// Slot of the base block.
        base_slot: u32,
        /// Frame table index of the delta.
        delta_frame: u32,
        /// Slot of the delta block.
        delta_slot: u32,
    },
}

/// A block-map node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Block size in bytes (8192 unless PostgreSQL was built otherwise).
    pub block_size: u32,
    /// Number of the node's first block in the file.
    pub first_block: u64,
    /// The frames the sources name, each once.
    pub frames: Vec<ObjectId>,
    /// Per block, its digest ([`block_digest`]).
    pub digests: Vec<u64>,
    /// Per block, its source.
    pub sources: Vec<Source>,
}

/// A node's name.
pub fn node_key(id: &ObjectId) -> Key {
    content_key(MAPS_PREFIX, id)
}

/// The id named by a node key, if it is one.
pub fn node_from_key(key: &str) -> Option<ObjectId> {
    id_from_key(MAPS_PREFIX, key)
}

impl Node {
    /// Encode to the binary layout in the module doc.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(MAGIC);
        w.u32(self.block_size);
        w.u64(self.first_block);
        w.u32(self.digests.len() as u32);
        w.u32(self.frames.len() as u32);
        for f in &self.frames {
            w.id(&f.0);
        }
        for d in &self.digests {
            w.u64(*d);
        }
        let runs = runs(&self.sources);
        w.u32(runs.len() as u32);
        for r in runs {
            match r {
                (Source::Whole { frame, slot }, count) => {
                    w.u8(0);
                    w.u32(frame);
                    w.u32(slot);
                    w.u32(count);
                }
                (Source::Delta { base_frame, base_slot, delta_frame, delta_slot }, _) => {
                    w.u8(1);
                    w.u32(base_frame);
                    w.u32(base_slot);
                    w.u32(delta_frame);
                    w.u32(delta_slot);
                }
            }
        }
        w.out
    }

    /// Decode and check (module doc). Errors name what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes, MAGIC, "block-map node")?;
        let block_size = r.u32("block size")?;
        let first_block = r.u64("first block")?;
        let blocks = r.u32("block count")? as usize;
        let nframes = r.count(32, "frame table")?;
        let mut frames = Vec::with_capacity(nframes);
        for _ in 0..nframes {
            frames.push(ObjectId(r.id("frame table")?));
        }
        if blocks.saturating_mul(8) > bytes.len() {
            return Err(WireError { what: format!("{blocks} digests do not fit in the object") });
        }
        let mut digests = Vec::with_capacity(blocks);
        for _ in 0..blocks {
            digests.push(r.u64("digests")?);
        }
        let nruns = r.count(13, "sources")?;
        let mut sources = Vec::with_capacity(blocks);
        let bad = |what: String| WireError { what };
        let frame = |i: u32| {
            if (i as usize) < frames.len() {
                Ok(i)
            } else {
                Err(bad(format!("a source names frame {i} of a table of {}", frames.len())))
            }
        };
        for _ in 0..nruns {
            match r.u8("source tag")? {
                0 => {
                    let f = frame(r.u32("whole run")?)?;
                    let slot = r.u32("whole run")?;
                    let count = r.u32("whole run")?;
                    if sources.len() + count as usize > blocks || slot.checked_add(count).is_none() {
                        return Err(bad(format!("a run of {count} blocks passes the node's {blocks} blocks")));
                    }
                    sources.extend((0..count).map(|i| Source::Whole { frame: f, slot: slot + i }));
                }
                1 => {
                    let base_frame = frame(r.u32("delta")?)?;
                    let base_slot = r.u32("delta")?;
                    let delta_frame = frame(r.u32("delta")?)?;
                    let delta_slot = r.u32("delta")?;
                    if sources.len() >= blocks {
                        return Err(bad(format!("more sources than the node's {blocks} blocks")));
                    }
                    sources.push(Source::Delta { base_frame, base_slot, delta_frame, delta_slot });
                }
                t => return Err(bad(format!("unknown source tag {t}"))),
            }
        }
        if sources.len() != blocks {
            return Err(bad(format!("{} sources for {blocks} blocks", sources.len())));
        }
        r.finish()?;
        if block_size == 0 || !block_size.is_power_of_two() {
            return Err(bad(format!("block size {block_size} is not a power of two")));
        }
        Ok(Self { block_size, first_block, frames, digests, sources })
    }
}

/// Sources grouped into runs: consecutive whole blocks in consecutive slots of one frame become one run; each
/// delta is its own.
fn runs(sources: &[Source]) -> Vec<(Source, u32)> {
    let mut out: Vec<(Source, u32)> = Vec::new();
    for s in sources {
        if let (Source::Whole { frame, slot }, Some((Source::Whole { frame: f0, slot: s0 }, n))) = (s, out.last_mut())
            && *frame == *f0
            && *slot == *s0 + *n
        {
            *n += 1;
            continue;
        }
        out.push((*s, 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The all-zero shortcut gives exactly the digest hashing gives, and only to all-zero 8 KiB blocks.
    #[test]
    fn issue_10_zero_block_digest_is_the_hash() {
        let zero = vec![0u8; 8192];
        assert!(is_zero(&zero));
        assert_eq!(block_digest(&zero), hash_digest(&zero));
        for at in [0, 15, 16, 4096, 8191] {
            let mut one = zero.clone();
            one[at] = 1;
            assert!(!is_zero(&one), "{at}");
            assert_eq!(block_digest(&one), hash_digest(&one), "{at}");
            assert_ne!(block_digest(&one), block_digest(&zero), "{at}");
        }
        assert_eq!(block_digest(&zero[..100]), hash_digest(&zero[..100]));
        assert!(is_zero(&zero[..100]) && !is_zero(&[0, 0, 7]));
    }

    fn node() -> Node {
        let whole = |frame, slot| Source::Whole { frame, slot };
        Node {
            block_size: 8192,
            first_block: NODE_BLOCKS,
            frames: vec![ObjectId::of(b"a"), ObjectId::of(b"b"), ObjectId::of(b"c")],
            digests: (0..6).map(|i| block_digest(&[i as u8; 8192])).collect(),
            sources: vec![
                whole(0, 0),
                whole(0, 1),
                whole(0, 2),
                Source::Delta { base_frame: 0, base_slot: 3, delta_frame: 2, delta_slot: 0 },
                whole(1, 7),
                whole(0, 5),
            ],
        }
    }

    #[test]
    fn round_trip_with_runs() {
        let n = node();
        let bytes = n.encode();
        assert_eq!(Node::decode(&bytes), Ok(n.clone()));
        assert_eq!(runs(&n.sources).len(), 4, "three consecutive slots of frame 0 are one run");
        let id = ObjectId::of(&bytes);
        assert_eq!(node_from_key(node_key(&id).as_str()), Some(id));
        assert_eq!(node_from_key("data/00/11"), None);
    }

    #[test]
    fn corrupt_nodes_are_refused() {
        let bytes = node().encode();
        for cut in [0, 7, 8, 30, bytes.len() - 1] {
            assert!(Node::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Node::decode(&long).is_err());
        let mut bad_frame = node();
        bad_frame.sources[4] = Source::Whole { frame: 9, slot: 0 };
        let e = Node::decode(&bad_frame.encode()).expect_err("frame 9");
        assert!(e.what.contains("frame 9 of a table of 3"), "{e}");
        let mut short = node();
        short.digests.push(1);
        assert!(Node::decode(&short.encode()).expect_err("6 sources for 7").what.contains("6 sources for 7 blocks"));
    }
}
