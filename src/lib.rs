//! backupctl: PostgreSQL continuous archiving, base backups and point-in-time recovery.
//!
//! Layout (arrows point down only): binaries → [`cli`] → commands ([`archive`]) → domain ([`wal`], [`codec`],
//! [`config`], [`repository`]) and infrastructure ([`storage`], [`spool`]). Lower modules return their own error
//! enums; commands return [`Error`].
#![warn(missing_docs)]
// Output goes through `cli::output`, which never panics on a closed pipe (println! does).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

/// The path of an installed documentation file, for messages: `doc!("operations.md")` is
/// `"/usr/share/doc/backupctl/operations.md"` (the Debian package's location; `BACKUPCTL_DOC_DIR` at build time
/// changes the directory, see build.rs). A string literal, so it works inside `concat!` and format strings.
macro_rules! doc {
    ($file:literal) => {
        concat!(env!("BACKUPCTL_DOC_DIR"), "/", $file)
    };
}

pub mod alert;
pub mod archive;
pub mod backup;
pub mod catalog;
pub mod check;
// The binaries' clap doc comments are --help text: their `[log]`, `[restore] parallel` are configuration
// sections and `<id>` a placeholder, not rustdoc links or HTML.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::private_intra_doc_links, rustdoc::invalid_html_tags)]
pub mod cli;
pub mod codec;
pub mod config;
pub mod drill;
pub mod dump;
pub mod error;
pub mod metrics;
pub mod pg;
pub mod progress;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod spool;
pub mod state;
pub mod storage;
pub mod verify;
pub mod wal;

pub use error::Error;
