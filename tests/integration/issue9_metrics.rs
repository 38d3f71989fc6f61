//! Issue 9, metrics and logging: wal-push's state record and textfile, `backupctl metrics` against `status`, the
//! HTTP endpoint scraped for real, a failing wal-push, JSON logs with program and segment, level filtering, and
//! secrets kept out of logs and `config-show`. On real clusters, file:// and S3 (moto).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::pitr::{FileRepo, Source, s3_repo};
use crate::support::cluster::{as_postgres, assert_ok, bin, chown_postgres, require_pg, wait_for};

/// Samples of a Prometheus text exposition: `name{labels}` to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {l:?}"));
            (series.to_owned(), value.parse::<f64>().unwrap_or_else(|_| panic!("value in {l:?}")))
        })
        .collect()
}

fn value(s: &BTreeMap<String, f64>, series: &str, text: &str) -> f64 {
    *s.get(series).unwrap_or_else(|| panic!("{series} missing from\n{text}"))
}

fn ts(rfc3339: &str) -> f64 {
    rfc3339.parse::<jiff::Timestamp>().expect("timestamp").as_millisecond() as f64 / 1000.0
}

fn backupctl(config: &Path, args: &[&str]) -> Output {
    as_postgres(&bin("backupctl")).arg("--config").arg(config).args(args).output().expect("backupctl")
}

/// `promtool check metrics` on `text`, when promtool is installed (Debian's `prometheus` package).
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return;
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    // promtool's lint notes (such as counters named for what they count) are not format errors; a parse error is.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("error while linting") && !err.contains("text format parsing error"), "{err}\n{text}");
}

fn archive_state(spool: &Path) -> Value {
    let text = std::fs::read_to_string(spool.join("state/archive.json")).unwrap_or_else(|_| "{}".to_owned());
    serde_json::from_str(&text).expect("archive.json")
}

fn start(label: &str, url: &str, extra: &str, textfiles: &str) -> Source {
    let logging = format!(
        "{extra}\n[log]\nformat = \"json\"\nfile = \"{textfiles}/../logs/{{program}}.log\"\n\n\
         [metrics]\ntextfile_dir = \"{textfiles}\"\nrepository_refresh = \"0s\"\n"
    );
    Source::start(label, url, &logging)
}

/// A source whose textfile and log directories exist and belong to postgres (they must exist before it starts);
/// the directories go when the returned guard is dropped.
fn source(label: &str, url: &str, extra: &str) -> (Source, PathBuf, tempfile::TempDir) {
    let holder = tempfile::Builder::new().prefix(&format!("bkctl-{label}-tf-")).tempdir().expect("tempdir");
    let textfiles = holder.path().join("textfiles");
    std::fs::create_dir_all(&textfiles).expect("mkdir");
    std::fs::create_dir_all(holder.path().join("logs")).expect("mkdir");
    chown_postgres(holder.path());
    let src = start(label, url, extra, &textfiles.display().to_string());
    (src, textfiles, holder)
}

fn spool_of(src: &Source) -> PathBuf {
    src.config.parent().expect("cfg dir").join("spool")
}

/// After archiving and a backup: the state record, wal-push's textfile, `backupctl metrics` (compared with
/// `status`), `metrics --textfile`, and wal-push's JSON log lines.
fn metrics_scenario(label: &str, url: &str, extra: &str) {
    let (src, textfiles, _dirs) = source(label, url, extra);
    let c = &src.cluster;
    c.sql("create table t as select g from generate_series(1, 10000) g");
    let last = c.switch_and_wait_archived(Duration::from_secs(60));
    let backup = src.backup_json("full");
    let after = c.switch_and_wait_archived(Duration::from_secs(60));
    assert!(after > last);

    // The state record wal-push keeps.
    let spool = spool_of(&src);
    let state = wait_for("archive.json to name the last segment", Duration::from_secs(30), || {
        let s = archive_state(&spool);
        (s["last_success"]["name"].as_str().is_some_and(|n| n >= after.as_str())).then_some(s)
    });
    assert!(state["archived_total"].as_u64().expect("archived_total") >= 3, "{state:#}");
    assert!(state["failing_since"].is_null(), "{state:#}");
    assert_eq!(state["failures_total"], 0, "{state:#}");
    assert_eq!(state["ready_count"], 0, "nothing waits once archived: {state:#}");

    // wal-push's textfile: the archive metrics only.
    let archive_prom = std::fs::read_to_string(textfiles.join("backupctl_archive.prom")).expect("archive textfile");
    let a = samples(&archive_prom);
    assert!(a.keys().all(|k| k.starts_with("backupctl_archive_")), "{archive_prom}");
    assert_eq!(value(&a, "backupctl_archive_failing", &archive_prom), 0.0);
    assert_eq!(value(&a, "backupctl_archive_lag_segments", &archive_prom), 0.0);
    assert_eq!(
        value(&a, "backupctl_archive_archived_total", &archive_prom),
        state["archived_total"].as_u64().expect("n") as f64
    );
    assert!(archive_prom.contains("# TYPE backupctl_archive_failures_total counter"), "{archive_prom}");
    promtool_accepts(&archive_prom);

    // `backupctl metrics` agrees with `status`.
    let out = backupctl(&src.config, &["metrics"]);
    assert_ok("backupctl metrics", &out);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    promtool_accepts(&text);
    let m = samples(&text);
    let status: Value = serde_json::from_slice(&src.status_json_output().stdout).expect("status JSON");
    let b = &status["backups"][0];
    assert_eq!(b["id"], backup["id"], "{status:#}");
    assert_eq!(value(&m, "backupctl_repository_up", &text), 1.0);
    assert_eq!(value(&m, "backupctl_backups{type=\"full\"}", &text), 1.0);
    assert_eq!(value(&m, "backupctl_backups{type=\"incremental\"}", &text), 0.0);
    assert_eq!(value(&m, "backupctl_newest_backup_size_bytes", &text), b["sizes"]["logical"].as_f64().expect("size"));
    assert_eq!(value(&m, "backupctl_newest_backup_stored_bytes", &text), b["sizes"]["stored"].as_f64().expect("size"));
    let window = &status["restorable_window"];
    assert_eq!(
        value(&m, "backupctl_restorable_window_start_timestamp_seconds", &text),
        ts(window["earliest"].as_str().expect("earliest"))
    );
    assert_eq!(
        value(&m, "backupctl_restorable_window_end_timestamp_seconds", &text),
        ts(window["latest"].as_str().expect("latest"))
    );
    let age = value(&m, "backupctl_newest_backup_age_seconds", &text);
    assert!((0.0..600.0).contains(&age), "{age}");
    let wal_bytes = status["wal"]["bytes_stored"].as_f64().expect("wal bytes");
    assert_eq!(value(&m, "backupctl_repository_size_bytes{kind=\"wal\"}", &text), wal_bytes);
    assert!(value(&m, "backupctl_repository_size_bytes{kind=\"data\"}", &text) > 0.0);
    assert_eq!(value(&m, "backupctl_repository_wal_gaps", &text), 0.0);
    assert_eq!(value(&m, "backupctl_archive_failing", &text), 0.0);
    assert!(value(&m, "backupctl_archive_last_success_age_seconds", &text) < 600.0);

    // `metrics --textfile`: everything but the archive metrics and the ages.
    assert_ok("metrics --textfile", &backupctl(&src.config, &["metrics", "--textfile"]));
    let full = std::fs::read_to_string(textfiles.join("backupctl.prom")).expect("full textfile");
    let f = samples(&full);
    assert_eq!(value(&f, "backupctl_backups{type=\"full\"}", &full), 1.0);
    assert!(!f.keys().any(|k| k.starts_with("backupctl_archive_") || k.contains("_age_seconds")), "{full}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(textfiles.join("backupctl.prom")).expect("stat").permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);
    promtool_accepts(&full);

    // wal-push's log: one JSON object per line, with program, level and the segment it worked on.
    let log_path = textfiles.join("../logs/wal-push.log");
    let log = std::fs::read_to_string(&log_path).expect("wal-push.log");
    let records: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let archived = records
        .iter()
        .find(|r| r["fields"]["message"].as_str().is_some_and(|m| m.starts_with("archived")))
        .unwrap_or_else(|| panic!("no 'archived' record in {log}"));
    assert_eq!(archived["program"], "wal-push", "{archived}");
    assert_eq!(archived["level"], "INFO", "{archived}");
    assert!(archived["timestamp"].as_str().is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()), "{archived}");
    let segment = archived["span"]["segment"].as_str().or(archived["fields"]["segment"].as_str()).expect("segment");
    assert_eq!(segment.len(), 24, "{archived}");

    // Level filtering: `metrics --textfile` logs one info line, which warn leaves out.
    let backupctl_log = textfiles.join("../logs/backupctl.log");
    let count =
        || std::fs::read_to_string(&backupctl_log).unwrap_or_default().matches("wrote metrics textfile").count();
    let before = count();
    assert!(before >= 1, "info records are written");
    let out = as_postgres(&bin("backupctl"))
        .env("BACKUPCTL_LOG", "backupctl=warn")
        .arg("--config")
        .arg(&src.config)
        .args(["metrics", "--textfile"])
        .output()
        .expect("backupctl");
    assert_ok("metrics --textfile at warn", &out);
    assert_eq!(count(), before, "an info record was written at level warn");
}

#[test]
fn issue_9_metrics_file_repository() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i9-metrics");
    metrics_scenario("i9-metrics", &repo.url(), "");
}

#[test]
fn issue_9_metrics_s3_repository() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i9-metrics") else { return };
    metrics_scenario("i9-metrics-s3", &url, &extra);
}

/// The HTTP endpoint, in-process as the daemon runs it, scraped with reqwest: figures from the repository and the
/// state, OpenMetrics when asked for, 404 elsewhere, and a clean stop on shutdown.
fn serve_scenario(label: &str, url: &str, extra: &str) {
    let (src, _, _dirs) = source(label, url, extra);
    let c = &src.cluster;
    c.sql("create table t as select g from generate_series(1, 1000) g");
    src.backup_json("full");
    c.switch_and_wait_archived(Duration::from_secs(60));
    crate::support::s3::use_test_credentials();
    let config = Arc::new(backupctl::config::Config::load(&src.config).expect("config"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(backupctl::metrics::serve_on(listener, config.clone(), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let url = format!("http://{addr}/metrics");
        let resp = client.get(&url).send().await.expect("scrape");
        assert_eq!(resp.status(), 200);
        let ctype = resp.headers()["content-type"].to_str().expect("type").to_owned();
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        let text = resp.text().await.expect("body");
        let m = samples(&text);
        assert_eq!(value(&m, "backupctl_repository_up", &text), 1.0);
        assert_eq!(value(&m, "backupctl_backups{type=\"full\"}", &text), 1.0);
        assert!(value(&m, "backupctl_archive_archived_total", &text) >= 2.0);
        assert_eq!(value(&m, "backupctl_state_readable{record=\"jobs\"}", &text), 1.0);

        // Prometheus asks for OpenMetrics first.
        let resp = client
            .get(&url)
            .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
            .send()
            .await
            .expect("scrape");
        let ctype = resp.headers()["content-type"].to_str().expect("type").to_owned();
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        let text = resp.text().await.expect("body");
        assert!(text.ends_with("# EOF\n") && text.contains("backupctl_archive_archived_total "), "{text}");

        let resp = client.get(format!("http://{addr}/other")).send().await.expect("get");
        assert_eq!(resp.status(), 404);
        let _ = stop.send(());
        let ended = tokio::time::timeout(Duration::from_secs(10), server).await.expect("stops on shutdown");
        ended.expect("join").expect("serve");

        // A non-loopback address is refused without allow_remote.
        let err = backupctl::metrics::serve("0.0.0.0:0".parse().expect("addr"), config.clone(), async {})
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("not a loopback address"), "{err}");
    });
}

#[test]
fn issue_9_metrics_served_over_http_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i9-serve");
    serve_scenario("i9-serve", &repo.url(), "");
}

#[test]
fn issue_9_metrics_served_over_http_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i9-serve") else { return };
    serve_scenario("i9-serve-s3", &url, &extra);
}

/// A repository wal-push cannot write: the state shows the failures and when they began, metrics and the
/// textfile say failing, the repository is still read for metrics; once it is writable again, all clears.
fn failing_scenario(label: &str, url: &str, extra: &str, break_it: &dyn Fn(&Source), repair: &dyn Fn(&Source)) {
    let (src, textfiles, _dirs) = source(label, url, &format!("{extra}\n[archive]\nretry_deadline_seconds = 2\n"));
    let c = &src.cluster;
    c.sql("create table t (i int)");
    c.switch_and_wait_archived(Duration::from_secs(60));
    let spool = spool_of(&src);
    break_it(&src);
    c.sql("insert into t values (1)");
    let stuck = c.sql("select pg_walfile_name(pg_switch_wal())");
    let state = wait_for("archive.json to record a failure", Duration::from_secs(60), || {
        let s = archive_state(&spool);
        s["failing_since"].as_str().is_some().then_some(s)
    });
    assert!(state["failures_total"].as_u64().expect("failures") >= 1, "{state:#}");
    assert_eq!(state["last_failure"]["name"], stuck.as_str(), "{state:#}");
    let error = state["last_failure"]["error"].as_str().expect("error");
    assert!(!error.is_empty() && !error.contains('\n'), "{error}");
    assert!(state["ready_count"].as_u64().expect("ready") >= 1, "the failed segment waits: {state:#}");
    let since = state["failing_since"].as_str().expect("since").to_owned();

    let out = backupctl(&src.config, &["metrics"]);
    assert_ok("metrics", &out);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let m = samples(&text);
    assert_eq!(value(&m, "backupctl_archive_failing", &text), 1.0);
    assert!(value(&m, "backupctl_archive_failures_total", &text) >= 1.0);
    assert_eq!(value(&m, "backupctl_archive_failing_since_timestamp_seconds", &text), ts(&since));
    assert!(value(&m, "backupctl_archive_lag_segments", &text) >= 1.0);
    let file = std::fs::read_to_string(textfiles.join("backupctl_archive.prom")).expect("textfile");
    assert_eq!(value(&samples(&file), "backupctl_archive_failing", &file), 1.0, "{file}");
    // Later failures keep the start of the streak.
    wait_for("a second failure", Duration::from_secs(120), || {
        (archive_state(&spool)["failures_total"].as_u64() >= Some(2)).then_some(())
    });
    assert_eq!(archive_state(&spool)["failing_since"], since.as_str());

    repair(&src);
    c.sql("insert into t values (2)");
    c.sql("select pg_switch_wal()");
    let state = wait_for("archiving to recover", Duration::from_secs(120), || {
        let s = archive_state(&spool);
        s["failing_since"].is_null().then_some(s)
    });
    assert!(state["last_success"]["name"].as_str().is_some_and(|n| n >= stuck.as_str()), "{state:#}");
    // wal-push rewrites the textfile just after archive.json: wait for it rather than race it.
    wait_for("the textfile to say archiving recovered", Duration::from_secs(30), || {
        let file = std::fs::read_to_string(textfiles.join("backupctl_archive.prom")).expect("textfile");
        (value(&samples(&file), "backupctl_archive_failing", &file) == 0.0).then_some(())
    });
}

#[test]
fn issue_9_failing_wal_push_is_recorded_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i9-fail");
    let wal = repo.dir.path().join("wal");
    let chmod = |mode: &str, p: &Path| {
        let out = Command::new("chmod").args(["-R", mode]).arg(p).output().expect("chmod");
        assert_ok("chmod", &out);
    };
    failing_scenario("i9-fail", &repo.url(), "", &|_| chmod("a-w", &wal), &|_| chmod("u+w", &wal));
}

#[test]
fn issue_9_failing_wal_push_is_recorded_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i9-fail") else { return };
    // Unwritable: point the configuration at a bucket that does not exist, then back.
    let swap = |src: &Source, from: &str, to: &str| {
        let text = std::fs::read_to_string(&src.config).expect("config");
        std::fs::write(&src.config, text.replace(from, to)).expect("config");
    };
    let bucket = url.trim_start_matches("s3://").split('/').next().expect("bucket").to_owned();
    let gone = format!("{bucket}-missing");
    failing_scenario(
        "i9-fail-s3",
        &url,
        &extra,
        &|src| swap(src, &format!("s3://{bucket}/"), &format!("s3://{gone}/")),
        &|src| swap(src, &format!("s3://{gone}/"), &format!("s3://{bucket}/")),
    );
}

/// Secrets stay out of every log (stderr and file, at trace level), of `config-show` (text and JSON), and of the
/// metrics: credentials in an endpoint URL and the PostgreSQL password.
#[test]
fn issue_9_secrets_never_logged() {
    let dir = crate::support::cluster::PgDir::new("i9-secrets");
    let logs = dir.sub("logs");
    let spool = dir.sub("spool");
    let pg_wal = dir.sub("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).expect("mkdir");
    let segment = crate::support::wal::write_segment(&pg_wal, 1, 1, 16 << 20, 7_000_000_000_000_000_001, 1);
    crate::support::wal::mark_ready(&pg_wal, "000000010000000000000001");
    chown_postgres(dir.path());
    // Credentials, so that wal-push gets as far as sending a request to the endpoint.
    crate::support::s3::use_test_credentials();
    let port = crate::support::cluster::free_port();
    let config = crate::support::cluster::write_config(
        dir.path(),
        "s3://bucket/prefix",
        &spool,
        &format!(
            "[repository.s3]\nendpoint = \"http://AKIAKEYID:topS3cr3tKey@127.0.0.1:{port}\"\nallow_http = true\n\
             force_path_style = true\n\n[archive]\nretry_deadline_seconds = 1\n\n\
             [postgres]\nhost = \"127.0.0.1\"\nport = {port}\npassword = \"pgPassw0rdS3cret\"\n\n\
             [log]\nlevel = \"trace\"\nfile = \"{}/{{program}}.log\"\n",
            logs.display()
        ),
    );
    let secrets = ["topS3cr3tKey", "pgPassw0rdS3cret"];
    let mut seen = String::new();
    let mut run = |program: &str, args: &[&str]| {
        let out = as_postgres(&bin(program)).arg("--config").arg(&config).args(args).output().expect(program);
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
        out
    };
    let push = run("wal-push", &[segment.to_str().expect("utf-8")]);
    assert!(!push.status.success(), "nothing listens on the endpoint");
    assert!(!run("base-backup", &["--type", "full"]).status.success());
    assert_ok("config-show", &run("backupctl", &["config-show"]));
    assert_ok("config-show --json", &run("backupctl", &["config-show", "--json"]));
    assert_ok("metrics", &run("backupctl", &["metrics"]));
    for entry in std::fs::read_dir(&logs).expect("logs") {
        seen.push_str(&std::fs::read_to_string(entry.expect("entry").path()).unwrap_or_default());
    }
    seen.push_str(&std::fs::read_to_string(spool.join("state/archive.json")).expect("archive.json"));
    assert!(seen.contains("wal-push") && seen.contains("base-backup"), "the logs were written:\n{seen}");
    // wal-push reached the endpoint (named, redacted, in its error) and its failure is in its log file too.
    let push_log = std::fs::read_to_string(logs.join("wal-push.log")).expect("wal-push.log");
    assert!(push_log.contains("<redacted>@127.0.0.1") && push_log.contains("ERROR"), "{push_log}");
    let stderr = String::from_utf8_lossy(&push.stderr);
    assert_eq!(stderr.matches("wal-push: error:").count(), 1, "{stderr}");
    assert!(!stderr.contains(" ERROR "), "the failure is not printed twice on stderr: {stderr}");
    for s in secrets {
        assert!(!seen.contains(s), "{s} leaked:\n{seen}");
    }
}

/// `journald = true` where no journal listens (this container): said once on stderr, and the command goes on.
#[test]
fn issue_9_journald_unreachable_is_said_once() {
    if Path::new("/run/systemd/journal/socket").exists() {
        let _ = crate::support::require::<()>("a machine without journald (to test the unreachable case)", None);
        return;
    }
    let dir = crate::support::cluster::PgDir::new("i9-journald");
    let repo = dir.sub("repo");
    let spool = dir.sub("spool");
    let config = crate::support::cluster::write_config(
        dir.path(),
        &format!("file://{}", repo.display()),
        &spool,
        "[log]\njournald = true\n",
    );
    let out = backupctl(&config, &["metrics"]);
    assert_ok("metrics with journald = true", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("journald is not reachable").count(), 1, "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("backupctl_build_info"), "the command went on");
}

/// packaging/prometheus-alerts.yml passes `promtool check rules` (Debian's `prometheus` package), and the Grafana
/// dashboard is JSON whose queries name only exported metrics (the unit test `docs_and_packaging_name_only_real_metrics`
/// checks the names).
#[test]
fn issue_9_packaging_rules_and_dashboard() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("grafana-dashboard.json")).expect("dashboard"))
            .expect("the dashboard is JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 10 && exprs.iter().all(|e| e.contains("backupctl_")), "{exprs:?}");
    let Some(promtool) = crate::support::require(
        "promtool (apt-get install prometheus)",
        Command::new("promtool").arg("--version").output().ok().filter(|o| o.status.success()),
    ) else {
        return;
    };
    drop(promtool);
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(root.join("prometheus-alerts.yml"))
        .output()
        .expect("promtool");
    assert_ok("promtool check rules", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"), "{out:?}");
}
