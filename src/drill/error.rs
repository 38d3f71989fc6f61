//! What can stop a restore drill. A failed step is [`Error::Failed`], which carries the step, the drill's report
//! (recorded in `<spool>/state/drill.json` before it is returned) and the cause.

use std::path::PathBuf;

use super::{DrillReport, Step};

/// Restore-drill failures. Messages are one line and name the step, the backup and the path or program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Run as root: PostgreSQL refuses to start as root, so the drill refuses before doing anything (nothing is
    /// recorded: a record written by root would lock the PostgreSQL OS user out of its spool).
    #[error("backupctl drill must not run as root: PostgreSQL refuses to start as root")]
    RunAsRoot {
        /// The user to run it as instead (the owner of the spool, else `postgres`).
        user: String,
    },
    /// A step failed; the report says how far the drill got. Everything it started was stopped and removed.
    #[error("restore drill{} failed at step {step}: {source}", backup_part(report))]
    Failed {
        /// The step that failed.
        step: Step,
        /// The drill's report (passed = false), as recorded.
        report: Box<DrillReport>,
        /// What went wrong.
        #[source]
        source: Box<crate::Error>,
    },
    /// No server binaries of the backup's major version.
    #[error("no PostgreSQL {major} server binaries for backup {backup}: {}", tried.join("; "))]
    NoServerBinaries {
        /// The backup's major version.
        major: u32,
        /// The backup.
        backup: String,
        /// Each place looked at, with what was found there.
        tried: Vec<String>,
    },
    /// The work directory's file system has too little free space for the backup.
    #[error(
        "{} has {} MiB free, the drill of backup {backup} needs {} MiB (its logical size, {} MiB, plus a margin)",
        path.display(), available >> 20, needed >> 20, logical >> 20
    )]
    DiskBudget {
        /// The work directory.
        path: PathBuf,
        /// The backup.
        backup: String,
        /// The backup's logical size in bytes (manifest stats).
        logical: u64,
        /// Bytes needed (logical size plus margin).
        needed: u64,
        /// Bytes available to an unprivileged user.
        available: u64,
    },
    /// A file or directory of the drill could not be created, read or removed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A PostgreSQL program could not be run or failed.
    #[error("{} failed: {detail}", program.display())]
    Program {
        /// The program.
        program: PathBuf,
        /// Its exit status and last line of output, or why it could not start.
        detail: String,
    },
    /// The restored server exited before the drill stopped it.
    #[error("the restored server exited ({status}); its log said: {last_lines}")]
    ServerExited {
        /// How it exited.
        status: String,
        /// The last FATAL, PANIC, ERROR and restore_command error lines of its log (which is removed with the
        /// directory), joined on one line.
        last_lines: String,
    },
    /// Recovery did not finish within `[drill] timeout`.
    #[error("recovery did not finish within [drill] timeout = \"{limit}\" (replayed up to {replayed})")]
    Timeout {
        /// The limit.
        limit: String,
        /// The last LSN replayed, or `nothing` if the server never answered.
        replayed: String,
    },
    /// The restored server answered a query with an error.
    #[error("{what} failed: {reason}")]
    Query {
        /// What was asked.
        what: String,
        /// The server's words.
        reason: String,
    },
    /// pg_amcheck reported corruption or could not check.
    #[error("pg_amcheck --all found problems ({status}): {detail}")]
    Amcheck {
        /// Its exit status.
        status: String,
        /// Its first lines of output, on one line.
        detail: String,
    },
    /// The drill was abandoned (Ctrl-C, SIGTERM, or the scheduler gave up on it).
    #[error("abandoned before it finished")]
    Abandoned,
}

fn backup_part(report: &DrillReport) -> String {
    report.backup_id.as_ref().map(|b| format!(" of backup {b}")).unwrap_or_default()
}

impl Error {
    /// One sentence of guidance, if there is any.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Error::RunAsRoot { .. } => "run it as the PostgreSQL OS user: runuser -u postgres -- backupctl drill",
            Error::Failed { source, .. } => return source.hint(),
            Error::NoServerBinaries { .. } => {
                "install the server package of that major version, or set [drill] pg_bin_dir to its bin directory"
            }
            Error::DiskBudget { .. } => {
                "free space there, or set [drill] work_dir to a file system with room for the restored cluster"
            }
            Error::Io { .. } => "[drill] work_dir must exist and be writable by the PostgreSQL OS user",
            Error::Program { .. } | Error::ServerExited { .. } => {
                "the server's own words are above; a restore_command failure means WAL is missing or damaged in the repository ('backupctl verify --wal')"
            }
            Error::Timeout { .. } => {
                "raise [drill] timeout if recovery is merely slow; check that wal-fetch reaches the repository"
            }
            Error::Query { .. } => "check [drill] sql, user and database against the backed-up cluster",
            Error::Amcheck { .. } => {
                "the backup holds corrupt data: run 'backupctl verify', and take a new full backup once the source is checked (pg_amcheck on it)"
            }
            Error::Abandoned => return None,
        })
    }

    /// The drill was abandoned (the caller's flag, Ctrl-C, SIGTERM), not failed: the scheduler records such a run
    /// as abandoned, and the drill state keeps the previous result.
    pub fn is_abandoned(&self) -> bool {
        match self {
            Error::Abandoned => true,
            Error::Failed { source, .. } => matches!(&**source, crate::Error::Drill(d) if d.is_abandoned()),
            _ => false,
        }
    }

    /// The user the command should be run as instead, for a refusal to run as root.
    pub fn run_as(&self) -> Option<&str> {
        match self {
            Error::RunAsRoot { user } => Some(user),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_numbers_and_abandonment_is_told_apart() {
        let e = Error::DiskBudget {
            path: "/srv/drill".into(),
            backup: "20261126-100000F".into(),
            logical: 40 << 20,
            needed: (1 << 30) + (44 << 20),
            available: 64 << 20,
        };
        assert_eq!(
            e.to_string(),
            "/srv/drill has 64 MiB free, the drill of backup 20261126-100000F needs 1068 MiB (its logical size, 40 MiB, plus a margin)"
        );
        assert!(!e.is_abandoned());
        let mut report =
            DrillReport::begun(jiff::Timestamp::UNIX_EPOCH, Some("20261126-100000F".into()), None, "/tmp".into());
        report.failed_step = Some(Step::Restore);
        let failed =
            Error::Failed { step: Step::Restore, report: Box::new(report), source: Box::new(Error::Abandoned.into()) };
        assert_eq!(
            failed.to_string(),
            "restore drill of backup 20261126-100000F failed at step restore: abandoned before it finished"
        );
        assert!(failed.is_abandoned());
        let root: crate::Error = Error::RunAsRoot { user: "postgres".into() }.into();
        assert_eq!(root.run_as(), Some("postgres"));
        assert!(root.is_usage());
    }
}
