//! Free-space probing, so that a fetch that cannot fit stops before it writes anything.

use std::io;
use std::path::Path;

/// Free space on the file system holding a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to unprivileged writers.
    pub available: u64,
    /// Allocation unit; each file's size is rounded up to it.
    pub block_size: u64,
}

/// Tells how much space is free where a directory lives.
pub trait SpaceProbe {
    /// Free space on the file system of `dir`.
    fn probe(&self, dir: &Path) -> io::Result<Space>;
}

/// The real probe: `statvfs(2)` (available blocks times fragment size).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatvfsProbe;

impl SpaceProbe for StatvfsProbe {
    // The statvfs field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    fn probe(&self, dir: &Path) -> io::Result<Space> {
        let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
        let frag = u64::from(st.fragment_size());
        let block_size = if frag == 0 {
            u64::from(st.block_size()).max(1)
        } else {
            frag
        };
        let blocks = u64::from(st.blocks_available());
        Ok(Space {
            available: blocks.saturating_mul(block_size),
            block_size,
        })
    }
}

/// A fixed answer, for dry runs and tests that simulate a nearly full disk.
#[derive(Debug, Clone, Copy)]
pub struct FixedSpace(pub Space);

impl SpaceProbe for FixedSpace {
    fn probe(&self, _dir: &Path) -> io::Result<Space> {
        Ok(self.0)
    }
}

/// `len` rounded up to a whole number of `block` bytes.
pub(crate) fn on_disk(len: u64, block: u64) -> u64 {
    let block = block.max(1);
    len.div_ceil(block).saturating_mul(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statvfs_probe_reads_the_temp_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let space = StatvfsProbe.probe(dir.path()).unwrap();
        assert!(space.block_size >= 512, "{space:?}");
        assert!(space.available > 0, "{space:?}");
    }

    #[test]
    fn statvfs_probe_fails_on_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StatvfsProbe.probe(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn sizes_round_up_to_blocks() {
        assert_eq!(on_disk(0, 4096), 0);
        assert_eq!(on_disk(1, 4096), 4096);
        assert_eq!(on_disk(4096, 4096), 4096);
        assert_eq!(on_disk(4097, 4096), 8192);
        assert_eq!(on_disk(7, 0), 7);
        assert_eq!(on_disk(u64::MAX, 4096), u64::MAX);
    }
}
