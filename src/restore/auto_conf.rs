//! The recovery settings pitr-restore writes into the restored `postgresql.auto.conf` (pure).
//!
//! Invariants:
//! - Every recovery parameter the restored server's major knows is written: the ones the restore sets with the
//!   values asked for, every other one at its default. `postgresql.auto.conf` is read after `postgresql.conf`
//!   and its includes and the last setting of a name wins, so a recovery setting left in the source's
//!   configuration (pgbackrest#2417) never applies to a restore.
//! - A parameter the restored server's major does not know is never written: an unknown name in a configuration
//!   file stops the server at startup.
//! - The empty recovery targets come before the one asked for: PostgreSQL's `assign_recovery_target_*` hooks
//!   (src/backend/access/transam/xlogrecovery.c) raise "multiple recovery targets specified" when a target is
//!   assigned, even an empty one, while another is set. They are applied in file order.
//! - Values are quoted as `ALTER SYSTEM` writes them (`escape_single_quotes_ascii`, src/port/quotes.c: `'` and `\`
//!   doubled), which guc-file.l's `DeescapeQuotedString` reads back exactly. A value with a newline or a NUL is
//!   refused, as `ALTER SYSTEM` refuses it: a configuration file cannot hold it.

use crate::repository::backup::BackupId;

use super::target::{Target, TargetAction, TargetTimeline, pg_timestamp};

/// Recovery settings for `postgresql.auto.conf`.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    /// The whole restore_command, as PostgreSQL runs it (bytes: paths on Unix need not be UTF-8).
    pub restore_command: std::ffi::OsString,
    /// Where to stop.
    pub target: Target,
    /// What to do there.
    pub action: TargetAction,
    /// Stop after (true) or before (false) the target.
    pub inclusive: bool,
    /// Timeline to follow.
    pub timeline: TargetTimeline,
    /// Turn archiving off in the restored cluster (a copy for inspection must not archive into the repository).
    pub is_archive_off: bool,
    /// Write `recovery_prefetch = off` (PostgreSQL 15+): the archive has a hole after the target (e.g. WAL that
    /// `prune` deleted after an old backup's stop), and the read-ahead of replay would ask for it, which wal-fetch
    /// answers by stopping recovery (exit 255), before the target is reached.
    pub is_prefetch_off: bool,
}

/// A recovery parameter: its name, its default as `ALTER SYSTEM` writes it, and the majors that know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parameter {
    /// The name.
    pub name: &'static str,
    /// The default value (unquoted).
    pub default: &'static str,
    /// First major that knows it.
    pub since: u32,
    /// Last major that knows it (`u32::MAX`: still current).
    pub until: u32,
}

const fn p(name: &'static str, default: &'static str) -> Parameter {
    Parameter { name, default, since: 12, until: u32::MAX }
}

/// Every parameter that decides where recovery from the archive stops, which WAL it reads, what it runs or how
/// long it waits, for PostgreSQL 13-18. Sources: the "Archive Recovery", "Recovery Target" and "Standby Servers"
/// sections of runtime-config-wal / runtime-config-replication, and `postgres --describe-config` of 14 and 15
/// (all of these became GUCs in 12; `promote_trigger_file` was removed in 16). Performance settings
/// (`recovery_prefetch`, `wal_decode_buffer_size`) and settings that act only while streaming from a primary
/// (`wal_receiver_*`, `hot_standby_feedback`, `max_standby_*`, `sync_replication_slots`) are left as they are.
/// Order matters: the recovery targets come first (see the module invariants).
pub const RECOVERY_PARAMETERS: &[Parameter] = &[
    p("recovery_target", ""),
    p("recovery_target_lsn", ""),
    p("recovery_target_name", ""),
    p("recovery_target_time", ""),
    p("recovery_target_xid", ""),
    p("recovery_target_action", "pause"),
    p("recovery_target_inclusive", "on"),
    p("recovery_target_timeline", "latest"),
    p("restore_command", ""),
    p("archive_cleanup_command", ""),
    p("recovery_end_command", ""),
    p("primary_conninfo", ""),
    p("primary_slot_name", ""),
    Parameter { name: "promote_trigger_file", default: "", since: 12, until: 15 },
    p("recovery_min_apply_delay", "0"),
];

impl Parameter {
    /// Whether a server of `major` knows this parameter.
    pub fn is_known_to(&self, major: u32) -> bool {
        (self.since..=self.until).contains(&major)
    }
}

/// The major version of a `server_version_num` (150004 → 15).
pub fn major(pg_version_num: u32) -> u32 {
    pg_version_num / 10_000
}

/// `recovery_target_name`'s limit: PostgreSQL refuses longer names (`MAXFNAMELEN` - 1, xlog_internal.h;
/// `pg_create_restore_point` and `check_recovery_target_name`).
pub const MAX_RESTORE_POINT_NAME: usize = 63;

/// A value that cannot be written as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter} = {value}: {reason}")]
pub struct UnwritableValue {
    /// The parameter.
    pub parameter: &'static str,
    /// The value, escaped onto one line.
    pub value: String,
    /// Why.
    pub reason: &'static str,
}

/// `value` quoted for a PostgreSQL configuration file as `ALTER SYSTEM` writes it: in single quotes, with `'` and
/// `\` doubled. Refuses a newline or NUL, which a configuration file cannot hold.
pub fn quote(parameter: &'static str, value: &[u8]) -> Result<Vec<u8>, UnwritableValue> {
    let refuse = |reason| UnwritableValue { parameter, value: format!("{:?}", String::from_utf8_lossy(value)), reason };
    if value.contains(&b'\n') {
        return Err(refuse("a PostgreSQL configuration file cannot hold a newline"));
    }
    if value.contains(&0) {
        return Err(refuse("a PostgreSQL configuration file cannot hold a NUL byte"));
    }
    let mut out = Vec::with_capacity(value.len() + 2);
    out.push(b'\'');
    for &b in value {
        if b == b'\'' || b == b'\\' {
            out.push(b);
        }
        out.push(b);
    }
    out.push(b'\'');
    Ok(out)
}

/// Check a restore point name as PostgreSQL would need it: not empty (empty means "no target"), at most 63 bytes,
/// and writable to a configuration file.
pub fn check_restore_point(name: &str) -> Result<(), UnwritableValue> {
    let refuse = |reason| UnwritableValue { parameter: "recovery_target_name", value: format!("{name:?}"), reason };
    if name.is_empty() {
        return Err(refuse("an empty name means no target to PostgreSQL"));
    }
    if name.len() > MAX_RESTORE_POINT_NAME {
        return Err(refuse("PostgreSQL's restore point names are at most 63 bytes"));
    }
    quote("recovery_target_name", name.as_bytes()).map(|_| ())
}

const BEGIN: &[u8] = b"# BEGIN recovery settings written by pitr-restore";
const END: &[u8] = b"# END recovery settings written by pitr-restore";

/// The block of settings to append to `postgresql.auto.conf`, checked and quoted, before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoConfBlock {
    text: Vec<u8>,
    is_archive_off: bool,
}

/// Render `settings` for a server of `pg_version_num` restored from `backup`.
pub fn render(
    settings: &RecoverySettings,
    backup: &BackupId,
    pg_version_num: u32,
) -> Result<AutoConfBlock, UnwritableValue> {
    use std::os::unix::ffi::OsStrExt;
    let timeline = match settings.timeline {
        TargetTimeline::Latest => "latest".to_owned(),
        TargetTimeline::Current => "current".to_owned(),
        TargetTimeline::Id(n) => n.to_string(),
    };
    let mut ours: Vec<(&'static str, Vec<u8>)> = vec![
        ("restore_command", settings.restore_command.as_bytes().to_vec()),
        ("recovery_target_timeline", timeline.into_bytes()),
    ];
    let target = match &settings.target {
        Target::Latest => None,
        Target::Time(t) => Some(("recovery_target_time", pg_timestamp(*t))),
        Target::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
        Target::Xid(x) => Some(("recovery_target_xid", x.to_string())),
        Target::Name(n) => {
            check_restore_point(n)?;
            Some(("recovery_target_name", n.clone()))
        }
    };
    if let Some((name, value)) = target {
        ours.push((name, value.into_bytes()));
        ours.push(("recovery_target_action", settings.action.as_str().as_bytes().to_vec()));
        ours.push(("recovery_target_inclusive", if settings.inclusive { &b"on"[..] } else { b"off" }.to_vec()));
    }
    let major = major(pg_version_num);
    let mut text = Vec::new();
    text.extend_from_slice(BEGIN);
    text.extend_from_slice(format!(" from backup {backup}\n").as_bytes());
    let mut line = |name: &'static str, value: &[u8]| -> Result<(), UnwritableValue> {
        text.extend_from_slice(name.as_bytes());
        text.extend_from_slice(b" = ");
        text.extend_from_slice(&quote(name, value)?);
        text.push(b'\n');
        Ok(())
    };
    // Defaults first (empty targets before the one asked for), then ours.
    for param in RECOVERY_PARAMETERS.iter().filter(|p| p.is_known_to(major)) {
        if !ours.iter().any(|(n, _)| *n == param.name) {
            line(param.name, param.default.as_bytes())?;
        }
    }
    for (name, value) in &ours {
        line(name, value)?;
    }
    if settings.is_prefetch_off && major >= 15 {
        line("recovery_prefetch", b"off")?;
    }
    if settings.is_archive_off {
        line("archive_mode", b"off")?;
    }
    text.extend_from_slice(END);
    text.push(b'\n');
    Ok(AutoConfBlock { text, is_archive_off: settings.is_archive_off })
}

impl AutoConfBlock {
    /// `existing` (the backup's `postgresql.auto.conf`) without an earlier pitr-restore block and without any
    /// recovery parameter (of any major; `archive_mode` too when this block turns it off), plus this block.
    /// Names compare case-insensitively, as PostgreSQL's do.
    pub fn merge_into(&self, existing: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(existing.len() + self.text.len());
        let mut in_block = false;
        for line in existing.split_inclusive(|&b| b == b'\n') {
            let t = line.trim_ascii_start();
            if t.starts_with(BEGIN) {
                in_block = true;
                continue;
            }
            if t.starts_with(END) {
                in_block = false;
                continue;
            }
            let key = t.split(|b| matches!(b, b'=' | b' ' | b'\t' | b'\r' | b'\n')).next().unwrap_or_default();
            let is_ours = RECOVERY_PARAMETERS.iter().any(|p| key.eq_ignore_ascii_case(p.name.as_bytes()))
                || (self.is_archive_off && key.eq_ignore_ascii_case(b"archive_mode"));
            if in_block || is_ours {
                continue;
            }
            out.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                out.push(b'\n');
            }
        }
        out.extend_from_slice(&self.text);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::target::parse_time;

    fn settings(target: Target) -> RecoverySettings {
        RecoverySettings {
            restore_command: "/usr/bin/wal-fetch --config '/etc/b.toml' %f %p".into(),
            target,
            action: TargetAction::Pause,
            inclusive: true,
            timeline: TargetTimeline::Latest,
            is_archive_off: true,
            is_prefetch_off: false,
        }
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).expect("utf-8")
    }

    #[test]
    fn auto_conf_replaces_earlier_recovery_settings() {
        let s = settings(Target::Time(parse_time("2025-10-20T12:30:00Z").expect("t")));
        let id: BackupId = "20261126-100000F".parse().expect("id");
        let existing = b"# Do not edit\narchive_command = 'x'\nrestore_command = 'old'\nRecovery_Target_Xid = '5'\n\
                         recovery_min_apply_delay '1h'\narchive_mode = 'on'";
        let once = text(&render(&s, &id, 150004).expect("render").merge_into(existing));
        assert!(once.contains("archive_command = 'x'"), "{once}");
        assert!(!once.contains("'old'") && !once.contains("'5'") && !once.contains("'1h'"), "{once}");
        assert!(once.contains("restore_command = '/usr/bin/wal-fetch --config ''/etc/b.toml'' %f %p'"), "{once}");
        assert!(once.contains("recovery_target_time = '2025-10-20 12:30:00.000000+00'"), "{once}");
        assert!(once.contains("recovery_target_action = 'pause'"), "{once}");
        assert!(once.contains("archive_mode = 'off'") && !once.contains("archive_mode = 'on'"), "{once}");
        let latest = RecoverySettings { target: Target::Latest, is_archive_off: false, ..s.clone() };
        let twice = text(&render(&latest, &id, 150004).expect("render").merge_into(once.as_bytes()));
        assert_eq!(twice.matches("restore_command").count(), 1, "{twice}");
        assert!(twice.contains("recovery_target_time = ''\n"), "{twice}");
        assert!(!twice.contains("archive_mode"), "{twice}");
        assert!(!once.contains("recovery_prefetch"), "{once}");
        // A hole after the target turns read-ahead off on 15 and later (13 and 14 have no read-ahead).
        let hole = RecoverySettings { is_prefetch_off: true, ..s.clone() };
        let off = text(&render(&hole, &id, 150004).expect("render").merge_into(b"recovery_prefetch = 'on'\n"));
        assert!(
            off.ends_with(
                "recovery_prefetch = 'off'\narchive_mode = 'off'\n# END recovery settings written by pitr-restore\n"
            ),
            "{off}"
        );
        assert!(!text(&render(&hole, &id, 140010).expect("render").merge_into(b"")).contains("recovery_prefetch"));
        // Preserve keeps the source's own archive_mode.
        let kept = text(&render(&latest, &id, 150004).expect("render").merge_into(b"archive_mode = 'on'\n"));
        assert!(kept.contains("archive_mode = 'on'"), "{kept}");
    }

    /// Every recovery parameter of the server's major is written once; the empty targets come before the one
    /// asked for; parameters the major does not know are left out.
    #[test]
    fn every_recovery_parameter_is_set_for_each_major() {
        let id: BackupId = "20261126-100000F".parse().expect("id");
        let targets = [
            Target::Latest,
            Target::Name("p".into()),
            Target::Lsn(crate::wal::Lsn(0x100)),
            Target::Xid(7),
            Target::Time(parse_time("2025-10-20T12:30:00Z").expect("t")),
        ];
        for version in [130000, 140010, 150004, 160000, 170002, 180000] {
            for target in &targets {
                let block = text(&render(&settings(target.clone()), &id, version).expect("render").text);
                for param in RECOVERY_PARAMETERS {
                    let n = block.lines().filter(|l| l.starts_with(&format!("{} = ", param.name))).count();
                    let want = usize::from(param.is_known_to(version / 10_000));
                    assert_eq!(n, want, "{} for {version} and {target}: {block}", param.name);
                }
                let is_target = |l: &str| {
                    [
                        "recovery_target =",
                        "recovery_target_lsn =",
                        "recovery_target_name =",
                        "recovery_target_time =",
                        "recovery_target_xid =",
                    ]
                    .iter()
                    .any(|n| l.starts_with(n))
                };
                let lines: Vec<&str> = block.lines().collect();
                let set = lines.iter().position(|l| is_target(l) && !l.ends_with(" = ''"));
                let last_empty = lines.iter().rposition(|l| is_target(l) && l.ends_with(" = ''"));
                assert_eq!(set.is_some(), *target != Target::Latest, "{block}");
                if let (Some(set), Some(empty)) = (set, last_empty) {
                    assert!(empty < set, "empty targets must come first: {block}");
                }
            }
        }
        let v16 = text(&render(&settings(Target::Latest), &id, 160000).expect("render").text);
        assert!(!v16.contains("promote_trigger_file"), "{v16}");
        let v15 = text(&render(&settings(Target::Latest), &id, 150000).expect("render").text);
        assert!(v15.contains("promote_trigger_file = ''"), "{v15}");
        assert!(v15.contains("recovery_min_apply_delay = '0'") && v15.contains("recovery_end_command = ''"), "{v15}");
    }

    #[test]
    fn values_are_quoted_as_alter_system_does() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b"plain", b"'plain'"),
            (b"release\\x", b"'release\\\\x'"),
            (b"it's", b"'it''s'"),
            (b"a \"b\" 100%", b"'a \"b\" 100%'"),
            (b"end\\", b"'end\\\\'"),
            ("naïve ünïcødé".as_bytes(), "'naïve ünïcødé'".as_bytes()),
            (b"tab\there\rcr", b"'tab\there\rcr'"),
        ];
        for (value, want) in cases {
            assert_eq!(quote("x", value).as_deref(), Ok(want), "{}", String::from_utf8_lossy(value));
        }
        for bad in [&b"a\nb"[..], b"a\0b", b"\n"] {
            let err = quote("recovery_target_name", bad).expect_err("refused");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
        assert!(check_restore_point("").is_err());
        assert!(check_restore_point(&"x".repeat(63)).is_ok());
        assert!(check_restore_point(&"x".repeat(64)).is_err());
        assert!(check_restore_point("a\nb").is_err());
    }
}
