//! Releases that failed to boot on this host, remembered so that they are not taken again.
//!
//! After `updog update` flips to a new set, the bootloader tries it once. If that boot is never
//! marked successful (its health check failed, it hung, it panicked), the next boot falls back
//! to the old set by itself, and the disk then shows the tried set with priority above 0, no
//! tries left and not successful. Together with the staged record (which version was flipped
//! to on that set), that is a release that failed to boot here. Without remembering it, the
//! timer would stage the same release again every hour and, with `--reboot`, reboot into it
//! every hour (the loop Bottlerocket's update operator had, bottlerocket-update-operator#123).
//!
//! The list lives beside the staged record (`failed-boots.json` in the directory of
//! `state_file`), written atomically, at most [`MAX_REMEMBERED`] entries, the oldest dropped
//! first. A version leaves it when this host runs it and marks it successful (taken again with
//! `-i VERSION`, it booted after all). Selection skips the listed versions unless one is asked
//! for by version ([`crate::updater::CheckOptions::image`]); a newer release is taken as usual.
//!
//! ```
//! use updog::failed::{FailedBoot, FailedBoots};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("failed-boots.json");
//! let failed = FailedBoot {
//!     version: semver::Version::new(1, 1, 0),
//!     set: bootpart::SetId::B,
//!     from_version: semver::Version::new(1, 0, 0),
//!     detected_at: chrono::Utc::now(),
//! };
//! FailedBoots::remember(&path, &failed).unwrap();
//! assert_eq!(FailedBoots::read(&path).versions(), [semver::Version::new(1, 1, 0)]);
//! ```

use std::path::{Path, PathBuf};

use bootpart::SetId;
use chrono::{DateTime, Utc};
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::status::StagedRecord;

/// How many failed releases are remembered.
pub const MAX_REMEMBERED: usize = 32;

/// Bytes read of the file at most: it holds at most [`MAX_REMEMBERED`] short entries.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// A release that was flipped to and failed to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedBoot {
    /// The version that failed.
    pub version: Version,
    /// The set it was tried on.
    pub set: SetId,
    /// The version that staged it (and that the host fell back to).
    pub from_version: Version,
    /// When updog first saw the failure.
    pub detected_at: DateTime<Utc>,
}

impl FailedBoot {
    /// The failure the disk and the staged record show, if any: the record says `record.version`
    /// was applied to the set that is not running, and that set has priority, no tries left and
    /// no successful boot (the bootloader used its try and the boot was never marked).
    /// A set cleared since (priority 0) or marked successful shows no failure.
    pub fn detect(record: &StagedRecord, flags: &signpost::BootFlags) -> Option<FailedBoot> {
        let tried = flags.inactive();
        let state = flags.state(tried)?;
        let failed = record.applied
            && record.set == tried
            && state.priority > 0
            && state.tries_left == 0
            && !state.successful;
        failed.then(|| FailedBoot {
            version: record.version.clone(),
            set: tried,
            from_version: record.from_version.clone(),
            detected_at: Utc::now(),
        })
    }
}

/// The remembered failed releases, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedBoots {
    /// The entries, one per version.
    pub failed: Vec<FailedBoot>,
}

/// Why the list could not be written.
#[derive(Debug, thiserror::Error)]
#[error("remembering a failed release in {path}")]
pub struct RememberError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: std::io::Error,
}

impl FailedBoots {
    /// Where the list lives for a given staged-record path.
    pub fn path_for(state_file: &Path) -> PathBuf {
        state_file.with_file_name("failed-boots.json")
    }

    /// Reads the list. A missing file is an empty list; an unreadable or corrupt one is logged
    /// and read as empty (it is a memory, not a lock: it must never stop an update by itself).
    pub fn read(path: &Path) -> FailedBoots {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FailedBoots::default(),
            Err(e) => {
                log::warn!(
                    "cannot read {}: {e}; no failed release is skipped",
                    path.display(),
                    e = crate::advice::error_chain(&e)
                );
                return FailedBoots::default();
            }
        };
        let mut bytes = Vec::new();
        if let Err(e) = file.take(MAX_FILE_BYTES).read_to_end(&mut bytes) {
            log::warn!(
                "cannot read {}: {e}; no failed release is skipped",
                path.display(),
                e = crate::advice::error_chain(&e)
            );
            return FailedBoots::default();
        }
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            log::warn!(
                "{} is not a list of failed releases ({e}); it is ignored and replaced at the next failure",
                path.display(), e = crate::advice::error_chain(&e));
            FailedBoots::default()
        })
    }

    /// The versions, oldest entry first.
    pub fn versions(&self) -> Vec<Version> {
        self.failed.iter().map(|f| f.version.clone()).collect()
    }

    /// Whether `version` is listed.
    pub fn contains(&self, version: &Version) -> bool {
        self.failed.iter().any(|f| &f.version == version)
    }

    /// Adds `failed` (unless its version is listed already), keeping the newest
    /// [`MAX_REMEMBERED`]. Whether the list changed.
    pub fn add(&mut self, failed: FailedBoot) -> bool {
        if self.contains(&failed.version) {
            return false;
        }
        self.failed.push(failed);
        let excess = self.failed.len().saturating_sub(MAX_REMEMBERED);
        self.failed.drain(..excess);
        true
    }

    /// Removes `version`. Whether the list changed.
    pub fn remove(&mut self, version: &Version) -> bool {
        let before = self.failed.len();
        self.failed.retain(|f| &f.version != version);
        self.failed.len() != before
    }

    /// Adds `failed` to the list at `path` and writes it, unless it was listed already.
    pub fn remember(path: &Path, failed: &FailedBoot) -> Result<(), RememberError> {
        let mut list = Self::read(path);
        if list.add(failed.clone()) {
            list.write(path)?;
        }
        Ok(())
    }

    /// Removes `version` from the list at `path`, if it is there.
    pub fn forget(path: &Path, version: &Version) -> Result<(), RememberError> {
        let mut list = Self::read(path);
        if list.remove(version) {
            list.write(path)?;
        }
        Ok(())
    }

    /// Writes the list atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<(), RememberError> {
        let err = |source| RememberError {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        crate::status::write_atomic(path, &bytes).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signpost::{BootFlags, PartitionFlags, SetState};

    fn flags(a: SetState, b: SetState) -> BootFlags {
        let part = |number, state: SetState| PartitionFlags {
            number,
            attributes: state.apply_to(0),
        };
        BootFlags {
            active: SetId::A,
            a: part(1, a),
            b: Some(part(5, b)),
            private: None,
        }
    }

    fn record(applied: bool) -> StagedRecord {
        StagedRecord {
            format_version: 1,
            variant: "v".into(),
            arch: "x86_64".into(),
            version: Version::new(1, 1, 0),
            from_version: Version::new(1, 0, 0),
            set: SetId::B,
            staged_at: Utc::now(),
            images: std::collections::BTreeMap::default(),
            applied,
        }
    }

    #[test]
    fn only_a_tried_unmarked_set_that_was_flipped_to_is_a_failure() {
        let st = |p, t, s| SetState::new(p, t, s).unwrap();
        let a = st(1, 0, true);
        // Tried once, never marked, running the other set: failed.
        assert!(FailedBoot::detect(&record(true), &flags(a, st(2, 0, false))).is_some());
        // Rolled back from it (its priority lowered, still unmarked): failed.
        assert!(
            FailedBoot::detect(&record(true), &flags(st(2, 0, true), st(1, 0, false))).is_some()
        );
        // Applied, not tried yet; staged only; cleared since; marked; not flipped to.
        for (rec, b) in [
            (record(true), st(2, 1, false)),
            (record(false), st(0, 1, false)),
            (record(true), st(0, 0, false)),
            (record(true), st(1, 0, true)),
            (record(false), st(2, 0, false)),
        ] {
            assert!(FailedBoot::detect(&rec, &flags(a, b)).is_none(), "{b:?}");
        }
    }

    #[test]
    fn the_list_is_bounded_deduplicated_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failed-boots.json");
        let entry = |minor| FailedBoot {
            version: Version::new(1, minor, 0),
            set: SetId::B,
            from_version: Version::new(1, 0, 0),
            detected_at: Utc::now(),
        };
        for minor in 0..(MAX_REMEMBERED as u64 + 5) {
            FailedBoots::remember(&path, &entry(minor)).unwrap();
            FailedBoots::remember(&path, &entry(minor)).unwrap();
        }
        let list = FailedBoots::read(&path);
        assert_eq!(list.failed.len(), MAX_REMEMBERED);
        assert!(!list.contains(&Version::new(1, 4, 0)));
        assert!(list.contains(&Version::new(1, 5, 0)));
        FailedBoots::forget(&path, &Version::new(1, 5, 0)).unwrap();
        assert!(!FailedBoots::read(&path).contains(&Version::new(1, 5, 0)));
        // A corrupt file reads as empty and is replaced at the next failure.
        std::fs::write(&path, b"{not json").unwrap();
        assert!(FailedBoots::read(&path).failed.is_empty());
        FailedBoots::remember(&path, &entry(1)).unwrap();
        assert_eq!(FailedBoots::read(&path).versions(), [Version::new(1, 1, 0)]);
    }
}
