//! [`digest_file`]: the BLAKE3 digest of a file, hashed on several threads.
//!
//! Invariant: the result equals [`Digest::of`] over the same bytes whatever the number of threads. Each thread
//! hashes whole pieces, which are complete subtrees of the BLAKE3 tree, and the pieces' chaining values are
//! merged in the tree's own shape (`blake3::hazmat`); the tests compare against the one-shot hash.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root};

use super::Digest;

/// [`digest_file`] hands out the file in pieces of this size: each one complete BLAKE3 subtree (a power of two
/// of 1 KiB chunks, at an offset that is a multiple of its size), small enough to share among threads evenly.
const PIECE: u64 = 1 << 20;
/// [`digest_file`]'s read buffer per thread: small enough to stay in L2 cache between the read's copy and the
/// hash (with 1 MiB buffers, reading and hashing a 16 MiB file took twice as long).
const READ_BUF: usize = 128 << 10;

/// BLAKE3 of the first `len` bytes of `file`, read with positional reads on up to `threads` threads (the calling
/// one included; helpers that cannot be started are done without). Fails with `UnexpectedEof` if the file is
/// shorter than `len`; bytes past `len` are not read (callers check the size).
pub fn digest_file(file: &File, len: u64, threads: usize) -> io::Result<Digest> {
    let pieces = len.div_ceil(PIECE);
    if threads <= 1 || pieces < 2 {
        let mut hasher = blake3::Hasher::new();
        hash_range(file, 0, len, &mut hasher, &mut vec![0u8; READ_BUF])?;
        return Ok(Digest::Blake3(*hasher.finalize().as_bytes()));
    }
    // Threads take the next piece until none is left, so a helper that starts late (a busy machine) costs
    // nothing: the calling thread does its share.
    let next = AtomicU64::new(0);
    let work = || -> io::Result<Vec<(u64, ChainingValue)>> {
        let mut buf = vec![0u8; READ_BUF];
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= pieces {
                return Ok(done);
            }
            let start = i * PIECE;
            let mut hasher = blake3::Hasher::new();
            // invariant: `start` is a multiple of PIECE, hence of blake3's chunk length, and the hasher is new.
            hasher.set_input_offset(start);
            hash_range(file, start, PIECE.min(len - start), &mut hasher, &mut buf)?;
            // invariant: the piece is not empty (start < len); it is never the root, as there are 2 pieces or more.
            done.push((i, hasher.finalize_non_root()));
        }
    };
    let results = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads.min(pieces as usize))
            .filter_map(|_| std::thread::Builder::new().name("digest".into()).spawn_scoped(scope, work).ok())
            .collect();
        let mut results = vec![work()];
        for helper in helpers {
            results.push(helper.join().unwrap_or_else(|_| Err(io::Error::other("digest thread panicked"))));
        }
        results
    });
    let mut cvs = vec![None; pieces as usize];
    for (i, cv) in results.into_iter().collect::<io::Result<Vec<_>>>()?.into_iter().flatten() {
        cvs[i as usize] = Some(cv);
    }
    let cvs: Vec<_> = cvs.into_iter().collect::<Option<_>>().ok_or_else(|| io::Error::other("digest piece missing"))?;
    // The root splits like every parent: its left subtree is the largest power of two of chunks shorter than
    // the whole; both halves are whole pieces (see PIECE).
    let left = left_subtree_len(len);
    let split = (left / PIECE) as usize;
    let root = merge_subtrees_root(&subtree(&cvs[..split], left), &subtree(&cvs[split..], len - left), Mode::Hash);
    Ok(Digest::Blake3(*root.as_bytes()))
}

/// The chaining value of the subtree of `len` bytes made of `cvs` (consecutive pieces, the first at an offset
/// that is a multiple of the subtree's size).
fn subtree(cvs: &[ChainingValue], len: u64) -> ChainingValue {
    if let [one] = cvs {
        return *one;
    }
    let left = left_subtree_len(len);
    let split = (left / PIECE) as usize;
    merge_subtrees_non_root(&subtree(&cvs[..split], left), &subtree(&cvs[split..], len - left), Mode::Hash)
}

/// Feed bytes `start..start + len` of `file` to `hasher`.
fn hash_range(file: &File, start: u64, len: u64, hasher: &mut blake3::Hasher, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = match file.read_at(&mut buf[..want], start + done) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than expected")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    /// `digest_file` equals the one-shot hash at piece and chunk boundaries, with any number of threads.
    #[test]
    fn digest_file_matches_one_shot_hash() {
        let mut data = vec![0u8; 5 * PIECE as usize + 3000];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&data).expect("write");
        let p = PIECE as usize;
        for len in [0, 1, 1024, 1025, p - 1, p, p + 1, p + 1024, 2 * p, 2 * p + 1, 3 * p - 7, 4 * p, 5 * p + 3000] {
            let expected = Digest::of(&data[..len]);
            for threads in [1, 2, 3, 8] {
                assert_eq!(
                    digest_file(&file, len as u64, threads).expect("digest"),
                    expected,
                    "len {len}, {threads} threads"
                );
            }
        }
        // A changed byte anywhere changes the digest; a file shorter than asked is an error.
        for at in [0, p - 1, p, 3 * p + 5, 5 * p + 2999] {
            file.write_all_at(&[data[at] ^ 1], at as u64).expect("flip");
            assert_ne!(digest_file(&file, data.len() as u64, 2).expect("digest"), Digest::of(&data), "flip at {at}");
            file.write_all_at(&data[at..=at], at as u64).expect("restore");
        }
        let err = digest_file(&file, data.len() as u64 + 1, 2).expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    proptest! {
        #[test]
        fn digest_file_round_trips(data in proptest::collection::vec(any::<u8>(), 0..300_000), threads in 1usize..4) {
            // Pieces are 1 MiB; lengths over 2 pieces are covered above, this covers the sequential path.
            let mut file = tempfile::tempfile().expect("tempfile");
            file.write_all(&data).expect("write");
            prop_assert_eq!(digest_file(&file, data.len() as u64, threads).expect("digest"), Digest::of(&data));
        }
    }
}
