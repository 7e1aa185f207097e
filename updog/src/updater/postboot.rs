//! After the reboot: what an agent does once the new set is running (or has failed to prove
//! itself). The same transitions as `signpost mark-successful-boot`, `signpost
//! rollback-to-inactive` and `signpost has-boot-ever-succeeded`, through the signpost library
//! on the disk the [`UpdateLock`] holds.

use bootpart::SetId;

use super::{InactiveState, UpdateError, Updater};
use crate::lock::UpdateLock;
use crate::status::StagedRecord;

impl Updater {
    /// Marks the running set as booted successfully and sets the disk's "a boot has ever
    /// succeeded" bit (PRIVATE bit 57), as `signpost mark-successful-boot` does: from then on
    /// the bootloader keeps booting it without spending tries, and no longer falls back.
    /// Call it once the new OS has shown it works (the node is healthy, the workload is up).
    ///
    /// A disk without a PRIVATE partition is refused, and nothing changes.
    pub fn mark_successful_boot(&self, lock: &UpdateLock) -> Result<(), UpdateError> {
        let mut sp = self.signpost(lock)?;
        sp.mark_successful_boot()
            .map_err(|e| UpdateError::Signpost(Box::new(e)))?;
        log::info!(
            "marked set {} (running) as booted successfully",
            sp.active()
        );
        Ok(())
    }

    /// Boots the inactive set next, as `signpost rollback-to-inactive` does (inactive priority
    /// 2, running set priority 1): going back to the OS that ran before the update. Refused,
    /// with nothing written, unless the inactive set booted successfully before or is applied
    /// (has a priority and tries left); a set that is only staged is never booted this way.
    /// Returns the set that boots next.
    pub fn rollback_to_inactive(&self, lock: &UpdateLock) -> Result<SetId, UpdateError> {
        let mut sp = self.signpost(lock)?;
        let rolled = sp.rollback_to_inactive();
        // A record of the inactive set (an applied update) follows what the disk now says.
        if let Ok(Some(r)) = StagedRecord::read(&self.config.state_file) {
            if r.set == sp.inactive() {
                self.record_follows_disk(&sp, &r);
            }
        }
        rolled.map_err(|e| UpdateError::Signpost(Box::new(e)))?;
        let next = sp.inactive();
        log::info!(
            "rolled back: set {next} boots next ({}), set {} stays the fallback",
            InactiveState::of(&sp.flags()).describe(),
            sp.active()
        );
        Ok(next)
    }

    /// Whether a boot has ever succeeded on this disk (PRIVATE bit 57), as `signpost
    /// has-boot-ever-succeeded` reports it; a disk without a PRIVATE partition is an error.
    ///
    /// Reads the GPT without the lock, as `signpost` and [`Updater::status`] do: it changes
    /// nothing, and an update in progress must not make it fail.
    pub fn has_boot_ever_succeeded(&self) -> Result<bool, UpdateError> {
        self.read_only_gpt()?
            .has_boot_ever_succeeded()
            .map_err(|e| UpdateError::Signpost(Box::new(e)))
    }
}
