//! Issue 7, section 3: what a new user meets first. A closed stdout ends every program quietly; each binary's
//! `--help` says what it is for (and, for wal-push and wal-fetch, its exit statuses); `--json-output` (alias
//! `--json`) on every command that prints results; `status` shows descriptions and the archived WAL range.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::pitr::{FileRepo, Source};
use crate::support::cluster::{as_postgres, assert_ok, bin, require_pg};
use crate::support::wal::{WalDir, push, write_segment};

const MB: u64 = 1 << 20;
const SYSID: u64 = 7_312_345_678_901_234_567;

/// A file:// repository holding a few synthetic segments, and a configuration for it (no cluster needed).
struct Repo {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Repo {
    fn with_segments(segnos: &[u64]) -> Self {
        let WalDir { dir, config, pg_wal } = WalDir::new("[archive]\npush_ahead = 0");
        for &segno in segnos {
            let seg = write_segment(&pg_wal, 1, segno, 16 * MB, SYSID, segno);
            assert_ok("wal-push", &push(&config, &seg));
        }
        Self { dir, config }
    }

    fn backupctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backupctl"));
        c.arg("--config").arg(&self.config).args(args);
        c
    }
}

/// Run with stdout connected to a pipe whose reading end is already closed (as `| head -1` after its line).
fn with_closed_stdout(mut cmd: Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdout(Stdio::from(writer)).stderr(Stdio::piped()).output().expect("spawn")
}

/// `backupctl status | head -1` and every other printing path: exit 0, no panic, no stack trace.
#[test]
fn issue_7_closed_stdout_ends_quietly() {
    let repo = Repo::with_segments(&[1, 2, 3]);
    let cfg = repo.config.to_str().expect("utf-8 path");
    let cases: Vec<(&str, Command)> = vec![
        ("status", repo.backupctl(&["status"])),
        ("status --json-output", repo.backupctl(&["status", "--json-output"])),
        ("config-show", repo.backupctl(&["config-show"])),
        ("check", repo.backupctl(&["check"])),
        ("backupctl --help", repo.backupctl(&["--help"])),
        ("backupctl status --help", repo.backupctl(&["status", "--help"])),
        ("wal-push --help", {
            let mut c = Command::new(env!("CARGO_BIN_EXE_wal-push"));
            c.args(["--config", cfg, "--help"]);
            c
        }),
        ("wal-fetch --help", {
            let mut c = Command::new(env!("CARGO_BIN_EXE_wal-fetch"));
            c.arg("--help");
            c
        }),
        ("base-backup --version", {
            let mut c = Command::new(env!("CARGO_BIN_EXE_base-backup"));
            c.arg("--version");
            c
        }),
        ("pitr-restore --help", {
            let mut c = Command::new(env!("CARGO_BIN_EXE_pitr-restore"));
            c.arg("--help");
            c
        }),
    ];
    for (what, cmd) in cases {
        let out = with_closed_stdout(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{what}: {err}");
        assert_eq!(out.status.code(), Some(0), "{what}: {err}");
        assert!(err.trim().is_empty(), "{what} must end quietly on a closed pipe, wrote: {err}");
    }
    // A real `| head -1` as a DBA types it, for good measure.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' --config '{cfg}' status | head -1", env!("CARGO_BIN_EXE_backupctl")))
        .output()
        .expect("sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("repository: "), "{out:?}");
}

fn help(program: &str, args: &[&str]) -> String {
    let out = Command::new(bin(program)).args(args).output().expect("spawn");
    assert_ok(&format!("{program} {args:?}"), &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each binary's --help says what it is for; wal-push and wal-fetch list their exit statuses; wal-fetch's usage
/// shows both arguments as required; every command that prints results offers --json-output.
#[test]
fn issue_7_help_says_what_each_program_is_for() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("wal-push", &["--help"], &["PostgreSQL's archive_command", "Exit status", "0 ", "1 ", "2 ", "<WAL_PATH>"]),
        (
            "wal-fetch",
            &["--help"],
            &["PostgreSQL's restore_command", "Exit status", "255", "Usage: wal-fetch [OPTIONS] <NAME> <DEST>"],
        ),
        ("base-backup", &["--help"], &["base backup", "Exit status", "--json-output"]),
        ("pitr-restore", &["--help"], &["point-in-time", "Exit status", "--json-output"]),
        ("backupctl", &["--help"], &["status", "check", "config-show", "Exit status"]),
        ("backupctl", &["status", "--help"], &["--json-output", "archived WAL"]),
        ("backupctl", &["check", "--help"], &["--json-output"]),
        ("backupctl", &["config-show", "--help"], &["--json-output"]),
        ("backupctl", &["backup", "--help"], &["--json-output"]),
        ("backupctl", &["restore", "--help"], &["--json-output"]),
        ("backupctl", &["wal-fetch", "--help"], &["<NAME> <DEST>", "255"]),
    ];
    for (program, args, wanted) in cases {
        let text = help(program, args);
        for w in *wanted {
            assert!(text.contains(w), "{program} {args:?} --help lacks {w:?}:\n{text}");
        }
    }
    // -h stays short: the one-line summary.
    let short = help("wal-push", &["-h"]);
    assert!(short.contains("PostgreSQL's archive_command") && short.lines().count() < 15, "{short}");
}

fn json(out: &Output, what: &str) -> serde_json::Value {
    assert_ok(what, out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {out:?}"))
}

/// `status`, `check` and `config-show` print JSON with `--json-output` and its alias `--json`; status's JSON holds
/// the archived WAL range, the last archived segment and when it was archived.
#[test]
fn issue_7_json_output_everywhere() {
    let repo = Repo::with_segments(&[4, 5, 6]);
    for flag in ["--json-output", "--json"] {
        let status = json(&repo.backupctl(&["status", flag]).output().expect("status"), "status");
        let wal = &status["wal"];
        assert_eq!(wal["first"], "000000010000000000000004", "{status}");
        assert_eq!(wal["last"], "000000010000000000000006", "{status}");
        assert_eq!(wal["segments"], 3, "{status}");
        let when = wal["last_archived_at"].as_str().unwrap_or_else(|| panic!("last_archived_at: {status}"));
        assert!(time::OffsetDateTime::parse(when, &time::format_description::well_known::Rfc3339).is_ok(), "{when}");
        assert!(status["backups"].as_array().is_some_and(Vec::is_empty), "{status}");
        assert_eq!(status["cluster"]["system_identifier"], SYSID.to_string(), "{status}");

        let check = json(&repo.backupctl(&["check", flag]).output().expect("check"), "check");
        assert_eq!(check["ok"], true, "{check}");
        assert!(check["repository"].as_str().is_some_and(|r| r.starts_with("file://")), "{check}");

        let shown = json(&repo.backupctl(&["config-show", flag]).output().expect("config-show"), "config-show");
        assert!(shown["config"]["repository"]["url"].as_str().is_some_and(|u| u.ends_with("/repo")), "{shown}");
        assert_eq!(shown["path"], repo.config.to_str().expect("utf-8"), "{shown}");
    }
    drop(repo.dir);
}

/// config-show never prints credentials embedded in an endpoint URL.
#[test]
fn issue_7_config_show_redacts_endpoint_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("b.toml");
    std::fs::write(
        &config,
        "[repository]\nurl = \"s3://b/p\"\n[repository.s3]\nendpoint = \"https://user:s3cr3t@minio.internal:9000/\"\n\
         [spool]\npath = \"/tmp/spool-never-used\"\n",
    )
    .expect("config");
    for args in [&["config-show"][..], &["config-show", "--json-output"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_backupctl")).arg("--config").arg(&config).args(args).output();
        let out = out.expect("config-show");
        assert_ok("config-show", &out);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("s3cr3t"), "{args:?} prints the secret: {text}");
        assert!(text.contains("minio.internal:9000"), "{args:?}: {text}");
    }
}

/// On a real backup: status's text shows the backup's description, its JSON the same, and the WAL range covers
/// the backup's WAL; base-backup and pitr-restore take --json-output as well as --json.
#[test]
fn issue_7_status_shows_description_and_wal_range() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-status");
    let src = Source::start("i7-status", &repo.url(), "");
    let out = src.base_backup(&["--fast", "--json-output", "--description", "before the 3 a.m. upgrade"]);
    let summary = json(&out, "base-backup --json-output");
    let id = summary["id"].as_str().expect("id");

    let status = |args: &[&str]| {
        as_postgres(&bin("backupctl")).arg("--config").arg(&src.config).arg("status").args(args).output()
    };
    let out = status(&[]).expect("status");
    assert_ok("status", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(id) && text.contains("before the 3 a.m. upgrade"), "{text}");

    let value = json(&status(&["--json-output"]).expect("status"), "status --json-output");
    assert_eq!(value["backups"][0]["description"], "before the 3 a.m. upgrade", "{value}");
    let stop_wal = summary["stop_wal"].as_str().expect("stop_wal");
    let last = value["wal"]["last"].as_str().expect("wal.last");
    assert!(last >= stop_wal, "the archive ends at {last}, before the backup's {stop_wal}");
    assert!(value["wal"]["last_archived_at"].is_string(), "{value}");

    let dest = src.dir.sub("restored");
    std::fs::remove_dir(&dest).expect("rmdir");
    let out = src.restore(&dest, &["--json-output", "--archive-mode", "off"]);
    let restored = json(&out, "pitr-restore --json-output");
    assert_eq!(restored["backup"], id, "{restored}");
    assert!(Path::new(&dest).join("PG_VERSION").is_file());
}

/// The same WAL range and archive time from an S3 repository (the time comes from the object's LastModified).
#[test]
fn issue_7_status_json_on_s3() {
    let Some(server) = crate::support::s3::server() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bucket = rt.block_on(server.new_bucket("i7-status"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("spool")).expect("spool");
    let config = dir.path().join("backupctl.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"s3://{bucket}/p\"\n[repository.s3]\nendpoint = \"{}\"\nforce_path_style = true\n\
             allow_http = true\n[spool]\npath = \"{}/spool\"\n[archive]\npush_ahead = 0\n",
            server.endpoint,
            dir.path().display()
        ),
    )
    .expect("config");
    for segno in [8, 9] {
        let seg = write_segment(dir.path(), 1, segno, 16 * MB, SYSID, segno);
        assert_ok("wal-push", &push(&config, &seg));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_backupctl"))
        .arg("--config")
        .arg(&config)
        .args(["status", "--json-output"])
        .output()
        .expect("status");
    let status = json(&out, "status --json-output");
    assert_eq!(status["wal"]["first"], "000000010000000000000008", "{status}");
    assert_eq!(status["wal"]["last"], "000000010000000000000009", "{status}");
    assert!(status["wal"]["last_archived_at"].is_string(), "{status}");
}

/// Run with stderr connected to a pipe whose reading end is closed (a server log that went away).
fn with_closed_stderr(mut cmd: Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdout(Stdio::piped()).stderr(Stdio::from(writer)).output().expect("spawn")
}

/// wal-push and wal-fetch write their log to stderr (PostgreSQL's server log): when it is gone they neither die
/// half-way nor change their exit status (a panic's 101 from wal-fetch would read as "not in the archive").
#[test]
fn issue_7_closed_stderr_changes_nothing() {
    let repo = Repo::with_segments(&[1]);
    let pg_wal = repo.dir.path().join("pg_wal");
    let seg = write_segment(&pg_wal, 1, 2, 16 * MB, SYSID, 2);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wal-push"));
    cmd.arg("--config").arg(&repo.config).arg(&seg);
    assert_eq!(with_closed_stderr(cmd).status.code(), Some(0), "wal-push with a closed log");

    let fetch = |name: &str, config: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wal-fetch"));
        cmd.arg("--config").arg(config).arg(name).arg(repo.dir.path().join("RECOVERYXLOG"));
        with_closed_stderr(cmd).status.code()
    };
    assert_eq!(fetch("000000010000000000000002", &repo.config), Some(0), "a stored segment");
    assert_eq!(fetch("000000010000000000000009", &repo.config), Some(1), "not in the archive");
    let bad = repo.dir.path().join("bad.toml");
    std::fs::write(&bad, "[repository]\nurl = 5\n").expect("config");
    assert_eq!(fetch("000000010000000000000002", &bad), Some(255), "an error, reported to a closed log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wal-push"));
    cmd.arg("--config").arg(&bad).arg(&seg);
    assert_eq!(with_closed_stderr(cmd).status.code(), Some(2), "wal-push: bad configuration");
}
