//! One owner per disk: the update lock is signpost's [`DiskLock`], an exclusive `flock` on the
//! OS disk itself (see [`signpost::lock`] for the choice and its effect on udev).
//!
//! [`crate::updater::Updater::lock`] resolves the host disk and the running set once, takes the
//! lock, and hands back an [`UpdateLock`]: stage, apply and revert take it as proof and work on
//! that disk only, for the whole operation (clearing the inactive set, writing it, marking it
//! valid and, for `update`, the flip). Two updaters with different configuration files, and a
//! `signpost` run, exclude each other because they lock the same inode. There is no lock file
//! that could be removed, redirected through a symlink, or held by an unprivileged user.
//!
//! The running set the lock carries decides which set staging clears, so only the updater's
//! own resolution of the disk makes one: [`UpdateLock`] has no public constructor.
//!
//! ```compile_fail,E0624
//! # let disk = std::path::Path::new("/dev/vda");
//! let lock = updog::lock::UpdateLock::acquire(disk, updog::SetId::A);
//! ```
//!
//! ```no_run
//! use updog::updater::Updater;
//!
//! let (config, _) = updog::config::Config::from_path("/etc/updog.toml".as_ref())?;
//! let updater = Updater::new(config)?;
//! let lock = updater.lock()?; // the disk and running set of the configuration or of `/`
//! assert!(matches!(updater.lock(), Err(e) if e.exit_code() == updog::exit::LOCKED));
//! drop(lock);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;
use std::time::Duration;

use bootpart::SetId;
pub use signpost::lock::{DEFAULT_WAIT, DiskLock, LockError};

/// The held lock on the OS disk, with the disk and the running set it was resolved to;
/// dropping it releases the lock.
#[derive(Debug)]
pub struct UpdateLock {
    disk: DiskLock,
    active: SetId,
}

impl UpdateLock {
    /// Locks `disk`, whose running set is `active`, waiting up to [`DEFAULT_WAIT`] (udev's
    /// probes hold a shared lock briefly); [`LockError::Held`] when another process owns it.
    pub(crate) fn acquire(disk: &Path, active: SetId) -> Result<UpdateLock, LockError> {
        Self::acquire_waiting(disk, active, DEFAULT_WAIT)
    }

    /// Like [`UpdateLock::acquire`], waiting at most `wait`.
    pub(crate) fn acquire_waiting(
        disk: &Path,
        active: SetId,
        wait: Duration,
    ) -> Result<UpdateLock, LockError> {
        Ok(UpdateLock {
            disk: DiskLock::acquire(disk, wait)?,
            active,
        })
    }

    /// The locked disk.
    pub fn disk(&self) -> &Path {
        self.disk.path()
    }

    /// The running set.
    pub fn active(&self) -> SetId {
        self.active
    }

    /// The disk lock itself (for [`signpost::Signpost::locked`]).
    pub fn disk_lock(&self) -> &DiskLock {
        &self.disk
    }
}
