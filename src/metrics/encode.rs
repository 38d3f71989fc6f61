//! The metrics themselves (pure): figures in, a `prometheus_client` registry out, and the registry as text in
//! the OpenMetrics format or the Prometheus text format 0.0.4.
//!
//! Names follow <https://prometheus.io/docs/practices/naming/>: the `backupctl_` prefix, the unit last
//! (`_seconds`, `_bytes`), `_total` on counters, `_timestamp_seconds` for points in time (Unix time). Label
//! names avoid `job` and `instance`, which Prometheus attaches to every scraped series itself (a metric label of
//! that name would be renamed `exported_job`): the scheduler's job is `job_name`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::figures::{Local, Repository};
use crate::state::{ArchiveState, DrillState, JobsState, Outcome};

/// Which metrics to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// The archive metrics (from wal-push's record).
    pub archive: bool,
    /// Everything else (jobs, drills, repository, build info).
    pub rest: bool,
    /// The `_age_seconds` gauges (time since a recorded point): only when rendered for a reader now, never in a
    /// file that is read later (there `time() - <name>_timestamp_seconds` gives the age).
    pub ages: bool,
}

impl Parts {
    /// Everything, ages included: `backupctl metrics` and `/metrics`.
    pub const LIVE: Parts = Parts { archive: true, rest: true, ages: true };
    /// The archive metrics only, no ages: wal-push's textfile `backupctl_archive.prom`.
    pub const ARCHIVE_FILE: Parts = Parts { archive: true, rest: false, ages: false };
    /// All but the archive metrics, no ages: `backupctl metrics --textfile`'s `backupctl.prom`.
    pub const FULL_FILE: Parts = Parts { archive: false, rest: true, ages: false };
}

/// The text format of an exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (what node-exporter's textfile collector and `promtool check metrics` read).
    Prometheus,
    /// OpenMetrics 1.0 text (what Prometheus asks for first when it scrapes).
    OpenMetrics,
}

impl Format {
    /// The HTTP `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// Registers metric families, skipping those with no sample (a value that is not known is absent, not 0).
struct Builder {
    registry: Registry,
}

impl Builder {
    fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, samples: Vec<(Labels, f64)>) {
        self.add(name, help, unit, samples, |g: &Gauge<f64, AtomicU64>, v| {
            g.set(v);
        });
    }

    fn gauge_u(&mut self, name: &str, help: &str, unit: Option<Unit>, samples: Vec<(Labels, u64)>) {
        self.add(name, help, unit, samples, |g: &Gauge<u64, AtomicU64>, v| {
            g.set(v);
        });
    }

    fn counter(&mut self, name: &str, help: &str, samples: Vec<(Labels, u64)>) {
        self.add(name, help, None, samples, |c: &Counter<u64, AtomicU64>, v| {
            c.inc_by(v);
        });
    }

    fn add<M, V>(&mut self, name: &str, help: &str, unit: Option<Unit>, samples: Vec<(Labels, V)>, set: impl Fn(&M, V))
    where
        M: prometheus_client::metrics::TypedMetric
            + prometheus_client::encoding::EncodeMetric
            + Default
            + Clone
            + Send
            + Sync
            + std::fmt::Debug
            + 'static,
    {
        if samples.is_empty() {
            return;
        }
        if samples.len() == 1 && samples[0].0.is_empty() {
            let metric = M::default();
            for (_, v) in samples {
                set(&metric, v);
            }
            self.register(name, help, unit, metric);
        } else {
            let family = Family::<Labels, M>::default();
            for (labels, v) in samples {
                set(&family.get_or_create(&labels), v);
            }
            self.register(name, help, unit, family);
        }
    }

    fn register(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        metric: impl prometheus_client::registry::Metric,
    ) {
        match unit {
            Some(u) => self.registry.register_with_unit(name, help, u, metric),
            None => self.registry.register(name, help, metric),
        }
    }
}

fn secs(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

fn age(now: jiff::Timestamp, t: jiff::Timestamp) -> f64 {
    (secs(now) - secs(t)).max(0.0)
}

fn one<V>(v: V) -> Vec<(Labels, V)> {
    vec![(Vec::new(), v)]
}

fn maybe<V>(v: Option<V>) -> Vec<(Labels, V)> {
    v.map(one).unwrap_or_default()
}

fn flag(b: bool) -> u64 {
    u64::from(b)
}

/// The registry of the metrics in `parts`, from the local records, the repository (`None`: not part of this
/// rendering) and the time `now`.
pub fn registry(local: &Local, repository: Option<&Repository>, now: jiff::Timestamp, parts: Parts) -> Registry {
    let mut b = Builder { registry: Registry::default() };
    if parts.archive {
        b.gauge_u(
            "backupctl_archive_state_readable",
            "Whether wal-push's record <spool>/state/archive.json could be read (1) or not (0)",
            None,
            one(flag(local.archive.is_ok())),
        );
    }
    if parts.rest {
        let readable = |record: &'static str, ok: bool| (vec![("record", record.to_owned())], flag(ok));
        b.gauge_u(
            "backupctl_state_readable",
            "Whether the local state record <spool>/state/<record>.json could be read (1) or not (0)",
            None,
            vec![readable("jobs", local.jobs.is_ok()), readable("drill", local.drill.is_ok())],
        );
    }
    if parts.archive
        && let Ok(a) = &local.archive
    {
        archive(&mut b, a, now, parts.ages);
    }
    if parts.rest {
        b.gauge_u(
            "backupctl_build_info",
            "The version of backupctl that rendered these metrics",
            None,
            vec![(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1)],
        );
        if let Ok(j) = &local.jobs {
            jobs(&mut b, j);
        }
        if let Ok(d) = &local.drill {
            drill(&mut b, d);
        }
        if let Some(r) = repository {
            repo(&mut b, r, now, parts.ages);
        }
    }
    b.registry
}

fn archive(b: &mut Builder, a: &ArchiveState, now: jiff::Timestamp, ages: bool) {
    b.gauge_u(
        "backupctl_archive_lag_segments",
        "WAL files PostgreSQL has handed over for archiving (.ready) that are not yet in the repository, at wal-push's last call",
        None,
        one(a.ready_count),
    );
    b.gauge_u("backupctl_archive_lag", "Size of those WAL files", Some(Unit::Bytes), one(a.ready_bytes));
    let last = a.last_success.as_ref().map(|s| s.at);
    b.gauge(
        "backupctl_archive_last_success_timestamp",
        "When wal-push last archived a WAL file (Unix time)",
        Some(Unit::Seconds),
        maybe(last.map(secs)),
    );
    if ages {
        b.gauge(
            "backupctl_archive_last_success_age",
            "Time since wal-push last archived a WAL file",
            Some(Unit::Seconds),
            maybe(last.map(|t| age(now, t))),
        );
    }
    b.gauge_u(
        "backupctl_archive_failing",
        "Whether wal-push's last call failed (1) or succeeded (0)",
        None,
        one(flag(a.failing_since.is_some())),
    );
    b.gauge(
        "backupctl_archive_failing_since_timestamp",
        "Start of the current run of failed wal-push calls (Unix time; absent when the last call succeeded)",
        Some(Unit::Seconds),
        maybe(a.failing_since.map(secs)),
    );
    b.gauge(
        "backupctl_archive_last_failure_timestamp",
        "When a wal-push call last failed (Unix time)",
        Some(Unit::Seconds),
        maybe(a.last_failure.as_ref().map(|f| secs(f.at))),
    );
    b.counter("backupctl_archive_failures", "Failed wal-push calls", one(a.failures_total));
    b.counter(
        "backupctl_archive_archived",
        "WAL files wal-push confirmed durable in the repository",
        one(a.archived_total),
    );
    b.gauge(
        "backupctl_archive_state_updated_timestamp",
        "When wal-push last updated its record (Unix time)",
        Some(Unit::Seconds),
        maybe(a.updated_at.map(secs)),
    );
}

fn jobs(b: &mut Builder, j: &JobsState) {
    let per = |f: &dyn Fn(&crate::state::JobRecord) -> Option<f64>| -> Vec<(Labels, f64)> {
        j.jobs.iter().filter_map(|(name, r)| f(r).map(|v| (vec![("job_name", name.clone())], v))).collect()
    };
    let mut runs = Vec::new();
    for (name, r) in &j.jobs {
        runs.push((vec![("job_name", name.clone()), ("outcome", "succeeded".to_owned())], r.succeeded_total));
        runs.push((vec![("job_name", name.clone()), ("outcome", "failed".to_owned())], r.failed_total));
    }
    b.counter("backupctl_job_runs", "Scheduled job runs by how they ended", runs);
    b.gauge(
        "backupctl_job_last_run_succeeded",
        "Whether the job's last run succeeded (1) or failed or was abandoned (0)",
        None,
        per(&|r| r.last_outcome.map(|o| if o == Outcome::Succeeded { 1.0 } else { 0.0 })),
    );
    b.gauge(
        "backupctl_job_last_run_duration",
        "How long the job's last run took",
        Some(Unit::Seconds),
        per(&|r| r.last_duration_seconds),
    );
    b.gauge(
        "backupctl_job_last_run_timestamp",
        "When the job's last run ended (Unix time)",
        Some(Unit::Seconds),
        per(&|r| r.last_finished.map(secs)),
    );
    b.gauge(
        "backupctl_job_last_success_timestamp",
        "When a run of the job last succeeded (Unix time)",
        Some(Unit::Seconds),
        per(&|r| r.last_success.map(secs)),
    );
    b.counter(
        "backupctl_scheduled_runs_missed",
        "Scheduled runs skipped because the previous run of the job (or another backup) was still going",
        j.jobs.iter().map(|(name, r)| (vec![("job_name", name.clone())], r.missed_total)).collect(),
    );
}

fn drill(b: &mut Builder, d: &DrillState) {
    let last = d.last.as_ref();
    b.gauge_u(
        "backupctl_drill_last_passed",
        "Whether the last restore drill passed (1) or failed (0)",
        None,
        maybe(last.map(|l| flag(l.passed))),
    );
    b.gauge(
        "backupctl_drill_last_rto",
        "Recovery time measured by the last restore drill: from the start of the restore until PostgreSQL accepted connections with recovery finished",
        Some(Unit::Seconds),
        maybe(last.and_then(|l| l.rto_seconds)),
    );
    b.gauge(
        "backupctl_drill_last_timestamp",
        "When the last restore drill ended (Unix time)",
        Some(Unit::Seconds),
        maybe(last.map(|l| secs(l.finished))),
    );
    b.gauge(
        "backupctl_drill_last_success_timestamp",
        "When a restore drill last passed (Unix time)",
        Some(Unit::Seconds),
        maybe(d.last_success.map(secs)),
    );
    b.counter(
        "backupctl_drill_runs",
        "Restore drills by result",
        vec![
            (vec![("outcome", "passed".to_owned())], d.passed_total),
            (vec![("outcome", "failed".to_owned())], d.failed_total),
        ],
    );
}

fn repo(b: &mut Builder, r: &Repository, now: jiff::Timestamp, ages: bool) {
    let figures = match r {
        Repository::Up(f) => f,
        Repository::Down(_) => {
            b.gauge_u("backupctl_repository_up", "Whether the repository could be read (1) or not (0)", None, one(0));
            return;
        }
    };
    b.gauge_u("backupctl_repository_up", "Whether the repository could be read (1) or not (0)", None, one(1));
    b.gauge(
        "backupctl_repository_read_duration",
        "How long reading the repository's listings and manifests took",
        Some(Unit::Seconds),
        one(figures.read_seconds),
    );
    b.gauge_u(
        "backupctl_backups",
        "Backups in the repository by type",
        None,
        vec![
            (vec![("type", "full".to_owned())], figures.full_backups),
            (vec![("type", "incremental".to_owned())], figures.incremental_backups),
        ],
    );
    b.gauge_u(
        "backupctl_backups_unusable",
        "Backups whose manifest cannot be read",
        None,
        one(figures.unusable_backups),
    );
    let newest = figures.newest.as_ref();
    b.gauge(
        "backupctl_newest_backup_timestamp",
        "When the newest backup finished (Unix time)",
        Some(Unit::Seconds),
        maybe(newest.map(|n| secs(n.stop))),
    );
    if ages {
        b.gauge(
            "backupctl_newest_backup_age",
            "Time since the newest backup finished",
            Some(Unit::Seconds),
            maybe(newest.map(|n| age(now, n.stop))),
        );
    }
    b.gauge_u(
        "backupctl_newest_backup_size",
        "Size of the newest backup's files (what a restore writes)",
        Some(Unit::Bytes),
        maybe(newest.map(|n| n.logical_bytes)),
    );
    b.gauge_u(
        "backupctl_newest_backup_stored",
        "Stored bytes of every object the newest backup references (shared ones included)",
        Some(Unit::Bytes),
        maybe(newest.map(|n| n.stored_bytes)),
    );
    b.gauge(
        "backupctl_restorable_window_start_timestamp",
        "The earliest point a restore can reach: when the oldest restorable backup finished (Unix time)",
        Some(Unit::Seconds),
        maybe(figures.window_start.map(secs)),
    );
    b.gauge(
        "backupctl_restorable_window_end_timestamp",
        "The latest point a restore can reach: when the last WAL segment a restorable backup reaches without a gap was archived (Unix time)",
        Some(Unit::Seconds),
        maybe(figures.window_end.map(secs)),
    );
    b.gauge_u(
        "backupctl_repository_size",
        "Stored bytes in the repository: WAL (wal/) and backup data (data/ in format 1; packs/, maps/ and index/ in format 2)",
        Some(Unit::Bytes),
        vec![
            (vec![("kind", "wal".to_owned())], figures.wal_bytes),
            (vec![("kind", "data".to_owned())], figures.data_bytes),
        ],
    );
    b.gauge(
        "backupctl_repository_wal_last_archived_timestamp",
        "When the newest WAL segment in the repository was written there (Unix time, the repository's clock)",
        Some(Unit::Seconds),
        maybe(figures.wal_last_archived.map(secs)),
    );
    b.gauge_u(
        "backupctl_repository_wal_gaps",
        "Gaps in the archived WAL, other than those retention pruned on purpose",
        None,
        one(figures.wal_gaps),
    );
}

/// `registry` as text in `format`.
pub fn to_text(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    // invariant: writing into a String cannot fail, and every name and label here is valid.
    let _ = encode_registry(&mut out, registry);
    match format {
        Format::OpenMetrics => {
            out.push_str("# EOF\n");
            out
        }
        Format::Prometheus => openmetrics_to_prometheus(&out),
    }
}

/// The OpenMetrics families `prometheus_client` writes, as the Prometheus text format 0.0.4
/// (<https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>): a counter family is named
/// with its `_total` suffix (OpenMetrics names the family without it, and 0.0.4 readers such as node-exporter's
/// textfile collector would then see an untyped `..._total`), and the `# UNIT` and `# EOF` lines go. Only gauges
/// and counters are written here, so nothing else differs.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}
