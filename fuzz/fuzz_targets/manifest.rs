//! `manifest.json` (a TUF target, so signed, but shaped by whoever publishes): parsed, then
//! validated and used the way a host uses it (update selection for each listed variant and
//! arch, the migration chain to each listed version).
//! Property: no panic, no hang, bounded memory; a rejection is a `manifest::Error` or a
//! `ValidationError`.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use manifest::Manifest;
use manifest::select::{SelectionRequest, VersionLock, select_update};

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::from_slice(data) else {
        return;
    };
    let _ = m.validate();
    let _ = m.problems();
    let running: semver::Version = semver::Version::new(1, 0, 0);
    for u in m.updates.iter().take(8) {
        for seed in [0, 1023, 2047] {
            let req = SelectionRequest {
                variant: u.variant.clone(),
                arch: u.arch.clone(),
                running_version: running.clone(),
                seed: waves::Seed::new(seed).expect("seed in range"),
                now: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
                version_lock: VersionLock::Latest,
                ignore_waves: seed == 0,
                wave_timing: waves::WaveTiming::Offset,
                force_version: None,
                failed_versions: vec![],
            };
            let _ = select_update(&m, &req);
        }
        let _ = m.migration_chain(&running, &u.version);
        let _ = m.migration_chain(&u.version, &running);
    }
});
