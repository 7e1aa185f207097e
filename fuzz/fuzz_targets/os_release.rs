//! `/etc/os-release` (`updog::os_release::OsRelease::parse`): the running variant, version
//! and build. Bytes that are not UTF-8 are refused when the file is read, as here.
//! Property: no panic, no hang; a rejection is an `OsReleaseError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updog::os_release::OsRelease;

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = OsRelease::parse(text);
    }
});
