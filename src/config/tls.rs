//! TLS settings of a connection to PostgreSQL, shared by `[postgres]` and `[catalog]`: libpq's `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey`, with libpq's meanings ("SSL Support" and "Parameter Key Words" in
//! PostgreSQL's libpq documentation). The connection itself is `pg::tls`.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// How a connection to PostgreSQL uses TLS (libpq's `sslmode`, table "SSL Mode Descriptions" in PostgreSQL's
/// libpq documentation). Connections over a Unix socket never use TLS, whatever the mode (as with libpq).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, plain text otherwise; the server's certificate is not checked unless
    /// `sslrootcert` is set (then as `verify-ca`).
    #[default]
    Prefer,
    /// TLS or fail; the server's certificate is not checked unless `sslrootcert` is set (then as `verify-ca`).
    Require,
    /// TLS, and the server's certificate must chain to a CA in `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must also name the host connected to (a DNS name or IP address in its
    /// subjectAltName).
    VerifyFull,
}

impl SslMode {
    /// libpq's spelling (`verify-full`), for messages and for `PGSSLMODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The `sslrootcert` value that means the operating system's trusted CAs, as in libpq 16 and later.
pub const SYSTEM_ROOT_CERTS: &str = "system";

/// The TLS settings of one connection, borrowed from its section (`[postgres]` or `[catalog]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsSettings<'a> {
    /// How TLS is used.
    pub sslmode: SslMode,
    /// PEM file of the CA certificates the server's certificate must chain to, or [`SYSTEM_ROOT_CERTS`].
    pub sslrootcert: Option<&'a Path>,
    /// PEM file of the client certificate (and its intermediates) presented to the server.
    pub sslcert: Option<&'a Path>,
    /// PEM file of the client certificate's private key.
    pub sslkey: Option<&'a Path>,
}

impl TlsSettings<'_> {
    /// `sslrootcert = "system"`.
    pub fn is_system_roots(&self) -> bool {
        self.sslrootcert.is_some_and(|p| p == Path::new(SYSTEM_ROOT_CERTS))
    }
}

/// Problems with a section's TLS settings, each starting with `section.key`: a verifying mode without
/// `sslrootcert`, `sslrootcert = "system"` with a mode weaker than `verify-full` (libpq 16 refuses it too), a
/// relative path, or `sslcert` without `sslkey` (or the reverse). Whether the files exist and parse is checked
/// when connecting.
pub(super) fn validate(section: &str, tls: &TlsSettings<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    let mode = tls.sslmode.as_str();
    if matches!(tls.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && tls.sslrootcert.is_none() {
        problems.push(format!(
            "{section}.sslmode = \"{mode}\": needs {section}.sslrootcert (a PEM file of the CA certificates to \
             trust, or \"system\" for the operating system's)"
        ));
    }
    if tls.is_system_roots() && tls.sslmode != SslMode::VerifyFull {
        problems.push(format!(
            "{section}.sslrootcert = \"system\": needs {section}.sslmode = \"verify-full\" (trusting every public CA \
             is safe only when the certificate must also name the host), not \"{mode}\""
        ));
    }
    for (key, path) in [("sslrootcert", tls.sslrootcert), ("sslcert", tls.sslcert), ("sslkey", tls.sslkey)] {
        if let Some(p) = path.filter(|p| !p.is_absolute() && *p != Path::new(SYSTEM_ROOT_CERTS)) {
            problems.push(format!("{section}.{key} = {p:?}: must be an absolute path"));
        }
    }
    match (tls.sslcert, tls.sslkey) {
        (Some(_), None) => problems.push(format!("{section}.sslcert is set: {section}.sslkey must be set too")),
        (None, Some(_)) => problems.push(format!("{section}.sslkey is set: {section}.sslcert must be set too")),
        _ => {}
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings<'a>(
        mode: SslMode,
        root: Option<&'a str>,
        cert: Option<&'a str>,
        key: Option<&'a str>,
    ) -> TlsSettings<'a> {
        TlsSettings {
            sslmode: mode,
            sslrootcert: root.map(Path::new),
            sslcert: cert.map(Path::new),
            sslkey: key.map(Path::new),
        }
    }

    /// Issue 12: each rule, with the message's start; valid combinations give no problem.
    #[test]
    fn issue_12_tls_settings_validate() {
        let cases: &[(TlsSettings<'_>, &[&str])] = &[
            (settings(SslMode::Prefer, None, None, None), &[]),
            (settings(SslMode::Require, None, None, None), &[]),
            (settings(SslMode::Require, Some("/etc/ca.pem"), None, None), &[]),
            (settings(SslMode::VerifyCa, Some("/etc/ca.pem"), Some("/c.pem"), Some("/k.pem")), &[]),
            (settings(SslMode::VerifyFull, Some("system"), None, None), &[]),
            (settings(SslMode::VerifyCa, None, None, None), &["catalog.sslmode = \"verify-ca\": needs"]),
            (settings(SslMode::VerifyFull, None, None, None), &["catalog.sslmode = \"verify-full\": needs"]),
            (settings(SslMode::VerifyCa, Some("system"), None, None), &["catalog.sslrootcert = \"system\": needs"]),
            (settings(SslMode::Require, Some("ca.pem"), None, None), &["catalog.sslrootcert = \"ca.pem\": must be"]),
            (settings(SslMode::Require, None, Some("/c.pem"), None), &["catalog.sslcert is set: catalog.sslkey"]),
            (
                settings(SslMode::Require, None, None, Some("k.pem")),
                &["catalog.sslkey = \"k.pem\"", "catalog.sslkey is set"],
            ),
        ];
        for (tls, expected) in cases {
            let problems = validate("catalog", tls);
            assert_eq!(problems.len(), expected.len(), "{tls:?}: {problems:?}");
            for (p, e) in problems.iter().zip(expected.iter()) {
                assert!(p.starts_with(e), "{tls:?}: {p:?} should start with {e:?}");
            }
        }
    }

    /// Issue 12: the modes are spelled as libpq spells them, in TOML and in `as_str`.
    #[test]
    fn issue_12_sslmode_names_are_libpq_names() {
        #[derive(Deserialize)]
        struct T {
            m: SslMode,
        }
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            let t: T = toml::from_str(&format!("m = \"{}\"", mode.as_str())).expect("parse");
            assert_eq!(t.m, mode);
        }
        assert!(toml::from_str::<T>("m = \"allow\"").is_err(), "allow is not offered (no plain-first attempt)");
    }
}
