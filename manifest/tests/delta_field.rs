//! The optional `delta` field of an update: parsed, kept through edits, absent when unset (so a
//! manifest without deltas is written exactly as before), and ignored by a parser built like the
//! reference's (`update_metadata`'s `Update` and `Manifest` derive `Deserialize` without
//! `deny_unknown_fields`; the mirror below has the same fields and attributes, less the custom
//! wave and migration deserializers, which do not see the field).

use std::collections::BTreeMap;

use manifest::Manifest;
use serde::Deserialize;

const WITH_DELTA: &str = r#"{
  "updates": [{
    "variant": "aws-dev", "arch": "x86_64", "version": "1.1.0", "max_version": "1.1.0",
    "waves": {},
    "images": {"boot": "b.lz4", "root": "r.lz4", "hash": "h.lz4"},
    "delta": {"store": "chunks/", "indexes": {"root": "r.caibx", "boot": "b.caibx"}}
  }],
  "migrations": {}
}"#;

#[test]
fn parses_and_round_trips_the_delta_field() {
    let m = Manifest::from_slice(WITH_DELTA.as_bytes()).unwrap();
    let delta = m.updates[0].delta.as_ref().expect("delta parsed");
    assert_eq!(delta.store, "chunks/");
    assert_eq!(delta.indexes["root"], "r.caibx");
    assert_eq!(delta.indexes.len(), 2);
    let written = serde_json::to_string(&m).unwrap();
    let again = Manifest::from_slice(written.as_bytes()).unwrap();
    assert_eq!(again, m);
}

#[test]
fn no_delta_means_no_field_written() {
    let text = WITH_DELTA.replace(
        r#",
    "delta": {"store": "chunks/", "indexes": {"root": "r.caibx", "boot": "b.caibx"}}"#,
        "",
    );
    let m = Manifest::from_slice(text.as_bytes()).unwrap();
    assert!(m.updates[0].delta.is_none());
    assert!(!serde_json::to_string(&m).unwrap().contains("delta"));
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ReferenceImages {
    boot: String,
    root: String,
    hash: String,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ReferenceUpdate {
    variant: String,
    arch: String,
    version: semver::Version,
    max_version: semver::Version,
    waves: BTreeMap<String, String>,
    images: ReferenceImages,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ReferenceManifest {
    updates: Vec<ReferenceUpdate>,
    migrations: BTreeMap<String, Vec<String>>,
}

#[test]
fn a_reference_shaped_parser_ignores_it() {
    let m: ReferenceManifest = serde_json::from_str(WITH_DELTA).unwrap();
    assert_eq!(m.updates[0].images.root, "r.lz4");
}
