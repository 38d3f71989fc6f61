//! Exponential backoff with jitter for transient storage errors, bounded by a deadline.
//!
//! Invariants: only [`Error::Transient`] is retried; the final error carries the number of attempts; no retry
//! starts after the deadline.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;

use super::{Capabilities, DynStorage, Error, Incomplete, Key, ObjectMeta, PutMode, Result, Storage};

/// A storage wrapper that retries transient failures of the inner backend until a deadline.
#[derive(Debug, Clone)]
pub struct Retrying {
    inner: DynStorage,
    deadline: Duration,
}

impl Retrying {
    /// Wrap `inner`; each call retries transient errors for at most `deadline`.
    pub fn new(inner: DynStorage, deadline: Duration) -> Self {
        Self { inner, deadline }
    }

    async fn run<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let deadline = self.deadline;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        let mut attempts = 0u32;
        let mut f = f;
        let result = (|| {
            attempts += 1;
            f()
        })
        .retry(backoff)
        .when(|e: &Error| e.is_transient())
        // Retry until the deadline: never sleep past it, and stop once it has passed.
        .adjust(|_, wait| {
            let left = deadline.checked_sub(started.elapsed())?;
            if left < Duration::from_millis(10) {
                return None;
            }
            Some(wait.unwrap_or(left).min(left))
        })
        .notify(|e: &Error, wait: Duration| {
            tracing::warn!(op, key, backend = %self.inner, error = %e, wait_ms = wait.as_millis() as u64, "transient storage error, retrying");
        })
        .await;
        result.map_err(|e| match e {
            Error::Transient { backend, op, key, source, .. } => {
                Error::Transient { backend, op, key, attempts, source }
            }
            other => other,
        })
    }
}

impl fmt::Display for Retrying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait]
impl Storage for Retrying {
    async fn put(&self, key: &Key, body: Bytes, mode: PutMode) -> Result<()> {
        self.run("put", key.as_str(), || self.inner.put(key, body.clone(), mode)).await
    }
    async fn get(&self, key: &Key) -> Result<Bytes> {
        self.run("get", key.as_str(), || self.inner.get(key)).await
    }
    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        self.run("get", key.as_str(), || self.inner.get_range(key, offset, len)).await
    }
    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        self.run("head", key.as_str(), || self.inner.head(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.run("list", prefix, || self.inner.list(prefix)).await
    }
    async fn list_after(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<ObjectMeta>> {
        self.run("list", prefix, || self.inner.list_after(prefix, start_after, limit)).await
    }
    async fn delete(&self, key: &Key) -> Result<()> {
        self.run("delete", key.as_str(), || self.inner.delete(key)).await
    }
    async fn list_incomplete(&self, prefix: &str) -> Result<Vec<Incomplete>> {
        self.run("list", prefix, || self.inner.list_incomplete(prefix)).await
    }
    async fn remove_incomplete(&self, item: &Incomplete) -> Result<()> {
        self.run("remove", &item.name, || self.inner.remove_incomplete(item)).await
    }
    async fn delete_many(&self, keys: &[Key], parallel: usize) -> Result<u64> {
        // Each batch is idempotent (deleting a missing object is not an error): retry the whole call.
        self.run("delete", keys.first().map_or("", Key::as_str), || self.inner.delete_many(keys, parallel)).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn make_durable(&self, key: &Key) -> Result<()> {
        self.run("sync", key.as_str(), || self.inner.make_durable(key)).await
    }
}
