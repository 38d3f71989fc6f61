//! Base backup layout: content-addressed data objects and the manifest that makes a backup exist (pure).
//!
//! ```text
//! data/<2 hex>/<64 hex>          one object per distinct content: a chunk of a large file, or a pack of small
//!                                files; named by the blake3 of its uncompressed content, stored once
//! backups/<id>/manifest          the manifest, written last and create-only: no manifest, no backup
//! ```
//!
//! Invariants checked by [`Manifest::validate`] before a restore touches the disk: every path is relative, made of
//! plain components (no `..`, no `.`, no absolute path), files under `pg_tblspc/<oid>/` belong to a tablespace of
//! the manifest, and each file's pieces add up to its size.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use super::path::ManifestPath;
use crate::storage::Key;
use crate::wal::{Lsn, TimelineId};

/// The newest manifest format this build reads. A manifest records the oldest format that can represent it (see
/// [`Manifest::required_format`]), so that older builds keep reading the backups they can restore.
///
/// - 1: every path a JSON string.
/// - 2: a path may be `{"b64": ...}` (a name that is not UTF-8, see [`ManifestPath`]).
/// - 3: a backup of a format-2 repository (docs/design/format2.md): pieces name frames in packs, large files
///   name block-map nodes, `repository_format`, `block_size` and `pack_indexes` are set.
/// - 4: as 3, with the file entries in file maps (`file_maps`; see [`super::filemap`]) rather than in `files`.
pub const MANIFEST_FORMAT: u32 = 4;

/// Prefix of the data objects.
pub const DATA_PREFIX: &str = "data/";

/// Prefix of the backups.
pub const BACKUPS_PREFIX: &str = "backups/";

/// Name of the manifest object inside a backup's prefix.
const MANIFEST_NAME: &str = "manifest";

/// The blake3 of an object's uncompressed content: its name in the repository.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The id of `bytes`: their blake3.
    ///
    /// All-zero content of 64 KiB or more (frames of sparse or newly extended relations: 20 GB of them in
    /// `bench/scale.sh`'s large case) is hashed once per length and then recognised by a scan for zeros, which
    /// costs a fraction of hashing and stops at the first non-zero bytes of any other content.
    pub fn of(bytes: &[u8]) -> Self {
        const MIN_ZERO_LEN: usize = 64 * 1024;
        /// Lengths remembered at most (frames have a few distinct lengths: whole frames and files' tails).
        const MAX_REMEMBERED: usize = 16;
        static ZERO_IDS: std::sync::Mutex<Vec<(usize, ObjectId)>> = std::sync::Mutex::new(Vec::new());
        if bytes.len() >= MIN_ZERO_LEN
            && super::blockmap::is_zero(bytes)
            && let Ok(mut known) = ZERO_IDS.lock()
        {
            if let Some((_, id)) = known.iter().find(|(len, _)| *len == bytes.len()) {
                return *id;
            }
            let id = Self(*blake3::hash(bytes).as_bytes());
            if known.len() < MAX_REMEMBERED {
                known.push((bytes.len(), id));
            }
            return id;
        }
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Where the object is stored.
    pub fn key(&self) -> Key {
        let hex = self.to_string();
        // invariant: hex digits and '/' only.
        Key::new(format!("{DATA_PREFIX}{}/{hex}", &hex[..2])).unwrap_or_else(|e| unreachable!("object key: {e}"))
    }

    /// The id named by a data object key, if it is one.
    pub fn from_key(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(DATA_PREFIX)?;
        let (dir, hex) = rest.split_once('/')?;
        let id: ObjectId = hex.parse().ok()?;
        (hex.get(..2) == Some(dir)).then_some(id)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl FromStr for ObjectId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("{s:?} is not 64 lower-case hex digits"));
        }
        hex::decode_to_slice(s, &mut out).map_err(|e| e.to_string())?;
        Ok(Self(out))
    }
}

impl TryFrom<String> for ObjectId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ObjectId> for String {
    fn from(id: ObjectId) -> String {
        id.to_string()
    }
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    /// Every object written again: depends on nothing written before it.
    Full,
    /// Only objects the repository does not hold yet.
    Incremental,
}

impl fmt::Display for BackupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupType::Full => "full",
            BackupType::Incremental => "incremental",
        })
    }
}

impl FromStr for BackupType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(BackupType::Full),
            "incremental" => Ok(BackupType::Incremental),
            other => Err(format!("{other:?} is not full or incremental")),
        }
    }
}

/// A backup's id: its start time in UTC and its type, e.g. `20261126-083000F`; sorts by time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    /// The id of a backup of `kind` started at `start` (UTC).
    pub fn new(start: time::OffsetDateTime, kind: BackupType) -> Self {
        let t = start.to_offset(time::UtcOffset::UTC);
        let letter = if kind == BackupType::Full { 'F' } else { 'I' };
        Self(format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}{letter}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ))
    }

    /// Key of this backup's manifest.
    pub fn manifest_key(&self) -> Key {
        // invariant: validated ids hold digits, '-', 'F' and 'I' only.
        Key::new(format!("{BACKUPS_PREFIX}{}/{MANIFEST_NAME}", self.0)).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// The id named by a manifest key, if it is one.
    pub fn from_manifest_key(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(BACKUPS_PREFIX)?.strip_suffix(MANIFEST_NAME)?.strip_suffix('/')?;
        rest.parse().ok()
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True when `s` is a time-stamped id, `YYYYMMDD-HHMMSS` then one letter of `kinds` (a base backup's `F` or `I`,
/// a logical dump's `D`). Pure.
pub(crate) fn is_stamped_id(s: &str, kinds: &[u8]) -> bool {
    let b = s.as_bytes();
    b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && kinds.contains(&b[15])
}

impl FromStr for BackupId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_stamped_id(s, b"FI") {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!("{s:?} is not a backup id like 20261126-083000F"))
        }
    }
}

impl TryFrom<String> for BackupId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

/// A range of one object's uncompressed content that makes up part of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// The object.
    pub object: ObjectId,
    /// Offset in the object's uncompressed content.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// blake3 of these bytes (equal to `object` when the piece is the whole object).
    pub blake3: ObjectId,
}

/// A regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory (`pg_tblspc/<oid>/...` for tablespace files), byte for byte.
    pub path: ManifestPath,
    /// Size in bytes: the sum of the pieces' lengths.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (seconds since the epoch) when read.
    pub mtime: i64,
    /// The content, in order (empty when `nodes` are set).
    pub pieces: Vec<Piece>,
    /// Format 2, a block-mapped file: its block-map nodes in order, each covering
    /// [`NODE_BLOCKS`](super::blockmap::NODE_BLOCKS) blocks (the last one the rest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ObjectId>,
}

/// A directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Path relative to the data directory, byte for byte.
    pub path: ManifestPath,
    /// Permission bits.
    pub mode: u32,
}

/// A tablespace: `pg_tblspc/<oid>` linked to `location`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    /// The tablespace oid (the link's name in `pg_tblspc`).
    pub oid: u32,
    /// The tablespace's directory on the source: where `pg_tblspc/<oid>` led, as an absolute path with every
    /// symbolic link resolved (the link itself may be relative or lead through other links).
    pub location: ManifestPath,
}

/// Sizes and counts of one backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStats {
    /// Files in the backup.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Objects this backup wrote.
    pub objects_written: u64,
    /// Uncompressed bytes of those objects.
    pub bytes_written: u64,
    /// Compressed bytes of those objects (what the repository grew by, at most).
    pub bytes_stored: u64,
    /// Uncompressed bytes served by objects the repository already held.
    pub bytes_reused: u64,
    /// Stored bytes of the data objects this backup created (what the repository's data grew by; the manifest is
    /// not counted). Absent (0) in manifests written before it existed.
    #[serde(default)]
    pub bytes_new: u64,
    /// Stored bytes of the objects this backup wrote again with the same content (format 1's full backups
    /// rewrite every chunk); they did not make the repository grow.
    #[serde(default)]
    pub bytes_rewritten: u64,
    /// Wall time.
    pub duration_ms: u64,
}

/// Everything needed to restore one base backup; its presence in the repository is what makes the backup exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// Backup id.
    pub id: BackupId,
    /// Label given to pg_backup_start.
    pub label: String,
    /// Free text.
    pub description: Option<String>,
    /// Full or incremental.
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// When the backup started (server clock, RFC 3339 UTC).
    pub start_time: String,
    /// When it stopped (server clock, RFC 3339 UTC): a restore to a time after this can use it.
    pub stop_time: String,
    /// Start of the WAL needed (from pg_backup_start).
    #[serde(with = "lsn_text")]
    pub start_lsn: Lsn,
    /// Where the backup becomes consistent (from pg_backup_stop).
    #[serde(with = "lsn_text")]
    pub stop_lsn: Lsn,
    /// Timeline the backup was taken on.
    pub timeline: u32,
    /// First WAL segment needed.
    pub start_wal: String,
    /// Last WAL segment needed (holds the stop point).
    pub stop_wal: String,
    /// `server_version_num`.
    pub pg_version_num: u32,
    /// System identifier of the cluster.
    pub system_identifier: String,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// Chunk size used to cut large files.
    pub chunk_size: u64,
    /// The `backup_label` returned by the stop call.
    pub backup_label: String,
    /// The `tablespace_map` returned by the stop call, if any.
    pub tablespace_map: Option<String>,
    /// Tablespaces.
    pub tablespaces: Vec<Tablespace>,
    /// Directories, parents before children.
    pub directories: Vec<DirEntry>,
    /// Regular files, in listing order. In a format-4 manifest they are stored in `file_maps` (the object's
    /// `files` is empty) and put back here when the manifest is loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
    /// Sizes and counts.
    pub stats: BackupStats,
    /// The repository format the backup was written in: 1 (pieces name `data/` objects) or 2 (pieces name frames
    /// in packs, large files have block maps). Absent in format-1 manifests.
    #[serde(default = "format_one", skip_serializing_if = "is_format_one")]
    pub repository_format: u32,
    /// Format 2: the block size of block-mapped files, in bytes (PostgreSQL's `block_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Manifest format 4: the file maps holding the entries of `files`, in order. Loading the manifest
    /// (`repository::store::load_manifest`) reads them into `files`; saving it writes `files` empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_maps: Vec<super::filemap::FileMapRef>,
    /// Format 2: the pack index objects this backup wrote (where its new frames lie), in the order written: several
    /// for a large backup, which writes them as it goes (`backup::packer::packs_per_index`). Informational: readers
    /// use the union of every index object of the repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pack_indexes: Vec<ObjectId>,
    /// Page checksum verification of the relation files, when the cluster has data checksums; `None` when it has
    /// none (nothing was verified) and in manifests written before verification existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_checksums: Option<PageChecksums>,
}

fn format_one() -> u32 {
    1
}

fn is_format_one(v: &u32) -> bool {
    *v == 1
}

/// What verifying the pages of a backup's relation files found (PostgreSQL's data checksums; see
/// `crate::backup::pages`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageChecksums {
    /// Pages whose checksum was computed (all-zero pages and pages written during the backup are not counted).
    pub pages_verified: u64,
    /// Files holding pages that failed verification, also when read again, in path order.
    #[serde(default)]
    pub corrupt: Vec<CorruptPages>,
}

/// Pages of one file whose checksum does not match their content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptPages {
    /// The file (a path of [`Manifest::files`]).
    pub path: ManifestPath,
    /// Block numbers within this file, ascending (block 0 is its first page; in a relation's segment file `.N`
    /// the relation's block number is `N × blocks per segment` plus this).
    pub blocks: Vec<u32>,
}

impl CorruptPages {
    /// One line for an operator: `base/5/16384: 3 pages (blocks 3, 7, 9)`, listing at most `max` blocks.
    pub fn describe(&self, max: usize) -> String {
        let n = self.blocks.len();
        let mut list: Vec<String> = self.blocks.iter().take(max).map(u32::to_string).collect();
        if n > max {
            list.push(format!("and {} more", n - max));
        }
        let (pages, word) = if n == 1 { (String::from("1 page"), "block") } else { (format!("{n} pages"), "blocks") };
        format!("{}: {pages} ({word} {})", self.path, list.join(", "))
    }
}

impl Manifest {
    /// The files with corrupt pages this backup recorded (none when nothing was verified).
    pub fn corrupt_pages(&self) -> &[CorruptPages] {
        self.page_checksums.as_ref().map(|p| p.corrupt.as_slice()).unwrap_or_default()
    }
}

/// Why a manifest cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct InvalidManifest {
    /// What is wrong.
    pub what: String,
}

impl Manifest {
    /// The timeline the backup was taken on.
    pub fn timeline_id(&self) -> TimelineId {
        TimelineId(self.timeline)
    }

    /// The oldest manifest format that can represent this manifest (see [`MANIFEST_FORMAT`]).
    pub fn required_format(&self) -> u32 {
        let paths = self.files.iter().map(|f| &f.path).chain(self.directories.iter().map(|d| &d.path));
        let is_text = paths.chain(self.tablespaces.iter().map(|t| &t.location)).all(|p| p.to_str().is_some());
        if !self.file_maps.is_empty() {
            4
        } else if self.repository_format >= 2 {
            3
        } else if is_text {
            1
        } else {
            2
        }
    }

    /// Check the invariants in the module doc; the error names the offending entry.
    pub fn validate(&self) -> Result<(), InvalidManifest> {
        let bad = |what: String| Err(InvalidManifest { what });
        if self.format > MANIFEST_FORMAT {
            return bad(format!("manifest format {} is newer than this build reads ({MANIFEST_FORMAT})", self.format));
        }
        for d in &self.directories {
            if let Err(e) = self.check_path(&d.path) {
                return bad(format!("directory {:?}: {e}", d.path));
            }
        }
        self.validate_files(&self.files)?;
        // A format-4 manifest as stored (its entries in file maps, not read yet) has no files to check against.
        if !self.corrupt_pages().is_empty() && (!self.files.is_empty() || self.file_maps.is_empty()) {
            let files: std::collections::HashSet<&ManifestPath> = self.files.iter().map(|f| &f.path).collect();
            if let Some(c) = self.corrupt_pages().iter().find(|c| !files.contains(&c.path)) {
                return bad(format!("corrupt pages of {:?}: not a file of this backup", c.path));
            }
        }
        for t in &self.tablespaces {
            if !t.location.as_bytes().starts_with(b"/") {
                return bad(format!("tablespace {}: location {:?} is not absolute", t.oid, t.location));
            }
        }
        Ok(())
    }

    /// The checks of [`Self::validate`] on file entries `files` of this manifest (all of them, or those of some of
    /// its file maps): see [`check_entries`].
    pub fn validate_files(&self, files: &[FileEntry]) -> Result<(), InvalidManifest> {
        check_entries(files, &self.tablespaces, &self.directories, self.block_size, self.repository_format)
    }

    fn check_path(&self, path: &ManifestPath) -> Result<(), String> {
        check_path(path, &self.tablespaces, &self.directories)
    }
}

/// The checks a manifest's file entries pass (before a restore touches the disk, and before a backup saves them):
/// each path is relative and plain, under `pg_tblspc/<oid>/` only for a tablespace of `tablespaces` (or an
/// in-place one of `directories`); a block-mapped file (format 2) has the nodes its size needs and no pieces;
/// other files' pieces add up to their size. The error names the entry.
pub fn check_entries(
    files: &[FileEntry],
    tablespaces: &[Tablespace],
    directories: &[DirEntry],
    block_size: Option<u32>,
    repository_format: u32,
) -> Result<(), InvalidManifest> {
    let bad = |what: String| Err(InvalidManifest { what });
    for f in files {
        if let Err(e) = check_path(&f.path, tablespaces, directories) {
            return bad(format!("file {:?}: {e}", f.path));
        }
        if !f.nodes.is_empty() {
            let Some(block) = block_size.filter(|b| *b > 0 && repository_format >= 2) else {
                return bad(format!("file {:?}: has block-map nodes in a backup without a block size", f.path));
            };
            let blocks = f.size.div_ceil(u64::from(block));
            let nodes = blocks.div_ceil(super::blockmap::NODE_BLOCKS);
            if !f.pieces.is_empty() || f.nodes.len() as u64 != nodes {
                return bad(format!(
                    "file {:?}: {} block-map nodes for {} bytes (expected {nodes}, and no pieces)",
                    f.path,
                    f.nodes.len(),
                    f.size
                ));
            }
            continue;
        }
        let sum: u64 = f.pieces.iter().map(|p| p.length).sum();
        if sum != f.size {
            return bad(format!("file {:?}: pieces add up to {sum} bytes, not {}", f.path, f.size));
        }
    }
    Ok(())
}

fn check_path(path: &ManifestPath, tablespaces: &[Tablespace], directories: &[DirEntry]) -> Result<(), String> {
    check_relative_path(path)?;
    let parts: Vec<&[u8]> = path.components().collect();
    if parts.len() >= 3 && parts[0] == b"pg_tblspc" {
        let oid: Option<u32> = std::str::from_utf8(parts[1]).ok().and_then(|p| p.parse().ok());
        let linked = oid.is_some_and(|oid| tablespaces.iter().any(|t| t.oid == oid));
        // An in-place tablespace (allow_in_place_tablespaces), or a directory link followed by the backup, is a
        // plain directory of the data directory.
        let dir = ManifestPath::from("pg_tblspc").join(parts[1]);
        let in_place = directories.iter().any(|d| d.path == dir);
        if !linked && !in_place {
            return Err("is under pg_tblspc but names no tablespace of this backup".to_owned());
        }
    }
    Ok(())
}

/// A relative path of plain components: not empty, not absolute, no `.` or `..`, no empty component, no NUL.
pub fn check_relative_path(path: &ManifestPath) -> Result<(), String> {
    let bytes = path.as_bytes();
    if bytes.is_empty() {
        return Err("is empty".to_owned());
    }
    if bytes.starts_with(b"/") {
        return Err("is absolute".to_owned());
    }
    if bytes.contains(&0) {
        return Err("contains NUL".to_owned());
    }
    if path.components().any(|c| c.is_empty() || c == b"." || c == b"..") {
        return Err("has an empty, '.' or '..' component".to_owned());
    }
    Ok(())
}

#[cfg(test)]
impl Manifest {
    /// A manifest for unit tests: a full backup `20261130-010000F` of timeline 1 that starts and stops in segment
    /// `000000010000000000000002` (16 MiB segments), with no files. Tests set what they need with `..example()`.
    pub(crate) fn example() -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            id: BackupId("20261130-010000F".to_owned()),
            label: String::new(),
            description: None,
            backup_type: BackupType::Full,
            start_time: "2026-11-30T01:00:00Z".into(),
            stop_time: "2026-11-30T01:00:01Z".into(),
            start_lsn: Lsn(0x200_0028),
            stop_lsn: Lsn(0x200_0100),
            timeline: 1,
            start_wal: "000000010000000000000002".into(),
            stop_wal: "000000010000000000000002".into(),
            pg_version_num: 150000,
            system_identifier: "1".into(),
            wal_segment_size: 16 << 20,
            chunk_size: 1 << 20,
            backup_label: String::new(),
            tablespace_map: None,
            tablespaces: vec![],
            directories: vec![],
            files: vec![],
            stats: BackupStats::default(),
            repository_format: 1,
            block_size: None,
            pack_indexes: vec![],
            file_maps: vec![],
            page_checksums: None,
        }
    }
}

mod lsn_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::wal::Lsn;

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: the all-zero shortcut gives exactly blake3's id, per length, and never to other content.
    #[test]
    fn issue_10_zero_frame_id_is_the_hash() {
        for len in [64 * 1024, 1024 * 1024, 1024 * 1024 - 8192, 100] {
            let zero = vec![0u8; len];
            for _ in 0..2 {
                assert_eq!(ObjectId::of(&zero), ObjectId(*blake3::hash(&zero).as_bytes()), "{len}");
            }
            for at in [0, len / 2, len - 1] {
                let mut one = zero.clone();
                one[at] = 1;
                assert_eq!(ObjectId::of(&one), ObjectId(*blake3::hash(&one).as_bytes()), "{len} {at}");
                assert_ne!(ObjectId::of(&one), ObjectId::of(&zero));
            }
        }
    }

    #[test]
    fn ids_round_trip_and_keys() {
        let id = ObjectId::of(b"hello");
        let key = id.key();
        assert!(key.as_str().starts_with("data/"), "{key}");
        assert_eq!(ObjectId::from_key(key.as_str()), Some(id));
        assert_eq!(id.to_string().parse::<ObjectId>(), Ok(id));
        assert_eq!(ObjectId::from_key("data/00/ab"), None);
        assert!("ABCD".parse::<ObjectId>().is_err());

        let t = time::macros::datetime!(2026-11-26 08:30:05 +2);
        let b = BackupId::new(t, BackupType::Incremental);
        assert_eq!(b.to_string(), "20261126-063005I");
        assert_eq!(b.manifest_key().as_str(), "backups/20261126-063005I/manifest");
        assert_eq!(BackupId::from_manifest_key("backups/20261126-063005I/manifest"), Some(b.clone()));
        assert_eq!(BackupId::from_manifest_key("backups/20261126-063005I/other"), None);
        assert_eq!(b.to_string().parse::<BackupId>(), Ok(b));
        for bad in ["", "20261126-063005X", "2026112-0630055F", "../x"] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
        assert_eq!("full".parse::<BackupType>(), Ok(BackupType::Full));
        assert_eq!(BackupType::Incremental.to_string(), "incremental");
    }

    fn manifest(paths: &[&str]) -> Manifest {
        Manifest {
            id: "20261126-063005F".parse().expect("id"),
            label: "l".into(),
            start_time: "2026-11-26T06:30:05Z".into(),
            stop_time: "2026-11-26T06:30:09Z".into(),
            pg_version_num: 150004,
            tablespaces: vec![Tablespace { oid: 16384, location: "/ts".into() }],
            files: paths
                .iter()
                .map(|p| FileEntry { path: (*p).into(), size: 0, mode: 0o600, mtime: 0, pieces: vec![], nodes: vec![] })
                .collect(),
            ..Manifest::example()
        }
    }

    /// The corrupt pages a backup found: optional (manifests written before verification existed still read),
    /// kept across a round trip, and only for files of the backup.
    #[test]
    fn issue_10_corrupt_pages_in_the_manifest() {
        let old = serde_json::to_value(manifest(&["base/1/1259"])).expect("json");
        assert!(old.get("page_checksums").is_none(), "not written when nothing was verified: {old}");
        let read: Manifest = serde_json::from_value(old).expect("a manifest without the field reads");
        assert!(read.page_checksums.is_none() && read.corrupt_pages().is_empty());

        let corrupt = CorruptPages { path: "base/1/1259".into(), blocks: vec![3, 7] };
        let mut m = manifest(&["base/1/1259", "global/1262"]);
        m.page_checksums = Some(PageChecksums { pages_verified: 10, corrupt: vec![corrupt.clone()] });
        assert!(m.validate().is_ok());
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&m).expect("json")).expect("parse");
        assert_eq!(back.corrupt_pages(), std::slice::from_ref(&corrupt));
        assert_eq!(corrupt.describe(5), "base/1/1259: 2 pages (blocks 3, 7)");
        assert_eq!(corrupt.describe(1), "base/1/1259: 2 pages (blocks 3, and 1 more)");
        let one = CorruptPages { path: "global/1262".into(), blocks: vec![0] };
        assert_eq!(one.describe(5), "global/1262: 1 page (block 0)");

        m.page_checksums = Some(PageChecksums {
            pages_verified: 1,
            corrupt: vec![CorruptPages { path: "base/1/9".into(), blocks: vec![0] }],
        });
        let err = m.validate().expect_err("a path that is not a file of the backup");
        assert!(err.to_string().contains("base/1/9"), "{err}");
    }

    #[test]
    fn hostile_paths_are_refused() {
        assert!(manifest(&["base/1/1259", "pg_tblspc/16384/PG_15/5/1", "global/pg_control"]).validate().is_ok());
        let mut in_place = manifest(&["pg_tblspc/16500/PG_15/5/1"]);
        assert!(in_place.validate().is_err());
        in_place.directories.push(DirEntry { path: "pg_tblspc/16500".into(), mode: 0o700 });
        assert!(in_place.validate().is_ok(), "an in-place tablespace is a directory of the backup");
        for bad in ["/etc/passwd", "../x", "base/../../x", "base//x", "./x", "pg_tblspc/999/x", "pg_tblspc/x/y", ""] {
            assert!(manifest(&[bad]).validate().is_err(), "{bad:?} must be refused");
        }
        let mut m = manifest(&["a"]);
        m.files[0].size = 5;
        assert!(m.validate().is_err(), "pieces must add up to the size");
        let json = serde_json::to_string(&manifest(&["a"])).expect("json");
        assert!(json.contains("\"start_lsn\":\"0/2000028\""), "{json}");
        let back: Manifest = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, manifest(&["a"]));
    }

    /// Names that are not UTF-8 are kept byte for byte, need format 2, and are checked like any other path; a
    /// manifest without them is format 1, as written before.
    #[test]
    fn paths_that_are_not_utf8() {
        let mut m = manifest(&["base/1/1259"]);
        assert_eq!(m.required_format(), 1);
        let json = serde_json::to_string(&m).expect("json");
        assert!(json.contains(r#""path":"base/1/1259""#), "{json}");
        let latin1 = ManifestPath::new(b"conf.d/r\xe9glages.conf".to_vec());
        m.files.push(FileEntry { path: latin1.clone(), size: 0, mode: 0o600, mtime: 0, pieces: vec![], nodes: vec![] });
        assert_eq!(m.required_format(), 2);
        assert!(m.validate().is_ok());
        let json = serde_json::to_string(&m).expect("json");
        assert!(json.contains(r#"{"b64":"#), "{json}");
        let back: Manifest = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.files[1].path, latin1);
        for bad in [&b"../\xff"[..], b"/\xff", b"a/\xff/../b", b"a\0\xff", b"pg_tblspc/\xff/x"] {
            let mut m = manifest(&[]);
            m.files.push(FileEntry {
                path: ManifestPath::new(bad),
                size: 0,
                mode: 0o600,
                mtime: 0,
                pieces: vec![],
                nodes: vec![],
            });
            let err = m.validate().expect_err("refused");
            assert!(err.to_string().contains("\\xff"), "named escaped: {err}");
        }
    }
}
