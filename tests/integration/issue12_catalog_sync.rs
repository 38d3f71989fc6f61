//! Issue 12, "idempotent, fast when nothing changed": a `catalog sync` of a repository that did not change since
//! the last sync reads no manifest, file map, block-map node, pack index or dump manifest (only listings and the
//! repository's small records), and a changed repository (WAL archived or pruned, a keep mark, a new backup, a
//! deleted backup, a new or deleted dump, a catalog row edited by hand) is still mirrored exactly:
//! `status --from-catalog` equals `status` after each.
//!
//! The repository changes through a configuration without `[catalog]` (no implicit sync), and each sync runs
//! through the library with a [`Counting`] storage, so that its requests are counted per key prefix. The number
//! of base backups is `ISSUE12_SYNC_BACKUPS` (default 6); the figures are printed on stderr.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backupctl::storage::testing::{Counting, Request};
use serde_json::Value;

use crate::issue8_gc::backupctl;
use crate::issue8_prune::json_of;
use crate::issue12_catalog::{CatalogCluster, assert_status_agrees};
use crate::pitr::{FileRepo, Source, s3_repo};
use crate::support::cluster::{as_postgres, assert_ok, bin, chown_postgres, require_pg};

/// A source cluster, its catalog, and a second configuration without `[catalog]`.
struct Env {
    cat: CatalogCluster,
    src: Source,
    /// The same configuration without `[catalog]`: commands run with it leave the catalog alone.
    bare: PathBuf,
    config: backupctl::config::Config,
    rt: tokio::runtime::Runtime,
    what: String,
}

/// The requests of one sync, by kind.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    manifests: usize,
    keep_marks: usize,
    maps: usize,
    index: usize,
    dumps: usize,
    other_gets: usize,
    lists: usize,
    other: usize,
}

impl Counts {
    fn of(requests: &[Request]) -> Self {
        let mut c = Counts { total: requests.len(), ..Counts::default() };
        for r in requests {
            match r.op {
                "get" if r.key.starts_with("backups/") && r.key.ends_with("/manifest") => c.manifests += 1,
                "get" if r.key.starts_with("backups/") => c.keep_marks += 1,
                "get" if r.key.starts_with("maps/") => c.maps += 1,
                "get" if r.key.starts_with("index/") => c.index += 1,
                "get" if r.key.starts_with("dumps/") => c.dumps += 1,
                "get" => c.other_gets += 1,
                "list" => c.lists += 1,
                _ => c.other += 1,
            }
        }
        c
    }

    /// Nothing but listings and small records: no manifest, file map, node, index or dump manifest.
    fn is_cheap(&self) -> bool {
        self.manifests + self.maps + self.index + self.dumps == 0
    }
}

impl Env {
    fn start(url: &str, extra: &str, label: &str) -> Self {
        let cat = CatalogCluster::start(label);
        let src = Source::start(label, url, &format!("{extra}\n{}", cat.section()));
        let text = std::fs::read_to_string(&src.config).expect("config");
        let bare = src.config.with_file_name("bare.toml");
        std::fs::write(&bare, text.replace(&cat.section(), "")).expect("bare config");
        chown_postgres(src.dir.path());
        let config = backupctl::config::Config::load(&src.config).expect("config");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        Self { cat, src, bare, config, rt, what: label.to_owned() }
    }

    /// `backupctl ARGS` with the configuration without `[catalog]`.
    fn bare(&self, args: &[&str]) -> Output {
        as_postgres(&bin("backupctl")).arg("--config").arg(&self.bare).args(args).output().expect("backupctl")
    }

    /// A base backup of `kind` that leaves the catalog alone; its id.
    fn backup(&self, kind: &str) -> String {
        let out = as_postgres(&bin("base-backup"))
            .arg("--config")
            .arg(&self.bare)
            .args(["--fast", "--json", "--type", kind])
            .output()
            .expect("base-backup");
        assert_ok("base-backup", &out);
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["id"].as_str().expect("id").to_owned()
    }

    /// A dump of database postgres that leaves the catalog alone; its id.
    fn dump(&self) -> String {
        let v = json_of("dump", &self.bare(&["dump", "--database", "postgres", "--json-output"]));
        v["id"].as_str().expect("id").to_owned()
    }

    /// Rows changed and WAL archived: the next backup has something to copy.
    fn write(&self, i: usize) {
        let c = &self.src.cluster;
        c.sql(&format!("insert into t select g, repeat('x', 200) from generate_series(1, {}) g", 500 * (i + 1)));
        c.switch_and_wait_archived(Duration::from_secs(120));
    }

    /// One sync through the library, its requests counted: the report, the counts, the time it took.
    fn sync(&self, step: &str) -> (Value, Counts, Duration) {
        let deadline = Duration::from_secs(self.config.archive.retry_deadline_seconds);
        let inner = self
            .rt
            .block_on(backupctl::storage::open(&self.config.repository.url, &self.config.repository.s3, deadline))
            .expect("open");
        let counting = Arc::new(Counting::new(inner));
        let started = Instant::now();
        let (report, _) = backupctl::cli::admin::catalog::sync_storage(&self.config, &self.rt, counting.as_ref(), true)
            .unwrap_or_else(|e| panic!("{step}: sync: {e}"));
        let took = started.elapsed();
        let counts = Counts::of(&counting.take());
        let mut rows = serde_json::to_value(report).expect("report");
        rows["total"] = report.total().into();
        eprintln!(
            "issue12_catalog_sync {}: {step}: {} rows written {rows}; {} requests (get: {} manifests, {} keep marks, \
             {} maps/, {} index/, {} dumps/, {} other; {} lists; {} other); {:.3} s",
            self.what,
            report.total(),
            counts.total,
            counts.manifests,
            counts.keep_marks,
            counts.maps,
            counts.index,
            counts.dumps,
            counts.other_gets,
            counts.lists,
            counts.other,
            took.as_secs_f64()
        );
        (rows, counts, took)
    }

    /// The median wall time of `runs` runs of `backupctl catalog sync` (the whole program, as cron runs it).
    fn cli_sync_median(&self, runs: usize) -> Duration {
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let out = backupctl(&self.src, &["catalog", "sync", "--json-output"]);
                let took = t.elapsed();
                let v = json_of("catalog sync", &out);
                assert_eq!(v["total"], 0, "nothing changed: {v:#}");
                took
            })
            .collect();
        times.sort();
        times[runs / 2]
    }
}

fn sum(rows: &Value, keys: &[&str]) -> u64 {
    keys.iter().map(|k| rows[*k].as_u64().unwrap_or(0)).sum()
}

fn scenario(url: &str, extra: &str, label: &str) {
    let env = Env::start(url, extra, label);
    let c = &env.src.cluster;
    let backups: usize = std::env::var("ISSUE12_SYNC_BACKUPS").ok().and_then(|n| n.parse().ok()).unwrap_or(6);
    c.sql("create table t (id int, pad text)");
    env.write(0);
    let mut ids = Vec::new();
    for i in 0..backups {
        ids.push(env.backup(if i % 4 == 0 { "full" } else { "incremental" }));
        env.write(i + 1);
    }
    let dumps = [env.dump(), env.dump()];

    // The first sync mirrors everything; the second finds nothing changed.
    let (first, ..) = env.sync("first sync");
    assert_eq!(first["backups"], backups, "{first:#}");
    assert_eq!(first["dumps"], 2, "{first:#}");
    let (rows, unchanged, took) = env.sync("unchanged sync");
    assert_eq!(sum(&rows, &["total"]), 0, "{rows:#}");
    let median = env.cli_sync_median(5);
    eprintln!(
        "issue12_catalog_sync {label}: {backups} backups, 2 dumps: unchanged sync {} requests, {:.3} s in the \
         library; `backupctl catalog sync` median of 5: {:.3} s",
        unchanged.total,
        took.as_secs_f64(),
        median.as_secs_f64()
    );
    assert!(unchanged.is_cheap(), "an unchanged sync reads only listings and small records: {unchanged:?}");
    assert_status_agrees(&env.src, &[]);

    // WAL archived since: ranges change, no manifest is read.
    env.write(backups + 1);
    let (rows, counts, _) = env.sync("after WAL was archived");
    assert!(sum(&rows, &["wal_ranges"]) >= 1, "{rows:#}");
    assert!(counts.is_cheap(), "{counts:?}");
    assert_status_agrees(&env.src, &[]);

    // A keep mark: the backup's row changes, from the mark alone.
    assert_ok("keep", &env.bare(&["keep", "--backup-id", &ids[1], "--forever"]));
    let (rows, counts, _) = env.sync("after keep");
    assert!(sum(&rows, &["backups"]) >= 1, "{rows:#}");
    assert!(counts.is_cheap(), "{counts:?}");
    assert_eq!(env.cat.sql(&format!("select kept from backupctl.backups where id = '{}'", ids[1])), "t");
    assert_status_agrees(&env.src, &[]);

    // A new backup: read (and so are the others: their unique sizes depend on it); then unchanged again.
    let new = env.backup("incremental");
    let (rows, ..) = env.sync("after a new backup");
    assert!(sum(&rows, &["backups"]) >= 1, "{rows:#}");
    assert_eq!(env.cat.sql(&format!("select count(*) from backupctl.backups where id = '{new}'")), "1");
    assert_status_agrees(&env.src, &[]);
    let (rows, counts, _) = env.sync("unchanged after the new backup");
    assert_eq!(sum(&rows, &["total"]), 0);
    assert!(counts.is_cheap(), "{counts:?}");

    // A new dump: only its manifest is read.
    let dump = env.dump();
    let (rows, counts, _) = env.sync("after a new dump");
    assert_eq!(sum(&rows, &["dumps", "dumps_removed"]), 1, "{rows:#}");
    assert_eq!((counts.dumps, counts.manifests, counts.maps, counts.index), (1, 0, 0, 0), "{counts:?}");
    assert_status_agrees(&env.src, &[]);
    assert_status_agrees(&env.src, &["--type", "dump"]);

    // A deleted backup: its row is marked removed, the others' sizes follow.
    assert_ok("delete", &env.bare(&["delete", "--backup-id", &ids[0]]));
    let (rows, ..) = env.sync("after a deleted backup");
    assert_eq!(rows["backups_removed"], 1, "{rows:#}");
    assert_eq!(
        env.cat.sql(&format!("select removed_at is not null from backupctl.backups where id = '{}'", ids[0])),
        "t"
    );
    assert_status_agrees(&env.src, &[]);

    // WAL pruned (every backup kept): the ranges before the oldest backup are marked removed or shortened.
    let ranges = env.cat.sql("select string_agg(first_segment, ',' order by first_segment) from backupctl.wal_ranges where removed_at is null");
    let pruned = json_of("prune", &env.bare(&["prune", "--policy", "keep-last=100", "--json-output"]));
    assert_eq!(pruned["deleted_backups"].as_array().map(Vec::len), Some(0), "{pruned:#}");
    let (rows, counts, _) = env.sync("after WAL was pruned");
    assert!(sum(&rows, &["wal_ranges", "wal_ranges_removed"]) >= 1, "{rows:#} {pruned:#}");
    assert_ne!(env.cat.sql("select string_agg(first_segment, ',' order by first_segment) from backupctl.wal_ranges where removed_at is null"), ranges);
    // Prune deleted WAL only (gc keeps objects younger than its grace period): no manifest is read.
    assert!(counts.is_cheap(), "{counts:?}");
    assert_status_agrees(&env.src, &[]);

    // A deleted dump.
    assert_ok("delete dump", &env.bare(&["delete", "--backup-id", &dump]));
    let (rows, counts, _) = env.sync("after a deleted dump");
    assert_eq!(rows["dumps_removed"], 1, "{rows:#}");
    assert!(counts.is_cheap(), "{counts:?}");
    assert_status_agrees(&env.src, &[]);
    assert_status_agrees(&env.src, &["--type", "dump"]);
    assert_eq!(env.cat.sql("select count(*) from backupctl.dumps where removed_at is null"), dumps.len().to_string());

    // A row edited by hand: the sync does not trust it, reads the repository and writes the row back.
    let id = &ids[2];
    env.cat.sql(&format!(
        "update backupctl.backups set document = jsonb_set(document, '{{sizes,logical}}', '1') where id = '{id}'"
    ));
    let (rows, counts, _) = env.sync("after a row was edited");
    assert_eq!(rows["backups"], 1, "{rows:#}");
    assert!(counts.manifests > 0, "{counts:?}");
    assert_status_agrees(&env.src, &[]);
    let (rows, counts, _) = env.sync("unchanged at the end");
    assert_eq!(sum(&rows, &["total"]), 0);
    assert!(counts.is_cheap(), "{counts:?}");
}

#[test]
fn issue_12_catalog_sync_unchanged_file_repository() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("catalog-unchanged");
    scenario(&repo.url(), "", "catalog-unchanged-file");
}

#[test]
fn issue_12_catalog_sync_unchanged_s3_repository() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("catalog-unchanged") else { return };
    scenario(&url, &extra, "catalog-unchanged-s3");
}

/// Two syncs at once: sync A reads the catalog and the repository's listings, then (paused by a hook before its
/// first read under `backups/`) a new backup is taken and `backupctl catalog sync` B starts. B must not commit
/// while A holds its older picture: before the fix B committed at once, A committed after it, and the new
/// backup's row was marked removed while the backup existed. Now B waits for A's lock and mirrors the newer state.
#[test]
fn issue_12_catalog_concurrent_syncs_keep_the_newest_picture() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("catalog-concurrent");
    let env = Env::start(&repo.url(), "", "catalog-concurrent-file");
    env.src.cluster.sql("create table t (id int, pad text)");
    env.write(0);
    env.backup("full");
    env.sync("first sync");
    env.write(1);
    env.backup("incremental");

    let newest: Arc<std::sync::Mutex<Option<(String, std::process::Child)>>> = Arc::default();
    let action = {
        let (newest, bare, config) = (newest.clone(), env.bare.clone(), env.src.config.clone());
        move || {
            let out = as_postgres(&bin("base-backup"))
                .arg("--config")
                .arg(&bare)
                .args(["--fast", "--json", "--type", "incremental"])
                .output()
                .expect("base-backup");
            assert_ok("base-backup during the sync", &out);
            let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            let id = v["id"].as_str().expect("id").to_owned();
            let b = as_postgres(&bin("backupctl"))
                .arg("--config")
                .arg(&config)
                .args(["catalog", "sync", "--json-output"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("catalog sync B");
            // Time for B to read and commit, had it not to wait for A.
            std::thread::sleep(Duration::from_secs(3));
            *newest.lock().expect("lock") = Some((id, b));
        }
    };
    let deadline = Duration::from_secs(env.config.archive.retry_deadline_seconds);
    let inner = env
        .rt
        .block_on(backupctl::storage::open(&env.config.repository.url, &env.config.repository.s3, deadline))
        .expect("open");
    let paused = Arc::new(
        backupctl::storage::testing::Faulty::new(inner, 0, Duration::ZERO).before_first_get("backups/", action),
    );
    backupctl::cli::admin::catalog::sync_storage(&env.config, &env.rt, paused.as_ref(), true).expect("sync A");
    let (id, b) = newest.lock().expect("lock").take().expect("the hook ran");
    let b = b.wait_with_output().expect("sync B");
    assert_ok("catalog sync B", &b);
    assert_eq!(
        env.cat.sql(&format!("select count(*) from backupctl.backups where id = '{id}' and removed_at is null")),
        "1",
        "the backup taken during sync A is in the catalog, not marked removed"
    );
    assert_status_agrees(&env.src, &[]);
}

/// The catalog names a repository by its URL. A repository re-created at the same path for another cluster (or
/// two repositories of one URL on different hosts or S3 endpoints) must not silently take over the first one's
/// rows: the sync and `status --from-catalog` refuse, naming both clusters, and the hint's statement (retire
/// the old row) lets the new repository be mirrored. Before, the sync overwrote the row and marked the first
/// repository's backups removed, and `status --from-catalog` showed one repository's backups for the other.
#[test]
fn issue_12_catalog_refuses_another_cluster_at_the_same_url() {
    if require_pg().is_none() {
        return;
    }
    let cat = CatalogCluster::start("catalog-other");
    let repo = FileRepo::new("catalog-other");
    // Spelled with a trailing slash: the catalog row is named by the normal path all the same.
    let url = format!("{}/", repo.url());
    let mut first = Source::start("catalog-other-a", &url, &cat.section());
    assert_ok("first cluster's backup", &first.base_backup(&["--fast"]));
    assert_ok("first cluster's sync", &backupctl(&first, &["catalog", "sync"]));
    let recorded = cat.sql("select system_identifier from backupctl.repositories");
    assert_eq!(cat.sql("select url from backupctl.repositories"), repo.url());
    first.cluster.stop();

    // The repository is re-created for a new cluster at the same path.
    for entry in std::fs::read_dir(repo.dir.path()).expect("repo") {
        let path = entry.expect("entry").path();
        if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }.expect("remove");
    }
    let second = Source::start("catalog-other-b", &repo.url(), &cat.section());
    let backup = second.base_backup(&["--fast"]);
    assert_ok("second cluster's backup (the catalog update is only a warning)", &backup);
    let warned = String::from_utf8_lossy(&backup.stderr);
    assert!(warned.contains("catalog not updated") && warned.contains(&recorded), "{warned}");
    for args in [&["catalog", "sync"][..], &["status", "--from-catalog"]] {
        let out = backupctl(&second, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("holds repository {} of cluster {recorded}", repo.url())), "{args:?}: {err}");
        assert!(err.contains("retire the old row"), "{args:?}: {err}");
    }
    assert_eq!(cat.sql("select count(*) from backupctl.backups where removed_at is null"), "1", "untouched");

    // What the hint says, then the new repository is mirrored beside the retired one.
    cat.sql(&format!("update backupctl.repositories set url = url || ' (retired)' where url = '{}'", repo.url()));
    assert_ok("sync after retiring", &backupctl(&second, &["catalog", "sync"]));
    assert_eq!(cat.sql("select count(*) from backupctl.repositories"), "2");
    assert_status_agrees(&second, &[]);
}
