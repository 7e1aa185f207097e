//! Whether another process owns the disk right now: an update or a boot-flag change in progress,
//! so that `status` can say so instead of describing a disk that is about to change.

use super::{UpdateError, Updater};
pub use signpost::lock::Holder;

impl Updater {
    /// The process holding the host disk's lock, if any (an update staging or flipping, a
    /// `signpost` change, a partitioning tool), found without taking the lock or waiting.
    /// [`Updater::status`] describes the disk as it is; while this is `Some`, it is changing.
    ///
    /// `Err` when the disk cannot be found or opened (as another user than root on a host).
    pub fn busy(&self) -> Result<Option<Holder>, UpdateError> {
        let (disk, active) = self.disk_and_active()?;
        signpost::lock::probe(&disk)
            .map_err(|source| {
                UpdateError::Lock(Box::new(crate::lock::LockError::Io {
                    path: disk.clone(),
                    source,
                }))
            })
            .inspect(|holder| {
                if let Some(h) = holder {
                    log::debug!(
                        "disk {} (running set {active}) is locked by {h:?}",
                        disk.display()
                    );
                }
            })
    }
}
