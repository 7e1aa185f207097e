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
    /// Another process holds the disk: another update or boot-flag change is in progress.
    #[error(
        "disk {path} is locked by {}: another update or boot-flag change is in progress (waited {waited_ms} ms)",
        holder_text(*.holder_pid)
    )]
    Held {
        /// The disk.
        path: PathBuf,
        /// The holder's pid, from `/proc/locks`, when it can be found.
        holder_pid: Option<u32>,
        /// How long we waited.
        waited_ms: u128,
    },
    /// The disk could not be opened or locked.
    #[error("cannot lock disk {path}: {source}")]
    Io {
        /// The disk.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "another process".to_string(), |p| format!("pid {p}"))
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
            .open(&path)
            .map_err(io_err)?;
        let start = Instant::now();
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(DiskLock { path, lock }),
                Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => {
                    let waited = start.elapsed();
                    if waited >= wait {
                        let holder_pid = holder_pid(&f);
                        return Err(LockError::Held {
                            path,
                            holder_pid,
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
    let file = File::open(disk.as_ref())?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_shared) => Ok(None),
        Err((f, Errno::EWOULDBLOCK)) => Ok(Some(Holder {
            holder_pid: holder_pid(&f),
        })),
        Err((_, errno)) => Err(errno.into()),
    }
}

/// The pid holding a `flock` on `file`'s inode, from `/proc/locks` (best effort).
fn holder_pid(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters are marked "->".
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, "WRITE", pid, inode, ..] if *inode == id => pid.parse().ok(),
            _ => None,
        }
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
