//! What is staged where: the record written after staging (read by `updog status`), and the
//! status object an agent reads.
//!
//! The record lives next to the metadata directory (`state_file`, default
//! `/var/lib/updog/state.json`) and is written atomically (temporary file, fsync, rename, fsync
//! of the directory), so a power cut leaves the old record or the new one. It is never
//! truncated in place, never read through a symlink (`O_NOFOLLOW`), and only written into a
//! directory that no other user can write to.
//!
//! The record is an annotation: the GPT bits are the truth. [`crate::updater::Updater::status`]
//! derives what is staged and applied from the bits and shows the record only where it agrees;
//! a record that cannot be read never blocks `status` or `update-revert`.
//!
//! ```
//! use updog::status::StagedRecord;
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("state.json");
//! let record = StagedRecord {
//!     format_version: 1,
//!     variant: "metal-dev".into(),
//!     arch: "x86_64".into(),
//!     version: semver::Version::new(1, 1, 0),
//!     from_version: semver::Version::new(1, 0, 0),
//!     set: bootpart::SetId::B,
//!     staged_at: chrono::Utc::now(),
//!     images: Default::default(),
//!     applied: false,
//! };
//! record.write_atomic(&path).unwrap();
//! assert_eq!(StagedRecord::read(&path).unwrap(), Some(record));
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bootpart::{ImageKind, SetId};
use chrono::{DateTime, Utc};
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::failed::FailedBoot;
use crate::plan::{Check, CheckOutcome};
use crate::updater::Holder;

/// The version of the status and staged-record JSON shapes.
pub const STATUS_FORMAT_VERSION: u32 = 1;

/// What was staged on the inactive set, recorded once every image is verified on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRecord {
    /// The version of this record's shape.
    pub format_version: u32,
    /// The variant staged.
    pub variant: String,
    /// The architecture staged.
    pub arch: String,
    /// The version staged.
    pub version: Version,
    /// The version that was running when it was staged.
    pub from_version: Version,
    /// The set it was written to (`A` or `B`; anything else is refused when read).
    pub set: SetId,
    /// When staging finished.
    pub staged_at: DateTime<Utc>,
    /// Each image's TUF target name and sha256 (hex), keyed by `root`, `boot`, `hash` (any
    /// other key is refused when read).
    pub images: BTreeMap<ImageKind, StagedImageRecord>,
    /// Whether the boot flags were flipped to it (`update-apply`).
    pub applied: bool,
}

/// One staged image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedImageRecord {
    /// Its TUF target name.
    pub target: String,
    /// The signed sha256 of the compressed target, hex.
    pub sha256: String,
    /// Bytes written to the partition.
    pub written: u64,
}

/// Why the staged record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Reading or writing the file failed.
    #[error("staged-state record {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a record.
    #[error("staged-state record {path} is not valid")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The record has a format version this updog does not know.
    #[error(
        "staged-state record {path} has format_version {found}; this updog reads version {STATUS_FORMAT_VERSION}"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// The record's directory can be written by another user (or is not a directory we own), so
    /// someone else could plant or replace the record.
    #[error(
        "staged-state directory {dir} is writable by other users or not owned by us; refusing to use it"
    )]
    UnsafeDirectory {
        /// The directory.
        dir: PathBuf,
    },
}

impl RecordError {
    /// Whether the record exists but this process may not read it: it is root's (mode 0600),
    /// so what is staged is unknown to this user rather than absent or damaged.
    pub fn needs_root(&self) -> bool {
        matches!(self, RecordError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

/// The update state in Bottlerocket's terms: the states of thar-be-updates' `UpdateState`
/// (what `apiclient update check|apply` report), serialized as it spells them (`"Idle"`, ...).
///
/// | state | meaning |
/// |---|---|
/// | `Idle` | nothing staged, and no check given (or it found no update) |
/// | `Available` | nothing staged, and the check given found an update |
/// | `Staged` | the inactive set holds a verified update, recorded, not applied |
/// | `Ready` | the boot flags point at the inactive set: reboot to run the update |
///
/// The GPT bits decide: `Ready` whenever the bootloader tries the inactive set next (record or
/// not: that is what the next boot does), `Staged` only when the record describes the staged
/// set too (without it `update-apply` refuses the set), otherwise `Idle` or `Available`.
/// [`crate::updater::Updater::status`] reads no repository, so it reports `Available` only
/// through [`crate::updater::Status::with_check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum UpdateState {
    /// Nothing to do that is known.
    Idle,
    /// A check found an update; nothing is staged.
    Available,
    /// An update is staged on the inactive set and can be applied.
    Staged,
    /// An update is applied: the next boot tries it.
    Ready,
}

impl UpdateState {
    /// The state the disk shows: the inactive set's GPT state and the staged record that
    /// [`crate::updater::Updater::status`] found to agree with it.
    pub fn from_disk(inactive: InactiveState, staged: Option<&StagedRecord>) -> UpdateState {
        match inactive {
            InactiveState::Applied => UpdateState::Ready,
            InactiveState::Staged if staged.is_some() => UpdateState::Staged,
            _ => UpdateState::Idle,
        }
    }

    /// This state once `check` is known: `Idle` becomes `Available` when the check found an
    /// update; a staged or applied update stays what it is (as thar-be-updates keeps its state
    /// on a refresh past `Available`).
    pub fn with_check(self, check: &Check) -> UpdateState {
        match (self, &check.outcome) {
            (UpdateState::Idle | UpdateState::Available, CheckOutcome::Available(_)) => {
                UpdateState::Available
            }
            (UpdateState::Available, CheckOutcome::NoUpdate(_)) => UpdateState::Idle,
            (state, _) => state,
        }
    }

    /// Whether this is [`UpdateState::Available`].
    pub fn is_available(&self) -> bool {
        *self == UpdateState::Available
    }

    /// The reference's spelling.
    pub fn name(self) -> &'static str {
        match self {
            UpdateState::Idle => "Idle",
            UpdateState::Available => "Available",
            UpdateState::Staged => "Staged",
            UpdateState::Ready => "Ready",
        }
    }
}

impl std::fmt::Display for UpdateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`crate::updater::Updater::stage_plan`] (or [`crate::updater::Updater::stage`]) put on the inactive set.
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
    /// [`UpdateState`]). [`crate::updater::Updater::status`] reads no repository, so it says `Available` only
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
    /// and what this describes is about to change. [`crate::updater::Updater::status`] leaves it `None`
    /// (it reads the disk only); [`crate::updater::Updater::busy`] finds it, and `updog status` shows both.
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

impl Status {
    /// This status with what `check` found: the [`UpdateState`] becomes `Available` when
    /// nothing is staged and the check found an update, and `available` names it.
    ///
    /// ```no_run
    /// # let updater: updog::updater::Updater = unimplemented!();
    /// let check = updater.check(&Default::default())?;
    /// let status = updater.status()?.with_check(&check);
    /// println!("{}", status.update_state); // Idle, Available, Staged or Ready
    /// # Ok::<(), updog::updater::UpdateError>(())
    /// ```
    pub fn with_check(mut self, check: &Check) -> Status {
        self.update_state = self.update_state.with_check(check);
        self.available = match &check.outcome {
            CheckOutcome::Available(a) => Some(a.update.clone()),
            CheckOutcome::NoUpdate(_) => None,
        };
        self
    }
}

/// The largest record read.
const MAX_RECORD_BYTES: u64 = 1024 * 1024;

impl StagedRecord {
    /// Reads the record; `Ok(None)` when there is none. A symlink in its place, an unknown
    /// `format_version` or a set other than `A`/`B` is an error naming the file.
    pub fn read(path: &Path) -> Result<Option<StagedRecord>, RecordError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let io_err = |source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        let parse_err = |source| RecordError::Parse {
            path: path.to_path_buf(),
            source,
        };
        // The version first: a future shape must be refused as such, not as a parse error.
        #[derive(Deserialize)]
        struct Versioned {
            format_version: u64,
        }
        let versioned: Versioned = serde_json::from_slice(&bytes).map_err(parse_err)?;
        if versioned.format_version != u64::from(STATUS_FORMAT_VERSION) {
            return Err(RecordError::UnknownFormat {
                path: path.to_path_buf(),
                found: versioned.format_version,
            });
        }
        serde_json::from_slice(&bytes).map(Some).map_err(parse_err)
    }

    /// Writes the record atomically: temporary file in the same directory, fsync, rename,
    /// fsync of the directory. The directory is created (mode 0755) when missing and must not be
    /// writable by other users.
    pub fn write_atomic(&self, path: &Path) -> Result<(), RecordError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| RecordError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        check_private_dir(path)?;
        write_atomic(path, &bytes).map_err(|source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Removes the record (after the set it describes was cleared); absent is fine.
    pub fn remove(path: &Path) -> Result<(), RecordError> {
        match std::fs::remove_file(path) {
            Ok(()) => sync_parent(path).map_err(|source| RecordError::Io {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Creates the record's directory when missing (0755) and refuses one that another user owns
/// or can write to (they could replace the record or plant a symlink).
fn check_private_dir(path: &Path) -> Result<(), RecordError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = parent_dir(path);
    let io_err = |source| RecordError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err)?;
    let meta = std::fs::symlink_metadata(dir).map_err(io_err)?;
    let ours = meta.uid() == nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || !ours || meta.mode() & 0o022 != 0 {
        return Err(RecordError::UnsafeDirectory {
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync directory; mode 0600;
/// the directory created when missing), through the workspace's one implementation.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let opts = atomic_write::AtomicWrite {
        create_dir: true,
        ..atomic_write::AtomicWrite::default()
    };
    atomic_write::write_bytes(&opts, path, bytes).map_err(|e| match e {
        atomic_write::AtomicWriteError::Io { source, .. }
        | atomic_write::AtomicWriteError::Fill(source) => source,
    })
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    atomic_write::sync_dir(parent_dir(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> StagedRecord {
        let mut images = BTreeMap::new();
        images.insert(
            ImageKind::Root,
            StagedImageRecord {
                target: "root.lz4".into(),
                sha256: "ab".repeat(32),
                written: 4096,
            },
        );
        StagedRecord {
            format_version: STATUS_FORMAT_VERSION,
            variant: "v".into(),
            arch: "x86_64".into(),
            version: Version::new(2, 0, 0),
            from_version: Version::new(1, 0, 0),
            set: SetId::A,
            staged_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            images,
            applied: true,
        }
    }

    /// A record as the string-keyed code wrote it (`set` and image keys as strings).
    const RECORD_BEFORE_TYPED_KEYS: &str = r#"{
  "format_version": 1,
  "variant": "v",
  "arch": "x86_64",
  "version": "2.0.0",
  "from_version": "1.0.0",
  "set": "B",
  "staged_at": "2023-11-14T22:13:20Z",
  "images": {
    "boot": {
      "target": "boot.lz4",
      "sha256": "01",
      "written": 1
    },
    "hash": {
      "target": "hash.lz4",
      "sha256": "02",
      "written": 2
    },
    "root": {
      "target": "root.lz4",
      "sha256": "03",
      "written": 3
    }
  },
  "applied": false
}"#;

    #[test]
    fn typed_keys_read_and_write_the_record_as_before() {
        let mut r = record();
        r.set = SetId::B;
        r.applied = false;
        r.images = ImageKind::ALL
            .into_iter()
            .map(|kind| {
                let n = match kind {
                    ImageKind::Boot => 1,
                    ImageKind::Hash => 2,
                    ImageKind::Root => 3,
                };
                let image = StagedImageRecord {
                    target: format!("{kind}.lz4"),
                    sha256: format!("0{n}"),
                    written: n,
                };
                (kind, image)
            })
            .collect();
        assert_eq!(
            serde_json::to_string_pretty(&r).unwrap(),
            RECORD_BEFORE_TYPED_KEYS
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, RECORD_BEFORE_TYPED_KEYS).unwrap();
        assert_eq!(StagedRecord::read(&path).unwrap(), Some(r));
        // An image key that is none of the three is refused, naming the file.
        std::fs::write(
            &path,
            RECORD_BEFORE_TYPED_KEYS.replace("\"hash\"", "\"data\""),
        )
        .unwrap();
        let e = StagedRecord::read(&path).unwrap_err();
        assert!(matches!(e, RecordError::Parse { .. }), "{e}");
    }

    #[test]
    fn round_trips_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.json");
        assert_eq!(StagedRecord::read(&path).unwrap(), None);
        let mut r = record();
        r.write_atomic(&path).unwrap();
        r.applied = false;
        r.write_atomic(&path).unwrap();
        assert_eq!(StagedRecord::read(&path).unwrap(), Some(r));
        // No temporary files left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        StagedRecord::remove(&path).unwrap();
        StagedRecord::remove(&path).unwrap();
        assert_eq!(StagedRecord::read(&path).unwrap(), None);
    }

    #[test]
    fn unknown_versions_sets_and_symlinks_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let good = serde_json::to_value(record()).unwrap();
        let mut future = good.clone();
        future["format_version"] = 99.into();
        std::fs::write(&path, future.to_string()).unwrap();
        let e = StagedRecord::read(&path).unwrap_err();
        assert!(
            matches!(e, RecordError::UnknownFormat { found: 99, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("state.json"), "{e}");
        let mut set_c = good.clone();
        set_c["set"] = "C".into();
        std::fs::write(&path, set_c.to_string()).unwrap();
        let e = StagedRecord::read(&path).unwrap_err();
        assert!(matches!(e, RecordError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("state.json"), "{e}");
        // A symlink planted at the record's path is not followed.
        let target = dir.path().join("elsewhere.json");
        std::fs::write(&target, good.to_string()).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let e = StagedRecord::read(&path).unwrap_err();
        assert!(matches!(e, RecordError::Io { .. }), "{e}");
        // Writing replaces the link itself and leaves its target alone.
        let before = std::fs::read(&target).unwrap();
        record().write_atomic(&path).unwrap();
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), before);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = record()
            .write_atomic(&shared.join("state.json"))
            .unwrap_err();
        assert!(matches!(e, RecordError::UnsafeDirectory { .. }), "{e}");
        assert!(!shared.join("state.json").exists());
    }

    #[test]
    fn a_reader_of_the_old_record_keeps_reading_it_whole() {
        // Replaced by rename, the file a reader has open is never changed: it reads the whole
        // old record, while the path gives the whole new one. Rewritten in place (truncate,
        // write), the open file would change under the reader, and a crash in between would
        // leave a partial record.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let old = record();
        let mut new = old.clone();
        new.applied = false;
        new.version = Version::new(3, 0, 0);
        old.write_atomic(&path).unwrap();
        let mut open = std::fs::File::open(&path).unwrap();
        new.write_atomic(&path).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut open, &mut bytes).unwrap();
        assert_eq!(serde_json::from_slice::<StagedRecord>(&bytes).unwrap(), old);
        assert_eq!(StagedRecord::read(&path).unwrap(), Some(new));
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").unwrap();
        let e = StagedRecord::read(&path).unwrap_err();
        assert!(e.to_string().contains("state.json"), "{e}");
    }
}
