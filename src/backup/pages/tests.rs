use super::*;

/// Real pages (see `checksum.rs`): heap block 0 and heap block 3 of one relation, written with checksums on.
const HEAP0: &[u8] = include_bytes!("testdata/heap-block0.page");
const HEAP3: &[u8] = include_bytes!("testdata/heap-block3.page");
const PAGE: usize = 8192;
/// Their pd_lsn is about 0/1B91C80: a backup that started later than that.
const START: Lsn = Lsn(0x0300_0000);

fn layout() -> PageLayout {
    PageLayout { has_checksums: true, block_size: PAGE as u32, blocks_per_segment: 131_072 }
}

fn damaged(page: &[u8]) -> Vec<u8> {
    let mut p = page.to_vec();
    // The middle of the page: the header (and so pd_lsn) stays as it was.
    for b in &mut p[4000..4100] {
        *b ^= 0xa5;
    }
    p
}

/// Blocks 0..=4 of a relation file: block 0 good, 1 and 2 new (zero), 3 good, 4 damaged.
fn relation_file() -> Vec<u8> {
    [HEAP0, &[0u8; PAGE], &[0u8; PAGE], HEAP3, &damaged(HEAP0)].concat()
}

#[test]
fn relation_files_and_their_segments() {
    let cases: &[(&str, Option<u32>)] = &[
        ("base/5/16384", Some(0)),
        ("base/5/16384.1", Some(1)),
        ("base/5/16384.12", Some(12)),
        ("base/5/16384_fsm", Some(0)),
        ("base/5/16384_vm", Some(0)),
        ("base/5/16384_init", Some(0)),
        ("base/5/16384_fsm.2", Some(2)),
        ("global/1262", Some(0)),
        ("pg_tblspc/16399/PG_15_202209061/5/16400", Some(0)),
        ("pg_tblspc/16399/PG_15_202209061/5/16400_vm.3", Some(3)),
        ("global/pg_control", None),
        ("global/pg_filenode.map", None),
        ("base/5/pg_filenode.map", None),
        ("base/5/pg_internal.init", None),
        ("base/5/PG_VERSION", None),
        ("base/5/t3_16384", None),
        ("base/5/t3_16384_fsm", None),
        ("base/5/16384_main", None),
        ("base/5/16384.", None),
        ("base/5/16384.x", None),
        ("base/x/16384", None),
        ("base/16384", None),
        ("pg_xact/0000", None),
        ("pg_multixact/offsets/0000", None),
        ("pg_tblspc/16399/PG_15_202209061/5/pg_filenode.map", None),
        ("pg_tblspc/16399/other/5/16400", None),
        ("PG_VERSION", None),
        ("postgresql.conf", None),
    ];
    for (path, want) in cases {
        assert_eq!(relation_segment(&ManifestPath::from(*path)), *want, "{path}");
    }
    assert_eq!(relation_segment(&ManifestPath::new(&b"base/5/\xff16384"[..])), None);
}

#[test]
fn pages_pass_fail_or_are_skipped_by_the_rules() {
    let l = layout();
    let v = verify_pages(&l, 0, 0, &relation_file(), START);
    assert_eq!(v, Verified { pages_verified: 3, failed: vec![4] }, "zero pages pass unverified, the damaged one fails");

    // A page written during the backup (pd_lsn at or after the start) is not verified: WAL replay rewrites it.
    let page_lsn = checksum::page_lsn(HEAP0).expect("lsn");
    let v = verify_pages(&l, 0, 0, &damaged(HEAP0), page_lsn);
    assert_eq!(v, Verified { pages_verified: 0, failed: vec![] });
    let v = verify_pages(&l, 0, 0, &damaged(HEAP0), Lsn(page_lsn.0 + 1));
    assert_eq!(v.failed, vec![0]);

    // The block number is the relation's: the same page in segment 1 is somewhere else.
    assert_eq!(verify_pages(&l, 1, 0, HEAP0, START).failed, vec![0]);
    assert_eq!(verify_pages(&l, 0, 3 * PAGE as u64, HEAP3, START), Verified { pages_verified: 1, failed: vec![] });

    // A page cut short by the end of the data is failed (to be read again); pages that start before the data
    // are left to the read that holds their start.
    let file = relation_file();
    assert_eq!(verify_pages(&l, 0, 0, &file[..PAGE + 100], START).failed, vec![1]);
    let v = verify_pages(&l, 0, 100, &file[100..4 * PAGE], START);
    assert_eq!(v, Verified { pages_verified: 1, failed: vec![] }, "blocks 1 to 3 start in the data");
    assert_eq!(verify_pages(&l, 0, 0, &[], START), Verified::default());
}

#[test]
fn a_failing_page_is_read_again_once_and_only_then_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let abs = dir.path().join("16384");
    let rel = ManifestPath::from("base/5/16384");
    std::fs::write(&abs, relation_file()).expect("write");
    let verifier = PageVerifier::new(layout(), START);

    // What was read first had block 3 torn, block 4 damaged and a block 5 that the file no longer has.
    let mut read = relation_file();
    read[3 * PAGE + 5000] ^= 1;
    read.extend_from_slice(&damaged(HEAP3));
    verifier.check(&rel, &abs, 0, Some(&read)).expect("check");
    // A file read in two chunks, and files that hold no checksummed pages, or are gone.
    let other = ManifestPath::from("base/5/16390.1");
    let abs2 = dir.path().join("16390.1");
    std::fs::write(&abs2, [HEAP0, HEAP0].concat()).expect("write");
    verifier.check(&other, &abs2, 0, Some(HEAP0)).expect("check");
    verifier.check(&other, &abs2, PAGE as u64, Some(HEAP0)).expect("check");
    verifier.check(&ManifestPath::from("base/5/pg_filenode.map"), &abs, 0, Some(&damaged(HEAP0))).expect("map");
    verifier.check(&rel, &dir.path().join("gone"), 0, None).expect("gone");

    let entry =
        |p: &ManifestPath| FileEntry { path: p.clone(), size: 0, mode: 0o600, mtime: 0, pieces: vec![], nodes: vec![] };
    let kept = [entry(&rel), entry(&other)];
    let outcome = verifier.outcome(&kept).expect("enabled");
    assert_eq!(
        outcome.corrupt,
        vec![CorruptPages { path: rel.clone(), blocks: vec![4] }, CorruptPages { path: other, blocks: vec![0, 1] },],
        "block 3 verified when read again, block 5 no longer exists; in segment 1 both pages are misplaced"
    );
    assert_eq!(outcome.pages_verified, 4 + 2);
    // A file the backup left out (it vanished while read) is left out here too.
    assert_eq!(verifier.outcome(&kept[1..]).expect("enabled").corrupt.len(), 1);

    // A file whose size ends inside a page: the page is corrupt if it is still cut short when read again.
    let short = dir.path().join("16391");
    std::fs::write(&short, &HEAP0[..PAGE - 512]).expect("write");
    let v = PageVerifier::new(layout(), START);
    let global = ManifestPath::from("global/16391");
    v.check(&global, &short, 0, Some(&HEAP0[..PAGE - 512])).expect("check");
    assert_eq!(v.outcome(&[entry(&global)]).expect("enabled").corrupt[0].blocks, vec![0]);
}

#[test]
fn nothing_is_verified_without_data_checksums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let abs = dir.path().join("16384");
    std::fs::write(&abs, damaged(HEAP0)).expect("write");
    for v in [PageVerifier::disabled(), PageVerifier::new(PageLayout { has_checksums: false, ..layout() }, START)] {
        v.check(&ManifestPath::from("base/5/16384"), &abs, 0, Some(&damaged(HEAP0))).expect("check");
        assert_eq!(v.outcome(&[]), None);
    }
}

#[test]
fn report_warns_or_fails_naming_the_files() {
    let outcome = PageChecksums {
        pages_verified: 100,
        corrupt: (0..7)
            .map(|i| CorruptPages { path: format!("base/5/{}", 16384 + i).into(), blocks: vec![i] })
            .collect(),
    };
    let dir = Path::new("/srv/pg/data");
    assert_eq!(report(Some(&outcome), dir, false), Ok(()));
    assert_eq!(report(None, dir, true), Ok(()));
    assert_eq!(report(Some(&PageChecksums::default()), dir, true), Ok(()));
    let err = report(Some(&outcome), dir, true).expect_err("fails");
    let text = err.to_string();
    assert!(
        text.starts_with("7 pages of /srv/pg/data fail their checksum: base/5/16384: 1 page (block 0); "),
        "{text}"
    );
    assert!(text.ends_with("; and 2 more files"), "{text}");
    assert!(!text.contains('\n'));
}
