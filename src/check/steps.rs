//! The steps of `backupctl check` that talk to PostgreSQL and the repository (see the module above for the
//! invariants: deadlines on every step, no repository ever created).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use time::OffsetDateTime;

use super::session::{self, TimedSession};
use super::{Outcome, PG_TIMEOUT, Server, archive_command, names};
use crate::config::Config;
use crate::repository::{self, store};
use crate::storage::{DynStorage, Key, PutMode, Storage};
use crate::wal::WalFileName;

/// Connect and read what the checks need, each call within [`PG_TIMEOUT`].
pub(super) fn describe_server(pg: &crate::config::PostgresConfig) -> Result<Server, session::Error> {
    let session = TimedSession::connect(pg, PG_TIMEOUT)?;
    let (info, version, archived_count, settings) = session.call("settings", |s| {
        let info = s.server_info(false)?;
        let version = s.version_text()?;
        let archived = s.archived()?.0;
        let mut settings = Vec::new();
        for name in ["archive_mode", "wal_level", "archive_command", "archive_library", "data_directory"] {
            settings.push(s.setting(name)?);
        }
        Ok((info, version, archived, settings))
    })?;
    let mut settings = settings.into_iter();
    let mut next = || settings.next().flatten();
    Ok(Server {
        session,
        info,
        version,
        archive_mode: next(),
        wal_level: next(),
        archive_command: next(),
        archive_library: next(),
        data_directory: next().map(PathBuf::from),
        archived_count,
    })
}

pub(super) fn archive_command_outcome(s: &Server, config_path: &Path, config: &Config) -> Outcome {
    use archive_command::Judgement;
    let Some(command) = s.archive_command.as_deref() else {
        return Outcome::failed(
            names::ARCHIVE_COMMAND,
            "the server does not show archive_command to this user (it needs superuser or pg_read_all_settings)",
        );
    };
    let data = s.data_directory.as_deref();
    match archive_command::judge(command, s.archive_library.as_deref(), data, config_path, &archive_command::same_file)
    {
        Judgement::Ok(detail) => Outcome::ok(names::ARCHIVE_COMMAND, detail),
        Judgement::Failed(reason) => Outcome::failed(names::ARCHIVE_COMMAND, reason),
        Judgement::OtherConfig { theirs, reason } => {
            let shown = |url: &str| crate::config::redact_url(&crate::storage::canonical_url(url));
            let ours = shown(&config.repository.url);
            let more = match Config::load(&theirs) {
                Ok(c) if shown(&c.repository.url) == ours => {
                    format!(" (both name repository {ours}; other settings may differ)")
                }
                Ok(c) => format!(" (its repository is {}, this one's {ours})", shown(&c.repository.url)),
                Err(e) => format!(" (which cannot be loaded here: {e})"),
            };
            Outcome::failed(names::ARCHIVE_COMMAND, format!("{reason}{more}"))
        }
    }
}

/// Write, read back and delete a probe object; the repository's format (`None`: made by an earlier version).
pub(super) async fn probe(storage: &dyn Storage, now: OffsetDateTime) -> Result<Option<u32>, crate::Error> {
    store::require_existing(storage).await?;
    let d = store::load::<repository::Descriptor>(storage, &repository::descriptor_key()).await?;
    let key = Key::new(format!("check/probe-{}", std::process::id())).map_err(crate::storage::Error::from)?;
    let body = Bytes::from(format!("backupctl check {now}"));
    storage.put(&key, body.clone(), PutMode::Overwrite).await?;
    let back = storage.get(&key).await;
    storage.delete(&key).await?;
    if back? != body {
        return Err(crate::Error::Task(format!("{storage}: probe object {key} read back different content")));
    }
    Ok(d.map(|d| d.format))
}

/// Why the probe failed.
pub(super) enum Probe {
    /// There is no repository at the URL (nothing was written).
    Missing(String),
    /// Anything else, as one line.
    Failed(String),
}

/// [`probe`] within `limit`.
pub(super) async fn probe_within(
    limit: Duration,
    storage: &dyn Storage,
    now: OffsetDateTime,
) -> Result<Option<u32>, Probe> {
    match tokio::time::timeout(limit, probe(storage, now)).await {
        Ok(Ok(format)) => Ok(format),
        Ok(Err(e @ crate::Error::Repository(store::Error::NoRepository { .. }))) => Err(Probe::Missing(e.to_string())),
        Ok(Err(e)) => Err(Probe::Failed(e.to_string())),
        Err(_) => Err(Probe::Failed(format!("no answer from {storage} within {} s", limit.as_secs()))),
    }
}

/// The repository check's verdict; `archived` is how many WAL files the server has archived, where known.
pub(super) fn repository_outcome(
    handle: &Option<DynStorage>,
    probed: &Result<Option<u32>, Probe>,
    archived: Option<u64>,
) -> Outcome {
    let name = names::REPOSITORY;
    match (handle, probed) {
        (Some(s), Ok(format)) => {
            let made = format.map(|f| format!("format {f}")).unwrap_or_else(|| "made by an earlier version".into());
            Outcome::ok(name, format!("{s} ({made}): storage round trip (put, get, delete of a probe) ok"))
        }
        (_, Err(Probe::Missing(e))) => Outcome::failed(
            name,
            match archived {
                Some(0) => format!(
                    "{e}; PostgreSQL has archived nothing yet, and the first segment wal-push archives creates it"
                ),
                Some(n) => format!(
                    "{e}, but PostgreSQL has archived {n} WAL files already: archive_command writes somewhere else \
                     (a typo in repository.url?)"
                ),
                None => format!("{e}: check repository.url for a typo, or create it with 'backupctl init'"),
            },
        ),
        (_, Err(Probe::Failed(e))) => Outcome::failed(name, e.clone()),
        (None, Ok(_)) => Outcome::failed(name, "no storage"),
    }
}

/// `fut` within `limit`; its error or the timeout as one line.
pub(super) async fn within<T>(
    limit: Duration,
    backend: &str,
    fut: impl std::future::Future<Output = Result<T, crate::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from {backend} within {} s", limit.as_secs())),
    }
}

pub(super) fn system_identifier(
    on_record: Result<Option<repository::ClusterInfo>, String>,
    info: &crate::pg::ServerInfo,
    storage: &dyn Storage,
) -> Outcome {
    let name = names::SYSTEM_IDENTIFIER;
    let ours = &info.system_identifier;
    match on_record {
        Err(e) => Outcome::failed(name, e),
        Ok(None) => Outcome::ok(
            name,
            format!("none recorded in {storage} yet (nothing archived): the first archived segment records {ours}"),
        ),
        Ok(Some(c)) if &c.system_identifier != ours => Outcome::failed(
            name,
            format!(
                "{storage} holds the WAL of cluster {}, this server is cluster {ours}: each cluster needs its own \
                 repository",
                c.system_identifier
            ),
        ),
        Ok(Some(c)) if c.wal_segment_size != info.wal_segment_size => Outcome::failed(
            name,
            format!(
                "{storage} holds WAL segments of {} bytes, this server writes {} bytes",
                c.wal_segment_size, info.wal_segment_size
            ),
        ),
        Ok(Some(_)) => Outcome::ok(name, format!("{ours}, as {storage} records")),
    }
}

/// Write a restore point, switch WAL, and wait for the completed segment to reach the repository.
pub(super) fn wal_switch(
    rt: &tokio::runtime::Runtime,
    s: &Server,
    storage: &dyn Storage,
    now: OffsetDateTime,
    timeout: Duration,
) -> Outcome {
    let name = names::WAL_SWITCH;
    let stamp = now.replace_nanosecond(0).unwrap_or(now);
    let point = format!("backupctl check {}", rfc3339(stamp));
    let switched = s.session.call("restore point and WAL switch", move |pg| {
        pg.create_restore_point(&point)?;
        pg.switch_wal()
    });
    let segment = match switched {
        Ok(seg) => seg,
        Err(e) => return Outcome::failed(name, e.to_string()),
    };
    let key = match segment.parse::<WalFileName>() {
        Ok(n) => repository::wal_key(&n),
        Err(e) => return Outcome::failed(name, format!("pg_switch_wal named {segment:?}: {e}")),
    };
    let started = Instant::now();
    let arrived = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, storage.exists(&key)).await {
                Ok(Ok(true)) => return Ok(true),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Ok(false),
            }
            if tokio::time::Instant::now() + delay >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    });
    match arrived {
        Ok(true) => {
            Outcome::ok(name, format!("{segment} reached {storage} in {:.1} s", started.elapsed().as_secs_f64()))
        }
        Ok(false) => {
            let failures = match s.session.call("pg_stat_archiver", |pg| pg.archive_failures()) {
                Ok((0, _)) => "the archiver reports no failures: is it keeping up?".to_owned(),
                Ok((n, last)) => format!(
                    "the archiver failed {n} times, last on {}: see the server log for archive_command's error",
                    last.unwrap_or_default()
                ),
                Err(e) => e.to_string(),
            };
            Outcome::failed(
                name,
                format!(
                    "{segment} did not reach {storage} within [check] wal_switch_timeout = \"{}\"; {failures}",
                    crate::config::Duration(timeout)
                ),
            )
        }
        Err(e) => Outcome::failed(name, e),
    }
}

pub(super) fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}
