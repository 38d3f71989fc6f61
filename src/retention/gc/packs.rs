//! gc on repository format 2 (docs/design/format2.md, "Reclaiming space"): frames are the unit of liveness, packs
//! the unit of deletion, and packs that are mostly garbage are compacted.
//!
//! Invariants (each holds after every single storage call, so a `kill -9` anywhere leaves every backup
//! restorable, and a rerun finishes the work):
//! - Every live frame (named by a manifest's small-file piece or by a node a manifest names) keeps at least one
//!   index entry whose pack exists: new packs are put (create-only) and indexed by a new index object before any
//!   index object naming an old pack is replaced (the replacement created first, then the old one deleted), and
//!   only then, after a last look at the leases, are the old packs deleted.
//! - A pack is deleted or compacted only if it is older than the grace period; a pack no index names (a killed
//!   backup's or a killed compaction's) holds no frame a reader can find and is deleted once past the grace period.
//! - Copied frames are verified (size and blake3) before they are written again; a damaged one stops gc.
//! - Block-map nodes no manifest names are deleted once past the grace period.
//!
//! Each live frame is counted in one pack only (its *owner*: the copy in the pack with the highest share of live
//! bytes), so duplicates left by a killed compaction are freed by the next run instead of being copied again.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use super::sweep::{GcOptions, GcReport, Removed, RemovedKind};
use super::{BLOCKING, DELETE_PARALLEL, Error, Marked, is_older_than};
use crate::repository::backup::ObjectId;
use crate::repository::blockmap::{MAPS_PREFIX, node_from_key, node_key};
use crate::repository::lease::{self, Lease};
use crate::repository::packs::{
    FrameLocation, INDEX_PREFIX, PACKS_PREFIX, PackBuilder, PackEntry, PackIndex, index_from_key, index_key,
    pack_from_key, pack_key,
};
use crate::repository::packstore::{self, merge_reads};
use crate::repository::store;
use crate::storage::{self, Key, ObjectMeta, PutMode, Storage};

/// Stored size (bytes) at which a compaction's new pack is put, as base-backup's (docs/design/format2.md).
const PACK_SIZE: usize = 16 << 20;

/// Frames of one pack closer than this (bytes) are copied with one ranged read.
const MERGE_GAP: u64 = 1 << 20;

/// Most bytes one ranged read asks for.
const MAX_READ: u64 = 16 << 20;

/// Ranged reads (and node or index loads) in flight.
const READ_PARALLEL: usize = 4;

/// Nodes or index objects loaded at a time.
const LOAD_PARALLEL: usize = 16;

/// zstd level of the index objects gc writes (small; the level hardly matters).
const INDEX_LEVEL: i32 = 3;

/// Deletes per step; the lease is renewed between steps.
const STEP: usize = 1000;

/// What gc did to a format-2 repository (all zero on a format-1 one). Requests and bytes are what it cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PackReport {
    /// Packs listed.
    pub packs: u64,
    /// Their stored bytes.
    pub pack_bytes: u64,
    /// Distinct live frames (named by a manifest directly or through a node).
    pub frames_live: u64,
    /// Live frames found in no pack that exists (damage: run `backupctl verify`); never a reason to delete.
    pub frames_missing: u64,
    /// Block-map nodes read to mark (each distinct node once).
    pub nodes_read: u64,
    /// Index objects read.
    pub index_read: u64,
    /// Packs deleted because no live frame is in them (would be, in a dry run).
    pub packs_deleted: u64,
    /// Packs compacted: their live frames copied into new packs, then deleted.
    pub packs_compacted: u64,
    /// Packs left alone because they are younger than the grace period.
    pub packs_in_grace: u64,
    /// Frames copied by compaction.
    pub frames_copied: u64,
    /// Ranged reads of packs made to copy them.
    pub read_requests: u64,
    /// Stored bytes those reads returned.
    pub bytes_read: u64,
    /// New packs written by compaction.
    pub packs_written: u64,
    /// New index objects written (the compaction's, and replacements of index objects that named deleted packs).
    pub index_written: u64,
    /// Stored bytes of every object written (packs and index objects).
    pub bytes_written: u64,
    /// Index objects deleted (replaced, or naming only deleted packs).
    pub index_deleted: u64,
    /// Block-map nodes deleted (named by no manifest).
    pub nodes_deleted: u64,
    /// Stored bytes of every object deleted (packs, index objects, nodes).
    pub bytes_deleted: u64,
}

/// What to do with the packs and index objects (pure: [`plan`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PackPlan {
    /// Packs to delete outright: no live frame is owned by them, or no index names them.
    pub delete: Vec<ObjectId>,
    /// Packs to compact (their owned live frames are copied first).
    pub compact: Vec<ObjectId>,
    /// The frames to copy: (pack, location), by pack and offset.
    pub copy: Vec<(ObjectId, FrameLocation)>,
    /// Index objects to replace: the old id and its content without the removed packs (`None`: nothing left).
    pub rewrite: Vec<(ObjectId, Option<PackIndex>)>,
    /// Distinct live frames.
    pub frames_live: u64,
    /// Live frames in no listed pack.
    pub frames_missing: u64,
    /// Packs younger than the grace period (left alone).
    pub in_grace: u64,
}

/// Decide, from the live frames, the pack listing (`id → (stored bytes, older than the grace period)`) and every
/// index object, which packs go, which are compacted, and which index objects are replaced. See the module doc.
pub(crate) fn plan(
    live: &HashSet<ObjectId>,
    packs: &HashMap<ObjectId, (u64, bool)>,
    indexes: &[(ObjectId, PackIndex)],
) -> PackPlan {
    // Every listed pack's frames (union over index objects), then each live frame's copies.
    let mut frames_of: BTreeMap<ObjectId, BTreeMap<ObjectId, FrameLocation>> = BTreeMap::new();
    for (_, index) in indexes {
        for entry in index.packs.iter().filter(|e| packs.contains_key(&e.pack)) {
            let frames = frames_of.entry(entry.pack).or_default();
            for f in &entry.frames {
                frames.entry(f.id).or_insert(*f);
            }
        }
    }
    let share = |pack: &ObjectId, live_bytes: u64| {
        let size = packs.get(pack).map_or(1, |(s, _)| (*s).max(1));
        live_bytes as f64 / size as f64
    };
    let mut naive: HashMap<ObjectId, u64> = HashMap::new();
    let mut copies: HashMap<ObjectId, Vec<ObjectId>> = HashMap::new();
    for (pack, frames) in &frames_of {
        for (id, loc) in frames.iter().filter(|(id, _)| live.contains(*id)) {
            *naive.entry(*pack).or_default() += u64::from(loc.stored_length);
            copies.entry(*id).or_default().push(*pack);
        }
    }
    let mut owned: HashMap<ObjectId, Vec<FrameLocation>> = HashMap::new();
    for (id, packs_with) in &copies {
        let owner = packs_with.iter().max_by(|a, b| {
            let (sa, sb) = (share(a, naive[*a]), share(b, naive[*b]));
            sa.total_cmp(&sb).then_with(|| b.cmp(a))
        });
        if let Some(owner) = owner
            && let Some(loc) = frames_of.get(owner).and_then(|f| f.get(id))
        {
            owned.entry(*owner).or_default().push(*loc);
        }
    }
    let mut out = PackPlan {
        frames_live: live.len() as u64,
        frames_missing: live.iter().filter(|id| !copies.contains_key(*id)).count() as u64,
        ..PackPlan::default()
    };
    let mut listed: Vec<(&ObjectId, &(u64, bool))> = packs.iter().collect();
    listed.sort();
    for (pack, (size, is_old)) in listed {
        if !is_old {
            out.in_grace += 1;
            continue;
        }
        let live_bytes: u64 = owned.get(pack).map_or(0, |l| l.iter().map(|f| u64::from(f.stored_length)).sum());
        if !frames_of.contains_key(pack) || live_bytes == 0 {
            out.delete.push(*pack);
        } else if live_bytes.saturating_mul(2) < *size {
            out.compact.push(*pack);
            let mut locs = owned.get(pack).cloned().unwrap_or_default();
            locs.sort_by_key(|l| l.offset);
            out.copy.extend(locs.into_iter().map(|l| (*pack, l)));
        }
    }
    let removed: HashSet<ObjectId> = out.delete.iter().chain(&out.compact).copied().collect();
    for (id, index) in indexes {
        if index.packs.iter().any(|e| removed.contains(&e.pack)) {
            let rest: Vec<PackEntry> = index.packs.iter().filter(|e| !removed.contains(&e.pack)).cloned().collect();
            out.rewrite.push((*id, (!rest.is_empty()).then_some(PackIndex { packs: rest })));
        }
    }
    out
}

/// The format-2 part of gc, run after the data sweep's lease check: mark through the nodes, plan, compact,
/// replace index objects, look at the leases again, then delete packs, old index objects and unreferenced
/// nodes. In a dry run, only report. Sets `report.deferred` if a base-backup or restore appeared meanwhile
/// (nothing is deleted then; the next run finishes).
pub(super) async fn sweep(
    storage: &dyn Storage,
    marked: &Marked,
    options: &GcOptions,
    lease: Option<&Lease>,
    report: &mut GcReport,
) -> Result<(), Error> {
    let listed = |prefix: &'static str, parse: fn(&str) -> Option<ObjectId>| async move {
        let list = storage.list(prefix).await?;
        Ok::<_, Error>(list.into_iter().filter_map(|m| parse(m.key.as_str()).map(|id| (id, m))).collect::<Vec<_>>())
    };
    let pack_list = listed(PACKS_PREFIX, pack_from_key).await?;
    let node_list = listed(MAPS_PREFIX, node_from_key).await?;
    let index_list = listed(INDEX_PREFIX, index_from_key).await?;
    if pack_list.is_empty() && node_list.is_empty() && index_list.is_empty() && marked.nodes.is_empty() {
        return Ok(());
    }
    let r = &mut report.packs;
    r.packs = pack_list.len() as u64;
    r.pack_bytes = pack_list.iter().map(|(_, m)| m.size).sum();

    let live = mark_nodes(storage, marked, lease, r).await?;
    let indexes: Vec<(ObjectId, PackIndex)> = stream::iter(
        index_list
            .iter()
            .map(|(id, _)| async move { Ok::<_, Error>((*id, packstore::load_index(storage, id).await?)) }),
    )
    .buffered(LOAD_PARALLEL)
    .try_collect()
    .await?;
    r.index_read = indexes.len() as u64;
    let sizes: HashMap<ObjectId, (u64, bool)> = pack_list
        .iter()
        .map(|(id, m)| (*id, (m.size, is_older_than(m.modified, options.grace, options.now))))
        .collect();
    let plan = plan(&live, &sizes, &indexes);
    r.frames_live = plan.frames_live;
    r.frames_missing = plan.frames_missing;
    r.packs_in_grace = plan.in_grace;
    if plan.frames_missing > 0 {
        tracing::warn!(
            frames = plan.frames_missing,
            "live frames are in no pack of the repository; run backupctl verify"
        );
    }
    let index_size: HashMap<ObjectId, u64> = index_list.iter().map(|(id, m)| (*id, m.size)).collect();
    let dead_nodes: Vec<&ObjectMeta> = node_list
        .iter()
        .filter(|(id, m)| {
            !marked.nodes.contains(id)
                && !marked.file_maps.contains(id)
                && is_older_than(m.modified, options.grace, options.now)
        })
        .map(|(_, m)| m)
        .collect();

    // Packs the compaction wrote (or found already written by a killed run: same frames, same name) stay.
    let mut written = HashSet::new();
    if !options.dry_run {
        written = compact(storage, &plan, lease, &mut report.packs).await?;
        for (_, new) in &plan.rewrite {
            if let Some(l) = lease {
                l.renew_if_due(storage).await?;
            }
            if let Some(new) = new {
                let (_, stored) = packstore::save_index(storage, new, INDEX_LEVEL).await?;
                report.packs.index_written += u64::from(stored > 0);
                report.packs.bytes_written += stored;
            }
        }
        // A base-backup or restore that took its lease since gc last looked sees our lease and waits (backup) or
        // may hold index objects and packs it listed before the replacements: leave every deletion to a later run.
        if let Some(l) = lease {
            l.renew_if_due(storage).await?;
            let live =
                lease::live_leases(storage, &BLOCKING, Some(l.key()), l.backend_now(), options.now, false).await?;
            report.deferred = super::sweep::blocking(&live);
            if report.deferred.is_some() {
                return Ok(());
            }
        }
    }

    // Deletions in three phases, each finished before the next starts: old index objects (their replacements
    // exist), then the packs no index names any more, then nodes.
    let mut phases: [Vec<(Key, RemovedKind, u64)>; 3] = Default::default();
    for (old, _) in &plan.rewrite {
        phases[0].push((index_key(old), RemovedKind::Index, index_size.get(old).copied().unwrap_or(0)));
    }
    for pack in plan.compact.iter().chain(&plan.delete).filter(|p| !written.contains(*p)) {
        phases[1].push((pack_key(pack), RemovedKind::Pack, sizes.get(pack).map_or(0, |(s, _)| *s)));
    }
    phases[2].extend(dead_nodes.iter().map(|m| (m.key.clone(), RemovedKind::Node, m.size)));
    for step in phases.iter().flat_map(|items| items.chunks(STEP)) {
        if let Some(l) = lease {
            l.renew_if_due(storage).await?;
        }
        if !options.dry_run {
            let keys: Vec<Key> = step.iter().map(|(k, ..)| k.clone()).collect();
            storage.delete_many(&keys, DELETE_PARALLEL).await?;
        }
        for (key, kind, bytes) in step {
            let r = &mut report.packs;
            match kind {
                RemovedKind::Index => r.index_deleted += 1,
                RemovedKind::Node => r.nodes_deleted += 1,
                _ => {}
            }
            r.bytes_deleted += bytes;
            report.objects_removed += 1;
            report.bytes_removed += bytes;
            report.removed.push(Removed { kind: kind.clone(), name: key.to_string(), bytes: *bytes });
        }
    }
    report.packs.packs_compacted = plan.compact.len() as u64;
    report.packs.packs_deleted = plan.delete.iter().filter(|p| !written.contains(*p)).count() as u64;
    Ok(())
}

/// The live frames: the small-file frames of `marked` and every frame of every node it names (each distinct node
/// read once, [`LOAD_PARALLEL`] at a time). A node that cannot be read stops gc ([`Error::UnreadableNode`]).
async fn mark_nodes(
    storage: &dyn Storage,
    marked: &Marked,
    lease: Option<&Lease>,
    report: &mut PackReport,
) -> Result<HashSet<ObjectId>, Error> {
    let mut live = marked.frames.clone();
    let mut ids: Vec<ObjectId> = marked.nodes.iter().copied().collect();
    ids.sort();
    for chunk in ids.chunks(256) {
        if let Some(l) = lease {
            l.renew_if_due(storage).await?;
        }
        let mut loads =
            stream::iter(chunk.iter().map(|id| async move { (id, packstore::load_node(storage, id).await) }))
                .buffer_unordered(LOAD_PARALLEL);
        while let Some((id, node)) = loads.next().await {
            match node {
                Ok(node) => {
                    report.nodes_read += 1;
                    live.extend(node.frames);
                }
                Err(store::Error::Storage(e)) if !e.is_not_found() => return Err(Error::Store(e.into())),
                Err(source) => {
                    return Err(Error::UnreadableNode {
                        id: marked.node_users.get(id).map(ToString::to_string).unwrap_or_default(),
                        node: node_key(id),
                        backend: storage.to_string(),
                        source,
                    });
                }
            }
        }
    }
    Ok(live)
}

/// Copy the live frames of the packs to compact into new packs (verified, create-only), then write one index
/// object for them. Returns the new packs.
async fn compact(
    storage: &dyn Storage,
    plan: &PackPlan,
    lease: Option<&Lease>,
    report: &mut PackReport,
) -> Result<HashSet<ObjectId>, Error> {
    if plan.copy.is_empty() {
        return Ok(HashSet::new());
    }
    let reads = merge_reads(plan.copy.iter().map(|(p, l)| (*p, *l, ())).collect(), MERGE_GAP, MAX_READ);
    let mut fetched = stream::iter(reads.into_iter().map(|r| async move {
        let bytes = storage.get_range(&pack_key(&r.pack), r.start, r.end - r.start).await?;
        Ok::<_, Error>((r, bytes))
    }))
    .buffered(READ_PARALLEL);
    let mut builder = PackBuilder::default();
    let mut entries: Vec<PackEntry> = Vec::new();
    while let Some(done) = fetched.next().await {
        let (read, bytes) = done?;
        report.read_requests += 1;
        report.bytes_read += bytes.len() as u64;
        let key = pack_key(&read.pack);
        let checked = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(read.frames.len());
            for (loc, ()) in &read.frames {
                let slice = read.slice(&bytes, loc);
                packstore::decode_frame(&key, slice, loc)?;
                out.push((*loc, Bytes::copy_from_slice(slice)));
            }
            Ok::<_, store::Error>(out)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        for (loc, slice) in checked {
            builder.push(loc.id, &slice, loc.raw_length);
            report.frames_copied += 1;
            if builder.len() >= PACK_SIZE {
                entries.push(put_pack(storage, std::mem::take(&mut builder), report).await?);
                if let Some(l) = lease {
                    l.renew_if_due(storage).await?;
                }
            }
        }
    }
    if !builder.is_empty() {
        entries.push(put_pack(storage, builder, report).await?);
    }
    let new = entries.iter().map(|e| e.pack).collect();
    let (_, stored) = packstore::save_index(storage, &PackIndex { packs: entries }, INDEX_LEVEL).await?;
    report.index_written += u64::from(stored > 0);
    report.bytes_written += stored;
    Ok(new)
}

/// Seal and put one pack create-only (an existing pack of that name has the same bytes).
async fn put_pack(storage: &dyn Storage, builder: PackBuilder, report: &mut PackReport) -> Result<PackEntry, Error> {
    let (bytes, entry) = builder.seal();
    let len = bytes.len() as u64;
    match storage.put(&pack_key(&entry.pack), Bytes::from(bytes), PutMode::Create).await {
        Ok(()) => {
            report.packs_written += 1;
            report.bytes_written += len;
        }
        Err(storage::Error::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(entry)
}

#[cfg(test)]
mod tests;
