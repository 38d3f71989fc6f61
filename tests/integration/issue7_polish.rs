//! Issue 7 section 3, polish: credentials refused by the instance metadata service fail at once.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cluster::bin;

/// Without AWS credentials on a host whose instance metadata service answers but refuses (HTTP 403 "IMDS is
/// disabled", as on this machine and on an EC2 host with IMDS turned off), the command fails at once naming the
/// sources tried, rather than retrying for the whole deadline.
#[test]
fn issue_7_imds_refusal_is_no_credentials() {
    let Some(server) = crate::support::s3::server() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bucket = rt.block_on(server.new_bucket("i7-imds"));
    let dir = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("empty home");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("spool");
    let cfg = dir.path().join("backupctl.toml");
    std::fs::write(
        &cfg,
        format!(
            "[repository]\nurl = \"s3://{bucket}/p\"\n[repository.s3]\nendpoint = \"{}\"\nforce_path_style = true\n\
             allow_http = true\n[spool]\npath = \"{}\"\n[archive]\nretry_deadline_seconds = 30\n",
            server.endpoint,
            spool.display()
        ),
    )
    .expect("config");
    let mut c = Command::new(bin("backupctl"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            c.env_remove(&k);
        }
    }
    c.env("HOME", home.path()).arg("--config").arg(&cfg).arg("status");
    let started = Instant::now();
    let out = c.output().expect("run backupctl");
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert!(err.contains("no AWS credentials found"), "{err}");
    assert!(!err.contains("retrying") && !err.contains("attempt"), "was retried: {err}");
}

/// `backupctl init` says "created repository" once, on stdout (not again as a log line on stderr); it takes
/// `--json-output`, also before the subcommand.
#[test]
fn issue_7_init_reports_once_and_takes_json_output() {
    use crate::support::cluster::{PgDir, as_postgres, require_pg, write_config};
    if require_pg().is_none() {
        return;
    }
    let dir = PgDir::new("i7-init");
    let url = format!("file://{}/repo", dir.path().display());
    let cfg = write_config(dir.path(), &url, &dir.path().join("spool"), "");
    let out = as_postgres(&bin("backupctl")).arg("--config").arg(&cfg).arg("init").output().expect("init");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.matches("created repository").count(), 1, "{stdout}");
    assert!(!stderr.contains("created repository"), "said twice: {stderr}");
    for args in [&["init", "--json-output"][..], &["--json", "init"]] {
        let out = as_postgres(&bin("backupctl")).arg("--config").arg(&cfg).args(args).output().expect("init");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert_eq!(v["created"], false, "{v}");
        assert_eq!(v["format"], 2, "a new repository is format 2: {v}");
    }
    let out = as_postgres(&bin("backupctl")).arg("--config").arg(&cfg).args(["--json-output", "status"]).output();
    let out = out.expect("status");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("status as JSON");
}
