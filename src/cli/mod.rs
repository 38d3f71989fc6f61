//! Command-line front ends: argument types, config resolution, tracing, runtime, exit codes.
//!
//! Each binary's `main` calls one `run_*` function here, which: parses arguments, resolves and validates the
//! configuration once (flag > `$BACKUPCTL_CONFIG` > default path), installs the tracing subscriber, builds the
//! runtime, runs the command, prints `error: …` / `hint: …`, and maps the outcome to an exit code.

pub mod admin;
pub mod base_backup;
pub mod exit;
pub mod logging;
pub mod output;
pub mod pitr_restore;
pub mod progress;
pub mod wal_fetch;
pub mod wal_push;

use std::path::{Path, PathBuf};

use crate::Error;
use crate::archive::ArchiveContext;
use crate::config::Config;
use crate::spool::Spool;

/// The command-line definition of each program, in the order of README's table: `wal-push`, `wal-fetch`,
/// `base-backup`, `pitr-restore`, `backupctl` (with its subcommands). For generating man pages and shell completions
/// (`examples/gen-assets.rs`, run when the Debian package is built).
pub fn commands() -> Vec<clap::Command> {
    vec![
        command_of::<wal_push::Args>(),
        command_of::<wal_fetch::Args>(),
        command_of::<base_backup::Args>(),
        command_of::<pitr_restore::Args>(),
        command_of::<admin::Args>(),
    ]
}

/// The command-line definition of `A` as the program parses it and as its man page shows it: every subcommand
/// without a `--help` epilogue of its own takes its parent's ([`inherit_exit_help`]).
fn command_of<A: clap::CommandFactory>() -> clap::Command {
    inherit_exit_help(A::command())
}

/// Parse the command line as `A`; on `--help`, `--version` or a usage error, print clap's text and return the exit
/// status `program` uses for it.
pub fn parse_args<A: clap::Parser>(program: exit::Program) -> Result<A, std::process::ExitCode> {
    let mut command = command_of::<A>();
    let parsed = command
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|mut m| A::from_arg_matches_mut(&mut m).map_err(|e| e.format(&mut command)));
    parsed.map_err(|e| {
        let _ = e.print();
        std::process::ExitCode::from(exit::clap_code(program, &e))
    })
}

/// `command` with its `--help` epilogue (the exit statuses) given to every subcommand, at any depth, that has
/// none of its own: `backupctl restore --help` says what its exit statuses mean as `pitr-restore --help` does.
fn inherit_exit_help(command: clap::Command) -> clap::Command {
    let Some(epilogue) = command.get_after_long_help().cloned() else { return command };
    command.mut_subcommands(|sub| {
        let sub = if sub.get_after_long_help().is_none() { sub.after_long_help(epilogue.clone()) } else { sub };
        inherit_exit_help(sub)
    })
}

/// Load the configuration named by the flag, `$BACKUPCTL_CONFIG`, or the default path.
pub fn load_config(flag: Option<&Path>) -> Result<(PathBuf, Config), Error> {
    let path = Config::resolve_path(flag);
    let config = Config::load(&path)?;
    Ok((path, config))
}

/// [`load_config`] for wal-push and wal-fetch, which run in PostgreSQL's environment: the sections they never
/// read ([`crate::config::NOT_READ_BY_WAL_COMMANDS`]) may hold `${VAR}`s that only the daemon's or base-backup's
/// environment sets.
pub fn load_wal_config(flag: Option<&Path>) -> Result<(PathBuf, Config), Error> {
    let path = Config::resolve_path(flag);
    let config = Config::load_without(&path, crate::config::NOT_READ_BY_WAL_COMMANDS)?;
    Ok((path, config))
}

/// Install the tracing subscriber for `program` (`wal-push`, `backupctl`...) as `[log]` says: stderr (no ANSI
/// colours: it often lands in the server log), a size-rotated file, journald; see [`logging`].
pub fn init_tracing(program: &'static str, config: Option<&Config>) {
    logging::init(program, config);
}

/// Print an error and its hint on stderr, one line each (nothing for a closed stdout, which ends quietly). An
/// ownership refusal's hint is the command to run instead: `runuser -u OWNER -- <this command line>`.
pub fn report_error(program: &str, e: &Error) {
    if e.is_output_closed() {
        return;
    }
    output::note(format_args!("{program}: error: {e}"));
    if let Some(user) = e.run_as() {
        let argv: Vec<String> = std::env::args_os()
            .map(|a| String::from_utf8_lossy(&shell_quote(a.as_encoded_bytes())).into_owned())
            .collect();
        output::note(format_args!("{program}: hint: run it as {user}: runuser -u {user} -- {}", argv.join(" ")));
    } else if let Some(h) = e.hint() {
        output::note(format_args!("{program}: hint: {h}"));
    }
    // The same failure for the log file and the journal (stderr has it already, above).
    tracing::error!(target: logging::OUTCOME_TARGET, hint = e.hint().unwrap_or_default(), "{e}");
}

/// Quote for /bin/sh when needed: single quotes, and each `'` as `'\''`. Any byte but NUL survives.
pub fn shell_quote(s: &[u8]) -> Vec<u8> {
    if !s.is_empty() && s.iter().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@%,".contains(b)) {
        return s.to_vec();
    }
    let mut out = vec![b'\''];
    for &b in s {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// A single-threaded runtime: wal-push and wal-fetch run once per file; CPU work goes to the blocking pool.
pub fn current_thread_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()
        .map_err(|e| Error::Task(format!("cannot start runtime: {e}")))
}

/// A multi-threaded runtime for base-backup, pitr-restore and the admin commands.
pub fn multi_thread_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Task(format!("cannot start runtime: {e}")))
}

/// The spool and the (lazily opened) storage for a command that writes: wal-push, the prefetcher.
///
/// Refuses, before creating anything, unless the effective user owns (or may create) the spool and, once the
/// storage is opened, a `file://` repository's directory (see [`crate::storage::fs::owner`]).
pub fn archive_context(config: &Config) -> Result<ArchiveContext, Error> {
    let spool = Spool::open(&config.spool.path, &crate::storage::canonical_url(&config.repository.url))?;
    Ok(ArchiveContext::new(&config.repository, &config.archive, spool).for_writing())
}

/// The context for a reader (wal-fetch): the spool is opened (created if missing) only if the effective user may
/// write into it; otherwise the context's spool must not be used ([`Spool::is_writable`] says false) and nothing
/// is created. The repository is only read.
pub fn reader_context(config: &Config) -> Result<ArchiveContext, Error> {
    let repository = crate::storage::canonical_url(&config.repository.url);
    let mut spool = Spool::at(&config.spool.path, &repository);
    if spool.is_writable() {
        spool = Spool::open(&config.spool.path, &repository)?;
    }
    Ok(ArchiveContext::new(&config.repository, &config.archive, spool))
}

/// For a `file://` repository: may the effective user write into it (or create it)? S3 needs no check.
pub fn check_repository_writer(url: &str) -> Result<(), Error> {
    use crate::storage::fs::owner;
    if let Some(root) = crate::storage::local_path(url) {
        owner::check_writer(&root, owner::Role::Repository)?;
    }
    Ok(())
}

/// Now, as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Human-readable byte count.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// The commands in postgresql.conf.sample parse with the binaries' own argument definitions.
    #[test]
    fn sample_conf_commands_parse() {
        let sample = include_str!("../../postgresql.conf.sample");
        let command = |setting: &str| -> Vec<String> {
            let line = sample
                .lines()
                .find(|l| l.starts_with(&format!("{setting} = '")))
                .unwrap_or_else(|| panic!("{setting} missing from postgresql.conf.sample"));
            let inner = line.split('\'').nth(1).expect("quoted command");
            inner.split_whitespace().map(str::to_owned).collect()
        };
        let push = command("archive_command");
        assert!(push[0].ends_with("/wal-push"), "{push:?}");
        let args = super::wal_push::Args::try_parse_from(&push).expect("archive_command parses");
        assert_eq!(args.wal_path.to_str(), Some("%p"));
        assert!(args.config.is_some());
        let fetch = command("restore_command");
        assert!(fetch[0].ends_with("/wal-fetch"), "{fetch:?}");
        let args = super::wal_fetch::Args::try_parse_from(&fetch).expect("restore_command parses");
        assert_eq!(args.name.as_deref(), Some("%f"));
        assert_eq!(args.dest.as_ref().and_then(|p| p.to_str()), Some("%p"));
    }

    /// wal-fetch's usage shows NAME and DEST as required; the hidden prefetch worker still starts without them.
    #[test]
    fn wal_fetch_arguments_are_required() {
        use clap::CommandFactory;
        let usage = super::wal_fetch::Args::command().render_usage().to_string();
        assert!(usage.contains("<NAME> <DEST>"), "{usage}");
        assert!(super::wal_fetch::Args::try_parse_from(["wal-fetch", "x"]).is_err());
        let worker = super::wal_fetch::Args::try_parse_from(["wal-fetch", "--config", "/c", "--prefetch-worker"]);
        assert!(worker.is_ok_and(|a| a.prefetch_worker && a.name.is_none()));
        let both = super::wal_fetch::Args::try_parse_from(["wal-fetch", "--prefetch-worker", "a", "b"]);
        assert!(both.is_err(), "the worker takes no NAME or DEST");
    }

    /// Target times: what parses, and for what does not, a message that says what is wrong (issue 7).
    #[test]
    fn target_time_messages() {
        use crate::restore::target::parse_time;
        for good in
            ["2025-10-20T12:30:00Z", "2025-10-20 12:30:00+02", "2025-10-20 12:30:00 UTC", "2024-02-29 00:00:00+00"]
        {
            assert!(parse_time(good).is_ok(), "{good}");
        }
        let cases = [
            ("2026-02-30 10:00:00+00", "invalid date"),
            ("2026-02-30T10:00:00Z", "invalid date"),
            ("2025-02-29 00:00:00+00", "invalid date"),
            ("2026-13-01 10:00:00+00", "invalid date"),
            ("2026-01-01 25:00:00+00", "invalid date or time"),
            ("2026-02-30 10:00:00", "invalid date"),
            ("2026-01-01 10:00:00", "has no zone"),
            ("2026-01-01T10:00:00", "has no zone"),
            ("yesterday", "is not a time"),
        ];
        for (text, want) in cases {
            let err = parse_time(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err:?} should say {want:?}");
        }
    }

    /// Every program and every subcommand at any depth says in its --help what its exit statuses mean (before,
    /// `backupctl restore --help` and the other subcommands did not).
    #[test]
    fn every_help_names_its_exit_statuses() {
        fn check(mut command: clap::Command, path: &str) -> usize {
            let path = format!("{path} {}", command.get_name());
            // Words only: where clap wraps the text depends on the terminal's width.
            let help = command.render_long_help().to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(help.contains("Exit status:"), "{path} --help says nothing about exit statuses:\n{help}");
            let subs: Vec<clap::Command> =
                command.get_subcommands().filter(|s| s.get_name() != "help").cloned().collect();
            1 + subs.into_iter().map(|s| check(s, &path)).sum::<usize>()
        }
        let checked: usize = super::commands().into_iter().map(|c| check(c, "")).sum();
        assert!(checked > 20, "only {checked} commands checked");
        let mut restore =
            super::commands().pop().expect("backupctl").find_subcommand("restore").cloned().expect("restore");
        let help = restore.render_long_help().to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains("Exit status: 0 success; 1 failure"), "{help}");
    }

    #[test]
    fn human_bytes_table() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(16 << 20), "16.0 MiB");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
    }
}
