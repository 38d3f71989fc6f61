//! wal-fetch: hand PostgreSQL the file it asks `restore_command` for, verified, and prefetch the next segments.
//!
//! Invariants:
//! - `%p` is written through a temp file in its directory and renamed only after size and blake3 match the
//!   object header; nothing partial or unverified is ever visible at `%p`.
//! - "Not in the archive" is returned only on a definitive answer from storage, and for a segment only when the
//!   archive holds nothing after it (the `hole` module); every other failure, a hole included, is an error that must stop
//!   recovery.
//! - A `.partial` is served only when asked for by its own name.
//! - Prefetched objects are verified again when served; one prefetcher at a time (lock).

mod hole;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{ArchiveContext, blocking};
use crate::Error;
use crate::codec::{self, Digest};
use crate::repository::{self, store};
use crate::spool::{Lock, Spool};
use crate::wal::{SegmentName, SegmentSize, WalFileName};

/// A prefetched file older than this is left over from an earlier recovery and is fetched again instead.
const PREFETCH_MAX_AGE: Duration = Duration::from_secs(3600);

/// Where a served file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The prefetch queue in the spool.
    Spool,
    /// The repository.
    Repository,
}

/// What one wal-fetch call did.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// The name served.
    pub name: WalFileName,
    /// Raw bytes written to `%p`.
    pub raw_size: u64,
    /// Where it came from.
    pub source: Source,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// Fetch `name` (PostgreSQL's `%f`) into `dest` (`%p`): from the prefetch queue if it holds a good copy, else
/// from the repository.
#[tracing::instrument(skip_all, fields(segment = name))]
pub async fn run(ctx: &ArchiveContext, name: &str, dest: &Path) -> Result<FetchReport, Error> {
    let (c, n, d) = (ctx.clone(), name.to_owned(), dest.to_path_buf());
    if let Some(report) = blocking(move || from_spool(&c, &n, &d)).await? {
        return Ok(report);
    }
    from_repository(ctx, name, dest).await
}

/// The first half of [`run`], synchronous so that wal-fetch's usual call (the segment is prefetched) needs no
/// async runtime: record a segment as the one PostgreSQL wants (the prefetcher follows it), then serve it from
/// the prefetch queue if a fresh copy is there and still has its digest. `Ok(None)`: fetch it from the
/// repository.
#[tracing::instrument(skip_all, fields(segment = name))]
pub fn from_spool(ctx: &ArchiveContext, name: &str, dest: &Path) -> Result<Option<FetchReport>, Error> {
    let started = Instant::now();
    let wal_name: WalFileName = name.parse()?;
    // The prefetch queue only saves time: a spool that cannot be written or read (full, its permissions changed)
    // must not stop recovery, so its failures are warnings and the segment comes from the repository.
    if let WalFileName::Segment(_) = wal_name
        && let Err(e) = ctx.spool.set_wanted(name)
    {
        tracing::warn!(error = %e, "cannot record the segment PostgreSQL wants in the spool; prefetching may lag");
    }
    let found = ctx.spool.find_prefetched(name, PREFETCH_MAX_AGE).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the prefetch queue; fetching from the repository");
        None
    });
    let Some((path, digest)) = found else { return Ok(None) };
    let result = serve_prefetched(&path, digest, dest);
    if let Err(e) = ctx.spool.remove_prefetched(name) {
        tracing::warn!(error = %e, "cannot remove a served segment from the prefetch queue");
    }
    match result {
        Ok(raw_size) => Ok(Some(FetchReport {
            name: wal_name,
            raw_size,
            source: Source::Spool,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })),
        Err(e) => {
            tracing::warn!(error = %e, "discarding a bad prefetched copy; fetching from the repository");
            Ok(None)
        }
    }
}

/// The second half of [`run`]: get `name` from the repository, verify it, and write it to `dest`.
#[tracing::instrument(skip_all, fields(segment = name))]
pub async fn from_repository(ctx: &ArchiveContext, name: &str, dest: &Path) -> Result<FetchReport, Error> {
    let started = Instant::now();
    let wal_name: WalFileName = name.parse()?;
    let key = repository::wal_key(&wal_name);
    let storage = ctx.storage().await?;
    let object = match storage.get(&key).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => {
            // A segment's absence is the end of the archive only if nothing archived comes after it.
            let arrived = match wal_name {
                WalFileName::Segment(seg) => hole::absent_segment(storage.as_ref(), seg, SystemTime::now()).await?,
                _ => None,
            };
            match arrived {
                Some(o) => o,
                None => return Err(Error::NotInArchive { name: name.to_owned(), backend: storage.to_string() }),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let what = format!("{storage}/{key}");
    let d = dest.to_path_buf();
    let raw_size = blocking(move || write_verified(&object, &d, &what)).await?;
    Ok(FetchReport {
        name: wal_name,
        raw_size,
        source: Source::Repository,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Decode and verify `object` (named `what` in errors) into `file`; write failures name `path`.
fn decode_into(object: &[u8], file: &mut std::fs::File, what: &str, path: &Path) -> Result<codec::ObjectHeader, Error> {
    let werr = |source| Error::WriteDestination { path: path.to_path_buf(), source };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let header = codec::decode(object, &mut out).map_err(|e| match e {
        codec::Error::Io(source) => werr(source),
        other => Error::Corrupt { what: what.to_owned(), source: other },
    })?;
    std::io::Write::flush(&mut out).map_err(werr)?;
    Ok(header)
}

/// Decode `object` into a temp file beside `dest`, verify, and rename it into place.
fn write_verified(object: &[u8], dest: &Path, what: &str) -> Result<u64, Error> {
    let dir = dest_dir(dest);
    let werr = |source| Error::WriteDestination { path: dest.to_path_buf(), source };
    let mut tmp = tempfile::Builder::new().prefix(".wal-fetch-").tempfile_in(&dir).map_err(werr)?;
    let header = decode_into(object, tmp.as_file_mut(), what, dest)?;
    // No fsync: after a crash PostgreSQL asks for the file again; the rename keeps %p all-or-nothing.
    tmp.persist(dest).map_err(|e| werr(e.error))?;
    Ok(header.raw_size)
}

/// Check a prefetched file against its digest (read and hashed on all cores: this is on PostgreSQL's critical
/// path), then move it to `dest` (rename on the same filesystem, else a copy through a temp file beside `dest`
/// and a rename).
fn serve_prefetched(path: &Path, digest: Digest, dest: &Path) -> Result<u64, Error> {
    let what = path.display().to_string();
    let read_err = |source| Error::Corrupt { what: what.clone(), source: codec::Error::Io(source) };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let actual = codec::digest_file(&file, size, hash_threads()).map_err(read_err)?;
    // Prefetched files are never written after they are published; one that grew was changed by someone else.
    let now = file.metadata().map_err(read_err)?.len();
    if now != size {
        return Err(Error::Corrupt { what, source: codec::Error::SizeMismatch { expected: size, actual: now } });
    }
    if actual != digest {
        return Err(Error::Corrupt { what, source: codec::Error::ChecksumMismatch { expected: digest, actual } });
    }
    let werr = |source| Error::WriteDestination { path: dest.to_path_buf(), source };
    match std::fs::rename(path, dest) {
        Ok(()) => return Ok(size),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        Err(e) => return Err(werr(e)),
    }
    let mut tmp = tempfile::Builder::new().prefix(".wal-fetch-").tempfile_in(dest_dir(dest)).map_err(werr)?;
    let mut src = std::fs::File::open(path).map_err(read_err)?;
    std::io::copy(&mut src, tmp.as_file_mut()).map_err(werr)?;
    tmp.persist(dest).map_err(|e| werr(e.error))?;
    Ok(size)
}

/// Threads for hashing a prefetched segment: the cores (at most 4: a 16 MiB segment gains little beyond that).
fn hash_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

fn dest_dir(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Remove prefetched files outside `wanted` and the window after it; return the window's names not yet in the spool.
fn plan_prefetch(
    spool: &Spool,
    wanted: SegmentName,
    size: SegmentSize,
    depth: usize,
) -> Result<Vec<SegmentName>, Error> {
    let mut window = Vec::with_capacity(depth);
    let mut next = wanted;
    for _ in 0..depth {
        next = next.next(size)?;
        window.push(next);
    }
    // The wanted segment itself is kept: wal-fetch may be serving it right now, and removes it when done.
    let mut keep: Vec<String> = window.iter().map(ToString::to_string).collect();
    keep.push(wanted.to_string());
    let present = spool.prefetched_names()?;
    for stale in present.iter().filter(|n| !keep.contains(n)) {
        spool.remove_prefetched(stale)?;
    }
    Ok(window.into_iter().filter(|s| !present.contains(&s.to_string())).collect())
}

/// The prefetcher: keep the next `fetch_prefetch` segments after the newest wanted one in the spool, until the
/// archive ends or PostgreSQL stops asking. Returns at once if another prefetcher holds the lock.
pub async fn prefetch(ctx: &ArchiveContext, idle_exit: Duration) -> Result<usize, Error> {
    let depth = ctx.settings.fetch_prefetch;
    let lock_path = ctx.spool.fetch_lock_path();
    let Some(_lock) = blocking(move || Lock::try_acquire(&lock_path).map_err(Error::from)).await? else {
        return Ok(0);
    };
    let Some(cluster) = store::cluster_info(ctx.storage().await?.as_ref()).await? else { return Ok(0) };
    let size = SegmentSize::new(cluster.wal_segment_size)?;
    let mut fetched = 0usize;
    let mut last_progress = Instant::now();
    let mut end_of_archive: Option<SegmentName> = None;
    loop {
        let wanted = ctx.spool.wanted()?.and_then(|w| w.parse::<SegmentName>().ok());
        let Some(wanted) = wanted else { return Ok(fetched) };
        let todo: Vec<SegmentName> = plan_prefetch(&ctx.spool, wanted, size, depth)?
            .into_iter()
            .filter(|s| end_of_archive.is_none_or(|end| *s < end))
            .collect();
        if todo.is_empty() {
            if last_progress.elapsed() > idle_exit {
                return Ok(fetched);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let (n, missing) = fetch_into_spool(ctx, todo).await;
        fetched += n;
        if n > 0 {
            last_progress = Instant::now();
        }
        if let Some(m) = missing {
            // The archive ends here for now; stop rather than poll storage for WAL that may never come.
            end_of_archive = Some(m);
            if n == 0 {
                return Ok(fetched);
            }
        }
    }
}

/// Decompress and verify a downloaded object into the prefetch queue.
fn store_prefetched(spool: &Spool, seg: SegmentName, object: &[u8], what: &str) -> Result<(), Error> {
    let mut tmp = spool.prefetch_temp()?;
    let header = decode_into(object, tmp.as_file_mut(), what, &spool.fetch_dir())?;
    spool.publish_prefetched(tmp, &seg.to_string(), header.digest)?;
    Ok(())
}

/// Download segments into the spool in parallel; returns how many were stored and the first missing one.
async fn fetch_into_spool(ctx: &ArchiveContext, todo: Vec<SegmentName>) -> (usize, Option<SegmentName>) {
    let storage = match ctx.storage().await {
        Ok(s) => s.clone(),
        Err(e) => {
            tracing::warn!(error = %e, "prefetch: cannot open the repository");
            return (0, todo.first().copied());
        }
    };
    let semaphore = Arc::new(Semaphore::new(ctx.settings.push_concurrency.max(2)));
    let mut set = JoinSet::new();
    for seg in todo {
        let (storage, spool, semaphore) = (storage.clone(), ctx.spool.clone(), semaphore.clone());
        set.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let key = repository::wal_key(&WalFileName::Segment(seg));
            match storage.get(&key).await {
                Ok(object) => {
                    let what = format!("{storage}/{key}");
                    match blocking(move || store_prefetched(&spool, seg, &object, &what)).await {
                        Ok(()) => (seg, Ok(true)),
                        Err(e) => (seg, Err(e)),
                    }
                }
                Err(e) if e.is_not_found() => (seg, Ok(false)),
                Err(e) => (seg, Err(Error::from(e))),
            }
        });
    }
    let (mut stored, mut missing) = (0usize, None::<SegmentName>);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((_, Ok(true))) => stored += 1,
            Ok((seg, Ok(false))) => missing = Some(missing.map_or(seg, |m| m.min(seg))),
            Ok((seg, Err(e))) => {
                tracing::warn!(segment = %seg, error = %e, "prefetch failed; wal-fetch will fetch it directly");
                missing = Some(missing.map_or(seg, |m| m.min(seg)));
            }
            Err(e) => tracing::warn!(error = %e, "prefetch task failed"),
        }
    }
    (stored, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_prefetch_window_and_cleanup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), "file:///r").expect("spool");
        let size = SegmentSize::DEFAULT;
        for n in [
            "0000000100000000000000FE",
            "0000000100000000000000FF",
            "000000010000000100000001",
            "000000020000000100000000",
        ] {
            let tmp = spool.prefetch_temp().expect("temp");
            spool.publish_prefetched(tmp, n, Digest::of(b"")).expect("publish");
        }
        let wanted: SegmentName = "0000000100000000000000FF".parse().expect("name");
        let todo = plan_prefetch(&spool, wanted, size, 3).expect("plan");
        let todo: Vec<String> = todo.iter().map(ToString::to_string).collect();
        assert_eq!(todo, vec!["000000010000000100000000", "000000010000000100000002"]);
        // Stale entries (before the window, other timeline) are gone; the one inside the window stays.
        assert_eq!(
            spool.prefetched_names().expect("names"),
            vec!["0000000100000000000000FF", "000000010000000100000001"]
        );
    }

    #[test]
    fn prefetched_copy_is_verified_when_served() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), "file:///r").expect("spool");
        let (object, _) = codec::encode(&b"segment bytes"[..], 1, 0, 1).expect("encode");
        let seg: SegmentName = "000000010000000000000003".parse().expect("name");
        store_prefetched(&spool, seg, &object, "obj").expect("store");
        let (path, digest) = spool.find_prefetched(&seg.to_string(), PREFETCH_MAX_AGE).expect("find").expect("there");
        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(serve_prefetched(&path, digest, &dest).expect("serve"), 13);
        assert_eq!(std::fs::read(&dest).expect("dest"), b"segment bytes");
        // A damaged copy is refused and nothing is written.
        let mut tmp = spool.prefetch_temp().expect("temp");
        tmp.write_all(b"segment bytez").expect("write");
        spool.publish_prefetched(tmp, &seg.to_string(), digest).expect("publish");
        let (path, digest) = spool.find_prefetched(&seg.to_string(), PREFETCH_MAX_AGE).expect("find").expect("there");
        let dest2 = dir.path().join("OTHER");
        assert!(matches!(serve_prefetched(&path, digest, &dest2), Err(Error::Corrupt { .. })));
        assert!(!dest2.exists());
    }

    /// The synchronous spool path: a prefetched segment of several hash pieces is served (and the wanted marker
    /// follows the request); a damaged one is discarded and left for the repository path.
    #[test]
    fn from_spool_serves_only_verified_copies() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let repository = crate::config::RepositoryConfig {
            url: format!("file://{}", dir.path().join("repo").display()),
            compression_level: 1,
            format: 1,
            s3: Default::default(),
        };
        // Root (the tests' user) never creates a spool: make it first, as an operator would.
        std::fs::create_dir(dir.path().join("spool")).expect("spool dir");
        let spool = Spool::open(&dir.path().join("spool"), &repository.url).expect("spool");
        let ctx = ArchiveContext::new(&repository, &Default::default(), spool.clone());
        let data: Vec<u8> = (0..(3 << 20) + 4321u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let (object, _) = codec::encode(&data[..], 1, 0, 1).expect("encode");
        let name = "000000010000000000000007";
        let dest = dir.path().join("RECOVERYXLOG");
        assert!(from_spool(&ctx, name, &dest).expect("miss").is_none(), "nothing prefetched yet");
        assert_eq!(spool.wanted().expect("wanted").as_deref(), Some(name));

        store_prefetched(&spool, name.parse().expect("name"), &object, "obj").expect("store");
        let report = from_spool(&ctx, name, &dest).expect("serve").expect("served from the spool");
        assert_eq!((report.source, report.raw_size), (Source::Spool, data.len() as u64));
        assert!(std::fs::read(&dest).expect("dest") == data);
        assert!(spool.prefetched_names().expect("names").is_empty(), "served copies leave the queue");

        // One flipped byte in the last piece: refused, removed, and %p is not touched.
        std::fs::remove_file(&dest).expect("rm");
        store_prefetched(&spool, name.parse().expect("name"), &object, "obj").expect("store");
        let (path, _) = spool.find_prefetched(name, PREFETCH_MAX_AGE).expect("find").expect("there");
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&[data[data.len() - 2] ^ 0x40], data.len() as u64 - 2).expect("flip");
        assert!(from_spool(&ctx, name, &dest).expect("bad copy").is_none());
        assert!(!dest.exists());
        assert!(spool.prefetched_names().expect("names").is_empty(), "a bad copy is discarded");
    }
}
