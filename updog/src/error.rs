//! Why an update operation failed: [`UpdateError`], with the CLI's exit code for each. A leaf
//! of the crate's modules: the flow ([`crate::updater`]), the staging types, progress and
//! advice all name it from here.

use bootpart::{ImageKind, SetId};
use manifest::MANIFEST_TARGET;
use manifest::select::NoUpdateReason;
use semver::Version;

use crate::lock::LockError;
use crate::os_release::OsReleaseError;
use crate::plan::PlanChange;
use crate::reboot::RebootError;
use crate::status::RecordError;

/// Why an update operation failed. [`UpdateError::exit_code`] maps each to the CLI's code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// os-release could not be read.
    #[error(transparent)]
    OsRelease(#[from] OsReleaseError),
    /// The HTTP client could not be set up (bad proxy setting, TLS backend).
    #[error("setting up the transport")]
    Transport(#[source] crate::transport::HttpSetupError),
    /// Another process owns the disk (or it cannot be locked).
    #[error(transparent)]
    Lock(Box<LockError>),
    /// The repository could not be loaded or verified.
    #[error("repository")]
    Repository(#[source] Box<crate::tuf::Error>),
    /// The repository has no manifest target.
    #[error("the repository has no {MANIFEST_TARGET} target")]
    NoManifest,
    /// Reading the manifest failed (transport or verification).
    #[error("reading {MANIFEST_TARGET}")]
    ManifestRead(#[source] std::io::Error),
    /// The manifest is not valid.
    #[error("{MANIFEST_TARGET}")]
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
    #[error("migrations")]
    MigrationPlan(#[source] Box<migrations_fetch::PlanError>),
    /// Fetching the migrations failed (before the disk was touched).
    #[error("fetching migrations")]
    MigrationFetch(#[source] Box<migrations_fetch::FetchError>),
    /// The disk or its partition layout could not be used.
    #[error("disk")]
    Disk(#[source] Box<bootpart::Error>),
    /// A boot-flag transition failed.
    #[error("boot flags")]
    Signpost(#[source] Box<signpost::Error>),
    /// Staging an image failed; the inactive set is left cleared.
    #[error("staging {image} image {target:?} onto set {set}")]
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
    #[error("staging {image} onto set {set} from chunks")]
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
    #[error("opening the {image} partition of set {set}")]
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
    #[error("{image} image {target:?} cannot be used")]
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
