//! The retention policy: which rules keep a backup, and the time zone whose calendar they count in.
//!
//! The text form is the one the issue promised for `--policy`: comma-separated `key=value` items from
//! `keep-last`, `daily-retain`, `weekly-retain`, `monthly-retain`, `yearly-retain`, `full-days` and `pitr-days`
//! (whole numbers), e.g. `daily-retain=7,weekly-retain=4,monthly-retain=12,yearly-retain=3`. Each key at most
//! once. [`Rules`]' `FromStr` and `Display` round-trip (keys printed in the order above).

use std::fmt;
use std::str::FromStr;

use crate::config::RetentionConfig;

/// Why a policy is not valid; each names the item or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `--policy ""`: an empty policy would silently replace the configured one with no rules at all.
    #[error("--policy is empty: give at least one key=value item (keys: {}), or leave --policy out to use [retention]", KEYS.join(", "))]
    Empty,
    /// An item without `=`.
    #[error("policy item {item:?} is not key=value (keys: {})", KEYS.join(", "))]
    NotKeyValue {
        /// The item.
        item: String,
    },
    /// A key the policy does not know.
    #[error("policy item {item:?}: unknown key {key:?} (keys: {})", KEYS.join(", "))]
    UnknownKey {
        /// The key.
        key: String,
        /// The whole item.
        item: String,
    },
    /// A key given twice.
    #[error("policy key {key:?} is given more than once")]
    Duplicate {
        /// The key.
        key: String,
    },
    /// A value that is not a whole number from 0 to 4294967295.
    #[error("policy item {item:?}: {value:?} is not a whole number from 0 to 4294967295")]
    NotANumber {
        /// The whole item.
        item: String,
        /// The value.
        value: String,
    },
    /// `keep-last=0` would keep nothing by that rule; leave it out instead.
    #[error("policy item {item:?}: keep-last must be at least 1 (leave it out to not use it)")]
    ZeroKeepLast {
        /// The whole item.
        item: String,
    },
    /// A time zone this host does not know.
    #[error("retention time zone {name:?} is not a time zone this host knows (an IANA name such as \"Europe/Berlin\")")]
    BadTimeZone {
        /// The name.
        name: String,
    },
}

/// The policy keys, in the order `Display` prints them.
pub const KEYS: [&str; 7] =
    ["keep-last", "daily-retain", "weekly-retain", "monthly-retain", "yearly-retain", "full-days", "pitr-days"];

/// The rules of a policy (every key optional). All `None`: keep every backup and all WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// Keep the newest N backups.
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the newest N calendar days that have a backup.
    pub daily_retain: Option<u32>,
    /// ... of each of the newest N ISO weeks (ISO 8601 week date: weeks start on Monday, week 1 holds a Thursday).
    pub weekly_retain: Option<u32>,
    /// ... of each of the newest N months.
    pub monthly_retain: Option<u32>,
    /// ... of each of the newest N years.
    pub yearly_retain: Option<u32>,
    /// Keep every backup that started in the last D days (of 24 hours).
    pub full_days: Option<u32>,
    /// The PITR window in days (of 24 hours): all WAL of it is kept; older kept backups keep only their own WAL.
    pub pitr_days: Option<u32>,
}

impl Rules {
    fn slots(&mut self) -> [&mut Option<u32>; 7] {
        [
            &mut self.keep_last,
            &mut self.daily_retain,
            &mut self.weekly_retain,
            &mut self.monthly_retain,
            &mut self.yearly_retain,
            &mut self.full_days,
            &mut self.pitr_days,
        ]
    }

    fn values(&self) -> [Option<u32>; 7] {
        [
            self.keep_last,
            self.daily_retain,
            self.weekly_retain,
            self.monthly_retain,
            self.yearly_retain,
            self.full_days,
            self.pitr_days,
        ]
    }

    /// True if any rule chooses backups (every key but `pitr-days`). Without one, every backup is kept.
    pub fn has_backup_rule(&self) -> bool {
        self.values()[..6].iter().any(Option::is_some)
    }

    /// True if any rule is set (`pitr-days` included). Without one, prune deletes nothing.
    pub fn has_rule(&self) -> bool {
        self.values().iter().any(Option::is_some)
    }

    /// The rules of `[retention]`.
    pub fn from_config(c: &RetentionConfig) -> Self {
        Self {
            keep_last: c.keep_last,
            daily_retain: c.daily_retain,
            weekly_retain: c.weekly_retain,
            monthly_retain: c.monthly_retain,
            yearly_retain: c.yearly_retain,
            full_days: c.full_days,
            pitr_days: c.pitr_days,
        }
    }
}

impl FromStr for Rules {
    type Err = PolicyError;
    /// Parse the `--policy` spelling; the empty string is no rule at all.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rules = Rules::default();
        let mut seen = [false; 7];
        if s.trim().is_empty() {
            return Ok(rules);
        }
        for raw in s.split(',') {
            let item = raw.trim();
            let (key, value) =
                item.split_once('=').ok_or_else(|| PolicyError::NotKeyValue { item: item.to_owned() })?;
            let (key, value) = (key.trim(), value.trim());
            let Some(i) = KEYS.iter().position(|k| *k == key) else {
                return Err(PolicyError::UnknownKey { key: key.to_owned(), item: item.to_owned() });
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(PolicyError::Duplicate { key: key.to_owned() });
            }
            let ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            let n: u32 = value
                .parse()
                .ok()
                .filter(|_| ok)
                .ok_or_else(|| PolicyError::NotANumber { item: item.to_owned(), value: value.to_owned() })?;
            if i == 0 && n == 0 {
                return Err(PolicyError::ZeroKeepLast { item: item.to_owned() });
            }
            *rules.slots()[i] = Some(n);
        }
        Ok(rules)
    }
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (key, value) in KEYS.iter().zip(self.values()) {
            if let Some(n) = value {
                write!(f, "{}{key}={n}", if first { "" } else { "," })?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A policy: its rules and the time zone whose days, weeks, months and years the rules count in.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The rules for base backups and WAL.
    pub rules: Rules,
    /// The rules for logical dumps (the `dump_*_retain` keys of `[retention]`; only the calendar rules are used,
    /// see [`super::dumps`]). `--policy` does not change them.
    pub dump_rules: Rules,
    /// The time zone, by IANA name.
    pub time_zone_name: String,
    /// The time zone itself.
    pub time_zone: jiff::tz::TimeZone,
}

impl Policy {
    /// A policy of `rules` counted in the time zone named `time_zone` (an IANA name such as `Europe/Berlin`).
    pub fn new(rules: Rules, time_zone: &str) -> Result<Self, PolicyError> {
        let tz =
            jiff::tz::TimeZone::get(time_zone).map_err(|_| PolicyError::BadTimeZone { name: time_zone.to_owned() })?;
        Ok(Self { rules, dump_rules: Rules::default(), time_zone_name: time_zone.to_owned(), time_zone: tz })
    }

    /// The policy of `[retention]`, or, with `policy` (the `--policy` text), those rules instead of the
    /// configuration's (the configuration's time zone stays).
    pub fn resolve(config: &RetentionConfig, policy: Option<&str>) -> Result<Self, PolicyError> {
        let rules = match policy {
            Some(text) if text.trim().is_empty() => return Err(PolicyError::Empty),
            Some(text) => text.parse()?,
            None => Rules::from_config(config),
        };
        let mut policy = Self::new(rules, &config.time_zone)?;
        policy.dump_rules = super::dumps::rules_from_config(config);
        Ok(policy)
    }
}

impl Policy {
    /// The dump rules as `[retention]` spells them, `dump-daily-retain=2,dump-weekly-retain=4 (time zone UTC)`,
    /// or `no rules` when no `dump_*_retain` key is set (prune then keeps every dump).
    pub fn dumps_text(&self) -> String {
        if self.dump_rules.has_backup_rule() {
            format!("{} (time zone {})", super::dumps::describe(&self.dump_rules), self.time_zone_name)
        } else {
            "no rules".to_owned()
        }
    }
}

impl fmt::Display for Policy {
    /// The base backups' policy: `daily-retain=7,pitr-days=14 (time zone Europe/Berlin)`, or `no rules` for an
    /// empty one (the dumps' is [`Policy::dumps_text`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rules == Rules::default() {
            write!(f, "no rules (time zone {})", self.time_zone_name)
        } else {
            write!(f, "{} (time zone {})", self.rules, self.time_zone_name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_issue_spelling_parses() {
        let r: Rules = "daily-retain=7,weekly-retain=4,monthly-retain=12,yearly-retain=3".parse().expect("policy");
        assert_eq!(
            r,
            Rules {
                daily_retain: Some(7),
                weekly_retain: Some(4),
                monthly_retain: Some(12),
                yearly_retain: Some(3),
                ..Rules::default()
            }
        );
        let r: Rules = " pitr-days=14 , keep-last=2,full-days=0".parse().expect("spaces");
        assert_eq!(r.to_string(), "keep-last=2,full-days=0,pitr-days=14");
        assert!(r.has_backup_rule());
        assert!(!"pitr-days=3".parse::<Rules>().expect("pitr").has_backup_rule());
        assert_eq!("".parse::<Rules>(), Ok(Rules::default()));
    }

    #[test]
    fn bad_policies_name_the_item() {
        let cases = [
            ("daily-retain=7,weekly=4", "unknown key \"weekly\""),
            ("daily_retain=7", "unknown key \"daily_retain\""),
            ("keep-last=2,keep-last=3", "\"keep-last\" is given more than once"),
            ("daily-retain=seven", "\"daily-retain=seven\": \"seven\" is not a whole number"),
            ("daily-retain=-1", "\"-1\" is not a whole number"),
            ("daily-retain=+1", "\"+1\" is not a whole number"),
            ("daily-retain=99999999999", "is not a whole number"),
            ("daily-retain", "\"daily-retain\" is not key=value"),
            ("daily-retain=7,", "\"\" is not key=value"),
            ("keep-last=0", "keep-last must be at least 1"),
        ];
        for (text, want) in cases {
            let e = text.parse::<Rules>().expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e} lacks {want}");
        }
        assert!(Policy::new(Rules::default(), "Mars/Olympus").is_err());
    }

    #[test]
    fn the_policy_flag_replaces_the_configured_rules_not_the_time_zone() {
        let config = RetentionConfig {
            keep_last: Some(9),
            pitr_days: Some(3),
            time_zone: "Europe/Berlin".into(),
            ..RetentionConfig::default()
        };
        let p = Policy::resolve(&config, None).expect("config");
        assert_eq!(p.rules.to_string(), "keep-last=9,pitr-days=3");
        let p = Policy::resolve(&config, Some("daily-retain=7")).expect("flag");
        assert_eq!(p.rules, Rules { daily_retain: Some(7), ..Rules::default() });
        assert_eq!(p.to_string(), "daily-retain=7 (time zone Europe/Berlin)");
        // An empty --policy would replace the configured rules with none: refused, not "prune nothing".
        for empty in ["", "  "] {
            assert!(matches!(Policy::resolve(&config, Some(empty)), Err(PolicyError::Empty)), "{empty:?}");
        }
    }

    proptest! {
        #[test]
        fn rules_round_trip(v in proptest::collection::vec(proptest::option::of(any::<u32>()), 7)) {
            let mut r = Rules::default();
            for (slot, value) in r.slots().into_iter().zip(v) {
                *slot = value;
            }
            if r.keep_last == Some(0) {
                r.keep_last = Some(1);
            }
            prop_assert_eq!(r.to_string().parse::<Rules>(), Ok(r));
        }
    }
}
