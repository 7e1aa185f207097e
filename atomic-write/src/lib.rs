//! The workspace's one atomic file replacement: a temporary file in the same directory, filled,
//! flushed (`fsync`), renamed over the file, then its directory flushed, so that an interrupted
//! writer leaves the old file or the new one, never a mix.
//!
//! A leaf crate (no workspace dependency) so that every crate that writes state or published
//! files uses it without depending on another's concerns: the manifest files, the TUF client's
//! trusted-metadata directory, the staged record, the migrations cache, the delta seed cache,
//! the chunk store and the publisher's repository files.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// The permissions an atomically written file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Owner read and write only (0600), whatever was there before: state only its owner
    /// reads.
    Private,
    /// Those of the file replaced, or these mode bits for a new file.
    KeepExisting(u32),
}

/// How a file is replaced atomically: in a temporary file next to it, filled, flushed
/// (`fsync`), renamed over the file, then its directory flushed, so that an interrupted writer
/// leaves the old file or the new one, never a mix; on any error the temporary file is removed
/// and the file is untouched. The one implementation the workspace's crates share (manifest
/// files, TUF metadata, the staged record, the migrations cache); the options are where they
/// differ.
///
/// ```
/// use std::io::Write;
/// use atomic_write::{AtomicWrite, FileMode};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("state/record.json");
/// let opts = AtomicWrite { mode: FileMode::Private, create_dir: true, ..AtomicWrite::default() };
/// opts.write(&path, |f| f.write_all(b"{}"))?;
/// assert_eq!(std::fs::read(&path)?, b"{}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtomicWrite {
    /// The new file's permissions.
    pub mode: FileMode,
    /// When the path is a symlink: replace the file it points to (`true`) or the link itself.
    pub follow_symlink: bool,
    /// Create the directory (and its parents) when missing.
    pub create_dir: bool,
    /// Name prefix of the temporary file (so that a clean-up can recognise leftovers).
    pub temp_prefix: &'static str,
}

impl Default for AtomicWrite {
    /// Private mode, the link itself replaced, the directory must exist, prefix `.tmp-`.
    fn default() -> Self {
        Self {
            mode: FileMode::Private,
            follow_symlink: false,
            create_dir: false,
            temp_prefix: ".tmp-",
        }
    }
}

/// The step of an atomic write that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AtomicStep {
    /// Resolving the symlink at the path.
    ResolveSymlink,
    /// Creating the directory.
    CreateDir,
    /// Creating the temporary file in the directory.
    CreateTemp,
    /// Setting the temporary file's permissions.
    SetPermissions,
    /// Flushing the temporary file.
    Sync,
    /// Renaming it over the path.
    Rename,
    /// Flushing the directory.
    SyncDir,
}

impl AtomicStep {
    /// What was being done, as in "error {describe} {path}".
    pub fn describe(self) -> &'static str {
        match self {
            AtomicStep::ResolveSymlink => "resolving the symlink",
            AtomicStep::CreateDir => "creating the directory of",
            AtomicStep::CreateTemp => "creating a temporary file next to",
            AtomicStep::SetPermissions => "setting permissions for",
            AtomicStep::Sync => "syncing",
            AtomicStep::Rename => "renaming over",
            AtomicStep::SyncDir => "syncing the directory of",
        }
    }
}

/// Why an atomic write failed: one of its own steps, or the caller's fill.
///
/// The one public error enum of the workspace that is not `#[non_exhaustive]`, on purpose: it
/// is an either-or that callers take apart (the fill's own error `E` goes back to them as it
/// was), and a wildcard arm would have no error of either kind to return.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError<E> {
    /// A step of the write itself failed.
    #[error("{} {}", step.describe(), path.display())]
    Io {
        /// Which one.
        step: AtomicStep,
        /// The file being replaced (after following a symlink).
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The fill function failed.
    #[error(transparent)]
    Fill(E),
}

impl AtomicWrite {
    /// The options of a file a publisher edits: permissions kept (0644 when new), a symlink
    /// followed, temporary files named `.updata-*.tmp`.
    pub fn for_published_file() -> Self {
        Self {
            mode: FileMode::KeepExisting(0o644),
            follow_symlink: true,
            create_dir: false,
            temp_prefix: ".updata-",
        }
    }

    /// Make `path` hold what `fill` writes into the temporary file, atomically.
    pub fn write<T, E>(
        &self,
        path: &Path,
        fill: impl FnOnce(&mut File) -> Result<T, E>,
    ) -> Result<T, AtomicWriteError<E>> {
        let fail = |step, path: &Path| {
            let path = path.to_owned();
            move |source| AtomicWriteError::Io { step, path, source }
        };
        // Through a symlink, replace the file it points to rather than the link itself.
        let resolved;
        let path = if self.follow_symlink
            && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        {
            resolved = fs::canonicalize(path).map_err(fail(AtomicStep::ResolveSymlink, path))?;
            resolved.as_path()
        } else {
            path
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if self.create_dir {
            fs::create_dir_all(dir).map_err(fail(AtomicStep::CreateDir, path))?;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(self.temp_prefix)
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(fail(AtomicStep::CreateTemp, path))?;
        if let FileMode::KeepExisting(new) = self.mode {
            let perms = fs::metadata(path).map_or_else(
                |_| std::os::unix::fs::PermissionsExt::from_mode(new),
                |meta| meta.permissions(),
            );
            tmp.as_file()
                .set_permissions(perms)
                .map_err(fail(AtomicStep::SetPermissions, path))?;
        }
        let value = fill(tmp.as_file_mut()).map_err(AtomicWriteError::Fill)?;
        tmp.as_file()
            .sync_all()
            .map_err(fail(AtomicStep::Sync, path))?;
        tmp.persist(path)
            .map_err(|e| fail(AtomicStep::Rename, path)(e.error))?;
        sync_dir(dir).map_err(fail(AtomicStep::SyncDir, path))?;
        Ok(value)
    }
}

/// `fsync` a directory, so that a rename or removal in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// Writes `bytes` to `path` with the options `opts` (see [`AtomicWrite::write`]).
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("f");
/// atomic_write::write_bytes(&atomic_write::AtomicWrite::default(), &path, b"x")?;
/// assert_eq!(std::fs::read(&path)?, b"x");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_bytes(
    opts: &AtomicWrite,
    path: &Path,
    bytes: &[u8],
) -> Result<(), AtomicWriteError<std::io::Error>> {
    use std::io::Write;
    opts.write(path, |f| f.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn modes_follow_the_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let write = |opts: &AtomicWrite, bytes: &'static [u8]| {
            opts.write(&path, |f| f.write_all(bytes)).unwrap();
        };
        write(&AtomicWrite::default(), b"1");
        assert_eq!(mode(&path), 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write(&AtomicWrite::for_published_file(), b"2");
        assert_eq!(mode(&path), 0o640, "the replaced file's mode is kept");
        write(&AtomicWrite::default(), b"3");
        assert_eq!(mode(&path), 0o600, "private whatever was there");
        fs::remove_file(&path).unwrap();
        write(&AtomicWrite::for_published_file(), b"4");
        assert_eq!(mode(&path), 0o644);
        assert_eq!(fs::read(&path).unwrap(), b"4");
    }

    #[test]
    fn symlinks_are_followed_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let link = dir.path().join("link");
        fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let follow = AtomicWrite {
            follow_symlink: true,
            ..AtomicWrite::default()
        };
        follow.write(&link, |f| f.write_all(b"followed")).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&target).unwrap(), b"followed");
        AtomicWrite::default()
            .write(&link, |f| f.write_all(b"replaced"))
            .unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(
            fs::read(&target).unwrap(),
            b"followed",
            "the old target is untouched"
        );
        assert_eq!(fs::read(&link).unwrap(), b"replaced");
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"old").unwrap();
        let err = AtomicWrite::default()
            .write(&path, |f| {
                f.write_all(b"partial")?;
                Err::<(), _>(std::io::Error::other("source failed"))
            })
            .unwrap_err();
        assert!(matches!(err, AtomicWriteError::Fill(_)));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A missing directory is an error naming the step unless asked to create it.
        let deep = dir.path().join("a/b/f");
        let err = AtomicWrite::default()
            .write(&deep, |f| f.write_all(b"x"))
            .unwrap_err();
        assert!(matches!(
            err,
            AtomicWriteError::Io {
                step: AtomicStep::CreateTemp,
                ..
            }
        ));
        let create = AtomicWrite {
            create_dir: true,
            ..AtomicWrite::default()
        };
        create.write(&deep, |f| f.write_all(b"x")).unwrap();
        assert_eq!(fs::read(&deep).unwrap(), b"x");
    }
}
