//! base-backup: copy a running cluster into the repository between pg_backup_start and pg_backup_stop, wait for
//! the WAL that makes it consistent, then write the manifest.
//!
//! Invariants:
//! - The manifest is written last, create-only, and only after every WAL segment from the start to the stop
//!   point is in the archive: a backup that exists can be restored.
//! - One base-backup per repository and host at a time (a lock file in the spool).
//! - A lease (`locks/backup-*`, renewed in the background) is held from before anything gc could race with until
//!   the manifest is written or the backup failed; just before the manifest, every object it references is
//!   checked to exist.
//! - The PostgreSQL session is held from start to stop; on any failure it is dropped, which aborts the backup on
//!   the server, and no manifest is written. Objects already uploaded are reused by the next run.

pub mod blocks;
pub mod copy;
pub mod format2;
pub mod packer;
pub mod pages;
pub mod stream;
mod upload;
pub mod walk;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;

use crate::Error;
use crate::config::Config;
use crate::pg;
use crate::progress::Progress;
use crate::repository::backup::{BackupId, BackupStats, BackupType, MANIFEST_FORMAT, Manifest, ObjectId, Piece};
use crate::repository::lease::{self, LeaseKind};
use crate::repository::{self, store};
use crate::spool::{Lock, Spool};
use crate::storage::Storage;
use crate::storage::fs::owner;
use crate::wal::{SegmentName, SegmentSize, WalFileName};

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// Label passed to pg_backup_start (default: `backupctl <id>`).
    pub label: Option<String>,
    /// Free text stored in the manifest.
    pub description: Option<String>,
    /// Full or incremental.
    pub backup_type: BackupType,
    /// Request an immediate checkpoint instead of a spread one.
    pub fast: bool,
    /// Read the data directory at most this fast (bytes per second).
    pub max_rate: Option<u64>,
}

/// Take a base backup as configured. Blocking: runs the async copy on `rt`.
#[tracing::instrument(skip_all, fields(backup_type = %request.backup_type, backup_id = tracing::field::Empty))]
pub fn run(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    request: &BackupRequest,
    progress: &dyn Progress,
) -> Result<Manifest, Error> {
    let started = Instant::now();
    let pg_config = config.postgres.as_ref().ok_or_else(|| {
        Error::Usage(
            concat!("base-backup needs a [postgres] section in the configuration (see ", doc!("configuration.md"), ")")
                .into(),
        )
    })?;
    let spool = Spool::open(&config.spool.path, &crate::storage::canonical_url(&config.repository.url))?;
    let lock_path = spool.root().join("backup.lock");
    let _lock = match Lock::try_acquire(&lock_path)? {
        Some(l) => l,
        None => {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default().trim().to_owned();
            return Err(Error::BackupLocked { path: lock_path, holder });
        }
    };

    let mut session = pg::connect(pg_config)?;
    let info = session.server_info(pg_config.data_directory.is_none())?;
    let data_dir = match (&pg_config.data_directory, &info.data_directory) {
        (Some(d), _) | (None, Some(d)) => d.clone(),
        (None, None) => {
            return Err(Error::Usage("postgres.data_directory is not set and the server did not say".into()));
        }
    };
    let cannot = |reason: &str| Error::CannotBackup { data_directory: data_dir.clone(), reason: reason.to_owned() };
    if info.is_in_recovery {
        return Err(cannot("the server is a standby; back up the primary"));
    }
    if !info.is_archiving {
        return Err(cannot("archive_mode is off, so the WAL that makes the backup consistent would never be archived"));
    }
    if !data_dir.join("PG_VERSION").is_file() {
        return Err(cannot("it is not a PostgreSQL data directory readable here (no PG_VERSION)"));
    }
    let seg_size = SegmentSize::new(info.wal_segment_size)?;
    let page_layout = session.page_layout()?;
    // wal-push runs as the data directory's owner (the server's user) and writes into the same repository and
    // spool: base-backup must run as that user too, or what it writes would lock wal-push out.
    owner::check_owner(&data_dir, owner::Role::DataDirectory)?;
    if let Some(root) = crate::storage::local_path(&config.repository.url) {
        owner::check_writer(&root, owner::Role::Repository)?;
    }

    let deadline = Duration::from_secs(config.archive.retry_deadline_seconds);
    let storage = rt.block_on(crate::storage::open(&config.repository.url, &config.repository.s3, deadline))?;
    // base-backup creates a repository only where the server's WAL goes: if PostgreSQL has archived WAL already and
    // there is no repository at this URL, archive_command writes elsewhere (often a typo in repository.url), and
    // the backup would copy the whole cluster only to time out waiting for its WAL.
    match rt.block_on(store::require_existing(storage.as_ref())) {
        Err(store::Error::NoRepository { .. }) => {
            if let (count @ 1.., last) = session.archived()? {
                let last = last.map(|l| format!(", the last {l}")).unwrap_or_default();
                return Err(cannot(&format!(
                    "there is no repository at {storage}, but PostgreSQL has already archived {count} WAL files{last}: \
                     its archive_command writes somewhere else. Check repository.url (a typo?); to start a new \
                     repository there, run `backupctl init` first"
                )));
            }
        }
        other => other?,
    }
    let descriptor =
        rt.block_on(store::ensure_descriptor(storage.as_ref(), &crate::cli::now_rfc3339(), config.repository.format))?;
    if let Some(on_record) = rt.block_on(store::cluster_info(storage.as_ref()))? {
        let offered = repository::ClusterInfo {
            system_identifier: info.system_identifier.clone(),
            wal_segment_size: info.wal_segment_size,
            pg_version: info.version_num / 10000,
        };
        store::check_cluster(storage.as_ref(), &on_record, &offered)?;
    }

    let start_time = session.clock()?;
    let id = rt.block_on(free_id(storage.as_ref(), &start_time, request.backup_type))?;
    tracing::Span::current().record("backup_id", tracing::field::display(&id));
    // The lease comes before anything gc could race with: waiting out a running gc, listing the objects an
    // incremental reuses, writing objects no manifest references yet (docs/design/retention.md).
    let lease = rt.block_on(lease::Held::acquire(storage.clone(), LeaseKind::Backup, &id.to_string()))?;
    let result = (|| -> Result<Manifest, Error> {
        let waiting = |who: &str| progress.phase(&format!("waiting for {who} to finish"));
        rt.block_on(lease.wait_while_live(&[LeaseKind::Gc], GC_WAIT, &waiting))?;
        let label = request.label.clone().unwrap_or_else(|| format!("backupctl {id}"));
        progress.phase("starting backup (checkpoint)");
        let start_lsn = session.backup_start(&label, request.fast)?;
        tracing::debug!(backup = %id, start_lsn = %start_lsn, "backup started");

        // Every link is resolved and every directory read here, before any data is copied. Format 2 keeps only
        // the totals (for the progress bar): its copy walks again as a stream (`backup::stream`), so that memory
        // does not grow with the number of files (and warns about skipped special files, once).
        let (listing, total, count) = if descriptor.format >= 2 {
            let (mut bytes, mut files) = (0u64, 0u64);
            walk::visit(&data_dir, &mut |item| {
                if let walk::Item::File(f) = item {
                    bytes += f.size;
                    files += 1;
                }
                Ok(())
            })?;
            (walk::Listing::default(), bytes, files)
        } else {
            let listing = walk::list(&data_dir)?;
            let total: u64 = listing.files.iter().map(|f| f.size).sum();
            let count = listing.files.len() as u64;
            (listing, total, count)
        };
        progress.start(total, count);
        let is_full = request.backup_type == BackupType::Full;
        let settings = copy::CopySettings {
            chunk_size: config.backup.chunk_size_kib * 1024,
            parallel: config.backup.parallel,
            max_rate: request.max_rate,
        };
        let level = config.repository.compression_level;
        let pages = Arc::new(pages::PageVerifier::new(page_layout, start_lsn));
        let (files, written, format2, page_checksums, listing) = if descriptor.format >= 2 {
            let block_size = page_layout.block_size;
            let previous = if is_full {
                stream::Previous::Inline(Vec::new())
            } else {
                rt.block_on(previous_format2(storage.as_ref()))?
            };
            let copied = rt.block_on(copy_format2(
                &storage,
                &id,
                data_dir.clone(),
                block_size,
                level,
                is_full,
                previous,
                settings,
                &pages,
                progress,
            ))?;
            let s = copied.streamed;
            let page_checksums = pages.outcome_of(&|p| s.corrupt.contains(p));
            let listing = walk::Listing { directories: s.directories, files: Vec::new(), tablespaces: s.tablespaces };
            let stats = BackupStats { files: s.files, bytes: s.bytes, ..copied.stats };
            (
                Vec::new(),
                stats,
                Some((block_size, copied.pack_indexes, s.file_maps, s.frames, s.nodes)),
                page_checksums,
                listing,
            )
        } else {
            let (present, reusable) = if is_full {
                // Listed only to tell rewritten objects from new ones; a full writes every object again.
                (rt.block_on(upload::list_objects(storage.as_ref()))?, HashMap::new())
            } else {
                rt.block_on(reuse_sets(storage.as_ref()))?
            };
            let writer = Arc::new(upload::ObjectWriter::new(storage.clone(), is_full, level, present));
            let files =
                rt.block_on(copy::copy_files(&listing.files, writer.clone(), &reusable, settings, &pages, progress))?;
            let stats = BackupStats {
                files: files.len() as u64,
                bytes: files.iter().map(|f| f.size).sum(),
                objects_written: writer.objects_written.load(Ordering::Relaxed),
                bytes_written: writer.bytes_written.load(Ordering::Relaxed),
                bytes_stored: writer.bytes_stored.load(Ordering::Relaxed),
                bytes_reused: writer.bytes_reused.load(Ordering::Relaxed),
                bytes_new: writer.bytes_new.load(Ordering::Relaxed),
                bytes_rewritten: writer.bytes_rewritten.load(Ordering::Relaxed),
                ..BackupStats::default()
            };
            let page_checksums = pages.outcome(&files);
            (files, stats, None, page_checksums, listing)
        };
        pages::report(page_checksums.as_ref(), &data_dir, config.backup.fail_on_checksum_error)?;

        progress.phase("stopping backup");
        let stop = session.backup_stop()?;
        let stop_time = session.clock()?;
        let stop_wal = session.walfile_name(stop.lsn)?;
        drop(session);
        let (start_wal, timeline) = pg::parse_label(&stop.labelfile)
            .ok_or_else(|| pg::Error::Unexpected { what: "backup label", answer: stop.labelfile.clone() })?;
        tracing::debug!(backup = %id, stop_lsn = %stop.lsn, stop_wal = %stop_wal, "backup stopped; waiting for its WAL");

        progress.phase("waiting for the WAL to be archived");
        let timeout = Duration::from_secs(config.backup.archive_timeout_seconds);
        rt.block_on(wait_for_archive(storage.as_ref(), &id, &start_wal, &stop_wal, seg_size, timeout))?;

        let stats = BackupStats { duration_ms: started.elapsed().as_millis() as u64, ..written };
        let mut manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: id.clone(),
            label,
            description: request.description.clone(),
            backup_type: request.backup_type,
            start_time,
            stop_time,
            start_lsn,
            stop_lsn: stop.lsn,
            timeline,
            start_wal,
            stop_wal,
            pg_version_num: info.version_num,
            system_identifier: info.system_identifier,
            wal_segment_size: info.wal_segment_size,
            chunk_size: settings.chunk_size,
            backup_label: stop.labelfile,
            tablespace_map: Some(stop.spcmapfile).filter(|m| !m.is_empty()),
            tablespaces: listing.tablespaces,
            directories: listing.directories,
            files,
            stats,
            repository_format: 1,
            block_size: None,
            pack_indexes: vec![],
            file_maps: vec![],
            page_checksums,
        };
        if let Some((block_size, pack_indexes, file_maps, _, _)) = &format2 {
            manifest.repository_format = 2;
            manifest.block_size = Some(*block_size);
            manifest.pack_indexes = pack_indexes.clone();
            manifest.file_maps = file_maps.clone();
        }
        manifest.format = manifest.required_format();
        manifest.validate().map_err(|source| store::Error::InvalidManifest { key: id.manifest_key(), source })?;
        // Second line of defence behind the lease: every object the manifest references exists now.
        lease.check()?;
        match &format2 {
            Some((_, _, _, frames, nodes)) => {
                rt.block_on(check_present_format2(storage.as_ref(), &manifest, frames, nodes))?
            }
            None => rt.block_on(check_present(storage.as_ref(), &manifest))?,
        }
        if !rt.block_on(store::save_manifest(storage.as_ref(), &mut manifest))? {
            return Err(
                crate::storage::Error::AlreadyExists { backend: storage.to_string(), key: id.manifest_key() }.into()
            );
        }
        progress.finish();
        tracing::debug!(backup = %id, bytes = manifest.stats.bytes, stored = manifest.stats.bytes_stored, "backup complete");
        Ok(manifest)
    })();
    if let Err(e) = rt.block_on(lease.release()) {
        tracing::warn!(backup = %id, error = %e, "could not remove the backup's lease; it expires by itself");
    }
    result
}

/// Stored size of a pack (bytes) at which it is put (docs/design/format2.md).
const PACK_SIZE: usize = 16 << 20;

/// What a format-2 copy produced.
struct Format2Copy {
    /// The stream's result: directories, tablespaces, file maps, counts, the frames and nodes named.
    streamed: stream::Streamed,
    /// Counts and bytes written, new and reused (files and bytes are in `streamed`).
    stats: BackupStats,
    /// The pack index objects this backup wrote (several for a large backup: written as it goes), in order.
    pack_indexes: Vec<ObjectId>,
}

/// The newest backup, whose blocks an incremental reuses: its entries from its file maps as the walk reaches them
/// (format 4), or all of them (an older manifest); none if it is a format-1 backup or there is none.
async fn previous_format2(storage: &dyn Storage) -> Result<stream::Previous, Error> {
    let last = match store::backup_ids(storage).await?.last() {
        Some(id) => store::load_header(storage, id).await?,
        None => None,
    };
    Ok(match last.filter(|m| m.repository_format >= 2) {
        Some(m) if !m.file_maps.is_empty() => stream::Previous::Maps { header: Box::new(m), loaded: Vec::new() },
        Some(m) => stream::Previous::Inline(m.files),
        None => stream::Previous::Inline(Vec::new()),
    })
}

/// Format 2: load the repository's frame index, copy the data directory into packs as a stream (its entries into
/// file maps), and name every pack written in pack index objects (written as the copy goes:
/// [`packer::packs_per_index`]).
#[allow(clippy::too_many_arguments)]
async fn copy_format2(
    storage: &crate::storage::DynStorage,
    id: &BackupId,
    data_dir: std::path::PathBuf,
    block_size: u32,
    level: i32,
    is_full: bool,
    previous: stream::Previous,
    settings: copy::CopySettings,
    pages: &Arc<pages::PageVerifier>,
    progress: &dyn Progress,
) -> Result<Format2Copy, Error> {
    use crate::repository::packstore::FrameIndex;
    let index = Arc::new(FrameIndex::load(storage.as_ref()).await?);
    let packer = Arc::new(packer::Packer::new(storage.clone(), level, PACK_SIZE, settings.parallel, index.clone()));
    let ctx =
        blocks::BlockContext::new(storage.clone(), packer.clone(), index, pages.clone(), block_size, is_full, level);
    let streamed = stream::copy(id, data_dir, &ctx, previous, settings, level, progress).await?;
    let pack_indexes = packer.finish().await?;
    let p = &packer.stats;
    let b = &ctx.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let unchanged_bytes = load(&b.unchanged) * u64::from(block_size);
    let bytes_new = load(&p.bytes_new) + load(&b.node_bytes_new) + load(&p.index_bytes_new) + streamed.map_bytes_new;
    let stats = BackupStats {
        objects_written: load(&p.packs_written)
            + load(&b.nodes_written)
            + load(&p.index_written)
            + streamed.maps_written,
        bytes_written: load(&p.raw_written),
        bytes_stored: bytes_new,
        bytes_new,
        bytes_reused: load(&p.raw_reused) + unchanged_bytes,
        ..BackupStats::default()
    };
    tracing::debug!(
        unchanged = load(&b.unchanged),
        whole = load(&b.whole),
        delta = load(&b.delta),
        packs = load(&p.packs_written),
        maps = streamed.file_maps.len(),
        "format 2 copy done"
    );
    Ok(Format2Copy { streamed, stats, pack_indexes })
}

/// Format 2: fail, naming one, if a frame or node `manifest` references is not in the repository (listings of
/// `packs/` and `maps/`, and the pack indexes).
async fn check_present_format2(
    storage: &dyn Storage,
    manifest: &Manifest,
    frames: &std::collections::HashSet<ObjectId>,
    nodes: &std::collections::HashSet<ObjectId>,
) -> Result<(), Error> {
    use crate::repository::{blockmap, packs, packstore::FrameIndex};
    let index = FrameIndex::load(storage).await?;
    let listed = |prefix: &'static str, parse: fn(&str) -> Option<ObjectId>| async move {
        let list = storage.list(prefix).await?;
        Ok::<_, Error>(list.iter().filter_map(|m| parse(m.key.as_str())).collect::<std::collections::HashSet<_>>())
    };
    let pack_set = listed(packs::PACKS_PREFIX, packs::pack_from_key).await?;
    let node_set = listed(blockmap::MAPS_PREFIX, blockmap::node_from_key).await?;
    let mut missing: Vec<String> = frames
        .iter()
        .filter(|f| index.get(f).is_none_or(|(pack, _)| !pack_set.contains(pack)))
        .map(|f| format!("frame {f}"))
        .collect();
    missing.extend(
        nodes
            .iter()
            .chain(manifest.file_maps.iter().map(|r| &r.id))
            .filter(|n| !node_set.contains(n))
            .map(|n| blockmap::node_key(n).to_string()),
    );
    vanished(storage, manifest, missing)
}

/// [`Error::ObjectsVanished`] naming the first of `missing` (keys or frames), unless it is empty.
fn vanished(storage: &dyn Storage, manifest: &Manifest, mut missing: Vec<String>) -> Result<(), Error> {
    missing.sort();
    missing.dedup();
    match missing.first() {
        None => Ok(()),
        Some(first) => Err(Error::ObjectsVanished {
            backup: manifest.id.to_string(),
            count: missing.len(),
            first: first.clone(),
            backend: storage.to_string(),
        }),
    }
}

/// How long a base-backup waits for a running gc to finish before it lists the objects it may reuse.
const GC_WAIT: Duration = Duration::from_secs(30 * 60);

/// Fail, naming one, if an object `manifest` references is not in the repository (one listing of `data/`).
async fn check_present(storage: &dyn Storage, manifest: &Manifest) -> Result<(), Error> {
    let present = upload::list_objects(storage).await?;
    let missing = manifest
        .files
        .iter()
        .flat_map(|f| f.pieces.iter().map(|p| p.object))
        .filter(|o| !present.contains(o))
        .map(|o| o.key().to_string())
        .collect();
    vanished(storage, manifest, missing)
}

/// An id for a backup starting at `start_time` that no manifest uses yet (waits out a same-second collision).
async fn free_id(storage: &dyn Storage, start_time: &str, kind: BackupType) -> Result<BackupId, Error> {
    let mut t = time::OffsetDateTime::parse(start_time, &time::format_description::well_known::Rfc3339)
        .map_err(|e| pg::Error::Unexpected { what: "clock", answer: format!("{start_time}: {e}") })?;
    loop {
        let id = BackupId::new(t, kind);
        if !storage.exists(&id.manifest_key()).await? {
            return Ok(id);
        }
        t += Duration::from_secs(1);
    }
}

/// For an incremental backup: the objects the repository holds, and small files of earlier backups by content.
async fn reuse_sets(
    storage: &dyn Storage,
) -> Result<(std::collections::HashSet<ObjectId>, HashMap<ObjectId, Piece>), Error> {
    let present = upload::list_objects(storage).await?;
    let mut reusable = HashMap::new();
    let last = match store::backup_ids(storage).await?.last() {
        Some(id) => store::load_manifest(storage, id).await?,
        None => None,
    };
    for f in last.map(|m| m.files).unwrap_or_default() {
        if let [piece] = &f.pieces[..]
            && present.contains(&piece.object)
        {
            reusable.insert(piece.blake3, piece.clone());
        }
    }
    Ok((present, reusable))
}

/// Shortest and longest pause (milliseconds) between two looks for a segment the archiver has still to store.
/// PostgreSQL's archiver runs `archive_command` for the stop segment as soon as `pg_backup_stop` switches WAL, and
/// wal-push stores a segment in milliseconds: the first looks come quickly, and a slow archive is polled less.
const ARCHIVE_POLL_MS: (u64, u64) = (5, 200);

/// Wait until every segment from `start_wal` to `stop_wal` is in the archive, looking for each one after
/// pauses that grow from [`ARCHIVE_POLL_MS`]'s shortest to its longest.
async fn wait_for_archive(
    storage: &dyn Storage,
    id: &BackupId,
    start_wal: &str,
    stop_wal: &str,
    seg_size: SegmentSize,
    timeout: Duration,
) -> Result<(), Error> {
    let start: SegmentName = start_wal.parse()?;
    let stop: SegmentName = stop_wal.parse()?;
    let deadline = Instant::now() + timeout;
    let mut seg = start;
    loop {
        let key = repository::wal_key(&WalFileName::Segment(seg));
        let mut pauses = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(ARCHIVE_POLL_MS.0))
            .with_max_delay(Duration::from_millis(ARCHIVE_POLL_MS.1))
            .with_factor(2.0)
            .without_max_times()
            .build();
        while !storage.exists(&key).await? {
            if Instant::now() >= deadline {
                return Err(Error::ArchiveTimeout {
                    segment: seg.to_string(),
                    backup: id.to_string(),
                    backend: storage.to_string(),
                    seconds: timeout.as_secs(),
                });
            }
            let pause = pauses.next().unwrap_or(Duration::from_millis(ARCHIVE_POLL_MS.1));
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        if seg >= stop || seg.timeline != stop.timeline {
            return Ok(());
        }
        seg = seg.next(seg_size)?;
    }
}
