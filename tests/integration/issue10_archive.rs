//! Issue 10, "Archive throughput": wal-push's background pusher (`wal-push --push-worker`) on real clusters,
//! file:// and S3: a backlog drains in PostgreSQL's order with every file byte-identical in the repository; a
//! second drain of the same files is idempotent; `kill -9` of the pusher mid-backlog leaves no record of a file
//! that is not durable, and the drain completes; a failing file is reported by PostgreSQL's call for that file
//! only, and nothing far beyond it is pushed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::pitr::backends;
use crate::support::cluster::{Cluster, PgDir, as_postgres, bin, chown_postgres, require_pg, wait_for, write_config};
use crate::support::wal::{fetch, status};

const WAIT: Duration = Duration::from_secs(120);

/// A cluster that keeps its WAL `.ready` (archiving on, no command yet), with `n` finished segments in the backlog.
/// `rows` per segment: 1000 makes nearly empty segments (fast pushes), 150000 about 16 MiB of md5 text each.
fn cluster_with_backlog(dir: &PgDir, n: usize, rows: usize) -> (Cluster, Vec<String>) {
    let mut c = Cluster::init(dir, "data", "archive_mode = on\narchive_command = ''\n");
    c.start();
    c.sql("create table t (id int, v text)");
    for _ in 0..n {
        c.sql(&format!("insert into t select g, md5(random()::text) from generate_series(1, {rows}) g"));
        c.sql("select pg_switch_wal()");
    }
    let backlog = ready(&c);
    assert!(backlog.len() >= n, "{n} .ready segments expected: {backlog:?}");
    (c, backlog)
}

/// The names PostgreSQL still has to archive, sorted.
fn ready(c: &Cluster) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(c.data.join("pg_wal/archive_status"))
        .expect("archive_status")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".ready")).map(str::to_owned))
        .collect();
    out.sort();
    out
}

fn stat(c: &Cluster, column: &str) -> String {
    c.sql(&format!("select coalesce({column}::text, '') from pg_stat_archiver"))
}

/// Point the cluster's archive_command at wal-push with `config`.
fn archive_with(c: &Cluster, config: &Path) {
    let cmd = format!("{} --config {} %p", bin("wal-push").display(), config.display());
    c.sql(&format!("alter system set archive_command = '{cmd}'"));
    c.sql("select pg_reload_conf()");
}

/// Wait until nothing is `.ready` any more.
fn wait_drained(c: &Cluster) {
    wait_for("the backlog to drain", WAIT, || ready(c).is_empty().then_some(()));
}

/// Fetch `name` back with wal-fetch and compare it with the cluster's own file.
fn assert_archived_identical(c: &Cluster, config: &Path, scratch: &Path, name: &str) {
    let dest = scratch.join("fetched");
    let _ = std::fs::remove_file(&dest);
    let (code, err) = status(&fetch(config, name, &dest));
    assert_eq!(code, Some(0), "{name} in the repository: {err}");
    let got = std::fs::read(&dest).expect("fetched");
    let want = std::fs::read(c.data.join("pg_wal").join(name)).expect("source segment");
    assert!(got == want, "{name} differs from pg_wal's copy");
}

/// Is `name` in the repository at all (wal-fetch exit 0) or definitively absent (1)?
fn in_repository(config: &Path, scratch: &Path, name: &str) -> bool {
    let (code, err) = status(&fetch(config, name, &scratch.join("probe")));
    assert!(matches!(code, Some(0 | 1)), "{name}: {err}");
    code == Some(0)
}

/// Setup shared by the tests: a scratch directory owned by postgres, a spool, a log file, the configuration.
struct Setup {
    dir: PgDir,
    config: PathBuf,
    log: PathBuf,
}

impl Setup {
    fn new(label: &str, url: &str, extra: &str, archive: &str) -> Self {
        let dir = PgDir::new(label);
        let spool = dir.sub("spool");
        let logs = dir.sub("logs");
        let log = logs.join("wal-push.log");
        let config = write_config(
            dir.path(),
            url,
            &spool,
            &format!("{extra}\n[archive]\n{archive}\n[log]\nlevel = \"debug\"\nfile = \"{}\"\n", log.display()),
        );
        Self { dir, config, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn records(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.path().join("spool/push"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".ok")).map(str::to_owned))
            .collect();
        out.sort();
        out
    }
}

/// The segment names the background pusher started, in the order it started them.
fn worker_starts(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("push started"))
        .filter_map(|l| l.split("segment=").nth(1))
        .map(|s| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.').collect())
        .collect()
}

#[test]
fn issue_10_background_pusher_drains_in_order_and_idempotently() {
    if require_pg().is_none() {
        return;
    }
    let (_keep, repos) = backends("i10-order");
    for (label, url, extra) in repos {
        let setup = Setup::new(&format!("i10-order-{label}"), &url, &extra, "push_concurrency = 2\npush_ahead = 4");
        let (mut c, backlog) = cluster_with_backlog(&setup.dir, 14, 1000);
        archive_with(&c, &setup.config);
        wait_drained(&c);
        assert_eq!(stat(&c, "failed_count"), "0", "{label}: {}", c.log_text());
        let scratch = setup.dir.sub("scratch");
        for name in &backlog {
            assert_archived_identical(&c, &setup.config, &scratch, name);
        }
        // The background pusher did the work, starting files in PostgreSQL's order.
        let log = setup.log_text();
        let starts = worker_starts(&log);
        assert!(starts.len() >= backlog.len() / 2, "{label}: the background pusher pushed most files: {starts:?}");
        let mut sorted = starts.clone();
        sorted.sort();
        assert_eq!(starts, sorted, "{label}: started in name order");

        // The same files again (PostgreSQL re-archives after a crash): every call succeeds, nothing is rewritten.
        c.stop();
        let status_dir = c.data.join("pg_wal/archive_status");
        for name in &backlog {
            let done = status_dir.join(format!("{name}.done"));
            if done.exists() {
                std::fs::rename(&done, status_dir.join(format!("{name}.ready"))).expect("back to .ready");
            }
        }
        std::fs::write(&setup.log, "").expect("truncate log");
        c.start();
        wait_drained(&c);
        assert_eq!(stat(&c, "failed_count"), "0", "{label}: {}", c.log_text());
        let log = setup.log_text();
        let stored: Vec<&str> = log.split("stored=").skip(1).filter(|rest| !rest.starts_with("0 ")).collect();
        assert!(stored.is_empty(), "{label}: nothing is stored twice: {log}");
        for name in &backlog {
            assert_archived_identical(&c, &setup.config, &scratch, name);
        }
        c.stop();
    }
}

/// The pid of the running background pusher on this spool, from its lock file and command line.
fn worker_pid(spool: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(spool.join("push.lock")).ok()?;
    let pid: u32 = text.split_whitespace().find_map(|w| w.strip_prefix("pid="))?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline).contains("--push-worker").then_some(pid)
}

#[test]
fn issue_10_kill_9_of_the_background_pusher_leaves_no_false_record() {
    if require_pg().is_none() {
        return;
    }
    let (_keep, repos) = backends("i10-kill");
    for (label, url, extra) in repos {
        let setup = Setup::new(&format!("i10-kill-{label}"), &url, &extra, "push_concurrency = 1\npush_ahead = 2");
        let (mut c, backlog) = cluster_with_backlog(&setup.dir, 16, 150_000);
        let spool = setup.dir.path().join("spool");
        archive_with(&c, &setup.config);
        // Polled tightly (no psql in the loop): the pusher lives about a second.
        let deadline = Instant::now() + WAIT;
        let pid = loop {
            if let Some(pid) = worker_pid(&spool).filter(|_| !setup.records().is_empty()) {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: no background pusher with a record seen\n{}",
                setup.log_text()
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        let killed = Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
        assert!(killed.success());
        // Right after the kill: every record vouches for a complete object equal to the cluster's file.
        let scratch = setup.dir.sub("scratch");
        let records = setup.records();
        for name in &records {
            assert_archived_identical(&c, &setup.config, &scratch, name);
        }
        // The archiver's next calls push their files themselves or start a new pusher; the drain completes.
        wait_drained(&c);
        for name in &backlog {
            assert_archived_identical(&c, &setup.config, &scratch, name);
        }
        if let Some(root) = url.strip_prefix("file://") {
            let mut stack = vec![PathBuf::from(root)];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).expect("repo dir").flatten() {
                    if e.path().is_dir() {
                        stack.push(e.path());
                    } else {
                        let n = e.file_name().to_string_lossy().into_owned();
                        assert!(!n.starts_with(".tmp"), "{label}: a temp file of the killed pusher is visible: {n}");
                    }
                }
            }
        }
        c.stop();
    }
}

#[test]
fn issue_10_a_failure_is_reported_to_the_right_call() {
    if require_pg().is_none() {
        return;
    }
    let (_keep, repos) = backends("i10-fail");
    for (label, url, extra) in repos {
        let setup = Setup::new(&format!("i10-fail-{label}"), &url, &extra, "push_concurrency = 2\npush_ahead = 4");
        let (mut c, backlog) = cluster_with_backlog(&setup.dir, 24, 1000);
        // Plant an object with other content under the name of a segment in the middle of the backlog.
        let k = 6;
        let bad = backlog[k].clone();
        let other = setup.dir.sub("other-pg_wal");
        let mut bytes = std::fs::read(c.data.join("pg_wal").join(&bad)).expect("segment");
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(other.join(&bad), &bytes).expect("write copy");
        chown_postgres(&other);
        let no_ahead = write_config(
            &other,
            &url,
            &setup.dir.path().join("spool-other"),
            &format!("{extra}\n[archive]\npush_ahead = 0\n"),
        );
        let out = as_postgres(&bin("wal-push")).arg("--config").arg(&no_ahead).arg(other.join(&bad)).output();
        let (code, err) = status(&out.expect("wal-push"));
        assert_eq!(code, Some(0), "{label}: planting {bad}: {err}");

        archive_with(&c, &setup.config);
        let started = Instant::now();
        wait_for("the archiver to fail", WAIT, || (stat(&c, "failed_count") != "0").then_some(()));
        // PostgreSQL's call for that file failed, and only that one: everything before it is archived.
        assert_eq!(stat(&c, "last_failed_wal"), bad, "{label}");
        wait_for("the files before it", WAIT, || (stat(&c, "last_archived_wal") == backlog[k - 1]).then_some(()));
        let server_log = c.log_text();
        let failures: Vec<&str> = server_log.lines().filter(|l| l.contains("different checksum")).collect();
        assert!(!failures.is_empty(), "{label}: the error reaches the server log: {server_log}");
        assert!(failures.iter().all(|l| l.contains(&bad)), "{label}: failures name {bad} only: {failures:?}");
        for l in server_log.lines().filter(|l| l.contains("The failed archive command was")) {
            assert!(l.contains(&bad), "{label}: only {bad}'s call fails: {l}");
        }
        // Nothing new is started after the failure: nothing far beyond the failing file was pushed.
        let scratch = setup.dir.sub("scratch");
        for name in &backlog[k + 9..] {
            assert!(!in_repository(&setup.config, &scratch, name), "{label}: {name} pushed after the failure");
        }
        assert!(started.elapsed() < WAIT);
        c.stop();
    }
}
