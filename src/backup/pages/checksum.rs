//! PostgreSQL's data page checksum and the page header fields a backup needs (pure).
//!
//! The algorithm is the one documented in PostgreSQL's `src/include/storage/checksum_impl.h` (`pg_checksum_page`,
//! data checksum version 1, the only version since 9.3): the page is read as rows of [`N_SUMS`] native-endian
//! 32-bit words; each column is folded into its own partial sum, starting from its base offset, with the FNV-1a-like
//! step `t = sum ^ word; sum = t * FNV_PRIME ^ (t >> 17)`; two rounds of zero words follow; the partial sums are
//! xor-ed together, the block number (the page's position in the whole relation) is xor-ed in, and the 16-bit
//! result is `(sum % 65535) + 1`. The page's own `pd_checksum` field counts as zero.
//!
//! Page header layout (`PageHeaderData`, `src/include/storage/bufpage.h`), native byte order: `pd_lsn` is two
//! `u32`s (high, low) at bytes 0 and 4, `pd_checksum` a `u16` at byte 8.

use crate::wal::Lsn;

/// Partial sums computed side by side (a fixed part of the algorithm: another number gives other checksums).
pub const N_SUMS: usize = 32;

/// The FNV-1a 32-bit prime.
const FNV_PRIME: u32 = 16_777_619;

/// The initial value of each partial sum (`checksumBaseOffsets` in `checksum_impl.h`).
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F_36E9,
    0xB852_5960,
    0x02AB_50AA,
    0x1DE6_6D2A,
    0x79FF_467A,
    0x9BB9_F8A3,
    0x217E_7CD2,
    0x83E1_3D2C,
    0xF8D4_474F,
    0xE39E_B970,
    0x42C6_AE16,
    0x9932_16FA,
    0x7B09_3B5D,
    0x98DA_FF3C,
    0xF718_902A,
    0x0B1C_9CDB,
    0xE58F_764B,
    0x1876_36BC,
    0x5D7B_3BB1,
    0xE73D_E7DE,
    0x92BE_C979,
    0xCCA6_C0B2,
    0x304A_0979,
    0x85AA_43D4,
    0x7831_25BB,
    0x6CA8_EAA2,
    0xE407_EAC6,
    0x4B5C_FC3E,
    0x9FBF_8C76,
    0x15CA_20BE,
    0xF2CA_9FD3,
    0x959B_D756,
];

/// Byte offset of `pd_checksum` in the page header.
const CHECKSUM_OFFSET: usize = 8;

/// Size of the page header fields read here (`pd_lsn` and `pd_checksum`).
pub const HEADER_BYTES: usize = 10;

/// One mixing step of a partial sum.
#[inline(always)]
fn mix(sum: u32, word: u32) -> u32 {
    let t = sum ^ word;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

fn word_at(page: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]])
}

/// The checksum PostgreSQL stores in `pd_checksum` for `page` at block `block` of its relation.
///
/// `page` must be a whole page: its length a multiple of `4 * N_SUMS` bytes (every PostgreSQL block size, 1 to
/// 32 KiB, is), and at least [`HEADER_BYTES`]; otherwise `None`.
pub fn page_checksum(page: &[u8], block: u32) -> Option<u16> {
    let row_bytes = 4 * N_SUMS;
    if page.len() < HEADER_BYTES || !page.len().is_multiple_of(row_bytes) {
        return None;
    }
    let mut sums = BASE_OFFSETS;
    for (r, row) in page.chunks_exact(row_bytes).enumerate() {
        if r == 0 {
            // The first row holds the header: pd_checksum (two bytes of word 2) counts as zero.
            for (j, sum) in sums.iter_mut().enumerate() {
                let mut w = [row[4 * j], row[4 * j + 1], row[4 * j + 2], row[4 * j + 3]];
                if 4 * j == CHECKSUM_OFFSET {
                    w[0] = 0;
                    w[1] = 0;
                }
                *sum = mix(*sum, u32::from_ne_bytes(w));
            }
            continue;
        }
        for (sum, w) in sums.iter_mut().zip(row.chunks_exact(4)) {
            *sum = mix(*sum, u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ block;
    // The remainder is below 65535, so the sum fits in 16 bits.
    Some((folded % 65535) as u16 + 1)
}

/// The checksum recorded in the page (`pd_checksum`), if the page holds a header.
pub fn stored_checksum(page: &[u8]) -> Option<u16> {
    let b = page.get(CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

/// The page's LSN (`pd_lsn`): the end of the last WAL record that changed it, if the page holds a header.
pub fn page_lsn(page: &[u8]) -> Option<Lsn> {
    if page.len() < 8 {
        return None;
    }
    Some(Lsn((u64::from(word_at(page, 0)) << 32) | u64::from(word_at(page, 4))))
}

/// True if every byte is zero: a page the relation was extended with and nothing was written to yet.
pub fn is_all_zero(page: &[u8]) -> bool {
    page.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages read from the relation files of a PostgreSQL 15 cluster initialised with `--data-checksums` (after a
    /// checkpoint, with the server stopped; `pg_checksums --check` found no bad checksum), with their block numbers.
    const REAL_PAGES: [(&str, &[u8], u32); 5] = [
        ("heap block 0", include_bytes!("testdata/heap-block0.page"), 0),
        ("heap block 3", include_bytes!("testdata/heap-block3.page"), 3),
        ("visibility map block 0", include_bytes!("testdata/vm-block0.page"), 0),
        ("free space map block 2", include_bytes!("testdata/fsm-block2.page"), 2),
        ("btree block 1", include_bytes!("testdata/btree-block1.page"), 1),
    ];

    #[test]
    fn matches_the_checksums_postgresql_wrote() {
        for (what, page, block) in REAL_PAGES {
            let stored = stored_checksum(page).expect("header");
            assert_ne!(stored, 0, "{what}: the fixture has a checksum");
            assert_eq!(page_checksum(page, block), Some(stored), "{what}");
            // The block number is part of the checksum: the same page elsewhere in the relation does not verify.
            assert_ne!(page_checksum(page, block + 1), Some(stored), "{what} moved");
            assert_ne!(page_checksum(page, block + (1 << 17)), Some(stored), "{what} in the next segment");
        }
    }

    #[test]
    fn any_changed_byte_outside_pd_checksum_is_detected() {
        let (_, page, block) = REAL_PAGES[0];
        let stored = stored_checksum(page).expect("header");
        for at in [0, 7, 10, 23, 100, 4096, 8191] {
            let mut bad = page.to_vec();
            bad[at] ^= 0x5a;
            assert_ne!(page_checksum(&bad, block), Some(stored), "byte {at} changed");
        }
        // pd_checksum itself is not part of the sum.
        let mut other = page.to_vec();
        other[CHECKSUM_OFFSET] ^= 0xff;
        assert_eq!(page_checksum(&other, block), Some(stored));
    }

    #[test]
    fn header_fields() {
        let (_, page, _) = REAL_PAGES[0];
        // pd_lsn 0/1B91C80 (bytes 00 00 00 00 80 1c b9 01), pd_checksum 0x402a (bytes 2a 40).
        assert_eq!(page_lsn(page), Some(Lsn(0x01b9_1c80)));
        assert_eq!(stored_checksum(page), Some(0x402a));
        assert_eq!(page_lsn(&[0u8; 4]), None);
        assert_eq!(stored_checksum(&[0u8; 9]), None);
        assert!(is_all_zero(&[0u8; 8192]));
        assert!(!is_all_zero(page));
    }

    #[test]
    fn the_result_is_never_zero_and_odd_sizes_are_refused() {
        for block in 0..2000u32 {
            assert_ne!(page_checksum(&[0u8; 8192], block), Some(0));
        }
        assert_eq!(page_checksum(&[0u8; 8190], 0), None);
        assert_eq!(page_checksum(&[], 0), None);
        // Other block sizes (1 to 32 KiB) use the same rows.
        assert!(page_checksum(&[1u8; 32768], 0).is_some());
    }
}
