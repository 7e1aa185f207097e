//! manifest.json compatibility: parsing, writing, odd cases, validation, migration chains.

use chrono::{TimeZone, Utc};
use manifest::{Error, Manifest, Problem};
use semver::Version;
use waves::Seed;

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

/// A manifest in the reference's shape, with the odd cases seen in the wild: a legacy
/// `datastore_versions` field, an unknown per-update field, unpadded dates and a huge wave key.
const LEGACY: &str = r#"{
  "updates": [
    {
      "variant": "aws-k8s-1.31",
      "arch": "x86_64",
      "version": "1.20.0",
      "max_version": "1.20.0",
      "waves": {
        "0": "2019-8-06T15:00:00Z",
        "512": "2019-08-7T15:00:00Z",
        "858993459": "2019-8-8T15:00:00Z"
      },
      "images": {
        "boot": "boot-1.20.0.lz4",
        "root": "root-1.20.0.lz4",
        "hash": "hash-1.20.0.lz4",
        "extra_image": "ignored.lz4"
      },
      "some_future_field": {"nested": [1, 2, 3]}
    }
  ],
  "migrations": {
    "(1.19.0, 1.20.0)": ["migrate_v1.20.0_a.lz4", "migrate_v1.20.0_b.lz4"],
    "(1.18.0,1.19.0)": []
  },
  "datastore_versions": {"1.20.0": "1.5"}
}"#;

#[test]
fn legacy_manifest_parses_and_writes_back_canonically() {
    let m = Manifest::from_slice(LEGACY.as_bytes()).unwrap();
    assert_eq!(m.updates.len(), 1);
    let u = &m.updates[0];
    assert_eq!(u.version, v("1.20.0"));
    let bounds: Vec<u32> = u.waves.waves().map(|w| w.bound).collect();
    assert_eq!(bounds, [0, 512, 858_993_459]);
    assert_eq!(
        u.waves.get(512),
        Some(Utc.with_ymd_and_hms(2019, 8, 7, 15, 0, 0).unwrap())
    );
    assert_eq!(m.migrations.len(), 2);
    assert!(m.validate().is_ok(), "{:?}", m.validate());

    let out = m.to_json_pretty();
    assert!(out.contains(r#""(1.18.0, 1.19.0)": []"#), "{out}");
    assert!(out.contains(r#""512": "2019-08-07T15:00:00Z""#), "{out}");
    assert!(
        out.contains(r#""858993459": "2019-08-08T15:00:00Z""#),
        "{out}"
    );
    assert!(!out.contains("datastore_versions") && !out.contains("some_future_field"));
    // Reading what we wrote gives the same manifest.
    assert_eq!(Manifest::from_slice(out.as_bytes()).unwrap(), m);
    // Field names are exactly the reference's.
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = json["updates"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "variant",
        "arch",
        "version",
        "max_version",
        "waves",
        "images",
    ] {
        assert!(keys.contains(&k), "{keys:?}");
    }
    let images = json["updates"][0]["images"].as_object().unwrap();
    assert_eq!(images.len(), 3);
}

#[test]
fn missing_sections_read_as_empty() {
    let m = Manifest::from_slice(b"{}").unwrap();
    assert!(m.updates.is_empty() && m.migrations.is_empty());
    let m = Manifest::from_slice(
        br#"{"updates":[{"variant":"a","arch":"b","version":"1.0.0","max_version":"1.0.0",
        "images":{"boot":"x","root":"y","hash":"z"}}]}"#,
    )
    .unwrap();
    assert!(m.updates[0].waves.is_empty());
}

fn parse_err(json: &str) -> String {
    match Manifest::from_slice(json.as_bytes()) {
        Ok(m) => panic!("parsed: {m:?}"),
        Err(e) => {
            assert!(matches!(e, Error::Parse { .. }), "{e:?}");
            // The error and its cause (serde's text, which names the key and the line).
            std::iter::successors(Some(&e as &dyn std::error::Error), |&e| e.source())
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ")
        }
    }
}

fn with_waves(waves: &str) -> String {
    format!(
        r#"{{"updates":[{{"variant":"a","arch":"b","version":"1.0.0","max_version":"1.0.0",
        "waves":{waves},"images":{{"boot":"x","root":"y","hash":"z"}}}}],"migrations":{{}}}}"#
    )
}

#[test]
fn bad_wave_keys_are_errors_naming_the_key() {
    let cases = [
        (
            r#"{"7":"2019-08-06T15:00:00Z","7":"2019-08-07T15:00:00Z"}"#,
            "duplicate wave key \"7\"",
        ),
        (r#"{"seven":"2019-08-06T15:00:00Z"}"#, "wave key \"seven\""),
        (
            r#"{"4294967296":"2019-08-06T15:00:00Z"}"#,
            "wave key \"4294967296\"",
        ),
        (r#"{"-3":"2019-08-06T15:00:00Z"}"#, "wave key \"-3\""),
        (r#"{"3":"2019-08-06"}"#, "wave key \"3\""),
        (r#"{"3":"2019-13-06T15:00:00Z"}"#, "wave key \"3\""),
    ];
    for (waves, needle) in cases {
        let err = parse_err(&with_waves(waves));
        assert!(err.contains(needle), "{waves}: {err}");
        assert!(err.contains("line"), "{err}");
    }
    // The largest u32 is a legal key.
    assert!(
        Manifest::from_slice(with_waves(r#"{"4294967295":"2019-08-06T15:00:00Z"}"#).as_bytes())
            .is_ok()
    );
}

#[test]
fn bad_migration_keys_are_errors_naming_the_key() {
    for (migrations, needle) in [
        (r#"{"(1.0, 1.1.0)": []}"#, "\"(1.0, 1.1.0)\""),
        (r#"{"1.0.0 -> 1.1.0": []}"#, "\"1.0.0 -> 1.1.0\""),
        (
            r#"{"(1.0.0, 1.1.0)": [], "(1.0.0,1.1.0)": []}"#,
            "duplicate migration key \"(1.0.0,1.1.0)\"",
        ),
        (
            r#"{"(1.0.0, 1.1.0)": "a.lz4"}"#,
            "migration key \"(1.0.0, 1.1.0)\"",
        ),
        (
            r#"{"(1.0.0, 1.1.0)": [1]}"#,
            "migration key \"(1.0.0, 1.1.0)\"",
        ),
    ] {
        let err = parse_err(&format!(r#"{{"updates":[],"migrations":{migrations}}}"#));
        assert!(err.contains(needle), "{migrations}: {err}");
    }
}

#[test]
fn malformed_documents_are_errors() {
    for json in [
        "",
        "null",
        "[]",
        r#"{"updates":{}}"#,
        r#"{"updates":[{}]}"#,
        r#"{"updates":[{"variant":"a","arch":"b","version":"1.0","max_version":"1.0.0","images":{"boot":"x","root":"y","hash":"z"}}]}"#,
        r#"{"updates":[{"variant":"a","arch":"b","version":"1.0.0","max_version":"1.0.0","images":{"boot":"x","root":"y"}}]}"#,
        r#"{"updates":[{"variant":1,"arch":"b","version":"1.0.0","max_version":"1.0.0","images":{"boot":"x","root":"y","hash":"z"}}]}"#,
        r#"{"updates":[], "migrations": []}"#,
        r#"{"updates":["#,
    ] {
        parse_err(json);
    }
    let deep = "[".repeat(100_000);
    parse_err(&deep);
    let big = vec![b' '; manifest::MAX_MANIFEST_LEN + 1];
    assert!(matches!(
        Manifest::from_slice(&big),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn validation_reports_every_problem() {
    let json = r#"{
      "updates": [
        {"variant":"a","arch":"x86_64","version":"1.1.0","max_version":"1.0.0",
         "waves":{"0":"2026-01-02T00:00:00Z","100":"2026-01-01T00:00:00Z"},
         "images":{"boot":"","root":"r","hash":"h"}},
        {"variant":"a","arch":"x86_64","version":"1.1.0","max_version":"1.1.0",
         "images":{"boot":"b","root":"r","hash":" "}},
        {"variant":"","arch":"x86_64","version":"1.0.0","max_version":"1.1.0",
         "images":{"boot":"b","root":"r","hash":"h"}}
      ],
      "migrations": {"(1.1.0, 1.0.0)": ["x"], "(1.0.0, 1.1.0)": [""]}
    }"#;
    let m = Manifest::from_slice(json.as_bytes()).unwrap();
    let p = &m.problems();
    let err = m.validate().unwrap_err();
    // The pulled-back update is a note: validate reports everything else.
    assert_eq!(err.problems.len(), p.len() - 1);
    assert!(p[0].is_note() && p[1..].iter().all(|x| !x.is_note()));
    assert!(
        matches!(&p[0], Problem::VersionAboveMax { update, .. } if update.version == v("1.1.0"))
    );
    assert!(matches!(&p[1], Problem::WavesNotRising { detail, .. } if detail.bound == 100));
    assert!(matches!(
        &p[2],
        Problem::EmptyImageName { image: "boot", .. }
    ));
    assert!(matches!(&p[3], Problem::DuplicateUpdate { .. }));
    assert!(matches!(
        &p[4],
        Problem::EmptyImageName { image: "hash", .. }
    ));
    assert!(matches!(
        &p[5],
        Problem::EmptyField {
            index: 2,
            field: "variant"
        }
    ));
    assert!(matches!(&p[6], Problem::EmptyMigrationName { .. }));
    assert!(matches!(&p[7], Problem::MigrationNotForward { .. }));
    assert_eq!(p.len(), 8, "{err}");
    let text = err.to_string();
    assert!(text.starts_with("the manifest has 7 problem(s)"), "{text}");
    assert!(p[0].to_string().contains("above its max_version 1.0.0"));
}

fn chain_manifest() -> Manifest {
    Manifest::from_slice(
        br#"{"updates":[],"migrations":{
        "(1.0.0, 1.0.1)": ["a1"],
        "(1.0.0, 1.1.0)": ["b1", "b2"],
        "(1.0.1, 1.1.0)": ["c1"],
        "(1.1.0, 1.2.0)": [],
        "(1.1.0, 1.3.0)": ["d1"],
        "(1.2.0, 1.3.0)": ["e1"],
        "(1.3.0, 1.3.0)": ["loop"]
        }}"#,
    )
    .unwrap()
}

#[test]
fn migration_chain_takes_the_longest_hop_not_past_the_target() {
    let m = chain_manifest();
    let hops = |from: &str, to: &str| -> Vec<(String, String, Vec<String>)> {
        m.migration_chain(&v(from), &v(to))
            .unwrap()
            .into_iter()
            .map(|h| (h.from.to_string(), h.to.to_string(), h.targets))
            .collect()
    };
    let s = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        hops("1.0.0", "1.3.0"),
        [
            ("1.0.0".into(), "1.1.0".into(), s(&["b1", "b2"])),
            ("1.1.0".into(), "1.3.0".into(), s(&["d1"])),
        ]
    );
    // Not past the target: 1.1.0 -> 1.2.0, not 1.3.0.
    assert_eq!(hops("1.0.0", "1.2.0").len(), 2);
    assert_eq!(hops("1.0.0", "1.2.0")[1].1, "1.2.0");
    assert_eq!(hops("1.0.1", "1.2.0")[0].2, s(&["c1"]));
    assert!(hops("1.3.0", "1.3.0").is_empty());
    // A downgrade is the same chain reversed.
    assert_eq!(
        hops("1.3.0", "1.0.0"),
        [
            ("1.3.0".into(), "1.1.0".into(), s(&["d1"])),
            ("1.1.0".into(), "1.0.0".into(), s(&["b2", "b1"])),
        ]
    );
    assert_eq!(
        m.migration_targets(&v("1.3.0"), &v("1.0.0")).unwrap(),
        s(&["d1", "b2", "b1"])
    );
}

#[test]
fn a_missing_link_names_where_the_chain_stops() {
    let m = chain_manifest();
    match m.migration_chain(&v("1.0.0"), &v("1.4.0")) {
        Err(Error::MissingMigration(gap)) => assert_eq!(gap.stuck_at, v("1.3.0")),
        other => panic!("{other:?}"),
    }
    let err = m.migration_chain(&v("0.9.0"), &v("1.1.0")).unwrap_err();
    assert!(err.to_string().contains("stops at 0.9.0"), "{err}");
    // Downgrades report the same stop, with the caller's from and to.
    let err = m.migration_chain(&v("1.4.0"), &v("1.0.0")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("from 1.4.0 to 1.0.0") && text.contains("stops at 1.3.0"),
        "{text}"
    );
}

#[test]
fn seeds_and_waves_from_a_parsed_manifest() {
    let m = Manifest::from_slice(LEGACY.as_bytes()).unwrap();
    let w = &m.updates[0].waves;
    let t0 = Utc.with_ymd_and_hms(2019, 8, 6, 15, 0, 0).unwrap();
    assert_eq!(w.ready_at(Seed::new(0).unwrap()), Some(t0));
    // 256 of the 512 seeds of the second wave: halfway through its day.
    assert_eq!(
        w.ready_at(Seed::new(256).unwrap()),
        Some(t0 + chrono::TimeDelta::hours(12))
    );
}
