//! [`encode_framed`]: an object whose body is independent zstd frames of [`FRAME`] raw bytes each, one after
//! another: how wal-push stores WAL files.
//!
//! Invariants:
//! - Every frame but the last holds exactly [`FRAME`] raw bytes; there is at least one frame (an empty input
//!   gives one empty frame), so the body is never empty.
//! - The header's size and digest are of the whole input, as for [`super::encode`]: the decoders
//!   ([`super::decode`], [`super::decode_vec`]) read concatenated frames as one stream and check both, so a lost,
//!   reordered or truncated frame is refused like any other corruption.
//! - Compressing uses this thread's reused zstd context and input buffer: no allocation per object but the
//!   output.
//!
//! Why: a streamed frame (zstd's buffered `ZSTD_compressStream`) copies its input into a window buffer that
//! wraps every 512 KiB at level 1, after which zstd takes its slower external-dictionary match finder, and it
//! copies its output once more. A frame compressed in one call reads its input in place and writes straight into
//! the object. On pgbench WAL (bench/README.md, "Independent 1 MiB frames for WAL") this cost about a fifth less
//! CPU per segment for +0.1% of compressed size (matches cannot reach back across a frame boundary). At level 1
//! the frames are compressed with parameters tuned for WAL ([`super::Tuning::Wal`]).

use std::cell::RefCell;
use std::io::{self, Read};

use super::{Codec, Digest, Error, HEADER_LEN, ObjectHeader, Tuning, compress_frame};

/// Raw bytes per frame of [`encode_framed`]: the size of base backups' frames, and of the buffer kept per
/// thread.
pub const FRAME: usize = 1 << 20;

/// The output of [`encode_framed`] is sized up front for at most this many frames (64 MiB segments).
const MAX_FRAMES: usize = 64;

thread_local! {
    /// This thread's input buffer for [`encode_framed`] (a fresh one per object cost its page faults each time).
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Read all of `input`, hash it, and compress it at `level` into a new object (header plus body) of independent
/// zstd frames of [`FRAME`] raw bytes each: one pass, a frame at a time, hashed and compressed while it is in
/// the CPU's cache. `size_hint` (the expected size) sizes the output so it is not grown. Errors: `input`'s read
/// errors as [`Error::Io`], zstd's own (out of memory).
pub fn encode_framed(mut input: impl Read, level: i32, size_hint: u64) -> Result<(Vec<u8>, ObjectHeader), Error> {
    INPUT.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < FRAME {
            buf.resize(FRAME, 0);
        }
        // zstd's bound for every frame, so that no frame is ever copied; a larger input grows the buffer.
        let frames = usize::try_from(size_hint.div_ceil(FRAME as u64)).unwrap_or(MAX_FRAMES).clamp(1, MAX_FRAMES);
        let mut out = Vec::with_capacity(HEADER_LEN + frames * zstd::zstd_safe::compress_bound(FRAME));
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        let mut hasher = blake3::Hasher::new();
        let mut raw_size = 0u64;
        loop {
            let n = read_full(&mut input, &mut buf[..FRAME])?;
            if n == 0 && raw_size > 0 {
                break;
            }
            hasher.update(&buf[..n]);
            compress_frame(&buf[..n], level, Tuning::Wal, &mut out)?;
            raw_size += n as u64;
            if n < FRAME {
                break;
            }
        }
        let header =
            ObjectHeader { codec: Codec::Zstd, raw_size, digest: Digest::Blake3(*hasher.finalize().as_bytes()) };
        out[0..HEADER_LEN].copy_from_slice(&header.to_bytes());
        Ok((out, header))
    })
}

/// Fill `buf` from `input`, retrying interrupted reads: the bytes read, fewer than `buf.len()` only at the end of
/// the input. Errors: `input`'s.
pub fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match input.read(&mut buf[total..]) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::super::{decode, decode_vec, encode};
    use super::*;
    use proptest::prelude::*;

    /// Bytes that compress but not to nothing, and differ from frame to frame.
    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i / 7) as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 3] & 0x3f).collect()
    }

    /// The offsets of the frames in an object's body, by walking the frame headers.
    fn frame_starts(object: &[u8]) -> Vec<usize> {
        let mut starts = Vec::new();
        let mut at = HEADER_LEN;
        while at < object.len() {
            starts.push(at);
            let len = zstd::zstd_safe::find_frame_compressed_size(&object[at..]).expect("a whole frame");
            at += len;
        }
        starts
    }

    #[test]
    fn round_trips_through_every_decoder() {
        for len in [0, 1, 1000, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME + 12_345] {
            let data = content(len);
            let (object, header) = encode_framed(&data[..], 1, len as u64).expect("encode");
            assert_eq!(header, ObjectHeader { codec: Codec::Zstd, raw_size: len as u64, digest: Digest::of(&data) });
            assert_eq!(ObjectHeader::parse(&object).expect("parse"), header);
            assert_eq!(frame_starts(&object).len(), len.div_ceil(FRAME).max(1), "{len} bytes");
            let mut out = Vec::new();
            assert_eq!(decode(&object, &mut out).expect("decode"), header);
            assert_eq!(out, data, "{len} bytes, streamed");
            assert_eq!(decode_vec(&object).expect("decode_vec"), (header, data), "{len} bytes, in one call");
        }
    }

    #[test]
    fn a_wrong_size_hint_only_costs_memory() {
        let data = content(2 * FRAME + 5);
        for hint in [0, 1, u64::MAX] {
            let (object, header) = encode_framed(&data[..], 1, hint).expect("encode");
            assert_eq!(decode_vec(&object).expect("decode").1, data);
            assert_eq!(header.raw_size, data.len() as u64);
        }
    }

    #[test]
    fn objects_of_one_streamed_frame_still_decode() {
        // What wal-push wrote before: `encode`, one frame streamed without a content size.
        let data = content(3 * FRAME + 77);
        let (old, old_header) = encode(&data[..], 1, data.len() as u64, 1).expect("encode");
        let (new, new_header) = encode_framed(&data[..], 1, data.len() as u64).expect("encode_framed");
        assert_eq!(old_header, new_header, "the header does not depend on the framing");
        assert_eq!(frame_starts(&old).len(), 1);
        for object in [&old, &new] {
            let mut out = Vec::new();
            assert_eq!(decode(object, &mut out).expect("decode"), new_header);
            assert_eq!(out, data);
            assert_eq!(decode_vec(object).expect("decode_vec").1, data);
        }
    }

    #[test]
    fn a_damaged_missing_or_moved_frame_is_refused() {
        let data = content(3 * FRAME + 500);
        let (object, _) = encode_framed(&data[..], 1, data.len() as u64).expect("encode");
        let starts = frame_starts(&object);
        assert_eq!(starts.len(), 4);
        let refused = |bad: &[u8], what: &str| {
            assert!(decode(bad, &mut Vec::new()).is_err(), "decode accepted {what}");
            assert!(decode_vec(bad).is_err(), "decode_vec accepted {what}");
        };
        // A flipped byte in the middle of the second frame.
        let mut bad = object.clone();
        bad[(starts[1] + starts[2]) / 2] ^= 0x55;
        refused(&bad, "a damaged frame");
        // The object cut at a frame boundary: a valid zstd stream, but short of the header's size.
        refused(&object[..starts[3]], "a body cut after its third frame");
        // The second frame left out.
        let mut bad = object[..starts[1]].to_vec();
        bad.extend_from_slice(&object[starts[2]..]);
        refused(&bad, "a body missing a frame");
        // The second and third frames swapped: right size, wrong digest.
        let mut bad = object[..starts[1]].to_vec();
        bad.extend_from_slice(&object[starts[2]..starts[3]]);
        bad.extend_from_slice(&object[starts[1]..starts[2]]);
        bad.extend_from_slice(&object[starts[3]..]);
        assert!(matches!(decode(&bad, &mut Vec::new()), Err(Error::ChecksumMismatch { .. })));
        assert!(matches!(decode_vec(&bad), Err(Error::ChecksumMismatch { .. })));
        // Garbage after the last frame.
        let mut bad = object.clone();
        bad.extend_from_slice(b"trailing");
        refused(&bad, "trailing bytes");
    }

    #[test]
    fn a_failing_reader_is_an_io_error() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0).min(4096);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        assert!(matches!(encode_framed(Failing(FRAME + 10), 1, 0), Err(Error::Io(_))));
        // The thread's buffers are fine afterwards.
        let data = content(FRAME + 3);
        assert_eq!(decode_vec(&encode_framed(&data[..], 1, 0).expect("encode").0).expect("decode").1, data);
    }

    #[test]
    fn the_wal_tuning_applies_to_wal_frames_only() {
        use super::super::encode_hashed;
        // Short repeats, as in WAL: the tuned parameters find matches that zstd's level 1 does not.
        let data: Vec<u8> =
            (0..FRAME as u32 / 8).flat_map(|i| [i.to_le_bytes(), (i % 5).to_le_bytes()]).flatten().collect();
        let hashed = || encode_hashed(&data, Digest::of(&data), 1).expect("encode_hashed").0;
        let before = hashed();
        let (framed, _) = encode_framed(&data[..], 1, data.len() as u64).expect("encode_framed");
        assert_eq!(frame_starts(&framed).len(), 1);
        assert_ne!(framed[HEADER_LEN..], before[HEADER_LEN..], "level 1 WAL frames use their own parameters");
        // The thread's context is not left tuned for the next caller, and neither is the other way round.
        assert_eq!(hashed(), before);
        assert_eq!(encode_framed(&data[..], 1, 0).expect("again").0, framed);
        // Other levels are zstd's own: one frame compresses the same either way.
        let (framed3, _) = encode_framed(&data[..], 3, 0).expect("level 3");
        assert_eq!(framed3[HEADER_LEN..], encode_hashed(&data, Digest::of(&data), 3).expect("level 3").0[HEADER_LEN..]);
        assert_eq!(decode_vec(&framed).expect("decode").1, data);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn framed_round_trips(data in proptest::collection::vec(any::<u8>(), 0..20_000), level in 1i32..6) {
            let (object, header) = encode_framed(&data[..], level, data.len() as u64).expect("encode");
            let mut out = Vec::new();
            prop_assert_eq!(decode(&object, &mut out).expect("decode"), header);
            prop_assert_eq!(out, data);
        }
    }
}
