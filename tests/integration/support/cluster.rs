//! Throwaway PostgreSQL clusters run as the `postgres` OS user, and the test's own copies of our binaries.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The newest PostgreSQL server binaries on this machine, if any.
pub fn pg_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        dirs.sort();
        let found = dirs.pop().map(|(_, p)| p);
        let has_user = Command::new("id").arg("postgres").output().is_ok_and(|o| o.status.success());
        found.filter(|_| has_user)
    })
    .clone()
}

/// PostgreSQL, or a skip (a failure under CI).
pub fn require_pg() -> Option<PathBuf> {
    super::require("PostgreSQL server binaries under /usr/lib/postgresql and the postgres OS user", pg_bin())
}

/// PostgreSQL 14 server binaries (scripts/setup.sh installs them into /opt/backupctl/pg14), or a skip (a failure
/// under CI). `$BACKUPCTL_PG14_BIN` overrides the directory.
pub fn require_pg14() -> Option<PathBuf> {
    require_pg_major(14)
}

/// Server binaries of PostgreSQL `major` as scripts/setup.sh installs them (Debian's 15 in
/// /usr/lib/postgresql/15/bin; 13, 14, 16, 17 and 18 from npm in /opt/backupctl/pg<major>/bin), or a skip (a
/// failure under CI). `$BACKUPCTL_PG<major>_BIN` overrides the directory.
pub fn require_pg_major(major: u32) -> Option<PathBuf> {
    let default = match major {
        15 => "/usr/lib/postgresql/15/bin".to_owned(),
        _ => format!("/opt/backupctl/pg{major}/bin"),
    };
    let dir =
        std::env::var_os(format!("BACKUPCTL_PG{major}_BIN")).map_or_else(|| PathBuf::from(&default), PathBuf::from);
    let found = dir.join("postgres").is_file().then_some(dir);
    super::require(&format!("PostgreSQL {major} server binaries in {default} (run scripts/setup.sh)"), found)
}

/// A directory owned by the postgres user, removed on drop.
#[derive(Debug)]
pub struct PgDir {
    dir: tempfile::TempDir,
}

impl PgDir {
    /// A new empty directory owned by `postgres`.
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("bkctl-{label}-")).tempdir().expect("tempdir");
        chown_postgres(dir.path());
        Self { dir }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A subdirectory, created and owned by postgres.
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        chown_postgres(&p);
        p
    }
}

/// Give a path (recursively) to the postgres user.
pub fn chown_postgres(path: &Path) {
    let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status().expect("chown");
    assert!(status.success(), "chown {}", path.display());
}

/// Copies of our binaries in a directory every user can read, so that the postgres user can run them wherever
/// the checkout lives.
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        remove_stale_bin_dirs();
        let dir = std::env::temp_dir().join(format!("bkctl-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("bin dir");
        for (n, src) in [
            ("wal-push", env!("CARGO_BIN_EXE_wal-push")),
            ("wal-fetch", env!("CARGO_BIN_EXE_wal-fetch")),
            ("backupctl", env!("CARGO_BIN_EXE_backupctl")),
            ("base-backup", env!("CARGO_BIN_EXE_base-backup")),
            ("pitr-restore", env!("CARGO_BIN_EXE_pitr-restore")),
        ] {
            let dst = dir.join(n);
            // A hard link costs no space (debug binaries are hundreds of MiB); copy across filesystems.
            if std::fs::hard_link(src, &dst).is_err() {
                std::fs::copy(src, &dst).expect("copy binary");
            }
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    });
    dir.join(name)
}

/// Remove the binary directories of test processes that are gone.
fn remove_stale_bin_dirs() {
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("bkctl-bin-").and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Run a command as the postgres user, keeping the environment (AWS_* reach archive_command).
pub fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Poll `f` until it returns `Some`, or panic after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// A running PostgreSQL cluster in a temp directory.
#[derive(Debug)]
pub struct Cluster {
    /// Server binaries.
    pub bin: PathBuf,
    /// Data directory.
    pub data: PathBuf,
    /// Socket directory.
    pub socket: PathBuf,
    /// Port.
    pub port: u16,
    /// Server log.
    pub log: PathBuf,
    running: bool,
}

impl Cluster {
    /// initdb a new cluster under `dir` (not started). `extra` lines are appended to postgresql.conf.
    pub fn init(dir: &PgDir, name: &str, extra: &str) -> Self {
        Self::init_with(&pg_bin().expect("pg binaries"), dir, name, extra)
    }

    /// initdb with the server binaries in `bin`.
    pub fn init_with(bin: &Path, dir: &PgDir, name: &str, extra: &str) -> Self {
        Self::init_with_args(bin, dir, name, extra, &[])
    }

    /// [`Cluster::init_with`], passing `initdb_args` (e.g. `--data-checksums`) to initdb.
    pub fn init_with_args(bin: &Path, dir: &PgDir, name: &str, extra: &str, initdb_args: &[&str]) -> Self {
        let bin = bin.to_path_buf();
        let data = dir.path().join(name);
        let socket = dir.sub(&format!("{name}-sock"));
        let out = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"])
            .args(initdb_args)
            .arg("-D")
            .arg(&data)
            .output()
            .expect("initdb");
        assert_ok("initdb", &out);
        let cluster = Self::at(&bin, &data, &socket);
        cluster.append_conf(&format!(
            "port = {}\nlisten_addresses = ''\nunix_socket_directories = '{}'\nfsync = off\nwal_level = replica\n\
             max_wal_senders = 2\nwal_keep_size = '2GB'\nmax_wal_size = '4GB'\ncheckpoint_timeout = '1h'\n{extra}\n",
            cluster.port,
            socket.display()
        ));
        cluster
    }

    /// A cluster handle for an existing data directory (e.g. a restored copy), on a new port.
    pub fn at(bin: &Path, data: &Path, socket: &Path) -> Self {
        Self {
            bin: bin.to_path_buf(),
            data: data.to_path_buf(),
            socket: socket.to_path_buf(),
            port: free_port(),
            log: data.with_extension("log"),
            running: false,
        }
    }

    /// Append lines to postgresql.conf (the last setting of a name wins).
    pub fn append_conf(&self, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(self.data.join("postgresql.conf")).expect("conf");
        writeln!(f, "{lines}").expect("write conf");
    }

    /// Start and wait until it accepts connections.
    pub fn start(&mut self) {
        let out = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {} -k {}", self.port, self.socket.display()))
            .arg("start")
            .output()
            .expect("pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
        self.running = true;
    }

    /// Stop (fast mode).
    pub fn stop(&mut self) {
        if self.running {
            let _ = as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "-t", "60", "stop"])
                .output();
            self.running = false;
        }
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run SQL through psql; returns unaligned, tuples-only output, trimmed. Panics on error.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.try_sql(sql);
        assert_ok(&format!("psql {sql}"), &out);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Run SQL; return the raw output.
    pub fn try_sql(&self, sql: &str) -> Output {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres", "-h"])
            .arg(&self.socket)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .output()
            .expect("psql")
    }

    /// The name of the current WAL segment, after switching to a new one, once it has been archived.
    pub fn switch_and_wait_archived(&self, timeout: Duration) -> String {
        let last = self.sql("select pg_walfile_name(pg_switch_wal())");
        self.wait_archived(&last, timeout);
        last
    }

    /// Wait until `segment` (or a later one) has been archived; panics with the server log on timeout.
    pub fn wait_archived(&self, segment: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.sql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
            // A later .backup or .history file may be the last archived; its segment prefix counts.
            if done.len() >= 24 && &done[..24] >= segment {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "segment {segment} not archived within {timeout:?} (last {done:?})\n--- log ---\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Cluster {
    /// `pg_dump` of the `postgres` database, without the `\restrict`/`\unrestrict` lines recent pg_dump brackets its
    /// script with (a random key, not part of the data): two clusters with equal data give equal text.
    pub fn dump(&self) -> String {
        let out = Command::new(self.bin.join("pg_dump"))
            .args(["-U", "postgres", "-d", "postgres", "-h"])
            .arg(&self.socket)
            .arg("-p")
            .arg(self.port.to_string())
            .output()
            .expect("pg_dump");
        assert_ok("pg_dump", &out);
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// Panic with stdout and stderr unless the command succeeded.
pub fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A finished command's exit code, stdout and stderr (as text).
pub fn output_text(out: &std::process::Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write a test configuration file readable by postgres.
pub fn write_config(dir: &Path, repo_url: &str, spool: &Path, extra: &str) -> PathBuf {
    let path = dir.join("backupctl.toml");
    std::fs::write(
        &path,
        format!("[repository]\nurl = \"{repo_url}\"\n\n[spool]\npath = \"{}\"\n\n{extra}\n", spool.display()),
    )
    .expect("write config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    path
}
