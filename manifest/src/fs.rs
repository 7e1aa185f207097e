//! Reading and atomically writing manifest files.
//!
//! [`write_atomic`] writes a temporary file in the same directory, fsyncs it, renames it over the
//! target and fsyncs the directory: an interrupted writer leaves either the old file or the new
//! one, never a half-written one.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

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
/// replaces (0644 for a new file); a symlink is followed and its target replaced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    // Through a symlink, replace the file it points to rather than the link itself.
    let resolved;
    let path = if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        resolved = fs::canonicalize(path).map_err(|source| Error::Io {
            action: "resolving the symlink",
            path: path.to_owned(),
            source,
        })?;
        resolved.as_path()
    } else {
        path
    };
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".updata-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| io("creating a temporary file next to", e))?;
    let perms = fs::metadata(path).map_or_else(
        |_| std::os::unix::fs::PermissionsExt::from_mode(0o644),
        |meta| meta.permissions(),
    );
    tmp.as_file()
        .set_permissions(perms)
        .map_err(|e| io("setting permissions for", e))?;
    tmp.write_all(bytes).map_err(|e| io("writing", e))?;
    tmp.as_file().sync_all().map_err(|e| io("syncing", e))?;
    tmp.persist(path)
        .map_err(|e| io("renaming over", e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the directory of", e))?;
    Ok(())
}
