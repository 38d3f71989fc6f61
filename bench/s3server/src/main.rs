//! bench-s3server: an S3-protocol server on a directory for backupctl's benchmarks.
//!
//! The store is the `s3s-fs` crate's `FileSystem` (a bucket is a sub-directory of ROOT, an object a file), served
//! over HTTP by the `s3s` crate, both used as libraries at 0.14.1. Four things differ from the `s3s-fs` binary:
//!
//! - Every accepted socket gets `TCP_NODELAY`. Without it, a small response waits for the client's delayed ACK
//!   (Nagle's algorithm, RFC 896, meeting delayed ACKs, RFC 1122 section 4.2.3.2): about 44 ms per small GET
//!   here instead of under 2 ms, which makes any many-small-requests workload (a restore) look several times
//!   slower than it is.
//! - Create-only writes are atomic. `s3s-fs` answers `If-None-Match: *` (on `PutObject` and
//!   `CompleteMultipartUpload`) by checking whether the file exists and then writing it: two concurrent
//!   create-only puts of one key can both pass the check and both succeed, the second replacing the first. This
//!   server serialises every request that can create or replace an object (`PUT` other than `UploadPart`, and
//!   `POST ...?uploadId=` = `CompleteMultipartUpload`) per object path, so the check and the write happen as one
//!   step, as S3 promises: one create wins, the others get `412 Precondition Failed`.
//!
//! - An error answer to a `PUT` or `POST` says `Connection: close`: it may come before the request body was read,
//!   and hyper then drops the connection, which a client must not reuse.
//!
//! - `GetObject` bodies are read 1 MiB at a time instead of 4 KiB (`fast_get`): large GETs run at disk speed.
//!
//! `--plain` turns all four off and behaves like the `s3s-fs` 0.14.1 binary (for side-by-side measurements).
//!
//! In both modes the server counts requests by S3 operation and bucket, with the body bytes in and out
//! (`stats`), and answers `GET /_bench/stats` with the counts as JSON (unsigned; `_` cannot begin a bucket name).
//! A benchmark reads them before and after a step: `curl -s http://127.0.0.1:P/_bench/stats`.
//!
//! Usage: `bench-s3server --host 127.0.0.1 --port P --access-key K --secret-key S ROOT` (ROOT must exist; create
//! `ROOT/BUCKET` or send `CreateBucket`).

use std::future::Future;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

mod fast_get;
mod stats;

use clap::Parser;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// How many locks the object paths are spread over: writes to different objects rarely wait for each other.
const STRIPES: usize = 1024;

/// Command line (the same flags as the `s3s-fs` binary, plus `--plain`).
#[derive(Debug, Parser)]
#[command(
    version,
    about = "s3s-fs with TCP_NODELAY and atomic create-only puts, for benchmarks",
    after_help = "Request accounting: `GET /_bench/stats` (unsigned) answers with the requests counted so far by \
                  S3 operation and bucket, and the body bytes in and out, as JSON (counters only grow: take the \
                  difference of two readings). Path-style requests only."
)]
struct Opt {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8014)]
    port: u16,
    /// Access key clients must sign with (with --secret-key; both absent: no authentication).
    #[arg(long, requires = "secret_key")]
    access_key: Option<String>,
    /// Secret key clients must sign with.
    #[arg(long, requires = "access_key")]
    secret_key: Option<String>,
    /// Behave like the s3s-fs 0.14.1 binary: no TCP_NODELAY, create-only puts not serialised.
    #[arg(long)]
    plain: bool,
    /// Delay every answer (its first byte) by this many milliseconds, as a remote object store's per-request
    /// latency does (S3 in the same region: tens of ms to the first byte); 0 = none.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Root directory of the store; each sub-directory is a bucket.
    root: PathBuf,
}

/// The s3s service, with the per-object write locks and the request counters.
#[derive(Clone)]
struct Serialised {
    inner: S3Service,
    /// `None` with `--plain`.
    stripes: Option<Arc<Vec<Mutex<()>>>>,
    hasher: std::collections::hash_map::RandomState,
    stats: Arc<stats::Stats>,
    /// Added before each answer (`--latency-ms`).
    latency: std::time::Duration,
}

impl Serialised {
    /// The stripe that guards the object this request may create or replace, or `None` for a request that writes
    /// no object (reads, listings, `UploadPart`, deletes).
    fn stripe(&self, req: &http::Request<Incoming>) -> Option<usize> {
        let query = req.uri().query().unwrap_or("");
        let has_upload_id = query.split('&').any(|kv| kv == "uploadId" || kv.starts_with("uploadId="));
        let writes_object = match *req.method() {
            // PutObject, CopyObject (and bucket-level PUTs, harmless to serialise); not UploadPart(Copy).
            http::Method::PUT => !has_upload_id,
            // CompleteMultipartUpload.
            http::Method::POST => has_upload_id,
            _ => false,
        };
        if !writes_object {
            return None;
        }
        // The decoded path names the object whichever way a client percent-encoded it.
        Some((self.hasher.hash_one(percent_decode(req.uri().path())) % STRIPES as u64) as usize)
    }
}

impl hyper::service::Service<http::Request<Incoming>> for Serialised {
    type Response = http::Response<stats::Counted<s3s::Body>>;
    type Error = s3s::HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        if req.method() == http::Method::GET && req.uri().path() == stats::STATS_PATH {
            let mut resp = http::Response::new(stats::Counted::new(s3s::Body::from(self.stats.to_json()), None));
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            return Box::pin(async move { Ok(resp) });
        }
        let counters = self.stats.request(&req);
        let lock = self.stripes.clone().zip(self.stripe(&req));
        // A refused upload (412 on a create-only put) is answered before its body has been read; hyper then closes
        // the connection without saying so, and a client that reuses it from its pool fails its next request
        // ("connection closed before message completed"). Saying `Connection: close` (HTTP/1.x) keeps it out of
        // the pool.
        let has_body = self.stripes.is_some()
            && matches!(*req.method(), http::Method::PUT | http::Method::POST)
            && req.version() <= http::Version::HTTP_11;
        let (inner, latency) = (self.inner.clone(), self.latency);
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let mut response = match lock {
                Some((stripes, i)) => {
                    // Held until s3s has answered: the object is in place (or refused) before another write of
                    // the same path starts its existence check.
                    let _guard = stripes[i].lock().await;
                    hyper::service::Service::call(&inner, req).await
                }
                None => hyper::service::Service::call(&inner, req).await,
            };
            if let Ok(resp) = &mut response
                && has_body
                && (resp.status().is_client_error() || resp.status().is_server_error())
            {
                resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            response.map(|resp| {
                counters.status(resp.status());
                resp.map(|body| stats::Counted::new(body, Some(counters)))
            })
        })
    }
}

/// `%XX` sequences decoded into bytes (invalid ones kept as they are).
fn percent_decode(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opt = Opt::parse();
    let store = |e| format!("bench-s3server: cannot use {} as the store: {e}", opt.root.display());
    let mut builder = if opt.plain {
        S3ServiceBuilder::new(s3s_fs::FileSystem::new(&opt.root).map_err(|e| store(format!("{e:?}")))?)
    } else {
        S3ServiceBuilder::new(fast_get::FastGet::new(&opt.root).map_err(store)?)
    };
    if let (Some(ak), Some(sk)) = (opt.access_key, opt.secret_key) {
        builder.set_auth(SimpleAuth::from_single(ak, sk));
    }
    let service = Serialised {
        inner: builder.build(),
        stripes: (!opt.plain).then(|| Arc::new((0..STRIPES).map(|_| Mutex::new(())).collect())),
        hasher: Default::default(),
        stats: Default::default(),
        latency: std::time::Duration::from_millis(opt.latency_ms),
    };
    let listener = TcpListener::bind((opt.host.as_str(), opt.port))
        .await
        .map_err(|e| format!("bench-s3server: cannot listen on {}:{}: {e}", opt.host, opt.port))?;
    eprintln!(
        "bench-s3server: listening on http://{} (root {}, {})",
        listener.local_addr()?,
        opt.root.display(),
        if opt.plain { "plain: like s3s-fs 0.14.1" } else { "TCP_NODELAY, atomic create-only puts" }
    );
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                eprintln!("bench-s3server: accept failed: {e}");
                continue;
            }
        };
        if !opt.plain
            && let Err(e) = socket.set_nodelay(true)
        {
            eprintln!("bench-s3server: cannot set TCP_NODELAY: {e}");
        }
        let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        for (path, want) in [
            ("/b/a/k", &b"/b/a/k"[..]),
            ("/b/a%2Fk", b"/b/a/k"),
            ("/b/%41%7e", b"/b/A~"),
            ("/b/100%", b"/b/100%"),
            ("/b/%zz", b"/b/%zz"),
        ] {
            assert_eq!(percent_decode(path), want, "{path}");
        }
    }
}
