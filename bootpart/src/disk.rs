//! A disk (block device or image file) with its GPT and A/B layout.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::SetId;
use crate::error::{Error, Result};
use crate::gpt::{GptRead, GptTable, read_gpt};
use crate::io::BlockIo;
use crate::layout::{Layout, PartitionSet};
use crate::sys::{DevId, SysRoots};

/// A disk opened for inspection: its GPT (as read, with which copy was used) and the A/B
/// layout. Opening reads only; writers open their own handles.
#[derive(Debug, Clone)]
pub struct Disk {
    path: PathBuf,
    len: u64,
    block_device: Option<DevId>,
    gpt: GptRead,
    layout: Layout,
}

impl Disk {
    /// Open a block device or a disk-image file, read its GPT (falling back to the backup copy
    /// when the primary is damaged) and find the partition sets.
    ///
    /// ```no_run
    /// use bootpart::{Disk, SetId};
    ///
    /// let disk = Disk::open("disk.img")?;
    /// let b = disk.layout().set(SetId::B)?;
    /// println!("ROOT-B is {} bytes at {}", b.root.byte_len(), b.root.byte_offset());
    /// # Ok::<(), bootpart::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Disk> {
        Disk::open_with(path, &SysRoots::default())
    }

    /// [`Disk::open`] with sysfs/devfs at other places (for partition device nodes).
    pub fn open_with(path: impl AsRef<Path>, roots: &SysRoots) -> Result<Disk> {
        let path = path.as_ref().to_owned();
        let io_err = |what: &str| {
            let path = path.clone();
            let what = what.to_owned();
            move |source| Error::Io { path, what, source }
        };
        let file = File::open(&path).map_err(io_err("opening"))?;
        let meta = file.metadata().map_err(io_err("inspecting"))?;
        let block_device = if meta.file_type().is_block_device() {
            Some(DevId::from_dev_t(meta.rdev()))
        } else if meta.is_file() {
            None
        } else {
            return Err(Error::Io {
                path,
                what: "opening".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "neither a block device nor a regular file",
                ),
            });
        };
        let len = BlockIo::len(&file).map_err(io_err("getting the size"))?;
        let gpt = read_gpt(&file).map_err(|source| Error::Gpt {
            path: path.clone(),
            source,
        })?;
        let nodes = match block_device {
            Some(dev) => roots.partition_nodes(dev).unwrap_or_default(),
            None => Vec::new(),
        };
        let lookup = |n: u32| nodes.iter().find(|(m, _)| *m == n).map(|(_, p)| p.clone());
        let layout = Layout::from_table(&gpt.table, &lookup).map_err(|problem| Error::Layout {
            path: path.clone(),
            problem,
        })?;
        Ok(Disk {
            path,
            len,
            block_device,
            gpt,
            layout,
        })
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the disk has no bytes (never true for an opened disk).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device number when this is a block device; `None` for image files.
    pub fn block_device(&self) -> Option<DevId> {
        self.block_device
    }

    /// The GPT as read, including which copy was used and whether a copy needs repair.
    pub fn gpt(&self) -> &GptRead {
        &self.gpt
    }

    /// The partition table in use.
    pub fn table(&self) -> &GptTable {
        &self.gpt.table
    }

    /// Sector size in bytes.
    pub fn sector_size(&self) -> u64 {
        self.gpt.table.sector_size
    }

    /// The A/B layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Shorthand for `layout().set(id)`.
    pub fn set(&self, id: SetId) -> Result<&PartitionSet> {
        self.layout.set(id)
    }

    /// Open the disk for reading and writing (for GPT updates through
    /// [`crate::gpt::write_gpt`]).
    pub fn open_rw(&self) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                what: "opening for writing".into(),
                source,
            })
    }
}
