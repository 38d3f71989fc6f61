//! Issue 12: TLS to PostgreSQL (`sslmode`, `sslrootcert`, `sslcert`, `sslkey` in `[catalog]` and `[postgres]`),
//! against a real cluster with `ssl = on` on 127.0.0.1 whose pg_hba.conf rejects every connection without TLS, so
//! that a connection that succeeds is known to be encrypted. Certificates come from the openssl command: a CA, a
//! server certificate naming only `localhost`, a client certificate for the role `certuser`, and a second CA that
//! signed nothing the server presents.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::pitr::FileRepo;
use crate::support::cluster::{Cluster, PgDir, as_postgres, assert_ok, bin, chown_postgres, require_pg, write_config};

/// The openssl command, or a skip (a failure under CI).
fn require_openssl() -> Option<()> {
    let found = Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success()).then_some(());
    crate::support::require("the openssl command (Debian package openssl; scripts/setup.sh installs it)", found)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert_ok(&format!("openssl {}", args.join(" ")), &out);
}

/// Certificates for the test, in `dir`.
struct Certs {
    ca: PathBuf,
    rogue_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Certs {
    fn make(dir: &Path) -> Self {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "rogue"] {
            openssl(
                dir,
                &[
                    &["req", "-x509"][..],
                    &ec,
                    &["-keyout", &format!("{ca}.key"), "-out", &format!("{ca}.crt"), "-days", "3"],
                    &["-subj", &format!("/CN=backupctl test {ca} CA")],
                ]
                .concat(),
            );
        }
        // Leaf certificates signed by the CA: the server names only localhost; the client is the role certuser.
        for (name, cn, ext) in [
            ("server", "localhost", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n"),
            ("client", "certuser", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
            openssl(
                dir,
                &[
                    &["req"][..],
                    &ec,
                    &["-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={cn}")],
                ]
                .concat(),
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "3",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.crt"),
                ],
            );
        }
        chown_postgres(dir);
        for f in std::fs::read_dir(dir).expect("certs").flatten() {
            let mode = if f.path().extension().is_some_and(|e| e == "key") { 0o600 } else { 0o644 };
            std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        Self {
            ca: dir.join("ca.crt"),
            rogue_ca: dir.join("rogue.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A cluster on 127.0.0.1 with `ssl = on` that accepts TCP connections only over TLS (`certuser` only with its
/// client certificate), or, with `ssl` false, a plain one. Fields drop in order: the cluster stops before its
/// directory goes.
struct TlsCluster {
    cluster: Cluster,
    dir: PgDir,
}

impl TlsCluster {
    fn start(label: &str, certs: Option<&Certs>) -> Self {
        let dir = PgDir::new(label);
        let ssl = match certs {
            Some(c) => format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
                c.server_cert.display(),
                c.server_key.display(),
                c.ca.display()
            ),
            None => "ssl = off\n".to_owned(),
        };
        let mut cluster = Cluster::init(&dir, "tls", &format!("listen_addresses = '127.0.0.1'\n{ssl}"));
        std::fs::write(
            cluster.data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 trust\n",
        )
        .expect("pg_hba");
        if certs.is_some() {
            // With TLS on, nothing gets in without it.
            let hba = std::fs::read_to_string(cluster.data.join("pg_hba.conf")).expect("hba");
            let hba = hba.replace("hostnossl all all 127.0.0.1/32 trust", "hostnossl all all 127.0.0.1/32 reject");
            std::fs::write(cluster.data.join("pg_hba.conf"), hba).expect("pg_hba");
        }
        chown_postgres(dir.path());
        cluster.start();
        cluster.sql("create role certuser login superuser");
        Self { cluster, dir }
    }

    /// A configuration with a file:// repository and `section` appended; its path.
    fn config(&self, name: &str, repo: &FileRepo, section: &str) -> PathBuf {
        let cfg = self.dir.sub(&format!("cfg-{name}"));
        let spool = cfg.join("spool");
        std::fs::create_dir_all(&spool).expect("spool");
        let path = write_config(&cfg, &repo.url(), &spool, section);
        chown_postgres(&cfg);
        path
    }
}

fn backupctl(config: &Path, args: &[&str]) -> Output {
    as_postgres(&bin("backupctl")).arg("--config").arg(config).args(args).output().expect("backupctl")
}

/// The one error line of a failed run (exit 1), checked to be a single line.
fn failure(what: &str, out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{what}: {err}");
    assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "{what}: {err}");
    err
}

fn section(name: &str, host: &str, port: u16, user: &str, tls: &str) -> String {
    format!("[{name}]\nhost = \"{host}\"\nport = {port}\nuser = \"{user}\"\ndbname = \"postgres\"\n{tls}\n")
}

/// Issue 12: the catalog over TLS with each `sslmode`, the CA and name checks, a client certificate, and the
/// failures a DBA meets (wrong CA, wrong name, plain text refused by the server, a server without TLS, a key
/// readable by others); then `backupctl dump` over TLS from `[postgres]` (our session and pg_dump both).
#[test]
fn issue_12_tls_to_postgresql() {
    if require_pg().is_none() || require_openssl().is_none() {
        return;
    }
    let certs_dir = PgDir::new("tls-certs");
    let certs = Certs::make(certs_dir.path());
    let server = TlsCluster::start("tls", Some(&certs));
    let port = server.cluster.port;
    let repo = FileRepo::new("tls");
    assert_ok("init", &backupctl(&server.config("init", &repo, ""), &["init"]));
    let ca = format!("sslrootcert = \"{}\"", certs.ca.display());
    let migrate = |name: &str, host: &str, user: &str, tls: &str| {
        let cfg = server.config(name, &repo, &section("catalog", host, port, user, tls));
        backupctl(&cfg, &["catalog", "migrate", "--json-output"])
    };

    // Each mode that should get through does, over TLS (pg_hba.conf rejects plain text).
    for (name, host, tls) in [
        ("prefer", "127.0.0.1", "sslmode = \"prefer\"".to_owned()),
        ("require", "127.0.0.1", "sslmode = \"require\"".to_owned()),
        ("verify-ca", "127.0.0.1", format!("sslmode = \"verify-ca\"\n{ca}")),
        ("require-with-ca", "127.0.0.1", format!("sslmode = \"require\"\n{ca}")),
        ("verify-full", "localhost", format!("sslmode = \"verify-full\"\n{ca}")),
    ] {
        assert_ok(&format!("catalog migrate with {name}"), &migrate(name, host, "postgres", &tls));
    }
    assert_eq!(
        server.cluster.sql("select max(version) from backupctl.schema_history"),
        backupctl::catalog::latest_version().to_string()
    );

    // The server's certificate names localhost, not 127.0.0.1: verify-full refuses it, verify-ca (above) not.
    let err = failure(
        "wrong name",
        &migrate("wrong-name", "127.0.0.1", "postgres", &format!("sslmode = \"verify-full\"\n{ca}")),
    );
    assert!(err.contains("cannot connect to the catalog at 127.0.0.1:") && err.contains("not valid for name"), "{err}");
    // A CA that did not sign the server's certificate: refused by verify-ca and by require with that CA.
    let rogue = format!("sslrootcert = \"{}\"", certs.rogue_ca.display());
    for mode in ["verify-ca", "require"] {
        let err = failure(
            mode,
            &migrate(&format!("rogue-{mode}"), "127.0.0.1", "postgres", &format!("sslmode = \"{mode}\"\n{rogue}")),
        );
        assert!(
            err.contains(
                "UnknownIssuer (the server's certificate is not signed by a CA in sslrootcert (with \"system\": by none"
            ),
            "{mode}: {err}"
        );
    }
    // Plain text: the server's pg_hba.conf refuses it, and the server's words are in the one line.
    let err = failure("disable", &migrate("disable", "127.0.0.1", "postgres", "sslmode = \"disable\""));
    assert!(err.contains("pg_hba.conf rejects connection") && err.contains("no encryption"), "{err}");

    // A client certificate: certuser gets in only with it (pg_hba.conf `cert`).
    let client = format!(
        "sslmode = \"verify-full\"\n{ca}\nsslcert = \"{}\"\nsslkey = \"{}\"",
        certs.client_cert.display(),
        certs.client_key.display()
    );
    assert_ok("certuser with its certificate", &migrate("cert", "localhost", "certuser", &client));
    let err = failure(
        "certuser without",
        &migrate("no-cert", "localhost", "certuser", &format!("sslmode = \"verify-full\"\n{ca}")),
    );
    assert!(err.contains("certuser"), "{err}");
    // A key readable by others is refused before connecting, as libpq refuses it.
    std::fs::set_permissions(&certs.client_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = failure("key mode", &migrate("key-mode", "localhost", "certuser", &client));
    assert!(err.contains(&format!("sslkey {} has mode 0644", certs.client_key.display())), "{err}");
    std::fs::set_permissions(&certs.client_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // A configuration that cannot be right is refused when loaded, naming the key.
    let cfg =
        server.config("no-ca", &repo, &section("catalog", "localhost", port, "postgres", "sslmode = \"verify-full\""));
    let out = backupctl(&cfg, &["catalog", "migrate"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("catalog.sslmode = \"verify-full\": needs catalog.sslrootcert")
    );

    // A server without TLS: require fails saying so; prefer falls back to plain text.
    let plain = TlsCluster::start("tls-plain", None);
    let cfg = |name: &str, tls: &str| {
        plain.config(name, &repo, &section("catalog", "127.0.0.1", plain.cluster.port, "postgres", tls))
    };
    let err = failure("require, no TLS", &backupctl(&cfg("require", "sslmode = \"require\""), &["catalog", "migrate"]));
    assert!(err.contains("server does not support TLS"), "{err}");
    assert_ok("prefer, no TLS", &backupctl(&cfg("prefer", "sslmode = \"prefer\""), &["catalog", "migrate"]));

    // [postgres] over TLS: backupctl dump's own session and pg_dump (PGSSLMODE, PGSSLROOTCERT) both get through.
    let pg = server.config(
        "dump",
        &repo,
        &section("postgres", "localhost", port, "postgres", &format!("sslmode = \"verify-full\"\n{ca}")),
    );
    let out = backupctl(&pg, &["dump", "--database", "postgres", "--json-output"]);
    assert_ok("dump over TLS", &out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dump JSON");
    assert_eq!(summary["databases"].as_array().map(Vec::len), Some(1), "{summary:#}");
    // With the wrong CA, the dump fails before it starts, naming the server.
    let pg = server.config(
        "dump-rogue",
        &repo,
        &section("postgres", "localhost", port, "postgres", &format!("sslmode = \"verify-full\"\n{rogue}")),
    );
    let err = failure("dump, rogue CA", &backupctl(&pg, &["dump", "--database", "postgres"]));
    assert!(err.contains("cannot connect to PostgreSQL at localhost:") && err.contains("UnknownIssuer"), "{err}");
}
