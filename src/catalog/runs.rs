//! The history tables: one `job_runs` row per run of a job, by the scheduler or by hand, with a `checks` row for
//! `check` and `verify` and a `drills` row (what was restored, the RTO) for a restore drill. Schema: migrations
//! V2 and V3, docs/design/catalog.md.

use super::{Catalog, Error};

/// Who started a run (`job_runs.started_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartedBy {
    /// The scheduler daemon, from `[schedule]`.
    Scheduler,
    /// A person or a cron job running `backupctl check`, `verify` or `drill`.
    Manual,
}

impl StartedBy {
    /// The value stored: `scheduler` or `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduler => "scheduler",
            Self::Manual => "manual",
        }
    }
}

/// What a restore drill restored and measured, for its `drills` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrillFacts {
    /// The backup restored (`None`: the drill failed before choosing one).
    pub backup_id: Option<String>,
    /// Seconds from the start of the restore until the server accepted connections (the RTO).
    pub rto_seconds: Option<f64>,
    /// Seconds the restore of the files took.
    pub restore_seconds: Option<f64>,
    /// Bytes written into the drill's data directory.
    pub bytes_restored: u64,
    /// The recovery target time (RFC 3339), `None` for the end of the archive.
    pub recovery_target: Option<String>,
}

impl From<&crate::drill::DrillReport> for DrillFacts {
    fn from(r: &crate::drill::DrillReport) -> Self {
        Self {
            backup_id: r.backup_id.clone(),
            rto_seconds: r.rto_seconds,
            restore_seconds: r.restore_seconds,
            bytes_restored: r.bytes_restored,
            recovery_target: r.target.clone(),
        }
    }
}

impl DrillFacts {
    /// The facts of a drill's outcome: its report, or the report inside [`crate::drill::Error::Failed`] (as far
    /// as the drill got); `None` when it never started.
    pub fn of_result(result: &Result<crate::drill::DrillReport, crate::Error>) -> Option<Self> {
        match result {
            Ok(report) => Some(report.into()),
            Err(crate::Error::Drill(d)) => match d.as_ref() {
                crate::drill::Error::Failed { report, .. } => Some(report.as_ref().into()),
                _ => None,
            },
            Err(_) => None,
        }
    }
}

/// One finished run of a job.
#[derive(Debug, Clone)]
pub struct JobRun {
    /// The job's `[schedule]` name: `full_backup`, `incremental_backup`, `prune`, `verify`, `check`, `drill`.
    pub job: String,
    /// Who started it.
    pub started_by: StartedBy,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// Its one-line summary on success.
    pub summary: Option<String>,
    /// Its error on failure.
    pub error: Option<String>,
    /// For a `drill`: what it restored and measured (also when it failed, as far as it got).
    pub drill: Option<DrillFacts>,
}

impl Catalog {
    /// Record one run of a job (`job` as in `[schedule]`, e.g. `full_backup`) for `repository` (`repository_id`
    /// null when it was never synced); a `check`/`verify` run also gets a row in `checks`, a `drill` run one in
    /// `drills`. Returns the run's id. Creates the schema if there is none, never migrates an older one
    /// ([`Error::OlderSchema`]; see [`Catalog::prepare_schema`]); [`Error::Query`] when a statement fails.
    pub fn record_job_run(&mut self, repository: &str, run: &JobRun) -> Result<i64, Error> {
        self.prepare_schema(false)?;
        let target = self.target.clone();
        let q = |source| Error::Query { target: target.clone(), what: "recording a job run", source };
        let mut tx = self.client.transaction().map_err(q)?;
        let repository_id: Option<i64> = tx
            .query_opt("select id from backupctl.repositories where url = $1", &[&repository])
            .map_err(q)?
            .map(|r| r.get(0));
        let (outcome, error) = match &run.error {
            None => ("succeeded", None),
            Some(e) => ("failed", Some(e.as_str())),
        };
        let id: i64 = tx
            .query_one(
                "insert into backupctl.job_runs \
                 (repository_id, job, started_by, started_at, finished_at, outcome, summary, error) \
                 values ($1, $2, $3, ($4::text)::timestamptz, ($5::text)::timestamptz, $6, $7, $8) returning id",
                &[
                    &repository_id,
                    &run.job,
                    &run.started_by.as_str(),
                    &run.started_at,
                    &run.finished_at,
                    &outcome,
                    &run.summary,
                    &error,
                ],
            )
            .map_err(q)?
            .get(0);
        let detail = run.error.as_deref().or(run.summary.as_deref());
        let passed = run.error.is_none();
        match run.job.as_str() {
            "check" | "verify" => {
                tx.execute(
                    "insert into backupctl.checks (job_run_id, kind, passed, finished_at, detail) \
                     values ($1, $2, $3, ($4::text)::timestamptz, $5)",
                    &[&id, &run.job, &passed, &run.finished_at, &detail],
                )
                .map_err(q)?;
            }
            "drill" => {
                let d = run.drill.clone().unwrap_or_default();
                let bytes = i64::try_from(d.bytes_restored).unwrap_or(i64::MAX);
                tx.execute(
                    "insert into backupctl.drills (job_run_id, passed, finished_at, detail, backup_id, rto_seconds, \
                     restore_seconds, bytes_restored, recovery_target) \
                     values ($1, $2, ($3::text)::timestamptz, $4, $5, $6, $7, $8, $9)",
                    &[
                        &id,
                        &passed,
                        &run.finished_at,
                        &detail,
                        &d.backup_id,
                        &d.rto_seconds,
                        &d.restore_seconds,
                        &bytes,
                        &d.recovery_target,
                    ],
                )
                .map_err(q)?;
            }
            _ => {}
        }
        tx.commit().map_err(q)?;
        Ok(id)
    }
}
