//! Unit tests of applying a plan: `--until`, and a prune killed at any deletion.

use super::*;

#[test]
fn until_dates_and_times() {
    let now: Timestamp = "2026-11-30T12:00:00Z".parse().expect("now");
    let berlin = jiff::tz::TimeZone::get("Europe/Berlin").expect("tz");
    let t = parse_until("2027-01-31", &berlin, now).expect("date");
    assert_eq!(t.to_string(), "2027-01-31T23:00:00Z", "through the whole day in Berlin");
    let t = parse_until("2027-01-31", &jiff::tz::TimeZone::UTC, now).expect("date");
    assert_eq!(t.to_string(), "2027-02-01T00:00:00Z");
    let t = parse_until("2026-12-01T08:00:00+01:00", &berlin, now).expect("time");
    assert_eq!(t.to_string(), "2026-12-01T07:00:00Z");
    for (bad, want) in [("2026-11-29", "not in the future"), ("tomorrow", "not a date"), ("2026-13-01", "not a date")] {
        let e = parse_until(bad, &berlin, now).expect_err(bad).to_string();
        assert!(e.contains(want) && e.contains(bad), "{bad}: {e}");
    }
}

/// A real backend whose deletes fail once `allowed` of them have gone through: a prune killed at that moment.
#[derive(Debug)]
struct KilledAfter {
    inner: crate::storage::fs::FsStorage,
    allowed: std::sync::atomic::AtomicI64,
}

impl std::fmt::Display for KilledAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait::async_trait]
impl Storage for KilledAfter {
    async fn put(&self, key: &Key, body: bytes::Bytes, mode: crate::storage::PutMode) -> crate::storage::Result<()> {
        self.inner.put(key, body, mode).await
    }
    async fn get(&self, key: &Key) -> crate::storage::Result<bytes::Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &Key, offset: u64, len: u64) -> crate::storage::Result<bytes::Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn head(&self, key: &Key) -> crate::storage::Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> crate::storage::Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &Key) -> crate::storage::Result<()> {
        if self.allowed.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) <= 0 {
            return Err(crate::storage::Error::transient(&self.inner, "delete", &key.as_str(), "killed".to_owned()));
        }
        self.inner.delete(key).await
    }
    fn capabilities(&self) -> crate::storage::Capabilities {
        self.inner.capabilities()
    }
}

use crate::repository::backup::Manifest;
use crate::storage::Key;
use crate::wal::{Lsn, SegmentName, TimelineId, WalFileName};

const SEG: u64 = 16 << 20;

fn manifest(day: u32, start_seg: u64) -> Manifest {
    let start = format!("2026-11-{day:02}T02:00:00Z");
    let t: Timestamp = start.parse().expect("time");
    Manifest {
        id: t.strftime("%Y%m%d-%H%M%SF").to_string().parse().expect("id"),
        label: "l".into(),
        start_time: start,
        stop_time: format!("2026-11-{day:02}T02:10:00Z"),
        start_lsn: Lsn(start_seg * SEG + 0x28),
        stop_lsn: Lsn((start_seg + 1) * SEG + 0x100),
        start_wal: SegmentName::from_segno(TimelineId(1), start_seg, SegmentSize::DEFAULT).to_string(),
        stop_wal: SegmentName::from_segno(TimelineId(1), start_seg + 1, SegmentSize::DEFAULT).to_string(),
        ..Manifest::example()
    }
}

/// Five backups (days 1..=5, WAL segments 10+10i..), segments 1..=60 archived, the second backup kept forever.
async fn repository(dir: &std::path::Path) -> crate::storage::fs::FsStorage {
    let s = crate::storage::fs::FsStorage::new(dir);
    store::init(&s, "2026-11-01T00:00:00Z", 1).await.expect("init");
    let info = crate::repository::ClusterInfo { system_identifier: "1".into(), wal_segment_size: SEG, pg_version: 15 };
    store::claim_cluster(&s, &info).await.expect("cluster");
    for n in 1..=60u64 {
        let name = WalFileName::Segment(SegmentName::from_segno(TimelineId(1), n, SegmentSize::DEFAULT));
        let key = crate::repository::wal_key(&name);
        s.put(&key, bytes::Bytes::from(vec![n as u8; 100]), crate::storage::PutMode::Create).await.expect("wal");
    }
    for i in 0..5u32 {
        store::save_manifest(&s, &mut manifest(i + 1, 10 + 10 * u64::from(i))).await.expect("manifest");
    }
    let now: Timestamp = "2026-11-06T00:00:00Z".parse().expect("now");
    let id = manifest(2, 20).id;
    keep(&s, &id, KeepUntil::Forever, now).await.expect("keep");
    s
}

async fn listing(s: &dyn Storage) -> Vec<String> {
    let all = s.list("").await.expect("list");
    all.into_iter().map(|m| m.key.as_str().to_owned()).filter(|k| !k.starts_with("locks/")).collect()
}

/// A prune killed after any number of deletions leaves every kept backup and the WAL it needs, and a rerun
/// deletes the rest of the same plan: the repository ends as after one uninterrupted run.
#[tokio::test]
async fn killed_at_any_deletion_a_rerun_finishes_the_same_plan() {
    let policy = Policy::new("keep-last=1,pitr-days=0".parse().expect("policy"), "UTC").expect("policy");
    let now: Timestamp = "2026-11-07T00:00:00Z".parse().expect("now");
    let options = Options { dry_run: false, gc_grace: std::time::Duration::ZERO };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = repository(dir.path()).await;
    let dry = run(&s, &policy, now, Options { dry_run: true, ..options }).await.expect("dry run");
    let once = run(&s, &policy, now, options).await.expect("prune");
    assert_eq!(once.deleted_backups, dry.deleted_backups);
    assert_eq!(once.deleted_wal, dry.deleted_wal);
    assert_eq!(once.deleted_backups.len(), 3);
    let want = listing(&s).await;
    let kept: Vec<String> = once.kept_backups.iter().map(|k| k.id.to_string()).collect();
    assert_eq!(kept, ["20261102-020000F", "20261105-020000F"]);
    for k in 0..44 {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = repository(dir.path()).await;
        let killed = KilledAfter { inner, allowed: std::sync::atomic::AtomicI64::new(k) };
        let first = run(&killed, &policy, now, options).await;
        let s = crate::storage::fs::FsStorage::new(dir.path());
        let left = listing(&s).await;
        for id in &kept {
            assert!(left.contains(&format!("backups/{id}/manifest")), "killed after {k} deletions: {id} is gone");
        }
        for n in [20u64, 21, 50, 51, 60] {
            let name = WalFileName::Segment(SegmentName::from_segno(TimelineId(1), n, SegmentSize::DEFAULT));
            assert!(left.contains(&crate::repository::wal_key(&name).as_str().to_owned()), "killed after {k}: {name}");
        }
        let second = run(&s, &policy, now, options).await.expect("rerun");
        assert_eq!(second.kept_backups, once.kept_backups, "killed after {k}");
        assert_eq!(listing(&s).await, want, "killed after {k} deletions (first run: {:?})", first.map(|_| ()));
    }
}
