//! Retention of logical dumps: apply the `dump_*_retain` keys ([`crate::retention::plan::dumps`]) to the dumps of a
//! repository. Used by `backupctl prune` and the scheduler's prune job, before the backups' expire, so that the
//! gc at its end reclaims what the deleted dumps held.

use jiff::Timestamp;

use crate::Error;
use crate::retention::plan::Policy;
use crate::retention::plan::dumps::{self, DumpPlan};
use crate::storage::Storage;

/// Decide which dumps `policy`'s dump rules keep at `now` (in its time zone) and, unless `dry_run`, delete the
/// others (their manifests; gc reclaims their frames). Dumps whose manifest is damaged are neither counted nor
/// deleted. Errors: storage errors, a manifest whose start time is not RFC 3339 ([`Error::Task`]).
pub async fn prune_dumps(
    storage: &dyn Storage,
    policy: &Policy,
    now: Timestamp,
    dry_run: bool,
) -> Result<DumpPlan, Error> {
    let (list, _) = crate::repository::dump::manifests(storage).await?;
    let mut items = Vec::with_capacity(list.len());
    for m in &list {
        let t: Timestamp = m.started_at.parse().map_err(|_| {
            Error::Task(format!("dump {}: start time {:?} is not an RFC 3339 time", m.id, m.started_at))
        })?;
        items.push((m.id.clone(), t, m.databases.iter().map(|d| d.name.clone()).collect()));
    }
    let plan = dumps::plan(&items, &policy.dump_rules, &policy.time_zone, now);
    if !dry_run {
        for id in &plan.delete {
            crate::dump::delete(storage, id, false).await?;
        }
    }
    Ok(plan)
}
