//! Test helpers: [`Faulty`], a real wrapper backend that injects failures and latency into a real backend, and
//! [`Counting`], one that records every request made through it.
//!
//! Neither is a mock: every call that is not failed goes to the wrapped backend.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Capabilities, DynStorage, Error, Incomplete, Key, ObjectMeta, PutMode, Result, Storage};

/// Fails chosen calls with a transient error and optionally delays every call.
#[derive(Debug)]
pub struct Faulty {
    inner: DynStorage,
    calls: AtomicU32,
    fail_first: u32,
    latency: Duration,
    before_get: std::sync::Mutex<Option<Hook>>,
}

/// An action run once, before the first `get` of a key under a prefix (another writer acting at that moment).
struct Hook {
    prefix: String,
    action: Box<dyn FnOnce() + Send>,
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Faulty {
    /// Fail the first `fail_first` calls (any operation) with [`Error::Transient`], then pass through.
    pub fn new(inner: DynStorage, fail_first: u32, latency: Duration) -> Self {
        Self { inner, calls: AtomicU32::new(0), fail_first, latency, before_get: std::sync::Mutex::new(None) }
    }

    /// Run `action` once, just before the first `get` (or ranged get) of a key starting with `prefix` goes to the
    /// wrapped backend: a deterministic way to have another process change the repository in the middle of a
    /// reader's work.
    pub fn before_first_get(self, prefix: &str, action: impl FnOnce() + Send + 'static) -> Self {
        if let Ok(mut slot) = self.before_get.lock() {
            *slot = Some(Hook { prefix: prefix.to_owned(), action: Box::new(action) });
        }
        self
    }

    fn run_hook(&self, key: &Key) {
        let hook = match self.before_get.lock() {
            Ok(mut slot) if slot.as_ref().is_some_and(|h| key.as_str().starts_with(&h.prefix)) => slot.take(),
            _ => None,
        };
        if let Some(h) = hook {
            (h.action)();
        }
    }

    /// How many calls were made so far.
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn gate(&self, op: &'static str, key: &str) -> Result<()> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            return Err(Error::transient(&self.inner, op, &key, format!("injected failure {}", n + 1)));
        }
        Ok(())
    }
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait]
impl Storage for Faulty {
    async fn put(&self, key: &Key, body: Bytes, mode: PutMode) -> Result<()> {
        self.gate("put", key.as_str()).await?;
        self.inner.put(key, body, mode).await
    }
    async fn get(&self, key: &Key) -> Result<Bytes> {
        self.gate("get", key.as_str()).await?;
        self.run_hook(key);
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        self.gate("get", key.as_str()).await?;
        self.run_hook(key);
        self.inner.get_range(key, offset, len).await
    }
    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        self.gate("head", key.as_str()).await?;
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.gate("list", prefix).await?;
        self.inner.list(prefix).await
    }
    async fn list_after(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<ObjectMeta>> {
        self.gate("list", prefix).await?;
        self.inner.list_after(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &Key) -> Result<()> {
        self.gate("delete", key.as_str()).await?;
        self.inner.delete(key).await
    }
    async fn list_incomplete(&self, prefix: &str) -> Result<Vec<Incomplete>> {
        self.gate("list", prefix).await?;
        self.inner.list_incomplete(prefix).await
    }
    async fn remove_incomplete(&self, item: &Incomplete) -> Result<()> {
        self.gate("remove", &item.name).await?;
        self.inner.remove_incomplete(item).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn make_durable(&self, key: &Key) -> Result<()> {
        self.inner.make_durable(key).await
    }
}

/// One request made through [`Counting`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `put`, `get` (whole or ranged), `head`, `list` (also `list_after` and `list_incomplete`), `delete` or
    /// `remove`.
    pub op: &'static str,
    /// The key, or the prefix of a listing.
    pub key: String,
}

/// Records every request (operation and key) before passing it to the wrapped backend unchanged: what a command
/// reads and writes, counted per key prefix by tests. `delete_many` and the other provided methods are counted as
/// the requests they make.
#[derive(Debug)]
pub struct Counting {
    inner: DynStorage,
    requests: std::sync::Mutex<Vec<Request>>,
}

impl Counting {
    /// Wrap `inner`.
    pub fn new(inner: DynStorage) -> Self {
        Self { inner, requests: std::sync::Mutex::new(Vec::new()) }
    }

    fn record(&self, op: &'static str, key: &str) {
        if let Ok(mut r) = self.requests.lock() {
            r.push(Request { op, key: key.to_owned() });
        }
    }

    /// Every request since the last [`Counting::take`], in the order made.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Every request since the last call, and forget them.
    pub fn take(&self) -> Vec<Request> {
        self.requests.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default()
    }

    /// Requests of `op` whose key (or listed prefix) starts with `prefix`.
    pub fn count(&self, op: &str, prefix: &str) -> usize {
        self.requests().iter().filter(|r| r.op == op && r.key.starts_with(prefix)).count()
    }
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait]
impl Storage for Counting {
    async fn put(&self, key: &Key, body: Bytes, mode: PutMode) -> Result<()> {
        self.record("put", key.as_str());
        self.inner.put(key, body, mode).await
    }
    async fn get(&self, key: &Key) -> Result<Bytes> {
        self.record("get", key.as_str());
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        self.record("get", key.as_str());
        self.inner.get_range(key, offset, len).await
    }
    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        self.record("head", key.as_str());
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.record("list", prefix);
        self.inner.list(prefix).await
    }
    async fn list_after(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<ObjectMeta>> {
        self.record("list", prefix);
        self.inner.list_after(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &Key) -> Result<()> {
        self.record("delete", key.as_str());
        self.inner.delete(key).await
    }
    async fn list_incomplete(&self, prefix: &str) -> Result<Vec<Incomplete>> {
        self.record("list", prefix);
        self.inner.list_incomplete(prefix).await
    }
    async fn remove_incomplete(&self, item: &Incomplete) -> Result<()> {
        self.record("remove", &item.name);
        self.inner.remove_incomplete(item).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn make_durable(&self, key: &Key) -> Result<()> {
        self.inner.make_durable(key).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::storage::fs::FsStorage;
    use crate::storage::retry::Retrying;

    fn key(s: &str) -> Key {
        Key::new(s).expect("key")
    }

    #[tokio::test]
    async fn retries_transient_failures_then_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let faulty = Arc::new(Faulty::new(Arc::new(FsStorage::new(dir.path())), 3, Duration::ZERO));
        let store = Retrying::new(faulty.clone(), Duration::from_secs(10));
        store.put(&key("a/b"), Bytes::from_static(b"x"), PutMode::Create).await.expect("put after retries");
        assert_eq!(faulty.calls(), 4);
        assert_eq!(store.get(&key("a/b")).await.expect("get"), Bytes::from_static(b"x"));
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_and_counts_attempts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let faulty = Arc::new(Faulty::new(Arc::new(FsStorage::new(dir.path())), u32::MAX, Duration::ZERO));
        let store = Retrying::new(faulty.clone(), Duration::from_millis(1500));
        let started = Instant::now();
        let err = store.get(&key("k")).await.expect_err("always failing");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1200) && took < Duration::from_millis(3000), "{took:?}");
        match err {
            Error::Transient { attempts, .. } => assert!(attempts >= 3 && attempts == faulty.calls(), "{attempts}"),
            other => panic!("expected transient, got {other}"),
        }
    }

    #[tokio::test]
    async fn definitive_errors_are_not_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let faulty = Arc::new(Faulty::new(Arc::new(FsStorage::new(dir.path())), 0, Duration::ZERO));
        let store = Retrying::new(faulty.clone(), Duration::from_secs(10));
        assert!(store.get(&key("missing")).await.expect_err("absent").is_not_found());
        assert_eq!(faulty.calls(), 1);
        store.put(&key("k"), Bytes::from_static(b"1"), PutMode::Create).await.expect("put");
        let err = store.put(&key("k"), Bytes::from_static(b"2"), PutMode::Create).await.expect_err("exists");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(faulty.calls(), 3);
    }

    /// Counting records each request with its operation and key, and passes it on unchanged.
    #[tokio::test]
    async fn counting_records_requests_per_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counting = Counting::new(Arc::new(FsStorage::new(dir.path())));
        counting.put(&key("a/b"), Bytes::from_static(b"x"), PutMode::Create).await.expect("put");
        assert_eq!(counting.get(&key("a/b")).await.expect("get"), Bytes::from_static(b"x"));
        assert!(counting.get(&key("c")).await.expect_err("absent").is_not_found());
        assert_eq!(counting.list("a/").await.expect("list").len(), 1);
        assert_eq!((counting.count("get", "a/"), counting.count("get", ""), counting.count("list", "a")), (1, 2, 1));
        let all = counting.take();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0], Request { op: "put", key: "a/b".into() });
        assert!(counting.requests().is_empty());
    }
}
