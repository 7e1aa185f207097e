//! A byte range of a disk (a partition of a block device or of a disk-image file) read and
//! written at positions, never outside its bounds.
//!
//! [`assemble`](crate::assemble()) and [`plan`](crate::plan) read and write through the
//! [`Device`] trait, so that a caller brings its own partition-I/O stack (an updater, its
//! bounded partition readers and writers); [`Region`] is the plain one, for tools and tests.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// `len` bytes of the file or device at `path`, starting at `offset`.
#[derive(Debug)]
pub struct Region {
    file: File,
    path: PathBuf,
    offset: u64,
    len: u64,
}

fn out_of_bounds(at: u64, len: usize, region: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{len} bytes at {at} do not fit in a region of {region} bytes"),
    )
}

/// A bounded byte range of a disk that an image is assembled on, or seed chunks are read from.
pub trait Device: Sync {
    /// The disk or image file (for error messages).
    fn path(&self) -> &Path;

    /// Its length in bytes.
    fn len(&self) -> u64;

    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from position `at`; an error if that passes the end.
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()>;

    /// Writes `buf` at position `at`; an error (and nothing written) if that passes the end.
    fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()>;

    /// Flushes what was written to the device (`fdatasync`), and makes the next reads come
    /// from the device rather than from memory.
    fn sync_and_drop_cache(&self) -> io::Result<()>;

    /// Like [`Device::sync_and_drop_cache`], for the `len` bytes at `at` only: what was
    /// written there is on the device and the next reads of it come from the device. Called
    /// while other parts are still being written, so it must not hold up those writes. The
    /// default flushes and drops the whole device.
    fn sync_range_and_drop_cache(&self, at: u64, len: u64) -> io::Result<()> {
        let _ = (at, len);
        self.sync_and_drop_cache()
    }
}

impl Device for Region {
    fn path(&self) -> &Path {
        Region::path(self)
    }

    fn len(&self) -> u64 {
        Region::len(self)
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        Region::read_at(self, buf, at)
    }

    fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        Region::write_at(self, buf, at)
    }

    fn sync_and_drop_cache(&self) -> io::Result<()> {
        Region::sync_and_drop_cache(self)
    }

    fn sync_range_and_drop_cache(&self, at: u64, len: u64) -> io::Result<()> {
        Region::sync_range_and_drop_cache(self, at, len)
    }
}

/// Reads a [`Device`] from its start to its end, in reads of at most `buf.len()` bytes.
pub struct DeviceReader<'a> {
    device: &'a dyn Device,
    pos: u64,
}

impl<'a> DeviceReader<'a> {
    /// A reader at the start of `device`.
    pub fn new(device: &'a dyn Device) -> DeviceReader<'a> {
        DeviceReader { device, pos: 0 }
    }
}

impl std::fmt::Debug for DeviceReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceReader")
            .field("path", &self.device.path())
            .field("pos", &self.pos)
            .finish()
    }
}

impl Read for DeviceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.device.len().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.device.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Region {
    /// Opens the region for reading, and for writing too when `write` is set.
    pub fn open(path: &Path, offset: u64, len: u64, write: bool) -> io::Result<Region> {
        let file = OpenOptions::new().read(true).write(write).open(path)?;
        Ok(Region {
            file,
            path: path.to_owned(),
            offset,
            len,
        })
    }

    /// The disk or image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the region starts on the disk.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, at: u64, len: usize) -> io::Result<u64> {
        match at.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(self.offset + at),
            _ => Err(out_of_bounds(at, len, self.len)),
        }
    }

    /// Fills `buf` from position `at` of the region.
    pub fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let pos = self.check(at, buf.len())?;
        self.file.read_exact_at(buf, pos)
    }

    /// Writes `buf` at position `at` of the region.
    pub fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        let pos = self.check(at, buf.len())?;
        self.file.write_all_at(buf, pos)
    }

    /// Flushes what was written to the device (`fdatasync`), then drops the region's pages from
    /// the page cache, so the next reads come from the device rather than from memory.
    pub fn sync_and_drop_cache(&self) -> io::Result<()> {
        self.file.sync_data()?;
        nix::fcntl::posix_fadvise(
            self.file.as_fd(),
            self.offset as i64,
            self.len as i64,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(io::Error::from)
    }

    /// Flushes what was written to the file (`fdatasync`: all of it, there is no safe call for
    /// a range), then drops the pages of the `len` bytes at `at` from the page cache.
    pub fn sync_range_and_drop_cache(&self, at: u64, len: u64) -> io::Result<()> {
        let pos = self.check(at, usize::try_from(len).map_err(io::Error::other)?)?;
        self.file.sync_data()?;
        nix::fcntl::posix_fadvise(
            self.file.as_fd(),
            i64::try_from(pos).map_err(io::Error::other)?,
            i64::try_from(len).map_err(io::Error::other)?,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(io::Error::from)
    }

    /// A sequential reader over the whole region.
    pub fn reader(&self) -> RegionReader<'_> {
        RegionReader {
            region: self,
            pos: 0,
        }
    }
}

/// Reads a [`Region`] from its start to its end.
#[derive(Debug)]
pub struct RegionReader<'a> {
    region: &'a Region,
    pos: u64,
}

impl Read for RegionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.region.len - self.pos;
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self
            .region
            .file
            .read_at(&mut buf[..n], self.region.offset + self.pos)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ends before the region's end ({} bytes in)",
                    self.region.path.display(),
                    self.pos
                ),
            ));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_inside_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![9u8; 10_000]).unwrap();
        let region = Region::open(&path, 1000, 4000, true).unwrap();
        region.write_at(b"abc", 3997).unwrap();
        assert!(region.write_at(b"abcd", 3997).is_err());
        assert!(region.read_at(&mut [0u8; 1], 4000).is_err());
        assert!(region.read_at(&mut [0u8; 1], u64::MAX).is_err());
        region.sync_and_drop_cache().unwrap();
        let mut all = Vec::new();
        region.reader().read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 4000);
        assert_eq!(&all[3997..], b"abc");
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(&disk[4997..5000], b"abc");
        assert_eq!(disk[5000], 9);
    }
}
