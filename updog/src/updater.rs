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

use bootpart::SetId;
use bootpart::io::BlockIo;
use chrono::{DateTime, Utc};
use manifest::Manifest;
use manifest::select::{NoUpdateReason, Selection, SelectionRequest};
use semver::Version;
use serde::Serialize;

use crate::config::Config;
use crate::failed::{FailedBoot, FailedBoots};
use crate::lock::{LockError, UpdateLock};
use crate::os_release::{OsRelease, OsReleaseError};
use crate::progress::{ImageKind, ProgressEvent};
use crate::reboot::RebootError;
use crate::staging::{ClearedSet, Gpt, VerifiedImage};
use crate::status::{RecordError, STATUS_FORMAT_VERSION, StagedRecord};
use crate::steps::{GptIoWrapper, Step, StepObserver};
use crate::transport::Transport;

pub use crate::plan::{PlanChange, PlannedImage, SignedTarget, UpdatePlan};
pub use crate::status::UpdateState;

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

/// How to choose an update.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Ignore wave schedules (`--now`); the configuration's `ignore_waves` also does.
    pub ignore_waves: bool,
    /// Choose exactly this version (`--image V`), up or down, overriding the version lock.
    pub image: Option<Version>,
    /// The time to judge wave eligibility at; `None` is now.
    pub now: Option<DateTime<Utc>>,
    /// Stage even though the running set has not been marked successful, when the other set
    /// is no fallback anyway (`--allow-unconfirmed-boot`): if the update then fails its one
    /// try, no set boots. Never overrides the refusal to clear the only fallback.
    pub allow_unconfirmed_boot: bool,
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
    /// Exactly what [`Updater::stage_plan`] stages: the image targets with their signed
    /// lengths and sha256, chunk indexes, migrations and the target set.
    #[serde(skip)]
    pub plan: UpdatePlan,
    /// `Available`, or `Staged`/`Ready` when this very update (version and signed images) is on
    /// the inactive set already, staged or applied: staging it again downloads nothing. Ours,
    /// shown only when not `Available`.
    #[serde(
        rename = "update_state",
        skip_serializing_if = "UpdateState::is_available"
    )]
    pub state: UpdateState,
    /// What a delta update would reuse and download, per image and in total, when the update
    /// offers chunk indexes and `delta` is on (filled in by [`Updater::check`]). Ours; the
    /// reference's fields are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_plan: Option<crate::delta::stage::UpdateEstimate>,
}

/// What [`Updater::stage_plan`] (or [`Updater::stage`]) put on the inactive set.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The manifest's update entry that was staged (the reference's update object).
    pub update: manifest::Update,
    /// The version staged.
    pub version: Version,
    /// The set it is on.
    pub set: SetId,
    /// The record written for `status` (or, when [`Staged::already_staged`], the one found).
    pub record: StagedRecord,
    /// The update was on the set already (staged, or applied and waiting for the reboot), as
    /// the staged record and the GPT agree: nothing was downloaded or written this time.
    pub already_staged: bool,
}

/// The view of this host an agent needs. Everything about the sets comes from the GPT bits;
/// the staged record is shown only where it agrees with them.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The version of this object's shape.
    pub format_version: u32,
    /// What is running.
    pub running: RunningStatus,
    /// What the GPT bits say the inactive set holds.
    pub inactive: InactiveState,
    /// The record of what is staged on the inactive set, when the GPT agrees that something
    /// is staged or applied there (`applied` as the GPT says).
    pub staged: Option<StagedRecord>,
    /// Where the record and the GPT disagree, or why the record cannot be read, and what to do.
    pub record_problem: Option<String>,
    /// The GPT says the inactive set is staged or applied, and the record that describes it
    /// exists but this process may not read it (it is root's, mode 0600): `staged` is then
    /// unknown rather than absent, and no problem is reported. Run as root to see it.
    pub record_needs_root: bool,
    /// The set the bootloader picks next (`None`: no set is bootable).
    pub next_boot: Option<SetId>,
    /// The boot flags of both sets, as signpost reports them.
    pub sets: signpost::Status,
    /// The update state in Bottlerocket's terms (`Idle`, `Available`, `Staged`, `Ready`; see
    /// [`UpdateState`]). [`Updater::status`] reads no repository, so it says `Available` only
    /// after [`Status::with_check`] was given a check that found an update.
    pub update_state: UpdateState,
    /// Releases that were flipped to and failed to boot on this host, oldest first: not taken
    /// again automatically (see [`crate::failed`]).
    pub failed_boots: Vec<FailedBoot>,
    /// The update a check found ([`Status::with_check`]); absent when no check was given or it
    /// found none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<manifest::Update>,
    /// Another process holds the disk lock: an update or a boot-flag change is in progress,
    /// and what this describes is about to change. [`Updater::status`] leaves it `None`
    /// (it reads the disk only); [`Updater::busy`] finds it, and `updog status` shows both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy: Option<Holder>,
}

/// What the inactive set holds, from its GPT bits alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InactiveState {
    /// Cleared (priority 0, no tries, not successful): nothing staged, or staging did not finish.
    Cleared,
    /// Holds a verified image, not applied (priority 0, tries left, not successful).
    Staged,
    /// Applied: the bootloader tries it next.
    Applied,
    /// Holds a set that booted before; `signpost rollback-to-inactive` can go back to it.
    Previous,
    /// None of the above (for example tried and failed): it will not boot.
    NotBootable,
    /// The disk has a single set.
    Missing,
}

impl InactiveState {
    /// Classifies the inactive set's bits.
    pub fn of(flags: &signpost::BootFlags) -> InactiveState {
        let inactive = flags.inactive();
        let Some(state) = flags.state(inactive) else {
            return InactiveState::Missing;
        };
        if state == signpost::SetState::default() {
            InactiveState::Cleared
        } else if state.priority == 0 && state.tries_left > 0 && !state.successful {
            InactiveState::Staged
        } else if !state.successful && state.tries_left > 0 && flags.next_boot() == Some(inactive) {
            InactiveState::Applied
        } else if state.can_roll_back_to() {
            InactiveState::Previous
        } else {
            InactiveState::NotBootable
        }
    }

    /// What the set is, as the predicate of a sentence about it ("set B holds a verified
    /// image, not applied").
    pub fn predicate(self) -> &'static str {
        match self {
            InactiveState::Cleared => "is cleared, nothing staged",
            InactiveState::Staged => "holds a verified image, not applied",
            InactiveState::Applied => "is applied and boots next",
            InactiveState::Previous => "holds a set that booted before",
            InactiveState::NotBootable => "is not bootable",
            InactiveState::Missing => "does not exist on this disk",
        }
    }

    /// A few words for people.
    pub fn describe(self) -> &'static str {
        match self {
            InactiveState::Cleared => "cleared, nothing staged",
            InactiveState::Staged => "holds a verified image, not applied",
            InactiveState::Applied => "applied, boots next",
            InactiveState::Previous => "holds a set that booted before",
            InactiveState::NotBootable => "not bootable",
            InactiveState::Missing => "no such set on this disk",
        }
    }
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
    pub set: SetId,
}

/// Why an update operation failed. [`UpdateError::exit_code`] maps each to the CLI's code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// os-release could not be read.
    #[error(transparent)]
    OsRelease(#[from] OsReleaseError),
    /// The HTTP client could not be set up (bad proxy setting, TLS backend).
    #[error("setting up the transport: {0}")]
    Transport(#[source] crate::transport::HttpSetupError),
    /// Another process owns the disk (or it cannot be locked).
    #[error(transparent)]
    Lock(Box<LockError>),
    /// The repository could not be loaded or verified.
    #[error("repository: {0}")]
    Repository(#[source] Box<crate::tuf::Error>),
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
    NoUpdate(Box<NoUpdateReason>),
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
    MigrationPlan(#[source] Box<migrations_fetch::PlanError>),
    /// Fetching the migrations failed (before the disk was touched).
    #[error("fetching migrations: {0}")]
    MigrationFetch(#[source] Box<migrations_fetch::FetchError>),
    /// The disk or its partition layout could not be used.
    #[error("disk: {0}")]
    Disk(#[source] Box<bootpart::Error>),
    /// A boot-flag transition failed.
    #[error("boot flags: {0}")]
    Signpost(#[source] Box<signpost::Error>),
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
        source: Box<crate::pipeline::StageError>,
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
        source: Box<crate::delta::stage::DeltaError>,
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
    /// `apply` found a set the staged record does not describe (no record, an unreadable one,
    /// or one naming another set): it flips only what was staged and recorded.
    #[error(
        "set {set} holds a verified image, but {problem}; refusing to boot it: run `updog update-image` again"
    )]
    NotRecorded {
        /// The inactive set.
        set: SetId,
        /// What is wrong with the record.
        problem: String,
    },
    /// Before marking the set valid, the GPT showed it changed under us (something that does
    /// not honour the disk lock wrote it); the set was cleared again.
    #[error(
        "set {set} changed while it was being staged (expected {expected}, found {found}); it was cleared again and nothing is staged"
    )]
    SetChanged {
        /// The inactive set.
        set: SetId,
        /// What this run left.
        expected: signpost::SetState,
        /// What the disk held.
        found: signpost::SetState,
    },
    /// A signed image decoded to nothing.
    #[error("{image} image {target:?} decodes to 0 bytes; refusing an empty image")]
    EmptyImage {
        /// Which image.
        image: ImageKind,
        /// The target name.
        target: String,
    },
    /// A signed image decoded to another size than its target's signed
    /// `custom.decompressed_length`; the set stays cleared.
    #[error(
        "{image} image {target:?} decoded to {decoded} bytes, but its target signs decompressed_length {signed}; set {set} is left cleared"
    )]
    DecodedLength {
        /// Which image.
        image: ImageKind,
        /// The target name.
        target: String,
        /// Bytes it decoded to (written and read back).
        decoded: u64,
        /// The signed size.
        signed: u64,
        /// The set it was written to.
        set: SetId,
    },
    /// An image cannot be fetched as named (checked before the disk is touched).
    #[error("{image} image {target:?} cannot be used: {source}")]
    UnusableTarget {
        /// Which image.
        image: ImageKind,
        /// The target name.
        target: String,
        /// Why.
        #[source]
        source: Box<crate::tuf::Error>,
    },
    /// The plan being staged is no longer what the repository offers (checked on fresh
    /// metadata before the disk is touched); nothing was written.
    #[error(
        "the update to {version} checked earlier changed: {change}; nothing was staged: check for updates again"
    )]
    PlanChanged {
        /// The version of the plan.
        version: Version,
        /// What changed.
        change: Box<PlanChange>,
    },
    /// The running set has not been marked successful: clearing the other set, which holds
    /// the last set known to boot, would leave no fallback should this boot fail; or, when the
    /// other set is no fallback, the staged update would be the only set that could boot,
    /// for one try.
    #[error(
        "the running set {set} has not been marked successful ({state}); {}. Mark this boot good with `signpost mark-successful-boot` (mark-successful-boot.service runs it after boot-complete.target, once the health checks pass), or reboot to try it again, then update again",
        if *.fallback {
            format!("staging would clear set {}, the only fallback if this boot fails", .set.other())
        } else {
            format!("neither set has booted successfully, so if the update staged on set {} failed its one try, no set would boot (--allow-unconfirmed-boot stages anyway)", .set.other())
        }
    )]
    BootNotConfirmed {
        /// The running set.
        set: SetId,
        /// Its boot flags.
        state: signpost::SetState,
        /// Whether the other set is a fallback that staging would clear (then nothing
        /// overrides the refusal).
        fallback: bool,
    },
    /// An image was not verified on the set being marked valid in this run (a bug, refused).
    #[error(
        "the {image} image was not verified on set {set} in this run; refusing to mark it valid"
    )]
    UnverifiedImage {
        /// Which image.
        image: ImageKind,
        /// The set.
        set: SetId,
    },
    /// Staging was cancelled; the inactive set is left cleared.
    #[error("cancelled; set {set} left cleared")]
    Cancelled {
        /// The inactive set.
        set: SetId,
    },
    /// A check was cancelled while it fetched the metadata; nothing changed.
    #[error("cancelled while checking for updates; nothing changed")]
    CheckCancelled,
    /// An apply was cancelled before the flip; the set stays staged, nothing changed.
    #[error("cancelled before the flip; set {set} stays staged and the running set boots next")]
    ApplyCancelled {
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

impl From<LockError> for UpdateError {
    fn from(e: LockError) -> Self {
        UpdateError::Lock(Box::new(e))
    }
}

// Every `Result<_, UpdateError>` of an embedder's stays small (clippy's `result_large_err`
// fires above 128 bytes; the large sources are boxed).
const _: () = assert!(std::mem::size_of::<UpdateError>() <= 64);

impl UpdateError {
    /// The `updog` exit code for this error (see [`crate::exit`]).
    pub fn exit_code(&self) -> u8 {
        if self.is_lock_held() {
            crate::exit::LOCKED
        } else if self.is_cancelled() {
            crate::exit::INTERRUPTED
        } else {
            crate::exit::FAILURE
        }
    }

    /// Whether another process holds the disk lock (updog's own or signpost's).
    pub(crate) fn is_lock_held(&self) -> bool {
        match self {
            UpdateError::Lock(e) => matches!(**e, LockError::Held { .. }),
            UpdateError::Signpost(e) => {
                matches!(**e, signpost::Error::Lock(LockError::Held { .. }))
            }
            _ => false,
        }
    }

    /// Whether the operation stopped because it was cancelled ([`UpdateError::Cancelled`],
    /// [`UpdateError::CheckCancelled`], [`UpdateError::ApplyCancelled`]).
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            UpdateError::Cancelled { .. }
                | UpdateError::CheckCancelled
                | UpdateError::ApplyCancelled { .. }
        )
    }
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
    transport: Arc<dyn Transport>,
    on_step: Option<StepObserver>,
    gpt_io: Option<GptIoWrapper>,
    /// The query parameters the default transport sends (`target` and `migrations` are added
    /// once an update is chosen, as the reference does).
    query: crate::transport::QueryParams,
    /// The host disk and the running set, once resolved (see `disk_and_active`).
    host_disk: std::sync::OnceLock<(PathBuf, SetId)>,
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
        let query = crate::transport::QueryParams::default();
        // As the reference does, tell the server which wave and version is asking.
        query.set("seed", config.seed.get().to_string());
        query.set("version", os.version_id.to_string());
        let transport =
            default_transport(&config, query.clone()).map_err(UpdateError::Transport)?;
        let (on_step, gpt_io) = crate::steps::crash_hooks_from_env();
        Ok(Updater {
            config,
            os,
            transport,
            on_step,
            gpt_io,
            query,
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

    /// Resolves the OS disk and the running set (discovered once per updater) and takes the
    /// disk's exclusive lock (see [`crate::lock`]). Stage, apply and revert take it as proof
    /// and work on that disk.
    pub fn lock(&self) -> Result<UpdateLock, UpdateError> {
        let (disk, active) = self.disk_and_active()?;
        Ok(UpdateLock::acquire(&disk, active)?)
    }

    fn load_repository(&self) -> Result<crate::tuf::Repository, UpdateError> {
        self.load_repository_over(Arc::clone(&self.transport))
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
            log::debug!("{e}");
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
            let repo = self.load_repository_over(cancel::transport(&self.transport, cancel))?;
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

    /// Checks what can be checked before the disk changes and was not settled when the plan
    /// was made: no image is empty, and each can fit its partition of the target set.
    /// Returns the images' total signed (compressed) length, for the update-wide progress.
    fn preflight(
        plan: &UpdatePlan,
        partitions: &bootpart::PartitionSet,
        set: SetId,
    ) -> Result<u64, UpdateError> {
        let mut update_total = 0u64;
        for image in plan.images() {
            let (kind, target) = (image.kind, &image.target);
            if target.length == 0 {
                return Err(UpdateError::EmptyImage {
                    image: kind,
                    target: target.name.clone(),
                });
            }
            let capacity = crate::staging::partition_of(partitions, kind).byte_len();
            update_total = update_total.saturating_add(target.length);
            if target.length > max_compressed_len(capacity) {
                return Err(UpdateError::ImageTooLarge {
                    image: kind,
                    target: target.name.clone(),
                    length: target.length,
                    capacity,
                    set,
                });
            }
        }
        Ok(update_total)
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
                        "chunk index {name:?} of the {kind} image cannot be looked up: {e}; the full image will be used"
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
        let repo = self.load_repository()?;
        let manifest = Self::load_manifest(&repo)?;
        let plan = match self.select(&repo, &manifest, opts)? {
            CheckOutcome::NoUpdate(reason) => return Err(UpdateError::NoUpdate(Box::new(reason))),
            CheckOutcome::Available(a) => a.plan,
        };
        self.stage_chosen(lock, &repo, &manifest, plan, progress, cancel)
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
        let repo = self.load_repository()?;
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
        self.stage_chosen(lock, &repo, &manifest, fresh, progress, cancel)
    }

    /// Refuses to stage while the running set has not been marked successful. If the other
    /// set is one a rollback could go to, clearing it would destroy the only fallback should
    /// this boot fail: always refused. If it is no fallback (cleared, or staged and never
    /// booted), the staged update would be the disk's only bootable set after the flip, for
    /// one try (a disk whose first boot was never marked ends with no bootable set if that try
    /// fails): refused unless `allow` (`--allow-unconfirmed-boot`).
    fn refuse_unconfirmed_boot(sp: &Gpt, allow: bool) -> Result<(), UpdateError> {
        let set = sp.active();
        let state = sp.state(set).unwrap_or_default();
        let fallback = sp.state(set.other()).unwrap_or_default().can_roll_back_to();
        if state.successful || (allow && !fallback) {
            Ok(())
        } else {
            Err(UpdateError::BootNotConfirmed {
                set,
                state,
                fallback,
            })
        }
    }

    /// Stages a plan chosen on `repo`'s metadata (see [`Updater::stage_plan`] for the order).
    fn stage_chosen(
        &self,
        lock: &UpdateLock,
        repo: &crate::tuf::Repository,
        manifest: &Manifest,
        plan: UpdatePlan,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<Staged, UpdateError> {
        // As the reference does: from here on every request names the version being fetched,
        // and, once the migrations are in, the migrations of the jump.
        self.query.set("target", plan.version().to_string());

        // One read of the GPT gives the partitions and the flags.
        let sp = self.signpost(lock)?;
        let inactive = sp.inactive();
        Self::refuse_unconfirmed_boot(&sp, plan.options().allow_unconfirmed_boot)?;
        if let Some(staged) = self.already_staged(&sp.flags(), &plan) {
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
        let layout = sp
            .layout()
            .map_err(|e| UpdateError::Signpost(Box::new(e)))?;
        let partitions = layout
            .set(inactive)
            .map_err(|e| UpdateError::Disk(Box::new(e)))?;
        progress(&ProgressEvent::Selected {
            version: plan.version().to_string(),
            set: inactive,
        });
        let update_total = Self::preflight(&plan, partitions, inactive)?;
        self.fetch_migrations(repo, &plan, progress)?;
        if cancel.is_cancelled() {
            return Err(UpdateError::Cancelled { set: inactive });
        }

        // Clear the inactive set and flush, before its first byte changes.
        progress(&ProgressEvent::ClearingInactive { set: inactive });
        self.step(Step::Clear);
        let cleared = ClearedSet::clear(sp, layout)?;
        log::info!("cleared set {inactive} before writing to it");
        // From here on, any failure leaves the set cleared and unrecorded, whatever wrote it.
        let staged = self.stage_onto(
            &cleared,
            repo,
            manifest,
            &plan,
            update_total,
            progress,
            cancel,
        );
        let staged = match staged {
            Ok(images) => self.mark_valid(cleared, images, &plan, progress),
            Err(e) => Err(cleared.abandon(e)),
        };
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

    /// Fetches the migrations of the plan into the cache: a missing link or a fetch failure
    /// stops the update before the disk changes.
    fn fetch_migrations(
        &self,
        repo: &crate::tuf::Repository,
        plan: &UpdatePlan,
        progress: &dyn Fn(&ProgressEvent),
    ) -> Result<(), UpdateError> {
        progress(&ProgressEvent::FetchingMigrations {
            count: plan.migration_plan.migrations.len(),
        });
        migrations_fetch::fetch(
            &plan.migration_plan,
            &crate::migrations::TufSource(repo),
            &migrations_fetch::CacheDirs::new(
                &self.config.migrations_dir,
                &self.config.migrations_metadata_dir,
            ),
            &migrations_fetch::FetchOptions::default(),
        )
        .map_err(|e| UpdateError::MigrationFetch(Box::new(e)))?;
        let mut migration_targets: Vec<String> = plan
            .migration_plan
            .migration_names()
            .into_iter()
            .map(ToString::to_string)
            .collect();
        migration_targets.push(MANIFEST_TARGET.to_string());
        self.query.set("migrations", migration_targets.join(","));
        Ok(())
    }

    /// Removes the record of the set just cleared, then stages root, boot and hash onto it.
    #[allow(clippy::too_many_arguments)]
    fn stage_onto(
        &self,
        cleared: &ClearedSet,
        repo: &crate::tuf::Repository,
        manifest: &Manifest,
        plan: &UpdatePlan,
        update_total: u64,
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<[VerifiedImage; 3], UpdateError> {
        // The record described the set we just cleared.
        self.step(Step::RemoveRecord);
        StagedRecord::remove(&self.config.state_file)?;
        // Compressed bytes of the images already staged, for the update-wide progress.
        let mut update_done = 0u64;
        let mut stage = |image: &PlannedImage| -> Result<VerifiedImage, UpdateError> {
            if cancel.is_cancelled() {
                return Err(UpdateError::Cancelled { set: cleared.set() });
            }
            self.step(Step::WriteImage(image.kind));
            let bytes = (update_done, update_total);
            update_done = update_done.saturating_add(image.target.length);
            // Delta first when the update offers it (small, local hook: delta/stage.rs).
            if let Some(verified) = self.stage_delta(
                repo, manifest, plan, cleared, image, bytes, progress, cancel,
            )? {
                return Ok(verified);
            }
            Self::stage_full(repo, cleared, image, bytes, progress, cancel)
        };
        let [root, boot, hash] = plan.images();
        let images = [stage(root)?, stage(boot)?, stage(hash)?];
        if cancel.is_cancelled() {
            return Err(UpdateError::Cancelled { set: cleared.set() });
        }
        Ok(images)
    }

    /// Records what was staged (a set marked valid always has a record: a full state file
    /// system fails here, with the set still cleared), then marks the set valid.
    fn mark_valid(
        &self,
        cleared: ClearedSet,
        images: [VerifiedImage; 3],
        plan: &UpdatePlan,
        progress: &dyn Fn(&ProgressEvent),
    ) -> Result<Staged, UpdateError> {
        let update = plan.update();
        let write_record = |set: SetId, images: &[VerifiedImage; 3]| {
            let record = StagedRecord {
                format_version: STATUS_FORMAT_VERSION,
                variant: update.variant.clone(),
                arch: update.arch.clone(),
                version: update.version.clone(),
                from_version: self.os.version_id.clone(),
                set,
                staged_at: Utc::now(),
                images: images
                    .iter()
                    .map(|i| (i.kind(), i.record().clone()))
                    .collect(),
                applied: false,
            };
            self.step(Step::RecordStaged);
            record.write_atomic(&self.config.state_file)?;
            Ok(record)
        };
        // The GPT is re-read right before the mark: the set must still be as this run
        // cleared it.
        let set = cleared.set();
        let record = cleared.mark_valid(images, write_record, || self.step(Step::MarkValid))?;
        log::info!("set {set} holds {} and is marked valid", update.version);
        progress(&ProgressEvent::MarkedValid { set });
        Ok(Staged {
            update: update.clone(),
            version: update.version.clone(),
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
            .or_else(|| self.disk_and_active().ok().map(|(_, a)| a))
            .map(|s| s.to_string());
        let running_version = self.os.version_id.to_string();
        let request = crate::delta::stage::EstimateRequest {
            manifest,
            update,
            running_version: &running_version,
            running_set: running_set.as_deref(),
            state_dir: self.delta_state_dir(),
        };
        crate::delta::stage::estimate_update(repo, &request)
    }

    /// Stages one image from chunks when the update offers an index for it and `delta` is on.
    /// `Ok(None)`: not offered, or it failed in a way the full image avoids (reported with a
    /// [`ProgressEvent::DeltaFallback`]); the caller streams the full image then.
    #[allow(clippy::too_many_arguments)]
    fn stage_delta(
        &self,
        repo: &crate::tuf::Repository,
        manifest: &Manifest,
        plan: &UpdatePlan,
        cleared: &ClearedSet,
        image: &PlannedImage,
        (update_done, update_total): (u64, u64),
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<Option<VerifiedImage>, UpdateError> {
        use crate::delta::AssembleProgress;
        let (kind, image_len, update) = (image.kind, image.target.length, plan.update());
        let offered = update
            .delta
            .as_ref()
            .is_some_and(|d| d.indexes.contains_key(kind.name()));
        if !self.config.delta || !offered {
            return Ok(None);
        }
        let (inactive, partition, disk) = (cleared.set(), cleared.partition(kind), cleared.disk());
        let active = inactive.other();
        let running = cleared
            .layout()
            .set(active)
            .map_err(|e| UpdateError::Disk(Box::new(e)))?;
        let seed = crate::staging::partition_of(running, kind);
        let state_dir = self.delta_state_dir();
        let (running_set, running_version) = (active.to_string(), self.os.version_id.to_string());
        let request = crate::delta::stage::DeltaImage {
            image: kind.name(),
            update,
            manifest,
            running_version: &running_version,
            running_set: &running_set,
            disk,
            image_len: image.target.decompressed_length,
            target: (partition.byte_offset(), partition.byte_len()),
            seed: (seed.byte_offset(), seed.byte_len()),
            targets_base_url: &self.config.targets_base_url,
            state_dir,
            // A chunk must arrive within the stall timeout plus its size at the slowest rate
            // accepted for metadata: a store that trickles ends in the full image.
            chunk_time_limit: Some(crate::delta::store::ChunkTimeLimit {
                base: self.config.stall_timeout,
                min_rate: self.config.metadata_min_rate,
            }),
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
                Ok(Some(cleared.verified_delta(kind, staged)))
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
                source: Box::new(source),
            }),
        }
    }

    /// Streams one image target onto its partition of the cleared set through the staging
    /// pipeline, which returns once the image was received whole, matched the plan's signed
    /// length and sha256, was flushed and read back.
    fn stage_full(
        repo: &crate::tuf::Repository,
        cleared: &ClearedSet,
        image: &PlannedImage,
        (update_done, update_total): (u64, u64),
        progress: &dyn Fn(&ProgressEvent),
        cancel: &CancelHandle,
    ) -> Result<VerifiedImage, UpdateError> {
        use crate::pipeline::{IoMode, PartitionSink, Phase, StageError, StageOptions};
        let (kind, target, set) = (image.kind, &image.target.name, cleared.set());
        let (_, reader) = repo
            .fetch_target_unverified(target)
            .map_err(|e| UpdateError::Repository(Box::new(e)))?;
        let mut sink =
            PartitionSink::open_path(cleared.disk(), cleared.partition(kind), IoMode::Auto)
                .map_err(|e| UpdateError::OpenPartition {
                    image: kind,
                    set,
                    source: std::io::Error::other(e),
                })?;
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
        let expected = image.target.info();
        let staged =
            crate::pipeline::stage_image(reader, &expected, &mut sink, &opts, &on_progress)
                .map_err(|e| match e {
                    StageError::Cancelled => UpdateError::Cancelled { set },
                    source => UpdateError::Stage {
                        image: kind,
                        target: target.clone(),
                        set,
                        source: Box::new(source),
                    },
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
        if staged.decoded_len == 0 {
            return Err(UpdateError::EmptyImage {
                image: kind,
                target: target.clone(),
            });
        }
        if let Some(signed) = image
            .target
            .decompressed_length
            .filter(|signed| *signed != staged.decoded_len)
        {
            return Err(UpdateError::DecodedLength {
                image: kind,
                target: target.clone(),
                decoded: staged.decoded_len,
                signed,
                set,
            });
        }
        progress(&ProgressEvent::ImageDone {
            image: kind,
            written: staged.decoded_len,
        });
        Ok(cleared.verified_full(kind, target, &staged))
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
            Err(e) => Err(e.to_string()),
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
                    "{e}; it is ignored (`updog update-image` replaces it)"
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
