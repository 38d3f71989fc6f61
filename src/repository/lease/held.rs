//! The I/O side of leases: taking, renewing, releasing and listing them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{
    Error, Holder, LOCKS_PREFIX, LeaseKind, LeaseRecord, Liveness, RENEW_EVERY, TTL, is_pid_alive, lease_key, liveness,
};
use crate::repository::store;
use crate::storage::{DynStorage, Key, ObjectMeta, Storage};

/// A lease found by [`live_leases`].
#[derive(Debug, Clone)]
pub struct FoundLease {
    /// Its key.
    pub key: Key,
    /// The record, `None` if unreadable.
    pub record: Option<LeaseRecord>,
}

impl FoundLease {
    /// For messages.
    pub fn describe(&self) -> String {
        self.record.as_ref().map_or_else(|| format!("an unreadable lease {}", self.key), LeaseRecord::describe)
    }
}

/// Every live lease of the given kinds, except `own` (the caller's key, if any). `backend_now`: see [`liveness`].
/// Stale leases found are removed when `remove_stale` (a crashed holder's leftovers), and logged.
pub async fn live_leases(
    storage: &dyn Storage,
    kinds: &[LeaseKind],
    own: Option<&Key>,
    backend_now: Option<SystemTime>,
    now: OffsetDateTime,
    remove_stale: bool,
) -> Result<Vec<FoundLease>, Error> {
    let me = Holder::current();
    let mut out = Vec::new();
    for meta in storage.list(LOCKS_PREFIX).await.map_err(store::Error::from)? {
        if Some(&meta.key) == own {
            continue;
        }
        let record = match store::load::<LeaseRecord>(storage, &meta.key).await {
            Ok(Some(r)) => Some(r),
            Ok(None) => continue, // released meanwhile
            Err(store::Error::Storage(e)) => return Err(store::Error::Storage(e).into()),
            Err(e) => {
                tracing::warn!(key = %meta.key, error = %e, "unreadable lease record; treating it as live until its ttl");
                None
            }
        };
        if !kind_matches(&meta, record.as_ref(), kinds) {
            continue;
        }
        match liveness(record.as_ref(), meta.modified, backend_now, now, &me, is_pid_alive) {
            Liveness::Live => out.push(FoundLease { key: meta.key, record }),
            Liveness::Stale(why) => {
                let found = FoundLease { key: meta.key.clone(), record };
                tracing::info!(key = %meta.key, holder = %found.describe(), reason = %why, "stale lease");
                if remove_stale {
                    storage.delete(&meta.key).await.map_err(store::Error::from)?;
                }
            }
        }
    }
    Ok(out)
}

/// The kind from the record, or for an unreadable record from its key's name.
fn kind_matches(meta: &ObjectMeta, record: Option<&LeaseRecord>, kinds: &[LeaseKind]) -> bool {
    match record {
        Some(r) => kinds.contains(&r.kind),
        None => kinds.iter().any(|k| meta.key.file_name().starts_with(&format!("{}-", k.as_str()))),
    }
}

/// When a lease was last renewed, on both clocks, and the longest stretch it went without renewal.
#[derive(Debug)]
struct Renewals {
    at: std::time::Instant,
    wall: SystemTime,
    longest_gap: Duration,
}

impl Renewals {
    /// Time since the last renewal: the larger of the monotonic clock's (which a suspended machine may stop) and
    /// the wall clock's measure.
    fn since(&self) -> Duration {
        self.at.elapsed().max(SystemTime::now().duration_since(self.wall).unwrap_or(Duration::ZERO))
    }
}

/// A lease this process holds, renewed by the caller ([`Lease::renew_if_due`]) between steps of its work: for a
/// command that works on a borrowed storage handle (gc). See [`Held`] for one renewed in the background.
#[derive(Debug)]
pub struct Lease {
    key: Key,
    record: Mutex<LeaseRecord>,
    renewals: Mutex<Renewals>,
    /// The lease object's modified time right after it was written: the backend's clock then.
    written_at_backend: Option<SystemTime>,
    written_at_local: std::time::Instant,
}

impl Lease {
    /// Write a new lease of `kind` for `what`.
    pub async fn take(storage: &dyn Storage, kind: LeaseKind, what: &str) -> Result<Self, Error> {
        let now = OffsetDateTime::now_utc();
        let holder = Holder::current();
        let token = format!("{}-{}", now.unix_timestamp_nanos(), holder.pid);
        let key = lease_key(kind, &token);
        let stamp = now.format(&Rfc3339).unwrap_or_default();
        let record = LeaseRecord {
            kind,
            what: what.to_owned(),
            holder,
            started_at: stamp.clone(),
            renewed_at: stamp,
            ttl_seconds: TTL.as_secs(),
        };
        store::put_record(storage, &key, &record).await?;
        let written_at_backend = storage.head(&key).await.ok().and_then(|m| m.modified);
        tracing::debug!(key = %key, backend = %storage, "lease taken");
        let at = std::time::Instant::now();
        Ok(Self {
            key,
            record: Mutex::new(record),
            renewals: Mutex::new(Renewals { at, wall: SystemTime::now(), longest_gap: Duration::ZERO }),
            written_at_backend,
            written_at_local: at,
        })
    }

    /// The lease's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The backend's clock now, estimated from the lease's write (backend time then plus local time since);
    /// `None` if the backend reports no times.
    pub fn backend_now(&self) -> Option<SystemTime> {
        self.written_at_backend.map(|t| t + self.written_at_local.elapsed())
    }

    /// Time since the last successful write of the record.
    fn since_renewed(&self) -> Duration {
        self.renewals.lock().map(|r| r.since()).unwrap_or(TTL)
    }

    /// The longest time the record went without renewal before the last renewal: a process stopped for longer
    /// than the TTL (SIGSTOP, a suspended VM) and then renewed again must still find out that others may have
    /// taken its lease for stale meanwhile.
    fn longest_past_gap(&self) -> Duration {
        self.renewals.lock().map(|r| r.longest_gap).unwrap_or(TTL)
    }

    /// Renew the record (overwrite it with a new `renewed_at`).
    pub async fn renew(&self, storage: &dyn Storage) -> Result<(), Error> {
        let record = {
            let mut r = self.record.lock().map_err(|_| self.lost(storage, self.since_renewed()))?;
            r.renewed_at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
            r.clone()
        };
        store::put_record(storage, &self.key, &record).await?;
        if let Ok(mut r) = self.renewals.lock() {
            r.longest_gap = r.longest_gap.max(r.since());
            r.at = std::time::Instant::now();
            r.wall = SystemTime::now();
        }
        Ok(())
    }

    /// Renew if [`RENEW_EVERY`] has passed since the last renewal; then [`Lease::check`].
    pub async fn renew_if_due(&self, storage: &dyn Storage) -> Result<(), Error> {
        if self.since_renewed() < RENEW_EVERY {
            return Ok(());
        }
        if let Err(e) = self.renew(storage).await {
            tracing::warn!(key = %self.key, error = %e, "could not renew the lease");
        }
        self.check(storage)
    }

    /// Fail with [`Error::Lost`] if the lease has now gone without renewal for more than half the TTL (others may
    /// soon take it for stale: no margin is left for the caller's next step), or went without it for more than
    /// three quarters of the TTL at any time since it was taken (others may have taken it for stale then, and a
    /// renewal does not undo what they did meanwhile; the quarter is a margin for the difference between this
    /// host's measure and theirs, on the backend's clock).
    pub fn check(&self, storage: &dyn Storage) -> Result<(), Error> {
        let (now, past) = (self.since_renewed(), self.longest_past_gap());
        if now > TTL / 2 || past > TTL * 3 / 4 {
            return Err(self.lost(storage, now.max(past)));
        }
        Ok(())
    }

    /// [`Error::Lost`] for this lease, `gap` without renewal.
    fn lost(&self, storage: &dyn Storage, gap: Duration) -> Error {
        Error::Lost { key: self.key.clone(), backend: storage.to_string(), seconds: gap.as_secs() }
    }

    /// Delete the lease.
    pub async fn release(self, storage: &dyn Storage) -> Result<(), Error> {
        storage.delete(&self.key).await.map_err(store::Error::from)?;
        tracing::debug!(key = %self.key, "lease released");
        Ok(())
    }
}

/// A [`Lease`] renewed every [`RENEW_EVERY`] by a background task until [`Held::release`] (or drop): for
/// base-backup and pitr-restore, whose work has no convenient points to renew at.
#[derive(Debug)]
pub struct Held {
    storage: DynStorage,
    lease: Arc<Lease>,
    task: tokio::task::JoinHandle<()>,
}

impl Held {
    /// Write a new lease of `kind` for `what` and start renewing it (needs a tokio runtime).
    pub async fn acquire(storage: DynStorage, kind: LeaseKind, what: &str) -> Result<Self, Error> {
        let lease = Arc::new(Lease::take(storage.as_ref(), kind, what).await?);
        let (s, l) = (storage.clone(), lease.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if let Err(e) = l.renew(s.as_ref()).await {
                    tracing::warn!(key = %l.key, error = %e, "could not renew the lease; retrying");
                }
            }
        });
        Ok(Self { storage, lease, task })
    }

    /// The lease's key.
    pub fn key(&self) -> &Key {
        self.lease.key()
    }

    /// Fail with [`Error::Lost`] if renewal has failed for half the TTL.
    pub fn check(&self) -> Result<(), Error> {
        self.lease.check(self.storage.as_ref())
    }

    /// Stop renewing and delete the lease.
    pub async fn release(self) -> Result<(), Error> {
        self.task.abort();
        self.storage.delete(self.lease.key()).await.map_err(store::Error::from)?;
        tracing::debug!(key = %self.lease.key(), "lease released");
        Ok(())
    }

    /// Wait while a live lease of `kinds` other than ours exists, at most `timeout`; `waiting` is called with the
    /// holder's description each time another one is found (for a phase message).
    pub async fn wait_while_live(
        &self,
        kinds: &[LeaseKind],
        timeout: Duration,
        waiting: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let mut said = String::new();
        loop {
            let now = OffsetDateTime::now_utc();
            let backend_now = self.lease.backend_now();
            let live = live_leases(self.storage.as_ref(), kinds, Some(self.key()), backend_now, now, false).await?;
            let Some(first) = live.first() else { return Ok(()) };
            let who = first.describe();
            if started.elapsed() >= timeout {
                return Err(Error::Busy {
                    holder: who,
                    backend: self.storage.to_string(),
                    waited_seconds: started.elapsed().as_secs(),
                });
            }
            if who != said {
                waiting(&who);
                said = who;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FsStorage;

    /// A lease whose holder was stopped for longer than three quarters of the TTL fails its check even after it
    /// renews again: others may have taken it for stale and acted meanwhile (before, the renewal made the check
    /// pass). A shorter stop, which nobody could take for staleness, is forgotten once renewed. The stop shows on
    /// the wall clock (a suspended machine; the monotonic clock is measured the same way).
    #[tokio::test]
    async fn a_renewal_after_a_long_stop_does_not_undo_the_lapse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FsStorage::new(dir.path());
        for (stop, stays_lost) in [(Duration::from_secs(480), true), (Duration::from_secs(360), false)] {
            let lease = Lease::take(&s, LeaseKind::Gc, "").await.expect("lease");
            lease.check(&s).expect("fresh");
            lease.renew_if_due(&s).await.expect("not due yet");
            if let Ok(mut r) = lease.renewals.lock() {
                r.wall = SystemTime::now() - stop;
            }
            let e = lease.check(&s).expect_err("more than half the TTL now");
            assert!(matches!(&e, Error::Lost { seconds, .. } if *seconds >= stop.as_secs()), "{stop:?}: {e}");
            assert_eq!(lease.renew_if_due(&s).await.is_err(), stays_lost, "{stop:?}");
            lease.renew(&s).await.expect("renews");
            assert_eq!(lease.check(&s).is_err(), stays_lost, "{stop:?}: after a fresh renewal");
            lease.release(&s).await.expect("release");
        }
    }
}
