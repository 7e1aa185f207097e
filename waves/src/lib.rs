//! Rollout gating: host seeds, wave schedules, readiness and eligibility times, wave policy
//! files, fleet simulation. Pure logic, no I/O.
//!
//! # Seeds and waves
//!
//! Every host carries a [`Seed`] in `0..=2047`, chosen once at random. A [`WaveSchedule`] (the
//! `waves` object of a Bottlerocket `manifest.json`) maps *seed bounds* to start times. A host
//! belongs to the wave whose bound is the smallest bound `>=` its seed:
//!
//! - no waves at all: the host is ready now ([`WaveSchedule::ready_at`] returns `None`);
//! - a seed at or below the first bound (seed 0 when bound 0 exists) is ready when the first wave
//!   starts;
//! - a seed between two bounds `lower < seed <= upper` is spread over the time between the start
//!   of `lower`'s wave (`start`) and the start of `upper`'s wave (`end`);
//! - a seed past the last bound is ready when the last wave starts.
//!
//! # Spreading inside a wave: offset from the lower bound
//!
//! Inside a wave this crate spreads hosts by their **offset from the wave's lower bound**:
//!
//! ```text
//! ready_at = start + (end - start) * (seed - lower) / (upper - lower)
//! ```
//!
//! so the first seed of a wave becomes eligible just after the wave opens and the last seed at
//! the wave's end, evenly in between.
//!
//! The reference implementation (Bottlerocket's `update_metadata`) computes
//! `start + per_seed * seed` with `per_seed = (end - start) / (upper - lower)` and the **absolute**
//! seed. For every wave whose lower bound is not 0 that lands past the wave's end for most seeds,
//! so they all become eligible at the same instant, when the wave ends. With the built-in default
//! policy ([`WavePolicy::default_policy`], bounds 0, 20, 102, 307, 819, 1228, 1843 at 1 h, 4 h,
//! 1 d, 2 d, 4 d, 5 d, 6 d) the numbers are (checked by the unit test
//! `reference_formula_bunches_hosts_at_wave_end`):
//!
//! | wave's seeds | opens .. ends | reference: first seed eligible | reference: seeds within a minute of the wave's end | here: first seed eligible |
//! |---|---|---|---|---|
//! | 1..=20 | 1 h .. 4 h | +9 min | 1 of 20 | +9 min |
//! | 21..=102 | 4 h .. 1 d | +5 h 07 min | 21 of 82 (26 %) | +14 min |
//! | 103..=307 | 1 d .. 2 d | +12 h 03 min | 103 of 205 (50 %) | +7 min |
//! | 308..=819 | 2 d .. 4 d | +28 h 52 min | 308 of 512 (60 %) | +5 min |
//! | 820..=1228 | 4 d .. 5 d | +24 h (the end) | 409 of 409 (100 %) | +3 min |
//! | 1229..=1843 | 5 d .. 6 d | +24 h (the end) | 615 of 615 (100 %) | +2 min |
//!
//! Here, at most the last seed or two of each wave are within a minute of its end; the rest are
//! spread evenly across the wave.
//!
//! [`WaveSchedule::reference_ready_at`] reproduces the reference's timing rule for rule (capped at
//! the wave's end, which is where the reference's readiness check lets those hosts through; a
//! seed at or below the first bound is ready at once), so the two can be compared, for example
//! with the fleet simulation in [`sim`], and so a fleet that mixes both updaters can keep one
//! clock: [`WaveTiming`] chooses between them (`wave_timing` in `updog.toml`).
//!
//! # Example
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use waves::{Seed, WavePolicy};
//!
//! let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
//! let schedule = WavePolicy::default_policy().to_schedule(start)?;
//! // Seed 0 is in the first wave, one hour after the start.
//! assert_eq!(schedule.ready_at(Seed::new(0)?), Some(start + chrono::Duration::hours(1)));
//! // The last seeds are ready when the last wave (6 days) starts.
//! assert_eq!(schedule.ready_at(Seed::MAX), Some(start + chrono::Duration::days(6)));
//! assert!(!schedule.is_ready(Seed::MAX, start + chrono::Duration::days(5)));
//! # Ok::<(), waves::Error>(())
//! ```

mod error;
pub mod policy;
mod schedule;
pub mod sim;
pub mod time;

pub use error::Error;
pub use policy::{PolicyWave, StartAfter, WavePolicy};
pub use schedule::{NotRising, Wave, WaveSchedule, WaveTiming};

use std::fmt;

/// The number of distinct seeds: seeds are `0..SEED_COUNT`.
pub const SEED_COUNT: u32 = 2048;

/// A host's rollout seed, `0..=2047`.
///
/// Out-of-range values are an error, never clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Seed(u32);

impl Seed {
    /// The lowest seed, 0.
    pub const MIN: Seed = Seed(0);
    /// The highest seed, 2047.
    pub const MAX: Seed = Seed(SEED_COUNT - 1);

    /// Checks that `value` is in `0..=2047`.
    ///
    /// ```
    /// assert_eq!(waves::Seed::new(2047).unwrap().get(), 2047);
    /// assert!(waves::Seed::new(2048).is_err());
    /// ```
    pub fn new(value: u32) -> Result<Seed, Error> {
        if value < SEED_COUNT {
            Ok(Seed(value))
        } else {
            Err(Error::SeedOutOfRange { seed: value })
        }
    }

    /// The seed as a number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Every seed, in order.
    pub fn all() -> impl Iterator<Item = Seed> {
        (0..SEED_COUNT).map(Seed)
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<u32> for Seed {
    type Error = Error;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Seed::new(value)
    }
}

impl std::str::FromStr for Seed {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value: u32 = s.trim().parse().map_err(|_| Error::BadSeed {
            value: s.to_owned(),
        })?;
        Seed::new(value)
    }
}

impl<'de> serde::Deserialize<'de> for Seed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = u32::deserialize(d)?;
        Seed::new(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_range_is_checked_not_clamped() {
        assert_eq!(Seed::new(0).unwrap().get(), 0);
        assert_eq!(Seed::new(2047).unwrap(), Seed::MAX);
        let err = Seed::new(2048).unwrap_err();
        assert!(err.to_string().contains("2048"), "{err}");
        assert!(Seed::new(u32::MAX).is_err());
        assert!("12x".parse::<Seed>().is_err());
        assert_eq!(" 17 ".parse::<Seed>().unwrap().get(), 17);
        assert!(serde_json::from_str::<Seed>("4000").is_err());
        assert_eq!(Seed::all().count(), 2048);
    }

    /// The numbers in the crate docs' comparison table.
    #[test]
    fn reference_formula_bunches_hosts_at_wave_end() {
        use chrono::{TimeZone, Utc};
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let s = WavePolicy::default_policy().to_schedule(start).unwrap();
        let waves: Vec<Wave> = s.waves().collect();
        let mut rows = Vec::new();
        for pair in waves.windows(2) {
            let (lo, hi) = (pair[0], pair[1]);
            let seeds: Vec<Seed> = (lo.bound + 1..=hi.bound)
                .map(|n| Seed::new(n).unwrap())
                .collect();
            let first_ref = s.reference_ready_at(seeds[0]).unwrap();
            let at_end = seeds
                .iter()
                .filter(|&&x| {
                    s.reference_ready_at(x).unwrap() >= hi.start - chrono::TimeDelta::minutes(1)
                })
                .count();
            let first_here = s.ready_at(seeds[0]).unwrap();
            rows.push((
                lo.bound + 1,
                hi.bound,
                (first_ref - lo.start).num_minutes(),
                at_end,
                seeds.len(),
                (first_here - lo.start).num_minutes(),
            ));
            // Here: nobody is within a minute of the end but the last seed or two.
            let here_at_end = seeds
                .iter()
                .filter(|&&x| s.ready_at(x).unwrap() >= hi.start - chrono::TimeDelta::minutes(1))
                .count();
            assert!(here_at_end <= 2, "{here_at_end}");
        }
        assert_eq!(
            rows,
            [
                (1, 20, 9, 1, 20, 9),
                (21, 102, 307, 21, 82, 14),
                (103, 307, 723, 103, 205, 7),
                (308, 819, 1732, 308, 512, 5),
                (820, 1228, 1440, 409, 409, 3),
                (1229, 1843, 1440, 615, 615, 2),
            ]
        );
    }
}
