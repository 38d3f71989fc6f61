//! Recovery targets: parse what the operator asked for, choose the backup that can reach it, and write the
//! settings that make PostgreSQL replay to it (pure).

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::repository::backup::{BackupId, Manifest};
use crate::wal::{Lsn, TimelineHistory};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The end of the archive.
    Latest,
    /// A point in time.
    Time(OffsetDateTime),
    /// A WAL location.
    Lsn(Lsn),
    /// A transaction id.
    Xid(u64),
    /// A restore point created with `pg_create_restore_point`.
    Name(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => f.write_str("the end of the archive"),
            Target::Time(t) => write!(f, "time {}", pg_timestamp(*t)),
            Target::Lsn(l) => write!(f, "lsn {l}"),
            Target::Xid(x) => write!(f, "xid {x}"),
            Target::Name(n) => write!(f, "restore point {n:?}"),
        }
    }
}

/// What the server does once the target is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetAction {
    /// End recovery and accept writes (on a new timeline).
    Promote,
    /// Stay in recovery, paused, for inspection (`pg_wal_replay_resume()` continues).
    Pause,
    /// Shut down.
    Shutdown,
}

impl TargetAction {
    /// The value of `recovery_target_action`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// Which timeline recovery follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetTimeline {
    /// The newest timeline in the archive (PostgreSQL's default).
    Latest,
    /// The backup's own timeline.
    Current,
    /// This timeline.
    Id(u32),
}

impl std::str::FromStr for TargetTimeline {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(TargetTimeline::Latest),
            "current" => Ok(TargetTimeline::Current),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(TargetTimeline::Id)
                .ok_or_else(|| format!("{s:?} is not latest, current or a timeline number")),
        }
    }
}

/// Parse a target time: RFC 3339 (`2025-10-20T12:30:00Z`, `...12:30:00.123456+02:00`) or PostgreSQL's own format
/// with a zone (`2025-10-20 12:30:00+02`, `2025-10-20 12:30:00.5+05:30`, `2025-10-20 12:30:00 UTC`).
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    let s = text.trim();
    let rfc = OffsetDateTime::parse(s, &Rfc3339);
    let rfc_err = match rfc {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let pg = s.strip_suffix(" UTC").or_else(|| s.strip_suffix(" GMT")).map(|p| format!("{p}+00"));
    let pg = pg.as_deref().unwrap_or(s);
    let format = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]][optional [ ]][offset_hour sign:mandatory][optional [[optional [:]][offset_minute]]]"
    );
    let pg_err = match OffsetDateTime::parse(pg, &format) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    // Say what is wrong: an impossible date or time (February 30th, hour 25) is not a missing zone.
    let zoneless = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day][first [T][ ]][hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    let zoneless_err = time::PrimitiveDateTime::parse(s, &zoneless).err();
    // YYYY-MM-DD up front: an unparsable component is then a wrong number (month 13), not another format.
    let dated = s.len() >= 10
        && s.bytes().take(10).enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    let bad_component = |e: &time::error::Parse| match e {
        time::error::Parse::TryFromParsed(time::error::TryFromParsed::ComponentRange(r)) => Some(r.name()),
        time::error::Parse::ParseFromDescription(time::error::ParseFromDescription::InvalidComponent(n)) if dated => {
            Some(*n)
        }
        _ => None,
    };
    let bad = [Some(&pg_err), Some(&rfc_err), zoneless_err.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(bad_component)
        .find(|name| !name.starts_with("offset"));
    match (bad, zoneless_err) {
        (Some(name), _) => Err(format!("{text:?} is an invalid date or time: its {name} is out of range")),
        (None, None) => Err(format!(
            "{text:?} has no zone: add one, as in 2025-10-20 12:30:00+02 or 2025-10-20T12:30:00Z (RFC 3339)"
        )),
        (None, Some(_)) => {
            Err(format!("{text:?} is not a time: use RFC 3339 (2025-10-20T12:30:00Z) or 2025-10-20 12:30:00+02"))
        }
    }
}

/// A time as PostgreSQL 15 accepts it in `recovery_target_time`: UTC, microseconds, numeric zone (no `Z`).
pub fn pg_timestamp(t: OffsetDateTime) -> String {
    let u = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        u.year(),
        u8::from(u.month()),
        u.day(),
        u.hour(),
        u.minute(),
        u.second(),
        u.microsecond()
    )
}

/// Pick the backup to restore: `wanted` if given (checked), else the newest that can reach `target` along
/// `history` (the history of the timeline recovery will follow).
pub fn choose_backup<'a>(
    manifests: &'a [Manifest],
    target: &Target,
    history: Option<&TimelineHistory>,
    wanted: Option<&BackupId>,
) -> Result<&'a Manifest, String> {
    if manifests.is_empty() {
        return Err("the repository holds no backups".to_owned());
    }
    let on_path = |m: &Manifest| history.is_none_or(|h| h.can_reach_from(m.timeline_id(), m.stop_lsn));
    let before_target = |m: &Manifest| match target {
        Target::Time(t) => stop_time(m).is_some_and(|s| s < *t),
        Target::Lsn(l) => m.stop_lsn <= *l,
        _ => true,
    };
    if let Some(id) = wanted {
        let m = manifests.iter().find(|m| &m.id == id).ok_or_else(|| format!("backup {id} does not exist"))?;
        if !before_target(m) {
            return Err(format!("backup {id} finished at {} ({}), after the target", m.stop_time, m.stop_lsn));
        }
        if !on_path(m) {
            return Err(format!("backup {id} (timeline {}) is not on the path of the target timeline", m.timeline));
        }
        return Ok(m);
    }
    let candidates: Vec<&Manifest> = manifests.iter().filter(|m| on_path(m)).collect();
    if candidates.is_empty() {
        return Err("no backup is on the path of the target timeline".to_owned());
    }
    let best = candidates.iter().filter(|m| before_target(m)).max_by(|a, b| stop_time(a).cmp(&stop_time(b)));
    match best {
        // When a transaction committed or a restore point was made, nothing here says: the newest backup is a
        // guess. PostgreSQL 14+ stops with a FATAL if that backup is newer than the target; 13 ends recovery at
        // the end of the archive and promotes, past the target, silently. So on 13 the DBA chooses.
        Some(m)
            if matches!(target, Target::Xid(_) | Target::Name(_))
                && m.pg_version_num < 140_000
                && candidates.len() > 1 =>
        {
            Err(format!(
                "on PostgreSQL 13 a backup newer than the target would silently recover past it (PostgreSQL 13 \
                 promotes at the end of the archive when it never meets the target), and when the target happened \
                 is not known here: pass --backup-id of a backup that finished before it ('backupctl status' lists \
                 them; the newest is {})",
                m.id
            ))
        }
        Some(m) => Ok(m),
        None => {
            let oldest = candidates.iter().min_by(|a, b| stop_time(a).cmp(&stop_time(b)));
            let oldest = oldest.map_or(String::new(), |m| {
                format!("the oldest, {}, finished at {} ({})", m.id, m.stop_time, m.stop_lsn)
            });
            Err(format!("every backup finished after it; {oldest}"))
        }
    }
}

/// Why `wanted` cannot be restored when the repository has no manifest for it: names the id and lists the ids
/// that exist (`ids`, oldest first), or, when there are more than [`LISTED_IDS`], the nearest ones around it.
pub fn missing_backup(wanted: &BackupId, ids: &[BackupId]) -> String {
    if ids.is_empty() {
        return format!("backup {wanted} does not exist; the repository holds no backups");
    }
    let list = |ids: &[BackupId]| ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if ids.len() <= LISTED_IDS {
        return format!("backup {wanted} does not exist; the repository holds {}: {}", ids.len(), list(ids));
    }
    let at = ids.partition_point(|id| id < wanted);
    let half = LISTED_IDS / 2;
    let start = at.saturating_sub(half).min(ids.len() - LISTED_IDS);
    format!(
        "backup {wanted} does not exist; the repository holds {} backups, the nearest: {}",
        ids.len(),
        list(&ids[start..start + LISTED_IDS])
    )
}

/// How many backup ids an error message lists at most.
pub const LISTED_IDS: usize = 6;

fn stop_time(m: &Manifest) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(&m.stop_time, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::TimelineId;

    #[test]
    fn times_parse_and_render_for_postgres() {
        let cases = [
            ("2025-10-20T12:30:00Z", "2025-10-20 12:30:00.000000+00"),
            ("2025-10-20T12:30:00.123456+02:00", "2025-10-20 10:30:00.123456+00"),
            ("2025-10-20 12:30:00+02", "2025-10-20 10:30:00.000000+00"),
            ("2025-10-20 12:30:00.5+05:30", "2025-10-20 07:00:00.500000+00"),
            ("2025-10-20 12:30:00 UTC", "2025-10-20 12:30:00.000000+00"),
            ("2025-10-20 12:30:00-0700", "2025-10-20 19:30:00.000000+00"),
        ];
        for (input, want) in cases {
            let t = parse_time(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(pg_timestamp(t), want, "{input}");
            assert_eq!(parse_time(&pg_timestamp(t)), Ok(t), "round trip of {input}");
        }
        for bad in ["", "2025-10-20", "2025-10-20 12:30:00", "yesterday", "2025-13-20T12:30:00Z"] {
            assert!(parse_time(bad).is_err(), "{bad:?} must be refused");
        }
    }

    fn backup(id: &str, stop: &str, stop_lsn: u64, timeline: u32) -> Manifest {
        Manifest {
            id: id.parse().expect("id"),
            start_time: stop.into(),
            stop_time: stop.into(),
            start_lsn: Lsn(stop_lsn - 1),
            stop_lsn: Lsn(stop_lsn),
            timeline,
            start_wal: String::new(),
            stop_wal: String::new(),
            ..Manifest::example()
        }
    }

    #[test]
    fn choosing_a_backup() {
        let ms = vec![
            backup("20261126-100000F", "2026-11-26T10:00:05Z", 0x100, 1),
            backup("20261126-110000I", "2026-11-26T11:00:05Z", 0x200, 1),
            backup("20261126-120000I", "2026-11-26T12:00:05Z", 0x900, 2),
        ];
        let t = |s: &str| Target::Time(parse_time(s).expect("time"));
        let pick = |target: &Target, h: Option<&TimelineHistory>| {
            choose_backup(&ms, target, h, None).map(|m| m.id.to_string())
        };
        assert_eq!(pick(&t("2026-11-26T10:30:00Z"), None), Ok("20261126-100000F".into()));
        assert_eq!(pick(&t("2026-11-26T11:00:05Z"), None), Ok("20261126-100000F".into()), "must finish before");
        assert_eq!(pick(&Target::Lsn(Lsn(0x200)), None), Ok("20261126-110000I".into()));
        assert_eq!(pick(&Target::Latest, None), Ok("20261126-120000I".into()));
        let err = pick(&t("2026-11-26T09:00:00Z"), None).expect_err("before every backup");
        assert!(err.contains("20261126-100000F"), "{err}");
        // Timeline 1 only: the backup on timeline 2 is not on its path.
        let tl1 = TimelineHistory::root(TimelineId(1));
        assert_eq!(pick(&Target::Latest, Some(&tl1)), Ok("20261126-110000I".into()));
        // Timeline 2 forked from 1 at 0x150: only the first backup (stop 0x100) and timeline 2's own qualify.
        let tl2 = TimelineHistory::parse(TimelineId(2), "1\t0/150\tx\n").expect("history");
        assert_eq!(pick(&t("2026-11-26T11:30:00Z"), Some(&tl2)), Ok("20261126-100000F".into()));
        let wanted: BackupId = "20261126-110000I".parse().expect("id");
        assert!(choose_backup(&ms, &Target::Latest, Some(&tl2), Some(&wanted)).is_err());
        assert!(choose_backup(&ms, &t("2026-11-26T10:30:00Z"), None, Some(&wanted)).is_err());
        assert!(choose_backup(&[], &Target::Latest, None, None).is_err());
        // An xid or a restore point: the newest backup on 14+; on 13 (which would promote past a target it never
        // meets) the DBA must choose.
        assert_eq!(pick(&Target::Xid(5000), None), Ok("20261126-120000I".into()));
        assert_eq!(pick(&Target::Name("r".into()), Some(&tl1)), Ok("20261126-110000I".into()));
        let pg13: Vec<Manifest> = ms.iter().map(|m| Manifest { pg_version_num: 130_010, ..m.clone() }).collect();
        for target in [Target::Xid(5000), Target::Name("r".into())] {
            let err = choose_backup(&pg13, &target, None, None).expect_err("PostgreSQL 13 guesses nothing");
            assert!(err.contains("--backup-id") && err.contains("20261126-120000I"), "{err}");
            assert!(choose_backup(&pg13, &target, None, Some(&wanted)).is_ok(), "chosen by the DBA");
        }
        assert!(choose_backup(&pg13[..1], &Target::Xid(5000), None, None).is_ok(), "one backup: nothing to choose");
    }

    #[test]
    fn a_missing_backup_id_is_named_with_the_ids_that_exist() {
        let id = |s: &str| s.parse::<BackupId>().expect("id");
        let wanted = id("20261126-120000F");
        assert!(missing_backup(&wanted, &[]).contains("holds no backups"));
        let few: Vec<BackupId> = (1..=5).map(|d| id(&format!("2026110{d}-000000F"))).collect();
        let msg = missing_backup(&wanted, &few);
        assert!(msg.contains("20261126-120000F") && msg.contains("holds 5: 20261101-000000F,"), "{msg}");
        assert!(few.iter().all(|i| msg.contains(&i.to_string())), "{msg}");
        let many: Vec<BackupId> = (10..=28).map(|d| id(&format!("202611{d}-000000I"))).collect();
        let msg = missing_backup(&wanted, &many);
        assert!(msg.contains("holds 19 backups, the nearest: 20261123-000000I"), "{msg}");
        assert!(msg.ends_with("20261128-000000I") && !msg.contains("20261122"), "{msg}");
        assert!(missing_backup(&id("20250101-000000F"), &many).contains("nearest: 20261110-000000I,"));
        assert!(missing_backup(&id("20990101-000000F"), &many).ends_with("20261128-000000I"));
    }
}
