//! A format-2 backup's unique size ([`unique_format2`]): it needs the block-map nodes and the pack indexes.

use std::collections::HashMap;

use super::BackupStatus;
use crate::Error;
use crate::repository::backup::ObjectId;
use crate::repository::store::Error as StoreError;
use crate::storage::{ObjectMeta, Storage};

/// Nodes read at a time by [`unique_format2`].
const NODE_LOADS: usize = 16;

/// What [`unique_format2`] read, and what it did not find.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UniqueCost {
    /// Distinct block-map nodes read (GETs).
    pub nodes_read: u64,
    /// Nodes named by a manifest but not in the repository (not listed, or gone when read; `verify` reports them).
    pub nodes_missing: u64,
    /// Distinct frames named by a backup (directly or through a node read) that no pack index names: their
    /// stored length is unknown and counts for no backup.
    pub frames_unlocated: u64,
}

/// Fill in `sizes.unique` of every format-2 backup of `backups` (all of the repository's: a backup's unique size
/// depends on every other one): the stored bytes of the frames it names (directly, or through its nodes: whole,
/// base and delta frames) that no other backup names, plus those of its nodes and file maps no other backup names.
///
/// That is what `delete` of the backup then `gc` frees, approximately: gc deletes a pack when none of its frames
/// is live and compacts it when less than half of its bytes are (frames are stored back to back, so a pack's
/// bytes are its frames' stored lengths); a dead frame in a pack that stays more than half live is freed only by a
/// later gc, once more of that pack has died. So the repository shrinks by at most this much at once (plus the
/// index objects gc rewrites, a few KiB), and by this much once those packs are compacted. Frames no backup names
/// at all (garbage gc has not swept yet) count for no backup.
///
/// Cost: one listing of `maps/` and `index/`, every index object, and each distinct node of every backup once
/// (16 at a time; nodes are shared between backups, so a repository of daily backups of a cluster that barely
/// changes reads little more than one backup's nodes). Memory: the frame index and, per distinct node, its frame
/// table. Errors: storage errors, a damaged node or index object.
pub async fn unique_format2(storage: &dyn Storage, backups: &mut [BackupStatus]) -> Result<UniqueCost, Error> {
    if !backups.iter().any(|b| b.manifest.repository_format >= 2) {
        return Ok(UniqueCost::default());
    }
    let maps = storage.list(crate::repository::blockmap::MAPS_PREFIX).await?;
    let index = storage.list(crate::repository::packs::INDEX_PREFIX).await?;
    unique_format2_listed(storage, backups, &maps, &index).await
}

/// [`unique_format2`] with the listings of `maps/` and `index/` already made: only the index objects of `index`
/// are read (one gone by now is skipped), and a node `maps` does not list is not. Errors as [`unique_format2`].
pub async fn unique_format2_listed(
    storage: &dyn Storage,
    backups: &mut [BackupStatus],
    maps: &[ObjectMeta],
    index: &[ObjectMeta],
) -> Result<UniqueCost, Error> {
    use crate::repository::{blockmap, packs, packstore};
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    use std::collections::HashSet;

    let format2: Vec<usize> = (0..backups.len()).filter(|&i| backups[i].manifest.repository_format >= 2).collect();
    let mut cost = UniqueCost::default();
    if format2.is_empty() {
        return Ok(cost);
    }
    let node_sizes: HashMap<ObjectId, u64> =
        maps.iter().filter_map(|m| blockmap::node_from_key(m.key.as_str()).map(|id| (id, m.size))).collect();
    let wanted: HashSet<ObjectId> =
        format2.iter().flat_map(|&i| backups[i].manifest.files.iter().flat_map(|f| f.nodes.iter().copied())).collect();
    // Each distinct node once; only its frame table is kept.
    let frames_of: HashMap<ObjectId, Vec<ObjectId>> =
        stream::iter(wanted.iter().filter(|n| node_sizes.contains_key(*n)).map(|id| async move {
            match packstore::load_node(storage, id).await {
                Ok(node) => Ok(Some((*id, node.frames))),
                Err(StoreError::Storage(e)) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        }))
        .buffer_unordered(NODE_LOADS)
        .try_filter_map(|n| async move { Ok(n) })
        .try_collect()
        .await?;
    cost.nodes_read = frames_of.len() as u64;
    cost.nodes_missing = wanted.len() as u64 - cost.nodes_read;
    let index_ids: Vec<ObjectId> = index.iter().filter_map(|m| packs::index_from_key(m.key.as_str())).collect();
    let index = packstore::FrameIndex::load_listed(storage, &index_ids).await?;

    // Per frame and per node: how many backups name it, and the last one that did.
    let mut frame_users: HashMap<ObjectId, (u32, usize)> = HashMap::new();
    let mut node_users: HashMap<ObjectId, (u32, usize)> = HashMap::new();
    for &i in &format2 {
        let files = &backups[i].manifest.files;
        // Its nodes and its file maps (both under `maps/`; a file map names no frame itself).
        let maps = backups[i].manifest.file_maps.iter().map(|r| r.id);
        let nodes: HashSet<ObjectId> = files.iter().flat_map(|f| f.nodes.iter().copied()).chain(maps).collect();
        let frames: HashSet<ObjectId> = files
            .iter()
            .flat_map(|f| f.pieces.iter().map(|p| p.object))
            .chain(nodes.iter().filter_map(|n| frames_of.get(n)).flatten().copied())
            .collect();
        for (set, users) in [(&frames, &mut frame_users), (&nodes, &mut node_users)] {
            for id in set {
                let e = users.entry(*id).or_insert((0, i));
                e.0 += 1;
                e.1 = i;
            }
        }
    }
    cost.frames_unlocated = frame_users.keys().filter(|id| index.get(id).is_none()).count() as u64;
    let mut unique: HashMap<usize, u64> = format2.iter().map(|&i| (i, 0)).collect();
    for (id, (count, owner)) in &frame_users {
        if *count == 1
            && let (Some(u), Some((_, loc))) = (unique.get_mut(owner), index.get(id))
        {
            *u += u64::from(loc.stored_length);
        }
    }
    for (id, (count, owner)) in &node_users {
        if *count == 1
            && let (Some(u), Some(size)) = (unique.get_mut(owner), node_sizes.get(id))
        {
            *u += size;
        }
    }
    for (i, u) in unique {
        backups[i].sizes.unique = Some(u);
    }
    Ok(cost)
}
