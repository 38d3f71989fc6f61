//! What a sync may take over from the last one instead of reading the repository again (docs/design/catalog.md,
//! "What a sync reads"): the backups' manifests (without their file entries), manifest digests and sizes, when
//! nothing they depend on changed; each dump's document, when its manifest object did not change.
//!
//! Invariants:
//! - Backups are taken over all together or not at all. A backup's unique size depends on every other backup
//!   (a frame or node named by two backups is unique to neither), and its missing objects on the listings of
//!   `data/` and `maps/`; so they are taken over only when the manifest objects are the ones recorded, no object
//!   under `data/`, `maps/` or `index/` recorded is gone (objects added since, such as a dump's packs and pack
//!   indexes, are allowed when every object the backups referenced was found:
//!   [`crate::verify::status::Listings::is_unchanged_since`]), and every listed backup has a row.
//! - What depends on WAL, keep marks, the cluster record or the clock (coverage, restorability, the window,
//!   retention decisions, keep status) is never taken over: the caller computes it on every sync.
//! - A stored value is used only if the digest the writing sync recorded of it still matches: a row edited by
//!   hand, or written by another backupctl, makes the sync read the repository again (and correct the row).

use std::collections::{BTreeMap, HashMap};

use super::{Catalog, Error};
use crate::codec::Digest;
use crate::repository::backup::Manifest;
use crate::storage::ObjectMeta;
use crate::verify::status::{BackupInputs, KnownBackup, Listings, Sizes};

/// The layout and meaning of [`SyncState`] (and of the values it vouches for) this build writes. A sync that finds
/// another version reads the repository in full. Change it when what a backup's stored sizes or manifest mean
/// changes.
pub const SYNC_STATE_VERSION: u32 = 1;

/// What a sync records about its inputs (`repositories.sync_state`), so that the next one can tell what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncState {
    /// [`SYNC_STATE_VERSION`] of the sync that wrote it.
    pub version: u32,
    /// What the backups' rows were computed from ([`Listings::backup_inputs`] when they were read).
    pub backup_inputs: BackupInputs,
    /// Whether, then, every object the backups referenced was found (no missing object, node, or frame): objects
    /// added since cannot change their sizes.
    pub is_complete: bool,
    /// [`backup_rows_digest`] of the values written into the backups' rows.
    pub backup_rows: String,
    /// Per dump id: its manifest object and its document as written.
    pub dumps: BTreeMap<String, DumpState>,
}

/// One dump in [`SyncState`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DumpState {
    /// [`object_identity`] of its manifest object.
    pub object: String,
    /// [`document_digest`] of the document written into its row.
    pub document: String,
}

/// One backup's row as the last sync wrote it (the columns a sync may take over).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBackup {
    /// Its id.
    pub id: String,
    /// `manifest` (`None` in rows written before schema version 4).
    pub manifest: Option<serde_json::Value>,
    /// `manifest_checksum`.
    pub manifest_checksum: String,
    /// `document -> 'sizes'`.
    pub sizes: Option<serde_json::Value>,
}

/// What the last sync stored for one repository: its [`SyncState`] and the rows not marked removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// `repositories.sync_state`: `None` if absent or not readable by this build.
    pub state: Option<SyncState>,
    /// The backups' rows.
    pub backups: Vec<StoredBackup>,
    /// The dumps' rows: id and document.
    pub dumps: Vec<(String, serde_json::Value)>,
}

impl Catalog {
    /// What the last sync stored for `repository` (read in one repeatable-read snapshot); an empty [`Stored`] when
    /// it was never synced. Errors: [`Error::Query`].
    pub fn stored(&mut self, repository: &str) -> Result<Stored, Error> {
        let target = self.target.clone();
        let q = |what: &'static str| {
            let target = target.clone();
            move |source| Error::Query { target, what, source }
        };
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(q("reading the last sync"))?;
        let Some(row) = tx
            .query_opt("select id, sync_state from backupctl.repositories where url = $1", &[&repository])
            .map_err(q("reading repositories"))?
        else {
            return Ok(Stored::default());
        };
        let (id, state): (i64, Option<serde_json::Value>) = (row.get(0), row.get(1));
        let backups = tx
            .query(
                "select id, manifest, manifest_checksum, document -> 'sizes' from backupctl.backups \
                 where repository_id = $1 and removed_at is null",
                &[&id],
            )
            .map_err(q("reading backups"))?
            .iter()
            .map(|r| StoredBackup { id: r.get(0), manifest: r.get(1), manifest_checksum: r.get(2), sizes: r.get(3) })
            .collect();
        let dumps = tx
            .query("select id, document from backupctl.dumps where repository_id = $1 and removed_at is null", &[&id])
            .map_err(q("reading dumps"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        tx.commit().map_err(q("reading the last sync"))?;
        let state = state.and_then(|s| serde_json::from_value::<SyncState>(s).ok());
        Ok(Stored { state: state.filter(|s| s.version == SYNC_STATE_VERSION), backups, dumps })
    }
}

/// The manifest as the catalog stores it (`backups.manifest`): its JSON without the file entries.
pub fn manifest_header(m: &Manifest) -> serde_json::Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("files");
    }
    v
}

/// The digest (`blake3:<hex>`) of the values a sync takes over from the backups' rows, in order: per backup its
/// manifest header ([`manifest_header`]), manifest digest and sizes.
pub fn backup_rows_digest<'a>(backups: impl IntoIterator<Item = (&'a Manifest, &'a Digest, &'a Sizes)>) -> String {
    let mut h = blake3::Hasher::new();
    for (m, digest, sizes) in backups {
        let mut text = String::new();
        canonical(&manifest_header(m), &mut text);
        text.push('\n');
        canonical(&serde_json::to_value(sizes).unwrap_or_default(), &mut text);
        h.update(format!("{text}\n{digest}\n").as_bytes());
    }
    Digest::Blake3(*h.finalize().as_bytes()).to_string()
}

/// The backups as the last sync stored them, oldest first, if they stand for the repository whose `listings`
/// were just made (see the module's invariants). `None`: they must be read.
pub fn known_backups(stored: &Stored, listings: &Listings) -> Option<Vec<KnownBackup>> {
    let state = stored.state.as_ref()?;
    let listed = listings.backup_ids();
    if stored.backups.len() != listed.len() || !listings.is_unchanged_since(&state.backup_inputs, state.is_complete) {
        return None;
    }
    let rows: HashMap<&str, &StoredBackup> = stored.backups.iter().map(|b| (b.id.as_str(), b)).collect();
    let mut known = Vec::with_capacity(listed.len());
    for id in listed {
        let row = rows.get(id.to_string().as_str())?;
        let manifest: Manifest = serde_json::from_value(row.manifest.clone()?).ok()?;
        if manifest.id != id {
            return None;
        }
        let manifest_digest: Digest = row.manifest_checksum.parse().ok()?;
        let sizes: Sizes = serde_json::from_value(row.sizes.clone()?).ok()?;
        known.push(KnownBackup { manifest, manifest_digest, sizes });
    }
    let digest = backup_rows_digest(known.iter().map(|k| (&k.manifest, &k.manifest_digest, &k.sizes)));
    (digest == state.backup_rows).then_some(known)
}

/// What identifies a stored object from its listing: its size and modification time (`<bytes> <ns since 1970>`;
/// `?` for a backend that gives no time). Manifests are written create-only, so another object under the same key
/// (deleted and written again) has another time.
pub fn object_identity(m: &ObjectMeta) -> String {
    let time = m.modified.and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok());
    match time {
        Some(t) => format!("{} {}", m.size, t.as_nanos()),
        None => format!("{} ?", m.size),
    }
}

/// The digest (`blake3:<hex>`) of a JSON document, whatever the order of its keys.
pub fn document_digest(v: &serde_json::Value) -> String {
    let mut text = String::new();
    canonical(v, &mut text);
    Digest::of(text.as_bytes()).to_string()
}

/// The document of dump `id` as the last sync stored it, if its manifest object is still the one it read
/// (`identity`, [`object_identity`]) and its row is as that sync wrote it. `None`: read the manifest.
pub fn known_dump(stored: &Stored, id: &str, identity: &str) -> Option<serde_json::Value> {
    let recorded = stored.state.as_ref()?.dumps.get(id)?;
    let (_, document) = stored.dumps.iter().find(|(d, _)| d == id)?;
    (recorded.object == identity && recorded.document == document_digest(document)).then(|| document.clone())
}

/// `v` as JSON text with every object's keys sorted (a digest's input: the same for a document built here and
/// one read back from `jsonb`, which orders keys its own way).
fn canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(id: &str) -> (Manifest, Digest, Sizes) {
        let mut m = Manifest::example();
        m.id = id.parse().expect("id");
        let sizes = Sizes { logical: 10, stored: 5, unique: Some(2), objects: 3, objects_missing: 0 };
        (m, Digest::of(id.as_bytes()), sizes)
    }

    fn meta(key: &str, secs: u64) -> ObjectMeta {
        let modified = Some(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        ObjectMeta { key: key.parse().expect("key"), size: 1, modified }
    }

    fn listings(backups: &[(Manifest, Digest, Sizes)]) -> Listings {
        Listings {
            backups: backups.iter().map(|(m, ..)| meta(m.id.manifest_key().as_str(), 10)).collect(),
            maps: vec![meta("maps/aa", 20)],
            ..Listings::default()
        }
    }

    fn stored(backups: &[(Manifest, Digest, Sizes)], listings: &Listings, is_complete: bool) -> Stored {
        let state = SyncState {
            version: SYNC_STATE_VERSION,
            backup_inputs: listings.backup_inputs(),
            is_complete,
            backup_rows: backup_rows_digest(backups.iter().map(|(m, d, s)| (m, d, s))),
            dumps: BTreeMap::new(),
        };
        let rows = backups
            .iter()
            .map(|(m, d, s)| StoredBackup {
                id: m.id.to_string(),
                manifest: Some(manifest_header(m)),
                manifest_checksum: d.to_string(),
                sizes: Some(serde_json::to_value(s).expect("sizes")),
            })
            .collect();
        Stored { state: Some(state), backups: rows, dumps: Vec::new() }
    }

    /// Issue 12: the stored backups are taken over only when the listings still hold what they were computed
    /// from, every listed backup has a row (and no other), and the rows are as written; anything else means
    /// reading them.
    #[test]
    fn issue_12_known_backups_table() {
        let all = vec![backup("20261130-000000F"), backup("20261130-010000I")];
        let now = listings(&all);
        let s = stored(&all, &now, true);
        let known = known_backups(&s, &now).expect("unchanged");
        assert_eq!(known.len(), 2);
        assert_eq!((&known[1].manifest, &known[1].manifest_digest, &known[1].sizes), (&all[1].0, &all[1].1, &all[1].2));

        let mut dumped = now.clone();
        dumped.index.push(meta("index/dd", 30));
        assert!(known_backups(&s, &dumped).is_some(), "a dump's pack index added");
        assert!(known_backups(&stored(&all, &now, false), &dumped).is_none(), "added while something was missing");
        let mut collected = now.clone();
        collected.maps.clear();
        assert!(known_backups(&s, &collected).is_none(), "a node removed");
        assert!(known_backups(&s, &listings(&all[..1])).is_none(), "a backup deleted");
        let edited = |f: &dyn Fn(&mut Stored)| {
            let mut s = s.clone();
            f(&mut s);
            known_backups(&s, &now)
        };
        assert!(edited(&|s| s.state = None).is_none(), "no state (never synced, or another version)");
        assert!(edited(&|s| s.backups[0].manifest = None).is_none(), "a row from before version 4");
        assert!(edited(&|s| s.backups[0].manifest_checksum = "x".into()).is_none(), "checksum unreadable");
        assert!(edited(&|s| s.backups[0].manifest_checksum = Digest::of(b"y").to_string()).is_none(), "edited");
        assert!(edited(&|s| s.backups[1].sizes = Some(serde_json::json!({"logical": 1}))).is_none(), "sizes");
        assert!(
            edited(&|s| {
                if let Some(v) = s.backups[1].sizes.as_mut() {
                    v["unique"] = serde_json::json!(3);
                }
            })
            .is_none(),
            "a size edited by hand"
        );
        assert!(edited(&|s| s.backups.truncate(1)).is_none(), "a row missing");
        let none = Listings::default();
        assert_eq!(known_backups(&stored(&[], &none, true), &none), Some(Vec::new()), "no backups, unchanged");
    }

    /// A dump's stored document is taken over while its manifest object and its row are as the sync recorded.
    #[test]
    fn issue_12_known_dump_table() {
        let doc =
            serde_json::json!({"id": "20261130-000000D", "label": null, "databases": [{"name": "a", "bytes": 1}]});
        let mut state = SyncState { version: SYNC_STATE_VERSION, ..SyncState::default() };
        state
            .dumps
            .insert("20261130-000000D".into(), DumpState { object: "10 5".into(), document: document_digest(&doc) });
        let s =
            Stored { state: Some(state), backups: Vec::new(), dumps: vec![("20261130-000000D".into(), doc.clone())] };
        assert_eq!(known_dump(&s, "20261130-000000D", "10 5"), Some(doc.clone()));
        assert_eq!(known_dump(&s, "20261130-000000D", "10 6"), None, "another object");
        assert_eq!(known_dump(&s, "20261130-010000D", "10 5"), None, "a new dump");
        let mut edited = s.clone();
        edited.dumps[0].1["label"] = serde_json::json!("by hand");
        assert_eq!(known_dump(&edited, "20261130-000000D", "10 5"), None, "a row edited by hand");
    }

    /// The document digest ignores key order; the manifest header leaves out the file entries.
    #[test]
    fn digests_and_headers() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b": 1, "a": [{"y": 2, "x": "é"}]}"#).expect("json");
        let b: serde_json::Value = serde_json::from_str(r#"{"a": [{"x": "é", "y": 2}], "b": 1}"#).expect("json");
        assert_eq!(document_digest(&a), document_digest(&b));
        assert_ne!(document_digest(&a), document_digest(&serde_json::json!({"b": 2})));
        let mut m = Manifest::example();
        m.files.push(crate::repository::backup::FileEntry {
            path: "base/1/2".into(),
            size: 0,
            mode: 0o600,
            mtime: 0,
            pieces: vec![],
            nodes: vec![],
        });
        let header = manifest_header(&m);
        assert!(header.get("files").is_none() && header["id"] == m.id.to_string(), "{header}");
        let back: Manifest = serde_json::from_value(header).expect("a header is a manifest");
        assert_eq!(back, Manifest { files: Vec::new(), ..m });
    }
}
