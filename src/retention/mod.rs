//! Retention: which backups and WAL to keep, and reclaiming the space of the rest.
//!
//! - [`keep`]: keep marks (`backupctl keep` / `unkeep`) that exempt a backup from every policy.
//! - [`plan`]: the pure decision (grandfather-father-son buckets, the PITR window, kept backups) over an injected
//!   clock; `backupctl prune` prints it (`--dry-run`) or applies it.
//! - [`gc`]: deleting one backup, and mark-and-sweep of the data objects no backup references, safe against a
//!   base-backup running at the same time (leases; see docs/design/retention.md).

pub mod expire;
pub mod gc;
pub mod keep;
pub mod plan;
