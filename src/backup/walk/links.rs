//! Symbolic links met by the walk: what one leads to, and why one cannot be backed up (see the parent module doc).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::repository::path::Escaped;

/// Why a symbolic link cannot be backed up.
#[derive(Debug, thiserror::Error)]
pub enum LinkProblem {
    /// Its target does not exist.
    #[error("it points to {}, which does not exist", Escaped(target))]
    Dangling {
        /// What the link says.
        target: PathBuf,
    },
    /// It leads to a directory that contains it: following it would never end.
    #[error("it leads to {}, a directory that contains it", Escaped(target))]
    Cycle {
        /// Where it leads, resolved.
        target: PathBuf,
    },
    /// It is part of a loop of links (ELOOP).
    #[error("it is part of a loop of symbolic links (too many levels of symbolic links)")]
    Loop,
    /// It leads to a socket, FIFO or device.
    #[error("it leads to {}, a {kind}, not a directory or a regular file", Escaped(target))]
    NotFileOrDirectory {
        /// Where it leads, resolved.
        target: PathBuf,
        /// What is there.
        kind: &'static str,
    },
}

pub(super) fn link_error(link: &Path, problem: LinkProblem) -> Error {
    Error::SourceLink { link: link.to_path_buf(), problem }
}

/// What the link at `path` leads to; `None` if the link itself vanished.
pub(super) fn follow(path: &Path) -> Result<Option<std::fs::Metadata>, Error> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(link_error(path, LinkProblem::Loop)),
        Err(e) if e.kind() == ErrorKind::NotFound => match std::fs::read_link(path) {
            Ok(target) => Err(link_error(path, LinkProblem::Dangling { target })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(super::read_error(path, e)),
        },
        Err(e) => Err(super::read_error(path, e)),
    }
}

/// A name for what is neither a directory nor a regular file.
pub(super) fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::super::{Listing, list};
    use super::*;

    fn mkdirs(root: &Path, dirs: &[&str]) {
        for dir in dirs {
            std::fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
    }

    fn rel_files(l: &Listing) -> Vec<String> {
        l.files.iter().map(|f| f.rel.to_string()).collect()
    }

    /// Every kind of link PostgreSQL follows is listed as what it leads to; lost+found is skipped where a file
    /// system can be mounted; names that are not UTF-8 are listed byte for byte.
    #[test]
    fn follows_links_of_every_kind() {
        use std::os::unix::fs::symlink;
        let top = tempfile::tempdir().expect("tempdir");
        let (root, other) = (top.path().join("data"), top.path().join("other"));
        mkdirs(
            &root,
            &["base/5", "global", "pg_tblspc/16500/PG_15_1/5", "pg_logical", "lost+found", "base/lost+found"],
        );
        mkdirs(&other, &["xact", "mx", "ts/PG_15_1/5", "ts/lost+found", "db5/lost+found", "wal", "snap"]);
        for (f, content) in [
            ("other/xact/0000", "x"),
            ("other/mx/m", "m"),
            ("other/ts/PG_15_1/5/1", "t"),
            ("other/db5/2", "d"),
            ("other/wal/000000010000000000000001", "w"),
            ("other/ident", "i"),
            ("other/snap/s", "s"),
            ("data/pg_tblspc/16500/PG_15_1/5/3", "p"),
            ("data/base/lost+found/kept", "k"),
        ] {
            std::fs::write(top.path().join(f), content).expect("write");
        }
        std::fs::write(root.join("base/5").join(std::ffi::OsStr::from_bytes(b"r\xe9glages")), b"l").expect("write");
        symlink(other.join("xact"), root.join("pg_xact")).expect("absolute");
        symlink("../other/mx", root.join("pg_multixact")).expect("relative");
        symlink(other.join("ts"), other.join("ts-link")).expect("link");
        symlink("../../other/ts-link", root.join("pg_tblspc/16399")).expect("relative tablespace through a link");
        symlink(other.join("db5"), other.join("ts/PG_15_1/6")).expect("nested in a tablespace");
        symlink("../../other/snap", root.join("pg_logical/snapshots")).expect("nested");
        symlink(other.join("wal"), root.join("pg_wal")).expect("pg_wal");
        symlink(other.join("ident"), root.join("pg_ident.conf")).expect("file");
        // Its contents are skipped, so a link to a directory above the data directory is no cycle.
        symlink(top.path(), root.join("pg_replslot")).expect("pg_replslot");

        let l = list(&root).expect("list");
        assert_eq!(
            rel_files(&l),
            vec![
                "base/5/r\\xe9glages",
                "base/lost+found/kept",
                "pg_ident.conf",
                "pg_logical/snapshots/s",
                "pg_multixact/m",
                "pg_tblspc/16399/PG_15_1/5/1",
                "pg_tblspc/16399/PG_15_1/6/2",
                "pg_tblspc/16500/PG_15_1/5/3",
                "pg_xact/0000",
            ]
        );
        assert_eq!(l.files[0].rel.as_bytes(), b"base/5/r\xe9glages");
        let dirs: Vec<String> = l.directories.iter().map(|d| d.path.to_string()).collect();
        for want in [
            "pg_xact",
            "pg_multixact",
            "pg_wal",
            "pg_wal/archive_status",
            "pg_tblspc/16500",
            "pg_logical/snapshots",
            "pg_replslot",
        ] {
            assert!(dirs.iter().any(|d| d == want), "{want} missing from {dirs:?}");
        }
        assert!(!dirs.iter().any(|d| d.contains("lost+found") && !d.starts_with("base/")), "{dirs:?}");
        assert!(!dirs.iter().any(|d| d == "pg_tblspc/16399"), "a linked tablespace is not a directory: {dirs:?}");
        let location = std::fs::canonicalize(other.join("ts")).expect("canonical");
        assert_eq!(l.tablespaces.len(), 1);
        assert_eq!((l.tablespaces[0].oid, l.tablespaces[0].location.as_path()), (16399, location.as_path()));
    }

    /// Links that cannot be represented fail the listing, naming the link.
    #[test]
    fn refuses_links_it_cannot_follow() {
        use std::os::unix::fs::symlink;
        let top = tempfile::tempdir().expect("tempdir");
        let root = top.path().join("data");
        mkdirs(&root, &["base/5", "global"]);
        let fifo = top.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("cstring");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        for (link, target, what) in [
            ("global/dangling", top.path().join("nowhere"), "does not exist"),
            ("base/5/loop", PathBuf::from("../.."), "a directory that contains it"),
            ("base/up", PathBuf::from("../.."), "a directory that contains it"),
            ("self", root.join("self"), "loop of symbolic links"),
            ("base/fifo", fifo.clone(), "a FIFO, not a directory or a regular file"),
        ] {
            let path = root.join(link);
            symlink(&target, &path).expect("symlink");
            let err = list(&root).expect_err(link).to_string();
            assert!(err.starts_with(&format!("cannot back up symbolic link {}: ", path.display())), "{err}");
            assert!(err.contains(what), "{err}");
            std::fs::remove_file(&path).expect("rm");
        }
        // A special file that is not behind a link is skipped, as pg_basebackup does.
        std::fs::rename(&fifo, root.join("fifo")).expect("mv");
        assert_eq!(rel_files(&list(&root).expect("list")), Vec::<String>::new());
    }
}
