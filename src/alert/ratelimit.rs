//! Which messages an update sends, and what it records (pure): one "firing" per condition and channel per
//! `repeat_interval`, one "resolved" when it clears.
//!
//! Invariants: state is kept per condition *and channel*, so a channel that was down gets the message at the
//! next update while one that received it is not sent it again; a "resolved" goes only to the channels that were
//! told it was firing, and is retried until it is delivered; a condition not named in an update is left alone
//! (each caller reports only its own conditions).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Condition;
use super::message::Status;

/// Record name of [`AlertsState`] (`<spool>/state/alerts.json`).
pub const RECORD: &str = "alerts";

/// The conditions that are firing (or whose "resolved" is still to be delivered), keyed by condition key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertsState {
    /// Per condition key.
    pub conditions: BTreeMap<String, ConditionState>,
}

/// One condition that fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionState {
    /// When it started firing.
    pub since: jiff::Timestamp,
    /// Its summary when it last fired (the "resolved" message repeats it).
    pub summary: String,
    /// Per channel (`email`, `webhook`): when a "firing" message was last delivered. A channel is removed once
    /// its "resolved" is delivered; the condition is forgotten when none is left and it no longer fires.
    #[serde(default)]
    pub notified: BTreeMap<String, jiff::Timestamp>,
    /// When it was last seen clear while a "resolved" was still owed to some channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared: Option<jiff::Timestamp>,
    /// Its [`Condition::reason`] at the last update.
    #[serde(default)]
    pub reason: String,
}

/// One message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Index into the update's conditions.
    pub condition: usize,
    /// The channel's name.
    pub channel: &'static str,
    /// Firing or resolved.
    pub status: Status,
    /// The summary to send (for resolved: the one it fired with).
    pub summary: String,
}

/// The messages `conditions` call for at `now`, given what was sent before and the configured `channels`.
pub fn plan(
    state: &AlertsState,
    conditions: &[Condition],
    channels: &[&'static str],
    now: jiff::Timestamp,
    repeat: std::time::Duration,
) -> Vec<Planned> {
    let repeat = jiff::SignedDuration::try_from(repeat).unwrap_or(jiff::SignedDuration::MAX);
    let mut out = Vec::new();
    for (i, c) in conditions.iter().enumerate() {
        let rec = state.conditions.get(&c.key);
        let new_reason = !c.reason.is_empty() && rec.is_some_and(|r| r.reason != c.reason);
        if c.firing {
            for &channel in channels {
                let due = match rec.and_then(|r| r.notified.get(channel)) {
                    None => true,
                    Some(last) => new_reason || now.duration_since(*last) >= repeat,
                };
                if due {
                    out.push(Planned { condition: i, channel, status: Status::Firing, summary: c.summary.clone() });
                }
            }
        } else if let Some(rec) = rec {
            for &channel in channels.iter().filter(|ch| rec.notified.contains_key(**ch)) {
                out.push(Planned { condition: i, channel, status: Status::Resolved, summary: rec.summary.clone() });
            }
        }
    }
    out
}

/// Record the outcome of an update: `delivered` are the planned messages that reached their channel.
pub fn apply(
    state: &mut AlertsState,
    conditions: &[Condition],
    channels: &[&'static str],
    delivered: &[&Planned],
    now: jiff::Timestamp,
) {
    for (i, c) in conditions.iter().enumerate() {
        let mine = delivered.iter().filter(|p| p.condition == i);
        if c.firing {
            let rec = state.conditions.entry(c.key.clone()).or_insert_with(|| ConditionState {
                since: now,
                summary: c.summary.clone(),
                notified: BTreeMap::new(),
                cleared: None,
                reason: c.reason.clone(),
            });
            rec.summary = c.summary.clone();
            rec.reason = c.reason.clone();
            rec.cleared = None;
            for p in mine.filter(|p| p.status == Status::Firing) {
                rec.notified.insert(p.channel.to_owned(), now);
            }
        } else if let Some(rec) = state.conditions.get_mut(&c.key) {
            for p in mine.filter(|p| p.status == Status::Resolved) {
                rec.notified.remove(p.channel);
            }
            // A channel that is no longer configured can be told nothing.
            rec.notified.retain(|ch, _| channels.contains(&ch.as_str()));
            rec.cleared = Some(now);
            if rec.notified.is_empty() {
                state.conditions.remove(&c.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNELS: &[&str] = &["email", "webhook"];
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    fn cond(firing: bool) -> Condition {
        Condition {
            key: "check".into(),
            firing,
            summary: "check failed".into(),
            detail: String::new(),
            reason: "postgresql".into(),
        }
    }

    fn at(minutes: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + minutes * 60).expect("time")
    }

    /// Run one update where the channels in `up` deliver; return what was sent as (channel, status).
    fn step(state: &mut AlertsState, c: &Condition, now: jiff::Timestamp, up: &[&str]) -> Vec<(&'static str, Status)> {
        let conditions = std::slice::from_ref(c);
        let planned = plan(state, conditions, CHANNELS, now, HOUR);
        let delivered: Vec<&Planned> = planned.iter().filter(|p| up.contains(&p.channel)).collect();
        apply(state, conditions, CHANNELS, &delivered, now);
        planned.iter().map(|p| (p.channel, p.status)).collect()
    }

    #[test]
    fn firing_once_per_interval_then_resolved_once() {
        let mut s = AlertsState::default();
        let all = CHANNELS;
        assert_eq!(step(&mut s, &cond(false), at(0), all), vec![], "nothing fired: nothing to resolve");
        let both_firing = vec![("email", Status::Firing), ("webhook", Status::Firing)];
        assert_eq!(step(&mut s, &cond(true), at(1), all), both_firing);
        assert_eq!(step(&mut s, &cond(true), at(2), all), vec![]);
        assert_eq!(step(&mut s, &cond(true), at(60), all), vec![], "59 minutes later: not yet");
        assert_eq!(step(&mut s, &cond(true), at(61), all), both_firing, "after repeat_interval");
        let both_resolved = vec![("email", Status::Resolved), ("webhook", Status::Resolved)];
        assert_eq!(step(&mut s, &cond(false), at(62), all), both_resolved);
        assert_eq!(step(&mut s, &cond(false), at(63), all), vec![]);
        assert!(s.conditions.is_empty());
    }

    #[test]
    fn a_channel_that_was_down_is_retried_alone() {
        let mut s = AlertsState::default();
        assert_eq!(step(&mut s, &cond(true), at(0), &["email"]).len(), 2, "both tried, webhook down");
        assert_eq!(step(&mut s, &cond(true), at(1), &["email", "webhook"]), vec![("webhook", Status::Firing)]);
        // The resolved message to email fails: it is owed until it is delivered; webhook's is not sent again.
        assert_eq!(step(&mut s, &cond(false), at(2), &["webhook"]).len(), 2);
        assert_eq!(step(&mut s, &cond(false), at(3), &["email"]), vec![("email", Status::Resolved)]);
        assert_eq!(step(&mut s, &cond(false), at(4), &["email"]), vec![]);
    }

    #[test]
    fn never_delivered_firing_owes_no_resolved() {
        let mut s = AlertsState::default();
        step(&mut s, &cond(true), at(0), &[]);
        assert_eq!(step(&mut s, &cond(false), at(1), CHANNELS), vec![]);
        assert!(s.conditions.is_empty());
    }

    #[test]
    fn other_conditions_are_left_alone() {
        let mut s = AlertsState::default();
        step(&mut s, &cond(true), at(0), CHANNELS);
        let other = Condition {
            key: "verify".into(),
            firing: false,
            summary: String::new(),
            detail: String::new(),
            reason: String::new(),
        };
        assert_eq!(step(&mut s, &other, at(1), CHANNELS), vec![]);
        assert!(s.conditions.contains_key("check"));
    }

    /// A second fault while the first still fires is sent at once (the trial: PostgreSQL stopped while check
    /// already failed on the backup age said nothing for an hour); the same fault again is not.
    #[test]
    fn a_changed_reason_is_sent_again_at_once() {
        let mut s = AlertsState::default();
        let both_firing = vec![("email", Status::Firing), ("webhook", Status::Firing)];
        assert_eq!(step(&mut s, &cond(true), at(0), CHANNELS), both_firing);
        let worse = Condition { reason: "backup_age, postgresql".into(), ..cond(true) };
        assert_eq!(step(&mut s, &worse, at(1), CHANNELS), both_firing, "a new reason is news");
        assert_eq!(step(&mut s, &worse, at(2), CHANNELS), vec![], "the same reason again is not");
        let unnamed = Condition { reason: String::new(), ..cond(true) };
        assert_eq!(step(&mut s, &unnamed, at(3), CHANNELS), vec![], "no reason given: only repeat_interval");
    }
}
