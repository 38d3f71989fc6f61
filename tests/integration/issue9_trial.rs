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
    /// None if it exited before its pid could be read (a daemon that refused to start).
    pid: Option<i32>,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let mut child = as_postgres(&bin("backupctl"))
            .arg("--config")
            .arg(config)
            .args(["schedule", "--daemon"])
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the daemon");
        let runuser = child.id();
        let pid = wait_for("the daemon's pid", Duration::from_secs(10), || {
            let children = std::fs::read_to_string(format!("/proc/{runuser}/task/{runuser}/children")).ok();
            match children.and_then(|c| c.split_whitespace().next()?.parse::<i32>().ok()) {
                Some(pid) => Some(Some(pid)),
                None => child.try_wait().expect("wait").map(|_| None),
            }
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
        let pid = self.pid.expect("the daemon is running");
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill -{sig} {pid}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
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
        log.contains("another scheduler daemon is running on spool")
            && log.contains(&format!("pid={}", first.pid.expect("first pid"))),
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

/// The daemon's secrets (`${VAR}` in `[alerts.*]`, set only in the scheduler's EnvironmentFile as
/// docs/operations.md says) are not in PostgreSQL's environment: wal-push must archive anyway, and wal-fetch
/// fetch, while backupctl still refuses the unset variable.
fn wal_commands_ignore_the_daemons_secrets(url: &str, extra: &str, label: &str) {
    let secrets = "[alerts.webhook]\nurl = \"${BKCTL_TRIAL_UNSET_HOOK}\"\n\
                   headers = { Authorization = \"Bearer ${BKCTL_TRIAL_UNSET_TOKEN}\" }\n\n\
                   [alerts.email]\nhost = \"smtp.example.com\"\nuser = \"u\"\npassword = \"${BKCTL_TRIAL_UNSET_SMTP}\"\n\
                   from = \"a@example.com\"\nto = [\"b@example.com\"]\n\n\
                   [drill]\nsql = \"select ${BKCTL_TRIAL_UNSET_SQL}\"\n";
    let src = crate::pitr::Source::start(label, url, &format!("{extra}\n{secrets}"));
    // The scheduler's environment has them.
    let init = as_postgres(&bin("backupctl"))
        .arg("--config")
        .arg(&src.config)
        .arg("init")
        .env("BKCTL_TRIAL_UNSET_HOOK", "https://hooks.example.com/x")
        .env("BKCTL_TRIAL_UNSET_TOKEN", "t")
        .env("BKCTL_TRIAL_UNSET_SMTP", "p")
        .env("BKCTL_TRIAL_UNSET_SQL", "1")
        .output()
        .expect("init");
    assert_ok("backupctl init", &init);
    let segment = src.cluster.switch_and_wait_archived(Duration::from_secs(60));
    let dest = src.dir.sub("fetched");
    let fetched = as_postgres(&bin("wal-fetch"))
        .arg("--config")
        .arg(&src.config)
        .arg(&segment)
        .arg(dest.join("RECOVERYXLOG"))
        .output()
        .expect("wal-fetch");
    assert_ok("wal-fetch", &fetched);
    assert_eq!(std::fs::metadata(dest.join("RECOVERYXLOG")).expect("fetched").len(), 16 * 1024 * 1024);
    // Commands that read [alerts] still name the unset variable.
    let show =
        as_postgres(&bin("backupctl")).arg("--config").arg(&src.config).arg("config-show").output().expect("run");
    let err = String::from_utf8_lossy(&show.stderr);
    assert_eq!(show.status.code(), Some(2), "{err}");
    assert!(err.contains("environment variable BKCTL_TRIAL_UNSET_HOOK is not set"), "{err}");
}

#[test]
fn issue_9_wal_commands_ignore_the_daemons_secrets_file() {
    if crate::support::cluster::require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("trial-secrets");
    wal_commands_ignore_the_daemons_secrets(&repo.url(), "", "trial-secrets-file");
}

#[test]
fn issue_9_wal_commands_ignore_the_daemons_secrets_s3() {
    if crate::support::cluster::require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = crate::pitr::s3_repo("trial-secrets") else { return };
    wal_commands_ignore_the_daemons_secrets(&url, &extra, "trial-secrets-s3");
}
