//! Issue 12: what a DBA trial of `backupctl dump` / `dump-restore` found, on a real cluster and a file://
//! repository: a damaged dump named by verify and dump-restore, verify of one dump, `dump --database` of a name
//! that is not there, the source database's encoding, locale, owner and settings on a database dump-restore
//! creates, and the temporary directory of a dump killed with kill -9.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::issue12_dump::{Env, NO_GRACE, failure, json};
use crate::pitr::FileRepo;
use crate::support::cluster::{as_postgres, assert_ok, bin, chown_postgres, output_text, require_pg};
use crate::support::raw::Raw;

fn env(label: &str, config_extra: &str) -> Env {
    let repo = FileRepo::new(label);
    let url = repo.url();
    Env::new(&format!("{label}-env"), Some(repo), &url, "", config_extra)
}

/// The exit code, stdout and stderr of a run expected to fail with `code`.
fn fails_with(out: &std::process::Output, code: i32) -> (String, String) {
    let (got, stdout, stderr) = output_text(out);
    assert_eq!(got, Some(code), "stdout: {stdout}\nstderr: {stderr}");
    (stdout, stderr)
}

/// Flip one byte in the middle of the stored frame that holds the start of database `db` of dump `id`.
fn damage_first_frame(env: &Env, id: &str, db: &str) {
    let raw = Raw::open(&env.url, &backupctl::config::S3Config::default());
    let id = id.parse().expect("dump id");
    let m = raw.rt.block_on(backupctl::repository::dump::load_manifest(raw.storage.as_ref(), &id));
    let m = m.expect("load").expect("exists");
    let frame = m.database(db).expect("db").files[0].frames[0].id;
    let index = raw.rt.block_on(backupctl::repository::packstore::FrameIndex::load(raw.storage.as_ref()));
    let index = index.expect("index");
    let (pack, loc) = index.get(&frame).expect("indexed");
    let key = backupctl::repository::packs::pack_key(pack);
    let mut bytes = raw.get(&key).to_vec();
    let at = usize::try_from(loc.offset).expect("offset") + loc.stored_length as usize / 2;
    bytes[at] ^= 0x01;
    raw.put(&key, bytes.into());
    if let Some(repo) = &env.repo {
        chown_postgres(repo.dir.path());
    }
}

/// verify names the broken dump (id, database, stream) and counts it, in text and JSON, with a hint about dumps;
/// `verify --backup-id` takes a dump id; dump-restore of the damaged dump names the dump, database and stream.
#[test]
fn issue_12_trial_damaged_dump_named_by_verify_and_restore() {
    if require_pg().is_none() {
        return;
    }
    let env = env("i12-trial-verify", NO_GRACE);
    env.sql_in("postgres", "create database small");
    env.sql_in("small", "create table t as select g, md5(g::text) as h from generate_series(1, 20000) g");
    let broken =
        json(&env.backupctl(&["dump", "--database", "small", "--json"]))["id"].as_str().expect("id").to_owned();
    let intact =
        json(&env.backupctl(&["dump", "--database", "postgres", "--json"]))["id"].as_str().expect("id").to_owned();
    assert_ok("verify before the damage", &env.backupctl(&["verify"]));
    damage_first_frame(&env, &broken, "small");

    let (stdout, stderr) = fails_with(&env.backupctl(&["verify"]), 1);
    let named = format!("; breaks dump {broken} (database \"small\", custom-format archive)");
    assert!(stdout.contains(&named), "{stdout}");
    assert!(stdout.contains(&format!("dump {broken}: broken")) && stdout.contains(&format!("dump {intact}: ok")));
    assert!(stderr.contains("0 broken backup(s), 1 broken dump(s)"), "{stderr}");
    let hint = stderr.lines().find(|l| l.contains("hint:")).unwrap_or_default();
    assert!(hint.contains("backupctl dump") && hint.contains("delete") && !hint.contains("full backup"), "{stderr}");

    let out = env.backupctl(&["verify", "--json"]);
    let (stdout, _) = fails_with(&out, 1);
    let v: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["dumps"]["broken"], 1, "{v}");
    let problem = &v["problems"][0];
    assert_eq!(problem["dump"]["id"], broken.as_str(), "{v}");
    assert_eq!(problem["dump"]["database"], "small", "{v}");
    assert_eq!(problem["dump"]["stream"], "custom-format archive", "{v}");
    assert_eq!(problem["kind"], "corrupt", "{v}");

    // One dump by its id, as delete takes it.
    let one = json(&env.backupctl(&["verify", "--backup-id", &intact, "--json"]));
    assert_eq!(one["dumps"]["results"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one["dumps"]["results"][0]["status"], "ok", "{one}");
    let (stdout, stderr) = fails_with(&env.backupctl(&["verify", "--backup-id", &broken]), 1);
    assert!(stdout.contains(&named) && !stdout.contains(&intact), "{stdout}");
    assert!(stderr.contains("1 broken dump(s)"), "{stderr}");
    let (_, stderr) = fails_with(&env.backupctl(&["verify", "--backup-id", "20200101-000000D"]), 1);
    assert!(stderr.contains("dump 20200101-000000D does not exist") && stderr.contains(&intact), "{stderr}");

    // dump-restore names the dump, database and stream, and points at verify and another dump.
    let (_, stderr) = fails_with(
        &env.backupctl(&["dump-restore", "--backup-id", &broken, "--database", "small", "--target-database", "copy"]),
        1,
    );
    assert!(
        stderr.contains(&format!("dump {broken}: database \"small\" custom-format archive is damaged")),
        "{stderr}"
    );
    let hint = stderr.lines().find(|l| l.contains("hint:")).unwrap_or_default();
    assert!(hint.contains("verify --backup-id") && hint.contains("another dump"), "{stderr}");
    assert!(!env.db_exists("copy"));
}

/// A database created by dump-restore gets the source's encoding, LC_COLLATE, LC_CTYPE, owner,
/// `ALTER DATABASE ... SET` settings, comment, privileges and `ALTER ROLE ... IN DATABASE ... SET` settings (it got
/// the server's defaults and none of them). Also: `dump --database` of a
/// name that is not there, or of a template, says so and lists what can be dumped.
#[test]
fn issue_12_trial_restored_database_keeps_its_properties() {
    if require_pg().is_none() {
        return;
    }
    let env = env("i12-trial-props", NO_GRACE);
    let default_encoding =
        env.sql_in("postgres", "select pg_encoding_to_char(encoding) from pg_database where datname = 'template1'");
    assert_ne!(default_encoding, "LATIN1", "the test needs a server default other than LATIN1");
    env.sql_in("postgres", "create role \"Owner Ü\"");
    env.sql_in(
        "postgres",
        "create database latin template template0 encoding 'LATIN1' lc_collate 'C' lc_ctype 'C' owner \"Owner Ü\"",
    );
    env.sql_in("postgres", "alter database latin set work_mem = '7MB'");
    env.sql_in("postgres", "alter database latin set search_path = \"$user\", public, \"Odd S\"");
    env.sql_in("postgres", "alter database latin set application_name = 'it''s \\ here'");
    // Its comment, privileges (CONNECT taken from PUBLIC, given to a reader with the grant option) and a role's
    // settings in it.
    env.sql_in("postgres", "comment on database latin is 'it''s \"the\" latin one'");
    env.sql_in("postgres", "create role \"Rëader\" login");
    env.sql_in("postgres", "revoke connect, temporary on database latin from public");
    env.sql_in("postgres", "grant connect on database latin to \"Rëader\" with grant option");
    env.sql_in("postgres", "alter role \"Rëader\" in database latin set work_mem = '3MB'");
    env.sql_in("latin", "create table t (s text); insert into t values ('café'), ('Ünïcode')");
    let props = |db: &str| {
        env.sql_in(
            "postgres",
            &format!(
                "select pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, pg_get_userbyid(d.datdba), \
                 (select array_to_string(setconfig, ' | ') from pg_db_role_setting s where s.setdatabase = d.oid \
                 and s.setrole = 0), shobj_description(d.oid, 'pg_database'), \
                 (select string_agg(g, ', ' order by g) from (select coalesce(pg_get_userbyid(nullif(a.grantee, \
                 0)), 'PUBLIC') || ' ' || a.privilege_type || ' ' || a.is_grantable || ' by ' || \
                 pg_get_userbyid(a.grantor) as g from aclexplode(d.datacl) a) acl), \
                 (select string_agg(pg_get_userbyid(s.setrole) || ' ' || array_to_string(s.setconfig, ' | '), ', ') \
                 from pg_db_role_setting s where s.setdatabase = d.oid and s.setrole <> 0) \
                 from pg_database d where d.datname = '{db}'"
            ),
        )
    };
    let source = props("latin");
    assert!(source.starts_with("LATIN1|C|C|Owner Ü|") && source.contains("work_mem=7MB"), "{source}");
    assert!(
        source.ends_with(
            "|it's \"the\" latin one|Owner Ü CONNECT false by Owner Ü, Owner Ü CREATE false by Owner Ü, \
             Owner Ü TEMPORARY false by Owner Ü, Rëader CONNECT true by Owner Ü|Rëader work_mem=3MB"
        ),
        "{source}"
    );

    let id = json(&env.backupctl(&["dump", "--database", "latin", "--json"]))["id"].as_str().expect("id").to_owned();
    let raw = Raw::open(&env.url, &backupctl::config::S3Config::default());
    let m = raw.rt.block_on(backupctl::repository::dump::load_manifest(raw.storage.as_ref(), &id.parse().expect("id")));
    let p = m.expect("load").expect("exists").databases[0].properties.clone().expect("properties recorded");
    assert_eq!((p.encoding.as_str(), p.collate.as_str(), p.owner.as_str()), ("LATIN1", "C", "Owner Ü"));

    let out =
        env.backupctl(&["dump-restore", "--backup-id", &id, "--database", "latin", "--target-database", "latin_copy"]);
    assert_ok("dump-restore into a new database", &out);
    assert_eq!(
        props("latin_copy"),
        source,
        "encoding, locale, owner, settings, comment, privileges and role settings as the source's"
    );
    assert_eq!(env.sql_in("latin_copy", "show work_mem"), "7MB");
    assert_eq!(env.sql_in("latin_copy", "select string_agg(s, ',' order by s) from t"), "café,Ünïcode");
    // --create over a dropped database: the same.
    env.sql_in("postgres", "drop database latin");
    assert_ok(
        "dump-restore --create",
        &env.backupctl(&["dump-restore", "--backup-id", &id, "--database", "latin", "--create"]),
    );
    assert_eq!(props("latin"), source);

    // dump --database of a name that is not there, or of a template.
    let e = failure(&env.backupctl(&["dump", "--database", "nosuch"]));
    assert!(e.contains("database \"nosuch\" does not exist on") && e.contains("databases a dump takes: "), "{e}");
    assert!(e.contains("latin, latin_copy, postgres"), "{e}");
    let hint = e.lines().find(|l| l.contains("hint:")).unwrap_or_default();
    assert!(hint.contains("psql -l") && hint.contains("leave --database out"), "{e}");
    let e = failure(&env.backupctl(&["dump", "--database", "template1"]));
    assert!(e.contains("database \"template1\" is a template or does not allow connections"), "{e}");
}

/// Every descendant of `pid` (children first found, then theirs).
fn descendants(pid: u32) -> Vec<String> {
    let out = Command::new("pgrep").args(["-P", &pid.to_string()]).output().expect("pgrep");
    let mut all = Vec::new();
    for child in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        all.push(child.to_owned());
        if let Ok(p) = child.parse() {
            all.extend(descendants(p));
        }
    }
    all
}

fn temp_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read temp_dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("backupctl-"))
        .collect();
    names.sort();
    names
}

/// A `dump --jobs 2` killed with kill -9 leaves its temporary directory (named with its pid) in `[dump]
/// temp_dir`; the next dump removes it and says so; a dump-restore leaves none behind.
#[test]
fn issue_12_trial_killed_dump_leaves_no_temp_dir_for_long() {
    if require_pg().is_none() {
        return;
    }
    let base = crate::support::cluster::PgDir::new("i12-trial-tmp");
    let temp = base.sub("dump-tmp");
    std::fs::create_dir_all(&temp).expect("mkdir");
    chown_postgres(base.path());
    let env = env("i12-trial-kill", &format!("{NO_GRACE}\n[dump]\ntemp_dir = \"{}\"\n", temp.display()));
    env.sql_in("postgres", "create database app");
    env.sql_in("app", "create table t as select g from generate_series(1, 1000) g");
    let locker = env.lock_table("app", "t");
    let mut dump = as_postgres(&bin("backupctl"))
        .arg("--config")
        .arg(&env.config)
        .args(["dump", "--database", "app", "--jobs", "2"])
        .spawn()
        .expect("dump");
    env.wait_for_lock_wait("%");
    let left = temp_dirs(&temp);
    assert_eq!(left.len(), 1, "{left:?}");
    for pid in descendants(dump.id()) {
        let _ = Command::new("kill").args(["-9", &pid]).status();
    }
    let _ = dump.wait();
    env.release_locks(locker);
    assert_eq!(temp_dirs(&temp), left, "kill -9 left the directory");
    assert!(left[0].starts_with("backupctl-dump-"), "{left:?}");

    let out = env.backupctl(&["dump", "--database", "app"]);
    assert_ok("the next dump", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("removed the temporary directory") && stderr.contains(&left[0]), "{stderr}");
    assert!(temp_dirs(&temp).is_empty(), "{:?}", temp_dirs(&temp));
    let id = json(&env.backupctl(&["status", "--type", "dump", "--json"]))["dumps"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_ok(
        "dump-restore",
        &env.backupctl(&["dump-restore", "--backup-id", &id, "--database", "app", "--target-database", "app2"]),
    );
    assert!(temp_dirs(&temp).is_empty(), "dump-restore removed its own directory");

    // Issue 12: a database dropped while a dump of every database runs is left out with a warning; the dump of
    // the others is complete and listed (it failed whole before). pg_dump of "app" waits on a lock while
    // "zzz_gone" (dumped after it) is dropped.
    env.sql_in("postgres", "create database zzz_gone");
    let locker = env.lock_table("app", "t");
    let dump = as_postgres(&bin("backupctl"))
        .arg("--config")
        .arg(&env.config)
        .args(["dump", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("dump");
    env.wait_for_lock_wait("%");
    env.sql_in("postgres", "drop database zzz_gone");
    env.release_locks(locker);
    let out = dump.wait_with_output().expect("dump");
    assert_ok("a dump of every database while one is dropped", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("database \"zzz_gone\" was dropped while the dump ran: not in this dump"), "{stderr}");
    let dumped: Vec<String> = json(&out)["databases"]
        .as_array()
        .expect("databases")
        .iter()
        .map(|d| d["name"].as_str().or(d.as_str()).expect("name").to_owned())
        .collect();
    assert_eq!(dumped, ["app", "app2", "postgres"]);
}
