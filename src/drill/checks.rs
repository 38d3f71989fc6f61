//! What the drill asks of the running server: recovery finished (and where replay ended), pg_amcheck, and the
//! smoke query; each polls the abandon flag.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Error;
use super::server::{self, Server};
use crate::repository::backup::BackupId;
use crate::wal::{Lsn, SegmentName, SegmentSize, TimelineHistory, TimelineId, WalFileName};

/// Poll the server until it accepts connections with recovery finished; log progress every 10 s.
pub(super) fn wait_for_recovery(
    srv: &mut Server,
    drill: &crate::config::DrillConfig,
    abandon: &AtomicBool,
    t0: Instant,
    backup: &BackupId,
) -> Result<postgres::Client, Error> {
    let deadline = Instant::now() + drill.timeout.0;
    let mut client: Option<postgres::Client> = None;
    let mut replayed: Option<String> = None;
    let mut last_note = Instant::now();
    loop {
        if abandon.load(Ordering::Relaxed) {
            return Err(Error::Abandoned);
        }
        if let Some(status) = srv.exited() {
            return Err(srv.exited_error(status));
        }
        if client.is_none() {
            match srv.connect(&drill.user, &drill.database, Duration::from_secs(5)) {
                Ok(c) => client = Some(c),
                // Starting up, or not consistent yet: try again. Anything else the server said is final.
                Err(e) => match e.as_db_error() {
                    Some(db) if *db.code() != postgres::error::SqlState::CANNOT_CONNECT_NOW => {
                        return Err(Error::Query {
                            what: format!("connecting as {} to database {}", drill.user, drill.database),
                            reason: format!("{}: {}", db.severity(), db.message()),
                        });
                    }
                    _ => tracing::debug!(error = %e, "not accepting connections yet"),
                },
            }
        }
        if let Some(c) = client.as_mut() {
            match c.query_one("select pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, '')", &[]) {
                Ok(row) => {
                    let in_recovery: bool = row.try_get(0).unwrap_or(true);
                    let lsn: String = row.try_get(1).unwrap_or_default();
                    if !lsn.is_empty() {
                        replayed = Some(lsn);
                    }
                    if !in_recovery {
                        return client.take().ok_or(Error::Abandoned);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "lost the connection to the drill's server");
                    client = None;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                limit: drill.timeout.to_string(),
                replayed: replayed.unwrap_or_else(|| "nothing".to_owned()),
            });
        }
        if last_note.elapsed() >= Duration::from_secs(10) {
            last_note = Instant::now();
            tracing::info!(
                backup = %backup,
                replayed = replayed.as_deref().unwrap_or("nothing yet"),
                elapsed_ms = t0.elapsed().as_millis() as u64,
                "restore drill: recovery in progress"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where replay ended, and the segment that holds it on the timeline recovery followed (the parent of the
/// timeline promotion created, from its history file in `pg_wal`).
pub(super) fn replay_end(
    client: &mut postgres::Client,
    data: &Path,
    wal_segment_size: u64,
) -> Result<(Option<Lsn>, Option<SegmentName>), Error> {
    let query =
        |e: postgres::Error| Error::Query { what: "pg_last_wal_replay_lsn()".to_owned(), reason: e.to_string() };
    let row = client
        .query_one(
            "select coalesce(pg_last_wal_replay_lsn()::text, ''), pg_walfile_name(pg_current_wal_insert_lsn())",
            &[],
        )
        .map_err(query)?;
    let lsn: String = row.try_get(0).map_err(query)?;
    let current: String = row.try_get(1).map_err(query)?;
    let Ok(lsn) = lsn.parse::<Lsn>() else { return Ok((None, None)) };
    let Ok(size) = SegmentSize::new(wal_segment_size) else { return Ok((Some(lsn), None)) };
    let tli = current.parse::<SegmentName>().map(|s| s.timeline).unwrap_or(TimelineId(1));
    let history_path = data.join("pg_wal").join(WalFileName::History(tli).to_string());
    let history = std::fs::read_to_string(&history_path).ok().and_then(|t| TimelineHistory::parse(tli, &t).ok());
    Ok((Some(lsn), Some(replayed_segment(lsn, tli, history.as_ref(), size))))
}

/// The segment holding the last byte replayed before `replay_end` (as `pg_walfile_name` counts: an LSN on a
/// segment boundary belongs to the segment before), on the timeline recovery followed: the parent of
/// `current` in its history, or `current` itself without one.
pub fn replayed_segment(
    replay_end: Lsn,
    current: TimelineId,
    history: Option<&TimelineHistory>,
    size: SegmentSize,
) -> SegmentName {
    let tli = history.and_then(|h| h.entries.last()).map_or(current, |e| e.parent);
    SegmentName::containing(tli, Lsn(replay_end.0.saturating_sub(1)), size)
}

/// Why pg_amcheck does not run on a server of `major`, if it does not: it came with PostgreSQL 14.
pub fn amcheck_skipped(major: u32) -> Option<String> {
    (major < 14).then(|| format!("skipped: PostgreSQL {major} has no pg_amcheck (14 or later)"))
}

/// `program --all --install-missing` (pg_amcheck) over the drill's socket; polls `abandon`.
pub(super) fn amcheck(
    program: &Path,
    srv: &Server,
    drill: &crate::config::DrillConfig,
    root: &Path,
    abandon: &AtomicBool,
) -> Result<(), Error> {
    let program = program.to_path_buf();
    let out_path = root.join("pg_amcheck.out");
    let io = |source| Error::Io { what: "write", path: out_path.clone(), source };
    let out = std::fs::File::create(&out_path).map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    tracing::info!("restore drill: pg_amcheck --all");
    let mut child = std::process::Command::new(&program)
        .arg("--all")
        .arg("--install-missing")
        .arg("--no-password")
        .arg("-h")
        .arg(srv.socket_dir())
        .arg("-p")
        .arg(srv.port().to_string())
        .arg("-U")
        .arg(&drill.user)
        .arg("--maintenance-db")
        .arg(&drill.database)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| Error::Program { program: program.clone(), detail: e.to_string() })?;
    let status = loop {
        if abandon.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Abandoned);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(Error::Program { program, detail: e.to_string() }),
        }
    };
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read(&out_path).unwrap_or_default();
    let lines: Vec<&str> =
        std::str::from_utf8(&text).unwrap_or("").lines().filter(|l| !l.trim().is_empty()).take(3).collect();
    Err(Error::Amcheck { status: status.to_string(), detail: server::one_line(lines.join(" | ").as_bytes()) })
}

/// Run `[drill] sql`; the first column of the first row it returns. Cancels the query (PostgreSQL's cancel
/// request) once `abandon` is set.
pub(super) fn smoke_query(
    client: &mut postgres::Client,
    sql: &str,
    abandon: &AtomicBool,
) -> Result<Option<String>, Error> {
    tracing::info!(sql, "restore drill: smoke query");
    let token = client.cancel_token();
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if abandon.load(Ordering::Relaxed) {
                    if let Err(e) = token.cancel_query(postgres::NoTls) {
                        tracing::warn!(error = %e, "could not cancel the smoke query");
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = client.simple_query(sql);
        done.store(true, Ordering::Relaxed);
        r
    });
    if abandon.load(Ordering::Relaxed) {
        return Err(Error::Abandoned);
    }
    let messages = result.map_err(|e| Error::Query {
        what: format!("[drill] sql {:?}", server::one_line(sql.as_bytes())),
        reason: match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => e.to_string(),
        },
    })?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_segment_is_on_the_followed_timeline() {
        let size = SegmentSize::DEFAULT;
        // Promotion made timeline 3 from 2: replay ended on 2.
        let h =
            TimelineHistory::parse(TimelineId(3), "1\t0/3000000\tx\n2\t0/5000108\tno recovery target\n").expect("h");
        assert_eq!(
            replayed_segment(Lsn(0x5000108), TimelineId(3), Some(&h), size).to_string(),
            "000000020000000000000005"
        );
        // A boundary belongs to the segment before (pg_walfile_name).
        assert_eq!(replayed_segment(Lsn(0x6000000), TimelineId(2), None, size).to_string(), "000000020000000000000005");
        assert_eq!(replayed_segment(Lsn(0), TimelineId(1), None, size).to_string(), "000000010000000000000000");
    }

    #[test]
    fn amcheck_runs_from_14() {
        assert_eq!(amcheck_skipped(13).as_deref(), Some("skipped: PostgreSQL 13 has no pg_amcheck (14 or later)"));
        assert!([14, 15, 18].iter().all(|m| amcheck_skipped(*m).is_none()));
    }
}
