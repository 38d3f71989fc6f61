//! Real clusters: archive through wal-push, compare every segment fetched back, recover a copy through wal-fetch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::cluster::{Cluster, PgDir, as_postgres, assert_ok, bin, require_pg, wait_for, write_config};
use crate::support::wal::{fetch, status};

/// Everything one scenario needs: a repository URL, extra configuration, and a directory to run in.
pub struct Scenario {
    pub dir: PgDir,
    pub url: String,
    pub extra: String,
}

fn config_in(dir: &Path, sub: &str, url: &str, extra: &str) -> PathBuf {
    let d = dir.join(sub);
    std::fs::create_dir_all(d.join("spool")).expect("mkdir");
    let cfg = write_config(&d, url, &d.join("spool"), extra);
    crate::support::cluster::chown_postgres(&d);
    cfg
}

/// Archive at least 32 segments from a real cluster, check each fetches back byte-identical, then recover a
/// `pg_basebackup -X none` copy through wal-fetch and compare the data.
pub fn archive_fetch_and_recover(s: &Scenario) {
    let pg = s.dir.path();
    let push_cfg = config_in(pg, "push", &s.url, &s.extra);
    let fetch_cfg = config_in(pg, "fetch", &s.url, &format!("{}\n[archive]\nfetch_prefetch = 0", s.extra));
    let recover_cfg = config_in(pg, "recover", &s.url, &s.extra);

    let archive = format!(
        "archive_mode = on\narchive_command = '{} --config {} %p'\n",
        bin("wal-push").display(),
        push_cfg.display()
    );
    let mut src = Cluster::init(&s.dir, "src", &archive);
    src.start();

    let copy = pg.join("copy");
    let out = as_postgres(&src.bin.join("pg_basebackup"))
        .arg("-h")
        .arg(&src.socket)
        .args(["-p", &src.port.to_string(), "-U", "postgres", "-X", "none", "-c", "fast", "-D"])
        .arg(&copy)
        .output()
        .expect("pg_basebackup");
    assert_ok("pg_basebackup", &out);

    src.sql("create table t (id int primary key, pad text)");
    let first = src.sql("select pg_walfile_name(pg_current_wal_lsn())");
    for batch in 0..36 {
        src.sql(&format!(
            "insert into t select g, md5(g::text) || repeat('x', 100) from generate_series({}, {}) g; select pg_switch_wal();",
            batch * 20_000 + 1,
            batch * 20_000 + 20_000
        ));
    }
    let last = src.switch_and_wait_archived(Duration::from_secs(300));
    let expected = src.sql("select count(*) || ':' || sum(hashtext(pad)) from t");

    // Every archived segment comes back byte-identical.
    let pg_wal = src.data.join("pg_wal");
    let mut compared = 0;
    let mut names: Vec<String> = std::fs::read_dir(pg_wal.join("archive_status"))
        .expect("archive_status")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".done").map(str::to_owned))
        .filter(|n| n.len() == 24 && n.as_str() >= first.as_str() && n.as_str() <= last.as_str())
        .collect();
    names.sort();
    let dest = pg.join("fetched");
    for name in &names {
        let _ = std::fs::remove_file(&dest);
        let (code, err) = status(&fetch(&fetch_cfg, name, &dest));
        assert_eq!(code, Some(0), "fetch {name}: {err}");
        let original = std::fs::read(pg_wal.join(name)).expect("segment in pg_wal");
        assert!(std::fs::read(&dest).expect("fetched") == original, "{name} differs from pg_wal's copy");
        compared += 1;
    }
    assert!(compared >= 32, "only {compared} segments archived and compared: {names:?}");

    // Recover the copy through wal-fetch (prefetch on).
    std::fs::write(copy.join("recovery.signal"), b"").expect("signal");
    let mut restored = Cluster::at(&src.bin, &copy, &src.socket);
    std::fs::write(
        copy.join("postgresql.auto.conf"),
        format!(
            "restore_command = '{} --config {} %f %p'\nrecovery_target_action = 'promote'\narchive_mode = off\nport = {}\n",
            bin("wal-fetch").display(),
            recover_cfg.display(),
            restored.port
        ),
    )
    .expect("auto.conf");
    crate::support::cluster::chown_postgres(&copy);
    src.stop();
    restored.start();
    wait_for("the copy to finish recovery", Duration::from_secs(300), || {
        (restored.try_sql("select pg_is_in_recovery()").stdout.starts_with(b"f")).then_some(())
    });
    let got = restored.sql("select count(*) || ':' || sum(hashtext(pad)) from t");
    assert_eq!(got, expected, "recovered data differs\n--- log ---\n{}", restored.log_text());
    let log = restored.log_text();
    let replayed = log.matches("restored log file").count();
    assert!(replayed >= 32, "replayed only {replayed} segments through wal-fetch\n{log}");
    assert!(!log.contains("FATAL") && !log.contains("discarding a bad prefetched copy"), "{log}");
    // The prefetcher served most segments from the spool.
    let from_spool = log.matches("source=Spool").count();
    assert!(from_spool * 2 >= replayed, "only {from_spool} of {replayed} segments came from the prefetch spool\n{log}");
}

#[test]
fn real_cluster_file_repository() {
    if require_pg().is_none() {
        return;
    }
    let dir = PgDir::new("archive-file");
    let repo = dir.sub("repo");
    let s = Scenario { url: format!("file://{}", repo.display()), dir, extra: String::new() };
    archive_fetch_and_recover(&s);
}

#[test]
fn real_cluster_s3_repository() {
    if require_pg().is_none() {
        return;
    }
    let Some(server) = crate::support::s3::server() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bucket = rt.block_on(server.new_bucket("cluster"));
    let dir = PgDir::new("archive-s3");
    let extra = format!(
        "[repository.s3]\nendpoint = \"{}\"\nforce_path_style = true\nallow_http = true\nsse = \"AES256\"\n",
        server.endpoint
    );
    let s = Scenario { url: format!("s3://{bucket}/db1"), dir, extra };
    archive_fetch_and_recover(&s);

    // Every WAL object was written with the SSE setting.
    rt.block_on(async {
        let client = server.client();
        let listed = client.list_objects_v2().bucket(&bucket).prefix("db1/wal/").send().await.expect("list");
        let keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
        assert!(keys.len() >= 32, "{} WAL objects", keys.len());
        for key in keys.iter().take(5) {
            let head = client.head_object().bucket(&bucket).key(key).send().await.expect("head");
            assert_eq!(head.server_side_encryption(), Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256), "{key}");
        }
    });
}
