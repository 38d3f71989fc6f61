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
