//! Issue 9, found by trying it as a DBA would: one scheduler daemon per spool (a second one refuses to start
//! instead of running every slot again), SIGHUP does not kill the daemon, and alert emails carry a Message-ID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pitr::FileRepo;
use crate::support::cluster::{PgDir, as_postgres, assert_ok, bin, wait_for, write_config};
use crate::support::receivers::SmtpReceiver;

/// A daemon started as postgres: the runuser process, the daemon's own pid and its log file.
struct Daemon {
    child: Child,
    pid: i32,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = as_postgres(&bin("backupctl"))
            .arg("--config")
            .arg(config)
            .args(["schedule", "--daemon"])
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the daemon");
        let runuser = child.id();
        let pid = wait_for("the daemon's pid", Duration::from_secs(10), || {
            let children = std::fs::read_to_string(format!("/proc/{runuser}/task/{runuser}/children")).ok()?;
            children.split_whitespace().next()?.parse::<i32>().ok()
        });
        Self { child, pid, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, what: &str) {
        let mut last = String::new();
        let found = (0..150).any(|_| {
            last = self.log_text();
            let hit = last.contains(what);
            if !hit {
                std::thread::sleep(Duration::from_millis(200));
            }
            hit
        });
        assert!(found, "no {what:?} in the daemon's log within 30 s:\n{last}");
    }

    /// Its exit status, waiting at most `limit`; None if it is still running.
    fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.pid, sig) }, 0, "kill -{sig} {}", self.pid);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repository and spool owned by postgres, and a configuration with one job that does not come during the test.
fn setup(dir: &PgDir, repo: &FileRepo) -> PathBuf {
    let config = write_config(
        dir.path(),
        &repo.url(),
        &dir.sub("spool"),
        "[schedule]\nprune = \"0 0 1 1 *\"\n\n[metrics]\nlisten = \"\"\n",
    );
    let init = as_postgres(&bin("backupctl")).arg("--config").arg(&config).arg("init").output().expect("init");
    assert_ok("backupctl init", &init);
    config
}

/// Two daemons on one spool would both run every slot (and flip each other's alerts): the second one refuses
/// to start, naming the first, with exit status 1.
#[test]
fn issue_9_second_daemon_on_one_spool_refuses_to_start() {
    let (dir, repo) = (PgDir::new("trial-two"), FileRepo::new("trial-two"));
    let config = setup(&dir, &repo);
    let first = Daemon::start(&config, dir.path().join("first.log"));
    first.wait_log("scheduler started");
    let mut second = Daemon::start(&config, dir.path().join("second.log"));
    let status = second.exit_within(Duration::from_secs(20));
    let log = second.log_text();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "the second daemon did not refuse to start:\n{log}");
    assert!(
        log.contains("another scheduler daemon is running on spool") && log.contains(&format!("pid={}", first.pid)),
        "{log}"
    );
    // The first one is untouched; once it has stopped, a new one starts.
    let mut first = first;
    first.signal(libc::SIGTERM);
    assert_eq!(first.exit_within(Duration::from_secs(20)).and_then(|s| s.code()), Some(0), "{}", first.log_text());
    let third = Daemon::start(&config, dir.path().join("third.log"));
    third.wait_log("scheduler started");
}

/// SIGHUP (a reload out of habit, a closed terminal) must not kill the daemon and its running jobs: it is
/// logged and ignored; SIGTERM still stops it cleanly.
#[test]
fn issue_9_sighup_does_not_kill_the_daemon() {
    let (dir, repo) = (PgDir::new("trial-hup"), FileRepo::new("trial-hup"));
    let config = setup(&dir, &repo);
    let mut daemon = Daemon::start(&config, dir.path().join("daemon.log"));
    daemon.wait_log("scheduler started");
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("SIGHUP ignored");
    assert!(daemon.exit_within(Duration::from_secs(2)).is_none(), "SIGHUP ended the daemon:\n{}", daemon.log_text());
    daemon.signal(libc::SIGTERM);
    let status = daemon.exit_within(Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", daemon.log_text());
}

/// Alert emails carry a Message-ID (RFC 5322 section 3.6.4; Gmail rejects messages without one).
#[test]
fn issue_9_alert_email_has_a_message_id() {
    let Some(smtp) = SmtpReceiver::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "file:///nonexistent/repo",
        &dir.path().join("spool"),
        &format!(
            "[alerts.email]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"backupctl <b@example.com>\"\nto = [\"dba@example.com\"]\n",
            smtp.port
        ),
    );
    let out =
        Command::new(bin("backupctl")).arg("--config").arg(&config).args(["alert", "test"]).output().expect("run");
    assert_ok("backupctl alert test", &out);
    let messages = smtp.wait_for(1, Duration::from_secs(30));
    let id = messages[0]["headers"]["Message-ID"].as_str().unwrap_or_default();
    assert!(id.starts_with('<') && id.ends_with('>') && id.contains('@'), "Message-ID {id:?} in {}", messages[0]);
}
