//! Logical dumps in the repository: the dump id, the dump manifest and its key (layout, pure), and loading,
//! saving and listing manifests (docs/design/dumps.md).
//!
//! ```text
//! dumps/<id>/manifest    one per complete dump, written last, create-only (codec-encoded JSON, self-checking)
//! packs/, index/         the dump's content: 1 MiB frames in packs, as base backups' (see [`super::packs`])
//! ```
//!
//! Invariants: a dump exists exactly when its manifest does; the manifest names every frame of every stream it
//! holds, in order, with its raw length, so that gc marks them (`retention::gc`) and `dump-restore` can fetch and
//! verify every byte (size and blake3 of each frame, then of the whole stream) before `pg_restore` runs.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::backup::ObjectId;
use super::packs::FRAME_RAW_MAX;
use super::store::{self, Error};
use crate::storage::{Key, Storage};

/// Prefix of the dump manifests.
pub const DUMPS_PREFIX: &str = "dumps/";

/// File name of a dump's manifest under `dumps/<id>/`.
const MANIFEST_NAME: &str = "manifest";

/// Version of the dump manifest's JSON layout this build writes and reads.
pub const DUMP_MANIFEST_FORMAT: u32 = 1;

/// A dump's id: its start time in UTC and `D`, `YYYYMMDD-HHMMSSD` (e.g. `20261201-083000D`); the `D` keeps dump
/// ids apart from base backup ids (`F`, `I`), so `backupctl delete --backup-id` can take either.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DumpId(String);

impl DumpId {
    /// The id of a dump started at `start` (any offset; rendered in UTC).
    pub fn new(start: time::OffsetDateTime) -> Self {
        let t = start.to_offset(time::UtcOffset::UTC);
        Self(format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}D",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ))
    }

    /// Key of this dump's manifest: `dumps/<id>/manifest`.
    pub fn manifest_key(&self) -> Key {
        // invariant: validated ids hold digits, '-' and 'D' only.
        Key::new(format!("{DUMPS_PREFIX}{}/{MANIFEST_NAME}", self.0)).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// `dumps/<id>/`: everything of this dump (only the manifest today).
    pub fn prefix(&self) -> String {
        format!("{DUMPS_PREFIX}{}/", self.0)
    }

    /// The id named by a manifest key, if it is one.
    pub fn from_manifest_key(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(DUMPS_PREFIX)?.strip_suffix(MANIFEST_NAME)?.strip_suffix('/')?;
        rest.parse().ok()
    }
}

impl fmt::Display for DumpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DumpId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if super::backup::is_stamped_id(s, b"D") {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!("{s:?} is not a dump id like 20261201-083000D"))
        }
    }
}

impl TryFrom<String> for DumpId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DumpId> for String {
    fn from(id: DumpId) -> String {
        id.0
    }
}

/// The `pg_dump` archive format of one database's dump (PostgreSQL docs, "pg_dump", `--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpFormat {
    /// `-Fc`: one stream, stored as the file named `""`.
    Custom,
    /// `-Fd` (with `--jobs`): a directory of files (`toc.dat`, `<dumpid>.dat`, `blob_<oid>.dat`, ...).
    Directory,
}

impl fmt::Display for DumpFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DumpFormat::Custom => "custom",
            DumpFormat::Directory => "directory",
        })
    }
}

/// One frame of a stream: its id (blake3 of its raw content) and raw length in bytes (at most 1 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameRef {
    /// The frame.
    pub id: ObjectId,
    /// Its raw length, bytes.
    pub raw_length: u32,
}

/// One stored byte stream: the custom-format archive, one file of a directory-format archive, or the globals
/// script. Its bytes are its frames' raw contents concatenated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpFile {
    /// File name inside a directory-format archive (plain name, no `/`); `""` for a single stream.
    pub name: String,
    /// The frames, in order.
    pub frames: Vec<FrameRef>,
    /// Total raw bytes (the sum of the frames' raw lengths).
    pub raw_bytes: u64,
    /// blake3 of the whole stream.
    pub blake3: ObjectId,
}

/// One database's dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpedDatabase {
    /// The database name, as `pg_database.datname` spells it.
    pub name: String,
    /// The archive format.
    pub format: DumpFormat,
    /// Its streams: one (`""`) for [`DumpFormat::Custom`], the directory's files (by name) otherwise.
    pub files: Vec<DumpFile>,
    /// Raw bytes of the archive (all files).
    pub raw_bytes: u64,
    /// Stored bytes this dump added to the repository for this database (frames already stored count 0).
    pub stored_bytes: u64,
    /// How long `pg_dump` and storing took, milliseconds.
    pub duration_ms: u64,
    /// The database's own properties, which `pg_dump` without `--create` does not carry and `dump-restore` gives
    /// a database it creates. Absent in manifests written before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<DatabaseProperties>,
}

/// A database's properties from `pg_database`, `pg_shdescription` and `pg_db_role_setting` at dump time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseProperties {
    /// Its encoding's name, `pg_encoding_to_char(encoding)` (e.g. `UTF8`, `LATIN1`).
    pub encoding: String,
    /// `datcollate` (LC_COLLATE).
    pub collate: String,
    /// `datctype` (LC_CTYPE).
    pub ctype: String,
    /// The locale provider (PostgreSQL 15 and later): `libc`, `icu` or `builtin`; absent before 15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale_provider: Option<String>,
    /// The provider's locale when it is not libc: `daticulocale` (15, 16) or `datlocale` (17 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// ICU tailoring rules, `daticurules` (16 and later), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icu_rules: Option<String>,
    /// The owner's role name.
    pub owner: String,
    /// Its own settings (`ALTER DATABASE ... SET`, `pg_db_role_setting` with `setrole = 0`), each `name=value`
    /// as PostgreSQL stores them.
    #[serde(default)]
    pub settings: Vec<String>,
    /// Its comment (`COMMENT ON DATABASE`, `shobj_description(oid, 'pg_database')`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Its privileges when they are not the defaults (`datacl` not null), one entry per grant as `aclexplode`
    /// lists them; `None`: the defaults (or a manifest written before privileges were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileges: Option<Vec<DatabaseGrant>>,
    /// Settings of roles in this database (`ALTER ROLE ... IN DATABASE ... SET`, `pg_db_role_setting` with
    /// `setrole <> 0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_settings: Vec<RoleSettings>,
}

/// One privilege on a database granted to a role or to PUBLIC (PostgreSQL docs, "Privileges"; `aclexplode`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseGrant {
    /// The role's name; `None`: PUBLIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grantee: Option<String>,
    /// `CREATE`, `TEMPORARY` or `CONNECT`.
    pub privilege: String,
    /// Granted `WITH GRANT OPTION`.
    #[serde(default)]
    pub grantable: bool,
}

/// One role's settings in a database (`ALTER ROLE role IN DATABASE db SET ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSettings {
    /// The role's name.
    pub role: String,
    /// Each `name=value` as PostgreSQL stores it.
    pub settings: Vec<String>,
}

/// A complete dump (`dumps/<id>/manifest`): what was dumped, by which tools, and where every byte is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpManifest {
    /// Layout version ([`DUMP_MANIFEST_FORMAT`]).
    pub format: u32,
    /// The dump's id.
    pub id: DumpId,
    /// Free text from `--label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When the dump started (server clock), RFC 3339.
    pub started_at: String,
    /// When the manifest was written (server clock at the end), RFC 3339.
    pub finished_at: String,
    /// The server's `server_version_num` (e.g. 150010).
    pub server_version_num: u32,
    /// The server's `pg_control` system identifier, decimal.
    pub system_identifier: String,
    /// `pg_dump --version` of the tool that wrote it (e.g. `pg_dump (PostgreSQL) 15.10`).
    pub pg_dump_version: String,
    /// The databases, in the order dumped.
    pub databases: Vec<DumpedDatabase>,
    /// `pg_dumpall --globals-only` (roles, tablespaces), if taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<DumpFile>,
    /// True if the globals script holds the roles' password hashes (`--with-role-passwords`).
    #[serde(default)]
    pub has_role_passwords: bool,
}

/// Why a dump manifest fails its own checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct InvalidDumpManifest {
    /// What is wrong, e.g. `database "a": file "toc.dat": frames hold 10 bytes, not 12`.
    pub what: String,
}

impl DumpManifest {
    /// Every frame it names (each once).
    pub fn frames(&self) -> HashSet<ObjectId> {
        self.streams().flat_map(|f| f.frames.iter().map(|r| r.id)).collect()
    }

    /// Every stream: each database's files, then the globals script.
    pub fn streams(&self) -> impl Iterator<Item = &DumpFile> {
        self.databases.iter().flat_map(|d| d.files.iter()).chain(self.globals.iter())
    }

    /// The database called `name`, if dumped.
    pub fn database(&self, name: &str) -> Option<&DumpedDatabase> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// Raw bytes of every stream.
    pub fn raw_bytes(&self) -> u64 {
        self.streams().map(|f| f.raw_bytes).sum()
    }

    /// Stored bytes this dump added.
    pub fn stored_bytes(&self) -> u64 {
        self.databases.iter().map(|d| d.stored_bytes).sum()
    }

    /// Check the manifest's own consistency: a known format, distinct non-empty database names, file names that
    /// are plain names (no `/`, not `.` or `..`) and distinct per database, a custom-format database with exactly
    /// one stream named `""`, frames of 1 to 1 MiB bytes whose lengths add up to each stream's size, database
    /// properties (when recorded) with an encoding, an owner and `name=value` settings.
    pub fn validate(&self) -> Result<(), InvalidDumpManifest> {
        let bad = |what: String| Err(InvalidDumpManifest { what });
        if self.format == 0 || self.format > DUMP_MANIFEST_FORMAT {
            return bad(format!("manifest format {} (this build reads up to {DUMP_MANIFEST_FORMAT})", self.format));
        }
        let mut names = HashSet::new();
        for d in &self.databases {
            if d.name.is_empty() || !names.insert(d.name.as_str()) {
                return bad(format!("database name {:?} is empty or repeated", d.name));
            }
            let mut files = HashSet::new();
            for f in &d.files {
                let plain = !f.name.contains('/') && f.name != "." && f.name != ".." && !f.name.contains('\0');
                let shape = match d.format {
                    DumpFormat::Custom => f.name.is_empty() && d.files.len() == 1,
                    DumpFormat::Directory => !f.name.is_empty(),
                };
                if !plain || !shape || !files.insert(f.name.as_str()) {
                    return bad(format!(
                        "database {:?}: file name {:?} is not valid for a {} dump",
                        d.name, f.name, d.format
                    ));
                }
                check_stream(f)
                    .map_err(|what| InvalidDumpManifest { what: format!("database {:?}: {what}", d.name) })?;
            }
            if d.format == DumpFormat::Custom && d.files.len() != 1 {
                return bad(format!("database {:?}: a custom-format dump has one stream", d.name));
            }
            if let Some(p) = &d.properties {
                let bad_setting = p.settings.iter().find(|s| s.split_once('=').is_none_or(|(n, _)| n.is_empty()));
                if p.encoding.is_empty() || p.owner.is_empty() || bad_setting.is_some() {
                    return bad(format!(
                        "database {:?}: properties without an encoding or owner, or setting {:?} not name=value",
                        d.name,
                        bad_setting.map_or("", String::as_str)
                    ));
                }
            }
            let sum: u64 = d.files.iter().map(|f| f.raw_bytes).sum();
            if sum != d.raw_bytes {
                return bad(format!("database {:?}: files hold {sum} bytes, not {}", d.name, d.raw_bytes));
            }
        }
        if let Some(g) = &self.globals {
            check_stream(g).map_err(|what| InvalidDumpManifest { what: format!("globals: {what}") })?;
        }
        Ok(())
    }
}

fn check_stream(f: &DumpFile) -> Result<(), String> {
    let mut sum = 0u64;
    for r in &f.frames {
        if r.raw_length == 0 || r.raw_length as usize > FRAME_RAW_MAX {
            return Err(format!("file {:?}: frame {} of {} bytes", f.name, r.id, r.raw_length));
        }
        sum += u64::from(r.raw_length);
    }
    if sum != f.raw_bytes {
        return Err(format!("file {:?}: frames hold {sum} bytes, not {}", f.name, f.raw_bytes));
    }
    Ok(())
}

/// Write a dump's manifest, create-only. False if it existed (nothing written).
pub async fn save_manifest(storage: &dyn Storage, manifest: &DumpManifest) -> Result<bool, Error> {
    store::create(storage, &manifest.id.manifest_key(), manifest).await
}

/// Load and check one dump's manifest, or `None` if the dump does not exist. Errors: storage errors, a damaged
/// object ([`Error::Corrupt`], [`Error::BadJson`]), a manifest failing [`DumpManifest::validate`] or naming
/// another id ([`Error::InvalidDump`]).
pub async fn load_manifest(storage: &dyn Storage, id: &DumpId) -> Result<Option<DumpManifest>, Error> {
    let key = id.manifest_key();
    let Some(m) = store::load::<DumpManifest>(storage, &key).await? else { return Ok(None) };
    if &m.id != id {
        let what = format!("it names dump {}", m.id);
        return Err(Error::InvalidDump { key, source: InvalidDumpManifest { what } });
    }
    m.validate().map_err(|source| Error::InvalidDump { key, source })?;
    Ok(Some(m))
}

/// The ids of every dump (every manifest), oldest first.
pub async fn dump_ids(storage: &dyn Storage) -> Result<Vec<DumpId>, Error> {
    let mut ids: Vec<DumpId> =
        storage.list(DUMPS_PREFIX).await?.iter().filter_map(|m| DumpId::from_manifest_key(m.key.as_str())).collect();
    ids.sort();
    Ok(ids)
}

/// Every dump's manifest, oldest first, and the dumps whose manifest is damaged (left out, so one bad manifest
/// does not hide the others). Storage failures are errors.
pub async fn manifests(storage: &dyn Storage) -> Result<(Vec<DumpManifest>, Vec<(DumpId, Error)>), Error> {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for id in dump_ids(storage).await? {
        match load_manifest(storage, &id).await {
            Ok(Some(m)) => good.push(m),
            Ok(None) => {}
            Err(e @ Error::Storage(_)) => return Err(e),
            Err(e) => bad.push((id, e)),
        }
    }
    Ok((good, bad))
}

#[cfg(test)]
mod tests;
