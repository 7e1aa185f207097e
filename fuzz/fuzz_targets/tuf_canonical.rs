//! Canonical JSON: what the client signs over (`updog::tuf::canonical_json_of`, made while
//! parsing, without a `serde_json::Value` tree) must be byte for byte what `olpc_cjson` writes
//! for the same document read into a `Value`, and both must accept and refuse the same inputs.
//! Property: no panic, no hang, bounded memory, and the two agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let ours = updog::tuf::canonical_json_of(data);
    let reference = serde_json::from_slice::<serde_json::Value>(data).map(|value| {
        let mut out = Vec::new();
        let mut ser =
            serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
        value.serialize(&mut ser).ok().map(|()| out)
    });
    match (ours, reference) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "canonical JSON differs from olpc_cjson"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("accepted by one side only: ours {a:?}, reference {b:?}"),
    }
});
