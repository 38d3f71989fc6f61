//! Copy listed files into the repository as content-addressed objects: large files cut into page-aligned chunks,
//! small files packed together, everything in parallel with bounded memory.
//!
//! Invariants:
//! - At most `parallel` chunks or packs are in flight (a semaphore taken before a task is spawned), so memory is
//!   about `parallel × 2 × chunk_size` whatever the size of the cluster.
//! - A file that vanishes is left out; one that shrinks is recorded with the bytes read (WAL replay rewrites
//!   every page changed during the backup, from full-page images).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::pages::PageVerifier;
use super::upload::ObjectWriter;
use super::walk::SourceFile;
use crate::Error;
use crate::archive::blocking;
use crate::progress::Progress;
use crate::repository::backup::{FileEntry, ObjectId, Piece};

/// How the copy runs.
#[derive(Debug, Clone, Copy)]
pub struct CopySettings {
    /// Chunk size (a multiple of 8 KiB); files smaller than this are packed.
    pub chunk_size: u64,
    /// Chunks or packs in flight.
    pub parallel: usize,
    /// Read at most this many bytes per second (`--max-rate`), if set.
    pub max_rate: Option<u64>,
}

/// Spaces reads so that on average at most `rate` bytes per second are read (`--max-rate`).
pub struct Pacer {
    rate: Option<u64>,
    start: tokio::time::Instant,
    bytes: u64,
}

impl Pacer {
    /// A pacer for `rate` bytes per second (`None`: no limit), starting now.
    pub(super) fn new(rate: Option<u64>) -> Self {
        Self { rate, start: tokio::time::Instant::now(), bytes: 0 }
    }

    /// Wait until reading `n` more bytes keeps the average at or under the rate.
    pub(super) async fn wait(&mut self, n: u64) {
        let Some(rate) = self.rate.filter(|r| *r > 0) else { return };
        let due = self.start + std::time::Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        self.bytes += n;
        tokio::time::sleep_until(due).await;
    }
}

enum Done {
    Chunk { file: usize, index: usize, piece: Option<Piece>, is_gone: bool },
    Pack { members: Vec<(usize, Piece)> },
}

#[derive(Default)]
struct Pack {
    data: Vec<u8>,
    members: Vec<(usize, u64, u64, ObjectId)>,
}

/// Copy `files`; `reusable` maps a small file's blake3 to a piece of an object the repository holds (incremental);
/// `pages` verifies the page checksums of what is read.
pub async fn copy_files(
    files: &[SourceFile],
    writer: Arc<ObjectWriter>,
    reusable: &HashMap<ObjectId, Piece>,
    settings: CopySettings,
    pages: &Arc<PageVerifier>,
    progress: &dyn Progress,
) -> Result<Vec<FileEntry>, Error> {
    let semaphore = Arc::new(Semaphore::new(settings.parallel.max(1)));
    let mut tasks: JoinSet<Result<Done, Error>> = JoinSet::new();
    let mut chunks: Vec<Vec<Option<Piece>>> = vec![Vec::new(); files.len()];
    let mut vanished = vec![false; files.len()];
    let mut pack = Pack::default();
    let mut pacer = Pacer { rate: settings.max_rate, start: tokio::time::Instant::now(), bytes: 0 };

    for (i, f) in files.iter().enumerate() {
        if f.size >= settings.chunk_size {
            let n = f.size.div_ceil(settings.chunk_size) as usize;
            chunks[i] = vec![None; n];
            for index in 0..n {
                let offset = index as u64 * settings.chunk_size;
                let len = settings.chunk_size.min(f.size - offset);
                pacer.wait(len).await;
                let permit = acquire(&semaphore).await?;
                collect_done(&mut tasks, &mut chunks, &mut vanished)?;
                let (path, writer, pages, rel) = (f.abs.clone(), writer.clone(), pages.clone(), f.rel.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    let p = path.clone();
                    let data = blocking(move || {
                        let data = read_range(&p, offset, len)?;
                        pages.check(&rel, &p, offset, data.as_deref()).map(|()| data)
                    })
                    .await?;
                    let is_gone = data.is_none();
                    let piece = match data {
                        Some(d) if !d.is_empty() => {
                            let length = d.len() as u64;
                            let id = writer.store(d).await?;
                            Some(Piece { object: id, offset: 0, length, blake3: id })
                        }
                        _ => None,
                    };
                    Ok(Done::Chunk { file: i, index, piece, is_gone })
                });
            }
            progress.advance(f.size);
            continue;
        }
        pacer.wait(f.size).await;
        let (p, pages, rel) = (f.abs.clone(), pages.clone(), f.rel.clone());
        let data = blocking(move || {
            let data = read_range(&p, 0, u64::MAX)?;
            pages.check(&rel, &p, 0, data.as_deref()).map(|()| data)
        })
        .await?;
        let Some(data) = data else {
            vanished[i] = true;
            continue;
        };
        progress.advance(data.len() as u64);
        if data.is_empty() {
            continue;
        }
        let hash = ObjectId::of(&data);
        if let Some(piece) = reusable.get(&hash).filter(|p| p.length == data.len() as u64) {
            writer.note_reused(piece.length);
            chunks[i] = vec![Some(piece.clone())];
            continue;
        }
        let offset = pack.data.len() as u64;
        pack.data.extend_from_slice(&data);
        pack.members.push((i, offset, data.len() as u64, hash));
        if pack.data.len() as u64 >= settings.chunk_size {
            let full = std::mem::take(&mut pack);
            let permit = acquire(&semaphore).await?;
            collect_done(&mut tasks, &mut chunks, &mut vanished)?;
            spawn_pack(&mut tasks, full, writer.clone(), permit);
        }
    }
    if !pack.members.is_empty() {
        let permit = acquire(&semaphore).await?;
        spawn_pack(&mut tasks, pack, writer.clone(), permit);
    }
    while let Some(joined) = tasks.join_next().await {
        record(joined, &mut chunks, &mut vanished)?;
    }

    let mut entries = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let mut pieces = Vec::new();
        for piece in chunks[i].drain(..) {
            // A missing or short chunk means the file shrank while read: what follows it is not part of the file.
            let Some(piece) = piece else { break };
            let short = piece.length < settings.chunk_size && f.size >= settings.chunk_size;
            pieces.push(piece);
            if short {
                break;
            }
        }
        if vanished[i] {
            // Removed while the backup ran: left out, as PostgreSQL's own base backup does.
            tracing::debug!(path = %f.rel, "file vanished during the backup");
            continue;
        }
        let size = pieces.iter().map(|p| p.length).sum();
        entries.push(FileEntry { path: f.rel.clone(), size, mode: f.mode, mtime: f.mtime, pieces, nodes: vec![] });
    }
    Ok(entries)
}

async fn acquire(semaphore: &Arc<Semaphore>) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
    semaphore.clone().acquire_owned().await.map_err(|e| Error::Task(e.to_string()))
}

fn spawn_pack(
    tasks: &mut JoinSet<Result<Done, Error>>,
    pack: Pack,
    writer: Arc<ObjectWriter>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    tasks.spawn(async move {
        let _permit = permit;
        let id = writer.store(pack.data).await?;
        let members = pack
            .members
            .into_iter()
            .map(|(file, offset, length, blake3)| (file, Piece { object: id, offset, length, blake3 }))
            .collect();
        Ok(Done::Pack { members })
    });
}

/// Take the results of finished tasks; the first error aborts the copy.
fn collect_done(
    tasks: &mut JoinSet<Result<Done, Error>>,
    chunks: &mut [Vec<Option<Piece>>],
    vanished: &mut [bool],
) -> Result<(), Error> {
    while let Some(joined) = tasks.try_join_next() {
        record(joined, chunks, vanished)?;
    }
    Ok(())
}

fn record(
    joined: Result<Result<Done, Error>, tokio::task::JoinError>,
    chunks: &mut [Vec<Option<Piece>>],
    vanished: &mut [bool],
) -> Result<(), Error> {
    match joined.map_err(|e| Error::Task(e.to_string()))?? {
        Done::Chunk { file, index, piece, is_gone } => {
            if is_gone && index == 0 {
                vanished[file] = true;
            }
            chunks[file][index] = piece;
        }
        Done::Pack { members } => {
            for (file, piece) in members {
                chunks[file] = vec![Some(piece)];
            }
        }
    }
    Ok(())
}

/// Read up to `len` bytes at `offset`; `None` if the file is gone.
pub(super) fn read_range(path: &std::path::Path, offset: u64, len: u64) -> Result<Option<Vec<u8>>, Error> {
    let rerr = |source| Error::ReadSource { path: path.to_path_buf(), source };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(rerr(e)),
    };
    if len == u64::MAX {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut data).map_err(rerr)?;
        return Ok(Some(data));
    }
    // Into spare capacity: no zero-filling of a buffer the read overwrites.
    let mut data = Vec::with_capacity(len as usize);
    std::io::Seek::seek(&mut &file, std::io::SeekFrom::Start(offset)).map_err(rerr)?;
    std::io::Read::read_to_end(&mut std::io::Read::take(&file, len), &mut data).map_err(rerr)?;
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::progress::NoProgress;
    use crate::storage::fs::FsStorage;

    fn no_pages() -> Arc<PageVerifier> {
        Arc::new(PageVerifier::disabled())
    }

    fn source(dir: &std::path::Path, name: &str, content: &[u8]) -> SourceFile {
        let abs = dir.join(name);
        std::fs::write(&abs, content).expect("write");
        SourceFile { rel: name.into(), abs, size: content.len() as u64, mode: 0o600, mtime: 0 }
    }

    /// --max-rate: reads are spaced so the average stays at the rate.
    #[tokio::test(start_paused = true)]
    async fn pacer_keeps_the_average_rate() {
        let start = tokio::time::Instant::now();
        let mut pacer = Pacer { rate: Some(1000), start, bytes: 0 };
        for _ in 0..4 {
            pacer.wait(500).await;
        }
        // 2000 bytes at 1000 B/s: the fourth read may start once the first 1500 bytes have had 1.5 s.
        assert_eq!(start.elapsed(), std::time::Duration::from_millis(1500));
        let mut unlimited = Pacer { rate: None, start: tokio::time::Instant::now(), bytes: 0 };
        let t = tokio::time::Instant::now();
        unlimited.wait(1 << 30).await;
        assert_eq!(t.elapsed(), std::time::Duration::ZERO);
    }

    /// Files that vanish or shrink after listing are left out or cut; equal chunks are stored once; small files
    /// are packed.
    #[tokio::test]
    async fn vanishing_shrinking_and_duplicate_content() {
        let data = tempfile::tempdir().expect("data");
        let repo = tempfile::tempdir().expect("repo");
        let chunk = 32 * 1024u64;
        let pattern: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
        let big: Vec<u8> = [pattern.clone(), pattern.clone(), vec![7u8; chunk as usize]].concat();
        let files = vec![
            source(data.path(), "big", &big),
            source(data.path(), "gone", b"soon deleted"),
            source(data.path(), "small-a", b"alpha"),
            source(data.path(), "small-b", b"bravo"),
            source(data.path(), "empty", b""),
        ];
        std::fs::remove_file(data.path().join("gone")).expect("rm");
        // Shrink "big" to one and a half chunks after it was listed.
        let f = std::fs::OpenOptions::new().write(true).open(data.path().join("big")).expect("open");
        f.set_len(chunk + chunk / 2).expect("truncate");

        let storage: crate::storage::DynStorage = Arc::new(FsStorage::new(repo.path()));
        let writer = Arc::new(ObjectWriter::new(storage.clone(), false, 1, HashSet::new()));
        let settings = CopySettings { chunk_size: chunk, parallel: 2, max_rate: None };
        let entries = copy_files(&files, writer.clone(), &HashMap::new(), settings, &no_pages(), &NoProgress)
            .await
            .expect("copy");
        let by_name: HashMap<&str, &FileEntry> = entries.iter().map(|e| (e.path.to_str().expect("utf-8"), e)).collect();
        assert!(!by_name.contains_key("gone"), "a vanished file is left out");
        let b = by_name["big"];
        assert_eq!(b.size, chunk + chunk / 2);
        assert_eq!(b.pieces.len(), 2);
        assert_eq!(b.pieces[0].object, ObjectId::of(&pattern));
        assert_eq!(b.pieces[1].object, ObjectId::of(&pattern[..(chunk / 2) as usize]));
        let (a, bb) = (by_name["small-a"], by_name["small-b"]);
        assert_eq!(a.pieces[0].object, bb.pieces[0].object, "small files share a pack");
        assert_eq!(a.pieces[0].blake3, ObjectId::of(b"alpha"));
        assert_eq!((bb.pieces[0].offset, bb.pieces[0].length), (5, 5));
        assert!(by_name["empty"].pieces.is_empty() && by_name["empty"].size == 0);
        assert_eq!(writer.objects_written.load(Ordering::Relaxed), 3, "two chunks and one pack");

        // The same content again, incrementally: nothing new is written.
        let present = crate::backup::upload::list_objects(storage.as_ref()).await.expect("list");
        let again = Arc::new(ObjectWriter::new(storage, false, 1, present));
        copy_files(&files[..1], again.clone(), &HashMap::new(), settings, &no_pages(), &NoProgress)
            .await
            .expect("copy");
        assert_eq!(again.objects_written.load(Ordering::Relaxed), 0);
        assert_eq!(again.bytes_reused.load(Ordering::Relaxed), chunk + chunk / 2);
    }
}
