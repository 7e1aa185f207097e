//! Malformed input of any shape is an error, never a panic; whatever parses can be used
//! (selected from, validated, chained, written and read back) without panicking.

use chrono::{DateTime, Utc};
use manifest::Manifest;
use manifest::select::{SelectionRequest, VersionLock, select_update};
use proptest::prelude::*;
use serde_json::Value;
use waves::Seed;

const VALID: &str = r#"{"updates":[
 {"variant":"dev","arch":"x86_64","version":"1.1.0","max_version":"1.2.0",
  "waves":{"0":"2026-1-1T00:00:00Z","1024":"2026-01-02T00:00:00Z","858993459":"2026-01-03T00:00:00Z"},
  "images":{"boot":"b","root":"r","hash":"h"}},
 {"variant":"dev","arch":"x86_64","version":"1.2.0","max_version":"1.2.0","waves":{},
  "images":{"boot":"b2","root":"r2","hash":"h2"}}],
 "migrations":{"(1.0.0, 1.1.0)":["a"],"(1.1.0, 1.2.0)":["b","c"]}}"#;

fn exercise(m: &Manifest, seed: u32, now_secs: i64) {
    let _ = m.problems();
    let now = DateTime::<Utc>::from_timestamp(now_secs, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let seed = Seed::new(seed % 2048).unwrap();
    for running in ["0.0.1", "1.0.0", "1.1.0", "9.9.9"] {
        for lock in [
            VersionLock::Latest,
            VersionLock::Exact("1.1.0".parse().unwrap()),
        ] {
            let req = SelectionRequest {
                variant: "dev".into(),
                arch: "x86_64".into(),
                running_version: running.parse().unwrap(),
                seed,
                now,
                version_lock: lock,
                ignore_waves: seed.get() % 2 == 0,
                wave_timing: waves::WaveTiming::Offset,
                force_version: None,
                failed_versions: vec![],
            };
            if let Some(u) = select_update(m, &req).update() {
                let _ = m.migration_chain(&req.running_version, &u.version);
            }
        }
    }
    for (from, to) in m.migrations.keys() {
        let _ = m.migration_chain(from, to);
        let _ = m.migration_chain(to, from);
    }
    let text = m.to_json_pretty();
    // What we write, we read back identically (times are within RFC 3339's range when parsed).
    assert_eq!(&Manifest::from_slice(text.as_bytes()).unwrap(), m);
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[0-9.]{1,8}".prop_map(Value::String),
        "\\([0-9.]{1,8}, ?[0-9.]{1,8}\\)".prop_map(Value::String),
        "[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}T[0-9]{1,2}:[0-9]{2}:[0-9]{2}Z".prop_map(Value::String),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let key = prop_oneof![
            Just("updates".to_owned()),
            Just("migrations".to_owned()),
            Just("variant".to_owned()),
            Just("arch".to_owned()),
            Just("version".to_owned()),
            Just("max_version".to_owned()),
            Just("waves".to_owned()),
            Just("images".to_owned()),
            Just("boot".to_owned()),
            Just("root".to_owned()),
            Just("hash".to_owned()),
            "[0-9]{1,11}",
            "\\([0-9.]{1,8}, ?[0-9.]{1,8}\\)",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key, inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = Manifest::from_slice(&bytes) {
            exercise(&m, 0, 0);
        }
    }

    #[test]
    fn random_json_shapes_never_panic(v in json_value(), seed in any::<u32>(), now in any::<i64>()) {
        let text = serde_json::to_vec(&v).unwrap();
        if let Ok(m) = Manifest::from_slice(&text) {
            exercise(&m, seed, now);
        }
    }

    #[test]
    fn mutated_manifests_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        seed in any::<u32>(),
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(m) = Manifest::from_slice(&bytes) {
            exercise(&m, seed, 1_780_000_000);
        }
    }

    #[test]
    fn truncated_manifests_are_errors(cut in 0..VALID.len() - 1) {
        prop_assert!(Manifest::from_slice(&VALID.as_bytes()[..cut]).is_err());
    }
}

#[test]
fn the_valid_base_is_valid() {
    let m = Manifest::from_slice(VALID.as_bytes()).unwrap();
    assert!(m.validate().is_ok());
    exercise(&m, 5, 1_780_000_000);
}
