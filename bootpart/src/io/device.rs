//! What a disk or disk-image file needs for direct I/O: its logical block size, asked from the
//! kernel (`BLKSSZGET` for block devices, sysfs for the device under an image file) rather than
//! assumed. The one `ioctl` call lives here, and is the crate's only `unsafe`.
#![allow(unsafe_code)]

use crate::sys::{DevId, SysRoots, read_small};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Alignment assumed when the kernel cannot be asked (an image file on a file system without a
/// block device, such as tmpfs or overlayfs): 4096 covers 512-byte and 4K-native sectors.
pub const DEFAULT_ALIGN: usize = 4096;

// BLKSSZGET: `int` logical block size of a block device (linux/fs.h).
nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);

/// The logical block size of the block device open as `file`.
fn logical_block_size(file: &File) -> std::io::Result<usize> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one `int` through the pointer, which points at `size`, a live
    // local `c_int`; the descriptor is open for the whole call (borrowed from `file`).
    unsafe { blksszget(file.as_raw_fd(), &raw mut size) }.map_err(std::io::Error::from)?;
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .ok_or_else(|| std::io::Error::other(format!("BLKSSZGET returned {size}")))
}

/// The logical block size sysfs reports for the block device `dev` (a partition's queue
/// attributes live in its parent disk's directory).
fn sysfs_block_size(roots: &SysRoots, dev: DevId) -> Option<usize> {
    let dir = std::fs::canonicalize(roots.dev_block_link(dev)).ok()?;
    [dir.join("queue"), dir.parent()?.join("queue")]
        .iter()
        .find_map(|q| read_small(&q.join("logical_block_size")).ok())
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|s| s.is_power_of_two())
}

/// The alignment (offset, length and buffer address) direct I/O on `file` needs: the logical
/// block size of the block device, or of the device holding the image file. Falls back to
/// [`DEFAULT_ALIGN`] when neither can be asked.
pub fn direct_alignment(file: &File) -> usize {
    let Ok(meta) = file.metadata() else {
        return DEFAULT_ALIGN;
    };
    if meta.file_type().is_block_device() {
        return logical_block_size(file).unwrap_or(DEFAULT_ALIGN);
    }
    sysfs_block_size(&SysRoots::default(), DevId::from_dev_t(meta.dev()))
        // Some file systems (btrfs) want their own block size, not the device's, for direct
        // I/O on a file: never go below DEFAULT_ALIGN for files, only above it.
        .map_or(DEFAULT_ALIGN, |s| s.max(DEFAULT_ALIGN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_files_get_at_least_the_default() {
        let f = tempfile::tempfile().unwrap();
        let a = direct_alignment(&f);
        assert!(a >= DEFAULT_ALIGN && a.is_power_of_two(), "{a}");
    }

    #[test]
    fn blksszget_refuses_a_regular_file() {
        // ENOTTY: the ioctl is really issued, and a file is not a block device.
        let f = tempfile::tempfile().unwrap();
        assert!(logical_block_size(&f).is_err());
    }
}
