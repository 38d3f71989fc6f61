//! What the metrics are made of: the local state records (read on every render) and the repository's figures
//! (from the same listing and manifests as `backupctl status`).

use std::time::{Instant, SystemTime};

use crate::Error;
use crate::config::Config;
use crate::repository::backup::BackupType;
use crate::repository::store;
use crate::state::{self, ArchiveState, DrillState, JobsState, StateDir};
use crate::storage::Storage;
use crate::verify::coverage::GapStatus;
use crate::verify::status;

/// The local state records; a record that cannot be read carries its one-line error instead.
#[derive(Debug, Clone)]
pub struct Local {
    /// wal-push's record.
    pub archive: Result<ArchiveState, String>,
    /// The scheduler's record.
    pub jobs: Result<JobsState, String>,
    /// The restore drills' record.
    pub drill: Result<DrillState, String>,
}

impl Local {
    /// Read the three records of `state` (blocking file reads; each is a few hundred bytes).
    pub fn read(state: &StateDir) -> Self {
        fn one<T: serde::de::DeserializeOwned + Default>(state: &StateDir, name: &str) -> Result<T, String> {
            state.load(name).map_err(|e: state::Error| e.to_string())
        }
        Self { archive: one(state, state::ARCHIVE), jobs: one(state, state::JOBS), drill: one(state, state::DRILL) }
    }
}

/// The newest backup.
#[derive(Debug, Clone, PartialEq)]
pub struct NewestBackup {
    /// When it stopped.
    pub stop: jiff::Timestamp,
    /// Bytes of its files (what a restore writes).
    pub logical_bytes: u64,
    /// Stored bytes of every object it references.
    pub stored_bytes: u64,
}

/// What the repository holds, as far as metrics tell it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepositoryFigures {
    /// Full backups listed.
    pub full_backups: u64,
    /// Incremental backups listed.
    pub incremental_backups: u64,
    /// Backups whose manifest cannot be read.
    pub unusable_backups: u64,
    /// The newest backup (by stop time).
    pub newest: Option<NewestBackup>,
    /// Start of the restorable window: the stop time of the oldest restorable backup.
    pub window_start: Option<jiff::Timestamp>,
    /// End of the restorable window: when the last segment a restorable backup reaches was archived.
    pub window_end: Option<jiff::Timestamp>,
    /// Stored bytes under `wal/`.
    pub wal_bytes: u64,
    /// Stored bytes of backup data: `data/` (format 1), `packs/`, `maps/` and `index/` (format 2).
    pub data_bytes: u64,
    /// When the newest archived segment was written to the repository.
    pub wal_last_archived: Option<jiff::Timestamp>,
    /// Gaps in the archived WAL (other than those pruned on purpose).
    pub wal_gaps: u64,
    /// How long reading all this took, in seconds.
    pub read_seconds: f64,
}

/// The repository read, or why it could not be.
#[derive(Debug, Clone, PartialEq)]
pub enum Repository {
    /// It was read.
    Up(RepositoryFigures),
    /// It could not be opened or read (one line).
    Down(String),
}

/// Read the figures of the repository in `storage` at `now`: the same picture `backupctl status` shows.
///
/// Errors: the repository does not exist, or its listing or a record cannot be read.
pub async fn read_repository(
    config: &Config,
    storage: &dyn Storage,
    now: SystemTime,
) -> Result<RepositoryFigures, Error> {
    let started = Instant::now();
    store::require_existing(storage).await?;
    let clock = crate::verify::clock_from_config(config, now);
    let policy = crate::retention::plan::Policy::resolve(&config.retention, None)?;
    let s = status::collect(storage, &clock, &policy).await?;
    let ts = |text: &str| text.parse::<jiff::Timestamp>().ok();
    let count = |t: BackupType| s.backups.iter().filter(|b| b.manifest.backup_type == t).count() as u64;
    let newest = s
        .backups
        .iter()
        .filter_map(|b| ts(&b.manifest.stop_time).map(|stop| (stop, b)))
        .max_by_key(|(stop, _)| *stop)
        .map(|(stop, b)| NewestBackup { stop, logical_bytes: b.sizes.logical, stored_bytes: b.sizes.stored });
    let wal_last_archived =
        s.index.last_written_segment().and_then(|(_, o)| o.modified).and_then(|t| jiff::Timestamp::try_from(t).ok());
    let wal_gaps = s.coverage.timelines.iter().flat_map(|t| &t.gaps).filter(|g| g.status != GapStatus::Expired).count();
    Ok(RepositoryFigures {
        full_backups: count(BackupType::Full),
        incremental_backups: count(BackupType::Incremental),
        unusable_backups: s.unusable.len() as u64,
        newest,
        window_start: s.window.as_ref().and_then(|w| ts(&w.earliest)),
        window_end: s.window.as_ref().and_then(|w| w.latest.as_deref()).and_then(ts),
        wal_bytes: s.index.objects().map(|o| o.size).sum(),
        data_bytes: s.repository_bytes.backup_data(),
        wal_last_archived,
        wal_gaps: wal_gaps as u64,
        read_seconds: started.elapsed().as_secs_f64(),
    })
}
