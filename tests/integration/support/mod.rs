//! Shared test support: real services on loopback, and the rule for missing prerequisites.

pub mod s3;

/// Pass through a found prerequisite; for a missing one (`None`) print a skip notice and return `None`, or panic
/// when `CI` is set, so that tests never skip silently in CI.
pub fn require<T>(what: &str, found: Option<T>) -> Option<T> {
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{what} is required when CI is set, but it is not available");
        }
        eprintln!("skipping: {what} is not available");
    }
    found
}
