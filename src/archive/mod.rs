//! WAL archiving commands: [`push`] (archive_command) and [`fetch`] (restore_command).

pub mod fetch;
pub mod push;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::config::{ArchiveConfig, RepositoryConfig};
use crate::spool::Spool;
use crate::storage::DynStorage;

/// Everything an archive command needs, resolved once by `cli`.
///
/// The storage backend is opened on first use: the fast paths (a spool record, a prefetched segment) never build
/// an S3 client at all.
#[derive(Debug, Clone)]
pub struct ArchiveContext {
    /// Identifies the repository in spool records: its canonical URL.
    pub repository_id: String,
    /// `[repository]` settings.
    pub repository: RepositoryConfig,
    /// The local spool.
    pub spool: Spool,
    /// `[archive]` settings.
    pub settings: ArchiveConfig,
    storage: Arc<OnceCell<DynStorage>>,
    /// Refuse to open a `file://` repository the effective user does not own (see [`ArchiveContext::for_writing`]).
    is_writer: bool,
}

impl ArchiveContext {
    /// A context whose storage is opened from `repository` on first use.
    pub fn new(repository: &RepositoryConfig, settings: &ArchiveConfig, spool: Spool) -> Self {
        Self {
            repository_id: crate::storage::canonical_url(&repository.url),
            repository: repository.clone(),
            spool,
            settings: settings.clone(),
            storage: Arc::new(OnceCell::new()),
            is_writer: false,
        }
    }

    /// The same context for a command that writes into the repository (wal-push): opening a `file://` repository
    /// then fails with [`crate::storage::fs::owner::Error`] unless the effective user owns it (or may create it).
    /// Checked when the storage is first opened, so a call answered from the spool costs nothing.
    pub fn for_writing(mut self) -> Self {
        self.is_writer = true;
        self
    }

    /// The repository backend (wrapped in retries), opened on first call.
    pub async fn storage(&self) -> Result<&DynStorage, crate::Error> {
        let deadline = Duration::from_secs(self.settings.retry_deadline_seconds);
        let storage = self
            .storage
            .get_or_try_init(|| async {
                if self.is_writer
                    && let Some(root) = crate::storage::local_path(&self.repository.url)
                {
                    use crate::storage::fs::owner;
                    owner::check_writer(&root, owner::Role::Repository)?;
                }
                Ok::<_, crate::Error>(crate::storage::open(&self.repository.url, &self.repository.s3, deadline).await?)
            })
            .await?;
        Ok(storage)
    }
}

/// Run blocking work (file I/O, hashing, compression) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::Error> + Send + 'static,
) -> Result<T, crate::Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| crate::Error::Task(e.to_string()))?
}
