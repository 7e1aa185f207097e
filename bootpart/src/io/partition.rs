//! Bounded writers and readers for one partition: the one partition-I/O stack that staging,
//! tests and benchmarks all use.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::AlignedBuf;
use super::device::direct_alignment;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::layout::Partition;

/// Size of the staging buffers of the writer's `Write` impl and of the reader.
pub const CHUNK: usize = 1 << 20;

/// How a partition is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// Direct I/O (`O_DIRECT`) when the partition and file system allow it, buffered otherwise.
    #[default]
    Auto,
    /// Direct I/O or an error.
    Direct,
    /// Through the page cache. The reader drops the partition's cached pages before it reads
    /// (`posix_fadvise(DONTNEED)`), so it reads what is on the disk once the writer synced.
    Buffered,
}

#[derive(Debug, Clone)]
struct Target {
    path: PathBuf,
    number: u32,
    kind: &'static str,
    start: u64,
    capacity: u64,
}

/// The descriptors of an open partition: a buffered one always (unaligned pieces, buffered
/// mode, flushes), an `O_DIRECT` one when direct I/O works here.
#[derive(Debug)]
struct Handles {
    buffered: File,
    direct: Option<File>,
    /// What direct I/O on this disk needs (its logical block size), when direct.
    align: usize,
}

impl Handles {
    fn is_aligned(&self, buf: &[u8], offset: u64) -> bool {
        buf.as_ptr().addr() % self.align == 0
            && buf.len() % self.align == 0
            && offset % self.align as u64 == 0
    }

    /// Drop the cached pages of `[abs, abs + len)`, so that buffered reads of that range come
    /// from the disk (its data must have been flushed, or the pages are dirty and stay).
    fn drop_cached(&self, abs: u64, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(abs).map_err(io::Error::other)?;
        let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
        nix::fcntl::posix_fadvise(
            &self.buffered,
            off,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(io::Error::from)
    }
}

impl Target {
    fn new(path: &Path, part: &Partition) -> Target {
        Target {
            path: path.to_owned(),
            number: part.number,
            kind: part.kind_name(),
            start: part.byte_offset(),
            capacity: part.byte_len(),
        }
    }

    fn err(&self, what: &str) -> impl FnOnce(io::Error) -> Error + use<> {
        let (partition, path, what) = (self.number, self.path.clone(), what.to_owned());
        move |source| Error::PartitionIo {
            partition,
            path,
            what,
            source,
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(Error::OutOfBounds {
                partition: self.number,
                kind: self.kind,
                offset,
                len,
                capacity: self.capacity,
            }),
        }
    }

    /// Open the disk, with `O_DIRECT` too when `mode` asks for it and it works here (checked by
    /// an aligned read at the partition start).
    fn open(&self, write: bool, mode: IoMode) -> Result<Handles> {
        let buffered = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.path)
            .map_err(self.err("opening"))?;
        let plain = |buffered| Handles {
            buffered,
            direct: None,
            align: 1,
        };
        if mode == IoMode::Buffered {
            return Ok(plain(buffered));
        }
        let refuse = |buffered, reason: String| -> Result<Handles> {
            if mode == IoMode::Direct {
                Err(Error::DirectUnsupported {
                    path: self.path.clone(),
                    partition: self.number,
                    reason,
                })
            } else {
                Ok(plain(buffered))
            }
        };
        let align = direct_alignment(&buffered);
        if self.start % align as u64 != 0 {
            let reason = format!(
                "partition starts at byte {}, not a multiple of the disk's {align}-byte \
                 logical block",
                self.start
            );
            return refuse(buffered, reason);
        }
        let direct = match OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return refuse(buffered, format!("O_DIRECT open refused: {e}"));
            }
            Err(e) => return Err(self.err("opening with O_DIRECT")(e)),
        };
        let mut probe = AlignedBuf::new(align, align);
        match direct.read_at(&mut probe, self.start) {
            Ok(_) => Ok(Handles {
                buffered,
                direct: Some(direct),
                align,
            }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                refuse(buffered, format!("O_DIRECT read refused: {e}"))
            }
            Err(e) => Err(self.err("probing direct I/O")(e)),
        }
    }
}

/// Writes into one partition and never past its end.
///
/// Offsets are relative to the partition start. In direct mode, the aligned middle of each
/// write goes through `O_DIRECT` (copied through an aligned bounce buffer when the caller's
/// buffer is not aligned) and unaligned heads and tails go through a second, buffered handle;
/// [`PartitionWriter::sync`] flushes both with `fdatasync`. The alignment is the disk's logical
/// block size, asked from the kernel. A file system that accepts `O_DIRECT` at open but refuses
/// it at write time gets buffered writes from then on (in [`IoMode::Auto`]).
///
/// It is also a sequential [`Write`] starting at offset 0, staging data in an aligned buffer of
/// [`CHUNK`] bytes; `flush` and `sync` write out what is staged, and dropping the writer
/// flushes (without syncing).
///
/// ```no_run
/// use bootpart::io::{IoMode, PartitionWriter, PartitionReader};
/// use bootpart::{Disk, SetId};
/// use std::io::{Read, Write};
///
/// let disk = Disk::open("disk.img")?;
/// let root = &disk.layout().set(SetId::B)?.root;
/// let mut w = PartitionWriter::open(&disk, root, IoMode::Auto)?;
/// w.write_all(b"new root filesystem")?;
/// w.sync()?;
/// let mut r = PartitionReader::open(&disk, root, IoMode::Auto)?;
/// let mut back = [0u8; 19];
/// r.read_exact(&mut back)?;
/// assert_eq!(&back, b"new root filesystem");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PartitionWriter {
    t: Target,
    h: Handles,
    mode: IoMode,
    bounce: Option<AlignedBuf>,
    stage: Option<AlignedBuf>,
    stage_len: usize,
    pos: u64,
}

impl std::fmt::Debug for PartitionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionWriter")
            .field("path", &self.t.path)
            .field("partition", &self.t.number)
            .field("capacity", &self.t.capacity)
            .field("direct", &self.h.direct.is_some())
            .finish_non_exhaustive()
    }
}

impl PartitionWriter {
    /// Open `part` of `disk` for writing.
    pub fn open(disk: &Disk, part: &Partition, mode: IoMode) -> Result<PartitionWriter> {
        PartitionWriter::open_path(disk.path(), part, mode)
    }

    /// Open `part` of the disk or disk image at `path` for writing, without reading its GPT
    /// again (the caller read it to find `part`).
    pub fn open_path(path: &Path, part: &Partition, mode: IoMode) -> Result<PartitionWriter> {
        let t = Target::new(path, part);
        let h = t.open(true, mode)?;
        Ok(PartitionWriter {
            t,
            h,
            mode,
            bounce: None,
            stage: None,
            stage_len: 0,
            pos: 0,
        })
    }

    /// Size of the partition in bytes.
    pub fn capacity(&self) -> u64 {
        self.t.capacity
    }

    /// Whether writes go through `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.h.direct.is_some()
    }

    /// Alignment (offset, length, address) that takes the direct path: the disk's logical
    /// block size when direct, 1 otherwise.
    pub fn alignment(&self) -> usize {
        if self.is_direct() { self.h.align } else { 1 }
    }

    /// The partition number written to.
    pub fn partition_number(&self) -> u32 {
        self.t.number
    }

    /// The disk or image file the partition is on.
    pub fn path(&self) -> &Path {
        &self.t.path
    }

    /// Write all of `buf` at `offset` within the partition. If it would pass the partition's
    /// end, returns [`Error::OutOfBounds`] and writes nothing.
    pub fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.t.check(offset, buf.len() as u64)?;
        let abs = self.t.start + offset;
        if !self.is_direct() {
            return self.write_buffered(buf, abs);
        }
        let align = self.h.align as u64;
        let head = ((align - abs % align) % align).min(buf.len() as u64) as usize;
        let body = (buf.len() - head) / self.h.align * self.h.align;
        let (head_buf, rest) = buf.split_at(head);
        let (body_buf, tail_buf) = rest.split_at(body);
        if !head_buf.is_empty() {
            self.write_buffered(head_buf, abs)?;
        }
        if !body_buf.is_empty() {
            self.write_direct(body_buf, abs + head as u64)?;
        }
        if !tail_buf.is_empty() {
            self.write_buffered(tail_buf, abs + (head + body) as u64)?;
        }
        Ok(())
    }

    fn write_buffered(&self, buf: &[u8], abs: u64) -> Result<()> {
        self.h
            .buffered
            .write_all_at(buf, abs)
            .map_err(self.t.err("writing"))
    }

    /// `buf.len()` and `abs` are multiples of the alignment.
    fn write_direct(&mut self, buf: &[u8], abs: u64) -> Result<()> {
        let Some(direct) = &self.h.direct else {
            return self.write_buffered(buf, abs);
        };
        let result = if buf.as_ptr().addr() % self.h.align == 0 {
            direct.write_all_at(buf, abs)
        } else {
            let bounce = self
                .bounce
                .get_or_insert_with(|| AlignedBuf::new(CHUNK, self.h.align));
            let mut done = 0usize;
            let mut result = Ok(());
            for piece in buf.chunks(CHUNK) {
                let b = &mut bounce[..piece.len()];
                b.copy_from_slice(piece);
                result = direct.write_all_at(b, abs + done as u64);
                if result.is_err() {
                    break;
                }
                done += piece.len();
            }
            result
        };
        match result {
            // Some file systems accept O_DIRECT at open and refuse it at write time: buffered
            // writes for the rest (the final sync covers both descriptors).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.mode == IoMode::Auto => {
                self.h.direct = None;
                self.write_buffered(buf, abs)
            }
            other => other.map_err(self.t.err("writing (direct)")),
        }
    }

    fn flush_stage(&mut self) -> Result<()> {
        if self.stage_len == 0 {
            return Ok(());
        }
        let Some(stage) = self.stage.take() else {
            return Ok(());
        };
        let len = self.stage_len;
        let at = self.pos - len as u64;
        let res = self.write_all_at(&stage[..len], at);
        self.stage = Some(stage);
        if res.is_ok() {
            self.stage_len = 0;
        }
        res
    }

    /// Write out staged data, flush it to the disk with `fdatasync` (one call covers the
    /// direct and the buffered descriptor, and [`DirectWriter`]s), and drop the partition's
    /// cached pages so that later reads come from the disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush_stage().map_err(io::Error::other)?;
        self.h.buffered.sync_data()?;
        self.h.drop_cached(self.t.start, self.t.capacity)
    }

    /// Bytes accepted so far through the `Write` impl (the next sequential offset).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// A handle for aligned direct writes into the same partition that several threads may
    /// use at once; `None` when this writer does not write directly. [`PartitionWriter::sync`]
    /// flushes what it wrote.
    pub fn direct_writer(&self) -> Result<Option<DirectWriter>> {
        let Some(direct) = &self.h.direct else {
            return Ok(None);
        };
        let file = direct
            .try_clone()
            .map_err(self.t.err("duplicating the direct handle"))?;
        Ok(Some(DirectWriter {
            t: self.t.clone(),
            file,
            align: self.h.align,
        }))
    }
}

impl Write for PartitionWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.t
            .check(self.pos, buf.len() as u64)
            .map_err(io::Error::other)?;
        if self.stage.is_none() {
            self.stage = Some(AlignedBuf::new(CHUNK, self.h.align));
        }
        let n = match &mut self.stage {
            Some(stage) => {
                let n = buf.len().min(CHUNK - self.stage_len);
                stage[self.stage_len..self.stage_len + n].copy_from_slice(&buf[..n]);
                n
            }
            None => 0,
        };
        self.stage_len += n;
        self.pos += n as u64;
        if self.stage_len == CHUNK {
            self.flush_stage().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_stage().map_err(io::Error::other)
    }
}

impl Drop for PartitionWriter {
    fn drop(&mut self) {
        let _ = self.flush_stage();
    }
}

/// Aligned `O_DIRECT` writes into one partition from several threads at once (positioned
/// writes through `&self`): see [`PartitionWriter::direct_writer`].
#[derive(Debug)]
pub struct DirectWriter {
    t: Target,
    file: File,
    align: usize,
}

impl DirectWriter {
    /// Write all of `buf` at `offset` within the partition. The address, offset and length
    /// must be multiples of [`DirectWriter::alignment`]; a write that is not, or that would
    /// pass the partition's end, is refused and writes nothing.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.t.check(offset, buf.len() as u64)?;
        let aligned = buf.as_ptr().addr() % self.align == 0
            && buf.len() % self.align == 0
            && offset % self.align as u64 == 0;
        if !aligned {
            return Err(self.t.err("writing (direct)")(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes at offset {offset} are not {}-byte aligned",
                    buf.len(),
                    self.align
                ),
            )));
        }
        self.file
            .write_all_at(buf, self.t.start + offset)
            .map_err(self.t.err("writing (direct)"))
    }

    /// The alignment every write needs (the disk's logical block size).
    pub fn alignment(&self) -> usize {
        self.align
    }
}

/// Reads one partition back (`Read + Seek`, and positioned reads, offsets relative to the
/// partition start), bypassing the page cache: through `O_DIRECT` where possible, otherwise
/// after dropping the range's cached pages with `posix_fadvise(DONTNEED)` (data must have been
/// synced first). No readahead: it would pull ranges not yet written into the cache.
pub struct PartitionReader {
    t: Target,
    h: Handles,
    buf: Option<AlignedBuf>,
    buf_start: u64,
    buf_len: usize,
    pos: u64,
}

impl std::fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionReader")
            .field("path", &self.t.path)
            .field("partition", &self.t.number)
            .field("direct", &self.h.direct.is_some())
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl PartitionReader {
    /// Open `part` of `disk` for reading.
    pub fn open(disk: &Disk, part: &Partition, mode: IoMode) -> Result<PartitionReader> {
        PartitionReader::open_path(disk.path(), part, mode)
    }

    /// Open `part` of the disk or disk image at `path` for reading.
    pub fn open_path(path: &Path, part: &Partition, mode: IoMode) -> Result<PartitionReader> {
        let t = Target::new(path, part);
        let h = t.open(false, mode)?;
        // Advisory: a failure only means the cache may read ahead or still answer.
        let _ = nix::fcntl::posix_fadvise(
            &h.buffered,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
        );
        let _ = h.drop_cached(t.start, t.capacity);
        Ok(PartitionReader {
            t,
            h,
            buf: None,
            buf_start: 0,
            buf_len: 0,
            pos: 0,
        })
    }

    /// Size of the partition in bytes.
    pub fn capacity(&self) -> u64 {
        self.t.capacity
    }

    /// Whether reads go through `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.h.direct.is_some()
    }

    /// Flush everything written to the disk so far, through any descriptor, to stable storage
    /// (`fdatasync`).
    pub fn sync_data(&self) -> io::Result<()> {
        self.h.buffered.sync_data()
    }

    /// Read exactly `buf.len()` bytes at `offset` from the disk: straight into `buf` through
    /// `O_DIRECT` when it is aligned, otherwise buffered after dropping the range's cached
    /// pages (the range must be flushed and no longer written).
    pub fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.t
            .check(offset, buf.len() as u64)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let abs = self.t.start + offset;
        if self.h.direct.is_some() && self.h.is_aligned(buf, offset) {
            if let Some(direct) = &self.h.direct {
                match direct.read_exact_at(buf, abs) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.h.direct = None,
                    other => return other,
                }
            }
        }
        self.h.drop_cached(abs, buf.len() as u64)?;
        self.h.buffered.read_exact_at(buf, abs)
    }

    fn fill(&mut self) -> io::Result<()> {
        let align = if self.is_direct() {
            self.h.align as u64
        } else {
            1
        };
        // Partition-relative start of the chunk; the partition start is aligned in direct mode.
        let rel = self.pos / align * align;
        let remaining = self.t.capacity - rel;
        let want = remaining.min(CHUNK as u64).div_ceil(align) * align;
        let want = want.min(CHUNK as u64) as usize;
        let buf = self
            .buf
            .get_or_insert_with(|| AlignedBuf::new(CHUNK, self.h.align));
        let file = self.h.direct.as_ref().unwrap_or(&self.h.buffered);
        let mut got = 0usize;
        while got < want {
            match file.read_at(&mut buf[got..want], self.t.start + rel + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if align > 1 && got as u64 % align != 0 {
                // A short direct read ends at the end of the device.
                break;
            }
        }
        self.buf_start = rel;
        self.buf_len = (got as u64).min(remaining) as usize;
        Ok(())
    }
}

impl Read for PartitionReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.pos >= self.t.capacity {
            return Ok(0);
        }
        let in_buf = self.pos >= self.buf_start && self.pos < self.buf_start + self.buf_len as u64;
        if !in_buf {
            self.fill()?;
            if self.pos >= self.buf_start + self.buf_len as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "partition {} of {}: the disk ended at partition offset {}",
                        self.t.number,
                        self.t.path.display(),
                        self.buf_start + self.buf_len as u64
                    ),
                ));
            }
        }
        let Some(buf) = &self.buf else {
            return Ok(0);
        };
        let from = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf_len - from);
        out[..n].copy_from_slice(&buf[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PartitionReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.t.capacity.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the partition start or overflowing",
            )),
        }
    }
}
