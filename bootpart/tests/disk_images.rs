//! `Disk::open`, set discovery and partition I/O on real disk-image files.

use std::io::{Read, Seek, SeekFrom, Write};

use bootpart::io::{IoMode, PartitionReader, PartitionWriter};
use bootpart::{Disk, Error, LayoutError, PartitionType, SetId};
use fixtures::disk::{DiskImageBuilder, PartKind};

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

#[test]
fn finds_both_sets_private_and_data() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let disk = Disk::open(&img.path).unwrap();
    let l = disk.layout();
    let nums = |s: &bootpart::PartitionSet| {
        (
            s.boot.number,
            s.root.number,
            s.hash.number,
            s.reserved.as_ref().map(|r| r.number),
        )
    };
    assert_eq!(nums(&l.a), (1, 2, 3, Some(4)));
    assert_eq!(nums(l.b.as_ref().unwrap()), (5, 6, 7, Some(8)));
    assert_eq!(l.private.as_ref().unwrap().number, 9);
    assert_eq!(l.data.as_ref().unwrap().number, 10);
    assert_eq!(disk.set(SetId::B).unwrap().id, SetId::B);
    assert!(disk.block_device().is_none());
    let root_b = &disk.set(SetId::B).unwrap().root;
    let spec = img.partition(PartKind::Root, 1).unwrap();
    assert_eq!(root_b.byte_offset(), spec.byte_offset(512));
    assert_eq!(root_b.byte_len(), spec.byte_len(512));
    assert_eq!(root_b.name, "ROOT-B");
    assert!(root_b.device_node.is_none());
    assert_eq!(l.set_of(7), Some(SetId::B));
    assert_eq!(l.set_of(9), None);
    assert_eq!(l.partitions().count(), 10);
}

#[test]
fn single_set_mode_and_clear_error_for_b() {
    let img = DiskImageBuilder::new().single_set().build_temp().unwrap();
    let disk = Disk::open(&img.path).unwrap();
    assert!(disk.layout().is_single_set());
    assert_eq!(disk.layout().a.root.number, 2);
    let err = disk.set(SetId::B).unwrap_err();
    assert!(matches!(err, Error::SingleSet { wanted: SetId::B }));
    assert!(err.to_string().contains("single-set"), "{err}");
}

#[test]
fn missing_partition_names_type_and_set() {
    let img = DiskImageBuilder::new()
        .omit(PartKind::Hash, Some(1))
        .build_temp()
        .unwrap();
    let err = Disk::open(&img.path).unwrap_err();
    match &err {
        Error::Layout { problem, .. } => assert_eq!(
            problem,
            &LayoutError::Missing {
                kind: PartitionType::Hash,
                set: SetId::B
            }
        ),
        other => panic!("unexpected {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("set B has no HASH"), "{text}");
    assert!(
        text.contains("598f10af-c955-4456-6a99-7720068a6cea"),
        "{text}"
    );

    let img = DiskImageBuilder::new()
        .single_set()
        .omit(PartKind::Root, Some(0))
        .build_temp()
        .unwrap();
    let text = Disk::open(&img.path).unwrap_err().to_string();
    assert!(text.contains("set A has no ROOT"), "{text}");
}

#[test]
fn more_than_two_sets_is_an_error() {
    let img = DiskImageBuilder::new().sets(3).build_temp().unwrap();
    let err = Disk::open(&img.path).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            Error::Layout {
                problem: LayoutError::TooManySets {
                    kind: PartitionType::Boot,
                    number: 9
                },
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("third BOOT"), "{text}");
    assert!(text.contains("more than two"), "{text}");
}

fn write_read_round_trip(mode: IoMode) {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let before = img.bytes().unwrap();
    let disk = Disk::open(&img.path).unwrap();
    let root_b = disk.set(SetId::B).unwrap().root.clone();
    // Not a multiple of the chunk or of 4096, to exercise the unaligned tail.
    let data = pattern(3 * 1024 * 1024 + 1234, 7);
    {
        let mut w = PartitionWriter::open(&disk, &root_b, mode).unwrap();
        assert_eq!(w.capacity(), root_b.byte_len());
        if mode == IoMode::Buffered {
            assert!(!w.is_direct());
        }
        // Small, odd-sized writes through `Write`.
        for piece in data.chunks(10_007) {
            w.write_all(piece).unwrap();
        }
        w.sync().unwrap();
    }
    let mut r = PartitionReader::open(&disk, &root_b, mode).unwrap();
    let mut back = vec![0u8; data.len()];
    r.read_exact(&mut back).unwrap();
    assert!(back == data, "read-back differs");
    // The rest of the partition is still zero, and reading stops at its end.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len() as u64, root_b.byte_len() - data.len() as u64);
    assert!(rest.iter().all(|&b| b == 0));
    // Nothing outside the partition changed.
    let after = img.bytes().unwrap();
    let (s, e) = (
        root_b.byte_offset() as usize,
        (root_b.byte_offset() + root_b.byte_len()) as usize,
    );
    assert!(after[..s] == before[..s], "bytes before ROOT-B changed");
    assert!(after[e..] == before[e..], "bytes after ROOT-B changed");
    assert!(after[s..s + data.len()] == data[..]);
}

#[test]
fn round_trip_auto() {
    write_read_round_trip(IoMode::Auto);
}

#[test]
fn round_trip_buffered() {
    write_read_round_trip(IoMode::Buffered);
}

#[test]
fn direct_mode_works_here_or_says_why() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let disk = Disk::open(&img.path).unwrap();
    let hash_a = disk.set(SetId::A).unwrap().hash.clone();
    match PartitionWriter::open(&disk, &hash_a, IoMode::Direct) {
        Ok(mut w) => {
            assert!(w.is_direct());
            assert_eq!(w.alignment(), 4096);
            // Unaligned offset and length, unaligned buffer address: head/body/tail split.
            let data = pattern(70_001, 3);
            w.write_all_at(&data[1..], 4095).unwrap();
            w.sync().unwrap();
            let mut r = PartitionReader::open(&disk, &hash_a, IoMode::Direct).unwrap();
            assert!(r.is_direct());
            r.seek(SeekFrom::Start(4095)).unwrap();
            let mut back = vec![0u8; 70_000];
            r.read_exact(&mut back).unwrap();
            assert!(back[..] == data[1..]);
            r.seek(SeekFrom::Start(4094)).unwrap();
            let mut one = [9u8; 1];
            r.read_exact(&mut one).unwrap();
            assert_eq!(one, [0]);
        }
        Err(Error::DirectUnsupported { reason, .. }) => {
            eprintln!("notice: O_DIRECT not available here: {reason}");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn writes_past_the_end_fail_and_write_nothing() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let disk = Disk::open(&img.path).unwrap();
    let boot_a = disk.set(SetId::A).unwrap().boot.clone();
    let before = img.bytes().unwrap();
    let cap = boot_a.byte_len();
    let mut w = PartitionWriter::open(&disk, &boot_a, IoMode::Auto).unwrap();
    let block = vec![0xAB; 8192];
    // Straddling the end.
    let err = w.write_all_at(&block, cap - 4096).unwrap_err();
    assert!(
        matches!(err, Error::OutOfBounds { partition: 1, offset, len: 8192, capacity, .. }
            if offset == cap - 4096 && capacity == cap),
        "{err}"
    );
    assert!(err.to_string().contains("nothing written"), "{err}");
    // Overflowing offsets.
    assert!(w.write_all_at(&block, u64::MAX - 10).is_err());
    w.sync().unwrap();
    assert!(
        img.bytes().unwrap() == before,
        "a refused write changed the disk"
    );
    // Exactly up to the end is fine.
    w.write_all_at(&block, cap - 8192).unwrap();
    w.sync().unwrap();
    let after = img.bytes().unwrap();
    let end = (boot_a.byte_offset() + cap) as usize;
    assert!(after[end - 8192..end].iter().all(|&b| b == 0xAB));
    assert!(after[end..] == before[end..]);
}

#[test]
fn sequential_writer_refuses_to_pass_the_end() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let disk = Disk::open(&img.path).unwrap();
    let hash_b = disk.set(SetId::B).unwrap().hash.clone();
    let before = img.bytes().unwrap();
    let mut w = PartitionWriter::open(&disk, &hash_b, IoMode::Auto).unwrap();
    let too_big = vec![0x5A; hash_b.byte_len() as usize + 1];
    let err = w.write_all(&too_big).unwrap_err();
    let inner = err.get_ref().map(ToString::to_string).unwrap_or_default();
    assert!(inner.contains("would pass its end"), "{err}");
    w.sync().unwrap();
    drop(w);
    let after = img.bytes().unwrap();
    let end = (hash_b.byte_offset() + hash_b.byte_len()) as usize;
    assert!(after[end..] == before[end..], "bytes past HASH-B changed");
    assert!(after[..hash_b.byte_offset() as usize] == before[..hash_b.byte_offset() as usize]);
}

#[test]
fn unaligned_partitions_fall_back_to_buffered_or_refuse_direct() {
    // 1536-byte alignment: partitions start at byte offsets that are not multiples of 4096.
    let img = DiskImageBuilder::new()
        .alignment(1536)
        .boot_size(1536 * 8)
        .build_temp()
        .unwrap();
    let disk = Disk::open(&img.path).unwrap();
    let boot_b = disk.set(SetId::B).unwrap().boot.clone();
    assert_ne!(boot_b.byte_offset() % 4096, 0);
    let err = PartitionWriter::open(&disk, &boot_b, IoMode::Direct).unwrap_err();
    assert!(
        matches!(&err, Error::DirectUnsupported { partition: 5, reason, .. } if reason.contains("not a multiple of the disk's 4096-byte logical block")),
        "{err}"
    );
    assert!(PartitionReader::open(&disk, &boot_b, IoMode::Direct).is_err());
    let mut w = PartitionWriter::open(&disk, &boot_b, IoMode::Auto).unwrap();
    assert!(!w.is_direct());
    assert_eq!(w.alignment(), 1);
    let data = pattern(boot_b.byte_len() as usize, 5);
    w.write_all_at(&data, 0).unwrap();
    w.sync().unwrap();
    let mut r = PartitionReader::open(&disk, &boot_b, IoMode::Auto).unwrap();
    assert!(!r.is_direct());
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    assert!(back == data);
    let after = img.bytes().unwrap();
    let s = boot_b.byte_offset() as usize;
    assert!(after[s..s + data.len()] == data[..]);
}

#[test]
fn reader_round_trips_in_both_modes_and_bounds_seeks() {
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let disk = Disk::open(&img.path).unwrap();
    let root_a = disk.set(SetId::A).unwrap().root.clone();
    for mode in [IoMode::Auto, IoMode::Buffered] {
        let data = pattern(65_536, mode as u64 + 11);
        let mut w = PartitionWriter::open(&disk, &root_a, mode).unwrap();
        w.write_all_at(&data, 0).unwrap();
        w.sync().unwrap();
        let mut r = PartitionReader::open(&disk, &root_a, mode).unwrap();
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).unwrap();
        assert!(back == data, "{mode:?}");
        assert_eq!(r.seek(SeekFrom::End(0)).unwrap(), root_a.byte_len());
        assert_eq!(r.read(&mut back).unwrap(), 0);
        assert!(
            r.seek(SeekFrom::Current(-(root_a.byte_len() as i64) - 1))
                .is_err()
        );
    }
}
