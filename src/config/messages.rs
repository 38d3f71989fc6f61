//! Configuration problems in a DBA's words, all at once: the key, the value that was given, what is expected;
//! no Rust types.
//!
//! serde stops at the first error and describes a wrongly typed value as ``invalid type: string "x", expected
//! usize``, an unknown key with a multi-line TOML snippet. [`from_str`] collects every problem (after the first,
//! it finds the failing key with `serde_path_to_error`, notes it, sets that key aside and tries again), and
//! [`describe`] turns each into one line such as `archive.push_concurrency = "x": expected a whole number (0 or
//! more)`. The wording parsed here is serde's `de::Error::invalid_type`/`invalid_value`/`unknown_field`/
//! `missing_field` (serde `src/de/mod.rs`) and toml's `TOML parse error at line L, column C` header.

use serde::de::DeserializeOwned;

/// At most this many problems are collected (each costs one more pass over a small table).
const MAX_PROBLEMS: usize = 64;

/// Deserialize `text` as `T`; on failure, every problem, one line each, and the value that the document makes
/// once the offending keys are set aside (their defaults apply), if it makes one, so that its other values can
/// be checked too. A valid document is deserialized by `toml::from_str`; only a failing one is examined further.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, (Vec<String>, Option<T>)> {
    // A number TOML cannot hold stops its parser; note it, blank its line (line numbers stay) and go on.
    let mut text = text.to_owned();
    let mut early = Vec::new();
    while early.len() < MAX_PROBLEMS {
        let Err(e) = toml::from_str::<toml::Table>(&text) else { break };
        let Some((line, problem)) = out_of_range(&text, &e.to_string()) else { break };
        early.push(problem);
        text = text.lines().enumerate().map(|(i, l)| if i == line { "" } else { l }).collect::<Vec<_>>().join("\n");
    }
    match from_str_once(&text) {
        Ok(v) if early.is_empty() => Ok(v),
        Ok(v) => Err((early, Some(v))),
        Err((problems, rest)) => Err((early.into_iter().chain(problems).collect(), rest)),
    }
}

/// A TOML integer outside TOML's range (a 64-bit signed integer, TOML 1.0.0 "Integer"), which toml reports as
/// Rust's `number too large to fit in target type` at a line: that line's index (0-based) and the problem,
/// `archive.retry_deadline_seconds = 99999999999999999999: too large: at most 9223372036854775807 (line 13)`.
fn out_of_range(text: &str, message: &str) -> Option<(usize, String)> {
    let (line, last) = split_toml_header(message);
    let limit = match last.as_str() {
        "number too large to fit in target type" => format!("too large: at most {}", i64::MAX),
        "number too small to fit in target type" => format!("too small: at least {}", i64::MIN),
        _ => return None,
    };
    let index = usize::try_from(line?).ok()?.checked_sub(1)?;
    let lines: Vec<&str> = text.lines().collect();
    let (key, value) = lines.get(index)?.split_once('=')?;
    let value = value.split('#').next().unwrap_or(value).trim();
    let key = key.trim().trim_matches(['"', '\'']);
    // The table the key is in: the last `[table]` or `[[table]]` header above it.
    let table = lines[..index]
        .iter()
        .map(|l| l.trim())
        .rfind(|l| l.starts_with('['))
        .map(|h| h.split(']').next().unwrap_or(h).trim_start_matches('[').trim().to_owned());
    let key = match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    };
    Some((index, format!("{key} = {value}: {limit} (line {})", index + 1)))
}

/// One round of [`from_str`] on a document that TOML can parse or that has a syntax error.
fn from_str_once<T: DeserializeOwned>(text: &str) -> Result<T, (Vec<String>, Option<T>)> {
    let first = match toml::from_str::<T>(text) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    // TOML syntax: one error, with its line.
    let mut table: toml::Table = toml::from_str(text).map_err(|e| (vec![describe(None, &e.to_string())], None))?;
    let mut problems = Vec::new();
    let mut rest = None;
    while problems.len() < MAX_PROBLEMS {
        let e = match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone())) {
            Ok(v) => {
                rest = Some(v);
                break;
            }
            Err(e) => e,
        };
        let path = Some(e.path().to_string()).filter(|p| p != ".");
        let message = e.inner().to_string();
        problems.push(describe(path.clone(), &message));
        // Set the offending key aside (its default applies) and look for the next problem.
        if !set_aside(&mut table, path.as_deref(), &message) {
            break;
        }
    }
    if problems.is_empty() {
        problems.push(describe(None, &first.to_string()));
    }
    Err((problems, rest))
}

/// Remove the key a problem is about; false if there is none to remove (a missing key).
fn set_aside(table: &mut toml::Table, path: Option<&str>, message: &str) -> bool {
    let mut keys: Vec<&str> = path.map(|p| p.split('.').collect()).unwrap_or_default();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        if keys.last() != Some(&field) {
            keys.push(field);
        }
    } else if message.starts_with("missing field `") {
        return false;
    }
    let Some((last, parents)) = keys.split_last() else { return false };
    let mut t = table;
    for k in parents {
        match t.get_mut(*k) {
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return false,
        }
    }
    t.remove(*last).is_some()
}

/// One problem as a single line: `key = value: expected ...`, `key: unknown key (...)`, `key: missing (required)`,
/// or `line L: ...` for TOML syntax. `path` is the dotted key path where the deserializer knows it.
pub fn describe(path: Option<String>, message: &str) -> String {
    let (line, mut message) = split_toml_header(message);
    // toml's value deserializer appends " in `key`": the key is already in front.
    if let Some(i) = message.rfind(" in `").filter(|_| message.ends_with('`')) {
        message.truncate(i);
    }
    let key = path.filter(|p| !p.is_empty());
    let at_line = line.map(|l| format!(" (line {l})")).unwrap_or_default();
    let join = |field: &str| match &key {
        // An unknown key may be reported at the key itself; a missing one is reported at its table.
        Some(k) if k == field || k.ends_with(&format!(".{field}")) => k.clone(),
        Some(k) => format!("{k}.{field}"),
        None => field.to_owned(),
    };
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return format!("{}: missing (this key is required){at_line}", join(field));
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let known = rest.split_once("expected ").map(|(_, e)| e.replace('`', "").replace("one of ", ""));
        let known = known.map(|k| format!(" (known keys here: {k})")).unwrap_or_default();
        return format!("{}: unknown key{known}{at_line}", join(field));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((given, expected)) = message.strip_prefix(prefix).and_then(|r| r.rsplit_once(", expected ")) {
            let key = key.clone().unwrap_or_else(|| "a value".to_owned());
            let expected = plain_expected(expected);
            return match plain_value(given) {
                // A secret given with the wrong type is still a secret: name the key, not the value.
                Value::Scalar(_) if is_secret_key(&key) => format!("{key} = <redacted>: expected {expected}{at_line}"),
                Value::Scalar(v) => format!("{key} = {v}: expected {expected}{at_line}"),
                Value::Other(what) => format!("{key}: {what} given, expected {expected}{at_line}"),
            };
        }
    }
    match key {
        Some(k) => format!("{k}: {message}{at_line}"),
        None if line.is_some() => format!("line {}: {message}", line.unwrap_or_default()),
        None => message,
    }
}

/// Keys whose values are secrets and never appear in messages: passwords, the KMS key id, the alert webhook's URL
/// (Slack and Teams URLs carry their token) and its header values.
fn is_secret_key(key: &str) -> bool {
    key == "password"
        || key.ends_with(".password")
        || key == "repository.s3.sse_kms_key_id"
        || key == "alerts.webhook.url"
        || key.starts_with("alerts.webhook.headers.")
}

/// toml prefixes its errors with `TOML parse error at line L, column C` and a source snippet; keep the line
/// number and the last line (the message itself).
fn split_toml_header(message: &str) -> (Option<u64>, String) {
    let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(rest) = message.trim().strip_prefix("TOML parse error at line ") else {
        return (None, flat(message));
    };
    let line = rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok());
    let last = message.lines().map(str::trim).rfind(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | "));
    (line, flat(last.unwrap_or(message)))
}

enum Value {
    /// A value as written in TOML: `"x"`, `5`, `true`.
    Scalar(String),
    /// A table or a list.
    Other(String),
}

/// serde's "unexpected" part (``string "x"``, ``integer `5` ``, `map`) as the user wrote it.
fn plain_value(given: &str) -> Value {
    if let Some(s) = given.strip_prefix("string ") {
        return Value::Scalar(s.to_owned());
    }
    for prefix in ["integer ", "floating point ", "boolean ", "character "] {
        if let Some(v) = given.strip_prefix(prefix) {
            return Value::Scalar(v.trim_matches('`').to_owned());
        }
    }
    Value::Other(match given {
        "map" => "a table".to_owned(),
        "sequence" => "a list".to_owned(),
        other => other.to_owned(),
    })
}

/// serde's "expected" part without Rust type names.
fn plain_expected(expected: &str) -> String {
    match expected.trim() {
        "usize" | "u64" | "u128" => "a whole number (0 or more)".to_owned(),
        // The bounds, so that a value too large for its type says what the limit is.
        "u8" => format!("a whole number from 0 to {}", u8::MAX),
        "u16" => format!("a whole number from 0 to {}", u16::MAX),
        "u32" => format!("a whole number from 0 to {}", u32::MAX),
        "i8" => format!("a whole number from {} to {}", i8::MIN, i8::MAX),
        "i16" => format!("a whole number from {} to {}", i16::MIN, i16::MAX),
        "i32" => format!("a whole number from {} to {}", i32::MIN, i32::MAX),
        "isize" | "i64" | "i128" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a string" | "a borrowed string" | "string" | "a character" | "char" => "text in double quotes".to_owned(),
        "path string" => "a path in double quotes".to_owned(),
        "a boolean" | "bool" => "true or false".to_owned(),
        "a sequence" => "a list".to_owned(),
        e if e.starts_with("struct ") || e == "a map" || e.starts_with("a table") => "a table".to_owned(),
        e => e.to_owned(),
    }
}

/// The URL with any `user:password@` in its authority replaced by `<redacted>@` (RFC 3986 section 3.2.1), and
/// any query and fragment by `?<redacted>` / `#<redacted>` (sections 3.4, 3.5: pre-signed signatures, tokens),
/// for config-show, logs and messages: `https://key:secret@minio:9000/?X-Amz-Signature=s` →
/// `https://<redacted>@minio:9000/?<redacted>`. An empty query or fragment is left as it is.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => format!("<redacted>@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    // The fragment starts at the first '#'; the query at the first '?' before it.
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((b, f)) if !f.is_empty() => (b, "#<redacted>"),
        Some((b, _)) => (b, "#"),
        None => (tail, ""),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((p, q)) if !q.is_empty() => (p, "?<redacted>"),
        Some((p, _)) => (p, "?"),
        None => (before_fragment, ""),
    };
    format!("{}{host}{path}{query}{fragment}", &url[..scheme_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_become_plain() {
        let cases: &[(Option<&str>, &str, &str)] = &[
            (
                Some("archive.push_concurrency"),
                "invalid type: string \"x\", expected usize",
                "archive.push_concurrency = \"x\": expected a whole number (0 or more)",
            ),
            (
                Some("postgres.port"),
                "invalid value: integer `70000`, expected u16",
                "postgres.port = 70000: expected a whole number from 0 to 65535",
            ),
            (
                Some("repository.compression_level"),
                "invalid type: floating point `1.5`, expected i32",
                "repository.compression_level = 1.5: expected a whole number",
            ),
            (
                Some("repository.s3.allow_http"),
                "invalid type: string \"yes\", expected a boolean",
                "repository.s3.allow_http = \"yes\": expected true or false",
            ),
            (
                Some("repository.compression_level"),
                "invalid value: integer `3000000000`, expected i32",
                "repository.compression_level = 3000000000: expected a whole number from -2147483648 to 2147483647",
            ),
            (Some("spool.path"), "invalid type: integer `5`, expected path string", "spool.path = 5: expected a path"),
            (
                Some("archive"),
                "invalid type: sequence, expected struct ArchiveConfig",
                "archive: a list given, expected a table",
            ),
            (
                Some("log.level"),
                "invalid type: integer `3`, expected a string in `log.level`",
                "log.level = 3: expected text in double quotes",
            ),
            (Some("repository"), "missing field `url`", "repository.url: missing (this key is required)"),
            (None, "missing field `spool`", "spool: missing (this key is required)"),
            (
                Some("repository.bogus"),
                "TOML parse error at line 3, column 1\n  |\n3 | bogus = 1\n  | ^^^^^\nunknown field `bogus`, expected one of `url`, `compression_level`, `s3`\n",
                "repository.bogus: unknown key (known keys here: url, compression_level, s3) (line 3)",
            ),
            (
                None,
                "TOML parse error at line 2, column 7\n  |\n2 | url = \n  |       ^\nstring values must be quoted, expected literal string\n",
                "line 2: string values must be quoted, expected literal string",
            ),
        ];
        for (path, message, want) in cases {
            let got = describe(path.map(str::to_owned), message);
            assert!(got.starts_with(want), "{message:?}: got {got:?}, want {want:?}");
            assert!(!got.contains('\n'), "{got:?}");
            for rust in ["usize", "u16", "i32", "struct ", "path string"] {
                assert!(!got.contains(rust), "{got:?} names a Rust type");
            }
        }
    }

    #[test]
    fn urls_lose_their_credentials() {
        let cases = [
            ("https://user:s3cr3t@minio.internal:9000/", "https://<redacted>@minio.internal:9000/"),
            ("https://AKIA:p@ss@host", "https://<redacted>@host"),
            ("http://token@host:9000", "http://<redacted>@host:9000"),
            ("https://minio.internal:9000/path@x", "https://minio.internal:9000/path@x"),
            ("https://host", "https://host"),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    /// Issue 9: a secret given with the wrong type is named by its key, never shown.
    #[test]
    fn issue_9_secrets_of_the_wrong_type_are_not_shown() {
        for (key, given) in [
            ("alerts.email.password", "integer `918273`"),
            ("postgres.password", "integer `918273`"),
            ("alerts.webhook.url", "integer `918273`"),
            ("alerts.webhook.headers.Authorization", "integer `918273`"),
        ] {
            let text = describe(Some(key.to_owned()), &format!("invalid type: {given}, expected a string"));
            assert_eq!(text, format!("{key} = <redacted>: expected text in double quotes"));
        }
    }

    /// Issue 7: a query string (pre-signed URL signatures, tokens) and a fragment are redacted too.
    #[test]
    fn issue_7_urls_lose_their_query_and_fragment() {
        let cases = [
            ("https://minio:9000/?X-Amz-Signature=abc&token=s3cr3t", "https://minio:9000/?<redacted>"),
            ("https://k:p@minio:9000/b?token=s3cr3t#frag", "https://<redacted>@minio:9000/b?<redacted>#<redacted>"),
            ("https://minio:9000#s3cr3t", "https://minio:9000#<redacted>"),
            ("https://minio:9000/?", "https://minio:9000/?"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
