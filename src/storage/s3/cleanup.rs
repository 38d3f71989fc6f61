//! Cleaning up: incomplete multipart uploads (ListMultipartUploads, ListParts) and batch deletes (DeleteObjects).

use super::error::Class;
use super::{S3Storage, join_key, strip_key};
use crate::storage::{Incomplete, Key, Result};

/// Keys per `DeleteObjects` request (S3's limit).
pub(super) const DELETE_BATCH: usize = 1000;

impl S3Storage {
    /// ListMultipartUploads under `prefix`, page by page; each upload's size from ListParts.
    pub(super) async fn multipart_uploads(&self, prefix: &str) -> Result<Vec<Incomplete>> {
        let full_prefix = join_key(&self.prefix, prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.error("list", prefix, &e))?;
            for upload in page.uploads() {
                let (Some(object_key), Some(upload_id)) = (upload.key(), upload.upload_id()) else { continue };
                let Some(name) = strip_key(&self.prefix, object_key) else { continue };
                let modified = upload.initiated().and_then(|t| std::time::SystemTime::try_from(*t).ok());
                // The size is for the report only: a server that cannot answer ListParts (moto's reply does not
                // parse) must not stop the cleanup.
                let size = match self.upload_size(object_key, upload_id).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(key = object_key, backend = %self, error = %e, "size of an incomplete upload unknown");
                        0
                    }
                };
                out.push(Incomplete { name: name.to_owned(), upload_id: Some(upload_id.to_owned()), size, modified });
            }
            match (page.is_truncated(), page.next_key_marker(), page.next_upload_id_marker()) {
                (Some(true), Some(k), u) => {
                    key_marker = Some(k.to_owned());
                    id_marker = u.map(str::to_owned);
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Bytes of the parts uploaded so far (0 if the upload vanished meanwhile).
    async fn upload_size(&self, object_key: &str, upload_id: &str) -> Result<u64> {
        let mut total = 0u64;
        let mut marker = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(object_key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => match self.describe(&e) {
                    (Class::NotFound, _) => return Ok(total),
                    (class, message) => return Err(self.class_error(class, "list", object_key, message)),
                },
            };
            total += page.parts().iter().filter_map(|p| p.size()).map(|n| u64::try_from(n).unwrap_or(0)).sum::<u64>();
            match (page.is_truncated(), page.next_part_number_marker()) {
                (Some(true), Some(m)) => marker = Some(m.to_owned()),
                _ => return Ok(total),
            }
        }
    }

    /// One `DeleteObjects` request for at most [`DELETE_BATCH`] keys; any key it could not delete is an error
    /// naming it.
    pub(super) async fn delete_batch(&self, keys: &[Key]) -> Result<u64> {
        let first = keys.first().map_or("", Key::as_str);
        let mut objects = Vec::with_capacity(keys.len());
        for key in keys {
            let id = aws_sdk_s3::types::ObjectIdentifier::builder()
                .key(self.object_key(key.as_str()))
                .build()
                .map_err(|e| self.class_error(Class::Other, "delete", key.as_str(), e.to_string()))?;
            objects.push(id);
        }
        let delete = aws_sdk_s3::types::Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| self.class_error(Class::Other, "delete", first, e.to_string()))?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| self.error("delete", first, &e))?;
        if let Some(failed) = out.errors().first() {
            let key = failed.key().and_then(|k| strip_key(&self.prefix, k)).unwrap_or(first).to_owned();
            let message = format!(
                "{} of {} keys not deleted, this one: {} {}",
                out.errors().len(),
                keys.len(),
                failed.code().unwrap_or("?"),
                failed.message().unwrap_or("")
            );
            let class = match failed.code() {
                Some("AccessDenied") => Class::PermissionDenied,
                Some("InternalError" | "SlowDown" | "ServiceUnavailable") => Class::Transient,
                _ => Class::Other,
            };
            return Err(self.class_error(class, "delete", &key, message));
        }
        Ok(keys.len() as u64)
    }
}
