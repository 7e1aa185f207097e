//! Which partition set the running system booted from.
//!
//! The device of `/` comes from `/proc/self/mountinfo`; `/sys/dev/block/MAJ:MIN` leads to its
//! sysfs directory. Device-mapper devices (dm-verity, as the reference system mounts its root)
//! are followed through `slaves/` down to the partitions underneath. Each partition's sysfs
//! directory has a `partition` file with its number, and its parent directory is the whole
//! disk. The partition numbers are then matched against the disk's [`Layout`].
//!
//! Every root (`/proc`, `/sys`, `/dev`) comes from a [`SysRoots`], so tests run the same code
//! against a fake tree in a temporary directory. For image files there is nothing to discover:
//! callers pass the active set explicitly ([`resolve_active`]).

use std::fs;
use std::path::PathBuf;

use crate::SetId;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::sys::{BlockDevice, DevId, SysRoots, read_small};

/// How deep device-mapper stacks are followed.
const MAX_DEPTH: usize = 8;

/// The block device holding `/`, resolved down to partitions and their disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDevice {
    /// The device `/` is mounted from (may be a device-mapper device).
    pub mounted: BlockDevice,
    /// The partitions underneath it (the device itself when it is a partition).
    pub partitions: Vec<BlockDevice>,
    /// The whole disk holding those partitions.
    pub disk: BlockDevice,
    /// The disk's device node (`/dev/NAME`).
    pub disk_node: PathBuf,
}

impl RootDevice {
    /// The partition numbers underneath `/`.
    pub fn partition_numbers(&self) -> Vec<u32> {
        self.partitions.iter().filter_map(|p| p.partition).collect()
    }
}

fn running_err(msg: impl Into<String>) -> Error {
    Error::Running(msg.into())
}

/// The device number `/` is mounted from, per `PROC/self/mountinfo` (the last mount on `/`
/// wins, as later mounts hide earlier ones). Returns it with the filesystem type and source.
pub fn root_mount(roots: &SysRoots) -> Result<(DevId, String, String)> {
    let path = roots.proc.join("self/mountinfo");
    let text = read_small(&path).map_err(|e| running_err(format!("{}: {e}", path.display())))?;
    let mut found = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent MAJ:MIN root mountpoint options [optional...] - fstype source superoptions
        let (Some(dev), Some(mount_point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        if *mount_point != "/" {
            continue;
        }
        let sep = fields.iter().position(|f| *f == "-");
        let fstype = sep.and_then(|i| fields.get(i + 1)).unwrap_or(&"?");
        let source = sep.and_then(|i| fields.get(i + 2)).unwrap_or(&"?");
        found = Some((*dev, (*fstype).to_owned(), (*source).to_owned()));
    }
    let (dev, fstype, source) =
        found.ok_or_else(|| running_err(format!("no mount on / in {}", path.display())))?;
    let dev: DevId = dev
        .parse()
        .map_err(|e| running_err(format!("{}: {e}", path.display())))?;
    Ok((dev, fstype, source))
}

/// Resolve `/` to its partitions and disk.
pub fn root_device(roots: &SysRoots) -> Result<RootDevice> {
    let (dev, fstype, source) = root_mount(roots)?;
    let mounted = roots.block_device(dev).map_err(|e| {
        running_err(format!(
            "/ is mounted from {source} ({fstype}, device {dev}), which is not a block device in {}: {e}",
            roots.dev_block_link(dev).display()
        ))
    })?;
    let mut partitions = Vec::new();
    collect_backing(roots, &mounted, 0, &mut partitions)?;
    let mut disk: Option<BlockDevice> = None;
    for p in &partitions {
        if p.partition.is_none() {
            return Err(running_err(format!(
                "/ is on {} ({}), a whole disk rather than a partition, so it belongs to no partition set",
                p.name, p.dev
            )));
        }
        let parent_dir = p.sys_dir.parent().ok_or_else(|| {
            running_err(format!("{}: no parent disk directory", p.sys_dir.display()))
        })?;
        let parent = roots.block_device_at(parent_dir).map_err(|e| {
            running_err(format!(
                "parent disk of {} at {}: {e}",
                p.name,
                parent_dir.display()
            ))
        })?;
        match &disk {
            Some(d) if d.dev != parent.dev => {
                return Err(running_err(format!(
                    "/ spans partitions on two disks ({} and {})",
                    d.name, parent.name
                )));
            }
            Some(_) => {}
            None => disk = Some(parent),
        }
    }
    let disk = disk.ok_or_else(|| running_err(format!("no partition under {}", mounted.name)))?;
    let disk_node = roots.node(&disk.name);
    Ok(RootDevice {
        mounted,
        partitions,
        disk,
        disk_node,
    })
}

fn collect_backing(
    roots: &SysRoots,
    dev: &BlockDevice,
    depth: usize,
    out: &mut Vec<BlockDevice>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(running_err(format!(
            "device-mapper stack deeper than {MAX_DEPTH} at {}",
            dev.name
        )));
    }
    let slaves_dir = dev.sys_dir.join("slaves");
    let mut slaves: Vec<PathBuf> = match fs::read_dir(&slaves_dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    if slaves.is_empty() {
        out.push(dev.clone());
        return Ok(());
    }
    slaves.sort();
    for s in slaves {
        let dir = fs::canonicalize(&s)
            .map_err(|e| running_err(format!("following {}: {e}", s.display())))?;
        let below = roots
            .block_device_at(&dir)
            .map_err(|e| running_err(format!("{}: {e}", dir.display())))?;
        collect_backing(roots, &below, depth + 1, out)?;
    }
    Ok(())
}

/// The set that owns all of these partition numbers.
pub fn set_for_partitions(layout: &Layout, numbers: &[u32]) -> Result<SetId> {
    let mut set = None;
    for &n in numbers {
        let s = layout.set_of(n).ok_or_else(|| {
            running_err(format!(
                "/ is on partition {n}, which belongs to neither set A nor set B"
            ))
        })?;
        match set {
            Some(prev) if prev != s => {
                return Err(running_err(format!(
                    "/ uses partitions of both sets ({numbers:?})"
                )));
            }
            _ => set = Some(s),
        }
    }
    set.ok_or_else(|| running_err("no partition under /"))
}

/// Which set of `disk` is running, using the real `/proc` and `/sys`.
///
/// ```no_run
/// let disk = bootpart::Disk::open("/dev/nvme0n1")?;
/// let active = bootpart::running::find_running_set(&disk)?;
/// println!("running from set {active}");
/// # Ok::<(), bootpart::Error>(())
/// ```
pub fn find_running_set(disk: &Disk) -> Result<SetId> {
    find_running_set_with(disk, &SysRoots::default())
}

/// [`find_running_set`] with other roots.
pub fn find_running_set_with(disk: &Disk, roots: &SysRoots) -> Result<SetId> {
    let Some(dev) = disk.block_device() else {
        return Err(running_err(format!(
            "{} is an image file, not the running system's disk; choose the active set explicitly",
            disk.path().display()
        )));
    };
    let root = root_device(roots)?;
    if root.disk.dev != dev {
        return Err(running_err(format!(
            "/ is on {} ({}), not on {} ({dev})",
            root.disk.name,
            root.disk.dev,
            disk.path().display()
        )));
    }
    set_for_partitions(disk.layout(), &root.partition_numbers())
}

/// Find the disk holding `/` and the set it runs from, using the real `/proc`, `/sys` and
/// `/dev`. Only reads.
///
/// ```no_run
/// let (disk, active) = bootpart::running::discover_root_disk()?;
/// println!("{} runs set {active}", disk.display());
/// # Ok::<(), bootpart::Error>(())
/// ```
pub fn discover_root_disk() -> Result<(PathBuf, SetId)> {
    discover_root_disk_with(&SysRoots::default())
}

/// [`discover_root_disk`] with other roots.
pub fn discover_root_disk_with(roots: &SysRoots) -> Result<(PathBuf, SetId)> {
    let root = root_device(roots)?;
    let disk = Disk::open_with(&root.disk_node, roots)?;
    let set = set_for_partitions(disk.layout(), &root.partition_numbers())?;
    Ok((root.disk_node, set))
}

/// The active set: `explicit` when given (image files, tests, operator override), otherwise
/// discovered from the running system.
pub fn resolve_active(disk: &Disk, explicit: Option<SetId>) -> Result<SetId> {
    match explicit {
        Some(set) => {
            disk.layout().set(set)?;
            Ok(set)
        }
        None => find_running_set(disk),
    }
}
