//! The drill's PostgreSQL server: which binaries, the settings that make a restored copy safe to start next to the
//! source (loopback only, a private socket, archiving off), starting it as a child process, talking to it, and
//! stopping it.
//!
//! Invariants:
//! - The server is our child, in its own process group (a Ctrl-C at the terminal reaches only us, and we stop it),
//!   with SIGINT (fast shutdown) as its parent-death signal.
//! - [`Server::stop`] leaves no server running on the directory: a fast shutdown (`pg_ctl stop -m fast`), then an
//!   immediate one, then SIGKILL of the postmaster, each waited for.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::error::Error;
use crate::restore::auto_conf;

/// The server binaries of PostgreSQL `major`: `configured` if set (it must hold that major), else
/// `/usr/lib/postgresql/<major>/bin` (Debian and Ubuntu), else the directory `pg_config --bindir` names.
///
/// Errors: [`Error::NoServerBinaries`] listing each place looked at and what it holds.
pub fn find_binaries(configured: Option<&Path>, major: u32, backup: &str) -> Result<PathBuf, Error> {
    let mut tried = Vec::new();
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    match configured {
        Some(dir) => candidates.push(("[drill] pg_bin_dir".to_owned(), dir.to_path_buf())),
        None => {
            candidates
                .push(("the Debian layout".to_owned(), PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))));
            match Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).output() {
                Ok(out) if out.status.success() => {
                    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    candidates.push(("pg_config --bindir".to_owned(), PathBuf::from(dir)));
                }
                Ok(out) => tried.push(format!("pg_config --bindir failed ({})", out.status)),
                Err(e) => tried.push(format!("pg_config: {e}")),
            }
        }
    }
    for (source, dir) in candidates {
        let postgres = dir.join("postgres");
        match Command::new(&postgres).arg("--version").stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                match parse_server_major(&text) {
                    Some(m) if m == major && dir.join("pg_ctl").is_file() => return Ok(dir),
                    Some(m) if m == major => tried.push(format!("{} ({source}) has no pg_ctl", dir.display())),
                    Some(m) => tried.push(format!("{} ({source}) holds PostgreSQL {m}", dir.display())),
                    None => tried.push(format!("{} ({source}) answers {:?}", postgres.display(), text.trim())),
                }
            }
            Ok(out) => tried.push(format!("{} ({source}) failed ({})", postgres.display(), out.status)),
            Err(e) => tried.push(format!("{} ({source}): {e}", postgres.display())),
        }
    }
    Err(Error::NoServerBinaries { major, backup: backup.to_owned(), tried })
}

/// The `pg_amcheck` to check a server of `major` with: the one beside the server binaries in `bin`, else the
/// newest of `/usr/lib/postgresql/<N>/bin` and `pg_config --bindir` whose major is `major` or later (PostgreSQL's
/// client programs work with servers of their own and older majors; relocatable server packages may ship
/// without it). Errors: [`Error::Program`] naming where it looked.
pub fn find_amcheck(bin: &Path, major: u32) -> Result<PathBuf, Error> {
    let own = bin.join("pg_amcheck");
    if own.is_file() {
        return Ok(own);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let best = dirs
        .iter()
        .map(|d| d.join("pg_amcheck"))
        .filter(|p| p.is_file())
        .filter_map(|p| {
            let out = Command::new(&p).arg("--version").stdin(Stdio::null()).output().ok()?;
            let found = parse_server_major(&String::from_utf8_lossy(&out.stdout))?;
            (found >= major).then_some((found, p))
        })
        .max_by_key(|(found, _)| *found);
    match best {
        Some((found, p)) => {
            tracing::info!(pg_amcheck = %p.display(), found, major, "the server binaries have no pg_amcheck; using a newer one");
            Ok(p)
        }
        None => Err(Error::Program {
            program: own,
            detail: format!(
                "not found, nor a pg_amcheck of PostgreSQL {major} or later in /usr/lib/postgresql/*/bin or pg_config --bindir"
            ),
        }),
    }
}

/// The major version in `--version` output of a PostgreSQL program: `postgres (PostgreSQL) 15.14 (Debian
/// 15.14-0+deb12u1)` → 15, `pg_amcheck (PostgreSQL) 18beta1` → 18.
pub fn parse_server_major(text: &str) -> Option<u32> {
    let rest = text.split_once("(PostgreSQL) ")?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Settings that override the backed-up configuration (appended to `postgresql.auto.conf`, which PostgreSQL reads
/// last): listen on loopback and a private socket only, never archive into the repository, never wait for a
/// synchronous standby, log to the drill's log file, and bound `pg_wal` (see [`super::budget::max_wal_bytes`]).
pub fn overrides(port: u16, socket_dir: &Path, wal_segment_size: u64) -> Result<Vec<u8>, auto_conf::UnwritableValue> {
    use std::os::unix::ffi::OsStrExt;
    let max_wal_mb = super::budget::max_wal_bytes(wal_segment_size) >> 20;
    let min_wal_mb = (wal_segment_size.saturating_mul(2) >> 20).max(32);
    let settings: Vec<(&'static str, Vec<u8>)> = vec![
        ("port", port.to_string().into_bytes()),
        ("listen_addresses", b"127.0.0.1".to_vec()),
        ("unix_socket_directories", socket_dir.as_os_str().as_bytes().to_vec()),
        ("unix_socket_permissions", b"0700".to_vec()),
        ("hba_file", socket_dir.join(HBA_FILE).as_os_str().as_bytes().to_vec()),
        ("ident_file", socket_dir.join(IDENT_FILE).as_os_str().as_bytes().to_vec()),
        ("ssl", b"off".to_vec()),
        ("archive_mode", b"off".to_vec()),
        ("archive_command", Vec::new()),
        ("synchronous_standby_names", Vec::new()),
        ("logging_collector", b"off".to_vec()),
        ("log_destination", b"stderr".to_vec()),
        ("max_wal_size", format!("{max_wal_mb}MB").into_bytes()),
        ("min_wal_size", format!("{min_wal_mb}MB").into_bytes()),
    ];
    let mut text = b"# backupctl drill: settings of the throwaway copy\n".to_vec();
    for (name, value) in settings {
        text.extend_from_slice(name.as_bytes());
        text.extend_from_slice(b" = ");
        text.extend_from_slice(&auto_conf::quote(name, &value)?);
        text.push(b'\n');
    }
    Ok(text)
}

/// The `pg_hba.conf` of the drill's server, in its socket directory: local connections only, `trust` (the
/// directory and socket are the drill user's, mode 0700, so no one else can connect).
pub const HBA_FILE: &str = "pg_hba.drill.conf";

/// The (empty) `pg_ident.conf` of the drill's server, beside [`HBA_FILE`].
pub const IDENT_FILE: &str = "pg_ident.drill.conf";

/// The contents of [`HBA_FILE`].
pub const HBA: &str = "# backupctl drill: only the drill's own Unix socket\nlocal all all trust\n";

/// A free TCP port on 127.0.0.1 (bound and released; the server binds it a moment later).
pub fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The restored server, started as a child process.
#[derive(Debug)]
pub struct Server {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Server {
    /// A server for the data directory `data` (not started).
    pub fn new(bin: &Path, data: &Path, socket_dir: &Path, log: &Path, port: u16) -> Self {
        Self {
            bin: bin.to_path_buf(),
            data: data.to_path_buf(),
            socket_dir: socket_dir.to_path_buf(),
            log: log.to_path_buf(),
            port,
            child: None,
        }
    }

    /// The server binaries' directory.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Start `postgres -D data` with its output appended to the log, in its own process group. Should this
    /// thread die without stopping it (backupctl killed by SIGKILL), the kernel sends the postmaster SIGINT, its
    /// fast shutdown (`PR_SET_PDEATHSIG`): no server outlives the drill.
    pub fn start(&mut self) -> Result<(), Error> {
        use std::os::unix::process::CommandExt;
        let io = |what, source| Error::Io { what, path: self.log.clone(), source };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).map_err(|e| io("open", e))?;
        let log2 = log.try_clone().map_err(|e| io("open", e))?;
        let program = self.bin.join("postgres");
        let mut command = Command::new(&program);
        command.arg("-D").arg(&self.data).stdin(Stdio::null()).stdout(log).stderr(log2).process_group(0);
        crate::pg::die_with_parent(&mut command, libc::SIGINT);
        let child = command.spawn().map_err(|e| Error::Program { program, detail: e.to_string() })?;
        self.child = Some(child);
        Ok(())
    }

    /// `Some(status)` once the server has exited (reaped), `None` while it runs or before it started.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait for it: {e}")),
        }
    }

    /// [`Error::ServerExited`] with the last lines of the log worth reading.
    pub fn exited_error(&self, status: String) -> Error {
        Error::ServerExited { status, last_lines: last_lines(&self.log) }
    }

    /// Connect as `user` to `database` over the socket, waiting at most `timeout`.
    pub fn connect(&self, user: &str, database: &str, timeout: Duration) -> Result<postgres::Client, postgres::Error> {
        let mut c = postgres::Config::new();
        c.host_path(&self.socket_dir)
            .port(self.port)
            .user(user)
            .dbname(database)
            .application_name("backupctl drill")
            .connect_timeout(timeout);
        c.connect(postgres::NoTls)
    }

    /// Stop the server, waiting for it to exit: fast shutdown, then immediate, then SIGKILL. Ok if it was not
    /// running. Errors: [`Error::Program`] when even SIGKILL did not end it.
    pub fn stop(&mut self) -> Result<(), Error> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        let pg_ctl = self.bin.join("pg_ctl");
        for mode in ["fast", "immediate"] {
            let out = Command::new(&pg_ctl)
                .arg("-D")
                .arg(&self.data)
                .args(["-m", mode, "-w", "-t", "60", "stop"])
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => tracing::warn!(mode, status = %o.status, output = %one_line(&o.stderr), "pg_ctl stop failed"),
                Err(e) => tracing::warn!(mode, error = %e, "cannot run pg_ctl stop"),
            }
            if wait_exit(&mut child, Duration::from_secs(10)) {
                return Ok(());
            }
        }
        let _ = child.kill();
        if wait_exit(&mut child, Duration::from_secs(10)) {
            return Ok(());
        }
        Err(Error::Program { program: pg_ctl, detail: format!("the server (pid {}) does not stop", child.id()) })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "the drill's server is still running");
        }
    }
}

/// Wait up to `limit` for `child` to exit; true once it has.
fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Bytes of program output on one line (whitespace runs become one space).
pub fn one_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The last FATAL, PANIC and ERROR lines of a server log, and the error lines of wal-fetch (restore_command's
/// stderr lands there), else its last lines: at most three, on one line.
pub fn last_lines(log: &Path) -> String {
    let Ok(file) = std::fs::File::open(log) else { return "(no log)".to_owned() };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    pick_last_lines(&lines)
}

/// See [`last_lines`].
pub fn pick_last_lines(lines: &[String]) -> String {
    let severe: Vec<&String> =
        lines.iter().filter(|l| ["FATAL:", "PANIC:", "ERROR:", ": error:"].iter().any(|s| l.contains(s))).collect();
    let chosen: Vec<&String> = if severe.is_empty() { lines.iter().collect() } else { severe };
    let start = chosen.len().saturating_sub(3);
    let text = chosen[start..].iter().map(|l| l.trim()).collect::<Vec<_>>().join(" | ");
    if text.is_empty() { "(empty log)".to_owned() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_major_from_version_text() {
        for (text, want) in [
            ("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n", Some(15)),
            ("postgres (PostgreSQL) 13.22\n", Some(13)),
            ("postgres (PostgreSQL) 18beta1\n", Some(18)),
            ("postgres (PostgreSQL) 9.6.24\n", Some(9)),
            ("something else\n", None),
        ] {
            assert_eq!(parse_server_major(text), want, "{text}");
        }
    }

    #[test]
    fn overrides_are_quoted_and_bound_wal() {
        let text = String::from_utf8(overrides(5999, Path::new("/tmp/it's"), 16 << 20).expect("render")).expect("utf8");
        for want in [
            "port = '5999'\n",
            "listen_addresses = '127.0.0.1'\n",
            "unix_socket_directories = '/tmp/it''s'\n",
            "hba_file = '/tmp/it''s/pg_hba.drill.conf'\n",
            "archive_mode = 'off'\n",
            "max_wal_size = '1024MB'\n",
            "min_wal_size = '32MB'\n",
        ] {
            assert!(text.contains(want), "{text} lacks {want}");
        }
        let big = String::from_utf8(overrides(1, Path::new("/t"), 1 << 30).expect("render")).expect("utf8");
        assert!(big.contains("max_wal_size = '4096MB'") && big.contains("min_wal_size = '2048MB'"), "{big}");
        assert!(overrides(1, Path::new("/t\nx"), 16 << 20).is_err());
    }

    #[test]
    fn last_lines_prefer_fatal_and_panic() {
        let lines: Vec<String> = ["LOG: a", "FATAL: could not restore", "LOG: b", "PANIC: x", "LOG: c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(pick_last_lines(&lines), "FATAL: could not restore | PANIC: x");
        let plain: Vec<String> = (1..=5).map(|i| format!("LOG: {i}")).collect();
        assert_eq!(pick_last_lines(&plain), "LOG: 3 | LOG: 4 | LOG: 5");
        assert_eq!(pick_last_lines(&[]), "(empty log)");
        let fetch: Vec<String> =
            ["wal-fetch: error: object wal/x is corrupt", "wal-fetch: hint: h", "FATAL: could not restore"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(pick_last_lines(&fetch), "wal-fetch: error: object wal/x is corrupt | FATAL: could not restore");
    }
}
