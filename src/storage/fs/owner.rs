//! Who may write into a local directory: a `file://` repository, the spool, or (for base-backup) who may read a
//! data directory for the archive's sake.
//!
//! Rule: a command writes into a directory only as the user who owns it. Objects, records and lock files are
//! created mode 0600, so whatever one user writes, another (PostgreSQL's `archive_command` runs as the
//! PostgreSQL OS user) can neither read nor replace: a `backupctl check` run as root once would break archiving.
//!
//! - An existing directory must be owned by the effective user.
//! - A directory that does not exist yet is created only by a user who may write into its nearest existing
//!   ancestor, and never by root: PostgreSQL never runs as root, so whatever root creates, `wal-push` could not
//!   write into.
//!
//! Readers (`status`, `pitr-restore`, `wal-fetch`) need no ownership: any user who can read the files may run
//! them, and they create nothing in the repository.
//!
//! Checked before anything is created, so a refused command leaves no file behind.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, Uid, User, access, geteuid};

/// What a directory is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A `file://` repository.
    Repository,
    /// The spool directory.
    Spool,
    /// PostgreSQL's data directory.
    DataDirectory,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Repository => "repository",
            Role::Spool => "spool",
            Role::DataDirectory => "data directory",
        })
    }
}

/// Why the effective user may not write into (or create) a directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The directory (or, for one not created yet, its nearest existing parent) belongs to another user.
    #[error("{role} {path} is owned by {owner}, not by {user} who runs this command")]
    OtherOwner {
        /// What the directory is.
        role: Role,
        /// The directory, or its nearest existing ancestor when it does not exist yet.
        path: PathBuf,
        /// The owner's user name (or uid when it has no name).
        owner: String,
        /// The effective user's name (or uid).
        user: String,
    },
    /// The directory does not exist, and the directory it would be created in belongs to another user.
    #[error(
        "{role} {path} does not exist, and {ancestor}, where it would be created, is owned by {owner}, not by {user} who runs this command"
    )]
    ParentOwner {
        /// What the directory is.
        role: Role,
        /// The directory.
        path: PathBuf,
        /// Its nearest existing ancestor.
        ancestor: PathBuf,
        /// The ancestor's owner.
        owner: String,
        /// The effective user.
        user: String,
    },
    /// Root would create it: nothing root creates is writable by the PostgreSQL OS user.
    #[error("{role} {path} does not exist and root may not create it: the PostgreSQL OS user could not write into it")]
    RootWouldCreate {
        /// What the directory is.
        role: Role,
        /// The directory.
        path: PathBuf,
    },
    /// The effective user may not create entries in the nearest existing ancestor of a directory to create.
    #[error("{role} {path} does not exist and {user} may not create it in {ancestor}, which is owned by {owner}")]
    CannotCreate {
        /// What the directory is.
        role: Role,
        /// The directory.
        path: PathBuf,
        /// Its nearest existing ancestor.
        ancestor: PathBuf,
        /// The ancestor's owner.
        owner: String,
        /// The effective user.
        user: String,
    },
    /// The directory or an ancestor could not be examined.
    #[error("cannot examine {role} {path}: {source}")]
    Io {
        /// What the directory is.
        role: Role,
        /// The path examined.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The user that should run the command instead, when one is known (for a `runuser -u USER --` hint). Never
    /// root: a directory root owns is fixed by giving it to the PostgreSQL OS user, not by running as root.
    pub fn run_as(&self) -> Option<&str> {
        match self {
            Error::OtherOwner { owner, .. } | Error::ParentOwner { owner, .. } if owner != "root" => Some(owner),
            _ => None,
        }
    }
}

/// The name of a user id, or the number when it has none.
pub fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// The effective user's name (or uid).
pub fn effective_user() -> String {
    user_name(geteuid().as_raw())
}

/// May the effective user write into `dir` (creating it if it is missing)? See the module doc for the rule.
pub fn check_writer(dir: &Path, role: Role) -> Result<(), Error> {
    check_writer_as(dir, role, geteuid().as_raw())
}

/// [`check_writer`] for the user id `euid`.
fn check_writer_as(dir: &Path, role: Role, euid: u32) -> Result<(), Error> {
    let io = |path: &Path, source| Error::Io { role, path: path.to_path_buf(), source };
    let (existing, meta) = nearest_existing(dir).map_err(|(p, e)| io(&p, e))?;
    if existing == dir {
        if meta.uid() != euid {
            return Err(Error::OtherOwner {
                role,
                path: existing,
                owner: user_name(meta.uid()),
                user: user_name(euid),
            });
        }
        return Ok(());
    }
    if euid == 0 {
        if meta.uid() != 0 {
            return Err(Error::ParentOwner {
                role,
                path: dir.to_path_buf(),
                ancestor: existing,
                owner: user_name(meta.uid()),
                user: user_name(euid),
            });
        }
        return Err(Error::RootWouldCreate { role, path: dir.to_path_buf() });
    }
    // Creating inside a directory we do not own but may write into (e.g. group-writable, or /tmp) is fine: what we
    // create is ours.
    if meta.uid() != euid && access(&existing, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
        return Err(Error::CannotCreate {
            role,
            path: dir.to_path_buf(),
            owner: user_name(meta.uid()),
            ancestor: existing,
            user: user_name(euid),
        });
    }
    Ok(())
}

/// True if `dir` exists and is owned by the effective user, or does not exist and [`check_writer`] would let the
/// effective user create it. Readers use this to decide whether to use the spool at all.
pub fn is_writable_by_caller(dir: &Path, role: Role) -> bool {
    check_writer(dir, role).is_ok()
}

/// Must the effective user own `path` (e.g. the data directory base-backup copies for wal-push's user)?
pub fn check_owner(path: &Path, role: Role) -> Result<(), Error> {
    let euid = geteuid().as_raw();
    let meta = std::fs::metadata(path).map_err(|source| Error::Io { role, path: path.to_path_buf(), source })?;
    if meta.uid() != euid {
        return Err(Error::OtherOwner {
            role,
            path: path.to_path_buf(),
            owner: user_name(meta.uid()),
            user: user_name(euid),
        });
    }
    Ok(())
}

/// `dir` itself if it exists, else its nearest existing ancestor, with its metadata (symlinks followed).
fn nearest_existing(dir: &Path) -> Result<(PathBuf, std::fs::Metadata), (PathBuf, std::io::Error)> {
    let mut p = dir;
    loop {
        match std::fs::metadata(p) {
            Ok(m) => return Ok((p.to_path_buf(), m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => return Err((p.to_path_buf(), e)),
            },
            Err(e) => return Err((p.to_path_buf(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_rule_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = std::fs::metadata(dir.path()).expect("meta").uid();
        let other = if me == 0 { 65534 } else { 0 };
        let existing = dir.path();
        let missing = dir.path().join("a/b");
        // The owner may write into an existing directory, and create one below a directory it owns (unless root).
        assert!(check_writer_as(existing, Role::Spool, me).is_ok());
        let created = check_writer_as(&missing, Role::Repository, me);
        if me == 0 {
            assert!(matches!(created, Err(Error::RootWouldCreate { .. })), "{created:?}");
        } else {
            assert!(created.is_ok(), "{created:?}");
        }
        // Another user may not write into it.
        let e = check_writer_as(existing, Role::Spool, other).expect_err("other owner");
        assert!(matches!(e, Error::OtherOwner { .. }), "{e:?}");
        // (run as the owner, unless the owner is root: see below)
        assert_eq!(e.run_as().map(str::to_owned), (me != 0).then(|| user_name(me)));
        if me == 0 {
            let theirs = tempfile::tempdir().expect("tempdir");
            nix::unistd::chown(theirs.path(), Some(Uid::from_raw(65534)), None).expect("chown");
            let e = check_writer_as(theirs.path(), Role::Repository, 0).expect_err("root in nobody's directory");
            assert_eq!(e.run_as().map(str::to_owned), Some(user_name(65534)), "{e}");
        }
        let msg = e.to_string();
        assert!(msg.contains(&user_name(me)) && msg.contains(&user_name(other)), "names both users: {msg}");
        // A directory root owns: the fix is to give it away, not to run as root.
        let e =
            Error::OtherOwner { role: Role::Spool, path: "/s".into(), owner: "root".into(), user: "postgres".into() };
        assert_eq!(e.run_as(), None);
        // Root never creates a repository or spool: in another user's directory it is told to run as that user.
        let e = check_writer_as(&missing, Role::Repository, 0).expect_err("root creates");
        if me == 0 {
            assert!(matches!(e, Error::RootWouldCreate { .. }), "{e:?}");
            assert!(e.to_string().contains("root may not create it"), "{e}");
        } else {
            assert!(matches!(e, Error::ParentOwner { .. }), "{e:?}");
            assert_eq!(e.run_as(), Some(user_name(me).as_str()));
        }
    }

    #[test]
    fn nearest_existing_walks_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, _) = nearest_existing(&dir.path().join("x/y/z")).expect("ancestor");
        assert_eq!(p, dir.path());
    }
}
