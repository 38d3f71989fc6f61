//! The drill's temporary directory: restore the backup into it, configure and start the server there, run the
//! checks, and remove it all (the [`Workspace`] guard) whatever happens.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::checks;
use super::server::{self, Server};
use super::{DrillReport, Error, Step, StepError, abandoned, at, check_abandon};
use crate::config::Config;
use crate::progress::NoProgress;
use crate::repository::backup::Manifest;
use crate::repository::lease::{Held, LeaseKind};
use crate::restore::{self, RestoreRequest, auto_conf};

/// The steps inside the temporary directory `ws`: restore `manifest` (under a restore lease, raced against
/// `abandon`), configure and start the server, wait for recovery, pg_amcheck, the smoke query; fills `report` as
/// it goes. The caller stops the server and removes the directory afterwards, whatever this returns.
#[allow(clippy::too_many_arguments)]
pub(super) fn in_workspace(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    storage: &crate::storage::DynStorage,
    manifest: &Manifest,
    request: &mut RestoreRequest,
    bin: &Path,
    ws: &mut Workspace,
    abandon: &AtomicBool,
    report: &mut DrillReport,
) -> Result<(), StepError> {
    let drill = &config.drill;
    let root = ws.path().to_path_buf();
    let data = root.join("data");
    request.destination = data.clone();
    request.backup_id = Some(manifest.id.clone());
    request.tablespace_mapping = manifest
        .tablespaces
        .iter()
        .map(|t| (t.location.as_path().to_path_buf(), root.join("tablespaces").join(t.oid.to_string())))
        .collect();

    // The restore (the RTO clock starts here).
    let t0 = Instant::now();
    tracing::info!(backup = %manifest.id, destination = %data.display(), "restore drill: restoring");
    let may_lease = crate::storage::local_path(&config.repository.url).is_none_or(|root| {
        use crate::storage::fs::owner;
        owner::check_writer(&root, owner::Role::Repository).is_ok()
    });
    let restored = rt
        .block_on(async {
            // As pitr-restore: a lease makes gc keep the objects this restore reads.
            let lease = if may_lease {
                match Held::acquire(storage.clone(), LeaseKind::Restore, &manifest.id.to_string()).await {
                    Ok(l) => {
                        // As pitr-restore: let a gc running now (it may be compacting packs) finish first.
                        let waiting = |who: &str| tracing::info!(holder = who, "waiting for a running gc to finish");
                        if let Err(e) = l.wait_while_live(&[LeaseKind::Gc], Duration::from_secs(30 * 60), &waiting).await {
                            tracing::warn!(error = %e, "a gc is still running; reading the repository anyway");
                        }
                        Some(l)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "drilling without a lease: a gc meanwhile may remove objects of a backup deleted meanwhile");
                        None
                    }
                }
            } else {
                None
            };
            let result = tokio::select! {
                r = restore::run(storage.clone(), request, &NoProgress) => r,
                () = abandoned(abandon) => Err(Error::Abandoned.into()),
            };
            if let Some(l) = lease
                && let Err(e) = l.release().await
            {
                tracing::warn!(error = %e, "could not remove the drill's lease; it expires by itself");
            }
            result
        })
        .map_err(at(Step::Restore))?;
    report.bytes_restored = restored.stats.bytes_written;
    report.restore_seconds = Some(t0.elapsed().as_secs_f64());
    tracing::info!(bytes = restored.stats.bytes_written, elapsed_ms = restored.duration_ms, "restore drill: restored");
    check_abandon(abandon, Step::Restore)?;

    // The server's settings and start.
    let port = server::free_port().map_err(|source| {
        at(Step::Start)(Error::Io { what: "find a free port on", path: "127.0.0.1".into(), source })
    })?;
    configure(&root, &data, port, manifest.wal_segment_size).map_err(at(Step::Start))?;
    let mut srv = Server::new(bin, &data, &root, &root.join("server.log"), port);
    srv.start().map_err(at(Step::Start))?;
    let srv = ws.adopt(srv);
    tracing::info!(port, bin = %bin.display(), "restore drill: server started, recovering");

    // Recovery.
    let mut client = checks::wait_for_recovery(srv, drill, abandon, t0, &manifest.id).map_err(at(Step::Recovery))?;
    report.rto_seconds = Some(t0.elapsed().as_secs_f64());
    let (replay, wal_end) =
        checks::replay_end(&mut client, &data, manifest.wal_segment_size).map_err(at(Step::Recovery))?;
    report.replay_lsn = replay.map(|l| l.to_string());
    report.wal_end = wal_end.map(|s| s.to_string());
    tracing::info!(
        rto_seconds = report.rto_seconds.unwrap_or(0.0),
        wal_end = report.wal_end.as_deref().unwrap_or(""),
        "restore drill: recovery finished"
    );

    // Checks.
    let major = auto_conf::major(manifest.pg_version_num);
    report.amcheck = Some(if let Some(note) = checks::amcheck_skipped(major) {
        tracing::info!(major, "restore drill: pg_amcheck skipped (PostgreSQL 14 or later has it)");
        note
    } else {
        let program = server::find_amcheck(srv.bin(), major).map_err(at(Step::Amcheck))?;
        checks::amcheck(&program, srv, drill, &root, abandon).map_err(at(Step::Amcheck))?;
        if program.parent() == Some(srv.bin()) {
            "passed".to_owned()
        } else {
            format!("passed ({})", program.display())
        }
    });
    check_abandon(abandon, Step::Amcheck)?;
    report.smoke_result = checks::smoke_query(&mut client, &drill.sql, abandon).map_err(at(Step::SmokeQuery))?;
    drop(client);
    Ok(())
}

/// Write the drill's overrides after the restore's recovery settings, an empty `postgresql.conf` if the backup
/// has none (Debian keeps it in /etc), and the drill's `pg_hba.conf` and `pg_ident.conf`.
fn configure(root: &Path, data: &Path, port: u16, wal_segment_size: u64) -> Result<(), Error> {
    use std::io::Write;
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    let text = server::overrides(port, root, wal_segment_size).map_err(|e| Error::Io {
        what: "write the drill's settings into",
        path: data.join("postgresql.auto.conf"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
    })?;
    let auto = data.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&auto).map_err(io("open", &auto))?;
    f.write_all(&text).map_err(io("write", &auto))?;
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "# backupctl drill: the backup holds no postgresql.conf\n")
            .map_err(io("write", &conf))?;
    }
    let hba = root.join(server::HBA_FILE);
    std::fs::write(&hba, server::HBA).map_err(io("write", &hba))?;
    let ident = root.join(server::IDENT_FILE);
    std::fs::write(&ident, "").map_err(io("write", &ident))?;
    Ok(())
}

/// The drill's temporary directory and the server running in it: stopped and removed on drop.
#[derive(Debug)]
pub(super) struct Workspace {
    server: Option<Server>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Workspace {
    /// A new directory `backupctl-drill-XXXXXX` in `work_dir`, mode 0700.
    pub(super) fn create(work_dir: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("backupctl-drill-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(work_dir)
            .map_err(|source| Error::Io { what: "create a directory in", path: work_dir.to_path_buf(), source })?;
        let path = dir.path().to_path_buf();
        Ok(Self { server: None, dir: Some(dir), path })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Keep `server` to stop it before the directory goes.
    pub(super) fn adopt(&mut self, server: Server) -> &mut Server {
        self.server.insert(server)
    }

    pub(super) fn stop_server(&mut self) -> Result<(), Error> {
        match self.server.take() {
            Some(mut s) => s.stop(),
            None => Ok(()),
        }
    }

    /// Remove the directory. Tasks of an abandoned restore may still be finishing a file in it: retry for 10 s.
    pub(super) fn remove(&mut self) -> Result<(), Error> {
        let Some(dir) = self.dir.take() else { return Ok(()) };
        let path = dir.keep();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) if Instant::now() >= deadline => {
                    return Err(Error::Io { what: "remove", path, source });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(e) = self.stop_server() {
            tracing::error!(error = %e, "could not stop the drill's server");
        }
        if let Err(e) = self.remove() {
            tracing::error!(error = %e, "could not remove the drill's directory");
        }
    }
}
