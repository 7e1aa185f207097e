//! TUF `snapshot.json` as a repository serves it: parsed and checked against a fixed trusted root
//! (`updog::tuf::check_metadata`: envelope, `_type`, canonical JSON of `signed`, repeated
//! signatures, structural rules, key and signature decoding, the signature threshold).
//! Property: no panic, no hang, bounded memory; a rejection is an `updog::tuf::Error`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use updog::tuf::{Role, check_metadata, schema::Root};

/// The playground repository's root (`corpus/tuf_root/`), which lists the keys of every role.
static ROOT: LazyLock<Root> = LazyLock::new(|| {
    let bytes = include_bytes!("../corpus/tuf_root/root.json");
    let envelope: serde_json::Value = serde_json::from_slice(bytes).expect("root.json");
    serde_json::from_value(envelope["signed"].clone()).expect("root.json's signed")
});

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let _ = check_metadata(&Role::Snapshot, data, &ROOT);
});
