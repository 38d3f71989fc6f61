//! The backup catalog: the repository mirrored into PostgreSQL tables (schema `backupctl`) for SQL queries.
//!
//! Invariants:
//! - The repository is the source of truth. The catalog is written only from what the repository holds
//!   ([`sync()`], from `backupctl status`'s own picture, [`crate::verify::status::collect`]) and from the scheduler's
//!   job runs ([`Catalog::record_job_run`]), by hand or by the scheduler. Rows of backups and WAL that left the repository are marked removed
//!   (`removed_at`), never deleted.
//! - A sync writes only differences: a second sync of an unchanged repository writes no row. It reads only what
//!   changed since the last one, as far as that is safe ([`reuse`]): an unchanged repository costs listings and
//!   its small records, no manifest.
//! - The catalog never lives in the cluster the repository archives: every write there would make WAL for
//!   wal-push to archive. [`Catalog::refuse_archived_cluster`] compares `system_identifier`s; wal-push and
//!   wal-fetch never connect to a catalog at all.
//! - The schema is created and migrated by versioned migrations (refinery, `src/catalog/migrations/V*.sql`),
//!   recorded in `backupctl.schema_history`; one session at a time migrates or syncs (an advisory lock).
//! - The client is the synchronous `postgres` crate: call these outside an async runtime's worker threads.
//!
//! The schema and the reasons behind it: docs/design/catalog.md.

use crate::config::CatalogConfig;

mod ranges;
pub mod reuse;
mod runs;
mod sync;

pub use reuse::{Stored, SyncState};
pub use runs::{DrillFacts, JobRun, StartedBy};
pub use sync::{Dump, SyncInput, SyncReport, sync};

mod embedded {
    refinery::embed_migrations!("src/catalog/migrations");
}

/// The schema every catalog table lives in.
pub const SCHEMA: &str = "backupctl";
/// The table refinery records applied migrations in.
const HISTORY_TABLE: &str = "backupctl.schema_history";
/// `pg_advisory_lock` key held while migrating or syncing ("bkctlcat" as bytes).
const LOCK_KEY: i64 = 0x626b_6374_6c63_6174;

/// Catalog errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Could not connect.
    #[error("cannot connect to the catalog at {target}: {}", crate::pg::server_says(source))]
    Connect {
        /// host:port/dbname as user.
        target: String,
        /// Cause.
        #[source]
        source: postgres::Error,
    },
    /// The TLS client could not be set up (a configured certificate or key file is missing or unusable).
    #[error("cannot connect to the catalog at {target}: {source}")]
    Tls {
        /// host:port/dbname as user.
        target: String,
        /// Cause.
        #[source]
        source: crate::pg::tls::SetupError,
    },
    /// A statement failed.
    #[error("catalog at {target}: {what} failed: {}", crate::pg::server_says(source))]
    Query {
        /// host:port/dbname.
        target: String,
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: postgres::Error,
    },
    /// A migration failed or the recorded schema history disagrees with this build's migrations.
    #[error("catalog at {target}: migrating schema backupctl failed: {source}")]
    Migrate {
        /// host:port/dbname.
        target: String,
        /// Cause.
        #[source]
        source: Box<refinery::Error>,
    },
    /// The catalog's schema is newer than this build knows.
    #[error("catalog at {target}: schema backupctl is at version {found}, newer than this build's {known}")]
    NewerSchema {
        /// host:port/dbname.
        target: String,
        /// The version recorded.
        found: i64,
        /// The newest version this build has.
        known: i64,
    },
    /// Nothing was synced into the catalog for this repository yet (no schema, or no row for it).
    #[error("catalog at {target} has not been synced for repository {repository}")]
    NotSynced {
        /// host:port/dbname.
        target: String,
        /// The repository as backupctl prints it.
        repository: String,
    },
    /// The catalog's schema is older than this build's, and the writer may not migrate it (an implicit update
    /// after base-backup, dump, prune, delete or a scheduled job: a DBA may have staged it at that version).
    #[error(
        "catalog schema is at version {found}, this backupctl needs {known}: run `backupctl catalog migrate` \
         (catalog at {target})"
    )]
    OlderSchema {
        /// host:port/dbname.
        target: String,
        /// The version recorded.
        found: i64,
        /// The newest version this build has.
        known: i64,
    },
    /// The catalog's row for this repository URL was synced from a repository of another cluster: two
    /// repositories with the same URL (on different S3 endpoints, or the same `file://` path on different hosts)
    /// would otherwise overwrite each other's rows at every sync.
    #[error(
        "catalog at {target} holds repository {url} of cluster {recorded}, but the repository at that URL now \
         belongs to cluster {found} (system identifiers): the catalog names a repository by its URL"
    )]
    OtherRepository {
        /// host:port/dbname.
        target: String,
        /// The repository URL.
        url: String,
        /// The `system_identifier` the catalog row holds.
        recorded: String,
        /// The repository's `system_identifier` (its `cluster.json`).
        found: String,
    },
    /// The catalog is inside the cluster the repository archives.
    #[error(
        "catalog at {target} is in the cluster this repository archives (system identifier {system_identifier}): \
         every catalog write would make WAL to archive; put the catalog in another cluster"
    )]
    ArchivedCluster {
        /// host:port/dbname.
        target: String,
        /// The shared `system_identifier`.
        system_identifier: String,
    },
}

/// [`Error::OtherRepository`] when the row of the catalog at `target` for repository `url` holds another cluster
/// (`recorded`, its `system_identifier`) than the repository's (`found`, its `cluster.json`); either unknown
/// (`None`) is not compared.
fn same_cluster(target: &str, url: &str, recorded: Option<&str>, found: Option<&str>) -> Result<(), Error> {
    match (recorded, found) {
        (Some(recorded), Some(found)) if recorded != found => Err(Error::OtherRepository {
            target: target.to_owned(),
            url: url.to_owned(),
            recorded: recorded.to_owned(),
            found: found.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// One session with the catalog database.
pub struct Catalog {
    client: postgres::Client,
    target: String,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("target", &self.target).finish_non_exhaustive()
    }
}

/// Connect as configured (a `host` starting with `/` is a Unix-socket directory, as with libpq), with TLS as
/// `sslmode` and the certificate settings say ([`crate::pg::tls`]).
///
/// Errors: [`Error::Tls`] when a configured certificate or key file is unusable; [`Error::Connect`] otherwise.
pub fn connect(cfg: &CatalogConfig) -> Result<Catalog, Error> {
    let target = format!("{}:{}/{}", cfg.host, cfg.port, cfg.dbname);
    let mut c = postgres::Config::new();
    c.connect_timeout(std::time::Duration::from_secs(30))
        .port(cfg.port)
        .user(&cfg.user)
        .dbname(&cfg.dbname)
        .application_name("backupctl catalog");
    if crate::pg::tls::is_unix_socket(&cfg.host) {
        c.host_path(&cfg.host);
    } else {
        c.host(&cfg.host);
    }
    if let Some(p) = &cfg.password {
        c.password(p);
    }
    let who = format!("{target} as {}", cfg.user);
    let client = crate::pg::tls::connect(&mut c, &cfg.host, &cfg.tls()).map_err(|e| match e {
        crate::pg::tls::ConnectError::Setup(source) => Error::Tls { target: who.clone(), source },
        crate::pg::tls::ConnectError::Connect(source) => Error::Connect { target: who.clone(), source },
    })?;
    Ok(Catalog { client, target })
}

/// The newest schema version this build's migrations create.
pub fn latest_version() -> i64 {
    embedded::migrations::runner().get_migrations().iter().map(|m| i64::from(m.version())).max().unwrap_or(0)
}

impl Catalog {
    /// host:port/dbname, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn query_err(&self, what: &'static str) -> impl FnOnce(postgres::Error) -> Error + '_ {
        move |source| Error::Query { target: self.target.clone(), what, source }
    }

    /// Refuse a catalog inside the cluster whose WAL this repository holds: `system_identifier` is the
    /// repository's cluster record (`None`: nothing archived yet, nothing to compare). The catalog server's comes
    /// from `pg_control_system()` (PostgreSQL's "System Information Functions").
    pub fn refuse_archived_cluster(&mut self, system_identifier: Option<&str>) -> Result<(), Error> {
        let Some(archived) = system_identifier else { return Ok(()) };
        let row = self
            .client
            .query_one("select system_identifier::text from pg_control_system()", &[])
            .map_err(|source| Error::Query { target: self.target.clone(), what: "pg_control_system()", source })?;
        let own: String = row.get(0);
        if own == archived {
            return Err(Error::ArchivedCluster { target: self.target.clone(), system_identifier: own });
        }
        Ok(())
    }

    /// The schema version recorded in `backupctl.schema_history` (0: no schema yet).
    pub fn schema_version(&mut self) -> Result<i64, Error> {
        let target = self.target.clone();
        let q = |source| Error::Query { target: target.clone(), what: "reading the schema version", source };
        let exists: bool =
            self.client.query_one("select to_regclass($1) is not null", &[&HISTORY_TABLE]).map_err(q)?.get(0);
        if !exists {
            return Ok(0);
        }
        let row = self
            .client
            .query_one(&format!("select coalesce(max(version), 0)::int8 from {HISTORY_TABLE}"), &[])
            .map_err(|source| Error::Query {
            target: self.target.clone(),
            what: "reading the schema version",
            source,
        })?;
        Ok(row.get(0))
    }

    /// Create schema `backupctl` if needed and apply every migration up to `to_version` (`None`: the newest).
    /// Returns the versions applied now. Refuses a schema newer than this build ([`Error::NewerSchema`]): an
    /// older backupctl must not write into it.
    pub fn migrate(&mut self, to_version: Option<u32>) -> Result<Vec<i64>, Error> {
        self.lock()?;
        let result = self.migrate_locked(to_version);
        self.unlock();
        result
    }

    fn migrate_locked(&mut self, to_version: Option<u32>) -> Result<Vec<i64>, Error> {
        let known = latest_version();
        let found = self.schema_version()?;
        if found > known {
            return Err(Error::NewerSchema { target: self.target.clone(), found, known });
        }
        self.client
            .batch_execute(&format!("create schema if not exists {SCHEMA}"))
            .map_err(self.query_err("creating schema backupctl"))?;
        let mut runner = embedded::migrations::runner();
        runner.set_migration_table_name(HISTORY_TABLE);
        let runner = match to_version {
            Some(v) => runner.set_target(refinery::Target::Version(v.try_into().unwrap_or(i32::MAX))),
            None => runner,
        };
        let report = runner
            .run(&mut self.client)
            .map_err(|source| Error::Migrate { target: self.target.clone(), source: Box::new(source) })?;
        Ok(report.applied_migrations().iter().map(|m| i64::from(m.version())).collect())
    }

    /// Make the schema ready for writing, what every writer does first: create it (at the newest version) when
    /// there is none; migrate an older one only when `may_migrate` (the explicit `catalog sync`), else
    /// [`Error::OlderSchema`] (the implicit updates: a DBA may have staged it at that version on purpose). A
    /// newer one is [`Error::NewerSchema`]. Decided under the catalog lock. Returns what was done, if anything.
    pub fn prepare_schema(&mut self, may_migrate: bool) -> Result<Option<SchemaChange>, Error> {
        self.lock()?;
        let result = self.prepare_schema_locked(may_migrate);
        self.unlock();
        result
    }

    fn prepare_schema_locked(&mut self, may_migrate: bool) -> Result<Option<SchemaChange>, Error> {
        let known = latest_version();
        let found = self.schema_version()?;
        if found == known {
            return Ok(None);
        }
        if found > 0 && found < known && !may_migrate {
            return Err(Error::OlderSchema { target: self.target.clone(), found, known });
        }
        let applied = self.migrate_locked(None)?;
        Ok(Some(SchemaChange { from: found, to: self.schema_version()?, applied }))
    }

    /// Fail unless the schema is at this build's version ([`Error::OlderSchema`], [`Error::NewerSchema`]).
    fn require_current(&mut self) -> Result<(), Error> {
        let (known, found) = (latest_version(), self.schema_version()?);
        match found.cmp(&known) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less => Err(Error::OlderSchema { target: self.target.clone(), found, known }),
            std::cmp::Ordering::Greater => Err(Error::NewerSchema { target: self.target.clone(), found, known }),
        }
    }

    /// Run `f` holding the catalog lock (the advisory lock that serializes migrations and syncs). A sync reads
    /// what the catalog holds and the repository under it, then writes: another sync committing in between would
    /// otherwise be overwritten by an older picture (a backup marked removed that exists, pruned WAL brought
    /// back). The lock is re-entrant within the session, so `f` may migrate or sync. Errors: taking the lock
    /// ([`Error::Query`]), or `f`'s.
    pub fn locked<T, E: From<Error>>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, E>) -> Result<T, E> {
        self.lock()?;
        let result = f(self);
        self.unlock();
        result
    }

    fn lock(&mut self) -> Result<(), Error> {
        self.client.execute("select pg_advisory_lock($1)", &[&LOCK_KEY]).map_err(|source| Error::Query {
            target: self.target.clone(),
            what: "taking the catalog lock",
            source,
        })?;
        Ok(())
    }

    fn unlock(&mut self) {
        // The session's end releases it too.
        let _ = self.client.execute("select pg_advisory_unlock($1)", &[&LOCK_KEY]);
    }

    /// The repository-level status document and the backups' and dumps' documents (oldest first, removed ones
    /// left out) stored for `repository` by the last sync. [`Error::NotSynced`] if no sync wrote it (no schema, or
    /// no row for `repository`); [`Error::OlderSchema`] or [`Error::NewerSchema`] for a schema at another version
    /// than this build's; [`Error::OtherRepository`] when the row was synced from a repository of another cluster
    /// than `system_identifier` (the repository's `cluster.json`; `None`: nothing archived yet, not compared).
    pub fn status_documents(
        &mut self,
        repository: &str,
        system_identifier: Option<&str>,
    ) -> Result<StatusDocuments, Error> {
        let target = self.target.clone();
        let not_synced = || Error::NotSynced { target: target.clone(), repository: repository.to_owned() };
        let version = self.schema_version()?;
        if version == 0 {
            return Err(not_synced());
        }
        // A schema at another version first: a repository synced by another build may have no row in it yet.
        self.require_current()?;
        let target = self.target.clone();
        let q = |source| Error::Query { target: target.clone(), what: "reading status", source };
        let Some(row) = self
            .client
            .query_opt(
                "select id, status, system_identifier from backupctl.repositories where url = $1",
                &[&repository],
            )
            .map_err(q)?
        else {
            return Err(not_synced());
        };
        let (id, status, recorded): (i64, serde_json::Value, Option<String>) = (row.get(0), row.get(1), row.get(2));
        same_cluster(&self.target, repository, recorded.as_deref(), system_identifier)?;
        let backups = self
            .client
            .query(
                "select document from backupctl.backups where repository_id = $1 and removed_at is null order by id collate \"C\"",
                &[&id],
            )
            .map_err(|source| Error::Query { target: self.target.clone(), what: "reading backups", source })?
            .iter()
            .map(|r| r.get::<_, serde_json::Value>(0))
            .collect();
        let dumps = self
            .client
            .query(
                "select document from backupctl.dumps where repository_id = $1 and removed_at is null order by id collate \"C\"",
                &[&id],
            )
            .map_err(|source| Error::Query { target: self.target.clone(), what: "reading dumps", source })?
            .iter()
            .map(|r| r.get::<_, serde_json::Value>(0))
            .collect();
        Ok(StatusDocuments { status, backups, dumps })
    }
}

/// What [`Catalog::prepare_schema`] did to the schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaChange {
    /// The version before (0: there was no schema).
    pub from: i64,
    /// The version now.
    pub to: i64,
    /// The migrations applied, in order.
    pub applied: Vec<i64>,
}

/// What the last sync stored for one repository, as `backupctl status --json-output` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusDocuments {
    /// The status without `backups`, `dumps` and `newest_backup_age_seconds`.
    pub status: serde_json::Value,
    /// Each backup's JSON, oldest first.
    pub backups: Vec<serde_json::Value>,
    /// Each dump's JSON, oldest first.
    pub dumps: Vec<serde_json::Value>,
}
