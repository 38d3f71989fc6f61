//! `backupctl verify` of logical dumps: every frame of every dump (or of one) read back and checked (its size and
//! blake3, which is its name). The manifest names each stream's frames in order and checks that their sizes add
//! up, so a stream whose frames all pass is intact (dump-restore also checks each stream's blake3 as it fetches
//! it). Frames shared by several dumps are read once; a damaged one is reported for every stream that holds it.

use std::collections::{BTreeSet, HashMap};

use super::{DumpFile, DumpId, DumpManifest, Error};
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
    /// The database whose stream it breaks; `None` for the globals script or the manifest itself.
    pub database: Option<String>,
    /// The stream ([`stream_name`]: `custom-format archive`, a directory-format file `file "toc.dat"`,
    /// `globals script`), or `manifest`.
    pub stream: String,
    /// `missing`, `corrupt` or `manifest`.
    pub kind: &'static str,
    /// The object: a frame, a pack key, or the manifest's key.
    pub what: String,
    /// Why, in one line.
    pub reason: String,
}

/// One verified dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpResult {
    /// The dump.
    pub id: DumpId,
    /// `ok` or `broken`.
    pub status: &'static str,
    /// The databases it holds (none when its manifest is unreadable).
    pub databases: Vec<String>,
    /// Distinct frames it names.
    pub frames: u64,
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
    /// Each dump verified (or whose manifest is unreadable), oldest first.
    pub results: Vec<DumpResult>,
    /// Every problem.
    pub problems: Vec<DumpProblem>,
}

impl DumpVerifyReport {
    /// Dumps found broken.
    pub fn broken(&self) -> usize {
        self.results.iter().filter(|r| r.status == "broken").count()
    }
}

/// How a stream is named in messages: `custom-format archive` (the one stream of a custom-format dump),
/// `file "toc.dat"` (a file of a directory-format dump), `globals script` (`database` is `None`). Pure.
pub fn stream_name(database: Option<&str>, file: &DumpFile) -> String {
    match (database, file.name.as_str()) {
        (None, _) => "globals script".to_owned(),
        (Some(_), "") => "custom-format archive".to_owned(),
        (Some(_), name) => format!("file {name:?}"),
    }
}

/// Verify every dump of the repository, or only dump `only`. Errors: [`Error::UnknownDump`] when `only` does not
/// exist, storage failures other than a missing object (those are problems), a damaged pack index.
pub async fn verify(storage: &dyn Storage, only: Option<&DumpId>) -> Result<DumpVerifyReport, crate::Error> {
    let mut report = DumpVerifyReport::default();
    let (mut good, mut bad) = layout::manifests(storage).await?;
    if let Some(id) = only {
        good.retain(|m| &m.id == id);
        bad.retain(|(b, _)| b == id);
        if good.is_empty() && bad.is_empty() {
            let ids = layout::dump_ids(storage).await?;
            let known = if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            };
            return Err(Error::UnknownDump { id: id.clone(), backend: storage.to_string(), known }.into());
        }
    }
    let mut broken: BTreeSet<DumpId> = BTreeSet::new();
    for (id, e) in bad {
        broken.insert(id.clone());
        report.results.push(DumpResult { id: id.clone(), status: "broken", databases: Vec::new(), frames: 0 });
        report.problems.push(DumpProblem {
            database: None,
            stream: "manifest".to_owned(),
            kind: "manifest",
            what: id.manifest_key().to_string(),
            reason: e.to_string(),
            dump: id,
        });
    }
    if !good.is_empty() {
        let index = FrameIndex::load(storage).await?;
        // Frame id -> its verdict (None: fine), so a frame shared by several streams or dumps is read once.
        let mut seen: HashMap<ObjectId, Option<Verdict>> = HashMap::new();
        for m in &good {
            report.dumps += 1;
            for (database, file) in streams(m) {
                for f in &file.frames {
                    let verdict = match seen.get(&f.id) {
                        Some(v) => v.clone(),
                        None => {
                            let v = check_frame(storage, &index, f.id, &mut report).await?;
                            seen.insert(f.id, v.clone());
                            v
                        }
                    };
                    if let Some(v) = verdict {
                        broken.insert(m.id.clone());
                        report.problems.push(DumpProblem {
                            dump: m.id.clone(),
                            database: database.map(str::to_owned),
                            stream: stream_name(database, file),
                            kind: v.kind,
                            what: v.what,
                            reason: v.reason,
                        });
                    }
                }
            }
            report.results.push(DumpResult {
                id: m.id.clone(),
                status: if broken.contains(&m.id) { "broken" } else { "ok" },
                databases: m.databases.iter().map(|d| d.name.clone()).collect(),
                frames: m.frames().len() as u64,
            });
        }
    }
    report.results.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(report)
}

/// Every stream of `m` with the database it belongs to (`None`: the globals script).
fn streams(m: &DumpManifest) -> impl Iterator<Item = (Option<&str>, &DumpFile)> {
    let dbs = m.databases.iter().flat_map(|d| d.files.iter().map(move |f| (Some(d.name.as_str()), f)));
    dbs.chain(m.globals.iter().map(|g| (None, g)))
}

/// What is wrong with one frame.
#[derive(Debug, Clone)]
struct Verdict {
    kind: &'static str,
    what: String,
    reason: String,
}

/// Read frame `id` and check it; `None` if it is intact (counted in `report`).
async fn check_frame(
    storage: &dyn Storage,
    index: &FrameIndex,
    id: ObjectId,
    report: &mut DumpVerifyReport,
) -> Result<Option<Verdict>, crate::Error> {
    let Some((pack, loc)) = index.get(&id) else {
        return Ok(Some(Verdict { kind: "missing", what: format!("frame {id}"), reason: "in no pack index".into() }));
    };
    match packstore::read_frame(storage, pack, loc).await {
        Ok(_) => {
            report.frames_checked += 1;
            report.bytes_read += u64::from(loc.stored_length);
            Ok(None)
        }
        Err(store::Error::Storage(e)) if e.is_not_found() => Ok(Some(Verdict {
            kind: "missing",
            what: format!("frame {id} in {}", crate::repository::packs::pack_key(pack)),
            reason: "pack not found".to_owned(),
        })),
        Err(e @ (store::Error::Corrupt { .. } | store::Error::Malformed { .. })) => {
            Ok(Some(Verdict { kind: "corrupt", what: format!("frame {id}"), reason: e.to_string() }))
        }
        Err(e) => Err(e.into()),
    }
}
