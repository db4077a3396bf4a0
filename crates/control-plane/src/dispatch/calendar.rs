//! When a schedule is due: a cron expression read in an IANA time zone.
//! Parsing and evaluation are croner's (POSIX/Vixie cron, five fields or six
//! with seconds first, `@hourly`-style aliases, `L`, `#`, `W`; daylight-
//! saving gaps and repeats handled as cron does); the zone database is
//! chrono-tz's, built in, so the host's tzdata does not matter. Instants are
//! `DateTime<Utc>` and written as RFC 3339 with milliseconds, like every
//! other time the control plane stores.

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use croner::Cron;
use std::str::FromStr;

/// The time zone a schedule is read in when none is given.
pub(crate) const DEFAULT_TIME_ZONE: &str = "UTC";

/// Why a schedule's expression or time zone was refused: each message
/// names the problem and how to write it instead.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CalendarError {
    #[error("unknown time zone {0:?}: give an IANA name such as \"UTC\", \"Europe/Berlin\" or \"America/New_York\"")]
    UnknownTimeZone(String),
    #[error("invalid cron expression {expression:?}: {source}; write five fields (minute hour day-of-month month day-of-week, e.g. \"*/15 * * * *\"), six with seconds first (\"*/10 * * * * *\"), or an alias such as \"@hourly\"")]
    InvalidCron {
        expression: String,
        source: croner::errors::CronError,
    },
    #[error("cron expression {0:?} never comes due; check its day and month fields")]
    NeverDue(String),
}

/// A stored time that does not read as RFC 3339 (the database was edited
/// or damaged).
#[derive(Debug, thiserror::Error)]
#[error("invalid stored time {text:?}: {source}")]
pub(crate) struct StoredTimeError {
    text: String,
    source: chrono::ParseError,
}

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub(crate) struct Calendar {
    cron: Cron,
    tz: Tz,
}

impl Calendar {
    pub(crate) fn parse(expression: &str, time_zone: &str) -> Result<Calendar, CalendarError> {
        let tz = Tz::from_str(time_zone.trim())
            .map_err(|_| CalendarError::UnknownTimeZone(time_zone.to_string()))?;
        let cron =
            Cron::from_str(expression.trim()).map_err(|source| CalendarError::InvalidCron {
                expression: expression.to_string(),
                source,
            })?;
        let calendar = Calendar { cron, tz };
        // An expression that never matches (e.g. 30 February) is refused
        // now rather than found never to fire.
        if calendar.next_after(Utc::now()).is_none() {
            return Err(CalendarError::NeverDue(expression.to_string()));
        }
        Ok(calendar)
    }

    /// The first slot strictly after `t`.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest slot at or before `t`.
    pub(crate) fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The slot to handle at `now` when every slot up to `handled_until` is
    /// handled: the latest one due, if any (earlier ones are folded into
    /// it: a schedule never creates a burst of runs), and whether it came
    /// due before `started_at` (while the control plane was not running).
    pub(crate) fn due(
        &self,
        handled_until: DateTime<Utc>,
        now: DateTime<Utc>,
        started_at: DateTime<Utc>,
    ) -> Option<Due> {
        let slot = self.latest_at_or_before(now)?;
        if slot <= handled_until {
            return None;
        }
        Some(Due {
            slot,
            missed: slot < started_at,
            folded: self
                .next_after(handled_until)
                .is_some_and(|first| first < slot),
        })
    }
}

/// A slot to handle now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    pub slot: DateTime<Utc>,
    /// It came due while the control plane was not running.
    pub missed: bool,
    /// Earlier unhandled slots were folded into it.
    pub folded: bool,
}

/// `2024-05-01T12:34:56.789Z`, as the store writes every time.
pub(crate) fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads a time written by [`format`] (any RFC 3339 time, in fact).
pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, StoredTimeError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|source| StoredTimeError {
            text: s.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    #[test]
    fn slots_follow_the_time_zone_across_daylight_saving() {
        let c = Calendar::parse("0 9 * * *", "Europe/Berlin").unwrap();
        // 09:00 CET is 08:00 UTC; after the switch on 31 March 2024, 09:00
        // CEST is 07:00 UTC.
        assert_eq!(
            c.next_after(at("2024-03-29T12:00:00Z")),
            Some(at("2024-03-30T08:00:00Z"))
        );
        assert_eq!(
            c.next_after(at("2024-03-30T12:00:00Z")),
            Some(at("2024-03-31T07:00:00Z"))
        );
        let utc = Calendar::parse("0 9 * * *", DEFAULT_TIME_ZONE).unwrap();
        assert_eq!(
            utc.next_after(at("2024-03-30T12:00:00Z")),
            Some(at("2024-03-31T09:00:00Z"))
        );
    }

    #[test]
    fn seconds_are_optional_and_bad_input_says_how_to_write_it() {
        let every_second = Calendar::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second.next_after(at("2024-01-01T00:00:00.500Z")),
            Some(at("2024-01-01T00:00:01Z"))
        );
        let e = Calendar::parse("61 * * * *", "UTC")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid cron expression") && e.contains("five fields"),
            "{e}"
        );
        let e = Calendar::parse("* * * * *", "Mars/Olympus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown time zone \"Mars/Olympus\""), "{e}");
        let e = Calendar::parse("0 0 30 2 *", "UTC")
            .unwrap_err()
            .to_string();
        assert!(e.contains("never comes due"), "{e}");
    }

    #[test]
    fn only_the_latest_due_slot_is_handled_and_missed_ones_are_told_apart() {
        let c = Calendar::parse("* * * * * *", "UTC").unwrap();
        let handled = at("2024-01-01T00:00:00Z");
        let started = at("2024-01-01T00:00:05.200Z");
        // Nothing new.
        assert_eq!(
            c.due(handled, at("2024-01-01T00:00:00.900Z"), started),
            None
        );
        // Down from 00:00:00 to 00:00:05.2: five slots fold into 00:00:05,
        // which came due before the start.
        let d = c
            .due(handled, at("2024-01-01T00:00:05.300Z"), started)
            .unwrap();
        assert_eq!(d.slot, at("2024-01-01T00:00:05Z"));
        assert!(d.missed && d.folded);
        // On time.
        let d = c
            .due(d.slot, at("2024-01-01T00:00:06.010Z"), started)
            .unwrap();
        assert_eq!(d.slot, at("2024-01-01T00:00:06Z"));
        assert!(!d.missed && !d.folded);
    }
}
