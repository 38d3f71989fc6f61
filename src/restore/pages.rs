//! Tell the operator, before a restore writes anything, which pages the backup recorded as failing their data
//! checksum when it was taken (`crate::backup::pages`): the restored cluster holds them as they were read.

use crate::repository::backup::Manifest;

/// Blocks listed per file.
const BLOCKS_SHOWN: usize = 10;

/// One warning line per file with corrupt pages recorded in `manifest`, then one in sum; nothing if none.
pub fn warn_recorded(manifest: &Manifest) {
    let corrupt = manifest.corrupt_pages();
    if corrupt.is_empty() {
        return;
    }
    for c in corrupt {
        tracing::warn!("backup {} holds pages that failed their checksum: {}", manifest.id, c.describe(BLOCKS_SHOWN));
    }
    let pages: usize = corrupt.iter().map(|c| c.blocks.len()).sum();
    let files = match corrupt.len() {
        1 => "1 file".to_owned(),
        n => format!("{n} files"),
    };
    tracing::warn!(
        concat!(
            "backup {} holds {pages} corrupt pages in {files}, restored as they were read (",
            doc!("operations.md"),
            ", \"Page checksum failures\")"
        ),
        manifest.id,
        pages = pages,
        files = files,
    );
}
