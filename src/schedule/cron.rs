//! Cron expressions, parsed and evaluated by the `croner` crate; this module only adapts our time type (jiff 1)
//! to croner's [`croner::CronDateTime`] trait and fixes the dialect.
//!
//! The dialect is crontab(5)'s (Vixie cron): five fields `minute hour day-of-month month day-of-week`, names for
//! months and days (`jan`, `mon`), ranges, lists and steps (`1-5`, `*/15`), `@yearly`/`@annually`, `@monthly`,
//! `@weekly`, `@daily`/`@midnight`, `@hourly`, and, as in crontab, a job runs when day-of-month OR day-of-week
//! matches if both are restricted. A sixth, leading seconds field is accepted too (`*/10 * * * * *`), for tests
//! and for schedules finer than a minute. Times are read in a time zone: a wall-clock time that a daylight
//! saving change skips runs right after the change (as Vixie cron does), and one that happens twice runs once.

use std::cmp::Ordering;

use croner::parser::{CronParser, Seconds, Year};
use croner::{CivilDateTime, CronDateTime, Resolution, Weekday};

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct Expression {
    cron: croner::Cron,
    text: String,
}

/// Parse `text` in the dialect above. Errors are croner's explanation, one line.
pub fn parse(text: &str) -> Result<Expression, String> {
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).dom_and_dow(false).build();
    let cron = parser.parse(text).map_err(|e| format!("not a cron expression: {e}"))?;
    Ok(Expression { cron, text: text.trim().to_owned() })
}

impl Expression {
    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first time strictly after `after` that the expression names, in `after`'s time zone; `None` if there is
    /// none within croner's search limit (an expression such as `0 0 30 2 *` never matches).
    pub fn next_after(&self, after: &jiff::ZonedDateTime) -> Option<jiff::ZonedDateTime> {
        self.cron.find_next_occurrence(&Zoned(after.clone()), false).ok().map(|z| z.0)
    }

    /// The next `n` times after `after`.
    pub fn upcoming(&self, after: &jiff::ZonedDateTime, n: usize) -> Vec<jiff::ZonedDateTime> {
        let mut out = Vec::with_capacity(n);
        let mut at = after.clone();
        while out.len() < n {
            match self.next_after(&at) {
                Some(next) => {
                    at = next.clone();
                    out.push(next);
                }
                None => break,
            }
        }
        out
    }
}

/// jiff 1's zoned time, as croner's calendar sees it.
#[derive(Debug, Clone)]
struct Zoned(jiff::ZonedDateTime);

fn civil(dt: jiff::civil::DateTime) -> CivilDateTime {
    CivilDateTime::from_ymd_hms_opt(
        i32::from(dt.year()),
        dt.month().unsigned_abs().into(),
        dt.day().unsigned_abs().into(),
        dt.hour().unsigned_abs().into(),
        dt.minute().unsigned_abs().into(),
        dt.second().unsigned_abs().into(),
    )
    // Cannot fail: jiff keeps every part of a civil date and time in range and has no leap seconds.
    .expect("a jiff civil date and time is always in range")
}

impl CronDateTime for Zoned {
    fn to_civil(&self) -> CivilDateTime {
        civil(self.0.datetime())
    }

    fn civil_weekday(&self) -> Weekday {
        Weekday::from_days_from_sunday(u32::from(self.0.weekday().to_sunday_zero_offset().unsigned_abs()))
    }

    fn resolve_civil(&self, c: CivilDateTime) -> Result<Resolution<Self>, croner::errors::CronError> {
        use croner::errors::CronError;
        use jiff::tz::AmbiguousOffset;
        let part = |v: u32| i8::try_from(v).map_err(|_| CronError::InvalidDate);
        let year = i16::try_from(c.year()).map_err(|_| CronError::InvalidDate)?;
        let dt = jiff::civil::DateTime::new(
            year,
            part(c.month())?,
            part(c.day())?,
            part(c.hour())?,
            part(c.minute())?,
            part(c.second())?,
            0,
        )
        .map_err(|_| CronError::InvalidDate)?;
        let ambiguous = self.0.time_zone().to_ambiguous_zoned_datetime(dt);
        Ok(match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { .. } => {
                Resolution::Single(Zoned(ambiguous.unambiguous().map_err(|_| CronError::InvalidTime)?))
            }
            AmbiguousOffset::Fold { .. } => {
                let earlier = ambiguous.clone().earlier().map_err(|_| CronError::InvalidTime)?;
                let later = ambiguous.later().map_err(|_| CronError::InvalidTime)?;
                Resolution::Ambiguous(Zoned(earlier), Zoned(later))
            }
            AmbiguousOffset::Gap { .. } => Resolution::Gap,
        })
    }

    fn checked_add_seconds(&self, seconds: i64) -> Option<Self> {
        self.0.checked_add(jiff::SignedDuration::from_secs(seconds)).ok().map(Zoned)
    }

    fn cmp_instant(&self, other: &Self) -> Ordering {
        self.0.timestamp().cmp(&other.0.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::ZonedDateTime {
        s.parse().expect("zoned")
    }

    #[test]
    fn crontab_fields_names_and_seconds() {
        let base = at("2026-12-01T10:17:30+00:00[UTC]");
        let cases = [
            ("*/15 * * * *", "2026-12-01T10:30:00+00:00[UTC]"),
            ("0 3 * * *", "2026-12-02T03:00:00+00:00[UTC]"),
            ("@daily", "2026-12-02T00:00:00+00:00[UTC]"),
            ("@hourly", "2026-12-01T11:00:00+00:00[UTC]"),
            ("0 4 * * sun", "2026-12-06T04:00:00+00:00[UTC]"),
            ("*/10 * * * * *", "2026-12-01T10:17:40+00:00[UTC]"),
            // Day of month OR day of week, as crontab: the 15th, or any Monday (7 Dec).
            ("0 0 15 * mon", "2026-12-07T00:00:00+00:00[UTC]"),
        ];
        for (expr, want) in cases {
            let e = parse(expr).expect(expr);
            assert_eq!(e.next_after(&base), Some(at(want)), "{expr}");
        }
        let three = parse("0 2 * * *").expect("parse").upcoming(&base, 3);
        assert_eq!(three.len(), 3);
        assert_eq!(three[2], at("2026-12-04T02:00:00+00:00[UTC]"));
    }

    #[test]
    fn bad_expressions_are_explained() {
        for bad in ["", "* * *", "61 * * * *", "daily", "* * * * * * * *", "0 0 * * blursday"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.starts_with("not a cron expression"), "{bad}: {err}");
        }
    }

    /// A time a daylight saving change skips runs right after the change (that day's backup is not lost); a
    /// repeated one runs once.
    #[test]
    fn daylight_saving_in_the_schedule_zone() {
        // Europe/Berlin: 2026-03-29 02:00 -> 03:00; 2026-10-25 03:00 -> 02:00.
        let e = parse("30 2 * * *").expect("parse");
        let spring = at("2026-03-28T12:00:00+01:00[Europe/Berlin]");
        let next = e.next_after(&spring).expect("next");
        assert_eq!(next.date(), jiff::civil::date(2026, 3, 29), "the day 02:30 does not exist still runs: {next}");
        assert_eq!(next.hour(), 3, "{next}");
        let autumn = at("2026-10-25T00:00:00+02:00[Europe/Berlin]");
        let runs = e.upcoming(&autumn, 2);
        assert_eq!(runs[0].date(), jiff::civil::date(2026, 10, 25));
        assert_eq!(runs[1].date(), jiff::civil::date(2026, 10, 26), "the repeated 02:30 runs once");
    }
}
