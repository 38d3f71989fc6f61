//! Stored-object format: a 64-byte self-checking header (raw size, blake3 of the raw content) then a zstd frame.
//!
//! Pure over `Read`/`Write`. Invariants:
//! - The digest is of the uncompressed content, so it does not depend on the compression level or zstd version.
//! - [`decode`] writes at most `raw_size` bytes and fails unless both size and digest match; callers write into a
//!   temp file and publish it only when `decode` returns `Ok`.
//! - [`digest_file`] gives the same digest as [`Digest::of`] over the same bytes, however many threads it uses.
//!
//! Header layout (little-endian): `0..8` magic `BKCTLOB1`, `8` codec (0 none, 1 zstd), `9` digest algorithm
//! (1 blake3), `10..16` zero, `16..24` raw size, `24..56` digest, `56..64` first 8 bytes of blake3 of bytes `0..56`.
//! A zstd body is one frame or several concatenated (WAL files since [`encode_framed`]); every decoder here reads
//! both, and the header's size and digest cover the whole content, so a body cut at a frame boundary is refused.

mod digest;
mod framed;

use std::fmt;
use std::io::{self, Read, Write};

pub use digest::digest_file;
pub use framed::{FRAME, encode_framed, read_full};

/// Length of the object header.
pub const HEADER_LEN: usize = 64;
const MAGIC: &[u8; 8] = b"BKCTLOB1";
const CHUNK: usize = 1 << 20;

/// Codec failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The header is missing, has a wrong magic, or fails its own checksum.
    #[error("corrupt object header: {reason}")]
    BadHeader {
        /// What is wrong.
        reason: &'static str,
    },
    /// The decompressed content's checksum differs from the header's.
    #[error("checksum mismatch: object header says {expected}, content is {actual}")]
    ChecksumMismatch {
        /// From the header.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// The decompressed content's size differs from the header's.
    #[error("size mismatch: object header says {expected} bytes, content is {actual} bytes")]
    SizeMismatch {
        /// From the header.
        expected: u64,
        /// Decompressed (or read) so far.
        actual: u64,
    },
    /// The compressed body is not a valid zstd frame.
    #[error("cannot decompress: {0}")]
    Decompress(io::Error),
    /// The underlying reader or writer failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A content digest, tagged with its algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Digest {
    /// BLAKE3-256.
    Blake3([u8; 32]),
}

impl Digest {
    /// Digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Self {
        Digest::Blake3(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Digest::Blake3(b) => write!(f, "blake3:{}", hex::encode(b)),
        }
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = Error::BadHeader { reason: "digest is not blake3:<64 hex digits>" };
        let hexpart = s.strip_prefix("blake3:").ok_or(Error::BadHeader { reason: "unknown digest algorithm" })?;
        let bytes = hex::decode(hexpart).map_err(|_| Error::BadHeader { reason: "digest is not hex" })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad)?;
        Ok(Digest::Blake3(arr))
    }
}

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is.
    None,
    /// zstd: one frame, or independent frames one after another (decoded as one stream).
    Zstd,
}

/// What an object's header says about its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    /// Body encoding.
    pub codec: Codec,
    /// Size of the uncompressed content.
    pub raw_size: u64,
    /// Digest of the uncompressed content.
    pub digest: Digest,
}

impl ObjectHeader {
    /// Serialize to the fixed 64 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8] = match self.codec {
            Codec::None => 0,
            Codec::Zstd => 1,
        };
        let Digest::Blake3(d) = self.digest;
        h[9] = 1;
        h[16..24].copy_from_slice(&self.raw_size.to_le_bytes());
        h[24..56].copy_from_slice(&d);
        let check = blake3::hash(&h[0..56]);
        h[56..64].copy_from_slice(&check.as_bytes()[0..8]);
        h
    }

    /// Parse and self-check the first 64 bytes of an object.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let h = bytes.get(0..HEADER_LEN).ok_or(Error::BadHeader { reason: "object shorter than its header" })?;
        if &h[0..8] != MAGIC {
            return Err(Error::BadHeader { reason: "wrong magic (not a backupctl object)" });
        }
        if h[56..64] != blake3::hash(&h[0..56]).as_bytes()[0..8] {
            return Err(Error::BadHeader { reason: "header checksum mismatch" });
        }
        let codec = match h[8] {
            0 => Codec::None,
            1 => Codec::Zstd,
            _ => return Err(Error::BadHeader { reason: "unknown codec" }),
        };
        if h[9] != 1 {
            return Err(Error::BadHeader { reason: "unknown digest algorithm" });
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&h[16..24]);
        let mut d = [0u8; 32];
        d.copy_from_slice(&h[24..56]);
        Ok(Self { codec, raw_size: u64::from_le_bytes(size), digest: Digest::Blake3(d) })
    }
}

/// Read all of `input`, hash it, and compress it (zstd at `level`, on `workers` threads when more than 1) into a
/// new object: header plus body. One pass over the input, 1 MiB at a time (hashed and compressed while it is in
/// the CPU's cache: on this project's 2-core VM, reading a 16 MiB segment whole and then compressing it in one
/// call cost more CPU than streaming it); memory is the compressed size.
pub fn encode(
    mut input: impl Read,
    level: i32,
    size_hint: u64,
    workers: u32,
) -> Result<(Vec<u8>, ObjectHeader), Error> {
    let mut hasher = blake3::Hasher::new();
    let mut raw_size = 0u64;
    let mut encoder = start_object(level, size_hint, workers)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n]);
        encoder.write_all(&buf[..n])?;
        raw_size += n as u64;
    }
    finish_object(encoder, raw_size, Digest::Blake3(*hasher.finalize().as_bytes()))
}

/// How a frame is compressed: zstd's parameters for the level, or those tuned for WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tuning {
    /// zstd's own parameters for the level.
    Level,
    /// For WAL ([`encode_framed`]): at level 1, a 4096-entry hash table (16 KiB, which stays in the L1 cache)
    /// and 5-byte minimum matches, where zstd's level 1 has 16384 entries and 7 bytes. On three kinds of
    /// PostgreSQL WAL (bench/README.md, "Tuning zstd's level 1 for WAL") this compressed 12-16% faster and
    /// 2.7-4.8% smaller: WAL is full of short repeats (record headers, tuple headers, item pointers). Other
    /// levels keep zstd's parameters.
    Wal,
}

impl Tuning {
    fn compressor(self, level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
        use zstd::zstd_safe::CParameter;
        let mut ctx = zstd::bulk::Compressor::new(level)?;
        if self == Tuning::Wal && level == 1 {
            ctx.set_parameter(CParameter::HashLog(12))?;
            ctx.set_parameter(CParameter::MinMatch(5))?;
        }
        Ok(ctx)
    }
}

thread_local! {
    /// One zstd compression context per thread, with the level and tuning it was made for, reused by
    /// [`encode_hashed`] and [`encode_framed`] (making one allocates and clears its match tables: a measurable
    /// share of compressing a 1 MiB frame).
    static CCTX: std::cell::RefCell<Option<(i32, Tuning, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Like [`encode`] for bytes whose blake3 the caller has just computed (content-addressed chunks are hashed
/// first to decide whether to store them at all): the digest is not computed a second time. Compressed in one
/// call (`ZSTD_compress2`, so the frame records the content size) with this thread's reused context, into a
/// buffer of zstd's worst-case bound: nothing is copied or grown. Errors: only zstd's own (out of memory).
pub fn encode_hashed(raw: &[u8], digest: Digest, level: i32) -> Result<(Vec<u8>, ObjectHeader), Error> {
    let mut out = Vec::with_capacity(HEADER_LEN + zstd::zstd_safe::compress_bound(raw.len()));
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    compress_frame(raw, level, Tuning::Level, &mut out)?;
    let header = ObjectHeader { codec: Codec::Zstd, raw_size: raw.len() as u64, digest };
    out[0..HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok((out, header))
}

/// Append `raw` to `out` as one zstd frame (with its content size), compressed in one call with this thread's
/// reused context. Reserves zstd's worst-case bound first, so the frame is written in place, never copied.
fn compress_frame(raw: &[u8], level: i32, tuning: Tuning, out: &mut Vec<u8>) -> io::Result<usize> {
    out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
    let start = out.len() as u64;
    let mut cursor = io::Cursor::new(std::mem::take(out));
    cursor.set_position(start);
    let written = CCTX.with(|cell| -> io::Result<usize> {
        let mut cell = cell.borrow_mut();
        let ctx = match cell.as_mut() {
            Some((l, t, c)) if *l == level && *t == tuning => c,
            _ => &mut cell.insert((level, tuning, tuning.compressor(level)?)).2,
        };
        ctx.compress_to_buffer(raw, &mut cursor)
    });
    *out = cursor.into_inner();
    written
}

fn start_object(
    level: i32,
    size_hint: u64,
    workers: u32,
) -> Result<zstd::stream::write::Encoder<'static, Vec<u8>>, Error> {
    let mut out = Vec::with_capacity(HEADER_LEN + (size_hint / 2) as usize);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let mut encoder = zstd::stream::write::Encoder::new(out, level)?;
    encoder.include_checksum(false)?;
    if workers > 1 {
        encoder.multithread(workers)?;
    }
    Ok(encoder)
}

fn finish_object(
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    raw_size: u64,
    digest: Digest,
) -> Result<(Vec<u8>, ObjectHeader), Error> {
    let mut out = encoder.finish()?;
    let header = ObjectHeader { codec: Codec::Zstd, raw_size, digest };
    out[0..HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok((out, header))
}

/// Objects whose header gives a raw size up to this (bytes) are decompressed in one call into a buffer of exactly
/// that size, with a zstd context kept per thread; larger ones are streamed (a header is checked by its own
/// checksum, but a hostile one must not make us allocate gigabytes).
const BULK_MAX: u64 = 64 << 20;

thread_local! {
    /// One zstd decompression context per thread, reused by [`decode_vec`] (creating one costs about as much as
    /// decompressing 100 KiB).
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Decode an object into a new buffer, verifying size and digest. Returns the header and the raw content.
/// Errors as [`decode`].
pub fn decode_vec(object: &[u8]) -> Result<(ObjectHeader, Vec<u8>), Error> {
    decode_vec_checked(object, true)
}

/// As [`decode_vec`], checking the size but **not** the digest: only for a caller that checks what it uses of
/// the content another way (a base-backup reading back the blocks of a frame, each against its own digest in a
/// block map). Saves hashing the whole content.
pub fn decode_vec_unverified(object: &[u8]) -> Result<(ObjectHeader, Vec<u8>), Error> {
    decode_vec_checked(object, false)
}

fn decode_vec_checked(object: &[u8], verify: bool) -> Result<(ObjectHeader, Vec<u8>), Error> {
    let header = ObjectHeader::parse(object)?;
    let body = &object[HEADER_LEN..];
    let raw = match header.codec {
        Codec::None => body.to_vec(),
        Codec::Zstd if header.raw_size <= BULK_MAX => {
            let mut raw = Vec::with_capacity(header.raw_size as usize);
            DCTX.with(|cell| {
                let mut cell = cell.borrow_mut();
                let dctx = match cell.as_mut() {
                    Some(d) => d,
                    None => cell.insert(zstd::bulk::Decompressor::new()?),
                };
                dctx.decompress_to_buffer(body, &mut raw)
            })
            .map_err(Error::Decompress)?;
            raw
        }
        Codec::Zstd => {
            let mut raw = Vec::new();
            let header = decode(object, &mut raw)?;
            return Ok((header, raw));
        }
    };
    if raw.len() as u64 != header.raw_size {
        return Err(Error::SizeMismatch { expected: header.raw_size, actual: raw.len() as u64 });
    }
    if verify {
        let actual = Digest::of(&raw);
        if actual != header.digest {
            return Err(Error::ChecksumMismatch { expected: header.digest, actual });
        }
    }
    Ok((header, raw))
}

/// Decode an object into `out`, verifying size and digest. Returns the header.
pub fn decode(object: &[u8], out: &mut impl Write) -> Result<ObjectHeader, Error> {
    let header = ObjectHeader::parse(object)?;
    let body = &object[HEADER_LEN..];
    let mut sink = VerifyingWriter { inner: out, hasher: blake3::Hasher::new(), written: 0, limit: header.raw_size };
    match header.codec {
        Codec::None => sink.write_all(body).map_err(|e| sink_error(e, &header))?,
        Codec::Zstd => {
            let mut dec = zstd::stream::read::Decoder::with_buffer(body).map_err(Error::Decompress)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match dec.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::Decompress(e)),
                };
                sink.write_all(&buf[..n]).map_err(|e| sink_error(e, &header))?;
            }
        }
    }
    if sink.written != header.raw_size {
        return Err(Error::SizeMismatch { expected: header.raw_size, actual: sink.written });
    }
    let actual = Digest::Blake3(*sink.hasher.finalize().as_bytes());
    if actual != header.digest {
        return Err(Error::ChecksumMismatch { expected: header.digest, actual });
    }
    Ok(header)
}

fn sink_error(e: io::Error, header: &ObjectHeader) -> Error {
    if e.kind() == io::ErrorKind::WriteZero {
        Error::SizeMismatch { expected: header.raw_size, actual: header.raw_size + 1 }
    } else {
        Error::Io(e)
    }
}

/// Hashes and counts what passes through, refusing to write past `limit` bytes.
struct VerifyingWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: blake3::Hasher,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for VerifyingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "content longer than its header says"));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encode_hashed_matches_encode() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 13).to_le_bytes()).collect();
        let (a, ha) = encode(&data[..], 1, data.len() as u64, 1).expect("encode");
        let (b, hb) = encode_hashed(&data, Digest::of(&data), 1).expect("encode_hashed");
        assert_eq!(ha, hb);
        // The two compress differently (streamed, and in one call with the content size in the frame): both
        // decode to the content, with the same header.
        for object in [&a, &b] {
            let mut out = Vec::new();
            assert_eq!(decode(object, &mut out).expect("decode"), hb);
            assert_eq!(out, data);
        }
        // A reused context gives the same bytes every time, also after another level used it.
        let (c, _) = encode_hashed(&data, Digest::of(&data), 3).expect("level 3");
        assert_eq!(decode_vec(&c).expect("decode level 3").1, data);
        assert_eq!(encode_hashed(&data, Digest::of(&data), 1).expect("again").0, b);
    }

    #[test]
    fn decode_vec_checks_size_and_digest_unless_told_not_to() {
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 17).to_le_bytes()).collect();
        let (object, h) = encode_hashed(&data, Digest::of(&data), 1).expect("encode");
        assert_eq!(decode_vec(&object).expect("decode_vec"), (h, data.clone()));
        // A header whose digest is not the content's: refused, unless the caller checks the content itself.
        let (lying, _) = encode_hashed(&data, Digest::of(b"other"), 1).expect("encode");
        assert!(matches!(decode_vec(&lying), Err(Error::ChecksumMismatch { .. })));
        assert_eq!(decode_vec_unverified(&lying).expect("unverified").1, data);
        // A body that is not what the header says: refused either way.
        let mut bad = object.clone();
        let n = bad.len();
        bad[n - 10] ^= 0xff;
        assert!(decode_vec(&bad).is_err());
        let (short, _) = encode_hashed(&data[..1000], Digest::of(&data), 1).expect("encode");
        let mut header = ObjectHeader::parse(&short).expect("header");
        header.raw_size = data.len() as u64;
        let mut wrong_size = short.clone();
        wrong_size[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        assert!(matches!(decode_vec_unverified(&wrong_size), Err(Error::SizeMismatch { .. })));
    }

    #[test]
    fn round_trip_and_header() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let (obj, header) = encode(&data[..], 3, data.len() as u64, 1).expect("encode");
        assert_eq!(header.raw_size, data.len() as u64);
        assert_eq!(header.digest, Digest::of(&data));
        assert!(obj.len() < data.len());
        assert_eq!(ObjectHeader::parse(&obj).expect("parse"), header);
        let mut out = Vec::new();
        assert_eq!(decode(&obj, &mut out).expect("decode"), header);
        assert_eq!(out, data);
    }

    #[test]
    fn corruption_is_detected() {
        let data = vec![7u8; 100_000];
        let (obj, _) = encode(&data[..], 1, 0, 2).expect("encode");
        // A flipped byte in the header fails the header self-check.
        let mut bad = obj.clone();
        bad[20] ^= 1;
        assert!(matches!(ObjectHeader::parse(&bad), Err(Error::BadHeader { .. })));
        // Truncated body.
        let mut out = Vec::new();
        assert!(decode(&obj[..obj.len() - 3], &mut out).is_err());
        // A forged header (valid self-check) with a different digest.
        let mut forged = ObjectHeader::parse(&obj).expect("parse");
        forged.digest = Digest::of(b"other");
        let mut f = obj.clone();
        f[..HEADER_LEN].copy_from_slice(&forged.to_bytes());
        assert!(matches!(decode(&f, &mut Vec::new()), Err(Error::ChecksumMismatch { .. })));
        // A header claiming fewer bytes than the body holds: nothing past the limit is written.
        forged = ObjectHeader::parse(&obj).expect("parse");
        forged.raw_size = 10;
        f[..HEADER_LEN].copy_from_slice(&forged.to_bytes());
        let mut out = Vec::new();
        assert!(matches!(decode(&f, &mut out), Err(Error::SizeMismatch { .. })));
        assert!(out.len() <= 10);
        assert!(ObjectHeader::parse(b"short").is_err());
        assert!(ObjectHeader::parse(&[0u8; 64]).is_err());
    }

    #[test]
    fn digest_round_trip() {
        let d = Digest::of(b"abc");
        assert_eq!(d.to_string().parse::<Digest>().expect("parse"), d);
        assert!("sha1:00".parse::<Digest>().is_err());
        assert!("blake3:zz".parse::<Digest>().is_err());
    }

    proptest! {
        #[test]
        fn compress_round_trips(data in proptest::collection::vec(any::<u8>(), 0..20_000), level in 1i32..6) {
            let (obj, h) = encode(&data[..], level, 0, 1).expect("encode");
            let mut out = Vec::new();
            prop_assert_eq!(decode(&obj, &mut out).expect("decode"), h);
            prop_assert_eq!(out, data);
        }
    }
}
