use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;

use crate::Seed;
use crate::time::{format_time, parse_time};

/// How a host's eligibility time inside a wave is computed (`wave_timing` in `updog.toml`).
///
/// See the crate docs for why the two differ. Parses from and serializes as `"offset"` or
/// `"reference"`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WaveTiming {
    /// Spread by the seed's offset from the wave's lower bound ([`WaveSchedule::ready_at`]).
    #[default]
    Offset,
    /// Bottlerocket's updater's timing ([`WaveSchedule::reference_ready_at`]).
    Reference,
}

impl fmt::Display for WaveTiming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WaveTiming::Offset => "offset",
            WaveTiming::Reference => "reference",
        })
    }
}

/// One wave of a schedule: hosts with seeds up to `bound` may update from `start` on (see the
/// crate docs for how seeds between two bounds are spread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wave {
    /// The wave's seed bound (a key of the manifest's `waves` object).
    pub bound: u32,
    /// When the wave opens.
    pub start: DateTime<Utc>,
}

/// Two consecutive waves whose start times do not rise with their bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "wave {bound} starts at {start}, not after wave {previous_bound} ({previous_start}): wave times must rise with their bounds"
)]
pub struct NotRising {
    /// The later bound.
    pub bound: u32,
    /// Its start time.
    pub start: DateTime<Utc>,
    /// The previous (lower) bound.
    pub previous_bound: u32,
    /// Its start time, at or after `start`.
    pub previous_start: DateTime<Utc>,
}

/// A rollout schedule: seed bounds mapped to the time their wave opens.
///
/// This is the `waves` object of a Bottlerocket `manifest.json` (`{"<bound>": "<RFC 3339>"}`), and
/// it (de)serializes as exactly that: keys are u32 seed bounds (any u32; bounds above 2047 are
/// legal and simply never the lower bound of a real seed), unique, written as decimal strings;
/// times accept non-zero-padded fields (`2019-8-06T15:00:00Z`). Deserialization errors name the
/// offending key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaveSchedule {
    waves: BTreeMap<u32, DateTime<Utc>>,
}

impl WaveSchedule {
    /// An empty schedule: every host is ready at once.
    pub fn new() -> WaveSchedule {
        WaveSchedule::default()
    }

    /// Adds or replaces a wave; returns the start it replaced.
    pub fn insert(&mut self, bound: u32, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.waves.insert(bound, start)
    }

    /// Removes a wave; returns its start.
    pub fn remove(&mut self, bound: u32) -> Option<DateTime<Utc>> {
        self.waves.remove(&bound)
    }

    /// The start of the wave with this bound.
    pub fn get(&self, bound: u32) -> Option<DateTime<Utc>> {
        self.waves.get(&bound).copied()
    }

    /// The waves, by rising bound.
    pub fn waves(&self) -> impl DoubleEndedIterator<Item = Wave> + ExactSizeIterator + '_ {
        self.waves
            .iter()
            .map(|(&bound, &start)| Wave { bound, start })
    }

    /// The number of waves.
    pub fn len(&self) -> usize {
        self.waves.len()
    }

    /// Whether there are no waves (every host is ready at once).
    pub fn is_empty(&self) -> bool {
        self.waves.is_empty()
    }

    /// The wave with the highest bound.
    pub fn last_wave(&self) -> Option<Wave> {
        self.waves().next_back()
    }

    /// The wave with the lowest bound.
    pub fn first_wave(&self) -> Option<Wave> {
        self.waves().next()
    }

    /// The earliest and latest start times of all waves.
    pub fn time_range(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let min = self.waves.values().min()?;
        let max = self.waves.values().max()?;
        Some((*min, *max))
    }

    /// When a host with this seed may update; `None` means "now": the schedule has no waves.
    ///
    /// Seeds at or below the first bound are ready when the first wave opens; seeds past the last
    /// bound when the last wave opens; seeds between two bounds are spread by their offset from
    /// the lower bound (see the crate docs).
    ///
    /// ```
    /// use chrono::{TimeDelta, TimeZone, Utc};
    /// use waves::{Seed, WaveSchedule};
    ///
    /// let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    /// let mut s = WaveSchedule::new();
    /// assert_eq!(s.ready_at(Seed::new(5)?), None);
    /// s.insert(0, t0);
    /// s.insert(100, t0 + TimeDelta::hours(10));
    /// assert_eq!(s.ready_at(Seed::new(0)?), Some(t0));
    /// assert_eq!(s.ready_at(Seed::new(50)?), Some(t0 + TimeDelta::hours(5)));
    /// assert_eq!(s.ready_at(Seed::new(2000)?), Some(t0 + TimeDelta::hours(10)));
    /// # Ok::<(), waves::Error>(())
    /// ```
    pub fn ready_at(&self, seed: Seed) -> Option<DateTime<Utc>> {
        self.ready_at_with(seed, interpolate)
    }

    /// Whether a host with this seed may update at `now`.
    pub fn is_ready(&self, seed: Seed, now: DateTime<Utc>) -> bool {
        self.ready_at(seed).is_none_or(|at| at <= now)
    }

    /// When a host with this seed may update under `timing`: [`WaveTiming::Offset`] is
    /// [`WaveSchedule::ready_at`], [`WaveTiming::Reference`] is
    /// [`WaveSchedule::reference_ready_at`].
    pub fn ready_at_timing(&self, seed: Seed, timing: WaveTiming) -> Option<DateTime<Utc>> {
        match timing {
            WaveTiming::Offset => self.ready_at(seed),
            WaveTiming::Reference => self.reference_ready_at(seed),
        }
    }

    /// The eligibility time Bottlerocket's updater (`update_metadata::Update::update_ready`)
    /// gives this seed, so a fleet that mixes both updaters can roll out on one clock
    /// (`wave_timing = "reference"` in `updog.toml`). `None` means "ready now". Its rules:
    ///
    /// - no waves, or no wave bound in `seed..=2048` and none below the seed: ready now;
    /// - no bound below the seed (the "initial" wave, for example seed 0 with a bound 0): ready
    ///   now, whatever the first wave's time;
    /// - no bound in `seed..=2048` (the last wave; bounds above 2048 are ignored here): ready
    ///   when the highest bound below the seed opens;
    /// - otherwise, between `lower < seed <= upper`: `start + (end - start) / (upper - lower) *
    ///   seed` with the **absolute** seed, but never before `start` and never after `end`
    ///   (the reference lets everyone in once the next wave opens).
    ///
    /// ```
    /// use chrono::{TimeDelta, TimeZone, Utc};
    /// use waves::{Seed, WaveSchedule};
    ///
    /// let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    /// let mut s = WaveSchedule::new();
    /// s.insert(0, t0);
    /// s.insert(100, t0 + TimeDelta::hours(10));
    /// s.insert(200, t0 + TimeDelta::hours(20));
    /// // Seed 0 is in the "initial" wave: ready now, even before t0.
    /// assert_eq!(s.reference_ready_at(Seed::new(0)?), None);
    /// // Seed 50, between bounds 0 and 100: 50 steps of 10 h / 100 (as with `ready_at`).
    /// assert_eq!(s.reference_ready_at(Seed::new(50)?), Some(t0 + TimeDelta::hours(5)));
    /// // Seed 150, between 100 and 200: 150 steps of 10 h / 100 from 10 h is past the wave's
    /// // end, so it waits for 20 h, where `ready_at` gives 15 h.
    /// assert_eq!(s.reference_ready_at(Seed::new(150)?), Some(t0 + TimeDelta::hours(20)));
    /// assert_eq!(s.ready_at(Seed::new(150)?), Some(t0 + TimeDelta::hours(15)));
    /// # Ok::<(), waves::Error>(())
    /// ```
    pub fn reference_ready_at(&self, seed: Seed) -> Option<DateTime<Utc>> {
        let s = seed.get();
        let lower = self.waves.range(..s).next_back();
        let upper = self.waves.range(s..=crate::SEED_COUNT).next();
        match (lower, upper) {
            (None, _) => None,
            (Some((_, &start)), None) => Some(start),
            (Some((&lo, &start)), Some((&hi, &end))) => {
                let span = end
                    .signed_duration_since(start)
                    .num_nanoseconds()
                    .map_or_else(
                        || {
                            i128::from(end.signed_duration_since(start).num_milliseconds())
                                * 1_000_000
                        },
                        i128::from,
                    );
                let per_seed = span / i128::from(hi - lo);
                let target = add_nanos(start, per_seed * i128::from(s)).unwrap_or(end);
                Some(target.max(start).min(end))
            }
        }
    }

    fn ready_at_with(
        &self,
        seed: Seed,
        spread: impl Fn(DateTime<Utc>, DateTime<Utc>, u32, u32, u32) -> DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let s = seed.get();
        let lower = self.waves.range(..s).next_back();
        let upper = self.waves.range(s..).next();
        match (lower, upper) {
            (_, None) => self.waves.last_key_value().map(|(_, &t)| t),
            (None, Some((_, &t))) => Some(t),
            (Some((&lo, &start)), Some((&hi, &end))) => {
                Some(spread(start, end, s - lo, hi - lo, s))
            }
        }
    }

    /// Consecutive waves whose start times do not rise with their bounds (a later bound that
    /// starts at or before an earlier one). Empty for a well-formed schedule.
    pub fn problems(&self) -> Vec<NotRising> {
        let mut out = Vec::new();
        let mut prev: Option<Wave> = None;
        for wave in self.waves() {
            if let Some(p) = prev {
                if wave.start <= p.start {
                    out.push(NotRising {
                        bound: wave.bound,
                        start: wave.start,
                        previous_bound: p.bound,
                        previous_start: p.start,
                    });
                }
            }
            prev = Some(wave);
        }
        out
    }

    /// The underlying map, bound to start time.
    pub fn as_map(&self) -> &BTreeMap<u32, DateTime<Utc>> {
        &self.waves
    }
}

impl From<BTreeMap<u32, DateTime<Utc>>> for WaveSchedule {
    fn from(waves: BTreeMap<u32, DateTime<Utc>>) -> Self {
        WaveSchedule { waves }
    }
}

impl FromIterator<(u32, DateTime<Utc>)> for WaveSchedule {
    fn from_iter<I: IntoIterator<Item = (u32, DateTime<Utc>)>>(iter: I) -> Self {
        WaveSchedule {
            waves: iter.into_iter().collect(),
        }
    }
}

/// `start + (end - start) * offset / width`, exact at `offset == width`.
fn interpolate(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    offset: u32,
    width: u32,
    _seed: u32,
) -> DateTime<Utc> {
    if offset >= width {
        return end;
    }
    let span = i128::from(end.signed_duration_since(start).num_milliseconds());
    add_millis(start, span * i128::from(offset) / i128::from(width.max(1))).unwrap_or(end)
}

fn add_nanos(t: DateTime<Utc>, ns: i128) -> Option<DateTime<Utc>> {
    let ns = i64::try_from(ns).ok()?;
    t.checked_add_signed(TimeDelta::nanoseconds(ns))
}

fn add_millis(t: DateTime<Utc>, ms: i128) -> Option<DateTime<Utc>> {
    let ms = i64::try_from(ms).ok()?;
    t.checked_add_signed(TimeDelta::try_milliseconds(ms)?)
}

impl serde::Serialize for WaveSchedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.waves.len()))?;
        for (bound, start) in &self.waves {
            map.serialize_entry(&bound.to_string(), &format_time(*start))?;
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for WaveSchedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ScheduleVisitor)
    }
}

struct ScheduleVisitor;

impl<'de> Visitor<'de> for ScheduleVisitor {
    type Value = WaveSchedule;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of seed bounds (u32 strings) to RFC 3339 times")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WaveSchedule, A::Error> {
        use serde::de::Error as _;
        let mut waves = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let shown: String = key.chars().take(40).collect();
            let bound = parse_bound(&key).ok_or_else(|| {
                A::Error::custom(format!(
                    "wave key {shown:?} is not a seed bound: expected a u32 such as \"0\" or \"1843\""
                ))
            })?;
            let value = map.next_value::<String>().map_err(|e| {
                A::Error::custom(format!(
                    "wave key {shown:?}: expected an RFC 3339 time: {e}"
                ))
            })?;
            let start = parse_time(&value)
                .map_err(|e| A::Error::custom(format!("wave key {shown:?}: {e}")))?;
            if waves.insert(bound, start).is_some() {
                return Err(A::Error::custom(format!(
                    "duplicate wave key {shown:?} (bound {bound}): wave keys must be unique"
                )));
            }
        }
        Ok(WaveSchedule { waves })
    }
}

/// A wave key: decimal digits only (no sign, no spaces), fitting in u32.
fn parse_bound(key: &str) -> Option<u32> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    fn seed(n: u32) -> Seed {
        Seed::new(n).unwrap()
    }

    #[test]
    fn no_waves_means_ready_now() {
        let s = WaveSchedule::new();
        assert_eq!(s.ready_at(seed(0)), None);
        assert!(s.is_ready(seed(2047), DateTime::<Utc>::MIN_UTC));
    }

    #[test]
    fn spread_by_offset_from_lower_bound() {
        let s: WaveSchedule = [
            (0, t0()),
            (20, t0() + TimeDelta::hours(20)),
            (120, t0() + TimeDelta::hours(120)),
        ]
        .into_iter()
        .collect();
        assert_eq!(s.ready_at(seed(0)), Some(t0()));
        assert_eq!(s.ready_at(seed(1)), Some(t0() + TimeDelta::hours(1)));
        assert_eq!(s.ready_at(seed(20)), Some(t0() + TimeDelta::hours(20)));
        // Second wave: 100 seeds over 100 hours, the first one hour after the wave opens.
        assert_eq!(s.ready_at(seed(21)), Some(t0() + TimeDelta::hours(21)));
        assert_eq!(s.ready_at(seed(70)), Some(t0() + TimeDelta::hours(70)));
        assert_eq!(s.ready_at(seed(120)), Some(t0() + TimeDelta::hours(120)));
        // Past the last bound: the last wave's start.
        assert_eq!(s.ready_at(seed(121)), Some(t0() + TimeDelta::hours(120)));
        assert_eq!(s.ready_at(Seed::MAX), Some(t0() + TimeDelta::hours(120)));
        assert!(!s.is_ready(seed(70), t0() + TimeDelta::hours(69)));
        assert!(s.is_ready(seed(70), t0() + TimeDelta::hours(70)));
    }

    #[test]
    fn seeds_below_a_nonzero_first_bound_wait_for_the_first_wave() {
        let s: WaveSchedule = [(100, t0()), (200, t0() + TimeDelta::hours(1))]
            .into_iter()
            .collect();
        assert_eq!(s.ready_at(seed(0)), Some(t0()));
        assert_eq!(s.ready_at(seed(100)), Some(t0()));
        assert_eq!(s.ready_at(seed(150)), Some(t0() + TimeDelta::minutes(30)));
    }

    #[test]
    fn huge_bounds_are_fine() {
        let s: WaveSchedule = [(0, t0()), (858_993_459, t0() + TimeDelta::days(1))]
            .into_iter()
            .collect();
        let at = s.ready_at(Seed::MAX).unwrap();
        assert!(at > t0() && at < t0() + TimeDelta::seconds(1), "{at}");
        let s: WaveSchedule = [(0, t0()), (u32::MAX, DateTime::<Utc>::MAX_UTC)]
            .into_iter()
            .collect();
        assert!(s.ready_at(Seed::MAX).is_some());
        let s: WaveSchedule = [
            (0, DateTime::<Utc>::MAX_UTC),
            (3000, DateTime::<Utc>::MIN_UTC),
        ]
        .into_iter()
        .collect();
        assert!(s.ready_at(Seed::MAX).is_some());
        assert!(s.reference_ready_at(Seed::MAX).is_some());
        assert_eq!(s.problems().len(), 1);
    }

    #[test]
    fn problems_name_both_waves() {
        let s: WaveSchedule = [
            (0, t0()),
            (10, t0() + TimeDelta::hours(2)),
            (20, t0() + TimeDelta::hours(1)),
            (30, t0() + TimeDelta::hours(1)),
        ]
        .into_iter()
        .collect();
        let p = s.problems();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].previous_bound, p[0].bound), (10, 20));
        assert_eq!((p[1].previous_bound, p[1].bound), (20, 30));
        assert!(p[0].to_string().contains("wave 20"), "{}", p[0]);
    }

    #[test]
    fn serde_round_trip_and_errors_name_the_key() {
        let json = r#"{"0":"2019-8-06T15:00:00Z","858993459":"2019-08-07T15:00:00Z","legacy":1}"#;
        let err = serde_json::from_str::<WaveSchedule>(json).unwrap_err();
        assert!(err.to_string().contains("\"legacy\""), "{err}");

        let json = r#"{"0":"2019-8-06T15:00:00Z","858993459":"2019-08-07T15:00:00Z"}"#;
        let s: WaveSchedule = serde_json::from_str(json).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"0":"2019-08-06T15:00:00Z","858993459":"2019-08-07T15:00:00Z"}"#
        );

        for (json, needle) in [
            (
                r#"{"5":"2019-08-06T15:00:00Z","5":"2019-08-07T15:00:00Z"}"#,
                "duplicate wave key \"5\"",
            ),
            (
                r#"{"5":"2019-08-06T15:00:00Z","05":"2019-08-07T15:00:00Z"}"#,
                "duplicate wave key \"05\"",
            ),
            (r#"{"4294967296":"2019-08-06T15:00:00Z"}"#, "\"4294967296\""),
            (r#"{"-1":"2019-08-06T15:00:00Z"}"#, "\"-1\""),
            (r#"{"+1":"2019-08-06T15:00:00Z"}"#, "\"+1\""),
            (r#"{"":"2019-08-06T15:00:00Z"}"#, "\"\""),
            (r#"{"7":"yesterday"}"#, "wave key \"7\""),
            (r#"{"7":17}"#, "wave key \"7\""),
            ("[]", "map"),
        ] {
            let err = serde_json::from_str::<WaveSchedule>(json).unwrap_err();
            assert!(err.to_string().contains(needle), "{json}: {err}");
        }
    }
}
