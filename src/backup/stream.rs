//! Format 2: the copy as a stream (docs/design/format2.md, "File maps"), so that base-backup's memory does not grow
//! with the number of files.
//!
//! Invariants:
//! - The walk ([`walk::visit`]) runs on its own thread and yields files in walk order into a bounded channel; the
//!   copy takes a window of at most [`WINDOW`] files at a time ([`format2::copy_files`]: parallel within it).
//! - The previous backup's entries for a window come from its file maps whose path ranges meet the window's (a
//!   merge join on the path, in [`walk::walk_order`]): at most the maps of one window and the next are held.
//! - Entries leave in walk order and are cut into runs exactly as [`filemap::runs`] cuts a whole list; each run is
//!   saved as a file map as soon as it is complete, `MAP_SAVES` at a time. The references are kept, in order.
//! - Every entry is checked as a manifest's would be ([`check_entries`]) before its map is saved.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::blocks::BlockContext;
use super::copy::{CopySettings, Pacer};
use super::format2;
use super::walk::{self, Item, SourceFile};
use crate::Error;
use crate::progress::Progress;
use crate::repository::backup::{
    BackupId, DirEntry, FileEntry, Manifest, ManifestPath, ObjectId, Tablespace, check_entries,
};
use crate::repository::filemap::{self, FileMapRef};
use crate::repository::{packstore, store};
use crate::storage::DynStorage;

/// Files copied at a time (a window of the walk).
pub const WINDOW: usize = 2048;

/// Files the walk may be ahead of the copy.
const CHANNEL: usize = 4096;

/// File maps being saved at a time.
const MAP_SAVES: usize = 16;

/// The previous backup an incremental reuses.
pub enum Previous {
    /// A manifest that lists its entries (format 3), or none (a full): used as it is.
    Inline(Vec<FileEntry>),
    /// A format-4 manifest (its header): entries read from its file maps as the walk reaches them.
    Maps {
        /// The manifest, without its entries.
        header: Box<Manifest>,
        /// The maps last read (index into `header.file_maps`, entries).
        loaded: Vec<(usize, Arc<Vec<FileEntry>>)>,
    },
}

impl Previous {
    /// The previous backup's entries whose paths are in `[first, last]` (walk order), in that order.
    async fn entries_for(
        &mut self,
        storage: &DynStorage,
        first: &ManifestPath,
        last: &ManifestPath,
    ) -> Result<Vec<FileEntry>, Error> {
        let in_range =
            |e: &FileEntry| walk::walk_order(&e.path, first).is_ge() && walk::walk_order(&e.path, last).is_le();
        match self {
            Previous::Inline(files) => {
                let lo = files.partition_point(|e| walk::walk_order(&e.path, first).is_lt());
                let hi = files.partition_point(|e| walk::walk_order(&e.path, last).is_le());
                Ok(files.get(lo..hi.max(lo)).unwrap_or_default().to_vec())
            }
            Previous::Maps { header, loaded } => {
                let refs = &header.file_maps;
                // The map holding `first` is the last one starting at or before it; then every map starting at or
                // before `last`.
                let lo = refs.partition_point(|r| walk::walk_order(&r.first_path, first).is_le()).saturating_sub(1);
                let hi = refs.partition_point(|r| walk::walk_order(&r.first_path, last).is_le());
                let mut kept: Vec<(usize, Arc<Vec<FileEntry>>)> = Vec::new();
                let mut wanted: Vec<usize> = Vec::new();
                for i in lo..hi.max(lo) {
                    match loaded.iter().find(|(j, _)| *j == i) {
                        Some(hit) => kept.push(hit.clone()),
                        None => wanted.push(i),
                    }
                }
                let maps: Vec<FileMapRef> = wanted.iter().map(|&i| refs[i].clone()).collect();
                let read = store::load_maps(storage.as_ref(), &header.id, &maps).await?;
                for (i, files) in wanted.into_iter().zip(read) {
                    header
                        .validate_files(&files)
                        .map_err(|source| store::Error::InvalidManifest { key: header.id.manifest_key(), source })?;
                    kept.push((i, Arc::new(files)));
                }
                kept.sort_by_key(|(i, _)| *i);
                let out = kept.iter().flat_map(|(_, files)| files.iter().filter(|e| in_range(e)).cloned()).collect();
                *loaded = kept;
                Ok(out)
            }
        }
    }
}

/// What the stream copied.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Directories, parents first.
    pub directories: Vec<DirEntry>,
    /// Tablespaces.
    pub tablespaces: Vec<Tablespace>,
    /// The file maps holding the entries, in order.
    pub file_maps: Vec<FileMapRef>,
    /// Files copied (vanished ones left out).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Every frame the entries name (directly or through their nodes).
    pub frames: HashSet<ObjectId>,
    /// Every block-map node the entries name.
    pub nodes: HashSet<ObjectId>,
    /// Paths of copied files that have corrupt pages.
    pub corrupt: HashSet<ManifestPath>,
    /// File maps this backup created, and their stored bytes.
    pub maps_written: u64,
    /// Stored bytes of those maps.
    pub map_bytes_new: u64,
}

/// Walk `data_dir` and copy what it finds for backup `id`, a window at a time, saving the entries in file maps as
/// they come. Errors: the walk's, the copy's,
/// storage errors, a previous backup's damaged map, an entry that fails the manifest's checks.
pub async fn copy(
    id: &BackupId,
    data_dir: PathBuf,
    ctx: &BlockContext,
    mut previous: Previous,
    settings: CopySettings,
    level: i32,
    progress: &dyn Progress,
) -> Result<Streamed, Error> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(CHANNEL);
    let walker = tokio::task::spawn_blocking(move || {
        walk::visit(&data_dir, &mut |item| {
            tx.blocking_send(item).map_err(|_| Error::Task("the copy stopped reading the listing".into()))
        })
    });
    let pacer = tokio::sync::Mutex::new(Pacer::new(settings.max_rate));
    let storage = &ctx.storage;
    let mut out = Streamed::default();
    let mut run: Vec<FileEntry> = Vec::new();
    let mut saves: JoinSet<Result<(usize, FileMapRef, u64), Error>> = JoinSet::new();
    let mut refs: Vec<Option<(FileMapRef, u64)>> = Vec::new();
    let mut window: Vec<SourceFile> = Vec::with_capacity(WINDOW);
    let mut is_done = false;
    while !is_done {
        window.clear();
        while window.len() < WINDOW {
            match rx.recv().await {
                Some(Item::File(f)) => window.push(f),
                Some(Item::Dir(d)) => out.directories.push(d),
                Some(Item::Tablespace(t)) => out.tablespaces.push(t),
                Some(special @ Item::Special { .. }) => special.warn_skipped(),
                None => {
                    is_done = true;
                    break;
                }
            }
        }
        let (Some(first), Some(last)) = (window.first(), window.last()) else { continue };
        let prev = previous.entries_for(storage, &first.rel, &last.rel).await?;
        let copied =
            format2::copy_files(&window, ctx, (!ctx.is_full).then_some(&prev[..]), settings, &pacer, progress).await?;
        check_entries(&copied.files, &out.tablespaces, &out.directories, Some(ctx.block_size), 2)
            .map_err(|source| store::Error::InvalidManifest { key: id.manifest_key(), source })?;
        out.frames.extend(copied.frames);
        for e in copied.files {
            out.files += 1;
            out.bytes += e.size;
            out.nodes.extend(e.nodes.iter().copied());
            if ctx.pages.is_corrupt(&e.path) {
                out.corrupt.insert(e.path.clone());
            }
            let is_end = filemap::is_cut(&e.path);
            run.push(e);
            if is_end || run.len() >= filemap::MAX_ENTRIES {
                save_run(&mut saves, &mut refs, storage, std::mem::take(&mut run), level).await?;
            }
        }
    }
    if !run.is_empty() {
        save_run(&mut saves, &mut refs, storage, run, level).await?;
    }
    while let Some(done) = saves.join_next().await {
        place(&mut refs, done.map_err(|e| Error::Task(e.to_string()))??);
    }
    // The walk's own result: an unreadable entry or a link that cannot be represented.
    walker.await.map_err(|e| Error::Task(e.to_string()))??;
    for (r, stored) in refs.into_iter().flatten() {
        if stored > 0 {
            out.maps_written += 1;
            out.map_bytes_new += stored;
        }
        out.file_maps.push(r);
    }
    Ok(out)
}

/// Start saving one run as a file map, after waiting for one save if [`MAP_SAVES`] are running.
async fn save_run(
    saves: &mut JoinSet<Result<(usize, FileMapRef, u64), Error>>,
    refs: &mut Vec<Option<(FileMapRef, u64)>>,
    storage: &DynStorage,
    run: Vec<FileEntry>,
    level: i32,
) -> Result<(), Error> {
    while saves.len() >= MAP_SAVES {
        if let Some(done) = saves.join_next().await {
            place(refs, done.map_err(|e| Error::Task(e.to_string()))??);
        }
    }
    let at = refs.len();
    refs.push(None);
    let storage = storage.clone();
    saves.spawn(async move {
        let (r, stored) = packstore::save_file_map(storage.as_ref(), &run, level).await?;
        Ok((at, r, stored))
    });
    Ok(())
}

fn place(refs: &mut [Option<(FileMapRef, u64)>], (at, r, stored): (usize, FileMapRef, u64)) {
    if let Some(slot) = refs.get_mut(at) {
        *slot = Some((r, stored));
    }
}
