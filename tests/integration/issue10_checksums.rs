//! Issue 10, "Page checksums": on a cluster with data checksums, base-backup verifies every page of the relation
//! files it reads, records the corrupt ones (file, block) in the manifest and its JSON, warns, fails with
//! `--fail-on-checksum-error` (or `[backup] fail_on_checksum_error`); pitr-restore warns before it writes. No
//! false positives while pgbench writes during the backup; nothing verified on a cluster without checksums.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use backupctl::config::S3Config;

use crate::pitr::{FileRepo, Source, s3_repo};
use crate::support::cluster::{as_postgres, assert_ok, bin, output_text, require_pg, wait_for};
use crate::support::raw::Raw;

const PAGE: u64 = 8192;

/// A source cluster like [`Source::start`], with data checksums turned on (`pg_checksums --enable` on the
/// stopped cluster: the same pages and pg_control as `initdb --data-checksums`) and `conf` added to its
/// postgresql.conf.
fn checksummed(label: &str, url: &str, extra: &str, conf: &str) -> Source {
    let mut src = Source::start(label, url, extra);
    src.cluster.stop();
    src.cluster.append_conf(conf);
    let out = as_postgres(&src.cluster.bin.join("pg_checksums"))
        .args(["--enable", "--no-sync", "-D"])
        .arg(&src.cluster.data)
        .output()
        .expect("pg_checksums");
    assert_ok("pg_checksums --enable", &out);
    src.cluster.start();
    assert_eq!(src.cluster.sql("show data_checksums"), "on");
    src
}

/// Create table `name` (about 60 pages, in tablespace `tablespace` if given; never read again: autovacuum off)
/// and return its main fork's file (relative to the data directory).
fn make_victim(src: &Source, name: &str, tablespace: Option<&str>) -> String {
    let c = &src.cluster;
    let ts = tablespace.map(|t| format!(" tablespace {t}")).unwrap_or_default();
    c.sql(&format!("create table {name} (id int, pad text) with (autovacuum_enabled = false){ts}"));
    c.sql(&format!("insert into {name} select g, md5(g::text) from generate_series(1, 6000) g"));
    c.sql(&format!("vacuum (analyze, freeze) {name}"));
    c.sql("checkpoint");
    c.sql(&format!("select pg_relation_filepath('{name}')"))
}

/// With the server stopped, damage blocks `blocks` of `file` in the middle of the page (the header, and so the
/// page's LSN, stays), then start it again.
fn damage(src: &mut Source, file: &str, blocks: &[u64]) {
    src.cluster.stop();
    let path = src.cluster.data.join(file);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open relation file");
    for block in blocks {
        let at = block * PAGE + 4000;
        let mut buf = [0u8; 64];
        f.read_exact_at(&mut buf, at).expect("read");
        for b in &mut buf {
            *b ^= 0x5a;
        }
        f.write_all_at(&buf, at).expect("write");
    }
    f.sync_all().expect("sync");
    src.cluster.start();
}

fn json(what: &str, out: &Output) -> serde_json::Value {
    assert_ok(what, out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {out:?}"))
}

fn manifest_count(raw: &Raw) -> usize {
    raw.manifests().len()
}

/// A copy of the source's configuration with `line` added to its last section (`[backup]`).
fn config_with(src: &Source, name: &str, line: &str) -> PathBuf {
    let text = std::fs::read_to_string(&src.config).expect("read config");
    assert!(text.trim_end().rsplit("\n[").next().is_some_and(|s| s.starts_with("backup]")), "[backup] is last");
    let path = src.config.with_file_name(name);
    std::fs::write(&path, format!("{text}\n{line}\n")).expect("write config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    path
}

/// `(file, blocks)` as the backup reports them: `base/5/16384: 2 pages (blocks 2, 5)`.
fn described(file: &str, blocks: &[u64]) -> String {
    let list: Vec<String> = blocks.iter().map(u64::to_string).collect();
    match blocks {
        [_] => format!("{file}: 1 page (block {})", list[0]),
        _ => format!("{file}: {} pages (blocks {})", blocks.len(), list.join(", ")),
    }
}

/// Damage pages of a table (main fork and free space map) and of a table in a tablespace, then back up with and
/// without `--fail-on-checksum-error` and restore.
fn corrupt_scenario(label: &str, url: &str, extra: &str, s3: &S3Config) {
    let mut src = checksummed(label, url, extra, "");
    let ts = src.dir.sub("ts");
    src.cluster.sql(&format!("create tablespace ts location '{}'", ts.display()));
    let main = make_victim(&src, "victim", None);
    let elsewhere = make_victim(&src, "victim_ts", Some("ts"));
    assert!(elsewhere.starts_with("pg_tblspc/"), "{elsewhere}");
    src.backup_json("full");
    // In path order, as reported.
    let damaged = [(main.clone(), vec![2, 5]), (format!("{main}_fsm"), vec![2]), (elsewhere.clone(), vec![1])];
    for (file, blocks) in &damaged {
        damage(&mut src, file, blocks);
    }
    let lines: Vec<String> = damaged.iter().map(|(f, b)| described(f, b)).collect();
    let raw = Raw::open(url, s3);
    let before = manifest_count(&raw);

    // --fail-on-checksum-error: exit 1, the files named, no backup recorded.
    let out = src.base_backup(&["--fast", "--type", "full", "--fail-on-checksum-error"]);
    let (code, stdout, stderr) = output_text(&out);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains(&format!(
            "4 pages of {} fail their checksum: {}",
            src.cluster.data.display(),
            lines.join("; ")
        )),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    assert_eq!(manifest_count(&raw), before, "no manifest written: {stderr}");
    // The same from the configuration.
    let fail_cfg = config_with(&src, "fail.toml", "fail_on_checksum_error = true");
    let out = as_postgres(&bin("base-backup"))
        .arg("--config")
        .arg(&fail_cfg)
        .args(["--fast", "--type", "incremental"])
        .output()
        .expect("base-backup");
    let (code, _, stderr) = output_text(&out);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&lines.join("; ")), "{stderr}");
    assert_eq!(manifest_count(&raw), before, "no manifest written: {stderr}");

    // Without it: the backup succeeds, warns once per file and once in sum, and records (file, blocks).
    let out = src.base_backup(&["--fast", "--json", "--type", "full"]);
    let summary = json("base-backup with corrupt pages", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 4, "{stderr}");
    for (w, line) in warnings.iter().zip(&lines) {
        assert!(w.contains(&format!("page checksum failure in {line}")), "{stderr}");
    }
    assert!(warnings[3].contains("4 of ") && warnings[3].contains("in 3 files fail their checksum"), "{stderr}");
    assert_eq!(summary["page_checksums"], "verified", "{summary}");
    let listed: Vec<serde_json::Value> =
        damaged.iter().map(|(f, b)| serde_json::json!({ "path": f, "blocks": b })).collect();
    assert_eq!(summary["corrupt_pages"], serde_json::Value::Array(listed), "{summary}");
    assert!(summary["pages_verified"].as_u64().unwrap_or(0) > 120, "{summary}");
    let id = summary["id"].as_str().expect("id").to_owned();
    let manifest = raw.manifest(&id);
    let recorded: Vec<(String, Vec<u64>)> = manifest
        .corrupt_pages()
        .iter()
        .map(|c| (c.path.to_string(), c.blocks.iter().map(|b| u64::from(*b)).collect()))
        .collect();
    assert_eq!(recorded, damaged);
    // status lists them too.
    let status = json("status", &src.status_json_output());
    let listed = status["backups"].as_array().and_then(|b| b.iter().find(|b| b["id"] == id.as_str())).cloned();
    assert_eq!(listed.map(|b| b["corrupt_pages"].clone()), Some(summary["corrupt_pages"].clone()), "{status}");

    // pitr-restore warns before it writes anything: also when it then refuses the destination.
    let busy = src.dir.sub("busy");
    std::fs::write(busy.join("something"), b"x").expect("write");
    crate::support::cluster::chown_postgres(&busy);
    let out = src.restore(&busy, &["--backup-id", &id]);
    let (code, _, stderr) = output_text(&out);
    assert_eq!(code, Some(1), "{stderr}");
    let warn = stderr.lines().position(|l| l.contains("WARN") && l.contains(&lines[0]));
    let err = stderr.lines().position(|l| l.contains("error:"));
    assert!(warn.is_some() && warn < err, "the warning comes first: {stderr}");
    let restore = |name: &str, id: &str| {
        let dest = src.dir.sub(name);
        std::fs::remove_dir(&dest).expect("rmdir");
        let moved = src.dir.sub(&format!("{name}-ts"));
        std::fs::remove_dir(&moved).expect("rmdir");
        let mapping = format!("{}={}", ts.display(), moved.display());
        let out = src.restore(&dest, &["--backup-id", id, "--archive-mode", "off", "--tablespace-mapping", &mapping]);
        assert_ok("pitr-restore", &out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = restore("restored", &id);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 4, "{stderr}");
    for (w, line) in warnings.iter().zip(&lines) {
        assert!(w.contains(&format!("backup {id} holds pages that failed their checksum: {line}")), "{stderr}");
    }
    assert!(warnings[3].contains("4 corrupt pages in 3 files,"), "{stderr}");

    // A backup without corrupt pages restores without a word about them.
    let stderr = restore("older", &raw.manifests()[0].id.to_string());
    assert!(!stderr.lines().any(|l| l.contains("WARN") && l.contains("checksum")), "{stderr}");
}

#[test]
fn issue_10_corrupt_pages_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i10-cksum");
    corrupt_scenario("i10-cksum-file", &repo.url(), "", &S3Config::default());
}

#[test]
fn issue_10_corrupt_pages_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i10-cksum") else { return };
    let Some(server) = crate::support::s3::server() else { return };
    corrupt_scenario("i10-cksum-s3", &url, &extra, &server.s3_config());
}

fn pgbench(src: &Source, args: &[&str]) -> Command {
    let c = &src.cluster;
    let mut cmd = Command::new(c.bin.join("pgbench"));
    cmd.args(["-U", "postgres", "-h"]).arg(&c.socket).arg("-p").arg(c.port.to_string()).args(args).arg("postgres");
    cmd
}

/// While pgbench writes (with shared buffers so small that pages are written out all the time, some while they
/// are read), a full backup of a clean cluster verifies its pages and finds none corrupt.
#[test]
fn issue_10_no_false_positives_under_load() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i10-load");
    let src = checksummed("i10-load", &repo.url(), "", "shared_buffers = '1MB'\nbgwriter_lru_maxpages = 1000");
    assert_ok("pgbench -i", &pgbench(&src, &["-i", "-s", "4", "-q"]).output().expect("pgbench -i"));
    let mut load = pgbench(&src, &["-T", "60", "-c", "2", "-n"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench");
    // pgbench is connected and writing before the backup starts.
    let c = &src.cluster;
    wait_for("pgbench to write", Duration::from_secs(30), || {
        (c.sql("select count(*) from pgbench_history").parse::<u64>().unwrap_or(0) > 100).then_some(())
    });
    let out = src.base_backup(&["--fast", "--json", "--type", "full", "--fail-on-checksum-error"]);
    let is_loaded = load.try_wait().expect("try_wait").is_none();
    let _ = load.kill();
    let _ = load.wait();
    let summary = json("base-backup under load", &out);
    assert!(is_loaded, "pgbench still ran when the backup ended");
    assert_eq!(summary["page_checksums"], "verified", "{summary}");
    assert_eq!(summary["corrupt_pages"], serde_json::json!([]), "{summary}");
    // pgbench_accounts alone is about 6,600 pages at scale 4.
    assert!(summary["pages_verified"].as_u64().unwrap_or(0) > 5000, "{summary}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("checksum"), "{out:?}");
}

/// A cluster without data checksums: nothing is verified, so a damaged page goes unnoticed by the backup (as by
/// PostgreSQL), and nothing is claimed.
#[test]
fn issue_10_no_checksums_no_verification() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i10-off");
    let mut src = Source::start("i10-off", &repo.url(), "");
    assert_eq!(src.cluster.sql("show data_checksums"), "off");
    let file = make_victim(&src, "victim", None);
    damage(&mut src, &file, &[1]);
    let out = src.base_backup(&["--fast", "--json", "--type", "full", "--fail-on-checksum-error"]);
    let summary = json("base-backup without checksums", &out);
    assert_eq!(summary["page_checksums"], "off", "{summary}");
    assert_eq!(summary["corrupt_pages"], serde_json::json!([]), "{summary}");
    assert!(summary["pages_verified"].is_null(), "{summary}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("WARN"), "{out:?}");
    let raw = Raw::open(&repo.url(), &S3Config::default());
    assert_eq!(raw.manifest(summary["id"].as_str().expect("id")).page_checksums, None);
}
