//! Delivery of one message through one channel: SMTP with `lettre`, an HTTP POST with `reqwest`.
//!
//! Invariants: every send is bounded (connecting at most 5 s, the whole exchange at most the channel's `timeout`),
//! and never fails its caller: the outcome is a [`Delivery`] whose `answer` is the server's reply or the error,
//! one line, without the SMTP password, the webhook URL or header values.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message as Email};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::Delivery;
use super::message::{Message, one_line};
use crate::config::{EmailConfig, SmtpTls, WebhookConfig, WebhookFormat, redact_webhook_url};

/// The longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of a webhook's answer body is kept.
const BODY_EXCERPT: usize = 200;

/// Send `message` by email; the answer is the SMTP server's final reply (`250 ...`) or the error.
pub async fn email(config: &EmailConfig, message: &Message) -> Delivery {
    let port = config.effective_port();
    let server = format!("smtp {}:{port}", config.host);
    let total = config.timeout.0;
    let outcome = tokio::time::timeout(total, send_email(config, port, message)).await;
    let (ok, answer) = match outcome {
        Ok(Ok(answer)) => (true, answer),
        Ok(Err(e)) => (false, format!("{server}: {e}")),
        Err(_) => (false, format!("{server}: no answer within {} s", total.as_secs())),
    };
    Delivery { channel: "email".to_owned(), ok, answer }
}

async fn send_email(config: &EmailConfig, port: u16, message: &Message) -> Result<String, String> {
    let from: Mailbox = config.from.parse().map_err(|e| format!("alerts.email.from: {e}"))?;
    // A generated Message-ID (`<uuid@hostname>`): RFC 5322 section 3.6.4 says every message should have one, and
    // large providers (Gmail) reject or junk messages without it.
    let mut builder = Email::builder().from(from).subject(message.subject(&config.subject_prefix)).message_id(None);
    for to in &config.to {
        builder = builder.to(to.parse::<Mailbox>().map_err(|e| format!("alerts.email.to {to:?}: {e}"))?);
    }
    let email = builder.header(ContentType::TEXT_PLAIN).body(message.text_body()).map_err(|e| e.to_string())?;
    let mut transport = match config.tls {
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host).map_err(chain)?,
        SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host).map_err(chain)?,
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.as_str()),
    }
    .port(port)
    // lettre applies this to connecting and to each read and write; the whole exchange is bounded by the caller.
    .timeout(Some(CONNECT_TIMEOUT.min(config.timeout.0)));
    if let Some(user) = &config.user {
        transport = transport.credentials(Credentials::new(user.clone(), config.password.clone().unwrap_or_default()));
    }
    let response = transport.build().send(email).await.map_err(chain)?;
    let text: Vec<&str> = response.message().collect();
    Ok(one_line(&format!("{} {}", response.code(), text.join(" "))))
}

/// POST `message` to the webhook; the answer is `HTTP <status>: <body excerpt>` or the error.
pub async fn webhook(config: &WebhookConfig, message: &Message, prefix: &str) -> Delivery {
    let shown = redact_webhook_url(&config.url);
    let total = config.timeout.0;
    let outcome = tokio::time::timeout(total, post(config, message, prefix)).await;
    let (ok, answer) = match outcome {
        Ok(Ok((ok, answer))) => (ok, answer),
        Ok(Err(e)) => (false, format!("{shown}: {e}")),
        Err(_) => (false, format!("{shown}: no answer within {} s", total.as_secs())),
    };
    Delivery { channel: "webhook".to_owned(), ok, answer }
}

async fn post(config: &WebhookConfig, message: &Message, prefix: &str) -> Result<(bool, String), String> {
    let body = match config.format {
        WebhookFormat::Generic => message.generic(),
        WebhookFormat::Slack => message.slack(prefix),
        WebhookFormat::Teams => message.teams(prefix),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &config.headers {
        // Validated with the configuration; the value is a secret and never printed.
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("alerts.webhook.headers.{name}: not a valid header name"))?;
        let mut value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| format!("alerts.webhook.headers.{name}: not a valid header value"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let client = reqwest::Client::builder()
        .user_agent(concat!("backupctl/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT.min(config.timeout.0))
        .timeout(config.timeout.0)
        // A redirect would carry the body (and our headers) elsewhere: a webhook answers where it is.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| chain(e.without_url()))?;
    let response =
        client.post(&config.url).headers(headers).json(&body).send().await.map_err(|e| chain(e.without_url()))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let mut excerpt: String = one_line(&text).chars().take(BODY_EXCERPT).collect();
    if excerpt.len() < one_line(&text).len() {
        excerpt.push_str("...");
    }
    let answer = if excerpt.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {excerpt}") };
    Ok((status.is_success(), answer))
}

/// An error and its sources on one line (`a: b: c`), each source once.
fn chain(e: impl std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    one_line(&text)
}
