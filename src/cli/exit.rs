//! Every exit status, in one table.
//!
//! | binary    | 0                                   | 1                                 | other |
//! |-----------|-------------------------------------|-----------------------------------|-------|
//! | wal-push  | durably archived, or identical copy exists | any failure (PostgreSQL retries) | 2 = bad configuration or usage; never >= 126 (PostgreSQL would treat it as an archiver crash) |
//! | wal-fetch | `%p` written and verified           | the archive definitely lacks the file and holds nothing after it (the end of the archive) | 255 for everything else, a hole in the archive included, so that recovery stops instead of promoting early |
//! | others    | ok                                  | failure (including "no repository at URL") | 2 = bad configuration or usage |
//!
//! "Bad configuration or usage" includes running as the wrong user (a `file://` repository or spool owned by
//! another user, root creating one) and missing S3 credentials: retrying cannot fix either.
//!
//! A closed stdout (`backupctl status | head -1`) ends a program quietly with 0: the reader took what it wanted.

use std::process::ExitCode;

use crate::Error;

/// Which program is exiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `wal-push` (archive_command).
    WalPush,
    /// `wal-fetch` (restore_command).
    WalFetch,
    /// Any other binary.
    Other,
}

/// Success.
pub const OK: u8 = 0;
/// Failure (wal-fetch: file not in the archive).
pub const FAILURE: u8 = 1;
/// Bad configuration or usage.
pub const USAGE: u8 = 2;
/// wal-fetch: anything but success or "not in the archive": stops recovery.
pub const FETCH_FATAL: u8 = 255;

/// The `--help` epilogue of wal-push (and `backupctl wal-push`): its exit statuses, as in the table above.
pub const WAL_PUSH_HELP: &str = "Exit status:
  0    the file is durable in the repository, or an identical copy already was
  1    any failure: PostgreSQL keeps the file and calls again later
  2    bad configuration or usage, run as a user who does not own the repository or spool, no S3 credentials
  Never 126 or more (PostgreSQL would take it for a crash of the archiver).";

/// The `--help` epilogue of wal-fetch (and `backupctl wal-fetch`): its exit statuses, as in the table above.
pub const WAL_FETCH_HELP: &str = "Exit status:
  0    %p was written and verified
  1    the repository does not hold the file, and no WAL after it: PostgreSQL takes this as the end of the
       archive
  255  any other failure (a segment missing while later WAL is archived, storage unreachable after retries,
       a corrupt object, no repository at the URL, bad configuration or arguments): recovery stops instead
       of promoting with transactions missing";

/// The `--help` epilogue of base-backup, pitr-restore and backupctl.
pub const OTHER_HELP: &str = "Exit status: 0 success; 1 failure (the error line names what and where, a hint line \
says what to do); 2 bad configuration or usage (including no S3 credentials and, for a command that writes to a \
file:// repository or the spool, running as a user who does not own it).";

/// Make a panic end wal-fetch with [`FETCH_FATAL`] instead of Rust's 101: PostgreSQL takes any exit status up to
/// 125 from restore_command as "not in the archive" and would end recovery early, promoting with transactions
/// missing (PostgreSQL's `RestoreArchivedFile`, src/backend/access/transam/xlogarchive.c). The default hook's
/// message and backtrace still reach stderr (the server log) first.
pub fn fatal_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::exit(i32::from(FETCH_FATAL));
    }));
}

/// The exit status for a result.
pub fn code(program: Program, result: Result<(), &Error>) -> u8 {
    match (program, result) {
        (_, Ok(())) => OK,
        (Program::WalFetch, Err(e)) if e.is_not_in_archive() => FAILURE,
        (Program::WalFetch, Err(_)) => FETCH_FATAL,
        (_, Err(e)) if e.is_output_closed() => OK,
        (_, Err(e)) if e.is_usage() => USAGE,
        (_, Err(_)) => FAILURE,
    }
}

/// The same as an `ExitCode`.
pub fn exit_code(program: Program, result: Result<(), &Error>) -> ExitCode {
    ExitCode::from(code(program, result))
}

/// Exit status for a command-line parse failure (`--help`/`--version` are successes).
pub fn clap_code(program: Program, e: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => OK,
        _ if program == Program::WalFetch => FETCH_FATAL,
        _ => USAGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The help texts state the same numbers as the table.
    #[test]
    fn help_epilogues_match_the_table() {
        for (text, codes) in [
            (WAL_PUSH_HELP, &[OK, FAILURE, USAGE][..]),
            (WAL_FETCH_HELP, &[OK, FAILURE, FETCH_FATAL][..]),
            (OTHER_HELP, &[OK, FAILURE, USAGE][..]),
        ] {
            for c in codes {
                assert!(text.contains(&format!("{c} ")), "{text:?} lacks {c}");
            }
        }
    }

    /// A panic in wal-fetch must not exit 101 (PostgreSQL would take it for "not in the archive" and promote):
    /// run this test again in a child process that installs the hook and panics.
    #[test]
    fn a_panic_in_wal_fetch_exits_fatal() {
        if std::env::var_os("BACKUPCTL_TEST_PANIC_CHILD").is_some() {
            fatal_on_panic();
            panic!("deliberate panic in a child test process");
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args(["--exact", "cli::exit::tests::a_panic_in_wal_fetch_exits_fatal", "--test-threads=1", "--nocapture"])
            .env("BACKUPCTL_TEST_PANIC_CHILD", "1")
            .output()
            .expect("run child");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(i32::from(FETCH_FATAL)), "{err}");
        assert!(err.contains("deliberate panic"), "the panic message reaches stderr: {err}");
    }

    #[test]
    fn exit_code_table() {
        let not_found = Error::NotInArchive { name: "x".into(), backend: "file:///r".into() };
        let usage = Error::Usage("bad".into());
        let other = Error::Task("boom".into());
        let owner = Error::Owner(crate::storage::fs::owner::Error::RootWouldCreate {
            role: crate::storage::fs::owner::Role::Repository,
            path: "/srv/repo".into(),
        });
        let no_credentials = Error::Storage(crate::storage::Error::NoCredentials { backend: "s3://b".into() });
        let no_repository =
            Error::Repository(crate::repository::store::Error::NoRepository { backend: "file:///typo".into() });
        let hole = Error::ArchiveHole { missing: "x".into(), later: "y".into(), backend: "file:///r".into() };
        let older = Error::OlderThanArchive { missing: "x".into(), oldest: "y".into(), backend: "file:///r".into() };
        let cases: &[(Program, Option<&Error>, u8)] = &[
            (Program::WalPush, None, 0),
            (Program::WalPush, Some(&other), 1),
            (Program::WalPush, Some(&not_found), 1),
            (Program::WalPush, Some(&usage), 2),
            (Program::WalFetch, None, 0),
            (Program::WalFetch, Some(&not_found), 1),
            (Program::WalFetch, Some(&usage), 255),
            (Program::WalFetch, Some(&other), 255),
            (Program::WalFetch, Some(&hole), 255),
            (Program::WalFetch, Some(&older), 255),
            (Program::Other, Some(&hole), 1),
            (Program::Other, Some(&usage), 2),
            (Program::WalPush, Some(&owner), 2),
            (Program::Other, Some(&owner), 2),
            (Program::WalPush, Some(&no_credentials), 2),
            (Program::WalFetch, Some(&no_credentials), 255),
            (Program::Other, Some(&no_credentials), 2),
            (Program::WalFetch, Some(&no_repository), 255),
            (Program::Other, Some(&no_repository), 1),
            (Program::Other, Some(&other), 1),
        ];
        for (p, e, want) in cases {
            let got = code(*p, e.map_or(Ok(()), Err));
            assert_eq!(got, *want, "{p:?} {e:?}");
            if *p == Program::WalPush {
                assert!(got < 126, "wal-push must never exit >= 126");
            }
        }
    }
}
