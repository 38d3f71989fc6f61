//! One alert message and its renderings: email subject and body, Slack, Microsoft Teams and generic JSON (pure).
//!
//! Invariants: the subject or title is one line, `<prefix> FIRING <summary> on <host>`; the repository is shown
//! redacted (the caller passes it so); no rendering contains anything not in [`Message`].

use serde::Serialize;

/// What a message says about its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The condition holds (sent when it starts, then every `repeat_interval`).
    Firing,
    /// The condition that was firing has cleared (sent once).
    Resolved,
    /// `backupctl alert test`.
    Test,
    /// A notice that is not a condition (a scheduled job that succeeded, with `notify_success`).
    Info,
}

impl Status {
    /// The word in subjects and titles: `FIRING`, `RESOLVED`, `TEST`, `INFO`.
    pub fn word(self) -> &'static str {
        match self {
            Status::Firing => "FIRING",
            Status::Resolved => "RESOLVED",
            Status::Test => "TEST",
            Status::Info => "INFO",
        }
    }
}

/// One message, as every channel receives it. Serialized, it is the generic webhook body
/// `{"status", "condition", "summary", "detail", "host", "repository", "time"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    /// Firing, resolved, test or info.
    pub status: Status,
    /// The condition's key (`check`, `job:full_backup`, `archive-failing`...).
    pub condition: String,
    /// One line saying what is wrong (for resolved: what was wrong).
    pub summary: String,
    /// More lines: the reason, what was checked.
    pub detail: String,
    /// The host that sends it.
    pub host: String,
    /// The repository URL, redacted.
    pub repository: String,
    /// When it was sent (RFC 3339, UTC).
    pub time: jiff::Timestamp,
}

impl Message {
    /// The subject or title: `<prefix> FIRING <summary> on <host>`, one line.
    pub fn subject(&self, prefix: &str) -> String {
        let text = format!("{} {} on {}", self.status.word(), one_line(&self.summary), one_line(&self.host));
        if prefix.is_empty() { text } else { format!("{prefix} {text}") }
    }

    /// The plain-text body: the detail, then condition, host, repository and time, one per line.
    pub fn text_body(&self) -> String {
        let mut body = String::new();
        if !self.detail.trim().is_empty() {
            body.push_str(self.detail.trim_end());
            body.push_str("\n\n");
        }
        body.push_str(&format!(
            "status: {}\ncondition: {}\nhost: {}\nrepository: {}\ntime: {}\n",
            self.status.word().to_ascii_lowercase(),
            self.condition,
            self.host,
            self.repository,
            self.time
        ));
        body
    }

    /// A Slack incoming-webhook body: `{"text": ...}` with the title in bold, the text escaped as Slack requires
    /// (`&`, `<`, `>`; <https://api.slack.com/reference/surfaces/formatting#escaping>).
    pub fn slack(&self, prefix: &str) -> serde_json::Value {
        let text = format!("*{}*\n{}", slack_escape(&self.subject(prefix)), slack_escape(&self.text_body()));
        serde_json::json!({ "text": text })
    }

    /// A Microsoft Teams workflow-webhook body: a message with one Adaptive Card holding the title and the body
    /// (<https://learn.microsoft.com/en-us/connectors/teams/?tabs=text1#microsoft-teams-webhook>).
    pub fn teams(&self, prefix: &str) -> serde_json::Value {
        let color = match self.status {
            Status::Firing => "Attention",
            Status::Resolved => "Good",
            Status::Test | Status::Info => "Default",
        };
        let facts: Vec<serde_json::Value> = [
            ("condition", self.condition.clone()),
            ("host", self.host.clone()),
            ("repository", self.repository.clone()),
            ("time", self.time.to_string()),
        ]
        .into_iter()
        .map(|(title, value)| serde_json::json!({ "title": title, "value": value }))
        .collect();
        serde_json::json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        { "type": "TextBlock", "text": self.subject(prefix), "weight": "Bolder", "size": "Medium",
                          "color": color, "wrap": true },
                        { "type": "TextBlock", "text": self.detail.trim_end(), "wrap": true },
                        { "type": "FactSet", "facts": facts }
                    ]
                }
            }]
        })
    }

    /// The generic JSON body: this message's fields.
    pub fn generic(&self) -> serde_json::Value {
        serde_json::json!({
            "status": self.status,
            "condition": self.condition,
            "summary": self.summary,
            "detail": self.detail,
            "host": self.host,
            "repository": self.repository,
            "time": self.time.to_string(),
        })
    }
}

/// `text` with control characters (line breaks included) replaced by spaces: fit for a subject line.
pub fn one_line(text: &str) -> String {
    text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(status: Status) -> Message {
        Message {
            status,
            condition: "check".to_owned(),
            summary: "2 of 11 checks failed\n(second line)".to_owned(),
            detail: "repository: <unreachable> & more".to_owned(),
            host: "db1".to_owned(),
            repository: "s3://bucket/prefix".to_owned(),
            time: "2026-12-01T03:00:00Z".parse().expect("time"),
        }
    }

    #[test]
    fn subjects_are_one_line() {
        assert_eq!(
            message(Status::Firing).subject("[backupctl]"),
            "[backupctl] FIRING 2 of 11 checks failed (second line) on db1"
        );
        assert_eq!(message(Status::Resolved).subject(""), "RESOLVED 2 of 11 checks failed (second line) on db1");
    }

    #[test]
    fn bodies_of_each_format() {
        let m = message(Status::Firing);
        let body = m.text_body();
        for want in ["repository: <unreachable>", "condition: check", "host: db1", "2026-12-01T03:00:00Z"] {
            assert!(body.contains(want), "{want} in {body}");
        }
        let slack = m.slack("[backupctl]")["text"].as_str().expect("text").to_owned();
        assert!(
            slack.starts_with("*[backupctl] FIRING") && slack.contains("&lt;unreachable&gt; &amp; more"),
            "{slack}"
        );
        let teams = m.teams("[backupctl]");
        let card = &teams["attachments"][0]["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["body"][0]["text"], m.subject("[backupctl]"));
        let generic = m.generic();
        let keys: Vec<&str> = generic.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 7, "{generic}");
        assert_eq!(
            (generic["status"].as_str(), generic["time"].as_str()),
            (Some("firing"), Some("2026-12-01T03:00:00Z"))
        );
    }
}
