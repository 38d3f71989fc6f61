//! Issue 8, "Check": `backupctl check` (alias `test`) on real clusters, against file:// and S3 repositories.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::pitr::{FileRepo, Source, backends};
use crate::support::cluster::output_text as text;
use crate::support::cluster::{as_postgres, bin, require_pg, wait_for, write_config};

/// The checks, in the order they are reported.
const NAMES: [&str; 11] = [
    "configuration",
    "postgresql",
    "archive_mode",
    "wal_level",
    "archive_command",
    "repository",
    "system_identifier",
    "wal_switch",
    "spool_space",
    "backup_age",
    "wal_age",
];

/// `backupctl [--config CFG] <args>` as postgres.
fn backupctl(config: &Path, args: &[&str]) -> Output {
    as_postgres(&bin("backupctl")).arg("--config").arg(config).args(args).output().expect("backupctl")
}

/// `backupctl check --json-output`: exit code, the JSON, and stderr.
fn check_json(config: &Path) -> (Option<i32>, serde_json::Value, String) {
    let out = backupctl(config, &["check", "--json-output"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json-output printed no JSON ({e}): {out:?}"));
    (out.status.code(), json, err)
}

/// The status and detail of the check `name` in a JSON report.
fn entry(report: &serde_json::Value, name: &str) -> (String, String) {
    let checks = report["checks"].as_array().unwrap_or_else(|| panic!("no checks: {report}"));
    let c = checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name}: {report}"));
    (c["status"].as_str().unwrap_or("").to_owned(), c["detail"].as_str().unwrap_or("").to_owned())
}

/// A healthy setup passes every check, in text and JSON, and `backupctl test` is the same command; the forced
/// WAL switch reaches the repository; the JSON has `ok` and one {name, status, detail} per check, in order.
#[test]
fn issue_8_check_passes_on_a_healthy_setup() {
    if require_pg().is_none() {
        return;
    }
    let (_keep, repos) = backends("i8-check-ok");
    for (backend, url, extra) in repos {
        let src = Source::start(&format!("i8-check-ok-{backend}"), &url, &extra);
        src.cluster.sql("create table t as select generate_series(1, 1000) id");
        src.backup_json("full");
        for command in ["check", "test"] {
            let (code, out, err) = text(&backupctl(&src.config, &[command]));
            assert_eq!(code, Some(0), "{backend} {command}: {out}\n{err}");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), NAMES.len() + 1, "{backend} {command}: one line per check and a summary: {out}");
            for (line, name) in lines.iter().zip(NAMES) {
                assert!(line.starts_with(&format!("{name}: ok (")), "{backend} {command}: {line}");
            }
            assert_eq!(lines[NAMES.len()], "all 11 checks passed", "{out}");
            assert!(out.contains("storage round trip"), "{out}");
            assert!(err.trim().is_empty(), "{backend} {command} wrote to stderr: {err}");
        }
        let (code, json, err) = check_json(&src.config);
        assert_eq!(code, Some(0), "{backend}: {json}\n{err}");
        assert_eq!(json["ok"], true, "{json}");
        assert_eq!(json["configuration"], src.config.to_str().expect("utf-8"), "{json}");
        assert_eq!(json["repository"], url.as_str(), "{json}");
        let checks = json["checks"].as_array().expect("checks");
        let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, NAMES, "{json}");
        for c in checks {
            assert_eq!(c.as_object().map(|o| o.len()), Some(3), "name, status, detail: {c}");
            assert_eq!(c["status"], "ok", "{backend}: {c}");
            assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty() && !d.contains('\n')), "{c}");
        }
        let (_, switch) = entry(&json, "wal_switch");
        assert!(switch.contains("reached"), "{switch}");
        let (_, ident) = entry(&json, "system_identifier");
        let sysid = src.cluster.sql("select system_identifier from pg_control_system()");
        assert!(ident.contains(&sysid), "{ident} names {sysid}");
    }
}

/// An archive_command that calls wal-push with another configuration fails, naming both files (and their
/// repositories); the switched segment then does not reach this repository, and stderr says what failed.
#[test]
fn issue_8_check_archive_command_with_another_config() {
    if require_pg().is_none() {
        return;
    }
    let (_keep, repos) = backends("i8-check-cfg");
    for (backend, url, extra) in repos {
        let extra = format!("{extra}\n[check]\nwal_switch_timeout = \"3s\"\n");
        let src = Source::start(&format!("i8-check-cfg-{backend}"), &url, &extra);
        src.cluster.switch_and_wait_archived(Duration::from_secs(60));
        let other_dir = src.dir.sub("other");
        let other_repo = src.dir.sub("other-repo");
        let other_url = format!("file://{}", other_repo.display());
        let other = write_config(&other_dir, &other_url, &src.dir.sub("other-spool"), "");
        let command = format!("{} --config {} %p", bin("wal-push").display(), other.display());
        src.cluster.sql(&format!("alter system set archive_command = '{command}'"));
        src.cluster.sql("select pg_reload_conf()");
        wait_for("the new archive_command", Duration::from_secs(30), || {
            (src.cluster.sql("show archive_command") == command).then_some(())
        });
        let (code, json, err) = check_json(&src.config);
        assert_eq!(code, Some(1), "{backend}: {json}");
        assert_eq!(json["ok"], false, "{json}");
        let (status, detail) = entry(&json, "archive_command");
        assert_eq!(status, "failed", "{json}");
        let want = format!("archive_command uses {}, this check uses {}", other.display(), src.config.display());
        assert!(detail.starts_with(&want), "{detail}\nshould start with {want}");
        assert!(detail.contains(&other_url) && detail.contains(&url), "names both repositories: {detail}");
        let (status, detail) = entry(&json, "wal_switch");
        assert_eq!(status, "failed", "the segment went to the other repository: {detail}");
        assert!(detail.contains("did not reach") && detail.contains("wal_switch_timeout"), "{detail}");
        assert!(err.contains("checks failed") && err.contains("archive_command uses"), "{err}");
        assert_eq!(err.lines().count(), 2, "one error line and one hint: {err}");
        // Text: the failed line says FAILED and the reason; the others still ran.
        let (code, out, _) = text(&backupctl(&src.config, &["check"]));
        assert_eq!(code, Some(1));
        assert!(out.lines().any(|l| l.starts_with("archive_command: FAILED: archive_command uses")), "{out}");
        assert!(out.lines().any(|l| l.starts_with("repository: ok (")), "{out}");
        assert!(out.lines().any(|l| l.starts_with("backup_age: ok (")), "{out}");
    }
}

/// archive_mode = off fails (and the WAL switch is skipped, not waited for); wal_level is still checked.
#[test]
fn issue_8_check_archive_mode_off() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-check-off");
    let mut src = Source::start("i8-check-off", &repo.url(), "");
    src.cluster.switch_and_wait_archived(Duration::from_secs(60));
    src.cluster.sql("alter system set archive_mode = off");
    src.cluster.stop();
    src.cluster.start();
    let started = Instant::now();
    let (code, json, _) = check_json(&src.config);
    assert_eq!(code, Some(1), "{json}");
    let (status, detail) = entry(&json, "archive_mode");
    assert_eq!(status, "failed", "{json}");
    assert!(detail.contains("archive_mode = off"), "{detail}");
    assert_eq!(entry(&json, "wal_level").0, "ok", "{json}");
    let (status, detail) = entry(&json, "wal_switch");
    assert_eq!(status, "skipped", "{json}");
    assert!(detail.contains("archive_mode is off"), "{detail}");
    assert!(started.elapsed() < Duration::from_secs(30), "no waiting for a switch that cannot arrive");
}

/// A repository holding another cluster's WAL fails on the system identifier, naming both; the WAL switch is
/// skipped (wal-push would refuse this cluster's segment).
#[test]
fn issue_8_check_repository_of_another_cluster() {
    if require_pg().is_none() {
        return;
    }
    let (_keep, repos) = backends("i8-check-sysid");
    for (backend, url, extra) in repos {
        let a = Source::start(&format!("i8-check-sysid-a-{backend}"), &url, &extra);
        a.cluster.switch_and_wait_archived(Duration::from_secs(60));
        let b = Source::start(&format!("i8-check-sysid-b-{backend}"), &FileRepo::new("i8-b").url(), "");
        // B's server, A's repository.
        let cfg_dir = b.dir.sub("mixed");
        let mixed = write_config(
            &cfg_dir,
            &url,
            &cfg_dir.join("spool"),
            &format!(
                "{extra}\n[postgres]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\n",
                b.cluster.socket.display(),
                b.cluster.port
            ),
        );
        crate::support::cluster::chown_postgres(&cfg_dir);
        let (code, json, _) = check_json(&mixed);
        assert_eq!(code, Some(1), "{backend}: {json}");
        let (status, detail) = entry(&json, "system_identifier");
        assert_eq!(status, "failed", "{json}");
        let sys_a = a.cluster.sql("select system_identifier from pg_control_system()");
        let sys_b = b.cluster.sql("select system_identifier from pg_control_system()");
        assert!(detail.contains(&sys_a) && detail.contains(&sys_b), "{detail} names {sys_a} and {sys_b}");
        assert_eq!(entry(&json, "wal_switch").0, "skipped", "{json}");
        assert_eq!(entry(&json, "repository").0, "ok", "{json}");
    }
}

/// `[retention] max_backup_age`: no backup yet fails "no backup yet"; a backup older than the limit fails with
/// its age; without a limit the age is shown and passes.
#[test]
fn issue_8_check_max_backup_age() {
    if require_pg().is_none() {
        return;
    }
    let (_keep, repos) = backends("i8-check-age");
    for (backend, url, extra) in repos {
        let extra = format!("{extra}\n[retention]\nmax_backup_age = \"2s\"\n");
        let src = Source::start(&format!("i8-check-age-{backend}"), &url, &extra);
        let (code, json, _) = check_json(&src.config);
        assert_eq!(code, Some(1), "{backend}: {json}");
        let (status, detail) = entry(&json, "backup_age");
        assert_eq!((status.as_str(), detail.contains("no backup yet")), ("failed", true), "{json}");
        let summary = src.backup_json("full");
        let id = summary["id"].as_str().expect("id").to_owned();
        let detail = wait_for("the backup to be older than 2s", Duration::from_secs(60), || {
            let (_, json, _) = check_json(&src.config);
            let (status, detail) = entry(&json, "backup_age");
            (status == "failed").then_some(detail)
        });
        assert!(detail.contains(&id) && detail.contains("max_backup_age"), "{detail}");
        // Without the limit: passes and shows the age.
        let text = std::fs::read_to_string(&src.config).expect("config");
        std::fs::write(&src.config, text.replace("max_backup_age = \"2s\"", "")).expect("config");
        let (code, json, _) = check_json(&src.config);
        assert_eq!(code, Some(0), "{backend}: {json}");
        let (_, detail) = entry(&json, "backup_age");
        assert!(detail.contains(&id) && detail.contains("ago (no limit set)"), "{detail}");
    }
}

/// Without a [postgres] section the server checks are skipped, each saying why, and the rest pass: exit 0. A
/// configuration that does not load is exit 2.
#[test]
fn issue_8_check_without_postgres_section_skips() {
    if require_pg().is_none() {
        return;
    }
    let (_keep, repos) = backends("i8-check-nopg");
    for (backend, url, extra) in repos {
        let src = Source::start(&format!("i8-check-nopg-{backend}"), &url, &extra);
        src.cluster.switch_and_wait_archived(Duration::from_secs(60));
        let dir = src.dir.sub("nopg");
        let cfg = write_config(&dir, &url, &src.config.parent().expect("dir").join("spool"), &extra);
        let (code, out, err) = text(&backupctl(&cfg, &["check"]));
        assert_eq!(code, Some(0), "{backend}: {out}\n{err}");
        for name in ["postgresql", "archive_mode", "wal_level", "archive_command", "system_identifier", "wal_switch"] {
            let want = format!("{name}: skipped: no [postgres] section");
            assert!(out.lines().any(|l| l.starts_with(&want)), "{backend}: {want}\n{out}");
        }
        for name in ["configuration", "repository", "spool_space", "backup_age", "wal_age"] {
            assert!(out.lines().any(|l| l.starts_with(&format!("{name}: ok ("))), "{backend}: {name}\n{out}");
        }
        assert!(out.contains("6 skipped"), "{out}");
        // A configuration that does not load stops everything: exit 2, no check line.
        let bad =
            write_config(&src.dir.sub("bad"), &url, &dir.join("spool"), "[check]\nwal_switch_timeout = \"soon\"\n");
        let (code, out, err) = text(&backupctl(&bad, &["check"]));
        assert_eq!(code, Some(2), "{out}\n{err}");
        assert!(out.is_empty() && err.contains("check.wal_switch_timeout"), "{out}\n{err}");
    }
}

/// A stopped server fails fast with the reason, a hung one within the deadline; every check still runs, the
/// PostgreSQL ones skipped.
#[test]
fn issue_8_check_stopped_server_fails_fast() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i8-check-down");
    let mut src = Source::start("i8-check-down", &repo.url(), "");
    src.cluster.switch_and_wait_archived(Duration::from_secs(60));
    // A server that accepts connections but never answers (its postmaster stopped with SIGSTOP): the deadline.
    let pid = std::fs::read_to_string(src.cluster.data.join("postmaster.pid")).expect("postmaster.pid");
    let pid = pid.lines().next().expect("pid").trim().to_owned();
    let signal =
        |sig: &str| assert!(std::process::Command::new("kill").args([sig, &pid]).status().expect("kill").success());
    signal("-STOP");
    let started = Instant::now();
    let (code, json, _) = check_json(&src.config);
    let took = started.elapsed();
    signal("-CONT");
    assert_eq!(code, Some(1), "{json}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let (status, detail) = entry(&json, "postgresql");
    assert_eq!(status, "failed", "{json}");
    assert!(detail.contains("no answer from PostgreSQL at") && detail.contains("within 10 s"), "{detail}");
    assert_eq!(entry(&json, "wal_switch").0, "skipped", "{json}");
    // A stopped server: refused at once.
    src.cluster.stop();
    let started = Instant::now();
    let (code, json, err) = check_json(&src.config);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{json}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let (status, detail) = entry(&json, "postgresql");
    assert_eq!(status, "failed", "{json}");
    assert!(detail.contains("cannot connect to PostgreSQL at"), "{detail}");
    for name in ["archive_mode", "wal_level", "archive_command", "system_identifier", "wal_switch"] {
        assert_eq!(
            entry(&json, name),
            (
                "skipped".to_owned(),
                "the postgresql check failed (unreachable, or a version this build does not support)".to_owned()
            ),
            "{name}"
        );
    }
    for name in ["repository", "spool_space", "backup_age", "wal_age"] {
        assert_eq!(entry(&json, name).0, "ok", "{name}: {json}");
    }
    assert!(err.contains("1 of 11 checks failed: postgresql: cannot connect"), "{err}");
}

/// On a standby the forced WAL switch is skipped with the reason (checks of archiving run on the primary); the
/// other checks still run and pass.
#[test]
fn issue_8_check_on_a_standby_skips_the_wal_switch() {
    let Some(pg) = require_pg() else { return };
    let repo = FileRepo::new("i8-check-standby");
    let src = Source::start("i8-check-standby", &repo.url(), "");
    src.cluster.switch_and_wait_archived(Duration::from_secs(60));
    let data = src.dir.path().join("standby");
    let out = as_postgres(&pg.join("pg_basebackup"))
        .arg("-D")
        .arg(&data)
        .args(["-R", "-X", "stream", "-c", "fast", "-U", "postgres", "-h"])
        .arg(&src.cluster.socket)
        .arg("-p")
        .arg(src.cluster.port.to_string())
        .output()
        .expect("pg_basebackup");
    crate::support::cluster::assert_ok("pg_basebackup", &out);
    let mut standby = crate::support::cluster::Cluster::at(&pg, &data, &src.cluster.socket);
    standby.start();
    assert_eq!(standby.sql("select pg_is_in_recovery()"), "t");
    // The same configuration file (archive_command names it), pointed at the standby.
    let text = std::fs::read_to_string(&src.config).expect("config");
    let at_primary = format!("port = {}\n", src.cluster.port);
    assert!(text.contains(&at_primary), "{text}");
    std::fs::write(&src.config, text.replace(&at_primary, &format!("port = {}\n", standby.port))).expect("config");
    let (code, json, err) = check_json(&src.config);
    assert_eq!(code, Some(0), "{json}\n{err}");
    let (status, detail) = entry(&json, "wal_switch");
    assert_eq!(status, "skipped", "{json}");
    assert!(detail.contains("standby") && detail.contains("primary"), "{detail}");
    assert!(entry(&json, "postgresql").1.contains("a standby"), "{json}");
    assert_eq!(entry(&json, "system_identifier").0, "ok", "{json}");
}
