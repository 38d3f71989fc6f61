//! A PostgreSQL session whose every step has a deadline, for `backupctl check`.
//!
//! The blocking client runs on a thread of its own; each call waits for its answer at most the timeout, so a
//! server that stops answering (stopped with SIGSTOP, a dead host behind a silent network) cannot hang the check.
//! The server cancels a slow statement by itself too (`statement_timeout`, see [`crate::pg::connect_within`]).
//! A thread stuck in a call is left behind; it ends with the process.

use std::sync::mpsc;
use std::time::Duration;

use crate::config::PostgresConfig;
use crate::pg;

type Job = Box<dyn FnOnce(&mut pg::Session) + Send>;

/// Why a call did not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error, or could not be reached.
    #[error(transparent)]
    Pg(#[from] pg::Error),
    /// No answer within the timeout.
    #[error("no answer from PostgreSQL at {target} within {seconds} s ({what})")]
    NoAnswer {
        /// host:port as user.
        target: String,
        /// What was asked.
        what: &'static str,
        /// The timeout.
        seconds: u64,
    },
    /// The session's thread could not be started or is gone.
    #[error("PostgreSQL session at {target} ended: {reason}")]
    Gone {
        /// host:port as user.
        target: String,
        /// Why.
        reason: String,
    },
}

/// A connected session with a deadline on every call.
pub struct TimedSession {
    jobs: mpsc::Sender<Job>,
    timeout: Duration,
    target: String,
}

impl std::fmt::Debug for TimedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedSession").field("target", &self.target).field("timeout", &self.timeout).finish()
    }
}

impl TimedSession {
    /// Connect as configured, within `timeout`.
    pub fn connect(cfg: &PostgresConfig, timeout: Duration) -> Result<Self, Error> {
        let target = format!("{}:{} as {}", cfg.host, cfg.port, cfg.user);
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, connected) = mpsc::channel::<Result<(), pg::Error>>();
        let cfg = cfg.clone();
        std::thread::Builder::new()
            .name("check-postgres".to_owned())
            .spawn(move || match pg::connect_within(&cfg, timeout) {
                Ok(mut session) => {
                    let _ = ready.send(Ok(()));
                    for job in queue {
                        job(&mut session);
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| Error::Gone { target: target.clone(), reason: e.to_string() })?;
        // The client's own connect timeout applies per address; allow a little more for the whole.
        match connected.recv_timeout(timeout + Duration::from_secs(2)) {
            Ok(Ok(())) => Ok(Self { jobs, timeout, target }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::NoAnswer { target, what: "connect", seconds: timeout.as_secs() }),
        }
    }

    /// Run `f` on the session; its answer, or [`Error::NoAnswer`] after the timeout.
    pub fn call<R: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut pg::Session) -> Result<R, pg::Error> + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        let gone = |reason: &str| Error::Gone { target: self.target.clone(), reason: reason.to_owned() };
        self.jobs.send(job).map_err(|_| gone("its thread stopped"))?;
        match rx.recv_timeout(self.timeout + Duration::from_secs(1)) {
            Ok(answer) => Ok(answer?),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(Error::NoAnswer { target: self.target.clone(), what, seconds: self.timeout.as_secs() })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(gone("its thread stopped")),
        }
    }
}
