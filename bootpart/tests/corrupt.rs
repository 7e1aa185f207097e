//! Corrupt inputs: each case gives a clear error and changes nothing on disk.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use bootpart::gpt::{GptCopy, read_gpt};
use bootpart::{Disk, Error};
use fixtures::disk::{DiskImage, DiskImageBuilder};

fn crc32(b: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(b)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Apply `edit` to both header copies and to both entry arrays, then recompute every CRC so
/// the damage is semantic only.
fn edit_both_copies(
    img: &DiskImage,
    edit_header: impl Fn(&mut [u8]),
    edit_entries: impl Fn(&mut [u8]),
) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img.path)
        .unwrap();
    let last = img.len / 512 - 1;
    for lba in [1, last] {
        let mut h = vec![0u8; 512];
        f.read_exact_at(&mut h, lba * 512).unwrap();
        let entries_lba = le64(&h, 72);
        let n = le32(&h, 80) as usize;
        let mut entries = vec![0u8; n * 128];
        f.read_exact_at(&mut entries, entries_lba * 512).unwrap();
        edit_entries(&mut entries);
        f.write_all_at(&entries, entries_lba * 512).unwrap();
        edit_header(&mut h);
        let size = le32(&h, 84) as usize;
        let n = le32(&h, 80) as usize;
        let array_crc = crc32(&entries[..(n * size).min(entries.len())]);
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&h, lba * 512).unwrap();
    }
    f.sync_all().unwrap();
}

/// Open the disk, expect an error containing every `needle`, and check no byte changed.
fn expect_error(img: &DiskImage, needles: &[&str]) -> Error {
    let before = img.bytes().unwrap();
    let err = Disk::open(&img.path).unwrap_err();
    let text = fixtures::error_chain(&err);
    for n in needles {
        assert!(text.contains(n), "expected {n:?} in: {text}");
    }
    assert!(text.contains(&img.path.display().to_string()), "{text}");
    assert!(img.bytes().unwrap() == before, "opening changed the disk");
    err
}

#[test]
fn truncated_disk() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let f = OpenOptions::new().write(true).open(&img.path).unwrap();
    f.set_len(img.len / 2).unwrap();
    drop(f);
    let err = expect_error(&img, &["truncated disk?", "backup copy: no GPT signature"]);
    assert!(matches!(err, Error::Gpt { .. }));
}

#[test]
fn truncated_to_almost_nothing() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&img.path)
        .unwrap()
        .set_len(1024)
        .unwrap();
    expect_error(&img, &["too small to hold a GPT"]);
}

#[test]
fn bad_signature_on_both_copies() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let f = OpenOptions::new().write(true).open(&img.path).unwrap();
    f.write_all_at(b"NOT PART", 512).unwrap();
    f.write_all_at(b"NOT PART", img.len - 512).unwrap();
    drop(f);
    expect_error(
        &img,
        &[
            "primary copy: no GPT signature at LBA 1",
            "backup copy: no GPT signature",
        ],
    );
}

#[test]
fn bad_header_crcs_on_both_copies() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let f = OpenOptions::new().write(true).open(&img.path).unwrap();
    // Change the first-usable LBA field without fixing the CRC.
    f.write_all_at(&[0x7f], 512 + 40).unwrap();
    f.write_all_at(&[0x7f], img.len - 512 + 40).unwrap();
    drop(f);
    expect_error(
        &img,
        &[
            "primary copy: header CRC mismatch",
            "backup copy: header CRC mismatch",
        ],
    );
}

#[test]
fn bad_entry_array_crcs_on_both_copies() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let f = OpenOptions::new().write(true).open(&img.path).unwrap();
    // Flip an attribute bit of entry 1 in both arrays.
    f.write_all_at(&[0x01], 1024 + 48 + 6).unwrap();
    let backup_entries = img.len - 512 - 32 * 512;
    f.write_all_at(&[0x01], backup_entries + 48 + 6).unwrap();
    drop(f);
    expect_error(
        &img,
        &[
            "primary copy: partition entry array CRC mismatch",
            "backup copy: partition entry array CRC mismatch",
        ],
    );
}

#[test]
fn only_primary_bad_is_not_an_error_and_reports_backup() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let f = OpenOptions::new().write(true).open(&img.path).unwrap();
    f.write_all_at(&[0x7f], 512 + 40).unwrap();
    drop(f);
    let before = img.bytes().unwrap();
    let disk = Disk::open(&img.path).unwrap();
    assert_eq!(disk.gpt().used, GptCopy::Backup);
    assert!(disk.gpt().primary_needs_repair());
    // Opening does not repair by itself.
    assert!(img.bytes().unwrap() == before);
}

#[test]
fn overlapping_partitions() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    // Make partition 2 start inside partition 1.
    let p1_last = img.partitions[0].last_lba;
    edit_both_copies(
        &img,
        |_| {},
        |e| e[128 + 32..128 + 40].copy_from_slice(&(p1_last - 5).to_le_bytes()),
    );
    expect_error(
        &img,
        &[
            "primary copy: partitions 1",
            "and 2",
            "overlap",
            "backup copy: partitions 1",
        ],
    );
}

#[test]
fn entry_size_not_128() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    // 256-byte entries, 64 of them: the array keeps its size, the CRCs are valid.
    edit_both_copies(
        &img,
        |h| {
            h[80..84].copy_from_slice(&64u32.to_le_bytes());
            h[84..88].copy_from_slice(&256u32.to_le_bytes());
        },
        |_| {},
    );
    expect_error(
        &img,
        &[
            "primary copy: partition entry size 256 is not supported (expected 128)",
            "backup copy: partition entry size 256",
        ],
    );
}

#[test]
fn absurd_entry_count_is_refused_without_allocating() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    edit_both_copies(
        &img,
        |h| h[80..84].copy_from_slice(&u32::MAX.to_le_bytes()),
        |_| {},
    );
    expect_error(&img, &["4294967295 partition entry slots"]);
}

#[test]
fn more_than_two_sets() {
    let img = DiskImageBuilder::new().sets(3).build_temp().unwrap();
    let err = expect_error(&img, &["third BOOT", "more than two partition sets"]);
    assert!(matches!(err, Error::Layout { .. }));
}

#[test]
fn partition_outside_the_usable_range() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let last = img.len / 512 - 1;
    edit_both_copies(
        &img,
        |_| {},
        |e| e[9 * 128 + 40..9 * 128 + 48].copy_from_slice(&last.to_le_bytes()),
    );
    expect_error(&img, &["partition 10 spans", "outside the usable range"]);
}

#[test]
fn not_a_disk_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let err = Disk::open(dir.path()).unwrap_err();
    assert!(
        fixtures::error_chain(&err).contains("neither a block device nor a regular file"),
        "{err}"
    );
    let err = Disk::open(dir.path().join("missing.img")).unwrap_err();
    assert!(
        fixtures::error_chain(&err).contains("missing.img: opening"),
        "{err}"
    );
    // A file of zeros.
    let zeros = dir.path().join("zeros.img");
    File::create(&zeros).unwrap().set_len(1 << 20).unwrap();
    let err = read_gpt(&File::open(&zeros).unwrap()).unwrap_err();
    assert!(
        fixtures::error_chain(&err).contains("no GPT signature"),
        "{err}"
    );
}
