//! `crate::Error`: every module's error, plus the command-level failures, with a one-line hint each.
//!
//! Rules (follow them when adding a variant):
//! - Messages are lower-case, one line, no trailing period, and name the object: the segment, key, file or URL.
//! - Variants carry typed context, not pre-formatted strings.
//! - Guidance for the operator goes in [`Error::hint`], one sentence per variant, never in the message.
//! - Exit codes are decided in `cli::exit` from [`Error::is_usage`] and [`Error::is_not_in_archive`], not here.

use std::path::PathBuf;

use crate::codec::Digest;

/// Any failure of a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// Command-line usage error (bad argument).
    #[error("{0}")]
    Usage(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    /// The spool failed or is locked.
    #[error(transparent)]
    Spool(#[from] crate::spool::Error),
    /// A record of unattended running (`<spool>/state/`) could not be read or written.
    #[error(transparent)]
    State(#[from] crate::state::Error),
    /// A restore drill refused to run or failed at a step (`backupctl drill`; the report is inside).
    #[error(transparent)]
    Drill(Box<crate::drill::Error>),
    /// The PostgreSQL catalog could not be reached, migrated or written, or is in the archived cluster.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::Error),
    /// A repository record is unreadable, from a newer format, or for another cluster.
    #[error(transparent)]
    Repository(#[from] crate::repository::store::Error),
    /// The effective user may not write into a `file://` repository or the spool, or back up this data directory.
    #[error(transparent)]
    Owner(#[from] crate::storage::fs::owner::Error),
    /// A name PostgreSQL does not archive.
    #[error(transparent)]
    Name(#[from] crate::wal::ParseError),
    /// A segment's page header contradicts its name, its size, or is not WAL.
    #[error("{path}: {source}")]
    BadSegment {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: crate::wal::HeaderError,
    },
    /// A `.history` or `.backup` file whose content is not what PostgreSQL writes.
    #[error("{path}: not a valid {kind} file: {reason}")]
    BadTextFile {
        /// The file.
        path: PathBuf,
        /// `timeline history` or `backup history`.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Reading the WAL file to push failed (vanished, unreadable, changed while read).
    #[error("cannot read {path}: {source}")]
    ReadWal {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An entry of the data directory or a tablespace could not be listed or read by base-backup.
    #[error("cannot read {}: {source}", crate::repository::path::Escaped(path))]
    ReadSource {
        /// The exact entry (file or directory) that failed.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A symbolic link in the data directory or a tablespace that a backup cannot follow (found before any data is
    /// copied).
    #[error("cannot back up symbolic link {}: {problem}", crate::repository::path::Escaped(link))]
    SourceLink {
        /// The link.
        link: PathBuf,
        /// What is wrong with it.
        problem: crate::backup::walk::LinkProblem,
    },
    /// The file changed size while it was being read.
    #[error("{path} changed while being read ({expected} bytes before, {actual} read)")]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// Size at open.
        expected: u64,
        /// Bytes read.
        actual: u64,
    },
    /// The repository holds this name with other content: never overwritten.
    #[error("{name} already archived with a different checksum (repository has {stored}, this file is {offered})")]
    DifferentContent {
        /// The WAL file name.
        name: String,
        /// Digest in the repository.
        stored: Digest,
        /// Digest of the file offered.
        offered: Digest,
    },
    /// The repository does not hold the file asked for (a definitive answer).
    #[error("{name} is not in the archive {backend}")]
    NotInArchive {
        /// The WAL file name.
        name: String,
        /// Backend display.
        backend: String,
    },
    /// The archive lacks a segment although it holds WAL that comes after it: a hole, not the end of the archive
    /// (wal-fetch exits 255 so that recovery stops there instead of promoting).
    #[error("{missing} is missing from the archive {backend}, which holds later WAL ({later}): the archive has a hole")]
    ArchiveHole {
        /// The absent segment.
        missing: String,
        /// What comes after it: the next archived file, or a later timeline's history.
        later: String,
        /// Backend display.
        backend: String,
    },
    /// The archive lacks a segment, holds later WAL, and holds nothing of the segment's timeline before it: the
    /// segment is older than the archive (retention removed WAL no kept backup needs, and a standby or an old copy
    /// asked for it), or was never archived. Fatal to recovery like [`Error::ArchiveHole`] (wal-fetch exits 255).
    #[error(
        "{missing} is older than anything the archive {backend} holds on its timeline (the oldest is {oldest}): retention removed it, or it was never archived"
    )]
    OlderThanArchive {
        /// The absent segment.
        missing: String,
        /// The oldest archived segment of its timeline.
        oldest: String,
        /// Backend display.
        backend: String,
    },
    /// A restore would need WAL that the archive lacks (checked before anything is written).
    #[error(
        "cannot restore backup {backup} to {target}: WAL segment {missing} is missing from the archive {backend} ({next} is the next one present)"
    )]
    WalGap {
        /// The backup chosen.
        backup: String,
        /// The target, as given.
        target: String,
        /// The first missing segment.
        missing: String,
        /// The next segment present after it on the timeline path.
        next: String,
        /// Backend display.
        backend: String,
    },
    /// The recovery target can never be reached with this archive (checked before anything is written).
    #[error("cannot restore to {target}: {reason}")]
    UnreachableTarget {
        /// The target, as given.
        target: String,
        /// Why: where the archive ends, or the current time.
        reason: String,
    },
    /// Format 2: a frame a backup names is in no pack index of the repository.
    #[error(
        "frame {frame} (part of {needed_by}) is in no pack index of {backend}: the repository lost data this backup needs"
    )]
    MissingFrame {
        /// The frame id.
        frame: String,
        /// A file that needs it.
        needed_by: String,
        /// Backend display.
        backend: String,
    },
    /// Format 2: a block rebuilt from the repository does not have the digest its block map records.
    #[error("block {block} of {path} does not match its backup's block map after it was rebuilt from {frames}")]
    BlockMismatch {
        /// The file (manifest path).
        path: String,
        /// Block number in the file.
        block: u64,
        /// The frames it came from.
        frames: String,
    },
    /// A stored object failed verification.
    #[error("{what} is corrupt: {source}")]
    Corrupt {
        /// What was being read (key or spool file).
        what: String,
        /// Cause.
        #[source]
        source: crate::codec::Error,
    },
    /// Writing the destination file failed.
    #[error("cannot write {}: {source}", crate::repository::path::Escaped(path))]
    WriteDestination {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Talking to PostgreSQL failed.
    #[error(transparent)]
    Pg(#[from] crate::pg::Error),
    /// A backup's manifest records a PostgreSQL major this build does not support (`pg_version_num`).
    #[error("backup {backup}: {source}")]
    UnsupportedBackup {
        /// The backup id.
        backup: String,
        /// The version and the supported range.
        #[source]
        source: crate::wal::version::Unsupported,
    },
    /// The cluster cannot be backed up as it is (not archiving, a standby, ...).
    #[error("cannot back up {data_directory}: {reason}")]
    CannotBackup {
        /// The data directory.
        data_directory: PathBuf,
        /// Why.
        reason: String,
    },
    /// Pages of the cluster fail their data checksum and the backup was asked to fail on that
    /// (`--fail-on-checksum-error`).
    #[error(transparent)]
    PageChecksums(#[from] crate::backup::pages::ChecksumFailures),
    /// Another base-backup holds the lock.
    #[error("another base-backup of this repository is running (lock {path} held by {holder})")]
    BackupLocked {
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote (pid, start time).
        holder: String,
    },
    /// Another scheduler daemon already runs on this spool (it holds `<spool>/state/scheduler.lock`).
    #[error("another scheduler daemon is running on spool {spool} (lock {path} held by {holder})")]
    SchedulerRunning {
        /// The spool (`[spool] path`).
        spool: PathBuf,
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote (pid, start time).
        holder: String,
    },
    /// The WAL a backup needs did not reach the archive in time.
    #[error("WAL segment {segment} needed by backup {backup} did not reach the archive {backend} within {seconds} s")]
    ArchiveTimeout {
        /// The segment waited for.
        segment: String,
        /// The backup id.
        backup: String,
        /// Backend display.
        backend: String,
        /// How long we waited.
        seconds: u64,
    },
    /// No backup can reach the requested target.
    #[error("no backup in {backend} can restore to {target}: {reason}")]
    NoBackup {
        /// Backend display.
        backend: String,
        /// The target, as given.
        target: String,
        /// Why not.
        reason: String,
    },
    /// The restore destination is unusable.
    #[error("destination {path}: {reason}")]
    Destination {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `backupctl check`: some checks failed (each is also reported on its own line).
    #[error("{} of {total} checks failed: {}", failed.len(), failed.join("; "))]
    ChecksFailed {
        /// Each failed check as `name: reason`.
        failed: Vec<String>,
        /// How many checks there are.
        total: usize,
    },
    /// `backupctl verify` found objects missing or corrupt, broken backups or lost WAL (the report lists them).
    #[error("verify of {backend} failed: {problems} problem(s), {broken} broken backup(s){}", broken_dumps_text(*broken_dumps))]
    VerifyFailed {
        /// Backend display.
        backend: String,
        /// Problems that fail the verification.
        problems: usize,
        /// Backups that cannot be restored.
        broken: usize,
        /// Logical dumps that cannot be restored (named only when there are some).
        broken_dumps: usize,
    },
    /// A retention policy that is not valid (`--policy`).
    #[error(transparent)]
    Policy(#[from] crate::retention::plan::PolicyError),
    /// `prune`, `keep` or `unkeep` cannot go on (an unknown backup id, a damaged manifest, a bad `--until`).
    #[error(transparent)]
    Retention(#[from] crate::retention::expire::Error),
    /// Deleting a backup or collecting garbage refused or failed (unknown or kept backup, unreadable manifest).
    #[error(transparent)]
    Gc(Box<crate::retention::gc::Error>),
    /// A lease (of a running base-backup, restore or gc) could not be taken, kept or waited out.
    #[error(transparent)]
    Lease(Box<crate::repository::lease::Error>),
    /// Objects a base-backup references vanished before its manifest was written (checked just before).
    #[error(
        "backup {backup}: {count} object(s) it references vanished from {backend} before its manifest was written, e.g. {first}"
    )]
    ObjectsVanished {
        /// The backup id.
        backup: String,
        /// How many are missing.
        count: usize,
        /// One of them (its key).
        first: String,
        /// Backend display.
        backend: String,
    },
    /// `backupctl alert test`: no channel is configured, or a channel did not accept the message.
    #[error(transparent)]
    Alert(#[from] crate::alert::Error),
    /// Serving metrics or writing a metrics textfile failed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::Error),
    /// A logical dump or dump-restore failed or was refused (`backupctl dump`, `dump-restore`).
    #[error(transparent)]
    Dump(Box<crate::dump::Error>),
    /// A background task failed to run.
    #[error("internal task failed: {0}")]
    Task(String),
    /// Writing results to stdout failed; a closed pipe (`| head -1`) is [`Error::is_output_closed`].
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
}

impl From<crate::retention::gc::Error> for Error {
    fn from(e: crate::retention::gc::Error) -> Self {
        Error::Gc(Box::new(e))
    }
}

impl From<crate::dump::Error> for Error {
    fn from(e: crate::dump::Error) -> Self {
        Error::Dump(Box::new(e))
    }
}

impl From<crate::drill::Error> for Error {
    fn from(e: crate::drill::Error) -> Self {
        Error::Drill(Box::new(e))
    }
}

impl From<crate::repository::lease::Error> for Error {
    fn from(e: crate::repository::lease::Error) -> Self {
        Error::Lease(Box::new(e))
    }
}

impl Error {
    /// A bad configuration or command line: exit status 2 (255 for wal-fetch).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Config(_)
                | Error::Usage(_)
                | Error::Policy(_)
                | Error::Retention(crate::retention::expire::Error::BadUntil { .. })
                | Error::Alert(crate::alert::Error::NotConfigured { .. })
                | Error::Metrics(crate::metrics::Error::NoTextfileDir | crate::metrics::Error::Remote { .. })
        ) || self.owner_error().is_some()
            || matches!(self, Error::Drill(d) if matches!(**d, crate::drill::Error::RunAsRoot { .. }))
            || matches!(
                self,
                Error::Storage(crate::storage::Error::InvalidUrl { .. } | crate::storage::Error::NoCredentials { .. })
                    | Error::Repository(crate::repository::store::Error::Storage(
                        crate::storage::Error::NoCredentials { .. }
                    ))
            )
    }

    /// The ownership refusal inside this error, if it is one.
    pub fn owner_error(&self) -> Option<&crate::storage::fs::owner::Error> {
        match self {
            Error::Owner(e) | Error::Spool(crate::spool::Error::Owner(e)) => Some(e),
            _ => None,
        }
    }

    /// The user who should run the command instead, when the error is an ownership refusal naming one; `cli`
    /// prints `runuser -u USER -- <the same command>` for it.
    pub fn run_as(&self) -> Option<&str> {
        match self {
            Error::Drill(d) => d.run_as(),
            _ => self.owner_error().and_then(|e| e.run_as()),
        }
    }

    /// Stdout is a pipe whose reader has gone (`backupctl status | head -1`): end quietly, exit status 0.
    pub fn is_output_closed(&self) -> bool {
        matches!(self, Error::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The repository definitively does not hold the file (wal-fetch exit status 1).
    pub fn is_not_in_archive(&self) -> bool {
        matches!(self, Error::NotInArchive { .. })
    }

    /// One sentence of guidance for the operator, if there is any.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Error::Config(_) => concat!("fix the configuration file and run again; see ", doc!("configuration.md")),
            Error::Usage(_) => "run with --help for usage",
            Error::Storage(e) | Error::Repository(crate::repository::store::Error::Storage(e)) => {
                return storage_hint(e);
            }
            Error::Owner(_) | Error::Spool(crate::spool::Error::Owner(_)) => {
                "run wal-push, base-backup, check and init as the PostgreSQL OS user (runuser -u postgres -- COMMAND), and give it the repository and spool directories: install -d -o postgres -g postgres DIR for a new one, chown -R postgres:postgres DIR for one root owns"
            }
            Error::Spool(crate::spool::Error::Locked { .. }) => {
                "another wal-push or wal-fetch is running against this spool; it will be retried"
            }
            Error::Spool(_) => "spool.path must exist or be creatable, and be writable by the PostgreSQL OS user",
            Error::State(crate::state::Error::Damaged { .. }) => {
                "move the damaged record aside (its history restarts; a restarted scheduler may then run the current slot again)"
            }
            Error::State(_) => "spool.path/state must be writable by the PostgreSQL OS user",
            Error::Drill(d) => return d.hint(),
            Error::Catalog(crate::catalog::Error::ArchivedCluster { .. }) => concat!(
                "point [catalog] at a database of another PostgreSQL cluster (see ",
                doc!("design/catalog.md"),
                ")"
            ),
            Error::Catalog(crate::catalog::Error::OtherRepository { .. }) => {
                "if this repository was re-created for a new cluster, retire the old row first (in the catalog: update backupctl.repositories set url = url || ' (retired)' where url = 'URL'); if two repositories share the URL on different S3 endpoints or hosts, give each its own catalog database"
            }
            Error::Catalog(crate::catalog::Error::NotSynced { .. }) => {
                "run `backupctl catalog sync` to mirror this repository into the catalog (base-backup, dump and prune keep it up to date afterwards)"
            }
            Error::Catalog(crate::catalog::Error::NewerSchema { .. }) => {
                "a newer backupctl migrated this catalog: run that version (the repository itself is unaffected)"
            }
            Error::Catalog(_) => concat!(
                "check [catalog] (host, port, user, password, dbname, sslmode and its certificate files) and that the user may create schema backupctl; the repository is unaffected (see ",
                doc!("configuration.md"),
                ")"
            ),
            Error::Dump(d) => return d.hint(),
            Error::Repository(crate::repository::store::Error::WrongCluster { .. }) => {
                "each cluster needs its own repository url; check repository.url in this cluster's configuration"
            }
            Error::Repository(crate::repository::store::Error::NoRepository { .. }) => {
                "check repository.url for a typo; a new repository is created by 'backupctl init' (or by wal-push's first push or base-backup)"
            }
            Error::Repository(_) => "run 'backupctl check' and restore the repository records from a copy if needed",
            Error::Name(_) => "archive_command must pass %p and restore_command must pass %f and %p",
            Error::Pg(crate::pg::Error::Unsupported { .. })
            | Error::UnsupportedBackup { .. }
            | Error::BadSegment { source: crate::wal::HeaderError::UnsupportedMagic { .. }, .. } => {
                "run a backupctl release that supports this PostgreSQL major (docs/operations.md, \"Supported PostgreSQL versions\")"
            }
            Error::BadSegment { .. } | Error::BadTextFile { .. } => {
                "this is not WAL of this cluster; check archive_command and the data directory"
            }
            Error::ReadWal { .. } | Error::FileChanged { .. } => {
                "the file must exist in pg_wal and be readable by the PostgreSQL OS user"
            }
            Error::DifferentContent { .. } => {
                "another cluster or a restored copy may be archiving into this repository; give it its own repository url"
            }
            Error::NotInArchive { .. } => return None,
            Error::OlderThanArchive { .. } => {
                "recover from a backup taken after the oldest archived segment instead ('backupctl status' lists the backups), or rebuild this standby from a new base backup; if the segment was never archived and is still in pg_wal of the source, copy it into the repository"
            }
            Error::ArchiveHole { .. } | Error::WalGap { .. } => {
                "copy the missing segment back into the repository (from pg_wal of the source, a standby or a copy of the repository); otherwise restore only to a target before it"
            }
            Error::UnreachableTarget { .. } => {
                "choose a target inside the archived WAL ('backupctl status' shows the archived range), or wait until the WAL is archived"
            }
            Error::MissingFrame { .. } | Error::BlockMismatch { .. } => {
                "run 'backupctl verify' to see which backups are affected; restore another backup, or restore the repository from a copy"
            }
            Error::Corrupt { .. } => {
                "the damaged object was not used (a recovery stops here rather than skip it): restore it from a copy of the repository, or take a new full backup"
            }
            Error::WriteDestination { .. } => "check free space and permissions of the destination directory",
            Error::ReadSource { .. } => {
                "run base-backup on the database host as a user that can read the data directory and tablespaces"
            }
            Error::SourceLink { .. } => {
                concat!(
                    "make the link lead to an existing directory or regular file outside the directories that contain it, or remove it (",
                    doc!("operations.md"),
                    ", symbolic links)"
                )
            }
            Error::Pg(_) => {
                "check the [postgres] section (host, port, user, password, sslmode and its certificate files) and that the user may run pg_backup_start"
            }
            Error::CannotBackup { .. } => "back up a primary with archive_mode on and archive_command running wal-push",
            Error::PageChecksums(_) => {
                concat!(
                    "find and repair the relations those files belong to (",
                    doc!("operations.md"),
                    ", \"Page checksum failures\"); without --fail-on-checksum-error the backup records the pages and succeeds"
                )
            }
            Error::BackupLocked { .. } => "wait for the running backup to finish; the lock is released when it exits",
            Error::SchedulerRunning { .. } => {
                "one daemon per spool: stop the other one (systemctl stop backupctl-scheduler, or kill -TERM its pid) first"
            }
            Error::ArchiveTimeout { .. } => {
                "check archive_command and pg_stat_archiver.failed_count on the server; this backup was not recorded"
            }
            Error::NoBackup { .. } => "run 'backupctl status' to list the backups and when each finished",
            Error::Destination { .. } => {
                "the destination and each tablespace directory must be new or empty; --delta restores over a stopped \
                 old copy of this cluster (its own tablespace links included)"
            }
            Error::ChecksFailed { .. } => {
                concat!(
                    "fix what each failed check names and run 'backupctl check' again (",
                    doc!("operations.md"),
                    ", \"Checking a setup\")"
                )
            }
            Error::VerifyFailed { broken: 0, broken_dumps: 1.., .. } => {
                concat!(
                    "take a new logical dump with 'backupctl dump' (or restore from another dump), then remove each broken one with 'backupctl delete --backup-id ID' (",
                    doc!("operations.md"),
                    ", Verify)"
                )
            }
            Error::VerifyFailed { broken_dumps: 1.., .. } => {
                concat!(
                    "copy what is missing or corrupt back from a copy of the repository, then verify again; take a new full backup if a broken backup cannot be repaired, and a new 'backupctl dump' for each broken dump (then 'backupctl delete --backup-id ID' it) (",
                    doc!("operations.md"),
                    ", Verify)"
                )
            }
            Error::VerifyFailed { .. } => {
                concat!(
                    "copy what is missing or corrupt back from a copy of the repository (or pg_wal of the source for WAL), then verify again; take a new full backup if a broken backup cannot be repaired (",
                    doc!("operations.md"),
                    ", Verify)"
                )
            }
            Error::Policy(_) => {
                concat!(
                    "write the policy as comma-separated key=value items, e.g. --policy \"daily-retain=7,weekly-retain=4,pitr-days=14\" (",
                    doc!("operations.md"),
                    ", retention)"
                )
            }
            Error::Retention(crate::retention::expire::Error::UnknownBackup { .. }) => {
                "run 'backupctl status' to list the backups"
            }
            Error::Retention(
                crate::retention::expire::Error::UnusableBackups { .. } | crate::retention::expire::Error::Plan(_),
            ) => {
                "run 'backupctl verify' on those backups, and delete the ones that cannot be restored with 'backupctl delete --backup-id ID' before pruning"
            }
            Error::Retention(_) => "give --until a date (2027-01-31) or an RFC 3339 time in the future, or --forever",
            Error::Gc(e) => return e.hint().or_else(|| gc_storage(e).and_then(storage_hint)),
            Error::Lease(e) if matches!(**e, crate::repository::lease::Error::Busy { .. }) => {
                "wait for the other command to finish and run again; a lease of a killed process expires after 10 minutes (at once on the same host)"
            }
            Error::Lease(e) if matches!(**e, crate::repository::lease::Error::Lost { .. }) => {
                "the repository was unreachable for minutes; run again once it is reachable"
            }
            Error::Lease(e) => return lease_storage(e).and_then(storage_hint),
            Error::ObjectsVanished { .. } => {
                "something deleted objects under data/ while the backup ran (a gc of an older version, or by hand); this backup was not recorded: run it again"
            }
            Error::Alert(crate::alert::Error::NotConfigured { .. }) => {
                concat!(
                    "add [alerts.email] or [alerts.webhook] to the configuration (",
                    doc!("operations.md"),
                    ", Alerts)"
                )
            }
            Error::Alert(_) => {
                concat!(
                    "check each failed channel's host, port, tls, credentials or URL and that the receiver is up (",
                    doc!("operations.md"),
                    ", Alerts, troubleshooting)"
                )
            }
            Error::Metrics(crate::metrics::Error::Listen { .. }) => {
                "choose a free address and port in [metrics] listen (default 127.0.0.1:9850)"
            }
            Error::Metrics(crate::metrics::Error::Remote { .. }) => {
                "serve metrics on a loopback address, or set [metrics] allow_remote = true behind a firewall"
            }
            Error::Metrics(crate::metrics::Error::NoTextfileDir) => {
                "set [metrics] textfile_dir to node-exporter's --collector.textfile.directory"
            }
            Error::Metrics(crate::metrics::Error::Textfile { .. }) => {
                "metrics.textfile_dir must exist and be writable by the user running this command"
            }
            Error::Metrics(_) => return None,
            Error::Task(_) | Error::Stdout(_) => return None,
        })
    }
}

/// The storage failure a gc error wraps, if that is what it is: it gets the storage hint (a push-only IAM policy
/// refusing gc's first deletion, an unreachable repository).
fn gc_storage(e: &crate::retention::gc::Error) -> Option<&crate::storage::Error> {
    use crate::retention::gc::Error as G;
    match e {
        G::Store(crate::repository::store::Error::Storage(s)) => Some(s),
        G::Lease(l) => lease_storage(l),
        _ => None,
    }
}

/// The storage failure a lease error wraps (writing, renewing or removing a lease), if that is what it is.
fn lease_storage(e: &crate::repository::lease::Error) -> Option<&crate::storage::Error> {
    match e {
        crate::repository::lease::Error::Store(crate::repository::store::Error::Storage(s)) => Some(s),
        _ => None,
    }
}

fn storage_hint(e: &crate::storage::Error) -> Option<&'static str> {
    use crate::storage::Error as S;
    Some(match e {
        S::Transient { .. } => {
            "the repository is unreachable or failing; check the endpoint, network and credentials (retried until archive.retry_deadline_seconds)"
        }
        S::PermissionDenied { backend, .. } if backend.starts_with("file://") => {
            "run the command as the OS user that owns the repository (the PostgreSQL OS user: runuser -u postgres -- ...), or give this user access to its directories"
        }
        S::PermissionDenied { .. } => {
            "check the credentials and their IAM or bucket policy (a push-only policy from packaging/iam/ may not delete: prune, delete and gc need the full one; docs/operations.md, \"S3 credentials with least privilege\")"
        }
        S::InvalidUrl { .. } => "repository.url must be file:///absolute/path or s3://bucket/prefix",
        S::RangeBeyondEnd { .. } => {
            "the object is shorter than the index that points into it says: it was truncated or replaced; run backupctl verify"
        }
        S::NoCredentials { .. } => {
            "give the user that runs this command AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in its environment (for wal-push, the PostgreSQL server's environment), a profile in its ~/.aws, or an instance or task role"
        }
        _ => return None,
    })
}

/// `, N broken dump(s)` when `n` is above 0, else nothing (the verify failure's message).
fn broken_dumps_text(n: usize) -> String {
    if n == 0 { String::new() } else { format!(", {n} broken dump(s)") }
}

#[cfg(test)]
mod tests {
    /// Access refused by a file:// repository's directories gets a hint about OS users, by S3 one about IAM
    /// (before, a 0700 repository read by another user was told to check its IAM policy).
    #[test]
    fn a_refused_access_is_explained_in_its_backend_s_terms() {
        let denied = |backend: &str| {
            super::Error::Storage(crate::storage::Error::PermissionDenied {
                backend: backend.to_owned(),
                key: "backupctl.json".to_owned(),
                source: "Permission denied (os error 13)".into(),
            })
        };
        let file = denied("file:///var/lib/backupctl/repo").hint().unwrap_or_default();
        assert!(file.contains("OS user") && !file.contains("IAM"), "{file}");
        let s3 = denied("s3://bucket/prefix").hint().unwrap_or_default();
        assert!(s3.contains("IAM") && !s3.contains("OS user"), "{s3}");
    }
}
