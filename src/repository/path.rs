//! [`ManifestPath`]: a path exactly as the file system spells it, as bytes, with a JSON form and a text form that
//! hold any byte string (pure).
//!
//! On Unix a file name is any sequence of bytes other than `/` and NUL (POSIX.1-2017, Base Definitions 3.170
//! "Filename" and 3.271 "Pathname"); nothing makes it UTF-8. PostgreSQL itself never checks, so its data
//! directory and `include_dir` configuration directories can hold such names, and a backup must keep them exactly.
//!
//! Forms:
//! - JSON (the manifest): a plain string when the bytes are valid UTF-8 (so manifest format 1, written before
//!   paths could hold other bytes, reads unchanged), otherwise `{"b64": "<RFC 4648 standard base64 of the bytes>"}`.
//! - Text ([`fmt::Display`] / [`FromStr`], used in messages): UTF-8 characters as they are, except `\` written `\\`
//!   and control characters and bytes that are not UTF-8 written `\xNN` (two lower-case hex digits). Messages stay
//!   on one line and never replace a byte silently; `FromStr` reads the text form back to the same bytes.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The key of the JSON object form.
const B64_KEY: &str = "b64";

/// Entries a file system puts at the root of a volume, never PostgreSQL's: `lost+found`, which `mke2fs` creates
/// (often owned by root) and `fsck` fills. A base backup never copies them from the root of the data directory or
/// of a tablespace, a restore counts a destination holding only these as empty, and `--delta` never removes them.
pub const FILE_SYSTEM_ARTEFACTS: &[&str] = &["lost+found"];

/// Whether `name` (one path component) is one of [`FILE_SYSTEM_ARTEFACTS`].
pub fn is_file_system_artefact(name: &OsStr) -> bool {
    FILE_SYSTEM_ARTEFACTS.iter().any(|a| name.as_bytes() == a.as_bytes())
}

/// A path as bytes (relative `a/b/c` in a manifest's file and directory lists, absolute for a tablespace location).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManifestPath(Vec<u8>);

impl ManifestPath {
    /// The path made of exactly these bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The path of a file-system name or path, byte for byte.
    pub fn from_os_str(s: &OsStr) -> Self {
        Self(s.as_bytes().to_vec())
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The same bytes as a [`Path`] (for file-system calls).
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The path as text, if it is valid UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// True for the empty path (the data directory itself).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `self/name` (just `name` when `self` is empty).
    pub fn join(&self, name: &[u8]) -> Self {
        let mut out = Vec::with_capacity(self.0.len() + 1 + name.len());
        out.extend_from_slice(&self.0);
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(name);
        Self(out)
    }

    /// The `/`-separated components (empty components included, so that a check can refuse them).
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'/')
    }
}

impl From<&str> for ManifestPath {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl From<String> for ManifestPath {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

impl PartialEq<str> for ManifestPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for ManifestPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// Write `bytes` in the text form of the module doc.
fn write_escaped(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                f.write_str("\\\\")?;
            } else if c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    write!(f, "\\x{b:02x}")?;
                }
            } else {
                write!(f, "{c}")?;
            }
        }
        for b in chunk.invalid() {
            write!(f, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

impl fmt::Display for ManifestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.0)
    }
}

impl fmt::Debug for ManifestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        write_escaped(f, &self.0)?;
        f.write_str("\"")
    }
}

/// A file-system path in the text form of the module doc, for messages: `format!("{}", Escaped(&path))`.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a Path);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0.as_os_str().as_bytes())
    }
}

/// Why a text form could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: {reason}")]
pub struct ParsePathError {
    /// The text given.
    pub text: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl FromStr for ManifestPath {
    type Err = ParsePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| ParsePathError { text: s.to_owned(), reason };
        let mut out = Vec::with_capacity(s.len());
        let mut rest = s.as_bytes();
        while let Some((&b, tail)) = rest.split_first() {
            rest = tail;
            if b != b'\\' {
                out.push(b);
                continue;
            }
            match rest {
                [b'\\', tail @ ..] => {
                    out.push(b'\\');
                    rest = tail;
                }
                [b'x', h, l, tail @ ..] => {
                    let hex = [*h, *l];
                    let byte = std::str::from_utf8(&hex)
                        .ok()
                        .filter(|t| t.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
                        .and_then(|t| u8::from_str_radix(t, 16).ok())
                        .ok_or_else(|| bad("\\x must be followed by two lower-case hex digits"))?;
                    out.push(byte);
                    rest = tail;
                }
                _ => return Err(bad("a backslash must start \\\\ or \\xNN")),
            }
        }
        Ok(Self(out))
    }
}

impl Serialize for ManifestPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(B64_KEY, &base64::engine::general_purpose::STANDARD.encode(&self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for ManifestPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PathVisitor)
    }
}

struct PathVisitor;

impl<'de> Visitor<'de> for PathVisitor {
    type Value = ManifestPath;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a path: a string, or {\"b64\": \"...\"} for bytes that are not UTF-8")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(ManifestPath::from(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut bytes = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != B64_KEY || bytes.is_some() {
                return Err(de::Error::custom(format!("unexpected key {key:?} in a path (only one \"b64\")")));
            }
            let text: String = map.next_value()?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| de::Error::custom(format!("path {{\"b64\": {text:?}}}: {e}")))?;
            bytes = Some(decoded);
        }
        bytes.map(ManifestPath).ok_or_else(|| de::Error::missing_field(B64_KEY))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn forms() {
        let latin1 = ManifestPath::new(b"conf.d/r\xe9glages.conf".to_vec());
        assert_eq!(latin1.to_string(), "conf.d/r\\xe9glages.conf");
        assert_eq!(format!("{latin1:?}"), "\"conf.d/r\\xe9glages.conf\"");
        assert_eq!(serde_json::to_string(&latin1).expect("json"), r#"{"b64":"Y29uZi5kL3LpZ2xhZ2VzLmNvbmY="}"#);
        let utf8 = ManifestPath::from("base/1/1259");
        assert_eq!(serde_json::to_string(&utf8).expect("json"), r#""base/1/1259""#);
        assert_eq!(ManifestPath::from("a\\b\nc").to_string(), "a\\\\b\\x0ac");
        assert_eq!(ManifestPath::from("réglages").to_string(), "réglages");
        assert_eq!(ManifestPath::from("x").join(b"y").join(b"z"), "x/y/z");
        assert_eq!(ManifestPath::default().join(b"y"), "y");
        for bad in ["a\\", "a\\q", "a\\x4", "a\\xZZ", "a\\x4A"] {
            assert!(bad.parse::<ManifestPath>().is_err(), "{bad}");
        }
        for bad in [r#"{"b64":"!!"}"#, r#"{"hex":"00"}"#, r#"{}"#, "3"] {
            assert!(serde_json::from_str::<ManifestPath>(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn text_and_json_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let p = ManifestPath::new(bytes.clone());
            let text = p.to_string();
            prop_assert!(!text.contains('\n') && !text.contains('\r'));
            prop_assert_eq!(text.parse::<ManifestPath>().expect("parse"), p.clone());
            let json = serde_json::to_string(&p).expect("json");
            prop_assert_eq!(json.starts_with('"'), std::str::from_utf8(&bytes).is_ok());
            prop_assert_eq!(serde_json::from_str::<ManifestPath>(&json).expect("back"), p);
        }

        #[test]
        fn utf8_text_is_kept(s in "\\PC*") {
            let p = ManifestPath::from(s.as_str());
            prop_assert_eq!(serde_json::to_string(&p).expect("json"), serde_json::to_string(&s).expect("json"));
            prop_assert_eq!(p.to_string().parse::<ManifestPath>().expect("parse"), p);
        }
    }
}
