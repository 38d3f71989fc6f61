//! Object storage behind one trait: a local directory (`file://`) or S3 (`s3://`).
//!
//! Invariants:
//! - Keys are opaque, validated [`Key`] values; this module knows nothing about PostgreSQL or the repository layout.
//! - Every `put` is atomic and durable before it returns `Ok`: a reader sees the whole object or nothing.
//! - `PutMode::Create` never replaces an existing object; it fails with [`Error::AlreadyExists`].
//! - Backends classify their failures into the kinds of [`Error`]; callers branch on kinds, never on messages.
//!   Only [`Error::Transient`] is retried, by the [`retry::Retrying`] wrapper, within a deadline.

pub mod fs;
pub mod retry;
pub mod s3;
pub mod testing;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// A validated object key: `/`-separated, relative, no empty, `.` or `..` segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

/// Why a string is not a valid [`Key`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid storage key {key:?}: {reason}")]
pub struct InvalidKey {
    /// The rejected key.
    pub key: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Key {
    /// Validate and wrap a key.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidKey> {
        let key = key.into();
        let reason = if key.is_empty() {
            Some("empty")
        } else if key.starts_with('/') {
            Some("leading '/'")
        } else if key.contains('\\') || key.contains('\0') {
            Some("backslash or NUL")
        } else if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            Some("empty, '.' or '..' segment")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidKey { key, reason }),
            None => Ok(Self(key)),
        }
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last `/`-separated segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Key {
    type Err = InvalidKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// What a listing or `head` says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: Key,
    /// Stored size in bytes.
    pub size: u64,
    /// When the object was last written, as the backend reports it (file mtime, S3 `LastModified`); `None` if
    /// the backend did not say. The backend's clock, not necessarily this host's.
    pub modified: Option<std::time::SystemTime>,
}

/// A write that never completed: what a writer killed mid-put leaves behind (a `.tmp-*` file in a `file://`
/// repository, an incomplete multipart upload on S3). Invisible to [`Storage::list`] and never readable as an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    /// Where it is, for messages and for [`Storage::remove_incomplete`]: the temp file's path relative to the
    /// repository root, or the object key the multipart upload was for.
    pub name: String,
    /// The backend's own handle (the S3 upload id); `None` for a temp file.
    pub upload_id: Option<String>,
    /// Bytes it occupies, as far as the backend says (the parts uploaded so far on S3).
    pub size: u64,
    /// When it was started or last written (backend clock); `None` if the backend did not say.
    pub modified: Option<std::time::SystemTime>,
}

/// Whether a `put` may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace any existing object (atomically).
    Overwrite,
    /// Fail with [`Error::AlreadyExists`] if the key exists.
    Create,
}

/// Optional abilities a backend advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `PutMode::Create` is enforced atomically by the backend (no check-then-write race).
    pub is_create_atomic: bool,
    /// Writes are made durable by fsync of the file and its directory.
    pub has_fsync_dir: bool,
}

/// Storage failures, by the kind callers branch on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object does not exist (a definitive answer from the backend).
    #[error("{backend}: object {key} not found")]
    NotFound {
        /// Backend display name.
        backend: String,
        /// The key asked for.
        key: Key,
    },
    /// A ranged read asked for bytes past the end of the object ([`Storage::get_range`]): the object exists but
    /// is shorter than `offset + len` (or the range's end does not fit in a `u64`). Never retried; never a short read.
    #[error("{backend}: object {key} is {size} bytes, too short for {len} bytes at offset {offset}")]
    RangeBeyondEnd {
        /// Backend display name.
        backend: String,
        /// The key read.
        key: Key,
        /// First byte asked for.
        offset: u64,
        /// Number of bytes asked for.
        len: u64,
        /// The object's actual size in bytes.
        size: u64,
    },
    /// A create-only put found the key already present.
    #[error("{backend}: object {key} already exists")]
    AlreadyExists {
        /// Backend display name.
        backend: String,
        /// The key written.
        key: Key,
    },
    /// Access was refused.
    #[error("{backend}: permission denied for {key}: {source}")]
    PermissionDenied {
        /// Backend display name.
        backend: String,
        /// The key.
        key: String,
        /// Underlying cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A failure that may go away on retry (network, throttling, 5xx, 409 conflicts).
    #[error("{backend}: {op} {key} failed after {attempts} attempt(s): {source}")]
    Transient {
        /// Backend display name.
        backend: String,
        /// Operation name (`put`, `get`, ...).
        op: &'static str,
        /// The key.
        key: String,
        /// How many attempts were made.
        attempts: u32,
        /// Underlying cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Any other failure (not retried).
    #[error("{backend}: {op} {key} failed: {source}")]
    Other {
        /// Backend display name.
        backend: String,
        /// Operation name.
        op: &'static str,
        /// The key.
        key: String,
        /// Underlying cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The repository URL or backend settings are unusable.
    #[error("invalid repository url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No source of the AWS default credential chain had credentials: a configuration problem, never retried.
    #[error("{backend}: no AWS credentials found; tried {}", CREDENTIAL_SOURCES)]
    NoCredentials {
        /// Backend display name.
        backend: String,
    },
    /// A key could not be built.
    #[error(transparent)]
    InvalidKey(#[from] InvalidKey),
}

/// The sources of the AWS default credential chain, in the order aws-config tries them
/// (`aws_config::default_provider::credentials::DefaultCredentialsChain`).
pub const CREDENTIAL_SOURCES: &str = "environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), \
    the profile in ~/.aws/credentials and ~/.aws/config (AWS_PROFILE, default \"default\"; SSO and credential_process), \
    web identity token (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN), ECS container credentials \
    (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI) and EC2 instance metadata (IMDS)";

impl Error {
    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True for [`Error::RangeBeyondEnd`].
    pub fn is_range_beyond_end(&self) -> bool {
        matches!(self, Error::RangeBeyondEnd { .. })
    }

    /// True for [`Error::Transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// Build an [`Error::Other`] from any error.
    pub fn other(
        backend: &dyn fmt::Display,
        op: &'static str,
        key: &dyn fmt::Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Other { backend: backend.to_string(), op, key: key.to_string(), source: source.into() }
    }

    /// Build an [`Error::Transient`] (one attempt so far) from any error.
    pub fn transient(
        backend: &dyn fmt::Display,
        op: &'static str,
        key: &dyn fmt::Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Transient { backend: backend.to_string(), op, key: key.to_string(), attempts: 1, source: source.into() }
    }
}

/// Result alias for storage calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An object store. Implementations must be safe to share between tasks.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Display + fmt::Debug {
    /// Store `body` under `key`, atomically and durably.
    async fn put(&self, key: &Key, body: Bytes, mode: PutMode) -> Result<()>;
    /// Read a whole object.
    async fn get(&self, key: &Key) -> Result<Bytes>;
    /// Read exactly `len` bytes of an object, starting at byte `offset`: a read of part of a large object (a pack)
    /// without transferring the rest. Never a short read: if the object is shorter than `offset + len` the answer
    /// is [`Error::RangeBeyondEnd`] (with its actual size); a missing object is [`Error::NotFound`]. A zero-length
    /// range at or before the end (`offset <= size`) returns no bytes; it still checks that the object exists.
    /// Backends transfer only the range: `pread` on a file, `Range: bytes=offset-(offset+len-1)` on S3 (RFC 9110
    /// section 14), whose answer is checked against the range asked for.
    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes>;
    /// Size of an object, or `NotFound`.
    async fn head(&self, key: &Key) -> Result<ObjectMeta>;
    /// All objects whose key starts with `prefix` (a string prefix, not only a directory), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Delete an object; deleting a missing object is not an error.
    async fn delete(&self, key: &Key) -> Result<()>;
    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Make an object that already exists as durable as a put that created it would have: for a caller that
    /// found it (by `head` or a read) and is about to count it as stored, when the writer that made it may have
    /// been killed after the object became visible and before its directory was synced. The default does nothing
    /// (S3: an object is durable once visible). Errors: [`Error::NotFound`] if it is gone, and the backend's errors.
    async fn make_durable(&self, key: &Key) -> Result<()> {
        let _ = key;
        Ok(())
    }

    /// At most `limit` objects whose key starts with `prefix` and sorts after `start_after` (byte order), sorted
    /// by key: a bounded look at what follows a key without listing everything before it (S3 `ListObjectsV2`
    /// `StartAfter`). The default lists the whole prefix; backends override it to do less.
    async fn list_after(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<ObjectMeta>> {
        let all = self.list(prefix).await?;
        Ok(all.into_iter().filter(|m| m.key.as_str() > start_after).take(limit).collect())
    }

    /// Incomplete writes (see [`Incomplete`]) whose name starts with `prefix`. The default: none (a backend whose
    /// writes leave nothing behind).
    async fn list_incomplete(&self, prefix: &str) -> Result<Vec<Incomplete>> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// Remove one incomplete write found by [`Storage::list_incomplete`]; one already gone is not an error. Never
    /// touches a complete object.
    async fn remove_incomplete(&self, item: &Incomplete) -> Result<()> {
        let _ = item;
        Ok(())
    }

    /// Delete many objects (missing ones are not an error), at most `parallel` requests at a time. Backends with a
    /// batch call override it (S3 `DeleteObjects`, 1000 keys a request). Returns how many were deleted; on the
    /// first failure the remaining deletes are abandoned and the error returned.
    async fn delete_many(&self, keys: &[Key], parallel: usize) -> Result<u64> {
        use futures_util::StreamExt as _;
        let mut done = 0u64;
        // Collected first: a closure inside the stream's type would make this future not `Send` (rust#102211).
        let deletes: Vec<_> = keys.iter().map(|k| self.delete(k)).collect();
        let mut stream = futures_util::stream::iter(deletes).buffer_unordered(parallel.max(1));
        while let Some(r) = stream.next().await {
            r?;
            done += 1;
        }
        Ok(done)
    }

    /// True if the object exists.
    async fn exists(&self, key: &Key) -> Result<bool> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether `len` bytes at `offset` lie inside an object of `size` bytes (the end may equal the size).
pub(crate) fn range_fits(size: u64, offset: u64, len: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// A shared, dynamically dispatched storage handle.
pub type DynStorage = Arc<dyn Storage>;

/// The canonical form of a repository URL (no trailing `/`), used to tell repositories apart in the spool.
pub fn canonical_url(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

/// The directory of a `file:///absolute/path` URL; `None` for any other URL.
pub fn local_path(url: &str) -> Option<std::path::PathBuf> {
    url.strip_prefix("file://").filter(|p| p.starts_with('/')).map(std::path::PathBuf::from)
}

/// Open the backend named by a repository URL, wrapped in retries bounded by `retry_deadline`.
///
/// `file:///absolute/path` opens a local directory, `s3://bucket[/prefix]` a bucket (configured by `s3`); anything
/// else is [`Error::InvalidUrl`].
pub async fn open(url: &str, s3: &crate::config::S3Config, retry_deadline: std::time::Duration) -> Result<DynStorage> {
    let invalid = |reason: &str| Error::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
    let inner: DynStorage = if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(invalid("a file:// URL needs an absolute path, e.g. file:///srv/archive"));
        }
        // Written as the same path however it was spelled (`/repo/`, `//repo`, `/./repo`): the URL names the
        // repository in the catalog and in messages. `..` is left alone (it depends on links).
        Arc::new(fs::FsStorage::new(std::path::Path::new(path).components().collect::<std::path::PathBuf>()))
    } else if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("names no bucket, e.g. s3://bucket/prefix"));
        }
        Arc::new(s3::S3Storage::connect(bucket, prefix, s3).await?)
    } else {
        return Err(invalid("must start with file:// or s3://"));
    };
    Ok(Arc::new(retry::Retrying::new(inner, retry_deadline)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One repository, one name: `file://` paths spelled differently open as the same URL.
    #[tokio::test]
    async fn file_urls_are_named_by_their_normal_path() {
        let s3 = crate::config::S3Config::default();
        for url in ["file:///srv/repo", "file:///srv/repo/", "file:////srv//repo", "file:///srv/./repo/."] {
            let opened = open(url, &s3, std::time::Duration::ZERO).await.expect("open");
            assert_eq!(opened.to_string(), "file:///srv/repo", "{url}");
        }
        let dotdot = open("file:///srv/x/../repo", &s3, std::time::Duration::ZERO).await.expect("open");
        assert_eq!(dotdot.to_string(), "file:///srv/x/../repo");
    }

    #[test]
    fn key_validation_table() {
        for good in ["a", "wal/0000000100000000/000000010000000000000001", "a.b/c-d_e"] {
            let key = Key::new(good).expect(good);
            assert_eq!(key.to_string(), good);
            assert_eq!(good.parse::<Key>().expect("parse"), key);
        }
        for bad in ["", "/a", "a//b", "a/../b", "..", "./a", "a/", "a\\b"] {
            assert!(Key::new(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(Key::new("x/y/z").expect("key").file_name(), "z");
    }

    #[test]
    fn range_fits_table() {
        for (size, offset, len, want) in [
            (10, 0, 10, true),
            (10, 9, 1, true),
            (10, 10, 0, true),
            (10, 0, 0, true),
            (10, 10, 1, false),
            (10, 5, 6, false),
            (10, 11, 0, false),
            (0, 0, 0, true),
            (0, 0, 1, false),
            (u64::MAX, u64::MAX, 1, false),
            (u64::MAX, 1, u64::MAX, false),
        ] {
            assert_eq!(range_fits(size, offset, len), want, "size {size} offset {offset} len {len}");
        }
    }
}
