//! Little-endian binary encoding for the format-2 metadata objects (block-map nodes, pack indexes): fixed-width
//! integers and 32-byte ids, read with bounds checks. Pure.
//!
//! These objects are mostly digests and ids, which no text encoding or compressor makes smaller; a binary layout
//! keeps a node of 16,384 blocks near 150 KB where JSON would be twice that. Each object starts with an 8-byte
//! magic naming its kind and version, and decoding fails (never panics) on anything short, long or out of range.

/// Why a binary object could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct WireError {
    /// What is wrong, e.g. `truncated at byte 120 (reading the frame table)`.
    pub what: String,
}

/// Appends fields to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    /// The encoded bytes so far.
    pub out: Vec<u8>,
}

impl Writer {
    /// A writer that starts with `magic`.
    pub fn new(magic: &[u8; 8]) -> Self {
        Self { out: magic.to_vec() }
    }

    /// Append a u8.
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    /// Append a u32, little-endian.
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Append a u64, little-endian.
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Append 32 raw bytes (an id).
    pub fn id(&mut self, v: &[u8; 32]) {
        self.out.extend_from_slice(v);
    }
}

/// Reads fields from a byte slice, failing with the offset and the field being read.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`, which must start with `magic`.
    pub fn new(bytes: &'a [u8], magic: &[u8; 8], kind: &str) -> Result<Self, WireError> {
        if bytes.get(..8) != Some(&magic[..]) {
            return Err(WireError { what: format!("not a {kind} (wrong magic)") });
        }
        Ok(Self { bytes, at: 8 })
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(WireError { what: format!("truncated at byte {} (reading {field})", self.at) });
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// Read a u8.
    pub fn u8(&mut self, field: &str) -> Result<u8, WireError> {
        Ok(self.take(1, field)?[0])
    }

    /// Read a little-endian u32.
    pub fn u32(&mut self, field: &str) -> Result<u32, WireError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4, field)?);
        Ok(u32::from_le_bytes(b))
    }

    /// Read a little-endian u64.
    pub fn u64(&mut self, field: &str) -> Result<u64, WireError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(b))
    }

    /// Read 32 raw bytes.
    pub fn id(&mut self, field: &str) -> Result<[u8; 32], WireError> {
        let mut b = [0u8; 32];
        b.copy_from_slice(self.take(32, field)?);
        Ok(b)
    }

    /// A count of items of at least `item_size` bytes each, refused if the rest of the object cannot hold them
    /// (so a corrupt count never makes the reader allocate gigabytes).
    pub fn count(&mut self, item_size: usize, field: &str) -> Result<usize, WireError> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(item_size) > self.bytes.len() - self.at {
            return Err(WireError { what: format!("{field}: {n} items do not fit in the object") });
        }
        Ok(n)
    }

    /// Fail unless every byte was read.
    pub fn finish(self) -> Result<(), WireError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(WireError { what: format!("{} unexpected bytes after the end", self.bytes.len() - self.at) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let mut w = Writer::new(b"TESTWIRE");
        w.u8(7);
        w.u32(0xdead_beef);
        w.u64(u64::MAX - 1);
        w.id(&[9; 32]);
        w.u32(2);
        let bytes = w.out;
        let mut r = Reader::new(&bytes, b"TESTWIRE", "test").expect("magic");
        assert_eq!(r.u8("a"), Ok(7));
        assert_eq!(r.u32("b"), Ok(0xdead_beef));
        assert_eq!(r.u64("c"), Ok(u64::MAX - 1));
        assert_eq!(r.id("d"), Ok([9; 32]));
        assert!(r.count(4, "e").is_err(), "two 4-byte items do not fit in 0 bytes");
        assert!(Reader::new(&bytes, b"OTHERKND", "other").is_err());
        let mut r = Reader::new(&bytes[..12], b"TESTWIRE", "test").expect("magic");
        assert_eq!(r.u8("a"), Ok(7));
        let e = r.u32("b").expect_err("truncated");
        assert_eq!(e.what, "truncated at byte 9 (reading b)");
        let r = Reader::new(&bytes, b"TESTWIRE", "test").expect("magic");
        assert!(r.finish().is_err(), "unread bytes are an error");
    }
}
