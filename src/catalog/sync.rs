//! `backupctl catalog sync`: write the repository's picture into the catalog, differences only.

use std::time::SystemTime;

use super::ranges::wal_ranges;
use super::reuse::{SyncState, manifest_header};
use super::{Catalog, Error};
use crate::verify::status::{Status, rfc3339};

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
    /// What this sync records for the next one (`repositories.sync_state`; see [`super::reuse`]).
    pub state: &'a SyncState,
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

impl Dump {
    /// The row of the dump whose `status` document is `document` (what
    /// `crate::cli::admin::status::dumps::json` makes of its manifest): every column comes from it, so a document
    /// stored by an earlier sync gives the same row as the manifest it was made from.
    pub fn from_document(document: serde_json::Value) -> Self {
        let text = |k: &str| document[k].as_str().unwrap_or_default().to_owned();
        let databases = document["databases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        Self {
            id: text("id"),
            label: text("label"),
            started_at: text("started_at"),
            finished_at: text("finished_at"),
            databases,
            bytes_logical: document["bytes"].as_u64().unwrap_or_default(),
            bytes_stored: document["stored_bytes"].as_u64().unwrap_or_default(),
            document,
        }
    }
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

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn time_text(t: Option<SystemTime>) -> String {
    t.and_then(rfc3339).unwrap_or_default()
}

/// The `backups` and `backup_wal` rows of a sync, column by column (each vector one entry per backup): written
/// with one statement per table, `insert ... select ... from unnest($2, $3, ...)`.
#[derive(Debug, Default)]
struct BackupColumns {
    ids: Vec<String>,
    labels: Vec<String>,
    descriptions: Vec<Option<String>>,
    types: Vec<String>,
    statuses: Vec<String>,
    started: Vec<String>,
    finished: Vec<String>,
    start_lsns: Vec<String>,
    stop_lsns: Vec<String>,
    timelines: Vec<i32>,
    logical: Vec<i64>,
    stored: Vec<i64>,
    new: Vec<i64>,
    checksums: Vec<String>,
    restorable: Vec<bool>,
    restorable_from: Vec<String>,
    restorable_until: Vec<String>,
    kept: Vec<bool>,
    documents: Vec<serde_json::Value>,
    manifests: Vec<serde_json::Value>,
    start_segments: Vec<String>,
    stop_segments: Vec<String>,
    reach_segments: Vec<Option<String>>,
    reach_archived: Vec<String>,
}

fn backup_columns(input: &SyncInput<'_>) -> BackupColumns {
    let mut c = BackupColumns::default();
    for (b, doc) in input.status.backups.iter().zip(input.backups) {
        let m = &b.manifest;
        let restorable = doc.get("restorable").and_then(serde_json::Value::as_bool).unwrap_or(false);
        let (from, until) = if restorable {
            (m.stop_time.clone(), time_text(b.coverage.reach_written))
        } else {
            (String::new(), String::new())
        };
        c.ids.push(m.id.to_string());
        c.labels.push(m.label.clone());
        c.descriptions.push(m.description.clone());
        c.types.push(m.backup_type.to_string());
        c.statuses.push(doc.get("status").and_then(serde_json::Value::as_str).unwrap_or("ok").to_owned());
        c.started.push(m.start_time.clone());
        c.finished.push(m.stop_time.clone());
        c.start_lsns.push(m.start_lsn.to_string());
        c.stop_lsns.push(m.stop_lsn.to_string());
        c.timelines.push(i32::try_from(m.timeline).unwrap_or(i32::MAX));
        c.logical.push(big(b.sizes.logical));
        c.stored.push(big(b.sizes.stored));
        c.new.push(big(m.stats.bytes_new));
        c.checksums.push(b.manifest_digest.to_string());
        c.restorable.push(restorable);
        c.restorable_from.push(from);
        c.restorable_until.push(until);
        c.kept.push(b.is_kept);
        c.documents.push(doc.clone());
        c.manifests.push(manifest_header(m));
        c.start_segments.push(m.start_wal.clone());
        c.stop_segments.push(m.stop_wal.clone());
        c.reach_segments.push(b.coverage.wal.reach.map(|r| r.to_string()));
        c.reach_archived.push(time_text(b.coverage.reach_written));
    }
    c
}

/// Upsert every backup: one statement; unchanged rows are not rewritten.
const BACKUPS_SQL: &str = "insert into backupctl.backups as b (repository_id, id, label, description, type, status, \
    started_at, finished_at, start_lsn, stop_lsn, timeline, bytes_logical, bytes_stored, bytes_new, \
    manifest_checksum, restorable, restorable_from, restorable_until, kept, removed_at, document, manifest) \
    select $1, u.id, u.label, u.description, u.type, u.status, nullif(u.started_at, '')::timestamptz, \
    nullif(u.finished_at, '')::timestamptz, u.start_lsn::pg_lsn, u.stop_lsn::pg_lsn, u.timeline, u.bytes_logical, \
    u.bytes_stored, u.bytes_new, u.manifest_checksum, u.restorable, nullif(u.restorable_from, '')::timestamptz, \
    nullif(u.restorable_until, '')::timestamptz, u.kept, null, u.document, u.manifest \
    from unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
    $10::text[], $11::int4[], $12::int8[], $13::int8[], $14::int8[], $15::text[], $16::bool[], $17::text[], \
    $18::text[], $19::bool[], $20::jsonb[], $21::jsonb[]) as u(id, label, description, type, status, started_at, \
    finished_at, start_lsn, stop_lsn, timeline, bytes_logical, bytes_stored, bytes_new, manifest_checksum, \
    restorable, restorable_from, restorable_until, kept, document, manifest) \
    on conflict (repository_id, id) do update set label = excluded.label, description = excluded.description, \
    type = excluded.type, status = excluded.status, started_at = excluded.started_at, \
    finished_at = excluded.finished_at, start_lsn = excluded.start_lsn, stop_lsn = excluded.stop_lsn, \
    timeline = excluded.timeline, bytes_logical = excluded.bytes_logical, bytes_stored = excluded.bytes_stored, \
    bytes_new = excluded.bytes_new, manifest_checksum = excluded.manifest_checksum, \
    restorable = excluded.restorable, restorable_from = excluded.restorable_from, \
    restorable_until = excluded.restorable_until, kept = excluded.kept, removed_at = null, \
    document = excluded.document, manifest = excluded.manifest \
    where (b.label, b.description, b.type, b.status, b.started_at, b.finished_at, b.start_lsn, b.stop_lsn, \
    b.timeline, b.bytes_logical, b.bytes_stored, b.bytes_new, b.manifest_checksum, b.restorable, \
    b.restorable_from, b.restorable_until, b.kept, b.removed_at, b.document, b.manifest) is distinct from \
    (excluded.label, excluded.description, excluded.type, excluded.status, excluded.started_at, \
    excluded.finished_at, excluded.start_lsn, excluded.stop_lsn, excluded.timeline, excluded.bytes_logical, \
    excluded.bytes_stored, excluded.bytes_new, excluded.manifest_checksum, excluded.restorable, \
    excluded.restorable_from, excluded.restorable_until, excluded.kept, excluded.removed_at, excluded.document, \
    excluded.manifest)";

/// Upsert the WAL each backup needs: one statement.
const BACKUP_WAL_SQL: &str = "insert into backupctl.backup_wal as w (repository_id, backup_id, timeline, \
    start_segment, stop_segment, reach_segment, reach_archived_at) \
    select $1, u.id, u.timeline, u.start_segment, u.stop_segment, u.reach_segment, \
    nullif(u.reach_archived_at, '')::timestamptz \
    from unnest($2::text[], $3::int4[], $4::text[], $5::text[], $6::text[], $7::text[]) \
    as u(id, timeline, start_segment, stop_segment, reach_segment, reach_archived_at) \
    on conflict (repository_id, backup_id) do update set timeline = excluded.timeline, \
    start_segment = excluded.start_segment, stop_segment = excluded.stop_segment, \
    reach_segment = excluded.reach_segment, reach_archived_at = excluded.reach_archived_at \
    where (w.timeline, w.start_segment, w.stop_segment, w.reach_segment, w.reach_archived_at) is distinct from \
    (excluded.timeline, excluded.start_segment, excluded.stop_segment, excluded.reach_segment, \
    excluded.reach_archived_at)";

/// Upsert every WAL range: one statement.
const WAL_RANGES_SQL: &str = "insert into backupctl.wal_ranges as r (repository_id, timeline, first_segment, \
    last_segment, segments, bytes, first_archived_at, last_archived_at, removed_at) \
    select $1, u.timeline, u.first_segment, u.last_segment, u.segments, u.bytes, \
    nullif(u.first_archived_at, '')::timestamptz, nullif(u.last_archived_at, '')::timestamptz, null \
    from unnest($2::int4[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::text[], $8::text[]) \
    as u(timeline, first_segment, last_segment, segments, bytes, first_archived_at, last_archived_at) \
    on conflict (repository_id, timeline, first_segment) do update set last_segment = excluded.last_segment, \
    segments = excluded.segments, bytes = excluded.bytes, first_archived_at = excluded.first_archived_at, \
    last_archived_at = excluded.last_archived_at, removed_at = null \
    where (r.last_segment, r.segments, r.bytes, r.first_archived_at, r.last_archived_at, r.removed_at) \
    is distinct from (excluded.last_segment, excluded.segments, excluded.bytes, excluded.first_archived_at, \
    excluded.last_archived_at, excluded.removed_at)";

/// Upsert every dump: one statement. Each dump's databases arrive as a JSON array (`unnest` would flatten a
/// two-dimensional `text[]`).
const DUMPS_SQL: &str = "insert into backupctl.dumps as d (repository_id, id, label, started_at, finished_at, \
    databases, bytes_logical, bytes_stored, removed_at, document) \
    select $1, u.id, u.label, nullif(u.started_at, '')::timestamptz, nullif(u.finished_at, '')::timestamptz, \
    array(select e from jsonb_array_elements_text(u.databases) with ordinality as a(e, n) order by n), \
    u.bytes_logical, u.bytes_stored, null, u.document \
    from unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::int8[], $8::int8[], $9::jsonb[]) \
    as u(id, label, started_at, finished_at, databases, bytes_logical, bytes_stored, document) \
    on conflict (repository_id, id) do update set label = excluded.label, started_at = excluded.started_at, \
    finished_at = excluded.finished_at, databases = excluded.databases, bytes_logical = excluded.bytes_logical, \
    bytes_stored = excluded.bytes_stored, removed_at = null, document = excluded.document \
    where (d.label, d.started_at, d.finished_at, d.databases, d.bytes_logical, d.bytes_stored, d.removed_at, \
    d.document) is distinct from (excluded.label, excluded.started_at, excluded.finished_at, \
    excluded.databases, excluded.bytes_logical, excluded.bytes_stored, excluded.removed_at, excluded.document)";

/// Mirror `input` into the catalog in one transaction, writing only rows that differ from what it holds; rows of
/// backups, dumps and WAL ranges no longer in the repository are marked removed. The schema must be at this
/// build's version ([`Catalog::prepare_schema`] first; else [`Error::OlderSchema`] or [`Error::NewerSchema`]).
///
/// A fixed number of statements whatever the size of the repository: per table one `insert ... select ... from
/// unnest(...) on conflict ... do update ... where ... is distinct from ...` carrying every row as arrays, and one
/// `update` marking the removed ones.
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
    // Strings and maps with string keys: serializing cannot fail (and a null state only makes the next sync read
    // everything).
    let state = serde_json::to_value(input.state).unwrap_or_default();
    let existing: Option<(i64, Option<String>)> = tx
        .query_opt("select id, system_identifier from backupctl.repositories where url = $1", &[&input.repository])
        .map_err(q("reading repositories"))?
        .map(|r| (r.get(0), r.get(1)));
    super::same_cluster(&target, input.repository, existing.as_ref().and_then(|e| e.1.as_deref()), sysid.as_deref())?;
    let repository_id: i64 = match existing.map(|(id, _)| id) {
        Some(id) => {
            report.repositories += tx
                .execute(
                    "update backupctl.repositories set system_identifier = $2, pg_version = $3, \
                     wal_segment_size = $4, status = $5, sync_state = $6, changed_at = now() where id = $1 and \
                     (system_identifier, pg_version, wal_segment_size, status, sync_state) is distinct from \
                     ($2::text, $3::int4, $4::int8, $5::jsonb, $6::jsonb)",
                    &[&id, &sysid, &version, &seg, &input.document, &state],
                )
                .map_err(q("updating repositories"))?;
            id
        }
        None => {
            report.repositories += 1;
            tx.query_one(
                "insert into backupctl.repositories (url, system_identifier, pg_version, wal_segment_size, status, \
                 sync_state) values ($1, $2, $3, $4, $5, $6) returning id",
                &[&input.repository, &sysid, &version, &seg, &input.document, &state],
            )
            .map_err(q("inserting into repositories"))?
            .get(0)
        }
    };

    // Backups, and the WAL each needs.
    let c = backup_columns(input);
    report.backups = tx
        .execute(
            BACKUPS_SQL,
            &[
                &repository_id,
                &c.ids,
                &c.labels,
                &c.descriptions,
                &c.types,
                &c.statuses,
                &c.started,
                &c.finished,
                &c.start_lsns,
                &c.stop_lsns,
                &c.timelines,
                &c.logical,
                &c.stored,
                &c.new,
                &c.checksums,
                &c.restorable,
                &c.restorable_from,
                &c.restorable_until,
                &c.kept,
                &c.documents,
                &c.manifests,
            ],
        )
        .map_err(q("writing backups"))?;
    report.backup_wal = tx
        .execute(
            BACKUP_WAL_SQL,
            &[
                &repository_id,
                &c.ids,
                &c.timelines,
                &c.start_segments,
                &c.stop_segments,
                &c.reach_segments,
                &c.reach_archived,
            ],
        )
        .map_err(q("writing backup_wal"))?;
    report.backups_removed = tx
        .execute(
            "update backupctl.backups set removed_at = now() where repository_id = $1 and removed_at is null \
             and id not in (select unnest($2::text[]))",
            &[&repository_id, &c.ids],
        )
        .map_err(q("marking removed backups"))?;

    // Archived WAL, as ranges.
    let ranges = wal_ranges(&s.index);
    let timelines: Vec<i32> = ranges.iter().map(|r| i32::try_from(r.timeline.0).unwrap_or(i32::MAX)).collect();
    let firsts: Vec<String> = ranges.iter().map(|r| r.first.to_string()).collect();
    let lasts: Vec<String> = ranges.iter().map(|r| r.last.to_string()).collect();
    let segments: Vec<i64> = ranges.iter().map(|r| big(r.segments)).collect();
    let bytes: Vec<i64> = ranges.iter().map(|r| big(r.bytes)).collect();
    let first_at: Vec<String> = ranges.iter().map(|r| time_text(r.first_archived)).collect();
    let last_at: Vec<String> = ranges.iter().map(|r| time_text(r.last_archived)).collect();
    report.wal_ranges = tx
        .execute(WAL_RANGES_SQL, &[&repository_id, &timelines, &firsts, &lasts, &segments, &bytes, &first_at, &last_at])
        .map_err(q("writing wal_ranges"))?;
    report.wal_ranges_removed = tx
        .execute(
            "update backupctl.wal_ranges set removed_at = now() where repository_id = $1 and removed_at is null \
             and first_segment not in (select unnest($2::text[]))",
            &[&repository_id, &firsts],
        )
        .map_err(q("marking removed WAL ranges"))?;

    // Dumps.
    let d = input.dumps;
    let dump_ids: Vec<String> = d.iter().map(|d| d.id.clone()).collect();
    let labels: Vec<&str> = d.iter().map(|d| d.label.as_str()).collect();
    let started: Vec<&str> = d.iter().map(|d| d.started_at.as_str()).collect();
    let finished: Vec<&str> = d.iter().map(|d| d.finished_at.as_str()).collect();
    let databases: Vec<serde_json::Value> = d.iter().map(|d| serde_json::json!(d.databases)).collect();
    let logical: Vec<i64> = d.iter().map(|d| big(d.bytes_logical)).collect();
    let stored: Vec<i64> = d.iter().map(|d| big(d.bytes_stored)).collect();
    let documents: Vec<&serde_json::Value> = d.iter().map(|d| &d.document).collect();
    report.dumps = tx
        .execute(
            DUMPS_SQL,
            &[&repository_id, &dump_ids, &labels, &started, &finished, &databases, &logical, &stored, &documents],
        )
        .map_err(q("writing dumps"))?;
    report.dumps_removed = tx
        .execute(
            "update backupctl.dumps set removed_at = now() where repository_id = $1 and removed_at is null \
             and id not in (select unnest($2::text[]))",
            &[&repository_id, &dump_ids],
        )
        .map_err(q("marking removed dumps"))?;
    tx.commit().map_err(q("committing the sync"))?;
    Ok(report)
}
