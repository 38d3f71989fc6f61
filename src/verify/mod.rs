//! `backupctl verify`: re-read what the backups need (and with `wal`, every archived WAL file), check sizes and
//! checksums and WAL continuity, and say what is missing or corrupt and which backups it breaks.
//!
//! What is read: every data object the verified backups' manifests reference ([`read`] says what is checked), the
//! WAL segments from each verified backup's start to its stop and the history file of its timeline; with
//! [`Options::wal`], every object under `wal/` instead. Continuity is judged from one listing of `wal/`
//! ([`coverage`]): per timeline, every gap between archived segments, each tied to the backups whose start..stop
//! it breaks and whose later WAL it cuts short.
//!
//! The result is [`Report::is_ok`] only if nothing is missing or corrupt, no verified backup is broken, and no
//! gap is lost (pending, expired and unused gaps are reported and do not fail; with a backup id, only gaps that
//! break or cut that backup count). Verify only reads.

pub mod coverage;
pub mod dumps;
pub mod format2;
pub mod read;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use self::coverage::{Clock, Coverage, GapStatus};
use self::read::{Job, Outcome, PieceCheck};
use crate::Error;
use crate::codec;
use crate::repository::backup::{BackupId, Manifest, ObjectId};
use crate::repository::store;
use crate::repository::wal_index::WalIndex;
use crate::storage::{DynStorage, Storage};
use crate::wal::{SegmentSize, TimelineHistory, TimelineId, WalFileName};

/// What to verify and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only this backup (default: every backup).
    pub backup_id: Option<BackupId>,
    /// Re-read every archived WAL object, not only the segments the verified backups need.
    pub wal: bool,
    /// Objects read at once.
    pub parallel: usize,
    /// The classification clock of [`coverage`].
    pub clock: Clock,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `missing`, `corrupt`, `manifest` (a backup's manifest cannot be read) or `wal_gap`.
    pub kind: &'static str,
    /// The object (key), or for a gap the first and last missing segment (`A..B`).
    pub what: String,
    /// Why, in one line.
    pub reason: String,
    /// For a gap: `lost`, `pending`, `expired` or `unused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<GapStatus>,
    /// Backups it makes unrestorable.
    pub breaks: Vec<String>,
    /// Backups whose reach it cuts short (they restore only up to the WAL before it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cuts: Vec<String>,
    /// For a problem of a logical dump: the dump, database and stream it breaks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump: Option<dumps::BrokenStream>,
}

impl Problem {
    /// True if this problem fails the verification.
    pub fn is_failure(&self) -> bool {
        self.status.is_none_or(|s| s == GapStatus::Lost)
    }
}

/// One verified backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupResult {
    /// The backup.
    pub id: String,
    /// `ok`, `broken`, or `deleted` (deleted by a prune or delete while verify ran; not a failure).
    pub status: &'static str,
    /// Data objects it references.
    pub objects: u64,
    /// WAL segments from its start to its stop.
    pub wal_segments: u64,
    /// The last WAL segment it reaches without a gap (`null` when broken).
    pub reaches: Option<String>,
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The repository (backend display).
    pub repository: String,
    /// Whether nothing failed.
    pub ok: bool,
    /// Data objects read.
    pub objects_checked: u64,
    /// WAL objects read.
    pub wal_objects_checked: u64,
    /// Stored bytes read.
    pub bytes_read: u64,
    /// Whether every archived WAL object was read (`--wal`).
    pub all_wal: bool,
    /// The verified backups, oldest first.
    pub backups: Vec<BackupResult>,
    /// Every problem found.
    pub problems: Vec<Problem>,
    /// The logical dumps verified (`None`: dumps were not verified, as with a base backup's id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dumps: Option<dumps::DumpsVerified>,
}

impl Report {
    /// Whether nothing failed.
    pub fn is_ok(&self) -> bool {
        self.ok
    }

    /// Problems that fail the verification.
    pub fn failures(&self) -> usize {
        self.problems.iter().filter(|p| p.is_failure()).count()
    }

    /// Backups found broken.
    pub fn broken(&self) -> usize {
        self.backups.iter().filter(|b| b.status == "broken").count()
    }

    /// Logical dumps found broken.
    pub fn broken_dumps(&self) -> usize {
        self.dumps.as_ref().map_or(0, |d| d.broken)
    }

    /// The error of a verification that failed ([`Error::VerifyFailed`]); `None` if it passed.
    pub fn failure(&self) -> Option<Error> {
        (!self.ok).then(|| Error::VerifyFailed {
            backend: self.repository.clone(),
            problems: self.failures(),
            broken: self.broken(),
            broken_dumps: self.broken_dumps(),
        })
    }
}

/// Run the verification (reads only). Errors: storage failures (after retries), an unknown backup id
/// ([`Error::Usage`]), a repository without a cluster record but with backups is verified with the backups'
/// segment size.
pub async fn run(storage: DynStorage, options: &Options) -> Result<Report, Error> {
    let (manifests, bad) = store::manifests(storage.as_ref()).await?;
    let ids: Vec<BackupId> = manifests.iter().map(|m| m.id.clone()).collect();
    let selected: Vec<&Manifest> = match &options.backup_id {
        Some(id) => {
            let m = manifests.iter().find(|m| &m.id == id);
            let is_bad = bad.iter().any(|(b, _)| b == id);
            match m {
                Some(m) => vec![m],
                None if is_bad => Vec::new(),
                None => return Err(Error::Usage(crate::restore::target::missing_backup(id, &ids))),
            }
        }
        None => manifests.iter().collect(),
    };
    let mut problems: Vec<Problem> = bad
        .iter()
        .filter(|(id, _)| options.backup_id.as_ref().is_none_or(|w| w == id))
        .map(|(id, e)| Problem {
            kind: "manifest",
            what: id.manifest_key().to_string(),
            reason: e.to_string(),
            status: None,
            breaks: vec![id.to_string()],
            cuts: Vec::new(),
            dump: None,
        })
        .collect();

    let size = segment_size(storage.as_ref(), &manifests).await?;
    let listing = storage.list("wal/").await?;
    let index = WalIndex::build(&listing, size);
    let (histories, history_problems) = load_histories(storage.as_ref(), &index).await?;
    let coverage = coverage::coverage(&index, &manifests, &histories, &options.clock);

    // The objects to read, and who references each (every manifest, so a damaged object names every backup it
    // breaks even when only one backup is verified).
    let mut users: BTreeMap<ObjectId, BTreeSet<BackupId>> = BTreeMap::new();
    let mut pieces: BTreeMap<ObjectId, BTreeSet<PieceCheck>> = BTreeMap::new();
    let selected_ids: BTreeSet<&BackupId> = selected.iter().map(|m| &m.id).collect();
    for m in manifests.iter().filter(|m| m.repository_format < 2) {
        for f in &m.files {
            for p in &f.pieces {
                users.entry(p.object).or_default().insert(m.id.clone());
                if selected_ids.contains(&m.id) {
                    let whole = p.offset == 0 && p.blake3 == p.object;
                    let set = pieces.entry(p.object).or_default();
                    if !whole {
                        set.insert(PieceCheck { offset: p.offset, length: p.length, blake3: p.blake3 });
                    }
                }
            }
        }
    }
    let mut jobs: Vec<Job> = pieces.into_iter().map(|(id, p)| Job::Data(id, p.into_iter().collect())).collect();
    let data_jobs = jobs.len() as u64;
    // WAL users: the backups whose start..stop holds a segment, or whose timeline a history file describes.
    let mut wal_users: BTreeMap<String, BTreeSet<BackupId>> = BTreeMap::new();
    for (m, c) in manifests.iter().zip(&coverage.backups) {
        for s in &c.wal.needed {
            wal_users.entry(s.to_string()).or_default().insert(m.id.clone());
        }
        if m.timeline > 1 {
            wal_users.entry(WalFileName::History(m.timeline_id()).to_string()).or_default().insert(m.id.clone());
        }
    }
    // By key, so each is read once.
    let mut wal_names: BTreeMap<String, WalFileName> = BTreeMap::new();
    let mut add = |n: WalFileName| {
        wal_names.insert(crate::repository::wal_key(&n).to_string(), n);
    };
    if options.wal {
        listing.iter().filter_map(|o| o.key.file_name().parse::<WalFileName>().ok()).for_each(&mut add);
    }
    for (m, c) in manifests.iter().zip(&coverage.backups) {
        if selected_ids.contains(&m.id) {
            c.wal.needed.iter().for_each(|s| add(WalFileName::Segment(*s)));
            if m.timeline > 1 {
                add(WalFileName::History(m.timeline_id()));
            }
        }
    }
    jobs.extend(wal_names.into_values().map(|n| Job::Wal(crate::repository::wal_key(&n), n)));

    let results = read::read_all(storage.clone(), jobs, options.parallel, size).await?;
    // Format 2: nodes, frames, blocks and deltas.
    let checked2 = format2::check(&storage, &manifests, &selected_ids, options.parallel).await?;
    // Backups deleted while verify read (a prune or delete running at the same time): objects and WAL only they
    // needed may be gone by now, which is retention at work, not damage. A backup that still exists is judged
    // on everything it references.
    let (still, _) = store::manifests(storage.as_ref()).await?;
    let deleted: BTreeSet<BackupId> = ids.iter().filter(|id| !still.iter().any(|m| &m.id == *id)).cloned().collect();
    let (mut bytes_read, mut wal_checked) = (0u64, 0u64);
    let mut broken: BTreeSet<BackupId> = BTreeSet::new();
    let mut damaged = Vec::new();
    for (job, outcome) in results {
        if let Outcome::Ok(n) = outcome {
            bytes_read += n;
        }
        if matches!(job, Job::Wal(..)) {
            wal_checked += 1;
        }
        let (kind, reason) = match outcome {
            Outcome::Ok(_) => continue,
            Outcome::Missing => ("missing", "absent from the repository".to_owned()),
            Outcome::Corrupt(why) => ("corrupt", why),
        };
        let mut breaks: BTreeSet<BackupId> = match &job {
            Job::Data(id, _) => users.get(id).cloned().unwrap_or_default(),
            Job::Wal(_, name) => wal_users.get(&name.to_string()).cloned().unwrap_or_default(),
        };
        breaks.retain(|id| !deleted.contains(id));
        if kind == "missing" && breaks.is_empty() {
            // Listed (or referenced) when verify started, removed since, and needed by no backup that still
            // exists: deleted by retention while verify ran.
            tracing::info!(object = %job.key(), "removed while verify ran (by prune, delete or gc); no remaining backup needs it");
            continue;
        }
        broken.extend(breaks.iter().cloned());
        damaged.push(Problem {
            kind,
            what: job.key().to_string(),
            reason,
            status: None,
            breaks: breaks.iter().map(ToString::to_string).collect(),
            cuts: Vec::new(),
            dump: None,
        });
    }
    // Format 2: one problem per object, naming every backup that needs it.
    let mut by_what: BTreeMap<String, format2::Damage> = BTreeMap::new();
    for d in checked2.damage {
        by_what.entry(d.what.clone()).and_modify(|x| x.users.extend(d.users.iter().cloned())).or_insert(d);
    }
    bytes_read += checked2.bytes_read;
    for (what, d) in by_what {
        let mut breaks = d.users;
        breaks.retain(|id| !deleted.contains(id));
        if d.kind == "missing" && breaks.is_empty() {
            tracing::info!(object = %what, "removed while verify ran (by prune, delete or gc); no remaining backup needs it");
            continue;
        }
        broken.extend(breaks.iter().cloned());
        damaged.push(Problem {
            kind: d.kind,
            what,
            reason: d.reason,
            status: None,
            breaks: breaks.iter().map(ToString::to_string).collect(),
            cuts: Vec::new(),
            dump: None,
        });
    }
    damaged.sort_by(|a, b| a.what.cmp(&b.what));
    problems.extend(damaged);
    // A damaged history file also read as a job is reported once.
    for mut p in history_problems {
        if !problems.iter().any(|q| q.what == p.what) {
            let name = p.what.rsplit('/').next().unwrap_or_default().to_owned();
            p.breaks = wal_users.get(&name).map(|b| b.iter().map(ToString::to_string).collect()).unwrap_or_default();
            broken.extend(wal_users.get(&name).into_iter().flatten().cloned());
            problems.push(p);
        }
    }
    problems.extend(gap_problems(&coverage, size, options.backup_id.as_ref(), &mut broken));
    let backups: Vec<BackupResult> = manifests
        .iter()
        .zip(&coverage.backups)
        .filter(|(m, _)| selected_ids.contains(&m.id))
        .map(|(m, c)| BackupResult {
            id: m.id.to_string(),
            status: if deleted.contains(&m.id) {
                "deleted"
            } else if broken.contains(&m.id) {
                "broken"
            } else {
                "ok"
            },
            // Format 2: the small-file frames and block-map nodes it names.
            objects: m
                .files
                .iter()
                .flat_map(|f| f.pieces.iter().map(|p| p.object).chain(f.nodes.iter().copied()))
                .collect::<BTreeSet<_>>()
                .len() as u64,
            wal_segments: c.wal.needed.len() as u64,
            reaches: c.wal.reach.map(|r| r.to_string()),
        })
        .collect();
    let mut report = Report {
        repository: storage.to_string(),
        ok: false,
        objects_checked: data_jobs + checked2.objects,
        wal_objects_checked: wal_checked,
        bytes_read,
        all_wal: options.wal,
        backups,
        problems,
        dumps: None,
    };
    report.ok = report.failures() == 0 && report.broken() == 0;
    Ok(report)
}

/// The gaps of `coverage` as problems. A gap that breaks a backup (inside its start..stop) breaks it whatever its
/// status; with `only`, gaps that neither break nor cut that backup are left out.
fn gap_problems(
    coverage: &Coverage,
    size: SegmentSize,
    only: Option<&BackupId>,
    broken: &mut BTreeSet<BackupId>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for t in &coverage.timelines {
        for g in &t.gaps {
            if only.is_some_and(|id| !g.breaks.contains(id) && !g.cuts.contains(id)) {
                continue;
            }
            broken.extend(g.breaks.iter().cloned());
            let (first, last) = (g.run.first_name(size), g.run.last_name(size));
            let what = if first == last { first.to_string() } else { format!("{first}..{last}") };
            out.push(Problem {
                kind: "wal_gap",
                what,
                reason: format!(
                    "{} segment{} missing on timeline {} before {} (archived after the gap)",
                    g.run.len(),
                    if g.run.len() == 1 { "" } else { "s" },
                    t.timeline.0,
                    g.next
                ),
                status: Some(g.status),
                breaks: g.breaks.iter().map(ToString::to_string).collect(),
                cuts: g.cuts.iter().map(ToString::to_string).collect(),
                dump: None,
            });
        }
    }
    out
}

/// The repository's segment size: from its cluster record, else from a backup's manifest, else the default.
pub async fn segment_size(storage: &dyn Storage, manifests: &[Manifest]) -> Result<SegmentSize, Error> {
    let bytes = match store::cluster_info(storage).await? {
        Some(c) => c.wal_segment_size,
        None => manifests.first().map_or(SegmentSize::DEFAULT.bytes(), |m| m.wal_segment_size),
    };
    Ok(SegmentSize::new(bytes)?)
}

/// Read and parse every history file of `index`. A damaged one is a problem (and is not followed), not an error.
pub async fn load_histories(
    storage: &dyn Storage,
    index: &WalIndex,
) -> Result<(BTreeMap<TimelineId, TimelineHistory>, Vec<Problem>), Error> {
    let (mut out, mut problems) = (BTreeMap::new(), Vec::new());
    for (&t, object) in &index.histories {
        let bytes = match storage.get(&object.key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let mut text = Vec::new();
        let parsed = codec::decode(&bytes, &mut text)
            .map_err(|e| e.to_string())
            .and_then(|_| TimelineHistory::parse(t, &String::from_utf8_lossy(&text)));
        match parsed {
            Ok(h) => {
                out.insert(t, h);
            }
            Err(reason) => problems.push(Problem {
                kind: "corrupt",
                what: object.key.to_string(),
                reason,
                status: None,
                breaks: Vec::new(),
                cuts: Vec::new(),
                dump: None,
            }),
        }
    }
    Ok((out, problems))
}

/// The classification clock from the configuration: pending within `backup.archive_timeout_seconds` plus
/// `archive.retry_deadline_seconds`; expired before `now - [retention] pitr_days` when that is set.
pub fn clock_from_config(config: &crate::config::Config, now: SystemTime) -> Clock {
    let pending_within = Duration::from_secs(
        config.backup.archive_timeout_seconds.saturating_add(config.archive.retry_deadline_seconds),
    );
    let expired_before =
        config.retention.pitr_days.and_then(|d| now.checked_sub(Duration::from_secs(u64::from(d) * 86_400)));
    Clock { now, pending_within, expired_before }
}
