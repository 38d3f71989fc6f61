//! Real alert receivers on 127.0.0.1, started per test: an SMTP server (Python `aiosmtpd`, which
//! scripts/setup.sh installs) that saves each message it accepts as JSON in a directory, and an HTTP server
//! (axum, in-process) that records each request. Also a "slow" server that accepts connections and never answers,
//! and a closed port, for receivers that are down.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::cluster::{free_port, wait_for};

/// The SMTP server: accepts every message (logging in as `user`/`password` when given), saves it as
/// `<dir>/NNNNNN.json` = {"mail_from", "rcpt_tos", "auth_login", "subject", "body", "headers"}.
const SMTP_SERVER: &str = r#"
import logging, email, email.policy, itertools, json, os, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

outdir, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
logging.getLogger("mail.log").setLevel(logging.ERROR)
counter = itertools.count()

class Handler:
    async def handle_DATA(self, server, session, envelope):
        n = next(counter)
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "auth_login": login,
            "subject": str(msg["subject"]),
            "body": msg.get_content(),
            "headers": {k: str(v) for k, v in msg.items()},
        }
        tmp = os.path.join(outdir, ".tmp-%d" % n)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(outdir, "%06d.json" % n))
        return "250 2.0.0 Ok: saved as message %d" % n

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == user.encode() and auth_data.password == password.encode()
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

controller = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                        auth_require_tls=False, auth_required=bool(user))
controller.start()
sys.stdin.read()  # until the test closes our stdin (or dies)
controller.stop()
"#;

/// A running aiosmtpd server; killed on drop.
pub struct SmtpReceiver {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl SmtpReceiver {
    /// Start a server that requires no login, or `None` (after a skip notice; a failure under CI) when
    /// `python3` with `aiosmtpd` is missing.
    pub fn start() -> Option<Self> {
        Self::start_with_login("", "")
    }

    /// Start a server that requires logging in as `user` with `password` (none when `user` is empty).
    pub fn start_with_login(user: &str, password: &str) -> Option<Self> {
        let has = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        super::require("python3 with aiosmtpd (pip install aiosmtpd; scripts/setup.sh)", has.then_some(()))?;
        let dir = tempfile::Builder::new().prefix("bkctl-smtp-").tempdir().expect("smtp dir");
        let script = dir.path().join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER).expect("write smtp server");
        let out = dir.path().join("messages");
        std::fs::create_dir(&out).expect("mkdir");
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.args(["-W", "ignore"]).arg(&script).arg(&out).arg(port.to_string()).args([user, password]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
        // SAFETY: the closure only calls prctl, which is async-signal-safe, and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn the SMTP server");
        let receiver = Self { port, dir, child };
        wait_for("the SMTP server's greeting", Duration::from_secs(60), || smtp_greets(port).then_some(()));
        Some(receiver)
    }

    fn messages_dir(&self) -> PathBuf {
        self.dir.path().join("messages")
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.messages_dir())
            .expect("messages dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names.iter().map(|p| serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")).collect()
    }

    /// The subjects of every message received so far, oldest first.
    pub fn subjects(&self) -> Vec<String> {
        self.messages().iter().map(|m| m["subject"].as_str().unwrap_or("").to_owned()).collect()
    }

    /// Wait until at least `n` messages have arrived, then return all of them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        wait_for(&format!("{n} message(s) at the SMTP server"), timeout, || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
    }
}

impl Drop for SmtpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn smtp_greets(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 3];
    s.read_exact(&mut head).is_ok() && &head == b"220"
}

/// One request the HTTP receiver got.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// `POST`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names (lower case) and values.
    pub headers: BTreeMap<String, String>,
    /// The body as text.
    pub body: String,
}

impl HttpRequest {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

#[derive(Clone)]
struct Shared {
    requests: Arc<Mutex<Vec<HttpRequest>>>,
    answer: Arc<Mutex<(u16, String)>>,
}

/// An in-process HTTP server on 127.0.0.1 that records every request and answers `200 ok` (or what
/// [`HttpReceiver::answer_with`] sets); stopped on drop.
pub struct HttpReceiver {
    /// Its port.
    pub port: u16,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpReceiver {
    /// Start it.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let shared =
            Shared { requests: Arc::new(Mutex::new(Vec::new())), answer: Arc::new(Mutex::new((200, "ok".to_owned()))) };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(record).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self { port, shared, stop: Some(stop), thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answer every later request with this status and body.
    pub fn answer_with(&self, status: u16, body: &str) {
        *self.shared.answer.lock().expect("lock") = (status, body.to_owned());
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.shared.requests.lock().expect("lock").clone()
    }

    /// Wait until at least `n` requests have arrived, then return all of them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<HttpRequest> {
        wait_for(&format!("{n} request(s) at the HTTP receiver"), timeout, || {
            let r = self.requests();
            (r.len() >= n).then_some(r)
        })
    }
}

async fn record(
    axum::extract::State(state): axum::extract::State<Shared>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> (axum::http::StatusCode, String) {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    state.requests.lock().expect("lock").push(HttpRequest {
        method: method.to_string(),
        path: uri.to_string(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let (status, body) = state.answer.lock().expect("lock").clone();
    (axum::http::StatusCode::from_u16(status).expect("status"), body)
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A server that accepts TCP connections and never sends a byte (a receiver that hangs); stopped on drop.
pub struct SilentServer {
    /// Its port.
    pub port: u16,
    listener: TcpListener,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl SilentServer {
    /// Start it.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, h, s) = (listener.try_clone().expect("clone"), held.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in l.incoming() {
                if s.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    h.lock().expect("lock").push(stream);
                }
            }
        });
        Self { port, listener, held, thread: Some(thread), stop }
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.held.lock().expect("lock").len()
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop with one last connection.
        let _ = TcpStream::connect(self.listener.local_addr().expect("addr"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port on 127.0.0.1 where nothing listens (a receiver that is down).
pub fn closed_port() -> u16 {
    free_port()
}
