//! `backupctl dump-restore`: fetch and verify everything first, then `psql` (globals) and `pg_restore`.
//!
//! Order (each step only if the previous succeeded): check the request against the manifest and the target
//! (refuse a non-empty target without `--clean`, a missing one without `--create`/`--target-database`); fetch
//! every stream into a temporary directory, each frame and each stream verified; restore the globals script
//! (asked with `--globals`); create the target database if needed, with the source's encoding, locale and owner
//! ([`super::create`]); run `pg_restore` (one transaction unless `--jobs` is above 1); then give a database this
//! run created the source's own settings. A database this run created is dropped again when `pg_restore` fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Serialize;

use super::create::{apply_properties, create_database, database_exists, drop_database};
use super::store::fetch;
use super::tools::{self, StderrTail, Tools};
use super::{DumpFormat, DumpId, Error};
use crate::config::{Config, PostgresConfig};
use crate::pg;
use crate::progress::Progress;
use crate::repository::dump as layout;
use crate::repository::lease::{self, LeaseKind};
use crate::repository::packstore::FrameIndex;
use crate::repository::store;

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    /// The dump.
    pub id: Option<DumpId>,
    /// The database of the dump to restore (none: only `globals`).
    pub database: Option<String>,
    /// Restore into this database instead of one of the same name (created if missing).
    pub target: Option<String>,
    /// Create the target database if it does not exist.
    pub create: bool,
    /// `pg_restore --jobs` (above 1: not in one transaction).
    pub jobs: usize,
    /// Restore only these tables (`pg_restore --table`, each must be in the dump).
    pub tables: Vec<String>,
    /// Restore only the schema (`pg_restore --schema-only`).
    pub schema_only: bool,
    /// Drop the dumped objects before recreating them (`pg_restore --clean --if-exists`); needed for a non-empty
    /// target.
    pub clean: bool,
    /// Restore the roles and tablespaces script first (through `psql`).
    pub globals: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    /// The dump.
    pub dump: String,
    /// The database of the dump restored, if any.
    pub database: Option<String>,
    /// The database restored into.
    pub target: Option<String>,
    /// True if this run created the target database.
    pub created: bool,
    /// True if the globals script was run.
    pub globals: bool,
    /// Statements of the globals script that failed because the role or tablespace exists already.
    pub globals_existing: u64,
    /// Raw bytes fetched and verified.
    pub bytes_fetched: u64,
    /// The `pg_restore` used.
    pub pg_restore: String,
    /// What of the source database's properties a database this run created did not take (a locale provider
    /// the server lacks, an owner that is not a role here, a setting the server refused).
    pub notes: Vec<String>,
}

/// Restore from a dump as asked. Blocking (see [`super::run`]).
#[tracing::instrument(skip_all, fields(dump_id = tracing::field::Empty))]
pub fn restore(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    request: &RestoreRequest,
    progress: &dyn Progress,
) -> Result<RestoreOutcome, crate::Error> {
    let pg_config = config.postgres.as_ref().ok_or_else(|| {
        crate::Error::Usage(
            concat!(
                "dump-restore needs a [postgres] section in the configuration (see ",
                doc!("configuration.md"),
                ")"
            )
            .into(),
        )
    })?;
    let Some(id) = request.id.clone() else { return Err(crate::Error::Usage("--backup-id is required".into())) };
    if request.database.is_none() && !request.globals {
        return Err(crate::Error::Usage("dump-restore needs --database DB, --globals, or both".into()));
    }
    if request.database.is_none() && (request.target.is_some() || !request.tables.is_empty() || request.create) {
        return Err(crate::Error::Usage("--target-database, --table and --create need --database".into()));
    }
    tracing::Span::current().record("dump_id", tracing::field::display(&id));
    let deadline = std::time::Duration::from_secs(config.archive.retry_deadline_seconds);
    let storage = rt.block_on(crate::storage::open(&config.repository.url, &config.repository.s3, deadline))?;
    rt.block_on(store::require_existing(storage.as_ref()))?;
    let Some(manifest) = rt.block_on(layout::load_manifest(storage.as_ref(), &id))? else {
        let ids = rt.block_on(layout::dump_ids(storage.as_ref()))?;
        let known = if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        return Err(Error::UnknownDump { id, backend: storage.to_string(), known }.into());
    };
    let entry = match &request.database {
        Some(name) => Some(manifest.database(name).ok_or_else(|| Error::NotInDump {
            id: id.clone(),
            what: format!("database {name:?}"),
            known: manifest.databases.iter().map(|d| format!("{:?}", d.name)).collect::<Vec<_>>().join(", "),
        })?),
        None => None,
    };
    if request.globals && manifest.globals.is_none() {
        return Err(Error::NotInDump { id, what: "globals script".into(), known: "databases only".into() }.into());
    }

    let mut session = pg::connect(pg_config)?;
    let target_server = session.target().to_owned();
    let server_major = session.major().major;
    let dump_major = tools::parse_major(&manifest.pg_dump_version).unwrap_or(0);
    let path_env = std::env::var_os("PATH");
    let tools = tools::find(
        "pg_restore",
        server_major.max(dump_major),
        config.dump.bin_dir.as_deref(),
        None,
        path_env.as_deref(),
    )?;
    let target = entry.map(|_| request.target.clone().or_else(|| request.database.clone()).unwrap_or_default());
    let mut must_create = false;
    if let Some(target) = &target {
        if database_exists(&mut session, target)? {
            if !request.clean {
                let objects = user_objects(pg_config, target)?;
                if objects > 0 {
                    return Err(
                        Error::TargetNotEmpty { database: target.clone(), target: target_server, objects }.into()
                    );
                }
            }
        } else if request.create || request.target.is_some() {
            must_create = true;
        } else {
            return Err(Error::NoTarget { database: target.clone(), target: target_server }.into());
        }
    }

    // Everything is fetched and verified before anything touches the server.
    let temp = super::temp::create(config.dump.temp_dir.as_deref(), super::temp::Kind::Restore)?;
    progress.phase("fetching and verifying the dump");
    let lease = rt.block_on(lease::Held::acquire(storage.clone(), LeaseKind::Restore, &id.to_string()))?;
    let fetched = (|| -> Result<(Option<PathBuf>, Option<PathBuf>, u64), crate::Error> {
        let index = rt.block_on(FrameIndex::load(storage.as_ref()))?;
        let mut bytes = 0;
        let globals = match (&manifest.globals, request.globals) {
            (Some(g), true) => {
                let p = temp.path().join("globals.sql");
                rt.block_on(fetch(storage.as_ref(), &index, &id, "globals script", g, &p))?;
                bytes += g.raw_bytes;
                Some(p)
            }
            _ => None,
        };
        let archive = match entry {
            Some(d) => {
                let dir = temp.path().join("db");
                std::fs::create_dir(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
                for f in &d.files {
                    let p = if f.name.is_empty() { temp.path().join("db.dump") } else { dir.join(&f.name) };
                    let stream = format!("database {:?} {}", d.name, super::stream_name(Some(&d.name), f));
                    rt.block_on(fetch(storage.as_ref(), &index, &id, &stream, f, &p))?;
                    bytes += f.raw_bytes;
                }
                Some(if d.format == DumpFormat::Custom { temp.path().join("db.dump") } else { dir })
            }
            None => None,
        };
        Ok((globals, archive, bytes))
    })();
    if let Err(e) = rt.block_on(lease.release()) {
        tracing::warn!(dump = %id, error = %e, "could not remove the restore's lease; it expires by itself");
    }
    let (globals, archive, bytes_fetched) = fetched?;
    let mut tables = Vec::new();
    if let (Some(archive), Some(name)) = (&archive, &request.database)
        && !request.tables.is_empty()
    {
        let toc = table_of_contents(&tools, archive)?;
        tables = resolve_tables(&toc, &request.tables, &id, name)?;
        let list = temp.path().join("use-list");
        std::fs::write(&list, use_list(&toc, &tables, must_create))
            .map_err(|source| Error::Io { path: list.clone(), source })?;
    }

    let mut outcome = RestoreOutcome {
        dump: id.to_string(),
        database: request.database.clone(),
        target: target.clone(),
        created: false,
        globals: globals.is_some(),
        globals_existing: 0,
        bytes_fetched,
        pg_restore: tools.version.clone(),
        notes: Vec::new(),
    };
    if let Some(script) = &globals {
        progress.phase("restoring roles and tablespaces");
        outcome.globals_existing = restore_globals(&tools, pg_config, script)?;
    }
    let properties = entry.and_then(|d| d.properties.as_ref());
    if let (Some(archive), Some(target)) = (&archive, &target) {
        if must_create {
            outcome.notes = create_database(&mut session, target, properties)?;
            outcome.created = true;
        }
        progress.phase(&format!("restoring into database {target}"));
        let list = (!tables.is_empty()).then(|| temp.path().join("use-list"));
        if let Err(e) = run_pg_restore(&tools, pg_config, archive, target, request, list.as_deref()) {
            if must_create && let Err(drop) = drop_database(&mut session, target) {
                tracing::warn!(database = %target, error = %drop, "could not drop the database this restore created");
            }
            return Err(e);
        }
        if must_create && let Some(p) = properties {
            outcome.notes.extend(apply_properties(&mut session, target, p));
        }
        if !tables.is_empty() {
            outcome.notes.push(TABLES_NOTE.to_owned());
        }
    }
    progress.finish();
    Ok(outcome)
}

/// User objects in database `name`: relations, functions, types (not a table's own) and schemas outside the
/// system ones, extensions other than plpgsql, large objects.
fn user_objects(pg_config: &PostgresConfig, name: &str) -> Result<i64, crate::Error> {
    let cfg = PostgresConfig { dbname: name.to_owned(), ..pg_config.clone() };
    let mut s = pg::connect(&cfg)?;
    const SYSTEM: &str = "('pg_catalog', 'information_schema')";
    let sql = format!(
        "select (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                  where n.nspname not in {SYSTEM} and n.nspname !~ '^pg_(toast|temp)') \
              + (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace \
                  where n.nspname not in {SYSTEM}) \
              + (select count(*) from pg_type t join pg_namespace n on n.oid = t.typnamespace \
                  where n.nspname not in {SYSTEM} and n.nspname !~ '^pg_(toast|temp)' and t.typrelid = 0) \
              + (select count(*) from pg_namespace where nspname not in {SYSTEM} and nspname <> 'public' \
                  and nspname !~ '^pg_') \
              + (select count(*) from pg_extension where extname <> 'plpgsql') \
              + (select count(*) from pg_largeobject_metadata)"
    );
    let row = s
        .client()
        .query_one(&sql, &[])
        .map_err(|source| pg::Error::Query { what: "count the target's objects", source })?;
    row.try_get::<_, i64>(0).map_err(|source| pg::Error::Query { what: "count the target's objects", source }.into())
}

/// The archive's table of contents (`pg_restore -l`), for choosing entries with `--use-list`.
fn table_of_contents(tools: &Tools, archive: &Path) -> Result<String, crate::Error> {
    let path = tools.path("pg_restore");
    let out = std::process::Command::new(&path)
        .arg("-l")
        .arg(archive)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn { path: path.clone(), source })?;
    if !out.status.success() {
        let last_line = tools::last_line(&String::from_utf8_lossy(&out.stderr));
        return Err(Error::ToolFailed {
            tool: "pg_restore",
            what: "the dump's table of contents".into(),
            status: out.status.to_string(),
            last_line,
        }
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `--table` leaves out, said after every restore of chosen tables.
const TABLES_NOTE: &str = "--table restored each table's definition, data and its primary key, unique, check and \
    exclusion constraints; not its other indexes, foreign keys, triggers, column defaults or sequences \
    (with --clean, an existing table was dropped with them): restore the whole database to get those";

/// One entry of a table of contents: `<id>; <catalog oid> <oid> <KIND> <schema> <name> <owner>` (pg_restore's
/// `-l` format, src/bin/pg_dump/pg_backup_archiver.c `PrintTOCSummary`). Returns the kind and the rest
/// (`<schema> <name> <owner>`), or `None` for comments.
fn toc_entry(line: &str) -> Option<(&str, &str)> {
    if line.starts_with(';') {
        return None;
    }
    // Longer kinds first: " TABLE DATA " also holds " TABLE ", " FK CONSTRAINT " also " CONSTRAINT ".
    for kind in ["TABLE DATA", "FK CONSTRAINT", "CONSTRAINT", "TABLE", "SCHEMA"] {
        if let Some((_, rest)) = line.split_once(&format!(" {kind} ")) {
            return Some((kind, rest));
        }
    }
    None
}

/// Resolve each `--table` (`TABLE` or `SCHEMA.TABLE`) to the one table of the dump it names, as (schema, table).
/// Errors: a name the dump does not hold ([`Error::NoSuchTable`]; pg_restore itself would restore nothing,
/// silently), or a bare name held by several schemas ([`Error::AmbiguousTable`]: `pg_restore -t` would restore
/// all of them, over the target's own).
fn resolve_tables(toc: &str, tables: &[String], id: &DumpId, database: &str) -> Result<Vec<(String, String)>, Error> {
    let entries: Vec<&str> =
        toc.lines().filter_map(toc_entry).filter(|(kind, _)| *kind == "TABLE").map(|(_, rest)| rest).collect();
    let mut out = Vec::new();
    for t in tables {
        // Every reading of `t`: the bare name in any schema, or split at a dot.
        let mut found: Vec<(String, String)> = Vec::new();
        for rest in &entries {
            if let Some(pos) = rest.find(&format!(" {t} ")) {
                found.push((rest[..pos].to_owned(), t.clone()));
            }
            for (i, _) in t.match_indices('.') {
                let (schema, table) = (&t[..i], &t[i + 1..]);
                if rest.starts_with(&format!("{schema} {table} ")) {
                    found.push((schema.to_owned(), table.to_owned()));
                }
            }
        }
        found.sort();
        found.dedup();
        match found.len() {
            0 => return Err(Error::NoSuchTable { id: id.clone(), database: database.to_owned(), table: t.clone() }),
            1 => out.extend(found),
            _ => {
                let schemas: Vec<&str> = found.iter().map(|(s, _)| s.as_str()).collect();
                return Err(Error::AmbiguousTable {
                    id: id.clone(),
                    database: database.to_owned(),
                    table: t.clone(),
                    schemas: schemas.join(", "),
                });
            }
        }
    }
    Ok(out)
}

/// The entries of `toc` that restore exactly `tables` (their definition and data, as `pg_restore -t` would, but
/// only in their own schema) and, into a database this restore created, the schemas that hold them. Pure.
fn use_list(toc: &str, tables: &[(String, String)], with_schemas: bool) -> String {
    let mut out = String::new();
    for line in toc.lines() {
        let keep = match toc_entry(line) {
            Some(("SCHEMA", rest)) => {
                with_schemas && tables.iter().any(|(s, _)| s != "public" && rest.starts_with(&format!("- {s} ")))
            }
            // The table, its data, and the constraints it holds by itself (primary key, unique, check, exclusion:
            // a constraint's entry is named `<table> <constraint>`). Not a foreign key: it names another table,
            // which a restore of one table may not have.
            Some(("TABLE" | "TABLE DATA" | "CONSTRAINT", rest)) => {
                tables.iter().any(|(s, t)| rest.starts_with(&format!("{s} {t} ")))
            }
            Some(_) => false,
            None => false,
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Run the globals script through psql in the maintenance database. Statements that fail because the role or
/// tablespace exists already are counted (returned); any other failure fails the restore.
fn restore_globals(tools: &Tools, pg_config: &PostgresConfig, script: &Path) -> Result<u64, crate::Error> {
    let path = tools.path("psql");
    let out = tools::command(tools, "psql", pg_config)
        .args(["-X", "-w", "-q", "-v", "ON_ERROR_STOP=0", "-d"])
        .arg(tools::dbname_conninfo(&pg_config.dbname))
        .arg("-f")
        .arg(script)
        .output()
        .map_err(|source| Error::Spawn { path: path.clone(), source })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR:")).collect();
    let existing = errors.iter().filter(|l| l.contains("already exists")).count() as u64;
    let other = errors.iter().find(|l| !l.contains("already exists"));
    if !out.status.success() || other.is_some() {
        let last_line = other.map_or_else(|| tools::last_line(&stderr), |l| l.trim().to_owned());
        return Err(Error::ToolFailed {
            tool: "psql",
            what: "the globals script".into(),
            status: out.status.to_string(),
            last_line,
        }
        .into());
    }
    Ok(existing)
}

/// `pg_restore` of `archive` into database `target`, stopping at the first error (in one transaction unless
/// `--jobs` is above 1); only the entries of `use_list` when given (`--use-list`).
fn run_pg_restore(
    tools: &Tools,
    pg_config: &PostgresConfig,
    archive: &Path,
    target: &str,
    request: &RestoreRequest,
    use_list: Option<&Path>,
) -> Result<(), crate::Error> {
    let path = tools.path("pg_restore");
    let mut cmd = tools::command(tools, "pg_restore", pg_config);
    cmd.args(["-w", "--exit-on-error", "-d"]).arg(tools::dbname_conninfo(target));
    if request.jobs > 1 {
        cmd.args(["-j", &request.jobs.to_string()]);
    } else {
        cmd.arg("--single-transaction");
    }
    if request.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if request.schema_only {
        cmd.arg("--schema-only");
    }
    // The `--table`s, resolved to their schema: exactly those entries (`pg_restore -t` alone would take a table
    // of that name in every schema).
    if let Some(list) = use_list {
        cmd.arg("-L").arg(list);
    }
    cmd.arg(archive).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn { path: path.clone(), source })?;
    let stderr = StderrTail::start(child.stderr.take());
    let status = child.wait().map_err(|source| Error::Spawn { path: path.clone(), source })?;
    let text = stderr.text();
    if !status.success() {
        return Err(Error::ToolFailed {
            tool: "pg_restore",
            what: format!("database {target:?}"),
            status: status.to_string(),
            last_line: tools::last_line(&text),
        }
        .into());
    }
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        tracing::warn!(tool = "pg_restore", "database {target:?}: {l}");
    }
    Ok(())
}

#[cfg(test)]
mod table_tests {
    use super::*;

    const TOC: &str = "; Archive created at 2026-12-01\n\
        5; 2615 16385 SCHEMA - s1 postgres\n\
        6; 2615 16386 SCHEMA - s2 postgres\n\
        210; 1259 16387 TABLE s1 orders postgres\n\
        211; 1259 16390 TABLE s2 orders postgres\n\
        212; 1259 16393 TABLE public plain postgres\n\
        213; 1259 16396 TABLE public we\"ird tä ble postgres\n\
        3350; 0 16387 TABLE DATA s1 orders postgres\n\
        3351; 0 16390 TABLE DATA s2 orders postgres\n\
        3352; 0 16393 TABLE DATA public plain postgres\n\
        3400; 2606 16398 CONSTRAINT s2 orders orders_pkey postgres\n\
        3401; 2606 16399 CONSTRAINT s1 orders orders_pkey postgres\n\
        3402; 2606 16400 FK CONSTRAINT s2 orders orders_plain_fkey postgres\n\
        3403; 1259 16401 INDEX s2 orders_note_idx postgres\n";

    fn id() -> DumpId {
        "20261201-083000D".parse().expect("id")
    }

    /// Found by trying it: `--table orders` restored s1.orders and s2.orders (over the target's s2.orders with
    /// --clean). A bare name held by two schemas is refused; SCHEMA.TABLE picks one; the use-list holds exactly
    /// that table's entries, plus its schema when the target is new.
    #[test]
    fn issue_12_table_names_resolve_to_one_schema() {
        let t = |names: &[&str]| {
            resolve_tables(TOC, &names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(), &id(), "shop")
        };
        assert!(matches!(t(&["orders"]), Err(Error::AmbiguousTable { ref schemas, .. }) if schemas == "s1, s2"));
        assert_eq!(t(&["s2.orders"]).expect("qualified"), [("s2".to_owned(), "orders".to_owned())]);
        assert_eq!(t(&["plain"]).expect("bare"), [("public".to_owned(), "plain".to_owned())]);
        assert_eq!(t(&["we\"ird tä ble"]).expect("odd name"), [("public".to_owned(), "we\"ird tä ble".to_owned())]);
        assert!(matches!(t(&["nosuch"]), Err(Error::NoSuchTable { .. })));
        assert!(matches!(t(&["s3.orders"]), Err(Error::NoSuchTable { .. })));

        let one = t(&["s2.orders"]).expect("qualified");
        let list = use_list(TOC, &one, false);
        // Issue 12: the table's own constraints too (its primary key was lost with --clean); not a foreign key.
        assert_eq!(
            list,
            "211; 1259 16390 TABLE s2 orders postgres\n3351; 0 16390 TABLE DATA s2 orders postgres\n\
             3400; 2606 16398 CONSTRAINT s2 orders orders_pkey postgres\n"
        );
        let new_db = use_list(TOC, &one, true);
        assert!(new_db.starts_with("6; 2615 16386 SCHEMA - s2 postgres\n"), "{new_db}");
        assert_eq!(new_db.lines().count(), 4);
        assert!(!use_list(TOC, &t(&["plain"]).expect("bare"), true).contains("SCHEMA"), "public exists already");
    }
}
