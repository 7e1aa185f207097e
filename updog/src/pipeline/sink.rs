//! Where staged images go: the [`Sink`] trait (positioned writes, one flush, read-back that
//! bypasses the page cache) and its implementation [`PartitionSink`], an adapter over
//! `bootpart`'s partition-I/O stack ([`PartitionWriter`], [`DirectWriter`],
//! [`PartitionReader`]), which does the direct I/O, the bounds and the alignment.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use bootpart::io::IoMode;
use bootpart::io::{DirectWriter, PartitionReader, PartitionWriter};

/// Page size the overlapped read-back is laid out in: regions start at multiples of it from a
/// partition start that is one too, so that no later write touches a page already read back.
pub(crate) const PAGE: u64 = 4096;

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

/// Concurrent positioned writes: see [`Sink::parallel_writer`].
pub trait ParallelWrite: Send + Sync {
    /// Write all of `buf` at `offset` (partition-relative; address, offset and length aligned
    /// to the sink's [`Sink::alignment`]); refuses (writes nothing) past the partition end.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
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

impl ParallelWrite for DirectWriter {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        DirectWriter::write_all_at(self, buf, offset).map_err(io::Error::other)
    }
}

impl ReadBack for PartitionReader {
    fn sync_data(&mut self) -> io::Result<()> {
        PartitionReader::sync_data(self)
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        PartitionReader::read_exact_at(self, buf, offset)
    }
}

/// A partition as a staging [`Sink`]: writes go through bootpart's [`PartitionWriter`]
/// (bounded by the partition, `O_DIRECT` aligned to the disk's logical block size, with a
/// buffered fallback), parallel writes through its [`DirectWriter`], and the read-back through a
/// [`PartitionReader`] opened after the flush (reads straight into the pipeline's 4 MiB
/// buffers, `O_DIRECT` or buffered after dropping the cached pages).
#[derive(Debug)]
pub struct PartitionSink {
    path: PathBuf,
    part: bootpart::Partition,
    writer: PartitionWriter,
    reader: Option<PartitionReader>,
}

impl PartitionSink {
    /// Open `part` of `disk` for staging.
    pub fn open(
        disk: &bootpart::Disk,
        part: &bootpart::Partition,
        mode: IoMode,
    ) -> Result<Self, bootpart::Error> {
        Self::open_path(disk.path(), part, mode)
    }

    /// Open `part` of the disk or disk image at `path` (whose GPT the caller already read).
    pub fn open_path(
        path: &Path,
        part: &bootpart::Partition,
        mode: IoMode,
    ) -> Result<Self, bootpart::Error> {
        let writer = PartitionWriter::open_path(path, part, mode)?;
        Ok(Self {
            path: path.to_owned(),
            part: part.clone(),
            writer,
            reader: None,
        })
    }

    /// The partition being written.
    pub fn partition(&self) -> &bootpart::Partition {
        &self.part
    }

    /// A reader on the partition, direct when the writer is.
    fn open_reader(&self) -> io::Result<PartitionReader> {
        let mode = if self.writer.is_direct() {
            IoMode::Auto
        } else {
            IoMode::Buffered
        };
        PartitionReader::open_path(&self.path, &self.part, mode).map_err(io::Error::other)
    }
}

impl Sink for PartitionSink {
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
        self.reader = Some(self.open_reader()?);
        Ok(())
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.reader.is_none() {
            self.reader = Some(self.open_reader()?);
        }
        match &mut self.reader {
            Some(r) => r.read_exact_at(buf, offset),
            None => Err(io::Error::other("partition reader not open")),
        }
    }

    fn parallel_writer(&self) -> Option<Arc<dyn ParallelWrite>> {
        let handle = self.writer.direct_writer().ok()??;
        Some(Arc::new(handle))
    }

    /// `None` when the partition does not start on a page boundary: the pipeline's region
    /// boundaries (page multiples from the partition start) would then split pages, which a
    /// later write could keep in the page cache; such partitions are read back after the end.
    fn read_back_handle(&self) -> Option<Box<dyn ReadBack>> {
        if self.part.byte_offset() % PAGE != 0 {
            return None;
        }
        Some(Box::new(self.open_reader().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition 1 at `offset` (a multiple of 512) of `len` bytes.
    fn range(offset: u64, len: u64) -> bootpart::Partition {
        bootpart::Partition {
            number: 1,
            type_guid: bootpart::PartitionType::Root.guid(),
            unique_guid: bootpart::Guid::ZERO,
            name: String::new(),
            first_lba: offset / 512,
            last_lba: (offset + len) / 512 - 1,
            attributes: 0,
            sector_size: 512,
            device_node: None,
        }
    }

    #[test]
    fn read_back_while_writing_only_for_page_aligned_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; 4 * 8192]).unwrap();
        let aligned = PartitionSink::open_path(&path, &range(8192, 8192), IoMode::Buffered);
        assert!(aligned.unwrap().read_back_handle().is_some());
        let unaligned =
            PartitionSink::open_path(&path, &range(8192 + 512, 8192), IoMode::Buffered).unwrap();
        assert!(unaligned.read_back_handle().is_none());
    }

    #[test]
    fn refuses_writes_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0xAAu8; 3 * 8192]).unwrap();
        let mut p = PartitionSink::open_path(&path, &range(8192, 8192), IoMode::Auto).unwrap();
        let mut buf = bootpart::io::AlignedBuf::new(8192 + 4096, 4096);
        buf.fill(1);
        assert!(p.write_all_at(&buf, 0).is_err());
        assert!(p.write_all_at(&buf[..1], 8192).is_err());
        p.write_all_at(&buf[..8192], 0).unwrap();
        p.write_all_at(&buf[..3], 100).unwrap();
        p.sync().unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert!(disk[..8192].iter().all(|&b| b == 0xAA));
        assert!(disk[8192..16384].iter().all(|&b| b == 1));
        assert!(disk[16384..].iter().all(|&b| b == 0xAA));
        let mut back = vec![0u8; 8192];
        p.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 1));
    }
}
