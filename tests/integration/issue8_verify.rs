//! Issue 8, "Verify" and "Status": `backupctl verify` re-reads what the backups need and names what is missing or
//! corrupt and which backups it breaks; `backupctl status` shows gaps, the restorable window, each backup's reach,
//! keep marks and sizes, also to a read-only user. On a real cluster, on file:// and on the moto S3 server.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use backupctl::repository::backup::{Manifest, ObjectId};
use backupctl::storage::Key;

use crate::pitr::{FileRepo, Source};
use crate::support::cluster::{assert_ok, bin, require_pg, wait_for};
use crate::support::raw::Raw;

/// `[backup]` lines: a short pending window (archive_timeout_seconds + retry_deadline_seconds = 16 s), so that a
/// gap becomes "lost" within the test.
const BACKUP: &str = "archive_timeout_seconds = 15";
const ARCHIVE: &str = "[archive]\nretry_deadline_seconds = 1\n";

/// Run `backupctl --config CFG ARGS` as the current user (root: a reader needs no ownership).
fn backupctl(cfg: &Path, args: &[&str]) -> Output {
    Command::new(bin("backupctl")).arg("--config").arg(cfg).args(args).output().expect("backupctl")
}

/// `verify ARGS --json-output`: exit code and the JSON report.
fn verify(cfg: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = backupctl(cfg, &[&["verify", "--json-output"][..], args].concat());
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

fn status_json(cfg: &Path) -> serde_json::Value {
    let out = backupctl(cfg, &["status", "--json-output"]);
    assert_ok("status --json-output", &out);
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn problems<'a>(report: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    report["problems"].as_array().expect("problems").iter().filter(|p| p["kind"] == kind).collect()
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> =
        v.as_array().expect("array").iter().filter_map(|s| s.as_str().map(str::to_owned)).collect();
    out.sort();
    out
}

fn backup_status<'a>(report: &'a serde_json::Value, id: &str) -> &'a str {
    let list = report["backups"].as_array().expect("backups");
    list.iter().find(|b| b["id"] == id).and_then(|b| b["status"].as_str()).unwrap_or("absent")
}

fn objects(m: &Manifest) -> BTreeSet<ObjectId> {
    m.files.iter().flat_map(|f| &f.pieces).map(|p| p.object).collect()
}

fn segment_key(name: &str) -> Key {
    backupctl::repository::wal_key(&name.parse().expect("segment name"))
}

/// Write a batch and switch to a new segment.
fn batch(src: &Source, n: u32) {
    src.cluster.sql(&format!("insert into t select {n}, g, md5(g::text) from generate_series(1, 20000) g"));
    src.cluster.sql("select pg_switch_wal()");
}

/// The scenario on one repository: three backups with WAL between them; a clean repository passes; a lost data
/// object names every backup that references it; a flipped byte names the one backup; a fresh gap is pending; a
/// segment removed from the middle breaks the backup whose start..stop needs it, cuts the earlier one short, and
/// leaves the later one alone, in verify and in status. Returns the source (still running) and the backup ids.
fn scenario(label: &str, url: &str, extra: &str, s3: &backupctl::config::S3Config) -> (Source, Vec<String>) {
    // Damages format 1's data/ objects (format 2: issue10_gc::issue_10_verify_format2_*).
    crate::issue10_format2::init_format(label, url, extra, 1);
    let src = Source::start_with(label, url, &format!("{extra}\n{ARCHIVE}"), BACKUP);
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    c.sql("create table stable as select g id, repeat(md5(g::text), 8) pad from generate_series(1, 20000) g");
    let mut backups = Vec::new();
    for (i, kind) in ["full", "incremental", "incremental"].iter().enumerate() {
        batch(&src, i as u32 * 10);
        backups.push(src.backup_json(kind)["id"].as_str().expect("id").to_owned());
        batch(&src, i as u32 * 10 + 1);
        batch(&src, i as u32 * 10 + 2);
    }
    c.switch_and_wait_archived(Duration::from_secs(120));
    let (a, b, cc) = (&backups[0], &backups[1], &backups[2]);
    let cfg = &src.config;
    let raw = Raw::open(url, s3);

    // Clean: exit 0, every backup ok, with and without --wal.
    for args in [&[][..], &["--wal"]] {
        let (code, r) = verify(cfg, args);
        assert_eq!(code, Some(0), "clean repository {args:?}: {r}");
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["objects_checked"].as_u64().unwrap_or(0) > 10, "{r}");
        assert!(backups.iter().all(|id| backup_status(&r, id) == "ok"), "{r}");
    }
    let s = status_json(cfg);
    assert_eq!(s["wal"]["complete"], true, "{s}");
    assert_eq!(s["wal"]["gaps"], 0, "{s}");
    assert_eq!(s["restorable_window"]["earliest_backup"], a.as_str(), "{s}");
    assert!(s["backups"].as_array().expect("backups").iter().all(|b| b["restorable"] == true), "{s}");

    // One data object that every backup references, lost: verify names all three.
    let manifests = raw.manifests();
    let shared = objects(&manifests[0])
        .intersection(&objects(&manifests[1]))
        .copied()
        .find(|o| objects(&manifests[2]).contains(o))
        .expect("an object all three backups share");
    let body = raw.delete(&shared.key());
    let (code, r) = verify(cfg, &[]);
    assert_eq!(code, Some(1), "{r}");
    let missing = problems(&r, "missing");
    assert_eq!(missing.len(), 1, "{r}");
    assert_eq!(missing[0]["what"], shared.key().as_str(), "{r}");
    let mut all = backups.clone();
    all.sort();
    assert_eq!(ids(&missing[0]["breaks"]), all, "{r}");
    assert!(backups.iter().all(|id| backup_status(&r, id) == "broken"), "{r}");
    // Verifying one backup also names the others the object breaks.
    let (code, r) = verify(cfg, &["--backup-id", a]);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(ids(&problems(&r, "missing")[0]["breaks"]), all, "{r}");
    raw.put(&shared.key(), body);

    // One object only the newest backup references, one byte flipped: only that backup is broken.
    let only_c = objects(&manifests[2])
        .difference(&objects(&manifests[1]).union(&objects(&manifests[0])).copied().collect())
        .copied()
        .next()
        .expect("an object only the newest backup references");
    let good = raw.get(&only_c.key());
    let mut bad = good.to_vec();
    let mid = bad.len() / 2 + 40;
    bad[mid] ^= 0x10;
    raw.put(&only_c.key(), bad.into());
    let (code, r) = verify(cfg, &[]);
    assert_eq!(code, Some(1), "{r}");
    let corrupt = problems(&r, "corrupt");
    assert_eq!(corrupt.len(), 1, "{r}");
    assert_eq!(corrupt[0]["what"], only_c.key().as_str(), "{r}");
    assert_eq!(ids(&corrupt[0]["breaks"]), vec![cc.clone()], "{r}");
    assert_eq!((backup_status(&r, a), backup_status(&r, b), backup_status(&r, cc)), ("ok", "ok", "broken"), "{r}");
    let text = backupctl(cfg, &["verify"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&text.stdout), String::from_utf8_lossy(&text.stderr));
    assert_eq!(text.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.contains(&format!("corrupt {}", only_c.key())) && stdout.contains(&format!("breaks backup {cc}")),
        "{stdout}"
    );
    assert_eq!(stderr.lines().filter(|l| l.contains("error:")).count(), 1, "{stderr}");
    assert!(stderr.contains("1 broken backup"), "{stderr}");
    let (code, r) = verify(cfg, &["--backup-id", a]);
    assert_eq!(code, Some(0), "backup {a} does not use the corrupt object: {r}");
    raw.put(&only_c.key(), good);

    // A segment removed from the middle: the one backup {b} starts in. Fresh, it may be pending (the segment
    // after it was archived moments ago); once older than the pending window it is lost.
    let b_start = manifests[1].start_wal.clone();
    let seg_body = raw.delete(&segment_key(&b_start));
    let r = wait_for("the gap to count as lost", Duration::from_secs(90), || {
        let (code, r) = verify(cfg, &[]);
        let gap = problems(&r, "wal_gap").first().map(|g| (*g).clone()).expect("a gap");
        assert!(gap["status"] == "pending" || gap["status"] == "lost", "{r}");
        (gap["status"] == "lost").then(|| {
            assert_eq!(code, Some(1), "{r}");
            r
        })
    });
    let gap = problems(&r, "wal_gap")[0];
    assert_eq!(gap["what"], b_start.as_str(), "{r}");
    assert_eq!(ids(&gap["breaks"]), vec![b.clone()], "{r}");
    assert_eq!(ids(&gap["cuts"]), vec![a.clone()], "{r}");
    assert_eq!((backup_status(&r, a), backup_status(&r, b), backup_status(&r, cc)), ("ok", "broken", "ok"), "{r}");
    let s = status_json(cfg);
    assert_eq!(s["wal"]["complete"], false, "{s}");
    assert_eq!(s["wal"]["gaps"], 1, "{s}");
    let tl = &s["wal"]["timelines"][0];
    assert_eq!(tl["gaps"][0]["first"], b_start.as_str(), "{s}");
    assert_eq!(tl["gaps"][0]["status"], "lost", "{s}");
    let by_id = |id: &str| s["backups"].as_array().expect("b").iter().find(|x| x["id"] == id).cloned().expect("backup");
    assert_eq!(by_id(b)["restorable"], false, "{s}");
    assert_eq!(by_id(b)["missing_wal"][0], b_start.as_str(), "{s}");
    assert!(by_id(a)["reaches"]["segment"].as_str().is_some_and(|r| r < b_start.as_str()), "{s}");
    assert_eq!(by_id(cc)["restorable"], true, "{s}");
    assert_eq!(s["restorable_window"]["latest_backup"], cc.as_str(), "{s}");
    let text = backupctl(cfg, &["status"]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.contains("1 GAP") && out.contains(&format!("{b_start} missing (lost")), "{out}");
    raw.put(&segment_key(&b_start), seg_body);

    // A gap whose next segment was archived moments ago: pending, not lost, and not a failure.
    c.sql("select pg_switch_wal()");
    c.sql("insert into t values (99, 1, 'x')");
    let newest = c.switch_and_wait_archived(Duration::from_secs(60));
    let segno = u64::from_str_radix(&newest[16..], 16).expect("hex");
    let before = format!("{}{:08X}", &newest[..16], segno - 1);
    let body = raw.delete(&segment_key(&before));
    let (code, r) = verify(cfg, &[]);
    let gap = problems(&r, "wal_gap")[0];
    assert_eq!((gap["what"].as_str(), gap["status"].as_str()), (Some(before.as_str()), Some("pending")), "{r}");
    assert_eq!(code, Some(0), "a pending gap is no failure: {r}");
    raw.put(&segment_key(&before), body);

    let (code, r) = verify(cfg, &["--wal"]);
    assert_eq!(code, Some(0), "repaired: {r}");
    (src, backups)
}

#[test]
fn issue_8_verify_and_status_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-verify");
    let (src, backups) = scenario("i8-verify", &repo.url(), "", &backupctl::config::S3Config::default());

    // The issue's example: a copy of the repository with one WAL segment removed no longer looks complete.
    let copy = tempfile::Builder::new().prefix("bkctl-i8-copy-").tempdir().expect("tempdir");
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", repo.dir.path().display())).arg(copy.path()).status();
    assert!(st.expect("cp").success());
    let s = status_json(&src.config);
    let first = s["wal"]["first"].as_str().expect("first").to_owned();
    let segno = u64::from_str_radix(&first[16..], 16).expect("hex");
    let victim = format!("{}{:08X}", &first[..16], segno + 3);
    std::fs::remove_file(copy.path().join(segment_key(&victim).as_str())).expect("remove a segment from the copy");
    let cfg_dir = tempfile::Builder::new().prefix("bkctl-i8-ro-").tempdir().expect("tempdir");
    let ro_cfg =
        |url: &str| crate::support::cluster::write_config(cfg_dir.path(), url, &cfg_dir.path().join("spool"), "");
    let copy_cfg = ro_cfg(&format!("file://{}", copy.path().display()));
    let text = backupctl(&copy_cfg, &["status"]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.contains("1 GAP") && out.contains(&format!("{victim} missing")), "{out}");
    let s = status_json(&copy_cfg);
    assert_eq!((s["wal"]["complete"].as_bool(), s["wal"]["gaps"].as_u64()), (Some(false), Some(1)), "{s}");

    // A read-only monitoring user: read permission on the repository, nothing else.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cfg_dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let st = Command::new("chmod").args(["-R", "a+rX,go-w"]).arg(repo.dir.path()).status().expect("chmod");
    assert!(st.success());
    let cfg = ro_cfg(&repo.url());
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bin("backupctl"))
        .arg("--config")
        .arg(&cfg)
        .args(["status", "--json-output"])
        .output()
        .expect("status as nobody");
    assert_ok("status as a read-only user", &out);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(s["wal"]["complete"], true, "{s}");
    let listed: Vec<&str> = s["backups"].as_array().expect("b").iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(listed, backups.iter().map(String::as_str).collect::<Vec<_>>(), "{s}");
    for b in s["backups"].as_array().expect("b") {
        assert!(
            b["sizes"]["stored"].as_u64().unwrap_or(0) > 0 && b["sizes"]["logical"].as_u64().unwrap_or(0) > 0,
            "{b}"
        );
        assert_eq!(b["keep"]["kept"], false, "{b}");
    }
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bin("backupctl"))
        .arg("--config")
        .arg(&cfg)
        .args(["verify", "--json-output"])
        .output()
        .expect("verify as nobody");
    assert_ok("verify as a read-only user", &out);
}

#[test]
fn issue_8_verify_and_status_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some(server) = crate::support::s3::server() else { return };
    let Some((url, extra)) = crate::pitr::s3_repo("i8-verify") else { return };
    scenario("i8-verify-s3", &url, &extra, &server.s3_config());
}

/// Following the history files: a backup taken before a fork reaches the newest timeline's WAL (a restore's
/// default, recovery_target_timeline = 'latest'); a clean repository with two timelines passes `verify --wal`; a
/// segment lost on timeline 2 cuts that backup short and is named as a gap of timeline 2.
#[test]
fn issue_8_verify_follows_timelines() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-tl");
    let src = Source::start_with("i8-tl", &repo.url(), ARCHIVE, BACKUP);
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    let a = src.backup_json("full")["id"].as_str().expect("id").to_owned();
    let mut at = Vec::new();
    for n in 1..=3 {
        std::thread::sleep(Duration::from_millis(1100));
        batch(&src, n);
        at.push(c.sql("select clock_timestamp()"));
    }
    c.switch_and_wait_archived(Duration::from_secs(120));
    // The fork: restored to after batch 1 and promoted, archiving timeline 2 into the same repository.
    let fork = src.restore_and_start("fork", &["--to", &at[0]]);
    for n in 101..=103 {
        fork.sql(&format!("insert into t select {n}, g, md5(g::text) from generate_series(1, 20000) g"));
        fork.sql("select pg_switch_wal()");
    }
    let last = fork.switch_and_wait_archived(Duration::from_secs(120));
    assert!(last.starts_with("00000002"), "{last}");
    drop(fork);

    let (code, r) = verify(&src.config, &["--wal"]);
    assert_eq!(code, Some(0), "{r}");
    assert!(r["problems"].as_array().is_some_and(Vec::is_empty), "{r}");
    let s = status_json(&src.config);
    let tls = s["wal"]["timelines"].as_array().expect("timelines");
    assert_eq!(tls.iter().map(|t| t["timeline"].as_u64()).collect::<Vec<_>>(), vec![Some(1), Some(2)], "{s}");
    assert_eq!(tls[1]["has_history"], true, "{s}");
    assert!(tls[1]["first"].as_str().is_some_and(|f| f.starts_with("00000002")), "{s}");
    let reach = &s["backups"][0]["reaches"];
    assert_eq!(reach["timeline"], 2, "{s}");
    assert_eq!(reach["segment"], tls[1]["last"], "{s}");

    // A segment of timeline 2 lost (the one before its last): a gap of timeline 2 that cuts the backup short.
    let last2 = tls[1]["last"].as_str().expect("last").to_owned();
    let segno = u64::from_str_radix(&last2[16..], 16).expect("hex");
    let victim = format!("{}{:08X}", &last2[..16], segno - 1);
    let raw = Raw::open(&repo.url(), &backupctl::config::S3Config::default());
    raw.delete(&segment_key(&victim));
    let r = wait_for("the gap to count as lost", Duration::from_secs(90), || {
        let (code, r) = verify(&src.config, &[]);
        let is_lost = problems(&r, "wal_gap").first().is_some_and(|g| g["status"] == "lost");
        is_lost.then(|| {
            assert_eq!(code, Some(1), "{r}");
            r
        })
    });
    let gap = problems(&r, "wal_gap")[0];
    assert_eq!(gap["what"], victim.as_str(), "{r}");
    assert_eq!((ids(&gap["breaks"]), ids(&gap["cuts"])), (vec![], vec![a.clone()]), "{r}");
    let s = status_json(&src.config);
    assert!(s["backups"][0]["reaches"]["segment"].as_str().is_some_and(|r| r < victim.as_str()), "{s}");
}
