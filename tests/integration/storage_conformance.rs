//! One storage contract, checked against every backend: a local directory and S3 (moto on loopback).

use std::time::{Duration, Instant};

use aws_sdk_s3::types::{ChecksumMode, ServerSideEncryption};
use backupctl::config::S3Config;
use backupctl::storage::fs::FsStorage;
use backupctl::storage::s3::S3Storage;
use backupctl::storage::{self, Error, Key, PutMode, Storage};
use base64::Engine as _;
use bytes::Bytes;

use crate::support;

const MIB: usize = 1024 * 1024;

fn key(s: &str) -> Key {
    Key::new(s).expect("valid test key")
}

/// A body whose bytes depend on their offset and `seed`, so misplaced ranges or parts show up.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect::<Vec<u8>>().into()
}

/// Small multipart settings, so that a 12 MiB object is uploaded in three parts.
fn multipart(mut cfg: S3Config) -> S3Config {
    cfg.multipart_threshold_mib = 5;
    cfg.multipart_part_size_mib = 5;
    cfg
}

/// The contract every backend must meet.
pub(crate) async fn conformance(store: &dyn Storage) {
    round_trip(store).await;
    ranges(store).await;
    listing(store).await;
    create_and_overwrite(store).await;
    deletion(store).await;
    large_object(store).await;
}

async fn round_trip(store: &dyn Storage) {
    for (name, body) in
        [("rt/empty", Bytes::new()), ("rt/small", Bytes::from_static(b"hello")), ("rt/1mib", pattern(MIB, 7))]
    {
        store.put(&key(name), body.clone(), PutMode::Overwrite).await.expect("put");
        assert_eq!(store.get(&key(name)).await.expect("get"), body, "{store}: {name}");
        let meta = store.head(&key(name)).await.expect("head");
        assert_eq!((meta.key, meta.size), (key(name), body.len() as u64), "{store}: head {name}");
        assert!(store.exists(&key(name)).await.expect("exists"));
    }
    for result in [store.get(&key("rt/missing")).await.map(drop), store.head(&key("rt/missing")).await.map(drop)] {
        assert!(matches!(result, Err(Error::NotFound { .. })), "{store}: missing object: {result:?}");
    }
    assert!(!store.exists(&key("rt/missing")).await.expect("exists"));
}

/// Issue 10: `get_range(key, offset, len)` returns exactly those bytes, or a typed error; never a short read.
async fn ranges(store: &dyn Storage) {
    let k = key("range/digits");
    store.put(&k, Bytes::from_static(b"0123456789"), PutMode::Overwrite).await.expect("put");
    for (offset, len, want) in [
        (0, 10, &b"0123456789"[..]),
        (0, 3, b"012"), // start
        (2, 3, b"234"), // middle
        (7, 3, b"789"), // end
        (9, 1, b"9"),   // last byte
        (0, 0, b""),    // zero length at the start
        (4, 0, b""),    // in the middle
        (10, 0, b""),   // at the end
    ] {
        let got = store.get_range(&k, offset, len).await.unwrap_or_else(|e| panic!("{store}: {offset}+{len}: {e}"));
        assert_eq!(&got[..], want, "{store}: {len} bytes at {offset}");
    }
    // Past the end: a typed error naming the object's size, never the bytes that exist.
    for (offset, len) in [(8, 3), (0, 11), (10, 1), (20, 5), (11, 0), (u64::MAX, 1), (1, u64::MAX)] {
        match store.get_range(&k, offset, len).await {
            Err(e @ Error::RangeBeyondEnd { size: 10, .. }) => {
                assert!(e.is_range_beyond_end());
                let message = e.to_string();
                assert!(message.contains("range/digits") && message.contains("10 bytes") && !message.contains('\n'));
            }
            other => panic!("{store}: {len} bytes at {offset} of a 10-byte object: {other:?}"),
        }
    }
    let empty = key("range/empty");
    store.put(&empty, Bytes::new(), PutMode::Overwrite).await.expect("put");
    assert_eq!(store.get_range(&empty, 0, 0).await.expect("nothing of nothing"), Bytes::new(), "{store}");
    for (offset, len) in [(0, 1), (1, 0), (3, 4)] {
        let result = store.get_range(&empty, offset, len).await;
        assert!(
            matches!(result, Err(Error::RangeBeyondEnd { size: 0, .. })),
            "{store}: empty {offset}+{len}: {result:?}"
        );
    }
    for (offset, len) in [(0, 4), (0, 0), (5, 0), (5, 1)] {
        let result = store.get_range(&key("range/missing"), offset, len).await;
        assert!(
            matches!(result, Err(Error::NotFound { .. })),
            "{store}: {offset}+{len} of a missing object: {result:?}"
        );
    }
}

async fn listing(store: &dyn Storage) {
    let names = ["ls/wal/0002/c", "ls/wal/0001/b", "ls/wal/0001/a", "ls/walx/d", "ls/top"];
    for (i, name) in names.iter().enumerate() {
        store.put(&key(name), pattern(i + 1, 0), PutMode::Overwrite).await.expect("put");
    }
    for (prefix, want) in [
        ("ls/wal/", &["ls/wal/0001/a", "ls/wal/0001/b", "ls/wal/0002/c"][..]),
        ("ls/wal", &["ls/wal/0001/a", "ls/wal/0001/b", "ls/wal/0002/c", "ls/walx/d"]),
        ("ls/wal/0001/", &["ls/wal/0001/a", "ls/wal/0001/b"]),
        ("ls/", &["ls/top", "ls/wal/0001/a", "ls/wal/0001/b", "ls/wal/0002/c", "ls/walx/d"]),
        ("ls/nothing/", &[]),
    ] {
        let listed = store.list(prefix).await.unwrap_or_else(|e| panic!("{store}: list {prefix:?}: {e}"));
        let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, want, "{store}: list {prefix:?}");
        for meta in &listed {
            let i = names.iter().position(|n| *n == meta.key.as_str()).expect("listed key was written");
            assert_eq!(meta.size, i as u64 + 1, "{store}: size of {}", meta.key);
        }
    }
    let all = store.list("").await.expect("list everything");
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "{store}: sorted and unique");
    assert!(all.iter().any(|m| m.key.as_str() == "ls/top"), "{store}: the empty prefix lists everything");
}

async fn create_and_overwrite(store: &dyn Storage) {
    let k = key("create/obj");
    store.put(&k, Bytes::from_static(b"first"), PutMode::Create).await.expect("create a new key");
    let again = store.put(&k, Bytes::from_static(b"second"), PutMode::Create).await;
    assert!(matches!(again, Err(Error::AlreadyExists { .. })), "{store}: create on an existing key: {again:?}");
    assert_eq!(store.get(&k).await.expect("get"), "first", "{store}: a refused create leaves the original");
    store.put(&k, Bytes::from_static(b"third!"), PutMode::Overwrite).await.expect("overwrite");
    assert_eq!(store.get(&k).await.expect("get"), "third!", "{store}: overwrite replaces");
    assert_eq!(store.head(&k).await.expect("head").size, 6);
    assert!(store.capabilities().is_create_atomic, "{store}: create-only puts are atomic");
}

async fn deletion(store: &dyn Storage) {
    let k = key("del/obj");
    store.put(&k, Bytes::from_static(b"x"), PutMode::Overwrite).await.expect("put");
    store.delete(&k).await.expect("delete");
    assert!(matches!(store.get(&k).await, Err(Error::NotFound { .. })), "{store}: get after delete");
    assert!(matches!(store.head(&k).await, Err(Error::NotFound { .. })), "{store}: head after delete");
    assert!(store.list("del/").await.expect("list").is_empty(), "{store}: not listed after delete");
    store.delete(&k).await.expect("deleting a missing object is ok");
    store.put(&k, Bytes::from_static(b"y"), PutMode::Create).await.expect("create after delete");
}

/// Larger than the multipart threshold of [`multipart`]: three parts on S3.
async fn large_object(store: &dyn Storage) {
    let k = key("large/obj");
    let body = pattern(12 * MIB + 123, 42);
    store.put(&k, body.clone(), PutMode::Create).await.expect("put a large object");
    assert!(store.get(&k).await.expect("get") == body, "{store}: large object round trip");
    assert_eq!(store.head(&k).await.expect("head").size, body.len() as u64);
    // Ranges of a pack-sized object: across a part boundary, a large one, the tail, one past the tail.
    for (offset, len) in [(5 * MIB - 3, 6), (MIB + 7, 8 * MIB), (12 * MIB, 123), (0, 1)] {
        let got = store.get_range(&k, offset as u64, len as u64).await.expect("range of a large object");
        assert!(got == body.slice(offset..offset + len), "{store}: {len} bytes at {offset} of a large object");
    }
    let past = store.get_range(&k, 12 * MIB as u64, 124).await;
    assert!(
        matches!(past, Err(Error::RangeBeyondEnd { size, .. }) if size == body.len() as u64),
        "{store}: past the end of a large object: {past:?}"
    );

    let again = store.put(&k, pattern(12 * MIB, 1), PutMode::Create).await;
    assert!(matches!(again, Err(Error::AlreadyExists { .. })), "{store}: large create on an existing key: {again:?}");
    assert!(store.get(&k).await.expect("get") == body, "{store}: a refused large create leaves the original");
    let replacement = pattern(11 * MIB, 3);
    store.put(&k, replacement.clone(), PutMode::Overwrite).await.expect("large overwrite");
    assert!(store.get(&k).await.expect("get") == replacement, "{store}: large overwrite replaces");
}

#[tokio::test]
async fn fs_conformance() {
    let dir = tempfile::tempdir().expect("temp dir");
    conformance(&FsStorage::new(dir.path().join("repo"))).await;
}

#[tokio::test]
async fn fs_conformance_through_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", dir.path().join("repo").display());
    let store = storage::open(&url, &S3Config::default(), Duration::from_secs(5)).await.expect("open");
    assert_eq!(store.to_string(), url);
    conformance(&*store).await;
}

#[tokio::test]
async fn s3_conformance_with_prefix_through_open() {
    let Some(moto) = support::s3::server() else { return };
    let bucket = moto.new_bucket("conformance-prefix").await;
    let url = format!("s3://{bucket}/repo/main");
    let store = storage::open(&url, &multipart(moto.s3_config()), Duration::from_secs(10)).await.expect("open");
    assert_eq!(store.to_string(), url);
    conformance(&*store).await;
    // Every object landed under the prefix.
    let raw = moto.client().list_objects_v2().bucket(&bucket).send().await.expect("raw list");
    assert!(!raw.contents().is_empty());
    assert!(raw.contents().iter().all(|o| o.key().is_some_and(|k| k.starts_with("repo/main/"))), "{raw:?}");
}

#[tokio::test]
async fn s3_conformance_bucket_root() {
    let Some(moto) = support::s3::server() else { return };
    let bucket = moto.new_bucket("conformance-root").await;
    let store = S3Storage::connect(&bucket, "", &multipart(moto.s3_config())).await.expect("connect");
    assert_eq!(store.to_string(), format!("s3://{bucket}"));
    conformance(&store).await;
}

#[tokio::test]
async fn s3_sibling_prefixes_do_not_leak() {
    let Some(moto) = support::s3::server() else { return };
    let bucket = moto.new_bucket("siblings").await;
    let cfg = moto.s3_config();
    let repo = S3Storage::connect(&bucket, "repo", &cfg).await.expect("connect");
    let repo2 = S3Storage::connect(&bucket, "repo2", &cfg).await.expect("connect");
    repo.put(&key("a/k"), Bytes::from_static(b"1"), PutMode::Create).await.expect("put");
    repo2.put(&key("a/k"), Bytes::from_static(b"2"), PutMode::Create).await.expect("put in the sibling");
    let listed: Vec<String> = repo.list("").await.expect("list").into_iter().map(|m| m.key.to_string()).collect();
    assert_eq!(listed, ["a/k"]);
    assert_eq!(repo.get(&key("a/k")).await.expect("get"), "1");
}

#[tokio::test]
async fn s3_put_sends_our_crc32() {
    let Some(moto) = support::s3::server() else { return };
    let bucket = moto.new_bucket("checksum").await;
    let store = S3Storage::connect(&bucket, "p", &moto.s3_config()).await.expect("connect");
    let body = pattern(3 * MIB, 9);
    store.put(&key("seg"), body.clone(), PutMode::Create).await.expect("put");
    let head = moto
        .client()
        .head_object()
        .bucket(&bucket)
        .key("p/seg")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .expect("raw head");
    let want = base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(&body).to_be_bytes());
    assert_eq!(head.checksum_crc32(), Some(want.as_str()));
}

#[tokio::test]
async fn s3_sse_settings_reach_the_server() {
    let Some(moto) = support::s3::server() else { return };
    let bucket = moto.new_bucket("sse").await;
    let client = moto.client();
    let cases = [
        ("AES256", None, ServerSideEncryption::Aes256),
        ("aws:kms", Some("test-kms-key-id"), ServerSideEncryption::AwsKms),
    ];
    for (sse, kms_key, want) in cases {
        let cfg = S3Config {
            sse: Some(sse.to_owned()),
            sse_kms_key_id: kms_key.map(str::to_owned),
            ..multipart(moto.s3_config())
        };
        let store = S3Storage::connect(&bucket, sse, &cfg).await.expect("connect");
        // One single put and one multipart put.
        for (name, len) in [("small", 10), ("large", 6 * MIB)] {
            store.put(&key(name), pattern(len, 5), PutMode::Create).await.expect("put");
            let head = client.head_object().bucket(&bucket).key(format!("{sse}/{name}")).send().await.expect("head");
            assert_eq!(head.server_side_encryption(), Some(&want), "{sse} {name}");
            if let Some(kms_key) = kms_key {
                assert_eq!(head.ssekms_key_id(), Some(kms_key), "{sse} {name}");
            }
        }
    }
}

#[tokio::test]
async fn s3_refused_multipart_create_leaves_no_upload() {
    let Some(moto) = support::s3::server() else { return };
    let bucket = moto.new_bucket("abort").await;
    let store = S3Storage::connect(&bucket, "", &multipart(moto.s3_config())).await.expect("connect");
    store.put(&key("big"), pattern(6 * MIB, 1), PutMode::Create).await.expect("put");
    let again = store.put(&key("big"), pattern(6 * MIB, 2), PutMode::Create).await;
    assert!(matches!(again, Err(Error::AlreadyExists { .. })), "{again:?}");
    let uploads = moto.client().list_multipart_uploads().bucket(&bucket).send().await.expect("list uploads");
    assert!(uploads.uploads().is_empty(), "the refused upload was aborted: {uploads:?}");
}

/// A missing bucket must never read as "object absent": wal-fetch would report the end of the archive.
#[tokio::test]
async fn s3_missing_bucket_is_not_not_found() {
    let Some(moto) = support::s3::server() else { return };
    let store = S3Storage::connect("no-such-bucket-here", "p", &moto.s3_config()).await.expect("connect");
    let get = store.get(&key("k")).await.expect_err("no bucket");
    assert!(matches!(get, Error::Other { .. }), "{get:?}");
    assert!(get.to_string().contains("HTTP 404 NoSuchBucket"), "{get}");
    let list = store.list("").await.expect_err("no bucket");
    assert!(matches!(list, Error::Other { .. }), "{list:?}");
    let put = store.put(&key("k"), Bytes::from_static(b"x"), PutMode::Create).await.expect_err("no bucket");
    assert!(matches!(put, Error::Other { .. }), "{put:?}");
}

#[tokio::test]
async fn s3_unreachable_endpoint_is_transient() {
    support::s3::use_test_credentials();
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let cfg = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        force_path_style: true,
        allow_http: true,
        ..S3Config::default()
    };
    let direct = S3Storage::connect("nobody-home", "p", &cfg).await.expect("connect sends no request");
    let err = direct.get(&key("k")).await.expect_err("nothing listens");
    assert!(matches!(err, Error::Transient { attempts: 1, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.to_lowercase().contains("connection refused"), "{message}");
    assert!(message.starts_with("s3://nobody-home/p: get k failed") && !message.contains('\n'), "{message}");
    assert!(message.contains(&format!("endpoint http://127.0.0.1:{port}")), "{message}");

    let store = storage::open("s3://nobody-home/p", &cfg, Duration::from_secs(2)).await.expect("open");
    let started = Instant::now();
    let err = store.get(&key("k")).await.expect_err("nothing listens");
    let elapsed = started.elapsed();
    assert!(matches!(&err, Error::Transient { attempts, .. } if *attempts > 1), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("connection refused"), "{err}");
    // `Retrying` stops once its planned backoff would pass the deadline, so it may give up somewhat before it.
    assert!(elapsed < Duration::from_secs(8), "gave up after {elapsed:?}");
}

#[tokio::test]
async fn open_rejects_bad_urls() {
    for url in ["ftp://host/x", "file://relative/path", "s3://", "s3:///prefix", "/srv/archive", ""] {
        let result = storage::open(url, &S3Config::default(), Duration::from_secs(1)).await;
        assert!(matches!(result, Err(Error::InvalidUrl { .. })), "{url:?}: {result:?}");
    }
}
