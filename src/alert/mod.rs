//! Alerts by email and webhook: conditions, rate limiting, "resolved" messages (issue 9; docs/operations.md,
//! "Alerts").
//!
//! Callers (the scheduler daemon, `backupctl check` and `verify`) report [`Condition`]s to
//! [`Alerter::update`]; it sends "firing" when one starts and again every `[alerts] repeat_interval` while it
//! holds, and "resolved" once when it clears, per channel (see `ratelimit`). What was sent is recorded in
//! `<spool>/state/alerts.json`.
//!
//! Invariants: an alert never fails or blocks the job that raised it for long: every send is bounded (connect
//! 5 s, whole exchange `timeout`, 15 s by default), a channel that failed is not tried again in the same update,
//! and failures are returned as [`Delivery`] values and logged as one `warn` line, never as errors. Updates are
//! serialised between processes by `<spool>/state/alerts-send.lock`, so the same alert is not sent twice.
//! Secrets (SMTP password, webhook URL, header values) never appear in messages, answers or logs.
//! Per-segment wal-push calls never alert: they record [`crate::state::ArchiveState`], which
//! [`health_conditions`] turns into conditions for the daemon (or the next check) to report.

use std::time::Duration;

use futures_util::future::join;

use crate::config::{AlertsConfig, Config};
use crate::state::StateDir;

pub mod health;
pub mod message;
pub mod ratelimit;
mod send;

pub use health::{ARCHIVE_BEHIND, ARCHIVE_FAILING, BACKUP_AGE, health_conditions};
pub use message::{Message, Status};
use ratelimit::{AlertsState, Planned};

/// Condition key of a failed `backupctl check`.
pub const CHECK: &str = "check";
/// Condition key of a failed `backupctl verify`.
pub const VERIFY: &str = "verify";
/// Condition key of a failed restore drill.
pub const DRILL: &str = "drill";
/// The [`Condition::reason`] of a failed `backupctl check`: the names of the failed checks, from the
/// `name: detail` lines of `Error::ChecksFailed` (`"postgresql, wal_switch"`).
pub fn check_reason(failed: &[String]) -> String {
    let names: Vec<&str> = failed.iter().map(|f| f.split_once(':').map_or(f.as_str(), |(name, _)| name)).collect();
    names.join(", ")
}

/// Condition key of a failing scheduled job: `job:<name>` (`job:full_backup`).
pub fn job_key(name: &str) -> String {
    format!("job:{name}")
}

/// How long an update waits for another process's update (which is bounded by its sends) before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// Name of the lock that serialises updates in the state directory.
const SEND_LOCK: &str = "alerts-send";

/// Alert-level failures of `backupctl alert test` (the alerter itself never returns errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither `[alerts.email]` nor `[alerts.webhook]` is configured.
    #[error("no alert channel is configured in {path}: [alerts.email] and [alerts.webhook] are both missing")]
    NotConfigured {
        /// The configuration file.
        path: std::path::PathBuf,
    },
    /// Some channels did not accept the message (each is also reported on its own line).
    #[error("{} of {total} alert channels failed: {}", failed.len(), failed.join("; "))]
    DeliveryFailed {
        /// Each failed channel as `channel: answer`.
        failed: Vec<String>,
        /// How many channels are configured.
        total: usize,
    },
}

/// Something that is either wrong (firing) or fine, reported by a job or a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Stable key: `check`, `verify`, `drill`, `job:<name>`, `archive-failing`, `archive-behind`, `backup-age`.
    pub key: String,
    /// True while it is wrong.
    pub firing: bool,
    /// One line: what is wrong (subject of the message).
    pub summary: String,
    /// More lines: why, what was checked.
    pub detail: String,
    /// What is wrong, in words that stay the same while the same fault persists (for `check`: the names of the
    /// failed checks). A firing condition whose reason changes is sent again at once, not after
    /// `repeat_interval`: a second fault is news. Empty: never re-sent early.
    pub reason: String,
}

/// The outcome of sending one message through one channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Delivery {
    /// `"email"` or `"webhook"`.
    pub channel: String,
    /// True if the server accepted it (SMTP 2xx, HTTP 2xx).
    pub ok: bool,
    /// The server's reply (`250 2.0.0 Ok: queued`, `HTTP 200 OK: ok`) or the error, one line, no secrets.
    pub answer: String,
}

/// Sends alerts for a configuration; cheap to create.
#[derive(Debug, Clone)]
pub struct Alerter {
    config: AlertsConfig,
    state: StateDir,
    host: String,
    repository: String,
}

impl Alerter {
    /// An alerter for `config`; its state lives in `<spool>/state/alerts.json`.
    pub fn new(config: &Config) -> Self {
        // lettre's client id is this host's name (what EHLO sends), or `localhost` if it has none.
        let host = lettre::transport::smtp::extension::ClientId::default().to_string();
        let repository = crate::config::redact_url(&crate::storage::canonical_url(&config.repository.url)).to_string();
        Self { config: config.alerts.clone(), state: StateDir::new(&config.spool.path), host, repository }
    }

    /// True when at least one channel (email or webhook) is configured; otherwise every call sends nothing.
    pub fn is_configured(&self) -> bool {
        self.config.is_configured()
    }

    /// `[alerts] notify_success`: whether the caller should report a succeeded job with [`Alerter::event`].
    pub fn notify_success(&self) -> bool {
        self.config.notify_success
    }

    /// The configured channels' names, email first.
    fn channels(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.config.email.is_some() {
            out.push("email");
        }
        if self.config.webhook.is_some() {
            out.push("webhook");
        }
        out
    }

    /// Report `conditions` at `now`: a firing one not yet sent to a channel (or last sent `repeat_interval` or
    /// longer ago) is sent as "firing"; one that no longer fires but was sent is sent as "resolved", once.
    /// Records what was delivered in `<spool>/state/alerts.json`. Returns every attempted delivery; failures
    /// are also logged (warn). Never fails and never takes much longer than one channel `timeout` per message
    /// that is answered slowly.
    pub async fn update(&self, conditions: &[Condition], now: jiff::Timestamp) -> Vec<Delivery> {
        let channels = self.channels();
        if channels.is_empty() || conditions.is_empty() {
            return Vec::new();
        }
        let state = self.state.clone();
        let locked = tokio::task::spawn_blocking(move || {
            let lock = state.lock(SEND_LOCK, LOCK_WAIT)?;
            let current = match state.load::<AlertsState>(ratelimit::RECORD) {
                Ok(s) => s,
                // Rate limiting restarts rather than alerts stopping: the damaged record is replaced below.
                Err(e) => {
                    tracing::warn!("alert state unreadable, starting afresh: {e}");
                    AlertsState::default()
                }
            };
            Ok::<_, crate::state::Error>((lock, current))
        })
        .await;
        let (lock, current) = match locked {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return self.all_failed(&channels, &format!("alerts not sent: {e}")),
            Err(e) => return self.all_failed(&channels, &format!("alerts not sent: {e}")),
        };
        let planned = ratelimit::plan(&current, conditions, &channels, now, self.config.repeat_interval.0);
        let messages: Vec<Message> = planned
            .iter()
            .map(|p| {
                let c = &conditions[p.condition];
                self.message(p.status, &c.key, &p.summary, &c.detail, now)
            })
            .collect();
        let results = self.send_planned(&planned, &messages).await;
        let delivered: Vec<&Planned> = planned.iter().zip(&results).filter(|(_, d)| d.ok).map(|(p, _)| p).collect();
        let mut next = current;
        ratelimit::apply(&mut next, conditions, &channels, &delivered, now);
        let state = self.state.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let r = state.store(ratelimit::RECORD, &next);
            drop(lock);
            r
        })
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("alert state not recorded (alerts may be sent again): {e}"),
            Err(e) => tracing::warn!("alert state not recorded (alerts may be sent again): {e}"),
        }
        results
    }

    /// Send a notice that is not a condition (status "info"), e.g. a scheduled job that succeeded when
    /// `notify_success` is set, through every channel, without rate limiting.
    pub async fn event(&self, key: &str, summary: &str, detail: &str) -> Vec<Delivery> {
        let message = self.message(Status::Info, key, summary, detail, jiff::Timestamp::now());
        self.to_every_channel(&message).await
    }

    /// `backupctl alert test`: a test message through every configured channel (empty if none is).
    pub async fn test(&self) -> Vec<Delivery> {
        let detail = format!(
            "This is a test message from backupctl on {}. If you read it, alerts reach you through this channel.",
            self.host
        );
        let message = self.message(Status::Test, "test", "test message", &detail, jiff::Timestamp::now());
        self.to_every_channel(&message).await
    }

    fn message(&self, status: Status, key: &str, summary: &str, detail: &str, time: jiff::Timestamp) -> Message {
        Message {
            status,
            condition: key.to_owned(),
            summary: summary.to_owned(),
            detail: detail.to_owned(),
            host: self.host.clone(),
            repository: self.repository.clone(),
            // Whole seconds: what a person reads (and the rate limit needs no finer).
            time: jiff::Timestamp::from_second(time.as_second()).unwrap_or(time),
        }
    }

    fn subject_prefix(&self) -> &str {
        self.config.email.as_ref().map_or("[backupctl]", |e| e.subject_prefix.as_str())
    }

    /// Send one message through one channel, logging the outcome.
    async fn send(&self, channel: &str, message: &Message) -> Delivery {
        let delivery = match (channel, &self.config.email, &self.config.webhook) {
            ("email", Some(e), _) => send::email(e, message).await,
            ("webhook", _, Some(w)) => send::webhook(w, message, self.subject_prefix()).await,
            _ => Delivery { channel: channel.to_owned(), ok: false, answer: "channel not configured".to_owned() },
        };
        let status = message.status.word().to_ascii_lowercase();
        if delivery.ok {
            tracing::info!(channel, condition = %message.condition, status, "alert sent: {}", delivery.answer);
        } else {
            tracing::warn!(channel, condition = %message.condition, status, "alert not delivered: {}", delivery.answer);
        }
        delivery
    }

    async fn to_every_channel(&self, message: &Message) -> Vec<Delivery> {
        let channels = self.channels();
        let (a, b) =
            join(self.send_opt(channels.first().copied(), message), self.send_opt(channels.get(1).copied(), message))
                .await;
        a.into_iter().chain(b).collect()
    }

    async fn send_opt(&self, channel: Option<&str>, message: &Message) -> Option<Delivery> {
        match channel {
            Some(ch) => Some(self.send(ch, message).await),
            None => None,
        }
    }

    /// Send each planned message, channels in parallel, each channel's messages in turn; after a failure on a
    /// channel its remaining messages of this update are not attempted (so a dead receiver costs one timeout).
    /// Results are in the order of `planned`.
    async fn send_planned(&self, planned: &[Planned], messages: &[Message]) -> Vec<Delivery> {
        let per_channel = |channel: &'static str| async move {
            let mut out = Vec::new();
            let mut failed: Option<String> = None;
            for (i, _) in planned.iter().enumerate().filter(|(_, p)| p.channel == channel) {
                let d = match &failed {
                    Some(answer) => Delivery {
                        channel: channel.to_owned(),
                        ok: false,
                        answer: format!("not attempted: an earlier message of this update failed ({answer})"),
                    },
                    None => self.send(channel, &messages[i]).await,
                };
                if !d.ok && failed.is_none() {
                    failed = Some(d.answer.clone());
                }
                out.push((i, d));
            }
            out
        };
        let (email, webhook) = join(per_channel("email"), per_channel("webhook")).await;
        let mut all: Vec<(usize, Delivery)> = email.into_iter().chain(webhook).collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, d)| d).collect()
    }

    fn all_failed(&self, channels: &[&str], answer: &str) -> Vec<Delivery> {
        tracing::warn!("{answer}");
        channels.iter().map(|c| Delivery { channel: (*c).to_owned(), ok: false, answer: answer.to_owned() }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon spawns updates on a multi-thread runtime: the futures must be `Send`.
    #[test]
    fn futures_are_send() {
        fn is_send<T: Send>(_: &T) {}
        let text = "[repository]\nurl = \"file:///r\"\n[spool]\npath = \"/nonexistent\"\n";
        let config = Config::parse(std::path::Path::new("t.toml"), text, &|_| None).expect("config");
        let alerter = Alerter::new(&config);
        is_send(&alerter.update(&[], jiff::Timestamp::UNIX_EPOCH));
        is_send(&alerter.event("k", "s", "d"));
        is_send(&alerter.test());
    }

    #[test]
    fn job_keys() {
        assert_eq!(job_key("full_backup"), "job:full_backup");
    }
}
