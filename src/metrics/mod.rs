//! Prometheus metrics: collected from the local state records and the repository, rendered in the Prometheus text
//! format (or OpenMetrics, when a scraper asks for it), served over HTTP by the daemon, and written as
//! node-exporter textfiles for those who run no daemon (issue 9). docs/operations.md, "Metrics", lists them all.
//!
//! Invariants:
//! - Rendering never fails because the repository cannot be read: that is `backupctl_repository_up 0`, with the
//!   local metrics still there. A damaged local record is `backupctl_state_readable{record} 0` (or
//!   `backupctl_archive_state_readable 0`), with the other records' metrics still there.
//! - No metric name appears in two textfiles: wal-push writes the archive metrics to
//!   [`ARCHIVE_TEXTFILE`], `backupctl metrics --textfile` writes all the others to [`FULL_TEXTFILE`]. Neither
//!   holds the `_age_seconds` gauges (a file is read later than it is written; use `time() - ..._timestamp_seconds`).
//! - Textfiles are replaced atomically (a temporary `.backupctl-*.tmp` in the same directory, renamed), so that
//!   the collector never reads half a file; the temporary name does not end in `.prom`, so it is never read.

pub mod encode;
pub mod figures;
mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use encode::{Format, Parts};
pub use figures::{Local, Repository, RepositoryFigures};
pub use serve::{serve, serve_on};

use crate::config::Config;
use crate::state::{ArchiveState, StateDir};
use crate::storage::{DynStorage, Storage};

/// The textfile wal-push rewrites after every call (in `[metrics] textfile_dir`).
pub const ARCHIVE_TEXTFILE: &str = "backupctl_archive.prom";
/// The textfile `backupctl metrics --textfile` writes (in `[metrics] textfile_dir`).
pub const FULL_TEXTFILE: &str = "backupctl.prom";

/// Metrics failures: serving and writing textfiles. Rendering itself does not fail on an unreadable repository.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address could not be bound (in use, not an address of this host, no permission).
    #[error("cannot serve metrics on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A non-loopback address without `[metrics] allow_remote = true`.
    #[error("metrics.listen = {addr} is not a loopback address and metrics.allow_remote is false")]
    Remote {
        /// The address.
        addr: SocketAddr,
    },
    /// The HTTP server stopped with an error.
    #[error("the metrics endpoint on {addr} failed: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `--textfile` without `[metrics] textfile_dir`.
    #[error("metrics.textfile_dir is not set in the configuration")]
    NoTextfileDir,
    /// A textfile could not be written.
    #[error("cannot write metrics textfile {path}: {source}")]
    Textfile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Every metric, ages included, in the Prometheus text format 0.0.4: what `backupctl metrics` prints.
///
/// `storage` is the opened repository (`None`: it could not be opened, which renders as
/// `backupctl_repository_up 0`); `now` is the time ages are measured to. Errors only if the blocking read of the
/// local records could not run.
pub async fn render(
    config: &Config,
    storage: Option<DynStorage>,
    now: jiff::Timestamp,
) -> Result<String, crate::Error> {
    render_as(config, storage.as_deref(), now, Parts::LIVE, Format::Prometheus).await
}

/// The metrics in `parts`, in `format`; see [`render`].
pub async fn render_as(
    config: &Config,
    storage: Option<&dyn Storage>,
    now: jiff::Timestamp,
    parts: Parts,
    format: Format,
) -> Result<String, crate::Error> {
    let local = read_local(config).await?;
    let repository = if parts.rest { Some(read_repository(config, storage, now).await) } else { None };
    Ok(encode::to_text(&encode::registry(&local, repository.as_ref(), now, parts), format))
}

/// The local state records of `config`'s spool, read on the blocking pool.
pub async fn read_local(config: &Config) -> Result<Local, crate::Error> {
    let state = StateDir::new(&config.spool.path);
    tokio::task::spawn_blocking(move || Local::read(&state))
        .await
        .map_err(|e| crate::Error::Task(format!("reading the state records: {e}")))
}

/// The repository's figures, or why it could not be read (logged as a warning).
pub async fn read_repository(config: &Config, storage: Option<&dyn Storage>, now: jiff::Timestamp) -> Repository {
    let Some(storage) = storage else {
        return Repository::Down("the repository could not be opened".to_owned());
    };
    match figures::read_repository(config, storage, system_time(now)).await {
        Ok(f) => Repository::Up(f),
        Err(e) => {
            tracing::warn!(backend = %storage, error = %e, "metrics: cannot read the repository");
            Repository::Down(e.to_string())
        }
    }
}

/// `t` as a `SystemTime` (jiff 1.0 has no `From` for it).
fn system_time(t: jiff::Timestamp) -> std::time::SystemTime {
    let millis = t.as_millisecond();
    let d = std::time::Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 { std::time::UNIX_EPOCH + d } else { std::time::UNIX_EPOCH - d }
}

/// The archive metrics of `state` (wal-push's record) as the text of [`ARCHIVE_TEXTFILE`].
pub fn archive_textfile(state: &ArchiveState, now: jiff::Timestamp) -> String {
    let local = Local { archive: Ok(state.clone()), jobs: Ok(Default::default()), drill: Ok(Default::default()) };
    encode::to_text(&encode::registry(&local, None, now, Parts::ARCHIVE_FILE), Format::Prometheus)
}

/// Replace `<dir>/<name>` with `text` atomically, readable by everyone (mode 0644: node-exporter runs as another
/// user). Returns the path. Not fsynced: a textfile lost in a power cut is rewritten by the next call.
///
/// Errors: [`Error::Textfile`] naming the file when the directory cannot be written.
pub fn write_textfile(dir: &Path, name: &str, text: &str) -> Result<PathBuf, Error> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let io = |source| Error::Textfile { path: path.clone(), source };
    let mut tmp = tempfile::Builder::new().prefix(".backupctl-").suffix(".tmp").tempfile_in(dir).map_err(io)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    tmp.write_all(text.as_bytes()).map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests;
