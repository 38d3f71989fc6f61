//! Issue 10, "Deletion, GC, retention and verify keep working" on repository format 2 (docs/design/format2.md,
//! "Reclaiming space"): issue 8's delete and gc scenarios run unchanged on a format-2 repository; gc compacts a
//! pack that is mostly garbage, survives kill -9 while it does, and leaves every backup restorable; a prune of the
//! oldest backup reports what gc freed and what it cost.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::issue8_gc::{
    NO_GRACE, Taken, archive_past, backupctl, child_of, delete_scenario, gc_during_backup, gc_json, repo_keys,
    restore_matches, s3_settings, signal, take,
};
use crate::issue10_format2::init_format2;
use crate::pitr::{FileRepo, Source, s3_repo};
use crate::support::cluster::{as_postgres, assert_ok, bin, require_pg};

#[test]
fn issue_10_gc_delete_oldest_middle_newest_format2_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i10-gcdel");
    init_format2("i10-gcdel-file", &repo.url(), "");
    delete_scenario(&repo.url(), "", "i10-gcdel-file");
}

#[test]
fn issue_10_gc_delete_oldest_middle_newest_format2_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i10-gcdel") else { return };
    init_format2("i10-gcdel-s3", &url, &extra);
    delete_scenario(&url, &extra, "i10-gcdel-s3");
}

#[test]
fn issue_10_gc_loop_during_backup_format2_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i10-gcloop");
    init_format2("i10-gcloop-file", &repo.url(), "");
    gc_during_backup(&repo.url(), "", "i10-gcloop-file");
}

/// Keys under `prefix`, sorted.
fn keys(url: &str, extra: &str, prefix: &str) -> Vec<String> {
    let mut k = repo_keys(url, &s3_settings(extra), prefix);
    k.sort();
    k
}

/// Two full backups with most rows rewritten between them; the first deleted: its pack is mostly garbage. gc
/// (killed with -9 as soon as it has changed `packs/` or `index/`, then rerun) compacts it; the kept backup
/// restores after the kill and after the rerun, and a further gc has nothing to do.
fn compact_and_kill(url: &str, extra: &str, label: &str) {
    init_format2(label, url, extra);
    let src = Source::start(label, url, &format!("{extra}\n{NO_GRACE}"));
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    c.sql("create table filler as select g id, md5(g::text) pad from generate_series(1, 100000) g");
    let old = take(&src, "full", 0);
    c.sql("update filler set pad = md5(pad) where id % 10 <> 0");
    c.sql("vacuum full filler");
    c.sql("checkpoint");
    let kept = take(&src, "full", 1);
    archive_past(c);
    assert_ok("delete", &backupctl(&src, &["delete", "--backup-id", &old.id]));
    let dry = gc_json(&src, true);
    let p = &dry["packs"];
    assert!(p["packs_compacted"].as_u64().unwrap_or(0) + p["packs_deleted"].as_u64().unwrap_or(0) > 0, "{dry}");

    let (packs0, index0) = (keys(url, extra, "packs/"), keys(url, extra, "index/"));
    let mut gc = as_postgres(&bin("backupctl"))
        .arg("--config")
        .arg(&src.config)
        .args(["gc", "--json-output"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("gc");
    let runuser = gc.id();
    let pid = crate::support::cluster::wait_for("gc to start", Duration::from_secs(30), || child_of(runuser));
    let deadline = Instant::now() + Duration::from_secs(60);
    while gc.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        if keys(url, extra, "packs/") != packs0 || keys(url, extra, "index/") != index0 {
            break;
        }
    }
    signal(pid, libc::SIGKILL);
    let _ = gc.wait();
    restore_matches(&src, &kept, "after-kill");

    let rerun = gc_json(&src, false);
    assert!(rerun["deferred"].is_null(), "the killed gc's lease is stale: {rerun}");
    let again = gc_json(&src, true);
    assert_eq!(again["objects_removed"], 0, "nothing left after the rerun: {again}");
    assert!(keys(url, extra, "locks/").is_empty(), "{rerun}");
    restore_matches(&src, &kept, "after-rerun");
}

#[test]
fn issue_10_gc_compacts_and_survives_kill_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i10-gckill");
    compact_and_kill(&repo.url(), "", "i10-gckill-file");
}

#[test]
fn issue_10_gc_compacts_and_survives_kill_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i10-gckill") else { return };
    compact_and_kill(&url, &extra, "i10-gckill-s3");
}

/// A prune of the oldest of four backups (each after rows changed) on S3: its JSON says what gc freed and what it
/// cost (objects read, written and deleted, bytes), and the others still restore.
#[test]
fn issue_10_prune_oldest_reports_what_gc_freed_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i10-prune") else { return };
    let label = "i10-prune-s3";
    init_format2(label, &url, &extra);
    let src = Source::start(label, &url, &format!("{extra}\n{NO_GRACE}"));
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    let backups: Vec<Taken> = (0..4).map(|i| take(&src, if i == 0 { "full" } else { "incremental" }, i)).collect();
    archive_past(c);
    let out = backupctl(&src, &["prune", "--policy", "keep-last=3", "--json-output"]);
    assert_ok("prune", &out);
    let v: Value = serde_json::from_slice(&out.stdout).expect("prune JSON");
    let gc = &v["gc"];
    eprintln!("prune of the oldest of 4 on S3: {gc}");
    assert!(gc["deferred"].is_null(), "{v}");
    for k in ["packs", "pack_bytes", "nodes_read", "index_read", "read_requests", "bytes_read", "packs_written", "bytes_written", "bytes_deleted"] {
        assert!(gc["packs"][k].is_u64(), "{k} in {v}");
    }
    assert!(gc["objects_removed"].as_u64().unwrap_or(0) > 0, "the oldest backup had objects of its own: {v}");
    for (i, b) in backups.iter().enumerate().skip(1) {
        restore_matches(&src, b, &format!("pruned-{i}"));
    }
}
