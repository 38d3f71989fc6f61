//! Issue 8, first section: `backupctl delete` and `backupctl gc` on real clusters, file:// and S3: deleting any
//! backup leaves every other one restorable to exactly its own point; gc never removes what a running base-backup
//! reuses; a killed gc is finished by a rerun; gc removes what killed writers leave (temp files, incomplete
//! multipart uploads); a dry run removes nothing and lists what the real run removes.

use std::path::Path;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use crate::pitr::{FileRepo, Source, s3_repo};
use crate::support::cluster::{Cluster, as_postgres, assert_ok, bin, require_pg, wait_for};

/// Configuration lines every test here adds: no grace period, so that gc removes what it may at once.
pub(crate) const NO_GRACE: &str = "[retention]\ngc_grace = \"0s\"\n";

/// `backupctl --config <src> ARGS` as postgres.
pub(crate) fn backupctl(src: &Source, args: &[&str]) -> Output {
    as_postgres(&bin("backupctl")).arg("--config").arg(&src.config).args(args).output().expect("backupctl")
}

/// `backupctl gc --json-output`, checked to succeed; the report.
pub(crate) fn gc_json(src: &Source, dry_run: bool) -> serde_json::Value {
    let mut args = vec!["gc", "--json-output"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = backupctl(src, &args);
    assert_ok("backupctl gc", &out);
    serde_json::from_slice(&out.stdout).expect("gc prints JSON")
}

/// The removed items' names, sorted.
pub(crate) fn removed(report: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = report["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    names
}

/// Write a WAL record that changes no data (a restore point) and archive through it: every LSN recorded so far
/// is then inside the archive, even right after a segment switch.
pub(crate) fn archive_past(c: &Cluster) {
    c.sql("select pg_create_restore_point('issue8')");
    c.switch_and_wait_archived(Duration::from_secs(120));
}

/// A backup with the state of the source right after it.
pub(crate) struct Taken {
    pub(crate) id: String,
    /// The insert position right after the backup: nothing changed between its stop and here.
    pub(crate) lsn: String,
    pub(crate) dump: String,
}

/// Change the data (new rows, and updates across existing pages), take a backup of `kind`, and record the
/// source's state right after it.
pub(crate) fn take(src: &Source, kind: &str, batch: u32) -> Taken {
    let c = &src.cluster;
    c.sql(&format!(
        "insert into t select {batch}, g, md5(g::text) from generate_series(1, 3000) g; \
         update t set pad = md5(pad || '{batch}') where id % 5 = {batch} % 5"
    ));
    let id = src.backup_json(kind)["id"].as_str().expect("id").to_owned();
    let lsn = c.sql("select pg_current_wal_insert_lsn()");
    Taken { id, lsn, dump: c.dump() }
}

/// Restore `b` to its own point and compare the result with the source's dump taken then.
pub(crate) fn restore_matches(src: &Source, b: &Taken, name: &str) {
    let copy = src.restore_and_start(
        name,
        &["--backup-id", &b.id, "--to-lsn", &b.lsn, "--target-exclusive", "--archive-mode", "off"],
    );
    let got = copy.dump();
    if got != b.dump {
        let dir = std::env::temp_dir().join(format!("i8-dump-{name}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("want.sql"), &b.dump).expect("write");
        std::fs::write(dir.join("got.sql"), &got).expect("write");
        panic!("restore of {} to {} differs from the source at that backup (dumps in {})", b.id, b.lsn, dir.display());
    }
}

/// Delete the oldest, a middle and the newest of five backups in turn (gc after each, dry run first) and restore
/// every survivor to its own point, compared with pg_dump of the source then.
pub(crate) fn delete_scenario(url: &str, extra: &str, label: &str) {
    let src = Source::start(label, url, &format!("{extra}\n{NO_GRACE}"));
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    let mut backups: Vec<Taken> = Vec::new();
    for (batch, kind) in ["full", "incremental", "incremental", "full", "incremental"].iter().enumerate() {
        backups.push(take(&src, kind, batch as u32));
    }
    archive_past(c);

    // An unknown id: named, exit 1, nothing deleted.
    let out = backupctl(&src, &["delete", "--backup-id", "20200101-000000F"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("backup 20200101-000000F does not exist") && err.contains(&backups[0].id), "{err}");

    // A dry run deletes nothing.
    let out = backupctl(&src, &["delete", "--backup-id", &backups[0].id, "--dry-run"]);
    assert_ok("delete --dry-run", &out);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("would delete backup {} ", backups[0].id)));
    assert!(String::from_utf8_lossy(&src.status_json_output().stdout).contains(&backups[0].id));

    let mut round = 0;
    for victim in [0usize, 2, 4] {
        let id = backups[victim].id.clone();
        let out = backupctl(&src, &["delete", "--backup-id", &id]);
        assert_ok("backupctl delete", &out);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.starts_with(&format!("deleted backup {id} ")), "{said}");
        assert_eq!(victim == 4, said.contains("it was the newest backup"), "{said}");
        backups[victim].id.clear();

        let dry = gc_json(&src, true);
        let real = gc_json(&src, false);
        assert!(real["deferred"].is_null(), "{real}");
        assert_eq!(removed(&dry), removed(&real), "the real run removes exactly what the dry run listed");
        assert_eq!(real["objects_removed"], dry["objects_removed"]);
        assert_eq!(gc_json(&src, true)["objects_removed"], 0, "nothing left to remove after gc");

        for b in backups.iter().filter(|b| !b.id.is_empty()) {
            round += 1;
            restore_matches(&src, b, &format!("survivor-{round}"));
        }
    }
    let status = String::from_utf8_lossy(&src.status_json_output().stdout).into_owned();
    for b in &backups {
        if !b.id.is_empty() {
            assert!(status.contains(&b.id), "{status}");
        }
    }
}

#[test]
fn issue_8_delete_oldest_middle_newest_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-delete");
    delete_scenario(&repo.url(), "", "i8-delete-file");
}

#[test]
fn issue_8_delete_oldest_middle_newest_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i8-delete") else { return };
    delete_scenario(&url, &extra, "i8-delete-s3");
}

/// The pid of the only child of `parent` (runuser forks the command it runs).
pub(crate) fn child_of(parent: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: a plain kill(2) of a process this test started.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Keys under `prefix` in the repository of `src` (file:// or S3), via `backupctl`'s own storage code.
pub(crate) fn repo_keys(url: &str, s3: &backupctl::config::S3Config, prefix: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let storage = backupctl::storage::open(url, s3, Duration::from_secs(10)).await.expect("open");
        storage.list(prefix).await.expect("list").into_iter().map(|m| m.key.to_string()).collect()
    })
}

pub(crate) fn s3_settings(extra: &str) -> backupctl::config::S3Config {
    if extra.is_empty() {
        return backupctl::config::S3Config::default();
    }
    crate::support::s3::server().expect("moto").s3_config()
}

/// gc in a loop while an incremental base-backup runs that reuses the objects of a deleted backup (unreferenced,
/// past the grace period): every gc defers its data sweep while the backup's lease is live, and the backup then
/// restores exactly.
pub(crate) fn gc_during_backup(url: &str, extra: &str, label: &str) {
    let src = Source::start(label, url, &format!("{extra}\n{NO_GRACE}"));
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    c.sql("create table filler as select g id, repeat(md5(g::text), 20) pad from generate_series(1, 60000) g");
    let first = take(&src, "full", 0);
    assert_ok("delete", &backupctl(&src, &["delete", "--backup-id", &first.id]));
    c.sql("insert into t select 1, g, md5(g::text) from generate_series(1, 3000) g");

    // A slow incremental: it lists the deleted backup's objects and reuses them.
    let mut backup: Child = as_postgres(&bin("base-backup"))
        .arg("--config")
        .arg(&src.config)
        .args(["--fast", "--json", "--type", "incremental", "--max-rate", "4M"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("base-backup");
    let s3 = s3_settings(extra);
    wait_for("the backup's lease", Duration::from_secs(60), || {
        repo_keys(url, &s3, "locks/").iter().any(|k| k.starts_with("locks/backup-")).then_some(())
    });
    let mut runs = Vec::new();
    while backup.try_wait().expect("wait").is_none() {
        runs.push(gc_json(&src, false));
    }
    let out = backup.wait_with_output().expect("base-backup");
    assert_ok("base-backup during gc", &out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(summary["bytes_reused"].as_u64().unwrap_or(0) > 0, "the incremental reused objects: {summary}");
    assert!(!runs.is_empty(), "gc ran while the backup did");
    let deferred = runs.iter().filter(|r| !r["deferred"].is_null()).count();
    assert!(deferred > 0, "some gc saw the backup's lease: {runs:?}");
    for r in &runs {
        if let Some(why) = r["deferred"].as_str() {
            assert!(why.starts_with("base-backup ") && why.ends_with(" is running"), "{why}");
        }
    }
    // Now the deleted backup's objects that the new one does not use go.
    let after = gc_json(&src, false);
    assert!(after["deferred"].is_null(), "{after}");
    let id = summary["id"].as_str().expect("id").to_owned();
    let b = Taken { id, lsn: c.sql("select pg_current_wal_insert_lsn()"), dump: c.dump() };
    archive_past(c);
    restore_matches(&src, &b, "after-gc-loop");
    assert!(repo_keys(url, &s3, "locks/").is_empty(), "every lease released");
}

#[test]
fn issue_8_gc_loop_during_backup_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-gcloop");
    gc_during_backup(&repo.url(), "", "i8-gcloop-file");
}

#[test]
fn issue_8_gc_loop_during_backup_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i8-gcloop") else { return };
    gc_during_backup(&url, &extra, "i8-gcloop-s3");
}

/// kill -9 of gc while it sweeps: every remaining backup restores, and a rerun (which finds the dead gc's lease
/// stale at once, on this host) finishes the job.
fn kill_gc(url: &str, extra: &str, label: &str) {
    // Counts format 1's data/ objects (format 2: issue10_gc::issue_10_gc_compacts_and_survives_kill_*).
    crate::issue10_format2::init_format(label, url, extra, 1);
    let src = Source::start(label, url, &format!("{extra}\n{NO_GRACE}"));
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    let old = take(&src, "full", 0);
    let kept = take(&src, "full", 1);
    archive_past(c);
    assert_ok("delete", &backupctl(&src, &["delete", "--backup-id", &old.id]));
    let s3 = s3_settings(extra);
    let before = repo_keys(url, &s3, "data/").len();
    let would = gc_json(&src, true)["objects_removed"].as_u64().expect("count");
    assert!(would > 0, "the deleted full backup had objects of its own");

    let mut gc = as_postgres(&bin("backupctl"))
        .arg("--config")
        .arg(&src.config)
        .args(["gc", "--json-output"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("gc");
    let runuser = gc.id();
    let pid = wait_for("gc to start", Duration::from_secs(30), || child_of(runuser));
    // Kill it as soon as its sweep has begun (or at once if it already finished).
    let deadline = Instant::now() + Duration::from_secs(60);
    while gc.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        if repo_keys(url, &s3, "data/").len() < before {
            break;
        }
    }
    signal(pid, libc::SIGKILL);
    let _ = gc.wait();

    restore_matches(&src, &kept, "after-kill");
    let rerun = gc_json(&src, false);
    assert!(rerun["deferred"].is_null(), "the killed gc's lease is stale: {rerun}");
    assert_eq!(repo_keys(url, &s3, "data/").len() as u64, before as u64 - would, "the rerun finished the job");
    assert!(repo_keys(url, &s3, "locks/").is_empty(), "the dead gc's lease was removed");
    restore_matches(&src, &kept, "after-rerun");
}

#[test]
fn issue_8_kill_gc_and_rerun_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-killgc");
    kill_gc(&repo.url(), "", "i8-killgc-file");
}

#[test]
fn issue_8_kill_gc_and_rerun_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i8-killgc") else { return };
    kill_gc(&url, &extra, "i8-killgc-s3");
}

/// Every `.tmp-*` file under `dir`.
fn temp_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let is_temp = |p: &std::path::PathBuf| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"));
    crate::support::wal::files_under(dir).into_iter().filter(is_temp).collect()
}

/// A kill -9 of base-backup in the middle of a put leaves a `.tmp-` file in a file:// repository (shown first);
/// gc removes it and reports it, a dry run only lists it, and the dead backup's lease does not defer the sweep.
#[test]
fn issue_8_gc_removes_temp_file_of_killed_backup() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-tmp");
    // Looks for format 1's data/ temp files.
    crate::issue10_format2::init_format("i8-tmp", &repo.url(), "", 1);
    let src = Source::start("i8-tmp", &repo.url(), NO_GRACE);
    src.cluster
        .sql("create table filler as select g id, repeat(md5(g::text), 20) pad from generate_series(1, 60000) g");
    let mut left = Vec::new();
    for _attempt in 0..5 {
        let mut backup = as_postgres(&bin("base-backup"))
            .arg("--config")
            .arg(&src.config)
            .args(["--fast", "--type", "full"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("base-backup");
        let runuser = backup.id();
        let pid = wait_for("base-backup to start", Duration::from_secs(30), || child_of(runuser));
        // Freeze it the moment a temp file exists; kill it if one is still there (a put in the middle).
        let deadline = Instant::now() + Duration::from_secs(60);
        while backup.try_wait().expect("wait").is_none() && Instant::now() < deadline {
            if !temp_files(&repo.dir.path().join("data")).is_empty() {
                signal(pid, libc::SIGSTOP);
                if !temp_files(&repo.dir.path().join("data")).is_empty() {
                    break;
                }
                signal(pid, libc::SIGCONT);
                signal(runuser, libc::SIGCONT);
            }
        }
        signal(pid, libc::SIGKILL);
        signal(runuser, libc::SIGCONT);
        let _ = backup.wait();
        // Only data/: a wal-push may have a temp file of its own in flight under wal/.
        left = temp_files(&repo.dir.path().join("data"));
        if !left.is_empty() {
            break;
        }
    }
    assert!(!left.is_empty(), "a kill -9 in the middle of a put leaves a .tmp- file");
    assert!(!repo_keys(&repo.url(), &Default::default(), "locks/").is_empty(), "the dead backup's lease is left");

    let bytes: u64 = left.iter().map(|p| std::fs::metadata(p).expect("temp file").len()).sum();
    let rel = |p: &std::path::PathBuf| p.strip_prefix(repo.dir.path()).expect("inside").to_string_lossy().into_owned();
    let dry = gc_json(&src, true);
    let listed = removed(&dry);
    assert!(left.iter().all(|p| listed.contains(&rel(p))), "{dry}");
    assert!(left.iter().all(|p| p.exists()), "a dry run removes nothing");
    let real = gc_json(&src, false);
    assert!(real["deferred"].is_null(), "a dead holder's lease is stale at once: {real}");
    assert!(real["temp_files_removed"].as_u64() >= Some(left.len() as u64), "{real}");
    assert!(real["temp_bytes_removed"].as_u64() >= Some(bytes), "{real}");
    assert!(left.iter().all(|p| !p.exists()), "gc removed the killed backup's temp files");
    assert!(repo_keys(&repo.url(), &Default::default(), "locks/").is_empty(), "the stale lease was removed");
    // The objects the killed backup wrote are referenced by nothing: gone too.
    assert!(repo_keys(&repo.url(), &Default::default(), "data/").is_empty(), "{real}");
}

/// The second line of defence behind the lease: an object a running base-backup wrote disappears (deleted by
/// hand here); the backup fails naming it before writing its manifest, so no broken backup is ever listed.
#[test]
fn issue_8_backup_fails_when_an_object_it_references_vanishes() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-vanish");
    // Format 1: many chunk objects appear while the backup runs (format 2 writes few, large packs).
    crate::issue10_format2::init_format("i8-vanish", &repo.url(), "", 1);
    let src = Source::start("i8-vanish", &repo.url(), NO_GRACE);
    src.cluster
        .sql("create table filler as select g id, repeat(md5(g::text), 20) pad from generate_series(1, 60000) g");
    let backup = as_postgres(&bin("base-backup"))
        .arg("--config")
        .arg(&src.config)
        .args(["--fast", "--type", "full", "--max-rate", "4M"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("base-backup");
    let victim = wait_for("the backup to write a few objects", Duration::from_secs(60), || {
        let objects = repo.objects();
        (objects.len() >= 3).then(|| objects[0].clone())
    });
    std::fs::remove_file(&victim).expect("remove an object");
    let out = backup.wait_with_output().expect("base-backup");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let name = victim.file_name().expect("name").to_string_lossy().into_owned();
    assert!(err.contains("vanished from") && err.contains(&name), "{err}");
    assert!(
        !repo.dir.path().join("backups").exists() || repo_keys(&repo.url(), &Default::default(), "backups/").is_empty()
    );
    assert!(repo_keys(&repo.url(), &Default::default(), "locks/").is_empty(), "the failed backup released its lease");
}

/// An incomplete multipart upload (what a writer killed mid-upload leaves on S3) is listed by a dry run and
/// aborted by gc once older than the grace period.
#[test]
fn issue_8_gc_aborts_incomplete_multipart_uploads() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i8-mpu") else { return };
    let src = Source::start("i8-mpu", &url, &format!("{extra}\n{NO_GRACE}"));
    src.cluster.switch_and_wait_archived(Duration::from_secs(120)); // the first push creates the repository
    let server = crate::support::s3::server().expect("moto");
    let bucket = url.trim_start_matches("s3://").split('/').next().expect("bucket").to_owned();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let client = server.client();
    let key = "cluster/data/ab/abababababababababababababababababababababababababababababababab";
    rt.block_on(async {
        let up = client.create_multipart_upload().bucket(&bucket).key(key).send().await.expect("create upload");
        let id = up.upload_id().expect("upload id").to_owned();
        let body = aws_sdk_s3::primitives::ByteStream::from(vec![7u8; 5 << 20]);
        client
            .upload_part()
            .bucket(&bucket)
            .key(key)
            .upload_id(&id)
            .part_number(1)
            .body(body)
            .send()
            .await
            .expect("part");
    });
    let uploads =
        || rt.block_on(client.list_multipart_uploads().bucket(&bucket).send()).expect("list uploads").uploads().len();
    assert_eq!(uploads(), 1);
    let dry = gc_json(&src, true);
    assert_eq!(dry["temp_files_removed"], 1, "{dry}");
    // temp_bytes_removed comes from ListParts, whose reply from moto the SDK cannot parse: not checked here.
    assert_eq!(uploads(), 1, "a dry run aborts nothing");
    let real = gc_json(&src, false);
    assert_eq!(real["temp_files_removed"], 1, "{real}");
    assert_eq!(
        removed(&real),
        vec!["data/ab/abababababababababababababababababababababababababababababababab".to_owned()]
    );
    assert_eq!(uploads(), 0, "gc aborted the upload");
}

/// Measurement, not a check (run with `--ignored --nocapture`): removing 2000 objects from moto with `DeleteObjects`
/// batches (what gc does) against one `DeleteObject` per key, 16 in flight.
#[test]
#[ignore]
fn issue_8_measure_s3_batch_delete() {
    let Some(server) = crate::support::s3::server() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let bucket = server.new_bucket("i8-measure").await;
        let storage = backupctl::storage::open(&format!("s3://{bucket}/m"), &server.s3_config(), Duration::from_secs(30))
            .await
            .expect("open");
        let keys: Vec<backupctl::storage::Key> =
            (0..2000).map(|i| format!("data/{:02x}/{i:064x}", i % 256).parse().expect("key")).collect();
        let fill = || async {
            let puts: Vec<_> = keys
                .iter()
                .map(|k| storage.put(k, bytes::Bytes::from_static(b"x"), backupctl::storage::PutMode::Overwrite))
                .collect();
            use futures_util::StreamExt as _;
            let mut s = futures_util::stream::iter(puts).buffer_unordered(16);
            while let Some(r) = s.next().await {
                r.expect("put");
            }
        };
        fill().await;
        let t = Instant::now();
        assert_eq!(storage.delete_many(&keys, 16).await.expect("batches"), 2000);
        let batched = t.elapsed();
        assert!(storage.list("data/").await.expect("list").is_empty());
        fill().await;
        let t = Instant::now();
        {
            use futures_util::StreamExt as _;
            let deletes: Vec<_> = keys.iter().map(|k| storage.delete(k)).collect();
            let mut s = futures_util::stream::iter(deletes).buffer_unordered(16);
            while let Some(r) = s.next().await {
                r.expect("delete");
            }
        }
        let single = t.elapsed();
        println!("2000 objects on moto: DeleteObjects batches {batched:?}, one DeleteObject per key (16 in flight) {single:?}");
    });
}

/// gc defers its data sweep while a pitr-restore (run by the repository owner) holds its lease, even when the
/// backup being restored was deleted meanwhile; the restore then completes and matches.
#[test]
fn issue_8_gc_defers_while_a_restore_runs() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-restore");
    let src = Source::start("i8-restore", &repo.url(), NO_GRACE);
    let c = &src.cluster;
    c.sql("create table t (batch int, id int, pad text)");
    // Enough data that the restore is still writing when the test looks (about 60 MB).
    c.sql("insert into t select 0, g, repeat('x', 500) from generate_series(1, 100000) g");
    let b = take(&src, "full", 0);
    archive_past(c);
    let dest = src.dir.sub("restored");
    std::fs::remove_dir(&dest).expect("rmdir");
    let mut restore = as_postgres(&bin("pitr-restore"))
        .arg("--config")
        .arg(&src.config)
        .arg("--destination")
        .arg(&dest)
        .args(["--backup-id", &b.id, "--to-lsn", &b.lsn, "--target-exclusive", "--archive-mode", "off"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("pitr-restore");
    let runuser = restore.id();
    let pid = wait_for("pitr-restore to start", Duration::from_secs(30), || child_of(runuser));
    let none = Default::default();
    // Freeze it once it holds its lease and has read the manifest (it creates the destination only after), or let
    // it finish: then there is nothing to show, and the test says so. Stopped between taking its lease and
    // reading the manifest, it would rightly fail: the backup it was asked for no longer exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        if dest.exists() && repo_keys(&repo.url(), &none, "locks/").iter().any(|k| k.starts_with("locks/restore-")) {
            signal(pid, libc::SIGSTOP);
            break true;
        }
        if restore.try_wait().expect("wait").is_some() {
            break false;
        }
        assert!(Instant::now() < deadline, "timed out waiting for the restore's lease");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(held, "pitr-restore finished before its lease was seen");
    assert_ok("delete", &backupctl(&src, &["delete", "--backup-id", &b.id]));
    let during = gc_json(&src, false);
    let why = during["deferred"].as_str().unwrap_or_default();
    assert!(why.starts_with(&format!("pitr-restore {} (pid ", b.id)), "{during}");
    assert_eq!(during["objects_removed"], 0, "{during}");
    // runuser stops itself when its child stops (as su does): continue both.
    signal(pid, libc::SIGCONT);
    signal(runuser, libc::SIGCONT);
    assert!(restore.wait().expect("pitr-restore").success());
    let mut copy = Cluster::at(&c.bin, &dest, &c.socket);
    copy.start();
    wait_for("recovery to finish", Duration::from_secs(120), || {
        copy.try_sql("select pg_is_in_recovery()").stdout.starts_with(b"f").then_some(())
    });
    assert!(copy.dump() == b.dump, "the restore of a backup deleted meanwhile differs");
    let after = gc_json(&src, false);
    assert!(after["deferred"].is_null() && after["objects_removed"].as_u64().unwrap_or(0) > 0, "{after}");
}
