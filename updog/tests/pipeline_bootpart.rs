//! Staging onto real partitions found by `bootpart` in GPT disk images with the reference
//! layout (and, as root, on a loop device): the image lands on the inactive ROOT partition and
//! not one other byte of the disk changes.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use bootpart::{Disk, SetId};
use fixtures::disk::DiskImageBuilder;
use lz4_flex::frame::{BlockSize, FrameEncoder, FrameInfo};
use sha2::{Digest, Sha256};
use updog::pipeline::{
    IoMode, PartitionSink, StageError, StageOptions, StagedImage, TargetInfo, stage_image,
};

fn image_data(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 3 == 0 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(
                format!("line {} of the root file system\n", x % 1000).as_bytes(),
            );
        }
    }
    out.truncate(len);
    out
}

fn compress(data: &[u8]) -> Vec<u8> {
    let info = FrameInfo::new()
        .block_size(BlockSize::Max256KB)
        .content_checksum(true);
    let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn stage_on(
    disk_path: &Path,
    stream: Vec<u8>,
    mode: IoMode,
) -> (Result<StagedImage, StageError>, u64, u64) {
    let disk = Disk::open(disk_path).unwrap();
    let root_b = disk.layout().set(SetId::B).unwrap().root.clone();
    let expected = TargetInfo {
        length: stream.len() as u64,
        sha256: Sha256::digest(&stream).into(),
    };
    let mut sink = PartitionSink::open(&disk, &root_b, mode).unwrap();
    let r = stage_image(
        Box::new(io::Cursor::new(stream)),
        &expected,
        &mut sink,
        &StageOptions::default(),
        &|_| {},
    );
    (r, root_b.byte_offset(), root_b.byte_len())
}

/// Everything outside `[start, start + len)` is unchanged and the range starts with `data`.
fn assert_only_range_changed(before: &[u8], after: &[u8], start: u64, len: u64, data: &[u8]) {
    let (start, end) = (start as usize, (start + len) as usize);
    assert_eq!(before.len(), after.len());
    assert!(
        before[..start] == after[..start],
        "bytes before ROOT-B changed"
    );
    assert!(before[end..] == after[end..], "bytes after ROOT-B changed");
    assert!(
        after[start..start + data.len()] == *data,
        "ROOT-B does not hold the image"
    );
}

#[test]
fn image_lands_on_the_inactive_root_partition_only() {
    for mode in [IoMode::Auto, IoMode::Buffered] {
        let image = DiskImageBuilder::new()
            .root_size(6 << 20)
            .build_temp()
            .unwrap();
        let data = image_data((5 << 20) + 777);
        let before = image.bytes().unwrap();
        let (r, start, len) = stage_on(&image.path, compress(&data), mode);
        let staged = r.unwrap();
        assert_eq!(staged.decoded_len, data.len() as u64);
        assert_only_range_changed(&before, &image.bytes().unwrap(), start, len, &data);
    }
}

#[test]
fn image_too_large_for_the_partition_leaves_its_neighbours_alone() {
    let image = DiskImageBuilder::new()
        .root_size(2 << 20)
        .build_temp()
        .unwrap();
    let data = image_data(3 << 20);
    let before = image.bytes().unwrap();
    let (r, start, len) = stage_on(&image.path, compress(&data), IoMode::Auto);
    assert!(
        matches!(r, Err(StageError::TooLarge { capacity, .. }) if capacity == len),
        "{r:?}"
    );
    let after = image.bytes().unwrap();
    let end = (start + len) as usize;
    assert!(before[..start as usize] == after[..start as usize]);
    assert!(before[end..] == after[end..], "bytes past ROOT-B changed");
}

/// A loop device over an image file, detached when dropped (also when the test fails).
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Option<Self> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            fixtures::gate::skip(format!("losetup: {}", String::from_utf8_lossy(&out.stderr)));
            return None;
        }
        Some(Self(PathBuf::from(
            String::from_utf8(out.stdout).ok()?.trim(),
        )))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn image_lands_on_a_loop_device_partition_as_root() {
    if !fixtures::gate::require_root("a loop device") {
        return;
    }
    let image = DiskImageBuilder::new()
        .root_size(6 << 20)
        .build_temp()
        .unwrap();
    let before = image.bytes().unwrap();
    let data = image_data(4 << 20);
    let staged = {
        let Some(dev) = Loop::attach(&image.path) else {
            return;
        };
        let (r, start, len) = stage_on(&dev.0, compress(&data), IoMode::Auto);
        let staged = r.unwrap();
        drop(dev);
        assert_only_range_changed(&before, &image.bytes().unwrap(), start, len, &data);
        staged
    };
    assert!(staged.direct_io, "a loop device takes O_DIRECT");
}
