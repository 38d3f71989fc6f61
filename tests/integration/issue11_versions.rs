//! Issue 11: every supported PostgreSQL major (13 to 18) on a real cluster of that major, one test function each
//! so that a failure names the version: archive with wal-push, a full then an incremental base-backup, pitr-restore
//! to a restore point or an LSN between two changes, the restored cluster started (wal-fetch as its
//! restore_command) and its data compared with the source's at the target, `backupctl check` and `verify`.
//!
//! What differs per major is checked on the cluster itself: the WAL page magic and `pg_control` version it writes
//! against the library's table, the backup functions base-backup called (13/14 `pg_start_backup`, 15+
//! `pg_backup_start`, from the server log), data checksums (on by default in 18; `--data-checksums` on 13 so that
//! page verification runs on an old major too), and the recovery files pitr-restore writes (`recovery.signal`
//! and `postgresql.auto.conf`, the same from 12 on). A version the library does not support is refused: a real
//! PostgreSQL 12 cluster (wal-push, base-backup, check), wal-push on segments of 10-12 or an unknown major, and
//! pitr-restore of a backup recorded as 12 or 19.
//!
//! Server binaries: Debian's 15, and the others from npm in /opt/backupctl/pg<major> (scripts/setup.sh); psql is
//! 15's for all (pg_dump 15 refuses newer servers, so data is compared with SQL fingerprints, not dumps).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use backupctl::wal::version::{Major, SUPPORTED};

use crate::pitr::FileRepo;
use crate::support::cluster::{
    Cluster, PgDir, as_postgres, assert_ok, bin, chown_postgres, require_pg, require_pg_major, wait_for, write_config,
};
use crate::support::raw::Raw;
use crate::support::wal::{WalDir, files_under, push, status, write_segment};

/// Where a smoke path restores to.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// A named restore point (`pg_create_restore_point`).
    Name,
    /// The LSN just after the second change.
    Lsn,
}

/// A cluster of one major archiving into a file:// repository, and its configuration.
struct Source {
    dir: PgDir,
    cluster: Cluster,
    config: PathBuf,
}

impl Source {
    fn start(server_bin: &Path, major: u32, url: &str, initdb_args: &[&str]) -> Self {
        let mut src = Self::init(server_bin, major, url, initdb_args);
        src.cluster.start();
        src
    }

    /// initdb and configure, not started.
    fn init(server_bin: &Path, major: u32, url: &str, initdb_args: &[&str]) -> Self {
        let dir = PgDir::new(&format!("pg{major}"));
        let cfg_dir = dir.sub("cfg");
        std::fs::create_dir_all(cfg_dir.join("spool")).expect("mkdir");
        let placeholder = write_config(&cfg_dir, url, &cfg_dir.join("spool"), "");
        // log_statement shows which backup functions base-backup called.
        let conf = format!(
            "archive_mode = on\narchive_command = '{} --config {} %p'\nlog_statement = 'all'\n",
            bin("wal-push").display(),
            placeholder.display()
        );
        let cluster = Cluster::init_with_args(server_bin, &dir, "src", &conf, initdb_args);
        let config = write_config(
            &cfg_dir,
            url,
            &cfg_dir.join("spool"),
            &format!(
                "[postgres]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\n\n[backup]\narchive_timeout_seconds = 120\n",
                cluster.socket.display(),
                cluster.port
            ),
        );
        chown_postgres(dir.path());
        Self { dir, cluster, config }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        as_postgres(&bin(program)).arg("--config").arg(&self.config).args(args).output().expect(program)
    }

    fn backup(&self, kind: &str) -> serde_json::Value {
        let out = self.run("base-backup", &["--fast", "--json", "--type", kind]);
        assert_ok(&format!("base-backup --type {kind}"), &out);
        serde_json::from_slice(&out.stdout).expect("base-backup --json prints JSON")
    }
}

/// Rows of `t` in id order, as one digest with the count: equal data gives equal text.
fn fingerprint(c: &Cluster) -> String {
    c.sql("select count(*) || ':' || md5(coalesce(string_agg(id || ',' || batch || ',' || pad, ';' order by id), '')) from t")
}

/// The WAL page magic of the segment the server writes now, and `pg_control_version` from `global/pg_control`
/// (a uint32 8 bytes in, after the system identifier: ControlFileData in src/include/catalog/pg_control.h).
fn on_disk_versions(c: &Cluster) -> (u16, u32) {
    let segment = c.sql("select pg_walfile_name(pg_current_wal_lsn())");
    let wal = std::fs::read(c.data.join("pg_wal").join(&segment)).expect("read segment");
    let control = std::fs::read(c.data.join("global/pg_control")).expect("read pg_control");
    (u16::from_le_bytes([wal[0], wal[1]]), u32::from_le_bytes([control[8], control[9], control[10], control[11]]))
}

/// The smoke path on `major`; returns the source (running) for extra checks.
fn smoke(major: u32, stop: Stop, initdb_args: &[&str], has_checksums: bool) -> Option<(Source, FileRepo, String)> {
    require_pg()?;
    let server_bin = require_pg_major(major)?;
    let t0 = Instant::now();
    let entry: &Major = SUPPORTED.iter().find(|m| m.major == major).expect("a supported major");
    let repo = FileRepo::new(&format!("pg{major}"));
    let src = Source::start(&server_bin, major, &repo.url(), initdb_args);
    let c = &src.cluster;
    let version_num: u32 = c.sql("show server_version_num").parse().expect("number");
    assert_eq!(version_num / 10_000, major, "{} is not PostgreSQL {major}", server_bin.display());
    assert_eq!(Major::of_version_num(version_num), Ok(entry));

    // What this major writes on disk is what the library's table says.
    let (magic, control) = on_disk_versions(c);
    assert_eq!(magic, entry.wal_page_magic, "PostgreSQL {major} WAL page magic 0x{magic:04X}");
    assert_eq!(Major::of_wal_page_magic(magic), Ok(entry));
    assert_eq!(control, entry.pg_control_version, "PostgreSQL {major} pg_control version");
    assert_eq!(c.sql("select pg_control_version from pg_control_system()"), control.to_string());
    assert_eq!(c.sql("show data_checksums"), if has_checksums { "on" } else { "off" }, "PostgreSQL {major}");

    c.sql("create table t (id int primary key, batch int not null, pad text not null)");
    c.sql("insert into t select g, 0, md5(g::text) from generate_series(1, 3000) g");
    let full = src.backup("full");
    assert_eq!(full["type"], "full", "{full}");
    assert_eq!(full["pg_version_num"].as_u64(), Some(u64::from(version_num)), "{full}");
    let checksums = if has_checksums { "verified" } else { "off" };
    assert_eq!(full["page_checksums"], checksums, "{full}");
    if has_checksums {
        assert!(full["pages_verified"].as_u64().is_some_and(|n| n > 10), "{full}");
        assert_eq!(full["corrupt_pages"], serde_json::json!([]), "{full}");
    }

    // Change 1, then an incremental on top of the full.
    c.sql("update t set batch = 1, pad = md5(pad) where id % 10 = 0");
    c.sql("insert into t select g, 1, md5(g::text) from generate_series(3001, 3500) g");
    let incr = src.backup("incremental");
    assert_eq!(incr["type"], "incremental", "{incr}");
    let incr_id = incr["id"].as_str().expect("id").to_owned();

    // Change 2, the target, change 3 (which the restore must not hold).
    c.sql("delete from t where id % 7 = 0");
    c.sql("insert into t select g, 2, md5(g::text) from generate_series(3501, 3800) g");
    let at_target = fingerprint(c);
    let name = format!("issue11_pg{major}");
    let target_args: Vec<String> = match stop {
        Stop::Name => {
            c.sql(&format!("select pg_create_restore_point('{name}')"));
            vec!["--to-name".into(), name.clone()]
        }
        Stop::Lsn => vec!["--to-lsn".into(), c.sql("select pg_current_wal_lsn()")],
    };
    c.sql("update t set batch = 3, pad = 'after the target' where id % 3 = 0");
    c.sql("insert into t select g, 3, md5(g::text) from generate_series(3801, 4000) g");
    assert_ne!(fingerprint(c), at_target);
    c.switch_and_wait_archived(Duration::from_secs(120));

    // The backup API this major has, as the server log shows base-backup called it.
    let log = c.log_text();
    let (used, other) = if entry.has_pg_backup_start {
        (["pg_backup_start(", "pg_backup_stop("], "pg_start_backup(")
    } else {
        (["pg_start_backup(", "pg_stop_backup("], "pg_backup_start(")
    };
    for f in used {
        assert!(log.contains(f), "PostgreSQL {major}: base-backup did not call {f}");
    }
    assert!(!log.contains(other), "PostgreSQL {major}: base-backup called {other}");

    // `backupctl check` on this major: the connection, the version and pg_control checks, a WAL switch archived.
    let out = src.run("backupctl", &["check"]);
    assert_ok(&format!("PostgreSQL {major}: backupctl check"), &out);

    // Restore the incremental to the target.
    let dest = src.dir.sub("restored");
    std::fs::remove_dir(&dest).expect("pitr-restore creates the destination itself");
    let mut args: Vec<&str> = vec!["--destination", dest.to_str().expect("utf-8"), "--archive-mode", "off"];
    args.extend(target_args.iter().map(String::as_str));
    let out = src.run("pitr-restore", &args);
    assert_ok(&format!("pitr-restore {args:?}"), &out);
    // Recovery is requested the 12+ way: recovery.signal plus settings in postgresql.auto.conf, no recovery.conf.
    assert!(dest.join("recovery.signal").is_file(), "PostgreSQL {major}: no recovery.signal");
    assert!(!dest.join("standby.signal").exists() && !dest.join("recovery.conf").exists());
    let auto = std::fs::read_to_string(dest.join("postgresql.auto.conf")).expect("postgresql.auto.conf");
    assert!(auto.contains("restore_command = '") && auto.contains("wal-fetch"), "{auto}");
    match stop {
        Stop::Name => assert!(auto.contains(&format!("recovery_target_name = '{name}'")), "{auto}"),
        Stop::Lsn => assert!(auto.contains(&format!("recovery_target_lsn = '{}'", target_args[1])), "{auto}"),
    }
    assert_eq!(auto.contains("promote_trigger_file"), major <= 15, "PostgreSQL {major} knows it until 15: {auto}");
    let mut copy = Cluster::at(&c.bin, &dest, &c.socket);
    copy.start();
    wait_for(&format!("PostgreSQL {major} recovery to finish"), Duration::from_secs(180), || {
        copy.try_sql("select pg_is_in_recovery()").stdout.starts_with(b"f").then_some(())
    });
    let copy_log = copy.log_text();
    assert!(!copy_log.contains("FATAL") && !copy_log.contains("PANIC"), "PostgreSQL {major}: {copy_log}");
    assert!(copy_log.contains("restored log file"), "PostgreSQL {major} did not use wal-fetch: {copy_log}");
    assert_eq!(fingerprint(&copy), at_target, "PostgreSQL {major}: the restore is not the data at {target_args:?}");
    assert_eq!(copy.sql("show server_version_num"), version_num.to_string());
    drop(copy);

    let out = src.run("backupctl", &["verify"]);
    assert_ok(&format!("PostgreSQL {major}: backupctl verify"), &out);
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!("issue11: PostgreSQL {major} smoke path took {:.1} s\n", t0.elapsed().as_secs_f64()),
    );
    Some((src, repo, incr_id))
}

/// Rewrite backup `id`'s manifest as if it had been taken from `version_num`, and check pitr-restore refuses it,
/// naming the version and the supported range, before writing anything.
fn restore_refused_as(src: &Source, repo: &FileRepo, id: &str, version_num: u32, want: &str) {
    let raw = Raw::open(&repo.url(), &Default::default());
    let mut manifest = raw.manifest(id);
    manifest.pg_version_num = version_num;
    raw.delete(&manifest.id.manifest_key());
    let saved = raw.rt.block_on(backupctl::repository::store::save_manifest(raw.storage.as_ref(), &mut manifest));
    assert!(saved.expect("save manifest"), "rewritten");
    chown_postgres(repo.dir.path());
    let dest = src.dir.path().join(format!("refused-{version_num}"));
    let out = src.run("pitr-restore", &["--destination", dest.to_str().expect("utf-8"), "--backup-id", id]);
    let (code, err) = status(&out);
    assert_eq!(code, Some(1), "{err}");
    let line = err.lines().find(|l| l.starts_with("pitr-restore: error: ")).unwrap_or_default();
    assert!(line.starts_with(&format!("pitr-restore: error: backup {id}: {want}")), "{err}");
    assert!(line.ends_with("backupctl supports PostgreSQL 13 to 18"), "{err}");
    assert!(err.contains("pitr-restore: hint: run a backupctl release that supports this PostgreSQL major"), "{err}");
    assert!(!dest.exists(), "nothing is written");
}

#[test]
fn issue_11_pg13_archive_backup_pitr() {
    // 13 with data checksums: page verification on the oldest major, and the pre-15 backup API.
    let Some((src, repo, id)) = smoke(13, Stop::Lsn, &["--data-checksums"], true) else { return };
    // A backup recorded as PostgreSQL 12 (end-of-life) is refused.
    restore_refused_as(&src, &repo, &id, 120_022, "PostgreSQL 12 (server_version_num 120022) is not supported");
}

#[test]
fn issue_11_pg14_archive_backup_pitr() {
    smoke(14, Stop::Name, &[], false);
}

#[test]
fn issue_11_pg15_archive_backup_pitr() {
    smoke(15, Stop::Lsn, &[], false);
}

#[test]
fn issue_11_pg16_archive_backup_pitr() {
    smoke(16, Stop::Name, &[], false);
}

#[test]
fn issue_11_pg17_archive_backup_pitr() {
    smoke(17, Stop::Lsn, &[], false);
}

#[test]
fn issue_11_pg18_archive_backup_pitr() {
    // 18 turns data checksums on by default: no initdb flag.
    let Some((src, repo, id)) = smoke(18, Stop::Name, &[], true) else { return };
    // A backup recorded as a newer major is refused, not restored with 18's recovery settings.
    restore_refused_as(&src, &repo, &id, 190_004, "PostgreSQL 19 (server_version_num 190004) is not supported");
}

/// PostgreSQL 12 (end-of-life since November 2024) on a real cluster: wal-push refuses its WAL (the archiver fails,
/// the segment stays in pg_wal), base-backup and `backupctl check` refuse the server, each naming 12 and the
/// supported range; nothing reaches the repository.
#[test]
fn issue_11_pg12_refused() {
    if require_pg().is_none() {
        return;
    }
    let Some(bin12) = require_pg_major(12) else { return };
    let repo = FileRepo::new("pg12");
    let mut src = Source::init(&bin12, 12, &repo.url(), &[]);
    // 12 has wal_keep_segments, not the wal_keep_size the shared cluster settings use (13+).
    let conf = src.cluster.data.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).expect("postgresql.conf");
    std::fs::write(&conf, text.replace("wal_keep_size = '2GB'", "wal_keep_segments = 128")).expect("write conf");
    src.cluster.start();
    let c = &src.cluster;
    assert!(c.sql("show server_version_num").starts_with("12"), "not a PostgreSQL 12 server");
    // The numbers the refusal names are 12's: xlog_internal.h and pg_control.h of REL_12_STABLE.
    assert_eq!(on_disk_versions(c), (0xD101, 1201));

    c.sql("create table t (id int primary key, batch int not null, pad text not null)");
    c.sql("insert into t select g, 0, md5(g::text) from generate_series(1, 1000) g");
    let segment = c.sql("select pg_walfile_name(pg_switch_wal())");
    wait_for("the archiver to fail on PostgreSQL 12 WAL", Duration::from_secs(60), || {
        let failed: u64 = c.sql("select failed_count from pg_stat_archiver").parse().ok()?;
        (failed > 0).then_some(())
    });
    assert_eq!(c.sql("select archived_count from pg_stat_archiver"), "0");
    let log = c.log_text();
    let want = "WAL page magic 0xD101 is PostgreSQL 12's (end-of-life): backupctl supports PostgreSQL 13 to 18";
    assert!(log.lines().any(|l| l.starts_with("wal-push: error: ") && l.contains(want)), "{log}");
    assert!(c.data.join("pg_wal").join(&segment).is_file(), "the segment stays in pg_wal");

    let out = src.run("base-backup", &["--type", "full", "--fast"]);
    let (code, err) = status(&out);
    assert_eq!(code, Some(1), "{err}");
    let line = err.lines().find(|l| l.starts_with("base-backup: error: ")).unwrap_or_default();
    assert!(line.contains("PostgreSQL 12 (server_version_num 12"), "{err}");
    assert!(line.ends_with("is not supported: backupctl supports PostgreSQL 13 to 18"), "{err}");
    assert!(err.contains("base-backup: hint: run a backupctl release that supports this PostgreSQL major"), "{err}");

    let out = src.run("backupctl", &["check"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("PostgreSQL 12 (server_version_num 12"), "{text}");

    let stored = walk(repo.dir.path());
    assert!(!stored.iter().any(|p| p.contains("/wal/") || p.contains("/backups/")), "{stored:?}");
}

/// wal-push refuses a segment whose page magic is not a supported major's (12's, or one it does not know), with
/// one line naming the magic and the range, and archives nothing; each supported major's magic is archived.
#[test]
fn issue_11_wal_push_refuses_unsupported_page_magic() {
    const SEG: u64 = 16 << 20;
    let WalDir { dir, config, pg_wal } = WalDir::new("[archive]\npush_ahead = 0");
    let with_magic = |segno: u64, magic: u16| -> PathBuf {
        let path = write_segment(&pg_wal, 1, segno, SEG, 7_300_000_000_000_000_011, segno);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[0..2].copy_from_slice(&magic.to_le_bytes());
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let cases = [
        (0xD101, "WAL page magic 0xD101 is PostgreSQL 12's (end-of-life): backupctl supports PostgreSQL 13 to 18"),
        (0xD098, "WAL page magic 0xD098 is PostgreSQL 11's (end-of-life)"),
        (0xD119, "WAL page magic 0xD119 is not one of a known PostgreSQL release"),
    ];
    for (i, (magic, want)) in cases.into_iter().enumerate() {
        let path = with_magic(i as u64 + 1, magic);
        let (code, err) = status(&push(&config, &path));
        assert_eq!(code, Some(1), "0x{magic:04X}: {err}");
        let first = err.lines().find(|l| l.starts_with("wal-push: error: ")).unwrap_or_default();
        assert!(first.contains(want), "0x{magic:04X}: {err}");
        assert!(first.contains(path.file_name().and_then(|n| n.to_str()).expect("name")), "names the file: {err}");
        assert!(err.contains("wal-push: hint: run a backupctl release that supports this PostgreSQL major"), "{err}");
    }
    let archived = |dir: &Path| walk(dir).into_iter().filter(|p| p.contains("/wal/")).count();
    assert_eq!(archived(&dir.path().join("repo")), 0, "nothing archived");
    for (i, major) in SUPPORTED.iter().enumerate() {
        let path = with_magic(10 + i as u64, major.wal_page_magic);
        let (code, err) = status(&push(&config, &path));
        assert_eq!(code, Some(0), "{major}: {err}");
    }
    assert!(archived(&dir.path().join("repo")) >= SUPPORTED.len());
}

/// Every file under `dir`, as displayed paths.
fn walk(dir: &Path) -> Vec<String> {
    files_under(dir).iter().map(|p| p.display().to_string()).collect()
}
