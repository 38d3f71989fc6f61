//! wal-push: archive the file PostgreSQL hands to `archive_command`, and push the next `.ready` segments ahead.
//!
//! Invariants:
//! - Returns `Ok` for the requested file only once it is durable in the repository (or an identical copy is).
//! - A spool record is written only after its file is durable; a record lets a later call return at once.
//! - One pusher at a time per spool (lock). Look-ahead takes segments in name order and stops scheduling at the
//!   first failure. History files are never pushed ahead in a call: PostgreSQL hands them over first.
//! - Between calls, the background pusher ([`worker`]) holds the lock and keeps pushing ahead in PostgreSQL's
//!   order; a call that finds no record waits for its record or the lock, so it never pushes a file the worker is
//!   pushing, and pushes it itself once the worker is gone (failure, exit, `kill -9`).

pub mod segment;
pub mod state;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use self::segment::{PushedFile, push_file};
use super::{ArchiveContext, blocking};
use crate::Error;
use crate::repository::{ClusterInfo, store};
use crate::spool::{FileIdentity, Lock, PushRecord};
use crate::storage::DynStorage;
use crate::wal::WalFileName;

/// What one wal-push call did.
#[derive(Debug)]
pub struct PushReport {
    /// The requested file: `None` when a spool record showed it was already pushed ahead.
    pub requested: Option<PushedFile>,
    /// The requested file's name.
    pub name: WalFileName,
    /// Files pushed ahead durably in this call.
    pub ahead: Vec<PushedFile>,
    /// Look-ahead failures (logged; PostgreSQL will hand these files over itself).
    pub ahead_failed: Vec<(WalFileName, Error)>,
}

/// Archive `wal_path` (PostgreSQL's `%p`).
#[tracing::instrument(skip_all, fields(segment))]
pub async fn run(ctx: &ArchiveContext, wal_path: &Path, now_rfc3339: &str) -> Result<PushReport, Error> {
    let file_name = wal_path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Usage(format!("{} has no file name", wal_path.display())))?;
    let name: WalFileName = file_name.parse()?;
    tracing::Span::current().record("segment", file_name);
    let repo_id = ctx.repository_id.clone();

    if take_record(ctx, &name, wal_path, &repo_id)? {
        return Ok(PushReport { requested: None, name, ahead: Vec::new(), ahead_failed: Vec::new() });
    }
    // Refuse a bad file before touching storage or the lock.
    let (n, p) = (name.clone(), wal_path.to_path_buf());
    let inspected = blocking(move || segment::inspect(&n, &p)).await?;
    // Another pusher (the background worker, or a concurrent call) may be pushing this very file: wait for its
    // record or for the lock, whichever comes first.
    let (c, n, p) = (ctx.clone(), name.clone(), wal_path.to_path_buf());
    let wait = Duration::from_secs(ctx.settings.retry_deadline_seconds);
    let Some(_lock) = blocking(move || record_or_lock(&c, &n, &p, wait)).await? else {
        return Ok(PushReport { requested: None, name, ahead: Vec::new(), ahead_failed: Vec::new() });
    };

    let storage = ctx.storage().await?.as_ref();
    store::ensure_descriptor(storage, now_rfc3339, ctx.repository.format).await?;
    let mut cluster = store::cluster_info(storage).await?;
    if let (None, Some(offered)) = (&cluster, &inspected.cluster) {
        cluster = Some(store::claim_cluster(storage, offered).await?);
    }

    let ahead = match &name {
        WalFileName::Segment(_) if ctx.settings.push_ahead > 0 => {
            let (n, p, limit, spool) =
                (name.clone(), wal_path.to_path_buf(), ctx.settings.push_ahead, ctx.spool.clone());
            blocking(move || Ok(ready_after(&p, &n, limit, &|s| spool.push_record(s).ok().flatten().is_some()))).await?
        }
        _ => Vec::new(),
    };

    let mut jobs = vec![(name.clone(), wal_path.to_path_buf())];
    jobs.extend(ahead);
    let mut results = push_batch(ctx, ctx.storage().await?, jobs, cluster).await;
    // invariant: the requested file is always the first job, so results is never empty.
    let (_, first) = results.remove(0);
    let requested = first?;

    let mut report = PushReport { requested: Some(requested), name, ahead: Vec::new(), ahead_failed: Vec::new() };
    for (n, r) in results {
        match r {
            Ok(pushed) => {
                ctx.spool
                    .write_push_record(&n.to_string(), &PushRecord::new(&repo_id, pushed.digest, pushed.identity))?;
                report.ahead.push(pushed);
            }
            Err(e) => report.ahead_failed.push((n, e)),
        }
    }
    remove_stale_records(ctx, &report.name)?;
    Ok(report)
}

/// If a spool record says `name` is already durable in this repository, consume it and return true.
fn take_record(ctx: &ArchiveContext, name: &WalFileName, path: &Path, repo_id: &str) -> Result<bool, Error> {
    let key = name.to_string();
    let Some(record) = ctx.spool.push_record(&key)? else { return Ok(false) };
    let meta = std::fs::metadata(path).map_err(|source| Error::ReadWal { path: path.to_path_buf(), source })?;
    if record.repository != repo_id || record.file != FileIdentity::of(&meta) {
        // Stale (another repository, or a different file): ignore it and push for real.
        ctx.spool.remove_push_record(&key)?;
        return Ok(false);
    }
    ctx.spool.take_push_record(&key)?;
    tracing::debug!(segment = %key, "already pushed ahead");
    Ok(true)
}

/// How often a call that found no record looks again for its record or the lock.
const RECORD_POLL: Duration = Duration::from_millis(2);

/// Wait until either a spool record for `name` appears (consumed: `Ok(None)`) or the spool lock is ours
/// (`Ok(Some(lock))`, after checking once more for a record written before the holder let go). Fails with
/// [`crate::spool::Error::Locked`], naming the holder, when neither happened within `wait`.
fn record_or_lock(
    ctx: &ArchiveContext,
    name: &WalFileName,
    path: &Path,
    wait: Duration,
) -> Result<Option<Lock>, Error> {
    let lock_path = ctx.spool.push_lock_path();
    let deadline = Instant::now() + wait;
    loop {
        if let Some(lock) = Lock::try_acquire(&lock_path)? {
            if take_record(ctx, name, path, &ctx.repository_id)? {
                return Ok(None);
            }
            return Ok(Some(lock));
        }
        if take_record(ctx, name, path, &ctx.repository_id)? {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            // Names the holder; succeeds instead if the lock was released just now.
            return Lock::acquire(&lock_path, Duration::ZERO).map(Some).map_err(Error::from);
        }
        std::thread::sleep(RECORD_POLL);
    }
}

/// Records for names before `current` were never claimed (PostgreSQL archives in order): drop them.
fn remove_stale_records(ctx: &ArchiveContext, current: &WalFileName) -> Result<(), Error> {
    let current = current.to_string();
    for n in ctx.spool.push_record_names()? {
        if n < current {
            ctx.spool.remove_push_record(&n)?;
        }
    }
    for n in ctx.spool.taken_names()? {
        if n < current {
            ctx.spool.remove_taken(&n)?;
        }
    }
    Ok(())
}

/// The `.ready` segments after `requested`, in name order, at most `limit`, skipping those already recorded.
fn ready_after(
    wal_path: &Path,
    requested: &WalFileName,
    limit: usize,
    has_record: &dyn Fn(&str) -> bool,
) -> Vec<(WalFileName, PathBuf)> {
    let pg_wal = wal_path.parent().unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(pg_wal.join("archive_status")) else { return Vec::new() };
    let requested_s = requested.to_string();
    let mut ready: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".ready")).map(str::to_owned))
        .filter(|n| n.as_str() > requested_s.as_str() && n.len() == 24 && !has_record(n))
        .collect();
    ready.sort();
    ready
        .into_iter()
        .filter_map(|n| match n.parse::<WalFileName>() {
            Ok(w @ WalFileName::Segment(_)) => Some((w, pg_wal.join(&n))),
            _ => None,
        })
        .take(limit)
        .collect()
}

/// Push files with bounded concurrency, in order; after the first failure no further file is started.
async fn push_batch(
    ctx: &ArchiveContext,
    storage: &DynStorage,
    jobs: Vec<(WalFileName, PathBuf)>,
    cluster: Option<ClusterInfo>,
) -> Vec<(WalFileName, Result<PushedFile, Error>)> {
    let semaphore = Arc::new(Semaphore::new(ctx.settings.push_concurrency));
    let failed = Arc::new(AtomicBool::new(false));
    let cluster = Arc::new(cluster);
    let mut set = JoinSet::new();
    let count = jobs.len();
    let names: Vec<WalFileName> = jobs.iter().map(|(n, _)| n.clone()).collect();
    // A lone file gets every core the batch would have used.
    let workers = if count == 1 { ctx.settings.push_concurrency as u32 } else { 1 };
    for (index, (name, path)) in jobs.into_iter().enumerate() {
        let (semaphore, failed, cluster) = (semaphore.clone(), failed.clone(), cluster.clone());
        let (storage, level) = (storage.clone(), ctx.repository.compression_level);
        let span = tracing::info_span!("push", segment = %name);
        set.spawn(tracing::Instrument::instrument(
            async move {
                let result = match semaphore.acquire_owned().await {
                    Ok(_permit) if !failed.load(Ordering::SeqCst) => {
                        let r =
                            push_file(storage.as_ref(), level, workers, &name, &path, cluster.as_ref().as_ref(), None)
                                .await;
                        if r.is_err() {
                            failed.store(true, Ordering::SeqCst);
                        }
                        r
                    }
                    _ => Err(Error::Task(format!("{name} not started after an earlier failure"))),
                };
                (index, name, result)
            },
            span,
        ));
    }
    let mut out: Vec<Option<(WalFileName, Result<PushedFile, Error>)>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((index, name, result)) => out[index] = Some((name, result)),
            Err(e) => tracing::error!(error = %e, "push task panicked"),
        }
    }
    out.into_iter()
        .zip(names)
        // A hole is a task that panicked: report it as a failure of that file.
        .map(|(r, name)| r.unwrap_or_else(|| (name, Err(Error::Task("push task panicked".to_owned())))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(dir: &Path) -> ArchiveContext {
        let repository = crate::config::RepositoryConfig {
            url: format!("file://{}/repo", dir.display()),
            compression_level: 1,
            format: 1,
            s3: Default::default(),
        };
        // Made here: root (the tests' user) never creates a spool itself.
        std::fs::create_dir(dir.join("spool")).expect("mkdir spool");
        let spool = crate::spool::Spool::open(&dir.join("spool"), &repository.url).expect("spool");
        ArchiveContext::new(&repository, &crate::config::ArchiveConfig::default(), spool)
    }

    #[test]
    fn a_call_waits_for_the_record_or_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let name: WalFileName = "000000010000000000000002".parse().expect("name");
        let wal = dir.path().join(name.to_string());
        std::fs::write(&wal, b"segment").expect("write");
        let identity = FileIdentity::of(&std::fs::metadata(&wal).expect("stat"));

        // Free lock, no record: the call gets the lock and pushes itself.
        let lock = record_or_lock(&ctx, &name, &wal, Duration::from_secs(5)).expect("wait");
        assert!(lock.is_some());
        drop(lock);

        // A pusher holds the lock and records the file after a while: the call consumes the record.
        let held = Lock::try_acquire(&ctx.spool.push_lock_path()).expect("lock").expect("free");
        let (spool, repo) = (ctx.spool.clone(), ctx.repository_id.clone());
        let pusher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let record = PushRecord::new(&repo, crate::codec::Digest::of(b"segment"), identity);
            spool.write_push_record("000000010000000000000002", &record).expect("record");
            held
        });
        let started = Instant::now();
        assert!(record_or_lock(&ctx, &name, &wal, Duration::from_secs(5)).expect("wait").is_none());
        assert!(started.elapsed() < Duration::from_secs(2), "answered when the record appeared");
        assert_eq!(ctx.spool.taken_names().expect("taken"), vec![name.to_string()], "the record was taken");
        let held = pusher.join().expect("pusher");

        // Neither within the deadline: the error names the holder.
        let err = record_or_lock(&ctx, &name, &wal, Duration::from_millis(30)).expect_err("held");
        assert!(err.to_string().contains(&format!("pid={}", std::process::id())), "{err}");
        drop(held);
    }

    #[test]
    fn ready_after_orders_and_filters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = dir.path().join("archive_status");
        std::fs::create_dir(&status).expect("mkdir");
        for n in [
            "000000010000000000000003.ready",
            "000000010000000000000005.ready",
            "000000010000000000000004.ready",
            "000000010000000000000001.ready",
            "000000010000000000000006.done",
            "00000002.history.ready",
            "000000010000000000000007.ready",
            "000000010000000000000004.00000028.backup.ready",
        ] {
            std::fs::write(status.join(n), b"").expect("write");
        }
        let requested: WalFileName = "000000010000000000000002".parse().expect("name");
        let wal = dir.path().join("000000010000000000000002");
        let got = ready_after(&wal, &requested, 2, &|n| n == "000000010000000000000004");
        let names: Vec<String> = got.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, vec!["000000010000000000000003", "000000010000000000000005"]);
        assert_eq!(got[0].1, dir.path().join("000000010000000000000003"));
    }
}
