//! Time parsing shared by manifests and policy files.
//!
//! Bottlerocket manifests in the wild contain wave times whose month or day is not zero-padded
//! (`2019-8-06T15:00:00Z`); [`parse_time`] accepts those as well as strict RFC 3339.
//! [`parse_relative`] reads the `N minutes|hours|days|weeks` form of wave policy files.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use crate::Error;

/// The longest accepted input, so hostile input cannot make us work hard.
const MAX_TIME_LEN: usize = 64;

/// Parses an RFC 3339 time, also accepting date and time fields that are not zero-padded
/// (`2019-8-6T5:00:00Z`). The result is in UTC.
///
/// ```
/// let t = waves::time::parse_time("2019-8-06T15:00:00Z").unwrap();
/// assert_eq!(waves::time::format_time(t), "2019-08-06T15:00:00Z");
/// assert!(waves::time::parse_time("2019-13-06T15:00:00Z").is_err());
/// ```
pub fn parse_time(value: &str) -> Result<DateTime<Utc>, Error> {
    let bad = |reason: &str| Error::BadTime {
        value: truncate(value),
        reason: reason.to_owned(),
    };
    if value.len() > MAX_TIME_LEN {
        return Err(bad("too long"));
    }
    match DateTime::parse_from_rfc3339(value) {
        Ok(t) => Ok(t.with_timezone(&Utc)),
        Err(strict) => {
            if let Some(padded) = pad_fields(value) {
                if let Ok(t) = DateTime::parse_from_rfc3339(&padded) {
                    return Ok(t.with_timezone(&Utc));
                }
            }
            Err(bad(&strict.to_string()))
        }
    }
}

/// Formats a time the way this project writes manifests: RFC 3339, UTC with `Z`, fractional
/// seconds only when present.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Zero-pads the one-digit month, day, hour, minute and second fields of an RFC 3339-like
/// string. Returns `None` when the string does not have the `Y-M-DTh:m:s...` shape.
fn pad_fields(value: &str) -> Option<String> {
    let sep = value.find(['T', 't', ' '])?;
    let (date, rest) = value.split_at(sep);
    let sep_char = rest.chars().next()?;
    let rest = &rest[sep_char.len_utf8()..];
    let mut date_parts = date.split('-');
    let year = date_parts.next()?;
    let month = date_parts.next()?;
    let day = date_parts.next()?;
    if date_parts.next().is_some() || year.len() != 4 {
        return None;
    }
    // The time: h:m:s followed by an optional fraction and the offset.
    let end_hms = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':'))
        .unwrap_or(rest.len());
    let (hms, tail) = rest.split_at(end_hms);
    let mut hms_parts = hms.split(':');
    let h = hms_parts.next()?;
    let m = hms_parts.next()?;
    let s = hms_parts.next()?;
    if hms_parts.next().is_some() {
        return None;
    }
    let pad = |field: &str| -> Option<String> {
        match field.len() {
            1 | 2 if field.bytes().all(|b| b.is_ascii_digit()) => Some(format!("{field:0>2}")),
            _ => None,
        }
    };
    Some(format!(
        "{year}-{}-{}T{}:{}:{}{tail}",
        pad(month)?,
        pad(day)?,
        pad(h)?,
        pad(m)?,
        pad(s)?
    ))
}

/// Parses a relative duration: `N minute(s)|hour(s)|day(s)|week(s)`, optionally prefixed with
/// `in` (`in 4 hours`). `N` is a whole number; the duration is at most about 100 years.
///
/// ```
/// use chrono::TimeDelta;
/// assert_eq!(waves::time::parse_relative("in 4 hours").unwrap(), TimeDelta::hours(4));
/// assert_eq!(waves::time::parse_relative("1 day").unwrap(), TimeDelta::days(1));
/// assert!(waves::time::parse_relative("4 fortnights").is_err());
/// ```
pub fn parse_relative(value: &str) -> Result<TimeDelta, Error> {
    let bad = || Error::BadStartAfter {
        value: truncate(value),
    };
    if value.len() > MAX_TIME_LEN {
        return Err(bad());
    }
    let mut words = value.split_whitespace();
    let mut first = words.next().ok_or_else(bad)?;
    if first.eq_ignore_ascii_case("in") {
        first = words.next().ok_or_else(bad)?;
    }
    let unit = words.next().ok_or_else(bad)?;
    if words.next().is_some() {
        return Err(bad());
    }
    let n: i64 = first.parse::<u32>().map_err(|_| bad())?.into();
    let unit = unit.to_ascii_lowercase();
    let delta = match unit.strip_suffix('s').unwrap_or(&unit) {
        "minute" => TimeDelta::try_minutes(n),
        "hour" => TimeDelta::try_hours(n),
        "day" => TimeDelta::try_days(n),
        "week" => TimeDelta::try_weeks(n),
        _ => None,
    };
    delta.filter(|d| *d <= MAX_RELATIVE).ok_or_else(bad)
}

/// The longest relative duration accepted: about 100 years.
const MAX_RELATIVE: TimeDelta = TimeDelta::days(36_525);

/// Parses either a relative duration (see [`parse_relative`]) counted from `now`, or an
/// absolute RFC 3339 time (see [`parse_time`]).
///
/// ```
/// use chrono::{TimeDelta, TimeZone, Utc};
/// let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
/// assert_eq!(waves::time::parse_time_or_relative("in 2 days", now).unwrap(), now + TimeDelta::days(2));
/// ```
pub fn parse_time_or_relative(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    match parse_relative(value) {
        Ok(delta) => now
            .checked_add_signed(delta)
            .ok_or_else(|| Error::TimeOverflow {
                what: format!("{now} + {value:?}"),
            }),
        Err(relative_err) => parse_time(value).map_err(|_| relative_err),
    }
}

/// Shortens hostile input before it goes into an error message.
fn truncate(value: &str) -> String {
    if value.len() <= MAX_TIME_LEN {
        return value.to_owned();
    }
    let mut end = MAX_TIME_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &value[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn unpadded_dates_parse_like_padded_ones() {
        let want = Utc.with_ymd_and_hms(2019, 8, 6, 15, 0, 0).unwrap();
        for s in [
            "2019-08-06T15:00:00Z",
            "2019-8-06T15:00:00Z",
            "2019-8-6T15:00:00Z",
            "2019-08-6T15:0:0Z",
            "2019-8-6T17:00:00+02:00",
        ] {
            assert_eq!(parse_time(s).unwrap(), want, "{s}");
        }
        let frac = parse_time("2019-8-6T15:00:00.5Z").unwrap();
        assert_eq!(format_time(frac), "2019-08-06T15:00:00.500Z");
    }

    #[test]
    fn bad_times_are_errors_naming_the_value() {
        for s in [
            "",
            "2019",
            "2019-8-6",
            "2019-8-32T15:00:00Z",
            "2019-008-06T15:00:00Z",
            "19-8-6T15:00:00Z",
            "2019-8-6T15:00:00",
            "2019-8-6T15:00:00Zjunk",
            "2019-8-6T15:00:00:00Z",
            "2019-ß-6T15:00:00Z",
        ] {
            let err = parse_time(s).unwrap_err();
            assert!(err.to_string().contains(&format!("{s:?}")), "{err}");
        }
        let long = "9".repeat(10_000);
        assert!(parse_time(&long).unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn relative_durations() {
        assert_eq!(
            parse_relative("30 minutes").unwrap(),
            TimeDelta::minutes(30)
        );
        assert_eq!(parse_relative("1 minute").unwrap(), TimeDelta::minutes(1));
        assert_eq!(parse_relative("In 2 Weeks").unwrap(), TimeDelta::weeks(2));
        assert_eq!(parse_relative("  6   days ").unwrap(), TimeDelta::days(6));
        for s in [
            "",
            "in",
            "in 4",
            "4",
            "-4 hours",
            "4.5 hours",
            "4 hours ago",
            "four hours",
        ] {
            assert!(parse_relative(s).is_err(), "{s}");
        }
        // Huge numbers are an error, not an overflow panic.
        assert!(parse_relative("4294967295 weeks").is_err());
        assert!(parse_relative("5217 weeks").is_ok());
        assert!(parse_relative("5218 weeks").is_err());
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(
            parse_time_or_relative("2026-2-1T00:00:00Z", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()
        );
        assert!(parse_time_or_relative("tomorrow", now).is_err());
    }
}
