//! Progress reporting from long commands (base-backup, pitr-restore) without knowing how it is shown.
//!
//! The library only calls this trait; `cli` shows a bar on a terminal and nothing under cron.

/// Receives progress events; implementations must be cheap and thread-safe.
pub trait Progress: Send + Sync {
    /// The work ahead: `bytes` over `files` files.
    fn start(&self, bytes: u64, files: u64);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
    /// The phase changed (e.g. "waiting for WAL archiving").
    fn phase(&self, message: &str);
    /// Done (success or not).
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _bytes: u64, _files: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn phase(&self, _message: &str) {}
    fn finish(&self) {}
}

/// Passes on everything but [`Progress::start`]: for work done in parts (a restore's batches of files) whose
/// caller announced the whole once.
pub struct Started<'a>(pub &'a dyn Progress);

impl Progress for Started<'_> {
    fn start(&self, _bytes: u64, _files: u64) {}
    fn advance(&self, bytes: u64) {
        self.0.advance(bytes);
    }
    fn phase(&self, message: &str) {
        self.0.phase(message);
    }
    fn finish(&self) {
        self.0.finish();
    }
}
