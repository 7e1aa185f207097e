//! Bounded writers and readers for one partition.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use super::AlignedBuf;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::layout::Partition;

/// Alignment used for direct I/O (offsets, lengths and buffer addresses). 4096 covers disks
/// with 512- and 4096-byte logical sectors.
pub const DIRECT_ALIGN: usize = 4096;
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
    /// Through the page cache. The reader drops the partition's cached pages when opened
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

impl Target {
    fn new(disk: &Disk, part: &Partition) -> Target {
        Target {
            path: disk.path().to_owned(),
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

    /// Open the disk, with `O_DIRECT` when `mode` asks for it and it works here (checked by an
    /// aligned read at the partition start). Returns the file and whether it is direct.
    fn open(&self, write: bool, mode: IoMode) -> Result<(File, bool)> {
        let plain = || {
            OpenOptions::new()
                .read(true)
                .write(write)
                .open(&self.path)
                .map_err(self.err("opening"))
        };
        if mode == IoMode::Buffered {
            return Ok((plain()?, false));
        }
        let refuse = |reason: String| -> Result<(File, bool)> {
            if mode == IoMode::Direct {
                Err(Error::DirectUnsupported {
                    path: self.path.clone(),
                    partition: self.number,
                    reason,
                })
            } else {
                Ok((plain()?, false))
            }
        };
        if self.start % DIRECT_ALIGN as u64 != 0 {
            return refuse(format!(
                "partition starts at byte {}, not a multiple of {DIRECT_ALIGN}",
                self.start
            ));
        }
        let file = match OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return refuse(format!("O_DIRECT open refused: {e}"));
            }
            Err(e) => return Err(self.err("opening with O_DIRECT")(e)),
        };
        let mut probe = AlignedBuf::new(DIRECT_ALIGN, DIRECT_ALIGN);
        match file.read_at(&mut probe, self.start) {
            Ok(_) => Ok((file, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                refuse(format!("O_DIRECT read refused: {e}"))
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
/// [`PartitionWriter::sync`] flushes both with `fdatasync`.
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
    file: File,
    direct: bool,
    buffered: Option<File>,
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
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

impl PartitionWriter {
    /// Open `part` of `disk` for writing.
    pub fn open(disk: &Disk, part: &Partition, mode: IoMode) -> Result<PartitionWriter> {
        let t = Target::new(disk, part);
        let (file, direct) = t.open(true, mode)?;
        Ok(PartitionWriter {
            t,
            file,
            direct,
            buffered: None,
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
        self.direct
    }

    /// Alignment (offset, length, address) that takes the direct path: [`DIRECT_ALIGN`] when
    /// direct, 1 otherwise.
    pub fn alignment(&self) -> usize {
        if self.direct { DIRECT_ALIGN } else { 1 }
    }

    /// The partition number written to.
    pub fn partition_number(&self) -> u32 {
        self.t.number
    }

    /// Write all of `buf` at `offset` within the partition. If it would pass the partition's
    /// end, returns [`Error::OutOfBounds`] and writes nothing.
    pub fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.t.check(offset, buf.len() as u64)?;
        let abs = self.t.start + offset;
        if !self.direct {
            return self
                .file
                .write_all_at(buf, abs)
                .map_err(self.t.err("writing"));
        }
        let align = DIRECT_ALIGN as u64;
        let head = ((align - abs % align) % align).min(buf.len() as u64) as usize;
        let body = (buf.len() - head) / DIRECT_ALIGN * DIRECT_ALIGN;
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

    fn write_buffered(&mut self, buf: &[u8], abs: u64) -> Result<()> {
        if self.buffered.is_none() {
            let f = OpenOptions::new()
                .write(true)
                .open(&self.t.path)
                .map_err(self.t.err("opening a buffered handle"))?;
            self.buffered = Some(f);
        }
        match &self.buffered {
            Some(f) => f
                .write_all_at(buf, abs)
                .map_err(self.t.err("writing (buffered part)")),
            None => Ok(()),
        }
    }

    /// `buf.len()` and `abs` are multiples of the alignment.
    fn write_direct(&mut self, buf: &[u8], abs: u64) -> Result<()> {
        if buf.as_ptr().addr() % DIRECT_ALIGN == 0 {
            return self
                .file
                .write_all_at(buf, abs)
                .map_err(self.t.err("writing (direct)"));
        }
        let bounce = self
            .bounce
            .get_or_insert_with(|| AlignedBuf::new(CHUNK, DIRECT_ALIGN));
        let mut done = 0usize;
        for piece in buf.chunks(CHUNK) {
            let b = &mut bounce[..piece.len()];
            b.copy_from_slice(piece);
            self.file
                .write_all_at(b, abs + done as u64)
                .map_err(self.t.err("writing (direct)"))?;
            done += piece.len();
        }
        Ok(())
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

    /// Write out staged data and flush it to the disk with `fdatasync`.
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush_stage().map_err(io::Error::other)?;
        if let Some(b) = &self.buffered {
            b.sync_data()?;
        }
        self.file.sync_data()
    }

    /// Bytes accepted so far through the `Write` impl (the next sequential offset).
    pub fn position(&self) -> u64 {
        self.pos
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
            self.stage = Some(AlignedBuf::new(CHUNK, DIRECT_ALIGN));
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

/// Reads one partition back (`Read + Seek`, offsets relative to the partition start), bypassing
/// the page cache: through `O_DIRECT` where possible, otherwise after dropping the partition's
/// cached pages with `posix_fadvise(DONTNEED)` (data must have been synced first).
pub struct PartitionReader {
    t: Target,
    file: File,
    direct: bool,
    buf: AlignedBuf,
    buf_start: u64,
    buf_len: usize,
    pos: u64,
}

impl std::fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionReader")
            .field("path", &self.t.path)
            .field("partition", &self.t.number)
            .field("direct", &self.direct)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl PartitionReader {
    /// Open `part` of `disk` for reading.
    pub fn open(disk: &Disk, part: &Partition, mode: IoMode) -> Result<PartitionReader> {
        let t = Target::new(disk, part);
        let (file, direct) = t.open(false, mode)?;
        if !direct {
            // Drop clean cached pages so reads come from the disk. Advisory: a failure only
            // means the cache may still answer.
            let _ = nix::fcntl::posix_fadvise(
                &file,
                t.start as libc::off_t,
                t.capacity as libc::off_t,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
        Ok(PartitionReader {
            t,
            file,
            direct,
            buf: AlignedBuf::new(CHUNK, DIRECT_ALIGN),
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
        self.direct
    }

    fn fill(&mut self) -> io::Result<()> {
        let align = if self.direct { DIRECT_ALIGN as u64 } else { 1 };
        // Partition-relative start of the chunk; the partition start is aligned in direct mode.
        let rel = self.pos / align * align;
        let remaining = self.t.capacity - rel;
        let want = remaining.min(CHUNK as u64).div_ceil(align) * align;
        let want = want.min(CHUNK as u64) as usize;
        let mut got = 0usize;
        while got < want {
            match self
                .file
                .read_at(&mut self.buf[got..want], self.t.start + rel + got as u64)
            {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if self.direct && got % DIRECT_ALIGN != 0 {
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
        let from = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf_len - from);
        out[..n].copy_from_slice(&self.buf[from..from + n]);
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
