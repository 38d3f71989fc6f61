//! base-backup on real clusters: incremental cost, one backup at a time, interruption, WAL that never arrives,
//! damaged and hostile repositories, --delta restores.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::pitr::{FileRepo, Source};
use crate::support::cluster::{assert_ok, bin, require_pg, wait_for};

fn load_big_table(c: &crate::support::cluster::Cluster, rows: u32) {
    c.sql("create table big (id int primary key, pad text)");
    c.sql(&format!("insert into big select g, repeat(md5(g::text), 3) from generate_series(1, {rows}) g"));
}

/// A second backup after changing a few percent of the pages stores a small fraction of the first, and restoring
/// it gives a cluster whose pg_dump equals the source's.
#[test]
fn incremental_stores_about_the_change() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("incr");
    let src = Source::start("incr", &repo.url(), "");
    let c = &src.cluster;
    load_big_table(c, 400_000);
    let full = src.backup_json("full");
    // 3% of the rows, clustered as most real changes are: about 3% of the table's pages (plus their new versions).
    c.sql("update big set pad = upper(pad) where id <= 12000");
    // The admin CLI's `backup` runs the same code as base-backup.
    let out = crate::support::cluster::as_postgres(&bin("backupctl"))
        .arg("--config")
        .arg(&src.config)
        .args(["backup", "incremental", "--fast", "--json-output", "--label", "after the update"])
        .output()
        .expect("backupctl backup");
    assert_ok("backupctl backup incremental", &out);
    let incr: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(incr["label"], "after the update");
    let (w_full, w_incr) = (full["bytes_written"].as_u64().unwrap_or(0), incr["bytes_written"].as_u64().unwrap_or(0));
    let (s_full, s_incr) = (full["bytes_stored"].as_u64().unwrap_or(0), incr["bytes_stored"].as_u64().unwrap_or(0));
    eprintln!("full wrote {w_full} bytes ({s_full} stored); incremental wrote {w_incr} bytes ({s_incr} stored)");
    assert!(w_full > 60 << 20, "the full backup wrote {w_full} bytes");
    assert!(w_incr * 10 < w_full, "incremental wrote {w_incr} bytes, more than a tenth of the full's {w_full}");
    assert!(s_incr * 10 < s_full, "incremental stored {s_incr} bytes against the full's {s_full}");
    assert!(incr["bytes_reused"].as_u64().unwrap_or(0) > w_full / 2, "{incr}");
    assert_eq!(incr["type"], "incremental");

    c.switch_and_wait_archived(Duration::from_secs(120));
    let expected = c.dump();
    let id = incr["id"].as_str().expect("id");
    let copy = src.restore_and_start("from-incr", &["--backup-id", id, "--archive-mode", "off"]);
    let got = copy.dump();
    if got != expected {
        let diff: Vec<(&str, &str)> = got.lines().zip(expected.lines()).filter(|(a, b)| a != b).take(10).collect();
        panic!(
            "pg_dump of the restored incremental differs from the source's ({} vs {} lines): {diff:?}",
            got.lines().count(),
            expected.lines().count()
        );
    }

    // status lists both, newest last, with their types.
    let out = src.status_json_output();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let types: Vec<&str> =
        list["backups"].as_array().expect("array").iter().filter_map(|b| b["type"].as_str()).collect();
    assert_eq!(types, vec!["full", "incremental"]);
    let out = crate::support::cluster::as_postgres(&bin("backupctl"))
        .arg("--config")
        .arg(&src.config)
        .args(["status", "--last", "1", "--type", "full"])
        .output()
        .expect("status");
    assert_ok("backupctl status --last 1 --type full", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(full["id"].as_str().expect("id")) && !text.contains(id), "{text}");
}

/// While a backup runs, a second one fails fast; killing the first leaves no backup; a rerun reuses its uploads.
#[test]
fn one_backup_at_a_time_and_interrupted_backups_leave_nothing() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("interrupt");
    // Format 1: a rerun reuses the chunks a killed backup uploaded (format 2's orphan packs are not indexed).
    crate::issue10_format2::init_format("interrupt", &repo.url(), "", 1);
    let src = Source::start("interrupt", &repo.url(), "");
    load_big_table(&src.cluster, 400_000);
    let mut slow = crate::support::cluster::as_postgres(&bin("base-backup"))
        .arg("--config")
        .arg(&src.config)
        .args(["--fast", "--max-rate", "8M"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn base-backup");
    wait_for("the first backup to upload a few objects", Duration::from_secs(60), || {
        (repo.objects().len() >= 4).then_some(())
    });

    let started = Instant::now();
    let out = src.base_backup(&["--fast"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another base-backup"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "the second backup took {:?} to give up", started.elapsed());

    // kill -9 the running backup (runuser and base-backup itself).
    let pattern = format!("base-backup --config {}", src.config.display());
    let _ = Command::new("pkill").args(["-KILL", "-f", &pattern]).status();
    let _ = slow.wait();
    let uploaded = repo.objects().len();
    let manifests = std::fs::read_dir(repo.dir.path().join("backups")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(manifests, 0, "an interrupted backup must leave no manifest");
    // The server aborts the backup when the session goes away.
    wait_for("the server to end the killed backup's session", Duration::from_secs(30), || {
        (src.cluster.sql("select count(*) from pg_stat_activity where application_name = 'backupctl'") == "0")
            .then_some(())
    });

    let rerun = src.backup_json("incremental");
    assert!(
        rerun["bytes_reused"].as_u64().unwrap_or(0) > 0,
        "the rerun reused nothing of {uploaded} uploaded objects: {rerun}"
    );
    assert!(repo.dir.path().join("backups").join(rerun["id"].as_str().expect("id")).join("manifest").is_file());
}

/// If the WAL up to the stop point never reaches the archive, the backup fails with a clear error and is not recorded.
#[test]
fn backup_fails_when_its_wal_is_not_archived() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("noarchive");
    let src = Source::start_with("noarchive", &repo.url(), "", "archive_timeout_seconds = 3");
    src.cluster.sql("alter system set archive_command = 'false'");
    src.cluster.sql("select pg_reload_conf()");
    let out = src.base_backup(&["--fast"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not reach the archive") && err.contains("within 3 s"), "{err}");
    assert!(!repo.dir.path().join("backups").exists(), "no manifest may be written");
}

/// Corrupt objects and hostile manifests are refused with a clear error; nothing is written outside the destination.
#[test]
fn damaged_and_hostile_repositories() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("hostile");
    let src = Source::start("hostile", &repo.url(), "");
    load_big_table(&src.cluster, 20_000);
    let good = src.backup_json("full");
    let good_id = good["id"].as_str().expect("id").to_owned();
    src.cluster.switch_and_wait_archived(Duration::from_secs(60));

    // Hostile paths in a manifest that otherwise checks out.
    // As a format-3 manifest, which lists its files itself (a format-4 one has them in file maps, whose entries
    // go through the same checks when read).
    let loaded = crate::support::raw::Raw::open(&repo.url(), &Default::default()).manifest(&good_id);
    let mut manifest = serde_json::to_value(&loaded).expect("json");
    manifest["format"] = 3.into();
    manifest.as_object_mut().expect("object").remove("file_maps");
    for (n, bad) in
        ["../escaped", "/tmp/escaped-absolute", "base/../../escaped", "pg_tblspc/424242/escaped"].iter().enumerate()
    {
        let mut m = manifest.clone();
        m["files"][0]["path"] = serde_json::Value::from(*bad);
        let id = format!("2099010{}-000000F", n + 1);
        m["id"] = serde_json::Value::from(id.clone());
        let body = serde_json::to_vec(&m).expect("json");
        let (encoded, _) = backupctl::codec::encode(&body[..], 1, body.len() as u64, 1).expect("encode");
        let dir = repo.dir.path().join("backups").join(&id);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("manifest"), encoded).expect("write");
        crate::support::cluster::chown_postgres(repo.dir.path());
        let dest = src.dir.sub(&format!("hostile-{n}"));
        std::fs::remove_dir(&dest).expect("rmdir");
        let out = src.restore(&dest, &["--backup-id", &id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains("invalid") && err.contains(&format!("{bad:?}")), "{bad}: {err}");
        assert!(!dest.exists(), "{bad}: nothing may be written");
        if n == 0 {
            // Without --backup-id, the bad (newest) manifest is skipped with a warning, not fatal.
            let out = src.restore(&dest, &["--json", "--archive-mode", "off"]);
            assert_ok("restore with a bad manifest present", &out);
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            assert_eq!(report["backup"].as_str(), Some(good_id.as_str()));
            assert!(String::from_utf8_lossy(&out.stderr).contains("skipping a backup"), "a warning names the bad one");
            std::fs::remove_dir_all(&dest).expect("cleanup");
        }
        std::fs::remove_dir_all(&dir).expect("remove hostile manifest");
    }
    assert!(!Path::new("/tmp/escaped-absolute").exists());

    // A damaged object: the restore stops and names the file it belongs to.
    let victim = repo.objects().into_iter().next().expect("an object");
    let mut bytes = std::fs::read(&victim).expect("read object");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&victim, bytes).expect("damage");
    let dest = src.dir.sub("damaged");
    std::fs::remove_dir(&dest).expect("rmdir");
    let out = src.restore(&dest, &["--backup-id", &good_id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("corrupt") && err.contains("part of") && err.contains(&dest.display().to_string()), "{err}");
    assert!(!dest.join("global/pg_control").exists(), "a failed restore must not be startable");
}

/// A non-empty destination needs --delta; --delta rewrites only what differs and removes what the backup lacks;
/// a destination with a running server is refused.
#[test]
fn delta_restore() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("delta");
    let src = Source::start("delta", &repo.url(), "");
    load_big_table(&src.cluster, 50_000);
    src.backup_json("full");
    src.cluster.switch_and_wait_archived(Duration::from_secs(60));
    let expected = src.cluster.sql("select count(*) || ':' || sum(hashtext(pad)) from big");

    let dest = src.dir.sub("copy");
    let out = src.restore(&dest, &["--archive-mode", "off"]);
    assert_ok("first restore", &out);
    let out = src.restore(&dest, &["--archive-mode", "off"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not empty") && err.contains("--delta"), "{err}");

    // --delta over a directory that is not an old copy of this cluster (a mistyped parent of data directories):
    // refused, nothing in it removed.
    let parent = src.dir.sub("several");
    std::fs::create_dir_all(parent.join("other-cluster/base")).expect("mkdir");
    std::fs::write(parent.join("other-cluster/PG_VERSION"), b"15\n").expect("write");
    crate::support::cluster::chown_postgres(&parent);
    let out = src.restore(&parent, &["--delta", "--archive-mode", "off"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a PostgreSQL data directory"), "{err}");
    assert!(parent.join("other-cluster/PG_VERSION").exists(), "a refused delta restore removed files");

    // Damage the copy: a relation file rewritten, one removed, a stray file and stale WAL added.
    let relpath = src.cluster.sql("select pg_relation_filepath('big')");
    std::fs::write(dest.join(&relpath), b"garbage").expect("damage relation");
    let pg_version = dest.join("PG_VERSION");
    std::fs::remove_file(&pg_version).expect("remove");
    std::fs::write(dest.join("stray-file"), b"x").expect("stray");
    std::fs::write(dest.join("pg_wal/000000010000000000000099"), b"stale").expect("stale wal");
    crate::support::cluster::chown_postgres(&dest);

    let out = src.restore(&dest, &["--delta", "--archive-mode", "off", "--json"]);
    assert_ok("delta restore", &out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let written = report["files_written"].as_u64().unwrap_or(0);
    let unchanged = report["files_unchanged"].as_u64().unwrap_or(0);
    assert!((2..=10).contains(&written), "delta rewrote {written} files: {report}");
    assert!(unchanged > 500, "{report}");
    assert!(report["removed"].as_u64().unwrap_or(0) >= 2, "{report}");
    assert!(!dest.join("stray-file").exists() && !dest.join("pg_wal/000000010000000000000099").exists());

    let mut copy = crate::support::cluster::Cluster::at(&src.cluster.bin, &dest, &src.cluster.socket);
    copy.start();
    wait_for("recovery to finish", Duration::from_secs(120), || {
        copy.try_sql("select pg_is_in_recovery()").stdout.starts_with(b"f").then_some(())
    });
    assert_eq!(copy.sql("select count(*) || ':' || sum(hashtext(pad)) from big"), expected);

    // Running server: refused even with --delta.
    let out = src.restore(&dest, &["--delta"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is running"), "{err}");
}
