//! Issue 12: a catalog sync of many rows (about 200 backups and 3000 WAL ranges) writes them all in the first
//! sync and nothing in the second, and its time is printed: the writes are batched, a few statements per table.

use std::time::{Duration, Instant};

use crate::issue8_gc::backupctl;
use crate::issue8_prune::json_of;
use crate::issue12_catalog::CatalogCluster;
use crate::pitr::{FileRepo, Source};
use crate::support::cluster::{assert_ok, require_pg};
use crate::support::raw::Raw;

/// Backups added as copies of a real one's manifest, under other ids.
const COPIES: usize = 199;
/// Fake segments added after the real ones, each after a gap: a WAL range each.
const RANGES: u64 = 3000;

#[test]
fn issue_12_catalog_sync_of_many_rows() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("catalog-many");
    let cat = CatalogCluster::start("catalog-many");
    let src = Source::start("catalog-many", &repo.url(), &cat.section());
    src.cluster.switch_and_wait_archived(Duration::from_secs(120));
    let id = src.backup_json("full")["id"].as_str().expect("id").to_owned();

    let raw = Raw::open(&repo.url(), &backupctl::config::S3Config::default());
    let manifest = raw.manifest(&id);
    for i in 0..COPIES {
        let mut copy = manifest.clone();
        copy.id = format!("20250101-{:02}{:02}00F", i / 60, i % 60).parse().expect("id");
        let saved = raw.rt.block_on(backupctl::repository::store::save_manifest(raw.storage.as_ref(), &mut copy));
        assert!(saved.expect("save manifest"), "{}", copy.id);
    }
    let base: u64 = 0x10 * 0x100; // log 0x10 of timeline 1, far after the real segments
    for i in 0..RANGES {
        let segno = base + 2 * i;
        let name = format!("00000001{:08X}{:08X}", segno / 0x100, segno % 0x100);
        let key = backupctl::storage::Key::new(format!("wal/{}/{name}", &name[..16])).expect("key");
        raw.put(&key, bytes::Bytes::from_static(b"not read by status"));
    }
    // Written as root: give them to the PostgreSQL OS user, as the rest of the repository.
    crate::support::cluster::chown_postgres(repo.dir.path());

    let timed = |what: &str, args: &[&str]| {
        let t = Instant::now();
        let out = backupctl(&src, args);
        let elapsed = t.elapsed();
        assert_ok(what, &out);
        eprintln!("issue_12_catalog_sync_of_many_rows: {what}: {:.2} s", elapsed.as_secs_f64());
        out
    };
    // The repository read alone, which every sync does first.
    timed("status --json-output", &["status", "--json-output"]);
    let first = json_of("first sync", &timed("first sync", &["catalog", "sync", "--json-output"]));
    let rows = &first["rows_written"];
    // The copies, and the real backup's row when its document changed (its retention with 199 more fulls).
    assert!(rows["backups"].as_u64().is_some_and(|n| n == COPIES as u64 || n == COPIES as u64 + 1), "{first:#}");
    assert_eq!(rows["backup_wal"], COPIES, "{first:#}");
    assert!(rows["wal_ranges"].as_u64().is_some_and(|n| n >= RANGES), "{first:#}");
    let second = json_of("second sync", &timed("second sync", &["catalog", "sync", "--json-output"]));
    assert_eq!(second["total"], 0, "{second:#}");
    assert_eq!(cat.sql("select count(*) from backupctl.backups where removed_at is null"), (COPIES + 1).to_string());
    assert_eq!(cat.sql("select count(*) from backupctl.backup_wal"), (COPIES + 1).to_string());
    let status = json_of("status", &backupctl(&src, &["status", "--json-output"]));
    assert_eq!(
        cat.sql("select sum(segments) from backupctl.wal_ranges where removed_at is null"),
        status["wal"]["segments"].to_string()
    );
    // To compare with another build (e.g. one writing a row per statement): ISSUE12_SYNC_COMPARE_WITH=<its
    // backupctl> times its sync of the same repository into emptied tables.
    if let Some(other) = std::env::var_os("ISSUE12_SYNC_COMPARE_WITH") {
        cat.sql("truncate backupctl.backup_wal, backupctl.backups, backupctl.wal_ranges, backupctl.dumps");
        for what in ["first sync", "second sync"] {
            let t = Instant::now();
            let out = crate::support::cluster::as_postgres(std::path::Path::new(&other))
                .arg("--config")
                .arg(&src.config)
                .args(["catalog", "sync", "--json-output"])
                .output()
                .expect("other backupctl");
            assert_ok("sync by the other build", &out);
            eprintln!("issue_12_catalog_sync_of_many_rows: {what} by {other:?}: {:.2} s", t.elapsed().as_secs_f64());
        }
    }
    // Every row rewritten once more (a changed checksum each): the batched update path.
    cat.sql("update backupctl.backups set manifest_checksum = 'x'; update backupctl.wal_ranges set bytes = 0");
    let third = json_of("third sync", &timed("sync rewriting every row", &["catalog", "sync", "--json-output"]));
    assert_eq!(third["rows_written"]["backups"], COPIES + 1, "{third:#}");
    assert!(third["rows_written"]["wal_ranges"].as_u64().is_some_and(|n| n >= RANGES), "{third:#}");
}
