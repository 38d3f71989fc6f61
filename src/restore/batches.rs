//! Format 2: split a restore's block-mapped files into batches of at most [`NODES_PER_BATCH`] block-map nodes
//! (docs/design/format2.md, "Reading a backup back"), so that pitr-restore's memory does not grow with the
//! cluster. Pure.
//!
//! A decoded node costs about 450 KiB (16,384 blocks × an 8-byte digest and a 20-byte source), and the write plan
//! of its blocks up to about 2.3 MiB more when every block is a scattered delta. Loading every node of a 1 TB
//! cluster (8,192 nodes) at once would take 3.6 GiB before a byte is written; a batch of 32 nodes (4 GiB of
//! files) is at most about 90 MiB, typically 15 MiB.
//!
//! Invariants: every node of every file is in exactly one batch, in file order and then node order; no batch
//! holds more than `max` nodes (a file with more nodes than that is split between batches: each node covers its
//! own block range, so the parts are planned and written independently); a delta block is in the same node as
//! its base (same block), so both passes of a block happen in one batch.

use std::ops::Range;

use crate::repository::filemap::FileMapRef;

/// File entries read and written at a time by a restore of a manifest with file maps (format 4): about 100 bytes
/// each decoded, a few MiB per batch.
pub const ENTRIES_PER_BATCH: u64 = 32_768;

/// Group file maps, in order, into batches of at most `max` entries (a map with more is a batch of its own).
pub fn map_batches(maps: &[FileMapRef], max: u64) -> Vec<Vec<FileMapRef>> {
    let mut out: Vec<Vec<FileMapRef>> = Vec::new();
    let mut in_last = 0;
    for m in maps {
        match out.last_mut() {
            Some(last) if in_last + m.files <= max => {
                last.push(m.clone());
                in_last += m.files;
            }
            _ => {
                out.push(vec![m.clone()]);
                in_last = m.files;
            }
        }
    }
    out
}

/// Nodes loaded and planned at a time by a restore: 32 nodes of 128 MiB are 4 GiB of files.
pub const NODES_PER_BATCH: usize = 32;

/// One part of a batch: the nodes `nodes` (indices into the file's node list) of file `file` (an index into the
/// list given to [`plan_batches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Index of the file.
    pub file: usize,
    /// Range of its node list.
    pub nodes: Range<usize>,
}

/// Group the nodes of files with `node_counts[i]` nodes each into batches of at most `max` nodes (`max` 0 is
/// taken as 1). Files without nodes are left out.
pub fn plan_batches(node_counts: &[usize], max: usize) -> Vec<Vec<Part>> {
    let max = max.max(1);
    let mut batches: Vec<Vec<Part>> = Vec::new();
    let mut current: Vec<Part> = Vec::new();
    let mut in_current = 0usize;
    for (file, &count) in node_counts.iter().enumerate() {
        let mut start = 0;
        while start < count {
            if in_current == max {
                batches.push(std::mem::take(&mut current));
                in_current = 0;
            }
            let take = (count - start).min(max - in_current);
            current.push(Part { file, nodes: start..start + take });
            in_current += take;
            start += take;
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(counts: &[usize], max: usize) -> Vec<Vec<Part>> {
        let batches = plan_batches(counts, max);
        let mut seen: Vec<Vec<usize>> = counts.iter().map(|_| Vec::new()).collect();
        for b in &batches {
            let n: usize = b.iter().map(|p| p.nodes.len()).sum();
            assert!(n >= 1 && n <= max.max(1), "batch of {n} nodes with max {max}: {b:?}");
            for p in b {
                assert!(!p.nodes.is_empty());
                seen[p.file].extend(p.nodes.clone());
            }
        }
        for (i, c) in counts.iter().enumerate() {
            assert_eq!(seen[i], (0..*c).collect::<Vec<_>>(), "file {i}: every node once, in order");
        }
        batches
    }

    #[test]
    fn issue_10_restore_batches_bound_the_nodes_in_memory() {
        // A 1 TB cluster: 1000 files of 1 GiB (8 nodes each) and one 24 GiB file; every batch holds at most
        // NODES_PER_BATCH nodes, whatever the cluster's size.
        let mut counts = vec![8; 1000];
        counts.push(192);
        let batches = check(&counts, NODES_PER_BATCH);
        assert_eq!(batches.len(), (8 * 1000 + 192) / NODES_PER_BATCH);
    }

    #[test]
    fn batches_split_large_files_and_skip_empty_ones() {
        for (counts, max) in [
            (vec![], 4),
            (vec![0, 0], 4),
            (vec![3, 0, 5, 1, 9], 4),
            (vec![10], 3),
            (vec![1, 1, 1, 1, 1], 2),
            (vec![2, 2], 0),
        ] {
            check(&counts, max);
        }
        assert_eq!(
            plan_batches(&[3, 0, 2], 4),
            vec![
                vec![Part { file: 0, nodes: 0..3 }, Part { file: 2, nodes: 0..1 }],
                vec![Part { file: 2, nodes: 1..2 }]
            ]
        );
    }
}
