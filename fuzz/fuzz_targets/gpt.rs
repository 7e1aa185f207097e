//! GPT headers and entries (`bootpart::gpt::read_gpt`): the input is a whole disk (protective
//! MBR, primary header and entries, backup copy), read with the detected sector size and with
//! 4096-byte sectors, then the A/B sets found in the table (`bootpart::Layout::from_table`).
//! Property: no panic, no hang, bounded memory (entry counts and sizes come from the disk);
//! a rejection is a `GptError` or a `LayoutError`.
#![no_main]

use bootpart::Layout;
use bootpart::gpt::{read_gpt, read_gpt_with_sector_size};
use bootpart::io::MemDisk;
use libfuzzer_sys::fuzz_target;

updog_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let disk = MemDisk::from_bytes(data.to_vec());
    if let Ok(read) = read_gpt(&disk) {
        let _ = read.primary_needs_repair();
        let _ = Layout::from_table(&read.table, &|_| None);
    }
    if let Ok(read) = read_gpt_with_sector_size(&disk, 4096) {
        let _ = Layout::from_table(&read.table, &|_| None);
    }
});
