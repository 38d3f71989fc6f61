//! `backupctl verify` of logical dumps: every frame of every dump read back and checked (its size and blake3, which
//! is its name). The manifest names each stream's frames in order and checks that their sizes add up, so a stream
//! whose frames all pass is intact (dump-restore also checks each stream's blake3 as it fetches it). Frames shared
//! by several dumps are read once.

use std::collections::HashMap;

use super::DumpId;
use crate::repository::backup::ObjectId;
use crate::repository::dump as layout;
use crate::repository::packstore::{self, FrameIndex};
use crate::repository::store;
use crate::storage::Storage;

/// One problem found in a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpProblem {
    /// The dump it breaks.
    pub dump: DumpId,
    /// `missing`, `corrupt` or `manifest`.
    pub kind: &'static str,
    /// The object (a pack and offset, a frame, a stream, a manifest key).
    pub what: String,
    /// Why, in one line.
    pub reason: String,
}

/// What [`verify`] read and found.
#[derive(Debug, Clone, Default)]
pub struct DumpVerifyReport {
    /// Dumps verified (manifests read).
    pub dumps: u64,
    /// Distinct frames read.
    pub frames_checked: u64,
    /// Stored bytes read.
    pub bytes_read: u64,
    /// Every problem.
    pub problems: Vec<DumpProblem>,
}

/// Verify every dump of the repository. Errors: storage failures other than a missing object (those are
/// problems), a damaged pack index.
pub async fn verify(storage: &dyn Storage) -> Result<DumpVerifyReport, crate::Error> {
    let mut report = DumpVerifyReport::default();
    let (good, bad) = layout::manifests(storage).await?;
    for (id, e) in bad {
        report.problems.push(DumpProblem {
            kind: "manifest",
            what: id.manifest_key().to_string(),
            reason: e.to_string(),
            dump: id,
        });
    }
    if good.is_empty() {
        return Ok(report);
    }
    let index = FrameIndex::load(storage).await?;
    // Frame id -> its raw content's verdict (None: fine).
    let mut seen: HashMap<ObjectId, Option<(&'static str, String, String)>> = HashMap::new();
    for m in &good {
        report.dumps += 1;
        let streams = m
            .databases
            .iter()
            .flat_map(|d| d.files.iter().map(move |f| (format!("database {:?} file {:?}", d.name, f.name), f)));
        let streams = streams.chain(m.globals.iter().map(|g| ("globals script".to_owned(), g)));
        for (name, file) in streams {
            for f in &file.frames {
                // A frame already checked is not read again (its content is its name: checked once, fine everywhere).
                if let Some(verdict) = seen.get(&f.id) {
                    if let Some((kind, what, reason)) = verdict {
                        let what = format!("{what} of {name}");
                        report.problems.push(DumpProblem { dump: m.id.clone(), kind, what, reason: reason.clone() });
                    }
                    continue;
                }
                let verdict = match index.get(&f.id) {
                    None => Some(("missing", format!("frame {}", f.id), "in no pack index".to_owned())),
                    Some((pack, loc)) => match packstore::read_frame(storage, pack, loc).await {
                        Ok(_) => {
                            report.frames_checked += 1;
                            report.bytes_read += u64::from(loc.stored_length);
                            None
                        }
                        Err(store::Error::Storage(e)) if e.is_not_found() => Some((
                            "missing",
                            crate::repository::packs::pack_key(pack).to_string(),
                            "pack not found".to_owned(),
                        )),
                        Err(e @ (store::Error::Corrupt { .. } | store::Error::Malformed { .. })) => {
                            Some(("corrupt", format!("frame {}", f.id), e.to_string()))
                        }
                        Err(e) => return Err(e.into()),
                    },
                };
                if let Some((kind, what, reason)) = &verdict {
                    let what = format!("{what} of {name}");
                    report.problems.push(DumpProblem { dump: m.id.clone(), kind, what, reason: reason.clone() });
                }
                seen.insert(f.id, verdict);
            }
        }
    }
    Ok(report)
}
