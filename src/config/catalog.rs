//! `[catalog]`: the PostgreSQL database the repository is mirrored into for SQL queries (docs/design/catalog.md).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::tls::{self, SslMode, TlsSettings};

/// `[catalog]`: where `backupctl catalog sync`, base-backup, prune and the scheduler write the catalog. Optional:
/// without the section no program touches a catalog. wal-push and wal-fetch never read it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// Host name, address, or (as with libpq) a Unix-socket directory such as `/var/run/postgresql`. Must be a
    /// cluster other than the one this repository archives.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name (owns the `backupctl` schema, or may create it in `dbname`).
    pub user: String,
    /// Password; write it as `${VAR}` so it stays in the environment. Redacted in logs and config-show.
    pub password: Option<String>,
    /// Database holding the `backupctl` schema.
    pub dbname: String,
    /// TLS over TCP, as libpq's `sslmode`: `disable`, `prefer` (TLS if the server offers it), `require` (TLS or
    /// fail), `verify-ca` (and the server's certificate chains to `sslrootcert`), `verify-full` (and it names
    /// `host`). `prefer` and `require` check the certificate only when `sslrootcert` is set. A Unix socket never
    /// uses TLS.
    pub sslmode: SslMode,
    /// PEM file of the CA certificates to trust (absolute path), or `system` for the operating system's (with
    /// `verify-full` only).
    pub sslrootcert: Option<PathBuf>,
    /// PEM file of a client certificate to present (absolute path; with `sslkey`), for `cert` authentication.
    pub sslcert: Option<PathBuf>,
    /// PEM file of `sslcert`'s private key (absolute path; mode 0600, or 0640 if owned by root, as libpq requires).
    pub sslkey: Option<PathBuf>,
}

impl CatalogConfig {
    /// This connection's TLS settings.
    pub fn tls(&self) -> TlsSettings<'_> {
        TlsSettings {
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.as_deref(),
            sslcert: self.sslcert.as_deref(),
            sslkey: self.sslkey.as_deref(),
        }
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            host: "/var/run/postgresql".to_owned(),
            port: 5432,
            user: "postgres".to_owned(),
            password: None,
            dbname: "postgres".to_owned(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        }
    }
}

impl fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("tls", &self.tls())
            .finish()
    }
}

/// Problems with `[catalog]`, each starting with its key.
pub(super) fn validate(catalog: Option<&CatalogConfig>) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(c) = catalog else { return problems };
    if c.host.is_empty() {
        problems.push("catalog.host = \"\": must not be empty".to_owned());
    }
    if c.user.is_empty() {
        problems.push("catalog.user = \"\": must not be empty".to_owned());
    }
    if c.dbname.is_empty() {
        problems.push("catalog.dbname = \"\": must not be empty".to_owned());
    }
    problems.extend(tls::validate("catalog", &c.tls()));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: every mode parses; a verifying mode without a CA is refused with its key; the password is
    /// redacted.
    #[test]
    fn issue_12_catalog_tls_settings() {
        let c: CatalogConfig = toml::from_str(
            "sslmode = \"verify-full\"\nsslrootcert = \"/etc/ssl/catalog-ca.pem\"\nsslcert = \"/c.pem\"\nsslkey = \"/k.pem\"\n",
        )
        .expect("parse");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert!(validate(Some(&c)).is_empty());
        let c = CatalogConfig { sslmode: SslMode::VerifyCa, ..CatalogConfig::default() };
        let p = validate(Some(&c));
        assert!(
            p.len() == 1 && p[0].starts_with("catalog.sslmode = \"verify-ca\": needs catalog.sslrootcert"),
            "{p:?}"
        );
        assert!(validate(None).is_empty());
        let debug = format!("{:?}", CatalogConfig { password: Some("secret".into()), ..CatalogConfig::default() });
        assert!(!debug.contains("secret"), "{debug}");
    }
}
