//! Issue 7, section 3: first-use traps. Commands run as root must not lock the PostgreSQL OS user out of its
//! repository and spool; a typo in a repository URL creates nothing; missing S3 credentials fail at once.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::pitr::{FileRepo, Source};
use crate::support::cluster::{PgDir, as_postgres, bin, require_pg, write_config};
use crate::support::wal::{segment_name, status, write_segment};

const MB: u64 = 1 << 20;

/// Every path under `dir` (itself included) owned by another uid than `uid`.
fn not_owned_by(dir: &Path, uid: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.uid() != uid {
            out.push(p.clone());
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        }
    }
    out
}

fn postgres_uid() -> u32 {
    let out = Command::new("id").args(["-u", "postgres"]).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("uid")
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out: Output = cmd.output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The issue's example: `check`, `status` and `base-backup` run as root against the postgres user's repository.
/// Writers refuse (exit 2) naming both users and the `runuser -u postgres --` command; readers work; nothing in
/// the repository or spool becomes root's; archiving and backups as postgres go on working.
#[test]
fn issue_7_root_cannot_lock_postgres_out_of_its_repository() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-root");
    let src = Source::start("i7-root", &repo.url(), "");
    let c = &src.cluster;
    c.sql("create table t (id int); insert into t select generate_series(1, 100)");
    let first = c.switch_and_wait_archived(Duration::from_secs(60));
    let spool = src.config.parent().expect("cfg dir").join("spool");
    let postgres = postgres_uid();
    assert!(not_owned_by(repo.dir.path(), postgres).is_empty());

    // Writers run as root refuse before creating anything.
    let refused = |what: &str, (code, _, err): (Option<i32>, String, String)| {
        assert_eq!(code, Some(2), "{what} as root must refuse: {err}");
        assert!(err.contains("owned by postgres") && err.contains("root"), "{what} names both users: {err}");
        assert!(err.contains("runuser -u postgres --"), "{what} says what to run: {err}");
        assert!(err.lines().all(|l| l.starts_with(what.split(' ').next().unwrap_or(what))), "{what}: {err}");
    };
    refused("backupctl check", run(Command::new(bin("backupctl")).arg("--config").arg(&src.config).arg("check")));
    refused("base-backup", run(Command::new(bin("base-backup")).arg("--config").arg(&src.config).arg("--fast")));
    refused(
        "backupctl backup",
        run(Command::new(bin("backupctl")).arg("--config").arg(&src.config).args(["backup", "full", "--fast"])),
    );
    refused("backupctl init", run(Command::new(bin("backupctl")).arg("--config").arg(&src.config).arg("init")));
    let seg = c.data.join("pg_wal").join(&first);
    refused("wal-push", run(Command::new(bin("wal-push")).arg("--config").arg(&src.config).arg(&seg)));

    // Readers work as root and create nothing.
    let (code, out, err) = run(Command::new(bin("backupctl")).arg("--config").arg(&src.config).arg("status"));
    assert_eq!(code, Some(0), "status as root: {err}");
    assert!(out.contains("wal: "), "{out}");
    let scratch = tempfile::tempdir().expect("tempdir");
    let dest = scratch.path().join("RECOVERYXLOG");
    let (code, _, err) = run(Command::new(bin("wal-fetch")).arg("--config").arg(&src.config).arg(&first).arg(&dest));
    assert_eq!(code, Some(0), "wal-fetch as root: {err}");
    assert!(dest.is_file());

    let leaked: Vec<PathBuf> =
        [repo.dir.path(), spool.as_path()].iter().flat_map(|d| not_owned_by(d, postgres)).collect();
    assert!(leaked.is_empty(), "root-owned files left behind: {leaked:?}");

    // The postgres user's archiving and backups go on working.
    c.sql("insert into t select generate_series(101, 200)");
    c.switch_and_wait_archived(Duration::from_secs(60));
    let summary = src.backup_json("full");
    assert_eq!(summary["type"], "full");
    let (code, out, err) = run(as_postgres(&bin("backupctl")).arg("--config").arg(&src.config).arg("check"));
    assert_eq!(code, Some(0), "check as postgres: {err}");
    assert!(out.contains("storage round trip"), "{out}");
}

/// Root may not create a repository or a spool (nothing it creates is writable by PostgreSQL's wal-push), and a
/// user may not create one where it cannot write.
#[test]
fn issue_7_root_never_creates_a_repository_or_spool() {
    if require_pg().is_none() {
        return;
    }
    let dir = PgDir::new("i7-rootcreate");
    let cfg =
        write_config(dir.path(), &format!("file://{}/new-repo", dir.path().display()), &dir.path().join("spool"), "");
    let (code, _, err) = run(Command::new(bin("backupctl")).arg("--config").arg(&cfg).arg("init"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("owned by postgres") && err.contains("runuser -u postgres --"), "{err}");
    // Under a root-owned parent, root is refused too: it would create a root-owned repository.
    let root_dir = tempfile::tempdir().expect("tempdir");
    let cfg2 = write_config(
        root_dir.path(),
        &format!("file://{}/new-repo", root_dir.path().display()),
        &root_dir.path().join("spool"),
        "",
    );
    let (code, _, err) = run(Command::new(bin("backupctl")).arg("--config").arg(&cfg2).arg("init"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("root may not create it"), "{err}");
    let seg = write_segment(root_dir.path(), 1, 1, MB, 42, 1);
    let (code, err) =
        status(&Command::new(bin("wal-push")).arg("--config").arg(&cfg2).arg(&seg).output().expect("push"));
    assert_eq!(code, Some(2), "{err}");
    assert!(!root_dir.path().join("new-repo").exists() && !root_dir.path().join("spool").exists(), "nothing created");
    assert!(!dir.path().join("new-repo").exists() && !dir.path().join("spool").exists(), "nothing created");
    // As postgres, init creates it.
    let (code, out, err) = run(as_postgres(&bin("backupctl")).arg("--config").arg(&cfg).arg("init"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("created repository"), "{out}");
    assert!(not_owned_by(&dir.path().join("new-repo"), postgres_uid()).is_empty());
    // A spool that root owns (left by an earlier version run as root): postgres is told to take it back, not to
    // run as root.
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("mkdir");
    let (code, _, err) = run(as_postgres(&bin("backupctl")).arg("--config").arg(&cfg).arg("check"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is owned by root, not by postgres"), "{err}");
    assert!(err.contains("chown -R postgres:postgres") && !err.contains("runuser -u root"), "{err}");
}

/// A typo in a file:// URL: check, status, pitr-restore and wal-fetch refuse "no repository at <url>" and create
/// nothing; `backupctl init` creates it, once.
#[test]
fn issue_7_typo_in_file_url_creates_nothing() {
    if require_pg().is_none() {
        return;
    }
    let dir = PgDir::new("i7-typo");
    let spool = dir.sub("spool");
    let typo = dir.path().join("reop/main");
    let url = format!("file://{}", typo.display());
    let cfg = write_config(dir.path(), &url, &spool, "");
    let dest = dir.path().join("restore-here");
    let wal_dest = dir.path().join("RECOVERYXLOG");
    let cases: Vec<(&str, Command, i32)> = vec![
        (
            "backupctl check",
            {
                let mut c = as_postgres(&bin("backupctl"));
                c.arg("--config").arg(&cfg).arg("check");
                c
            },
            1,
        ),
        (
            "backupctl status",
            {
                let mut c = as_postgres(&bin("backupctl"));
                c.arg("--config").arg(&cfg).arg("status");
                c
            },
            1,
        ),
        (
            "pitr-restore",
            {
                let mut c = as_postgres(&bin("pitr-restore"));
                c.arg("--config").arg(&cfg).arg("--destination").arg(&dest);
                c
            },
            1,
        ),
        (
            "wal-fetch",
            {
                let mut c = as_postgres(&bin("wal-fetch"));
                c.arg("--config").arg(&cfg).arg(segment_name(1, 3, 16 * MB)).arg(&wal_dest);
                c
            },
            255,
        ),
    ];
    for (what, mut cmd, want) in cases {
        let (code, _, err) = run(&mut cmd);
        assert_eq!(code, Some(want), "{what}: {err}");
        assert!(err.contains(&format!("no repository at {url}")), "{what}: {err}");
        assert!(!dir.path().join("reop").exists(), "{what} created the mistyped path");
        assert!(!dest.exists() && !wal_dest.exists(), "{what} wrote a destination");
    }
    // A repository root that exists but is empty is no repository either.
    std::fs::create_dir_all(&typo).expect("mkdir");
    crate::support::cluster::chown_postgres(&dir.path().join("reop"));
    let (code, _, err) = run(as_postgres(&bin("backupctl")).arg("--config").arg(&cfg).arg("status"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no repository at"), "{err}");

    let (code, out, err) = run(as_postgres(&bin("backupctl")).arg("--config").arg(&cfg).arg("init"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("created repository"), "{out}");
    let (code, out, err) = run(as_postgres(&bin("backupctl")).arg("--config").arg(&cfg).arg("init"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("already exists"), "{out}");
    let (code, out, err) = run(as_postgres(&bin("backupctl")).arg("--config").arg(&cfg).arg("check"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("storage round trip"), "{out}");
    // An initialised repository answers "not in the archive" (exit 1) for a segment it lacks.
    let mut fetch = as_postgres(&bin("wal-fetch"));
    let (code, _, err) = run(fetch.arg("--config").arg(&cfg).arg(segment_name(1, 3, 16 * MB)).arg(&wal_dest));
    assert_eq!(code, Some(1), "{err}");
}

fn s3_config_file(dir: &Path, url: &str, endpoint: &str, extra: &str) -> PathBuf {
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).expect("spool");
    let path = dir.join("backupctl.toml");
    std::fs::write(
        &path,
        format!(
            "[repository]\nurl = \"{url}\"\n[repository.s3]\nendpoint = \"{endpoint}\"\nforce_path_style = true\n\
             allow_http = true\n[spool]\npath = \"{}\"\n{extra}\n",
            spool.display()
        ),
    )
    .expect("config");
    path
}

/// S3: a prefix holding nothing, or a bucket that does not exist, is no repository; no bucket is ever created.
#[test]
fn issue_7_s3_typo_creates_nothing() {
    let Some(server) = crate::support::s3::server() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bucket = rt.block_on(server.new_bucket("i7-typo"));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("s3://{bucket}/typo");
    let cfg = s3_config_file(dir.path(), &url, &server.endpoint, "");
    let (code, _, err) = run(Command::new(bin("backupctl")).arg("--config").arg(&cfg).arg("status"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("no repository at {url}")), "{err}");
    let (code, _, err) = run(Command::new(bin("backupctl")).arg("--config").arg(&cfg).arg("check"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no repository at"), "{err}");
    let listed = rt.block_on(server.client().list_objects_v2().bucket(&bucket).send()).expect("list");
    assert!(listed.contents().is_empty(), "check wrote into a prefix that is no repository: {listed:?}");

    let missing = format!("{bucket}-missing");
    let dir_missing = tempfile::tempdir().expect("tempdir");
    let cfg_missing = s3_config_file(dir_missing.path(), &format!("s3://{missing}/p"), &server.endpoint, "");
    for args in [&["status"][..], &["init"][..]] {
        let (code, _, err) = run(Command::new(bin("backupctl")).arg("--config").arg(&cfg_missing).args(args));
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("NoSuchBucket") && err.lines().count() <= 2, "{args:?}: {err}");
    }
    let buckets = rt.block_on(server.client().list_buckets().send()).expect("buckets");
    assert!(!buckets.buckets().iter().any(|b| b.name() == Some(missing.as_str())), "a bucket was created");

    let (code, out, err) = run(Command::new(bin("backupctl")).arg("--config").arg(&cfg).arg("init"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("created repository"), "{out}");
    let (code, _, err) = run(Command::new(bin("backupctl")).arg("--config").arg(&cfg).arg("status"));
    assert_eq!(code, Some(0), "{err}");
}

/// No AWS credentials anywhere: a configuration error at once (exit 2; wal-fetch 255), naming the sources of the
/// credential chain, not a transient error retried until the deadline.
#[test]
fn issue_7_missing_s3_credentials_fail_at_once() {
    let Some(server) = crate::support::s3::server() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bucket = rt.block_on(server.new_bucket("i7-creds"));
    let dir = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("empty home");
    let cfg = s3_config_file(
        dir.path(),
        &format!("s3://{bucket}/p"),
        &server.endpoint,
        "[archive]\nretry_deadline_seconds = 30",
    );
    let seg = write_segment(dir.path(), 1, 1, MB, 77, 1);
    let bare = |program: &str| {
        let mut c = Command::new(bin(program));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                c.env_remove(&k);
            }
        }
        c.env("HOME", home.path()).env("AWS_EC2_METADATA_DISABLED", "true").arg("--config").arg(&cfg);
        c
    };
    let cases: Vec<(&str, Command, i32)> = vec![
        (
            "wal-push",
            {
                let mut c = bare("wal-push");
                c.arg(&seg);
                c
            },
            2,
        ),
        (
            "wal-fetch",
            {
                let mut c = bare("wal-fetch");
                c.arg(segment_name(1, 1, MB)).arg(dir.path().join("dest"));
                c
            },
            255,
        ),
        (
            "backupctl status",
            {
                let mut c = bare("backupctl");
                c.arg("status");
                c
            },
            2,
        ),
    ];
    for (what, mut cmd, want) in cases {
        let started = Instant::now();
        let (code, _, err) = run(&mut cmd);
        let took = started.elapsed();
        assert_eq!(code, Some(want), "{what}: {err}");
        assert!(took < Duration::from_secs(10), "{what} took {took:?}: the deadline is 30 s; {err}");
        assert!(err.contains("no AWS credentials found"), "{what}: {err}");
        for source in ["environment variables", "~/.aws/credentials", "web identity", "ECS", "instance metadata"] {
            assert!(err.contains(source), "{what} names {source}: {err}");
        }
        assert!(!err.contains("retrying") && !err.contains("attempt"), "{what} was retried: {err}");
    }
    assert!(!dir.path().join("dest").exists());
}

/// base-backup with a mistyped file:// URL, while PostgreSQL archives into the real repository: refused at once,
/// before any data is copied, naming the URL and the WAL already archived; the mistyped path is not created.
#[test]
fn issue_7_base_backup_with_a_mistyped_url_copies_nothing() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i7-bb-typo");
    let src = Source::start("i7-bb-typo", &repo.url(), "");
    src.cluster.switch_and_wait_archived(Duration::from_secs(120));
    let typo = src.dir.path().join("rpeo");
    let text = std::fs::read_to_string(&src.config).expect("config");
    assert!(text.contains(&repo.url()), "{text}");
    let mistyped = src.dir.path().join("mistyped.toml");
    std::fs::write(&mistyped, text.replace(&repo.url(), &format!("file://{}", typo.display()))).expect("config");
    crate::support::cluster::chown_postgres(&mistyped);
    let started = Instant::now();
    let (code, _, err) = run(as_postgres(&bin("base-backup")).arg("--config").arg(&mistyped).args(["--fast"]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no repository at") && err.contains("already archived"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "refused before copying and waiting: {err}");
    assert!(!typo.exists(), "the mistyped repository was created");
    // The real repository takes the backup.
    src.backup_json("full");
}
