//! Where staged images go: the [`Sink`] trait (positioned writes, one flush, read-back that
//! bypasses the page cache) and its two implementations: [`BootpartSink`] (a partition found by
//! `bootpart`, written through [`bootpart::io::PartitionWriter`]) and [`PartitionFile`] (a byte
//! range of any file or block device); plus [`AlignedBuf`], a heap buffer aligned for
//! `O_DIRECT` built without `unsafe`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use bootpart::io::IoMode;

/// The alignment used for direct I/O: buffers, offsets and lengths are multiples of it. 4096
/// covers both 512-byte and 4K-native logical block sizes.
pub const DIRECT_ALIGN: usize = 4096;

/// A destination for a staged image: a fixed-size byte range (a partition) written at positions.
///
/// The pipeline calls [`Sink::write_all_at`] with buffers whose address, offset and length are
/// multiples of [`Sink::alignment`], except for the image's last write, whose length may not
/// be; it calls [`Sink::sync`] once after the last write, then reads the image back with
/// [`Sink::read_exact_at`] (same alignment rule); when the sink offers a
/// [`Sink::read_back_handle`], the ranges flushed while writing are read back through it
/// instead, and only the rest after [`Sink::sync`]. Offsets are relative to the start of the
/// partition. Implementations must refuse (write nothing) a write that would pass
/// [`Sink::capacity`], and the read-back must come from the device, not the page cache.
pub trait Sink: Send {
    /// Size of the partition in bytes.
    fn capacity(&self) -> u64;
    /// Alignment the fast path needs (1 when writes go through the page cache).
    fn alignment(&self) -> usize;
    /// Whether writes bypass the page cache (`O_DIRECT`).
    fn is_direct(&self) -> bool;
    /// Write all of `buf` at `offset`.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Flush written data to stable storage (`fdatasync`), and make later reads come from the
    /// device.
    fn sync(&mut self) -> io::Result<()>;
    /// Read exactly `buf.len()` bytes at `offset`, bypassing the page cache.
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// An independent handle for aligned direct writes into the same partition that several
    /// threads may use at once (the pipeline keeps a few writes in flight through it). `None`
    /// (the default) when the sink only writes one at a time; [`Sink::sync`] must cover what
    /// was written through the handle.
    fn parallel_writer(&self) -> Option<Arc<dyn ParallelWrite>> {
        None
    }
    /// An independent handle that flushes and reads back the partition while the pipeline
    /// keeps writing further on, so that the read-back overlaps the writes. The pipeline only
    /// reads a range through it after every write into that range has returned and a
    /// [`ReadBack::sync_data`] call started after those writes has returned. `None` (the
    /// default) when the sink can only be read back after the final [`Sink::sync`].
    fn read_back_handle(&self) -> Option<Box<dyn ReadBack>> {
        None
    }
}

/// Flush and read back a partition while it is being written: see [`Sink::read_back_handle`].
pub trait ReadBack: Send {
    /// Flush everything written to the partition so far, through any handle, to stable
    /// storage (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Read exactly `buf.len()` bytes at `offset` (partition-relative) from the device,
    /// bypassing the page cache. Only called for flushed ranges that are no longer written.
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A read-back handle on a byte range of a file or block device: `O_DIRECT` reads when
/// possible, otherwise buffered reads after dropping the range's (clean, flushed) cached pages.
#[derive(Debug)]
struct RegionReader {
    path: PathBuf,
    base: u64,
    len: u64,
    direct: Option<File>,
    buffered: File,
}

impl RegionReader {
    /// `None` when the partition does not start on a page boundary: the pipeline's region
    /// boundaries (page multiples from the partition start) would then split pages, which a
    /// later write could keep in the page cache; such partitions are read back after the end.
    fn open(path: &Path, base: u64, len: u64, direct: bool) -> Option<Box<dyn ReadBack>> {
        if base % DIRECT_ALIGN as u64 != 0 {
            return None;
        }
        let buffered = File::open(path).ok()?;
        // No readahead through this handle: it would pull not yet written ranges into the
        // page cache for nothing.
        let _ = nix::fcntl::posix_fadvise(
            &buffered,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
        );
        let direct = if direct {
            Some(
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok()?,
            )
        } else {
            None
        };
        Some(Box::new(Self {
            path: path.to_owned(),
            base,
            len,
            direct,
            buffered,
        }))
    }
}

impl ReadBack for RegionReader {
    fn sync_data(&mut self) -> io::Result<()> {
        // fdatasync is per file (or block device), whichever descriptor it is called on.
        self.buffered.sync_data()
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "reading back {} bytes at offset {offset} would pass the end of the \
                     {}-byte partition at {} in {}",
                    buf.len(),
                    self.len,
                    self.base,
                    self.path.display()
                ),
            ));
        }
        let abs = self.base + offset;
        if let Some(direct) = &self.direct {
            if PartitionFile::is_aligned(buf, offset) {
                match direct.read_exact_at(buf, abs) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                    other => return other,
                }
            }
        }
        // The range is flushed and no longer written: its cached pages are clean and can be
        // dropped, so that the read comes from the device.
        let off = libc::off_t::try_from(abs).map_err(io::Error::other)?;
        let len = libc::off_t::try_from(buf.len()).map_err(io::Error::other)?;
        nix::fcntl::posix_fadvise(
            &self.buffered,
            off,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(io::Error::from)?;
        self.buffered.read_exact_at(buf, abs)
    }
}

/// Concurrent positioned writes: see [`Sink::parallel_writer`].
pub trait ParallelWrite: Send + Sync {
    /// Write all of `buf` at `offset` (partition-relative; address, offset and length aligned
    /// to [`DIRECT_ALIGN`]); refuses (writes nothing) past the partition end.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

/// A second `O_DIRECT` descriptor on a partition, for [`ParallelWrite`].
#[derive(Debug)]
struct DirectHandle {
    file: File,
    path: PathBuf,
    base: u64,
    len: u64,
}

impl DirectHandle {
    fn open(path: &Path, base: u64, len: u64) -> Option<Arc<dyn ParallelWrite>> {
        if base % DIRECT_ALIGN as u64 != 0 {
            return None;
        }
        let file = open_direct(path).ok()?;
        Some(Arc::new(Self {
            file,
            path: path.to_owned(),
            base,
            len,
        }))
    }
}

impl ParallelWrite for DirectHandle {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) || !PartitionFile::is_aligned(buf, offset) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes at offset {offset} of the {}-byte partition at {} in {}: past its \
                     end or not {DIRECT_ALIGN}-byte aligned",
                    buf.len(),
                    self.len,
                    self.base,
                    self.path.display()
                ),
            ));
        }
        self.file.write_all_at(buf, self.base + offset)
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn capacity(&self) -> u64 {
        (**self).capacity()
    }
    fn alignment(&self) -> usize {
        (**self).alignment()
    }
    fn is_direct(&self) -> bool {
        (**self).is_direct()
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn parallel_writer(&self) -> Option<Arc<dyn ParallelWrite>> {
        (**self).parallel_writer()
    }
    fn read_back_handle(&self) -> Option<Box<dyn ReadBack>> {
        (**self).read_back_handle()
    }
}

/// A partition: a byte range `[offset, offset + len)` of a disk-image file or a block device.
#[derive(Debug)]
pub struct PartitionFile {
    path: PathBuf,
    offset: u64,
    len: u64,
    /// Opened with `O_DIRECT` when direct I/O is in use.
    direct: Option<File>,
    /// Always open: for buffered mode and for unaligned tails in direct mode.
    buffered: File,
}

impl PartitionFile {
    /// Open the byte range `[offset, offset + len)` of `path` (an existing file or block
    /// device) for writing and read-back.
    pub fn open(path: &Path, offset: u64, len: u64, mode: IoMode) -> io::Result<Self> {
        let buffered = OpenOptions::new().read(true).write(true).open(path)?;
        let aligned = offset % DIRECT_ALIGN as u64 == 0;
        let direct = match mode {
            IoMode::Buffered => None,
            IoMode::Direct if !aligned => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "partition offset {offset} of {} is not {DIRECT_ALIGN}-byte aligned, \
                         direct I/O is impossible",
                        path.display()
                    ),
                ));
            }
            IoMode::Direct => Some(open_direct(path)?),
            IoMode::Auto if !aligned => None,
            IoMode::Auto => open_direct(path).ok(),
        };
        Ok(Self {
            path: path.to_owned(),
            offset,
            len,
            direct,
            buffered,
        })
    }

    /// The file or device this partition lives on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_range(&self, len: usize, offset: u64) -> io::Result<u64> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= self.len => Ok(self.offset + offset),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at offset {offset} would pass the end of the {}-byte partition \
                     at {} in {}",
                    self.len,
                    self.offset,
                    self.path.display()
                ),
            )),
        }
    }

    fn is_aligned(buf: &[u8], offset: u64) -> bool {
        buf.as_ptr().align_offset(DIRECT_ALIGN) == 0
            && buf.len() % DIRECT_ALIGN == 0
            && offset % DIRECT_ALIGN as u64 == 0
    }
}

fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

impl Sink for PartitionFile {
    fn capacity(&self) -> u64 {
        self.len
    }

    fn alignment(&self) -> usize {
        if self.direct.is_some() {
            DIRECT_ALIGN
        } else {
            1
        }
    }

    fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let abs = self.check_range(buf.len(), offset)?;
        if let Some(direct) = &self.direct {
            if Self::is_aligned(buf, offset) {
                match direct.write_all_at(buf, abs) {
                    // Some file systems accept O_DIRECT at open and refuse it at write time:
                    // fall back to buffered I/O for the rest of the image.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                    other => return other,
                }
            }
        }
        self.buffered.write_all_at(buf, abs)
    }

    fn sync(&mut self) -> io::Result<()> {
        // One fdatasync covers both descriptors: it flushes the file's dirty pages and the
        // device cache.
        self.buffered.sync_data()?;
        // Drop whatever the buffered path left in the page cache so that the read-back comes
        // from the device.
        let off = libc::off_t::try_from(self.offset).unwrap_or(0);
        let len = libc::off_t::try_from(self.len).unwrap_or(0);
        nix::fcntl::posix_fadvise(
            &self.buffered,
            off,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(io::Error::from)
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let abs = self.check_range(buf.len(), offset)?;
        if let Some(direct) = &self.direct {
            if Self::is_aligned(buf, offset) {
                return direct.read_exact_at(buf, abs);
            }
        }
        self.buffered.read_exact_at(buf, abs)
    }

    fn parallel_writer(&self) -> Option<Arc<dyn ParallelWrite>> {
        self.direct.as_ref()?;
        DirectHandle::open(&self.path, self.offset, self.len)
    }

    fn read_back_handle(&self) -> Option<Box<dyn ReadBack>> {
        RegionReader::open(&self.path, self.offset, self.len, self.direct.is_some())
    }
}

/// A partition of a [`bootpart::Disk`]: writes go through [`PartitionWriter`] (bounded by the
/// partition, `O_DIRECT` with a buffered fallback); the read-back goes through a
/// [`PartitionFile`] over the same byte range, opened after the flush (4 MiB `O_DIRECT` reads,
/// or buffered reads after dropping the cached pages). [`PartitionReader`] would do too, but its
/// 1 MiB reads made the read-back twice as slow on a loop device (see `BENCHMARKS.md`).
///
/// [`PartitionWriter`]: bootpart::io::PartitionWriter
/// [`PartitionReader`]: bootpart::io::PartitionReader
#[derive(Debug)]
pub struct BootpartSink<'a> {
    disk: &'a bootpart::Disk,
    part: bootpart::Partition,
    mode: IoMode,
    writer: bootpart::io::PartitionWriter,
    reader: Option<PartitionFile>,
}

impl<'a> BootpartSink<'a> {
    /// Open `part` of `disk` for staging.
    pub fn open(
        disk: &'a bootpart::Disk,
        part: &bootpart::Partition,
        mode: IoMode,
    ) -> Result<Self, bootpart::Error> {
        let writer = bootpart::io::PartitionWriter::open(disk, part, mode)?;
        Ok(Self {
            disk,
            part: part.clone(),
            mode,
            writer,
            reader: None,
        })
    }

    /// The partition being written.
    pub fn partition(&self) -> &bootpart::Partition {
        &self.part
    }

    fn reader(&mut self) -> io::Result<&mut PartitionFile> {
        if self.reader.is_none() {
            let mut r = PartitionFile::open(
                self.disk.path(),
                self.part.byte_offset(),
                self.part.byte_len(),
                self.mode,
            )?;
            // Nothing is dirty through this handle: this only drops the cached pages, so that
            // buffered reads come from the disk.
            r.sync()?;
            self.reader = Some(r);
        }
        self.reader
            .as_mut()
            .ok_or_else(|| io::Error::other("partition reader not open"))
    }
}

impl Sink for BootpartSink<'_> {
    fn capacity(&self) -> u64 {
        self.writer.capacity()
    }

    fn alignment(&self) -> usize {
        self.writer.alignment()
    }

    fn is_direct(&self) -> bool {
        self.writer.is_direct()
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writer
            .write_all_at(buf, offset)
            .map_err(io::Error::other)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.writer.sync()?;
        // Opened after the flush, which is when the cached pages can be dropped.
        self.reader = None;
        self.reader().map(|_| ())
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reader()?.read_exact_at(buf, offset)
    }

    fn parallel_writer(&self) -> Option<Arc<dyn ParallelWrite>> {
        if !self.writer.is_direct() {
            return None;
        }
        DirectHandle::open(
            self.disk.path(),
            self.part.byte_offset(),
            self.part.byte_len(),
        )
    }

    fn read_back_handle(&self) -> Option<Box<dyn ReadBack>> {
        RegionReader::open(
            self.disk.path(),
            self.part.byte_offset(),
            self.part.byte_len(),
            self.writer.is_direct(),
        )
    }
}

/// A heap buffer whose start is aligned to [`DIRECT_ALIGN`], for `O_DIRECT` I/O. Built from an
/// over-allocated `Vec` and a safe `align_offset`, so it needs no `unsafe`.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (pages are only touched when written).
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        // `align_offset` may (in theory) give up and return usize::MAX; fall back to 0 then,
        // which only costs the direct path.
        let start = if start < DIRECT_ALIGN { start } else { 0 };
        Self {
            storage,
            start,
            len,
        }
    }

    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no capacity.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The aligned bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The aligned bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned() {
        for len in [0, 1, 4096, 65536, 1 << 20] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr().align_offset(DIRECT_ALIGN), 0);
            assert_eq!(b.as_slice().len(), len);
        }
    }

    #[test]
    fn read_back_while_writing_only_for_page_aligned_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; 4 * 8192]).unwrap();
        let aligned = PartitionFile::open(&path, 8192, 8192, IoMode::Buffered).unwrap();
        assert!(aligned.read_back_handle().is_some());
        let unaligned = PartitionFile::open(&path, 8192 + 512, 8192, IoMode::Buffered).unwrap();
        assert!(unaligned.read_back_handle().is_none());
    }

    #[test]
    fn partition_file_refuses_writes_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0xAAu8; 3 * 8192]).unwrap();
        let mut p = PartitionFile::open(&path, 8192, 8192, IoMode::Auto).unwrap();
        let mut buf = AlignedBuf::new(8192 + 4096);
        buf.as_mut_slice().fill(1);
        assert!(p.write_all_at(buf.as_slice(), 0).is_err());
        assert!(p.write_all_at(&buf.as_slice()[..1], 8192).is_err());
        p.write_all_at(&buf.as_slice()[..8192], 0).unwrap();
        p.write_all_at(&buf.as_slice()[..3], 100).unwrap();
        p.sync().unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert!(disk[..8192].iter().all(|&b| b == 0xAA));
        assert!(disk[8192..16384].iter().all(|&b| b == 1));
        assert!(disk[16384..].iter().all(|&b| b == 0xAA));
    }
}
