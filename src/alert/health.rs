//! The conditions read from the spool and the repository rather than from a job (pure): wal-push failing, the
//! archive falling behind, the newest backup too old.

use super::Condition;
use crate::config::Config;
use crate::state::ArchiveState;

/// Condition key: wal-push has failed on every call for longer than `[alerts] wal_push_failing_for`.
pub const ARCHIVE_FAILING: &str = "archive-failing";
/// Condition key: more than `[alerts] archive_behind_segments` segments wait to be archived.
pub const ARCHIVE_BEHIND: &str = "archive-behind";
/// Condition key: the newest backup is older than `[retention] max_backup_age`.
pub const BACKUP_AGE: &str = "backup-age";

/// The health conditions at `now`, always all three (firing or not, so that one that cleared is resolved):
/// wal-push failing longer than `[alerts] wal_push_failing_for` (from `archive.failing_since`), the archive more
/// than `[alerts] archive_behind_segments` segments behind (`archive.ready_count`, counted by the last wal-push
/// call), and `newest_backup` (when the newest complete backup finished) older than `[retention]
/// max_backup_age` or absent while that limit is set. Keys: [`ARCHIVE_FAILING`], [`ARCHIVE_BEHIND`],
/// [`BACKUP_AGE`].
pub fn health_conditions(
    config: &Config,
    archive: &ArchiveState,
    newest_backup: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Vec<Condition> {
    let alerts = &config.alerts;
    let mut out = Vec::with_capacity(3);

    let limit = alerts.wal_push_failing_for;
    let failing_for = archive.failing_since.map(|since| now.duration_since(since));
    let firing = failing_for.is_some_and(|d| d > signed(limit.0));
    let last = archive.last_failure.as_ref();
    let summary = match failing_for {
        Some(d) if firing => format!("wal-push has been failing for {}", human(d)),
        _ => "wal-push is archiving".to_owned(),
    };
    let mut detail = match last {
        Some(f) if firing => format!("last failure at {}: {}: {}", f.at, f.name, f.error),
        _ => String::new(),
    };
    if let Some(ok) = &archive.last_success {
        push_line(&mut detail, &format!("last segment archived: {} at {}", ok.name, ok.at));
    }
    push_line(&mut detail, &format!("threshold: [alerts] wal_push_failing_for = \"{limit}\""));
    out.push(Condition { key: ARCHIVE_FAILING.to_owned(), firing, summary, detail, reason: String::new() });

    let (ready, max) = (archive.ready_count, alerts.archive_behind_segments);
    let firing = ready > max;
    let summary = if firing {
        format!("the archive is {ready} WAL segments behind ({} MiB waiting)", archive.ready_bytes / (1024 * 1024))
    } else {
        format!("the archive is {ready} WAL segments behind")
    };
    let mut detail = format!("{ready} .ready files in pg_wal/archive_status at the last wal-push call");
    if let Some(at) = archive.updated_at {
        detail.push_str(&format!(" ({at})"));
    }
    push_line(&mut detail, &format!("threshold: [alerts] archive_behind_segments = {max}"));
    out.push(Condition { key: ARCHIVE_BEHIND.to_owned(), firing, summary, detail, reason: String::new() });

    let max_age = config.retention.max_backup_age;
    let (firing, summary, detail) = match (newest_backup, max_age) {
        (_, None) => (false, "no backup age limit".to_owned(), "[retention] max_backup_age is not set".to_owned()),
        (None, Some(l)) => (
            true,
            "there is no backup yet".to_owned(),
            format!("no complete backup in the repository; [retention] max_backup_age = \"{l}\""),
        ),
        (Some(t), Some(l)) => {
            let age = now.duration_since(t);
            let firing = age > signed(l.0);
            let summary = if firing {
                format!("the newest backup is {} old", human(age))
            } else {
                "the newest backup is recent".to_owned()
            };
            (firing, summary, format!("newest backup finished at {t}; [retention] max_backup_age = \"{l}\""))
        }
    };
    out.push(Condition { key: BACKUP_AGE.to_owned(), firing, summary, detail, reason: String::new() });
    out
}

/// The health conditions now, from wal-push's state record (`<spool>/state/archive.json`) and the repository's
/// newest complete backup: what the daemon evaluates every `[schedule] health_interval` and `backupctl check`
/// reports with its own condition.
///
/// Errors: the repository cannot be opened or its backups listed (`crate::Error::Storage`/`Repository`); a
/// missing or damaged archive record counts as "no wal-push call seen" (logged), never as an error.
pub async fn current(config: &Config) -> Result<Vec<Condition>, crate::Error> {
    let state = crate::state::StateDir::new(&config.spool.path);
    let archive: ArchiveState = state.load(crate::state::ARCHIVE).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read wal-push's state record");
        ArchiveState::default()
    });
    let deadline = std::time::Duration::from_secs(config.archive.retry_deadline_seconds);
    let storage = crate::storage::open(&config.repository.url, &config.repository.s3, deadline).await?;
    let (manifests, _) = crate::repository::store::manifest_headers(storage.as_ref()).await?;
    let newest = manifests.iter().filter_map(|m| m.stop_time.parse::<jiff::Timestamp>().ok()).max();
    Ok(health_conditions(config, &archive, newest, jiff::Timestamp::now()))
}

fn signed(d: std::time::Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
}

/// A duration rounded to the second, in jiff's friendly format (`2h 5m 3s`).
fn human(d: jiff::SignedDuration) -> String {
    let secs = jiff::SignedDuration::from_secs(d.as_secs().max(0));
    format!("{secs:#}")
}

fn push_line(text: &mut String, line: &str) {
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Archived, Failure};

    fn config(extra: &str) -> Config {
        let text = format!("[repository]\nurl = \"file:///r\"\n[spool]\npath = \"/s\"\n{extra}");
        Config::parse(std::path::Path::new("t.toml"), &text, &|_| None).expect("config")
    }

    fn ts(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn firing(c: &[Condition]) -> Vec<&str> {
        c.iter().filter(|c| c.firing).map(|c| c.key.as_str()).collect()
    }

    #[test]
    fn issue_9_health_conditions_fire_past_their_thresholds() {
        let cfg = config("[retention]\nmax_backup_age = \"26h\"\n");
        let now = ts(100_000);
        let mut a = ArchiveState::default();
        let c = health_conditions(&cfg, &a, Some(ts(99_000)), now);
        assert_eq!(c.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), [ARCHIVE_FAILING, ARCHIVE_BEHIND, BACKUP_AGE]);
        assert!(firing(&c).is_empty(), "{c:?}");

        a.failing_since = Some(ts(100_000 - 300));
        a.last_failure =
            Some(Failure { at: ts(99_990), name: "000000010000000000000003".into(), error: "boom".into() });
        a.last_success = Some(Archived { name: "000000010000000000000002".into(), at: ts(99_000) });
        assert!(firing(&health_conditions(&cfg, &a, Some(ts(99_000)), now)).is_empty(), "exactly 5 m: not longer");
        a.failing_since = Some(ts(100_000 - 301));
        let c = health_conditions(&cfg, &a, Some(ts(99_000)), now);
        assert_eq!(firing(&c), [ARCHIVE_FAILING]);
        assert!(c[0].summary.contains("5m 1s") && c[0].detail.contains("boom"), "{:?}", c[0]);

        a.failing_since = None;
        a.ready_count = 65;
        a.ready_bytes = 65 * 16 * 1024 * 1024;
        let c = health_conditions(&cfg, &a, Some(ts(99_000)), now);
        assert_eq!(firing(&c), [ARCHIVE_BEHIND]);
        assert!(c[1].summary.contains("65 WAL segments") && c[1].summary.contains("1040 MiB"), "{:?}", c[1]);

        a.ready_count = 64;
        assert_eq!(firing(&health_conditions(&cfg, &a, None, now)), [BACKUP_AGE], "no backup with a limit");
        let old = ts(100_000 - 26 * 3600 - 1);
        let c = health_conditions(&cfg, &a, Some(old), now);
        assert_eq!(firing(&c), [BACKUP_AGE]);
        assert!(c[2].summary.contains("26h 1s"), "{:?}", c[2]);
        assert!(firing(&health_conditions(&config(""), &a, None, now)).is_empty(), "no limit set");
    }
}
