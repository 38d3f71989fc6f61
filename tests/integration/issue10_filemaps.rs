//! Issue 10, "Bounded memory and metadata" for clusters of many files (docs/design/format2.md, "File lists"): a
//! backup's file entries are stored in file maps under `maps/`, shared by backups whose entries of the same run
//! are equal; an incremental of a barely-changed cluster of thousands of files writes a few maps, not a manifest
//! that lists every file again; deleting the backup that first wrote a map and collecting garbage keeps the maps
//! the other backup needs; every backup restores to exactly the source's state.

use serde_json::Value;

use crate::issue8_gc::{NO_GRACE, Taken, archive_past, backupctl, gc_json, restore_matches};
use crate::issue10_format2::init_format2;
use crate::pitr::{Source, backends};
use crate::support::cluster::{assert_ok, require_pg};

/// Stored bytes and count of the objects under `maps/` (block-map nodes and file maps).
fn maps(src: &Source) -> (u64, usize) {
    let list = src.list("maps/");
    (list.iter().map(|m| m.size).sum(), list.len())
}

/// The manifest object's stored size of backup `id`.
fn manifest_size(src: &Source, id: &str) -> u64 {
    src.list(&format!("backups/{id}/")).iter().filter(|m| m.key.as_str().ends_with("/manifest")).map(|m| m.size).sum()
}

fn scenario(url: &str, extra: &str, label: &str) {
    init_format2(label, url, extra);
    let src = Source::start(label, url, &format!("{extra}\n{NO_GRACE}"));
    let c = &src.cluster;
    // About 3,000 more files (a heap and a primary key per table), one row each.
    c.sql(
        "do $$ begin for i in 1..1500 loop execute format('create table m%s (id int primary key, v int)', i); \
         execute format('insert into m%s values (1, %s)', i, i); end loop; end $$",
    );
    c.sql("create table t (batch int, id int, pad text)");
    // Hint bits and the visibility map set now, so that reading the tables later (the dumps the test compares)
    // changes no page: only the update below is a change.
    c.sql("vacuum freeze");
    c.sql("checkpoint");
    let files: u64 = c.sql("select count(*) from pg_ls_dir('base/' || (select oid from pg_database where datname = current_database())) f").parse().expect("count");
    assert!(files > 3000, "the database has {files} files");

    let (bytes0, _) = maps(&src);
    let full = take_json(&src, "full", 0);
    let (bytes1, objects1) = maps(&src);
    let full_maps = full.1["objects_written"].as_u64().unwrap_or(0);
    eprintln!(
        "{label}: full wrote {} bytes of maps/ ({objects1} objects; manifest {} bytes)",
        bytes1 - bytes0,
        manifest_size(&src, &full.0.id)
    );
    assert!(manifest_size(&src, &full.0.id) < 8192, "the manifest names maps, not {files} files");

    // One row of one table changes: the incremental writes the maps of the runs that changed, not all of them.
    c.sql("update m700 set v = v + 1; checkpoint");
    let incr = take_json(&src, "incremental", 1);
    let (bytes2, _) = maps(&src);
    eprintln!("{label}: incremental wrote {} bytes of maps/ (the full's maps: {})", bytes2 - bytes1, bytes1 - bytes0);
    let raw = crate::support::raw::Raw::open(url, &crate::issue8_gc::s3_settings(extra));
    let (a, b) = (raw.manifest(&full.0.id), raw.manifest(&incr.0.id));
    let before: std::collections::HashMap<_, _> = a.files.iter().map(|f| (f.path.clone(), f)).collect();
    let changed: Vec<String> = b
        .files
        .iter()
        .filter(|f| before.get(&f.path).is_none_or(|g| *g != *f))
        .map(|f| match before.get(&f.path) {
            None => format!("{} (new)", f.path),
            Some(g) => format!(
                "{} (size {}->{}, mtime {}->{}, pieces equal {}, nodes equal {})",
                f.path,
                g.size,
                f.size,
                g.mtime,
                f.mtime,
                g.pieces == f.pieces,
                g.nodes == f.nodes
            ),
        })
        .collect();
    assert!(
        (bytes2 - bytes1) * 4 < bytes1 - bytes0,
        "a barely-changed backup writes few file maps: {} of {} bytes ({full_maps} objects in the full); {} of {} entries changed: {:?}",
        bytes2 - bytes1,
        bytes1 - bytes0,
        changed.len(),
        b.files.len(),
        &changed[..changed.len().min(12)]
    );
    let status = backupctl(&src, &["status", "--json-output"]);
    assert_ok("status", &status);

    // The full goes; the incremental's maps that the full wrote first stay, and it restores.
    archive_past(c);
    assert_ok("delete", &backupctl(&src, &["delete", "--backup-id", &full.0.id]));
    let gc = gc_json(&src, false);
    let (bytes3, _) = maps(&src);
    assert!(bytes3 < bytes2, "gc freed the full's own maps: {gc}");
    restore_matches(&src, &incr.0, "incr");
    assert_ok("verify", &backupctl(&src, &["verify"]));
}

/// [`crate::issue8_gc::take`] with the backup's JSON summary.
fn take_json(src: &Source, kind: &str, batch: u32) -> (Taken, Value) {
    let c = &src.cluster;
    c.sql(&format!("insert into t select {batch}, g, md5(g::text) from generate_series(1, 300) g"));
    let v = src.backup_json(kind);
    let id = v["id"].as_str().expect("id").to_owned();
    let lsn = c.sql("select pg_current_wal_insert_lsn()");
    (Taken { id, lsn, dump: c.dump() }, v)
}

#[test]
fn issue_10_file_maps_are_shared_between_backups() {
    if require_pg().is_none() {
        return;
    }
    let (_holders, repos) = backends("i10-fmap");
    for (kind, url, extra) in &repos {
        scenario(url, extra, &format!("i10-fmap-{kind}"));
    }
}
