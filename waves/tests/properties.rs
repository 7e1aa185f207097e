//! Property tests: eligibility never goes backwards with the seed, everyone is in once the last
//! wave opens, and no input makes anything panic.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use std::fmt::Write as _;
use waves::sim::{Fleet, Formula, simulate};
use waves::{Seed, WavePolicy, WaveSchedule};

fn origin() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// A schedule whose times rise with the bounds: bounds are a mix of real seeds and huge u32s.
fn rising_schedule() -> impl Strategy<Value = WaveSchedule> {
    let bound = prop_oneof![4 => 0_u32..2100, 1 => any::<u32>()];
    proptest::collection::btree_set(bound, 1..12).prop_flat_map(|bounds| {
        let n = bounds.len();
        (
            Just(bounds),
            proptest::collection::vec(1_i64..10_000_000_000, n),
            -1_000_000_000_i64..1_000_000_000,
        )
            .prop_map(|(bounds, gaps, first)| {
                let mut t = origin() + TimeDelta::seconds(first);
                let mut s = WaveSchedule::new();
                for (b, gap) in bounds.into_iter().zip(gaps) {
                    s.insert(b, t);
                    t += TimeDelta::milliseconds(gap);
                }
                s
            })
    })
}

/// Any schedule at all: any bounds, any representable times, in any order.
fn any_schedule() -> impl Strategy<Value = WaveSchedule> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    proptest::collection::vec((any::<u32>(), min..=max), 0..16).prop_map(|v| {
        v.into_iter()
            .filter_map(|(b, secs)| Some((b, DateTime::from_timestamp(secs, 0)?)))
            .collect()
    })
}

proptest! {
    #[test]
    fn ready_at_never_decreases_with_the_seed(s in rising_schedule()) {
        prop_assert!(s.problems().is_empty());
        let mut prev = None;
        for seed in Seed::all() {
            let at = s.ready_at(seed);
            prop_assert!(at.is_some());
            if let Some(p) = prev {
                prop_assert!(at >= Some(p), "seed {} ready at {:?} before seed {} at {}", seed, at, seed.get() - 1, p);
            }
            prev = at;
        }
    }

    #[test]
    fn every_seed_is_ready_once_the_last_wave_starts(s in rising_schedule()) {
        let last = s.last_wave().unwrap().start;
        let first = s.first_wave().unwrap().start;
        for seed in Seed::all() {
            prop_assert!(s.is_ready(seed, last), "seed {seed} not ready at {last}");
            let at = s.ready_at(seed).unwrap();
            prop_assert!(at >= first && at <= last);
            // The reference agrees on the bracket, too (`None`: its "initial" wave, ready at
            // once).
            let Some(r) = s.reference_ready_at(seed) else {
                prop_assert!(s.waves().all(|w| w.bound >= seed.get()) || s.waves().all(|w| w.bound > 2048));
                continue;
            };
            prop_assert!(r >= first && r <= last);
            // Between two bounds of a real seed range, spreading by offset never makes a host
            // wait longer than the reference does (up to the reference's rounding of its
            // per-seed step, at most a nanosecond per seed).
            let upper = s.waves().find(|w| w.bound >= seed.get());
            let lower = s.waves().rfind(|w| w.bound < seed.get());
            if lower.is_some() && upper.is_some_and(|w| w.bound <= 2048) {
                prop_assert!(at <= r + TimeDelta::microseconds(3), "seed {seed}: {at} after the reference's {r}");
            }
        }
    }

    #[test]
    fn seed_inside_a_wave_is_between_its_bounds(s in rising_schedule(), n in 0_u32..2048) {
        let seed = Seed::new(n).unwrap();
        let at = s.ready_at(seed).unwrap();
        let lower = s.waves().rfind(|w| w.bound < n);
        let upper = s.waves().find(|w| w.bound >= n);
        if let (Some(lo), Some(hi)) = (lower, upper) {
            prop_assert!(lo.start <= at && at <= hi.start);
            if hi.bound == n {
                prop_assert_eq!(at, hi.start);
            }
        }
    }

    #[test]
    fn any_schedule_never_panics(s in any_schedule(), n in 0_u32..2048) {
        let seed = Seed::new(n).unwrap();
        let _ = s.ready_at(seed);
        let _ = s.reference_ready_at(seed);
        let _ = s.is_ready(seed, origin());
        let _ = s.problems();
        let json = serde_json::to_string(&s).unwrap();
        // RFC 3339 only has four-digit years; inside that range the JSON round-trips exactly.
        let rfc3339_years = s.waves().all(|w| (0..=9999).contains(&chrono::Datelike::year(&w.start)));
        match serde_json::from_str::<WaveSchedule>(&json) {
            Ok(back) => prop_assert_eq!(back, s.clone()),
            Err(e) => prop_assert!(!rfc3339_years, "{}", e),
        }
        let _ = simulate(&s, &Fleet::uniform(1000), DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, 50, Formula::Reference);
        let _ = waves::sim::simulate_schedule(&s, &Fleet::uniform(1000), 50);
    }

    #[test]
    fn any_text_never_panics(text in ".{0,200}") {
        let _ = waves::time::parse_time(&text);
        let _ = waves::time::parse_relative(&text);
        let _ = waves::time::parse_time_or_relative(&text, DateTime::<Utc>::MAX_UTC);
        let _ = WavePolicy::from_toml_str(&text);
        let _ = serde_json::from_str::<WaveSchedule>(&text);
        let _ = text.parse::<Seed>();
    }

    #[test]
    fn policy_shaped_text_never_panics(
        waves in proptest::collection::vec(("(in )?[0-9]{1,12} (minute|hour|day|week)s?|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}T[0-9]{1,2}:[0-9]{2}:[0-9]{2}Z", any::<u32>()), 0..8),
        start_secs in -100_000_000_000_i64..100_000_000_000,
    ) {
        let mut text = String::new();
        for (after, pct) in &waves {
            let _ = write!(text, "[[waves]]\nstart_after = {after:?}\nfleet_percentage = {pct}\n");
        }
        if let Ok(p) = WavePolicy::from_toml_str(&text) {
            if let Some(start) = DateTime::from_timestamp(start_secs, 0) {
                if let Ok(s) = p.to_schedule(start) {
                    prop_assert!(s.problems().is_empty());
                    prop_assert_eq!(s.first_wave().unwrap().bound, 0);
                }
            }
        }
    }

    #[test]
    fn seed_json_is_checked(n in any::<u32>()) {
        let parsed = serde_json::from_str::<Seed>(&n.to_string());
        prop_assert_eq!(parsed.is_ok(), n < 2048);
    }
}
