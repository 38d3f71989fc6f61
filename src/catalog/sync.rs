//! `backupctl catalog sync`: write the repository's picture into the catalog, differences only.

use std::time::SystemTime;

use super::{Catalog, Error};
use crate::repository::wal_index::WalIndex;
use crate::verify::status::{Status, rfc3339};
use crate::wal::{SegmentName, TimelineId};

/// What a sync mirrors: the status of one repository as `backupctl status` computed it, with its JSON documents.
#[derive(Debug)]
pub struct SyncInput<'a> {
    /// The repository as backupctl prints it (`file:///srv/backup`, `s3://bucket/prefix`): the catalog's key.
    pub repository: &'a str,
    /// The status [`crate::verify::status::collect`] computed.
    pub status: &'a Status,
    /// `status --json-output` without `backups` and `newest_backup_age_seconds` (they are computed at read time
    /// from the backup rows).
    pub document: serde_json::Value,
    /// Each backup as `status --json-output` shows it, in the order of `status.backups`.
    pub backups: &'a [serde_json::Value],
    /// The repository's complete dumps (logical backups).
    pub dumps: &'a [Dump],
}

/// One logical dump as the catalog records it.
#[derive(Debug, Clone)]
pub struct Dump {
    /// Its id.
    pub id: String,
    /// Its label.
    pub label: String,
    /// Start (RFC 3339).
    pub started_at: String,
    /// End (RFC 3339).
    pub finished_at: String,
    /// The databases it holds.
    pub databases: Vec<String>,
    /// Bytes of the dumps before compression.
    pub bytes_logical: u64,
    /// Stored bytes.
    pub bytes_stored: u64,
    /// The dump as `status` shows it.
    pub document: serde_json::Value,
}

/// Rows a sync wrote, per table (inserted or changed; `*_removed`: newly marked removed). All zero when nothing
/// changed since the last sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// `repositories` rows.
    pub repositories: u64,
    /// `backups` rows inserted or updated.
    pub backups: u64,
    /// `backups` rows marked removed.
    pub backups_removed: u64,
    /// `backup_wal` rows inserted or updated.
    pub backup_wal: u64,
    /// `wal_ranges` rows inserted or updated.
    pub wal_ranges: u64,
    /// `wal_ranges` rows marked removed.
    pub wal_ranges_removed: u64,
    /// `dumps` rows inserted or updated.
    pub dumps: u64,
    /// `dumps` rows marked removed.
    pub dumps_removed: u64,
}

impl SyncReport {
    /// Every row written.
    pub fn total(&self) -> u64 {
        self.repositories
            + self.backups
            + self.backups_removed
            + self.backup_wal
            + self.wal_ranges
            + self.wal_ranges_removed
            + self.dumps
            + self.dumps_removed
    }
}

/// One run of archived segments: consecutive segments of one timeline archived on the same UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRange {
    /// The timeline.
    pub timeline: TimelineId,
    /// Its first segment.
    pub first: SegmentName,
    /// Its last segment.
    pub last: SegmentName,
    /// Segments in it.
    pub segments: u64,
    /// Stored bytes.
    pub bytes: u64,
    /// Oldest and newest archive time (the repository's clock).
    pub first_archived: Option<SystemTime>,
    /// Newest archive time.
    pub last_archived: Option<SystemTime>,
}

/// The UTC day (days since 1970-01-01) `t` falls on.
fn day(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs() / 86_400)
}

/// The archived segments of `index` cut into [`WalRange`]s (pure): a range ends at a missing segment, a
/// timeline's end, or where the archive day (UTC) changes, so that "WAL per day" is a sum over rows.
pub fn wal_ranges(index: &WalIndex) -> Vec<WalRange> {
    let size = index.size;
    let mut out: Vec<WalRange> = Vec::new();
    for (timeline, t) in &index.timelines {
        let mut current: Option<(u64, u64, WalRange)> = None; // (first segno, last segno, range)
        for (&segno, o) in &t.segments {
            if let Some((_, last, r)) = current.as_mut()
                && segno == *last + 1
                && day(o.modified) == day(r.last_archived)
            {
                *last = segno;
                r.last = SegmentName::from_segno(*timeline, segno, size);
                r.segments += 1;
                r.bytes += o.size;
                r.first_archived = match (r.first_archived, o.modified) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                r.last_archived = r.last_archived.max(o.modified);
                continue;
            }
            if let Some((_, _, r)) = current.take() {
                out.push(r);
            }
            let name = SegmentName::from_segno(*timeline, segno, size);
            current = Some((
                segno,
                segno,
                WalRange {
                    timeline: *timeline,
                    first: name,
                    last: name,
                    segments: 1,
                    bytes: o.size,
                    first_archived: o.modified,
                    last_archived: o.modified,
                },
            ));
        }
        if let Some((_, _, r)) = current {
            out.push(r);
        }
    }
    out
}

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn time_text(t: Option<SystemTime>) -> String {
    t.and_then(rfc3339).unwrap_or_default()
}

/// Mirror `input` into the catalog in one transaction, writing only rows that differ from what it holds; rows of
/// backups, dumps and WAL ranges no longer in the repository are marked removed. The schema must be at this
/// build's version ([`Catalog::prepare_schema`] first; else [`Error::OlderSchema`] or [`Error::NewerSchema`]).
pub fn sync(catalog: &mut Catalog, input: &SyncInput<'_>) -> Result<SyncReport, Error> {
    catalog.require_current()?;
    let target = catalog.target.clone();
    let q = |what: &'static str| {
        let target = target.clone();
        move |source| Error::Query { target, what, source }
    };
    let mut report = SyncReport::default();
    let mut tx = catalog.client.transaction().map_err(q("starting the sync"))?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&super::LOCK_KEY]).map_err(q("taking the catalog lock"))?;

    // The repository.
    let s = input.status;
    let cluster = s.cluster.as_ref();
    let sysid = cluster.map(|c| c.system_identifier.clone());
    let version = cluster.map(|c| i32::try_from(c.pg_version).unwrap_or(i32::MAX));
    let seg = cluster.map(|c| big(c.wal_segment_size));
    let existing: Option<i64> = tx
        .query_opt("select id from backupctl.repositories where url = $1", &[&input.repository])
        .map_err(q("reading repositories"))?
        .map(|r| r.get(0));
    let repository_id: i64 = match existing {
        Some(id) => {
            report.repositories += tx
                .execute(
                    "update backupctl.repositories set system_identifier = $2, pg_version = $3, \
                     wal_segment_size = $4, status = $5, changed_at = now() where id = $1 and \
                     (system_identifier, pg_version, wal_segment_size, status) is distinct from \
                     ($2::text, $3::int4, $4::int8, $5::jsonb)",
                    &[&id, &sysid, &version, &seg, &input.document],
                )
                .map_err(q("updating repositories"))?;
            id
        }
        None => {
            report.repositories += 1;
            tx.query_one(
                "insert into backupctl.repositories (url, system_identifier, pg_version, wal_segment_size, status) \
                 values ($1, $2, $3, $4, $5) returning id",
                &[&input.repository, &sysid, &version, &seg, &input.document],
            )
            .map_err(q("inserting into repositories"))?
            .get(0)
        }
    };

    // Backups, and the WAL each needs.
    let backup_sql = "insert into backupctl.backups as b (repository_id, id, label, description, type, status, \
        started_at, finished_at, start_lsn, stop_lsn, timeline, bytes_logical, bytes_stored, bytes_new, \
        manifest_checksum, restorable, restorable_from, restorable_until, kept, removed_at, document) values \
        ($1, $2, $3, $4, $5, $6, nullif($7::text, '')::timestamptz, nullif($8::text, '')::timestamptz, \
        ($9::text)::pg_lsn, ($10::text)::pg_lsn, $11, $12, $13, $14, $15, $16, nullif($17::text, '')::timestamptz, \
        nullif($18::text, '')::timestamptz, $19, null, $20) \
        on conflict (repository_id, id) do update set label = excluded.label, description = excluded.description, \
        type = excluded.type, status = excluded.status, started_at = excluded.started_at, \
        finished_at = excluded.finished_at, start_lsn = excluded.start_lsn, stop_lsn = excluded.stop_lsn, \
        timeline = excluded.timeline, bytes_logical = excluded.bytes_logical, bytes_stored = excluded.bytes_stored, \
        bytes_new = excluded.bytes_new, manifest_checksum = excluded.manifest_checksum, \
        restorable = excluded.restorable, restorable_from = excluded.restorable_from, \
        restorable_until = excluded.restorable_until, kept = excluded.kept, removed_at = null, \
        document = excluded.document \
        where (b.label, b.description, b.type, b.status, b.started_at, b.finished_at, b.start_lsn, b.stop_lsn, \
        b.timeline, b.bytes_logical, b.bytes_stored, b.bytes_new, b.manifest_checksum, b.restorable, \
        b.restorable_from, b.restorable_until, b.kept, b.removed_at, b.document) is distinct from \
        (excluded.label, excluded.description, excluded.type, excluded.status, excluded.started_at, \
        excluded.finished_at, excluded.start_lsn, excluded.stop_lsn, excluded.timeline, excluded.bytes_logical, \
        excluded.bytes_stored, excluded.bytes_new, excluded.manifest_checksum, excluded.restorable, \
        excluded.restorable_from, excluded.restorable_until, excluded.kept, excluded.removed_at, excluded.document)";
    let wal_sql = "insert into backupctl.backup_wal as w (repository_id, backup_id, timeline, start_segment, \
        stop_segment, reach_segment, reach_archived_at) values ($1, $2, $3, $4, $5, $6, \
        nullif($7::text, '')::timestamptz) on conflict (repository_id, backup_id) do update set \
        timeline = excluded.timeline, start_segment = excluded.start_segment, stop_segment = excluded.stop_segment, \
        reach_segment = excluded.reach_segment, reach_archived_at = excluded.reach_archived_at \
        where (w.timeline, w.start_segment, w.stop_segment, w.reach_segment, w.reach_archived_at) is distinct from \
        (excluded.timeline, excluded.start_segment, excluded.stop_segment, excluded.reach_segment, \
        excluded.reach_archived_at)";
    let mut ids: Vec<String> = Vec::with_capacity(s.backups.len());
    for (b, doc) in s.backups.iter().zip(input.backups) {
        let m = &b.manifest;
        let id = m.id.to_string();
        let restorable = doc.get("restorable").and_then(serde_json::Value::as_bool).unwrap_or(false);
        let status = doc.get("status").and_then(serde_json::Value::as_str).unwrap_or("ok");
        let checksum = b.manifest_digest.to_string();
        let (from, until) = if restorable {
            (m.stop_time.clone(), time_text(b.coverage.reach_written))
        } else {
            (String::new(), String::new())
        };
        let timeline = i32::try_from(m.timeline).unwrap_or(i32::MAX);
        report.backups += tx
            .execute(
                backup_sql,
                &[
                    &repository_id,
                    &id,
                    &m.label,
                    &m.description,
                    &m.backup_type.to_string(),
                    &status,
                    &m.start_time,
                    &m.stop_time,
                    &m.start_lsn.to_string(),
                    &m.stop_lsn.to_string(),
                    &timeline,
                    &big(b.sizes.logical),
                    &big(b.sizes.stored),
                    &big(m.stats.bytes_new),
                    &checksum,
                    &restorable,
                    &from,
                    &until,
                    &b.is_kept,
                    doc,
                ],
            )
            .map_err(q("writing backups"))?;
        let reach = b.coverage.wal.reach.map(|r| r.to_string());
        report.backup_wal += tx
            .execute(
                wal_sql,
                &[
                    &repository_id,
                    &id,
                    &timeline,
                    &m.start_wal,
                    &m.stop_wal,
                    &reach,
                    &time_text(b.coverage.reach_written),
                ],
            )
            .map_err(q("writing backup_wal"))?;
        ids.push(id);
    }
    report.backups_removed = tx
        .execute(
            "update backupctl.backups set removed_at = now() where repository_id = $1 and removed_at is null \
             and id <> all($2::text[])",
            &[&repository_id, &ids],
        )
        .map_err(q("marking removed backups"))?;

    // Archived WAL, as ranges.
    let range_sql = "insert into backupctl.wal_ranges as r (repository_id, timeline, first_segment, last_segment, \
        segments, bytes, first_archived_at, last_archived_at, removed_at) values ($1, $2, $3, $4, $5, $6, \
        nullif($7::text, '')::timestamptz, nullif($8::text, '')::timestamptz, null) \
        on conflict (repository_id, timeline, first_segment) do update set last_segment = excluded.last_segment, \
        segments = excluded.segments, bytes = excluded.bytes, first_archived_at = excluded.first_archived_at, \
        last_archived_at = excluded.last_archived_at, removed_at = null \
        where (r.last_segment, r.segments, r.bytes, r.first_archived_at, r.last_archived_at, r.removed_at) \
        is distinct from (excluded.last_segment, excluded.segments, excluded.bytes, excluded.first_archived_at, \
        excluded.last_archived_at, excluded.removed_at)";
    let mut firsts: Vec<String> = Vec::new();
    for r in wal_ranges(&s.index) {
        let first = r.first.to_string();
        report.wal_ranges += tx
            .execute(
                range_sql,
                &[
                    &repository_id,
                    &i32::try_from(r.timeline.0).unwrap_or(i32::MAX),
                    &first,
                    &r.last.to_string(),
                    &big(r.segments),
                    &big(r.bytes),
                    &time_text(r.first_archived),
                    &time_text(r.last_archived),
                ],
            )
            .map_err(q("writing wal_ranges"))?;
        firsts.push(first);
    }
    report.wal_ranges_removed = tx
        .execute(
            "update backupctl.wal_ranges set removed_at = now() where repository_id = $1 and removed_at is null \
             and first_segment <> all($2::text[])",
            &[&repository_id, &firsts],
        )
        .map_err(q("marking removed WAL ranges"))?;

    // Dumps.
    let dump_sql = "insert into backupctl.dumps as d (repository_id, id, label, started_at, finished_at, databases, \
        bytes_logical, bytes_stored, removed_at, document) values ($1, $2, $3, nullif($4::text, '')::timestamptz, \
        nullif($5::text, '')::timestamptz, $6, $7, $8, null, $9) on conflict (repository_id, id) do update set \
        label = excluded.label, started_at = excluded.started_at, finished_at = excluded.finished_at, \
        databases = excluded.databases, bytes_logical = excluded.bytes_logical, \
        bytes_stored = excluded.bytes_stored, removed_at = null, document = excluded.document \
        where (d.label, d.started_at, d.finished_at, d.databases, d.bytes_logical, d.bytes_stored, d.removed_at, \
        d.document) is distinct from (excluded.label, excluded.started_at, excluded.finished_at, \
        excluded.databases, excluded.bytes_logical, excluded.bytes_stored, excluded.removed_at, excluded.document)";
    let mut dump_ids: Vec<String> = Vec::new();
    for d in input.dumps {
        report.dumps += tx
            .execute(
                dump_sql,
                &[
                    &repository_id,
                    &d.id,
                    &d.label,
                    &d.started_at,
                    &d.finished_at,
                    &d.databases,
                    &big(d.bytes_logical),
                    &big(d.bytes_stored),
                    &d.document,
                ],
            )
            .map_err(q("writing dumps"))?;
        dump_ids.push(d.id.clone());
    }
    report.dumps_removed = tx
        .execute(
            "update backupctl.dumps set removed_at = now() where repository_id = $1 and removed_at is null \
             and id <> all($2::text[])",
            &[&repository_id, &dump_ids],
        )
        .map_err(q("marking removed dumps"))?;
    tx.commit().map_err(q("committing the sync"))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::{Key, ObjectMeta};
    use crate::wal::SegmentSize;

    /// Issue 12: ranges break at a missing segment, at a new timeline and where the archive day (UTC) changes;
    /// counts, bytes and times add up.
    #[test]
    fn issue_12_wal_ranges_per_timeline_and_day() {
        let day = |d: u64, s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(d * 86_400 + s));
        let meta = |name: &str, at: Option<SystemTime>| ObjectMeta {
            key: Key::new(format!("wal/{}/{name}", &name[..16])).expect("key"),
            size: 10,
            modified: at,
        };
        let listing = vec![
            meta("000000010000000000000001", day(100, 10)),
            meta("000000010000000000000002", day(100, 20)),
            meta("000000010000000000000003", day(101, 5)), // next day
            meta("000000010000000000000005", day(101, 6)), // after a gap
            meta("000000020000000000000005", day(101, 7)), // another timeline
            meta("000000020000000000000006", None),        // no time: a day of its own
        ];
        let size = SegmentSize::new(16 * 1024 * 1024).expect("size");
        let index = WalIndex::build(&listing, size);
        let got: Vec<(String, String, u64, u64)> =
            wal_ranges(&index).iter().map(|r| (r.first.to_string(), r.last.to_string(), r.segments, r.bytes)).collect();
        let want = [
            ("000000010000000000000001", "000000010000000000000002", 2, 20),
            ("000000010000000000000003", "000000010000000000000003", 1, 10),
            ("000000010000000000000005", "000000010000000000000005", 1, 10),
            ("000000020000000000000005", "000000020000000000000005", 1, 10),
            ("000000020000000000000006", "000000020000000000000006", 1, 10),
        ];
        let want: Vec<(String, String, u64, u64)> =
            want.iter().map(|(a, b, n, s)| (a.to_string(), b.to_string(), *n, *s)).collect();
        assert_eq!(got, want);
        let first = &wal_ranges(&index)[0];
        assert_eq!((first.first_archived, first.last_archived), (day(100, 10), day(100, 20)));
    }
}
