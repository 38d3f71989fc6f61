//! Format 2: copy the listed files into packs (docs/design/format2.md, "Writing a backup").
//!
//! Files of at least [`BLOCK_MAP_MIN`] bytes are block-mapped ([`super::blocks`]), `parallel` files at a time;
//! smaller files are concatenated into frames of up to 1 MiB (as format 1's small-file packs) and, in an
//! incremental, reused by their blake3 when the previous backup's frame is still indexed.
//!
//! Invariants: as [`super::copy`] for vanished and shrinking files; every frame a returned entry names is in a
//! pack that [`Packer::finish`] made durable, or was indexed in the repository when the backup started.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use super::blocks::{self, BlockContext};
use super::copy::{CopySettings, Pacer, read_range};
use super::packer::Packer;
use super::walk::SourceFile;
use crate::Error;
use crate::archive::blocking;
use crate::progress::Progress;
use crate::repository::backup::{FileEntry, ObjectId, Piece};
use crate::repository::packs::FRAME_RAW_MAX;

/// Files at least this large (bytes) are block-mapped; smaller ones are packed whole.
pub const BLOCK_MAP_MIN: u64 = 64 * 1024;

/// Nodes of the previous backup loaded ahead of the copy (requests in flight, and loaded nodes waiting: a node
/// is at most a few hundred KiB decoded).
const NODE_PREFETCH: usize = 16;

/// What the copy produced.
#[derive(Debug)]
pub struct Copied {
    /// The files, in listing order (vanished ones left out).
    pub files: Vec<FileEntry>,
    /// Every frame the files name (directly or through their nodes).
    pub frames: HashSet<ObjectId>,
}

/// Copy `files` (a window of the listing; see [`super::stream`]). `prev` holds the previous backup's (format 2)
/// entries for these paths for an incremental, `None` for a full; `pacer` spaces the reads (`--max-rate`).
pub async fn copy_files(
    files: &[SourceFile],
    ctx: &BlockContext,
    prev: Option<&[FileEntry]>,
    settings: CopySettings,
    pacer: &tokio::sync::Mutex<Pacer>,
    progress: &dyn Progress,
) -> Result<Copied, Error> {
    let prev_files: HashMap<&[u8], &FileEntry> =
        prev.map(|p| p.iter().map(|f| (f.path.as_bytes(), f)).collect()).unwrap_or_default();
    let advance = |n: u64| progress.advance(n);
    let mut entries: Vec<Option<FileEntry>> = vec![None; files.len()];
    let mut frames = HashSet::new();

    // Work items: each node of each large file as listed (the last one of a file reads on to wherever the file
    // ends now), largest files first, so that the workers finish together.
    let node_bytes = blocks::node_bytes(ctx.block_size);
    let mut large: Vec<usize> = (0..files.len()).filter(|i| files[*i].size >= BLOCK_MAP_MIN).collect();
    large.sort_by_key(|&i| std::cmp::Reverse(files[i].size));
    let items: Vec<(usize, u64, bool)> = large
        .iter()
        .flat_map(|&i| {
            let n = files[i].size.div_ceil(node_bytes).max(1);
            (0..n).map(move |k| (i, k, k + 1 < n))
        })
        .collect();
    // The previous backup's node of each item is loaded ahead of the copy, [`NODE_PREFETCH`] at a time on their
    // own tasks, in item order: an incremental of many files otherwise waits on one small GET per file, `parallel`
    // at a time (on S3, a round trip each). Items wait in that order for their node, so at most NODE_PREFETCH
    // loaded nodes wait for a worker (bounded memory).
    let prev_nodes_of = |i: usize| -> &[ObjectId] { prev_files.get(files[i].rel.as_bytes()).map_or(&[], |e| &e.nodes) };
    let mut results = stream::iter(items.iter().map(|&(i, k, is_one)| {
        let load = prev_nodes_of(i).get(k as usize).filter(|_| !ctx.is_full).map(|id| ctx.prefetch_node(*id));
        async move {
            match load {
                Some(load) => load.await.map(|n| (i, k, is_one, Some(n))),
                None => Ok((i, k, is_one, None)),
            }
        }
    }))
    .buffered(NODE_PREFETCH)
    .map(|loaded| {
        let advance = &advance;
        async move {
            let (i, k, is_one, prev_node) = loaded?;
            let done = blocks::copy_nodes(ctx, &files[i], prev_nodes_of(i), prev_node, k, is_one, pacer, advance);
            Ok::<_, Error>((i, k, done.await?))
        }
    })
    .buffer_unordered(settings.parallel.max(1));
    let mut parts: HashMap<usize, Vec<(u64, Option<blocks::CopiedNodes>)>> = HashMap::new();
    while let Some(done) = results.next().await {
        let (i, k, done) = done?;
        parts.entry(i).or_default().push((k, done));
    }
    for (i, mut parts) in parts {
        parts.sort_by_key(|(k, _)| *k);
        // The file as read: its parts in order up to the first that ended early (the file shrank meanwhile; WAL
        // replay restores what it held). Gone at the first read: vanished.
        let (mut size, mut nodes, mut is_gone) = (0, Vec::new(), false);
        for (k, part) in parts {
            let Some(part) = part else {
                is_gone = k == 0;
                break;
            };
            frames.extend(part.frames);
            size += part.size;
            nodes.extend(part.nodes);
            if part.is_eof {
                break;
            }
        }
        if is_gone {
            tracing::debug!(path = %files[i].rel, "file vanished during the backup");
            continue;
        }
        let f = &files[i];
        entries[i] = Some(FileEntry { path: f.rel.clone(), size, mode: f.mode, mtime: f.mtime, pieces: vec![], nodes });
    }
    drop(results);

    // Small files: reused by content (incremental), else concatenated into frames.
    let reusable: HashMap<ObjectId, &Piece> = prev_files
        .values()
        .filter_map(|e| match &e.pieces[..] {
            [p] if !ctx.is_full && ctx.packer.is_known(&p.object) => Some((p.blake3, p)),
            _ => None,
        })
        .collect();
    let mut frame: Vec<u8> = Vec::new();
    let mut members: Vec<(usize, u64, u64, ObjectId)> = Vec::new();
    for (i, f) in files.iter().enumerate().filter(|(_, f)| f.size < BLOCK_MAP_MIN) {
        pacer.lock().await.wait(f.size).await;
        let (p, rel, pages) = (f.abs.clone(), f.rel.clone(), ctx.pages.clone());
        let read = blocking(move || {
            let data = read_range(&p, 0, u64::MAX)?;
            pages.check(&rel, &p, 0, data.as_deref()).map(|()| data)
        });
        let Some(data) = read.await? else {
            tracing::debug!(path = %f.rel, "file vanished during the backup");
            continue;
        };
        progress.advance(data.len() as u64);
        let entry = |pieces| FileEntry {
            path: f.rel.clone(),
            size: data.len() as u64,
            mode: f.mode,
            mtime: f.mtime,
            pieces,
            nodes: vec![],
        };
        if data.is_empty() {
            entries[i] = Some(entry(vec![]));
            continue;
        }
        let hash = ObjectId::of(&data);
        // The same file's previous piece when its content is unchanged, else any piece with this content: many
        // small files are equal (PG_VERSION, empty maps), and naming another file's copy would change the entry
        // and so the file map, which an unchanged run should share with the previous backup.
        let same_path = prev_files.get(f.rel.as_bytes()).and_then(|e| match &e.pieces[..] {
            [p] if p.blake3 == hash && !ctx.is_full && ctx.packer.is_known(&p.object) => Some(p),
            _ => None,
        });
        if let Some(p) = same_path.or_else(|| reusable.get(&hash).copied()).filter(|p| p.length == data.len() as u64) {
            ctx.packer.note_reused(p.length);
            frames.insert(p.object);
            entries[i] = Some(entry(vec![(*p).clone()]));
            continue;
        }
        members.push((i, frame.len() as u64, data.len() as u64, hash));
        entries[i] = Some(entry(vec![]));
        frame.extend_from_slice(&data);
        if frame.len() >= FRAME_RAW_MAX {
            seal_small(&ctx.packer, &mut frame, &mut members, &mut entries, &mut frames).await?;
        }
    }
    seal_small(&ctx.packer, &mut frame, &mut members, &mut entries, &mut frames).await?;
    Ok(Copied { files: entries.into_iter().flatten().collect(), frames })
}

/// Store the small-file frame being filled and give its members their pieces.
async fn seal_small(
    packer: &Arc<Packer>,
    frame: &mut Vec<u8>,
    members: &mut Vec<(usize, u64, u64, ObjectId)>,
    entries: &mut [Option<FileEntry>],
    frames: &mut HashSet<ObjectId>,
) -> Result<(), Error> {
    if frame.is_empty() {
        return Ok(());
    }
    let id = packer.add_frame(std::mem::take(frame)).await?;
    frames.insert(id);
    for (i, offset, length, blake3) in members.drain(..) {
        if let Some(e) = entries[i].as_mut() {
            e.pieces = vec![Piece { object: id, offset, length, blake3 }];
        }
    }
    Ok(())
}
