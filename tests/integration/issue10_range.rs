//! Issue 10: ranged reads for restores from packs, on both backends: faults and retries apply to them, many run
//! at once against one pack-sized object, and create-only puts stay create-only under concurrency. The storage
//! contract of `get_range` itself (start, middle, end, past the end, zero length, missing) is in
//! `storage_conformance`.

use std::sync::Arc;
use std::time::Duration;

use backupctl::config::S3Config;
use backupctl::storage::fs::FsStorage;
use backupctl::storage::retry::Retrying;
use backupctl::storage::s3::S3Storage;
use backupctl::storage::testing::Faulty;
use backupctl::storage::{DynStorage, Error, Key, PutMode, Storage};
use bytes::Bytes;
use futures_util::StreamExt as _;

use crate::support;

const MIB: usize = 1024 * 1024;

fn key(s: &str) -> Key {
    Key::new(s).expect("valid test key")
}

/// Bytes that depend on their offset, so a misplaced range shows up.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len).map(|i| ((i / 7) % 253) as u8 ^ seed).collect::<Vec<u8>>().into()
}

/// The backends under test: a local directory and, when moto is available, a fresh S3 bucket.
async fn backends(dir: &std::path::Path, name: &str) -> Vec<DynStorage> {
    let mut out: Vec<DynStorage> = vec![Arc::new(FsStorage::new(dir.join(name)))];
    if let Some(moto) = support::s3::server() {
        let bucket = moto.new_bucket(name).await;
        out.push(Arc::new(S3Storage::connect(&bucket, "repo", &moto.s3_config()).await.expect("connect")));
    }
    out
}

/// Faults injected by `Faulty` reach ranged reads too; `Retrying` retries them, but not a range past the end.
#[tokio::test]
async fn issue_10_get_range_faults_and_retries() {
    let dir = tempfile::tempdir().expect("temp dir");
    for inner in backends(dir.path(), "range-faults").await {
        let body = pattern(3 * MIB, 1);
        inner.put(&key("pack/a"), body.clone(), PutMode::Create).await.expect("put");

        let faulty = Arc::new(Faulty::new(inner.clone(), 1, Duration::ZERO));
        let err = faulty.get_range(&key("pack/a"), 10, 20).await.expect_err("first call fails");
        assert!(err.is_transient(), "{inner}: {err}");

        let faulty = Arc::new(Faulty::new(inner.clone(), 2, Duration::ZERO));
        let store = Retrying::new(faulty.clone(), Duration::from_secs(20));
        let got = store.get_range(&key("pack/a"), MIB as u64 - 5, 10).await.expect("after retries");
        assert_eq!(got, body.slice(MIB - 5..MIB + 5), "{inner}");
        assert_eq!(faulty.calls(), 3, "{inner}: two failures, then the read");

        let past = store.get_range(&key("pack/a"), 3 * MIB as u64 - 1, 2).await;
        assert!(matches!(past, Err(Error::RangeBeyondEnd { size, .. }) if size == 3 * MIB as u64), "{inner}: {past:?}");
        assert_eq!(faulty.calls(), 4, "{inner}: a range past the end is not retried");
        let missing = store.get_range(&key("pack/none"), 0, 1).await;
        assert!(matches!(missing, Err(Error::NotFound { .. })), "{inner}: {missing:?}");
        assert_eq!(faulty.calls(), 5, "{inner}: a missing object is not retried");
    }
}

/// Many ranged reads of one pack-sized object at once (what a restore does), each exactly its bytes.
#[tokio::test]
async fn issue_10_concurrent_ranges_of_a_pack() {
    let dir = tempfile::tempdir().expect("temp dir");
    for store in backends(dir.path(), "range-concurrent").await {
        let len = 24 * MIB + 4321;
        let body = pattern(len, 9);
        store.put(&key("pack/big"), body.clone(), PutMode::Create).await.expect("put a pack");
        // Deterministic offsets and lengths from 1 byte to 300 KiB, ending exactly at the end once.
        let mut ranges: Vec<(usize, usize)> = (0..200usize)
            .map(|i| {
                let n = 1 + (i * 7919) % (300 * 1024);
                ((i * 104_729 * 13) % (len - n), n)
            })
            .collect();
        ranges.push((len - 8192, 8192));
        let reads: Vec<_> = ranges
            .iter()
            .map(|&(offset, n)| {
                let store = store.clone();
                async move { (offset, n, store.get_range(&key("pack/big"), offset as u64, n as u64).await) }
            })
            .collect();
        let mut stream = futures_util::stream::iter(reads).buffer_unordered(8);
        let mut done = 0;
        while let Some((offset, n, got)) = stream.next().await {
            let got = got.unwrap_or_else(|e| panic!("{store}: {n} bytes at {offset}: {e}"));
            assert!(got == body.slice(offset..offset + n), "{store}: {n} bytes at {offset}");
            done += 1;
        }
        assert_eq!(done, ranges.len());
    }
}

/// Create-only puts of one key racing each other: exactly one wins, the others are `AlreadyExists`, and the
/// object holds the winner's bytes.
async fn create_race(store: &dyn Storage, name: &str) {
    let k = key(name);
    let bodies: Vec<Bytes> = (0..12u8).map(|i| pattern(256 * 1024 + usize::from(i), i)).collect();
    let puts: Vec<_> = bodies.iter().map(|b| store.put(&k, b.clone(), PutMode::Create)).collect();
    let results = futures_util::future::join_all(puts).await;
    let winners: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "{store}: exactly one create wins: {results:?}");
    for r in &results {
        assert!(matches!(r, Ok(()) | Err(Error::AlreadyExists { .. })), "{store}: {r:?}");
    }
    assert!(store.get(&k).await.expect("get") == bodies[winners[0]], "{store}: the object is the winner's");
}

#[tokio::test]
async fn issue_10_concurrent_creates_have_one_winner() {
    let dir = tempfile::tempdir().expect("temp dir");
    for store in backends(dir.path(), "create-race").await {
        for round in 0..3 {
            create_race(&*store, &format!("race/k{round}")).await;
        }
    }
}

/// The benchmark S3 server (bench/s3server) meets the storage contract of our S3 backend, create-only puts
/// included. Needs `cargo build --release --manifest-path bench/s3server/Cargo.toml` first, so it is ignored by
/// default: `cargo test --test integration issue_10_bench_s3server -- --ignored`.
#[tokio::test]
#[ignore = "needs bench/s3server built (cargo build --release --manifest-path bench/s3server/Cargo.toml)"]
async fn issue_10_bench_s3server_meets_the_storage_contract() {
    let binary = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/s3server/target/release/bench-s3server");
    assert!(binary.is_file(), "{} is not built", binary.display());
    support::s3::use_test_credentials();
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(root.path().join("bkt")).expect("bucket directory");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let child = std::process::Command::new(&binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "test", "--secret-key", "test"])
        .arg(root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start bench-s3server");
    let _server = KillOnDrop(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "bench-s3server did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cfg = S3Config {
        region: "us-east-1".to_owned(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        force_path_style: true,
        allow_http: true,
        multipart_threshold_mib: 5,
        multipart_part_size_mib: 5,
        ..S3Config::default()
    };
    let store = S3Storage::connect("bkt", "repo", &cfg).await.expect("connect");
    crate::storage_conformance::conformance(&store).await;
    for round in 0..5 {
        create_race(&store, &format!("race/k{round}")).await;
    }
}

/// Stops the server however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
