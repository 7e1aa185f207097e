//! zstd chunk files of a casync chunk store (`.cacnk`, `updog::delta::store::decode_chunk`).
//! The first 4 bytes of the input give the chunk's signed length (up to 256 KiB, the largest
//! chunk the index allows); the chunk id is that of the 4 KiB zero chunk, so most inputs end in
//! a hash mismatch after decoding, which is what the fuzzer is after: the decoder on hostile
//! frames, bounded by the signed length.
//! Property: no panic, no hang, output never longer than the signed length; a rejection is a
//! `ChunkError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updog::delta::store::decode_chunk;
use updog::delta::{Chunk, ChunkId};

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, compressed) = data.split_at(4);
    let len = u32::from_le_bytes(head.try_into().unwrap()) % (256 * 1024 + 1);
    let chunk = Chunk {
        number: 0,
        offset: 0,
        len,
        id: ChunkId::of(&[0u8; 4096]),
    };
    let mut out = Vec::new();
    let ok = decode_chunk(&chunk, compressed, &mut out).is_ok();
    assert!(out.len() <= len as usize);
    if ok {
        assert_eq!(out.len(), len as usize);
    }
});
