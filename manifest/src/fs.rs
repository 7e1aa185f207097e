//! Reading and atomically writing manifest files.
//!
//! [`AtomicWrite`] (the `atomic-write` crate, re-exported here) is the workspace's one atomic
//! file replacement (a temporary file in the same directory, fsync, rename over the target,
//! fsync the directory: an interrupted writer leaves either the old file or the new one, never
//! a half-written one), with options for modes, symlinks and missing directories;
//! [`write_atomic`] is its manifest-file case.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

pub use atomic_write::{AtomicStep, AtomicWrite, AtomicWriteError, FileMode, sync_dir};

use crate::{Error, MAX_MANIFEST_LEN, Manifest};

/// Reads and parses a manifest file (at most [`MAX_MANIFEST_LEN`] bytes).
pub fn load(path: &Path) -> Result<Manifest, Error> {
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(|e| io("opening", e))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io("reading", e))?;
    Manifest::from_slice(&bytes)
}

/// Writes a manifest as pretty JSON, atomically (see [`write_atomic`]).
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("manifest.json");
/// manifest::fs::save(&manifest::Manifest::default(), &path)?;
/// assert_eq!(manifest::fs::load(&path)?, manifest::Manifest::default());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn save(manifest: &Manifest, path: &Path) -> Result<(), Error> {
    write_atomic(path, manifest.to_json_pretty().as_bytes())
}

/// Replaces `path` with `bytes` atomically: temporary file in the same directory, write,
/// fsync, rename over `path`, fsync the directory. The file keeps the permissions of the file it
/// replaces (0644 for a new file); a symlink is followed and its target replaced (the options
/// [`AtomicWrite::for_published_file`] sets).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    AtomicWrite::for_published_file()
        .write(path, |f| f.write_all(bytes))
        .map_err(|e| match e {
            AtomicWriteError::Io { step, path, source } => Error::Io {
                action: step.describe(),
                path,
                source,
            },
            AtomicWriteError::Fill(source) => Error::Io {
                action: "writing",
                path: path.to_owned(),
                source,
            },
        })
}
