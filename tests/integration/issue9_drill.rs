//! Issue 9, "Restore drills": `backupctl drill` restores a backup into a temporary directory, starts PostgreSQL
//! on it, lets it recover, runs pg_amcheck and `[drill] sql`, records the result, and leaves nothing behind, also
//! when it fails. On a real cluster, on file:// and on the moto S3 server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::issue12_catalog::CatalogCluster;
use crate::pitr::{FileRepo, Source, s3_repo};
use crate::support::cluster::{PgDir, as_postgres, assert_ok, bin, chown_postgres, require_pg, wait_for};
use crate::support::raw::Raw;

/// Rows the smoke query counts: in the backup, after it, and after the `--to` time.
const IN_BACKUP: u32 = 1000;
const AFTER_BACKUP: u32 = 500;
const AFTER_TIME: u32 = 250;

/// `backupctl --config CFG drill ARGS --json-output` as postgres: exit code, JSON report (if any), stderr.
fn drill(cfg: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = as_postgres(&bin("backupctl"))
        .arg("--config")
        .arg(cfg)
        .arg("drill")
        .args(args)
        .arg("--json-output")
        .output()
        .expect("backupctl drill");
    parse(&out)
}

fn parse(out: &Output) -> (Option<i32>, serde_json::Value, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), v, stderr)
}

/// Every entry left in `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).expect("read work dir").flatten().map(|e| e.path()).collect()
}

/// Processes whose command line mentions `path` (a drill's server would: `postgres -D <path>/...`).
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) {
            found.push(text);
        }
    }
    found
}

/// Nothing of a drill remains: no directory in the work dir, no server running on one.
fn assert_clean(work: &Path, what: &str) {
    assert!(leftovers(work).is_empty(), "{what}: left behind {:?}", leftovers(work));
    assert!(processes_mentioning(work).is_empty(), "{what}: still running {:?}", processes_mentioning(work));
}

/// `<spool>/state/drill.json` of the Source's configuration.
fn drill_state(src: &Source) -> serde_json::Value {
    let path = src.config.parent().expect("cfg dir").join("spool/state/drill.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).expect("drill.json")
}

/// A copy of `cfg` (beside it, as `name`) with `from` replaced by `to`.
fn with_replaced(cfg: &Path, from: &str, to: &str, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(cfg).expect("read cfg");
    assert!(text.contains(from), "{text} lacks {from}");
    let text = text.replace(from, to);
    let path = cfg.with_file_name(name);
    std::fs::write(&path, text).expect("write cfg");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    path
}

/// Start `backupctl drill` (as postgres, with a configuration whose smoke query sleeps) and wait until its server
/// has started; returns the runuser child and backupctl's own pid.
fn start_slow_drill(cfg: &Path, work: &Path) -> (std::process::Child, String) {
    let child = as_postgres(&bin("backupctl"))
        .arg("--config")
        .arg(cfg)
        .args(["drill", "--json-output"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drill");
    wait_for("the drill's server to start", Duration::from_secs(120), || {
        leftovers(work).iter().any(|d| d.join("server.log").exists()).then_some(())
    });
    let me = bin("backupctl").display().to_string();
    let name = cfg.file_name().expect("name").to_string_lossy().into_owned();
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.starts_with(&format!("{me}\0")) && cmd.contains(&name)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    (child, pids[0].clone())
}

/// The scenario on one repository; with a catalog, each drill that ran (passed or failed, not abandoned nor
/// refused) is recorded there, started by hand, with its backup and RTO.
fn scenario(
    label: &str,
    url: &str,
    extra: &str,
    s3: &backupctl::config::S3Config,
    is_file: bool,
    catalog: Option<&CatalogCluster>,
) {
    let work_owner = PgDir::new(&format!("{label}-work"));
    let work = work_owner.sub("drills");
    let drill_conf = format!(
        "{extra}\n[drill]\nwork_dir = \"{}\"\nsql = \"select count(*) from drill_check\"\ntimeout = \"5m\"\n",
        work.display()
    );
    // Overwrites a format-1 data object named by the manifest (format 2's corrupt pack: issue9_schedule's
    // issue_9_drill_of_a_corrupted_repository_alerts).
    crate::issue10_format2::init_format(label, url, extra, 1);
    let src = Source::start(label, url, &drill_conf);
    let c = &src.cluster;
    c.sql(&format!("create table drill_check as select g id, md5(g::text) pad from generate_series(1, {IN_BACKUP}) g"));
    c.sql("create index on drill_check (id)");
    let backup = src.backup_json("full");
    let backup_id = backup["id"].as_str().expect("id").to_owned();
    c.sql(&format!("insert into drill_check select g, md5(g::text) from generate_series(1, {AFTER_BACKUP}) g"));
    let target = c.sql("select clock_timestamp()");
    let segment_before_target = c.sql("select pg_walfile_name(pg_current_wal_lsn())");
    std::thread::sleep(Duration::from_millis(1100));
    c.sql(&format!("insert into drill_check select g, md5(g::text) from generate_series(1, {AFTER_TIME}) g"));
    let last_segment = c.sql("select pg_walfile_name(pg_current_wal_lsn())");
    c.switch_and_wait_archived(Duration::from_secs(120));
    let raw = Raw::open(url, s3);
    let manifest = raw.manifest(&backup_id);

    // A drill of the newest backup to the end of the archive passes, with every figure.
    let (code, r, err) = drill(&src.config, &[]);
    assert_eq!(code, Some(0), "drill: {err}\n{r}");
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(r["backup_id"], backup_id.as_str(), "{r}");
    assert!(r["rto_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(r["rto_seconds"].as_f64() >= r["restore_seconds"].as_f64(), "{r}");
    assert_eq!(r["wal_start"], manifest.start_wal.as_str(), "{r}");
    let wal_end = r["wal_end"].as_str().expect("wal_end").to_owned();
    assert!(
        wal_end.as_str() >= last_segment.as_str() && wal_end.starts_with("00000001"),
        "{wal_end} < {last_segment}: {r}"
    );
    assert_eq!(
        r["smoke_result"],
        (IN_BACKUP + AFTER_BACKUP + AFTER_TIME).to_string(),
        "WAL after the backup replayed: {r}"
    );
    assert_eq!(r["amcheck"], "passed", "{r}");
    assert!(r["failed_step"].is_null() && r["error"].is_null(), "{r}");
    assert_clean(&work, "a passed drill");
    let state = drill_state(&src);
    assert_eq!(state["passed_total"], 1, "{state}");
    assert_eq!(state["last"]["passed"], true, "{state}");
    assert_eq!(state["last"]["wal_end"], wal_end.as_str(), "{state}");
    assert!(state["last"]["rto_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{state}");

    // --to a time: recovery stops there (the rows after it are absent) and promotes.
    let (code, r, err) = drill(&src.config, &["--to", &target, "--backup-id", &backup_id]);
    assert_eq!(code, Some(0), "drill --to {target}: {err}\n{r}");
    assert_eq!(r["smoke_result"], (IN_BACKUP + AFTER_BACKUP).to_string(), "{r}");
    assert!(r["target"].as_str().is_some_and(|t| t.ends_with("+00")), "{r}");
    let end = r["wal_end"].as_str().expect("wal_end");
    assert!(end >= segment_before_target.as_str() && end <= last_segment.as_str(), "{end}: {r}");
    assert_clean(&work, "a drill to a time");

    // The text summary (no --json-output) on a passed drill.
    let out = as_postgres(&bin("backupctl")).arg("--config").arg(&src.config).arg("drill").output().expect("drill");
    assert_ok("backupctl drill", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("drill passed: backup {backup_id} (PostgreSQL ")), "{text}");
    assert!(
        text.contains("pg_amcheck: passed") && text.contains(&format!("WAL replayed: {} .. ", manifest.start_wal)),
        "{text}"
    );

    // An unknown backup id: exit 1, the ids that exist, nothing left.
    let (code, r, err) = drill(&src.config, &["--backup-id", "20200101-000000F"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("failed at step backup") && err.contains(&backup_id), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{err}");
    assert_eq!(r["failed_step"], "backup", "{r}");
    assert_clean(&work, "an unknown backup id");

    if is_file {
        // A smoke query that fails fails the drill, naming the step and the server's words.
        let bad = with_replaced(&src.config, "from drill_check", "from no_such_table", "bad-sql.toml");
        let (code, r, err) = drill(&bad, &[]);
        assert_eq!(code, Some(1), "{err}\n{r}");
        assert!(err.contains("failed at step smoke_query") && err.contains("no_such_table"), "{err}");
        assert_eq!(r["amcheck"], "passed", "{r}");
        assert_clean(&work, "a failed smoke query");

        // Ctrl-C (SIGINT to backupctl) while the server runs: the drill stops it, removes its directory, and fails
        // as abandoned; the last result stands.
        let before = drill_state(&src);
        let slow = with_replaced(&src.config, "select count(*) from drill_check", "select pg_sleep(120)", "slow.toml");
        let (child, pid) = start_slow_drill(&slow, &work);
        assert_ok("kill -INT", &Command::new("kill").args(["-INT", &pid]).output().expect("kill"));
        let started = std::time::Instant::now();
        let (code, r, err) = parse(&child.wait_with_output().expect("wait"));
        assert!(started.elapsed() < Duration::from_secs(60), "Ctrl-C took {:?}", started.elapsed());
        assert_eq!(code, Some(1), "{err}\n{r}");
        assert!(err.contains("abandoned"), "{err}");
        assert_eq!(r["passed"], false, "{r}");
        assert_clean(&work, "a drill interrupted by Ctrl-C");
        assert_eq!(drill_state(&src), before, "an abandoned drill is not recorded");

        // SIGKILL of backupctl: its server still stops (parent-death signal); only the directory is left.
        let (child, pid) = start_slow_drill(&slow, &work);
        assert_ok("kill -KILL", &Command::new("kill").args(["-KILL", &pid]).output().expect("kill"));
        let _ = child.wait_with_output();
        wait_for("the killed drill's server to stop", Duration::from_secs(60), || {
            processes_mentioning(&work).is_empty().then_some(())
        });
        for dir in leftovers(&work) {
            std::fs::remove_dir_all(&dir).expect("remove the killed drill's directory");
        }

        // As root: refused before anything, with the command to run instead; nothing recorded.
        let before = drill_state(&src);
        let out = Command::new(bin("backupctl")).arg("--config").arg(&src.config).arg("drill").output().expect("drill");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("must not run as root") && err.contains("runuser -u postgres -- "), "{err}");
        assert_eq!(drill_state(&src), before);
        assert_clean(&work, "a refusal as root");

        // A WAL segment recovery needs is damaged: wal-fetch refuses it, recovery stops, the step is named.
        raw.corrupt(&backupctl::repository::wal_key(&last_segment.parse().expect("segment")));
        chown_postgres(Path::new(url.trim_start_matches("file://")));
        let (code, r, err) = drill(&src.config, &[]);
        assert_eq!(code, Some(1), "{err}\n{r}");
        assert!(err.contains("failed at step recovery") && err.contains("the restored server exited"), "{err}");
        assert_eq!(r["failed_step"], "recovery", "{r}");
        assert!(r["rto_seconds"].is_null(), "{r}");
        assert_clean(&work, "a drill whose WAL is damaged");
    }

    // A data object the backup needs is overwritten: the restore refuses it, and the step is named.
    let largest = manifest.files.iter().flat_map(|f| &f.pieces).max_by_key(|p| p.length).expect("a piece");
    raw.corrupt(&largest.object.key());
    if is_file {
        chown_postgres(Path::new(url.trim_start_matches("file://")));
    }
    let (code, r, err) = drill(&src.config, &["--backup-id", &backup_id]);
    assert_eq!(code, Some(1), "{err}\n{r}");
    assert!(err.contains("failed at step restore") && err.contains("corrupt"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{err}");
    assert_eq!(r["passed"], false, "{r}");
    assert_eq!(r["failed_step"], "restore", "{r}");
    assert_clean(&work, "a drill of a corrupted repository");
    let state = drill_state(&src);
    assert_eq!(state["last"]["passed"], false, "{state}");
    assert_eq!(state["last"]["failed_step"], "restore", "{state}");
    assert!(state["last"]["error"].as_str().is_some_and(|e| e.contains("corrupt")), "{state}");
    assert_eq!(state["passed_total"], 3, "{state}");
    assert_eq!(state["failed_total"], if is_file { 4 } else { 2 }, "{state}");

    if let Some(cat) = catalog {
        // Issue 12: the catalog has the same drills as drill.json, as runs by hand.
        assert_eq!(
            cat.sql(
                "select string_agg(d.passed::text || ':' || r.outcome || ':' || r.started_by, ',' order by d.id) \
                 from backupctl.drills d join backupctl.job_runs r on r.id = d.job_run_id"
            ),
            "true:succeeded:manual,true:succeeded:manual,true:succeeded:manual,false:failed:manual,\
             false:failed:manual,false:failed:manual,false:failed:manual"
        );
        assert_eq!(
            cat.sql(&format!(
                "select count(*) from backupctl.drills where passed and backup_id = '{backup_id}' \
                 and rto_seconds >= restore_seconds and restore_seconds > 0 and bytes_restored > 0"
            )),
            "3"
        );
        assert_eq!(cat.sql("select count(*) from backupctl.drills where recovery_target like '%+00'"), "1");
        // The failed ones name their step; only the failed smoke query got as far as an RTO.
        let drills = cat.sql("select passed, backup_id, rto_seconds, detail from backupctl.drills");
        assert_eq!(
            cat.sql("select count(*) from backupctl.drills where not passed and detail like '%failed at step %'"),
            "4",
            "{drills}"
        );
        assert_eq!(
            cat.sql(
                "select string_agg(substring(detail from 'failed at step (\\w+)'), ',' order by id) \
                 from backupctl.drills where not passed and rto_seconds is not null"
            ),
            "smoke_query",
            "{drills}"
        );
    }
}

#[test]
fn issue_9_drill_file_repository() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i9-drill");
    let cat = CatalogCluster::start("i9-drill");
    let s3 = backupctl::config::S3Config::default();
    scenario("i9-drill-file", &repo.url(), &cat.section(), &s3, true, Some(&cat));
}

#[test]
fn issue_9_drill_s3_repository() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i9-drill") else { return };
    let s3 = crate::support::s3::server().expect("moto").s3_config();
    scenario("i9-drill-s3", &url, &extra, &s3, false, None);
}

/// A tmpfs of 64 MiB mounted on a new directory, unmounted on drop; None (with a notice) where mounting is not
/// allowed.
struct SmallFs {
    dir: PgDir,
    path: PathBuf,
}

impl SmallFs {
    fn mount() -> Option<Self> {
        let dir = PgDir::new("i9-tmpfs");
        let path = dir.sub("fs");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs here (needs root)");
            return None;
        }
        chown_postgres(&path);
        Some(Self { dir, path })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = &self.dir;
    }
}

/// The disk budget: a work directory on a file system too small for the backup is refused before anything is
/// restored, naming both numbers.
#[test]
fn issue_9_drill_disk_budget() {
    if require_pg().is_none() {
        return;
    }
    let Some(fs) = SmallFs::mount() else { return };
    let repo = FileRepo::new("i9-budget");
    let work_owner = PgDir::new("i9-budget-work");
    let work = work_owner.sub("drills");
    let src = Source::start("i9-budget", &repo.url(), &format!("[drill]\nwork_dir = \"{}\"\n", work.display()));
    src.backup_json("full");
    let small = with_replaced(
        &src.config,
        &format!("work_dir = \"{}\"", work.display()),
        &format!("work_dir = \"{}\"", fs.path.display()),
        "small.toml",
    );
    let (code, r, err) = drill(&small, &[]);
    assert_eq!(code, Some(1), "{err}\n{r}");
    assert!(err.contains("failed at step disk_budget"), "{err}");
    assert!(
        err.contains(&format!("{} has ", fs.path.display())) && err.contains("MiB free") && err.contains("needs"),
        "{err}"
    );
    assert_eq!(r["failed_step"], "disk_budget", "{r}");
    assert!(leftovers(&fs.path).is_empty(), "{:?}", leftovers(&fs.path));
    let state = drill_state(&src);
    assert_eq!(state["failed_total"], 1, "{state}");
}

/// A PostgreSQL 14 backup is drilled with 14's server: without `[drill] pg_bin_dir` (no /usr/lib/postgresql/14
/// here) it is refused, naming what was looked at; with it, the drill passes (pg_amcheck from a newer major when
/// the 14 binaries have none).
#[test]
fn issue_9_drill_uses_the_backups_major() {
    if require_pg().is_none() {
        return;
    }
    let Some(pg14) = crate::support::cluster::require_pg14() else { return };
    let repo = FileRepo::new("i9-drill14");
    let work_owner = PgDir::new("i9-drill14-work");
    let work = work_owner.sub("drills");
    let conf = format!("[drill]\nwork_dir = \"{}\"\n", work.display());
    let src = Source::start_on(&pg14, "i9-drill14", &repo.url(), &conf, "archive_timeout_seconds = 120");
    src.cluster.sql("create table t as select g from generate_series(1, 100) g");
    src.backup_json("full");
    src.cluster.switch_and_wait_archived(Duration::from_secs(120));

    let (code, r, err) = drill(&src.config, &[]);
    assert_eq!(code, Some(1), "{err}\n{r}");
    assert!(err.contains("failed at step binaries: no PostgreSQL 14 server binaries"), "{err}");
    assert!(err.contains("/usr/lib/postgresql/14/bin"), "{err}");
    assert_eq!(r["pg_version_num"].as_u64().map(|v| v / 10_000), Some(14), "{r}");
    assert_clean(&work, "a drill without 14's binaries");

    let with_bin = with_replaced(
        &src.config,
        "[drill]\n",
        &format!("[drill]\npg_bin_dir = \"{}\"\n", pg14.display()),
        "pg14.toml",
    );
    let (code, r, err) = drill(&with_bin, &[]);
    assert_eq!(code, Some(0), "{err}\n{r}");
    assert_eq!(r["server_bin"], pg14.display().to_string(), "{r}");
    assert!(r["amcheck"].as_str().is_some_and(|a| a.starts_with("passed")), "{r}");
    assert_clean(&work, "a drill with 14's binaries");
}
