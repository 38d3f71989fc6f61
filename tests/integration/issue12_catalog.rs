//! Issue 12, the catalog in PostgreSQL: `backupctl catalog migrate|sync`, the updates base-backup and prune make,
//! `status --from-catalog`, and the refusal of a catalog inside the archived cluster. The catalog always lives in
//! a cluster of its own, apart from the archived one (except where that refusal is tested).

use std::time::Duration;

use serde_json::Value;

use crate::issue8_gc::backupctl;
use crate::issue8_prune::json_of;
use crate::issue12_catalog_queries::{assert_manifest_checksums, run_documented_queries, straddle_midnight};
use crate::pitr::{FileRepo, Source, s3_repo};
use crate::support::cluster::{Cluster, PgDir, assert_ok, require_pg};

/// A separate cluster holding the catalog. Fields drop in order: the cluster stops before its directory goes (the
/// other way round, `pg_ctl stop` found no data directory and the server ran on).
pub struct CatalogCluster {
    cluster: Cluster,
    _dir: PgDir,
}

impl CatalogCluster {
    pub fn start(label: &str) -> Self {
        let dir = PgDir::new(&format!("{label}-catalog"));
        let mut cluster = Cluster::init(&dir, "catalog", "");
        crate::support::cluster::chown_postgres(dir.path());
        cluster.start();
        Self { cluster, _dir: dir }
    }

    /// The `[catalog]` section pointing at it.
    pub fn section(&self) -> String {
        catalog_section(&self.cluster)
    }

    pub fn sql(&self, sql: &str) -> String {
        self.cluster.sql(sql)
    }
}

fn catalog_section(c: &Cluster) -> String {
    format!(
        "[catalog]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\ndbname = \"postgres\"\nsslmode = \"disable\"\n",
        c.socket.display(),
        c.port
    )
}

/// The versions of the row tuples of the mirrored tables: unchanged when nothing was written.
fn row_versions(cat: &CatalogCluster) -> String {
    cat.sql(
        "select (select string_agg(xmin::text, ',' order by id) from backupctl.repositories) || '|' || \
         (select string_agg(xmin::text, ',' order by id) from backupctl.backups) || '|' || \
         (select string_agg(xmin::text, ',' order by first_segment) from backupctl.wal_ranges) || '|' || \
         (select string_agg(xmin::text, ',' order by backup_id) from backupctl.backup_wal)",
    )
}

/// `status` and `status --from-catalog` agree, in JSON and in text, with and without filters (the age of the
/// newest backup is computed at each call, so it is compared within a few seconds).
pub(crate) fn assert_status_agrees(src: &Source, filters: &[&str]) {
    let mut direct = json_of("status", &backupctl(src, &[&["status", "--json-output"], filters].concat()));
    let mut cataloged = json_of(
        "status --from-catalog",
        &backupctl(src, &[&["status", "--json-output", "--from-catalog"], filters].concat()),
    );
    let age = |v: &mut Value| v.as_object_mut().and_then(|o| o.remove("newest_backup_age_seconds"));
    let (a, b) = (age(&mut direct), age(&mut cataloged));
    match (a.and_then(|v| v.as_i64()), b.and_then(|v| v.as_i64())) {
        (Some(a), Some(b)) => assert!((a - b).abs() <= 5, "ages {a} and {b}"),
        (a, b) => assert_eq!(a, b),
    }
    assert_eq!(direct, cataloged, "status {filters:?} from the repository and from the catalog differ");
    let text = |args: &[&str]| {
        let out = backupctl(src, args);
        assert_ok("status (text)", &out);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("newest backup:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let direct = text(&[&["status"], filters].concat());
    let cataloged = text(&[&["status", "--from-catalog"], filters].concat());
    assert_eq!(direct, cataloged, "status text {filters:?}");
    let listed = if filters.contains(&"dump") { "dumps:" } else { "backups:" };
    assert!(direct.contains(listed), "{direct}");
}

/// Backups on a repository with a catalog: each base backup updates it (the first creates the schema); sync writes
/// only differences (a second sync writes no row, row versions unchanged); `status --from-catalog` equals
/// `status`; prune marks the deleted backups' rows removed; the documented queries run; a job run is recorded.
fn catalog_scenario(url: &str, extra: &str, label: &str) {
    let cat = CatalogCluster::start(label);
    let src = Source::start(label, url, &format!("{extra}\n{}", cat.section()));
    let c = &src.cluster;
    c.sql("create table t (id int, pad text)");
    let mut ids = Vec::new();
    for (i, kind) in ["full", "incremental", "full"].iter().enumerate() {
        c.sql(&format!("insert into t select g, repeat('x', 100) from generate_series(1, {}) g", 1000 * (i + 1)));
        c.sql("select pg_switch_wal()");
        let b = src.backup_json(kind);
        ids.push(b["id"].as_str().expect("id").to_owned());
        // base-backup synced the catalog after its repository work.
        assert_eq!(
            cat.sql("select count(*) from backupctl.backups where removed_at is null"),
            (i + 1).to_string(),
            "after backup {i}"
        );
    }
    let latest = backupctl::catalog::latest_version().to_string();
    assert_eq!(cat.sql("select max(version) from backupctl.schema_history"), latest);
    // WAL after the last backup: the next sync has a range to extend.
    c.sql("insert into t select g, 'after' from generate_series(1, 100) g");
    c.switch_and_wait_archived(Duration::from_secs(120));

    // A checksum an older sync wrote (blake3 of the manifest re-serialized): the next sync corrects it.
    cat.sql("update backupctl.backups set manifest_checksum = 'blake3 of the manifest re-serialized'");
    let first = json_of("catalog sync", &backupctl(&src, &["catalog", "sync", "--json-output"]));
    assert!(first["rows_written"]["wal_ranges"].as_u64().unwrap_or(0) >= 1, "{first:#}");
    assert_eq!(first["rows_written"]["backups"], 3, "{first:#}");
    assert_manifest_checksums(&src, &cat.cluster);
    let before = row_versions(&cat);
    let second = json_of("catalog sync again", &backupctl(&src, &["catalog", "sync", "--json-output"]));
    assert_eq!(second["total"], 0, "an unchanged repository: the second sync writes nothing: {second:#}");
    assert_eq!(row_versions(&cat), before, "no row was rewritten");
    let text = backupctl(&src, &["catalog", "sync"]);
    assert_ok("catalog sync (text)", &text);
    assert!(String::from_utf8_lossy(&text.stdout).contains("synced; 0 rows written"), "{text:?}");

    // The relations: each backup's WAL, the ranges, the restorable window.
    assert_eq!(cat.sql("select count(*) from backupctl.backup_wal"), "3");
    assert_eq!(
        cat.sql(
            "select count(*) from backupctl.backups b join backupctl.backup_wal w on w.backup_id = b.id \
             where b.restorable and b.restorable_from = b.finished_at and w.reach_segment >= w.stop_segment"
        ),
        "3"
    );
    assert_eq!(
        cat.sql("select sum(segments) from backupctl.wal_ranges where removed_at is null"),
        json_of("status", &backupctl(&src, &["status", "--json-output"]))["wal"]["segments"].to_string()
    );

    assert_status_agrees(&src, &[]);
    assert_status_agrees(&src, &["--type", "full"]);
    assert_status_agrees(&src, &["--last", "1"]);

    // Prune: the deleted backups' rows stay, marked removed; status from the catalog follows.
    let pruned = json_of("prune", &backupctl(&src, &["prune", "--policy", "keep-last=1", "--json-output"]));
    assert_eq!(pruned["deleted_backups"].as_array().map(Vec::len), Some(2), "{pruned:#}");
    assert_eq!(
        cat.sql("select string_agg(id, ',' order by id) from backupctl.backups where removed_at is not null"),
        format!("{},{}", ids[0], ids[1])
    );
    assert_eq!(cat.sql("select string_agg(id, ',') from backupctl.backups where removed_at is null"), ids[2]);
    assert_status_agrees(&src, &[]);
    let again = json_of("catalog sync after prune", &backupctl(&src, &["catalog", "sync", "--json-output"]));
    assert_eq!(again["total"], 0, "prune already synced: {again:#}");

    // Archive times on both sides of a UTC midnight (file:// only: S3 sets the times itself), synced by the dump.
    for _ in 0..3 {
        c.sql("insert into t values (0, 'one more segment')");
        c.switch_and_wait_archived(Duration::from_secs(120));
    }
    let straddled = url.strip_prefix("file://").map(|dir| straddle_midnight(std::path::Path::new(dir))).is_some();

    // A logical dump updates the catalog too.
    let dump = json_of("dump", &backupctl(&src, &["dump", "--database", "postgres", "--json-output"]));
    let dump_id = dump["id"].as_str().expect("dump id").to_owned();
    assert_eq!(cat.sql("select string_agg(id, ',') from backupctl.dumps where removed_at is null"), dump_id);
    assert_eq!(cat.sql("select databases[1] from backupctl.dumps"), "postgres");
    assert_status_agrees(&src, &[]);
    assert_status_agrees(&src, &["--type", "dump"]);
    let after_dump = json_of("catalog sync after dump", &backupctl(&src, &["catalog", "sync", "--json-output"]));
    assert_eq!(after_dump["total"], 0, "dump already synced: {after_dump:#}");

    // The scheduler's record of job runs (what the daemon calls after each job): a failed verify, and a drill
    // with what it measured.
    let config = backupctl::config::Config::load(&src.config).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let now = jiff::Timestamp::now().to_string();
    let run = backupctl::catalog::JobRun {
        job: "verify".into(),
        started_by: backupctl::catalog::StartedBy::Scheduler,
        started_at: now.clone(),
        finished_at: now.clone(),
        summary: None,
        error: Some("backup X: 1 object missing".into()),
        drill: None,
    };
    backupctl::cli::admin::catalog::record_job_run(&config, &rt, &run, false);
    assert_eq!(cat.sql("select count(*) from backupctl.checks where not passed and kind = 'verify'"), "1");
    let backup_id = cat.sql("select min(id) from backupctl.backups where removed_at is null");
    let run = backupctl::catalog::JobRun {
        job: "drill".into(),
        started_by: backupctl::catalog::StartedBy::Scheduler,
        started_at: now.clone(),
        finished_at: now,
        summary: Some("restore drill passed".into()),
        error: None,
        drill: Some(backupctl::catalog::DrillFacts {
            backup_id: Some(backup_id.clone()),
            rto_seconds: Some(4.25),
            restore_seconds: Some(1.5),
            bytes_restored: 123_456,
            recovery_target: None,
        }),
    };
    backupctl::cli::admin::catalog::record_job_run(&config, &rt, &run, false);
    assert_eq!(
        cat.sql(
            "select d.backup_id || ' ' || d.rto_seconds || ' ' || d.restore_seconds || ' ' || d.bytes_restored \
             || ' ' || r.started_by from backupctl.drills d join backupctl.job_runs r on r.id = d.job_run_id"
        ),
        format!("{backup_id} 4.25 1.5 123456 scheduler")
    );
    // The documented queries run and answer, whatever the session's time zone.
    run_documented_queries(&src, &cat.cluster, straddled);

    // Issue 12: check and verify run by hand are recorded too, passed or not (after the queries: check switches
    // WAL, which the WAL-per-day comparison would then miss until the next sync).
    assert_ok("verify", &backupctl(&src, &["verify"]));
    backupctl(&src, &["check"]);
    assert_eq!(
        cat.sql(
            "select string_agg(r.job || ' ' || c.kind, ',' order by r.id) from backupctl.job_runs r \
             join backupctl.checks c on c.job_run_id = r.id where r.started_by = 'manual'"
        ),
        "verify verify,check check"
    );
    assert_eq!(
        cat.sql(
            "select count(*) from backupctl.job_runs where started_by = 'manual' and outcome = 'succeeded' \
             and job = 'verify' and summary like 'verified % backups and 1 dumps: %'"
        ),
        "1"
    );
    assert_eq!(cat.sql("select count(*) from backupctl.checks where detail is null"), "0");

    // Deleting the dump marks its row removed.
    assert_ok("delete dump", &backupctl(&src, &["delete", "--backup-id", &dump_id]));
    assert_eq!(cat.sql("select count(*) from backupctl.dumps where removed_at is not null"), "1");
    assert_status_agrees(&src, &[]);
}

#[test]
fn issue_12_catalog_file_repository() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("catalog");
    catalog_scenario(&repo.url(), "", "catalog-file");
}

#[test]
fn issue_12_catalog_s3_repository() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("catalog") else { return };
    catalog_scenario(&url, &extra, "catalog-s3");
}

/// Migrations from an empty database (version 1 only), then from version 1 with a row in it (version 2 fills the
/// new columns from the old row), then from version 2 with a drill in it (sync applies version 3, which takes the
/// drill's backup and RTO from its summary, and version 4, which adds the sync's bookkeeping); a schema newer than
/// this build is refused.
#[test]
fn issue_12_catalog_migrations() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("catalog-mig");
    let cat = CatalogCluster::start("catalog-mig");
    let src = Source::start("catalog-mig", &repo.url(), &cat.section());
    src.cluster.switch_and_wait_archived(Duration::from_secs(120));
    // Nothing synced yet (no schema at all): status from the catalog says so and what to run.
    assert_not_synced(&src, &repo.url());
    // A version this build does not know is refused, not "nothing to do".
    let beyond = backupctl(&src, &["catalog", "migrate", "--to-version", "9"]);
    assert_eq!(beyond.status.code(), Some(2), "{beyond:?}");
    assert!(String::from_utf8_lossy(&beyond.stderr).contains("knows schema versions 1 to 4"), "{beyond:?}");
    let v1 = json_of("migrate to 1", &backupctl(&src, &["catalog", "migrate", "--to-version", "1", "--json-output"]));
    assert_eq!(v1["version"], 1, "{v1:#}");
    assert_eq!(v1["applied"], serde_json::json!([1]));
    assert_eq!(cat.sql("select to_regclass('backupctl.job_runs') is null"), "t");
    // A schema at an older version (and no row for this repository): status from the catalog names the version
    // and what to run, not "not synced" (a sync would migrate, so the hint would do, but it would not say why).
    let out = backupctl(&src, &["status", "--from-catalog"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "catalog schema is at version 1, this backupctl needs {}: run `backupctl catalog migrate`",
            backupctl::catalog::latest_version()
        )),
        "{err}"
    );
    // Issue 12: the implicit updates create a schema but never migrate one staged at an older version: base-backup
    // succeeds, warns once, and leaves the schema (and its tables) as they were; so does a scheduled job's record.
    let out = src.base_backup(&["--fast", "--type", "full"]);
    assert_ok("base-backup with the schema staged at version 1", &out);
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("catalog")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {err}");
    assert!(
        warnings[0].starts_with(
            "base-backup: warning: catalog not updated: catalog schema is at version 1, this \
             backupctl needs 4: run `backupctl catalog migrate`"
        ),
        "{err}"
    );
    let config = backupctl::config::Config::load(&src.config).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let now = jiff::Timestamp::now().to_string();
    let run = backupctl::catalog::JobRun {
        job: "verify".into(),
        started_by: backupctl::catalog::StartedBy::Scheduler,
        started_at: now.clone(),
        finished_at: now,
        summary: Some("ok".into()),
        error: None,
        drill: None,
    };
    backupctl::cli::admin::catalog::record_job_run(&config, &rt, &run, false);
    assert_eq!(cat.sql("select string_agg(version::text, ',') from backupctl.schema_history"), "1");
    assert_eq!(cat.sql("select count(*) from backupctl.backups"), "0");
    assert_eq!(cat.sql("select to_regclass('backupctl.job_runs') is null"), "t");
    // A version-1 row, as an earlier backupctl would have written it.
    cat.sql(
        "insert into backupctl.repositories (url) values ('file:///elsewhere'); \
         insert into backupctl.backups (repository_id, id, label, type, status, started_at, finished_at, start_lsn, \
         stop_lsn, timeline, bytes_logical, bytes_stored, bytes_new, manifest_checksum, restorable, kept, document) \
         select id, '20260101-000000F', 'old', 'full', 'ok', '2026-01-01T00:00:00Z', '2026-01-01T00:01:00Z', \
         '0/2000028', '0/2000100', 1, 1, 1, 1, 'x', true, false, \
         '{\"reaches\": {\"archived_at\": \"2026-01-01T00:05:00Z\"}}' from backupctl.repositories",
    );
    // Version 2 fills the new columns from the version-1 row.
    let v2 = json_of("migrate to 2", &backupctl(&src, &["catalog", "migrate", "--to-version", "2", "--json-output"]));
    assert_eq!(v2["applied"], serde_json::json!([2]), "{v2:#}");
    assert_eq!(
        cat.sql(
            "select restorable_from = finished_at and restorable_until = '2026-01-01T00:05:00Z' \
             from backupctl.backups where id = '20260101-000000F'"
        ),
        "t",
        "version 2 filled the window of the existing row"
    );
    // A scheduled drill as version 2 recorded it: its facts only in the summary.
    cat.sql(
        "insert into backupctl.job_runs (job, started_at, finished_at, outcome, summary) values ('drill', \
         '2026-01-02T00:00:00Z', '2026-01-02T00:01:00Z', 'succeeded', 'x'); \
         insert into backupctl.drills (job_run_id, passed, finished_at, detail) select id, true, finished_at, \
         'restore drill of backup 20260101-000000F passed: recovered WAL A to B in 12.5 s (RTO)' \
         from backupctl.job_runs",
    );
    // The explicit sync migrates, and says so; it then mirrors the backup the implicit update skipped.
    let synced = json_of("sync from version 2", &backupctl(&src, &["catalog", "sync", "--json-output"]));
    assert_eq!(synced["rows_written"]["repositories"], 1, "{synced:#}");
    assert_eq!(synced["rows_written"]["backups"], 1, "{synced:#}");
    assert_eq!(synced["migrated"], serde_json::json!({ "from": 2, "to": 4, "applied": [3, 4] }), "{synced:#}");
    assert_eq!(
        cat.sql("select string_agg(version::text, ',' order by version) from backupctl.schema_history"),
        "1,2,3,4"
    );
    // Version 3: the drill's backup and RTO come out of its summary; the old run was the scheduler's.
    assert_eq!(
        cat.sql(
            "select d.backup_id || ' ' || d.rto_seconds || ' ' || r.started_by \
             from backupctl.drills d join backupctl.job_runs r on r.id = d.job_run_id"
        ),
        "20260101-000000F 12.5 scheduler"
    );
    let again = json_of("migrate again", &backupctl(&src, &["catalog", "migrate", "--json-output"]));
    assert_eq!((again["version"].clone(), again["applied"].clone()), (serde_json::json!(4), serde_json::json!([])));
    // Down is refused (it said "nothing to do"): migrations only go forward.
    let down = backupctl(&src, &["catalog", "migrate", "--to-version", "1"]);
    assert_eq!(down.status.code(), Some(2), "{down:?}");
    assert!(String::from_utf8_lossy(&down.stderr).contains("at version 4 already; migrations only go forward"));
    // A schema a newer backupctl migrated: refused, naming both versions.
    cat.sql(
        "insert into backupctl.schema_history (version, name, applied_on, checksum) \
         select 99, 'future', applied_on, '0' from backupctl.schema_history where version = 3",
    );
    let out = backupctl(&src, &["catalog", "sync"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("schema backupctl is at version 99, newer than this build's 4"), "{err}");
}

/// Issue 12: `status --from-catalog` before any sync of this repository is a failure (exit 1, not a usage error)
/// in one line saying so, with the command to run in the hint.
fn assert_not_synced(src: &Source, url: &str) {
    let out = backupctl(src, &["status", "--from-catalog"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("backupctl: error: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("has not been synced for repository ") && errors[0].ends_with(url), "{err}");
    assert!(err.lines().any(|l| l.starts_with("backupctl: hint: ") && l.contains("`backupctl catalog sync`")), "{err}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// A catalog inside the archived cluster is refused in one line by the catalog commands; base-backup still
/// succeeds (its backup is in the repository) and warns that the catalog was not updated.
#[test]
fn issue_12_catalog_in_the_archived_cluster_is_refused() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("catalog-self");
    let src = Source::start("catalog-self", &repo.url(), "");
    src.cluster.switch_and_wait_archived(Duration::from_secs(120));
    // Point [catalog] at the archived cluster itself.
    let text = std::fs::read_to_string(&src.config).expect("config");
    std::fs::write(&src.config, format!("{text}\n{}", catalog_section(&src.cluster))).expect("config");
    for args in [&["catalog", "sync"][..], &["catalog", "migrate"], &["status", "--from-catalog"]] {
        let out = backupctl(&src, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("is in the cluster this repository archives (system identifier"), "{err}");
        assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{err}");
    }
    let out = src.base_backup(&["--fast", "--type", "full"]);
    assert_ok("base-backup with a refused catalog", &out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("base-backup: warning: catalog not updated: catalog at"), "{err}");
    assert_eq!(src.sql_catalog_schema(), "f", "nothing was written into the archived cluster");
}

/// The scheduler daemon records each job run in the catalog (and a verify run in `checks`), and syncs it after
/// a backup job: the backup it took is a row.
#[test]
fn issue_12_scheduler_records_job_runs() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("catalog-daemon");
    let cat = CatalogCluster::start("catalog-daemon");
    let schedule = "[schedule]\ntime_zone = \"UTC\"\nfull_backup = \"*/3 * * * * *\"\nverify = \"*/4 * * * * *\"\n\
                    fast_checkpoint = true\n";
    let src = Source::start("catalog-daemon", &repo.url(), &format!("{}\n{schedule}", cat.section()));
    let dir = src.dir.sub("daemon");
    let daemon = crate::issue9_schedule::Daemon::start(&src.config, &dir, &[]);
    let query = "select count(*) filter (where job = 'full_backup' and outcome = 'succeeded') || ',' || \
                 count(*) filter (where job = 'verify' and outcome = 'succeeded') from backupctl.job_runs";
    daemon.wait("a backup and a verify run recorded in the catalog", Duration::from_secs(120), || {
        let out = cat.cluster.try_sql(query);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let counts: Vec<u64> = text.split(',').filter_map(|n| n.parse().ok()).collect();
        (counts.len() == 2 && counts.iter().all(|&n| n > 0)).then_some(())
    });
    let (code, log, _) = daemon.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(cat.sql("select count(*) from backupctl.backups").parse::<u64>().expect("count") >= 1);
    assert_eq!(
        cat.sql(
            "select count(*) from backupctl.checks c join backupctl.job_runs r on r.id = c.job_run_id \
             where c.kind = 'verify' and c.passed and r.job = 'verify'"
        )
        .parse::<u64>()
        .map(|n| n >= 1),
        Ok(true)
    );
}

/// Before any WAL reached the repository (no cluster record to compare), the `[postgres]` server's identity is
/// compared: a catalog in that cluster is refused before the schema is created.
#[test]
fn issue_12_catalog_in_the_cluster_is_refused_before_any_wal() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("catalog-self-new");
    let src = Source::start("catalog-self-new", &repo.url(), "");
    let text = std::fs::read_to_string(&src.config).expect("config");
    std::fs::write(&src.config, format!("{text}\n{}", catalog_section(&src.cluster))).expect("config");
    assert_ok("init", &backupctl(&src, &["init"]));
    assert!(!repo.dir.path().join("cluster.json").exists(), "no WAL archived yet: nothing recorded");
    let out = backupctl(&src, &["catalog", "migrate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is in the cluster this repository archives (system identifier"), "{err}");
    assert_eq!(src.sql_catalog_schema(), "f", "nothing was written into the archived cluster");
}

impl Source {
    /// Whether schema backupctl exists in the archived cluster ("t"/"f").
    fn sql_catalog_schema(&self) -> String {
        self.cluster.sql("select exists (select 1 from pg_namespace where nspname = 'backupctl')")
    }
}
