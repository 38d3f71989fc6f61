//! Issue 12, what the catalog holds checked against the repository: the queries docs/operations.md documents, run
//! in a session whose `TimeZone` is far from UTC (the WAL per day compared with the repository's own listing),
//! and each backup's manifest checksum.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::issue8_gc::backupctl;
use crate::issue8_prune::json_of;
use crate::pitr::Source;
use crate::support::cluster::{Cluster, assert_ok};
use crate::support::raw::Raw;

/// UTC+14: every archive time after 10:00 UTC falls on the next day there.
const ZONE: &str = "set timezone to 'Pacific/Kiritimati';";

/// The SQL blocks of docs/operations.md's catalog section.
pub fn documented_queries() -> Vec<String> {
    let doc = include_str!("../../docs/operations.md");
    let start = doc.find("## The catalog: backups, WAL and jobs in SQL").expect("catalog section");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    section.split("```sql\n").skip(1).filter_map(|b| b.split("```").next()).map(str::to_owned).collect()
}

/// Move the archive times of the repository's first segments (a file:// repository's objects' times are its files'
/// mtimes) to either side of yesterday's UTC midnight: 23:50 and 00:10 UTC, the same afternoon in Kiritimati.
pub fn straddle_midnight(repository: &Path) {
    let mut segments = Vec::new();
    let mut dirs = vec![repository.join("wal")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read wal dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().and_then(|n| n.to_str()).is_some_and(is_segment) {
                segments.push(path);
            }
        }
    }
    segments.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    assert!(segments.len() >= 4, "{segments:?}");
    let today = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs() / 86_400;
    let midnight = SystemTime::UNIX_EPOCH + Duration::from_secs((today - 1) * 86_400);
    for (i, path) in segments[..4].iter().enumerate() {
        let at = if i < 2 {
            midnight - Duration::from_secs(600 - i as u64)
        } else {
            midnight + Duration::from_secs(600 + i as u64)
        };
        let file = std::fs::File::options().write(true).open(path).expect("open segment");
        file.set_modified(at).expect("set mtime");
    }
}

fn is_segment(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// Segments and MiB archived per UTC day over the last 30 days, from the repository's listing.
fn repository_wal_per_day(src: &Source) -> BTreeMap<String, (u64, f64)> {
    let config = backupctl::config::Config::load(&src.config).expect("config");
    let raw = Raw::open(&config.repository.url, &config.repository.s3);
    let listing = raw.rt.block_on(raw.storage.list("wal/")).expect("list wal/");
    let since = SystemTime::now() - Duration::from_secs(30 * 86_400);
    let mut days: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for o in listing {
        let name = o.key.as_str().rsplit('/').next().unwrap_or_default();
        let Some(at) = o.modified.filter(|t| *t > since) else { continue };
        if !is_segment(name) {
            continue;
        }
        let day = jiff::Timestamp::try_from(at).expect("time").strftime("%Y-%m-%d").to_string();
        let e = days.entry(day).or_default();
        e.0 += 1;
        e.1 += o.size as f64 / 1_048_576.0;
    }
    days
}

/// Run every documented query in a Kiritimati session: each answers; the WAL per day equals the repository's
/// per UTC day; the newest dump of database postgres is minutes old at most; the scheduler's drill is listed.
pub fn run_documented_queries(src: &Source, catalog: &Cluster, straddled: bool) {
    assert_eq!(catalog.sql(&format!("{ZONE} select current_setting('TimeZone')")), "Pacific/Kiritimati");
    let queries = documented_queries();
    assert!(queries.len() >= 5, "{queries:?}");
    let mut answers = Vec::new();
    for q in &queries {
        let out = catalog.try_sql(&format!("{ZONE}\n{q}"));
        assert_ok(&format!("documented query {q}"), &out);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!text.is_empty(), "no rows from {q}");
        answers.push(text);
    }
    let answer = |needle: &str| {
        let i = queries.iter().position(|q| q.contains(needle)).unwrap_or_else(|| panic!("no query with {needle}"));
        answers[i].clone()
    };

    let per_day: BTreeMap<String, (u64, f64)> = answer("as day")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 3, "{l}");
            (f[0].to_owned(), (f[1].parse().expect("segments"), f[2].parse().expect("mib")))
        })
        .collect();
    let want = repository_wal_per_day(src);
    if straddled {
        assert!(want.len() >= 3, "archive times on both sides of a UTC midnight, and today: {want:?}");
    }
    let days = |m: &BTreeMap<String, (u64, f64)>| m.iter().map(|(d, (n, _))| (d.clone(), *n)).collect::<Vec<_>>();
    assert_eq!(days(&per_day), days(&want), "WAL per day: the catalog's (Kiritimati session) against the repository's");
    for (day, (_, mib)) in &per_day {
        assert!((mib - want[day].1).abs() <= 0.051, "{day}: {mib} MiB against {}", want[day].1);
    }

    // The scheduler's drill the scenario recorded: its backup, passed, RTO 4.25 s and 123,456 bytes, rounded.
    let drills = answer("from backupctl.drills d");
    assert!(drills.lines().any(|l| l.contains("|scheduler|") && l.ends_with("|t|4.3|0.1")), "{drills}");

    let dumps = answer("from backupctl.dumps d");
    let fields: Vec<&str> = dumps.split('|').collect();
    assert_eq!((fields.len(), fields[0]), (3, "postgres"), "{dumps}");
    assert!(fields[2].starts_with("00:"), "the dump is minutes old: {dumps}");
}

/// Issue 12: each backup's `manifest_checksum` in the catalog is its manifest object's header digest (bytes 24..56
/// of the stored object: the blake3 of the manifest's JSON as stored, which every read checks), the same as
/// `status --json-output` shows.
pub fn assert_manifest_checksums(src: &Source, catalog: &Cluster) {
    let config = backupctl::config::Config::load(&src.config).expect("config");
    let raw = Raw::open(&config.repository.url, &config.repository.s3);
    let status = json_of("status", &backupctl(src, &["status", "--json-output"]));
    let backups = status["backups"].as_array().expect("backups");
    assert!(!backups.is_empty(), "{status:#}");
    for b in backups {
        let id = b["id"].as_str().expect("id");
        let parsed: backupctl::repository::backup::BackupId = id.parse().expect("id");
        let object = raw.get(&parsed.manifest_key());
        let (header, json) = backupctl::codec::decode_vec(&object).expect("decode manifest");
        let want = format!("blake3:{}", blake3::hash(&json).to_hex());
        assert_eq!(header.digest.to_string(), want);
        assert_eq!(want, format!("blake3:{}", hex::encode(&object[24..56])), "the header's bytes 24..56");
        assert_eq!(b["manifest_checksum"].as_str(), Some(want.as_str()), "status of {id}");
        let stored = catalog.sql(&format!("select manifest_checksum from backupctl.backups where id = '{id}'"));
        assert_eq!(stored, want, "catalog row of {id}");
    }
}
