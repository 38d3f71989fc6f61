//! S3 backend (`s3://bucket/prefix`) on aws-sdk-s3.
//!
//! Invariants:
//! - Every key is stored as `prefix/key`; listings strip the prefix again, so callers only see their own keys.
//! - A put sends our own CRC-32 of the body (`x-amz-checksum-crc32`, a signed header; the SDK's own default
//!   algorithm, so the one S3-compatible services support best), so the service rejects a body damaged in transit;
//!   multipart parts each carry their own. Not SHA-256: it cost about 11% of wal-push's CPU per segment (4.5 ms
//!   for a 4.4 MB object) where CRC-32 costs 0.3 ms, and every object also checks itself by blake3 when read. An object is visible only once it is
//!   complete; a failed or cancelled multipart upload is aborted.
//! - `PutMode::Create` sends `If-None-Match: *` (on `PutObject` or `CompleteMultipartUpload`): a 412 becomes
//!   [`Error::AlreadyExists`], a 409 (concurrent conditional write) is [`Error::Transient`].
//! - The SDK never retries (one attempt per call); [`super::retry::Retrying`] retries [`Error::Transient`] within a
//!   deadline. Credentials come only from the standard AWS chain.
//! - A missing bucket is never reported as [`Error::NotFound`] for `get` (that would read as "segment absent"),
//!   except by `head`, whose 404 carries no body to tell the two apart.

mod cleanup;
mod error;
mod range;
use self::cleanup::DELETE_BATCH;
use self::error::{Class, cause_chain, describe};

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::Region;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use base64::Engine as _;
use bytes::Bytes;

use super::{Capabilities, Error, Incomplete, Key, ObjectMeta, PutMode, Result, Storage};
use crate::config::S3Config;

const MIB: u64 = 1024 * 1024;
/// S3's smallest part (except the last) and largest part count.
const MIN_PART_SIZE: u64 = 5 * MIB;
const MAX_PARTS: u64 = 10_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-attempt limit for requests without a large body.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Uploads get [`ATTEMPT_TIMEOUT`] plus one second per MiB, so a slow link (1 MiB/s) can still finish a part.
const UPLOAD_SECS_PER_MIB: u64 = 1;

/// A repository in an S3 bucket, under an optional key prefix.
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    /// The configured endpoint, named in connection errors; `None` for AWS.
    endpoint: Option<String>,
    bucket: String,
    /// No leading or trailing `/`; empty for the bucket root.
    prefix: String,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    storage_class: Option<StorageClass>,
    multipart_threshold: u64,
    part_size: u64,
}

impl S3Storage {
    /// Build a client for `bucket` and key `prefix` from `cfg` and the standard AWS credential chain.
    ///
    /// No request is sent: a wrong bucket or missing credentials show up on the first call. When no source of the
    /// credential chain has credentials, that call fails at once with [`Error::NoCredentials`] (a configuration
    /// problem, not retried); other credential failures (a provider that timed out) are retried as transient.
    pub async fn connect(bucket: &str, prefix: &str, cfg: &S3Config) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl { url: format!("s3://{bucket}/{prefix}"), reason };
        if bucket.is_empty() || bucket.contains('/') {
            return Err(invalid("the bucket name must be non-empty and contain no '/'".to_owned()));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            Key::new(prefix).map_err(|e| invalid(format!("bad key prefix: {}", e.reason)))?;
        }
        if cfg.region.is_empty() {
            return Err(invalid("repository.s3.region must not be empty".to_owned()));
        }
        // Schemes are case-insensitive (RFC 3986 section 3.1): `HTTPS://host` is passed on as `https://host`.
        let endpoint = cfg.endpoint.as_deref().filter(|e| !e.is_empty()).map(|ep| match ep.split_once("://") {
            Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
            None => ep.to_owned(),
        });
        if let Some(ep) = endpoint.as_deref() {
            let shown = crate::config::redact_url(ep);
            if ep.starts_with("http://") && !cfg.allow_http {
                return Err(invalid(format!("endpoint {shown:?} is plain HTTP and repository.s3.allow_http is off")));
            }
            if !ep.starts_with("http://") && !ep.starts_with("https://") {
                return Err(invalid(format!("endpoint {shown:?} must start with https:// or http://")));
            }
        }
        let endpoint = endpoint.as_deref();
        let sse = match cfg.sse.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some("AES256") => Some(ServerSideEncryption::Aes256),
            Some("aws:kms") => Some(ServerSideEncryption::AwsKms),
            Some(other) => return Err(invalid(format!("sse {other:?} must be \"AES256\" or \"aws:kms\""))),
        };
        let sse_kms_key_id = cfg.sse_kms_key_id.clone().filter(|k| !k.is_empty());
        if sse_kms_key_id.is_some() && sse != Some(ServerSideEncryption::AwsKms) {
            return Err(invalid("sse_kms_key_id requires sse = \"aws:kms\"".to_owned()));
        }

        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .timeout_config(timeouts(ATTEMPT_TIMEOUT))
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .load()
            .await;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(cfg.force_path_style);
        if let Some(ep) = endpoint {
            conf = conf.endpoint_url(ep);
        }
        Ok(Self {
            client: Client::from_conf(conf.build()),
            endpoint: endpoint.map(str::to_owned),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            sse,
            sse_kms_key_id,
            storage_class: cfg.storage_class.as_deref().filter(|s| !s.is_empty()).map(StorageClass::from),
            multipart_threshold: cfg.multipart_threshold_mib.saturating_mul(MIB),
            part_size: cfg.multipart_part_size_mib.saturating_mul(MIB).max(MIN_PART_SIZE),
        })
    }

    fn object_key(&self, key: &str) -> String {
        join_key(&self.prefix, key)
    }

    /// Turn an SDK failure into a storage error of the right kind.
    fn error<E>(&self, op: &'static str, key: &str, err: &SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (class, message) = self.describe(err);
        self.class_error(class, op, key, message)
    }

    /// [`describe`], plus the endpoint when the service could not be reached.
    fn describe<E>(&self, err: &SdkError<E>) -> (Class, String)
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (class, mut message) = describe(err);
        if let (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), Some(endpoint)) = (err, &self.endpoint) {
            message.push_str(&format!(" (endpoint {})", crate::config::redact_url(endpoint)));
        }
        (class, message)
    }

    fn class_error(&self, class: Class, op: &'static str, key: &str, message: String) -> Error {
        let backend = self.to_string();
        match class {
            // NotFound only makes sense for reads; a 404 on a write names a missing bucket or upload.
            Class::NotFound if matches!(op, "get" | "head") => match Key::new(key) {
                Ok(key) => Error::NotFound { backend, key },
                Err(e) => Error::InvalidKey(e),
            },
            Class::NoCredentials => {
                // The SDK's own account says why each source had nothing (e.g. "IMDS disabled by …").
                tracing::debug!(backend = %backend, error = %message, "no AWS credentials");
                Error::NoCredentials { backend }
            }
            Class::PermissionDenied => Error::PermissionDenied { backend, key: key.to_owned(), source: message.into() },
            Class::Transient => Error::transient(&backend, op, &key, message),
            _ => Error::other(&backend, op, &key, message),
        }
    }

    async fn put_single(&self, key: &Key, body: Bytes, mode: PutMode) -> Result<()> {
        let checksum = crc32_base64(&body);
        let timeout = upload_timeout(body.len());
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(key.as_str()))
            .body(ByteStream::from(body))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .checksum_crc32(checksum)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .set_storage_class(self.storage_class.clone());
        if mode == PutMode::Create {
            req = req.if_none_match("*");
        }
        match req.customize().config_override(attempt_override(timeout)).send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.put_error(key, mode, &e)),
        }
    }

    fn put_error<E>(&self, key: &Key, mode: PutMode, err: &SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match self.describe(err) {
            (Class::PreconditionFailed, _) if mode == PutMode::Create => {
                Error::AlreadyExists { backend: self.to_string(), key: key.clone() }
            }
            (class, message) => self.class_error(class, "put", key.as_str(), message),
        }
    }

    async fn put_multipart(&self, key: &Key, body: Bytes, mode: PutMode) -> Result<()> {
        let object_key = self.object_key(key.as_str());
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&object_key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .set_storage_class(self.storage_class.clone())
            .send()
            .await
            .map_err(|e| self.error("put", key.as_str(), &e))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            let message = "CreateMultipartUpload returned no upload id".to_owned();
            return Err(self.class_error(Class::Other, "put", key.as_str(), message));
        };
        let mut guard = AbortOnDrop { s3: Some(self.clone()), object_key, upload_id };
        let result = self.upload_parts(key, body, mode, &guard.object_key, &guard.upload_id).await;
        if result.is_err() {
            // Abort now (awaited) rather than from the guard, so the upload is gone when we return.
            if let Some(s3) = guard.s3.take() {
                s3.abort(&guard.object_key, &guard.upload_id).await;
            }
        }
        guard.s3 = None;
        result
    }

    async fn upload_parts(
        &self,
        key: &Key,
        body: Bytes,
        mode: PutMode,
        object_key: &str,
        upload_id: &str,
    ) -> Result<()> {
        let total = body.len() as u64;
        let part_size = self.part_size.max(total.div_ceil(MAX_PARTS));
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut number = 1i32;
        while start < total {
            let end = (start + part_size).min(total);
            // invariant: start < end <= total = body.len(), so both fit in usize.
            let part = body.slice(start as usize..end as usize);
            let checksum = crc32_base64(&part);
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(object_key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(part.clone()))
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .checksum_crc32(&checksum)
                .customize()
                .config_override(attempt_override(upload_timeout(part.len())))
                .send()
                .await
                .map_err(|e| self.error("put", key.as_str(), &e))?;
            tracing::debug!(key = %key, backend = %self, part = number, bytes = part.len(), "uploaded part");
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .checksum_crc32(checksum)
                    .build(),
            );
            start = end;
            number += 1;
        }
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object_key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        if mode == PutMode::Create {
            req = req.if_none_match("*");
        }
        req.send().await.map(|_| ()).map_err(|e| self.put_error(key, mode, &e))
    }

    async fn abort(&self, object_key: &str, upload_id: &str) {
        let req = self.client.abort_multipart_upload().bucket(&self.bucket).key(object_key).upload_id(upload_id);
        if let Err(e) = req.send().await {
            tracing::warn!(key = object_key, backend = %self, upload_id, error = %cause_chain(&e),
                "could not abort a failed multipart upload; a bucket lifecycle rule should remove it");
        }
    }

    async fn get_object(&self, key: &Key) -> Result<Bytes> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key.as_str()))
            .send()
            .await
            .map_err(|e| self.error("get", key.as_str(), &e))?;
        match out.body.collect().await {
            Ok(data) => Ok(data.into_bytes()),
            Err(e) => Err(self.class_error(Class::Transient, "get", key.as_str(), cause_chain(&e))),
        }
    }
}

/// Aborts a multipart upload if the put future is dropped (cancelled) before it finished.
struct AbortOnDrop {
    s3: Option<S3Storage>,
    object_key: String,
    upload_id: String,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(s3) = self.s3.take() else { return };
        let (object_key, upload_id) = (std::mem::take(&mut self.object_key), std::mem::take(&mut self.upload_id));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { s3.abort(&object_key, &upload_id).await });
        }
    }
}

impl S3Storage {
    /// A listed object's metadata under its key `name` (prefix stripped); `None` (logged) for a name that is not a
    /// valid key.
    /// ListObjectsV2 under `prefix`, after `start_after` (S3's StartAfter) if given, page by page until `limit`
    /// objects are collected or the listing ends; sorted by key.
    async fn list_pages(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<ObjectMeta>> {
        let full_prefix = join_key(&self.prefix, prefix);
        let full_start = start_after.map(|s| join_key(&self.prefix, s));
        let mut out = Vec::new();
        let mut token = None;
        while out.len() < limit {
            // S3 returns at most 1000 keys a page whatever MaxKeys says.
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX).min(1000);
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_start_after(full_start.clone())
                .max_keys(want)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.error("list", prefix, &e))?;
            for object in page.contents() {
                let Some(name) = object.key().and_then(|k| strip_key(&self.prefix, k)) else { continue };
                if start_after.is_some_and(|after| name <= after) || out.len() >= limit {
                    continue;
                }
                if let Some(meta) = self.object_meta(name, object) {
                    out.push(meta);
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn object_meta(&self, name: &str, object: &aws_sdk_s3::types::Object) -> Option<ObjectMeta> {
        match Key::new(name) {
            Ok(key) => Some(ObjectMeta {
                key,
                size: object.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                modified: object.last_modified().and_then(|t| std::time::SystemTime::try_from(*t).ok()),
            }),
            Err(e) => {
                tracing::debug!(backend = %self, error = %e, "skipping an object whose name is not a valid key");
                None
            }
        }
    }
}

/// `prefix/key`, or `key` when the prefix is empty.
fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}/{key}") }
}

/// The inverse of [`join_key`]: `None` for a key outside the prefix.
fn strip_key<'a>(prefix: &str, object_key: &'a str) -> Option<&'a str> {
    if prefix.is_empty() { Some(object_key) } else { object_key.strip_prefix(prefix)?.strip_prefix('/') }
}

fn timeouts(attempt: Duration) -> TimeoutConfig {
    TimeoutConfig::builder().connect_timeout(CONNECT_TIMEOUT).operation_attempt_timeout(attempt).build()
}

fn attempt_override(attempt: Duration) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(timeouts(attempt))
}

fn upload_timeout(len: usize) -> Duration {
    ATTEMPT_TIMEOUT + Duration::from_secs((len as u64).div_ceil(MIB) * UPLOAD_SECS_PER_MIB)
}

/// Base64 of the SHA-256 of `body`, computed off the async threads.
/// The value of `x-amz-checksum-crc32` for `body`: base64 of its CRC-32 (ISO-HDLC, as zlib's) in big-endian
/// order (AWS S3 API, "Checking object integrity"). About 0.1 ms per MiB, so computed in place.
fn crc32_base64(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(body).to_be_bytes())
}

impl fmt::Display for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("endpoint", &self.endpoint.as_deref().map(crate::config::redact_url))
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("sse", &self.sse)
            .field("sse_kms_key_id", &self.sse_kms_key_id.as_ref().map(|_| "<redacted>"))
            .field("storage_class", &self.storage_class)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn put(&self, key: &Key, body: Bytes, mode: PutMode) -> Result<()> {
        if body.len() as u64 > self.multipart_threshold {
            self.put_multipart(key, body, mode).await
        } else {
            self.put_single(key, body, mode).await
        }
    }

    async fn get(&self, key: &Key) -> Result<Bytes> {
        self.get_object(key).await
    }

    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        self.get_exact_range(key, offset, len).await
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_key(key.as_str()))
            .send()
            .await
            .map_err(|e| self.error("head", key.as_str(), &e))?;
        let size = out.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let modified = out.last_modified().and_then(|t| std::time::SystemTime::try_from(*t).ok());
        Ok(ObjectMeta { key: key.clone(), size, modified })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.list_pages(prefix, None, usize::MAX).await
    }

    async fn list_after(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<ObjectMeta>> {
        self.list_pages(prefix, Some(start_after), limit).await
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object_key(key.as_str()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error("delete", key.as_str(), &e))
    }

    async fn list_incomplete(&self, prefix: &str) -> Result<Vec<Incomplete>> {
        self.multipart_uploads(prefix).await
    }

    async fn remove_incomplete(&self, item: &Incomplete) -> Result<()> {
        let Some(upload_id) = &item.upload_id else {
            return Err(Error::other(self, "abort", &item.name, "not a multipart upload"));
        };
        let req = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.object_key(&item.name))
            .upload_id(upload_id);
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => match self.describe(&e) {
                // NoSuchUpload: already completed or aborted.
                (Class::NotFound, _) => Ok(()),
                (class, message) => Err(self.class_error(class, "abort", &item.name, message)),
            },
        }
    }

    async fn delete_many(&self, keys: &[Key], parallel: usize) -> Result<u64> {
        use futures_util::StreamExt as _;
        let mut done = 0u64;
        // Collected first: a closure inside the stream's type would make this future not `Send` (rust#102211).
        let batches: Vec<_> = keys.chunks(DELETE_BATCH).map(|batch| Box::pin(self.delete_batch(batch))).collect();
        let mut stream = futures_util::stream::iter(batches).buffer_unordered(parallel.clamp(1, 4));
        while let Some(r) = stream.next().await {
            done += r?;
        }
        Ok(done)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { is_create_atomic: true, has_fsync_dir: false }
    }
}

#[cfg(test)]
mod tests {
    use super::error::{classify, one_line};
    use super::*;

    #[test]
    fn keys_are_prefixed_and_stripped() {
        for (prefix, key, object_key) in [("", "a/b", "a/b"), ("repo", "a/b", "repo/a/b"), ("x/y", "k", "x/y/k")] {
            assert_eq!(join_key(prefix, key), object_key);
            assert_eq!(strip_key(prefix, object_key), Some(key));
        }
        // A sibling prefix that merely starts with the same characters is not ours.
        assert_eq!(strip_key("repo", "repo2/a"), None);
        assert_eq!(strip_key("repo", "other/a"), None);
        assert_eq!(join_key("repo", ""), "repo/", "list of everything under the prefix");
    }

    #[test]
    fn classification_table() {
        for (status, code, want) in [
            (404, Some("NoSuchKey"), Class::NotFound),
            (404, Some("NotFound"), Class::NotFound),
            (404, None, Class::NotFound),
            (404, Some("NoSuchBucket"), Class::Other),
            (412, Some("PreconditionFailed"), Class::PreconditionFailed),
            (403, Some("AccessDenied"), Class::PermissionDenied),
            (403, None, Class::PermissionDenied),
            (416, Some("InvalidRange"), Class::InvalidRange),
            (409, Some("ConditionalRequestConflict"), Class::Transient),
            (429, None, Class::Transient),
            (503, Some("SlowDown"), Class::Transient),
            (500, Some("InternalError"), Class::Transient),
            (501, Some("NotImplemented"), Class::Other),
            (501, None, Class::Other),
            (505, None, Class::Other),
            (400, Some("RequestTimeout"), Class::Transient),
            (400, Some("InvalidArgument"), Class::Other),
            (301, Some("PermanentRedirect"), Class::Other),
        ] {
            assert_eq!(classify(status, code), want, "{status} {code:?}");
        }
    }

    #[test]
    fn upload_timeout_grows_with_the_body() {
        assert_eq!(upload_timeout(0), ATTEMPT_TIMEOUT);
        assert_eq!(upload_timeout(16 * MIB as usize), ATTEMPT_TIMEOUT + Duration::from_secs(16));
    }

    #[test]
    fn messages_are_one_line_with_their_causes() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
        #[derive(Debug)]
        struct Outer(std::io::Error, &'static str);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.1)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        assert_eq!(cause_chain(&Outer(refused(), "dispatch failure")), "dispatch failure: Connection refused");
        // A layer that repeats its cause is not repeated.
        assert_eq!(cause_chain(&Outer(refused(), "io: Connection refused")), "io: Connection refused");
    }

    #[tokio::test]
    async fn connect_rejects_bad_settings() {
        let http = S3Config { endpoint: Some("http://127.0.0.1:9".into()), ..S3Config::default() };
        let kms_without_sse = S3Config { sse_kms_key_id: Some("k".into()), ..S3Config::default() };
        let bad_sse = S3Config { sse: Some("rot13".into()), ..S3Config::default() };
        for (bucket, prefix, cfg, want) in [
            ("bkt", "", &http, "allow_http"),
            ("bkt", "", &kms_without_sse, "requires sse"),
            ("bkt", "", &bad_sse, "rot13"),
            ("", "", &S3Config::default(), "bucket"),
            ("bkt", "a//b", &S3Config::default(), "prefix"),
        ] {
            match S3Storage::connect(bucket, prefix, cfg).await {
                Err(e @ Error::InvalidUrl { .. }) => assert!(e.to_string().contains(want), "{e}"),
                other => panic!("{bucket}/{prefix} {cfg:?}: expected InvalidUrl, got {other:?}"),
            }
        }
        let s3 = S3Storage::connect("bkt", "/a/b/", &S3Config::default()).await.expect("valid settings");
        assert_eq!(s3.to_string(), "s3://bkt/a/b");
        assert_eq!(s3.capabilities(), Capabilities { is_create_atomic: true, has_fsync_dir: false });
    }

    /// Issue 7: schemes are case-insensitive (RFC 3986 section 3.1); messages never show a query string.
    #[tokio::test]
    async fn issue_7_endpoint_scheme_case_and_redaction() {
        let upper = S3Config { endpoint: Some("HTTPS://127.0.0.1:9".into()), ..S3Config::default() };
        S3Storage::connect("bkt", "", &upper).await.expect("HTTPS:// is https://");
        let http = S3Config { endpoint: Some("Http://127.0.0.1:9/?token=s3cr3t".into()), ..S3Config::default() };
        match S3Storage::connect("bkt", "", &http).await {
            Err(e @ Error::InvalidUrl { .. }) => {
                let e = e.to_string();
                assert!(e.contains("allow_http") && !e.contains("s3cr3t"), "{e}");
            }
            other => panic!("expected InvalidUrl, got {other:?}"),
        }
    }
}
