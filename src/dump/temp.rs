//! Local temporary directories of `dump --jobs N` and `dump-restore`, in `[dump] temp_dir` (or the system's).
//!
//! Each is named `backupctl-<kind>-<pid>-<random>` (`tempfile`'s builder) and has mode 0700 whatever the umask and removed when its owner
//! is done. A process killed with `kill -9` cannot remove its own: so before creating one, a dump or dump-restore
//! removes every `backupctl-dump-*` or `backupctl-dump-restore-*` directory whose pid is not a running process
//! (logging each). A directory whose pid was reused by another process is left until that one ends too: never a
//! live one removed. Without `/proc` (not Linux), nothing is removed.

use std::path::{Path, PathBuf};

use super::Error;

/// What a temporary directory is for: the part of its name after `backupctl-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `dump --jobs N`: pg_dump's directory-format output.
    Dump,
    /// `dump-restore`: the fetched and verified streams.
    Restore,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Dump => "backupctl-dump-",
            Kind::Restore => "backupctl-dump-restore-",
        }
    }
}

/// The pid in the name of a temporary directory of a dump or dump-restore (`backupctl-dump-<pid>-...`,
/// `backupctl-dump-restore-<pid>-...`); `None` for any other name. Pure.
pub(super) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(Kind::Restore.prefix()).or_else(|| name.strip_prefix(Kind::Dump.prefix()))?;
    let (pid, random) = rest.split_once('-')?;
    if random.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` is running on this host (`/proc/<pid>` exists); `None` without `/proc`.
fn is_running(pid: u32) -> Option<bool> {
    Path::new("/proc/self").exists().then(|| Path::new(&format!("/proc/{pid}")).exists())
}

/// Remove the temporary directories in `base` of dumps and dump-restores whose process is gone; returns them.
/// One that cannot be removed is a warning, never a failure.
pub(super) fn remove_stale(base: &Path) -> Vec<PathBuf> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir(base) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else { continue };
        if pid == me || is_running(pid) != Some(false) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), pid, "removed the temporary directory of a dump or dump-restore that ended without removing it (killed?)");
                removed.push(path);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), pid, error = %e, "cannot remove the temporary directory of a dump or dump-restore that is gone")
            }
        }
    }
    removed
}

/// A new temporary directory for `kind` under `configured` or the system's temporary directory, after removing
/// the stale ones there ([`remove_stale`]).
pub(super) fn create(configured: Option<&Path>, kind: Kind) -> Result<tempfile::TempDir, crate::Error> {
    let base = configured.map_or_else(std::env::temp_dir, Path::to_path_buf);
    remove_stale(&base);
    // tempfile creates directories with the default mode (0777 less the umask, 0755 usually): the streams in it
    // are a whole database, uncompressed, so only the user running backupctl may enter it.
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&format!("{}{}-", kind.prefix(), std::process::id()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|source| Error::Io { path: base, source }.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump-restore's directory holds a whole database: nobody else may enter it (it was 0755 before).
    #[test]
    fn issue_12_temp_dirs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().expect("base");
        for kind in [Kind::Dump, Kind::Restore] {
            let dir = create(Some(base.path()), kind).expect("create");
            let mode = std::fs::metadata(dir.path()).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{kind:?}: {mode:o}");
        }
    }

    #[test]
    fn issue_12_temp_dir_names_carry_the_pid() {
        assert_eq!(owner_pid("backupctl-dump-4242-AbC123"), Some(4242));
        assert_eq!(owner_pid("backupctl-dump-restore-17-x"), Some(17));
        for other in
            ["backupctl-dump-AbC123", "backupctl-dump-12-", "backupctl-dump-restore-x1-y", "tmp.x", "backupctl-dump-"]
        {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    /// A dump killed with kill -9 left its directory: the next one removes it, and leaves a live process's
    /// directory and anything else alone.
    #[test]
    fn issue_12_stale_temp_dirs_are_removed() {
        let base = tempfile::tempdir().expect("tempdir");
        // A pid that is gone: a child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let gone = child.id();
        child.wait().expect("wait");
        let stale = base.path().join(format!("backupctl-dump-restore-{gone}-abc"));
        std::fs::create_dir_all(stale.join("db")).expect("mkdir");
        std::fs::write(stale.join("db/toc.dat"), b"x").expect("write");
        let live = create(Some(base.path()), Kind::Dump).expect("create");
        let name = live.path().file_name().and_then(|n| n.to_str()).expect("name").to_owned();
        assert_eq!(owner_pid(&name), Some(std::process::id()), "{name}");
        let parent = base.path().join(format!("backupctl-dump-{}-def", std::os::unix::process::parent_id()));
        let unrelated = base.path().join("backupctl-dump-notapid");
        std::fs::create_dir(&parent).expect("mkdir");
        std::fs::create_dir(&unrelated).expect("mkdir");
        assert!(!stale.exists(), "the stale directory was removed when a new one was made");
        std::fs::create_dir(&stale).expect("mkdir");
        assert_eq!(remove_stale(base.path()), vec![stale.clone()]);
        assert!(live.path().exists() && parent.exists() && unrelated.exists());
    }
}
