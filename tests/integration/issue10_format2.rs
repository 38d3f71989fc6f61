//! Issue 10, repository format 2 (docs/design/format2.md): packs, block maps and page deltas on real clusters,
//! on file:// and S3 repositories.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::pitr::{Source, backends};
use crate::support::cluster::{Cluster, PgDir, as_postgres, assert_ok, bin, chown_postgres, require_pg};

/// Create a format-2 repository at `url` with `backupctl init` (`[repository] format = 2`): the repository's
/// descriptor wins from then on. Done before the cluster archives anything.
pub fn init_format2(label: &str, url: &str, extra: &str) {
    init_format(label, url, extra, 2);
}

/// Create a repository of `format` at `url` with `backupctl init` (`[repository] format = N`), so that the first
/// wal-push of a cluster whose configuration does not say it finds it made.
pub fn init_format(label: &str, url: &str, extra: &str, format: u32) {
    let holder = PgDir::new(&format!("{label}-init"));
    let dir = holder.path().to_path_buf();
    std::fs::create_dir_all(dir.join("spool")).expect("spool");
    let config = dir.join("init.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"{url}\"\nformat = {format}\n\n[spool]\npath = \"{}\"\n\n{extra}\n",
            dir.join("spool").display()
        ),
    )
    .expect("config");
    chown_postgres(&dir);
    let out = as_postgres(&bin("backupctl")).arg("--config").arg(&config).args(["init", "--json-output"]).output();
    let out = out.expect("backupctl init");
    assert_ok(&format!("backupctl init (format {format})"), &out);
    let v: Value = serde_json::from_slice(&out.stdout).expect("init JSON");
    assert_eq!(v["format"], format, "{v}");
}

fn pgbench(c: &Cluster, args: &[&str]) {
    let out = Command::new(c.bin.join("pgbench"))
        .args(["-U", "postgres", "-h"])
        .arg(&c.socket)
        .arg("-p")
        .arg(c.port.to_string())
        .args(args)
        .arg("postgres")
        .output()
        .expect("pgbench");
    assert_ok("pgbench", &out);
}

fn state(c: &Cluster) -> String {
    c.sql("select count(*) || ':' || sum(abalance) || ':' || (select count(*) from pgbench_history) from pgbench_accounts")
}

/// Update the first tuple of `pct` percent of `pgbench_accounts`' pages, chosen at random.
fn touch_random_pages(c: &Cluster, pct: u32) {
    c.sql(&format!(
        "update pgbench_accounts set abalance = abalance + 1 where ctid = any(array(select ('(' || p || ',1)')::tid \
         from (select p from generate_series(0, (pg_relation_size('pgbench_accounts') / 8192)::int - 1) p \
         order by random() limit (pg_relation_size('pgbench_accounts') / 8192 * {pct} / 100)::int) s))"
    ));
    c.sql("checkpoint");
}

fn stored(v: &Value) -> u64 {
    v["bytes_stored"].as_u64().unwrap_or_else(|| panic!("bytes_stored in {v}"))
}

/// A full, an incremental after 5% of the pages changed at random, a full right after; each stores what the
/// design says, and each restores on its own to exactly the source's state. At pgbench `scale` 12 and above,
/// `pgbench_accounts` spans more than one block-map node (128 MiB), whose parts are copied in parallel.
fn scenario(url: &str, extra: &str, label: &str, scale: u32) {
    init_format2(label, url, extra);
    let src = Source::start(label, url, extra);
    let c = &src.cluster;
    pgbench(c, &["-i", "-s", &scale.to_string(), "-q"]);
    c.sql("checkpoint");
    let accounts: u64 = c.sql("select pg_relation_size('pgbench_accounts')").parse().expect("size");
    assert_eq!(accounts > 128 << 20, scale >= 12, "pgbench_accounts is {accounts} bytes at scale {scale}");
    let full = src.backup_json("full");
    let again = src.backup_json("full");
    let at_full = state(c);
    touch_random_pages(c, 5);
    let incr = src.backup_json("incremental");
    let at_incr = state(c);
    let (f, i, a) = (stored(&full), stored(&incr), stored(&again));
    eprintln!(
        "{label}: full stored {f} bytes, full right after it {a}, incremental after 5% random pages {i} ({:.1}%)",
        100.0 * i as f64 / f as f64
    );
    assert!(i * 10 < f, "the incremental stores under 10% of the full: {i} of {f}");
    assert!(a * 20 < f, "a full right after a full stores almost nothing new: {a} of {f}");
    pgbench(c, &["-n", "-t", "200", "-c", "2"]);
    c.switch_and_wait_archived(Duration::from_secs(120));

    for (name, backup, at) in [("full", &again, &at_full), ("incr", &incr, &at_incr)] {
        let id = backup["id"].as_str().expect("id");
        let lsn = backup["stop_lsn"].as_str().expect("stop lsn");
        let copy = src.restore_and_start(name, &["--backup-id", id, "--to-lsn", lsn, "--archive-mode", "off"]);
        assert_eq!(&state(&copy), at, "{name} restores to its consistent point");
    }
    let copy = src.restore_and_start("latest", &["--archive-mode", "off"]);
    assert_eq!(state(&copy), state(c), "the newest backup restores to the end of the archive");
    drop(copy);

    // --delta: the incremental restored over a copy of the full; only what differs is written, and a damaged block
    // of the big table is found by its digest and rewritten.
    let dest = src.dir.sub("delta");
    let full_id = again["id"].as_str().expect("id");
    assert_ok("restore of the full", &src.restore(&dest, &["--backup-id", full_id, "--archive-mode", "off"]));
    let rel = c.sql("select pg_relation_filepath('pgbench_accounts')");
    let f = std::fs::OpenOptions::new().write(true).open(dest.join(&rel)).expect("relation");
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xA5; 100], 8192 * 7 + 1000).expect("damage a block");
    let incr_id = incr["id"].as_str().expect("id");
    let lsn = incr["stop_lsn"].as_str().expect("stop lsn");
    let out =
        src.restore(&dest, &["--delta", "--backup-id", incr_id, "--to-lsn", lsn, "--archive-mode", "off", "--json"]);
    assert_ok("delta restore", &out);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    let written = report["bytes_written"].as_u64().expect("bytes_written");
    let total = incr["bytes"].as_u64().expect("bytes");
    assert!(written * 4 < total, "a delta restore writes what differs, not {written} of {total} bytes: {report}");
    let mut copy = Cluster::at(&c.bin, &dest, &c.socket);
    copy.start();
    crate::support::cluster::wait_for("recovery of the delta copy", Duration::from_secs(180), || {
        copy.try_sql("select pg_is_in_recovery()").stdout.starts_with(b"f").then_some(())
    });
    assert_eq!(state(&copy), at_incr, "the delta restore reaches the incremental's consistent point");
}

#[test]
fn issue_10_format2_backup_and_restore() {
    if require_pg().is_none() {
        return;
    }
    let (_holders, repos) = backends("i10-f2");
    for (kind, url, extra) in &repos {
        // Several nodes on file://; S3 (moto) stays small.
        let scale = if *kind == "file" { 12 } else { 5 };
        scenario(url, extra, &format!("i10-f2-{kind}"), scale);
    }
}

/// Stored bytes of the repository's data objects (format 1 `data/`, format 2 `packs/`, `maps/`, `index/`), by listing.
fn data_bytes(src: &Source) -> u64 {
    ["data/", "packs/", "maps/", "index/"].iter().flat_map(|p| src.list(p)).map(|m| m.size).sum()
}

/// Honest accounting: each backup's `bytes_new` is exactly what the repository's data grew by; a full right after
/// a full reports its rewritten chunks as rewritten (format 1) or writes nothing new (format 2).
fn accounting(url: &str, extra: &str, label: &str, format: u32) {
    init_format(label, url, extra, format);
    let src = Source::start(label, url, extra);
    let c = &src.cluster;
    pgbench(c, &["-i", "-s", "2", "-q"]);
    let mut before = data_bytes(&src);
    let mut backups = Vec::new();
    for kind in ["full", "full", "incremental"] {
        if backups.len() == 2 {
            touch_random_pages(c, 5);
        }
        let b = src.backup_json(kind);
        let after = data_bytes(&src);
        assert_eq!(after - before, b["bytes_new"].as_u64().expect("bytes_new"), "{label} {kind}: {b}");
        before = after;
        backups.push(b);
    }
    let (first, second) = (&backups[0], &backups[1]);
    let new = |b: &Value| b["bytes_new"].as_u64().expect("bytes_new");
    assert!(new(second) * 20 < new(first), "{label}: a full after a full adds little: {second}");
    let rewritten = second["bytes_rewritten"].as_u64().expect("bytes_rewritten");
    if format == 1 {
        assert!(rewritten * 2 > new(first), "{label}: format 1 rewrites the chunks of a full: {second}");
    } else {
        assert_eq!(rewritten, 0, "{label}: format 2 never rewrites: {second}");
    }
}

#[test]
fn issue_10_backup_accounting_matches_repository_growth() {
    if require_pg().is_none() {
        return;
    }
    for format in [1, 2] {
        let (_holders, repos) = backends(&format!("i10-acct{format}"));
        for (kind, url, extra) in &repos {
            accounting(url, extra, &format!("i10-acct{format}-{kind}"), format);
        }
    }
}

/// Without --delta, a restore leaves a relation's all-zero blocks as holes (neither written nor allocated) and the
/// file reads back exactly as backed up; the restored cluster starts and has the same rows.
#[test]
fn issue_10_restore_leaves_zero_blocks_as_holes() {
    if require_pg().is_none() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let repo = crate::pitr::FileRepo::new("i10-holes");
    let mut src = Source::start("i10-holes", &repo.url(), "");
    let c = &mut src.cluster;
    c.sql("create table t as select g, md5(g::text) m from generate_series(1, 20000) g");
    c.sql("checkpoint");
    let rel = c.sql("select pg_relation_filepath('t')");
    let path = c.data.join(&rel);
    c.stop();
    // 16 MiB of new (all-zero) pages at the end of the table, then a block of data after them: PostgreSQL takes
    // all-zero pages as new, and a sparse file costs nothing to make.
    let f = std::fs::OpenOptions::new().write(true).open(&path).expect("relation");
    let len = f.metadata().expect("stat").len();
    f.set_len(len + (16 << 20)).expect("extend");
    drop(f);
    c.start();
    let before = std::fs::read(&path).expect("read relation");
    c.sql("checkpoint");
    let b = src.backup_json("full");
    let c = &src.cluster;
    let id = b["id"].as_str().expect("id");
    let lsn = b["stop_lsn"].as_str().expect("stop lsn");
    let copy = src.restore_and_start("copy", &["--backup-id", id, "--to-lsn", lsn, "--archive-mode", "off"]);
    assert_eq!(copy.sql("select count(*), sum(g) from t"), c.sql("select count(*), sum(g) from t"));
    let restored = copy.data.join(&rel);
    let meta = std::fs::metadata(&restored).expect("restored relation");
    let after = std::fs::read(&restored).expect("read restored relation");
    assert_eq!(after.len(), before.len(), "the restored relation has the backed-up length");
    assert!(after == before, "the restored relation has the backed-up bytes");
    let allocated = meta.blocks() * 512;
    assert!(
        allocated + (15 << 20) < meta.len(),
        "the 16 MiB of zero pages were left as holes: {allocated} bytes allocated for {} bytes",
        meta.len()
    );
}
