//! Whole-object and large ranged GETs at disk speed: `s3s-fs` 0.14.1 streams an object in 4 KiB reads through
//! `tokio::fs` (one blocking-pool round trip each), about 80 MiB/s here. [`FastGet`] lets `s3s-fs` answer every
//! request (so headers, ETag, checksums, errors and ranges are its own) and only replaces the body of a
//! `GetObject` answer with the same bytes read 1 MiB at a time.
//!
//! The body is read from a second open of the file: an object replaced between the two opens would be served with
//! the old object's headers (benchmarks and tests never replace an object while reading it).
//!
//! Every operation `s3s-fs` 0.14.1 implements is forwarded unchanged. `ListMultipartUploads`, which `s3s-fs` does
//! not implement (`backupctl gc` lists incomplete uploads to remove them), is answered from a table of the uploads
//! created through this server and not yet completed or aborted, kept in memory (a restarted server forgets
//! them: its uploads' parts are then never listed). The other operations `s3s-fs` lacks answer `NotImplemented`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use path_absolutize::Absolutize as _;
use s3s::dto;
use s3s::{S3, S3Request, S3Response, S3Result};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

/// Read size of the replacement body.
const CHUNK: usize = 1 << 20;

/// `s3s_fs::FileSystem` with faster `GetObject` bodies.
pub struct FastGet {
    inner: s3s_fs::FileSystem,
    /// The store's root, resolved the way `s3s-fs` resolves it (absolute, canonical).
    root: PathBuf,
    /// Open multipart uploads: (bucket, key, upload id) and when each was created.
    uploads: Mutex<BTreeMap<(String, String, String), SystemTime>>,
}

/// Most uploads one `ListMultipartUploads` answer lists (S3's own limit).
const MAX_UPLOADS: usize = 1000;

impl FastGet {
    /// Serve the directory `root`.
    pub fn new(root: &std::path::Path) -> Result<Self, String> {
        let inner = s3s_fs::FileSystem::new(root).map_err(|e| format!("{e:?}"))?;
        let root = std::env::current_dir()
            .and_then(|d| d.join(root).canonicalize())
            .map_err(|e| format!("{}: {e}", root.display()))?;
        Ok(Self { inner, root, uploads: Mutex::default() })
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String, String), SystemTime>> {
        // Poisoned only if a request panicked while holding it; the table itself is whole.
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where `s3s-fs` keeps `bucket/key`: joined under the root and normalised inside it (`..` cannot leave it).
    fn object_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        let joined = std::path::Path::new(bucket).join(key);
        joined.absolutize_virtually(&self.root).ok().map(|p| p.into_owned())
    }
}

/// The first byte of a `Content-Range: bytes first-last/size` value.
fn range_start(content_range: &str) -> Option<u64> {
    content_range.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}

#[async_trait::async_trait]
impl S3 for FastGet {
    async fn get_object(&self, req: S3Request<dto::GetObjectInput>) -> S3Result<S3Response<dto::GetObjectOutput>> {
        let path = self.object_path(&req.input.bucket, &req.input.key);
        let mut resp = S3::get_object(&self.inner, req).await?;
        let out = &mut resp.output;
        let start = match out.content_range.as_deref() {
            Some(cr) => range_start(cr),
            None => Some(0),
        };
        let len = out.content_length.and_then(|n| u64::try_from(n).ok());
        if let (Some(path), Some(start), Some(len)) = (path, start, len) {
            // On any trouble keep s3s-fs's own body, which is correct, only slower.
            if let Ok(mut file) = tokio::fs::File::open(&path).await
                && file.seek(std::io::SeekFrom::Start(start)).await.is_ok()
            {
                let body = tokio_util::io::ReaderStream::with_capacity(file.take(len), CHUNK);
                out.body = Some(dto::StreamingBlob::wrap(body));
            }
        }
        Ok(resp)
    }

    async fn create_bucket(
        &self,
        req: S3Request<dto::CreateBucketInput>,
    ) -> S3Result<S3Response<dto::CreateBucketOutput>> {
        S3::create_bucket(&self.inner, req).await
    }
    async fn copy_object(&self, req: S3Request<dto::CopyObjectInput>) -> S3Result<S3Response<dto::CopyObjectOutput>> {
        S3::copy_object(&self.inner, req).await
    }
    async fn delete_bucket(
        &self,
        req: S3Request<dto::DeleteBucketInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketOutput>> {
        S3::delete_bucket(&self.inner, req).await
    }
    async fn delete_object(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        S3::delete_object(&self.inner, req).await
    }
    async fn delete_objects(
        &self,
        req: S3Request<dto::DeleteObjectsInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectsOutput>> {
        S3::delete_objects(&self.inner, req).await
    }
    async fn get_bucket_location(
        &self,
        req: S3Request<dto::GetBucketLocationInput>,
    ) -> S3Result<S3Response<dto::GetBucketLocationOutput>> {
        S3::get_bucket_location(&self.inner, req).await
    }
    async fn head_bucket(&self, req: S3Request<dto::HeadBucketInput>) -> S3Result<S3Response<dto::HeadBucketOutput>> {
        S3::head_bucket(&self.inner, req).await
    }
    async fn head_object(&self, req: S3Request<dto::HeadObjectInput>) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        S3::head_object(&self.inner, req).await
    }
    async fn list_buckets(
        &self,
        req: S3Request<dto::ListBucketsInput>,
    ) -> S3Result<S3Response<dto::ListBucketsOutput>> {
        S3::list_buckets(&self.inner, req).await
    }
    async fn list_objects(
        &self,
        req: S3Request<dto::ListObjectsInput>,
    ) -> S3Result<S3Response<dto::ListObjectsOutput>> {
        S3::list_objects(&self.inner, req).await
    }
    async fn list_objects_v2(
        &self,
        req: S3Request<dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
        S3::list_objects_v2(&self.inner, req).await
    }
    async fn put_object(&self, req: S3Request<dto::PutObjectInput>) -> S3Result<S3Response<dto::PutObjectOutput>> {
        S3::put_object(&self.inner, req).await
    }
    async fn create_multipart_upload(
        &self,
        req: S3Request<dto::CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CreateMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let resp = S3::create_multipart_upload(&self.inner, req).await?;
        if let Some(id) = &resp.output.upload_id {
            self.uploads().insert((bucket, key, id.clone()), SystemTime::now());
        }
        Ok(resp)
    }
    async fn list_multipart_uploads(
        &self,
        req: S3Request<dto::ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<dto::ListMultipartUploadsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        // After the markers: a later key, or the marker's key with a later upload id (when one is given).
        let is_after = |k: &String, id: &String| match (&input.key_marker, &input.upload_id_marker) {
            (None, _) => true,
            (Some(km), None) => k > km,
            (Some(km), Some(im)) => k > km || (k == km && id > im),
        };
        let max = input.max_uploads.map_or(MAX_UPLOADS, |m| usize::try_from(m).unwrap_or(0).min(MAX_UPLOADS));
        let matching: Vec<(String, String, SystemTime)> = self
            .uploads()
            .iter()
            .filter(|((b, k, id), _)| *b == input.bucket && k.starts_with(&prefix) && is_after(k, id))
            .map(|((_, k, id), t)| (k.clone(), id.clone(), *t))
            .collect();
        let is_truncated = matching.len() > max;
        let listed: Vec<dto::MultipartUpload> = matching
            .into_iter()
            .take(max)
            .map(|(key, id, t)| dto::MultipartUpload {
                key: Some(key),
                upload_id: Some(id),
                initiated: Some(t.into()),
                ..Default::default()
            })
            .collect();
        let last = listed.last().map(|u| (u.key.clone(), u.upload_id.clone()));
        let output = dto::ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: i32::try_from(max).ok(),
            is_truncated: Some(is_truncated),
            next_key_marker: if is_truncated { last.clone().and_then(|l| l.0) } else { None },
            next_upload_id_marker: if is_truncated { last.and_then(|l| l.1) } else { None },
            uploads: Some(listed),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }
    async fn upload_part(&self, req: S3Request<dto::UploadPartInput>) -> S3Result<S3Response<dto::UploadPartOutput>> {
        S3::upload_part(&self.inner, req).await
    }
    async fn upload_part_copy(
        &self,
        req: S3Request<dto::UploadPartCopyInput>,
    ) -> S3Result<S3Response<dto::UploadPartCopyOutput>> {
        S3::upload_part_copy(&self.inner, req).await
    }
    async fn list_parts(&self, req: S3Request<dto::ListPartsInput>) -> S3Result<S3Response<dto::ListPartsOutput>> {
        S3::list_parts(&self.inner, req).await
    }
    async fn complete_multipart_upload(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        let id = (req.input.bucket.clone(), req.input.key.clone(), req.input.upload_id.clone());
        let resp = S3::complete_multipart_upload(&self.inner, req).await?;
        self.uploads().remove(&id);
        Ok(resp)
    }
    async fn abort_multipart_upload(
        &self,
        req: S3Request<dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
        let id = (req.input.bucket.clone(), req.input.key.clone(), req.input.upload_id.clone());
        let resp = S3::abort_multipart_upload(&self.inner, req).await?;
        self.uploads().remove(&id);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::range_start;

    #[test]
    fn range_starts() {
        assert_eq!(range_start("bytes 0-9/10"), Some(0));
        assert_eq!(range_start("bytes 4096-8191/65536"), Some(4096));
        assert_eq!(range_start("bytes */10"), None);
    }
}
