//! Results to stdout and notes to stderr, never panicking on a closed or failing stream.
//!
//! Rust ignores SIGPIPE, so writing to a pipe whose reader has gone (`backupctl status | head -1`) fails with
//! EPIPE, and `println!` turns that into a panic (exit 101 and a stack trace). Every result goes through
//! [`line`] instead: a closed pipe becomes [`Error::Stdout`] with [`Error::is_output_closed`] true, which the
//! binaries turn into a quiet exit 0 (the reader has taken all it wanted); any other write failure (a full disk
//! under `> file`) is an error like any other. Notes and errors go through [`note`], which ignores write failures:
//! for wal-push and wal-fetch stderr is PostgreSQL's server log, and losing it must never stop an archive or a
//! restore half-way, nor turn wal-fetch's exit status into a panic's 101. The library never prints (a lint in
//! `lib.rs` denies `print!`/`eprint!` outside tests).

use std::fmt::Display;
use std::io::Write;

use crate::Error;

/// Write `text` and a newline to stdout and flush it; a closed pipe or another write failure is [`Error::Stdout`].
pub fn line(text: impl Display) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush()).map_err(Error::Stdout)
}

/// Write `text` and a newline to stderr, ignoring failures (a closed or full stderr must not stop the command).
pub fn note(text: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_pipe_is_quiet_and_other_failures_are_not() {
        let closed = Error::Stdout(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(closed.is_output_closed());
        assert_eq!(crate::cli::exit::code(crate::cli::exit::Program::Other, Err(&closed)), 0);
        let full = Error::Stdout(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(!full.is_output_closed());
        assert_eq!(crate::cli::exit::code(crate::cli::exit::Program::Other, Err(&full)), 1);
        assert!(full.to_string().starts_with("cannot write to standard output: "), "{full}");
        // wal-fetch never answers "written" for a failure of any kind.
        assert_eq!(crate::cli::exit::code(crate::cli::exit::Program::WalFetch, Err(&closed)), 255);
    }
}
