//! Issue 9, "Alerts": email (a real aiosmtpd server) and webhooks (a real HTTP server) on 127.0.0.1: rate limiting
//! and resolved messages, the body formats, `backupctl alert test`, receivers that are down or hang, `backupctl
//! check` and `verify` raising and resolving their alerts on real clusters (file:// and S3), and secrets that
//! never show.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use backupctl::alert::{Alerter, Condition, Delivery};
use backupctl::config::Config;

use crate::pitr::{FileRepo, Source, backends};
use crate::support::cluster::output_text as text;
use crate::support::cluster::{as_postgres, bin, require_pg};
use crate::support::receivers::{HttpReceiver, SilentServer, SmtpReceiver, closed_port};

const WAIT: Duration = Duration::from_secs(30);

/// This host's name as the alerter reports it (lettre's client id: the name EHLO sends).
fn host() -> String {
    lettre::transport::smtp::extension::ClientId::default().to_string()
}

/// `[alerts.email]` for an SMTP server on 127.0.0.1:`port`, in plain text (allowed for loopback only).
fn email_section(port: u16, extra: &str) -> String {
    format!(
        "[alerts.email]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"backupctl <backupctl@db.example>\"\n\
         to = [\"dba@example.com\", \"oncall@example.com\"]\n{extra}\n"
    )
}

/// `[alerts.webhook]` posting to `url` in `format`.
fn webhook_section(url: &str, format: &str, extra: &str) -> String {
    format!("[alerts.webhook]\nurl = \"{url}\"\nformat = \"{format}\"\n{extra}\n")
}

/// A configuration with a file:// repository, a spool in `dir`, and `alerts` (whole sections).
fn config(dir: &Path, alerts: &str) -> Config {
    let text = format!(
        "[repository]\nurl = \"file://{}/repo\"\n[spool]\npath = \"{}/spool\"\n{alerts}",
        dir.display(),
        dir.display()
    );
    Config::parse(Path::new("test.toml"), &text, &|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn at(minutes: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_900_000_000 + minutes * 60).expect("time")
}

fn condition(firing: bool) -> Condition {
    Condition {
        key: "job:full_backup".to_owned(),
        firing,
        summary: if firing { "job full_backup failed".into() } else { "job full_backup succeeded".into() },
        detail: if firing { "cannot back up: the server is down".into() } else { "backup 20260101T000000F".into() },
        reason: String::new(),
    }
}

fn oks(d: &[Delivery]) -> Vec<(&str, bool)> {
    d.iter().map(|d| (d.channel.as_str(), d.ok)).collect()
}

/// One "firing" per condition and channel while it stays firing within repeat_interval, another once the interval
/// has passed, one "resolved" when it clears, and nothing afterwards; each message says what, where and when.
#[test]
fn issue_9_alerts_fire_once_per_interval_and_resolve_once() {
    let Some(smtp) = SmtpReceiver::start() else { return };
    let hook = HttpReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let alerts = format!(
        "[alerts]\nrepeat_interval = \"1h\"\n{}{}",
        email_section(smtp.port, ""),
        webhook_section(&hook.url("/hook"), "generic", "")
    );
    let alerter = Alerter::new(&config(dir.path(), &alerts));
    assert!(alerter.is_configured());
    let rt = runtime();
    let both = vec![("email", true), ("webhook", true)];

    assert_eq!(oks(&rt.block_on(alerter.update(&[condition(false)], at(0)))), vec![], "nothing was firing");
    assert_eq!(oks(&rt.block_on(alerter.update(&[condition(true)], at(1)))), both);
    for minute in [2, 30, 60] {
        assert_eq!(oks(&rt.block_on(alerter.update(&[condition(true)], at(minute)))), vec![], "minute {minute}");
    }
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(hook.requests().len(), 1);
    assert_eq!(oks(&rt.block_on(alerter.update(&[condition(true)], at(61)))), both, "after repeat_interval");
    assert_eq!(oks(&rt.block_on(alerter.update(&[condition(false)], at(62)))), both, "resolved");
    for minute in [63, 200] {
        assert_eq!(oks(&rt.block_on(alerter.update(&[condition(false)], at(minute)))), vec![], "minute {minute}");
    }

    let host = host();
    let mails = smtp.wait_for(3, WAIT);
    assert_eq!(mails.len(), 3, "{mails:#?}");
    let firing = format!("[backupctl] FIRING job full_backup failed on {host}");
    let resolved = format!("[backupctl] RESOLVED job full_backup failed on {host}");
    assert_eq!(smtp.subjects(), [firing.clone(), firing, resolved]);
    let first = &mails[0];
    assert_eq!(first["rcpt_tos"], serde_json::json!(["dba@example.com", "oncall@example.com"]));
    assert_eq!(first["mail_from"], "backupctl@db.example");
    let body = first["body"].as_str().expect("body");
    for want in [
        "cannot back up: the server is down",
        "condition: job:full_backup",
        &format!("host: {host}"),
        &format!("repository: file://{}/repo", dir.path().display()),
        &format!("time: {}", at(1)),
    ] {
        assert!(body.contains(want), "{want:?} not in {body}");
    }
    assert!(mails[2]["body"].as_str().expect("body").contains("backup 20260101T000000F"), "{:?}", mails[2]);

    let requests = hook.requests();
    assert_eq!(requests.len(), 3);
    let statuses: Vec<String> = requests.iter().map(|r| r.json()["status"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(statuses, ["firing", "firing", "resolved"]);
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
    assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/json"));
    assert!(r.headers.get("user-agent").is_some_and(|ua| ua.starts_with("backupctl/")), "{:?}", r.headers);
    let json = r.json();
    assert_eq!(json["condition"], "job:full_backup");
    assert_eq!(json["summary"], "job full_backup failed");
    assert_eq!(json["detail"], "cannot back up: the server is down");
    assert_eq!(json["host"], host.as_str());
    assert_eq!(json["time"], at(1).to_string());
    assert_eq!(json.as_object().map(|o| o.len()), Some(7), "{json}");
    // What was sent is recorded in the spool: a new Alerter (a new process) does not send it again.
    let state = std::fs::read_to_string(dir.path().join("spool/state/alerts.json")).expect("alerts.json");
    assert!(!state.contains("job:full_backup"), "resolved conditions are forgotten: {state}");
    let again = Alerter::new(&config(dir.path(), &alerts));
    assert_eq!(oks(&rt.block_on(again.update(&[condition(true)], at(300)))), both);
    assert_eq!(oks(&rt.block_on(again.update(&[condition(true)], at(301)))), vec![]);
    let fresh = Alerter::new(&config(dir.path(), &alerts));
    assert_eq!(oks(&rt.block_on(fresh.update(&[condition(true)], at(302)))), vec![], "state survives the process");
}

/// Slack, Teams and generic bodies, the configured headers, and an event (notify_success) as status "info".
#[test]
fn issue_9_webhook_formats_and_headers() {
    let hook = HttpReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let host = host();
    for format in ["slack", "teams", "generic"] {
        let before = hook.requests().len();
        let section = webhook_section(
            &hook.url(&format!("/{format}")),
            format,
            "headers = { Authorization = \"Bearer h34der-v4lue\", X-Team = \"dba\" }",
        );
        let alerter = Alerter::new(&config(dir.path(), &format!("[alerts]\nnotify_success = true\n{section}")));
        assert!(alerter.notify_success());
        let sent = rt.block_on(alerter.update(&[condition(true)], at(0)));
        assert_eq!(oks(&sent), [("webhook", true)], "{format}: {sent:?}");
        assert_eq!(sent[0].answer, "HTTP 200 OK: ok");
        let sent = rt.block_on(alerter.event("job:prune", "job prune succeeded", "deleted 2 backups"));
        assert_eq!(oks(&sent), [("webhook", true)], "{format}: {sent:?}");
        rt.block_on(alerter.update(&[condition(false)], at(1)));
        let requests = hook.wait_for(before + 3, WAIT);
        let mine = &requests[before..];
        for r in mine {
            assert_eq!(r.path, format!("/{format}"));
            assert_eq!(r.headers.get("authorization").map(String::as_str), Some("Bearer h34der-v4lue"));
            assert_eq!(r.headers.get("x-team").map(String::as_str), Some("dba"));
        }
        let (firing, info, resolved) = (mine[0].json(), mine[1].json(), mine[2].json());
        match format {
            "slack" => {
                let text = firing["text"].as_str().expect("text");
                assert!(
                    text.starts_with(&format!("*[backupctl] FIRING job full_backup failed on {host}*\n")),
                    "{text}"
                );
                assert!(text.contains("cannot back up: the server is down"), "{text}");
                assert!(info["text"].as_str().expect("text").starts_with("*[backupctl] INFO job prune succeeded"));
                assert!(resolved["text"].as_str().expect("text").starts_with("*[backupctl] RESOLVED"));
            }
            "teams" => {
                assert_eq!(firing["type"], "message");
                let card = &firing["attachments"][0];
                assert_eq!(card["contentType"], "application/vnd.microsoft.card.adaptive");
                assert_eq!(card["content"]["type"], "AdaptiveCard");
                let title = &card["content"]["body"][0]["text"];
                assert_eq!(title, &format!("[backupctl] FIRING job full_backup failed on {host}"));
                assert_eq!(card["content"]["body"][1]["text"], "cannot back up: the server is down");
                let resolved_title = &resolved["attachments"][0]["content"]["body"][0]["text"];
                assert!(resolved_title.as_str().is_some_and(|t| t.starts_with("[backupctl] RESOLVED")));
            }
            _ => {
                assert_eq!(firing["status"], "firing");
                assert_eq!(info["status"], "info");
                assert_eq!(info["condition"], "job:prune");
                assert_eq!(info["detail"], "deleted 2 backups");
                assert_eq!(resolved["status"], "resolved");
            }
        }
    }
}

/// `backupctl --config CFG <args>` as this user.
fn backupctl(config: &Path, args: &[&str]) -> Output {
    Command::new(bin("backupctl")).arg("--config").arg(config).args(args).output().expect("backupctl")
}

fn write_config(dir: &Path, alerts: &str) -> PathBuf {
    let path = dir.join("backupctl.toml");
    let text = format!(
        "[repository]\nurl = \"file://{}/repo\"\n[spool]\npath = \"{}/spool\"\n{alerts}",
        dir.display(),
        dir.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// `backupctl alert test` sends one test message per channel and prints each server's answer; exit 1 when a
/// channel fails, 2 with a clear error when none is configured; --json-output.
#[test]
fn issue_9_alert_test_command() {
    let Some(smtp) = SmtpReceiver::start_with_login("alerts", "sm7p-pa55") else { return };
    let hook = HttpReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let email = email_section(smtp.port, "user = \"alerts\"\npassword = \"${BKCTL_TEST_SMTP_PASSWORD}\"");
    let alerts = format!("{email}{}", webhook_section(&hook.url("/t0k3n-path"), "generic", ""));
    let cfg = write_config(dir.path(), &alerts);
    let run = |args: &[&str]| {
        let out = Command::new(bin("backupctl"))
            .env("BKCTL_TEST_SMTP_PASSWORD", "sm7p-pa55")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .expect("backupctl");
        text(&out)
    };
    let (code, out, err) = run(&["alert", "test"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("email: ok (250 2.0.0 Ok: saved as message 0"), "{out}");
    assert_eq!(lines[1], "webhook: ok (HTTP 200 OK: ok)", "{out}");
    let mails = smtp.wait_for(1, WAIT);
    assert_eq!(mails[0]["auth_login"], "alerts", "logged in: {:?}", mails[0]);
    assert_eq!(mails[0]["subject"], format!("[backupctl] TEST test message on {}", host()));
    let request = &hook.wait_for(1, WAIT)[0];
    assert_eq!((request.json()["status"].as_str(), request.json()["condition"].as_str()), (Some("test"), Some("test")));

    hook.answer_with(500, "no such hook\n(second line)");
    let (code, out, err) = run(&["alert", "test", "--json-output"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["ok"], false);
    assert_eq!(json["channels"][0]["channel"], "email");
    assert_eq!(json["channels"][0]["ok"], true);
    assert_eq!(json["channels"][1]["ok"], false);
    assert_eq!(json["channels"][1]["answer"], "HTTP 500 Internal Server Error: no such hook (second line)");
    assert!(err.contains("error: 1 of 2 alert channels failed: webhook: HTTP 500"), "{err}");
    assert!(err.contains("hint: "), "{err}");
    assert!(!format!("{out}{err}").contains("t0k3n"), "{out}{err}");

    // A wrong password: the SMTP server's refusal is the answer.
    let out = Command::new(bin("backupctl"))
        .env("BKCTL_TEST_SMTP_PASSWORD", "wrong")
        .arg("--config")
        .arg(&cfg)
        .args(["alert", "test"])
        .output()
        .expect("backupctl");
    let (code, out, err) = text(&out);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        out.lines().next().is_some_and(|l| l.starts_with("email: FAILED: smtp 127.0.0.1:") && l.contains("535")),
        "{out}"
    );
    assert!(!format!("{out}{err}").contains("wrong"), "{out}{err}");

    let none = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = text(&backupctl(&write_config(none.path(), ""), &["alert", "test"]));
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(err.contains("no alert channel is configured") && err.contains("[alerts.email]"), "{err}");
}

/// A receiver that is down (closed port) or hangs (accepts, never answers) costs at most the timeout: update
/// returns failed deliveries, never an error, and the message is sent at the next update once it is back.
#[test]
fn issue_9_receiver_down_or_slow_never_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    // Down: both channels refuse the connection at once.
    let down = format!(
        "{}{}",
        email_section(closed_port(), ""),
        webhook_section(&format!("http://127.0.0.1:{}/hook", closed_port()), "generic", "")
    );
    let alerter = Alerter::new(&config(dir.path(), &down));
    let started = Instant::now();
    let sent = rt.block_on(alerter.update(&[condition(true)], at(0)));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(oks(&sent), [("email", false), ("webhook", false)], "{sent:?}");
    assert!(sent[0].answer.starts_with("smtp 127.0.0.1:"), "{sent:?}");
    assert!(sent.iter().all(|d| !d.answer.contains('\n')), "{sent:?}");

    // Slow: both accept and never answer; the configured timeout (2 s) bounds the whole update, for two
    // conditions (the second message to a channel that failed is not attempted).
    let silent = SilentServer::start();
    let slow = format!(
        "{}{}",
        email_section(silent.port, "timeout = \"2s\""),
        webhook_section(&format!("http://127.0.0.1:{}/hook", silent.port), "slack", "timeout = \"2s\"")
    );
    let alerter = Alerter::new(&config(dir.path(), &slow));
    let other = Condition {
        key: "check".into(),
        firing: true,
        summary: "check failed".into(),
        detail: String::new(),
        reason: String::new(),
    };
    let started = Instant::now();
    let sent = rt.block_on(alerter.update(&[condition(true), other.clone()], at(1)));
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(6), "{took:?}");
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(sent.iter().all(|d| !d.ok), "{sent:?}");
    assert!(sent.iter().any(|d| d.answer.contains("no answer within 2 s")), "{sent:?}");
    assert!(silent.accepted() >= 2, "both channels connected");

    // Back up: the messages that were not delivered go out at the next update, once.
    let Some(smtp) = SmtpReceiver::start() else { return };
    let hook = HttpReceiver::start();
    let up = format!("{}{}", email_section(smtp.port, ""), webhook_section(&hook.url("/hook"), "generic", ""));
    let alerter = Alerter::new(&config(dir.path(), &up));
    let sent = rt.block_on(alerter.update(&[condition(true), other.clone()], at(2)));
    assert_eq!(sent.iter().filter(|d| d.ok).count(), 4, "{sent:?}");
    let sent = rt.block_on(alerter.update(&[condition(true), other], at(3)));
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(smtp.wait_for(2, WAIT).len(), 2);
    assert_eq!(hook.requests().len(), 2);
}

/// `backupctl [args]` as postgres.
fn backupctl_pg(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    text(&as_postgres(&bin("backupctl")).arg("--config").arg(config).args(args).output().expect("backupctl"))
}

/// A failing `backupctl check` (no backup younger than max_backup_age) sends one `check` alert to both receivers;
/// running it again does not repeat it; once a backup exists the check passes and one "resolved" is sent; a
/// failing check whose receivers are down still exits with the check's own status, promptly.
#[test]
fn issue_9_check_alerts_and_resolves_on_both_backends() {
    if require_pg().is_none() {
        return;
    }
    let Some(smtp) = SmtpReceiver::start() else { return };
    let hook = HttpReceiver::start();
    let (_keep, repos) = backends("i9-alert-check");
    for (backend, url, extra) in repos {
        let (mails0, hooks0) = (smtp.messages().len(), hook.requests().len());
        let alerts = format!(
            "{extra}\n[retention]\nmax_backup_age = \"1h\"\n{}{}",
            email_section(smtp.port, ""),
            webhook_section(&hook.url(&format!("/{backend}")), "generic", "")
        );
        let src = Source::start(&format!("i9-alert-check-{backend}"), &url, &alerts);
        for _ in 0..2 {
            let (code, out, err) = backupctl_pg(&src.config, &["check"]);
            assert_eq!(code, Some(1), "{backend}: {out}\n{err}");
            assert!(out.contains("backup_age: FAILED"), "{out}");
        }
        let mails = smtp.wait_for(mails0 + 1, WAIT);
        let requests = hook.wait_for(hooks0 + 1, WAIT);
        assert_eq!((mails.len(), requests.len()), (mails0 + 1, hooks0 + 1), "{backend}: one alert, not two");
        let subject = mails[mails0]["subject"].as_str().expect("subject");
        assert_eq!(subject, format!("[backupctl] FIRING backupctl check: 1 of 11 checks failed on {}", host()));
        let body = mails[mails0]["body"].as_str().expect("body");
        assert!(body.contains("backup_age: no backup yet") && body.contains("condition: check"), "{body}");
        let json = requests[hooks0].json();
        assert_eq!((json["status"].as_str(), json["condition"].as_str()), (Some("firing"), Some("check")));
        assert_eq!(json["repository"], url.as_str(), "{json}");

        src.backup_json("full");
        let (code, out, err) = backupctl_pg(&src.config, &["check"]);
        assert_eq!(code, Some(0), "{backend}: {out}\n{err}");
        let mails = smtp.wait_for(mails0 + 2, WAIT);
        let requests = hook.wait_for(hooks0 + 2, WAIT);
        assert!(
            mails[mails0 + 1]["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with("[backupctl] RESOLVED backupctl check"))
        );
        assert_eq!(requests[hooks0 + 1].json()["status"], "resolved");
        let (code, ..) = backupctl_pg(&src.config, &["check"]);
        assert_eq!(code, Some(0));
        assert_eq!((smtp.messages().len(), hook.requests().len()), (mails0 + 2, hooks0 + 2), "nothing more");

        // Receivers that hang: a failing check still ends with its own status, within the alert timeout.
        let silent = SilentServer::start();
        let hung = format!(
            "{extra}\n[retention]\nmax_backup_age = \"1h\"\n[check]\nmin_spool_free_mib = 999999999\n{}{}",
            email_section(silent.port, "timeout = \"2s\""),
            webhook_section(&format!("http://127.0.0.1:{}/x", silent.port), "generic", "timeout = \"2s\"")
        );
        std::fs::write(&src.config, std::fs::read_to_string(&src.config).expect("read").replace(&alerts, &hung))
            .expect("rewrite config");
        let started = Instant::now();
        let (code, out, err) = backupctl_pg(&src.config, &["check"]);
        assert_eq!(code, Some(1), "{backend}: {out}\n{err}");
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
        assert!(err.contains("alert not delivered") && err.contains("no answer within 2 s"), "{err}");
    }
}

/// `backupctl verify` that finds a missing object sends a `verify` alert; once the object is back, a verify of
/// every backup sends "resolved". File and S3 repositories.
#[test]
fn issue_9_verify_alerts_and_resolves_on_both_backends() {
    if require_pg().is_none() {
        return;
    }
    let Some(smtp) = SmtpReceiver::start() else { return };
    let hook = HttpReceiver::start();
    let (keep, repos) = backends("i9-alert-verify");
    for (backend, url, extra) in repos {
        let (mails0, hooks0) = (smtp.messages().len(), hook.requests().len());
        let alerts =
            format!("{extra}\n{}{}", email_section(smtp.port, ""), webhook_section(&hook.url("/v"), "generic", ""));
        let src = Source::start(&format!("i9-alert-verify-{backend}"), &url, &alerts);
        src.cluster.sql("create table t as select generate_series(1, 10000) id");
        src.backup_json("full");
        let (code, out, err) = backupctl_pg(&src.config, &["verify"]);
        assert_eq!(code, Some(0), "{backend}: {out}\n{err}");
        assert_eq!((smtp.messages().len(), hook.requests().len()), (mails0, hooks0), "a pass sends nothing");

        let restore = hide_one_object(backend, &keep[0], &url);
        // Run by a user who does not own the spool (here root): the verify fails as it should, but no alert
        // is sent and nothing of that user's is left in the spool, where wal-push must write.
        let (code, out, err) = text(&backupctl(&src.config, &["verify"]));
        assert_eq!(code, Some(1), "{backend}: {out}\n{err}");
        assert!(err.contains("alerts not sent") && err.contains("spool"), "{err}");
        let spool = src.config.parent().expect("cfg dir").join("spool");
        assert_eq!(owned_by_others(&spool), Vec::<PathBuf>::new(), "{backend}");
        assert_eq!((smtp.messages().len(), hook.requests().len()), (mails0, hooks0));
        let (code, out, err) = backupctl_pg(&src.config, &["verify"]);
        assert_eq!(code, Some(1), "{backend}: {out}\n{err}");
        let mails = smtp.wait_for(mails0 + 1, WAIT);
        let subject = mails[mails0]["subject"].as_str().expect("subject");
        assert!(
            subject.starts_with("[backupctl] FIRING backupctl verify failed: 1 problem(s), 1 broken backup(s)"),
            "{subject}"
        );
        let json = hook.wait_for(hooks0 + 1, WAIT)[hooks0].json();
        assert_eq!((json["status"].as_str(), json["condition"].as_str()), (Some("firing"), Some("verify")));

        restore();
        let (code, out, err) = backupctl_pg(&src.config, &["verify"]);
        assert_eq!(code, Some(0), "{backend}: {out}\n{err}");
        let mails = smtp.wait_for(mails0 + 2, WAIT);
        assert!(
            mails[mails0 + 1]["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with("[backupctl] RESOLVED backupctl verify"))
        );
        assert_eq!(hook.wait_for(hooks0 + 2, WAIT)[hooks0 + 1].json()["status"], "resolved");
    }
}

/// Files and directories under `dir` that the postgres user does not own.
fn owned_by_others(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let postgres = std::fs::metadata(dir).expect("spool").uid();
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = entry.metadata().expect("metadata");
            if meta.uid() != postgres {
                out.push(entry.path());
            }
            if meta.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    out
}

/// Move one data object of the backup out of the repository; the returned closure puts it back.
fn hide_one_object(backend: &str, file: &FileRepo, url: &str) -> Box<dyn FnOnce()> {
    if backend == "file" {
        let object = file.objects().into_iter().next().expect("a data object");
        let aside = object.with_extension("aside");
        std::fs::rename(&object, &aside).expect("move aside");
        return Box::new(move || std::fs::rename(&aside, &object).expect("move back"));
    }
    let server = crate::support::s3::server().expect("moto");
    let rest = url.strip_prefix("s3://").expect("s3 url");
    let (bucket, prefix) = rest.split_once('/').expect("bucket/prefix");
    let (bucket, prefix) = (bucket.to_owned(), prefix.to_owned());
    let rt = runtime();
    let client = server.client();
    let (key, bytes) = rt.block_on(async {
        // A format-1 chunk (data/) or a format-2 pack (packs/), whichever the repository holds.
        let mut key = None;
        for sub in ["data/", "packs/"] {
            let list =
                client.list_objects_v2().bucket(&bucket).prefix(format!("{prefix}/{sub}")).send().await.expect("list");
            key = key.or_else(|| list.contents().iter().filter_map(|o| o.key()).next().map(str::to_owned));
        }
        let key = key.expect("a data object");
        let body = client.get_object().bucket(&bucket).key(&key).send().await.expect("get").body;
        let bytes = body.collect().await.expect("body").into_bytes();
        client.delete_object().bucket(&bucket).key(&key).send().await.expect("delete");
        (key, bytes)
    });
    Box::new(move || {
        let rt = runtime();
        let client = server.client();
        rt.block_on(client.put_object().bucket(&bucket).key(&key).body(bytes.into()).send()).expect("put back");
    })
}

/// The SMTP password, the webhook URL's token (path and query) and a header value never appear in config-show
/// (text or JSON), nor in the log lines of sends that fail or succeed, at the most verbose level.
#[test]
fn issue_9_alert_secrets_never_in_config_show_or_logs() {
    let hook = HttpReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = ["sm7p-s3cret", "T0KEN-1n-path", "qu3ry-t0ken", "h34der-s3cret"];
    for (label, port) in [("down", closed_port()), ("up", hook.port)] {
        let alerts = format!(
            "[log]\nlevel = \"trace\"\n{}{}",
            email_section(closed_port(), "user = \"u\"\npassword = \"${BKCTL_TEST_SMTP_PASSWORD}\""),
            webhook_section(
                &format!("http://127.0.0.1:{port}/services/T0KEN-1n-path?key=qu3ry-t0ken"),
                "slack",
                "headers = { Authorization = \"Bearer h34der-s3cret\" }"
            )
        );
        let cfg = write_config(dir.path(), &alerts);
        for args in [&["config-show"][..], &["config-show", "--json-output"], &["alert", "test"]] {
            let out = Command::new(bin("backupctl"))
                .env("BKCTL_TEST_SMTP_PASSWORD", "sm7p-s3cret")
                .arg("--config")
                .arg(&cfg)
                .args(args)
                .output()
                .expect("backupctl");
            let (code, out, err) = text(&out);
            let all = format!("{out}\n{err}");
            for s in secrets {
                assert!(!all.contains(s), "{label} {args:?}: {s} shown:\n{all}");
            }
            if args[0] == "config-show" {
                assert_eq!(code, Some(0), "{all}");
                assert!(all.contains("<redacted>") && all.contains("Authorization"), "{all}");
            } else {
                assert_eq!(code, Some(1), "email is down: {all}");
                assert!(err.contains("alert not delivered"), "the failure is logged: {err}");
            }
        }
    }
    let got = hook.wait_for(1, WAIT);
    assert!(got[0].path.contains("T0KEN-1n-path"), "the real URL was used: {:?}", got[0].path);
}

/// `tls = "starttls"` against a server that offers no STARTTLS, and `tls = "implicit"` against a plain one, fail
/// without sending anything (never a silent fall-back to plain text, where the password would travel in clear).
#[test]
fn issue_9_email_tls_is_never_downgraded() {
    let Some(smtp) = SmtpReceiver::start_with_login("alerts", "sm7p-pa55") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    for tls in ["starttls", "implicit"] {
        let section = format!(
            "[alerts.email]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"{tls}\"\nuser = \"alerts\"\npassword = \"sm7p-pa55\"\n\
             from = \"a@db.example\"\nto = [\"dba@example.com\"]\ntimeout = \"5s\"\n",
            smtp.port
        );
        let alerter = Alerter::new(&config(dir.path(), &section));
        let sent = rt.block_on(alerter.test());
        assert_eq!(oks(&sent), [("email", false)], "{tls}: {sent:?}");
        assert!(!sent[0].answer.contains("sm7p-pa55"), "{sent:?}");
    }
    assert!(smtp.messages().is_empty(), "nothing was sent in plain text");
}
