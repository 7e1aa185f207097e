//! `Release.toml`'s `[migrations]` table (`manifest::edit::release_migrations`), which
//! `updata set-migrations` reads into the manifest.
//! Property: no panic, no hang; a rejection is a `manifest::Error`.
#![no_main]

use libfuzzer_sys::fuzz_target;

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = manifest::edit::release_migrations(text);
    }
});
