//! Ranged reads ([`crate::storage::Storage::get_range`]) on S3: one `GetObject` with `Range: bytes=first-last`
//! (RFC 9110 section 14.1.2), its answer checked against the range asked for.
//!
//! Invariants: the caller gets exactly the bytes asked for or an error, never a short read.
//! - `206 Partial Content`: `Content-Range: bytes first-last/complete` (RFC 9110 section 14.4) must start where we
//!   asked; a server ends the range early at the object's end, which is [`Error::RangeBeyondEnd`] with the size it
//!   names; a body of another length than the range it announced is a truncated transfer ([`Error::Transient`]).
//! - `200 OK` (a server may ignore `Range`, RFC 9110 section 14.2): the whole object follows; the range is cut out of
//!   the stream and the rest is not read.
//! - `416 Range Not Satisfiable` (the range starts at or past the end, or the object is empty): the size comes from
//!   a `HeadObject`, so the error names it.
//! - A zero-length range cannot be written as a `Range` header: a `HeadObject` answers it (existence and size).

use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};

use super::S3Storage;
use super::error::{Class, cause_chain};
use crate::storage::{Error, Key, Result, Storage as _, range_fits};

/// A parsed `Content-Range: bytes first-last/complete` value (RFC 9110 section 14.4); `complete` is `None` for `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub complete: Option<u64>,
}

/// Parse a satisfied `Content-Range` (`bytes 0-9/10`, `bytes 0-9/*`); `None` for anything else (the unsatisfied
/// form `bytes */10`, another unit, `last < first`).
pub(super) fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, complete) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last) = (first.trim().parse::<u64>().ok()?, last.trim().parse::<u64>().ok()?);
    let complete = match complete.trim() {
        "*" => None,
        n => Some(n.parse::<u64>().ok()?),
    };
    (first <= last).then_some(ContentRange { first, last, complete })
}

impl S3Storage {
    /// [`crate::storage::Storage::get_range`] for S3 (see the module doc).
    pub(super) async fn get_exact_range(&self, key: &Key, offset: u64, len: u64) -> Result<Bytes> {
        let beyond = |size| Error::RangeBeyondEnd { backend: self.to_string(), key: key.clone(), offset, len, size };
        let last = match offset.checked_add(len) {
            Some(end) if len > 0 => end - 1,
            // Zero length, or an end past u64::MAX: only the object's size can answer.
            _ => {
                let size = self.head(key).await?.size;
                return if range_fits(size, offset, len) { Ok(Bytes::new()) } else { Err(beyond(size)) };
            }
        };
        let asked = format!("bytes={offset}-{last}");
        let sent =
            self.client.get_object().bucket(&self.bucket).key(self.object_key(key.as_str())).range(&asked).send().await;
        let out = match sent {
            Ok(out) => out,
            Err(e) => {
                return match self.describe(&e) {
                    (Class::InvalidRange, message) => {
                        let size = self.head(key).await?.size;
                        if range_fits(size, offset, len) {
                            // Replaced between the two requests (objects are create-only, so this is rare): retry.
                            Err(self.class_error(Class::Transient, "get", key.as_str(), message))
                        } else {
                            Err(beyond(size))
                        }
                    }
                    (class, message) => Err(self.class_error(class, "get", key.as_str(), message)),
                };
            }
        };
        let mismatch = |what: String| self.class_error(Class::Other, "get", key.as_str(), what);
        match out.content_range() {
            Some(value) => {
                let Some(got) = parse_content_range(value) else {
                    return Err(mismatch(format!("asked for {asked}, the answer's Content-Range is {value:?}")));
                };
                if got.first != offset || got.last > last {
                    return Err(mismatch(format!("asked for {asked}, the answer's Content-Range is {value:?}")));
                }
                if got.last < last {
                    // The server cut the range at the object's end.
                    let size = match got.complete {
                        Some(size) => size,
                        None => self.head(key).await?.size,
                    };
                    return Err(beyond(size.min(got.last + 1)));
                }
                self.read_partial(key, out.body, len).await
            }
            None => {
                // 200: the whole object follows.
                let size = out.content_length().and_then(|n| u64::try_from(n).ok());
                match size {
                    Some(size) if !range_fits(size, offset, len) => Err(beyond(size)),
                    _ => self.cut_from_whole(key, out.body, offset, len).await,
                }
            }
        }
    }

    /// The body of a `206` answer: exactly `len` bytes. Shorter is a truncated transfer ([`Error::Transient`]),
    /// longer contradicts its own `Content-Range`.
    async fn read_partial(&self, key: &Key, body: ByteStream, len: u64) -> Result<Bytes> {
        let data = match body.collect().await {
            Ok(data) => data.into_bytes(),
            Err(e) => return Err(self.class_error(Class::Transient, "get", key.as_str(), cause_chain(&e))),
        };
        let got = data.len() as u64;
        if got == len {
            Ok(data)
        } else if got < len {
            let message = format!("response body ended after {got} of {len} bytes");
            Err(self.class_error(Class::Transient, "get", key.as_str(), message))
        } else {
            let message = format!("response body has {got} bytes, its Content-Range says {len}");
            Err(self.class_error(Class::Other, "get", key.as_str(), message))
        }
    }

    /// The body of a `200` answer (the whole object): skip `skip` bytes, return the next `len`, and stop reading
    /// there. A body that ends early is a truncated transfer ([`Error::Transient`]).
    async fn cut_from_whole(&self, key: &Key, mut body: ByteStream, skip: u64, len: u64) -> Result<Bytes> {
        // The caller checked that skip + len fits in the object; memory for `len` bytes is the caller's request.
        let mut buf = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
        let (mut skip_left, mut seen) = (skip, 0u64);
        while (buf.len() as u64) < len {
            let chunk = match body.try_next().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    let message = format!("response body ended after {seen} of at least {} bytes", skip + len);
                    return Err(self.class_error(Class::Transient, "get", key.as_str(), message));
                }
                Err(e) => return Err(self.class_error(Class::Transient, "get", key.as_str(), cause_chain(&e))),
            };
            seen += chunk.len() as u64;
            let cut = usize::try_from(skip_left).unwrap_or(usize::MAX).min(chunk.len());
            skip_left -= cut as u64;
            let rest = &chunk[cut..];
            let want = usize::try_from(len - buf.len() as u64).unwrap_or(usize::MAX).min(rest.len());
            buf.extend_from_slice(&rest[..want]);
        }
        Ok(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_table() {
        let cr = |first, last, complete| Some(ContentRange { first, last, complete });
        for (value, want) in [
            ("bytes 0-9/10", cr(0, 9, Some(10))),
            ("bytes 2-4/10", cr(2, 4, Some(10))),
            ("bytes 5-5/*", cr(5, 5, None)),
            (" bytes 0-1099511627775/1099511627776 ", cr(0, (1 << 40) - 1, Some(1 << 40))),
            ("bytes */10", None),
            ("bytes 4-2/10", None),
            ("items 0-9/10", None),
            ("bytes 0-9", None),
            ("bytes a-9/10", None),
            ("bytes 0-9/x", None),
            ("", None),
        ] {
            assert_eq!(parse_content_range(value), want, "{value:?}");
        }
    }
}
