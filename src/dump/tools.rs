//! Finding `pg_dump`, `pg_dumpall`, `pg_restore` and `psql` of a major version not older than the server, and
//! running them with the configured connection.
//!
//! PostgreSQL's rule (docs, "pg_dump", Notes): pg_dump can dump from servers of its own or older majors, not
//! newer; pg_restore reads archives of its own or older pg_dump. So the tools of the smallest major not older than
//! what is needed are chosen. Where they are looked for, in order: `[dump] bin_dir` if set (and nothing else),
//! else the server's own binary directory (when the server runs on this host: `/proc/<backend pid>/exe`),
//! the directories of `PATH`, and `/usr/lib/postgresql/<major>/bin` (Debian's layout).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Error;
use crate::config::PostgresConfig;

/// The directory holding the chosen client tools, and their version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// The directory (holds `pg_dump`, `pg_dumpall`, `pg_restore`, `psql`).
    pub dir: PathBuf,
    /// Their major version (from `pg_dump --version`).
    pub major: u32,
    /// The whole first line of `pg_dump --version`, e.g. `pg_dump (PostgreSQL) 15.10 (Debian 15.10-1.pgdg120+1)`.
    pub version: String,
}

impl Tools {
    /// The path of tool `name` in [`Tools::dir`].
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The major version in a `--version` line (`pg_dump (PostgreSQL) 15.10 ...` → 15, `... 18beta1` → 18,
/// `... 9.6.24` → 9). Pure.
pub fn parse_major(version_line: &str) -> Option<u32> {
    let rest = version_line.split(") ").nth(1).unwrap_or(version_line);
    let token = rest.split_whitespace().next()?;
    let digits: String = token.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Run `<dir>/<tool> --version`; `None` if it is not there or does not answer like a PostgreSQL tool.
fn version_of(dir: &Path, tool: &str) -> Option<(u32, String)> {
    let path = dir.join(tool);
    if !path.is_file() {
        return None;
    }
    let out = Command::new(&path).arg("--version").stdin(Stdio::null()).output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).lines().next()?.trim().to_owned();
    Some((parse_major(&line)?, line))
}

/// The binary directory of the server behind `session`'s backend, when it runs on this host and this user may
/// read its `/proc/<pid>/exe` (the same OS user, or root), and the `postgres` there is of `server_major`.
pub fn server_bin_dir(backend_pid: u32, server_major: u32) -> Option<PathBuf> {
    let exe = std::fs::read_link(format!("/proc/{backend_pid}/exe")).ok()?;
    let dir = exe.parent()?.to_path_buf();
    let (major, _) = version_of(&dir, "postgres")?;
    (exe.file_name().is_some_and(|n| n == "postgres") && major == server_major).then_some(dir)
}

/// Choose the tools for `need` (the oldest acceptable major): see the module doc. `tool` is the one that must be
/// there (`pg_dump` or `pg_restore`). `configured` is `[dump] bin_dir`; `server_dir` from [`server_bin_dir`].
/// Errors: [`Error::ToolTooOld`] for a configured directory with an older tool, [`Error::NoTool`] naming what was
/// found otherwise.
pub fn find(
    tool: &'static str,
    need: u32,
    configured: Option<&Path>,
    server_dir: Option<&Path>,
    path_env: Option<&std::ffi::OsStr>,
) -> Result<Tools, Error> {
    if let Some(dir) = configured {
        let Some((major, version)) = version_of(dir, tool) else {
            return Err(Error::NoTool { tool, need, found: format!("no {tool} in [dump] bin_dir {}", dir.display()) });
        };
        if major < need {
            return Err(Error::ToolTooOld { tool, path: dir.join(tool), tool_major: major, need });
        }
        return Ok(Tools { dir: dir.to_path_buf(), major, version });
    }
    let mut dirs: Vec<PathBuf> = server_dir.map(Path::to_path_buf).into_iter().collect();
    if let Some(p) = path_env {
        dirs.extend(std::env::split_paths(p));
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .collect();
    debian.sort();
    dirs.extend(debian.into_iter().map(|(_, d)| d));
    let mut best: Option<Tools> = None;
    let mut seen = Vec::new();
    for dir in dirs {
        let Ok(canonical) = dir.canonicalize() else { continue };
        if seen.iter().any(|(d, _): &(PathBuf, _)| *d == canonical) {
            continue;
        }
        let found = version_of(&dir, tool);
        seen.push((canonical, found.as_ref().map(|(m, _)| *m)));
        let Some((major, version)) = found else { continue };
        if major >= need && best.as_ref().is_none_or(|b| major < b.major) {
            best = Some(Tools { dir, major, version });
        }
    }
    if let Some(t) = best {
        return Ok(t);
    }
    let mut found: Vec<String> =
        seen.iter().filter_map(|(d, m)| m.map(|m| format!("{tool} {m} in {}", d.display()))).collect();
    if let Some(dir) = server_dir.filter(|d| !d.join(tool).is_file()) {
        found.push(format!("the server's own binaries in {} have no {tool}", dir.display()));
    }
    if found.is_empty() {
        found.push(format!("no {tool} at all"));
    }
    Err(Error::NoTool { tool, need, found: found.join("; ") })
}

/// libpq's conninfo form of `dbname=<name>` (PostgreSQL docs, "Connection Strings": single quotes, with `\` and
/// `'` escaped by a backslash), so that any database name, even one with `=` or spaces, is taken as a name. Pure.
pub fn dbname_conninfo(name: &str) -> String {
    let mut s = String::from("dbname='");
    for c in name.chars() {
        if c == '\\' || c == '\'' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// A command for tool `name` of `tools` with the connection of `pg` in its environment (`PGHOST`, `PGPORT`,
/// `PGUSER`, `PGPASSWORD`, and the TLS settings as `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`: libpq's
/// "Environment Variables"; never prompting: `-w` is added by callers) and stdin closed. A setting the
/// configuration leaves unset is removed from the inherited environment, so the tool connects as our own
/// connections do.
pub fn command(tools: &Tools, name: &str, pg: &PostgresConfig) -> Command {
    let mut c = Command::new(tools.path(name));
    c.env("PGHOST", &pg.host)
        .env("PGPORT", pg.port.to_string())
        .env("PGUSER", &pg.user)
        .env("PGAPPNAME", "backupctl")
        .env("PGSSLMODE", pg.sslmode.as_str())
        .env_remove("PGDATABASE")
        .env_remove("PGSERVICE")
        .stdin(Stdio::null());
    for (var, value) in [("PGSSLROOTCERT", &pg.sslrootcert), ("PGSSLCERT", &pg.sslcert), ("PGSSLKEY", &pg.sslkey)] {
        match value {
            Some(path) => c.env(var, path),
            None => c.env_remove(var),
        };
    }
    // A killed backupctl takes its pg_dump or pg_restore with it (a restore in one transaction rolls back).
    crate::pg::die_with_parent(&mut c, libc::SIGTERM);
    match &pg.password {
        Some(p) => c.env("PGPASSWORD", p),
        None => c.env_remove("PGPASSWORD"),
    };
    c
}

/// Keeps the end of a child's stderr (a thread reads it all, keeping the last 64 KiB), for its last line.
#[derive(Debug)]
pub struct StderrTail(Option<std::thread::JoinHandle<Vec<u8>>>);

impl StderrTail {
    /// Start reading `stderr`.
    pub fn start(stderr: Option<std::process::ChildStderr>) -> Self {
        Self(stderr.map(|mut s| {
            std::thread::spawn(move || {
                let mut tail = Vec::new();
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > 64 * 1024 {
                        tail.drain(..tail.len() - 32 * 1024);
                    }
                }
                tail
            })
        }))
    }

    /// Everything kept, as text (waits for the child to close stderr).
    pub fn text(self) -> String {
        self.0.and_then(|h| h.join().ok()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

/// The line of a tool's stderr that says what failed: the last one naming an error (`error:`, `ERROR:`, `FATAL:`),
/// else the last non-empty one, trimmed (`(no output)` if none).
pub fn last_line(text: &str) -> String {
    let lines = || text.lines().rev().map(str::trim).filter(|l| !l.is_empty());
    // pg_restore follows its error with the statement that failed ("Command was: CREATE TABLE ... );"): the line
    // that says what went wrong is the last one naming an error, not the last one.
    let says_error = |l: &&str| ["error:", "ERROR:", "FATAL:"].iter().any(|e| l.contains(e));
    lines().find(says_error).or_else(|| lines().next()).unwrap_or("(no output)").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_12_last_line_is_the_error() {
        let pg_restore = "pg_restore: error: could not execute query: ERROR:  schema \"s1\" does not exist\nCommand was: CREATE TABLE s1.orders (\n    id integer\n);\n\n";
        assert_eq!(
            last_line(pg_restore),
            "pg_restore: error: could not execute query: ERROR:  schema \"s1\" does not exist"
        );
        assert_eq!(last_line("first\nsecond\n"), "second");
        assert_eq!(last_line(""), "(no output)");
    }

    #[test]
    fn issue_12_version_lines_and_conninfo() {
        for (line, want) in [
            ("pg_dump (PostgreSQL) 15.10 (Debian 15.10-1.pgdg120+1)", Some(15)),
            ("pg_restore (PostgreSQL) 18beta1", Some(18)),
            ("pg_dump (PostgreSQL) 9.6.24", Some(9)),
            ("psql (PostgreSQL) 16.4", Some(16)),
            ("nonsense", None),
        ] {
            assert_eq!(parse_major(line), want, "{line}");
        }
        assert_eq!(dbname_conninfo("app"), "dbname='app'");
        assert_eq!(dbname_conninfo(r"we'ird \ = name"), r"dbname='we\'ird \\ = name'");
        assert_eq!(last_line("a\nb: error x\n\n  \n"), "b: error x");
        assert_eq!(last_line(""), "(no output)");
    }

    #[test]
    fn issue_12_a_configured_directory_without_the_tool_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = find("pg_dump", 15, Some(dir.path()), None, None).expect_err("none");
        assert!(e.to_string().contains("no pg_dump in [dump] bin_dir"), "{e}");
        let e = find("pg_dump", 99, None, Some(dir.path()), Some(std::ffi::OsStr::new(""))).expect_err("none");
        let text = e.to_string();
        assert!(text.contains("PostgreSQL 99 or newer") && text.contains("have no pg_dump"), "{text}");
    }
}
