//! gc and dumps (pure storage, no PostgreSQL): what a dump manifest names is never swept.

use std::sync::Arc;
use std::time::Duration;

use crate::backup::packer::Packer;
use crate::repository::dump::{self as layout, DUMP_MANIFEST_FORMAT, DumpFormat, DumpManifest, DumpedDatabase};
use crate::repository::packs::PACKS_PREFIX;
use crate::repository::packstore::FrameIndex;
use crate::retention::gc::{GcOptions, collect};
use crate::storage::DynStorage;
use crate::storage::fs::FsStorage;

/// A dump's frames in their own pack, past the grace period: gc keeps the pack while the manifest exists, and
/// removes it once the dump is deleted; a damaged dump manifest stops the sweep.
#[tokio::test]
async fn issue_12_gc_never_sweeps_what_a_dump_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage: DynStorage = Arc::new(FsStorage::new(dir.path()));
    let packer = Packer::new(storage.clone(), 1, 1 << 20, 1, Arc::new(FrameIndex::default()));
    let raw: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let (file, _) = super::store::store_reader(&packer, std::io::Cursor::new(raw.clone()), String::new(), "test")
        .await
        .expect("store");
    packer.finish().await.expect("finish");
    let m = DumpManifest {
        format: DUMP_MANIFEST_FORMAT,
        id: "20261201-083000D".parse().expect("id"),
        label: None,
        started_at: "2026-12-01T08:30:00Z".into(),
        finished_at: "2026-12-01T08:30:01Z".into(),
        server_version_num: 150010,
        system_identifier: "1".into(),
        pg_dump_version: "pg_dump (PostgreSQL) 15.10".into(),
        databases: vec![DumpedDatabase {
            name: "db".into(),
            format: DumpFormat::Custom,
            raw_bytes: file.raw_bytes,
            files: vec![file.clone()],
            stored_bytes: 0,
            duration_ms: 0,
            properties: None,
        }],
        globals: None,
        has_role_passwords: false,
    };
    assert_eq!(file.raw_bytes, raw.len() as u64);
    assert_eq!(file.frames.len(), 2, "1 MiB frames");
    assert!(layout::save_manifest(storage.as_ref(), &m).await.expect("save"));
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    let options = GcOptions { grace: Duration::from_secs(60), dry_run: false, now: later };
    let report = collect(storage.as_ref(), &options).await.expect("gc");
    assert_eq!(report.packs.packs_deleted, 0, "{report:?}");
    assert_eq!(storage.list(PACKS_PREFIX).await.expect("list").len(), 1);

    // Every byte still there: fetch verifies each frame and the whole stream.
    let index = FrameIndex::load(storage.as_ref()).await.expect("index");
    let out = dir.path().join("out");
    super::store::fetch(storage.as_ref(), &index, &m.id, "db", &file, &out).await.expect("fetch");
    assert_eq!(std::fs::read(&out).expect("read"), raw);

    // A damaged dump manifest stops gc rather than sweep what it may name.
    let other = crate::storage::Key::new("dumps/20261201-093000D/manifest").expect("key");
    storage.put(&other, bytes::Bytes::from_static(b"junk"), crate::storage::PutMode::Create).await.expect("put");
    let e = collect(storage.as_ref(), &options).await.expect_err("unreadable");
    assert!(e.to_string().contains("manifest of dump 20261201-093000D is unreadable"), "{e}");
    storage.delete(&other).await.expect("delete");

    super::delete(storage.as_ref(), &m.id, false).await.expect("delete dump");
    let report = collect(storage.as_ref(), &options).await.expect("gc");
    assert_eq!(report.packs.packs_deleted, 1, "{report:?}");
    assert!(storage.list(PACKS_PREFIX).await.expect("list").is_empty());
}
