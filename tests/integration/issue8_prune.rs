//! Issue 8, retention: `backupctl prune`, `keep` and `unkeep` on real clusters, on file:// and S3 repositories.
//!
//! The calendar rules (GFS) are unit-tested with an injected clock in `retention::plan`; here the backups are
//! real, so the tests use the rules that do not need days to pass: keep-last, keep marks and `pitr-days=0` (the
//! window ends now, so every kept backup but the newest keeps only its own WAL).

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::pitr::{FileRepo, Source, s3_repo};
use crate::support::cluster::{Cluster, as_postgres, assert_ok, bin, require_pg, wait_for};

fn backupctl(src: &Source, args: &[&str]) -> Output {
    as_postgres(&bin("backupctl")).arg("--config").arg(&src.config).args(args).output().expect("backupctl")
}

/// `out`'s stdout as JSON, after checking that the command succeeded.
pub(crate) fn json_of(what: &str, out: &Output) -> Value {
    assert_ok(what, out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().expect("array").iter().map(|b| b["id"].as_str().expect("id").to_owned()).collect()
}

fn status_ids(src: &Source) -> Vec<String> {
    let v: Value = serde_json::from_slice(&src.status_json_output().stdout).expect("status JSON");
    ids(&v["backups"])
}

/// Names of the archived WAL files (segments, .partial, .backup, .history) in the repository.
fn wal_names(src: &Source) -> Vec<String> {
    src.list("wal/").into_iter().filter_map(|m| m.key.as_str().rsplit('/').next().map(str::to_owned)).collect()
}

/// Restore `id` to its consistent point (`--to-lsn` its stop LSN) and return the copy, recovered and promoted.
/// The WAL after the stop point was pruned: pitr-restore turns off replay's read-ahead (PostgreSQL 15+), which
/// would ask for the pruned segment and stop at the hole.
fn restore_to_stop(src: &Source, name: &str, id: &str, stop_lsn: &str) -> Cluster {
    let copy = src.restore_and_start(name, &["--backup-id", id, "--to-lsn", stop_lsn, "--archive-mode", "off"]);
    let auto = std::fs::read_to_string(copy.data.join("postgresql.auto.conf")).expect("postgresql.auto.conf");
    assert!(auto.contains("recovery_prefetch = 'off'"), "{auto}");
    copy
}

fn rows(c: &Cluster) -> String {
    c.sql("select count(*) || ':' || coalesce(max(batch), 0) from batches")
}

/// Four backups with one batch of rows before each; `keep` the second; prune with keep-last=1 and pitr-days=0:
/// the dry run lists exactly what the real run then deletes (backups and WAL ranges); the WAL between the kept
/// old backup's stop and the newest backup's start is gone, and both survivors restore exactly (the old one to its
/// consistent point, the newest to the end of the archive); a second prune deletes nothing; `unkeep` hands the old
/// backup back to the policy.
fn prune_scenario(url: &str, extra: &str, label: &str) {
    // No grace: gc reclaims the deleted backups' objects at once, so the restores below prove it kept the rest.
    let src = Source::start(label, url, &format!("{extra}\n[retention]\ngc_grace = \"0s\"\n"));
    let c = &src.cluster;
    c.sql("create table batches (batch int, id int, pad text)");
    let mut backups: Vec<Value> = Vec::new();
    for batch in 1..=4 {
        c.sql(&format!("insert into batches select {batch}, g, repeat('x', 200) from generate_series(1, 1000) g"));
        // WAL between backups, so that there is WAL to delete between them.
        for _ in 0..2 {
            c.sql("select pg_switch_wal()");
            c.sql("insert into batches select 0, 0, 'switch'");
        }
        backups.push(src.backup_json("full"));
    }
    c.sql("insert into batches select 5, g, 'after' from generate_series(1, 10) g");
    c.switch_and_wait_archived(Duration::from_secs(120));
    let id = |i: usize| backups[i]["id"].as_str().expect("id").to_owned();

    // keep: an unknown id is named; --until in the past is a usage error; the second backup is kept forever.
    let out = backupctl(&src, &["keep", "--backup-id", "20010101-000000F", "--forever"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no backup 20010101-000000F in "), "{err}");
    let out = backupctl(&src, &["keep", "--backup-id", &id(1), "--until", "2001-01-01"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--until \"2001-01-01\""));
    let kept = json_of("keep", &backupctl(&src, &["keep", "--backup-id", &id(1), "--forever", "--json-output"]));
    assert_eq!(kept["kept"], true);
    // A bad policy is a usage error naming the item.
    let out = backupctl(&src, &["prune", "--dry-run", "--policy", "keep-last=1,weekly=2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown key \"weekly\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let policy = "keep-last=1,pitr-days=0";
    let wal_before = wal_names(&src);
    let dry =
        json_of("prune --dry-run", &backupctl(&src, &["prune", "--policy", policy, "--dry-run", "--json-output"]));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(ids(&dry["deleted_backups"]), [id(0), id(2)], "{dry:#}");
    assert_eq!(ids(&dry["kept_backups"]), [id(1), id(3)], "{dry:#}");
    assert_eq!(dry["kept_backups"][0]["reasons"], serde_json::json!(["kept forever"]));
    assert_eq!(dry["kept_backups"][0]["reach"], "stop-only");
    assert_eq!(dry["kept_backups"][1]["reasons"], serde_json::json!(["newest", "keep-last", "pitr-days 0"]));
    assert_eq!(dry["kept_backups"][1]["reach"], "onward");
    assert!(dry["deleted_wal"]["files"].as_u64().unwrap_or(0) >= 4, "{dry:#}");
    assert_eq!(wal_names(&src), wal_before, "a dry run deletes nothing");
    assert_eq!(status_ids(&src).len(), 4, "a dry run deletes nothing");
    let text = backupctl(&src, &["prune", "--policy", policy, "--dry-run"]);
    assert_ok("prune --dry-run (text)", &text);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("would delete {}", id(0))) && text.contains("dry run: nothing was deleted"),
        "{text}"
    );

    let real = json_of("prune", &backupctl(&src, &["prune", "--policy", policy, "--json-output"]));
    assert_eq!(real["dry_run"], false);
    assert_eq!(real["deleted_backups"], dry["deleted_backups"], "the real run deletes exactly the dry run's list");
    assert_eq!(real["deleted_wal"], dry["deleted_wal"], "the real run deletes exactly the dry run's WAL");
    assert_eq!(real["kept_backups"], dry["kept_backups"]);
    assert!(
        real["gc"]["objects_removed"].as_u64().unwrap_or(0) > 0,
        "gc reclaimed the deleted backups' data: {real:#}"
    );
    assert_eq!(status_ids(&src), [id(1), id(3)]);
    let wal_after = wal_names(&src);
    assert_eq!(
        wal_before.len() - wal_after.len(),
        usize::try_from(dry["deleted_wal"]["files"].as_u64().expect("files")).expect("usize")
    );
    // The kept old backup keeps its own WAL (start to stop, its .backup file); the history of WAL between it and
    // the newest backup is gone.
    for seg in [&backups[1]["start_wal"], &backups[1]["stop_wal"], &backups[3]["start_wal"]] {
        let seg = seg.as_str().expect("segment");
        assert!(wal_after.iter().any(|n| n == seg), "{seg} must be kept: {wal_after:?}");
    }
    assert!(
        wal_after
            .iter()
            .any(|n| n.starts_with(backups[1]["start_wal"].as_str().expect("seg")) && n.ends_with(".backup"))
    );
    for seg in [&backups[0]["start_wal"], &backups[2]["start_wal"]] {
        let seg = seg.as_str().expect("segment");
        assert!(!wal_after.iter().any(|n| n == seg), "{seg} must be deleted: {wal_after:?}");
    }

    // Each survivor restores: the old one to its consistent point, the newest to the end of the archive.
    let copy = restore_to_stop(&src, "old-kept", &id(1), backups[1]["stop_lsn"].as_str().expect("lsn"));
    assert_eq!(rows(&copy), "2004:2", "backup 2 holds batches 1 and 2 and the four switch rows");
    drop(copy);
    let copy = src.restore_and_start("newest", &["--backup-id", &id(3), "--archive-mode", "off"]);
    assert_eq!(rows(&copy), rows(c));
    drop(copy);

    // Idempotent: a second run deletes nothing.
    let again = json_of("prune again", &backupctl(&src, &["prune", "--policy", policy, "--json-output"]));
    assert_eq!(again["deleted_backups"], serde_json::json!([]), "{again:#}");
    assert_eq!(again["deleted_wal"]["files"], 0, "{again:#}");

    // unkeep: the policy decides again and deletes it; the newest is never deleted.
    let out = json_of("unkeep", &backupctl(&src, &["unkeep", "--backup-id", &id(1), "--json-output"]));
    assert_eq!(out["was"], "kept forever");
    let last = json_of("prune after unkeep", &backupctl(&src, &["prune", "--policy", "full-days=0", "--json-output"]));
    assert_eq!(ids(&last["deleted_backups"]), [id(1)], "{last:#}");
    assert_eq!(status_ids(&src), [id(3)]);
    assert!(last["notes"].to_string().contains("keeps no backup"), "{last:#}");
}

#[test]
fn issue_8_prune_keep_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-prune");
    prune_scenario(&repo.url(), "", "i8-prune-file");
}

#[test]
fn issue_8_prune_keep_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i8-prune") else { return };
    prune_scenario(&url, &extra, "i8-prune-s3");
}

fn pgbench(src: &Source, args: &[&str]) -> Command {
    let c = &src.cluster;
    let mut cmd = Command::new(c.bin.join("pgbench"));
    cmd.args(["-U", "postgres", "-h"]).arg(&c.socket).arg("-p").arg(c.port.to_string()).args(args).arg("postgres");
    cmd
}

fn wait_child(what: &str, child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    wait_for(what, timeout, || child.try_wait().expect("try_wait"))
}

fn state(c: &Cluster) -> String {
    c.sql("select (select count(*) from pgbench_history) || ':' || (select sum(abalance) from pgbench_accounts)")
}

/// Prune (keep-last=1, pitr-days=0, the older backup marked kept) runs again and again while pgbench writes (WAL
/// archived during the prune) and a base-backup runs; afterwards the older backup restores to its consistent
/// point and the one taken during the prune to the end of the archive, exactly the source's state.
fn concurrent_scenario(url: &str, extra: &str, label: &str) {
    let src = Source::start(label, url, extra);
    let c = &src.cluster;
    let init = pgbench(&src, &["-i", "-s", "2", "-q"]).output().expect("pgbench -i");
    assert_ok("pgbench -i", &init);
    let first = src.backup_json("full");
    let before = src.backup_json("full");
    let before_id = before["id"].as_str().expect("id");
    let at_before = state(c);
    assert_ok("keep", &backupctl(&src, &["keep", "--backup-id", before_id, "--forever"]));
    // Whole segments between the kept backup's stop and the concurrent backup's start: the final prune must leave
    // a hole there (without them, the concurrent backup may start in the segment right after the kept one's stop,
    // and there is no WAL between them to delete).
    for _ in 0..2 {
        c.sql("insert into pgbench_history (tid, bid, aid, delta, mtime) values (1, 1, 1, 0, now())");
        c.sql("select pg_switch_wal()");
    }
    let mut load = pgbench(&src, &["-T", "20", "-c", "2", "-n"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench");
    let mut backup = as_postgres(&bin("base-backup"))
        .arg("--config")
        .arg(&src.config)
        .args(["--fast", "--json", "--type", "full"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("base-backup");
    let mut runs = 0;
    let mut wal_deleted = 0;
    let mut deleted: Vec<String> = Vec::new();
    // A few prunes while the backup runs (not more: a base-backup waits for a running gc, so an endless loop of
    // prunes could keep it waiting).
    while runs < 4 && backup.try_wait().expect("try_wait").is_none() {
        let r = json_of(
            "prune during the load",
            &backupctl(&src, &["prune", "--policy", "keep-last=1,pitr-days=0", "--json-output"]),
        );
        deleted.extend(ids(&r["deleted_backups"]));
        wal_deleted += r["deleted_wal"]["files"].as_u64().unwrap_or(0);
        runs += 1;
    }
    assert!(runs >= 1, "the base-backup finished before prune ran");
    wait_child("base-backup to finish", &mut backup, Duration::from_secs(300));
    assert_eq!(deleted, [first["id"].as_str().expect("id")], "only the first backup goes");
    let during = backup.wait_with_output().expect("base-backup");
    let during = json_of("base-backup during prune", &during);
    let status = wait_child("pgbench to finish", &mut load, Duration::from_secs(120));
    assert!(status.success(), "pgbench failed");
    c.switch_and_wait_archived(Duration::from_secs(120));
    // Once the concurrent backup is the newest, the WAL between the kept older backup and it goes.
    let r =
        json_of("prune after", &backupctl(&src, &["prune", "--policy", "keep-last=1,pitr-days=0", "--json-output"]));
    wal_deleted += r["deleted_wal"]["files"].as_u64().unwrap_or(0);
    assert!(wal_deleted > 0, "{r:#}");
    let during_id = during["id"].as_str().expect("id");
    assert_eq!(status_ids(&src), [before_id, during_id]);
    let copy = restore_to_stop(&src, "before", before_id, before["stop_lsn"].as_str().expect("lsn"));
    assert_eq!(state(&copy), at_before, "the kept older backup restores to its consistent point");
    drop(copy);
    let copy = src.restore_and_start("during", &["--backup-id", during_id, "--archive-mode", "off"]);
    assert_eq!(state(&copy), state(c), "the backup taken during prune restores to the source's state");
}

#[test]
fn issue_8_prune_concurrent_push_and_backup_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-prune-conc");
    concurrent_scenario(&repo.url(), "", "i8-prune-conc-file");
}

#[test]
fn issue_8_prune_concurrent_push_and_backup_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i8-prune-conc") else { return };
    concurrent_scenario(&url, &extra, "i8-prune-conc-s3");
}
