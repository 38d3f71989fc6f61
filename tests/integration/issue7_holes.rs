//! Issue 7, section 2: holes in the archive and targets that cannot be reached. A missing segment in the middle
//! of the archive must stop recovery (wal-fetch exit 255) instead of ending it, pitr-restore must refuse before
//! writing anything when the WAL it needs has a hole or the target lies beyond the archive.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backupctl::storage::{self, Key, PutMode, Storage};
use bytes::Bytes;

use crate::pitr::{FileRepo, Source};
use crate::support::cluster::{Cluster, as_postgres, require_pg, wait_for};
use crate::support::wal::{fetch, push, segment_name, status, write_segment};

const MB: u64 = 1 << 20;
const SYSID: u64 = 7_001_002_003_004_005_006;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The archived object of a segment in a file:// repository.
fn segment_object(repo: &FileRepo, name: &str) -> PathBuf {
    repo.dir.path().join("wal").join(&name[..16]).join(name)
}

/// Start a restored copy without waiting for it to accept connections (it may stop during recovery, before
/// `pg_ctl start`'s polling would see it ready).
fn start_unchecked(copy: &Cluster) {
    let out = as_postgres(&copy.bin.join("pg_ctl"))
        .arg("--no-wait")
        .arg("-D")
        .arg(&copy.data)
        .arg("-l")
        .arg(&copy.log)
        .arg("-o")
        .arg(format!("-p {} -k {}", copy.port, copy.socket.display()))
        .arg("start")
        .output()
        .expect("pg_ctl start");
    assert!(out.status.success(), "pg_ctl start: {}", stderr(&out));
}

/// Stops a server started with [`start_unchecked`] when dropped (also when an assertion fails).
struct StopOnDrop<'a>(&'a Cluster);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let c = self.0;
        let _ =
            as_postgres(&c.bin.join("pg_ctl")).arg("-D").arg(&c.data).args(["-m", "immediate", "-w", "stop"]).output();
    }
}

fn is_running(copy: &Cluster) -> bool {
    as_postgres(&copy.bin.join("pg_ctl"))
        .arg("-D")
        .arg(&copy.data)
        .arg("status")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Archive six batches in six segments after a backup; lose the segment holding batch 3 from the repository:
/// pitr-restore refuses (naming it and the next present one) and writes nothing; a copy restored before the loss
/// stops in recovery at that segment with wal-fetch's message in its log instead of promoting without batches
/// 3-6; a target before the hole still restores; targets beyond the archive are refused.
#[test]
fn issue_7_hole_in_archive_stops_restore_and_recovery() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-hole");
    let src = Source::start("i7-hole", &repo.url(), "");
    let c = &src.cluster;
    c.sql("create table batches (batch int, id int, pad text)");
    c.sql("insert into batches select 0, g, md5(g::text) from generate_series(1, 1000) g");
    src.backup_json("full");
    let (mut segment_of, mut time_after, mut lsn_after) = (Vec::new(), Vec::new(), Vec::new());
    for batch in 1..=6u32 {
        std::thread::sleep(Duration::from_millis(1100));
        c.sql(&format!("insert into batches select {batch}, g, md5(g::text) from generate_series(1, 1000) g"));
        time_after.push(c.sql("select clock_timestamp()"));
        lsn_after.push(c.sql("select pg_current_wal_lsn()"));
        segment_of.push(c.sql("select pg_walfile_name(pg_current_wal_lsn())"));
        c.sql("select pg_switch_wal()");
    }
    let last = c.switch_and_wait_archived(Duration::from_secs(120));

    // Restored while the archive is whole: the copy that will meet the hole when it starts.
    let early = src.dir.sub("restored-before-loss");
    std::fs::remove_dir(&early).expect("rmdir");
    let out = src.restore(&early, &["--archive-mode", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let lost = segment_of[2].clone();
    let next = segment_of[3].clone();
    assert!(lost < next && next < last, "{lost} {next} {last}");
    std::fs::remove_file(segment_object(&repo, &lost)).expect("lose a segment");

    // pitr-restore to the end of the archive: refused, naming the missing and the next present segment.
    let dest = src.dir.sub("refused");
    std::fs::remove_dir(&dest).expect("rmdir");
    let out = src.restore(&dest, &["--archive-mode", "off"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{lost} is missing")) && err.contains(&format!("{next} is the next")), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{err}");
    assert!(!dest.exists(), "a refused restore must not create the destination");
    // ... and to an LSN after the hole.
    let out = src.restore(&dest, &["--to-lsn", &lsn_after[4], "--archive-mode", "off"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&lost), "{}", stderr(&out));
    assert!(!dest.exists());

    // The copy restored before the loss: recovery stops at the hole, the server does not promote.
    let copy = Cluster::at(&c.bin, &early, &c.socket);
    start_unchecked(&copy);
    let _stop = StopOnDrop(&copy);
    // The log is read again once the server has stopped: the lines it writes between wal-fetch's message and its
    // exit (the startup process's FATAL with the exit code, then the shutdown) may not be there yet at the first read.
    let log = wait_for("the restored copy to stop at the hole", Duration::from_secs(180), || {
        let log = copy.log_text();
        (log.contains("wal-fetch") && log.contains(&lost) && !is_running(&copy)).then(|| copy.log_text())
    });
    assert!(log.contains(&format!("{lost} is missing")) && log.contains(&next), "{log}");
    assert!(log.contains("exit code 255") || log.contains("exited with exit code 255"), "{log}");
    assert!(!log.contains("selected new timeline ID") && !log.contains("archive recovery complete"), "{log}");
    assert!(!early.join("pg_wal/00000002.history").exists(), "the copy must not have promoted");
    drop(_stop);

    // A target before the hole still restores, exactly.
    let dest = src.dir.sub("before-hole");
    std::fs::remove_dir(&dest).expect("rmdir");
    let out = src.restore(&dest, &["--to", &time_after[0], "--archive-mode", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&lost), "warns about the hole after the target: {}", stderr(&out));
    let copy = Cluster::at(&c.bin, &dest, &c.socket);
    // PostgreSQL 15+ decodes WAL ahead of replay (recovery_prefetch): it would ask for the lost segment, right
    // after the target's, before stopping at the target, and stop at the hole. The warning says to turn it off.
    assert!(stderr(&out).contains("recovery_prefetch = off"), "{}", stderr(&out));
    copy.append_conf("recovery_prefetch = off");
    start_unchecked(&copy);
    let _stop_copy = StopOnDrop(&copy);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !copy.try_sql("select pg_is_in_recovery()").stdout.starts_with(b"f") {
        assert!(std::time::Instant::now() < deadline, "recovery to {} did not end: {}", time_after[0], copy.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(copy.sql("select count(distinct batch) || ':' || max(batch) from batches"), "2:1");
}

/// Targets beyond the archive: a time in the future and an LSN past the newest archived segment are refused
/// before anything is written; a time after the newest archived segment is accepted with a warning that says
/// where the archive ends.
#[test]
fn issue_7_targets_beyond_the_archive() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-late");
    let src = Source::start("i7-late", &repo.url(), "");
    let c = &src.cluster;
    c.sql("create table t (id int)");
    src.backup_json("full");
    let last = c.switch_and_wait_archived(Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(1100));
    let later = c.sql("select clock_timestamp()");
    let dest = src.dir.sub("late");
    std::fs::remove_dir(&dest).expect("rmdir");
    let out = src.restore(&dest, &["--to", &later, "--archive-mode", "off"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let warning: Vec<&str> = err.lines().filter(|l| l.contains("after the newest archived WAL")).collect();
    assert_eq!(warning.len(), 1, "{err}");
    let newest = std::fs::read_dir(repo.dir.path().join("wal").join(&last[..16]))
        .expect("wal dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24)
        .max()
        .expect("segments");
    assert!(warning[0].contains(&newest), "names the newest archived segment {newest}: {err}");

    let dest = src.dir.sub("refused");
    std::fs::remove_dir(&dest).expect("rmdir");
    let tomorrow = c.sql("select to_char(now() + interval '1 day', 'YYYY-MM-DD HH24:MI:SSOF')");
    let out = src.restore(&dest, &["--to", &tomorrow]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in the future"), "{err}");
    assert!(!dest.exists());
    let beyond = c.sql("select pg_current_wal_lsn() + 64 * 1024 * 1024");
    let out = src.restore(&dest, &["--to-lsn", &beyond, "--target-timeline", "current"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot restore to lsn") && err.contains("ends at segment"), "{err}");
    assert!(!dest.exists());
}

/// A configuration in `dir` (owned by root, who runs these wal-push calls): its spool, and a `file://`
/// repository's directory, exist first, since root may not create them.
fn fetch_config(dir: &Path, url: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("spool")).expect("spool");
    if let Some(repo) = url.strip_prefix("file://") {
        std::fs::create_dir_all(repo).expect("repository directory");
    }
    let path = dir.join("backupctl.toml");
    std::fs::write(
        &path,
        format!(
            "[repository]\nurl = \"{url}\"\n{extra}\n[spool]\npath = \"{}/spool\"\n[archive]\npush_ahead = 0\nfetch_prefetch = 0\n",
            dir.display()
        ),
    )
    .expect("config");
    path
}

/// wal-fetch tells the end of the archive from a hole, across timelines, without segments of a cluster: a
/// segment absent with later ones of its timeline archived exits 255 naming both; the segment after the last one,
/// `.history` probes and an old timeline's segments after a fork exit 1; a segment before a later timeline's fork
/// is a hole even with nothing later on its own timeline.
fn hole_versus_end(cfg: &Path, dir: &Path, age: impl Fn(&str)) {
    for segno in 1..=6 {
        let seg = write_segment(dir, 1, segno, MB, SYSID, 1);
        let (code, err) = status(&push(cfg, &seg));
        assert_eq!(code, Some(0), "{err}");
    }
    let dest = dir.join("RECOVERYXLOG");
    let name = |segno| segment_name(1, segno, MB);
    assert_eq!(status(&fetch(cfg, &name(3), &dest)).0, Some(0));
    std::fs::remove_file(&dest).expect("rm");
    for later in 4..=6 {
        age(&name(later));
    }
    let lose = |segno: u64| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let cfg = backupctl::config::Config::load(cfg).expect("config");
            let st =
                storage::open(&cfg.repository.url, &cfg.repository.s3, Duration::from_secs(5)).await.expect("open");
            let key = Key::new(format!("wal/{}/{}", &name(segno)[..16], name(segno))).expect("key");
            st.delete(&key).await.expect("delete");
        });
    };
    lose(3);
    let (code, err) = status(&fetch(cfg, &name(3), &dest));
    assert_eq!(code, Some(255), "a hole is not the end of the archive: {err}");
    assert!(err.contains(&format!("{} is missing", name(3))) && err.contains(&name(4)), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{err}");
    assert!(!dest.exists());

    // The end of the archive, and names whose absence is always an answer: exit 1, quickly.
    for absent in [name(7), "00000002.history".to_owned(), format!("{}.partial", name(7))] {
        let started = std::time::Instant::now();
        let (code, err) = status(&fetch(cfg, &absent, &dest));
        assert_eq!(code, Some(1), "{absent}: {err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{absent}");
    }

    // Timeline 2 forked from timeline 1 inside segment 9 (after the archived 1..6): segments 7 and 8 of timeline
    // 1 must have existed; 9 (the fork segment, archived as .partial) and 10 (after the fork) need not.
    let history = dir.join("00000002.history");
    std::fs::write(&history, "1\t0/900100\tno recovery target specified\n").expect("history");
    assert_eq!(status(&push(cfg, &history)).0, Some(0));
    age("00000002.history");
    let (code, err) = status(&fetch(cfg, &name(7), &dest));
    assert_eq!(code, Some(255), "{err}");
    assert!(err.contains("00000002.history"), "{err}");
    for end in [9, 10] {
        let (code, err) = status(&fetch(cfg, &name(end), &dest));
        assert_eq!(code, Some(1), "{}: {err}", name(end));
    }
    // The end of timeline 2 itself.
    let (code, err) = status(&fetch(cfg, &segment_name(2, 9, MB), &dest));
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn issue_7_wal_fetch_hole_versus_end_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let cfg = fetch_config(dir.path(), &format!("file://{}", repo.display()), "");
    // Evidence archived an hour ago cannot be a push still in flight: decided at once.
    let age = |name: &str| {
        let key = if name.ends_with(".history") {
            format!("wal/timelines/{name}")
        } else {
            format!("wal/{}/{name}", &name[..16])
        };
        let f = std::fs::File::options().write(true).open(repo.join(key)).expect("object");
        f.set_modified(SystemTime::now() - Duration::from_secs(3600)).expect("mtime");
    };
    hole_versus_end(&cfg, dir.path(), age);
}

#[test]
fn issue_7_wal_fetch_hole_versus_end_s3() {
    let Some(server) = crate::support::s3::server() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bucket = rt.block_on(server.new_bucket("i7-hole"));
    let dir = tempfile::tempdir().expect("tempdir");
    let extra =
        format!("[repository.s3]\nendpoint = \"{}\"\nforce_path_style = true\nallow_http = true", server.endpoint);
    let cfg = fetch_config(dir.path(), &format!("s3://{bucket}/p"), &extra);
    // Objects on S3 cannot be aged: each hole is looked for again for a few seconds first.
    hole_versus_end(&cfg, dir.path(), |_| {});
}

/// A segment that arrives while wal-fetch looks for it again (a later one landed first: wal-push archives ahead
/// in parallel) is served, not reported as a hole.
#[test]
fn issue_7_wal_fetch_serves_a_segment_that_lands_late() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let cfg = fetch_config(dir.path(), &format!("file://{}", repo.display()), "");
    let segs: Vec<PathBuf> = (1..=3).map(|n| write_segment(dir.path(), 1, n, MB, SYSID, 1)).collect();
    for s in [&segs[0], &segs[2]] {
        assert_eq!(status(&push(&cfg, s)).0, Some(0));
    }
    let dest = dir.path().join("RECOVERYXLOG");
    let name = segment_name(1, 2, MB);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_wal-fetch"))
        .arg("--config")
        .arg(&cfg)
        .arg(&name)
        .arg(&dest)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wal-fetch");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status(&push(&cfg, &segs[1])).0, Some(0));
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(&dest).expect("dest"), std::fs::read(&segs[1]).expect("seg"));
}

/// `list_after` on both backends: keys after a key under a prefix, in order, at most `limit`, with times.
#[test]
fn issue_7_list_after_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut backends: Vec<Arc<dyn Storage>> = vec![Arc::new(storage::fs::FsStorage::new(dir.path().join("repo")))];
    if let Some(server) = crate::support::s3::server() {
        let bucket = rt.block_on(server.new_bucket("i7-list"));
        backends.push(Arc::new(
            rt.block_on(storage::s3::S3Storage::connect(&bucket, "p", &server.s3_config())).expect("s3"),
        ));
    }
    for st in backends {
        rt.block_on(async {
            let keys = [
                "wal/0000000100000000/000000010000000000000003",
                "wal/0000000100000000/000000010000000000000003.partial",
                "wal/0000000100000000/000000010000000000000005",
                "wal/0000000100000001/000000010000000100000000",
                "wal/0000000200000000/000000020000000000000004",
                "wal/timelines/00000002.history",
            ];
            for k in keys {
                st.put(&Key::new(k).expect("key"), Bytes::from_static(b"x"), PutMode::Create).await.expect("put");
            }
            let after = |prefix: &'static str, start: &'static str, limit| {
                let st = st.clone();
                async move {
                    st.list_after(prefix, start, limit)
                        .await
                        .expect("list_after")
                        .into_iter()
                        .map(|m| {
                            assert!(m.modified.is_some(), "{st}: {} has a modification time", m.key);
                            m.key.to_string()
                        })
                        .collect::<Vec<_>>()
                }
            };
            assert_eq!(
                after("wal/00000001", "wal/0000000100000000/000000010000000000000003", 10).await,
                keys[1..4].to_vec(),
                "{st}"
            );
            assert_eq!(
                after("wal/00000001", "wal/0000000100000000/000000010000000000000003", 2).await,
                keys[1..3].to_vec(),
                "{st}"
            );
            assert_eq!(after("wal/00000001", "wal/0000000100000001/000000010000000100000000", 10).await.len(), 0);
            assert_eq!(after("wal/", "wal/0000000200000000/000000020000000000000004", 10).await, keys[5..].to_vec());
            assert_eq!(after("wal/timelines/", "wal/timelines/00000001.history", 10).await, keys[5..].to_vec());
        });
    }
}
