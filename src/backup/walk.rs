//! List what a base backup copies from the data directory and its tablespaces, skipping what PostgreSQL's
//! documentation says to skip ("Making a Base Backup Using the Low Level API").
//!
//! Invariants:
//! - Directories whose contents are skipped (`pg_wal`, `pg_replslot`, ...) are still listed, so a restore recreates
//!   them empty; `pg_wal/archive_status` too.
//! - Entries that vanish while the tree is read are left out, not errors (the server keeps running).
//! - Symbolic links are never followed except `pg_tblspc/<oid>` (a tablespace, listed under its link's path) and
//!   regular files (copied as files); `pg_wal` as a link is listed as a directory.

use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::repository::backup::{DirEntry, Tablespace};

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
    pub rel: String,
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

/// List `data_dir`.
pub fn list(data_dir: &Path) -> std::io::Result<Listing> {
    let mut out = Listing::default();
    walk_dir(data_dir, "", &mut out)?;
    Ok(out)
}

fn walk_dir(dir: &Path, rel: &str, out: &mut Listing) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound && !rel.is_empty() => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // Names that are not UTF-8 are not PostgreSQL's; they are listed lossily and then vanish (skipped).
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let unlogged: Vec<String> = unlogged_relations(&names).into_iter().map(str::to_owned).collect();
    let unlogged: Vec<&str> = unlogged.iter().map(String::as_str).collect();
    for name in names {
        let child_rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        if is_skipped(rel, &name, &unlogged) {
            continue;
        }
        let path = dir.join(&name);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            if rel == "pg_tblspc" {
                let Ok(oid) = name.parse::<u32>() else { continue };
                let location = std::fs::read_link(&path)?;
                out.tablespaces.push(Tablespace { oid, location: location.to_string_lossy().into_owned() });
                walk_dir(&path, &child_rel, out)?;
                continue;
            }
            let target = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if target.is_file() {
                push_file(out, child_rel, path, &target);
            } else if target.is_dir() {
                if !(rel.is_empty() && name == "pg_wal") {
                    tracing::warn!(path = %path.display(), "directory symlink copied as an empty directory");
                }
                push_dir(out, &child_rel, &target, rel.is_empty() && name == "pg_wal");
            }
            continue;
        }
        if ft.is_dir() {
            let content_skipped = rel.is_empty() && CONTENT_SKIPPED_DIRS.contains(&name.as_str());
            push_dir(out, &child_rel, &meta, rel.is_empty() && name == "pg_wal");
            if !content_skipped {
                walk_dir(&path, &child_rel, out)?;
            }
        } else if ft.is_file() {
            push_file(out, child_rel, path, &meta);
        }
        // Sockets, fifos and devices are not part of a cluster's data.
    }
    Ok(())
}

fn push_dir(out: &mut Listing, rel: &str, meta: &std::fs::Metadata, is_pg_wal: bool) {
    let mode = meta.permissions().mode() & 0o7777;
    out.directories.push(DirEntry { path: rel.to_owned(), mode });
    if is_pg_wal {
        out.directories.push(DirEntry { path: format!("{rel}/archive_status"), mode });
    }
}

fn push_file(out: &mut Listing, rel: String, abs: PathBuf, meta: &std::fs::Metadata) {
    out.files.push(SourceFile {
        rel,
        abs,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
        mtime: meta.mtime(),
    });
}

fn is_skipped(parent_rel: &str, name: &str, unlogged: &[&str]) -> bool {
    if parent_rel.is_empty() && SKIPPED_ROOT_FILES.contains(&name) {
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
fn unlogged_relations(names: &[String]) -> Vec<&str> {
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
        let names: Vec<String> = ["16390", "16390_init", "16390_fsm", "16390.1", "16391"].map(String::from).to_vec();
        let unlogged = unlogged_relations(&names);
        assert_eq!(unlogged, vec!["16390"]);
        assert!(is_skipped("base/5", "16390", &unlogged));
        assert!(is_skipped("base/5", "16390.1", &unlogged));
        assert!(is_skipped("base/5", "16390_fsm", &unlogged));
        assert!(!is_skipped("base/5", "16390_init", &unlogged));
        assert!(!is_skipped("base/5", "16391", &unlogged));
        assert!(is_skipped("", "postmaster.pid", &[]));
        assert!(!is_skipped("base/5", "postmaster.pid", &[]));
        assert!(is_skipped("base", "pgsql_tmp", &[]));
        assert!(is_skipped("global", "pg_internal.init", &[]));
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
        let files: Vec<&str> = l.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(
            files,
            vec!["PG_VERSION", "base/5/1259", "global/pg_control", "pg_tblspc/16399/PG_15_202209061/5/16400"]
        );
        let dirs: Vec<&str> = l.directories.iter().map(|d| d.path.as_str()).collect();
        for want in ["pg_wal", "pg_wal/archive_status", "pg_replslot", "pg_stat_tmp", "pg_tblspc/16399/PG_15_202209061"]
        {
            assert!(dirs.contains(&want), "{want} missing from {dirs:?}");
        }
        assert!(!dirs.contains(&"pg_replslot/slot"), "{dirs:?}");
        assert_eq!(l.tablespaces.len(), 1);
        assert_eq!(l.tablespaces[0].oid, 16399);
    }
}
