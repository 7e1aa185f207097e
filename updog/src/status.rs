//! What is staged where: the record written after staging (read by `updog status`), and the
//! status object an agent reads.
//!
//! The record lives next to the metadata directory (`state_file`, default
//! `/var/lib/updog/state.json`) and is written atomically (temporary file, fsync, rename, fsync
//! of the directory), so a power cut leaves the old record or the new one.
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
//!     set: "B".into(),
//!     staged_at: chrono::Utc::now(),
//!     images: Default::default(),
//!     applied: false,
//! };
//! record.write_atomic(&path).unwrap();
//! assert_eq!(StagedRecord::read(&path).unwrap(), Some(record));
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use semver::Version;
use serde::{Deserialize, Serialize};

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
    /// The set it was written to (`A` or `B`).
    pub set: String,
    /// When staging finished.
    pub staged_at: DateTime<Utc>,
    /// Each image's TUF target name and sha256 (hex), keyed by `root`, `boot`, `hash`.
    pub images: BTreeMap<String, StagedImageRecord>,
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
pub enum RecordError {
    /// Reading or writing the file failed.
    #[error("staged-state record {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a record.
    #[error("staged-state record {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// The largest record read.
const MAX_RECORD_BYTES: u64 = 1024 * 1024;

impl StagedRecord {
    /// Reads the record; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<StagedRecord>, RecordError> {
        use std::io::Read;
        let io_err = |source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| RecordError::Parse {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Writes the record atomically: temporary file in the same directory, fsync, rename,
    /// fsync of the directory.
    pub fn write_atomic(&self, path: &Path) -> Result<(), RecordError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| RecordError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
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

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync directory; mode 0600;
/// the directory created when missing), through the workspace's one implementation.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let opts = manifest::fs::AtomicWrite {
        create_dir: true,
        ..manifest::fs::AtomicWrite::default()
    };
    opts.write(path, |f| f.write_all(bytes))
        .map_err(|e| match e {
            manifest::fs::AtomicWriteError::Io { source, .. }
            | manifest::fs::AtomicWriteError::Fill(source) => source,
        })
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    manifest::fs::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> StagedRecord {
        let mut images = BTreeMap::new();
        images.insert(
            "root".to_string(),
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
            set: "A".into(),
            staged_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            images,
            applied: true,
        }
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
