//! `backupctl catalog sync` and the implicit syncs: what to read from the repository, then [`catalog::sync`].
//!
//! An unchanged repository is not read in full: the listings and the repository's small records (cluster record,
//! keep marks, history files) show that nothing the backups' manifests and sizes depend on changed, and the
//! values the last sync stored are taken over ([`catalog::reuse`]); what depends on WAL, keep marks or the clock
//! is computed again every time. A dump's manifest is read only when it is new or its object changed.

use std::collections::BTreeMap;

use crate::Error;
use crate::catalog::reuse::{self, DumpState, SYNC_STATE_VERSION};
use crate::catalog::{self, Stored, SyncInput, SyncReport, SyncState};
use crate::config::Config;
use crate::repository::{dump, store};
use crate::retention::plan::Policy;
use crate::storage::Storage;
use crate::verify::coverage::Clock;
use crate::verify::status::{self, BackupInputs, Backups, Listings, Status};

/// Mirror the repository of `config` into its catalog: `backupctl status`'s picture
/// ([`crate::verify::status::collect`]) and its JSON documents, written with [`catalog::sync`]. The schema is
/// created if there is none; an older one is migrated only when `may_migrate` (the explicit `catalog sync`), else
/// it is [`catalog::Error::OlderSchema`] and nothing is written. Returns the rows written and what was done to the
/// schema. Errors: storage, a repository that does not exist, the catalog (connecting, refusing the archived
/// cluster, its schema, a statement).
pub fn sync(
    config: &Config,
    rt: &tokio::runtime::Runtime,
    may_migrate: bool,
) -> Result<(SyncReport, Option<catalog::SchemaChange>), Error> {
    let deadline = std::time::Duration::from_secs(config.archive.retry_deadline_seconds);
    let storage = rt.block_on(crate::storage::open(&config.repository.url, &config.repository.s3, deadline))?;
    sync_storage(config, rt, storage.as_ref(), may_migrate)
}

/// [`sync`] of the repository in `storage` (opened from `config`'s `[repository]`, or that wrapped: tests count
/// its requests), into `config`'s catalog.
///
/// Reads: the listings of `backups/`, `wal/`, `data/`, `packs/`, `maps/`, `index/` and `dumps/`, the cluster
/// record, the keep marks and the history files; every manifest (with its file maps) and, for format 2, the
/// block-map nodes and pack indexes only when, since the last full read, a manifest was added, removed or written
/// again, an object under `data/`, `maps/` or `index/` was removed (or added while an object the backups
/// reference was missing), or the catalog's rows no longer match what the last sync recorded; a dump's manifest
/// only when the dump is new or its object changed. Errors as [`sync`].
pub fn sync_storage(
    config: &Config,
    rt: &tokio::runtime::Runtime,
    storage: &dyn Storage,
    may_migrate: bool,
) -> Result<(SyncReport, Option<catalog::SchemaChange>), Error> {
    rt.block_on(store::require_existing(storage))?;
    // The schema first: an implicit update that may not migrate it reads nothing more.
    let mut c = super::open(config, rt, storage)?;
    let change = c.prepare_schema(may_migrate)?;
    let policy = Policy::resolve(&config.retention, None)?;
    // From reading the catalog's rows and the listings to the commit, under the catalog lock: a sync that read
    // earlier must not commit its older picture over a newer one (it waits for the other sync instead).
    let report = c.locked(|c| mirror(c, config, rt, storage, &policy))?;
    Ok((report, change))
}

/// Read what the catalog holds for `storage`'s repository and what changed in it since, then write the
/// difference. Call it holding the catalog lock ([`catalog::Catalog::locked`]).
fn mirror(
    c: &mut catalog::Catalog,
    config: &Config,
    rt: &tokio::runtime::Runtime,
    storage: &dyn Storage,
    policy: &Policy,
) -> Result<SyncReport, Error> {
    let started = std::time::Instant::now();
    let ms = |since: std::time::Instant| u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
    let clock = crate::verify::clock_from_config(config, std::time::SystemTime::now());
    let repository = &storage.to_string();
    let stored = c.stored(repository)?;
    let listings = rt.block_on(Listings::read(storage))?;
    let Mirrored { status, backup_inputs, is_complete } =
        rt.block_on(backups_status(storage, &clock, policy, &listings, &stored))?;
    let backup_rows =
        reuse::backup_rows_digest(status.backups.iter().map(|b| (&b.manifest, &b.manifest_digest, &b.sizes)));
    // What `backupctl status` shows, so that `status --from-catalog` gives the same answer.
    let (document, backups) = super::super::status::documents(&status, repository);
    let (dumps, dump_states) = rt.block_on(dumps(storage, &stored))?;
    let state = SyncState { version: SYNC_STATE_VERSION, backup_inputs, is_complete, backup_rows, dumps: dump_states };
    let input = SyncInput { repository, status: &status, document, backups: &backups, dumps: &dumps, state: &state };
    tracing::debug!(elapsed_ms = ms(started), "catalog sync: repository read");
    let writing = std::time::Instant::now();
    let report = catalog::sync(c, &input)?;
    tracing::debug!(elapsed_ms = ms(writing), rows = report.total(), "catalog sync: catalog written");
    Ok(report)
}

/// The status a sync mirrors, and what it records about the backups' inputs.
struct Mirrored {
    /// The status, its manifests without their file entries.
    status: Status,
    /// What the backups' manifests and sizes were computed from.
    backup_inputs: BackupInputs,
    /// Whether every object the backups reference was found then.
    is_complete: bool,
}

/// The status of the repository whose `listings` were just made: with the backups the last sync stored when they
/// still stand ([`reuse::known_backups`]; what it recorded about them is kept), else with every listed manifest
/// read and the format-2 unique sizes computed. Either way the manifests are left without their file entries
/// (nothing after this needs them).
async fn backups_status(
    storage: &dyn Storage,
    clock: &Clock,
    policy: &Policy,
    listings: &Listings,
    stored: &Stored,
) -> Result<Mirrored, Error> {
    if let (Some(known), Some(state)) = (reuse::known_backups(stored, listings), stored.state.as_ref()) {
        tracing::debug!(backups = known.len(), "catalog sync: no backup changed; manifests not read");
        let status = status::collect_with(storage, clock, policy, listings, Backups::Known(known)).await?;
        return Ok(Mirrored { status, backup_inputs: state.backup_inputs.clone(), is_complete: state.is_complete });
    }
    let listed = listings.backup_ids();
    tracing::debug!(backups = listed.len(), "catalog sync: reading every manifest");
    let (loaded, unusable) = store::manifests_with_digests_of(storage, listed).await?;
    let mut s = status::collect_with(storage, clock, policy, listings, Backups::Read { loaded, unusable }).await?;
    let cost = status::unique_format2_listed(storage, &mut s.backups, &listings.maps, &listings.index).await?;
    let is_complete = s.unusable.is_empty()
        && cost.nodes_missing == 0
        && cost.frames_unlocated == 0
        && s.backups.iter().all(|b| b.sizes.objects_missing == 0);
    for b in &mut s.backups {
        b.manifest.files = Vec::new();
    }
    Ok(Mirrored { status: s, backup_inputs: listings.backup_inputs(), is_complete })
}

/// The repository's readable dumps, oldest first, with what the sync records of each: the document the last sync
/// stored when the dump's manifest object is the same and its row as written ([`reuse::known_dump`]), else its
/// manifest read now. A damaged manifest is left out, as `status` leaves it out (with a warning there).
async fn dumps(
    storage: &dyn Storage,
    stored: &Stored,
) -> Result<(Vec<catalog::Dump>, BTreeMap<String, DumpState>), Error> {
    let mut listed: Vec<(dump::DumpId, String)> = storage
        .list(dump::DUMPS_PREFIX)
        .await?
        .iter()
        .filter_map(|m| dump::DumpId::from_manifest_key(m.key.as_str()).map(|id| (id, reuse::object_identity(m))))
        .collect();
    listed.sort();
    let (mut out, mut states) = (Vec::new(), BTreeMap::new());
    for (id, object) in listed {
        let key = id.to_string();
        let document = match reuse::known_dump(stored, &key, &object) {
            Some(d) => d,
            None => match dump::load_manifest(storage, &id).await {
                Ok(Some(m)) => super::super::status::dumps::json(&m),
                Ok(None) => continue,
                Err(e @ store::Error::Storage(_)) => return Err(e.into()),
                Err(_) => continue,
            },
        };
        states.insert(key, DumpState { object, document: reuse::document_digest(&document) });
        out.push(catalog::Dump::from_document(document));
    }
    Ok((out, states))
}
