//! The same flows on a real block device: a loop device over a reference-layout image, with
//! its partitions added by `partx -a`. Root only; skipped with a notice otherwise, failed under CI=true. The loop
//! device is detached on drop, also when an assertion fails.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;

use bootpart::io::{IoMode, PartitionReader, PartitionWriter};
use bootpart::running::find_running_set_with;
use bootpart::sys::{DevId, SysRoots};
use bootpart::{Disk, Error, SetId};
use fixtures::disk::{DiskImageBuilder, LoopDevice};

fn setup() -> Option<(fixtures::disk::DiskImage, LoopDevice)> {
    if !fixtures::gate::require_root("the loop-device test") {
        return None;
    }
    let img = DiskImageBuilder::new().build_temp().unwrap();
    let dev = LoopDevice::attach(&img.path).unwrap();
    Some((img, dev))
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

#[test]
fn open_write_read_back_on_a_loop_device() {
    let Some((img, dev)) = setup() else { return };
    let disk = Disk::open(dev.path()).unwrap();
    let rdev = fs::metadata(dev.path()).unwrap().rdev();
    assert_eq!(disk.block_device(), Some(DevId::from_dev_t(rdev)));
    let file_disk = Disk::open(&img.path).unwrap();
    assert_eq!(disk.table(), file_disk.table());
    // Partition device nodes come from sysfs.
    for p in disk.layout().partitions() {
        assert_eq!(
            p.device_node.as_deref(),
            Some(dev.partition_node(p.number).as_path()),
            "partition {}",
            p.number
        );
    }

    let root_b = disk.set(SetId::B).unwrap().root.clone();
    let data = pattern(2 * 1024 * 1024 + 777, 42);
    let mut w = PartitionWriter::open(&disk, &root_b, IoMode::Auto).unwrap();
    assert!(w.is_direct(), "loop devices support O_DIRECT");
    // The device's logical block size (BLKSSZGET), the one its GPT is laid out in.
    assert_eq!(w.alignment() as u64, disk.sector_size());
    w.write_all(&data).unwrap();
    w.sync().unwrap();
    // Past the end: refused, nothing written.
    assert!(matches!(
        w.write_all_at(&[1u8; 4096], root_b.byte_len() - 512),
        Err(Error::OutOfBounds { .. })
    ));
    drop(w);

    let mut r = PartitionReader::open(&disk, &root_b, IoMode::Direct).unwrap();
    let mut back = vec![0u8; data.len()];
    r.read_exact(&mut back).unwrap();
    assert!(back == data);

    // Independently, through the partition's own node.
    let mut node = File::open(root_b.device_node.as_ref().unwrap()).unwrap();
    let mut via_node = vec![0u8; data.len()];
    node.read_exact(&mut via_node).unwrap();
    assert!(via_node == data, "partition node disagrees");

    // And on the image file underneath: only ROOT-B changed.
    let after = img.bytes().unwrap();
    let s = root_b.byte_offset() as usize;
    assert!(after[s..s + data.len()] == data[..]);
    assert!(
        after[s + data.len()..s + root_b.byte_len() as usize]
            .iter()
            .all(|&b| b == 0)
    );
}

#[test]
fn running_set_through_real_sysfs_of_a_loop_partition() {
    let Some((_img, dev)) = setup() else { return };
    let disk = Disk::open(dev.path()).unwrap();
    // Pretend `/` is mounted from ROOT-B of the loop device; everything else is the real
    // sysfs and /dev.
    let node = dev.partition_node(6);
    let part_dev = DevId::from_dev_t(fs::metadata(&node).unwrap().rdev());
    let proc = tempfile::tempdir().unwrap();
    fs::create_dir_all(proc.path().join("self")).unwrap();
    fs::write(
        proc.path().join("self/mountinfo"),
        format!(
            "27 1 {part_dev} / / ro,relatime - ext4 {} ro\n",
            node.display()
        ),
    )
    .unwrap();
    let roots = SysRoots {
        proc: proc.path().to_owned(),
        ..SysRoots::default()
    };
    assert_eq!(find_running_set_with(&disk, &roots).unwrap(), SetId::B);

    // The same root, checked against a different disk: a clear error.
    let other = DiskImageBuilder::new().build_temp().unwrap();
    let other_dev = LoopDevice::attach(&other.path).unwrap();
    let other_disk = Disk::open(other_dev.path()).unwrap();
    let err = find_running_set_with(&other_disk, &roots).unwrap_err();
    assert!(err.to_string().contains("not on"), "{err}");
}

#[test]
fn four_k_sector_loop_device() {
    if !fixtures::gate::require_root("the loop-device test") {
        return;
    }
    let img = DiskImageBuilder::new()
        .sector_size(4096)
        .build_temp()
        .unwrap();
    let dev = LoopDevice::attach_with_sector_size(&img.path, 4096).unwrap();
    let disk = Disk::open(dev.path()).unwrap();
    assert_eq!(disk.sector_size(), 4096);
    let hash_a = disk.set(SetId::A).unwrap().hash.clone();
    assert_eq!(hash_a.byte_offset(), img.partitions[2].first_lba * 4096);
    let data = pattern(hash_a.byte_len() as usize, 9);
    let mut w = PartitionWriter::open(&disk, &hash_a, IoMode::Direct).unwrap();
    // Asked from the device (BLKSSZGET), not assumed.
    assert_eq!(w.alignment(), 4096);
    w.write_all_at(&data, 0).unwrap();
    w.sync().unwrap();
    let mut r = PartitionReader::open(&disk, &hash_a, IoMode::Direct).unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    assert!(back == data);
    let mut node = File::open(dev.partition_node(3)).unwrap();
    let mut via_node = Vec::new();
    node.read_to_end(&mut via_node).unwrap();
    assert!(via_node == data, "partition node disagrees");
}
