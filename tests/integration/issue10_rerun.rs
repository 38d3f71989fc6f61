//! Issue 10 leftovers on repository format 2 (docs/design/format2.md): a base-backup killed with `-9` leaves its
//! packs named by pack index objects, so the rerun reuses them; `status` reports what deleting a format-2 backup
//! would free (`unique`), and `delete` + `gc` free about that.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::issue8_gc::{NO_GRACE, Taken, archive_past, backupctl, child_of, gc_json, repo_keys, s3_settings, signal};
use crate::issue10_format2::init_format2;
use crate::pitr::{FileRepo, Source, s3_repo};
use crate::support::cluster::{as_postgres, assert_ok, bin, chown_postgres, require_pg, wait_for};

/// Size of the incompressible file put into the data directory: 10 packs of 16 MiB.
const BALLAST: usize = 160 << 20;

/// `len` bytes that do not compress (blake3's extendable output of `seed`).
fn incompressible(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// Stored bytes under `prefix`, by listing.
fn listed_bytes(src: &Source, prefix: &str) -> u64 {
    src.list(prefix).iter().map(|m| m.size).sum()
}

fn json_u64(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// A full backup killed with `-9` once pack index objects name some of its packs (before that fix, its packs were
/// named by nothing until the end), then rerun: the rerun reuses the killed run's frames and stores little new;
/// gc then removes only what nothing uses, verify finds the repository intact, and the backup restores exactly.
fn killed_full_is_reused(url: &str, extra: &str, label: &str) {
    init_format2(label, url, extra);
    let src = Source::start(label, url, &format!("{extra}\n{NO_GRACE}"));
    let c = &src.cluster;
    c.sql("create table t as select g id, md5(g::text) pad from generate_series(1, 20000) g");
    let ballast = c.data.join("ballast.bin");
    let want = incompressible(label, BALLAST);
    std::fs::write(&ballast, &want).expect("ballast");
    chown_postgres(&ballast);

    // A slow full: killed as soon as two index objects (8 packs, 128 MiB) exist, long before it ends.
    let mut backup = as_postgres(&bin("base-backup"))
        .arg("--config")
        .arg(&src.config)
        .args(["--fast", "--json", "--type", "full", "--max-rate", "32M"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("base-backup");
    let runuser = backup.id();
    let pid = wait_for("base-backup to start", Duration::from_secs(30), || child_of(runuser));
    let s3 = s3_settings(extra);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut indexes = 0;
    while backup.try_wait().expect("wait").is_none() && Instant::now() < deadline && indexes < 2 {
        indexes = repo_keys(url, &s3, "index/").len();
    }
    assert!(backup.try_wait().expect("wait").is_none(), "{label}: the backup ended before it could be killed");
    signal(pid, libc::SIGKILL);
    let _ = backup.wait();
    assert!(indexes >= 2, "{label}: the killed backup wrote {indexes} index objects");
    assert!(
        !repo_keys(url, &s3, "backups/").iter().any(|k| k.ends_with("/manifest")),
        "{label}: a killed backup has no manifest"
    );
    let killed = listed_bytes(&src, "packs/");

    let rerun = src.backup_json("full");
    let taken = Taken {
        id: rerun["id"].as_str().expect("id").to_owned(),
        lsn: c.sql("select pg_current_wal_insert_lsn()"),
        dump: c.dump(),
    };
    let (new, reused, bytes) =
        (json_u64(&rerun, "bytes_new"), json_u64(&rerun, "bytes_reused"), json_u64(&rerun, "bytes"));
    let packs = listed_bytes(&src, "packs/");
    eprintln!(
        "{label}: killed run left {killed} bytes of packs; rerun: {new} bytes new, {reused} of {bytes} bytes reused; \
         packs now {packs} bytes"
    );
    assert!(new * 3 < packs, "{label}: the rerun stores little new ({new} of {packs} bytes of packs): {rerun}");
    assert!(reused * 2 > bytes, "{label}: the rerun reuses most of the killed run's frames: {rerun}");

    archive_past(c);
    let gc = gc_json(&src, false);
    assert!(gc["deferred"].is_null(), "{gc}");
    let again = gc_json(&src, true);
    assert_eq!(again["objects_removed"], 0, "{label}: nothing left to remove: {again}");
    let verify = backupctl(&src, &["verify", "--json-output"]);
    assert_ok("backupctl verify after the rerun and gc", &verify);
    crate::issue8_gc::restore_matches(&src, &taken, "rerun");
    let restored = std::fs::read(src.dir.path().join("rerun").join("ballast.bin")).expect("restored ballast");
    assert!(restored == want, "{label}: the restored ballast file has the backed-up bytes");
}

#[test]
fn issue_10_killed_backup_is_reused_by_rerun_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i10-rerun");
    killed_full_is_reused(&repo.url(), "", "i10-rerun-file");
}

#[test]
fn issue_10_killed_backup_is_reused_by_rerun_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i10-rerun") else { return };
    killed_full_is_reused(&url, &extra, "i10-rerun-s3");
}

/// Stored bytes of the repository's backup data: `packs/`, `maps/`, `index/`.
fn data_bytes(src: &Source) -> u64 {
    ["packs/", "maps/", "index/"].iter().map(|p| listed_bytes(src, p)).sum()
}

/// `backupctl status --json-output`: each backup's `sizes.unique` by id.
fn unique_by_id(src: &Source) -> std::collections::HashMap<String, Option<u64>> {
    let out = src.status_json_output();
    let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    v["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| (b["id"].as_str().expect("id").to_owned(), b["sizes"]["unique"].as_u64()))
        .collect()
}

/// status reports a format-2 backup's `unique` bytes (before that fix: null), and `delete` of it + `gc` shrinks
/// the repository by about that much: within 5% + 64 KiB (gc also rewrites index objects, and a dead frame in a
/// pack that stays more than half live is freed only later; docs/design/retention.md).
fn unique_matches_what_gc_frees(url: &str, extra: &str, label: &str) {
    init_format2(label, url, extra);
    let src = Source::start(label, url, &format!("{extra}\n{NO_GRACE}"));
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    c.sql(
        "create table filler as select g id, md5(g::text) || md5((g + 1)::text) pad from generate_series(1, 200000) g",
    );
    let oldest = crate::issue8_gc::take(&src, "full", 0);
    // Most of filler rewritten into a new file: the oldest backup's copy of it is its own.
    c.sql("update filler set pad = md5(pad) where id % 10 <> 0");
    c.sql("vacuum full filler");
    c.sql("checkpoint");
    let middle = crate::issue8_gc::take(&src, "full", 1);
    let newest = crate::issue8_gc::take(&src, "incremental", 2);
    archive_past(c);

    let unique = unique_by_id(&src);
    eprintln!("{label}: unique {unique:?}");
    for b in [&oldest, &middle, &newest] {
        assert!(unique[&b.id].is_some(), "{label}: status reports unique for {}: {unique:?}", b.id);
    }
    let u = unique[&oldest.id].unwrap_or(0);
    assert!(u > 1 << 20, "{label}: the oldest backup's own copy of filler is unique to it: {u}");
    let before = data_bytes(&src);
    assert_ok("delete", &backupctl(&src, &["delete", "--backup-id", &oldest.id]));
    let gc = gc_json(&src, false);
    assert!(gc["deferred"].is_null(), "{gc}");
    let after = data_bytes(&src);
    let freed = before - after;
    eprintln!("{label}: status said {u} bytes unique; delete + gc freed {freed} ({before} -> {after})");
    assert!(freed.abs_diff(u) <= u / 20 + (64 << 10), "{label}: freed {freed}, status said {u} unique: {gc}");
    let unique = unique_by_id(&src);
    assert_eq!(unique.len(), 2, "{unique:?}");
    crate::issue8_gc::restore_matches(&src, &newest, "newest");
}

#[test]
fn issue_10_status_unique_format2_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i10-unique");
    unique_matches_what_gc_frees(&repo.url(), "", "i10-unique-file");
}

#[test]
fn issue_10_status_unique_format2_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i10-unique") else { return };
    unique_matches_what_gc_frees(&url, &extra, "i10-unique-s3");
}
