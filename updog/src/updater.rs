//! The update flow an agent embeds: check, stage, apply, revert, status. The types it takes and
//! returns live in the modules that own them and are re-exported here: [`crate::error`]
//! (`UpdateError`), [`crate::plan`] (`CheckOptions`, `Check`, the plan), [`crate::status`]
//! (`Status`, `Staged`, `InactiveState`).
//!
//! ```no_run
//! use updog::updater::{CancelHandle, CheckOptions, CheckOutcome, Updater};
//!
//! let (config, _warnings) = updog::config::Config::from_path("/etc/updog.toml".as_ref())?;
//! let updater = Updater::new(config)?;
//! match updater.check(&CheckOptions::default())?.outcome {
//!     CheckOutcome::NoUpdate(reason) => println!("nothing to do: {reason}"),
//!     CheckOutcome::Available(update) => {
//!         let lock = updater.lock()?;
//!         let cancel = CancelHandle::new();
//!         // Exactly the update checked, or UpdateError::PlanChanged.
//!         let staged = updater.stage_plan(&lock, update.plan, &|event| {
//!             println!("{}", updog::progress::json_line(event));
//!         }, &cancel)?;
//!         updater.apply(&lock)?;
//!         println!("{} staged on set {}, reboot to use it", staged.version, staged.set);
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bootpart::io::BlockIo;
use bootpart::{ImageKind, SetId};
use chrono::Utc;
use manifest::Manifest;
use manifest::select::{Selection, SelectionRequest};
use semver::Version;

use crate::config::Config;
use crate::failed::{FailedBoot, FailedBoots};
use crate::lock::UpdateLock;
use crate::os_release::OsRelease;
use crate::progress::ProgressEvent;
use crate::staging::{ClearedSet, Confirmed, DeltaSource, Gpt};
use crate::status::{STATUS_FORMAT_VERSION, StagedRecord};
use crate::steps::{GptIoWrapper, Step, StepObserver};
use crate::transport::Transport;

pub use crate::error::UpdateError;
pub use crate::plan::{
    AvailableUpdate, Check, CheckOptions, CheckOutcome, PlanChange, PlannedImage, SignedTarget,
    UpdatePlan,
};
pub use crate::status::{InactiveState, RunningStatus, Staged, Status, UpdateState};

mod busy;
mod cancel;
mod kind;
mod postboot;
mod reporting;

pub use busy::Holder;
pub use kind::ErrorKind;

/// The TUF target that holds the manifest.
pub use manifest::MANIFEST_TARGET;

/// A cancellation handle for [`Updater::stage_plan`] and [`Updater::stage`]: set it (from a signal handler, another thread,
/// an agent's shutdown path) and staging stops at the next buffer, leaving the inactive set
/// cleared. The pipeline's own handle, so that nothing bridges two of them.
pub use crate::pipeline::CancelHandle;

/// Where one image's compressed bytes fall in the update-wide progress.
#[derive(Debug, Clone, Copy)]
struct ImageBytes {
    /// Compressed bytes of the images staged before it.
    done: u64,
    /// Compressed bytes of all three images.
    total: u64,
    /// Its own compressed length.
    image: u64,
}

/// The updater: configuration, identity and transport, with the operations of `updog`.
///
/// Blocking, `Send` and `Sync`: an async agent shares it in an `Arc` and calls it through
/// `spawn_blocking` (see `updog/examples/agent.rs`). It may be created and dropped on a runtime
/// thread too (its HTTP client, which runs a runtime of its own, is built on a plain thread);
/// only its blocking calls belong in `spawn_blocking`.
pub struct Updater {
    config: Config,
    os: OsRelease,
    transport: Transports,
    on_step: Option<StepObserver>,
    gpt_io: Option<GptIoWrapper>,
    /// The host disk and the running set, once resolved (see `disk_and_active`).
    host_disk: std::sync::OnceLock<(PathBuf, SetId)>,
}

/// How the requests of an operation reach the repository.
enum Transports {
    /// The default transport: each operation fetches through a view of it that carries the
    /// query values of that operation only (see [`Updater::transport_with`]).
    Default(crate::transport::AnyTransport),
    /// A transport the embedder supplied, used as it is.
    Custom(Arc<dyn Transport>),
}

// Agents share one updater between threads and async tasks (`Arc<Updater>`, `spawn_blocking`).
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Updater>();
};

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("config", &self.config)
            .field("os", &self.os)
            .finish_non_exhaustive()
    }
}

impl Updater {
    /// An updater from configuration: reads os-release from `config.os_release` and uses the
    /// HTTP(S)/file transport the URLs call for.
    pub fn new(config: Config) -> Result<Updater, UpdateError> {
        let os = OsRelease::from_path(&config.os_release)?;
        Self::with_os_release(config, os)
    }

    /// An updater with an explicit identity (tests, agents that know their version).
    pub fn with_os_release(config: Config, os: OsRelease) -> Result<Updater, UpdateError> {
        let transport = default_transport(&config).map_err(UpdateError::Transport)?;
        Ok(Updater {
            config,
            os,
            transport: Transports::Default(transport),
            on_step: None,
            gpt_io: None,
            host_disk: std::sync::OnceLock::new(),
        })
    }

    /// Calls `observer` right before each [`Step`] of stage, apply and revert (logging, or a
    /// test that stops the operation at every step boundary).
    pub fn on_step(mut self, observer: impl Fn(Step) + Send + Sync + 'static) -> Updater {
        self.on_step = Some(Arc::new(observer));
        self
    }

    /// Wraps the (locked) disk handle the boot flags are read and written through: fault
    /// injection in tests (a failing flush, a kill between two GPT writes), or I/O accounting.
    pub fn with_gpt_io(
        mut self,
        wrap: impl Fn(std::fs::File) -> Box<dyn BlockIo + Send> + Send + Sync + 'static,
    ) -> Updater {
        self.gpt_io = Some(Arc::new(wrap));
        self
    }

    fn step(&self, step: Step) {
        if let Some(observer) = &self.on_step {
            observer(step);
        }
    }

    /// Replaces the transport (for example with one that counts or throttles requests).
    /// It is used as it is: the query parameters the default transport sends (`seed`,
    /// `version`, `target`, `migrations`) are not added to its URLs.
    pub fn with_transport(mut self, transport: Arc<dyn Transport>) -> Updater {
        self.transport = Transports::Custom(transport);
        self
    }

    /// The transport of one operation. Through the default transport, every request says, as
    /// the reference's do, which wave and version is asking (`seed`, `version`), plus `extra`:
    /// the values that operation has chosen (`target` once it chose an update, `migrations`
    /// once they are fetched); sorted by name. A view made for the operation, so a concurrent
    /// operation on the same updater never sends them.
    fn transport_with(&self, extra: &[(&str, &str)]) -> Arc<dyn Transport> {
        match &self.transport {
            Transports::Custom(transport) => Arc::clone(transport),
            Transports::Default(transport) => {
                let mut query = vec![
                    ("seed".to_string(), self.config.seed.get().to_string()),
                    ("version".to_string(), self.os.version_id.to_string()),
                ];
                query.extend(
                    extra
                        .iter()
                        .map(|(name, value)| ((*name).to_string(), (*value).to_string())),
                );
                query.sort_by(|a, b| a.0.cmp(&b.0));
                Arc::new(transport.with_query(query))
            }
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What is running.
    pub fn os_release(&self) -> &OsRelease {
        &self.os
    }

    /// Resolves the OS disk and the running set (discovered once per updater) and takes the
    /// disk's exclusive lock (see [`crate::lock`]). Stage, apply and revert take it as proof
    /// and work on that disk.
    pub fn lock(&self) -> Result<UpdateLock, UpdateError> {
        let (disk, active) = self.disk_and_active()?;
        Ok(UpdateLock::acquire(&disk, active)?)
    }

    fn load_repository(&self) -> Result<crate::tuf::Repository, UpdateError> {
        self.load_repository_over(self.transport_with(&[]))
    }

    /// Loads and verifies the repository through `transport` (the updater's own, or one that
    /// stops at a cancellation).
    fn load_repository_over(
        &self,
        transport: Arc<dyn Transport>,
    ) -> Result<crate::tuf::Repository, UpdateError> {
        let mut opts = crate::tuf::RepositoryOptions::new(
            self.config.metadata_base_url.clone(),
            self.config.targets_base_url.clone(),
            self.config.metadata_dir.clone(),
        );
        opts.trusted_root.clone_from(&self.config.trusted_root);
        opts.limits.metadata_min_rate = self.config.metadata_min_rate;
        let repo = crate::tuf::Repository::load(opts, transport)
            .map_err(|e| UpdateError::Repository(Box::new(e)))?;
        log::info!(
            "verified repository metadata from {}: root v{}, timestamp v{}, snapshot v{}, targets v{}",
            self.config.metadata_base_url,
            repo.root_version(),
            repo.timestamp_version(),
            repo.snapshot_version(),
            repo.targets_version()
        );
        Ok(repo)
    }

    fn load_manifest(repo: &crate::tuf::Repository) -> Result<Manifest, UpdateError> {
        if repo
            .target(MANIFEST_TARGET)
            .map_err(|e| UpdateError::Repository(Box::new(e)))?
            .is_none()
        {
            return Err(UpdateError::NoManifest);
        }
        let mut reader = repo
            .read_target(MANIFEST_TARGET)
            .map_err(|e| UpdateError::Repository(Box::new(e)))?;
        let mut bytes = Vec::new();
        (&mut reader)
            // One byte past the cap, so that a larger manifest is refused as too large.
            .take(manifest::MAX_MANIFEST_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(UpdateError::ManifestRead)?;
        reader
            .finish()
            .map_err(|e| UpdateError::Repository(Box::new(e)))?;
        Manifest::from_slice(&bytes).map_err(|e| UpdateError::Manifest(Box::new(e)))
    }

    fn request(&self, opts: &CheckOptions, failed_versions: Vec<Version>) -> SelectionRequest {
        SelectionRequest {
            variant: self.os.variant_id.clone(),
            arch: self.os.arch.clone(),
            running_version: self.os.version_id.clone(),
            seed: self.config.seed,
            now: opts.now.unwrap_or_else(Utc::now),
            version_lock: self.config.version_lock.clone(),
            ignore_waves: opts.ignore_waves || self.config.ignore_waves,
            wave_timing: self.config.wave_timing,
            force_version: opts.image.clone(),
            failed_versions,
        }
    }

    /// The releases that failed to boot on this host: the remembered list, plus a failure the
    /// disk shows now (remembered from here on, so that it survives the next staging). A
    /// listed version that is running and marked successful is forgotten. Best effort: a
    /// disk or file that cannot be read or written leaves the list as it is.
    pub fn failed_boots(&self) -> FailedBoots {
        let path = FailedBoots::path_for(&self.config.state_file);
        let mut list = FailedBoots::read(&path);
        let Ok(sp) = self.read_only_gpt() else {
            return list;
        };
        let flags = sp.flags();
        let mut changed = false;
        if let Ok(Some(record)) = StagedRecord::read(&self.config.state_file)
            && let Some(failed) = FailedBoot::detect(&record, &flags)
            && list.add(failed.clone())
        {
            log::warn!(
                "{} was flipped to on set {} and failed to boot (the set was tried and never marked successful); it is not taken again automatically",
                failed.version,
                failed.set
            );
            changed = true;
        }
        let running_ok = flags.state(flags.active).is_some_and(|s| s.successful);
        if running_ok && list.remove(&self.os.version_id) {
            log::info!(
                "{} failed to boot here before but is running and marked successful now; it is no longer skipped",
                self.os.version_id
            );
            changed = true;
        }
        // Best effort: a list that cannot be written still holds for this run.
        if changed && let Err(e) = list.write(&path) {
            log::debug!("{e}", e = crate::advice::error_chain(&e));
        }
        list
    }

    fn select(
        &self,
        repo: &crate::tuf::Repository,
        manifest: &Manifest,
        opts: &CheckOptions,
    ) -> Result<CheckOutcome, UpdateError> {
        let request = self.request(opts, self.failed_boots().versions());
        match manifest::select::select_update(manifest, &request) {
            Selection::NoUpdate(reason) => {
                log::info!(
                    "no update for {} {}: {reason}",
                    request.variant,
                    request.running_version
                );
                Ok(CheckOutcome::NoUpdate(reason))
            }
            Selection::Update(update) => {
                log::info!(
                    "chose {} {} (running {}): {}",
                    update.variant,
                    update.version,
                    request.running_version,
                    selection_reason(&request)
                );
                let plan = self.plan(repo, manifest, update, opts)?;
                Ok(CheckOutcome::Available(Box::new(AvailableUpdate {
                    update: update.clone(),
                    migrations: plan
                        .migration_plan
                        .migration_names()
                        .into_iter()
                        .map(ToString::to_string)
                        .collect(),
                    migration_plan: plan.migration_plan.clone(),
                    plan,
                    state: UpdateState::Available,
                    delta_plan: None,
                })))
            }
        }
    }

    /// Refreshes the metadata and says whether this host has an update to take, or why not.
    /// An available update comes with its [`UpdatePlan`], for [`Updater::stage_plan`]: every
    /// image is a signed target with a sha256 (checked here), and the plan names the set it
    /// goes to when the running set can be found (without the lock; read-only).
    pub fn check(&self, opts: &CheckOptions) -> Result<Check, UpdateError> {
        self.check_cancellable(opts, &CancelHandle::new())
    }

    /// Like [`Updater::check`], stopping with [`UpdateError::CheckCancelled`] (exit code 5)
    /// when `cancel` is set before or while the metadata and the manifest are fetched. A
    /// cancelled check changes no disk and stages nothing.
    pub fn check_cancellable(
        &self,
        opts: &CheckOptions,
        cancel: &CancelHandle,
    ) -> Result<Check, UpdateError> {
        crate::off_runtime::run(|| self.check_run(opts, cancel))
    }

    fn check_run(&self, opts: &CheckOptions, cancel: &CancelHandle) -> Result<Check, UpdateError> {
        cancel::stop_if_cancelled(cancel, || {
            let repo =
                self.load_repository_over(cancel::transport(&self.transport_with(&[]), cancel))?;
            let manifest = Self::load_manifest(&repo)?;
            let mut outcome = self.select(&repo, &manifest, opts)?;
            if let CheckOutcome::Available(update) = &mut outcome {
                // A check needs no disk (it runs where the disk cannot be found or read);
                // staging checks the set against the lock's.
                update.plan.target_set = self.disk_and_active().ok().map(|(_, a)| a.other());
                let staged = self
                    .read_only_gpt()
                    .ok()
                    .and_then(|sp| self.already_staged(&sp.flags(), &update.plan));
                update.state = match staged {
                    Some(s) if s.record.applied => UpdateState::Ready,
                    Some(_) => UpdateState::Staged,
                    None => UpdateState::Available,
                };
                if update.state == UpdateState::Available {
                    update.delta_plan = self.delta_estimate(&repo, &manifest, &update.update);
                }
            }
            Ok(Check {
                running: self.os.clone(),
                outcome,
            })
        })
    }

    /// The updates for this variant and architecture that this host may take now, newest
    /// first (`whats --all`): those whose wave is open for this host, unless waves are ignored
    /// (`opts.ignore_waves` or the configuration's `ignore_waves`).
    pub fn list_updates(&self, opts: &CheckOptions) -> Result<Vec<manifest::Update>, UpdateError> {
        crate::off_runtime::run(|| self.list_updates_run(opts))
    }

    fn list_updates_run(&self, opts: &CheckOptions) -> Result<Vec<manifest::Update>, UpdateError> {
        let repo = self.load_repository()?;
        let manifest = Self::load_manifest(&repo)?;
        let updates = manifest::select::ready_updates(&manifest, &self.request(opts, Vec::new()))
            .into_iter()
            .cloned()
            .collect();
        Ok(updates)
    }

    /// The disk holding the partition sets and the running set: from the configuration, or
    /// discovered from the device of `/` (through device-mapper to the partition and its disk).
    ///
    /// Discovered once per updater: the running set cannot change without a reboot, which
    /// ends the process. A failure is not remembered (the next operation tries again).
    fn disk_and_active(&self) -> Result<(PathBuf, SetId), UpdateError> {
        if let Some(found) = self.host_disk.get() {
            return Ok(found.clone());
        }
        let found = self.find_disk_and_active()?;
        Ok(self.host_disk.get_or_init(|| found).clone())
    }

    fn find_disk_and_active(&self) -> Result<(PathBuf, SetId), UpdateError> {
        match (&self.config.disk, self.config.active_set) {
            (Some(disk), Some(active)) => Ok((disk.clone(), active)),
            (Some(disk), None) => {
                let opened =
                    bootpart::Disk::open(disk).map_err(|e| UpdateError::Disk(Box::new(e)))?;
                let active = bootpart::running::find_running_set(&opened)
                    .map_err(|e| UpdateError::Disk(Box::new(e)))?;
                Ok((disk.clone(), active))
            }
            (None, explicit) => {
                let (disk, found) = bootpart::running::discover_root_disk()
                    .map_err(|e| UpdateError::Disk(Box::new(e)))?;
                Ok((disk, explicit.unwrap_or(found)))
            }
        }
    }

    /// The boot flags of the host disk read without the lock (for operations that change
    /// nothing: an update in progress must not make them fail); one resolution of the disk.
    fn read_only_gpt(&self) -> Result<signpost::Signpost, UpdateError> {
        let (disk, active) = self.disk_and_active()?;
        signpost::Signpost::open_read_only(&disk, Some(active))
            .map_err(|e| UpdateError::Signpost(Box::new(e)))
    }

    /// The boot flags of the locked disk, read and written through the lock's handle.
    fn signpost(&self, lock: &UpdateLock) -> Result<Gpt, UpdateError> {
        let file = lock.disk_lock().try_clone_file().map_err(|source| {
            UpdateError::Signpost(Box::new(signpost::Error::Open {
                path: lock.disk().to_path_buf(),
                source,
            }))
        })?;
        let io: Box<dyn BlockIo + Send> = match &self.gpt_io {
            Some(wrap) => wrap(file),
            None => Box::new(file),
        };
        signpost::Signpost::from_io(io, lock.disk(), lock.active())
            .map_err(|e| UpdateError::Signpost(Box::new(e)))
    }

    /// The plan for `update`: each image's signed target (a signed target with a sha256 and a
    /// name that can be fetched), its chunk index if the update lists one, the migrations.
    fn plan(
        &self,
        repo: &crate::tuf::Repository,
        manifest: &Manifest,
        update: &manifest::Update,
        opts: &CheckOptions,
    ) -> Result<UpdatePlan, UpdateError> {
        let signed = |kind: ImageKind, name: &String| -> Result<SignedTarget, UpdateError> {
            let desc = repo.check_fetchable(name).map_err(|e| match e {
                crate::tuf::Error::TargetNotFound(_) => UpdateError::MissingTarget {
                    image: kind,
                    target: name.clone(),
                },
                source => UpdateError::UnusableTarget {
                    image: kind,
                    target: name.clone(),
                    source: Box::new(source),
                },
            })?;
            let sha256 = desc.sha256().ok_or_else(|| UpdateError::NoSha256 {
                image: kind,
                target: name.clone(),
            })?;
            Ok(SignedTarget {
                name: name.clone(),
                length: desc.length,
                sha256,
                decompressed_length: desc.decompressed_length(),
            })
        };
        // An index that is not a signed target with a sha256 is no delta (the full image is
        // staged); the plan records that as none, as it does every index when delta updates
        // are off (so turning them off between check and stage changes nothing the plan
        // holds). A lookup that fails is logged with its cause: the plan then says none, and
        // a plan that said otherwise is refused as changed.
        let index = |kind: ImageKind| {
            if !self.config.delta {
                return None;
            }
            let name = update.delta.as_ref()?.indexes.get(kind.name())?;
            let desc = match repo.target(name) {
                Ok(found) => found?,
                Err(e) => {
                    log::warn!(
                        "chunk index {name:?} of the {kind} image cannot be looked up: {e}; the full image will be used",
                        e = crate::advice::error_chain(&e)
                    );
                    return None;
                }
            };
            Some(SignedTarget {
                name: name.clone(),
                length: desc.length,
                sha256: desc.sha256()?,
                decompressed_length: None,
            })
        };
        let image = |kind: ImageKind, name: &String| -> Result<PlannedImage, UpdateError> {
            Ok(PlannedImage {
                kind,
                target: signed(kind, name)?,
                delta_index: index(kind),
            })
        };
        let migration_plan = migrations_fetch::MigrationPlan::new(
            manifest,
            &self.os.version_id,
            &update.version,
            &crate::migrations::TufSource(repo),
        )
        .map_err(|e| UpdateError::MigrationPlan(Box::new(e)))?;
        Ok(UpdatePlan {
            update: update.clone(),
            images: [
                image(ImageKind::Root, &update.images.root)?,
                image(ImageKind::Boot, &update.images.boot)?,
                image(ImageKind::Hash, &update.images.hash)?,
            ],
            migration_plan,
            target_set: None,
            options: opts.clone(),
        })
    }

    /// Chooses an update on verified metadata and stages it on the inactive set of the locked
    /// disk: [`Updater::check`] then [`Updater::stage_plan`] on one load of the metadata (what
    /// `updog update` does). [`UpdateError::NoUpdate`] when there is nothing to take.
    ///
    /// The last event `progress` receives is [`ProgressEvent::Done`] (also when there was
    /// nothing to take) or [`ProgressEvent::Error`].
    pub fn stage(
        &self,
        lock: &UpdateLock,
        opts: &CheckOptions,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<Staged, UpdateError> {
        crate::off_runtime::run_with_progress(progress, |progress| {
            let result = self.stage_run(lock, opts, progress, cancel);
            progress(&ProgressEvent::finished(&result, false));
            result
        })
    }

    fn stage_run(
        &self,
        lock: &UpdateLock,
        opts: &CheckOptions,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<Staged, UpdateError> {
        progress(&ProgressEvent::LoadingMetadata);
        let mut repo = self.load_repository()?;
        let manifest = Self::load_manifest(&repo)?;
        let plan = match self.select(&repo, &manifest, opts)? {
            CheckOutcome::NoUpdate(reason) => return Err(UpdateError::NoUpdate(Box::new(reason))),
            CheckOutcome::Available(a) => a.plan,
        };
        self.stage_chosen(lock, &mut repo, &manifest, plan, progress, cancel)
    }

    /// Stages exactly the update of `plan` (from [`Updater::check`]) on the inactive set of the
    /// locked disk. Loads fresh metadata and chooses again with the plan's options first: if
    /// the choice differs in anything the plan holds (version, an image's or chunk index's
    /// signed length or sha256, the migrations, the target set), it refuses with
    /// [`UpdateError::PlanChanged`] naming the difference, before the disk is touched.
    ///
    /// Then, in the order the invariants require: refuse if the running set has not been
    /// marked successful; preflight (no image empty, each fits); fetch migrations; clear the
    /// inactive set (flushed); stream root, boot, hash onto it, each verified, flushed and
    /// read back; record what was staged; re-read the GPT and, if the set is still as this run
    /// cleared it, mark it valid. Any failure or a cancellation after the clear leaves the
    /// inactive set cleared and the active set untouched. The caller holds the lock
    /// throughout.
    ///
    /// The last event `progress` receives is [`ProgressEvent::Done`] or
    /// [`ProgressEvent::Error`].
    pub fn stage_plan(
        &self,
        lock: &UpdateLock,
        plan: UpdatePlan,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<Staged, UpdateError> {
        crate::off_runtime::run_with_progress(progress, |progress| {
            let result = self.stage_plan_run(lock, plan, progress, cancel);
            progress(&ProgressEvent::finished(&result, false));
            result
        })
    }

    fn stage_plan_run(
        &self,
        lock: &UpdateLock,
        plan: UpdatePlan,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<Staged, UpdateError> {
        progress(&ProgressEvent::LoadingMetadata);
        let mut repo = self.load_repository()?;
        let manifest = Self::load_manifest(&repo)?;
        let changed = |change| UpdateError::PlanChanged {
            version: plan.version().clone(),
            change: Box::new(change),
        };
        let mut fresh = match self.select(&repo, &manifest, plan.options())? {
            CheckOutcome::NoUpdate(reason) => return Err(changed(PlanChange::Withdrawn(reason))),
            CheckOutcome::Available(a) => a.plan,
        };
        fresh.target_set = Some(lock.active().other());
        if let Some(change) = plan.changes_in(&fresh) {
            return Err(changed(change));
        }
        // The fresh plan: equal in all the plan promised, with the manifest signed now (cached
        // with the migrations).
        self.stage_chosen(lock, &mut repo, &manifest, fresh, progress, cancel)
    }

    /// Stages a plan chosen on `repo`'s metadata (see [`Updater::stage_plan`] for the order,
    /// which the types of [`crate::staging`] hold).
    fn stage_chosen(
        &self,
        lock: &UpdateLock,
        repo: &mut crate::tuf::Repository,
        manifest: &Manifest,
        plan: UpdatePlan,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<Staged, UpdateError> {
        // As the reference does: from here on every request of this operation names the
        // version being fetched, and, once the migrations are in, the migrations of the jump.
        let target = plan.version().to_string();
        repo.set_transport(self.transport_with(&[("target", &target)]));

        // One read of the GPT gives the partitions and the flags.
        let confirmed =
            Confirmed::check(self.signpost(lock)?, plan.options().allow_unconfirmed_boot)?;
        let inactive = confirmed.inactive();
        if let Some(staged) = self.already_staged(&confirmed.flags(), &plan) {
            log::info!(
                "{} is already {} on set {inactive} (verified when it was staged): nothing to download or write",
                staged.version,
                if staged.record.applied {
                    "applied"
                } else {
                    "staged"
                },
            );
            return Ok(staged);
        }
        progress(&ProgressEvent::Selected {
            version: plan.version().to_string(),
            set: inactive,
        });
        let preflight = confirmed.preflight(plan, self.os.version_id.clone())?;
        progress(&ProgressEvent::FetchingMigrations {
            count: preflight.plan().migration_plan.migrations.len(),
        });
        let migrations_query = Self::migrations_query(preflight.plan());
        let fetched = preflight.fetch_migrations(
            repo,
            &migrations_fetch::CacheDirs::new(
                &self.config.migrations_dir,
                &self.config.migrations_metadata_dir,
            ),
        )?;
        let transport =
            self.transport_with(&[("target", &target), ("migrations", &migrations_query)]);
        repo.set_transport(Arc::clone(&transport));
        let repo = &*repo;
        if cancel.is_cancelled() {
            return Err(UpdateError::Cancelled { set: fetched.set() });
        }

        // Clear the inactive set and flush, before its first byte changes; then remove the
        // record, which described the set just cleared.
        progress(&ProgressEvent::ClearingInactive { set: inactive });
        let step = |step| self.step(step);
        let staged = fetched
            .clear(&self.config.state_file, &step)
            .and_then(|mut cleared| {
                // From here on, any failure leaves the set cleared and unrecorded, whatever
                // wrote it.
                match self.stage_onto(&mut cleared, repo, manifest, transport, progress, cancel) {
                    Ok(()) => self.mark_valid(cleared, progress),
                    Err(e) => Err(cleared.abandon(e)),
                }
            });
        if staged.is_err() {
            let _ = StagedRecord::remove(&self.config.state_file);
        }
        staged
    }

    /// The plan's update, when it is on the inactive set already: the staged record names that
    /// set, the plan's version and every image's signed target name and sha256, and the GPT
    /// shows the set staged or applied (so nothing changed it since it was verified).
    fn already_staged(&self, flags: &signpost::BootFlags, plan: &UpdatePlan) -> Option<Staged> {
        let set = flags.inactive();
        let state = InactiveState::of(flags);
        if !matches!(state, InactiveState::Staged | InactiveState::Applied) {
            return None;
        }
        let mut record = StagedRecord::read(&self.config.state_file).ok()??;
        let same_images = plan.images().iter().all(|image| {
            // A delta stage records the chunk index it assembled from, a full one the image.
            let matches = |r: &crate::status::StagedImageRecord, t: &SignedTarget| {
                r.target == t.name && r.sha256 == hex::encode(t.sha256)
            };
            record.images.get(&image.kind).is_some_and(|r| {
                matches(r, &image.target)
                    || image.delta_index.as_ref().is_some_and(|i| matches(r, i))
            })
        });
        if record.set != set || &record.version != plan.version() || !same_images {
            return None;
        }
        record.applied = state == InactiveState::Applied;
        Some(Staged {
            update: plan.update.clone(),
            version: record.version.clone(),
            set,
            record,
            already_staged: true,
        })
    }

    /// The `migrations` query value of a plan (as the reference sends it once the migrations
    /// are in): the migrations' target names and the manifest's.
    fn migrations_query(plan: &UpdatePlan) -> String {
        let mut migration_targets: Vec<String> = plan
            .migration_plan
            .migration_names()
            .into_iter()
            .map(ToString::to_string)
            .collect();
        migration_targets.push(MANIFEST_TARGET.to_string());
        migration_targets.join(",")
    }

    /// Stages root, boot and hash onto the cleared set, each from chunks when the plan has an
    /// index for it, else (or when that fails in a way the full image avoids) in full.
    fn stage_onto(
        &self,
        cleared: &mut ClearedSet,
        repo: &crate::tuf::Repository,
        manifest: &Manifest,
        transport: Arc<dyn Transport>,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<(), UpdateError> {
        let source = DeltaSource {
            repo,
            manifest,
            store: crate::delta::stage::DeltaStore {
                transport,
                targets_base_url: self.config.targets_base_url.clone(),
                // A chunk must arrive within the stall timeout plus its size at the slowest
                // rate accepted for metadata: a store that trickles ends in the full image.
                chunk_time_limit: Some(crate::delta::store::ChunkTimeLimit {
                    base: self.config.stall_timeout,
                    min_rate: self.config.metadata_min_rate,
                }),
            },
            state_dir: self.delta_state_dir(),
        };
        // Compressed bytes of the images already staged, for the update-wide progress.
        let mut update_done = 0u64;
        let update_total = cleared.update_total();
        for kind in ImageKind::ALL {
            if cancel.is_cancelled() {
                return Err(UpdateError::Cancelled { set: cleared.set() });
            }
            self.step(Step::WriteImage(kind));
            let image_len = cleared.plan().image(kind).target.length;
            let bytes = ImageBytes {
                done: update_done,
                total: update_total,
                image: image_len,
            };
            update_done = update_done.saturating_add(image_len);
            // Delta first when the update offers it (small, local hook: delta/stage.rs).
            if !self.stage_delta(cleared, kind, &source, bytes, progress, cancel)? {
                Self::stage_full(repo, cleared, kind, bytes, progress, cancel)?;
            }
        }
        if cancel.is_cancelled() {
            return Err(UpdateError::Cancelled { set: cleared.set() });
        }
        Ok(())
    }

    /// Records what was staged and marks the set valid (see [`ClearedSet::mark_valid`]).
    fn mark_valid(
        &self,
        cleared: ClearedSet,
        progress: &dyn Fn(&ProgressEvent),
    ) -> Result<Staged, UpdateError> {
        let (set, update) = (cleared.set(), cleared.plan().update().clone());
        let step = |step| self.step(step);
        let record = cleared.mark_valid(&self.config.state_file, &step)?;
        log::info!("set {set} holds {} and is marked valid", update.version);
        progress(&ProgressEvent::MarkedValid { set });
        Ok(Staged {
            version: update.version.clone(),
            update,
            set,
            record,
            already_staged: false,
        })
    }

    /// Where the delta seed cache and resume markers live: beside the staged record.
    fn delta_state_dir(&self) -> &std::path::Path {
        self.config
            .state_file
            .parent()
            .unwrap_or(std::path::Path::new("/var/lib/updog"))
    }

    /// The delta plan of `update` for `check`, from the indexes and the seed cache (no disk
    /// reads beyond finding the running set, which is optional).
    fn delta_estimate(
        &self,
        repo: &crate::tuf::Repository,
        manifest: &Manifest,
        update: &manifest::Update,
    ) -> Option<crate::delta::stage::UpdateEstimate> {
        if !self.config.delta || update.delta.is_none() {
            return None;
        }
        let running_set = self
            .config
            .active_set
            .or_else(|| self.disk_and_active().ok().map(|(_, a)| a));
        let request = crate::delta::stage::EstimateRequest {
            manifest,
            update,
            running_version: &self.os.version_id,
            running_set,
            state_dir: self.delta_state_dir(),
        };
        crate::delta::stage::estimate_update(repo, &request)
    }

    /// Stages one image from chunks when the update offers an index for it and `delta` is on.
    /// `Ok(false)`: not offered, or it failed in a way the full image avoids (reported with a
    /// [`ProgressEvent::DeltaFallback`]); the caller streams the full image then.
    fn stage_delta(
        &self,
        cleared: &mut ClearedSet,
        kind: ImageKind,
        source: &DeltaSource<'_>,
        bytes: ImageBytes,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<bool, UpdateError> {
        use crate::delta::AssembleProgress;
        let offered = cleared
            .plan()
            .update()
            .delta
            .as_ref()
            .is_some_and(|d| d.indexes.contains_key(kind.name()));
        if !self.config.delta || !offered {
            return Ok(false);
        }
        let inactive = cleared.set();
        let mut verifying = false;
        let mut on_progress = |p: &AssembleProgress| match *p {
            AssembleProgress::Planned(plan) => {
                progress(&ProgressEvent::DeltaPlan { image: kind, plan });
            }
            // Image bytes placed; the update-wide figures count this image at its compressed size
            // in proportion, so the update's bar moves at the same rate as for full images.
            AssembleProgress::Writing { done, total, .. } => progress(&ProgressEvent::Image {
                image: kind,
                target: String::new(),
                done,
                total,
                update_done: bytes.done
                    + (u128::from(bytes.image) * u128::from(done) / u128::from(total.max(1)))
                        as u64,
                update_total: bytes.total,
            }),
            AssembleProgress::Verifying { .. } if !std::mem::replace(&mut verifying, true) => {
                progress(&ProgressEvent::Verifying { image: kind });
            }
            _ => {}
        };
        match cleared.stage_delta(kind, source, cancel.flag(), &mut on_progress) {
            Ok(staged) => {
                if let Some(patch) = staged.patch {
                    progress(&ProgressEvent::DeltaPatch {
                        image: kind,
                        target: patch.target,
                        from: patch.from,
                        chunks: patch.chunks,
                        downloaded: patch.downloaded,
                        not_used: patch.skipped,
                    });
                }
                progress(&ProgressEvent::ImageDone {
                    image: kind,
                    written: staged.written,
                });
                Ok(true)
            }
            Err(crate::delta::stage::DeltaError::Assemble(
                crate::delta::AssembleError::Cancelled,
            )) => Err(UpdateError::Cancelled { set: inactive }),
            Err(e) if e.should_fall_back() => {
                progress(&ProgressEvent::DeltaFallback {
                    image: kind,
                    reason: crate::advice::error_chain(&e),
                });
                Ok(false)
            }
            Err(source) => Err(UpdateError::Delta {
                image: kind,
                set: inactive,
                source: Box::new(source),
            }),
        }
    }

    /// Streams one image target onto its partition of the cleared set through the staging
    /// pipeline (see [`ClearedSet::stage_full`]), reporting progress.
    fn stage_full(
        repo: &crate::tuf::Repository,
        cleared: &mut ClearedSet,
        kind: ImageKind,
        bytes: ImageBytes,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<(), UpdateError> {
        use crate::pipeline::{Phase, StageOptions};
        let target = cleared.plan().image(kind).target.name.clone();
        let opts = StageOptions {
            cancel: cancel.clone(),
            ..StageOptions::default()
        };
        let verifying = std::cell::Cell::new(false);
        let on_progress = |p: crate::pipeline::Progress| match p.phase {
            Phase::Writing => progress(&ProgressEvent::Image {
                image: kind,
                target: target.clone(),
                done: p.done,
                total: p.total,
                update_done: bytes.done.saturating_add(p.done),
                update_total: bytes.total,
            }),
            Phase::Syncing | Phase::Verifying => {
                if !verifying.replace(true) {
                    progress(&ProgressEvent::Verifying { image: kind });
                }
            }
        };
        let written = cleared.stage_full(kind, repo, &opts, &on_progress)?;
        progress(&ProgressEvent::ImageDone {
            image: kind,
            written,
        });
        Ok(())
    }

    /// Flips the boot flags so the staged set is tried once at the next boot
    /// (signpost's upgrade-to-inactive). Flips only a set the GPT shows valid and not yet tried
    /// and the staged record names; otherwise it refuses and says why. Applying an update that
    /// is already applied (record and GPT agree) succeeds without writing.
    pub fn apply(&self, lock: &UpdateLock) -> Result<SetId, UpdateError> {
        self.apply_cancellable(lock, &CancelHandle::new())
    }

    /// Like [`Updater::apply`], but when `cancel` is set before the flip it stops with
    /// [`UpdateError::ApplyCancelled`] (exit code 5) and writes nothing: the set stays staged.
    pub fn apply_cancellable(
        &self,
        lock: &UpdateLock,
        cancel: &CancelHandle,
    ) -> Result<SetId, UpdateError> {
        let mut sp = self.signpost(lock)?;
        let set = sp.inactive();
        let found = sp.state(set).unwrap_or_default();
        let state = InactiveState::of(&sp.flags());
        let record = StagedRecord::read(&self.config.state_file);
        let recorded = match &record {
            Ok(Some(r)) if r.set == set => Ok(r.clone()),
            Ok(Some(r)) => Err(format!(
                "the staged record {} describes set {}",
                self.config.state_file.display(),
                r.set
            )),
            Ok(None) => Err(format!(
                "no staged record describes it ({} is missing)",
                self.config.state_file.display()
            )),
            Err(e) => Err(crate::advice::error_chain(e)),
        };
        match (state, recorded) {
            (InactiveState::Applied, Ok(r)) if r.applied => Ok(set),
            (InactiveState::Staged, Ok(_)) if cancel.is_cancelled() => {
                Err(UpdateError::ApplyCancelled { set })
            }
            (InactiveState::Staged, Ok(mut r)) => {
                self.step(Step::RecordApplied);
                r.applied = true;
                r.write_atomic(&self.config.state_file)?;
                self.step(Step::Flip);
                let flipped =
                    sp.apply_expecting(signpost::Transition::UpgradeToInactive, set, found);
                self.record_follows_disk(&sp, &r);
                flipped.map_err(|e| UpdateError::Signpost(Box::new(e)))?;
                log::info!(
                    "flipped the boot flags: set {set} boots next, once; set {} stays the fallback until the new boot is marked successful",
                    set.other()
                );
                Ok(set)
            }
            (InactiveState::Staged, Err(problem)) => Err(UpdateError::NotRecorded { set, problem }),
            _ => Err(UpdateError::NothingStaged { set }),
        }
    }

    /// Undoes [`Updater::apply`]: the running set boots next again (signpost's cancel-upgrade).
    /// Works from the GPT alone: the record is brought in line afterwards when it can be, and a
    /// missing, corrupt or unwritable record never blocks it.
    pub fn revert(&self, lock: &UpdateLock) -> Result<SetId, UpdateError> {
        let mut sp = self.signpost(lock)?;
        self.step(Step::CancelFlip);
        let cancelled = sp.cancel_upgrade();
        if let Ok(Some(r)) = StagedRecord::read(&self.config.state_file) {
            if r.set == sp.inactive() {
                self.step(Step::RecordReverted);
                self.record_follows_disk(&sp, &r);
            }
        }
        cancelled.map_err(|e| UpdateError::Signpost(Box::new(e)))?;
        log::info!(
            "reverted the flip: set {} (running) boots next",
            sp.active()
        );
        Ok(sp.active())
    }

    /// Makes the record's `applied` say what the GPT (as last read) says; best effort: the
    /// GPT is the truth and `status` shows any disagreement that remains.
    fn record_follows_disk(&self, sp: &Gpt, record: &StagedRecord) {
        let mut wanted = record.clone();
        wanted.applied = InactiveState::of(&sp.flags()) == InactiveState::Applied;
        let on_disk = StagedRecord::read(&self.config.state_file).ok().flatten();
        if on_disk.as_ref() != Some(&wanted) {
            let _ = wanted.write_atomic(&self.config.state_file);
        }
    }

    /// Flushes filesystems and runs the configured reboot command.
    pub fn reboot(&self) -> Result<(), UpdateError> {
        Ok(crate::reboot::reboot(&self.config.reboot_command)?)
    }

    /// The running version and set, what the inactive set holds and which set boots next, all
    /// from the GPT bits; the staged record where it agrees with them, and any disagreement (or
    /// a record that cannot be read) as such. Needs no lock and changes nothing.
    pub fn status(&self) -> Result<Status, UpdateError> {
        let sp = self.read_only_gpt()?;
        let sets = sp.status();
        let flags = sp.flags();
        let inactive = InactiveState::of(&flags);
        let set = sp.inactive();
        let path = self.config.state_file.display();
        let record = StagedRecord::read(&self.config.state_file);
        let unreadable = matches!(&record, Err(e) if e.needs_root());
        // It matters only while the GPT says something is staged or applied there.
        let record_needs_root =
            unreadable && matches!(inactive, InactiveState::Staged | InactiveState::Applied);
        let (staged, record_problem) = match record {
            Err(_) if unreadable => (None, None),
            Err(e) => (
                None,
                Some(format!(
                    "{e}; it is ignored (`updog update-image` replaces it)",
                    e = crate::advice::error_chain(&e)
                )),
            ),
            // A record of the running set is history (the update booted).
            Ok(Some(r)) if r.set != set => (None, None),
            Ok(None) => match inactive {
                InactiveState::Staged | InactiveState::Applied => (
                    None,
                    Some(format!(
                        "set {set} {}, but no staged record describes it ({path} is missing); `updog update-apply` will not boot it: run `updog update-image` again",
                        inactive.predicate()
                    )),
                ),
                _ => (None, None),
            },
            Ok(Some(mut r)) => match inactive {
                InactiveState::Staged | InactiveState::Applied => {
                    let applied = inactive == InactiveState::Applied;
                    let problem = (r.applied != applied).then(|| {
                        format!(
                            "the record {path} says {} is {}applied, but the GPT says set {set} {}",
                            r.version,
                            if r.applied { "" } else { "not " },
                            inactive.describe()
                        )
                    });
                    r.applied = applied;
                    (Some(r), problem)
                }
                other => (
                    None,
                    Some(format!(
                        "the record {path} says {} was staged on set {set}, but set {set} {} (staging did not finish, or the set changed since): run `updog update-image` again",
                        r.version,
                        other.predicate()
                    )),
                ),
            },
        };
        let update_state = UpdateState::from_disk(inactive, staged.as_ref());
        let failed_boots = self.failed_boots().failed;
        Ok(Status {
            format_version: STATUS_FORMAT_VERSION,
            running: RunningStatus {
                variant: self.os.variant_id.clone(),
                arch: self.os.arch.clone(),
                version: self.os.version_id.clone(),
                build_id: self.os.build_id.clone(),
                set: sets.active,
            },
            inactive,
            staged,
            record_problem,
            record_needs_root,
            next_boot: sp.next_boot(),
            sets,
            update_state,
            failed_boots,
            available: None,
            busy: None,
        })
    }
}

/// Why the selection took the update it took, for the log.
fn selection_reason(request: &SelectionRequest) -> String {
    if let Some(v) = &request.force_version {
        return format!("version {v} was asked for (--image)");
    }
    if let manifest::select::VersionLock::Exact(v) = &request.version_lock {
        return format!("version_lock = \"{v}\"");
    }
    let waves = if request.ignore_waves {
        "waves ignored".to_string()
    } else {
        format!("its wave is open for seed {}", request.seed)
    };
    format!(
        "the newest update for {}/{} up to its max_version; {waves}",
        request.variant, request.arch
    )
}

fn default_transport(
    config: &Config,
) -> Result<crate::transport::AnyTransport, crate::transport::HttpSetupError> {
    let transport = crate::transport::AnyTransport::new(crate::transport::HttpOptions {
        stall_timeout: config.stall_timeout,
        retries: config.retries,
        https_proxy: config.https_proxy.clone(),
        no_proxy: config.no_proxy.clone(),
        ..crate::transport::HttpOptions::default()
    })?;
    Ok(transport)
}
