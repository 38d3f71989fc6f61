//! TLS for connections to PostgreSQL (`[postgres]`, `[catalog]`): rustls through tokio-postgres-rustls, with
//! libpq's meanings of `sslmode`, `sslrootcert`, `sslcert` and `sslkey` ("SSL Support" in PostgreSQL's libpq
//! documentation, table "SSL Mode Descriptions"):
//!
//! - `disable`: plain text.
//! - `prefer`: TLS if the server answers the SSLRequest with `S`, plain text if it answers `N`.
//! - `require`: TLS or fail.
//! - `prefer`/`require` check the server's certificate only when `sslrootcert` is set, and then as `verify-ca`
//!   (libpq does the same when its root certificate file exists). Without it the traffic is encrypted but the
//!   server is not authenticated; the handshake's signatures are still checked.
//! - `verify-ca`: the certificate must chain to a CA of `sslrootcert` and be valid now; its names are not checked.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host connected to (rustls/webpki: a DNS name
//!   or an IP address in subjectAltName).
//! - A host that is a Unix-socket directory never uses TLS, as with libpq (PostgreSQL offers no TLS there).
//!
//! SCRAM channel binding (`tls-server-end-point`) is used when the server offers it over TLS.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{SslMode, TlsSettings};

/// Why the TLS client could not be set up (before any connection is tried).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A configured file could not be read.
    #[error("cannot read {key} {path}: {source}")]
    Read {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A certificate file holds no PEM certificate (`-----BEGIN CERTIFICATE-----`), or one rustls cannot use.
    #[error("{key} {path}: no usable PEM certificate in it{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoCertificate {
        /// `sslrootcert` or `sslcert`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What rustls said, if it said anything.
        detail: Option<String>,
    },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("sslkey {path}: no PEM private key in it ({detail})")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// The key file is readable by others (libpq's rule: 0600 or less, or 0640 or less when owned by root).
    #[error(
        "sslkey {path} has mode {mode:04o}: a private key must not be accessible by group or others \
         (chmod 0600 {path}; or 0640 when owned by root)"
    )]
    KeyMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `sslrootcert = "system"` found no trusted CA in the operating system's store.
    #[error("sslrootcert = \"system\": no trusted CA could be loaded from the operating system ({detail})")]
    NoSystemRoots {
        /// What rustls-native-certs reported.
        detail: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match the certificate's algorithm).
    #[error("TLS client set-up failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why a connection failed: the TLS set-up, or the connection itself (refused, authentication, handshake,
/// certificate verification; the handshake's reason is in the `postgres::Error`'s source chain).
#[derive(Debug)]
pub enum ConnectError {
    /// Set-up before connecting.
    Setup(SetupError),
    /// Connecting.
    Connect(postgres::Error),
}

/// True when `host` is a Unix-socket directory (starts with `/`), where TLS is never used.
pub fn is_unix_socket(host: &str) -> bool {
    host.starts_with('/')
}

/// Connect with `config` (host, port, user, ... already set) using TLS as `tls` says; `host` is the configured
/// host, used to tell a Unix socket from TCP. Sets `config`'s `ssl_mode`.
///
/// Errors: [`ConnectError::Setup`] when a configured file is missing, unreadable, holds nothing usable, or the key
/// is readable by others; [`ConnectError::Connect`] for everything from the connection on (including "server does
/// not support TLS" under `require`, and certificate verification failures).
pub fn connect(
    config: &mut postgres::Config,
    host: &str,
    tls: &TlsSettings<'_>,
) -> Result<postgres::Client, ConnectError> {
    let mode = if is_unix_socket(host) { SslMode::Disable } else { tls.sslmode };
    config.ssl_mode(match mode {
        SslMode::Disable => postgres::config::SslMode::Disable,
        SslMode::Prefer => postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => postgres::config::SslMode::Require,
    });
    if mode == SslMode::Disable {
        return config.connect(postgres::NoTls).map_err(ConnectError::Connect);
    }
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(tls).map_err(ConnectError::Setup)?);
    config.connect(connector).map_err(ConnectError::Connect)
}

/// What a certificate failure of a TLS handshake means for the settings, in words (`None` for any other error):
/// rustls names the failure (`UnknownIssuer`), this says which setting it is about. The rustls error sits inside
/// an `io::Error` in the `postgres::Error`'s source chain (tokio-rustls wraps it).
pub fn explain(e: &postgres::Error) -> Option<&'static str> {
    use rustls::CertificateError as C;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let inner =
            c.downcast_ref::<io::Error>().and_then(|io| io.get_ref()).map(|i| i as &(dyn std::error::Error + 'static));
        if let Some(rustls::Error::InvalidCertificate(cert)) = inner.and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return match cert {
                C::UnknownIssuer => Some(
                    "the server's certificate is not signed by a CA in sslrootcert (with \"system\": by none of the \
                     operating system's CAs)",
                ),
                C::Expired | C::ExpiredContext { .. } => Some("the server's certificate has expired"),
                C::NotValidYet | C::NotValidYetContext { .. } => Some("the server's certificate is not valid yet"),
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    Some("verify-full: the server's certificate must name the configured host")
                }
                _ => None,
            };
        }
        cause = c.source();
    }
    None
}

/// The rustls client configuration for `tls` (its mode must not be `disable`): the server-certificate check its
/// mode asks for, and the client certificate if one is configured.
///
/// Errors: see [`SetupError`].
pub fn client_config(tls: &TlsSettings<'_>) -> Result<rustls::ClientConfig, SetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = match tls.sslrootcert {
        None => None,
        Some(_) if tls.is_system_roots() => Some(system_roots()?),
        Some(path) => Some(file_roots(path)?),
    };
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match (tls.sslmode, roots) {
        (SslMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots),
        (_, roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly { roots: roots.map(Arc::new), provider })),
    };
    let config = match (tls.sslcert, tls.sslkey) {
        (Some(cert), Some(key)) => builder.with_client_auth_cert(certificates("sslcert", cert)?, private_key(key)?)?,
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

fn system_roots() -> Result<RootCertStore, SetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let detail = found.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        return Err(SetupError::NoSystemRoots {
            detail: if detail.is_empty() { "the store is empty".to_owned() } else { detail },
        });
    }
    Ok(roots)
}

fn file_roots(path: &Path) -> Result<RootCertStore, SetupError> {
    let mut roots = RootCertStore::empty();
    let mut last_error = None;
    for cert in certificates("sslrootcert", path)? {
        if let Err(e) = roots.add(cert) {
            last_error = Some(e.to_string());
        }
    }
    if roots.is_empty() {
        return Err(SetupError::NoCertificate { key: "sslrootcert", path: path.to_owned(), detail: last_error });
    }
    Ok(roots)
}

/// Every PEM certificate of `path` (at least one).
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let text = std::fs::read(path).map_err(|source| SetupError::Read { key, path: path.to_owned(), source })?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SetupError::NoCertificate { key, path: path.to_owned(), detail: Some(e.to_string()) })?;
    if certs.is_empty() {
        return Err(SetupError::NoCertificate { key, path: path.to_owned(), detail: None });
    }
    Ok(certs)
}

/// The private key of `path`, after libpq's permission check.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, SetupError> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).map_err(|source| SetupError::Read { key: "sslkey", path: path.to_owned(), source })?;
    let mode = meta.mode() & 0o7777;
    let allowed_others = if meta.uid() == 0 { 0o037 } else { 0o077 };
    if mode & allowed_others != 0 {
        return Err(SetupError::KeyMode { path: path.to_owned(), mode });
    }
    let text =
        std::fs::read(path).map_err(|source| SetupError::Read { key: "sslkey", path: path.to_owned(), source })?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| SetupError::NoKey { path: path.to_owned(), detail: e.to_string() })
}

/// The server-certificate check of `prefer`, `require` and `verify-ca`: with `roots`, the certificate must chain to
/// one of them and be valid now (webpki, as rustls's own verifier, without the name check); without, any
/// certificate is accepted. The handshake's signatures are always verified with the provider's algorithms.
#[derive(Debug)]
struct ChainOnly {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings(mode: SslMode, root: Option<&Path>) -> TlsSettings<'_> {
        TlsSettings { sslmode: mode, sslrootcert: root, sslcert: None, sslkey: None }
    }

    /// Issue 12: each unusable file is named with its key, before any connection; a key readable by others is
    /// refused as libpq refuses it.
    #[test]
    fn issue_12_tls_setup_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let e = client_config(&settings(SslMode::VerifyCa, Some(&missing))).expect_err("missing");
        assert!(e.to_string().starts_with(&format!("cannot read sslrootcert {}", missing.display())), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = client_config(&settings(SslMode::VerifyFull, Some(&empty))).expect_err("empty");
        assert!(
            e.to_string().starts_with(&format!("sslrootcert {}: no usable PEM certificate", empty.display())),
            "{e}"
        );
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = private_key(&key).expect_err("mode");
        assert!(matches!(e, SetupError::KeyMode { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("chmod 0600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(!matches!(private_key(&key), Err(SetupError::KeyMode { .. })));
        // prefer/require without a CA need no file.
        client_config(&settings(SslMode::Require, None)).expect("require without a CA");
    }
}
