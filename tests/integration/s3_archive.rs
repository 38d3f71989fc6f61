//! wal-push and wal-fetch against the S3 protocol: failures a real server (or no server) shows.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::cluster::free_port;
use crate::support::wal::{fetch, push, segment_name, status, write_segment};

const MB: u64 = 1 << 20;
const SYSID: u64 = 6_001_002_003_004_005_006;

fn config(dir: &std::path::Path, url: &str, endpoint: &str, extra: &str) -> PathBuf {
    // The spool exists, owned by the user who archives (root never creates one).
    let _ = std::fs::create_dir(dir.join("spool"));
    let path = dir.join("backupctl.toml");
    std::fs::write(
        &path,
        format!(
            "[repository]\nurl = \"{url}\"\n[repository.s3]\nendpoint = \"{endpoint}\"\nforce_path_style = true\n\
             allow_http = true\n[spool]\npath = \"{}/spool\"\n{extra}\n",
            dir.display()
        ),
    )
    .expect("config");
    path
}

#[test]
fn unreachable_endpoint_fails_within_the_deadline() {
    crate::support::s3::use_test_credentials();
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let cfg = config(dir.path(), "s3://nobody/x", &endpoint, "[archive]\nretry_deadline_seconds = 3");
    let seg = write_segment(dir.path(), 1, 1, MB, SYSID, 1);

    let started = Instant::now();
    let (code, err) = status(&push(&cfg, &seg));
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Connection refused") && err.contains(&endpoint), "{err}");
    assert!(err.contains("attempt"), "says how often it tried: {err}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "took {took:?}");
    assert!(!dir.path().join("spool/push").read_dir().expect("spool").any(|e| e.is_ok()), "no record written");

    let started = Instant::now();
    let (code, err) = status(&fetch(&cfg, &segment_name(1, 1, MB), &dir.path().join("dest")));
    assert_eq!(code, Some(255), "an outage is not the end of the archive: {err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!dir.path().join("dest").exists());
}

#[test]
fn s3_dedupe_conflict_and_corruption() {
    let Some(server) = crate::support::s3::server() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bucket = rt.block_on(server.new_bucket("dedupe"));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &format!("s3://{bucket}/p"), &server.endpoint, "[archive]\npush_ahead = 0");
    let seg = write_segment(dir.path(), 1, 7, MB, SYSID, 1);
    let name = segment_name(1, 7, MB);

    assert_eq!(status(&push(&cfg, &seg)).0, Some(0));
    let (code, err) = status(&push(&cfg, &seg));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("same checksum"), "{err}");
    let original = std::fs::read(&seg).expect("read");
    write_segment(dir.path(), 1, 7, MB, SYSID, 2);
    let (code, err) = status(&push(&cfg, &seg));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("different checksum"), "{err}");

    let dest = dir.path().join("RECOVERYXLOG");
    let (code, err) = status(&fetch(&cfg, &name, &dest));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::read(&dest).expect("dest"), original, "the first content is kept");
    std::fs::remove_file(&dest).expect("rm");

    // Damage the stored object behind our back: wal-fetch exits 255 and writes nothing.
    let key = format!("p/wal/0000000100000000/{name}");
    rt.block_on(async {
        let client = server.client();
        let obj = client.get_object().bucket(&bucket).key(&key).send().await.expect("get");
        let mut bytes = obj.body.collect().await.expect("body").into_bytes().to_vec();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        client.put_object().bucket(&bucket).key(&key).body(bytes.into()).send().await.expect("put");
    });
    let (code, err) = status(&fetch(&cfg, &name, &dest));
    assert_eq!(code, Some(255), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    assert!(!dest.exists());

    // Absent: exit 1, quickly.
    let started = Instant::now();
    let (code, err) = status(&fetch(&cfg, "00000005.history", &dest));
    assert_eq!(code, Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
