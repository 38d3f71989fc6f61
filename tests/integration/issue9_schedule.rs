//! Issue 9, "Scheduling": `backupctl schedule --daemon` runs real jobs against a real cluster and repository,
//! tells systemd (a NOTIFY_SOCKET the test listens on) when it is ready and stopping, and stops cleanly on SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::pitr::{FileRepo, Source, backends};
use crate::support::cluster::{as_postgres, bin, require_pg, wait_for};

/// A running daemon: the runuser process, the daemon's own pid, its log, and the systemd socket it notifies.
pub(crate) struct Daemon {
    child: Child,
    pid: i32,
    log: PathBuf,
    /// What systemd would have received (a reader thread drains the socket, as systemd does: an unread socket
    /// fills after 10 datagrams and blocks the sender).
    notes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Start `backupctl schedule --daemon` as postgres with `env` added; NOTIFY_SOCKET is a socket in `dir`.
    pub(crate) fn start(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        // Each daemon serves metrics on its own port (tests run in parallel; the default is one fixed port).
        let text = std::fs::read_to_string(config).expect("read config");
        if !text.contains("[metrics]") {
            let port = crate::support::cluster::free_port();
            std::fs::write(config, format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).expect("write");
        }
        let socket = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket);
        let notify = UnixDatagram::bind(&socket).expect("bind notify socket");
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).expect("chmod socket");
        let notes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = notes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf) {
                sink.lock().expect("lock").push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        let log = dir.join("daemon.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = as_postgres(&bin("backupctl"));
        cmd.arg("--config").arg(config).args(["schedule", "--daemon"]).env("NOTIFY_SOCKET", &socket);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(Stdio::null()).stderr(file).spawn().expect("start the daemon");
        // runuser kills its child 2 s after a SIGTERM of its own: signal the daemon itself.
        let runuser = child.id();
        let pid = wait_for("the daemon's pid", Duration::from_secs(10), || {
            let children = std::fs::read_to_string(format!("/proc/{runuser}/task/{runuser}/children")).ok()?;
            children.split_whitespace().next()?.parse::<i32>().ok()
        });
        Self { child, pid, log, notes }
    }

    /// The notifications received so far (each datagram as text).
    fn notifications(&self) -> Vec<String> {
        self.notes.lock().expect("lock").clone()
    }

    /// Poll `f` until it returns `Some`; on timeout, fail showing the daemon's log and jobs record.
    pub(crate) fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}; daemon log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM the daemon and wait for it to exit within `limit`; its exit code.
    pub(crate) fn terminate(mut self, limit: Duration) -> (Option<i32>, String, Vec<String>) {
        let rc = unsafe { libc::kill(self.pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {}", self.pid);
        let started = Instant::now();
        let status = {
            let (child, log) = (&mut self.child, self.log.clone());
            let deadline = Instant::now() + limit;
            loop {
                if let Some(s) = child.try_wait().expect("wait") {
                    break s;
                }
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(Instant::now() < deadline, "the daemon did not exit within {limit:?} of SIGTERM:\n{log}");
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        let notes = self.notifications();
        eprintln!("daemon exited {:?} after {:?}", status.code(), started.elapsed());
        (status.code(), self.log_text(), notes)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /metrics` on 127.0.0.1:`port` (None until it answers 200).
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
}

/// The value of the sample `name` (with its labels, as written) in a scrape.
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

/// The daemon's jobs record.
fn jobs(config: &Path) -> serde_json::Value {
    let state = config.parent().expect("cfg dir").join("spool/state/jobs.json");
    std::fs::read(&state).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(serde_json::json!({}))
}

fn count(record: &serde_json::Value, job: &str, field: &str) -> u64 {
    record["jobs"][job][field].as_u64().unwrap_or(0)
}

/// Backup ids listed by `backupctl status`.
fn listed_backups(src: &Source) -> Vec<String> {
    let out = src.status_json_output();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status: {e}: {out:?}"));
    v["backups"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The daemon, on a schedule of every few seconds, runs backups, prune, verify and check against a real cluster
/// (file:// and S3), records each run, tells systemd it is ready (and pings the watchdog), and on SIGTERM stops
/// with exit 0 and STOPPING=1.
#[test]
fn issue_9_daemon_runs_real_jobs_and_stops_on_sigterm() {
    if require_pg().is_none() {
        return;
    }
    let (_keep, repos) = backends("i9-daemon");
    for (backend, url, extra) in repos {
        let schedule = "[schedule]\ntime_zone = \"UTC\"\nincremental_backup = \"*/4 * * * * *\"\n\
                        prune = \"*/5 * * * * *\"\nverify = \"*/6 * * * * *\"\ncheck = \"*/7 * * * * *\"\ndrill = \"*/20 * * * * *\"\n\
                        fast_checkpoint = true\ngrace_period = \"30s\"\n\n[retention]\nkeep_last = 2\n";
        let src = Source::start(&format!("i9-daemon-{backend}"), &url, &format!("{extra}\n{schedule}"));
        src.cluster.sql("create table t as select generate_series(1, 10000) id");
        src.backup_json("full");
        let dir = src.config.parent().expect("cfg dir").to_path_buf();
        let daemon = Daemon::start(&src.config, &dir, &[("WATCHDOG_USEC", "2000000")]);
        let done = daemon.wait("every job to succeed at least once", Duration::from_secs(120), || {
            let r = jobs(&src.config);
            let all = ["incremental_backup", "prune", "verify", "check", "drill"]
                .iter()
                .all(|j| count(&r, j, "succeeded_total") >= 1);
            (all && count(&r, "incremental_backup", "succeeded_total") >= 3).then_some(r)
        });
        for job in ["incremental_backup", "prune", "verify", "check", "drill"] {
            assert_eq!(count(&done, job, "failed_total"), 0, "{backend} {job}: {done}\n{}", daemon.log_text());
            assert_eq!(done["jobs"][job]["last_outcome"], "succeeded", "{backend} {job}: {done}");
        }
        // The metrics endpoint shows the figures while it runs.
        let text = std::fs::read_to_string(&src.config).expect("config");
        let port: u16 = text
            .split("listen = \"127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|p| p.parse().ok())
            .expect("port");
        let scraped = daemon.wait("a scrape showing the jobs", Duration::from_secs(30), || {
            let body = scrape(port)?;
            body.contains("backupctl_job_last_success_timestamp_seconds{job_name=\"prune\"}").then_some(body)
        });
        for want in [
            "backupctl_repository_up 1",
            "backupctl_job_runs_total{job_name=\"incremental_backup\",outcome=\"succeeded\"}",
            "backupctl_newest_backup_timestamp_seconds",
        ] {
            assert!(scraped.contains(want), "{backend}: {want} in:\n{scraped}");
        }
        let runs = metric(&scraped, "backupctl_job_runs_total{job_name=\"incremental_backup\",outcome=\"succeeded\"}");
        assert!(runs >= 3.0, "{backend}: {runs}");
        // Retention runs on the backups the daemon takes: with keep_last = 2, at most two (plus any taken since
        // the last prune) stay listed, although four or more were taken.
        daemon.wait("prune to have deleted backups", Duration::from_secs(60), || {
            let listed = listed_backups(&src);
            (listed.len() <= 2).then_some(listed)
        });
        let (code, log, notes) = daemon.terminate(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{backend}: {log}");
        let all = notes.join("\n");
        assert!(all.contains("READY=1"), "{backend}: {all}");
        assert!(all.contains("WATCHDOG=1"), "{backend}: watchdog pings: {all}");
        assert!(all.contains("STOPPING=1"), "{backend}: {all}");
        assert!(log.contains("job succeeded") && log.contains("scheduler stopped"), "{backend}: {log}");
    }
}

/// A base backup still running when its next slots come makes them missed runs (counted, logged, not queued);
/// SIGTERM then gives it the grace period and abandons it: the daemon exits promptly, no backup is listed, and a
/// new backup can be taken at once (no lock or server-side backup left behind).
#[test]
fn issue_9_sigterm_abandons_a_slow_backup_cleanly() {
    if require_pg().is_none() {
        return;
    }
    let file = FileRepo::new("i9-abandon");
    let schedule = "[schedule]\ntime_zone = \"UTC\"\nfull_backup = \"* * * * * *\"\nfast_checkpoint = true\n\
                    backup_max_rate_kib = 256\ngrace_period = \"2s\"\n";
    let src = Source::start("i9-abandon", &file.url(), schedule);
    // About 40 MB of table: at 256 KiB/s the backup takes minutes.
    src.cluster.sql("create table big as select g id, repeat(md5(g::text), 8) pad from generate_series(1, 150000) g");
    let dir = src.config.parent().expect("cfg dir").to_path_buf();
    let daemon = Daemon::start(&src.config, &dir, &[]);
    let r = daemon.wait("slots missed while the backup runs", Duration::from_secs(60), || {
        let r = jobs(&src.config);
        (count(&r, "full_backup", "missed_total") >= 2).then_some(r)
    });
    assert_eq!(count(&r, "full_backup", "succeeded_total"), 0, "{r}");
    assert!(daemon.log_text().contains("slot skipped"), "{}", daemon.log_text());
    let started = Instant::now();
    let (code, log, _) = daemon.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped within the grace period and a little: {:?}",
        started.elapsed()
    );
    assert!(log.contains("job abandoned"), "{log}");
    let r = jobs(&src.config);
    assert_eq!(r["jobs"]["full_backup"]["last_outcome"], "abandoned", "{r}");
    assert!(listed_backups(&src).is_empty(), "an abandoned backup is never listed");
    // The lock went with the process (and the server ended the abandoned backup with its session).
    let m = src.backup_json("full");
    assert_eq!(listed_backups(&src), vec![m["id"].as_str().expect("id").to_owned()]);
}

/// `backupctl schedule` prints each job's next run times in the configured zone (JSON and text), and a bad
/// expression is a configuration error naming the key, before anything runs.
#[test]
fn issue_9_schedule_prints_next_runs_and_rejects_bad_expressions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = crate::support::cluster::write_config(
        dir.path(),
        "file:///nonexistent/repo",
        &dir.path().join("spool"),
        "[schedule]\ntime_zone = \"America/New_York\"\nfull_backup = \"30 1 * * sun\"\nprune = \"@daily\"\n",
    );
    let out = std::process::Command::new(bin("backupctl"))
        .arg("--config")
        .arg(&config)
        .args(["schedule", "--json-output", "--count", "4"])
        .output()
        .expect("backupctl schedule");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["time_zone"], "America/New_York");
    let jobs = v["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 2, "{v}");
    let full = &jobs[0];
    assert_eq!(full["job"], "full_backup");
    let next: Vec<jiff::Timestamp> = full["next"]
        .as_array()
        .expect("next")
        .iter()
        .map(|t| t.as_str().expect("str").parse().expect("time"))
        .collect();
    assert_eq!(next.len(), 4);
    for (i, t) in next.iter().enumerate() {
        let local = t.to_zoned_datetime(jiff::tz::TimeZone::get("America/New_York").expect("tz"));
        assert_eq!((local.weekday(), local.hour(), local.minute()), (jiff::civil::Weekday::Sunday, 1, 30), "{local}");
        if i > 0 {
            assert_eq!(t.duration_since(next[i - 1]).as_hours() / 24, 7, "weekly: {next:?}");
        }
    }
    let text = std::process::Command::new(bin("backupctl"))
        .arg("--config")
        .arg(&config)
        .arg("schedule")
        .output()
        .expect("backupctl schedule");
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(
        shown.contains("time zone America/New_York") && shown.contains("prune") && shown.contains("@daily"),
        "{shown}"
    );

    std::fs::write(&config, std::fs::read_to_string(&config).expect("read").replace("@daily", "0 25 * * *"))
        .expect("write");
    let bad = std::process::Command::new(bin("backupctl"))
        .arg("--config")
        .arg(&config)
        .arg("schedule")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("schedule.prune = \"0 25 * * *\": not a cron expression"), "{err}");
}

/// Every packaged systemd unit (packaging/systemd: the scheduler daemon, and the backup and prune services and
/// timers) passes `systemd-analyze verify`, with each `/usr/bin/<program>` pointing at the built binary (the man
/// pages the units name are checked where the package is installed: scripts/package-test.sh).
#[test]
fn issue_9_scheduler_unit_verifies() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        assert!(std::env::var_os("CI").is_none(), "systemd-analyze is missing (apt-get install systemd)");
        return;
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&src).expect("packaging/systemd") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        if !(name.ends_with(".service") || name.ends_with(".timer")) {
            continue;
        }
        let mut unit = std::fs::read_to_string(&path).expect("unit");
        for program in ["backupctl", "base-backup"] {
            unit = unit.replace(&format!("/usr/bin/{program} "), &format!("{} ", bin(program).display()));
        }
        assert!(
            !unit.lines().any(|l| l.starts_with("ExecStart=/usr/bin/")),
            "{name} runs a program this test does not map: {unit}"
        );
        let unit: String = unit
            .lines()
            .map(|l| if l.starts_with("Documentation=") { "Documentation=https://example.invalid/" } else { l })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(dir.path().join(&name), unit).expect("write unit");
        units.push(name);
    }
    assert!(units.len() >= 6, "the scheduler, backup@, prune and three timers: {units:?}");
    // Instances of the template, as the timers start them.
    let mut args: Vec<std::path::PathBuf> =
        units.iter().filter(|u| !u.contains('@')).map(|u| dir.path().join(u)).collect();
    for instance in ["full", "incremental"] {
        let templ = dir.path().join("backupctl-backup@.service");
        let inst = dir.path().join(format!("backupctl-backup@{instance}.service"));
        std::os::unix::fs::symlink(&templ, &inst).expect("instance");
        args.push(inst);
    }
    let out = std::process::Command::new(analyze).arg("verify").args(&args).output().expect("systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let complaints: Vec<&str> = said.lines().filter(|l| l.contains("backupctl")).collect();
    assert!(out.status.success() && complaints.is_empty(), "{said}");
}

/// A scheduled job made to fail (check, with PostgreSQL stopped) sends exactly one alert to the SMTP server and
/// one to the webhook, however many times it fails within `repeat_interval`, and one "resolved" to each once it
/// passes again (PostgreSQL started); nothing more afterwards.
#[test]
fn issue_9_daemon_failing_job_alerts_once_and_resolves() {
    use crate::support::receivers::{HttpReceiver, SmtpReceiver};
    if require_pg().is_none() {
        return;
    }
    let Some(smtp) = SmtpReceiver::start() else { return };
    let http = HttpReceiver::start();
    let file = FileRepo::new("i9-alert-job");
    let extra = format!(
        "[schedule]\ntime_zone = \"UTC\"\ncheck = \"*/2 * * * * *\"\nhealth_interval = \"1s\"\n\n\
         [alerts]\nrepeat_interval = \"1h\"\n\n\
         [alerts.email]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"backupctl <backupctl@db.example>\"\n\
         to = [\"dba@example.com\"]\n\n\
         [alerts.webhook]\nurl = \"{}\"\nformat = \"generic\"\nallow_http = true\n",
        smtp.port,
        http.url("/hook")
    );
    let mut src = Source::start("i9-alert-job", &file.url(), &extra);
    src.backup_json("full");
    let dir = src.config.parent().expect("cfg dir").to_path_buf();
    let daemon = Daemon::start(&src.config, &dir, &[]);
    daemon.wait("a passing check", Duration::from_secs(60), || {
        (count(&jobs(&src.config), "check", "succeeded_total") >= 1).then_some(())
    });
    assert!(smtp.messages().is_empty() && http.requests().is_empty(), "nothing to say while all is well");

    src.cluster.stop();
    daemon.wait("three failed checks", Duration::from_secs(60), || {
        (count(&jobs(&src.config), "check", "failed_total") >= 3).then_some(())
    });
    let mail = smtp.wait_for(1, Duration::from_secs(30));
    let hooks = http.wait_for(1, Duration::from_secs(30));
    assert_eq!(mail.len(), 1, "one alert for three failures: {mail:?}");
    assert_eq!(hooks.len(), 1, "one alert for three failures: {hooks:?}");
    let subject = mail[0]["subject"].as_str().unwrap_or("");
    assert!(subject.contains("FIRING") && subject.contains("check"), "{subject}");
    let body = hooks[0].json();
    assert_eq!((body["status"].as_str(), body["condition"].as_str()), (Some("firing"), Some("check")), "{body}");
    assert!(body["detail"].as_str().unwrap_or("").contains("postgresql"), "names the failed check: {body}");

    src.cluster.start();
    let failed_before = count(&jobs(&src.config), "check", "failed_total");
    let passes = count(&jobs(&src.config), "check", "succeeded_total");
    daemon.wait("the check to pass again, twice", Duration::from_secs(60), || {
        (count(&jobs(&src.config), "check", "succeeded_total") >= passes + 2).then_some(())
    });
    let mail = smtp.wait_for(2, Duration::from_secs(30));
    let hooks = http.wait_for(2, Duration::from_secs(30));
    assert_eq!((mail.len(), hooks.len()), (2, 2), "one resolved each: {mail:?} {hooks:?}");
    assert!(mail[1]["subject"].as_str().unwrap_or("").contains("RESOLVED"), "{mail:?}");
    assert_eq!(hooks[1].json()["status"], "resolved");
    assert!(count(&jobs(&src.config), "check", "failed_total") >= failed_before);
    let (code, log, _) = daemon.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert_eq!((smtp.messages().len(), http.requests().len()), (2, 2), "nothing after resolved");
}

/// The daemon evaluates the health conditions every `health_interval`: the newest backup older than
/// `[retention] max_backup_age` raises one "backup-age" alert, and a new backup resolves it.
#[test]
fn issue_9_daemon_health_alert_for_an_old_backup() {
    use crate::support::receivers::HttpReceiver;
    if require_pg().is_none() {
        return;
    }
    let http = HttpReceiver::start();
    let file = FileRepo::new("i9-health");
    let extra = format!(
        "[schedule]\ntime_zone = \"UTC\"\nverify = \"0 0 1 1 *\"\nhealth_interval = \"1s\"\n\n\
         [retention]\nmax_backup_age = \"4s\"\n\n\
         [alerts.webhook]\nurl = \"{}\"\nformat = \"generic\"\nallow_http = true\n",
        http.url("/hook")
    );
    let src = Source::start("i9-health", &file.url(), &extra);
    src.backup_json("full");
    let dir = src.config.parent().expect("cfg dir").to_path_buf();
    let daemon = Daemon::start(&src.config, &dir, &[]);
    let hooks = daemon.wait("a backup-age alert", Duration::from_secs(60), || {
        let r = http.requests();
        (!r.is_empty()).then_some(r)
    });
    let body = hooks[0].json();
    assert_eq!((body["status"].as_str(), body["condition"].as_str()), (Some("firing"), Some("backup-age")), "{body}");
    src.backup_json("incremental");
    let hooks = daemon.wait("resolved", Duration::from_secs(30), || {
        let r = http.requests();
        (r.len() >= 2).then_some(r)
    });
    let body = hooks[1].json();
    assert_eq!((body["status"].as_str(), body["condition"].as_str()), (Some("resolved"), Some("backup-age")), "{body}");
    let (code, log, _) = daemon.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
}

/// A drill of a real backup passes and clears the `drill` condition; after a data object of the backup is
/// overwritten (as a failing disk would), the drill fails naming the step, and one "drill" alert is sent.
#[test]
fn issue_9_drill_of_a_corrupted_repository_alerts() {
    use crate::support::receivers::HttpReceiver;
    if require_pg().is_none() {
        return;
    }
    let http = HttpReceiver::start();
    let file = FileRepo::new("i9-drill-alert");
    let extra = format!("[alerts.webhook]\nurl = \"{}\"\nformat = \"generic\"\nallow_http = true\n", http.url("/hook"));
    let src = Source::start("i9-drill-alert", &file.url(), &extra);
    src.cluster.sql("create table t as select g id, md5(g::text) pad from generate_series(1, 50000) g");
    src.backup_json("full");
    let drill =
        || as_postgres(&bin("backupctl")).arg("--config").arg(&src.config).arg("drill").output().expect("drill");
    let ok = drill();
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert!(http.requests().is_empty(), "a passing drill raises nothing");
    // Damage the largest data object: bytes of the same length that are not it.
    let victim = file.objects().into_iter().next().expect("a data object");
    let mut bytes = std::fs::read(&victim).expect("read object");
    let half = bytes.len() / 2;
    for b in &mut bytes[half..] {
        *b ^= 0x5a;
    }
    std::fs::write(&victim, bytes).expect("overwrite object");
    let bad = drill();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(err.contains("failed at step restore"), "{err}");
    let hooks = http.wait_for(1, Duration::from_secs(30));
    let body = hooks[0].json();
    assert_eq!((body["status"].as_str(), body["condition"].as_str()), (Some("firing"), Some("drill")), "{body}");
    let second = drill();
    assert_eq!(second.status.code(), Some(1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(http.requests().len(), 1, "the same failure again sends nothing within repeat_interval");
}

/// Found by the daemon test: a verify that overlaps a prune reported the objects and WAL of the backup prune
/// was deleting as missing, so a scheduled verify failed (and alerted) on a healthy repository. Here another
/// writer deletes a backup (its manifest, the objects only it used, its WAL) at the moment verify starts reading:
/// verify passes and lists that backup as deleted (before the fix: "missing", backup broken, exit 1).
#[test]
fn issue_9_verify_ignores_what_a_concurrent_prune_deleted() {
    use backupctl::storage::testing::Faulty;
    if require_pg().is_none() {
        return;
    }
    let file = FileRepo::new("i9-verify-race");
    // Deletes format 1's data/ objects under verify's feet.
    crate::issue10_format2::init_format("i9-verify-race", &file.url(), "", 1);
    let src = Source::start("i9-verify-race", &file.url(), "");
    src.cluster.sql("create table t as select g id, md5(g::text) pad from generate_series(1, 100000) g");
    let b1 = src.backup_json("full")["id"].as_str().expect("id").to_owned();
    src.cluster.sql("update t set pad = md5(pad)");
    src.cluster.sql("checkpoint");
    let b2 = src.backup_json("full")["id"].as_str().expect("id").to_owned();
    let root = PathBuf::from(file.url().trim_start_matches("file://"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let s3 = backupctl::config::S3Config::default();
    let open = || rt.block_on(backupctl::storage::open(&file.url(), &s3, Duration::from_secs(10))).expect("open");
    let storage = open();
    let manifest = |id: &str| {
        let id = id.parse().expect("id");
        rt.block_on(backupctl::repository::store::load_manifest(storage.as_ref(), &id)).expect("load").expect("exists")
    };
    let (m1, m2) = (manifest(&b1), manifest(&b2));
    let objects = |m: &backupctl::repository::backup::Manifest| -> std::collections::BTreeSet<String> {
        m.files.iter().flat_map(|f| &f.pieces).map(|p| p.object.key().to_string()).collect()
    };
    let only_b1: Vec<PathBuf> = objects(&m1).difference(&objects(&m2)).map(|k| root.join(k)).collect();
    assert!(!only_b1.is_empty(), "the update left objects only the first backup uses");
    let manifest_path = root.join(m1.id.manifest_key().as_str());
    assert!(manifest_path.exists(), "{}", manifest_path.display());
    let options = || backupctl::verify::Options {
        backup_id: None,
        wal: false,
        parallel: 2,
        clock: backupctl::verify::coverage::Clock {
            now: std::time::SystemTime::now(),
            pending_within: Duration::from_secs(300),
            expired_before: None,
        },
    };

    // Retention: the manifest goes first, then what only it needed.
    let (gone, gone_manifest) = (only_b1.clone(), manifest_path.clone());
    let faulty = Faulty::new(open(), 0, Duration::ZERO).before_first_get("data/", move || {
        std::fs::remove_file(&gone_manifest).expect("remove manifest");
        for p in &gone {
            std::fs::remove_file(p).expect("remove object");
        }
    });
    let report = rt.block_on(backupctl::verify::run(std::sync::Arc::new(faulty), &options())).expect("verify");
    let status = |id: &str| report.backups.iter().find(|b| b.id == id).map(|b| b.status);
    assert!(report.ok, "{report:?}");
    assert_eq!((status(&b1), status(&b2)), (Some("deleted"), Some("ok")), "{report:?}");
}

/// A backup slot that finds another base backup running (one started by hand holds the backup lock) is reported
/// and counted as missed, not failed, not alerted and not retried until its next slot; SIGHUP does not stop the
/// daemon.
#[test]
fn issue_9_backup_slot_with_another_backup_running_is_missed_not_failed() {
    use std::os::fd::AsRawFd;
    if require_pg().is_none() {
        return;
    }
    let file = FileRepo::new("i9-locked");
    let src = Source::start(
        "i9-locked",
        &file.url(),
        "[schedule]\ntime_zone = \"UTC\"\nincremental_backup = \"*/2 * * * * *\"\n",
    );
    src.backup_json("full");
    // Hold base-backup's lock as a running backup would.
    let lock_path = src.config.parent().expect("cfg dir").join("spool/backup.lock");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .expect("open lock");
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0, "take the lock");
    let dir = src.config.parent().expect("cfg dir").to_path_buf();
    let daemon = Daemon::start(&src.config, &dir, &[]);
    let r = daemon.wait("two slots skipped on the lock", Duration::from_secs(30), || {
        let r = jobs(&src.config);
        (count(&r, "incremental_backup", "missed_total") >= 2).then_some(r)
    });
    assert_eq!(count(&r, "incremental_backup", "failed_total"), 0, "{r}");
    assert!(daemon.log_text().contains("another base-backup of this repository is running"), "{}", daemon.log_text());
    assert_eq!(unsafe { libc::kill(daemon.pid, libc::SIGHUP) }, 0);
    drop(lock);
    daemon.wait("a backup once the lock is free", Duration::from_secs(30), || {
        (count(&jobs(&src.config), "incremental_backup", "succeeded_total") >= 1).then_some(())
    });
    assert!(daemon.log_text().contains("SIGHUP ignored"), "{}", daemon.log_text());
    let (code, log, _) = daemon.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
}

/// Found by the trial: a check that already failed for one reason (the newest backup too old) said nothing when
/// PostgreSQL went down too, for up to an hour. A new reason is sent at once; the same reasons again are not.
#[test]
fn issue_9_a_new_reason_for_a_firing_check_alerts_at_once() {
    use crate::support::receivers::HttpReceiver;
    if require_pg().is_none() {
        return;
    }
    let http = HttpReceiver::start();
    let file = FileRepo::new("i9-reason");
    let extra = format!(
        "[schedule]\ntime_zone = \"UTC\"\ncheck = \"*/2 * * * * *\"\n\n[retention]\nmax_backup_age = \"1s\"\n\n\
         [alerts.webhook]\nurl = \"{}\"\nformat = \"generic\"\nallow_http = true\n",
        http.url("/hook")
    );
    let mut src = Source::start("i9-reason", &file.url(), &extra);
    src.backup_json("full");
    std::thread::sleep(Duration::from_millis(1100));
    let dir = src.config.parent().expect("cfg dir").to_path_buf();
    let daemon = Daemon::start(&src.config, &dir, &[]);
    let check_alerts = |h: &HttpReceiver| -> Vec<serde_json::Value> {
        h.requests().iter().map(|r| r.json()).filter(|j| j["condition"] == "check").collect()
    };
    let first = daemon.wait("the backup-age failure", Duration::from_secs(60), || {
        let a = check_alerts(&http);
        (!a.is_empty()).then_some(a)
    });
    assert!(!first[0]["detail"].as_str().unwrap_or("").contains("postgresql:"), "{}", first[0]);
    src.cluster.stop();
    let second = daemon.wait("an alert for the new reason", Duration::from_secs(60), || {
        let a = check_alerts(&http);
        (a.len() >= 2).then_some(a)
    });
    assert_eq!(second[1]["status"], "firing", "{}", second[1]);
    assert!(second[1]["detail"].as_str().unwrap_or("").contains("postgresql"), "{}", second[1]);
    let runs = count(&jobs(&src.config), "check", "failed_total");
    daemon.wait("two more failed checks", Duration::from_secs(30), || {
        (count(&jobs(&src.config), "check", "failed_total") >= runs + 2).then_some(())
    });
    assert_eq!(check_alerts(&http).len(), 2, "the same reasons again send nothing");
    let (code, log, _) = daemon.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
}
