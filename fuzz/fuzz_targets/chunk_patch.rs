//! Patch indexes and patch data (`updog::delta::patch`): what a host reads from a repository to
//! build new chunks from the running image's bytes.
//!
//! The running ("old") image is 16 chunks of 4 KiB of fixed pseudo-random bytes; the first input
//! byte picks what the rest is:
//!
//! - even: edits (two bytes of position, one of value) that turn the old image into a new one;
//!   a patch is made from the pair (`make_patch`), its index goes through JSON and
//!   `PatchIndex::parse`, and `apply_stream` must rebuild every patched chunk byte for byte;
//! - odd: two bytes of JSON length, a hostile patch index, then hostile patch data, applied
//!   against the old image and a new image that differs from it in a few chunks.
//!
//! Property: no panic, no hang, bounded memory (windows and outputs are bounded by the format);
//! a rejection is a `PatchError`; whatever `apply_stream` writes hashes to the new index's ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updog::delta::patch::{NewImage, PatchIndex, apply_stream, make_patch};
use updog::delta::{BlobIndex, ChunkId, Chunker};

updog_fuzz::capped_allocator!();

const CHUNK: usize = 4096;
const CHUNKS: usize = 16;

fn old_image() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..CHUNK * CHUNKS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn index_of(image: &[u8]) -> BlobIndex {
    let mut index = BlobIndex::new(Chunker::casync_default().sizes());
    for chunk in image.chunks(CHUNK) {
        index.push(chunk.len() as u64, ChunkId::of(chunk));
    }
    index
}

fn read_from(image: &[u8]) -> impl FnMut(u64, &mut [u8]) -> std::io::Result<()> + '_ {
    move |at, buf| {
        let start = usize::try_from(at).unwrap_or(usize::MAX);
        match image.get(start..start.saturating_add(buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// Applies `patch` and checks that every byte it wrote is the new image's.
fn apply_and_check(patch: &PatchIndex, data: &[u8], old: &[u8], new: &[u8]) -> Option<u64> {
    let (old_index, new_index) = (index_of(old), index_of(new));
    let built = std::cell::RefCell::new(vec![0u8; new.len()]);
    let applied = apply_stream(
        patch,
        &old_index,
        &new_index,
        &mut &data[..],
        read_from(old),
        NewImage {
            write: |at, bytes: &[u8]| {
                let start = at as usize;
                built.borrow_mut()[start..start + bytes.len()].copy_from_slice(bytes);
                Ok(())
            },
            read: |at, buf: &mut [u8]| {
                let start = at as usize;
                buf.copy_from_slice(&built.borrow()[start..start + buf.len()]);
                Ok(())
            },
        },
        &|| false,
    )
    .ok()?;
    let built = built.into_inner();
    for range in &applied.written {
        let (start, end) = (range.start as usize * CHUNK, range.end as usize * CHUNK);
        assert_eq!(built[start..end], new[start..end], "patched bytes differ");
    }
    Some(applied.chunks())
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let old = old_image();
    let mut new = old.clone();
    if mode % 2 == 0 {
        for edit in rest.chunks_exact(3) {
            let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % new.len();
            new[at] = edit[2];
        }
        let (old_index, new_index) = (index_of(&old), index_of(&new));
        let mut data = Vec::new();
        let (made, stats) = make_patch(
            &old_index,
            read_from(&old),
            &new_index,
            read_from(&new),
            &mut data,
        )
        .expect("making a patch of in-memory images");
        let json = serde_json::to_vec(&made).expect("a patch index serialises");
        let parsed = PatchIndex::parse(&json, &old_index, &new_index)
            .expect("a patch index that make_patch made parses");
        let chunks = apply_and_check(&parsed, &data, &old, &new)
            .expect("a patch that make_patch made applies");
        assert_eq!(chunks, stats.patched_chunks);
    } else {
        if rest.len() < 2 {
            return;
        }
        let json_len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let rest = &rest[2..];
        let (json, data) = rest.split_at(json_len.min(rest.len()));
        // A new image that differs from the old one in chunks 3 and 9..11.
        for at in [3 * CHUNK + 17, 9 * CHUNK + 5, 10 * CHUNK + 4000] {
            new[at] ^= 0x5a;
        }
        if let Ok(patch) = PatchIndex::parse(json, &index_of(&old), &index_of(&new)) {
            let _ = apply_and_check(&patch, data, &old, &new);
        }
    }
});
