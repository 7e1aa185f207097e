//! Device numbers and the sysfs / procfs / devfs lookups, with injectable roots so tests can
//! run them against a fake tree built in a temporary directory.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A Linux device number split into major and minor with the full encoding (12-bit major,
/// 20-bit minor, as `gnu_dev_major`/`gnu_dev_minor` do), not the legacy 8-bit split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevId {
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
}

impl DevId {
    /// Decode a `dev_t` (e.g. `st_rdev` of a block device node).
    ///
    /// ```
    /// use bootpart::sys::DevId;
    ///
    /// // Minor numbers above 255 are spread over two fields of dev_t.
    /// let dev = nix::sys::stat::makedev(259, 300);
    /// assert_eq!(DevId::from_dev_t(dev), DevId { major: 259, minor: 300 });
    /// ```
    pub fn from_dev_t(dev: u64) -> DevId {
        DevId {
            major: nix::sys::stat::major(dev),
            minor: nix::sys::stat::minor(dev),
        }
    }

    /// Encode as a `dev_t`.
    pub fn to_dev_t(self) -> u64 {
        nix::sys::stat::makedev(self.major, self.minor)
    }
}

impl fmt::Display for DevId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Text that is not `MAJOR:MINOR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a device number (expected MAJOR:MINOR): {0:?}")]
pub struct ParseDevIdError(pub String);

impl FromStr for DevId {
    type Err = ParseDevIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDevIdError(s.chars().take(64).collect());
        let (maj, min) = s.trim().split_once(':').ok_or_else(err)?;
        let major: u64 = maj.parse().map_err(|_| err())?;
        let minor: u64 = min.parse().map_err(|_| err())?;
        if major >= 1 << 32 || minor >= 1 << 32 {
            return Err(err());
        }
        Ok(DevId { major, minor })
    }
}

/// Where `/sys`, `/proc` and `/dev` are. The defaults are the real ones; tests point them at a
/// fake tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysRoots {
    /// sysfs root (normally `/sys`).
    pub sys: PathBuf,
    /// procfs root (normally `/proc`).
    pub proc: PathBuf,
    /// device node directory (normally `/dev`).
    pub dev: PathBuf,
}

impl Default for SysRoots {
    fn default() -> Self {
        SysRoots {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// Largest sysfs/procfs attribute file read (they are tiny; mountinfo can be larger).
pub(crate) const MAX_ATTR: u64 = 4 << 20;

/// Read a small text file, refusing anything larger than [`MAX_ATTR`].
pub(crate) fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = fs::File::open(path)?;
    let mut s = String::new();
    f.take(MAX_ATTR + 1).read_to_string(&mut s)?;
    if s.len() as u64 > MAX_ATTR {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is larger than {MAX_ATTR} bytes", path.display()),
        ));
    }
    Ok(s)
}

/// A block device as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Resolved sysfs directory.
    pub sys_dir: PathBuf,
    /// Kernel name (`vda3`, `loop0p2`, `dm-0`).
    pub name: String,
    /// Device number.
    pub dev: DevId,
    /// Partition number when this is a partition.
    pub partition: Option<u32>,
}

impl SysRoots {
    /// Roots under one directory: `root/sys`, `root/proc`, `root/dev`.
    pub fn under(root: &Path) -> SysRoots {
        SysRoots {
            sys: root.join("sys"),
            proc: root.join("proc"),
            dev: root.join("dev"),
        }
    }

    /// `/sys/dev/block/MAJ:MIN`.
    pub fn dev_block_link(&self, dev: DevId) -> PathBuf {
        self.sys.join("dev/block").join(dev.to_string())
    }

    /// Resolve a device number to its sysfs directory.
    pub fn block_device(&self, dev: DevId) -> std::io::Result<BlockDevice> {
        let dir = fs::canonicalize(self.dev_block_link(dev))?;
        self.block_device_at(&dir)
    }

    /// Describe the block device whose sysfs directory is `dir`.
    pub fn block_device_at(&self, dir: &Path) -> std::io::Result<BlockDevice> {
        let dev: DevId = read_small(&dir.join("dev"))?
            .trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let uevent = read_small(&dir.join("uevent")).unwrap_or_default();
        let name = uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .map(str::to_owned)
            .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let partition = read_small(&dir.join("partition"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Ok(BlockDevice {
            sys_dir: dir.to_owned(),
            name,
            dev,
            partition,
        })
    }

    /// The device node for a kernel name (`/dev/NAME`).
    pub fn node(&self, name: &str) -> PathBuf {
        self.dev.join(name)
    }

    /// The partitions of a whole disk, as (number, device node) for every partition whose
    /// node exists (for loop devices: the `loopNpM` nodes `partx -a` creates).
    pub fn partition_nodes(&self, disk: DevId) -> std::io::Result<Vec<(u32, PathBuf)>> {
        let disk_dir = fs::canonicalize(self.dev_block_link(disk))?;
        let mut out = Vec::new();
        for entry in fs::read_dir(&disk_dir)? {
            let path = entry?.path();
            if !path.join("partition").is_file() {
                continue;
            }
            if let Ok(bd) = self.block_device_at(&path)
                && let Some(n) = bd.partition
            {
                let node = self.node(&bd.name);
                if node.exists() {
                    out.push((n, node));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_dev_t_encoding() {
        // A minor above 255 and a major above 255 (the legacy split gets both wrong).
        for (maj, min) in [(8, 0), (259, 3), (7, 256), (4095, 1_048_575), (300, 70_000)] {
            let d = DevId::from_dev_t(nix::sys::stat::makedev(maj, min));
            assert_eq!((d.major, d.minor), (maj, min));
            assert_eq!(DevId::from_dev_t(d.to_dev_t()), d);
        }
        // The Linux layout, spelled out: minor in bits 0-7 and 20-43, major in bits 8-19 and
        // 44-63.
        let raw: u64 = 0x34 | (0x012 << 8) | (0x567 << 20) | (0xabc << 44);
        let d = DevId::from_dev_t(raw);
        assert_eq!(d.major, 0x00ab_c012);
        assert_eq!(d.minor, 0x0005_6734);
    }

    #[test]
    fn parse_dev_id() {
        assert_eq!(
            "259:12".parse::<DevId>().unwrap(),
            DevId {
                major: 259,
                minor: 12
            }
        );
        assert_eq!("254:0\n".parse::<DevId>().unwrap().to_string(), "254:0");
        for bad in ["", "1", "1:", ":2", "a:b", "1:2:3", "-1:2", "99999999999:1"] {
            assert!(bad.parse::<DevId>().is_err(), "{bad:?}");
        }
    }
}
