//! A moto S3 server on 127.0.0.1: one per test process, started on first use, one bucket per test.
//!
//! The server is spawned from a dedicated thread with `PR_SET_PDEATHSIG`, so it is killed when the test process
//! exits however it exits. Tests and their child processes authenticate as `test`/`test` through the standard
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` variables, set once by [`use_test_credentials`].

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, OnceLock, mpsc};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use backupctl::config::S3Config;

/// How long moto may take to start (Python imports are slow on a busy machine).
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
const REGION: &str = "us-east-1";

/// A running moto server.
#[derive(Debug)]
pub struct MotoServer {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

/// The process-wide moto server, started on first call; `None` (after a skip notice) if `moto_server` is not
/// installed. Under `CI`, a missing `moto_server` panics instead.
pub fn server() -> Option<&'static MotoServer> {
    static SERVER: OnceLock<Option<MotoServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            use_test_credentials();
            let program = super::require("moto_server (pip install 'moto[server]')", find_in_path("moto_server"))?;
            Some(start(&program).unwrap_or_else(|e| panic!("moto_server did not start: {e}")))
        })
        .as_ref()
}

/// A moto server of the caller's own, for a test that changes server-wide settings (issue 11: IAM enforcement);
/// `None` (after a skip notice) if `moto_server` is not installed. It lives until the test process exits.
pub fn own_server() -> Option<MotoServer> {
    use_test_credentials();
    let program = super::require("moto_server (pip install 'moto[server]')", find_in_path("moto_server"))?;
    Some(start(&program).unwrap_or_else(|e| panic!("moto_server did not start: {e}")))
}

/// Point the standard AWS credential chain of this process and its children at the test credentials.
pub fn use_test_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: runs once, before any S3 client or child process of this test binary reads these variables, and
        // no test thread writes the environment; other threads only read it.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::remove_var("AWS_SESSION_TOKEN");
        }
    });
}

impl MotoServer {
    /// Create a new, empty bucket whose name starts with `name_hint`, and return its name.
    pub async fn new_bucket(&self, name_hint: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let hint: String = name_hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .take(40)
            .collect();
        let hint = hint.trim_matches('-');
        let hint = if hint.is_empty() { "t" } else { hint };
        let name = format!("{hint}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        self.client()
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
        name
    }

    /// Settings for backupctl's S3 backend that reach this server.
    pub fn s3_config(&self) -> S3Config {
        S3Config {
            region: REGION.to_owned(),
            endpoint: Some(self.endpoint.clone()),
            force_path_style: true,
            allow_http: true,
            ..S3Config::default()
        }
    }

    /// A raw SDK client for this server, to check what backupctl stored. Build one per test (per runtime).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Start moto on a free port; retry with another port if it loses the race for the one it was given.
fn start(program: &Path) -> Result<MotoServer, String> {
    let mut errors = Vec::new();
    for _ in 0..3 {
        match launch(program) {
            Ok(server) => return Ok(server),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

enum Event {
    Spawned(u32),
    SpawnFailed(std::io::Error),
    Exited(std::io::Result<std::process::ExitStatus>),
}

fn launch(program: &Path) -> Result<MotoServer, String> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let mut log = tempfile::tempfile().map_err(|e| format!("log file: {e}"))?;
    let (child_out, child_err) = match (log.try_clone(), log.try_clone()) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => return Err(format!("log file: {e}")),
    };
    let mut cmd = Command::new(program);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdin(Stdio::null()).stdout(child_out).stderr(child_err);
    // SAFETY: the closure only calls prctl, which is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // PR_SET_PDEATHSIG fires when the thread that forked the child exits: fork from a thread that then waits for
    // the child, so it lives exactly as long as the server (or until the whole test process exits).
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("moto-server-{port}"))
        .spawn(move || match cmd.spawn() {
            Err(e) => {
                let _ = tx.send(Event::SpawnFailed(e));
            }
            Ok(mut child) => {
                let _ = tx.send(Event::Spawned(child.id()));
                let _ = tx.send(Event::Exited(child.wait()));
            }
        })
        .map_err(|e| format!("spawn thread: {e}"))?;

    let started = Instant::now();
    let mut pid = None;
    let failure = loop {
        if pid.is_some() && answers_http(port) {
            return Ok(MotoServer { endpoint: format!("http://127.0.0.1:{port}") });
        }
        if started.elapsed() > STARTUP_DEADLINE {
            if let Some(pid) = pid {
                // SAFETY: plain syscall on a pid we spawned and have not reaped (the waiting thread would report it).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            break format!("no answer on port {port} within {STARTUP_DEADLINE:?}");
        }
        // Waiting on the event channel doubles as the poll interval.
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Spawned(id)) => pid = i32::try_from(id).ok(),
            Ok(Event::SpawnFailed(e)) => return Err(format!("spawn {}: {e}", program.display())),
            Ok(Event::Exited(status)) => break format!("exited during startup ({status:?})"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break "the spawning thread ended".to_owned(),
        }
    };
    let mut output = String::new();
    let _ = log.seek(SeekFrom::Start(0)).and_then(|_| log.read_to_string(&mut output));
    Err(format!("{failure}; its output: {}", output.trim()))
}

/// True if an HTTP server answers on `port`.
fn answers_http(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 5];
    stream.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_ok()
        && stream.read_exact(&mut head).is_ok()
        && &head == b"HTTP/"
}
