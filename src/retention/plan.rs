//! The retention plan (pure): which backups a policy keeps, and which WAL they and the PITR window need.
//!
//! [`plan`] takes the backups (from their manifests and keep marks), the listing of `wal/`, the policy and the
//! time `now`, and returns a [`Plan`]: the backups to keep (each with its reasons and what it can still reach),
//! the backups to delete, and the WAL files to delete as ranges per timeline. No I/O; `retention::expire` loads
//! the inputs and applies the plan. The design and its safety argument: docs/design/retention.md, "The retention
//! plan".
//!
//! Invariants:
//! - Backups are ordered by their real start time, then start LSN (never by id or name: wal-g#636).
//! - Never deleted: the newest backup, a backup whose keep mark holds at `now`; with no rule that chooses
//!   backups, no backup at all; with no rule at all, nothing (no WAL either).
//! - A WAL file is deleted only if its segment number is below the start of every kept backup that may go on
//!   past its stop, and outside the start..stop segments of every other kept backup, on every timeline;
//!   `.history` files and names that are not WAL are never deleted.

pub mod dumps;
mod gfs;
pub mod policy;
mod wal;

#[cfg(test)]
mod tests;

use std::fmt;

use jiff::Timestamp;
use serde::Serialize;

pub use policy::{Policy, PolicyError, Rules};
pub use wal::{WalPlan, WalRange, wal_file_of_key};

use crate::repository::backup::{BackupId, BackupType, Manifest};
use crate::retention::keep::KeepMark;
use crate::storage::ObjectMeta;
use crate::wal::{Lsn, SegmentName, SegmentSize, TimelineHistory};

/// A manifest whose fields the plan cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A time that is not RFC 3339.
    #[error("backup {id}: {field} {value:?} is not an RFC 3339 time")]
    BadTime {
        /// The backup.
        id: BackupId,
        /// `start_time` or `stop_time`.
        field: &'static str,
        /// The text.
        value: String,
    },
    /// A WAL segment name that does not parse.
    #[error("backup {id}: {field} {value:?} is not a WAL segment name")]
    BadSegment {
        /// The backup.
        id: BackupId,
        /// `start_wal` or `stop_wal`.
        field: &'static str,
        /// The text.
        value: String,
    },
}

/// What the plan needs to know of one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The id.
    pub id: BackupId,
    /// Full or incremental.
    pub backup_type: BackupType,
    /// When it started (the manifest's `start_time`).
    pub start_time: Timestamp,
    /// When it stopped: the earliest moment it can restore to.
    pub stop_time: Timestamp,
    /// Where its WAL starts.
    pub start_lsn: Lsn,
    /// Where it is consistent (its stop LSN), on the timeline of `stop_segment`.
    pub stop_lsn: Lsn,
    /// The first WAL segment it needs.
    pub start_segment: SegmentName,
    /// The last WAL segment it needs (holds its consistent point).
    pub stop_segment: SegmentName,
    /// Its keep mark, if it has one.
    pub keep: Option<KeepMark>,
}

impl Backup {
    /// The plan's view of a manifest and the backup's keep mark.
    pub fn from_manifest(m: &Manifest, keep: Option<KeepMark>) -> Result<Self, PlanError> {
        let time = |field: &'static str, value: &str| {
            value.parse::<Timestamp>().map_err(|_| PlanError::BadTime { id: m.id.clone(), field, value: value.into() })
        };
        let segment = |field: &'static str, value: &str| {
            value.parse::<SegmentName>().map_err(|_| PlanError::BadSegment {
                id: m.id.clone(),
                field,
                value: value.into(),
            })
        };
        Ok(Self {
            id: m.id.clone(),
            backup_type: m.backup_type,
            start_time: time("start_time", &m.start_time)?,
            stop_time: time("stop_time", &m.stop_time)?,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            start_segment: segment("start_wal", &m.start_wal)?,
            stop_segment: segment("stop_wal", &m.stop_wal)?,
            keep,
        })
    }
}

/// Why a backup is kept. `Display` is how `prune` and `status` print it ("daily 2026-11-30", "weekly 2026-W48").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The newest backup: never deleted.
    Newest,
    /// Among the newest `keep-last`.
    KeepLast,
    /// The newest backup of this day, among the newest `daily-retain` days.
    Daily(jiff::civil::Date),
    /// The newest of this ISO week (year, week), among the newest `weekly-retain` weeks.
    Weekly(i16, i8),
    /// The newest of this month (year, month), among the newest `monthly-retain` months.
    Monthly(i16, i8),
    /// The newest of this year, among the newest `yearly-retain` years.
    Yearly(i16),
    /// Started within the last `full-days` days.
    FullDays(u32),
    /// The backup the `pitr-days` window restores from: the newest that stopped before the window began (or the
    /// oldest, if none did), so that every moment of the window can be restored.
    PitrDays(u32),
    /// Its keep mark holds (the mark's own wording: "kept forever", "kept until ...").
    Marked(String),
    /// The policy has no rule that chooses backups: every backup is kept.
    NoRule,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Newest => f.write_str("newest"),
            Reason::KeepLast => f.write_str("keep-last"),
            Reason::Daily(d) => write!(f, "daily {d}"),
            Reason::Weekly(y, w) => write!(f, "weekly {y:04}-W{w:02}"),
            Reason::Monthly(y, m) => write!(f, "monthly {y:04}-{m:02}"),
            Reason::Yearly(y) => write!(f, "yearly {y:04}"),
            Reason::FullDays(d) => write!(f, "full-days {d}"),
            Reason::PitrDays(d) => write!(f, "pitr-days {d}"),
            Reason::Marked(m) => f.write_str(m),
            Reason::NoRule => f.write_str("no backup rule in the policy"),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a kept backup can restore to once the plan is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reach {
    /// Any moment from its stop to the newest archived WAL (all WAL from its start on is kept).
    Onward,
    /// Its consistent point only (its stop): it keeps only the WAL from its start to its stop.
    StopOnly,
}

/// A backup the plan keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptBackup {
    /// The id.
    pub id: BackupId,
    /// When it started.
    pub start_time: Timestamp,
    /// When it stopped.
    pub stop_time: Timestamp,
    /// Every reason it is kept, newest-rule first.
    pub reasons: Vec<Reason>,
    /// What it can restore to.
    pub reach: Reach,
}

/// A backup the plan deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoomedBackup {
    /// The id.
    pub id: BackupId,
    /// When it started.
    pub start_time: Timestamp,
    /// When it stopped.
    pub stop_time: Timestamp,
}

/// The decision: what to keep and what to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The time the plan was made for.
    pub now: Timestamp,
    /// The policy, as text (`Policy`'s `Display`).
    pub policy: String,
    /// Kept backups, oldest first.
    pub keep: Vec<KeptBackup>,
    /// Backups to delete, oldest first.
    pub delete: Vec<DoomedBackup>,
    /// WAL to delete.
    pub wal: WalPlan,
    /// Things the operator should know (a policy that keeps nothing, WAL left alone and why).
    pub notes: Vec<String>,
}

impl Plan {
    /// True if the plan deletes nothing.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.wal.files == 0
    }
}

/// Decide what `policy` keeps at `now` of `backups` (any order) and of the archived WAL (`wal_objects`, the
/// listing of `wal/` with sizes; `segment_size` from the repository's cluster record, `None` if none: then no WAL
/// is deleted). `history` is the newest timeline's (see [`newest_history`](crate::retention::expire::newest_history)),
/// whose PITR window `pitr-days` keeps; `None` if unknown (then every backup counts as on its path).
pub fn plan(
    backups: &[Backup],
    wal_objects: &[ObjectMeta],
    segment_size: Option<SegmentSize>,
    history: Option<&TimelineHistory>,
    policy: &Policy,
    now: Timestamp,
) -> Plan {
    let mut sorted: Vec<&Backup> = backups.iter().collect();
    sorted.sort_by(|a, b| (a.start_time, a.start_lsn, &a.id).cmp(&(b.start_time, b.start_lsn, &b.id)));
    let mut notes = Vec::new();
    let mut reasons = gfs::reasons(&sorted, &policy.rules, &policy.time_zone, now);
    let chosen_by_rules = reasons.iter().any(|r| !r.is_empty());
    if !policy.rules.has_backup_rule() {
        reasons.iter_mut().for_each(|r| r.push(Reason::NoRule));
    }
    let now_odt = time::OffsetDateTime::from_unix_timestamp_nanos(now.as_nanosecond()).ok();
    for (b, r) in sorted.iter().zip(reasons.iter_mut()) {
        if let Some(mark) = &b.keep {
            // A mark that cannot be compared with `now` keeps the backup (the safe way).
            if now_odt.is_none_or(|t| mark.is_kept_at(t)) {
                r.push(Reason::Marked(mark.describe()));
            }
        }
    }
    if let Some(last) = reasons.last_mut() {
        last.insert(0, Reason::Newest);
    }
    // The PITR window's base: without it, a window that no kept backup stopped before would silently shrink to the
    // oldest kept backup's stop (keep-last=3 with pitr-days=14 kept 3 days). The window is the newest timeline's
    // (what recovery follows by default), so the base is the newest backup on its path that stopped before the
    // window began, or with none that old the oldest on its path (every moment since it stopped stays
    // restorable). A backup on an abandoned timeline past its fork cannot be the base.
    let mut base = None;
    if let Some(days) = policy.rules.pitr_days {
        let cutoff = now.checked_sub(jiff::SignedDuration::from_hours(i64::from(days) * 24)).unwrap_or(Timestamp::MIN);
        let on_path = |b: &&Backup| history.is_none_or(|h| h.can_reach_from(b.stop_segment.timeline, b.stop_lsn));
        let path: Vec<usize> = (0..sorted.len()).filter(|&i| on_path(&sorted[i])).collect();
        if let Some(&i) = path.iter().rev().find(|&&i| sorted[i].stop_time <= cutoff).or(path.first()) {
            reasons[i].push(Reason::PitrDays(days));
            base = Some(sorted[i].id.clone());
        }
    }
    let newest = sorted.last().map(|b| &b.id);
    if policy.rules.has_backup_rule()
        && !chosen_by_rules
        && sorted.len() > 1
        && (base.is_none() || base.as_ref() == newest)
    {
        notes.push(format!(
            "the policy {policy} keeps no backup: the newest backup, {}, is kept regardless",
            sorted[sorted.len() - 1].id
        ));
    }
    let kept: Vec<&Backup> = sorted.iter().zip(&reasons).filter(|(_, r)| !r.is_empty()).map(|(b, _)| *b).collect();
    // No rule at all: prune deletes nothing, not even WAL older than every backup (a copy made by other means,
    // docs/operations.md, may need it).
    let wal = if policy.rules == Rules::default() {
        if !backups.is_empty() || !wal_objects.is_empty() {
            notes.push("the backup policy has no rules: no backup or WAL is deleted".to_owned());
        }
        WalPlan::default()
    } else {
        wal::plan(&kept, wal_objects, segment_size, base.as_ref(), &mut notes)
    };
    let mut keep = Vec::new();
    let mut delete = Vec::new();
    for (b, r) in sorted.iter().zip(reasons) {
        if r.is_empty() {
            delete.push(DoomedBackup { id: b.id.clone(), start_time: b.start_time, stop_time: b.stop_time });
        } else {
            let reach = if wal.stop_only.contains(&b.id) { Reach::StopOnly } else { Reach::Onward };
            keep.push(KeptBackup {
                id: b.id.clone(),
                start_time: b.start_time,
                stop_time: b.stop_time,
                reasons: r,
                reach,
            });
        }
    }
    Plan { now, policy: policy.to_string(), keep, delete, wal, notes }
}
