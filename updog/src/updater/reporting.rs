//! The flip with progress events, and staging and flipping as one run: for an agent that shows
//! one progress stream from "loading metadata" to "boots next".

use bootpart::SetId;

use super::{CancelHandle, CheckOptions, Staged, UpdateError, Updater};
use crate::lock::UpdateLock;
use crate::progress::ProgressEvent;
use crate::status::StagedRecord;

impl Updater {
    /// [`Updater::apply_cancellable`] reporting to `progress`: [`ProgressEvent::Flipped`] once
    /// the boot flags point at the staged set, then [`ProgressEvent::Done`] with `applied: true`
    /// and the staged version; or a single [`ProgressEvent::Error`].
    pub fn apply_reporting(
        &self,
        lock: &UpdateLock,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<SetId, UpdateError> {
        match self.apply_cancellable(lock, cancel) {
            Ok(set) => {
                progress(&ProgressEvent::Flipped { set });
                let version = StagedRecord::read(&self.config.state_file)
                    .ok()
                    .flatten()
                    .filter(|record| record.set == set)
                    .map(|record| record.version);
                progress(&ProgressEvent::Done {
                    version,
                    set: Some(set),
                    applied: true,
                    no_update: None,
                });
                Ok(set)
            }
            Err(e) => {
                progress(&ProgressEvent::failed(&e, crate::advice::error_chain(&e)));
                Err(e)
            }
        }
    }

    /// Chooses, stages and flips to an update in one run: what `updog update` does, without
    /// the reboot. The events are those of [`Updater::stage`] up to the flip, then
    /// [`ProgressEvent::Flipped`], and last [`ProgressEvent::Done`] with `applied: true` (or,
    /// with nothing to take, `applied: false` and the reason), or a single
    /// [`ProgressEvent::Error`]. A cancellation before the flip leaves the update staged.
    ///
    /// ```no_run
    /// use updog::config::Config;
    /// use updog::updater::{CancelHandle, CheckOptions, Updater};
    ///
    /// let (config, _warnings) = Config::from_path("/etc/updog.toml".as_ref())?;
    /// let updater = Updater::new(config)?;
    /// let lock = updater.lock()?;
    /// let staged = updater.update(
    ///     &lock,
    ///     &CheckOptions::default(),
    ///     &|event| eprintln!("{event:?}"),
    ///     &CancelHandle::new(),
    /// )?;
    /// println!("{} boots next from set {}", staged.version, staged.set);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update(
        &self,
        lock: &UpdateLock,
        opts: &CheckOptions,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<Staged, UpdateError> {
        crate::off_runtime::run_with_progress(progress, |progress| {
            let staged = match self.stage_run(lock, opts, progress, cancel) {
                Ok(staged) => staged,
                Err(e) => {
                    let result: Result<Staged, UpdateError> = Err(e);
                    progress(&ProgressEvent::finished(&result, false));
                    return result;
                }
            };
            match self.apply_cancellable(lock, cancel) {
                Ok(set) => {
                    progress(&ProgressEvent::Flipped { set });
                    progress(&ProgressEvent::done(&staged, true));
                    Ok(staged)
                }
                Err(e) => {
                    progress(&ProgressEvent::failed(&e, crate::advice::error_chain(&e)));
                    Err(e)
                }
            }
        })
    }
}

/// Short names for what an agent reads most: `available.version()` rather than
/// `available.update.version`, and one word, `version`, for the running version in a check and
/// in a status alike.
impl super::AvailableUpdate {
    /// The version on offer.
    pub fn version(&self) -> &semver::Version {
        &self.update.version
    }
}

impl super::Check {
    /// The running version (`VERSION_ID` of os-release), as [`super::Status`] names it
    /// `running.version`.
    pub fn running_version(&self) -> &semver::Version {
        &self.running.version_id
    }

    /// The update on offer, if there is one.
    pub fn available(&self) -> Option<&super::AvailableUpdate> {
        match &self.outcome {
            super::CheckOutcome::Available(update) => Some(update),
            super::CheckOutcome::NoUpdate(_) => None,
        }
    }
}

impl crate::os_release::OsRelease {
    /// The running version (`VERSION_ID`): the same value as `version_id`, under the name the
    /// status uses.
    pub fn version(&self) -> &semver::Version {
        &self.version_id
    }
}
