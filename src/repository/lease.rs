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
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod held;

pub use held::{FoundLease, Held, Lease, live_leases};

use super::store;
use crate::storage::Key;

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
    /// `base-backup 20261130-010203F (pid 123 on db1)`, for messages; a logical dump (which holds a backup lease)
    /// is `backupctl dump 20261130-010203D (...)`.
    pub fn describe(&self) -> String {
        let what = if self.what.is_empty() { String::new() } else { format!(" {}", self.what) };
        let is_dump = self.kind == LeaseKind::Backup && self.what.parse::<super::dump::DumpId>().is_ok();
        let kind = if is_dump { "backupctl dump".to_owned() } else { self.kind.to_string() };
        format!("{kind}{what} (pid {} on {})", self.holder.pid, self.holder.host)
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
    /// Our own lease went without renewal for so long (renewals failed, or the process was stopped) that others
    /// may have taken it for stale.
    #[error("lease {key} on {backend} went {seconds} s without renewal: others may have taken it for stale")]
    Lost {
        /// The lease key.
        key: Key,
        /// Backend display.
        backend: String,
        /// Seconds since the last renewal.
        seconds: u64,
    },
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::DynStorage;

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
        // A logical dump holds a backup lease too; it is named as what it is (it said "base-backup").
        let record = found[0].record.clone().expect("readable");
        let dump = LeaseRecord { what: "20261130-010203D".into(), ..record };
        assert!(dump.describe().starts_with("backupctl dump 20261130-010203D (pid "), "{}", dump.describe());
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
