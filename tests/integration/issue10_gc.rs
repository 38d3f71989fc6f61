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
    let was_running = gc.try_wait().expect("wait").is_none();
    signal(pid, libc::SIGKILL);
    let _ = gc.wait();
    eprintln!("{label}: gc {} when killed", if was_running { "was still running" } else { "had finished" });
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
    for k in [
        "packs",
        "pack_bytes",
        "nodes_read",
        "index_read",
        "read_requests",
        "bytes_read",
        "packs_written",
        "bytes_written",
        "bytes_deleted",
    ] {
        assert!(gc["packs"][k].is_u64(), "{k} in {v}");
    }
    assert!(gc["objects_removed"].as_u64().unwrap_or(0) > 0, "the oldest backup had objects of its own: {v}");
    for (i, b) in backups.iter().enumerate().skip(1) {
        restore_matches(&src, b, &format!("pruned-{i}"));
    }
}

/// `backupctl verify --json-output`: (exit code, report).
fn verify_json(src: &Source) -> (Option<i32>, Value) {
    let out = backupctl(src, &["verify", "--json-output"]);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify prints JSON: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

/// Run `f` against the repository's storage (on file://, what it wrote is then given to postgres).
fn with_storage<T>(url: &str, extra: &str, f: impl AsyncFnOnce(&dyn backupctl::storage::Storage) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let out = rt.block_on(async {
        let storage = backupctl::storage::open(url, &s3_settings(extra), Duration::from_secs(10)).await.expect("open");
        f(storage.as_ref()).await
    });
    if let Some(dir) = url.strip_prefix("file://") {
        crate::support::cluster::chown_postgres(std::path::Path::new(dir));
    }
    out
}

/// Replace object `key` by `body` (delete, then create).
fn replace(url: &str, extra: &str, key: &str, body: Vec<u8>) {
    with_storage(url, extra, async |s| {
        let key: backupctl::storage::Key = key.parse().expect("key");
        s.delete(&key).await.expect("delete");
        s.put(&key, bytes::Bytes::from(body), backupctl::storage::PutMode::Create).await.expect("put");
    });
}

fn get(url: &str, extra: &str, key: &str) -> Vec<u8> {
    with_storage(url, extra, async |s| s.get(&key.parse().expect("key")).await.expect("get").to_vec())
}

/// verify on format 2: a full and an incremental (with page deltas) verify clean, reading their nodes and
/// frames; a missing node and a damaged pack are each reported (kind, object, the backups they break, exit 1);
/// put back, verify is clean again.
fn verify_scenario(url: &str, extra: &str, label: &str) {
    init_format2(label, url, extra);
    let src = Source::start(label, url, &format!("{extra}\n{NO_GRACE}"));
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    c.sql("create table filler as select g id, md5(g::text) pad from generate_series(1, 100000) g");
    let full = take(&src, "full", 0);
    let incr = take(&src, "incremental", 1);
    archive_past(c);
    let (code, v) = verify_json(&src);
    assert_eq!(code, Some(0), "{v}");
    assert!(v["objects_checked"].as_u64().unwrap_or(0) > 2 && v["bytes_read"].as_u64().unwrap_or(0) > 0, "{v}");
    let both = |p: &Value| {
        let b = p["breaks"].to_string();
        b.contains(&full.id) || b.contains(&incr.id)
    };

    // A block-map node (maps/ also holds the file maps, whose loss makes the manifest unusable instead).
    let raw = crate::support::raw::Raw::open(url, &crate::issue8_gc::s3_settings(extra));
    let first_node = raw.manifest(&full.id).files.iter().flat_map(|f| f.nodes.clone()).next().expect("a node");
    let node = backupctl::repository::blockmap::node_key(&first_node).to_string();
    assert!(keys(url, extra, "maps/").contains(&node), "{node} is listed");
    let saved = get(url, extra, &node);
    with_storage(url, extra, async |s| s.delete(&node.parse().expect("key")).await.expect("delete"));
    let (code, v) = verify_json(&src);
    assert_eq!(code, Some(1), "{v}");
    let p = v["problems"].as_array().expect("problems").iter().find(|p| p["what"] == node.as_str()).cloned();
    let p = p.unwrap_or_else(|| panic!("the missing node is reported: {v}"));
    assert!(p["kind"] == "missing" && both(&p), "{p}");
    with_storage(url, extra, async |s| {
        let key = node.parse().expect("key");
        s.put(&key, bytes::Bytes::from(saved), backupctl::storage::PutMode::Create).await.expect("put back");
    });

    let pack = keys(url, extra, "packs/").into_iter().next().expect("a pack");
    let good = get(url, extra, &pack);
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    replace(url, extra, &pack, bad);
    let (code, v) = verify_json(&src);
    assert_eq!(code, Some(1), "{v}");
    let p = v["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .find(|p| p["what"].as_str().is_some_and(|w| w.starts_with(&format!("{pack}@"))))
        .cloned();
    let p = p.unwrap_or_else(|| panic!("the damaged frame is reported: {v}"));
    assert!(p["kind"] == "corrupt" && both(&p), "{p}");
    assert!(v["backups"].as_array().expect("backups").iter().any(|b| b["status"] == "broken"), "{v}");
    replace(url, extra, &pack, good);
    let (code, v) = verify_json(&src);
    assert_eq!(code, Some(0), "clean again: {v}");
}

#[test]
fn issue_10_verify_format2_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i10-verify");
    verify_scenario(&repo.url(), "", "i10-verify-file");
}

#[test]
fn issue_10_verify_format2_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i10-verify") else { return };
    verify_scenario(&url, &extra, "i10-verify-s3");
}

/// status on format 2: each backup's `sizes.stored` is what it added (its packs, nodes and pack index), and their
/// sum equals what the repository's listings of `packs/`, `maps/` and `index/` hold (nothing else writes there);
/// the WAL's bytes are reported beside them. Checked after a full, a full right after it, and an incremental.
fn status_scenario(url: &str, extra: &str, label: &str) {
    init_format2(label, url, extra);
    let src = Source::start(label, url, &format!("{extra}\n{NO_GRACE}"));
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    c.sql("create table filler as select g id, md5(g::text) pad from generate_series(1, 50000) g");
    for (batch, kind) in ["full", "full", "incremental"].iter().enumerate() {
        take(&src, kind, batch as u32);
        let out = src.status_json_output();
        assert_ok("status", &out);
        let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        let r = &v["repository_bytes"];
        let growth: u64 = ["packs", "maps", "index"].iter().map(|k| r[k].as_u64().expect("bytes")).sum();
        let added: u64 = v["backups"]
            .as_array()
            .expect("backups")
            .iter()
            .map(|b| b["sizes"]["stored"].as_u64().expect("stored"))
            .sum();
        eprintln!("{label} after {kind}: backups added {added} bytes, packs+maps+index hold {growth}: {r}");
        assert_eq!(added, growth, "the backups' stored bytes are the repository's growth: {v}");
        assert_eq!(r["wal"], v["wal"]["bytes_stored"], "{r}");
        assert_eq!(r["data"], 0, "a format-2 repository has no data/ objects: {r}");
        // What deleting one backup would free (issue10_rerun checks it against delete + gc): never more than
        // the repository holds, in sum.
        let unique: u64 = v["backups"]
            .as_array()
            .expect("backups")
            .iter()
            .map(|b| b["sizes"]["unique"].as_u64().unwrap_or_else(|| panic!("unique of a format-2 backup: {b}")))
            .sum();
        assert!(unique <= growth, "{v}");
    }
    let out = as_postgres(&bin("backupctl")).arg("--config").arg(&src.config).arg("status").output().expect("status");
    assert_ok("status (text)", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(" -  backupctl"), "every backup shows its unique size: {text}");
}

#[test]
fn issue_10_status_sizes_format2_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i10-status");
    status_scenario(&repo.url(), "", "i10-status-file");
}

#[test]
fn issue_10_status_sizes_format2_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i10-status") else { return };
    status_scenario(&url, &extra, "i10-status-s3");
}
