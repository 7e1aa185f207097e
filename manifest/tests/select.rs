//! Update selection rules.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use manifest::Manifest;
use manifest::select::{
    NoUpdateReason, Selection, SelectionRequest, VersionLock, available_updates, select_update,
};
use semver::Version;
use waves::Seed;

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
}

/// 1.0.0 .. 1.3.0 for x86_64 (1.3.0 rolling out in waves from t0+1h to t0+2d), 1.4.0 above
/// max_version (pulled), plus another variant and arch with higher versions.
fn manifest(max: &str) -> Manifest {
    let upd = |variant: &str, arch: &str, version: &str, waves: &str| {
        format!(
            r#"{{"variant":"{variant}","arch":"{arch}","version":"{version}","max_version":"{max}",
            "waves":{waves},"images":{{"boot":"b-{version}","root":"r-{version}","hash":"h-{version}"}}}}"#
        )
    };
    let rolling = format!(
        r#"{{"0":"{}","1000":"{}"}}"#,
        waves::time::format_time(t0() + TimeDelta::hours(1)),
        waves::time::format_time(t0() + TimeDelta::days(2))
    );
    let updates = [
        upd("dev", "x86_64", "1.0.0", "{}"),
        upd("dev", "x86_64", "1.1.0", "{}"),
        upd("dev", "x86_64", "1.2.0", "{}"),
        upd("dev", "x86_64", "1.3.0", &rolling),
        upd("dev", "x86_64", "1.4.0", "{}"),
        upd("dev", "aarch64", "1.9.0", "{}"),
        upd("other", "x86_64", "1.9.0", "{}"),
    ];
    Manifest::from_slice(format!(r#"{{"updates":[{}]}}"#, updates.join(",")).as_bytes()).unwrap()
}

fn req(running: &str) -> SelectionRequest {
    SelectionRequest {
        variant: "dev".into(),
        arch: "x86_64".into(),
        running_version: v(running),
        seed: Seed::new(500).unwrap(),
        now: t0(),
        version_lock: VersionLock::Latest,
        ignore_waves: false,
        wave_timing: waves::WaveTiming::Offset,
        force_version: None,
        failed_versions: vec![],
    }
}

fn chosen(m: &Manifest, r: &SelectionRequest) -> Option<String> {
    select_update(m, r).update().map(|u| u.version.to_string())
}

fn reason(m: &Manifest, r: &SelectionRequest) -> NoUpdateReason {
    match select_update(m, r) {
        Selection::NoUpdate(reason) => reason,
        Selection::Update(u) => panic!("selected {}", u.version),
    }
}

#[test]
fn latest_takes_the_highest_ready_candidate() {
    let m = manifest("1.3.0");
    // 1.3.0 is not ready for seed 500 yet; 1.4.0 is above max_version; 1.2.0 is ready.
    assert_eq!(chosen(&m, &req("1.0.0")).as_deref(), Some("1.2.0"));
    let mut r = req("1.0.0");
    r.ignore_waves = true;
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.3.0"));
    // Once this seed's wave opens (halfway between 1 h and 2 d: 500/1000 of 47 h) it is ready.
    r.ignore_waves = false;
    r.now = t0() + TimeDelta::hours(1) + TimeDelta::minutes(47 * 30);
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.3.0"));
    r.now -= TimeDelta::seconds(1);
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.2.0"));
    // Other variants and arches never leak in.
    assert!(
        available_updates(&m, "dev", "x86_64")
            .iter()
            .all(|u| u.arch == "x86_64" && u.variant == "dev")
    );
    assert_eq!(available_updates(&m, "dev", "x86_64").len(), 4);
}

#[test]
fn not_eligible_yet_says_which_version_and_when() {
    let m = manifest("1.3.0");
    let r = req("1.2.0");
    let want_at = t0() + TimeDelta::hours(1) + TimeDelta::minutes(47 * 30);
    assert_eq!(
        reason(&m, &r),
        NoUpdateReason::NotEligibleYet {
            version: v("1.3.0"),
            ready_at: want_at
        }
    );
    let text = reason(&m, &r).to_string();
    assert!(
        text.contains("1.3.0") && text.contains("2026-06-02T00:30:00Z"),
        "{text}"
    );
    let json = serde_json::to_value(reason(&m, &r)).unwrap();
    assert_eq!(json["reason"], "not_eligible_yet");
    assert_eq!(json["version"], "1.3.0");
}

#[test]
fn none_newer_and_unknown_variant() {
    let m = manifest("1.3.0");
    assert_eq!(
        reason(&m, &req("1.3.0")),
        NoUpdateReason::NoneNewer {
            running: v("1.3.0")
        }
    );
    let mut r = req("1.0.0");
    r.variant = "nope".into();
    let why = reason(&m, &r);
    assert!(
        matches!(&why, NoUpdateReason::NoUpdatesForVariant { offered, .. } if !offered.is_empty()),
        "{why:?}"
    );
    // What the repository does offer is named, so a wrong variant is told apart from an
    // empty repository.
    let text = why.to_string();
    assert!(
        text.starts_with(
            "no updates are offered for variant nope on x86_64; the repository offers "
        ) && text.contains("dev (x86_64)"),
        "{text}"
    );
}

#[test]
fn running_above_max_version_is_pulled_back_to_the_highest_candidate() {
    let m = manifest("1.2.0");
    // 1.4.0 was pulled: max_version is now 1.2.0, and 1.3.0 / 1.4.0 are above it.
    assert_eq!(chosen(&m, &req("1.4.0")).as_deref(), Some("1.2.0"));
    assert_eq!(chosen(&m, &req("1.3.0")).as_deref(), Some("1.2.0"));
    assert_eq!(
        reason(&m, &req("1.2.0")),
        NoUpdateReason::NoneNewer {
            running: v("1.2.0")
        }
    );
}

#[test]
fn version_lock_picks_exactly_that_version() {
    let m = manifest("1.3.0");
    let mut r = req("1.2.0");
    r.version_lock = "v1.0.0".parse().unwrap();
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.0.0"), "down");
    r.version_lock = VersionLock::Exact(v("1.1.0"));
    r.running_version = v("1.0.0");
    assert_eq!(
        chosen(&m, &r).as_deref(),
        Some("1.1.0"),
        "up, not the latest"
    );
    r.version_lock = VersionLock::Exact(v("1.0.0"));
    assert_eq!(
        reason(&m, &r),
        NoUpdateReason::Locked {
            version: v("1.0.0")
        }
    );
    r.version_lock = VersionLock::Exact(v("1.4.0"));
    assert_eq!(
        reason(&m, &r),
        NoUpdateReason::VersionNotOffered {
            version: v("1.4.0")
        }
    );
    r.version_lock = VersionLock::Exact(v("1.3.0"));
    assert!(matches!(
        reason(&m, &r),
        NoUpdateReason::NotEligibleYet { .. }
    ));
    r.ignore_waves = true;
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.3.0"));
}

#[test]
fn forced_version_overrides_the_lock_but_waits_for_its_wave() {
    let m = manifest("1.3.0");
    let mut r = req("1.0.0");
    r.version_lock = VersionLock::Exact(v("1.1.0"));
    r.force_version = Some(v("1.2.0"));
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.2.0"));
    // 1.3.0's wave has not opened for seed 500: not taken (the reference's `update_required`
    // looks for the forced version among the wave-ready updates only) ...
    r.force_version = Some(v("1.3.0"));
    assert!(matches!(
        reason(&m, &r),
        NoUpdateReason::NotEligibleYet { version, .. } if version == v("1.3.0")
    ));
    // ... unless waves are ignored (`-n`).
    r.ignore_waves = true;
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.3.0"));
    // A forced version may be the running one, or older.
    r.force_version = Some(v("1.0.0"));
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.0.0"));
    r.force_version = Some(v("1.4.0"));
    assert_eq!(
        reason(&m, &r),
        NoUpdateReason::VersionNotOffered {
            version: v("1.4.0")
        }
    );
}

#[test]
fn ready_updates_lists_only_open_waves_newest_first() {
    let m = manifest("1.3.0");
    let listed = |r: &SelectionRequest| -> Vec<String> {
        manifest::select::ready_updates(&m, r)
            .iter()
            .map(|u| u.version.to_string())
            .collect()
    };
    let mut r = req("1.1.0");
    // 1.3.0 waits for seed 500's wave; 1.4.0 is above max_version; the running version and
    // older ones are listed (as the reference lists them).
    assert_eq!(listed(&r), ["1.2.0", "1.1.0", "1.0.0"]);
    r.ignore_waves = true;
    assert_eq!(listed(&r), ["1.3.0", "1.2.0", "1.1.0", "1.0.0"]);
    r.ignore_waves = false;
    r.now = t0() + TimeDelta::days(3);
    assert_eq!(listed(&r)[0], "1.3.0");
    r.variant = "none".into();
    assert!(listed(&r).is_empty());
}

#[test]
fn reference_wave_timing_is_used_when_asked_for() {
    // Waves 0 at t0+1h and 1000 at t0+2d: seed 0 is in the reference's "initial" wave, ready
    // at once; with our timing it waits for t0+1h.
    let m = manifest("1.3.0");
    let mut r = req("1.2.0");
    r.seed = Seed::new(0).unwrap();
    assert!(matches!(
        reason(&m, &r),
        NoUpdateReason::NotEligibleYet { .. }
    ));
    r.wave_timing = waves::WaveTiming::Reference;
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.3.0"));
}

#[test]
fn version_lock_parsing() {
    assert_eq!(
        "latest".parse::<VersionLock>().unwrap(),
        VersionLock::Latest
    );
    assert_eq!(
        "LATEST".parse::<VersionLock>().unwrap(),
        VersionLock::Latest
    );
    assert_eq!(
        " 1.2.3 ".parse::<VersionLock>().unwrap(),
        VersionLock::Exact(v("1.2.3"))
    );
    assert_eq!(
        "V1.2.3".parse::<VersionLock>().unwrap(),
        VersionLock::Exact(v("1.2.3"))
    );
    for bad in ["", "v", "1.2", "newest", "vv1.2.3"] {
        let err = bad.parse::<VersionLock>().unwrap_err();
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    assert_eq!(VersionLock::Exact(v("1.2.3")).to_string(), "1.2.3");
    assert_eq!(
        serde_json::to_string(&VersionLock::Latest).unwrap(),
        "\"latest\""
    );
}

#[test]
fn a_version_that_failed_to_boot_is_skipped_unless_forced() {
    let m = manifest("1.3.0");
    // 1.2.0 is what latest takes; once it failed here, the next newer one down (1.1.0) is.
    let mut r = req("1.0.0");
    r.failed_versions = vec![v("1.2.0")];
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.1.0"));
    // From 1.1.0 only the failed 1.2.0 is newer and ready (1.3.0 waits for its wave): the
    // reason is the wave; with 1.3.0 pulled, it names the failed release.
    let mut r = req("1.1.0");
    r.failed_versions = vec![v("1.2.0")];
    assert!(matches!(
        reason(&m, &r),
        NoUpdateReason::NotEligibleYet { .. }
    ));
    let pulled = manifest("1.2.0");
    assert_eq!(
        reason(&pulled, &r),
        NoUpdateReason::FailedToBoot {
            version: v("1.2.0")
        }
    );
    assert!(
        reason(&pulled, &r)
            .to_string()
            .contains("updog update -i 1.2.0")
    );
    // A newer release than the failed one is taken as usual.
    r.ignore_waves = true;
    assert_eq!(chosen(&m, &r).as_deref(), Some("1.3.0"));
    // A version lock on it does not take it again; an explicit version does.
    let mut r = req("1.1.0");
    r.failed_versions = vec![v("1.2.0")];
    r.version_lock = VersionLock::Exact(v("1.2.0"));
    assert!(matches!(
        reason(&pulled, &r),
        NoUpdateReason::FailedToBoot { .. }
    ));
    r.force_version = Some(v("1.2.0"));
    assert_eq!(chosen(&pulled, &r).as_deref(), Some("1.2.0"));
}
