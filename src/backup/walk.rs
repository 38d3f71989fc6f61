//! List what a base backup copies from the data directory and its tablespaces, skipping what PostgreSQL's
//! documentation says to skip ("Making a Base Backup Using the Low Level API").
//!
//! Invariants:
//! - Directories whose contents are skipped (`pg_wal`, `pg_replslot`, ...) are still listed, so a restore recreates
//!   them empty; `pg_wal/archive_status` too.
//! - Entries that vanish while the tree is read are left out, not errors (the server keeps running). Any other
//!   error names the exact entry that failed.
//! - Names are bytes: every name is listed exactly as the file system spells it, UTF-8 or not.
//! - Every symbolic link is followed, as PostgreSQL itself follows it when it opens a path: a link to a directory
//!   is listed as a directory holding what the link leads to (restored as a real directory), a link to a regular
//!   file as that file. `pg_tblspc/<oid>` links are tablespaces (absolute or relative, through other links): their
//!   resolved location is recorded. A link that cannot be represented (dangling, leading back to a directory that
//!   contains it, part of a loop of links, or leading to something that is neither a directory nor a regular file)
//!   fails the listing naming the link, before any data is copied.
//! - `lost+found` (a file-system artefact, never PostgreSQL's) is skipped at the root of the data directory, of a
//!   tablespace and of a linked directory's target: the places a file system can be mounted.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

mod links;

pub use links::LinkProblem;
use links::{follow, kind, link_error};

use crate::Error;
use crate::repository::backup::{DirEntry, ManifestPath, Tablespace};
use crate::repository::path::{Escaped, is_file_system_artefact};

/// Root-level directories listed without their contents.
const CONTENT_SKIPPED_DIRS: [&str; 8] =
    ["pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans"];

/// Root-level files never copied: the running server's, the old exclusive-backup files (the stop call returns the
/// real ones), and signal files (the restore writes its own).
const SKIPPED_ROOT_FILES: [&str; 10] = [
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "recovery.signal",
    "standby.signal",
];

/// A regular file to copy.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path in the manifest (relative to the data directory).
    pub rel: ManifestPath,
    /// Where to read it.
    pub abs: PathBuf,
    /// Size when listed.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds.
    pub mtime: i64,
}

/// The listing.
#[derive(Debug, Default)]
pub struct Listing {
    /// Directories, parents first.
    pub directories: Vec<DirEntry>,
    /// Files.
    pub files: Vec<SourceFile>,
    /// Tablespaces found under `pg_tblspc`.
    pub tablespaces: Vec<Tablespace>,
}

/// List `data_dir`. Errors: [`Error::ReadSource`] naming the entry that could not be read, [`Error::SourceLink`]
/// naming a link that cannot be backed up.
pub fn list(data_dir: &Path) -> Result<Listing, Error> {
    let mut files = Vec::new();
    let mut out = visit(data_dir, &mut |item| {
        item.warn_skipped();
        if let Item::File(f) = item {
            files.push(f);
        }
        Ok(())
    })?;
    out.files = files;
    Ok(out)
}

/// One thing the walk found. More kinds may be added (special files were), so matches outside this crate need a
/// wildcard arm.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Item {
    /// A regular file to copy.
    File(SourceFile),
    /// A directory (before anything in it).
    Dir(DirEntry),
    /// A tablespace under `pg_tblspc` (before anything in it).
    Tablespace(Tablespace),
    /// A socket, FIFO or device (not behind a link), which is not backed up: PostgreSQL's own base backup skips
    /// these too ("skipping special file", src/backend/backup/basebackup.c). The caller that copies warns
    /// ([`Item::warn_skipped`]), once per backup.
    Special {
        /// Where it is.
        path: PathBuf,
        /// "socket", "FIFO", "block device", "character device" or "special file".
        kind: &'static str,
    },
}

impl Item {
    /// Log the warning for an [`Item::Special`] (nothing for the other items).
    pub fn warn_skipped(&self) {
        if let Item::Special { path, kind } = self {
            tracing::warn!(path = %Escaped(path), kind = *kind, "skipping special file");
        }
    }
}

/// Walk `data_dir` as [`list`] does, passing each item to `found` as it is found instead of keeping it, in walk
/// order: each directory's names in byte order, depth first, so files come in [`walk_order`]. Returns the
/// directories and tablespaces (`files` is left empty). Errors: as [`list`], and whatever `found` returns (which
/// stops the walk).
pub fn visit(data_dir: &Path, found: &mut dyn FnMut(Item) -> Result<(), Error>) -> Result<Listing, Error> {
    // The data directory and every directory above it: a link leading to any of them is a cycle, named at once.
    let canonical = std::fs::canonicalize(data_dir).map_err(|e| read_error(data_dir, e))?;
    let mut ancestors = Vec::new();
    for dir in canonical.ancestors() {
        let meta = std::fs::metadata(dir).map_err(|e| read_error(dir, e))?;
        ancestors.insert(0, (meta.dev(), meta.ino()));
    }
    let tablespace_dir = tablespace_version_dir(data_dir);
    let mut walker = Walker { out: Listing::default(), ancestors, found, tablespace_dir };
    walker.walk_dir(data_dir, &ManifestPath::default(), true)?;
    Ok(walker.out)
}

/// This cluster's directory in a tablespace's directory, PostgreSQL's TABLESPACE_VERSION_DIRECTORY
/// (`PG_<major>_<catalog version>`, src/include/catalog/catalog.h): the major from `PG_VERSION`, the catalog
/// version from `global/pg_control` (`catalog_version_no`, a native-endian uint32 at byte 12 of ControlFileData
/// in every version, src/include/catalog/pg_control.h). `None` if either cannot be read.
fn tablespace_version_dir(data_dir: &Path) -> Option<OsString> {
    let major = std::fs::read_to_string(data_dir.join("PG_VERSION")).ok()?;
    let control = std::fs::read(data_dir.join("global/pg_control")).ok()?;
    let catalog = u32::from_ne_bytes(*control.get(12..16)?.first_chunk::<4>()?);
    Some(format!("PG_{}_{catalog}", major.trim()).into())
}

/// The order in which the walk yields files: manifest paths compared component by component, each component by
/// its bytes (`base/1/2` before `base/1-x`, although `/` sorts after `-` as a byte).
pub fn walk_order(a: &ManifestPath, b: &ManifestPath) -> std::cmp::Ordering {
    a.components().cmp(b.components())
}

fn read_error(path: &Path, source: std::io::Error) -> Error {
    Error::ReadSource { path: path.to_path_buf(), source }
}

struct Walker<'a> {
    out: Listing,
    /// Receives each item as it is found.
    found: &'a mut dyn FnMut(Item) -> Result<(), Error>,
    /// (device, inode) of the directories from the data directory down to the one being read, links resolved.
    ancestors: Vec<(u64, u64)>,
    /// This cluster's directory in each tablespace's directory ([`tablespace_version_dir`]); `None` if unknown,
    /// and then the whole tablespace directory is copied.
    tablespace_dir: Option<OsString>,
}

impl Walker<'_> {
    /// List `dir` (manifest path `rel`); `is_mount_root` where a file system may be mounted (see the module doc).
    fn walk_dir(&mut self, dir: &Path, rel: &ManifestPath, is_mount_root: bool) -> Result<(), Error> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound && !rel.is_empty() => return Ok(()),
            Err(e) => return Err(read_error(dir, e)),
        };
        let mut names: Vec<OsString> = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => names.push(e.file_name()),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(read_error(dir, e)),
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let text_names: Vec<&str> = names.iter().filter_map(|n| n.to_str()).collect();
        let unlogged = unlogged_relations(&text_names);
        let is_tblspc = *rel == "pg_tblspc";
        let is_tablespace_dir = rel
            .as_bytes()
            .strip_prefix(b"pg_tblspc/")
            .is_some_and(|o| !o.is_empty() && o.iter().all(u8::is_ascii_digit));
        // Only the cluster's own directory of a tablespace's directory, if it is there (if not, all of it: never
        // less than PostgreSQL may need).
        let own = self.tablespace_dir.clone().filter(|own| is_tablespace_dir && names.contains(own));
        if is_tablespace_dir && own.is_none() && !names.is_empty() {
            tracing::warn!(
                path = %Escaped(dir),
                expected = ?self.tablespace_dir,
                "a tablespace directory without this cluster's version directory: copying all of it"
            );
        }
        for name in &names {
            let bytes = name.as_bytes();
            let child_rel = rel.join(bytes);
            let path = dir.join(name);
            if own.as_ref().is_some_and(|own| own != name) {
                // Another cluster's (another major's, beside this one after pg_upgrade) or not PostgreSQL's:
                // pg_basebackup copies only the cluster's own directory too (sendTablespace in basebackup.c).
                tracing::info!(path = %Escaped(&path), "not this cluster's directory in a tablespace: not backed up");
                continue;
            }
            if is_skipped(rel.is_empty(), bytes, &unlogged) {
                continue;
            }
            if is_mount_root && is_file_system_artefact(name) {
                tracing::debug!(path = %Escaped(&path), "lost+found is a file-system artefact: not backed up");
                continue;
            }
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(read_error(&path, e)),
            };
            let is_pg_wal = rel.is_empty() && bytes == b"pg_wal";
            let is_content_skipped = rel.is_empty() && name.to_str().is_some_and(|n| CONTENT_SKIPPED_DIRS.contains(&n));
            // PostgreSQL's tablespace names in pg_tblspc: digits only (do_pg_backup_start in xlog.c).
            let tablespace_oid = if is_tblspc { name.to_str().and_then(|n| n.parse::<u32>().ok()) } else { None };
            let (target, is_link) = if meta.file_type().is_symlink() {
                let Some(target) = follow(&path)? else { continue };
                (target, true)
            } else {
                (meta, false)
            };
            if target.is_dir() {
                match tablespace_oid {
                    // A linked tablespace: restored as a link to its own directory again.
                    Some(oid) if is_link => {
                        let location = std::fs::canonicalize(&path).map_err(|e| read_error(&path, e))?;
                        let location = ManifestPath::from_os_str(location.as_os_str());
                        let t = Tablespace { oid, location };
                        self.out.tablespaces.push(t.clone());
                        (self.found)(Item::Tablespace(t))?;
                    }
                    _ => {
                        for d in dirs_of(&child_rel, &target, is_pg_wal) {
                            self.out.directories.push(d.clone());
                            (self.found)(Item::Dir(d))?;
                        }
                    }
                }
                if is_pg_wal || is_content_skipped {
                    continue;
                }
                if is_link {
                    self.check_cycle(&path, &target)?;
                }
                self.ancestors.push((target.dev(), target.ino()));
                self.walk_dir(&path, &child_rel, is_link || tablespace_oid.is_some())?;
                self.ancestors.pop();
            } else if target.is_file() {
                (self.found)(Item::File(source_file(child_rel, path, &target)))?;
            } else if is_link {
                let resolved = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                return Err(link_error(
                    &path,
                    LinkProblem::NotFileOrDirectory { target: resolved, kind: kind(&target) },
                ));
            } else {
                (self.found)(Item::Special { path, kind: kind(&target) })?;
            }
        }
        Ok(())
    }

    /// Refuse a directory link that leads to one of the directories it is in.
    fn check_cycle(&self, link: &Path, target: &std::fs::Metadata) -> Result<(), Error> {
        if self.ancestors.contains(&(target.dev(), target.ino())) {
            let resolved = std::fs::canonicalize(link).unwrap_or_else(|_| link.to_path_buf());
            return Err(link_error(link, LinkProblem::Cycle { target: resolved }));
        }
        Ok(())
    }
}

/// The directory `rel` (and `pg_wal/archive_status` after `pg_wal`, whose contents are not walked).
fn dirs_of(rel: &ManifestPath, meta: &std::fs::Metadata, is_pg_wal: bool) -> Vec<DirEntry> {
    let mode = meta.permissions().mode() & 0o7777;
    let mut out = vec![DirEntry { path: rel.clone(), mode }];
    if is_pg_wal {
        out.push(DirEntry { path: rel.join(b"archive_status"), mode });
    }
    out
}

fn source_file(rel: ManifestPath, abs: PathBuf, meta: &std::fs::Metadata) -> SourceFile {
    SourceFile { rel, abs, size: meta.len(), mode: meta.permissions().mode() & 0o7777, mtime: meta.mtime() }
}

/// True for what a backup leaves out; `name` is bytes (names that are not UTF-8 are never PostgreSQL's own, but
/// are only skipped under a skipped prefix).
fn is_skipped(is_root: bool, name: &[u8], unlogged: &[&str]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else { return name.starts_with(b"pgsql_tmp") };
    if is_root && SKIPPED_ROOT_FILES.contains(&name) {
        return true;
    }
    if name.starts_with("pgsql_tmp") || name == "pg_internal.init" || is_temp_relation(name) {
        return true;
    }
    // Unlogged relations: only the init fork is copied (PostgreSQL resets the rest from it at startup).
    relfilenode(name).is_some_and(|node| unlogged.contains(&node) && !name.ends_with("_init"))
}

/// `t<backend>_<relfilenode>[suffix]`: a temporary relation's file.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else { return false };
    let Some((backend, after)) = rest.split_once('_') else { return false };
    !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_digit()) && relfilenode(after).is_some()
}

/// The relfilenode of a relation file name: `<digits>`, `<digits>.<segment>` or `<digits>_<fork>[.<segment>]`.
fn relfilenode(name: &str) -> Option<&str> {
    let end = name.find(|c: char| !c.is_ascii_digit()).unwrap_or(name.len());
    let (digits, rest) = name.split_at(end);
    (!digits.is_empty() && (rest.is_empty() || rest.starts_with('.') || rest.starts_with('_'))).then_some(digits)
}

/// Relfilenodes in this directory that have an init fork (unlogged relations).
fn unlogged_relations<'a>(names: &[&'a str]) -> Vec<&'a str> {
    names.iter().filter_map(|n| n.strip_suffix("_init")).filter(|n| n.bytes().all(|b| b.is_ascii_digit())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_names() {
        assert_eq!(relfilenode("16384"), Some("16384"));
        assert_eq!(relfilenode("16384.1"), Some("16384"));
        assert_eq!(relfilenode("16384_fsm"), Some("16384"));
        assert_eq!(relfilenode("PG_VERSION"), None);
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t3_16384_fsm"));
        assert!(is_temp_relation("t12_16384.2"));
        assert!(!is_temp_relation("t_16384"));
        assert!(!is_temp_relation("tablespace_map"));
        let names = ["16390", "16390_init", "16390_fsm", "16390.1", "16391"];
        let unlogged = unlogged_relations(&names);
        assert_eq!(unlogged, vec!["16390"]);
        assert!(is_skipped(false, b"16390", &unlogged));
        assert!(is_skipped(false, b"16390.1", &unlogged));
        assert!(is_skipped(false, b"16390_fsm", &unlogged));
        assert!(!is_skipped(false, b"16390_init", &unlogged));
        assert!(!is_skipped(false, b"16391", &unlogged));
        assert!(is_skipped(true, b"postmaster.pid", &[]));
        assert!(!is_skipped(false, b"postmaster.pid", &[]));
        assert!(is_skipped(false, b"pgsql_tmp", &[]));
        assert!(is_skipped(false, b"pg_internal.init", &[]));
    }

    #[test]
    fn lists_a_data_directory_like_postgres_lays_it_out() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        for dir in ["base/5", "global", "pg_wal/archive_status", "pg_replslot/slot", "pg_tblspc", "pg_stat_tmp"] {
            std::fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        let ts = tempfile::tempdir().expect("ts");
        std::fs::create_dir_all(ts.path().join("PG_15_202209061/5")).expect("mkdir ts");
        std::fs::write(ts.path().join("PG_15_202209061/5/16400"), b"x").expect("ts file");
        std::os::unix::fs::symlink(ts.path(), root.join("pg_tblspc/16399")).expect("link");
        for f in [
            "PG_VERSION",
            "base/5/1259",
            "base/5/t3_99",
            "global/pg_control",
            "postmaster.pid",
            "pg_wal/000000010000000000000001",
            "pg_replslot/slot/state",
            "pg_stat_tmp/x",
            "backup_label",
        ] {
            std::fs::write(root.join(f), b"data").expect("write");
        }
        let l = list(root).expect("list");
        let files: Vec<String> = l.files.iter().map(|f| f.rel.to_string()).collect();
        assert_eq!(
            files,
            vec!["PG_VERSION", "base/5/1259", "global/pg_control", "pg_tblspc/16399/PG_15_202209061/5/16400"]
        );
        let dirs: Vec<String> = l.directories.iter().map(|d| d.path.to_string()).collect();
        let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        for want in ["pg_wal", "pg_wal/archive_status", "pg_replslot", "pg_stat_tmp", "pg_tblspc/16399/PG_15_202209061"]
        {
            assert!(dirs.contains(&want), "{want} missing from {dirs:?}");
        }
        assert!(!dirs.contains(&"pg_replslot/slot"), "{dirs:?}");
        assert_eq!(l.tablespaces.len(), 1);
        assert_eq!(l.tablespaces[0].oid, 16399);
    }

    /// Files come in walk order, which is not the byte order of the whole paths (`a/b` before `a-c`), and a
    /// directory's entry comes before anything in it.
    #[test]
    fn issue_10_files_come_in_walk_order() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        for dir in ["base/1", "base/1-x", "base/10", "global"] {
            std::fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        for f in ["base/1/2", "base/1/10", "base/1-x/1", "base/10/1", "base/1.5", "global/a", "PG_VERSION"] {
            std::fs::write(root.join(f), b"x").expect("write");
        }
        let mut seen = Vec::new();
        let out = visit(root, &mut |item| {
            seen.push(match item {
                Item::File(f) => format!("f {}", f.rel),
                Item::Dir(d) => format!("d {}", d.path),
                Item::Tablespace(t) => format!("t {}", t.oid),
                Item::Special { path, kind } => format!("s {} {kind}", path.display()),
            });
            Ok(())
        })
        .expect("visit");
        assert!(out.files.is_empty());
        let files: Vec<&str> = seen.iter().filter_map(|s| s.strip_prefix("f ")).collect();
        assert_eq!(files, ["PG_VERSION", "base/1/10", "base/1/2", "base/1-x/1", "base/1.5", "base/10/1", "global/a"]);
        let l = list(root).expect("list");
        assert!(l.files.windows(2).all(|w| walk_order(&w[0].rel, &w[1].rel).is_lt()), "sorted by walk_order");
        let byte_order = |a: &str, b: &str| a.as_bytes() < b.as_bytes();
        assert!(!byte_order("base/1/2", "base/1-x/1"), "walk order is not the paths' byte order");
        let at = |p: &str| seen.iter().position(|s| s == p).unwrap_or(usize::MAX);
        assert!(at("d base/1") < at("f base/1/10"), "{seen:?}");
    }
}
