//! WAL archiving commands: [`push`] (archive_command) and [`fetch`] (restore_command).

pub mod fetch;
pub mod push;

use crate::config::ArchiveConfig;
use crate::spool::Spool;
use crate::storage::DynStorage;

/// Everything an archive command needs, resolved once by `cli`.
#[derive(Debug, Clone)]
pub struct ArchiveContext {
    /// The repository backend (already wrapped in retries).
    pub storage: DynStorage,
    /// The local spool.
    pub spool: Spool,
    /// zstd level for new objects.
    pub compression_level: i32,
    /// `[archive]` settings.
    pub settings: ArchiveConfig,
}

/// Run blocking work (file I/O, hashing, compression) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::Error> + Send + 'static,
) -> Result<T, crate::Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| crate::Error::Task(e.to_string()))?
}
