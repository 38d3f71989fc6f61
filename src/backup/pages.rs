//! Verify the data checksums of the pages a base backup reads, when the cluster has them, and record the pages
//! that fail (issue 10; the rules are PostgreSQL's own base backup's, `src/backend/backup/basebackup.c`:
//! `is_checksummed_file`, `verify_page_checksum`, and pgBackRest's `src/command/backup/pageChecksum.c`).
//!
//! Rules:
//! - Only relation files are verified: `global/<relfilenode>`, `base/<db>/<relfilenode>` and
//!   `pg_tblspc/<oid>/<version dir>/<db>/<relfilenode>`, main fork or `_fsm`/`_vm`/`_init`, with their numbered
//!   segments `.1`, `.2`, ... ([`relation_segment`]). `pg_control`, `pg_filenode.map`, `pg_internal.init`,
//!   `PG_VERSION`, temporary relations (`t<backend>_<relfilenode>`) and everything outside those directories are
//!   not pages with checksums.
//! - A page's checksum is computed with its block number in the whole relation: the segment number times the
//!   blocks per segment, plus its block in the file ([`checksum::page_checksum`]).
//! - A page passes if it is all zeros (the relation was extended and nothing was written to it yet), if its
//!   `pd_lsn` is at or after the backup's start LSN (it was written during the backup and may be torn; recovery
//!   rewrites it from the full-page image in the WAL), or if its checksum matches.
//! - A page that fails, or is cut short by the end of what was read, is read again once on its own (a torn read
//!   of a page being written). If it fails again, or the file still ends inside it, it is corrupt; if the file no
//!   longer reaches it (truncated meanwhile), it is not. The backup keeps what it read first: a page rewritten
//!   meanwhile is restored by WAL replay.
//! - Corrupt pages are recorded as (file, block within the file) in the manifest ([`PageChecksums`]); each such
//!   file gets one warning line, and a summary line follows ([`report`]).

pub mod checksum;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;
use crate::pg::PageLayout;
use crate::repository::backup::{CorruptPages, FileEntry, ManifestPath, PageChecksums};
use crate::wal::Lsn;

/// Blocks listed per file in a warning line.
const BLOCKS_SHOWN: usize = 10;

/// Files named in the error of `--fail-on-checksum-error`.
const FILES_SHOWN: usize = 5;

/// The pages of a backup failed verification and `--fail-on-checksum-error` (`[backup] fail_on_checksum_error`)
/// asked for the backup to fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {} of {} fail their checksum: {}", pages, if *pages == 1 { "page" } else { "pages" }, data_directory.display(), shown(files))]
pub struct ChecksumFailures {
    /// The data directory backed up.
    pub data_directory: PathBuf,
    /// Corrupt pages in all.
    pub pages: u64,
    /// The files and their corrupt blocks, in path order.
    pub files: Vec<CorruptPages>,
}

fn shown(files: &[CorruptPages]) -> String {
    let mut parts: Vec<String> = files.iter().take(FILES_SHOWN).map(|c| c.describe(BLOCKS_SHOWN)).collect();
    if files.len() > FILES_SHOWN {
        parts.push(format!("and {} more files", files.len() - FILES_SHOWN));
    }
    parts.join("; ")
}

/// The segment number of a relation file (see the module doc), or `None` for a file that holds no checksummed
/// pages. `path` is relative to the data directory.
pub fn relation_segment(path: &ManifestPath) -> Option<u32> {
    let parts: Vec<&str> = path.components().map(std::str::from_utf8).collect::<Result<_, _>>().ok()?;
    let is_oid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let name = match parts[..] {
        ["global", name] => name,
        ["base", db, name] if is_oid(db) => name,
        ["pg_tblspc", ts, version, db, name] if is_oid(ts) && version.starts_with("PG_") && is_oid(db) => name,
        _ => return None,
    };
    let (stem, segment) = match name.split_once('.') {
        Some((stem, seg)) if is_oid(seg) => (stem, seg.parse().ok()?),
        Some(_) => return None,
        None => (name, 0),
    };
    let node = match stem.split_once('_') {
        Some((node, "fsm" | "vm" | "init")) => node,
        Some(_) => return None,
        None => stem,
    };
    is_oid(node).then_some(segment)
}

/// What verifying a run of pages found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Pages whose checksum was computed.
    pub pages_verified: u64,
    /// Blocks (within the file) that failed or were cut short, ascending.
    pub failed: Vec<u32>,
}

/// Verify the pages that start in `data`, read at byte `offset` of segment `segment` of a relation file, against
/// the rules of the module doc (without reading anything again). A page that starts in `data` but does not end
/// in it is listed as failed, to be read whole ([`PageVerifier::check`] does).
pub fn verify_pages(layout: &PageLayout, segment: u32, offset: u64, data: &[u8], start_lsn: Lsn) -> Verified {
    let bs = u64::from(layout.block_size);
    let mut out = Verified::default();
    if bs == 0 {
        return out;
    }
    let mut block = offset.div_ceil(bs);
    // Where the first page that starts in `data` starts in it.
    let mut at = block * bs - offset;
    while at < data.len() as u64 {
        // `at` is below `data.len()`, so it fits in usize.
        let start = at as usize;
        let page = &data[start..data.len().min(start.saturating_add(bs as usize))];
        match verdict(layout, segment, block, page, start_lsn) {
            Verdict::Passed { is_verified } => out.pages_verified += u64::from(is_verified),
            Verdict::Failed { is_verified } => {
                out.pages_verified += u64::from(is_verified);
                // A file holds at most 2^32 blocks (BlockNumber), and this is a block of the file.
                out.failed.push(block as u32);
            }
        }
        block += 1;
        at += bs;
    }
    out
}

enum Verdict {
    Passed { is_verified: bool },
    Failed { is_verified: bool },
}

fn verdict(layout: &PageLayout, segment: u32, block: u64, page: &[u8], start_lsn: Lsn) -> Verdict {
    if page.len() as u64 != u64::from(layout.block_size) {
        return Verdict::Failed { is_verified: false };
    }
    if checksum::is_all_zero(page) {
        return Verdict::Passed { is_verified: false };
    }
    if checksum::page_lsn(page).is_some_and(|lsn| lsn >= start_lsn) {
        return Verdict::Passed { is_verified: false };
    }
    // BlockNumber arithmetic is 32-bit in PostgreSQL (md.c): the relation's block number.
    let relation_block = (u64::from(segment) * u64::from(layout.blocks_per_segment) + block) as u32;
    let is_valid =
        checksum::page_checksum(page, relation_block).is_some_and(|c| Some(c) == checksum::stored_checksum(page));
    if is_valid { Verdict::Passed { is_verified: true } } else { Verdict::Failed { is_verified: true } }
}

/// Verifies the pages of the relation files a backup reads (from any number of threads) and collects the corrupt
/// ones. Disabled (verifies nothing) when the cluster has no data checksums.
#[derive(Debug)]
pub struct PageVerifier {
    rules: Option<(PageLayout, Lsn)>,
    corrupt: Mutex<BTreeMap<ManifestPath, BTreeSet<u32>>>,
    pages_verified: AtomicU64,
}

impl PageVerifier {
    /// A verifier for a backup that started at `start_lsn` of a cluster laid out as `layout`; disabled if the
    /// cluster has no data checksums.
    pub fn new(layout: PageLayout, start_lsn: Lsn) -> Self {
        Self {
            rules: layout.has_checksums.then_some((layout, start_lsn)),
            corrupt: Mutex::default(),
            pages_verified: AtomicU64::new(0),
        }
    }

    /// A verifier that verifies nothing.
    pub fn disabled() -> Self {
        Self { rules: None, corrupt: Mutex::default(), pages_verified: AtomicU64::new(0) }
    }

    /// Verify `data` (`None`: the file is gone), read at byte `offset` of the file `abs` whose manifest path is
    /// `rel`; pages that fail are read again once from `abs` (module doc). Blocking file I/O and CPU work: call it
    /// where the read happened, off the async threads. Errors: [`Error::ReadSource`] if reading a page again fails
    /// otherwise than by the file being gone.
    pub fn check(&self, rel: &ManifestPath, abs: &Path, offset: u64, data: Option<&[u8]>) -> Result<(), Error> {
        let (Some((layout, start_lsn)), Some(data)) = (&self.rules, data) else { return Ok(()) };
        let Some(segment) = relation_segment(rel) else { return Ok(()) };
        let first = verify_pages(layout, segment, offset, data, *start_lsn);
        self.pages_verified.fetch_add(first.pages_verified, Ordering::Relaxed);
        let mut corrupt = Vec::new();
        for block in first.failed {
            let at = u64::from(block) * u64::from(layout.block_size);
            let page = read_again(abs, at, layout.block_size as usize)?;
            if page.is_empty() {
                continue;
            }
            let again = verify_pages(layout, segment, at, &page, *start_lsn);
            if !again.failed.is_empty() {
                corrupt.push(block);
            }
        }
        if !corrupt.is_empty() {
            tracing::debug!(path = %rel, blocks = ?corrupt, "page checksum failures (also when read again)");
            let mut found = self.corrupt.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            found.entry(rel.clone()).or_default().extend(corrupt);
        }
        Ok(())
    }

    /// What was found in the files the backup kept (`files`: a file that vanished while it was read is left out
    /// of the backup, and so of this), for the manifest: `None` when disabled.
    pub fn outcome(&self, files: &[FileEntry]) -> Option<PageChecksums> {
        let kept: HashSet<&ManifestPath> = files.iter().map(|f| &f.path).collect();
        self.outcome_of(&|p| kept.contains(p))
    }

    /// Whether pages of `path` failed verification (also when read again).
    pub fn is_corrupt(&self, path: &ManifestPath) -> bool {
        self.corrupt.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains_key(path)
    }

    /// [`Self::outcome`] for the files `kept` says the backup kept.
    pub fn outcome_of(&self, kept: &dyn Fn(&ManifestPath) -> bool) -> Option<PageChecksums> {
        self.rules?;
        let found = self.corrupt.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let corrupt = found
            .iter()
            .filter(|(path, _)| kept(path))
            .map(|(path, blocks)| CorruptPages { path: path.clone(), blocks: blocks.iter().copied().collect() })
            .collect();
        Some(PageChecksums { pages_verified: self.pages_verified.load(Ordering::Relaxed), corrupt })
    }
}

/// Up to `len` bytes at `at` of `path`; empty if the file is gone or no longer reaches `at`.
fn read_again(path: &Path, at: u64, len: usize) -> Result<Vec<u8>, Error> {
    let rerr = |source| Error::ReadSource { path: path.to_path_buf(), source };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(rerr(e)),
    };
    let mut page = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut page[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(rerr(e)),
        }
    }
    page.truncate(got);
    Ok(page)
}

/// Warn once per file with corrupt pages (the file, how many, the first blocks) and once in sum. With
/// `fail_on_error`, corrupt pages are an error naming the files instead (the warnings are still written).
pub fn report(
    outcome: Option<&PageChecksums>,
    data_directory: &Path,
    fail_on_error: bool,
) -> Result<(), ChecksumFailures> {
    let Some(outcome) = outcome.filter(|o| !o.corrupt.is_empty()) else {
        if let Some(o) = outcome {
            tracing::debug!(pages = o.pages_verified, "page checksums verified");
        }
        return Ok(());
    };
    for c in &outcome.corrupt {
        tracing::warn!("page checksum failure in {}", c.describe(BLOCKS_SHOWN));
    }
    let pages: u64 = outcome.corrupt.iter().map(|c| c.blocks.len() as u64).sum();
    let files = outcome.corrupt.len();
    if fail_on_error {
        return Err(ChecksumFailures {
            data_directory: data_directory.to_path_buf(),
            pages,
            files: outcome.corrupt.clone(),
        });
    }
    tracing::warn!(
        concat!(
            "{pages} of {} verified pages in {files} {} fail their checksum; the backup records them (",
            doc!("operations.md"),
            ", \"Page checksum failures\")"
        ),
        outcome.pages_verified,
        if files == 1 { "file" } else { "files" },
        pages = pages,
        files = files,
    );
    Ok(())
}

#[cfg(test)]
mod tests;
