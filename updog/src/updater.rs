//! The update flow an agent embeds: check, stage, apply, revert, status.
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
//!         let staged = updater.stage(&lock, &CheckOptions::default(), &|event| {
//!             println!("{}", updog::progress::json_line(event));
//!         }, &cancel)?;
//!         updater.apply(&lock)?;
//!         println!("{} staged on set {}, reboot to use it", staged.version, staged.set);
//!         # let _ = update;
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bootpart::SetId;
use chrono::{DateTime, Utc};
use manifest::Manifest;
use manifest::select::{NoUpdateReason, Selection, SelectionRequest};
use semver::Version;
use serde::Serialize;

use crate::config::Config;
use crate::lock::{LockError, UpdateLock};
use crate::os_release::{OsRelease, OsReleaseError};
use crate::progress::{ImageKind, ProgressEvent};
use crate::reboot::RebootError;
use crate::status::{RecordError, STATUS_FORMAT_VERSION, StagedImageRecord, StagedRecord};
use crate::transport::Transport;

/// The TUF target that holds the manifest.
pub use manifest::MANIFEST_TARGET;

/// A cancellation handle for [`Updater::stage`]: set it (from a signal handler, another thread,
/// an agent's shutdown path) and staging stops at the next buffer, leaving the inactive set
/// cleared. The pipeline's own handle, so that nothing bridges two of them.
pub use crate::pipeline::CancelHandle;

/// How to choose an update.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Ignore wave schedules (`--now`); the configuration's `ignore_waves` also does.
    pub ignore_waves: bool,
    /// Choose exactly this version (`--image V`), up or down, overriding the version lock.
    pub image: Option<Version>,
    /// The time to judge wave eligibility at; `None` is now.
    pub now: Option<DateTime<Utc>>,
}

/// The result of [`Updater::check`].
#[derive(Debug, Clone)]
pub struct Check {
    /// What is running.
    pub running: OsRelease,
    /// Whether there is something to do.
    pub outcome: CheckOutcome,
}

/// An update, or why there is none.
#[derive(Debug, Clone)]
pub enum CheckOutcome {
    /// An update this host should take now.
    Available(Box<AvailableUpdate>),
    /// Nothing to do, and why (none newer; locked; not eligible until a time).
    NoUpdate(NoUpdateReason),
}

/// An update chosen for this host.
#[derive(Debug, Clone, Serialize)]
pub struct AvailableUpdate {
    /// The manifest's update entry (serializes as the reference's update object).
    #[serde(flatten)]
    pub update: manifest::Update,
    /// The migration targets the version jump needs, in the order they run.
    pub migrations: Vec<String>,
    /// The full plan: hops, each target's signed length and sha256, total bytes.
    pub migration_plan: migrations_fetch::MigrationPlan,
}

/// What [`Updater::stage`] put on the inactive set.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The manifest's update entry that was staged (the reference's update object).
    pub update: manifest::Update,
    /// The version staged.
    pub version: Version,
    /// The set it is on.
    pub set: SetId,
    /// The record written for `status`.
    pub record: StagedRecord,
}

/// The view of this host an agent needs.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The version of this object's shape.
    pub format_version: u32,
    /// What is running.
    pub running: RunningStatus,
    /// What is staged on the other set, if anything was recorded.
    pub staged: Option<StagedRecord>,
    /// The set the bootloader picks next (`None`: no set is bootable).
    pub next_boot: Option<String>,
    /// The boot flags of both sets, as signpost reports them.
    pub sets: signpost::Status,
}

/// The running OS.
#[derive(Debug, Clone, Serialize)]
pub struct RunningStatus {
    /// Variant.
    pub variant: String,
    /// Architecture.
    pub arch: String,
    /// Version.
    pub version: Version,
    /// Build id, when known.
    pub build_id: Option<String>,
    /// The running set.
    pub set: String,
}

/// Why an update operation failed. [`UpdateError::exit_code`] maps each to the CLI's code.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// os-release could not be read.
    #[error(transparent)]
    OsRelease(#[from] OsReleaseError),
    /// The HTTP client could not be set up (bad proxy setting, TLS backend).
    #[error("setting up the transport: {0}")]
    Transport(#[source] crate::transport::HttpSetupError),
    /// Another update holds the lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The repository could not be loaded or verified.
    #[error("repository: {0}")]
    Repository(#[source] crate::tuf::Error),
    /// The repository has no manifest target.
    #[error("the repository has no {MANIFEST_TARGET} target")]
    NoManifest,
    /// Reading the manifest failed (transport or verification).
    #[error("reading {MANIFEST_TARGET}: {0}")]
    ManifestRead(#[source] std::io::Error),
    /// The manifest is not valid.
    #[error("{MANIFEST_TARGET}: {0}")]
    Manifest(#[source] Box<manifest::Error>),
    /// Nothing to stage; the reason says why (`updog update` reports it and exits 0, as the
    /// reference does; `check-update` exits 1).
    #[error("no update: {0}")]
    NoUpdate(NoUpdateReason),
    /// An image named by the manifest is not a signed target.
    #[error("{image} image {target:?} is not a target in the signed repository")]
    MissingTarget {
        /// Which image.
        image: ImageKind,
        /// The target name.
        target: String,
    },
    /// A signed image cannot fit its partition (checked before the disk is touched).
    #[error(
        "{image} image {target:?} is {length} bytes compressed, it cannot fit the {capacity}-byte {image} partition of set {set}"
    )]
    ImageTooLarge {
        /// Which image.
        image: ImageKind,
        /// The target name.
        target: String,
        /// Signed compressed length.
        length: u64,
        /// Partition size.
        capacity: u64,
        /// The set.
        set: SetId,
    },
    /// The migrations the version jump needs cannot be planned (missing link, unsigned
    /// target); nothing was written.
    #[error("migrations: {0}")]
    MigrationPlan(#[source] migrations_fetch::PlanError),
    /// Fetching the migrations failed (before the disk was touched).
    #[error("fetching migrations: {0}")]
    MigrationFetch(#[source] migrations_fetch::FetchError),
    /// The disk or its partition layout could not be used.
    #[error("disk: {0}")]
    Disk(#[source] bootpart::Error),
    /// A boot-flag transition failed.
    #[error("boot flags: {0}")]
    Signpost(#[source] signpost::Error),
    /// Staging an image failed; the inactive set is left cleared.
    #[error("staging {image} image {target:?} onto set {set}: {source}")]
    Stage {
        /// Which image.
        image: ImageKind,
        /// The target name.
        target: String,
        /// The set.
        set: SetId,
        /// What went wrong.
        #[source]
        source: crate::pipeline::StageError,
    },
    /// Staging an image from chunks failed in a way the full image would not avoid (writing
    /// the inactive partition); the inactive set is left cleared.
    #[error("staging {image} onto set {set} from chunks: {source}")]
    Delta {
        /// Which image.
        image: ImageKind,
        /// The set.
        set: SetId,
        /// What went wrong.
        #[source]
        source: crate::delta::stage::DeltaError,
    },
    /// A partition of the inactive set could not be opened for writing.
    #[error("opening the {image} partition of set {set}: {source}")]
    OpenPartition {
        /// Which image.
        image: ImageKind,
        /// The set.
        set: SetId,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A signed image target carries no sha256 (the pipeline verifies sha256).
    #[error("{image} image {target:?} has no signed sha256")]
    NoSha256 {
        /// Which image.
        image: ImageKind,
        /// The target name.
        target: String,
    },
    /// `apply` found no verified image on the inactive set.
    #[error("nothing is staged on set {set}; run update-image first")]
    NothingStaged {
        /// The inactive set.
        set: SetId,
    },
    /// Staging was cancelled; the inactive set is left cleared.
    #[error("cancelled; set {set} left cleared")]
    Cancelled {
        /// The inactive set.
        set: SetId,
    },
    /// The staged-state record could not be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The reboot command failed.
    #[error(transparent)]
    Reboot(#[from] RebootError),
}

impl UpdateError {
    /// The `updog` exit code for this error (see [`crate::exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            UpdateError::Lock(LockError::Held { .. }) => crate::exit::LOCKED,
            UpdateError::Cancelled { .. } => crate::exit::INTERRUPTED,
            _ => crate::exit::FAILURE,
        }
    }
}

/// The updater: configuration, identity and transport, with the operations of `updog`.
pub struct Updater {
    config: Config,
    os: OsRelease,
    transport: Arc<dyn Transport>,
    /// The query parameters the default transport sends (`target` and `migrations` are added
    /// once an update is chosen, as the reference does).
    query: crate::transport::QueryParams,
}

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
        let query = crate::transport::QueryParams::default();
        // As the reference does, tell the server which wave and version is asking.
        query.set("seed", config.seed.get().to_string());
        query.set("version", os.version_id.to_string());
        let transport =
            default_transport(&config, query.clone()).map_err(UpdateError::Transport)?;
        Ok(Updater {
            config,
            os,
            transport,
            query,
        })
    }

    /// Replaces the transport (for example with one that counts or throttles requests).
    pub fn with_transport(mut self, transport: Arc<dyn Transport>) -> Updater {
        self.transport = transport;
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What is running.
    pub fn os_release(&self) -> &OsRelease {
        &self.os
    }

    /// Takes the update lock without waiting. Mutating operations take it as proof.
    pub fn lock(&self) -> Result<UpdateLock, UpdateError> {
        Ok(UpdateLock::acquire(&self.config.lock_file)?)
    }

    fn load_repository(&self) -> Result<crate::tuf::Repository, UpdateError> {
        let mut opts = crate::tuf::RepositoryOptions::new(
            self.config.metadata_base_url.clone(),
            self.config.targets_base_url.clone(),
            self.config.metadata_dir.clone(),
        );
        opts.trusted_root.clone_from(&self.config.trusted_root);
        opts.limits.metadata_min_rate = self.config.metadata_min_rate;
        let repo = crate::tuf::Repository::load(opts, Arc::clone(&self.transport))
            .map_err(UpdateError::Repository)?;
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
            .map_err(UpdateError::Repository)?
            .is_none()
        {
            return Err(UpdateError::NoManifest);
        }
        let mut reader = repo
            .read_target(MANIFEST_TARGET)
            .map_err(UpdateError::Repository)?;
        let mut bytes = Vec::new();
        (&mut reader)
            // One byte past the cap, so that a larger manifest is refused as too large.
            .take(manifest::MAX_MANIFEST_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(UpdateError::ManifestRead)?;
        reader.finish().map_err(UpdateError::Repository)?;
        Manifest::from_slice(&bytes).map_err(|e| UpdateError::Manifest(Box::new(e)))
    }

    fn request(&self, opts: &CheckOptions) -> SelectionRequest {
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
        }
    }

    fn select(
        &self,
        repo: &crate::tuf::Repository,
        manifest: &Manifest,
        opts: &CheckOptions,
    ) -> Result<CheckOutcome, UpdateError> {
        let request = self.request(opts);
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
                let migration_plan = migrations_fetch::MigrationPlan::new(
                    manifest,
                    &self.os.version_id,
                    &update.version,
                    repo,
                )
                .map_err(UpdateError::MigrationPlan)?;
                Ok(CheckOutcome::Available(Box::new(AvailableUpdate {
                    update: update.clone(),
                    migrations: migration_plan
                        .migration_names()
                        .into_iter()
                        .map(ToString::to_string)
                        .collect(),
                    migration_plan,
                })))
            }
        }
    }

    /// Refreshes the metadata and says whether this host has an update to take, or why not.
    pub fn check(&self, opts: &CheckOptions) -> Result<Check, UpdateError> {
        let repo = self.load_repository()?;
        let manifest = Self::load_manifest(&repo)?;
        Ok(Check {
            running: self.os.clone(),
            outcome: self.select(&repo, &manifest, opts)?,
        })
    }

    /// The updates for this variant and architecture that this host may take now, newest
    /// first (`whats --all`): those whose wave is open for this host, unless waves are ignored
    /// (`opts.ignore_waves` or the configuration's `ignore_waves`).
    pub fn list_updates(&self, opts: &CheckOptions) -> Result<Vec<manifest::Update>, UpdateError> {
        let repo = self.load_repository()?;
        let manifest = Self::load_manifest(&repo)?;
        let updates = manifest::select::ready_updates(&manifest, &self.request(opts))
            .into_iter()
            .cloned()
            .collect();
        Ok(updates)
    }

    /// The disk holding the partition sets and the running set: from the configuration, or
    /// discovered from the device of `/` (through device-mapper to the partition and its disk).
    fn disk_and_active(&self) -> Result<(PathBuf, SetId), UpdateError> {
        match (&self.config.disk, self.config.active_set) {
            (Some(disk), Some(active)) => Ok((disk.clone(), active)),
            (Some(disk), None) => {
                let opened = bootpart::Disk::open(disk).map_err(UpdateError::Disk)?;
                let active =
                    bootpart::running::find_running_set(&opened).map_err(UpdateError::Disk)?;
                Ok((disk.clone(), active))
            }
            (None, explicit) => {
                let (disk, found) =
                    bootpart::running::discover_root_disk().map_err(UpdateError::Disk)?;
                Ok((disk, explicit.unwrap_or(found)))
            }
        }
    }

    /// Runs one boot-flag operation on a fresh read of the GPT, holding signpost's lock so the
    /// `signpost` CLI cannot interleave a change.
    fn with_signpost<T>(
        &self,
        op: impl FnOnce(&mut signpost::Signpost) -> Result<T, signpost::Error>,
    ) -> Result<T, UpdateError> {
        let (disk, active) = self.disk_and_active()?;
        let _lock = signpost::LockFile::acquire(
            &self.config.signpost_lock_file,
            std::time::Duration::from_secs(30),
        )
        .map_err(UpdateError::Signpost)?;
        let mut sp =
            signpost::Signpost::open(&disk, Some(active)).map_err(UpdateError::Signpost)?;
        op(&mut sp).map_err(UpdateError::Signpost)
    }

    /// Stages the chosen update on the inactive set, in the order the invariants require:
    /// verify metadata; select; fetch migrations; check each image against its partition; clear
    /// the inactive set (flushed); stream root, boot, hash onto it, each verified, flushed and
    /// read back; then mark the set valid and record what was staged. Any failure or a
    /// cancellation leaves the inactive set cleared and the active set untouched.
    pub fn stage(
        &self,
        _lock: &UpdateLock,
        opts: &CheckOptions,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<Staged, UpdateError> {
        progress(&ProgressEvent::LoadingMetadata);
        let repo = self.load_repository()?;
        let manifest = Self::load_manifest(&repo)?;
        let available = match self.select(&repo, &manifest, opts)? {
            CheckOutcome::NoUpdate(reason) => return Err(UpdateError::NoUpdate(reason)),
            CheckOutcome::Available(a) => a,
        };
        let update = &available.update;
        // As the reference does: from here on every request names the version being fetched,
        // and, once the migrations are in, the migrations of the jump.
        self.query.set("target", update.version.to_string());

        let (disk_path, active) = self.disk_and_active()?;
        let disk = bootpart::Disk::open(&disk_path).map_err(UpdateError::Disk)?;
        let inactive = active.other();
        let set = disk.set(inactive).map_err(UpdateError::Disk)?.clone();
        progress(&ProgressEvent::Selected {
            version: update.version.to_string(),
            set: inactive.to_string(),
        });

        // Migrations first: a missing link or a fetch failure must stop us before the disk
        // changes.
        progress(&ProgressEvent::FetchingMigrations {
            count: available.migration_plan.migrations.len(),
        });
        migrations_fetch::fetch(
            &available.migration_plan,
            &repo,
            &migrations_fetch::CacheDirs::new(
                &self.config.migrations_dir,
                &self.config.migrations_metadata_dir,
            ),
            &migrations_fetch::FetchOptions::default(),
        )
        .map_err(UpdateError::MigrationFetch)?;
        let mut migration_targets = available.migrations.clone();
        migration_targets.push(MANIFEST_TARGET.to_string());
        self.query.set("migrations", migration_targets.join(","));
        if cancel.is_cancelled() {
            return Err(UpdateError::Cancelled { set: inactive });
        }

        // Preflight: every image is a signed target and can fit its partition.
        let images = [
            (ImageKind::Root, &update.images.root, &set.root),
            (ImageKind::Boot, &update.images.boot, &set.boot),
            (ImageKind::Hash, &update.images.hash, &set.hash),
        ];
        let mut update_total = 0u64;
        for (kind, target, partition) in images {
            let desc = repo
                .target(target)
                .map_err(UpdateError::Repository)?
                .ok_or_else(|| UpdateError::MissingTarget {
                    image: kind,
                    target: target.clone(),
                })?;
            let capacity = partition.byte_len();
            update_total = update_total.saturating_add(desc.length);
            if desc.length > max_compressed_len(capacity) {
                return Err(UpdateError::ImageTooLarge {
                    image: kind,
                    target: target.clone(),
                    length: desc.length,
                    capacity,
                    set: inactive,
                });
            }
        }

        // Clear the inactive set and flush, before its first byte changes.
        progress(&ProgressEvent::ClearingInactive {
            set: inactive.to_string(),
        });
        self.with_signpost(signpost::Signpost::clear_inactive)?;
        log::info!("cleared set {inactive} before writing to it");
        // The record described the set we just cleared.
        StagedRecord::remove(&self.config.state_file)?;

        let mut records = BTreeMap::new();
        // Compressed bytes of the images already staged, for the update-wide progress.
        let mut update_done = 0u64;
        for (kind, target, partition) in images {
            if cancel.is_cancelled() {
                return Err(UpdateError::Cancelled { set: inactive });
            }
            // Delta first when the update offers it (small, local hook: delta/stage.rs).
            let image_len = repo.target(target).ok().flatten().map_or(0, |d| d.length);
            if let Some(record) = self.stage_delta(
                &repo,
                &manifest,
                update,
                &disk,
                (active, inactive),
                (kind, partition),
                (update_done, update_total, image_len),
                progress,
                cancel,
            )? {
                records.insert(kind.name().to_string(), record);
                update_done = update_done.saturating_add(image_len);
                continue;
            }
            let update_bytes = (update_done, update_total);
            let staged = Self::stage_one(
                &repo,
                &disk_path,
                partition,
                kind,
                target,
                update_bytes,
                progress,
                cancel,
            )
            .map_err(|e| match e {
                StageOneError::Cancelled => UpdateError::Cancelled { set: inactive },
                StageOneError::Repository(e) => UpdateError::Repository(e),
                StageOneError::Open(source) => UpdateError::OpenPartition {
                    image: kind,
                    set: inactive,
                    source,
                },
                StageOneError::NoSha256 => UpdateError::NoSha256 {
                    image: kind,
                    target: target.clone(),
                },
                StageOneError::Stage(source) => UpdateError::Stage {
                    image: kind,
                    target: target.clone(),
                    set: inactive,
                    source,
                },
            })?;
            update_done = update_done.saturating_add(staged.compressed_len);
            progress(&ProgressEvent::ImageDone {
                image: kind,
                written: staged.decoded_len,
            });
            records.insert(
                kind.name().to_string(),
                StagedImageRecord {
                    target: target.clone(),
                    sha256: hex::encode(staged.sha256),
                    written: staged.decoded_len,
                },
            );
        }
        if cancel.is_cancelled() {
            return Err(UpdateError::Cancelled { set: inactive });
        }

        self.with_signpost(signpost::Signpost::mark_inactive_valid)?;
        log::info!(
            "set {inactive} holds {} and is marked valid",
            update.version
        );
        progress(&ProgressEvent::MarkedValid {
            set: inactive.to_string(),
        });
        let record = StagedRecord {
            format_version: STATUS_FORMAT_VERSION,
            variant: update.variant.clone(),
            arch: update.arch.clone(),
            version: update.version.clone(),
            from_version: self.os.version_id.clone(),
            set: inactive.to_string(),
            staged_at: Utc::now(),
            images: records,
            applied: false,
        };
        if let Err(e) = record.write_atomic(&self.config.state_file) {
            // A full or failing state file system: do not leave a bootable set that nothing
            // records. Clear it again (best effort; the record error is the one to report).
            let _ = self.with_signpost(signpost::Signpost::clear_inactive);
            return Err(e.into());
        }
        Ok(Staged {
            update: update.clone(),
            version: update.version.clone(),
            set: inactive,
            record,
        })
    }

    /// Stages one image from chunks when the update offers an index for it and `delta` is on.
    /// `Ok(None)`: not offered, or it failed in a way the full image avoids (reported with a
    /// [`ProgressEvent::DeltaFallback`]); the caller streams the full image then.
    #[allow(clippy::too_many_arguments)]
    fn stage_delta(
        &self,
        repo: &crate::tuf::Repository,
        manifest: &Manifest,
        update: &manifest::Update,
        disk: &bootpart::Disk,
        (active, inactive): (SetId, SetId),
        (kind, partition): (ImageKind, &bootpart::Partition),
        (update_done, update_total, image_len): (u64, u64, u64),
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<Option<StagedImageRecord>, UpdateError> {
        use crate::delta::AssembleProgress;
        let offered = update
            .delta
            .as_ref()
            .is_some_and(|d| d.indexes.contains_key(kind.name()));
        if !self.config.delta || !offered {
            return Ok(None);
        }
        let running = disk.set(active).map_err(UpdateError::Disk)?;
        let seed = match kind {
            ImageKind::Root => &running.root,
            ImageKind::Boot => &running.boot,
            ImageKind::Hash => &running.hash,
        };
        let state_dir = self
            .config
            .state_file
            .parent()
            .unwrap_or(std::path::Path::new("/var/lib/updog"));
        let (running_set, running_version) = (active.to_string(), self.os.version_id.to_string());
        let request = crate::delta::stage::DeltaImage {
            image: kind.name(),
            update,
            manifest,
            running_version: &running_version,
            running_set: &running_set,
            disk: disk.path(),
            target: (partition.byte_offset(), partition.byte_len()),
            seed: (seed.byte_offset(), seed.byte_len()),
            targets_base_url: &self.config.targets_base_url,
            state_dir,
        };
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
                update_done: update_done
                    + (u128::from(image_len) * u128::from(done) / u128::from(total.max(1))) as u64,
                update_total,
            }),
            AssembleProgress::Verifying { .. } if !std::mem::replace(&mut verifying, true) => {
                progress(&ProgressEvent::Verifying { image: kind });
            }
            _ => {}
        };
        match request.stage(
            repo,
            Arc::clone(&self.transport),
            cancel.flag(),
            &mut on_progress,
        ) {
            Ok(staged) => {
                progress(&ProgressEvent::ImageDone {
                    image: kind,
                    written: staged.written,
                });
                Ok(Some(StagedImageRecord {
                    target: staged.index_target,
                    sha256: staged.index_sha256,
                    written: staged.written,
                }))
            }
            Err(crate::delta::stage::DeltaError::Assemble(
                crate::delta::AssembleError::Cancelled,
            )) => Err(UpdateError::Cancelled { set: inactive }),
            Err(e) if e.should_fall_back() => {
                progress(&ProgressEvent::DeltaFallback {
                    image: kind,
                    reason: e.to_string(),
                });
                Ok(None)
            }
            Err(source) => Err(UpdateError::Delta {
                image: kind,
                set: inactive,
                source,
            }),
        }
    }

    /// Streams one image target onto its partition through the staging pipeline.
    #[allow(clippy::too_many_arguments)]
    fn stage_one(
        repo: &crate::tuf::Repository,
        disk_path: &std::path::Path,
        partition: &bootpart::Partition,
        kind: ImageKind,
        target: &str,
        (update_done, update_total): (u64, u64),
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<crate::pipeline::StagedImage, StageOneError> {
        use crate::pipeline::{IoMode, PartitionSink, Phase, StageOptions};
        let (desc, reader) = repo
            .fetch_target_unverified(target)
            .map_err(StageOneError::Repository)?;
        let expected = desc.info().ok_or(StageOneError::NoSha256)?;
        let mut sink = PartitionSink::open_path(disk_path, partition, IoMode::Auto)
            .map_err(|e| StageOneError::Open(std::io::Error::other(e)))?;
        let opts = StageOptions {
            cancel: cancel.clone(),
            ..StageOptions::default()
        };
        let verifying = std::cell::Cell::new(false);
        let on_progress = |p: crate::pipeline::Progress| match p.phase {
            Phase::Writing => progress(&ProgressEvent::Image {
                image: kind,
                target: target.to_string(),
                done: p.done,
                total: p.total,
                update_done: update_done.saturating_add(p.done),
                update_total,
            }),
            Phase::Syncing | Phase::Verifying => {
                if !verifying.replace(true) {
                    progress(&ProgressEvent::Verifying { image: kind });
                }
            }
        };
        let started = std::time::Instant::now();
        let staged =
            crate::pipeline::stage_image(reader, &expected, &mut sink, &opts, &on_progress)
                .map_err(|e| match e {
                    crate::pipeline::StageError::Cancelled => StageOneError::Cancelled,
                    other => StageOneError::Stage(other),
                })?;
        let secs = started.elapsed().as_secs_f64();
        log::info!(
            "{kind}: {target}: {} bytes received and verified, {} bytes written and read back in {secs:.1} s ({:.1} MiB/s received){}",
            staged.compressed_len,
            staged.decoded_len,
            staged.compressed_len as f64 / secs.max(1e-6) / (1024.0 * 1024.0),
            if staged.direct_io {
                ""
            } else {
                ", through the page cache"
            }
        );
        Ok(staged)
    }

    /// Flips the boot flags so the staged set is tried once at the next boot
    /// (signpost's upgrade-to-inactive). Fails when nothing valid is staged.
    pub fn apply(&self, _lock: &UpdateLock) -> Result<SetId, UpdateError> {
        self.flip_recorded(true, |sp| {
            sp.upgrade_to_inactive()?;
            Ok(sp.inactive())
        })
        .inspect(|set| {
            log::info!(
                "flipped the boot flags: set {set} boots next, once; set {} stays the fallback until the new boot is marked successful",
                set.other()
            );
        })
        .map_err(|e| match e {
            UpdateError::Signpost(signpost::Error::InactiveNotValid { set, .. }) => {
                UpdateError::NothingStaged { set }
            }
            other => other,
        })
    }

    /// Undoes [`Updater::apply`]: the running set boots next again (signpost's cancel-upgrade).
    pub fn revert(&self, _lock: &UpdateLock) -> Result<SetId, UpdateError> {
        self.flip_recorded(false, |sp| {
            sp.cancel_upgrade()?;
            Ok(sp.active())
        })
        .inspect(|set| log::info!("reverted the flip: set {set} (running) boots next"))
    }

    /// Changes the boot flags with `flip`, keeping the staged record's `applied` in step. The
    /// record is written first: if it cannot be written (a full disk), nothing has changed yet,
    /// and a failure is never reported after the flags already changed. When `flip` fails, the
    /// record is written back as it was (best effort: the flags did not change).
    fn flip_recorded(
        &self,
        applied: bool,
        flip: impl FnOnce(&mut signpost::Signpost) -> Result<SetId, signpost::Error>,
    ) -> Result<SetId, UpdateError> {
        let record = StagedRecord::read(&self.config.state_file)?;
        if let Some(record) = &record {
            let mut changed = record.clone();
            changed.applied = applied;
            changed.write_atomic(&self.config.state_file)?;
        }
        self.with_signpost(flip).inspect_err(|_| {
            if let Some(record) = &record {
                let _ = record.write_atomic(&self.config.state_file);
            }
        })
    }

    /// Flushes filesystems and runs the configured reboot command.
    pub fn reboot(&self) -> Result<(), UpdateError> {
        Ok(crate::reboot::reboot(&self.config.reboot_command)?)
    }

    /// The running version and set, what is staged, and which set boots next.
    pub fn status(&self) -> Result<Status, UpdateError> {
        let (disk, active) = self.disk_and_active()?;
        let sp = signpost::Signpost::open(&disk, Some(active)).map_err(UpdateError::Signpost)?;
        let sets = sp.status();
        let staged = StagedRecord::read(&self.config.state_file)?
            .filter(|r| r.set == sp.inactive().to_string());
        Ok(Status {
            format_version: STATUS_FORMAT_VERSION,
            running: RunningStatus {
                variant: self.os.variant_id.clone(),
                arch: self.os.arch.clone(),
                version: self.os.version_id.clone(),
                build_id: self.os.build_id.clone(),
                set: sets.active.to_string(),
            },
            staged,
            next_boot: sp.next_boot().map(|s| s.to_string()),
            sets,
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

/// Why one image could not be staged (mapped to [`UpdateError`] with its context).
enum StageOneError {
    Cancelled,
    Repository(crate::tuf::Error),
    Open(std::io::Error),
    NoSha256,
    Stage(crate::pipeline::StageError),
}

/// The largest compressed image that can possibly decode into `capacity` bytes: lz4 never
/// expands data by more than 1/255 plus small per-block and per-frame overheads.
fn max_compressed_len(capacity: u64) -> u64 {
    const FRAME_OVERHEAD: u64 = 64;
    const PER_BLOCK: u64 = 8;
    const MIN_BLOCK: u64 = 64 * 1024;
    capacity
        .saturating_add(capacity / 255)
        .saturating_add((capacity / MIN_BLOCK + 1).saturating_mul(PER_BLOCK))
        .saturating_add(FRAME_OVERHEAD)
}

fn default_transport(
    config: &Config,
    query: crate::transport::QueryParams,
) -> Result<Arc<dyn Transport>, crate::transport::HttpSetupError> {
    let transport = crate::transport::AnyTransport::new(crate::transport::HttpOptions {
        stall_timeout: config.stall_timeout,
        retries: config.retries,
        https_proxy: config.https_proxy.clone(),
        no_proxy: config.no_proxy.clone(),
        shared_query: query,
        ..crate::transport::HttpOptions::default()
    })?;
    Ok(Arc::new(transport))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_bound_is_above_capacity_but_not_by_much() {
        assert!(max_compressed_len(0) >= 64);
        let cap = 100 * 1024 * 1024;
        let bound = max_compressed_len(cap);
        assert!(bound > cap && bound < cap + cap / 100);
        assert_eq!(max_compressed_len(u64::MAX), u64::MAX);
    }
}
