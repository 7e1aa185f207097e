//! [`Target`]: the disk and running set one operation works on, as a caller names them (an
//! explicit disk image or device, or the host's own OS disk), and the whole of a one-shot change
//! on it: lock, open, apply, release.
//!
//! This is what the `signpost` CLI runs for each subcommand; an agent that makes a single change
//! calls it the same way. An operation longer than one change (updog's staging) holds the
//! [`crate::DiskLock`] itself and uses [`Signpost::locked`].

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use bootpart::SetId;

use crate::disk::Signpost;
use crate::error::Error;
use crate::state::Transition;

/// Which disk an operation works on, and which set is running there.
///
/// ```no_run
/// use std::time::Duration;
/// use signpost::{SetId, Target, Transition};
///
/// let target = Target { disk: Some("disk.img".into()), active: Some(SetId::A) };
/// // Waits up to 5 s for another owner of the disk, applies the change, releases the lock.
/// let next = target.apply(Transition::RollbackToInactive, Duration::from_secs(5))?;
/// assert_eq!(next, Some(SetId::B));
/// println!("{}", target.open_read_only()?.status());
/// # Ok::<(), signpost::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The disk (block device or image file); `None`: the disk holding the running root
    /// filesystem.
    pub disk: Option<PathBuf>,
    /// The running set; `None`: found from the running root filesystem.
    pub active: Option<SetId>,
}

impl Target {
    /// The host's own OS disk, with the running set found from the running root filesystem.
    pub fn host() -> Self {
        Self::default()
    }

    /// Opens the disk read-write, taking its [`crate::DiskLock`] (waiting at most `wait` for
    /// another owner); the lock is held until the [`Signpost`] is dropped.
    pub fn open(&self, wait: Duration) -> Result<Signpost<File>, Error> {
        match &self.disk {
            Some(disk) => Signpost::open_waiting(disk, self.active, wait),
            None => Signpost::open_host_waiting(self.active, wait),
        }
    }

    /// Opens the disk read-only and without the lock, for reading its state.
    pub fn open_read_only(&self) -> Result<Signpost<File>, Error> {
        match &self.disk {
            Some(disk) => Signpost::open_read_only(disk, self.active),
            None => Signpost::open_host_read_only(self.active),
        }
    }

    /// One change, start to end: locks the disk (waiting at most `wait`), applies `transition`
    /// (see [`Signpost::apply`]) and releases the lock. Returns the set the bootloader boots
    /// next, as read back from the disk after the write (`None`: no set is bootable).
    pub fn apply(&self, transition: Transition, wait: Duration) -> Result<Option<SetId>, Error> {
        let mut sp = self.open(wait)?;
        sp.apply(transition)?;
        Ok(sp.next_boot())
    }

    /// Locks the disk (waiting at most `wait`) and rewrites both GPT copies unchanged (see
    /// [`Signpost::rewrite_table`]). Returns whether a damaged or stale copy was repaired.
    pub fn rewrite_table(&self, wait: Duration) -> Result<bool, Error> {
        self.open(wait)?.rewrite_table()
    }
}
