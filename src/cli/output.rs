//! Results to stdout and notes to stderr, never panicking on a closed or failing stream.
//!
//! Rust ignores SIGPIPE, so writing to a pipe whose reader has gone (`backupctl status | head -1`) fails with
//! EPIPE, and `println!` turns that into a panic (exit 101 and a stack trace). Every result goes through
//! [`line()`] instead: a closed pipe becomes [`Error::Stdout`] with [`Error::is_output_closed`] true, which the
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
    let _ = write_line(&mut std::io::stderr().lock(), text);
}

/// Write `text` and a newline with one `write` call where the writer takes it whole. Stderr is unbuffered, and
/// `writeln!` writes each piece of the format separately; several wal-fetch processes share PostgreSQL's server
/// log, so their pieces interleaved (`failed after wal-fetch14: error: ...`). One write of at most `PIPE_BUF`
/// bytes to a pipe, or any write to an `O_APPEND` file, is not interleaved with another (POSIX `write(2)`).
fn write_line(out: &mut impl Write, text: impl Display) -> std::io::Result<()> {
    let mut buf = text.to_string();
    buf.push('\n');
    out.write_all(buf.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 7: a note is one write, so concurrent processes sharing the server log do not interleave.
    #[test]
    fn issue_7_a_note_is_one_write() {
        struct Writes(Vec<Vec<u8>>);
        impl Write for Writes {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.push(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = Writes(Vec::new());
        let e = Error::Stdout(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        write_line(&mut w, format_args!("{}: error: {e}", "wal-fetch")).expect("write");
        assert_eq!(w.0.len(), 1, "{:?}", w.0);
        assert!(w.0[0].starts_with(b"wal-fetch: error: ") && w.0[0].ends_with(b"\n"));
    }

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
