//! Issue 12: logical dumps (`backupctl dump`, `dump-restore`) on real clusters, into file:// and S3 (moto).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::issue8_gc::s3_settings;
use crate::pitr::{FileRepo, s3_repo};
use crate::support::cluster::{
    Cluster, PgDir, as_postgres, assert_ok, bin, chown_postgres, output_text, require_pg, wait_for, write_config,
};
use crate::support::raw::Raw;

/// The unusual table: quotes, spaces and non-ASCII letters in its name and a column's.
const ODD_TABLE: &str = "we\"ird tä ble";

/// A cluster (no archiving) and a repository with a configuration whose [postgres] section reaches the cluster.
pub(crate) struct Env {
    pub(crate) dir: PgDir,
    pub(crate) cluster: Cluster,
    pub(crate) config: PathBuf,
    pub(crate) url: String,
    pub(crate) extra: String,
    pub(crate) repo: Option<FileRepo>,
}

impl Env {
    pub(crate) fn new(label: &str, repo: Option<FileRepo>, url: &str, extra: &str, config_extra: &str) -> Self {
        let dir = PgDir::new(label);
        let mut cluster = Cluster::init(&dir, "src", "");
        let cfg_dir = dir.sub("cfg");
        let spool = cfg_dir.join("spool");
        std::fs::create_dir_all(&spool).expect("spool");
        let config = write_config(
            &cfg_dir,
            url,
            &spool,
            &format!(
                "{extra}\n{config_extra}\n[postgres]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\n",
                cluster.socket.display(),
                cluster.port
            ),
        );
        chown_postgres(dir.path());
        cluster.start();
        let env = Self { dir, cluster, config, url: url.to_owned(), extra: extra.to_owned(), repo };
        assert_ok("init", &env.backupctl(&["init"]));
        env
    }

    pub(crate) fn backupctl(&self, args: &[&str]) -> Output {
        as_postgres(&bin("backupctl")).arg("--config").arg(&self.config).args(args).output().expect("backupctl")
    }

    /// Hold an ACCESS EXCLUSIVE lock on `table` in `db` (a psql session in a transaction that sleeps), so that a
    /// pg_dump of it waits; returns once the lock is held. Release with [`Env::release_locks`].
    pub(crate) fn lock_table(&self, db: &str, table: &str) -> std::process::Child {
        let locker = Command::new("psql")
            .args(["-X", "-q", "-U", "postgres", "-h"])
            .arg(&self.cluster.socket)
            .arg("-p")
            .arg(self.cluster.port.to_string())
            .args([
                "-d",
                db,
                "-c",
                &format!("begin; lock table {table} in access exclusive mode; select pg_sleep(120);"),
            ])
            .spawn()
            .expect("locker");
        wait_for("the lock", Duration::from_secs(30), || {
            let sql = format!(
                "select count(*) from pg_locks where mode = 'AccessExclusiveLock' and relation = '{table}'::regclass"
            );
            (self.sql_in(db, &sql) == "1").then_some(())
        });
        locker
    }

    /// Wait until a session of application `application` (`%` for any) waits on a lock.
    pub(crate) fn wait_for_lock_wait(&self, application: &str) {
        wait_for("pg_dump waiting for the lock", Duration::from_secs(60), || {
            let sql = format!(
                "select count(*) from pg_stat_activity where application_name like '{application}' \
                 and wait_event_type = 'Lock'"
            );
            (self.sql_in("postgres", &sql) != "0").then_some(())
        });
    }

    /// End the sessions of [`Env::lock_table`] (their transactions roll back, the locks go) and reap `locker`.
    pub(crate) fn release_locks(&self, mut locker: std::process::Child) {
        self.sql_in(
            "postgres",
            "select pg_terminate_backend(pid) from pg_stat_activity where query like '%pg_sleep(120)%' \
             and pid <> pg_backend_pid()",
        );
        let _ = locker.kill();
        let _ = locker.wait();
    }

    /// psql in database `db`; unaligned, tuples only, trimmed; panics on error.
    pub(crate) fn sql_in(&self, db: &str, sql: &str) -> String {
        let out = self.try_sql_in(db, sql);
        assert_ok(&format!("psql -d {db} {sql}"), &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub(crate) fn try_sql_in(&self, db: &str, sql: &str) -> Output {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(&self.cluster.socket)
            .arg("-p")
            .arg(self.cluster.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .output()
            .expect("psql")
    }

    pub(crate) fn db_exists(&self, db: &str) -> bool {
        self.sql_in("postgres", &format!("select count(*) from pg_database where datname = '{db}'")) == "1"
    }

    /// What a database holds: its schema as `pg_dump --schema-only` prints it, then per table the row count and the
    /// md5 of its rows in order, then the large objects' md5.
    pub(crate) fn fingerprint(&self, db: &str) -> String {
        let out = Command::new(self.cluster.bin.join("pg_dump"))
            .args(["--schema-only", "-U", "postgres", "-h"])
            .arg(&self.cluster.socket)
            .arg("-p")
            .arg(self.cluster.port.to_string())
            .arg("-d")
            .arg(db)
            .output()
            .expect("pg_dump");
        assert_ok("pg_dump --schema-only", &out);
        let schema: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict ") && !l.starts_with("--"))
            .map(str::to_owned)
            .collect();
        let tables = self.sql_in(
            db,
            "select format('%I.%I', schemaname, tablename) from pg_tables \
             where schemaname not in ('pg_catalog', 'information_schema') order by 1",
        );
        let mut rows = Vec::new();
        for t in tables.lines().filter(|l| !l.is_empty()) {
            rows.push(self.sql_in(
                db,
                &format!(
                    "select '{}', count(*), md5(coalesce(string_agg(x::text, '|' order by x::text), '')) from {t} x",
                    t.replace('\'', "''")
                ),
            ));
        }
        let lo = self.sql_in(
            db,
            "select count(*), md5(coalesce(string_agg(encode(lo_get(oid), 'hex'), '|' order by oid), '')) \
             from pg_largeobject_metadata",
        );
        format!("{}\n--rows--\n{}\n--lo--\n{lo}", schema.join("\n"), rows.join("\n"))
    }

    /// Two databases with several schemas, large objects, and the unusual table in `public`.
    fn populate(&self) {
        for db in ["app1", "app2"] {
            self.sql_in("postgres", &format!("create database {db}"));
            self.sql_in(
                db,
                &format!(
                    "create schema sales; create schema \"Inventory Ü\";
                     create table sales.orders (id int primary key, customer text, total numeric(10,2));
                     insert into sales.orders select g, 'customer ' || g, g * 1.5 from generate_series(1, 20000) g;
                     create table \"Inventory Ü\".items (sku text primary key, qty int, note text);
                     insert into \"Inventory Ü\".items select 'sku-' || g, g % 17, repeat(md5(g::text), 3)
                       from generate_series(1, 5000) g;
                     create table \"Inventory Ü\".orders (id int, note text);
                     insert into \"Inventory Ü\".orders select g, 'inventory order' from generate_series(1, 7) g;
                     create view sales.big as select * from sales.orders where total > 100;
                     create function sales.twice(x int) returns int language sql as 'select 2 * x';
                     create table public.{} (\"co l\"\"x\" text, n int);
                     insert into public.{} values ('it''s', 1), ('ünï \"q\"', 2), (null, 3);
                     select lo_from_bytea(0, convert_to(repeat('large object {db} ', 1000), 'UTF8'));
                     select lo_from_bytea(0, '\\x00ff00ff'::bytea);",
                    quote(ODD_TABLE),
                    quote(ODD_TABLE)
                ),
            );
        }
    }
}

/// `"name"` with `"` doubled.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(crate) fn json(out: &Output) -> Value {
    assert_ok("backupctl --json-output", out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

pub(crate) fn failure(out: &Output) -> String {
    let (code, stdout, stderr) = output_text(out);
    assert_eq!(code, Some(1), "expected exit 1\nstdout: {stdout}\nstderr: {stderr}");
    stderr
}

/// The dumps the repository lists, through the library.
pub(crate) fn listed(env: &Env) -> Vec<String> {
    let raw = Raw::open(&env.url, &s3_settings(&env.extra));
    let dumps = raw.rt.block_on(backupctl::dump::list(raw.storage.as_ref())).expect("list dumps");
    dumps.iter().map(|d| d.id.to_string()).collect()
}

/// The whole scenario of issue 12's logical dumps on one backend.
fn dump_scenario(env: &Env) {
    env.populate();
    let (app1, app2) = (env.fingerprint("app1"), env.fingerprint("app2"));
    let odd_rows = env.sql_in("app2", &format!("select count(*) from public.{}", quote(ODD_TABLE)));
    assert_eq!(odd_rows, "3");

    env.sql_in("postgres", "create role \"Rôle \"\"r\"\"\" login password 'secret'");
    let summary = json(&env.backupctl(&["dump", "--label", "nightly", "--json-output"]));
    let id = summary["id"].as_str().expect("id").to_owned();
    let names: Vec<&str> =
        summary["databases"].as_array().expect("dbs").iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["app1", "app2", "postgres"], "every non-template database, by name: {summary}");
    assert!(summary["stored_bytes"].as_u64().expect("stored") > 0, "{summary}");
    assert_eq!(listed(env), std::slice::from_ref(&id));
    let status = json(&env.backupctl(&["status", "--type", "dump", "--json"]));
    assert_eq!(status["dumps"][0]["id"], id.as_str(), "{status}");
    // One JSON form: what dump printed is what status lists (the dump's id was under "dump" there).
    assert_eq!(status["dumps"][0], summary, "dump --json-output and status agree");
    assert_eq!(status["dumps"][0]["label"], "nightly", "{status}");
    assert_eq!(status["dumps"][0]["databases"].as_array().map(Vec::len), Some(3), "{status}");
    let all = json(&env.backupctl(&["status", "--json"]));
    assert_eq!(all["dumps"].as_array().map(Vec::len), Some(1), "dumps under their own key: {all}");
    assert_eq!(all["backups"].as_array().map(Vec::len), Some(0), "{all}");
    let text = String::from_utf8_lossy(&env.backupctl(&["status", "--type", "dump"]).stdout).into_owned();
    assert!(text.contains(&id) && text.contains("app1, app2, postgres"), "{text}");

    // Drop one database and restore it: the same schema, rows and large objects.
    env.sql_in("postgres", "drop database app1");
    let restored =
        json(&env.backupctl(&["dump-restore", "--backup-id", &id, "--database", "app1", "--create", "--json"]));
    assert_eq!(restored["created"], true, "{restored}");
    assert_eq!(env.fingerprint("app1"), app1, "app1 restored exactly");

    // The roles: a dropped one comes back; existing ones (postgres) are left as they are and counted.
    env.sql_in("postgres", "drop role \"Rôle \"\"r\"\"\"");
    let globals = json(&env.backupctl(&["dump-restore", "--backup-id", &id, "--globals", "--json"]));
    assert!(globals["globals_existing"].as_u64().expect("count") >= 1, "{globals}");
    let role = env.sql_in(
        "postgres",
        "select rolname, rolcanlogin, rolpassword is null from pg_authid where rolname like 'Rôle%'",
    );
    assert_eq!(role, "Rôle \"r\"|t|t", "restored, without its password (--no-role-passwords)");

    // `dump-restore` of one table of database app2 into database `target`, with `extra` arguments.
    let restore_table = |target: &str, table: &str, extra: &[&str]| {
        let args =
            ["dump-restore", "--backup-id", &id, "--database", "app2", "--target-database", target, "--table", table];
        env.backupctl(&[&args[..], extra].concat())
    };
    // One table of the other database into a new one: only that table, with its rows.
    let out = restore_table("only_odd", ODD_TABLE, &[]);
    assert_ok("restore one table", &out);
    let tables = env.sql_in("only_odd", "select string_agg(format('%I.%I', schemaname, tablename), ',') from pg_tables where schemaname not in ('pg_catalog', 'information_schema')");
    assert_eq!(tables, format!("public.{}", quote(ODD_TABLE)));
    let md5 = |db: &str| {
        env.sql_in(
            db,
            &format!("select md5(string_agg(x::text, '|' order by x::text)) from public.{} x", quote(ODD_TABLE)),
        )
    };
    assert_eq!(md5("only_odd"), md5("app2"));

    // A table the dump does not hold is refused before anything is created.
    let e = failure(&restore_table("none_such", "nope", &[]));
    assert!(e.contains("has no table \"nope\""), "{e}");
    assert!(!env.db_exists("none_such"));

    // A bare name two schemas hold is refused (pg_restore -t alone restored both, over the target's own); a
    // schema-qualified one restores that table only, its schema created in the new database.
    let e = failure(&restore_table("two_orders", "orders", &[]));
    assert!(e.contains("in schemas Inventory Ü, sales") && e.contains("SCHEMA.TABLE"), "{e}");
    assert!(!env.db_exists("two_orders"));
    assert_ok("restore sales.orders", &restore_table("only_orders", "sales.orders", &[]));
    assert_eq!(
        env.sql_in("only_orders", "select string_agg(format('%I.%I', schemaname, tablename), ',') from pg_tables where schemaname not in ('pg_catalog', 'information_schema')"),
        "sales.orders"
    );
    assert_eq!(env.sql_in("only_orders", "select count(*) from sales.orders"), "20000");
    // Issue 12: with its primary key (pg_restore -t alone left it out, and --clean over a live table dropped it),
    // and a note of what --table leaves out.
    let pkey = |db: &str| {
        env.sql_in(db, "select string_agg(conname || ' ' || contype::text, ',') from pg_constraint where conrelid = 'sales.orders'::regclass")
    };
    assert_eq!(pkey("only_orders"), "orders_pkey p");
    let out = restore_table("only_orders", "sales.orders", &["--clean"]);
    assert_ok("restore sales.orders --clean over itself", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("note: --table restored each table's definition"), "{out:?}");
    assert_eq!(
        (pkey("only_orders"), env.sql_in("only_orders", "select count(*) from sales.orders")),
        (pkey("app2"), "20000".into())
    );

    // Over a non-empty database: refused without --clean (nothing changed), done with it.
    env.sql_in("app2", "delete from sales.orders where id > 10000");
    let e = failure(&env.backupctl(&["dump-restore", "--backup-id", &id, "--database", "app2"]));
    assert!(e.contains("database \"app2\"") && e.contains("is not empty") && e.contains("--clean"), "{e}");
    assert_eq!(env.sql_in("app2", "select count(*) from sales.orders"), "10000", "refused: unchanged");
    assert_ok(
        "restore --clean",
        &env.backupctl(&["dump-restore", "--backup-id", &id, "--database", "app2", "--clean"]),
    );
    assert_eq!(env.fingerprint("app2"), app2, "app2 restored over itself exactly");

    // A missing database without --create is refused.
    let e = failure(&env.backupctl(&["dump-restore", "--backup-id", &id, "--database", "app1x"]));
    assert!(e.contains("holds no database \"app1x\""), "{e}");

    // gc with no grace period keeps everything a dump names.
    assert_ok("gc", &env.backupctl(&["gc"]));
    env.sql_in("postgres", "drop database app1");
    let e = failure(&env.backupctl(&["dump-restore", "--backup-id", &id, "--database", "app1"]));
    assert!(e.contains("database \"app1\" does not exist") && e.contains("--create"), "{e}");
    assert_ok(
        "restore after gc",
        &env.backupctl(&["dump-restore", "--backup-id", &id, "--database", "app1", "--create"]),
    );
    assert_eq!(env.fingerprint("app1"), app1, "gc swept nothing a dump names");

    let verified = json(&env.backupctl(&["verify", "--json"]));
    assert_eq!(verified["dumps"]["dumps"], 1, "{verified}");
    assert!(verified["dumps"]["frames_checked"].as_u64().expect("frames") > 0, "{verified}");

    // Damage: every pack corrupted. The restore fails before the target exists.
    let raw = Raw::open(&env.url, &s3_settings(&env.extra));
    let packs = raw.rt.block_on(raw.storage.list("packs/")).expect("list");
    assert!(!packs.is_empty());
    for p in &packs {
        raw.corrupt(&p.key);
    }
    if let Some(repo) = &env.repo {
        chown_postgres(repo.dir.path()); // the damage was written as root
    }
    let e = failure(&env.backupctl(&[
        "dump-restore",
        "--backup-id",
        &id,
        "--database",
        "app1",
        "--target-database",
        "from_damage",
    ]));
    assert!(e.contains("corrupt") || e.contains("damaged"), "{e}");
    assert!(!env.db_exists("from_damage"), "the target was never created");
    let out = env.backupctl(&["verify"]);
    let (code, stdout, _) = output_text(&out);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains(&format!("; breaks dump {id} (database \"app1\", custom-format archive)")), "{stdout}");
    assert!(stdout.contains(&format!("dump {id}: broken (databases app1, app2, postgres")), "{stdout}");

    // delete, then gc reclaims every pack of the dump.
    let e = failure(&env.backupctl(&["delete", "--backup-id", "20200101-000000D"]));
    assert!(e.contains("dump 20200101-000000D does not exist"), "{e}");
    assert_ok("delete", &env.backupctl(&["delete", "--backup-id", &id]));
    assert!(listed(env).is_empty());
    assert_ok("gc", &env.backupctl(&["gc"]));
    assert!(raw.rt.block_on(raw.storage.list("packs/")).expect("list").is_empty(), "gc reclaimed the deleted dump");
}

/// `[retention] gc_grace = 0s`: gc would sweep anything no manifest names at once.
pub(crate) const NO_GRACE: &str = "[retention]\ngc_grace = \"0s\"\n";

#[test]
fn issue_12_dump_and_restore_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i12-dump");
    let url = repo.url();
    let env = Env::new("i12-dump-file", Some(repo), &url, "", NO_GRACE);
    dump_scenario(&env);
}

#[test]
fn issue_12_dump_and_restore_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i12-dump") else { return };
    let env = Env::new("i12-dump-s3", None, &url, &extra, NO_GRACE);
    dump_scenario(&env);
}

/// A fake pg_dump in a directory of its own: `--version` prints `version`, anything else fails as pg_dump would.
fn fake_tools(dir: &Path, version: &str) -> PathBuf {
    let bin_dir = dir.join("fake-bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    for tool in ["pg_dump", "pg_dumpall"] {
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{tool} (PostgreSQL) {version}'; exit 0; fi\n\
             echo 'pg_dump: error: query failed: ERROR:  permission denied for table secrets' >&2\nexit 1\n"
        );
        let p = bin_dir.join(tool);
        std::fs::write(&p, script).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    chown_postgres(&bin_dir);
    bin_dir
}

/// A pg_dump that fails fails the dump, naming the database and pg_dump's last line, and nothing is listed; an
/// older pg_dump than the server is refused naming both versions; a dump killed with kill -9 is never listed.
fn failures_scenario(env: &Env, label: &str) {
    env.populate();
    let failing = fake_tools(env.dir.path(), "15.99");
    let older = fake_tools(&env.dir.sub("old"), "14.2");
    let with_bin = |bin_dir: &Path| {
        let cfg = env.dir.path().join(format!("{label}-{}.toml", bin_dir.display().to_string().len()));
        let text = std::fs::read_to_string(&env.config).expect("config");
        std::fs::write(&cfg, format!("{text}\n[dump]\nbin_dir = \"{}\"\n", bin_dir.display())).expect("write");
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        cfg
    };
    let run = |cfg: &Path, args: &[&str]| {
        as_postgres(&bin("backupctl")).arg("--config").arg(cfg).args(args).output().expect("backupctl")
    };
    let e = failure(&run(&with_bin(&failing), &["dump", "--database", "app1"]));
    assert!(
        e.contains("pg_dump of database \"app1\" failed") && e.contains("permission denied for table secrets"),
        "{e}"
    );
    assert_eq!(e.lines().filter(|l| l.starts_with("backupctl: error:")).count(), 1, "one error line: {e}");
    let e = failure(&run(&with_bin(&older), &["dump"]));
    assert!(e.contains("PostgreSQL 14, older than PostgreSQL 15"), "{e}");
    assert!(listed(env).is_empty(), "a failed dump is not listed");

    // kill -9 while pg_dump waits for a lock: never listed; the next dump is.
    let locker = env.lock_table("app2", "sales.orders");
    let mut dump = as_postgres(&bin("backupctl")).arg("--config").arg(&env.config).arg("dump").spawn().expect("dump");
    env.wait_for_lock_wait("backupctl");
    // runuser's child is backupctl: kill it (and its pg_dump) with SIGKILL.
    let children = Command::new("pgrep").args(["-P", &dump.id().to_string()]).output().expect("pgrep");
    for pid in String::from_utf8_lossy(&children.stdout).split_whitespace() {
        let grand = Command::new("pgrep").args(["-P", pid]).output().expect("pgrep");
        assert!(Command::new("kill").args(["-9", pid]).status().expect("kill").success());
        for g in String::from_utf8_lossy(&grand.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", g]).status();
        }
    }
    let _ = dump.wait();
    env.release_locks(locker);
    assert!(listed(env).is_empty(), "a killed dump is never listed");
    let summary = json(&env.backupctl(&["dump", "--database", "app2", "--jobs", "2", "--json"]));
    assert_eq!(summary["databases"][0]["format"], "directory", "{summary}");
    assert_eq!(listed(env), [summary["id"].as_str().expect("id")]);
    let fp = env.fingerprint("app2");
    env.sql_in("postgres", "drop database app2");
    let id = summary["id"].as_str().expect("id");
    assert_ok(
        "restore -j 2",
        &env.backupctl(&["dump-restore", "--backup-id", id, "--database", "app2", "--create", "--jobs", "2"]),
    );
    assert_eq!(env.fingerprint("app2"), fp, "directory format restores exactly");
}

#[test]
fn issue_12_dump_failures_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i12-fail");
    let url = repo.url();
    let env = Env::new("i12-fail-file", Some(repo), &url, "", "");
    failures_scenario(&env, "file");
}

#[test]
fn issue_12_dump_failures_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i12-fail") else { return };
    let env = Env::new("i12-fail-s3", None, &url, &extra, "");
    failures_scenario(&env, "s3");
}

/// prune applies `dump_daily_retain` to dumps (the newest of the day is kept, the others go, a dry run deletes
/// nothing), and the gc at its end reclaims what only the deleted dumps held.
fn prune_scenario(env: &Env) {
    env.sql_in("postgres", "create database small; ");
    env.sql_in("small", "create table t as select g from generate_series(1, 1000) g");
    let mut ids = Vec::new();
    for i in 0..3 {
        env.sql_in("small", &format!("insert into t values ({})", 100_000 + i));
        let s = json(&env.backupctl(&["dump", "--database", "small", "--json"]));
        ids.push(s["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(listed(env), ids);
    // Only dump keys in [retention]: status and prune say what each policy is (they said "no policy in
    // [retention]: prune deletes nothing" while prune deleted dumps).
    let status = env.backupctl(&["status"]);
    assert_ok("status", &status);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("retention (dumps): dump-daily-retain=1 (time zone UTC), per database"), "{text}");
    assert!(text.contains("retention (backups): no backup policy key") && !text.contains("deletes nothing"), "{text}");
    let v = json(&env.backupctl(&["status", "--json"]));
    assert_eq!(v["retention"]["dumps"]["has_rules"], true, "{v}");
    let out = env.backupctl(&["prune", "--dry-run"]);
    assert_ok("prune --dry-run", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("policy (dumps): dump-daily-retain=1 (time zone UTC)"), "{text}");
    assert!(text.contains("policy (backups and WAL): no rules") && !text.contains("nothing is deleted"), "{text}");
    // Each reason says which database it keeps the dump for.
    let day = &json(&env.backupctl(&["status", "--type", "dump", "--json"]))["dumps"][2]["started_at"];
    let day = day.as_str().and_then(|t| t.get(..10)).expect("started_at").to_owned();
    assert!(text.contains(&format!("keep   dump {}  newest (small), daily {day} (small)", ids[2])), "{text}");
    let dry = json(&env.backupctl(&["prune", "--dry-run", "--json"]));
    assert_eq!(dry["dump_policy"], "dump-daily-retain=1 (time zone UTC)", "{dry}");
    assert_eq!(dry["deleted_dumps"].as_array().map(Vec::len), Some(2), "{dry}");
    assert_eq!(listed(env), ids, "a dry run deletes nothing");
    let done = json(&env.backupctl(&["prune", "--json"]));
    assert_eq!(done["kept_dumps"][0]["id"], ids[2].as_str(), "{done}");
    assert_eq!(done["kept_dumps"][0]["reasons_by_database"]["small"][0], "newest", "{done}");
    assert_eq!(listed(env), std::slice::from_ref(&ids[2]));
    env.sql_in("postgres", "drop database small");
    assert_ok("restore", &env.backupctl(&["dump-restore", "--backup-id", &ids[2], "--database", "small", "--create"]));
    assert_eq!(env.sql_in("small", "select count(*), max(g) from t"), "1003|100002");
}

const DUMP_RETENTION: &str = "[retention]\ngc_grace = \"0s\"\ndump_daily_retain = 1\n";

#[test]
fn issue_12_dump_prune_file() {
    if require_pg().is_none() {
        return;
    }
    let repo = FileRepo::new("i12-prune");
    let url = repo.url();
    let env = Env::new("i12-prune-file", Some(repo), &url, "", DUMP_RETENTION);
    prune_scenario(&env);
}

#[test]
fn issue_12_dump_prune_s3() {
    if require_pg().is_none() {
        return;
    }
    let Some((url, extra)) = s3_repo("i12-prune") else { return };
    let env = Env::new("i12-prune-s3", None, &url, &extra, DUMP_RETENTION);
    prune_scenario(&env);
}

/// A PostgreSQL 16 server (scripts/setup.sh's npm binaries, which ship no pg_dump) with only pg_dump 15 on the
/// machine: the dump is refused, naming what was found and that the server's own binaries have none.
#[test]
fn issue_12_dump_refuses_without_a_new_enough_pg_dump() {
    let Some(pg16) = crate::support::cluster::require_pg_major(16) else { return };
    if require_pg().is_none() || pg16.join("pg_dump").exists() {
        return;
    }
    let repo = FileRepo::new("i12-pg16");
    let dir = PgDir::new("i12-pg16");
    let mut cluster = Cluster::init_with(&pg16, &dir, "src", "");
    let cfg_dir = dir.sub("cfg");
    let config = write_config(
        &cfg_dir,
        &repo.url(),
        &cfg_dir.join("spool"),
        &format!("[postgres]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\n", cluster.socket.display(), cluster.port),
    );
    chown_postgres(dir.path());
    cluster.start();
    let run =
        |args: &[&str]| as_postgres(&bin("backupctl")).arg("--config").arg(&config).args(args).output().expect("run");
    assert_ok("init", &run(&["init"]));
    let e = failure(&run(&["dump"]));
    assert!(e.contains("no pg_dump of PostgreSQL 16 or newer found"), "{e}");
    assert!(e.contains(&format!("the server's own binaries in {} have no pg_dump", pg16.display())), "{e}");
    assert!(e.contains("pg_dump 15 in "), "what was found is named: {e}");
}
