//! The disk budget of a drill (pure): the restored cluster needs the backup's logical size, plus room for the WAL
//! recovery restores into `pg_wal` between restartpoints and for the server's log and temporary files.

/// `max_wal_size` of the drill's server, in bytes: 1 GiB, or 4 segments when segments are larger than 256 MiB
/// (PostgreSQL needs at least two; its "WAL Configuration" chapter). It bounds what `pg_wal` holds between
/// restartpoints during recovery.
pub fn max_wal_bytes(wal_segment_size: u64) -> u64 {
    (1u64 << 30).max(wal_segment_size.saturating_mul(4))
}

/// Bytes a drill of a backup of `logical_bytes` needs: the logical size, a tenth of it (file system overhead, the
/// server's log and temporary files) and [`max_wal_bytes`].
pub fn needed(logical_bytes: u64, wal_segment_size: u64) -> u64 {
    logical_bytes.saturating_add(logical_bytes / 10).saturating_add(max_wal_bytes(wal_segment_size))
}

/// `Ok(needed)` if `available` bytes hold a drill of a backup of `logical_bytes`, else `Err(needed)`.
pub fn check(logical_bytes: u64, wal_segment_size: u64, available: u64) -> Result<u64, u64> {
    let n = needed(logical_bytes, wal_segment_size);
    if available >= n { Ok(n) } else { Err(n) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_table() {
        const GIB: u64 = 1 << 30;
        const SEG: u64 = 16 << 20;
        for (logical, seg, available, ok) in [
            (0, SEG, GIB, true),
            (0, SEG, GIB - 1, false),
            (10 * GIB, SEG, 12 * GIB, true),
            (10 * GIB, SEG, 12 * GIB - 1, false),
            (40 << 20, SEG, 2 * GIB, true),
            (40 << 20, SEG, 16 << 20, false),
            (0, GIB, 4 * GIB, true),
            (0, GIB, 4 * GIB - 1, false),
            (u64::MAX, SEG, u64::MAX, true),
        ] {
            assert_eq!(check(logical, seg, available).is_ok(), ok, "{logical} with {seg} segments in {available}");
        }
        assert_eq!(check(100 * GIB, SEG, 50 * GIB), Err(111 * GIB));
        assert_eq!(max_wal_bytes(SEG), GIB);
    }
}
