//! `[alerts]`, `[alerts.email]`, `[alerts.webhook]`: where alerts go and what raises them (issue 9; see
//! docs/operations.md, "Alerts").
//!
//! Invariants: the SMTP password, the webhook URL's path, query and credentials (Slack and Teams URLs carry their
//! token in the path) and webhook header values are secrets: `Debug` and [`AlertsConfig::redacted`] (used by
//! `config-show`) never show them. Plain-text SMTP (`tls = "none"`) and plain-HTTP webhooks are refused unless the
//! receiver is on this host's loopback, so that a password or token never crosses a network unencrypted.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Duration;

/// What [`AlertsConfig::redacted`] and `Debug` show instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// `[alerts]`: where alerts go (email, webhook) and what raises them; see docs/operations.md, "Alerts".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// A condition that stays firing is sent again after this long (e.g. `"1h"`); a "resolved" message is sent
    /// once when it clears.
    pub repeat_interval: Duration,
    /// Also send a message when a scheduled job succeeds (failures are always sent).
    pub notify_success: bool,
    /// Alert when wal-push has failed on every call for longer than this (e.g. `"5m"`).
    pub wal_push_failing_for: Duration,
    /// Alert when more than this many WAL segments wait to be archived (`.ready` files in pg_wal/archive_status).
    pub archive_behind_segments: u64,
    /// Send alerts by email (SMTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailConfig>,
    /// Send alerts to a webhook (Slack, Microsoft Teams or generic JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            repeat_interval: Duration(std::time::Duration::from_secs(3600)),
            notify_success: false,
            wal_push_failing_for: Duration(std::time::Duration::from_secs(300)),
            archive_behind_segments: 64,
            email: None,
            webhook: None,
        }
    }
}

/// How the SMTP connection is encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which must succeed (RFC 3207); port 587 by default.
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS", RFC 8314 section 3.3); port 465 by default.
    Implicit,
    /// No encryption: only for a server on the loopback interface; port 25 by default.
    None,
}

impl SmtpTls {
    /// The port used when `[alerts.email] port` is not set.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        }
    }
}

/// `[alerts.email]`: send alerts through an SMTP server.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// SMTP server host name or address.
    pub host: String,
    /// SMTP server port (default: 587 for `starttls`, 465 for `implicit`, 25 for `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Encryption: `"starttls"` (default), `"implicit"` (TLS from the start), or `"none"` (loopback host only).
    #[serde(default)]
    pub tls: SmtpTls,
    /// User name to log in with (no login when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password to log in with; write it as `"${SMTP_PASSWORD}"` to take it from the environment. Never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Sender address, e.g. `"backupctl <backup@db1.example.com>"`.
    pub from: String,
    /// Recipient addresses (at least one).
    pub to: Vec<String>,
    /// Text at the start of every subject.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// How long one message may take to send, connecting included (at most 60 s; connecting alone at most 5 s).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

fn default_subject_prefix() -> String {
    "[backupctl]".to_owned()
}

fn default_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(15))
}

impl EmailConfig {
    /// The port to connect to: `port`, or the default of `tls`.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.tls.default_port())
    }
}

impl fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("subject_prefix", &self.subject_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"status", "condition", "summary", "detail", "host", "repository", "time"}` (see docs/operations.md).
    #[default]
    Generic,
    /// A Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// A Microsoft Teams workflow webhook: a message with one Adaptive Card.
    Teams,
}

/// `[alerts.webhook]`: send alerts as an HTTP POST of JSON.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL to POST to. Slack and Teams URLs hold their token: it is never shown (config-show and logs print
    /// only the scheme and host).
    pub url: String,
    /// Extra HTTP headers, e.g. `{ Authorization = "Bearer ${TOKEN}" }`; values are never shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Body format: `"generic"` (default), `"slack"` or `"teams"`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// How long one request may take, connecting included (at most 60 s; connecting alone at most 5 s).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Allow a plain `http://` URL to a host that is not loopback. Off by default: the URL's token and the alert
    /// would travel unencrypted.
    #[serde(default)]
    pub allow_http: bool,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: BTreeMap<&str, &str> = self.headers.keys().map(|k| (k.as_str(), REDACTED)).collect();
        f.debug_struct("WebhookConfig")
            .field("url", &redact_webhook_url(&self.url))
            .field("headers", &headers)
            .field("format", &self.format)
            .field("timeout", &self.timeout)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl AlertsConfig {
    /// True when at least one channel (email or webhook) is configured.
    pub fn is_configured(&self) -> bool {
        self.email.is_some() || self.webhook.is_some()
    }

    /// A copy with every secret replaced by `<redacted>`, for `config-show`: the SMTP password, the webhook URL's
    /// path, query and credentials ([`redact_webhook_url`]), and every webhook header value.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        if let Some(password) = c.email.as_mut().and_then(|e| e.password.as_mut()) {
            *password = REDACTED.to_owned();
        }
        if let Some(webhook) = c.webhook.as_mut() {
            webhook.url = redact_webhook_url(&webhook.url);
            for value in webhook.headers.values_mut() {
                *value = REDACTED.to_owned();
            }
        }
        c
    }
}

/// A webhook URL as it may be shown: scheme and host (and port) only, with anything after them replaced by
/// `/<redacted>` and any `user:password@` by `<redacted>@`:
/// `https://hooks.slack.com/services/T0/B0/XXXX` → `https://hooks.slack.com/<redacted>`. Slack, Teams and most
/// webhook services put the secret token in the path (RFC 3986 section 3.3) rather than in a header.
pub fn redact_webhook_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return REDACTED.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(at) => format!("{REDACTED}@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    let tail = if tail.is_empty() || tail == "/" { tail.to_owned() } else { format!("/{REDACTED}") };
    format!("{}{host}{tail}", &url[..scheme_end])
}

/// The host of `url` (`scheme://[user@]host[:port]/...`), without brackets around an IPv6 address.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(host_port.split_once(':').map_or(host_port, |(h, _)| h))
}

/// True for `localhost` and loopback addresses (127.0.0.0/8, ::1): traffic that never leaves this host.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Every value of the section that parses but makes no sense, each as `key = value: what is wrong`.
pub(super) fn validate(c: &AlertsConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if c.repeat_interval.0 < std::time::Duration::from_secs(60) {
        problems.push(format!("alerts.repeat_interval = \"{}\": must be at least 1 minute", c.repeat_interval));
    }
    if let Some(e) = &c.email {
        if e.host.trim().is_empty() {
            problems.push("alerts.email.host = \"\": must name the SMTP server".to_owned());
        } else if e.tls == SmtpTls::None && !is_loopback_host(&e.host) {
            problems.push(format!(
                "alerts.email.tls = \"none\": only allowed for a loopback host (localhost, 127.0.0.1, ::1), not {:?}; use \"starttls\" or \"implicit\"",
                e.host
            ));
        }
        if e.port == Some(0) {
            problems.push("alerts.email.port = 0: must be between 1 and 65535".to_owned());
        }
        if e.password.is_some() && e.user.is_none() {
            problems.push("alerts.email.password: requires alerts.email.user".to_owned());
        }
        if let Err(err) = e.from.parse::<lettre::message::Mailbox>() {
            problems.push(format!("alerts.email.from = {:?}: not an email address ({err})", e.from));
        }
        if e.to.is_empty() {
            problems.push("alerts.email.to = []: must list at least one address".to_owned());
        }
        for to in &e.to {
            if let Err(err) = to.parse::<lettre::message::Mailbox>() {
                problems.push(format!("alerts.email.to = {to:?}: not an email address ({err})"));
            }
        }
        if e.subject_prefix.contains(['\r', '\n']) {
            problems.push("alerts.email.subject_prefix: must be one line".to_owned());
        }
        check_timeout("alerts.email.timeout", e.timeout, &mut problems);
    }
    if let Some(w) = &c.webhook {
        let shown = redact_webhook_url(&w.url);
        let scheme = w.url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match (scheme.as_deref(), url_host(&w.url)) {
            (_, None | Some("")) | (None, _) => {
                problems.push(format!("alerts.webhook.url = {shown:?}: must be an https:// URL with a host"))
            }
            (Some("https"), Some(_)) => {}
            (Some("http"), Some(host)) => {
                if !w.allow_http && !is_loopback_host(host) {
                    problems.push(format!(
                        "alerts.webhook.url = {shown:?}: plain HTTP to a host that is not loopback; use https:// or set alerts.webhook.allow_http = true"
                    ));
                }
            }
            (Some(_), Some(_)) => {
                problems.push(format!("alerts.webhook.url = {shown:?}: must start with https:// or http://"))
            }
        }
        for (name, value) in &w.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(format!("alerts.webhook.headers.{name}: not a valid HTTP header name"));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                // The value is a secret: say what is wrong without it.
                problems.push(format!(
                    "alerts.webhook.headers.{name}: the value holds characters an HTTP header cannot (line breaks, control characters)"
                ));
            }
        }
        check_timeout("alerts.webhook.timeout", w.timeout, &mut problems);
    }
    problems
}

fn check_timeout(key: &str, t: Duration, problems: &mut Vec<String>) {
    if t.0 < std::time::Duration::from_secs(1) || t.0 > std::time::Duration::from_secs(60) {
        problems.push(format!("{key} = \"{t}\": must be between 1 s and 60 s"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(extra: &str) -> Result<Config, String> {
        let text = format!("[repository]\nurl = \"file:///r\"\n[spool]\npath = \"/s\"\n{extra}");
        Config::parse(std::path::Path::new("t.toml"), &text, &|name| match name {
            "SMTP_PASSWORD" => Some("sm7p-s3cret".to_owned()),
            _ => None,
        })
        .map_err(|e| e.to_string())
    }

    const FULL: &str = "[alerts]\nrepeat_interval = \"2h\"\n[alerts.email]\nhost = \"smtp.example.com\"\nuser = \"u\"\n\
        password = \"${SMTP_PASSWORD}\"\nfrom = \"backupctl <b@example.com>\"\nto = [\"dba@example.com\"]\n\
        [alerts.webhook]\nurl = \"https://hooks.slack.com/services/T0/B0/t0k3n\"\nformat = \"slack\"\n\
        headers = { Authorization = \"Bearer h34der\" }\n";

    #[test]
    fn defaults_and_a_full_section_parse() {
        let c = parse("").expect("no [alerts]");
        assert!(!c.alerts.is_configured());
        assert_eq!(c.alerts.repeat_interval.0.as_secs(), 3600);
        assert_eq!(c.alerts.archive_behind_segments, 64);
        let c = parse(FULL).expect("full");
        let e = c.alerts.email.as_ref().expect("email");
        assert_eq!((e.tls, e.effective_port(), e.password.as_deref()), (SmtpTls::Starttls, 587, Some("sm7p-s3cret")));
        assert_eq!(c.alerts.webhook.as_ref().map(|w| w.format), Some(WebhookFormat::Slack));
    }

    #[test]
    fn issue_9_alert_secrets_never_in_debug_or_redacted_copy() {
        let c = parse(FULL).expect("full");
        let shown = [format!("{c:?}"), toml::to_string(&c.alerts.redacted()).expect("toml")];
        for text in shown {
            for secret in ["sm7p-s3cret", "t0k3n", "h34der", "services/T0"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert!(text.contains("hooks.slack.com") && text.contains("Authorization"), "{text}");
        }
    }

    #[test]
    fn webhook_urls_keep_only_scheme_and_host() {
        for (url, want) in [
            ("https://hooks.slack.com/services/T0/B0/XXX", "https://hooks.slack.com/<redacted>"),
            ("https://u:p@example.com:8443/hook?token=x", "https://<redacted>@example.com:8443/<redacted>"),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
            ("http://127.0.0.1:9000/", "http://127.0.0.1:9000/"),
            ("garbage", "<redacted>"),
        ] {
            assert_eq!(redact_webhook_url(url), want, "{url}");
        }
    }

    #[test]
    fn unsafe_or_wrong_values_are_refused() {
        let cases = [
            (
                "[alerts.email]\nhost = \"smtp.example.com\"\ntls = \"none\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n",
                "only allowed for a loopback host",
            ),
            ("[alerts.email]\nhost = \"localhost\"\nfrom = \"not an address\"\nto = []\n", "alerts.email.from"),
            ("[alerts.email]\nhost = \"localhost\"\nfrom = \"a@b\"\nto = []\n", "at least one address"),
            (
                "[alerts.email]\nhost = \"h\"\nfrom = \"a@b\"\nto = [\"c@d\"]\npassword = \"p\"\n",
                "requires alerts.email.user",
            ),
            ("[alerts.email]\nhost = \"h\"\nfrom = \"a@b\"\nto = [\"c@d\"]\ntls = \"ssl\"\n", "alerts.email.tls"),
            ("[alerts.webhook]\nurl = \"http://hooks.example.com/x/s3cret\"\n", "plain HTTP"),
            ("[alerts.webhook]\nurl = \"ftp://hooks.example.com/x\"\n", "must start with https://"),
            ("[alerts.webhook]\nurl = \"https://h/x\"\ntimeout = \"5m\"\n", "alerts.webhook.timeout"),
            ("[alerts.webhook]\nurl = \"https://h/x\"\nheaders = { \"X-Token\" = \"a\\nb\" }\n", "X-Token"),
            ("[alerts]\nrepeat_interval = \"10s\"\n", "alerts.repeat_interval"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        for ok in [
            "[alerts.email]\nhost = \"127.0.0.1\"\ntls = \"none\"\nport = 2525\nfrom = \"a@b\"\nto = [\"c@d\"]\n",
            "[alerts.email]\nhost = \"::1\"\ntls = \"none\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n",
            "[alerts.webhook]\nurl = \"http://127.0.0.1:9/hook\"\n",
            "[alerts.webhook]\nurl = \"http://alertmanager:9093/hook\"\nallow_http = true\n",
        ] {
            parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    /// docs/configuration.md lists every key of these sections (the crate-wide test sees only keys that are set).
    #[test]
    fn reference_lists_every_alerts_key() {
        let c = parse(FULL).expect("full");
        let mut a = c.alerts;
        if let Some(e) = a.email.as_mut() {
            e.port = Some(1);
        }
        let value = toml::Value::try_from(&a).expect("toml");
        let doc = include_str!("../../docs/configuration.md");
        for (section, v) in value.as_table().into_iter().flatten() {
            match v.as_table() {
                Some(t) => {
                    assert!(doc.contains(&format!("## `[alerts.{section}]`")), "docs lack [alerts.{section}]");
                    for k in t.keys() {
                        assert!(doc.contains(&format!("| `{k}` |")), "docs lack alerts.{section}.{k}");
                    }
                }
                None => assert!(doc.contains(&format!("| `{section}` |")), "docs lack alerts.{section}"),
            }
        }
        for k in ["timeout", "allow_http", "headers"] {
            assert!(doc.contains(&format!("| `{k}` |")), "docs lack {k}");
        }
    }
}
