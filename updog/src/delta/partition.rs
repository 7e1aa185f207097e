//! The partitions the delta path reads and writes, through the workspace's one partition-I/O
//! stack ([`bootpart::io`]): bounded by the partition's GPT entry (a chunk past its end is an
//! error, nothing is written), and reads that come from the device, not the page cache.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use bootpart::Partition;
use bootpart::io::{IoMode, PartitionReader, PartitionWriter};

/// One partition of a set as a [`casync::Device`]: the running set's (read) or the cleared
/// set's (read and written).
pub(crate) struct PartitionDevice {
    path: PathBuf,
    len: u64,
    reader: Mutex<PartitionReader>,
    writer: Option<Mutex<PartitionWriter>>,
    /// A handle of the disk to flush with while the writer's lock is held for writing (a
    /// flush through any handle covers what every handle wrote).
    flush: std::fs::File,
}

impl PartitionDevice {
    /// Opens `part` of the disk at `disk` for reading, and for writing too when `write`.
    /// Buffered: chunks are written at any byte offset; the flush drops the cached pages, and
    /// every read drops those of its range first, so what is read back is what the device holds.
    pub(crate) fn open(
        disk: &Path,
        part: &Partition,
        write: bool,
    ) -> Result<PartitionDevice, bootpart::Error> {
        let writer = if write {
            Some(Mutex::new(PartitionWriter::open_path(
                disk,
                part,
                IoMode::Buffered,
            )?))
        } else {
            None
        };
        let flush = std::fs::File::open(disk).map_err(|source| bootpart::Error::Io {
            path: disk.to_owned(),
            what: "opening".to_owned(),
            source,
        })?;
        Ok(PartitionDevice {
            flush,
            path: disk.to_owned(),
            len: part.byte_len(),
            reader: Mutex::new(PartitionReader::open_path(disk, part, IoMode::Buffered)?),
            writer,
        })
    }
}

impl casync::Device for PartitionDevice {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read_exact_at(buf, at)
    }

    fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        let Some(writer) = &self.writer else {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} was opened read-only", self.path.display()),
            ));
        };
        writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all_at(buf, at)
            .map_err(io::Error::other)
    }

    fn sync_and_drop_cache(&self) -> io::Result<()> {
        match &self.writer {
            Some(writer) => writer.lock().unwrap_or_else(PoisonError::into_inner).sync(),
            None => self
                .reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sync_data(),
        }
    }

    fn sync_range_and_drop_cache(&self, _at: u64, _len: u64) -> io::Result<()> {
        // Not through the writer, whose lock the writing goes on taking; every read drops the
        // cached pages of its range first.
        self.flush.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use casync::Device;
    use fixtures::disk::DiskImageBuilder;

    use super::*;

    #[test]
    fn reads_and_writes_stay_inside_the_partition_and_read_back_from_the_device() {
        let disk = DiskImageBuilder::new().build_temp().unwrap();
        let layout = bootpart::Disk::open(&disk.path).unwrap().layout().clone();
        let (b, a) = (
            layout.set(bootpart::SetId::B).unwrap().root.clone(),
            layout.set(bootpart::SetId::A).unwrap().root.clone(),
        );
        let target = PartitionDevice::open(&disk.path, &b, true).unwrap();
        let seed = PartitionDevice::open(&disk.path, &a, false).unwrap();
        assert_eq!(target.len(), b.byte_len());
        target.write_at(b"chunk", 4093).unwrap();
        // Past the end: refused, nothing written.
        let end = target.len() - 2;
        assert!(target.write_at(b"abc", end).is_err());
        assert!(target.read_at(&mut [0u8; 1], target.len()).is_err());
        assert!(
            seed.write_at(b"x", 0).is_err(),
            "the running set is read-only"
        );
        target.sync_range_and_drop_cache(4093, 5).unwrap();
        target.sync_and_drop_cache().unwrap();
        let mut back = [0u8; 5];
        target.read_at(&mut back, 4093).unwrap();
        assert_eq!(&back, b"chunk");
        let mut last = [9u8; 2];
        target.read_at(&mut last, end).unwrap();
        assert_eq!(last, [0, 0]);
        // It is the partition's byte range of the disk.
        let bytes = std::fs::read(&disk.path).unwrap();
        let at = (b.byte_offset() + 4093) as usize;
        assert_eq!(&bytes[at..at + 5], b"chunk");
    }
}
