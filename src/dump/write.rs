//! `backupctl dump`: each database through `pg_dump` (custom format to a pipe, or directory format with
//! `--jobs` into a temporary directory), then `pg_dumpall --globals-only`, into packs; the manifest last.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Instant;

use super::store::store_reader;
use super::tools::{self, StderrTail, Tools};
use super::{DumpFile, DumpFormat, DumpId, DumpManifest, DumpedDatabase, Error};
use crate::backup::packer::Packer;
use crate::config::{Config, PostgresConfig};
use crate::pg;
use crate::progress::Progress;
use crate::repository::dump::{self as layout, DUMP_MANIFEST_FORMAT};
use crate::repository::lease::{self, LeaseKind};
use crate::repository::packstore::FrameIndex;
use crate::repository::{self, store};
use crate::storage::Storage;

/// Stored size of a pack (bytes) at which it is put, as base-backup's.
const PACK_SIZE: usize = 16 << 20;

/// How long a dump waits for a running gc before it lists the frames it may reuse.
const GC_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct DumpRequest {
    /// Databases to dump; empty: every database that is not a template and allows connections.
    pub databases: Vec<String>,
    /// Free text stored in the manifest.
    pub label: Option<String>,
    /// `pg_dump --jobs` (directory format) when above 1; 1 streams the custom format without local files.
    pub jobs: usize,
    /// Keep the roles' password hashes in the globals script (`pg_dumpall` without `--no-role-passwords`).
    pub with_role_passwords: bool,
}

/// Take a logical dump as configured. Blocking: the PostgreSQL session is synchronous; storage runs on `rt`.
#[tracing::instrument(skip_all, fields(dump_id = tracing::field::Empty))]
pub fn run(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    request: &DumpRequest,
    progress: &dyn Progress,
) -> Result<DumpManifest, crate::Error> {
    let pg_config = config.postgres.as_ref().ok_or_else(|| {
        crate::Error::Usage(
            concat!("dump needs a [postgres] section in the configuration (see ", doc!("configuration.md"), ")").into(),
        )
    })?;
    // What a dump or dump-restore killed earlier left behind (also when this dump needs no directory of its own).
    super::temp::remove_stale(&config.dump.temp_dir.clone().unwrap_or_else(std::env::temp_dir));
    let mut session = pg::connect(pg_config)?;
    let info = session.server_info(false)?;
    let target = session.target().to_owned();
    let server_major = info.version_num / 10000;
    let listed = databases(&mut session)?;
    let all: Vec<String> = listed.iter().filter(|(_, dumpable)| *dumpable).map(|(n, _)| n.clone()).collect();
    let names = if request.databases.is_empty() {
        all.clone()
    } else {
        for name in &request.databases {
            if !all.contains(name) {
                let exists = listed.iter().any(|(n, _)| n == name);
                let reason = if exists { "is a template or does not allow connections" } else { "does not exist" };
                let known = all.join(", ");
                return Err(Error::NoSuchDatabase { database: name.clone(), reason, target, known }.into());
            }
        }
        request.databases.clone()
    };
    let backend_pid: i32 = session
        .client()
        .query_one("select pg_backend_pid()", &[])
        .and_then(|r| r.try_get(0))
        .map_err(|source| pg::Error::Query { what: "pg_backend_pid", source })?;
    let server_dir = tools::server_bin_dir(backend_pid.unsigned_abs(), server_major);
    let path_env = std::env::var_os("PATH");
    let tools = tools::find(
        "pg_dump",
        server_major,
        config.dump.bin_dir.as_deref(),
        server_dir.as_deref(),
        path_env.as_deref(),
    )?;
    tracing::debug!(dir = %tools.dir.display(), version = %tools.version, "dump tools");

    let deadline = std::time::Duration::from_secs(config.archive.retry_deadline_seconds);
    let storage = rt.block_on(crate::storage::open(&config.repository.url, &config.repository.s3, deadline))?;
    rt.block_on(store::require_existing(storage.as_ref()))?;
    if let Some(on_record) = rt.block_on(store::cluster_info(storage.as_ref()))? {
        let offered = repository::ClusterInfo {
            system_identifier: info.system_identifier.clone(),
            wal_segment_size: info.wal_segment_size,
            pg_version: server_major,
        };
        store::check_cluster(storage.as_ref(), &on_record, &offered)?;
    }
    let started_at = session.clock()?;
    let id = rt.block_on(free_id(storage.as_ref(), &started_at))?;
    tracing::Span::current().record("dump_id", tracing::field::display(&id));
    let lease = rt.block_on(lease::Held::acquire(storage.clone(), LeaseKind::Backup, &id.to_string()))?;
    let result = (|| -> Result<DumpManifest, crate::Error> {
        let waiting = |who: &str| progress.phase(&format!("waiting for {who} to finish"));
        rt.block_on(lease.wait_while_live(&[LeaseKind::Gc], GC_WAIT, &waiting))?;
        let index = Arc::new(rt.block_on(FrameIndex::load(storage.as_ref()))?);
        let level = config.repository.compression_level;
        let parallel = config.backup.parallel;
        let mut dumped = Vec::new();
        for name in &names {
            progress.phase(&format!("dumping database {name}"));
            let packer = Packer::new(storage.clone(), level, PACK_SIZE, parallel, index.clone());
            let started = Instant::now();
            let result = if request.jobs > 1 {
                rt.block_on(dump_directory(&tools, pg_config, config, name, request.jobs, &packer))
                    .map(|files| (DumpFormat::Directory, files))
            } else {
                rt.block_on(dump_custom(&tools, pg_config, name, &packer)).map(|f| (DumpFormat::Custom, vec![f]))
            };
            let (format, files) = match result {
                Ok(dumped) => dumped,
                // A database dropped since the list was taken is not one to keep: without --database, the dump
                // goes on without it (its frames are garbage for gc). Asked for by name, it is a failure.
                Err(e) if request.databases.is_empty() && !super::create::database_exists(&mut session, name)? => {
                    tracing::warn!(
                        dump = %id, database = %name, error = %e,
                        "database {name:?} was dropped while the dump ran: not in this dump"
                    );
                    continue;
                }
                Err(e) => return Err(e),
            };
            let properties = Some(super::create::properties(&mut session, name, server_major)?);
            let stored_bytes = rt.block_on(seal(&packer))?;
            let raw_bytes = files.iter().map(|f| f.raw_bytes).sum();
            let duration_ms = started.elapsed().as_millis() as u64;
            tracing::info!(dump = %id, database = %name, bytes = raw_bytes, stored = stored_bytes, elapsed_ms = duration_ms, "database dumped");
            dumped.push(DumpedDatabase {
                name: name.clone(),
                format,
                files,
                raw_bytes,
                stored_bytes,
                duration_ms,
                properties,
            });
        }
        progress.phase("dumping roles and tablespaces");
        let packer = Packer::new(storage.clone(), level, PACK_SIZE, parallel, index.clone());
        let globals = rt.block_on(dump_globals(&tools, pg_config, request.with_role_passwords, &packer))?;
        if let Some(d) = dumped.first_mut() {
            d.stored_bytes += rt.block_on(seal(&packer))?;
        } else {
            rt.block_on(seal(&packer))?;
        }
        let finished_at = session.clock()?;
        let manifest = DumpManifest {
            format: DUMP_MANIFEST_FORMAT,
            id: id.clone(),
            label: request.label.clone(),
            started_at: started_at.clone(),
            finished_at,
            server_version_num: info.version_num,
            system_identifier: info.system_identifier.clone(),
            pg_dump_version: tools.version.clone(),
            databases: dumped,
            globals: Some(globals),
            has_role_passwords: request.with_role_passwords,
        };
        manifest.validate().map_err(|source| store::Error::InvalidDump { key: id.manifest_key(), source })?;
        // Second line of defence behind the lease: every frame the manifest names is in a pack that exists.
        lease.check()?;
        rt.block_on(check_present(storage.as_ref(), &manifest))?;
        if !rt.block_on(layout::save_manifest(storage.as_ref(), &manifest))? {
            return Err(
                crate::storage::Error::AlreadyExists { backend: storage.to_string(), key: id.manifest_key() }.into()
            );
        }
        progress.finish();
        Ok(manifest)
    })();
    if let Err(e) = rt.block_on(lease.release()) {
        tracing::warn!(dump = %id, error = %e, "could not remove the dump's lease; it expires by itself");
    }
    result
}

/// Every database by name, each with whether a dump takes it (not a template, connections allowed).
fn databases(session: &mut pg::Session) -> Result<Vec<(String, bool)>, crate::Error> {
    let rows = session
        .client()
        .query("select datname::text, not datistemplate and datallowconn from pg_database order by 1", &[])
        .map_err(|source| pg::Error::Query { what: "list databases", source })?;
    Ok(rows.iter().filter_map(|r| Some((r.try_get::<_, String>(0).ok()?, r.try_get::<_, bool>(1).ok()?))).collect())
}

/// Put the packer's last pack, wait for every put, and let it write the last pack index object (it writes them
/// as it goes: docs/design/format2.md). Returns the stored bytes added: packs and index objects.
async fn seal(packer: &Packer) -> Result<u64, crate::Error> {
    packer.finish().await?;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    Ok(load(&packer.stats.bytes_new) + load(&packer.stats.index_bytes_new))
}

/// A child process killed (and reaped) on drop unless it was waited for.
struct Guard(Option<Child>);

impl Guard {
    fn wait(mut self, tool: &'static str, what: String, stderr: StderrTail, path: &Path) -> Result<(), crate::Error> {
        let Some(mut child) = self.0.take() else { return Ok(()) };
        let status = child.wait().map_err(|source| Error::Spawn { path: path.to_path_buf(), source })?;
        let text = stderr.text();
        if !status.success() {
            return Err(Error::ToolFailed {
                tool,
                what,
                status: status.to_string(),
                last_line: tools::last_line(&text),
            }
            .into());
        }
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::warn!(tool, "{what}: {l}");
        }
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(mut cmd: std::process::Command, path: &Path) -> Result<(Guard, StderrTail), crate::Error> {
    let mut child =
        cmd.stderr(Stdio::piped()).spawn().map_err(|source| Error::Spawn { path: path.to_path_buf(), source })?;
    let stderr = StderrTail::start(child.stderr.take());
    Ok((Guard(Some(child)), stderr))
}

/// `pg_dump -Fc -Z0` of `name` to a pipe, stored as one stream.
async fn dump_custom(
    tools: &Tools,
    pg: &PostgresConfig,
    name: &str,
    packer: &Packer,
) -> Result<DumpFile, crate::Error> {
    let path = tools.path("pg_dump");
    let mut cmd = tools::command(tools, "pg_dump", pg);
    cmd.args(["-w", "-Fc", "-Z0", "-d"]).arg(tools::dbname_conninfo(name)).stdout(Stdio::piped());
    let (mut guard, stderr) = spawn(cmd, &path)?;
    let stdout =
        guard.0.as_mut().and_then(|c| c.stdout.take()).ok_or_else(|| crate::Error::Task("pg_dump stdout".into()))?;
    let what = format!("database {name:?}");
    // A storage failure ends pg_dump (killed on drop); a pg_dump failure ends its output early: then its own
    // message is the one to report.
    let (file, _) = store_reader(packer, stdout, String::new(), &format!("pg_dump of {what}")).await?;
    blocking_wait(guard, "pg_dump", what, stderr, path).await?;
    Ok(file)
}

/// `pg_dump -Fd -j N -Z0` of `name` into a temporary directory, then each file stored (by name).
async fn dump_directory(
    tools: &Tools,
    pg: &PostgresConfig,
    config: &Config,
    name: &str,
    jobs: usize,
    packer: &Packer,
) -> Result<Vec<DumpFile>, crate::Error> {
    let temp = super::temp::create(config.dump.temp_dir.as_deref(), super::temp::Kind::Dump)?;
    let dir = temp.path().join("dump");
    let path = tools.path("pg_dump");
    let mut cmd = tools::command(tools, "pg_dump", pg);
    cmd.args(["-w", "-Fd", "-Z0", "-j", &jobs.to_string(), "-f"]).arg(&dir).arg("-d").arg(tools::dbname_conninfo(name));
    cmd.stdout(Stdio::null());
    let (guard, stderr) = spawn(cmd, &path)?;
    blocking_wait(guard, "pg_dump", format!("database {name:?}"), stderr, path).await?;
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|source| Error::Io { path: dir.clone(), source })?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|source| Error::Io { path: dir.clone(), source })?;
    names.sort();
    let mut files = Vec::with_capacity(names.len());
    for file in names {
        let p = dir.join(&file);
        let f = std::fs::File::open(&p).map_err(|source| Error::Io { path: p.clone(), source })?;
        let (stored, _) = store_reader(packer, f, file, &p.display().to_string()).await?;
        files.push(stored);
    }
    Ok(files)
}

/// Wait for the child off the async threads; see [`Guard::wait`].
async fn blocking_wait(
    guard: Guard,
    tool: &'static str,
    what: String,
    stderr: StderrTail,
    path: std::path::PathBuf,
) -> Result<(), crate::Error> {
    crate::archive::blocking(move || guard.wait(tool, what, stderr, &path)).await
}

/// `pg_dumpall --globals-only` (roles and tablespaces; `--no-role-passwords` unless asked), stored as one stream.
async fn dump_globals(
    tools: &Tools,
    pg: &PostgresConfig,
    passwords: bool,
    packer: &Packer,
) -> Result<DumpFile, crate::Error> {
    let path = tools.path("pg_dumpall");
    let mut cmd = tools::command(tools, "pg_dumpall", pg);
    cmd.args(["-w", "--globals-only", "-l"]).arg(&pg.dbname).stdout(Stdio::piped());
    if !passwords {
        cmd.arg("--no-role-passwords");
    }
    let (mut guard, stderr) = spawn(cmd, &path)?;
    let stdout =
        guard.0.as_mut().and_then(|c| c.stdout.take()).ok_or_else(|| crate::Error::Task("pg_dumpall stdout".into()))?;
    let (file, _) = store_reader(packer, stdout, String::new(), "pg_dumpall --globals-only").await?;
    blocking_wait(guard, "pg_dumpall", "roles and tablespaces".into(), stderr, path).await?;
    Ok(file)
}

/// Fail, naming one, if a frame `manifest` names is in no pack of the repository (the indexes and a listing of
/// `packs/`).
async fn check_present(storage: &dyn Storage, manifest: &DumpManifest) -> Result<(), crate::Error> {
    use crate::repository::packs::{PACKS_PREFIX, pack_from_key};
    let index = FrameIndex::load(storage).await?;
    let packs: std::collections::HashSet<_> =
        storage.list(PACKS_PREFIX).await?.iter().filter_map(|m| pack_from_key(m.key.as_str())).collect();
    let mut missing: Vec<String> = manifest
        .frames()
        .iter()
        .filter(|f| index.get(f).is_none_or(|(pack, _)| !packs.contains(pack)))
        .map(|f| format!("frame {f}"))
        .collect();
    missing.sort();
    match missing.first() {
        None => Ok(()),
        Some(first) => Err(crate::Error::ObjectsVanished {
            backup: manifest.id.to_string(),
            count: missing.len(),
            first: first.clone(),
            backend: storage.to_string(),
        }),
    }
}

/// An id for a dump starting at `start_time` that no manifest uses yet (waits out a same-second collision).
async fn free_id(storage: &dyn Storage, start_time: &str) -> Result<DumpId, crate::Error> {
    let mut t = time::OffsetDateTime::parse(start_time, &time::format_description::well_known::Rfc3339)
        .map_err(|e| pg::Error::Unexpected { what: "clock", answer: format!("{start_time}: {e}") })?;
    loop {
        let id = DumpId::new(t);
        if !storage.exists(&id.manifest_key()).await? {
            return Ok(id);
        }
        t += std::time::Duration::from_secs(1);
    }
}
