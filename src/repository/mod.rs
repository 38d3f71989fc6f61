//! Repository layout: which key holds what. Pure; [`store`] does the I/O.
//!
//! ```text
//! backupctl.json                               descriptor: format version (create-only)
//! cluster.json                                 the one cluster this repository belongs to (create-only)
//! wal/<timeline><log>/<segment>                WAL segments, 16 hex digit directory per 4 GiB of WAL
//! wal/<timeline><log>/<segment>.partial        partial segments
//! wal/<timeline><log>/<segment>.<off>.backup   backup history files
//! wal/timelines/<timeline>.history             timeline history files
//! data/<2 hex>/<blake3>                         format 1: base backup content, once per distinct content
//! packs/<2 hex>/<blake3>                        format 2: frames of base backup content (see [`packs`])
//! index/<2 hex>/<blake3>                        format 2: where each frame lies (see [`packs`])
//! maps/<2 hex>/<blake3>                         format 2: block-map nodes (see [`blockmap`]), file maps (see [`filemap`])
//! backups/<id>/manifest                        one per base backup, written last (see [`backup`])
//! dumps/<id>/manifest                          one per logical dump, written last (see [`dump`])
//! backups/<id>/keep/<time>                     keep marks (see `retention::keep`)
//! locks/<kind>-<token>                         leases of running base-backups, restores and gc (see [`lease`])
//! ```
//! Every object is in the [`crate::codec`] format. Nothing is ever overwritten with different content.

pub mod backup;
pub mod blockmap;
pub mod dump;
pub mod filemap;
pub mod lease;
pub mod packs;
pub mod packstore;
pub mod path;
pub mod store;
pub mod wal_index;
pub mod wire;

use serde::{Deserialize, Serialize};

use crate::storage::Key;
use crate::wal::WalFileName;

/// The newest repository format this build reads and writes: 1 (one object per chunk, `data/`) or 2 (packs,
/// block maps and page deltas; docs/design/format2.md).
pub const FORMAT_VERSION: u32 = 2;

/// The format of a repository created when `[repository] format` is not set.
pub const NEW_REPOSITORY_FORMAT: u32 = 2;

/// Key of the repository descriptor.
pub fn descriptor_key() -> Key {
    fixed_key("backupctl.json")
}

/// Key of the cluster identity record.
pub fn cluster_key() -> Key {
    fixed_key("cluster.json")
}

/// `<prefix><2 hex>/<64 hex>`: where a content-addressed object of format 2 is stored.
fn content_key(prefix: &str, id: &backup::ObjectId) -> Key {
    let hex = id.to_string();
    // invariant: a fixed prefix, hex digits and '/' only.
    Key::new(format!("{prefix}{}/{hex}", &hex[..2])).unwrap_or_else(|e| unreachable!("content key: {e}"))
}

/// The id in a key made by [`content_key`] with `prefix`, if it is one.
fn id_from_key(prefix: &str, key: &str) -> Option<backup::ObjectId> {
    let (dir, hex) = key.strip_prefix(prefix)?.split_once('/')?;
    let id: backup::ObjectId = hex.parse().ok()?;
    (hex.get(..2) == Some(dir)).then_some(id)
}

fn fixed_key(s: &'static str) -> Key {
    // invariant: the literal is a valid key (covered by tests).
    Key::new(s).unwrap_or_else(|_| unreachable!("static key {s} is valid"))
}

/// Key of an archived WAL file.
pub fn wal_key(name: &WalFileName) -> Key {
    let key = match name {
        WalFileName::History(_) => format!("wal/timelines/{name}"),
        other => {
            let s = other.to_string();
            format!("wal/{}/{s}", &s[0..16])
        }
    };
    // invariant: WalFileName renders only hex digits, '.', and fixed suffixes.
    Key::new(key).unwrap_or_else(|e| unreachable!("wal key is valid: {e}"))
}

/// Decode an archived timeline history file (a codec object, [`crate::codec`]) of timeline `tli` and parse it as
/// PostgreSQL writes it ([`crate::wal::TimelineHistory::parse`]). Errors: why it is not one, as text.
pub fn decode_history(tli: crate::wal::TimelineId, object: &[u8]) -> Result<crate::wal::TimelineHistory, String> {
    let mut text = Vec::new();
    crate::codec::decode(object, &mut text).map_err(|e| e.to_string())?;
    crate::wal::TimelineHistory::parse(tli, &String::from_utf8_lossy(&text))
}

/// The repository descriptor (`backupctl.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Layout format version.
    pub format: u32,
    /// The program that created the repository.
    pub created_by: String,
    /// When, RFC 3339.
    pub created_at: String,
}

/// The cluster the repository belongs to (`cluster.json`), from the first segment it received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// `pg_control` system identifier, as a decimal string (as `pg_controldata` prints it).
    pub system_identifier: String,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// PostgreSQL major version (from the WAL page magic).
    pub pg_version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(descriptor_key().as_str(), "backupctl.json");
        assert_eq!(cluster_key().as_str(), "cluster.json");
        let cases = [
            ("000000010000000A000000FF", "wal/000000010000000A/000000010000000A000000FF"),
            ("000000010000000A000000FF.partial", "wal/000000010000000A/000000010000000A000000FF.partial"),
            (
                "000000010000000A000000FF.00000028.backup",
                "wal/000000010000000A/000000010000000A000000FF.00000028.backup",
            ),
            ("00000002.history", "wal/timelines/00000002.history"),
        ];
        for (name, key) in cases {
            assert_eq!(wal_key(&name.parse().expect(name)).as_str(), key);
        }
    }
}
