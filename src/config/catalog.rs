//! `[catalog]`: the PostgreSQL database the repository is mirrored into for SQL queries (docs/design/catalog.md).

use std::fmt;

use serde::{Deserialize, Serialize};

/// How the catalog connection uses TLS (libpq's `sslmode`, "SSL Support" in PostgreSQL's libpq documentation).
/// This build has no TLS client for PostgreSQL: `prefer` connects in plain text, and `require` is refused by
/// `validate` with a message saying so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CatalogSslMode {
    /// Plain text only.
    Disable,
    /// TLS if both sides can; this build cannot, so plain text.
    #[default]
    Prefer,
    /// TLS or fail: refused (this build has no TLS client for PostgreSQL).
    Require,
}

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
    /// `disable` or `prefer` (TLS is not available in this build; `require` is refused).
    pub sslmode: CatalogSslMode,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            host: "/var/run/postgresql".to_owned(),
            port: 5432,
            user: "postgres".to_owned(),
            password: None,
            dbname: "postgres".to_owned(),
            sslmode: CatalogSslMode::Prefer,
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
            .field("sslmode", &self.sslmode)
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
    if c.sslmode == CatalogSslMode::Require {
        problems.push(
            "catalog.sslmode = \"require\": this build has no TLS client for PostgreSQL; use \"disable\" or \"prefer\" \
             over a trusted network or a Unix socket (docs/configuration.md, [catalog])"
                .to_owned(),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: `require` is refused with the reason; the other modes and an empty section are accepted.
    #[test]
    fn issue_12_catalog_sslmode_require_is_refused() {
        let mut c = CatalogConfig { sslmode: CatalogSslMode::Require, ..CatalogConfig::default() };
        let p = validate(Some(&c));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("catalog.sslmode = \"require\": this build has no TLS client"), "{p:?}");
        for mode in [CatalogSslMode::Disable, CatalogSslMode::Prefer] {
            c.sslmode = mode;
            assert!(validate(Some(&c)).is_empty());
        }
        assert!(validate(None).is_empty());
        let debug = format!("{:?}", CatalogConfig { password: Some("secret".into()), ..CatalogConfig::default() });
        assert!(!debug.contains("secret"), "{debug}");
    }
}
