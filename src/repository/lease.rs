//! Leases: a record under `locks/` that a running base-backup, pitr-restore or gc holds and renews, so that gc
//! never removes an object a running backup has written or is about to reference, and a backup never lists the
//! objects it may reuse while gc sweeps. The design and the race argument: docs/design/retention.md, "Deleting a
//! backup and garbage collection".
//!
//! Invariants:
//! - A holder writes its lease (`locks/<kind>-<token>`, the codec's checksummed JSON [`LeaseRecord`]) before it
//!   does anything the lease protects, renews it every [`RENEW_EVERY`] (overwrite), and deletes it when done,
//!   on failure too. A `kill -9` leaves it behind: see [`liveness`].
//! - A lease is live unless its holder is provably gone: its process on this same host (same host name, boot and
//!   PID namespace) no longer exists, or the lease was not renewed for longer than its TTL. Age is measured on the
//!   backend's clock when the caller holds a lease of its own (its `modified` time is the backend's "now"), so
//!   clock skew between hosts does not enter; otherwise on the records' own times, and [`TTL`] is far above any
//!   sane skew.
//! - A record that cannot be read counts as live while its object is younger than the TTL (never guess "stale").

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::store;
use crate::storage::{DynStorage, Key, ObjectMeta, Storage};

/// Prefix of the lease records.
pub const LOCKS_PREFIX: &str = "locks/";

/// How long a lease lives without renewal. Far above [`RENEW_EVERY`] (20 renewals may fail in a row) and above
/// any clock skew a host with NTP has.
pub const TTL: Duration = Duration::from_secs(600);

/// How often a holder renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(30);

/// What holds a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseKind {
    /// A running base-backup: gc must not sweep (its objects are referenced by no manifest yet).
    Backup,
    /// A running pitr-restore: gc must not sweep (the backup it reads may be deleted meanwhile).
    Restore,
    /// A running gc: a base-backup waits before listing the objects it may reuse.
    Gc,
}

impl LeaseKind {
    fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Backup => "backup",
            LeaseKind::Restore => "restore",
            LeaseKind::Gc => "gc",
        }
    }
}

impl std::fmt::Display for LeaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeaseKind::Backup => "base-backup",
            LeaseKind::Restore => "pitr-restore",
            LeaseKind::Gc => "backupctl gc",
        })
    }
}

/// Who holds a lease: enough to tell, on the same host, whether the process is still there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Host name (`/proc/sys/kernel/hostname`).
    pub host: String,
    /// Linux boot id (`/proc/sys/kernel/random/boot_id`): a reboot makes every earlier pid meaningless.
    pub boot_id: String,
    /// PID namespace (`/proc/self/ns/pid` link text): two containers with one host name still differ here.
    pub pid_namespace: String,
    /// Process id.
    pub pid: u32,
}

impl Holder {
    /// This process.
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
        Self {
            host: read("/proc/sys/kernel/hostname"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pid: std::process::id(),
        }
    }

    /// True if `other` is a process of this same host, boot and PID namespace (its pid means the same here).
    /// Unknown identities (empty fields) never match.
    pub fn is_same_host(&self, other: &Holder) -> bool {
        !self.host.is_empty()
            && !self.boot_id.is_empty()
            && !self.pid_namespace.is_empty()
            && self.host == other.host
            && self.boot_id == other.boot_id
            && self.pid_namespace == other.pid_namespace
    }
}

/// True if process `pid` exists on this host (`/proc/<pid>`; a process of another user counts).
pub fn is_pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// One lease record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// What holds it.
    pub kind: LeaseKind,
    /// What the holder works on: the backup id for a backup or restore, empty for gc.
    pub what: String,
    /// The holding process.
    pub holder: Holder,
    /// When it was taken (RFC 3339 UTC, the holder's clock).
    pub started_at: String,
    /// When it was last renewed (RFC 3339 UTC, the holder's clock).
    pub renewed_at: String,
    /// Seconds it lives without renewal.
    pub ttl_seconds: u64,
}

impl LeaseRecord {
    /// `base-backup 20261130-010203F (pid 123 on db1)`, for messages.
    pub fn describe(&self) -> String {
        let what = if self.what.is_empty() { String::new() } else { format!(" {}", self.what) };
        format!("{}{what} (pid {} on {})", self.kind, self.holder.pid, self.holder.host)
    }
}

/// Key of a lease of `kind`; `token` makes it unique (time and pid).
pub fn lease_key(kind: LeaseKind, token: &str) -> Key {
    // invariant: the kind is a fixed word and tokens are digits and '-'.
    Key::new(format!("{LOCKS_PREFIX}{}-{token}", kind.as_str())).unwrap_or_else(|e| unreachable!("lease key: {e}"))
}

/// Whether a lease still protects what its holder does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// It does.
    Live,
    /// Its holder is gone; why.
    Stale(String),
}

/// Decide whether a lease is live (pure; see the module doc).
///
/// - `record`: the lease, `None` if it could not be read.
/// - `modified`: the lease object's time on the backend; `backend_now`: the backend's current time (the modified
///   time of a lease the caller just wrote), both `None` if unknown.
/// - `now`: this host's clock, used with the record's own times when the backend's are unknown.
/// - `me`: this process; `pid_alive`: whether a pid of this host exists.
pub fn liveness(
    record: Option<&LeaseRecord>,
    modified: Option<SystemTime>,
    backend_now: Option<SystemTime>,
    now: OffsetDateTime,
    me: &Holder,
    pid_alive: impl Fn(u32) -> bool,
) -> Liveness {
    let ttl = record.map_or(TTL, |r| Duration::from_secs(r.ttl_seconds).max(RENEW_EVERY));
    if let Some(r) = record
        && me.is_same_host(&r.holder)
        && r.holder.pid != me.pid
        && !pid_alive(r.holder.pid)
    {
        return Liveness::Stale(format!("its process {} on this host is gone", r.holder.pid));
    }
    let age = match (modified, backend_now) {
        (Some(m), Some(n)) => Some(n.duration_since(m).unwrap_or(Duration::ZERO)),
        _ => record
            .and_then(|r| OffsetDateTime::parse(&r.renewed_at, &Rfc3339).ok())
            .map(|t| Duration::try_from(now - t).unwrap_or(Duration::ZERO)),
    };
    match age {
        Some(age) if age > ttl => {
            Liveness::Stale(format!("not renewed for {} s (ttl {} s)", age.as_secs(), ttl.as_secs()))
        }
        _ => Liveness::Live,
    }
}

/// Lease failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a lease record failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Another command's lease stayed live for longer than this command waits.
    #[error("{holder} still holds its lease on {backend} after {waited_seconds} s")]
    Busy {
        /// The other holder, described.
        holder: String,
        /// Backend display.
        backend: String,
        /// How long we waited.
        waited_seconds: u64,
    },
    /// Our own lease could not be renewed for so long that others may have taken it for stale.
    #[error("lease {key} on {backend} could not be renewed for {seconds} s: others may take it for stale")]
    Lost {
        /// The lease key.
        key: Key,
        /// Backend display.
        backend: String,
        /// Seconds since the last renewal.
        seconds: u64,
    },
}

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

/// A lease this process holds, renewed by the caller ([`Lease::renew_if_due`]) between steps of its work: for a
/// command that works on a borrowed storage handle (gc). See [`Held`] for one renewed in the background.
#[derive(Debug)]
pub struct Lease {
    key: Key,
    record: Mutex<LeaseRecord>,
    last_renewed: Mutex<std::time::Instant>,
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
            last_renewed: Mutex::new(at),
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

    /// Seconds since the last successful write of the record.
    fn since_renewed(&self) -> Duration {
        self.last_renewed.lock().map(|t| t.elapsed()).unwrap_or(TTL)
    }

    /// Renew the record (overwrite it with a new `renewed_at`).
    pub async fn renew(&self, storage: &dyn Storage) -> Result<(), Error> {
        let record = {
            let mut r = self.record.lock().map_err(|_| self.lost(storage))?;
            r.renewed_at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
            r.clone()
        };
        store::put_record(storage, &self.key, &record).await?;
        if let Ok(mut t) = self.last_renewed.lock() {
            *t = std::time::Instant::now();
        }
        Ok(())
    }

    /// Renew if [`RENEW_EVERY`] has passed since the last renewal; fail with [`Error::Lost`] if it has not been
    /// renewed for half the TTL (others may soon take it for stale).
    pub async fn renew_if_due(&self, storage: &dyn Storage) -> Result<(), Error> {
        if self.since_renewed() < RENEW_EVERY {
            return Ok(());
        }
        if let Err(e) = self.renew(storage).await {
            tracing::warn!(key = %self.key, error = %e, "could not renew the lease");
        }
        self.check(storage)
    }

    /// Fail with [`Error::Lost`] if the lease has not been renewed for half the TTL.
    pub fn check(&self, storage: &dyn Storage) -> Result<(), Error> {
        if self.since_renewed() > TTL / 2 { Err(self.lost(storage)) } else { Ok(()) }
    }

    fn lost(&self, storage: &dyn Storage) -> Error {
        Error::Lost { key: self.key.clone(), backend: storage.to_string(), seconds: self.since_renewed().as_secs() }
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

    fn holder(host: &str, pid: u32) -> Holder {
        Holder { host: host.into(), boot_id: "b".into(), pid_namespace: "pid:[1]".into(), pid }
    }

    fn record(host: &str, pid: u32, renewed_at: &str) -> LeaseRecord {
        LeaseRecord {
            kind: LeaseKind::Backup,
            what: "20261130-010203F".into(),
            holder: holder(host, pid),
            started_at: renewed_at.into(),
            renewed_at: renewed_at.into(),
            ttl_seconds: TTL.as_secs(),
        }
    }

    /// Stale: a dead process on this host at once; anyone after the TTL (backend clock if known, else the
    /// record's). Live otherwise, an unreadable record included.
    #[test]
    fn lease_liveness_table() {
        let now = time::macros::datetime!(2026-11-30 12:00:00 UTC);
        let me = holder("db1", 1);
        let fresh = record("db1", 42, "2026-11-30T11:59:30Z");
        let old = record("db2", 42, "2026-11-30T11:40:00Z");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let alive = |_| true;
        let dead = |_| false;
        let live = |l: Liveness| l == Liveness::Live;
        // Same host, process alive: live; gone: stale at once.
        assert!(live(liveness(Some(&fresh), None, None, now, &me, alive)));
        assert!(matches!(liveness(Some(&fresh), None, None, now, &me, dead), Liveness::Stale(w) if w.contains("gone")));
        // Another host: its pid means nothing here, only the TTL counts.
        let other = record("db2", 42, "2026-11-30T11:59:30Z");
        assert!(live(liveness(Some(&other), None, None, now, &me, dead)));
        assert!(
            matches!(liveness(Some(&old), None, None, now, &me, alive), Liveness::Stale(w) if w.contains("1200 s"))
        );
        // Another boot or PID namespace of the same host name is another host.
        let mut rebooted = me.clone();
        rebooted.boot_id = "other".into();
        assert!(live(liveness(Some(&fresh), None, None, now, &rebooted, dead)));
        // Backend clock wins over the records' times (skewed holder clock): renewed 20 min ago by its own clock,
        // but written 10 s ago by the backend's.
        assert!(live(liveness(Some(&old), Some(t0), Some(t0 + Duration::from_secs(10)), now, &me, alive)));
        let expired = Some(t0 + TTL + Duration::from_secs(1));
        assert!(!live(liveness(Some(&fresh), Some(t0), expired, now, &holder("db9", 1), alive)));
        // Exactly at the TTL: still live.
        assert!(live(liveness(Some(&other), Some(t0), Some(t0 + TTL), now, &me, alive)));
        // Unreadable: live until its object is older than the TTL; with no times at all, live.
        assert!(live(liveness(None, None, None, now, &me, dead)));
        assert!(live(liveness(None, Some(t0), Some(t0 + Duration::from_secs(5)), now, &me, dead)));
        assert!(!live(liveness(None, Some(t0), expired, now, &me, dead)));
        // A holder clock ahead of ours (negative age) is live, not an error.
        let ahead = record("db2", 42, "2026-11-30T12:05:00Z");
        assert!(live(liveness(Some(&ahead), None, None, now, &me, alive)));
        // Unknown identity never matches: no "dead on this host" shortcut.
        assert!(!Holder { host: String::new(), ..me.clone() }.is_same_host(&holder("", 1)));
        assert!(lease_key(LeaseKind::Gc, "1-2").as_str() == "locks/gc-1-2");
    }

    #[tokio::test]
    async fn held_lease_is_listed_and_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s: DynStorage = Arc::new(crate::storage::fs::FsStorage::new(dir.path()));
        let held = Held::acquire(s.clone(), LeaseKind::Backup, "20261130-010203F").await.expect("acquire");
        let now = OffsetDateTime::now_utc();
        let found = live_leases(s.as_ref(), &[LeaseKind::Backup], None, None, now, false).await.expect("list");
        assert_eq!(found.len(), 1);
        assert!(found[0].describe().starts_with("base-backup 20261130-010203F (pid "), "{}", found[0].describe());
        let own =
            live_leases(s.as_ref(), &[LeaseKind::Backup], Some(held.key()), None, now, false).await.expect("list");
        assert!(own.is_empty());
        assert!(live_leases(s.as_ref(), &[LeaseKind::Gc], None, None, now, false).await.expect("list").is_empty());
        held.check().expect("not lost");
        // A backup waits while gc holds a live lease (bounded), and goes on once it is released.
        let gc = Lease::take(s.as_ref(), LeaseKind::Gc, "").await.expect("gc lease");
        let said = std::sync::Mutex::new(Vec::new());
        let note = |who: &str| said.lock().expect("lock").push(who.to_owned());
        let e = held.wait_while_live(&[LeaseKind::Gc], Duration::ZERO, &note).await.expect_err("busy");
        assert!(matches!(e, Error::Busy { .. }) && e.to_string().starts_with("backupctl gc (pid "), "{e}");
        gc.release(s.as_ref()).await.expect("release gc");
        held.wait_while_live(&[LeaseKind::Gc], Duration::from_secs(5), &note).await.expect("no gc");
        held.release().await.expect("release");
        assert!(s.list(LOCKS_PREFIX).await.expect("list").is_empty());
    }
}
