//! Rendering from known figures: names, types, units, values, and which file holds what.

use std::collections::{BTreeMap, BTreeSet};

use super::encode::{self, Format, Parts};
use super::figures::{Local, NewestBackup, Repository, RepositoryFigures};
use crate::state::{ArchiveState, Archived, DrillRecord, DrillState, Failure, JobRecord, JobsState, Outcome};

fn ts(s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(s).expect("timestamp")
}

const NOW: i64 = 1_800_000_000;

fn local() -> Local {
    let archive = ArchiveState {
        last_success: Some(Archived { name: "000000010000000000000005".into(), at: ts(NOW - 30) }),
        failing_since: Some(ts(NOW - 20)),
        last_failure: Some(Failure { at: ts(NOW - 10), name: "000000010000000000000006".into(), error: "e".into() }),
        failures_total: 2,
        archived_total: 5,
        ready_count: 3,
        ready_bytes: 3 << 24,
        updated_at: Some(ts(NOW - 10)),
    };
    let mut jobs = JobsState::default();
    jobs.jobs.insert(
        "prune".into(),
        JobRecord {
            last_finished: Some(ts(NOW - 100)),
            last_outcome: Some(Outcome::Failed),
            last_duration_seconds: Some(1.5),
            last_success: Some(ts(NOW - 1000)),
            succeeded_total: 4,
            failed_total: 1,
            missed_total: 2,
            ..JobRecord::default()
        },
    );
    let drill = DrillState {
        last: Some(DrillRecord {
            started: ts(NOW - 500),
            finished: ts(NOW - 400),
            backup_id: "20261130-000000F".into(),
            target: None,
            passed: true,
            error: None,
            rto_seconds: Some(42.5),
            wal_start: None,
            wal_end: None,
            failed_step: None,
            amcheck: Some("passed".into()),
        }),
        last_success: Some(ts(NOW - 400)),
        passed_total: 3,
        failed_total: 1,
    };
    Local { archive: Ok(archive), jobs: Ok(jobs), drill: Ok(drill) }
}

fn repository() -> Repository {
    Repository::Up(RepositoryFigures {
        full_backups: 2,
        incremental_backups: 1,
        unusable_backups: 0,
        newest: Some(NewestBackup { stop: ts(NOW - 3600), logical_bytes: 1000, stored_bytes: 300 }),
        window_start: Some(ts(NOW - 7200)),
        window_end: Some(ts(NOW - 60)),
        wal_bytes: 5000,
        data_bytes: 7000,
        wal_last_archived: Some(ts(NOW - 60)),
        wal_gaps: 0,
        read_seconds: 0.25,
    })
}

/// Samples of a Prometheus 0.0.4 text: `name{labels}` to value; and each family's type.
fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').expect("type line");
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            samples.insert(series.to_owned(), value.parse::<f64>().expect("value"));
        }
    }
    (samples, types)
}

fn render(parts: Parts, repository: Option<&Repository>) -> String {
    encode::to_text(&encode::registry(&local(), repository, ts(NOW), parts), Format::Prometheus)
}

#[test]
fn live_metrics_have_the_recorded_values_and_types() {
    let text = render(Parts::LIVE, Some(&repository()));
    let (s, types) = parse(&text);
    let want: &[(&str, f64)] = &[
        ("backupctl_archive_lag_segments", 3.0),
        ("backupctl_archive_lag_bytes", f64::from(3u32 << 24)),
        ("backupctl_archive_last_success_timestamp_seconds", (NOW - 30) as f64),
        ("backupctl_archive_last_success_age_seconds", 30.0),
        ("backupctl_archive_failing", 1.0),
        ("backupctl_archive_failing_since_timestamp_seconds", (NOW - 20) as f64),
        ("backupctl_archive_failures_total", 2.0),
        ("backupctl_archive_archived_total", 5.0),
        ("backupctl_archive_state_readable", 1.0),
        ("backupctl_job_runs_total{job_name=\"prune\",outcome=\"succeeded\"}", 4.0),
        ("backupctl_job_runs_total{job_name=\"prune\",outcome=\"failed\"}", 1.0),
        ("backupctl_job_last_run_succeeded{job_name=\"prune\"}", 0.0),
        ("backupctl_job_last_run_duration_seconds{job_name=\"prune\"}", 1.5),
        ("backupctl_job_last_success_timestamp_seconds{job_name=\"prune\"}", (NOW - 1000) as f64),
        ("backupctl_scheduled_runs_missed_total{job_name=\"prune\"}", 2.0),
        ("backupctl_drill_last_passed", 1.0),
        ("backupctl_drill_last_rto_seconds", 42.5),
        ("backupctl_drill_runs_total{outcome=\"failed\"}", 1.0),
        ("backupctl_repository_up", 1.0),
        ("backupctl_backups{type=\"full\"}", 2.0),
        ("backupctl_newest_backup_age_seconds", 3600.0),
        ("backupctl_newest_backup_size_bytes", 1000.0),
        ("backupctl_restorable_window_start_timestamp_seconds", (NOW - 7200) as f64),
        ("backupctl_restorable_window_end_timestamp_seconds", (NOW - 60) as f64),
        ("backupctl_repository_size_bytes{kind=\"data\"}", 7000.0),
        ("backupctl_state_readable{record=\"jobs\"}", 1.0),
    ];
    for (series, value) in want {
        assert_eq!(s.get(*series), Some(value), "{series} in\n{text}");
    }
    for (name, kind) in &types {
        let is_counter = name.ends_with("_total");
        assert_eq!(kind == "counter", is_counter, "{name} is a {kind}\n{text}");
        assert!(name.starts_with("backupctl_"), "{name}");
    }
    assert!(!text.contains("# UNIT") && !text.contains("# EOF"), "{text}");
    for help in text.lines().filter(|l| l.starts_with("# HELP ")) {
        assert!(!help.contains('\\') && !help.contains('"'), "{help}");
    }
}

#[test]
fn openmetrics_keeps_counter_families_without_total_and_ends_with_eof() {
    let text = encode::to_text(&encode::registry(&local(), None, ts(NOW), Parts::LIVE), Format::OpenMetrics);
    assert!(text.contains("# TYPE backupctl_archive_failures counter\nbackupctl_archive_failures_total 2\n"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn an_unreadable_repository_or_record_is_a_zero_not_an_error() {
    let mut l = local();
    l.jobs = Err("damaged".into());
    let text = encode::to_text(
        &encode::registry(&l, Some(&Repository::Down("gone".into())), ts(NOW), Parts::LIVE),
        Format::Prometheus,
    );
    let (s, _) = parse(&text);
    assert_eq!(s.get("backupctl_repository_up"), Some(&0.0), "{text}");
    assert_eq!(s.get("backupctl_state_readable{record=\"jobs\"}"), Some(&0.0), "{text}");
    assert_eq!(s.get("backupctl_archive_lag_segments"), Some(&3.0), "{text}");
    assert!(!text.contains("backupctl_job_runs_total") && !text.contains("backupctl_backups{"), "{text}");
}

/// No metric is in both textfiles, together they hold every live metric but the ages, and neither has an age.
#[test]
fn textfiles_split_the_metrics() {
    let names = |text: &str| -> BTreeSet<String> { parse(text).1.into_keys().collect() };
    let live = names(&render(Parts::LIVE, Some(&repository())));
    let archive = names(&render(Parts::ARCHIVE_FILE, None));
    let full = names(&render(Parts::FULL_FILE, Some(&repository())));
    assert!(archive.is_disjoint(&full), "{:?}", archive.intersection(&full).collect::<Vec<_>>());
    let files: BTreeSet<String> = archive.union(&full).cloned().collect();
    let ages: BTreeSet<String> = live.iter().filter(|n| n.ends_with("_age_seconds")).cloned().collect();
    assert_eq!(ages.len(), 2, "{ages:?}");
    assert_eq!(live.difference(&files).cloned().collect::<BTreeSet<_>>(), ages);
    assert!(archive.iter().all(|n| n.starts_with("backupctl_archive_")), "{archive:?}");
    let text = super::archive_textfile(local().archive.as_ref().expect("archive"), ts(NOW));
    assert_eq!(names(&text), archive);
}

/// docs/operations.md lists every metric, and packaging/prometheus-alerts.yml and the Grafana dashboard use only
/// metrics that exist.
#[test]
fn docs_and_packaging_name_only_real_metrics() {
    let mut l = local();
    if let Ok(a) = l.archive.as_mut() {
        a.last_failure = Some(Failure { at: ts(NOW), name: "x".into(), error: "e".into() });
    }
    let text = encode::to_text(&encode::registry(&l, Some(&repository()), ts(NOW), Parts::LIVE), Format::Prometheus);
    let names: BTreeSet<String> = parse(&text).1.into_keys().collect();
    let doc = include_str!("../../docs/operations.md");
    for n in &names {
        let listed = doc.contains(&format!("| `{n}` |")) || doc.contains(&format!("| `{n}{{"));
        assert!(listed, "docs/operations.md does not list {n}");
    }
    for (file, text) in [
        ("packaging/prometheus-alerts.yml", include_str!("../../packaging/prometheus-alerts.yml")),
        ("packaging/grafana-dashboard.json", include_str!("../../packaging/grafana-dashboard.json")),
    ] {
        let used: BTreeSet<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("backupctl_"))
            .collect();
        assert!(!used.is_empty(), "{file} uses no metric");
        for u in used {
            assert!(names.contains(u), "{file} uses {u}, which backupctl does not export");
        }
    }
}
