//! One owner per disk: an exclusive BSD `flock(2)` on the disk itself.
//!
//! Whatever changes boot flags or writes an inactive partition (updog's stage, apply and revert,
//! every changing signpost subcommand) holds a [`DiskLock`] for the whole operation. The lock is
//! taken on the disk's own device node or image file, not on a configurable path: every process
//! that opens the same inode shares it, whatever its configuration says, and no lock file exists
//! that could be removed, replaced by a symlink or created by someone else.
//!
//! This is the convention systemd documents for tools that change a disk's partition table
//! (<https://systemd.io/BLOCK_DEVICE_LOCKING/>): `systemd-udevd` takes a shared `flock` on a
//! whole-disk device node while it probes the disk, and skips (re-queues) its events while
//! someone holds an exclusive one. So, as a side effect, udev does not re-probe the disk or its
//! partitions while an update writes them; the change events of the write run once the lock is
//! released, and see the finished partitions. Because udev holds its shared lock briefly while
//! probing, [`DiskLock::acquire`] retries for a while instead of failing at the first refusal.
//! Tools that follow the same convention (`systemd-repart`, `sfdisk --lock`) exclude us and we
//! exclude them.
//!
//! Only a process that can open the disk can take the lock: on a host the device node is
//! readable by root (and group `disk`) only, so an unprivileged user can neither hold it nor
//! redirect it. The lock belongs to the open file description, so the kernel releases it when
//! the holder exits or is killed: a crashed update never blocks the next one.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # let disk = dir.path().join("disk.img");
//! # std::fs::write(&disk, [0u8; 4096]).unwrap();
//! use std::time::Duration;
//! use signpost::lock::{DiskLock, LockError};
//!
//! let first = DiskLock::acquire(&disk, Duration::ZERO)?;
//! let second = DiskLock::acquire(&disk, Duration::from_millis(50));
//! assert!(matches!(second, Err(LockError::Held { holder_pid: Some(pid), .. }) if pid == std::process::id()));
//! drop(first);
//! DiskLock::acquire(&disk, Duration::ZERO)?;
//! # Ok::<(), signpost::lock::LockError>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// How long callers that change the disk wait by default for the lock: long enough to ride out
/// udev's brief shared lock while it probes the disk, short enough to report another update
/// promptly.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);

/// How long the `signpost` CLI waits by default. Its changes are one-shot and mostly run
/// unattended (`mark-successful-boot` and `rollback-to-inactive` from boot-time units, where a
/// spurious failure is worse than a delay): they ride out another brief owner (udev probing,
/// a partitioning tool, another signpost) instead of failing after [`DEFAULT_WAIT`]. An update
/// holds the lock for minutes; a change that meets one still fails, naming its pid. updog
/// keeps the short wait: a second update reports the running one promptly (exit 4) rather
/// than queueing behind a download.
pub const ONE_SHOT_WAIT: Duration = Duration::from_secs(30);

/// How often a waiting process retries the lock.
const POLL: Duration = Duration::from_millis(20);

/// The exclusive lock on one disk, held until dropped (or the process ends: the kernel releases
/// `flock` locks with the last descriptor of the open file).
#[derive(Debug)]
pub struct DiskLock {
    path: PathBuf,
    lock: Flock<File>,
}

/// Why the disk could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds the disk: another update or boot-flag change is in progress, or
    /// (a shared lock) a process reads the disk.
    #[error("disk {path} is locked by {}", held_text(*.holder_pid, *.holder, *.waited_ms))]
    Held {
        /// The disk.
        path: PathBuf,
        /// The holder's pid, from `/proc/locks`, when it can be found.
        holder_pid: Option<u32>,
        /// What else is known of the holder (its lock's mode, its user, whether the disk is an
        /// image file other users can read), when it can be found.
        holder: Option<LockHolder>,
        /// How long we waited.
        waited_ms: u128,
    },
    /// The disk could not be opened or locked.
    #[error("cannot lock disk {path}")]
    Io {
        /// The disk.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A process holding a lock on the disk, as `/proc/locks` and `/proc/PID` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockHolder {
    /// Its pid.
    pub pid: u32,
    /// Whether its lock is shared (`flock -s`: a reader, such as udev probing the disk) rather
    /// than exclusive (another update or boot-flag change).
    pub shared: bool,
    /// Its user id, when `/proc/PID` could be read.
    pub uid: Option<u32>,
    /// The disk is a regular file that users other than its owner may read: any of them can
    /// hold a shared lock on it.
    pub readable_by_others: bool,
}

fn held_text(pid: Option<u32>, holder: Option<LockHolder>, waited_ms: u128) -> String {
    let who = pid.map_or_else(|| "another process".to_string(), |p| format!("pid {p}"));
    let Some(h) = holder else {
        return format!(
            "{who}: another update or boot-flag change is in progress (waited {waited_ms} ms)"
        );
    };
    let uid = h.uid.map(|u| format!(" (uid {u})")).unwrap_or_default();
    if !h.shared {
        return format!(
            "{who}{uid}: another update or boot-flag change is in progress (waited {waited_ms} ms)"
        );
    }
    let hint = if h.readable_by_others && h.uid != Some(0) {
        "; any user who can read a disk image file can hold it so: make the file mode 0600"
    } else {
        ""
    };
    format!(
        "{who}{uid} with a shared lock: a process reading the disk holds it (waited {waited_ms} ms){hint}"
    )
}

impl DiskLock {
    /// Opens `disk` (block device or image file, never created) read-write and takes an
    /// exclusive lock on it, waiting at most `wait` (`Duration::ZERO`: fail at once when another
    /// process holds it).
    pub fn acquire(disk: impl AsRef<Path>, wait: Duration) -> Result<DiskLock, LockError> {
        let path = disk.as_ref().to_path_buf();
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(lock_node(&path))
            .map_err(io_err)?;
        let start = Instant::now();
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(DiskLock { path, lock }),
                Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => {
                    let waited = start.elapsed();
                    if waited >= wait {
                        let holder = holder(&f);
                        return Err(LockError::Held {
                            path,
                            holder_pid: holder.map(|h| h.pid),
                            holder,
                            waited_ms: waited.as_millis(),
                        });
                    }
                    std::thread::sleep(POLL.min(wait.saturating_sub(waited)));
                    file = f;
                }
                Err((_, errno)) => return Err(io_err(errno.into())),
            }
        }
    }

    /// The disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked, read-write disk handle.
    pub fn file(&self) -> &File {
        &self.lock
    }

    /// Another handle on the same open file, for I/O under the lock. It does not extend the
    /// lock: dropping the `DiskLock` releases it.
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.lock.try_clone()
    }
}

/// Another process holding a disk's exclusive lock, as [`probe`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// Its pid, from `/proc/locks`, when it can be found.
    pub holder_pid: Option<u32>,
}

/// Whether another process holds `disk`'s exclusive lock right now (an update or a boot-flag
/// change is in progress), without taking it and without waiting: the disk is opened read-only
/// (so closing it does not make udev re-probe it) and a shared lock is tried, which only an
/// exclusive holder refuses. For status displays; the answer may be stale a moment later.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let disk = dir.path().join("disk.img");
/// # std::fs::write(&disk, [0u8; 4096]).unwrap();
/// use signpost::lock::probe;
/// assert_eq!(probe(&disk)?, None);
/// // flock locks belong to open files: a holder elsewhere (another process) is seen.
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn probe(disk: impl AsRef<Path>) -> io::Result<Option<Holder>> {
    let file = File::open(lock_node(disk.as_ref()))?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_shared) => Ok(None),
        Err((f, Errno::EWOULDBLOCK)) => Ok(Some(Holder {
            holder_pid: holder(&f).map(|h| h.pid),
        })),
        Err((_, errno)) => Err(errno.into()),
    }
}

/// The node that stands for `path` in the lock. A disk image file is its own inode. A block
/// device is known by its device number, but `flock` locks an inode, and any number of nodes
/// (`mknod`, a copy of `/dev` in a container) can name one device: every such node is locked
/// through the one the kernel names the device by (`/dev/` + `DEVNAME` of
/// `/sys/dev/block/MAJ:MIN/uevent`, the node udev and `systemd-repart` lock), so two processes
/// that reach one disk through different nodes still exclude each other. When that node cannot
/// be found or is not that device, `path` itself.
pub fn lock_node(path: &Path) -> PathBuf {
    use std::os::unix::fs::FileTypeExt;
    let canonical = || -> Option<PathBuf> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.file_type().is_block_device() {
            return None;
        }
        let rdev = meta.rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let uevent =
            std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
        let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
        // A kernel name is a relative path under /dev without "..".
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c == "..") {
            return None;
        }
        let node = Path::new("/dev").join(name);
        let found = std::fs::metadata(&node).ok()?;
        (found.file_type().is_block_device() && found.rdev() == rdev).then_some(node)
    };
    canonical().unwrap_or_else(|| path.to_path_buf())
}

/// Who holds a `flock` on `file`'s inode, from `/proc/locks` (best effort): an exclusive holder
/// first, else a shared one.
fn holder(file: &File) -> Option<LockHolder> {
    let meta = file.metadata().ok()?;
    let readable_by_others = meta.file_type().is_file() && meta.mode() & 0o044 != 0;
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let held: Vec<(bool, u32)> = locks
        .lines()
        .filter_map(|line| {
            // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters are marked "->" and
            // hold nothing.
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "FLOCK", _, mode @ ("WRITE" | "READ"), pid, inode, ..] if *inode == id => {
                    Some((*mode == "READ", pid.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect();
    let (shared, pid) = held
        .iter()
        .find(|(shared, _)| !shared)
        .or_else(|| held.first())
        .copied()?;
    let uid = std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid());
    Some(LockHolder {
        pid,
        shared,
        uid,
        readable_by_others,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path) -> PathBuf {
        let path = dir.join("disk.img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        path
    }

    #[test]
    fn second_holder_is_refused_naming_the_first_pid_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path());
        let first = DiskLock::acquire(&path, Duration::ZERO).unwrap();
        assert_eq!(first.path(), path);
        let err = DiskLock::acquire(&path, Duration::from_millis(60)).unwrap_err();
        match &err {
            LockError::Held {
                holder_pid,
                waited_ms,
                ..
            } => {
                assert_eq!(*holder_pid, Some(std::process::id()));
                assert!(*waited_ms >= 60);
            }
            other => panic!("expected Held, got {other:?}"),
        }
        assert!(err.to_string().contains("disk.img"), "{err}");
        drop(first);
        DiskLock::acquire(&path, Duration::ZERO).unwrap();
    }

    #[test]
    fn another_path_to_the_same_inode_is_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path());
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let hard = dir.path().join("hard.img");
        std::fs::hard_link(&path, &hard).unwrap();
        let _held = DiskLock::acquire(&link, Duration::ZERO).unwrap();
        for other in [&path, &hard] {
            assert!(matches!(
                DiskLock::acquire(other, Duration::ZERO),
                Err(LockError::Held { .. })
            ));
        }
    }

    #[test]
    fn probe_sees_an_exclusive_holder_and_not_a_shared_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path());
        assert_eq!(probe(&path).unwrap(), None);
        let held = DiskLock::acquire(&path, Duration::ZERO).unwrap();
        assert_eq!(
            probe(&path).unwrap(),
            Some(Holder {
                holder_pid: Some(std::process::id())
            })
        );
        drop(held);
        // A shared holder (udev probing) is no update in progress.
        let shared = Flock::lock(File::open(&path).unwrap(), FlockArg::LockSharedNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        assert_eq!(probe(&path).unwrap(), None);
        drop(shared);
        assert!(probe(dir.path().join("absent.img")).is_err());
    }

    #[test]
    fn a_missing_disk_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.img");
        let err = DiskLock::acquire(&path, Duration::ZERO).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err}");
        assert!(err.to_string().contains("absent.img"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn dropping_the_lock_releases_it_even_while_a_cloned_handle_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path());
        let held = DiskLock::acquire(&path, Duration::ZERO).unwrap();
        let clone = held.try_clone_file().unwrap();
        assert!(DiskLock::acquire(&path, Duration::ZERO).is_err());
        drop(held);
        DiskLock::acquire(&path, Duration::ZERO).unwrap();
        drop(clone);
    }
}
