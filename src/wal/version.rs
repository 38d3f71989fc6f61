//! The PostgreSQL majors this build supports, and the numbers each identifies itself by: the WAL page magic,
//! the `pg_control` format version and `server_version_num`. The one table every version check reads.
//!
//! Pure. Invariants:
//! - A major is in [`SUPPORTED`] only when the matrix test (tests/integration/issue11_versions.rs) archives, backs
//!   up and restores a real cluster of it; the numbers are checked there against the files that cluster writes.
//! - Anything else is refused with an [`Unsupported`] that names the value and the supported range, never
//!   guessed: a newer major may change the WAL, `pg_control` or the backup functions in ways this build cannot
//!   see. Majors before 13 are end-of-life (12 since November 2024) and are named as such when recognised.
//!
//! Sources: `XLOG_PAGE_MAGIC` in src/include/access/xlog_internal.h and `PG_CONTROL_VERSION` in
//! src/include/catalog/pg_control.h of each major's release branch (pgBackRest vendors the same values in
//! src/postgres/interface/version.vendor.h); `server_version_num` is major × 10000 + minor since PostgreSQL 10.

use std::fmt;

/// One supported PostgreSQL major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Major {
    /// The major version, e.g. 15.
    pub major: u32,
    /// `XLOG_PAGE_MAGIC`: `xlp_magic` of every WAL page this major writes.
    pub wal_page_magic: u16,
    /// `PG_CONTROL_VERSION`: `pg_control_version` in `global/pg_control` (`pg_control_system()`).
    pub pg_control_version: u32,
    /// The backup functions are `pg_backup_start`/`pg_backup_stop` (15 and later) rather than the non-exclusive
    /// forms of `pg_start_backup`/`pg_stop_backup` (13, 14; the exclusive mode was removed in 15).
    pub has_pg_backup_start: bool,
}

const fn m(major: u32, wal_page_magic: u16, pg_control_version: u32) -> Major {
    Major { major, wal_page_magic, pg_control_version, has_pg_backup_start: major >= 15 }
}

/// The supported majors, oldest first.
pub const SUPPORTED: [Major; 6] = [
    m(13, 0xD106, 1300),
    m(14, 0xD10D, 1300),
    m(15, 0xD110, 1300),
    m(16, 0xD113, 1300),
    m(17, 0xD116, 1700),
    m(18, 0xD118, 1800),
];

/// The oldest supported major.
pub const OLDEST: u32 = SUPPORTED[0].major;
/// The newest supported major.
pub const NEWEST: u32 = SUPPORTED[SUPPORTED.len() - 1].major;

/// Majors recognised but refused (end-of-life): (major, `XLOG_PAGE_MAGIC`, `PG_CONTROL_VERSION`).
const RETIRED: [(u32, u16, u32); 3] = [(10, 0xD097, 1002), (11, 0xD098, 1100), (12, 0xD101, 1201)];

/// A version this build does not support, named by the value it was recognised from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unsupported {
    /// `server_version_num` (from the server, or recorded in a backup's manifest) outside 13-18.
    #[error("PostgreSQL {} (server_version_num {version_num}) is not supported: {}", version_num / 10_000, Range)]
    ServerVersion {
        /// The number.
        version_num: u32,
    },
    /// A WAL page magic of no supported major.
    #[error("WAL page magic 0x{magic:04X} is {}: {}", magic_origin(*magic), Range)]
    WalPageMagic {
        /// `xlp_magic`.
        magic: u16,
    },
    /// A `pg_control` format of no supported major, or not the one of the server's major.
    #[error("pg_control version {pg_control_version} is {}: {}", control_origin(*pg_control_version, *major), Range)]
    ControlVersion {
        /// `pg_control_version`.
        pg_control_version: u32,
        /// The major the server says it is, when known.
        major: Option<u32>,
    },
}

/// "backupctl supports PostgreSQL 13 to 18".
struct Range;

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backupctl supports PostgreSQL {OLDEST} to {NEWEST}")
    }
}

fn magic_origin(magic: u16) -> String {
    match RETIRED.iter().find(|r| r.1 == magic) {
        Some((major, ..)) => format!("PostgreSQL {major}'s (end-of-life)"),
        None => "not one of a known PostgreSQL release (not WAL, or a newer major)".to_owned(),
    }
}

fn control_origin(version: u32, major: Option<u32>) -> String {
    let known = SUPPORTED.iter().filter(|s| s.pg_control_version == version).map(|s| s.major).collect::<Vec<_>>();
    match (major, known.first(), known.last()) {
        (Some(major), Some(a), Some(b)) => format!("PostgreSQL {a}-{b}'s, but the server says it is {major}"),
        (_, Some(a), Some(b)) => format!("PostgreSQL {a}-{b}'s"),
        _ => match RETIRED.iter().find(|r| r.2 == version) {
            Some((major, ..)) => format!("PostgreSQL {major}'s (end-of-life)"),
            None => "not one of a known PostgreSQL release".to_owned(),
        },
    }
}

impl Major {
    /// The supported major of a `server_version_num` (150004 → 15).
    pub fn of_version_num(version_num: u32) -> Result<&'static Major, Unsupported> {
        SUPPORTED.iter().find(|s| s.major == version_num / 10_000).ok_or(Unsupported::ServerVersion { version_num })
    }

    /// The supported major whose WAL carries `magic`.
    pub fn of_wal_page_magic(magic: u16) -> Result<&'static Major, Unsupported> {
        SUPPORTED.iter().find(|s| s.wal_page_magic == magic).ok_or(Unsupported::WalPageMagic { magic })
    }

    /// Check that a server of this major reports the `pg_control` format this major writes.
    pub fn check_control_version(&self, pg_control_version: u32) -> Result<(), Unsupported> {
        if pg_control_version == self.pg_control_version {
            Ok(())
        } else {
            Err(Unsupported::ControlVersion { pg_control_version, major: Some(self.major) })
        }
    }
}

impl fmt::Display for Major {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}", self.major)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_ordered_and_complete() {
        let majors: Vec<u32> = SUPPORTED.iter().map(|s| s.major).collect();
        assert_eq!(majors, (13..=18).collect::<Vec<_>>());
        let mut magics: Vec<u16> = SUPPORTED.iter().map(|s| s.wal_page_magic).collect();
        magics.dedup();
        assert_eq!(magics.len(), SUPPORTED.len(), "every major has its own WAL page magic");
        assert!(magics.windows(2).all(|w| w[0] < w[1]), "magics grow with the major");
        assert_eq!((OLDEST, NEWEST), (13, 18));
    }

    /// Every way a version is detected agrees: the server's number, the WAL page magic, the pg_control format.
    #[test]
    fn each_supported_major_by_each_number() {
        let cases = [
            (130023, 0xD106, 1300, false),
            (140023, 0xD10D, 1300, false),
            (150018, 0xD110, 1300, true),
            (160014, 0xD113, 1300, true),
            (170010, 0xD116, 1700, true),
            (180004, 0xD118, 1800, true),
        ];
        for (num, magic, control, new_api) in cases {
            let by_num = Major::of_version_num(num).expect("supported");
            assert_eq!(Major::of_wal_page_magic(magic), Ok(by_num), "{num}");
            assert_eq!(by_num.check_control_version(control), Ok(()), "{num}");
            assert_eq!(by_num.has_pg_backup_start, new_api, "{num}");
            assert_eq!(by_num.major, num / 10_000);
        }
    }

    #[test]
    fn unsupported_values_are_named_with_the_range() {
        let cases: [(Unsupported, &str); 8] = [
            (
                Major::of_version_num(120022).expect_err("12"),
                "PostgreSQL 12 (server_version_num 120022) is not supported: backupctl supports PostgreSQL 13 to 18",
            ),
            (
                Major::of_version_num(190000).expect_err("19"),
                "PostgreSQL 19 (server_version_num 190000) is not supported: backupctl supports PostgreSQL 13 to 18",
            ),
            (Major::of_version_num(90624).expect_err("9.6"), "PostgreSQL 9 (server_version_num 90624)"),
            (
                Major::of_wal_page_magic(0xD101).expect_err("12"),
                "WAL page magic 0xD101 is PostgreSQL 12's (end-of-life): backupctl supports PostgreSQL 13 to 18",
            ),
            (Major::of_wal_page_magic(0xD097).expect_err("10"), "0xD097 is PostgreSQL 10's (end-of-life)"),
            (
                Major::of_wal_page_magic(0xD119).expect_err("19?"),
                "WAL page magic 0xD119 is not one of a known PostgreSQL release (not WAL, or a newer major): \
                 backupctl supports PostgreSQL 13 to 18",
            ),
            (
                SUPPORTED[4].check_control_version(1300).expect_err("17 with 13's"),
                "pg_control version 1300 is PostgreSQL 13-16's, but the server says it is 17: backupctl supports",
            ),
            (SUPPORTED[5].check_control_version(1900).expect_err("19?"), "pg_control version 1900 is not one of"),
        ];
        for (err, want) in cases {
            let text = err.to_string();
            assert!(text.starts_with(want) || text.contains(want), "{text:?} lacks {want:?}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
        assert!(Major::of_version_num(120022).is_err(), "12 is end-of-life and refused");
    }
}
