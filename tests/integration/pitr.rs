//! Base backups and point-in-time restore on real clusters: every restore must hold exactly the transactions
//! committed up to its target.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::support::cluster::{
    Cluster, PgDir, as_postgres, assert_ok, bin, chown_postgres, require_pg, wait_for, write_config,
};

/// A source cluster archiving into a repository, with a configuration base-backup and pitr-restore can use.
pub struct Source {
    pub dir: PgDir,
    pub cluster: Cluster,
    pub config: PathBuf,
}

impl Source {
    /// initdb and start a cluster archiving through wal-push into `url`; `extra` is added to the configuration.
    pub fn start(label: &str, url: &str, extra: &str) -> Self {
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
        let mut cluster = Cluster::init(&dir, "src", &archive);
        let config = write_config(
            &cfg_dir,
            url,
            &cfg_dir.join("spool"),
            &format!(
                "{extra}\n[postgres]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\n\n[backup]\narchive_timeout_seconds = 120\n",
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
    for batch in 1..=4u32 {
        std::thread::sleep(Duration::from_millis(1100));
        c.sql(&format!(
            "insert into batches select {batch}, g, repeat(md5(g::text), 4) from generate_series(1, 1000) g"
        ));
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

#[test]
fn pitr_file_repository() {
    if require_pg().is_none() {
        return;
    }
    let repo = std::env::temp_dir().join(format!("bkctl-pitr-repo-{}", std::process::id()));
    std::fs::create_dir_all(&repo).expect("repo");
    chown_postgres(&repo);
    pitr_scenario(&format!("file://{}", repo.display()), "", "pitr-file");
    let _ = std::fs::remove_dir_all(&repo);
}
