//! pitr-restore: choose a backup, write its files, and set up recovery to the requested target.
//!
//! Invariants:
//! - Nothing is written before the manifest is loaded and validated, the WAL recovery needs is found in the
//!   archive with no hole and the target reachable ([`wal_check`]), and the destination is checked (empty or
//!   `--delta`, no live server).
//! - The result starts recovery only when complete: `global/pg_control` and the recovery files are written last,
//!   after a sync of everything else.

pub mod auto_conf;
pub mod batches;
pub mod pages;
pub mod target;
pub mod wal_check;
pub mod write;
pub mod write2;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::Error;
use crate::codec;
use crate::progress::{self, Progress};
use crate::repository::backup::{BackupId, FileEntry, Manifest};
use crate::repository::packstore::FrameIndex;
use crate::repository::{self, store};
use crate::storage::{DynStorage, Storage};
use crate::wal::{TimelineHistory, TimelineId, WalFileName};
use auto_conf::RecoverySettings;
use target::{Target, TargetAction, TargetTimeline};
use write::Layout;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The new data directory.
    pub destination: PathBuf,
    /// A specific backup (otherwise the newest that reaches the target).
    pub backup_id: Option<BackupId>,
    /// Where recovery stops.
    pub target: Target,
    /// What the server does there.
    pub action: TargetAction,
    /// Stop just after the target (true) or just before it.
    pub inclusive: bool,
    /// Timeline to follow.
    pub timeline: TargetTimeline,
    /// Turn archiving off in the restored cluster.
    pub is_archive_off: bool,
    /// Restore over an existing copy, rewriting only what differs.
    pub delta: bool,
    /// Tablespace `OLD=NEW` directory mappings.
    pub tablespace_mapping: Vec<(PathBuf, PathBuf)>,
    /// The restore_command the restored server runs (bytes: paths need not be UTF-8).
    pub restore_command: std::ffi::OsString,
    /// Objects downloaded at once.
    pub parallel: usize,
    /// This host's clock when the restore was asked for (a time target after it is refused).
    pub now: time::OffsetDateTime,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The backup restored.
    pub backup: Manifest,
    /// File counts and bytes.
    pub stats: write::WriteStats,
    /// Wall time.
    pub duration_ms: u64,
}

/// Restore as requested.
#[tracing::instrument(skip_all, fields(destination = %request.destination.display()))]
pub async fn run(
    storage: DynStorage,
    request: &RestoreRequest,
    progress: &dyn Progress,
) -> Result<RestoreReport, Error> {
    let started = Instant::now();
    let (manifest, history) = choose(storage.as_ref(), request).await?;
    tracing::debug!(backup = %manifest.id, stop_time = %manifest.stop_time, "restoring");
    pages::warn_recorded(&manifest);
    // Checked and quoted before anything is written: a value PostgreSQL cannot hold is a usage error.
    let settings = RecoverySettings {
        restore_command: request.restore_command.clone(),
        target: request.target.clone(),
        action: request.action,
        inclusive: request.inclusive,
        timeline: request.timeline,
        is_archive_off: request.is_archive_off,
        is_prefetch_off: false,
    };
    let render = |settings: &RecoverySettings| {
        auto_conf::render(settings, &manifest.id, manifest.pg_version_num)
            .map_err(|e| Error::Usage(format!("cannot write postgresql.auto.conf: {e}")))
    };
    let mut recovery_block = render(&settings)?;
    // Before anything is written: the WAL this recovery reads is archived and the target is reachable.
    let is_hole_after_target =
        wal_check::check(storage.as_ref(), &manifest, history.as_ref(), &request.target, request.now).await?;
    if is_hole_after_target {
        recovery_block = render(&RecoverySettings { is_prefetch_off: true, ..settings })?;
    }

    let layout = Layout {
        destination: absolute(&request.destination)?,
        tablespaces: write::tablespace_dirs(&manifest, &request.tablespace_mapping)?,
    };
    write::check_root(&layout.destination, request.delta)?;
    if request.delta {
        write::check_old_copy(&layout.destination, &manifest)?;
    }
    for (oid, dir) in &layout.tablespaces {
        write::check_tablespace_root(&layout.destination, *oid, dir, request.delta)?;
    }
    let roots: Vec<&PathBuf> = std::iter::once(&layout.destination).chain(layout.tablespaces.values()).collect();
    for root in &roots {
        write::create_root(root)?;
    }
    let mut stats = write::WriteStats::default();
    // The entries: an older manifest holds them all; a format-4 one names file maps, read a batch at a time so
    // that memory does not grow with the number of files. Every map is read and checked once before anything is
    // written (a damaged or missing one fails here, not halfway through).
    let mut manifest = manifest;
    let inline = std::mem::take(&mut manifest.files);
    let batches = batches::map_batches(&manifest.file_maps, batches::ENTRIES_PER_BATCH);
    let mut paths: Vec<crate::repository::backup::ManifestPath> = Vec::new();
    for batch in &batches {
        let files = load_entries(storage.as_ref(), &manifest, batch).await?;
        if request.delta {
            paths.extend(files.into_iter().map(|f| f.path));
        }
    }
    if request.delta {
        // Until the restore completes, the old copy must not be startable: its pg_control goes first.
        let control = layout.destination.join("global/pg_control");
        match std::fs::remove_file(&control) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::WriteDestination { path: control, source: e });
            }
            _ => {}
        }
        paths.extend(inline.iter().map(|f| f.path.clone()));
        let (m, l) = (manifest.clone(), layout.clone());
        stats.removed = crate::archive::blocking(move || write::remove_extraneous(&m, &paths, &l)).await?;
    }
    progress.start(manifest.stats.bytes, manifest.stats.files);
    // Format 2: where every frame lies, read once for all the batches.
    let index = match manifest.repository_format {
        1 => None,
        _ => Some(Arc::new(FrameIndex::load(storage.as_ref()).await?)),
    };
    let in_batch = progress::Started(progress);
    let phase = Instant::now();
    let mut control: Vec<FileEntry> = Vec::new();
    let mut s = write::WriteStats::default();
    let mut pending = if inline.is_empty() { None } else { Some(inline) };
    let mut next_batch = 0;
    loop {
        let files = match pending.take() {
            Some(files) => files,
            None if next_batch < batches.len() => {
                next_batch += 1;
                load_entries(storage.as_ref(), &manifest, &batches[next_batch - 1]).await?
            }
            None => break,
        };
        let (c, rest): (Vec<_>, Vec<_>) = files.iter().partition(|f| f.path == "global/pg_control");
        control.extend(c.into_iter().cloned());
        let b = write::write_files(
            storage.clone(),
            &manifest,
            &rest,
            &layout,
            request.delta,
            request.parallel,
            index.as_ref(),
            &in_batch,
        )
        .await?;
        s.add(&b);
        write::sync_files(&rest, &layout).await?;
    }
    tracing::debug!(seconds = phase.elapsed().as_secs_f64(), bytes = s.bytes_written, "files written and flushed");
    write::link_tablespaces(&layout)?;
    write::sync_dirs(&manifest, &layout).await?;

    // The files that make the directory startable come last.
    write::write_small(&layout, "backup_label", manifest.backup_label.as_bytes())?;
    if let Some(map) = &manifest.tablespace_map {
        write::write_small(&layout, "tablespace_map", &write::remap_tablespace_map(map, &layout))?;
    }
    let auto_conf = layout.destination.join("postgresql.auto.conf");
    let existing = match std::fs::read(&auto_conf) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::Destination { path: auto_conf, reason: format!("cannot read it: {e}") }),
    };
    let merged = recovery_block.merge_into(&existing);
    write::write_small(&layout, "postgresql.auto.conf", &merged)?;
    write::write_small(&layout, "recovery.signal", b"")?;
    // Their names are durable before pg_control is written: a crash must never leave a pg_control without the
    // backup_label beside it (the server would run plain crash recovery from the backup's checkpoint and start on
    // an inconsistent copy). Not every file system orders a rename before a later file's creation.
    write::sync_dir(&layout.destination)?;
    let control: Vec<&FileEntry> = control.iter().collect();
    let c =
        write::write_files(storage, &manifest, &control, &layout, request.delta, 1, index.as_ref(), &in_batch).await?;
    write::sync_files(&control, &layout).await?;
    write::sync_dir(&layout.destination.join("global"))?;
    progress.finish();

    s.add(&c);
    stats.files_written = s.files_written;
    stats.files_unchanged = s.files_unchanged;
    stats.bytes_written = s.bytes_written;
    stats.objects = s.objects;
    Ok(RestoreReport { backup: manifest, stats, duration_ms: started.elapsed().as_millis() as u64 })
}

/// The backup `request` restores (the one asked for, or the newest that reaches the target along the timeline
/// recovery follows) as [`store::load_header`] reads it (a format-4 manifest without its entries), with that
/// timeline's history (`None` for `TargetTimeline::Current`). Reads manifests and
/// history files only; writes nothing.
///
/// Errors: [`Error::NoBackup`] naming the ids that exist when the one asked for does not, or why no backup
/// reaches the target; storage and manifest errors.
pub async fn choose(
    storage: &dyn Storage,
    request: &RestoreRequest,
) -> Result<(Manifest, Option<TimelineHistory>), Error> {
    let manifests = match &request.backup_id {
        // The one asked for: a damaged or hostile manifest is an error here.
        Some(id) => match store::load_header(storage, id).await? {
            Some(m) => vec![m],
            None => {
                let ids = store::backup_ids(storage).await?;
                return Err(Error::NoBackup {
                    backend: storage.to_string(),
                    target: request.target.to_string(),
                    reason: target::missing_backup(id, &ids),
                });
            }
        },
        None => {
            // Headers only: a repository of many backups of a cluster of many files would otherwise hold every
            // backup's entries at once. The chosen one is read again below (a format-4 one's entries later, by batch).
            let (good, bad) = store::manifest_headers(storage).await?;
            for (id, e) in bad {
                tracing::warn!(backup = %id, error = %e, "skipping a backup whose manifest is unusable");
            }
            good
        }
    };
    let history = match request.timeline {
        TargetTimeline::Current => None,
        TargetTimeline::Latest => Some(load_history(storage, latest_timeline(storage).await?).await?),
        TargetTimeline::Id(n) => Some(load_history(storage, TimelineId(n)).await?),
    };
    let manifest = target::choose_backup(&manifests, &request.target, history.as_ref(), request.backup_id.as_ref())
        .map_err(|reason| Error::NoBackup { backend: storage.to_string(), target: request.target.to_string(), reason })?
        .clone();
    let manifest = match request.backup_id {
        Some(_) => manifest,
        None => store::load_header(storage, &manifest.id).await?.ok_or_else(|| Error::NoBackup {
            backend: storage.to_string(),
            target: request.target.to_string(),
            reason: format!("backup {} was deleted while the restore chose it", manifest.id),
        })?,
    };
    // A backup of a major this build does not know (written by a newer backupctl) is refused, not restored with
    // another major's recovery settings.
    crate::wal::version::Major::of_version_num(manifest.pg_version_num)
        .map_err(|source| Error::UnsupportedBackup { backup: manifest.id.to_string(), source })?;
    Ok((manifest, history))
}

/// The entries of the file maps `batch` of `manifest`, checked against the manifest
/// ([`Manifest::validate_files`]).
async fn load_entries(
    storage: &dyn Storage,
    manifest: &Manifest,
    batch: &[repository::filemap::FileMapRef],
) -> Result<Vec<FileEntry>, Error> {
    let files: Vec<FileEntry> = store::load_maps(storage, &manifest.id, batch).await?.into_iter().flatten().collect();
    manifest
        .validate_files(&files)
        .map_err(|source| store::Error::InvalidManifest { key: manifest.id.manifest_key(), source })?;
    Ok(files)
}

fn absolute(p: &std::path::Path) -> Result<PathBuf, Error> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| Error::WriteDestination { path: p.to_path_buf(), source: e })?;
    Ok(cwd.join(p))
}

/// The newest timeline with a history file in the archive (1 if none).
async fn latest_timeline(storage: &dyn Storage) -> Result<TimelineId, Error> {
    let listed = storage.list("wal/timelines/").await?;
    let newest = listed
        .iter()
        .filter_map(|m| match m.key.file_name().parse::<WalFileName>() {
            Ok(WalFileName::History(t)) => Some(t),
            _ => None,
        })
        .max();
    Ok(newest.unwrap_or(TimelineId(1)))
}

/// The history of `tli` from the archive (timeline 1 has none).
async fn load_history(storage: &dyn Storage, tli: TimelineId) -> Result<TimelineHistory, Error> {
    if tli == TimelineId(1) {
        return Ok(TimelineHistory::root(tli));
    }
    let key = repository::wal_key(&WalFileName::History(tli));
    let object = match storage.get(&key).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => {
            return Err(Error::NoBackup {
                backend: storage.to_string(),
                target: format!("timeline {}", tli.0),
                reason: format!("the archive has no history file for timeline {}", tli.0),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let mut text = Vec::new();
    codec::decode(&object, &mut text).map_err(|source| Error::Corrupt { what: format!("{storage}/{key}"), source })?;
    let text = String::from_utf8_lossy(&text);
    TimelineHistory::parse(tli, &text).map_err(|reason| Error::BadTextFile {
        path: PathBuf::from(key.as_str()),
        kind: "timeline history",
        reason,
    })
}
