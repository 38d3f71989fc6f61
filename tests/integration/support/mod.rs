//! Shared test support: real services on loopback, and the rule for missing prerequisites.

pub mod cluster;
pub mod raw;
pub mod receivers;
pub mod s3;
pub mod wal;

use std::io::Write as _;

/// Pass through a found prerequisite; for a missing one (`None`) print a skip notice and return `None`, or panic
/// when `CI` is set, so that tests never skip silently in CI.
pub fn require<T>(what: &str, found: Option<T>) -> Option<T> {
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{what} is required when CI is set, but it is not available");
        }
        // Write to stderr directly: the test harness captures `eprintln!` and hides it for passing tests.
        let _ = writeln!(std::io::stderr(), "skipping: {what} is not available");
    }
    found
}
