//! Base backups and point-in-time restore on real clusters: every restore must hold exactly the transactions
//! committed up to its target.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::support::cluster::{
    Cluster, PgDir, as_postgres, assert_ok, bin, chown_postgres, require_pg, wait_for, write_config,
};

/// A source cluster archiving into a repository, with a configuration base-backup and pitr-restore can use.
/// Fields drop in order: the cluster stops before its directory goes (the other way round, `pg_ctl stop` found no
/// data directory and the server ran on after the test).
pub struct Source {
    pub cluster: Cluster,
    pub config: PathBuf,
    pub dir: PgDir,
}

impl Source {
    /// The repository's objects under `prefix`, listed through the library with this source's configuration.
    pub fn list(&self, prefix: &str) -> Vec<backupctl::storage::ObjectMeta> {
        let config = backupctl::config::Config::load(&self.config).expect("config");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let storage =
                backupctl::storage::open(&config.repository.url, &config.repository.s3, Duration::from_secs(30))
                    .await
                    .expect("open");
            storage.list(prefix).await.expect("list")
        })
    }

    /// initdb and start a cluster archiving through wal-push into `url`; `extra` is added to the configuration.
    pub fn start(label: &str, url: &str, extra: &str) -> Self {
        Self::start_with(label, url, extra, "archive_timeout_seconds = 120")
    }

    /// Like [`Source::start`], with `backup` lines in the `[backup]` section.
    pub fn start_with(label: &str, url: &str, extra: &str, backup: &str) -> Self {
        Self::start_on(&crate::support::cluster::pg_bin().expect("pg binaries"), label, url, extra, backup)
    }

    /// Like [`Source::start_with`], with the server binaries in `bin`.
    pub fn start_on(server_bin: &Path, label: &str, url: &str, extra: &str, backup: &str) -> Self {
        let dir = PgDir::new(label);
        let cfg_dir = dir.sub("cfg");
        std::fs::create_dir_all(cfg_dir.join("spool")).expect("mkdir");
        // The port and socket are known only once the cluster exists: write the config after init.
        let placeholder = write_config(&cfg_dir, url, &cfg_dir.join("spool"), extra);
        let archive = format!(
            "archive_mode = on\narchive_command = '{} --config {} %p'\n",
            bin("wal-push").display(),
            placeholder.display()
        );
        let mut cluster = Cluster::init_with(server_bin, &dir, "src", &archive);
        let config = write_config(
            &cfg_dir,
            url,
            &cfg_dir.join("spool"),
            &format!(
                "{extra}\n[postgres]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\n\n[backup]\n{backup}\n",
                cluster.socket.display(),
                cluster.port
            ),
        );
        chown_postgres(dir.path());
        cluster.start();
        Self { dir, cluster, config }
    }

    /// Run base-backup as the postgres user with `args`.
    pub fn base_backup(&self, args: &[&str]) -> Output {
        as_postgres(&bin("base-backup")).arg("--config").arg(&self.config).args(args).output().expect("base-backup")
    }

    /// base-backup --json; panics on failure; returns the summary.
    pub fn backup_json(&self, kind: &str) -> serde_json::Value {
        let out = self.base_backup(&["--fast", "--json", "--type", kind]);
        assert_ok("base-backup", &out);
        serde_json::from_slice(&out.stdout).expect("base-backup --json prints JSON")
    }

    /// `backupctl status --json-output` as postgres, checked to succeed.
    pub fn status_json_output(&self) -> std::process::Output {
        let out = as_postgres(&bin("backupctl"))
            .arg("--config")
            .arg(&self.config)
            .args(["status", "--json-output"])
            .output()
            .expect("status");
        assert_ok("backupctl status", &out);
        out
    }

    /// Run pitr-restore as postgres into `dest` with `args`.
    pub fn restore(&self, dest: &Path, args: &[&str]) -> Output {
        as_postgres(&bin("pitr-restore"))
            .arg("--config")
            .arg(&self.config)
            .arg("--destination")
            .arg(dest)
            .args(args)
            .output()
            .expect("pitr-restore")
    }

    /// Restore with `args`, start the copy, wait until recovery ends, and return it running.
    pub fn restore_and_start(&self, name: &str, args: &[&str]) -> Cluster {
        let dest = self.dir.sub(name);
        std::fs::remove_dir(&dest).expect("pitr-restore creates the destination itself");
        let out = self.restore(&dest, args);
        assert_ok(&format!("pitr-restore {args:?}"), &out);
        let mut copy = Cluster::at(&self.cluster.bin, &dest, &self.cluster.socket);
        copy.start();
        wait_for(&format!("recovery of {name} to finish"), Duration::from_secs(180), || {
            copy.try_sql("select pg_is_in_recovery()").stdout.starts_with(b"f").then_some(())
        });
        let log = copy.log_text();
        assert!(!log.contains("FATAL") && !log.contains("PANIC"), "{name}: {log}");
        copy
    }
}

/// The batches in a cluster, with their row counts: "1:1000,2:1000".
fn batches(c: &Cluster) -> String {
    c.sql("select coalesce(string_agg(batch || ':' || n, ',' order by batch), '') from (select batch, count(*) n from batches group by batch) s")
}

fn expect(upto: u32) -> String {
    (0..=upto).map(|b| format!("{b}:1000")).collect::<Vec<_>>().join(",")
}

/// Backup, then numbered batches with WAL switches and pauses between them; restore to a time, an LSN, a restore
/// point and the latest state, each exact; and a time before any backup is refused.
pub fn pitr_scenario(url: &str, extra: &str, label: &str) {
    let src = Source::start(label, url, extra);
    let c = &src.cluster;
    c.sql("create table batches (batch int, id int, pad text); create index on batches (batch, id)");
    c.sql("insert into batches select 0, g, repeat(md5(g::text), 4) from generate_series(1, 1000) g");
    c.sql("create table filler as select g id, repeat(md5(g::text), 8) pad from generate_series(1, 40000) g");
    let before_any_backup = c.sql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));

    let summary = src.backup_json("full");
    assert_eq!(summary["type"], "full");
    assert!(summary["files"].as_u64().unwrap_or(0) > 500, "{summary}");
    let backup_id = summary["id"].as_str().expect("id").to_owned();

    let mut after = Vec::new();
    let mut lsn_after = Vec::new();
    let mut xids = Vec::new();
    for batch in 1..=4u32 {
        std::thread::sleep(Duration::from_millis(1100));
        // One implicit transaction: the xid is the batch's.
        xids.push(c.sql(&format!(
            "insert into batches select {batch}, g, repeat(md5(g::text), 4) from generate_series(1, 1000) g; \
             select txid_current()"
        )));
        after.push(c.sql("select clock_timestamp()"));
        lsn_after.push(c.sql("select pg_current_wal_lsn()"));
        if batch == 2 {
            c.sql("select pg_create_restore_point('after_batch_2')");
        }
        c.sql("select pg_switch_wal()");
    }
    c.switch_and_wait_archived(Duration::from_secs(120));

    // A time between batch 2 and batch 3, in PostgreSQL's format with a zone.
    let copy = src.restore_and_start("to-time", &["--to", &after[1], "--archive-mode", "off"]);
    assert_eq!(batches(&copy), expect(2), "restore to {}: {}", after[1], copy.log_text());
    drop(copy);

    // The same point as RFC 3339 with a Z, converted for PostgreSQL 15 (which rejects the Z).
    let rfc3339 = c.sql(&format!(
        "select to_char(timestamptz '{}' at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        after[0]
    ));
    let copy = src.restore_and_start("to-time-rfc3339", &["--to", &rfc3339, "--archive-mode", "off"]);
    assert_eq!(batches(&copy), expect(1), "restore to {rfc3339}");
    drop(copy);

    let copy = src.restore_and_start("to-lsn", &["--to-lsn", &lsn_after[2], "--archive-mode", "off"]);
    assert_eq!(batches(&copy), expect(3), "restore to lsn {}", lsn_after[2]);
    drop(copy);

    let copy = src.restore_and_start("to-xid", &["--to-xid", &xids[2], "--archive-mode", "off"]);
    assert_eq!(batches(&copy), expect(3), "restore to xid {}", xids[2]);
    drop(copy);

    let copy = src.restore_and_start("to-name", &["--to-name", "after_batch_2", "--archive-mode", "off"]);
    assert_eq!(batches(&copy), expect(2), "restore to the restore point");
    drop(copy);

    let copy = src.restore_and_start("latest", &["--backup-id", &backup_id, "--archive-mode", "off"]);
    assert_eq!(batches(&copy), expect(4), "restore to the end of the archive");
    assert_eq!(
        copy.sql("select count(*) || ':' || sum(hashtext(pad)) from filler"),
        c.sql("select count(*) || ':' || sum(hashtext(pad)) from filler")
    );
    drop(copy);

    // Before the first backup finished: a clear error, nothing written.
    let dest = src.dir.sub("too-early");
    std::fs::remove_dir(&dest).expect("rmdir");
    let out = src.restore(&dest, &["--to", &before_any_backup]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no backup") && err.contains(&backup_id), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{err}");
    assert!(!dest.exists(), "a refused restore must not create the destination");
}

/// A file:// repository directory owned by postgres, removed on drop.
pub struct FileRepo {
    pub dir: tempfile::TempDir,
}

impl FileRepo {
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("bkctl-repo-{label}-")).tempdir().expect("repo");
        chown_postgres(dir.path());
        Self { dir }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// Every data object file, largest first: format 1's chunks and packs of small files (`data/`), format 2's
    /// packs (`packs/`).
    pub fn objects(&self) -> Vec<PathBuf> {
        let mut out: Vec<(u64, PathBuf)> = Vec::new();
        let (data, packs) = (self.dir.path().join("data"), self.dir.path().join("packs"));
        let subs = std::fs::read_dir(&data).into_iter().chain(std::fs::read_dir(&packs)).flatten().flatten();
        for sub in subs {
            for f in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if !f.file_name().to_string_lossy().starts_with('.') {
                    out.push((len, f.path()));
                }
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.0));
        out.into_iter().map(|(_, p)| p).collect()
    }
}

/// A repository on each backend: (label, url, extra configuration); S3 only where moto runs. The file
/// repositories are kept alive by the returned holders.
pub fn backends(label: &str) -> (Vec<FileRepo>, Vec<(&'static str, String, String)>) {
    let file = FileRepo::new(label);
    let mut out = vec![("file", file.url(), String::new())];
    if let Some((url, extra)) = s3_repo(label) {
        out.push(("s3", url, extra));
    }
    (vec![file], out)
}

/// The S3 settings for a moto bucket, or None (skip; a failure under CI) when moto is missing.
pub fn s3_repo(label: &str) -> Option<(String, String)> {
    let server = crate::support::s3::server()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bucket = rt.block_on(server.new_bucket(label));
    let extra =
        format!("[repository.s3]\nendpoint = \"{}\"\nforce_path_style = true\nallow_http = true\n", server.endpoint);
    Some((format!("s3://{bucket}/cluster"), extra))
}

#[test]
fn pitr_file_repository() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("pitr");
    pitr_scenario(&repo.url(), "", "pitr-file");
}

#[test]
fn pitr_s3_repository() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("pitr") else { return };
    pitr_scenario(&url, &extra, "pitr-s3");
}

/// Restore to a point, promote (timeline 2), write and archive from the promoted cluster into the same repository,
/// then restore to a point on timeline 2 and to a point on timeline 1 after the fork: each exact.
#[test]
fn timelines() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("timelines");
    let src = Source::start("timelines", &repo.url(), "");
    let c = &src.cluster;
    c.sql("create table batches (batch int, id int, pad text)");
    c.sql("insert into batches select 0, g, md5(g::text) from generate_series(1, 1000) g");
    src.backup_json("full");
    let mut at = std::collections::HashMap::new();
    for batch in 1..=4u32 {
        std::thread::sleep(Duration::from_millis(1100));
        c.sql(&format!("insert into batches select {batch}, g, md5(g::text) from generate_series(1, 1000) g"));
        at.insert(batch, c.sql("select clock_timestamp()"));
        c.sql("select pg_switch_wal()");
    }
    c.switch_and_wait_archived(Duration::from_secs(120));

    // The fork: restore to just after batch 2 and promote; this copy archives timeline 2 into the same repository.
    let fork = src.restore_and_start("fork", &["--to", &at[&2]]);
    assert_eq!(batches(&fork), expect(2));
    assert_eq!(
        fork.sql("select timeline_id from pg_control_checkpoint()").parse::<u32>().ok().map(|t| t >= 1),
        Some(true)
    );
    let mut t2 = std::collections::HashMap::new();
    for batch in [102u32, 103] {
        std::thread::sleep(Duration::from_millis(1100));
        fork.sql(&format!("insert into batches select {batch}, g, md5(g::text) from generate_series(1, 1000) g"));
        t2.insert(batch, fork.sql("select clock_timestamp()"));
        fork.sql("select pg_switch_wal()");
    }
    let last = fork.switch_and_wait_archived(Duration::from_secs(120));
    assert!(last.starts_with("00000002"), "the promoted copy writes timeline 2, not {last}");
    assert!(repo.dir.path().join("wal/timelines/00000002.history").is_file(), "timeline 2's history is archived");
    drop(fork);

    // A point on timeline 2 (the latest timeline, followed by default).
    let copy = src.restore_and_start("on-tl2", &["--to", &t2[&102], "--archive-mode", "off"]);
    assert_eq!(batches(&copy), format!("{},102:1000", expect(2)), "restore to {} on timeline 2", t2[&102]);
    drop(copy);

    // A point on timeline 1 after the fork.
    let copy = src.restore_and_start("on-tl1", &["--to", &at[&3], "--target-timeline", "1", "--archive-mode", "off"]);
    assert_eq!(batches(&copy), expect(3), "restore to {} on timeline 1", at[&3]);
    drop(copy);

    // The end of timeline 1, explicitly.
    let copy = src.restore_and_start("tl1-end", &["--target-timeline", "1", "--archive-mode", "off"]);
    assert_eq!(batches(&copy), expect(4));
}

/// A backup of a cluster with a tablespace restores into another directory through --tablespace-mapping.
#[test]
fn tablespace_backup_and_restore() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("tablespace");
    let src = Source::start("tablespace", &repo.url(), "");
    let c = &src.cluster;
    let ts = src.dir.sub("ts-original");
    chown_postgres(&ts);
    c.sql(&format!("create tablespace ts location '{}'", ts.display()));
    c.sql("create table batches (batch int, id int, pad text) tablespace ts");
    c.sql("insert into batches select 0, g, md5(g::text) from generate_series(1, 1000) g");
    let summary = src.backup_json("full");
    c.sql("insert into batches select 1, g, md5(g::text) from generate_series(1, 1000) g");
    c.switch_and_wait_archived(Duration::from_secs(120));

    let moved = src.dir.sub("ts-restored");
    std::fs::remove_dir(&moved).expect("rmdir");
    let mapping = format!("{}={}", ts.display(), moved.display());
    let copy = src.restore_and_start("with-ts", &["--tablespace-mapping", &mapping, "--archive-mode", "off"]);
    assert_eq!(batches(&copy), expect(1));
    assert_eq!(
        copy.sql("select pg_tablespace_location(oid) from pg_tablespace where spcname = 'ts'"),
        moved.display().to_string()
    );
    let oid = copy.sql("select oid from pg_tablespace where spcname = 'ts'");
    let link = std::fs::read_link(copy.data.join("pg_tblspc").join(&oid)).expect("tablespace link");
    assert_eq!(link, moved);
    assert!(summary["files"].as_u64().unwrap_or(0) > 0);
    // The original tablespace directory was not touched by the restore.
    assert_eq!(c.sql("select count(*) from batches"), "2000");

    // Without a mapping, the original location is in use: refused, nothing written.
    let dest = src.dir.sub("no-mapping");
    std::fs::remove_dir(&dest).expect("rmdir");
    let out = src.restore(&dest, &["--archive-mode", "off"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not empty"), "{err}");
}

/// PostgreSQL 14 has the older backup API (pg_start_backup/pg_stop_backup, non-exclusive): a backup of a 14
/// cluster restores to a time exactly, on 14's own binaries.
#[test]
fn postgres_14_backup_api() {
    if require_pg().is_none() {
        return;
    }
    let Some(bin14) = crate::support::cluster::require_pg14() else { return };
    let repo = FileRepo::new("pg14");
    let src = Source::start_on(&bin14, "pg14", &repo.url(), "", "archive_timeout_seconds = 120");
    let c = &src.cluster;
    assert!(c.sql("show server_version_num").starts_with("14"), "not a PostgreSQL 14 server");
    c.sql("create table batches (batch int, id int, pad text)");
    c.sql("insert into batches select 0, g, md5(g::text) from generate_series(1, 1000) g");
    let summary = src.backup_json("full");
    assert!(summary["pg_version_num"].as_u64().is_some_and(|v| (140000..150000).contains(&v)), "{summary}");
    let mut at = Vec::new();
    for batch in 1..=2u32 {
        std::thread::sleep(Duration::from_millis(1100));
        c.sql(&format!("insert into batches select {batch}, g, md5(g::text) from generate_series(1, 1000) g"));
        at.push(c.sql("select clock_timestamp()"));
        c.sql("select pg_switch_wal()");
    }
    c.switch_and_wait_archived(Duration::from_secs(120));
    let copy = src.restore_and_start("pg14-to-time", &["--to", &at[0], "--archive-mode", "off"]);
    assert_eq!(batches(&copy), expect(1));
    assert!(copy.sql("show server_version_num").starts_with("14"));
}
