//! Request accounting: how many requests of each S3 operation the server answered, per bucket, and the body bytes
//! that went in and out, so a benchmark can say what a command cost in requests (S3 bills per request).
//!
//! Counters only grow; a benchmark reads them before and after a step and takes the difference. They are read
//! with `GET /_bench/stats` (no signature needed; `_` cannot begin a bucket name, so the path never names an S3
//! resource): one JSON object,
//!
//! ```text
//! {"requests": N, "bytes_in": N, "bytes_out": N, "errors": N,
//!  "ops": {"GetObject": {"requests": N, "bytes_in": N, "bytes_out": N, "errors": N}, ...},
//!  "buckets": {"<bucket>": {"requests": N, "bytes_in": N, "bytes_out": N, "errors": N, "ops": {...}}, ...}}
//! ```
//!
//! - An operation is named as in the S3 API reference (`GetObject`, `PutObject`, `DeleteObjects`,
//!   `ListObjectsV2`, `HeadObject`, `UploadPart`, ...), from the method, the path (path-style addressing:
//!   `/bucket/key`; virtual-host style is not recognised) and the query (`?list-type=2`, `?delete`, `?uploadId=`,
//!   ...), as in <https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations_Amazon_Simple_Storage_Service.html>.
//!   A `GetObject` with a `Range` header is counted as `GetObject (ranged)`; anything else is `Other`.
//! - `bytes_in`: the request body as sent (its `Content-Length`; an aws-chunked upload counts its chunk
//!   signatures too). `bytes_out`: the response body bytes actually sent (counted as the body streams, so a
//!   client that drops a GET half-way is charged only what it received).
//! - `errors`: answers with a status of 400 or more (a `412` refusing a create-only put, a `404` to a `HEAD` of a
//!   missing object: both normal for backupctl, and still requests).
//! - A request is counted when it arrives, its bytes out as they are sent: once the client has seen every answer
//!   (its command has exited), the counts are complete.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};

/// The path that answers with the counts.
pub const STATS_PATH: &str = "/_bench/stats";

/// The counters of one operation on one bucket.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    /// Count an answer's status.
    pub fn status(&self, status: http::StatusCode) {
        if status.as_u16() >= 400 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> [u64; 4] {
        [
            self.requests.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        ]
    }
}

/// The four counts, in the order requests, bytes in, bytes out, errors.
type Row = [u64; 4];

/// Every counter, by (bucket, operation).
#[derive(Debug, Default)]
pub struct Stats {
    by: Mutex<BTreeMap<(String, &'static str), Arc<Counters>>>,
}

impl Stats {
    /// Count a request as it arrives; the returned counters take its status and its response body's bytes.
    pub fn request<B>(&self, req: &http::Request<B>) -> Arc<Counters> {
        let (bucket, op) = classify(req.method(), req.uri().path(), req.uri().query().unwrap_or(""), req.headers());
        let bytes_in = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let counters = {
            // A poisoned lock only means another request panicked while holding it; the map is still whole.
            let mut by = self.by.lock().unwrap_or_else(|e| e.into_inner());
            by.entry((bucket, op)).or_default().clone()
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        counters
    }

    /// The counts as the JSON object described in the module documentation.
    pub fn to_json(&self) -> String {
        let rows: Vec<(String, &'static str, Row)> = {
            let by = self.by.lock().unwrap_or_else(|e| e.into_inner());
            by.iter().map(|((b, op), c)| (b.clone(), *op, c.snapshot())).collect()
        };
        let mut total = [0u64; 4];
        let mut ops: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
        let mut buckets: BTreeMap<&str, (Row, BTreeMap<&str, Row>)> = BTreeMap::new();
        for (bucket, op, c) in &rows {
            add(&mut total, c);
            add(ops.entry(op).or_default(), c);
            let b = buckets.entry(bucket.as_str()).or_default();
            add(&mut b.0, c);
            add(b.1.entry(op).or_default(), c);
        }
        let mut out = String::from("{");
        fields(&mut out, &total);
        out.push_str(", \"ops\": ");
        op_map(&mut out, &ops);
        out.push_str(", \"buckets\": {");
        for (i, (bucket, (t, o))) in buckets.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}: {{", json_str(bucket));
            fields(&mut out, t);
            out.push_str(", \"ops\": ");
            op_map(&mut out, o);
            out.push('}');
        }
        out.push_str("}}\n");
        out
    }
}

fn add(into: &mut [u64; 4], c: &[u64; 4]) {
    for (a, b) in into.iter_mut().zip(c) {
        *a += b;
    }
}

fn fields(out: &mut String, c: &[u64; 4]) {
    let _ =
        write!(out, "\"requests\": {}, \"bytes_in\": {}, \"bytes_out\": {}, \"errors\": {}", c[0], c[1], c[2], c[3]);
}

fn op_map(out: &mut String, ops: &BTreeMap<&str, [u64; 4]>) {
    out.push('{');
    for (i, (op, c)) in ops.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}: {{", json_str(op));
        fields(out, c);
        out.push('}');
    }
    out.push('}');
}

/// A JSON string literal (RFC 8259 section 7).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The bucket (empty for the service: `ListBuckets`) and the S3 operation of a path-style request.
pub fn classify(method: &http::Method, path: &str, query: &str, headers: &http::HeaderMap) -> (String, &'static str) {
    let trimmed = path.trim_start_matches('/');
    let (bucket, key) = match trimmed.split_once('/') {
        Some((b, k)) => (b, k),
        None => (trimmed, ""),
    };
    let has = |name: &str| query.split('&').any(|kv| kv.split('=').next() == Some(name));
    let header = |name: &str| headers.contains_key(name);
    let op = if bucket.is_empty() {
        match *method {
            http::Method::GET => "ListBuckets",
            _ => "Other",
        }
    } else if key.is_empty() {
        match *method {
            http::Method::GET if has("list-type") => "ListObjectsV2",
            http::Method::GET if has("uploads") => "ListMultipartUploads",
            http::Method::GET if has("location") => "GetBucketLocation",
            http::Method::GET if query.is_empty() || has("prefix") || has("marker") || has("delimiter") => {
                "ListObjects"
            }
            http::Method::HEAD => "HeadBucket",
            http::Method::PUT if query.is_empty() => "CreateBucket",
            http::Method::DELETE if query.is_empty() => "DeleteBucket",
            http::Method::POST if has("delete") => "DeleteObjects",
            _ => "Other",
        }
    } else {
        match *method {
            http::Method::GET if has("uploadId") => "ListParts",
            http::Method::GET if !(has("acl") || has("tagging") || has("attributes")) => {
                if header("range") {
                    "GetObject (ranged)"
                } else {
                    "GetObject"
                }
            }
            http::Method::HEAD => "HeadObject",
            http::Method::PUT if has("uploadId") => {
                if header("x-amz-copy-source") {
                    "UploadPartCopy"
                } else {
                    "UploadPart"
                }
            }
            http::Method::PUT if header("x-amz-copy-source") => "CopyObject",
            http::Method::PUT if !(has("acl") || has("tagging")) => "PutObject",
            http::Method::POST if has("uploads") => "CreateMultipartUpload",
            http::Method::POST if has("uploadId") => "CompleteMultipartUpload",
            http::Method::DELETE if has("uploadId") => "AbortMultipartUpload",
            http::Method::DELETE => "DeleteObject",
            _ => "Other",
        }
    };
    (bucket.to_string(), op)
}

/// A response body that adds the bytes it sends to its request's counters.
pub struct Counted<B> {
    inner: B,
    counters: Option<Arc<Counters>>,
}

impl<B> Counted<B> {
    /// `inner`, charged to `counters` (`None`: not counted, as the stats answer itself).
    pub fn new(inner: B, counters: Option<Arc<Counters>>) -> Self {
        Self { inner, counters }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(c)) = (&polled, &self.counters)
            && let Some(data) = frame.data_ref()
        {
            c.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &str, path_and_query: &str, headers: &[&str]) -> (String, &'static str) {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let mut h = http::HeaderMap::new();
        for name in headers {
            h.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), http::HeaderValue::from_static("x"));
        }
        classify(&method.parse().unwrap(), path, query, &h)
    }

    #[test]
    fn operations() {
        for (method, pq, headers, bucket, want) in [
            ("GET", "/", &[][..], "", "ListBuckets"),
            ("GET", "/b?list-type=2&prefix=run1/", &[], "b", "ListObjectsV2"),
            ("GET", "/b?prefix=x", &[], "b", "ListObjects"),
            ("GET", "/b?uploads", &[], "b", "ListMultipartUploads"),
            ("GET", "/b?location", &[], "b", "GetBucketLocation"),
            ("HEAD", "/b", &[], "b", "HeadBucket"),
            ("PUT", "/b", &[], "b", "CreateBucket"),
            ("DELETE", "/b", &[], "b", "DeleteBucket"),
            ("POST", "/b?delete", &[], "b", "DeleteObjects"),
            ("POST", "/b?delete=", &[], "b", "DeleteObjects"),
            ("GET", "/b/run1/packs/ab/cd", &[], "b", "GetObject"),
            ("GET", "/b/k", &["range"], "b", "GetObject (ranged)"),
            ("GET", "/b/k?x-id=GetObject", &[], "b", "GetObject"),
            ("GET", "/b/k?tagging", &[], "b", "Other"),
            ("GET", "/b/k?uploadId=7", &[], "b", "ListParts"),
            ("HEAD", "/b/k", &[], "b", "HeadObject"),
            ("PUT", "/b/k", &[], "b", "PutObject"),
            ("PUT", "/b/k?x-id=PutObject", &[], "b", "PutObject"),
            ("PUT", "/b/k", &["x-amz-copy-source"], "b", "CopyObject"),
            ("PUT", "/b/k?partNumber=1&uploadId=7", &[], "b", "UploadPart"),
            ("PUT", "/b/k?partNumber=1&uploadId=7", &["x-amz-copy-source"], "b", "UploadPartCopy"),
            ("POST", "/b/k?uploads", &[], "b", "CreateMultipartUpload"),
            ("POST", "/b/k?uploadId=7", &[], "b", "CompleteMultipartUpload"),
            ("DELETE", "/b/k?uploadId=7", &[], "b", "AbortMultipartUpload"),
            ("DELETE", "/b/k", &[], "b", "DeleteObject"),
            ("PATCH", "/b/k", &[], "b", "Other"),
        ] {
            assert_eq!(op(method, pq, headers), (bucket.to_string(), want), "{method} {pq}");
        }
    }

    #[test]
    fn json_totals_ops_and_buckets() {
        let stats = Stats::default();
        let get = |uri: &str, len: &str| {
            http::Request::builder().method("PUT").uri(uri).header("content-length", len).body(()).unwrap()
        };
        let a = stats.request(&get("/b1/k", "10"));
        a.bytes_out.fetch_add(5, Ordering::Relaxed);
        a.status(http::StatusCode::PRECONDITION_FAILED);
        stats.request(&get("/b2/k", "7"));
        let json = stats.to_json();
        assert_eq!(
            json,
            "{\"requests\": 2, \"bytes_in\": 17, \"bytes_out\": 5, \"errors\": 1, \"ops\": {\"PutObject\": \
             {\"requests\": 2, \"bytes_in\": 17, \"bytes_out\": 5, \"errors\": 1}}, \"buckets\": {\"b1\": \
             {\"requests\": 1, \"bytes_in\": 10, \"bytes_out\": 5, \"errors\": 1, \"ops\": {\"PutObject\": \
             {\"requests\": 1, \"bytes_in\": 10, \"bytes_out\": 5, \"errors\": 1}}}, \"b2\": {\"requests\": 1, \
             \"bytes_in\": 7, \"bytes_out\": 0, \"errors\": 0, \"ops\": {\"PutObject\": {\"requests\": 1, \
             \"bytes_in\": 7, \"bytes_out\": 0, \"errors\": 0}}}}}\n"
        );
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
