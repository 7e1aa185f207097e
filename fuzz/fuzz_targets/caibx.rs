//! casync blob indexes (`.caibx`, `updog::delta::BlobIndex::parse`), then walked the way a plan
//! walks them (every chunk, the total length).
//! Property: no panic, no hang, bounded memory; a rejection is an `IndexError`; an index that
//! parses serialises back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updog::delta::BlobIndex;

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let Ok(index) = BlobIndex::parse(data) else {
        return;
    };
    let mut end = 0u64;
    for chunk in index.chunks() {
        assert_eq!(chunk.offset, end);
        end = chunk.end();
    }
    assert_eq!(end, index.total_len());
    let _ = index.check_total(end);
    let _ = index.longest_chunk();
    assert_eq!(
        BlobIndex::parse(&index.to_bytes())
            .map(|i| i.to_bytes())
            .ok(),
        Some(index.to_bytes())
    );
});
