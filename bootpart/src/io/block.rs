//! Positional block I/O: the one trait GPT code reads and writes through.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// Positional reads and writes on a disk or disk image, plus a data flush.
///
/// Implemented for [`std::fs::File`] (image files and block devices alike) and for [`MemDisk`].
/// Tests may implement it with a fault-injecting disk that records every write and flush.
///
/// # Example
///
/// ```
/// use bootpart::io::{BlockIo, MemDisk};
///
/// let mut disk = MemDisk::new(4096);
/// disk.write_all_at(b"hello", 512)?;
/// disk.sync_data()?;
/// let mut buf = [0u8; 5];
/// disk.read_exact_at(&mut buf, 512)?;
/// assert_eq!(&buf, b"hello");
/// assert_eq!(disk.len()?, 4096);
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait BlockIo {
    /// Fill `buf` from `offset`; an error (`UnexpectedEof`) if the disk ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Flush written data to stable storage (`fdatasync` for files and block devices).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Size of the disk in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the disk has no bytes at all.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl BlockIo for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn len(&self) -> io::Result<u64> {
        // `metadata().len()` is 0 for block devices; seeking to the end works for both.
        let mut f: &File = self;
        f.seek(SeekFrom::End(0))
    }
}

/// Implements [`BlockIo`] for pointer types by forwarding every call to the device pointed at.
macro_rules! forward_block_io {
    ($($pointer:ty),+) => {$(
        impl<T: BlockIo + ?Sized> BlockIo for $pointer {
            fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
                (**self).read_exact_at(buf, offset)
            }

            fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
                (**self).write_all_at(buf, offset)
            }

            fn sync_data(&mut self) -> io::Result<()> {
                (**self).sync_data()
            }

            fn len(&self) -> io::Result<u64> {
                (**self).len()
            }
        }
    )+};
}

forward_block_io!(&mut T, Box<T>);

/// A fixed-size disk in memory. Writes past its end fail and change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDisk {
    data: Vec<u8>,
}

impl MemDisk {
    /// A zero-filled disk of `len` bytes.
    pub fn new(len: usize) -> MemDisk {
        MemDisk { data: vec![0; len] }
    }

    /// A disk holding exactly these bytes.
    pub fn from_bytes(data: Vec<u8>) -> MemDisk {
        MemDisk { data }
    }

    /// The disk's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The disk's bytes, mutably (to corrupt them in tests).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The disk's bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).ok();
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.data.len() => Ok(s..e),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{len} bytes at offset {offset} pass the end of a {}-byte disk",
                    self.data.len()
                ),
            )),
        }
    }
}

impl BlockIo for MemDisk {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        self.data[r].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }
}
