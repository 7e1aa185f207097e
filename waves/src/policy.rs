//! Wave policy files: a publisher-friendly description of a rollout that turns into a
//! [`WaveSchedule`] once a start time is known.
//!
//! ```toml
//! [[waves]]
//! start_after = "1 hour"      # or "in 1 hour", or an RFC 3339 time
//! fleet_percentage = 1
//!
//! [[waves]]
//! start_after = "4 hours"
//! fleet_percentage = 5
//! ```
//!
//! The first wave gets seed bound 0; each next wave's bound is
//! `floor(previous_percentage / 100 * 2048)`. Percentages must rise and stay within `1..=100`;
//! start times must rise. Each violation is an error naming the (1-based) wave.

use chrono::{DateTime, TimeDelta, Utc};

use crate::time::{format_time, parse_relative, parse_time};
use crate::{Error, SEED_COUNT, WaveSchedule};

/// The reference system's default policy, as a policy file.
pub const DEFAULT_POLICY_TOML: &str = r#"# The default rollout: 1% of the fleet after an hour, everyone within 6 days.
[[waves]]
start_after = "1 hour"
fleet_percentage = 1

[[waves]]
start_after = "4 hours"
fleet_percentage = 5

[[waves]]
start_after = "1 day"
fleet_percentage = 15

[[waves]]
start_after = "2 days"
fleet_percentage = 40

[[waves]]
start_after = "4 days"
fleet_percentage = 60

[[waves]]
start_after = "5 days"
fleet_percentage = 90

[[waves]]
start_after = "6 days"
fleet_percentage = 100
"#;

/// When a policy wave opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAfter {
    /// This long after the rollout's start time.
    Relative(TimeDelta),
    /// At this time, whatever the start.
    Absolute(DateTime<Utc>),
}

impl StartAfter {
    /// Parses `N minutes|hours|days|weeks` (optionally `in N ...`) or an RFC 3339 time.
    pub fn parse(value: &str) -> Result<StartAfter, Error> {
        match parse_relative(value) {
            Ok(d) => Ok(StartAfter::Relative(d)),
            Err(relative_err) => parse_time(value)
                .map(StartAfter::Absolute)
                .map_err(|_| relative_err),
        }
    }

    /// The wave's start time for a rollout starting at `start`.
    pub fn resolve(self, start: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
        match self {
            StartAfter::Absolute(t) => Ok(t),
            StartAfter::Relative(d) => {
                start
                    .checked_add_signed(d)
                    .ok_or_else(|| Error::TimeOverflow {
                        what: format!("{} + {d}", format_time(start)),
                    })
            }
        }
    }
}

/// One wave of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyWave {
    /// When it opens.
    pub start_after: StartAfter,
    /// The share of the fleet (in percent, `1..=100`) that may update once this wave is over.
    pub fleet_percentage: u32,
}

/// A validated wave policy (at least one wave, rising percentages within `1..=100`, rising
/// relative start times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavePolicy {
    waves: Vec<PolicyWave>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    waves: Vec<RawWave>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    start_after: String,
    fleet_percentage: u32,
}

impl WavePolicy {
    /// The reference system's default policy: 1 hour/1%, 4 hours/5%, 1 day/15%, 2 days/40%,
    /// 4 days/60%, 5 days/90%, 6 days/100% (bounds 0, 20, 102, 307, 819, 1228, 1843).
    pub fn default_policy() -> WavePolicy {
        let hours = [1, 4, 24, 48, 96, 120, 144];
        let percentages = [1, 5, 15, 40, 60, 90, 100];
        WavePolicy {
            waves: hours
                .iter()
                .zip(percentages)
                .map(|(&h, p)| PolicyWave {
                    start_after: StartAfter::Relative(TimeDelta::hours(h)),
                    fleet_percentage: p,
                })
                .collect(),
        }
    }

    /// Parses and validates a policy file.
    ///
    /// ```
    /// let policy = waves::WavePolicy::from_toml_str(
    ///     "[[waves]]\nstart_after = \"in 2 hours\"\nfleet_percentage = 50\n\n\
    ///      [[waves]]\nstart_after = \"1 day\"\nfleet_percentage = 100\n",
    /// )?;
    /// assert_eq!(policy.bounds(), vec![0, 1024]);
    /// # Ok::<(), waves::Error>(())
    /// ```
    pub fn from_toml_str(text: &str) -> Result<WavePolicy, Error> {
        let raw: RawPolicy = toml::from_str(text).map_err(|source| Error::PolicyToml { source })?;
        let mut waves = Vec::with_capacity(raw.waves.len().min(100));
        for (i, w) in raw.waves.iter().enumerate() {
            let start_after =
                StartAfter::parse(&w.start_after).map_err(|e| Error::PolicyStartAfter {
                    wave: i + 1,
                    source: Box::new(e),
                })?;
            waves.push(PolicyWave {
                start_after,
                fleet_percentage: w.fleet_percentage,
            });
        }
        WavePolicy::new(waves)
    }

    /// Validates a list of waves into a policy.
    pub fn new(waves: Vec<PolicyWave>) -> Result<WavePolicy, Error> {
        if waves.is_empty() {
            return Err(Error::PolicyEmpty);
        }
        let mut prev_pct: Option<u32> = None;
        let mut prev_rel: Option<TimeDelta> = None;
        for (i, w) in waves.iter().enumerate() {
            let wave = i + 1;
            let percentage = w.fleet_percentage;
            if !(1..=100).contains(&percentage) {
                return Err(Error::PercentageOutOfRange { wave, percentage });
            }
            if let Some(previous) = prev_pct {
                if percentage <= previous {
                    return Err(Error::PercentageNotRising {
                        wave,
                        percentage,
                        previous,
                    });
                }
            }
            prev_pct = Some(percentage);
            // Relative times can be checked now; absolute ones once the start is known.
            if let StartAfter::Relative(d) = w.start_after {
                if let Some(p) = prev_rel {
                    if d <= p {
                        let origin = DateTime::<Utc>::UNIX_EPOCH;
                        return Err(Error::StartNotRising {
                            wave,
                            at: origin + d,
                            previous: origin + p,
                        });
                    }
                }
                prev_rel = Some(d);
            }
        }
        Ok(WavePolicy { waves })
    }

    /// The waves, in order.
    pub fn waves(&self) -> &[PolicyWave] {
        &self.waves
    }

    /// The seed bound of each wave: 0 for the first, then
    /// `floor(previous_percentage / 100 * 2048)`.
    pub fn bounds(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.waves.len());
        let mut prev = None;
        for w in &self.waves {
            out.push(prev.map_or(0, |p: u32| p * SEED_COUNT / 100));
            prev = Some(w.fleet_percentage);
        }
        out
    }

    /// The schedule for a rollout starting at `start`. Errors when absolute and relative start
    /// times together do not rise, naming the wave.
    ///
    /// ```
    /// use chrono::{TimeDelta, TimeZone, Utc};
    /// let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    /// let s = waves::WavePolicy::default_policy().to_schedule(start)?;
    /// let bounds: Vec<u32> = s.waves().map(|w| w.bound).collect();
    /// assert_eq!(bounds, [0, 20, 102, 307, 819, 1228, 1843]);
    /// assert_eq!(s.get(1843), Some(start + TimeDelta::days(6)));
    /// # Ok::<(), waves::Error>(())
    /// ```
    pub fn to_schedule(&self, start: DateTime<Utc>) -> Result<WaveSchedule, Error> {
        let mut schedule = WaveSchedule::new();
        let mut prev: Option<DateTime<Utc>> = None;
        for (i, (w, bound)) in self.waves.iter().zip(self.bounds()).enumerate() {
            let at = w
                .start_after
                .resolve(start)
                .map_err(|e| Error::PolicyStartAfter {
                    wave: i + 1,
                    source: Box::new(e),
                })?;
            if let Some(previous) = prev {
                if at <= previous {
                    return Err(Error::StartNotRising {
                        wave: i + 1,
                        at,
                        previous,
                    });
                }
            }
            prev = Some(at);
            schedule.insert(bound, at);
        }
        Ok(schedule)
    }
}

impl Default for WavePolicy {
    fn default() -> Self {
        WavePolicy::default_policy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::fmt::Write as _;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    fn policy(waves: &[(&str, u32)]) -> Result<WavePolicy, Error> {
        let mut text = String::new();
        for (after, pct) in waves {
            let _ = write!(
                text,
                "[[waves]]\nstart_after = {after:?}\nfleet_percentage = {pct}\n\n"
            );
        }
        WavePolicy::from_toml_str(&text)
    }

    #[test]
    fn default_policy_matches_its_file_and_the_reference_bounds() {
        let parsed = WavePolicy::from_toml_str(DEFAULT_POLICY_TOML).unwrap();
        assert_eq!(parsed, WavePolicy::default_policy());
        assert_eq!(parsed.bounds(), [0, 20, 102, 307, 819, 1228, 1843]);
        let s = parsed.to_schedule(start()).unwrap();
        let hours: Vec<i64> = s.waves().map(|w| (w.start - start()).num_hours()).collect();
        assert_eq!(hours, [1, 4, 24, 48, 96, 120, 144]);
        assert!(s.problems().is_empty());
    }

    #[test]
    fn absolute_and_relative_start_times_mix() {
        let p = policy(&[
            ("in 30 minutes", 10),
            ("2026-3-2T00:00:00Z", 50),
            ("2 weeks", 100),
        ])
        .unwrap();
        let s = p.to_schedule(start()).unwrap();
        assert_eq!(p.bounds(), [0, 204, 1024]);
        assert_eq!(s.get(0), Some(start() + TimeDelta::minutes(30)));
        assert_eq!(
            s.get(204),
            Some(Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap())
        );
        assert_eq!(s.get(1024), Some(start() + TimeDelta::weeks(2)));
        // The same policy started later puts the absolute wave before the first one.
        let err = p.to_schedule(start() + TimeDelta::days(1)).unwrap_err();
        assert!(
            matches!(err, Error::StartNotRising { wave: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("wave 2:"), "{err}");
    }

    #[test]
    fn each_violation_names_the_wave() {
        let cases: &[(&[(&str, u32)], &str)] = &[
            (&[("1 hour", 0)], "wave 1: fleet_percentage 0"),
            (
                &[("1 hour", 10), ("2 hours", 101)],
                "wave 2: fleet_percentage 101",
            ),
            (
                &[("1 hour", 10), ("2 hours", 10)],
                "wave 2: fleet_percentage 10 does not rise",
            ),
            (
                &[("1 hour", 10), ("2 hours", 20), ("3 hours", 15)],
                "wave 3: fleet_percentage 15",
            ),
            (&[("1 hour", 10), ("1 hour", 20)], "wave 2: starts at"),
            (&[("1 day", 10), ("2 hours", 20)], "wave 2: starts at"),
            (&[("1 hour", 10), ("soon", 20)], "wave 2: start_after"),
        ];
        for (waves, needle) in cases {
            let err = policy(waves).unwrap_err();
            assert!(err.to_string().contains(needle), "{waves:?}: {err}");
        }
    }

    #[test]
    fn malformed_files_are_errors() {
        for text in [
            "",
            "waves = []",
            "[[waves]]\nstart_after = \"1 hour\"\n",
            "[[waves]]\nfleet_percentage = 5\n",
            "[[waves]]\nstart_after = 1\nfleet_percentage = 5\n",
            "[[waves]]\nstart_after = \"1 hour\"\nfleet_percentage = -5\n",
            "[[waves]]\nstart_after = \"1 hour\"\nfleet_percentage = 5\nfleet_percent = 5\n",
            "[[waves]\n",
        ] {
            assert!(WavePolicy::from_toml_str(text).is_err(), "{text:?}");
        }
        assert!(matches!(
            WavePolicy::from_toml_str("waves = []"),
            Err(Error::PolicyEmpty)
        ));
    }

    #[test]
    fn start_overflow_is_an_error() {
        let p = policy(&[("5000 weeks", 100)]).unwrap();
        assert!(p.to_schedule(DateTime::<Utc>::MAX_UTC).is_err());
    }
}
