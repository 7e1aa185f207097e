//! `WaveTiming::Reference` against the behaviour of Bottlerocket's `update_metadata`
//! (`Update::update_ready`), case by case: the schedules and expectations here are the ones its
//! own unit tests document (times in milliseconds after an origin).

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use waves::{Seed, WaveSchedule, WaveTiming};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap()
}

fn ms(n: i64) -> DateTime<Utc> {
    t0() + TimeDelta::milliseconds(n)
}

fn ready(s: &WaveSchedule, seed: u32, at: DateTime<Utc>) -> bool {
    s.ready_at_timing(Seed::new(seed).unwrap(), WaveTiming::Reference)
        .is_none_or(|t| t <= at)
}

#[test]
fn one_wave_over_2048_ms_lets_seed_n_in_after_n_ms() {
    let s: WaveSchedule = [(0, t0()), (2048, ms(2048))].into_iter().collect();
    for seed in (100..500).step_by(100) {
        assert!(!ready(&s, seed, ms(i64::from(seed) - 1)), "seed {seed}");
        assert!(ready(&s, seed, ms(i64::from(seed))), "seed {seed}");
    }
}

fn three_waves() -> WaveSchedule {
    [(0, t0()), (50, ms(200)), (100, ms(1024)), (1024, ms(4096))]
        .into_iter()
        .collect()
}

#[test]
fn second_wave_uses_the_absolute_seed_and_waits_for_the_wave_end() {
    let s = three_waves();
    // Seed 60: not before the wave opens at 200 ms; start + 60 * (824 / 50) ms is past the
    // wave's end, so it is let in when the next wave opens, at 1024 ms.
    assert!(!ready(&s, 60, ms(199)));
    assert!(!ready(&s, 60, ms(1023)));
    assert!(ready(&s, 60, ms(1024)));
    // Our own timing spreads it: (60 - 50) / 50 of the way through the wave.
    assert_eq!(
        s.ready_at_timing(Seed::new(60).unwrap(), WaveTiming::Offset),
        Some(ms(200 + 824 * 10 / 50))
    );
}

#[test]
fn third_wave_target_is_inside_the_wave() {
    let s = three_waves();
    // start 1024 ms + 148 * (3072 / 924) ms = 1516.05... ms.
    let at = s
        .ready_at_timing(Seed::new(148).unwrap(), WaveTiming::Reference)
        .unwrap();
    assert!(at > ms(1516) && at < ms(1517), "{at}");
    assert!(!ready(&s, 148, ms(1516)));
    assert!(ready(&s, 148, ms(1517)));
}

#[test]
fn the_initial_wave_is_ready_at_once_and_the_last_when_it_opens() {
    let future = Utc::now() + TimeDelta::days(365);
    let s: WaveSchedule = [(0, future), (1024, future + TimeDelta::hours(1))]
        .into_iter()
        .collect();
    // Seed 0 has no bound below it: the reference lets it in at once.
    assert!(ready(&s, 0, Utc::now()));
    assert_eq!(
        s.ready_at_timing(Seed::new(0).unwrap(), WaveTiming::Offset),
        Some(future)
    );
    // Past the last bound: when the last wave opens.
    assert_eq!(
        s.ready_at_timing(Seed::new(2000).unwrap(), WaveTiming::Reference),
        Some(future + TimeDelta::hours(1))
    );
    // Waves that all passed: ready (the reference's `test_update_ready_final_wave`).
    let past: WaveSchedule = [
        (0, ms(-3 * 3_600_000)),
        (256, ms(-2 * 3_600_000)),
        (512, ms(-3_600_000)),
    ]
    .into_iter()
    .collect();
    assert!(ready(&past, 1024, t0()));
    // No waves: ready.
    assert!(ready(&WaveSchedule::new(), 1024, t0()));
}

#[test]
fn bounds_above_2048_are_not_wave_ends_for_the_reference() {
    let s: WaveSchedule = [(0, ms(0)), (4000, ms(4000))].into_iter().collect();
    // The reference looks for the next bound only up to 2048: seed 100 is in the "last" wave,
    // ready when bound 0 opens.
    assert_eq!(
        s.ready_at_timing(Seed::new(100).unwrap(), WaveTiming::Reference),
        Some(ms(0))
    );
    assert_eq!(s.ready_at(Seed::new(100).unwrap()), Some(ms(100)));
}

#[test]
fn timing_names_round_trip() {
    for (t, name) in [
        (WaveTiming::Offset, "\"offset\""),
        (WaveTiming::Reference, "\"reference\""),
    ] {
        assert_eq!(serde_json::to_string(&t).unwrap(), name);
        assert_eq!(serde_json::from_str::<WaveTiming>(name).unwrap(), t);
        assert_eq!(format!("\"{t}\""), name);
    }
    assert!(serde_json::from_str::<WaveTiming>("\"absolute\"").is_err());
    assert_eq!(WaveTiming::default(), WaveTiming::Offset);
}
