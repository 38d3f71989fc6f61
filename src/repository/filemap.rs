//! File maps (manifest format 4; docs/design/format2.md, "File lists"): a backup's file entries, cut into runs
//! stored as content-addressed objects under `maps/`, beside the block-map nodes. Pure; the I/O is in
//! [`super::packstore`].
//!
//! Invariants:
//! - A map holds a run of consecutive entries of the listing (walk order), at most [`MAX_ENTRIES`]. A run ends
//!   after an entry whose path hashes to a multiple of [`CUT_EVERY`] (content-defined), so adding or removing a
//!   file changes the map it falls in and not the ones after it: the maps of an unchanged part of the cluster
//!   keep their names and are shared by every backup that has them, as unchanged nodes are.
//! - A map object is the magic [`MAGIC`] followed by the entries as JSON (the manifest's own encoding of
//!   [`FileEntry`]), in the codec's self-checking form, named by the blake3 of that content.
//! - The manifest names its maps in order with the first path, entry count and bytes of each
//!   ([`FileMapRef`]); a loaded map must agree with its reference.

use serde::{Deserialize, Serialize};

use super::backup::{FileEntry, ManifestPath, ObjectId};
use super::blockmap::MAPS_PREFIX;
use super::content_key;
use super::wire::WireError;
use crate::storage::Key;

/// A run ends after an entry whose path's blake3, read as a little-endian `u64`, is a multiple of this: runs are
/// about this many entries long on average (a map of 512 small files is about 25 KB stored).
pub const CUT_EVERY: u64 = 512;

/// The most entries in one map, whatever the paths.
pub const MAX_ENTRIES: usize = 4096;

/// First bytes of a map's content (a block-map node starts with `BKMAPN01`).
pub const MAGIC: &[u8; 8] = b"BKFMAP01";

/// The manifest's reference to one file map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMapRef {
    /// The map object (`maps/<2 hex>/<64 hex>`).
    pub id: ObjectId,
    /// Path of its first entry.
    pub first_path: ManifestPath,
    /// Number of entries.
    pub files: u64,
    /// Sum of the entries' sizes, bytes.
    pub bytes: u64,
}

/// Key of a file map (the same prefix as block-map nodes: `maps/`).
pub fn file_map_key(id: &ObjectId) -> Key {
    content_key(MAPS_PREFIX, id)
}

/// Whether a run ends after an entry with this path.
pub fn is_cut(path: &ManifestPath) -> bool {
    let h = blake3::hash(path.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b) % CUT_EVERY == 0
}

/// Cut `files` into runs: the index ranges of the maps, in order (none for no files).
pub fn runs(files: &[FileEntry]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, f) in files.iter().enumerate() {
        if is_cut(&f.path) || i + 1 - start >= MAX_ENTRIES {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < files.len() {
        out.push(start..files.len());
    }
    out
}

/// The content of a map of `files` ([`MAGIC`] then JSON). Errors only if serialisation fails (it cannot for these
/// types; the error is passed on rather than assumed away).
pub fn encode(files: &[FileEntry]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = MAGIC.to_vec();
    serde_json::to_writer(&mut out, files)?;
    Ok(out)
}

/// The entries of a map's content, checked against the manifest's reference `r` (count, first path, bytes).
pub fn decode(raw: &[u8], r: &FileMapRef) -> Result<Vec<FileEntry>, WireError> {
    let bad = |what: String| WireError { what };
    let json = raw
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| bad("not a file map (its first bytes are not BKFMAP01)".into()))?;
    let files: Vec<FileEntry> = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    match files.first() {
        Some(first) if files.len() as u64 == r.files && first.path == r.first_path && bytes == r.bytes => Ok(files),
        first => Err(bad(format!(
            "{} entries of {bytes} bytes from {:?}; the manifest says {} entries of {} bytes from {:?}",
            files.len(),
            first.map(|f| f.path.to_string()).unwrap_or_default(),
            r.files,
            r.bytes,
            r.first_path.to_string()
        ))),
    }
}

/// The reference to a map of `files` whose content has id `id`. `files` must not be empty.
pub fn reference(id: ObjectId, files: &[FileEntry]) -> Option<FileMapRef> {
    Some(FileMapRef {
        id,
        first_path: files.first()?.path.clone(),
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.size).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: String) -> FileEntry {
        FileEntry {
            path: ManifestPath::from(path.as_str()),
            size: 8192,
            mode: 0o600,
            mtime: 1,
            pieces: vec![],
            nodes: vec![],
        }
    }

    fn maps(files: &[FileEntry]) -> Vec<ObjectId> {
        runs(files).into_iter().map(|r| ObjectId::of(&encode(&files[r]).expect("encode"))).collect()
    }

    /// Runs cover every entry once, in order, none longer than MAX_ENTRIES; adding a file changes one map only.
    #[test]
    fn issue_10_a_new_file_changes_one_map() {
        let files: Vec<FileEntry> = (0..20_000).map(|i| entry(format!("base/5/{}", 100_000 + i * 2))).collect();
        let rs = runs(&files);
        assert_eq!(rs.first().map(|r| r.start), Some(0));
        assert_eq!(rs.last().map(|r| r.end), Some(files.len()));
        assert!(rs.windows(2).all(|w| w[0].end == w[1].start), "contiguous");
        assert!(rs.iter().all(|r| !r.is_empty() && r.len() <= MAX_ENTRIES));
        assert!(rs.len() > 10 && rs.len() < 200, "about {CUT_EVERY} entries per run: {} runs", rs.len());

        let before = maps(&files);
        let mut more = files.clone();
        more.insert(10_001, entry("base/5/120001".into()));
        let after = maps(&more);
        let old: std::collections::HashSet<_> = before.iter().collect();
        let changed = after.iter().filter(|id| !old.contains(id)).count();
        assert_eq!(changed, 1, "one new map for one new file ({} maps)", after.len());
        assert_eq!(after.len(), before.len(), "no boundary moved");
    }

    #[test]
    fn decode_checks_the_reference() {
        let files: Vec<FileEntry> = (0..3).map(|i| entry(format!("global/{i}"))).collect();
        let raw = encode(&files).expect("encode");
        let r = reference(ObjectId::of(&raw), &files).expect("not empty");
        assert_eq!(decode(&raw, &r).expect("decode"), files);
        let short = FileMapRef { files: 2, ..r.clone() };
        assert!(decode(&raw, &short).expect_err("count").to_string().contains("3 entries"));
        assert!(decode(&raw[1..], &r).is_err(), "magic");
        assert!(decode(b"BKMAPN01xxxx", &r).is_err(), "a node is not a file map");
        assert!(reference(r.id, &[]).is_none());
    }
}
