//! The pure verdicts of `backupctl check`: ages against their limits, free space against its minimum, and the
//! server settings PostgreSQL needs for archiving (its "Continuous Archiving and Point-in-Time Recovery" chapter:
//! `wal_level` replica or logical, `archive_mode` on or always).

use std::path::Path;

use time::OffsetDateTime;

use super::{Outcome, names};
use crate::config::Duration;

/// A length of time as people read it, to the second (`1h 2m 3s`). A negative one (the other clock is ahead)
/// reads as 0s.
pub fn age_text(age: time::Duration) -> String {
    let secs = u64::try_from(age.whole_seconds()).unwrap_or(0);
    Duration(std::time::Duration::from_secs(secs)).to_string()
}

/// `archive_mode` as `SHOW archive_mode` gives it (`None`: the server did not say).
pub fn archive_mode(value: Option<&str>) -> Outcome {
    match value {
        Some(v @ ("on" | "always")) => Outcome::ok(names::ARCHIVE_MODE, v),
        Some(v) => Outcome::failed(
            names::ARCHIVE_MODE,
            format!("archive_mode = {v}: PostgreSQL archives no WAL; set archive_mode = on and restart PostgreSQL"),
        ),
        None => Outcome::failed(names::ARCHIVE_MODE, "the server does not show archive_mode"),
    }
}

/// `wal_level` as the server gives it.
pub fn wal_level(value: Option<&str>) -> Outcome {
    match value {
        Some(v @ ("replica" | "logical")) => Outcome::ok(names::WAL_LEVEL, v),
        Some(v) => Outcome::failed(
            names::WAL_LEVEL,
            format!(
                "wal_level = {v}: its WAL cannot restore a base backup; set wal_level = replica and restart PostgreSQL"
            ),
        ),
        None => Outcome::failed(names::WAL_LEVEL, "the server does not show wal_level"),
    }
}

/// Free space of the spool's file system (`available` bytes for an unprivileged user, of the file system that
/// holds `path`) against `min_mib` MiB.
pub fn spool_space(path: &Path, available: std::io::Result<u64>, min_mib: u64, exists: bool) -> Outcome {
    let free = match available {
        Ok(b) => b,
        Err(e) => {
            return Outcome::failed(
                names::SPOOL_SPACE,
                format!("cannot read the free space of {}: {e}", path.display()),
            );
        }
    };
    let shown = format!("{} MiB", free >> 20);
    let note = if exists { "" } else { " (the spool does not exist yet: wal-push creates it)" };
    if free < min_mib.saturating_mul(1 << 20) {
        Outcome::failed(
            names::SPOOL_SPACE,
            format!(
                "only {shown} free on the file system of {}, below [check] min_spool_free_mib = {min_mib}{note}",
                path.display()
            ),
        )
    } else {
        Outcome::ok(
            names::SPOOL_SPACE,
            format!("{shown} free on the file system of {} (minimum {min_mib} MiB){note}", path.display()),
        )
    }
}

/// The newest complete backup (its id and stop time) against `[retention] max_backup_age`.
pub fn backup_age(newest: Option<(&str, OffsetDateTime)>, now: OffsetDateTime, limit: Option<Duration>) -> Outcome {
    let name = names::BACKUP_AGE;
    let Some((id, stopped)) = newest else {
        return match limit {
            Some(l) => Outcome::failed(name, format!("no backup yet ([retention] max_backup_age = \"{l}\")")),
            None => Outcome::ok(name, "no backup yet (no limit: [retention] max_backup_age is not set)"),
        };
    };
    let age = now - stopped;
    let shown = age_text(age);
    match limit {
        Some(l) if age > l.0 => Outcome::failed(
            name,
            format!("the newest backup, {id}, finished {shown} ago, more than [retention] max_backup_age = \"{l}\""),
        ),
        Some(l) => Outcome::ok(name, format!("the newest backup, {id}, finished {shown} ago (limit {l})")),
        None => Outcome::ok(name, format!("the newest backup, {id}, finished {shown} ago (no limit set)")),
    }
}

/// The newest archived segment (its name and when the repository received it) against `[check] max_wal_age`.
pub fn wal_age(
    newest: Option<(&str, Option<OffsetDateTime>)>,
    now: OffsetDateTime,
    limit: Option<Duration>,
) -> Outcome {
    let name = names::WAL_AGE;
    let Some((segment, when)) = newest else {
        return match limit {
            Some(l) => Outcome::failed(name, format!("no WAL archived yet ([check] max_wal_age = \"{l}\")")),
            None => Outcome::ok(name, "no WAL archived yet (no limit: [check] max_wal_age is not set)"),
        };
    };
    let Some(when) = when else {
        return match limit {
            Some(_) => Outcome::failed(name, format!("the repository does not say when {segment} was archived")),
            None => Outcome::ok(name, format!("newest segment {segment} (no time known, no limit set)")),
        };
    };
    let shown = age_text(now - when);
    match limit {
        Some(l) if now - when > l.0 => Outcome::failed(
            name,
            format!(
                "the newest archived segment, {segment}, arrived {shown} ago, more than [check] max_wal_age = \"{l}\""
            ),
        ),
        Some(l) => Outcome::ok(name, format!("newest segment {segment} arrived {shown} ago (limit {l})")),
        None => Outcome::ok(name, format!("newest segment {segment} arrived {shown} ago (no limit set)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;
    use time::macros::datetime;

    fn d(s: &str) -> Option<Duration> {
        Some(s.parse().expect(s))
    }

    #[test]
    fn backup_ages() {
        let now = datetime!(2026-11-30 12:00 UTC);
        let id = "20261129T100000F";
        type Case<'a> = (Option<(&'a str, OffsetDateTime)>, Option<Duration>, Status, &'a str);
        let cases: &[Case] = &[
            (None, None, Status::Ok, "no backup yet"),
            (None, d("26h"), Status::Failed, "no backup yet"),
            (Some((id, datetime!(2026-11-29 11:00 UTC))), d("26h"), Status::Ok, "finished 25h ago (limit 26h)"),
            (Some((id, datetime!(2026-11-29 09:00 UTC))), d("26h"), Status::Failed, "27h ago, more than"),
            (Some((id, datetime!(2026-11-20 12:00 UTC))), None, Status::Ok, "240h ago (no limit set)"),
        ];
        for (newest, limit, status, text) in cases {
            let o = backup_age(*newest, now, *limit);
            assert_eq!(o.status, *status, "{o:?}");
            assert!(o.detail.contains(text), "{:?} should say {text:?}", o.detail);
        }
    }

    #[test]
    fn wal_ages() {
        let now = datetime!(2026-11-30 12:00 UTC);
        let seg = "000000010000000000000003";
        let o = wal_age(Some((seg, Some(datetime!(2026-11-30 11:59:30 UTC)))), now, d("1h"));
        assert_eq!((o.status, o.detail.contains("30s ago")), (Status::Ok, true), "{o:?}");
        let o = wal_age(Some((seg, Some(datetime!(2026-11-30 10:00 UTC)))), now, d("1h"));
        assert_eq!(o.status, Status::Failed, "{o:?}");
        assert!(o.detail.contains(seg) && o.detail.contains("2h ago"), "{o:?}");
        assert_eq!(wal_age(None, now, d("1h")).status, Status::Failed);
        assert_eq!(wal_age(None, now, None).status, Status::Ok);
        assert_eq!(wal_age(Some((seg, None)), now, d("1h")).status, Status::Failed);
        // The backend's clock ahead of ours: age 0, not a panic or a negative age.
        let o = wal_age(Some((seg, Some(datetime!(2026-11-30 12:05 UTC)))), now, d("1h"));
        assert!(o.status == Status::Ok && o.detail.contains("0s ago"), "{o:?}");
    }

    #[test]
    fn settings_and_space() {
        assert_eq!(archive_mode(Some("on")).status, Status::Ok);
        assert_eq!(archive_mode(Some("always")).status, Status::Ok);
        assert!(archive_mode(Some("off")).detail.contains("archive_mode = off"));
        assert_eq!(wal_level(Some("logical")).status, Status::Ok);
        assert_eq!(wal_level(Some("minimal")).status, Status::Failed);
        let p = Path::new("/spool");
        assert_eq!(spool_space(p, Ok(2 << 30), 1024, true).status, Status::Ok);
        let low = spool_space(p, Ok(100 << 20), 1024, true);
        assert!(low.status == Status::Failed && low.detail.contains("only 100 MiB free"), "{low:?}");
        assert!(spool_space(p, Ok(2 << 30), 1024, false).detail.contains("wal-push creates it"));
        assert_eq!(spool_space(p, Err(std::io::Error::other("x")), 1, true).status, Status::Failed);
    }
}
