//! The background pusher (`wal-push --push-worker PG_WAL`): keeps pushing the `.ready` files PostgreSQL will hand
//! over next, continuously, so that the archiver's calls find a spool record and return at once.
//!
//! PostgreSQL's archiver calls `archive_command` once per file, serially (`pgarch_ArchiverCopyLoop` in
//! src/backend/postmaster/pgarch.c). Pushing ahead in per-call batches left both cores idle between batches and
//! at each batch's tail; this worker keeps them busy across calls, as pgBackRest's asynchronous archive-push does.
//! A wal-push call answered from a spool record starts it (detached) when no pusher holds the spool lock.
//!
//! Invariants:
//! - It holds the spool's push lock for its whole life, so it is the only pusher while it runs; a wal-push call
//!   that finds no record waits for its record or for the lock ([`super::run`]), and pushes the file itself
//!   once the lock is free.
//! - The window is measured against `pg_wal/archive_status`: the first `push_ahead + 1` `.ready` files in the
//!   order PostgreSQL archives them ([`plan_window`]), so the file PostgreSQL is asking for is always in it.
//! - Files are started in that order; at most `push_concurrency` hash or compress at once, and as many again may
//!   wait on storage (upload, fsync). A spool record is written only after the file is durable (by the file's
//!   own task, so that record fsyncs overlap other files' work).
//! - After the first failure nothing new is started: the files in flight finish, then it exits and releases the
//!   lock, and the failing file's own wal-push call pushes it and reports the error to PostgreSQL.
//! - It exits when nothing was left to push for `idle`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::segment::{PushedFile, push_file};
use crate::Error;
use crate::archive::{ArchiveContext, blocking};
use crate::repository::store;
use crate::spool::{Lock, PushRecord};
use crate::wal::WalFileName;

/// How often the worker looks at `archive_status` again while it waits for PostgreSQL or for a file in flight.
const POLL: Duration = Duration::from_millis(5);

/// What a worker run did.
#[derive(Debug, Default)]
pub struct WorkerReport {
    /// Files made durable (and recorded in the spool).
    pub pushed: usize,
    /// The first failure, after which nothing new was started.
    pub failed: Option<(String, Error)>,
    /// False when another pusher held the lock and this run did nothing.
    pub had_lock: bool,
}

/// The files PostgreSQL will archive next, in its order, from the names of `archive_status/*.ready` (without the
/// suffix): timeline history files first, then every other name in byte order (`pgarch_readyXlog` in
/// src/backend/postmaster/pgarch.c; PostgreSQL 15 compares names with `strcmp`). At most `push_ahead + 1` of
/// them: the one being asked for and `push_ahead` after it. Names wal-push would refuse are left out (PostgreSQL's
/// own call for one reports the error).
pub fn plan_window(ready: &[String], push_ahead: usize) -> Vec<WalFileName> {
    let mut parsed: Vec<(bool, &str, WalFileName)> = ready
        .iter()
        .filter_map(|n| n.parse::<WalFileName>().ok().map(|w| (!matches!(w, WalFileName::History(_)), n.as_str(), w)))
        .collect();
    parsed.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    parsed.into_iter().take(push_ahead.saturating_add(1)).map(|(_, _, w)| w).collect()
}

/// The names of `pg_wal/archive_status/*.ready`, without the suffix.
fn ready_names(pg_wal: &Path) -> Result<Vec<String>, Error> {
    let dir = pg_wal.join("archive_status");
    let entries = std::fs::read_dir(&dir).map_err(|source| Error::ReadWal { path: dir.clone(), source })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::ReadWal { path: dir.clone(), source })?;
        if let Some(n) = entry.file_name().to_str().and_then(|n| n.strip_suffix(".ready")) {
            out.push(n.to_owned());
        }
    }
    Ok(out)
}

/// Run the worker on `pg_wal` (the cluster's WAL directory) until nothing was left to push for `idle`, or until
/// the files in flight after a failure have finished. Returns at once, having done nothing, when another pusher
/// holds the spool lock.
///
/// Errors: the storage cannot be opened, the repository has no cluster record yet (the first wal-push call claims
/// it), `archive_status` cannot be read, or a spool record cannot be written.
#[tracing::instrument(skip_all, fields(pg_wal = %pg_wal.display()))]
pub async fn run(
    ctx: &ArchiveContext,
    pg_wal: &Path,
    idle: Duration,
    now_rfc3339: &str,
) -> Result<WorkerReport, Error> {
    let lock_path = ctx.spool.push_lock_path();
    let Some(_lock) = blocking(move || Lock::try_acquire(&lock_path).map_err(Error::from)).await? else {
        return Ok(WorkerReport::default());
    };
    let mut report = WorkerReport { had_lock: true, ..WorkerReport::default() };
    let storage = ctx.storage().await?.clone();
    store::ensure_descriptor(storage.as_ref(), now_rfc3339, ctx.repository.format).await?;
    let Some(cluster) = store::cluster_info(storage.as_ref()).await? else {
        tracing::debug!("no cluster record yet: leaving the first push to wal-push itself");
        return Ok(report);
    };
    let cluster = Arc::new(cluster);
    let concurrency = ctx.settings.push_concurrency.max(1);
    let cpu = Arc::new(Semaphore::new(concurrency));
    let max_in_flight = concurrency * 2;
    let level = ctx.repository.compression_level;
    let repo_id = ctx.repository_id.clone();

    let mut set: JoinSet<(WalFileName, Result<PushedFile, Error>)> = JoinSet::new();
    // Started in this run: their record may already be consumed while PostgreSQL has not yet renamed `.ready`.
    let mut started: HashSet<String> = HashSet::new();
    let mut last_work = Instant::now();
    loop {
        if report.failed.is_none() && set.len() < max_in_flight {
            let (dir, spool, ahead) = (pg_wal.to_path_buf(), ctx.spool.clone(), ctx.settings.push_ahead);
            let window = blocking(move || {
                let ready = ready_names(&dir)?;
                let mut handled: HashSet<String> = spool.push_record_names()?.into_iter().collect();
                // A taken record whose file PostgreSQL no longer lists as .ready has served its purpose.
                let ready_set: HashSet<&str> = ready.iter().map(String::as_str).collect();
                for n in spool.taken_names()? {
                    if ready_set.contains(n.as_str()) {
                        handled.insert(n);
                    } else {
                        spool.remove_taken(&n)?;
                    }
                }
                let window = plan_window(&ready, ahead);
                Ok(window.into_iter().filter(|w| !handled.contains(&w.to_string())).collect::<Vec<_>>())
            })
            .await?;
            let todo: Vec<WalFileName> = window.into_iter().filter(|w| !started.contains(&w.to_string())).collect();
            // A lone file gets every core (the end of a backlog); otherwise one thread per file.
            let workers = if set.is_empty() && todo.len() == 1 { concurrency as u32 } else { 1 };
            for name in todo.into_iter().take(max_in_flight - set.len()) {
                started.insert(name.to_string());
                tracing::debug!(segment = %name, "push started");
                let path: PathBuf = pg_wal.join(name.to_string());
                let (storage, cluster, cpu) = (storage.clone(), cluster.clone(), cpu.clone());
                let (spool, repo_id) = (ctx.spool.clone(), repo_id.clone());
                let span = tracing::debug_span!("push", segment = %name);
                set.spawn(tracing::Instrument::instrument(
                    async move {
                        let r =
                            push_file(storage.as_ref(), level, workers, &name, &path, Some(&cluster), Some(&cpu)).await;
                        // The task writes the record itself, so that its fsyncs overlap other files' work.
                        let r = match r {
                            Ok(pushed) => {
                                let key = name.to_string();
                                let record = PushRecord::new(&repo_id, pushed.digest, pushed.identity);
                                blocking(move || spool.write_push_record(&key, &record).map_err(Error::from))
                                    .await
                                    .map(|()| pushed)
                            }
                            Err(e) => Err(e),
                        };
                        (name, r)
                    },
                    span,
                ));
                last_work = Instant::now();
            }
        }
        if set.is_empty() {
            if report.failed.is_some() || last_work.elapsed() >= idle {
                break;
            }
            tokio::time::sleep(POLL).await;
            continue;
        }
        let may_start = report.failed.is_none() && set.len() < max_in_flight;
        tokio::select! {
            joined = set.join_next() => {
                last_work = Instant::now();
                match joined {
                    Some(Ok((name, Ok(pushed)))) => {
                        tracing::debug!(segment = %name, bytes = pushed.raw_size, stored = pushed.stored_size,
                            elapsed_ms = pushed.elapsed_ms, "pushed ahead");
                        report.pushed += 1;
                    }
                    Some(Ok((name, Err(e)))) => {
                        tracing::warn!(segment = %name, error = %e,
                            "push ahead failed; starting nothing more (PostgreSQL's call for it pushes it again)");
                        report.failed.get_or_insert((name.to_string(), e));
                    }
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "push task panicked");
                        report.failed.get_or_insert(("?".to_owned(), Error::Task(format!("push task: {e}"))));
                    }
                    None => {}
                }
            }
            _ = tokio::time::sleep(POLL), if may_start => {}
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_follows_postgresql_order() {
        let ready: Vec<String> = [
            "000000010000000000000005",
            "000000010000000000000003",
            "00000002.history",
            "000000010000000000000004.00000028.backup",
            "000000010000000000000004",
            "000000010000000000000002.partial",
            "not-a-wal-file",
            "000000010000000000000006",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let names = |ahead| plan_window(&ready, ahead).iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            names(4),
            vec![
                "00000002.history",
                "000000010000000000000002.partial",
                "000000010000000000000003",
                "000000010000000000000004",
                "000000010000000000000004.00000028.backup",
            ]
        );
        assert_eq!(names(0), vec!["00000002.history"]);
        assert_eq!(names(100).len(), 7, "unparsable names are left out");
        assert!(plan_window(&[], 3).is_empty());
    }
}
