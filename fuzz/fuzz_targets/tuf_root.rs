//! TUF `root.json`: parsed and checked as the client checks a root it receives (envelope,
//! `_type`, canonical JSON of `signed`, repeated signatures, root's own rules, every key's
//! encoding and every signature's hex, its own signature threshold), through
//! `updog::tuf::check_metadata`.
//! Property: no panic, no hang, bounded memory; a rejection is an `updog::tuf::Error`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use updog::tuf::{Role, check_metadata, schema::Root};

/// Not used for `root` (a root is checked against its own keys), but the signature wants one.
static ROOT: LazyLock<Root> = LazyLock::new(|| {
    let bytes = include_bytes!("../corpus/tuf_root/root.json");
    let envelope: serde_json::Value = serde_json::from_slice(bytes).expect("root.json");
    serde_json::from_value(envelope["signed"].clone()).expect("root.json's signed")
});

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let _ = check_metadata(&Role::Root, data, &ROOT);
});
