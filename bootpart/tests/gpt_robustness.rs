//! Untrusted GPT bytes never panic the reader, and `write_gpt`'s order survives power cuts.

use std::io;

use bootpart::gpt::{GptTable, read_gpt, write_gpt};
use bootpart::io::{BlockIo, MemDisk};
use fixtures::disk::DiskImageBuilder;

fn crc32(b: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(b)
}

fn image() -> Vec<u8> {
    // Small partitions and alignment keep the image (cloned per case) under 1 MiB.
    let k = 64 * 1024;
    let img = DiskImageBuilder::new()
        .alignment(k)
        .boot_size(k)
        .root_size(2 * k)
        .hash_size(k)
        .reserved_size(k)
        .private_size(k)
        .data_size(k)
        .attributes(1, (2 << 48) | (1 << 56))
        .build_temp()
        .unwrap();
    img.bytes().unwrap()
}

/// Recompute the CRCs of the header at `lba` (and of the entry array it points to, when that
/// lies inside the disk and has a sane size), so mutations reach the semantic checks.
fn fix_crcs(d: &mut [u8], lba: usize) {
    let h = lba * 512;
    let entries_lba = u64::from_le_bytes(d[h + 72..h + 80].try_into().unwrap());
    let n = u32::from_le_bytes(d[h + 80..h + 84].try_into().unwrap()) as u64;
    let size = u32::from_le_bytes(d[h + 84..h + 88].try_into().unwrap()) as u64;
    let start = entries_lba.saturating_mul(512);
    let len = n.saturating_mul(size);
    if len <= 1 << 20 && start.saturating_add(len) <= d.len() as u64 {
        let crc = crc32(&d[start as usize..(start + len) as usize]);
        d[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
    }
    d[h + 16..h + 20].fill(0);
    let crc = crc32(&d[h..h + 92]);
    d[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
}

fn check_no_panic(bytes: Vec<u8>) {
    let len = bytes.len() as u64;
    let disk = MemDisk::from_bytes(bytes);
    if let Ok(read) = read_gpt(&disk) {
        read.table
            .validate(len)
            .expect("an accepted table must be consistent");
    }
}

#[test]
fn random_byte_damage_never_panics() {
    let base = image();
    let last = base.len() / 512 - 1;
    let mut rng = fastrand::Rng::with_seed(0x6770_7431);
    // Sectors that hold GPT structures: MBR, primary header and entries, backup entries and
    // header.
    let regions = [0..34 * 512, (last - 32) * 512..base.len()];
    for _ in 0..2000 {
        let mut d = base.clone();
        for _ in 0..rng.usize(1..8) {
            let r = &regions[rng.usize(..regions.len())];
            let at = rng.usize(r.clone());
            d[at] = rng.u8(..);
        }
        check_no_panic(d);
    }
}

#[test]
fn hostile_fields_with_valid_crcs_never_panic() {
    let base = image();
    let last = base.len() / 512 - 1;
    let mut rng = fastrand::Rng::with_seed(0x6770_7432);
    let extremes = [
        0u64,
        1,
        2,
        33,
        34,
        127,
        128,
        129,
        last as u64 - 1,
        last as u64,
        last as u64 + 1,
        u64::from(u32::MAX),
        u64::MAX / 512,
        u64::MAX - 1,
        u64::MAX,
    ];
    // Header fields: (offset, width).
    let header_fields = [
        (8, 4),
        (12, 4),
        (24, 8),
        (32, 8),
        (40, 8),
        (48, 8),
        (72, 8),
        (80, 4),
        (84, 4),
    ];
    for _ in 0..2000 {
        let mut d = base.clone();
        let lba = if rng.bool() { 1 } else { last };
        let value = if rng.bool() {
            extremes[rng.usize(..extremes.len())]
        } else {
            rng.u64(..)
        };
        if rng.bool() {
            let (off, width) = header_fields[rng.usize(..header_fields.len())];
            let at = lba * 512 + off;
            d[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        } else {
            // An entry's first or last LBA, in the array this header points to.
            let h = lba * 512;
            let entries_lba = u64::from_le_bytes(d[h + 72..h + 80].try_into().unwrap()) as usize;
            let at = entries_lba * 512 + rng.usize(..10) * 128 + if rng.bool() { 32 } else { 40 };
            d[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        fix_crcs(&mut d, lba);
        check_no_panic(d);
    }
}

/// A disk that records writes so a power cut can be simulated after any prefix of them, with
/// the interrupted write torn at a sector boundary.
struct Recording {
    disk: MemDisk,
    writes: Vec<(u64, Vec<u8>)>,
    syncs_after: Vec<usize>,
}

impl BlockIo for Recording {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writes.push((offset, buf.to_vec()));
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.syncs_after.push(self.writes.len());
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.disk.len()
    }
}

#[test]
fn every_power_cut_reads_old_or_new() {
    let old_bytes = image();
    let old_disk = MemDisk::from_bytes(old_bytes.clone());
    let old: GptTable = read_gpt(&old_disk).unwrap().table;
    let mut new = old.clone();
    new.entry_mut(1).unwrap().attributes = (1 << 48) | (1 << 52);
    new.entry_mut(5).unwrap().attributes = (2 << 48) | (1 << 52);
    let mut rec = Recording {
        disk: old_disk,
        writes: Vec::new(),
        syncs_after: Vec::new(),
    };
    write_gpt(&mut rec, &new).unwrap();
    assert_eq!(rec.writes.len(), 4);
    assert_eq!(rec.syncs_after, vec![2, 4]);
    let mut cuts = 0;
    for done in 0..=rec.writes.len() {
        // The next write torn after every whole sector (0 sectors .. all but one).
        let torn_sectors = rec.writes.get(done).map_or(0, |(_, data)| data.len() / 512);
        for torn in 0..=torn_sectors {
            let mut d = MemDisk::from_bytes(old_bytes.clone());
            for (off, data) in &rec.writes[..done] {
                d.write_all_at(data, *off).unwrap();
            }
            if let Some((off, data)) = rec.writes.get(done) {
                d.write_all_at(&data[..torn * 512], *off).unwrap();
            }
            let read = read_gpt(&d).unwrap_or_else(|e| panic!("cut {done}/{torn}: {e}"));
            assert!(
                read.table == old || read.table == new,
                "cut after {done} writes + {torn} sectors reads neither old nor new"
            );
            // Once the primary copy is complete and flushed, the new state wins.
            if done >= 2 {
                assert_eq!(read.table, new, "cut {done}/{torn}");
            }
            cuts += 1;
        }
    }
    assert!(cuts > 60, "{cuts}");
}
