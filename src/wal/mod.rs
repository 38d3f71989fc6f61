//! WAL vocabulary: timelines, LSNs, segment names, the other archived file names, and long-page-header checks.
//!
//! Pure: no I/O. Invariants:
//! - Every name type round-trips through `FromStr`/`Display`.
//! - Segment arithmetic depends on `wal_segment_size` (a power of two, 1 MiB to 1 GiB): a log file holds
//!   `0x1_0000_0000 / seg_size` segments, so at 16 MiB `...0000000A000000FF` is followed by `...0000000B00000000`.

pub mod continuity;
mod history;
pub mod version;

pub use history::{HistoryEntry, TimelineHistory};

use std::fmt;
use std::str::FromStr;

/// Smallest `wal_segment_size` initdb allows.
pub const MIN_SEGMENT_SIZE: u64 = 1 << 20;
/// Largest `wal_segment_size` initdb allows.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Bytes of the long page header that [`LongPageHeader::parse`] reads.
pub const LONG_HEADER_LEN: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;

/// Why a name or a header is not valid WAL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not one of the names PostgreSQL archives.
    #[error("{name:?} is not a WAL segment, .partial, .history or .backup file name")]
    UnknownName {
        /// The name.
        name: String,
    },
    /// Not a valid LSN (`X/X`).
    #[error("{text:?} is not an LSN (expected hex X/X)")]
    BadLsn {
        /// The text.
        text: String,
    },
    /// A segment size that initdb does not allow.
    #[error("wal segment size {size} is not a power of two between 1 MiB and 1 GiB")]
    BadSegmentSize {
        /// The size.
        size: u64,
    },
    /// The segment number in the name does not exist for this segment size.
    #[error("segment {name} is impossible with a wal segment size of {seg_size} bytes")]
    SegmentOutOfRange {
        /// The name.
        name: String,
        /// The segment size.
        seg_size: u64,
    },
}

/// A timeline id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

impl FromStr for TimelineId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex_u32(s).map(TimelineId).ok_or_else(|| ParseError::UnknownName { name: s.to_owned() })
    }
}

/// A WAL location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::BadLsn { text: s.to_owned() };
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok(hi) || !ok(lo) {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

/// A validated `wal_segment_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSize(u64);

impl SegmentSize {
    /// The default 16 MiB.
    pub const DEFAULT: SegmentSize = SegmentSize(16 << 20);

    /// Validate a size.
    pub fn new(size: u64) -> Result<Self, ParseError> {
        if size.is_power_of_two() && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) {
            Ok(Self(size))
        } else {
            Err(ParseError::BadSegmentSize { size })
        }
    }

    /// Bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per 4 GiB "log file" (the middle 8 hex digits of a name).
    pub fn segments_per_log(self) -> u64 {
        0x1_0000_0000 / self.0
    }
}

/// A WAL segment: timeline plus segment number. Its name needs the segment size to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentName {
    /// Timeline.
    pub timeline: TimelineId,
    /// The "log" part (high 32 bits of the LSN).
    pub log: u32,
    /// The "seg" part (index within the log).
    pub seg: u32,
}

impl PartialOrd for SegmentName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SegmentName {
    /// Name order, which is the archive order PostgreSQL uses.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.timeline, self.log, self.seg).cmp(&(other.timeline, other.log, other.seg))
    }
}

impl SegmentName {
    /// The segment number (`log * segments_per_log + seg`), checking the name is possible for this size.
    pub fn segno(&self, size: SegmentSize) -> Result<u64, ParseError> {
        if u64::from(self.seg) >= size.segments_per_log() {
            return Err(ParseError::SegmentOutOfRange { name: self.to_string(), seg_size: size.bytes() });
        }
        Ok(u64::from(self.log) * size.segments_per_log() + u64::from(self.seg))
    }

    /// Build the name of segment number `segno` on `timeline`.
    pub fn from_segno(timeline: TimelineId, segno: u64, size: SegmentSize) -> Self {
        let per = size.segments_per_log();
        // invariant: per >= 4 and segno < 2^64 / seg_size, so segno / per fits in u32 for any LSN.
        Self { timeline, log: (segno / per) as u32, seg: (segno % per) as u32 }
    }

    /// The LSN at which this segment starts.
    pub fn start_lsn(&self, size: SegmentSize) -> Result<Lsn, ParseError> {
        Ok(Lsn(self.segno(size)? * size.bytes()))
    }

    /// The next segment on the same timeline.
    pub fn next(&self, size: SegmentSize) -> Result<Self, ParseError> {
        Ok(Self::from_segno(self.timeline, self.segno(size)? + 1, size))
    }

    /// The previous segment on the same timeline (None for the very first).
    pub fn prev(&self, size: SegmentSize) -> Result<Option<Self>, ParseError> {
        let n = self.segno(size)?;
        Ok(n.checked_sub(1).map(|p| Self::from_segno(self.timeline, p, size)))
    }

    /// The segment holding `lsn`.
    pub fn containing(timeline: TimelineId, lsn: Lsn, size: SegmentSize) -> Self {
        Self::from_segno(timeline, lsn.0 / size.bytes(), size)
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

impl FromStr for SegmentName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::UnknownName { name: s.to_owned() };
        if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()) {
            return Err(bad());
        }
        let tli = parse_hex_u32(&s[0..8]).ok_or_else(bad)?;
        let log = parse_hex_u32(&s[8..16]).ok_or_else(bad)?;
        let seg = parse_hex_u32(&s[16..24]).ok_or_else(bad)?;
        if tli == 0 {
            return Err(bad());
        }
        Ok(Self { timeline: TimelineId(tli), log, seg })
    }
}

fn parse_hex_u32(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Any file name PostgreSQL hands to `archive_command` or asks of `restore_command`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WalFileName {
    /// `000000010000000000000001`
    Segment(SegmentName),
    /// `000000010000000000000001.partial` (end of an old timeline after promotion)
    Partial(SegmentName),
    /// `00000002.history`
    History(TimelineId),
    /// `000000010000000000000002.00000028.backup` (backup history file)
    BackupHistory(SegmentName, u32),
}

impl WalFileName {
    /// The segment the name refers to, if any.
    pub fn segment(&self) -> Option<SegmentName> {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) | WalFileName::BackupHistory(s, _) => Some(*s),
            WalFileName::History(_) => None,
        }
    }

    /// True for the names whose content is a WAL segment with a page header (segment, partial).
    pub fn is_segment_data(&self) -> bool {
        matches!(self, WalFileName::Segment(_) | WalFileName::Partial(_))
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::Partial(s) => write!(f, "{s}.partial"),
            WalFileName::History(t) => write!(f, "{t}.history"),
            WalFileName::BackupHistory(s, off) => write!(f, "{s}.{off:08X}.backup"),
        }
    }
}

impl FromStr for WalFileName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::UnknownName { name: s.to_owned() };
        if let Some(tli) = s.strip_suffix(".history") {
            let t: TimelineId = tli.parse().map_err(|_| bad())?;
            return if t.0 == 0 { Err(bad()) } else { Ok(WalFileName::History(t)) };
        }
        if let Some(seg) = s.strip_suffix(".partial") {
            return Ok(WalFileName::Partial(seg.parse().map_err(|_| bad())?));
        }
        if let Some(rest) = s.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.').ok_or_else(bad)?;
            let off = parse_hex_u32(off).ok_or_else(bad)?;
            return Ok(WalFileName::BackupHistory(seg.parse().map_err(|_| bad())?, off));
        }
        Ok(WalFileName::Segment(s.parse().map_err(|_| bad())?))
    }
}

/// The fields of a segment's first (long) page header that identify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    /// `xlp_magic`: the WAL format version.
    pub magic: u16,
    /// `xlp_info` flags.
    pub info: u16,
    /// `xlp_tli`: timeline of the first record (may differ from the file name's after a switch).
    pub timeline: TimelineId,
    /// `xlp_pageaddr`: must equal the segment's start LSN.
    pub page_addr: Lsn,
    /// `xlp_sysid`: the cluster's system identifier.
    pub system_identifier: u64,
    /// `xlp_seg_size`.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`.
    pub block_size: u32,
}

/// Why a segment's content does not match its name or the cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Shorter than a long page header.
    #[error("segment {name} is {len} bytes, too short to hold a page header")]
    TooShort {
        /// The file name.
        name: String,
        /// Bytes available.
        len: usize,
    },
    /// `xlp_magic` is not the one of a supported major ([`version::SUPPORTED`]).
    #[error("segment {name}: {source}")]
    UnsupportedMagic {
        /// The file name.
        name: String,
        /// The magic, and what it is.
        #[source]
        source: version::Unsupported,
    },
    /// The first page does not carry the long-header flag.
    #[error("segment {name} does not start with a long page header (xlp_info 0x{info:04X})")]
    NotLongHeader {
        /// The file name.
        name: String,
        /// The flags.
        info: u16,
    },
    /// `xlp_seg_size` is not a valid size or differs from the file size.
    #[error("segment {name} header says segment size {header_size} but the file is {file_size} bytes")]
    SizeMismatch {
        /// The file name.
        name: String,
        /// Size from the header.
        header_size: u64,
        /// Actual size.
        file_size: u64,
    },
    /// `xlp_pageaddr` is not where the name says the segment starts.
    #[error("segment {name} header page address {page_addr} differs from the name's start {expected}")]
    WrongPageAddress {
        /// The file name.
        name: String,
        /// From the header.
        page_addr: Lsn,
        /// From the name.
        expected: Lsn,
    },
    /// Bad `xlp_xlog_blcksz`.
    #[error("segment {name} header has an impossible block size {block_size}")]
    BadBlockSize {
        /// The file name.
        name: String,
        /// The size.
        block_size: u32,
    },
    /// The name's segment number is impossible for the header's segment size.
    #[error(transparent)]
    Name(#[from] ParseError),
}

impl LongPageHeader {
    /// Read the header fields (little-endian, as written on x86-64 and aarch64).
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < LONG_HEADER_LEN {
            return Err(HeaderError::TooShort { name: name.to_owned(), len: bytes.len() });
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Ok(Self {
            magic: u16_at(0),
            info: u16_at(2),
            timeline: TimelineId(u32_at(4)),
            page_addr: Lsn(u64_at(8)),
            system_identifier: u64_at(24),
            seg_size: u32_at(32),
            block_size: u32_at(36),
        })
    }

    /// The supported major that wrote this page (by `xlp_magic`; see [`version`]).
    pub fn major(&self, display_name: &str) -> Result<&'static version::Major, HeaderError> {
        version::Major::of_wal_page_magic(self.magic)
            .map_err(|source| HeaderError::UnsupportedMagic { name: display_name.to_owned(), source })
    }

    /// Check a segment file's header against its name and size: a supported major's page magic (a major this
    /// build has not been tested with is refused, never guessed), a long header, the sizes, the page address.
    /// Returns the validated segment size.
    pub fn validate(&self, name: &SegmentName, display_name: &str, file_size: u64) -> Result<SegmentSize, HeaderError> {
        let name_s = display_name.to_owned();
        self.major(display_name)?;
        if self.info & XLP_LONG_HEADER == 0 {
            return Err(HeaderError::NotLongHeader { name: name_s, info: self.info });
        }
        let header_size = u64::from(self.seg_size);
        let size = match SegmentSize::new(header_size) {
            Ok(s) if header_size == file_size => s,
            _ => return Err(HeaderError::SizeMismatch { name: name_s, header_size, file_size }),
        };
        if !self.block_size.is_power_of_two() || !(1024..=65536).contains(&self.block_size) {
            return Err(HeaderError::BadBlockSize { name: name_s, block_size: self.block_size });
        }
        let expected = name.start_lsn(size)?;
        if self.page_addr != expected {
            return Err(HeaderError::WrongPageAddress { name: name_s, page_addr: self.page_addr, expected });
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MB16: SegmentSize = SegmentSize::DEFAULT;

    #[test]
    fn next_and_prev_across_log_boundaries() {
        let cases: &[(u64, &str, &str)] = &[
            (16 << 20, "000000010000000A000000FE", "000000010000000A000000FF"),
            (16 << 20, "000000010000000A000000FF", "000000010000000B00000000"),
            (1 << 20, "0000000100000000000000FF", "000000010000000000000100"),
            (1 << 20, "000000010000000000000FFF", "000000010000000100000000"),
            (1 << 30, "000000020000000000000003", "000000020000000100000000"),
            (64 << 20, "00000003000000050000003F", "000000030000000600000000"),
        ];
        for &(size, from, to) in cases {
            let size = SegmentSize::new(size).expect("size");
            let a: SegmentName = from.parse().expect(from);
            let b: SegmentName = to.parse().expect(to);
            assert_eq!(a.next(size).expect("next"), b, "{from} -> {to}");
            assert_eq!(b.prev(size).expect("prev"), Some(a), "{to} <- {from}");
        }
        let first: SegmentName = "000000010000000000000000".parse().expect("first");
        assert_eq!(first.prev(MB16).expect("prev"), None);
    }

    #[test]
    fn impossible_segment_for_size() {
        let s: SegmentName = "000000010000000000000100".parse().expect("name");
        assert!(s.segno(MB16).is_err());
        assert!(s.segno(SegmentSize::new(1 << 20).expect("1MiB")).is_ok());
    }

    #[test]
    fn segment_sizes() {
        for ok in [1u64 << 20, 16 << 20, 1 << 30] {
            assert!(SegmentSize::new(ok).is_ok());
        }
        for bad in [0u64, 1 << 19, 3 << 20, 2 << 30] {
            assert!(SegmentSize::new(bad).is_err());
        }
    }

    #[test]
    fn file_name_table() {
        let cases = [
            ("000000010000000000000001", true),
            ("000000010000000000000001.partial", true),
            ("00000002.history", true),
            ("000000010000000000000002.00000028.backup", true),
            ("00000001000000000000001", false),
            ("0000000100000000000000010", false),
            ("000000010000000000000001.gz", false),
            ("00000000.history", false),
            ("000000000000000000000001", false),
            ("00000001000000000000000a", false),
            ("RECOVERYXLOG", false),
            ("../00000002.history", false),
            ("000000010000000000000002.0000028.backup", false),
            ("", false),
        ];
        for (name, ok) in cases {
            let parsed = name.parse::<WalFileName>();
            assert_eq!(parsed.is_ok(), ok, "{name}: {parsed:?}");
            if let Ok(p) = parsed {
                assert_eq!(p.to_string(), name);
            }
        }
    }

    #[test]
    fn lsn_round_trip_and_errors() {
        let l: Lsn = "16/B374D848".parse().expect("lsn");
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        for bad in ["", "1", "1/", "/1", "G/1", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
        let seg = SegmentName::containing(TimelineId(1), l, MB16);
        assert_eq!(seg.to_string(), "0000000100000016000000B3");
    }

    fn header(magic: u16, info: u16, addr: u64, seg: u32, blck: u32) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[0..2].copy_from_slice(&magic.to_le_bytes());
        h[2..4].copy_from_slice(&info.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..16].copy_from_slice(&addr.to_le_bytes());
        h[24..32].copy_from_slice(&0x1234_5678_9ABC_DEF0u64.to_le_bytes());
        h[32..36].copy_from_slice(&seg.to_le_bytes());
        h[36..40].copy_from_slice(&blck.to_le_bytes());
        h
    }

    #[test]
    fn header_validation_table() {
        let name: SegmentName = "000000020000000A000000FF".parse().expect("name");
        let start = (0xA * 256 + 0xFF) * (16u64 << 20);
        let full = 16u64 << 20;
        let ok = header(0xD110, 7, start, 16 << 20, 8192);
        let h = LongPageHeader::parse("n", &ok).expect("parse");
        assert_eq!(h.system_identifier, 0x1234_5678_9ABC_DEF0);
        assert_eq!(h.validate(&name, "n", full).expect("valid"), MB16);
        // Every supported major's page magic is accepted, and names its major.
        for major in version::SUPPORTED {
            let h = LongPageHeader::parse("n", &header(major.wal_page_magic, 7, start, 16 << 20, 8192)).expect("parse");
            assert_eq!(h.validate(&name, "n", full).expect("valid"), MB16, "{major}");
            assert_eq!(h.major("n").expect("major").major, major.major);
        }
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            (header(0xBEEF, 7, start, 16 << 20, 8192), full, "WAL page magic 0xBEEF is not one of a known"),
            (
                header(0xD101, 7, start, 16 << 20, 8192),
                full,
                "n: WAL page magic 0xD101 is PostgreSQL 12's (end-of-life)",
            ),
            (header(0xD119, 7, start, 16 << 20, 8192), full, "backupctl supports PostgreSQL 13 to 18"),
            (header(0xD110, 5, start, 16 << 20, 8192), full, "long page header"),
            (header(0xD110, 7, start, 16 << 20, 8192), full - 8192, "file is"),
            (header(0xD110, 7, start, 3 << 20, 8192), 3 << 20, "segment size"),
            (header(0xD110, 7, start + full, 16 << 20, 8192), full, "page address"),
            (header(0xD110, 7, start, 16 << 20, 1000), full, "block size"),
        ];
        for (bytes, size, want) in cases {
            let err = LongPageHeader::parse("n", &bytes).expect("parse").validate(&name, "n", size).expect_err(want);
            assert!(err.to_string().contains(want), "{err} should contain {want}");
        }
        assert!(LongPageHeader::parse("n", &ok[..20]).is_err());
    }

    proptest! {
        #[test]
        fn segment_name_round_trips(tli in 1u32.., log in any::<u32>(), seg in 0u32..256) {
            let s = SegmentName { timeline: TimelineId(tli), log, seg };
            let text = s.to_string();
            prop_assert_eq!(text.parse::<SegmentName>().expect("parse"), s);
            let w = WalFileName::Partial(s).to_string();
            prop_assert_eq!(w.parse::<WalFileName>().expect("parse"), WalFileName::Partial(s));
        }

        #[test]
        fn segno_round_trips(shift in 20u32..=30, segno in 0u64..(1u64 << 33)) {
            let size = SegmentSize::new(1u64 << shift).expect("size");
            let s = SegmentName::from_segno(TimelineId(3), segno, size);
            prop_assert_eq!(s.segno(size).expect("segno"), segno);
            prop_assert_eq!(s.next(size).expect("next").segno(size).expect("segno"), segno + 1);
        }

        #[test]
        fn lsn_round_trips(v in any::<u64>()) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().expect("lsn"), Lsn(v));
        }
    }
}
