//! `updog.toml` (`updog::config::Config::from_toml_str`): syntax, types, unknown keys (warnings),
//! URLs, seeds, proxies, limits. Bytes that are not UTF-8 are refused when the file is read, as
//! here.
//! Property: no panic, no hang; a rejection is a `ConfigError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updog::config::Config;

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml_str(text);
    }
});
