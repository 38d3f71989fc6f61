//! The logical dumps in `backupctl verify`'s report: each dump's verdict and each problem naming the dump,
//! database and stream it breaks ([`crate::dump::verify`] reads and checks them).

use serde::Serialize;

use super::{Problem, Report};
use crate::Error;
use crate::dump::{DumpId, DumpVerifyReport};
use crate::storage::Storage;

/// The dump, database and stream a problem breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenStream {
    /// The dump's id.
    pub id: String,
    /// The database (`null` for the globals script or the manifest).
    pub database: Option<String>,
    /// The stream: `custom-format archive`, `file "toc.dat"`, `globals script` or `manifest`.
    pub stream: String,
}

/// One verified dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DumpResult {
    /// The dump's id.
    pub id: String,
    /// `ok` or `broken`.
    pub status: &'static str,
    /// The databases it holds.
    pub databases: Vec<String>,
    /// Distinct frames it names.
    pub frames: u64,
}

/// What verify found in the logical dumps (the `dumps` key of `verify --json-output`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DumpsVerified {
    /// Dumps verified (manifests read).
    pub dumps: u64,
    /// Distinct frames read and checked.
    pub frames_checked: u64,
    /// Stored bytes read.
    pub bytes_read: u64,
    /// Dumps found broken.
    pub broken: usize,
    /// Each dump, oldest first.
    pub results: Vec<DumpResult>,
}

impl Report {
    /// A report that verified nothing yet (before [`add`] of one dump's verification).
    pub fn empty(repository: String) -> Self {
        Report {
            repository,
            ok: true,
            objects_checked: 0,
            wal_objects_checked: 0,
            bytes_read: 0,
            all_wal: false,
            backups: Vec::new(),
            problems: Vec::new(),
            dumps: None,
        }
    }
}

/// Verify the logical dumps (every one, or only `only`) and add what was found to `report`: each problem, the
/// dumps' verdicts, and `ok` false if any dump is broken. Errors: as [`crate::dump::verify`] (an unknown `only`
/// is [`crate::dump::Error::UnknownDump`]).
pub async fn add(storage: &dyn Storage, only: Option<&DumpId>, report: &mut Report) -> Result<(), Error> {
    let d = crate::dump::verify(storage, only).await?;
    merge(report, d);
    Ok(())
}

/// Add `d` to `report` (pure).
pub fn merge(report: &mut Report, d: DumpVerifyReport) {
    let broken = d.broken();
    for p in &d.problems {
        report.problems.push(Problem {
            kind: p.kind,
            what: p.what.clone(),
            reason: p.reason.clone(),
            status: None,
            breaks: Vec::new(),
            cuts: Vec::new(),
            dump: Some(BrokenStream { id: p.dump.to_string(), database: p.database.clone(), stream: p.stream.clone() }),
        });
    }
    report.ok &= broken == 0 && d.problems.is_empty();
    report.dumps = Some(DumpsVerified {
        dumps: d.dumps,
        frames_checked: d.frames_checked,
        bytes_read: d.bytes_read,
        broken,
        results: d
            .results
            .into_iter()
            .map(|r| DumpResult { id: r.id.to_string(), status: r.status, databases: r.databases, frames: r.frames })
            .collect(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::{DumpProblem, DumpResult as Found};

    /// Found in a DBA trial: a damaged dump was reported as "0 broken backup(s)", with an empty file name and
    /// the hint to take a new full backup. The merged report counts the broken dump, names its database and
    /// stream, and the error's hint is about dumps.
    #[test]
    fn issue_12_a_broken_dump_is_counted_and_named() {
        let id: DumpId = "20261201-083000D".parse().expect("id");
        let found = DumpVerifyReport {
            dumps: 1,
            frames_checked: 3,
            bytes_read: 100,
            results: vec![Found { id: id.clone(), status: "broken", databases: vec!["app1".into()], frames: 4 }],
            problems: vec![DumpProblem {
                dump: id,
                database: Some("app1".into()),
                stream: "custom-format archive".into(),
                kind: "corrupt",
                what: "frame 00ab".into(),
                reason: "packs/x@12 is corrupt".into(),
            }],
        };
        let mut r = Report::empty("file:///repo".into());
        merge(&mut r, found);
        assert!(!r.is_ok());
        assert_eq!((r.broken(), r.broken_dumps(), r.failures()), (0, 1, 1));
        let e = r.failure().expect("failed");
        assert_eq!(e.to_string(), "verify of file:///repo failed: 1 problem(s), 0 broken backup(s), 1 broken dump(s)");
        let hint = e.hint().expect("hint");
        assert!(hint.contains("backupctl dump") && hint.contains("delete") && !hint.contains("full backup"), "{hint}");
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["dumps"]["broken"], 1, "{v}");
        assert_eq!(v["dumps"]["results"][0]["status"], "broken", "{v}");
        assert_eq!(v["problems"][0]["dump"]["database"], "app1", "{v}");
        assert_eq!(v["problems"][0]["dump"]["stream"], "custom-format archive", "{v}");
        assert_eq!(v["problems"][0]["breaks"], serde_json::json!([]), "no backup is broken: {v}");
    }
}
