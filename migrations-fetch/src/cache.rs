//! The on-disk cache: where files go, how they are named, how they are written atomically and
//! hashed.
//!
//! Layout (the one the reference's boot-time migrator reads):
//!
//! ```text
//! <targets dir>/<sha256>.<target name>     each migration, still lz4-compressed, and manifest.json
//! <metadata dir>/1.root.json .. N.root.json
//! <metadata dir>/timestamp.json
//! <metadata dir>/<v>.snapshot.json, <v>.targets.json, <v>.<delegated role>.json
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{CacheError, FileNameError};

/// Where the reference system keeps migration targets.
pub const REFERENCE_TARGETS_DIR: &str = "/var/lib/bottlerocket-migrations";
/// Where the reference system keeps the metadata that signs them.
pub const REFERENCE_METADATA_DIR: &str = "/var/cache/bottlerocket-metadata";

/// Prefix of the temporary files this crate writes before renaming them into place. Files with
/// this prefix are left-overs of an interrupted write and are pruned.
pub const TEMP_PREFIX: &str = ".migrations-fetch-tmp-";

/// The longest target name accepted: `<64 hex>.` plus the name must fit a 255-byte file name.
pub const MAX_TARGET_NAME_LEN: usize = 255 - 65;

/// The two cache directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDirs {
    /// Migration targets and `manifest.json`, stored as `<sha256>.<name>`.
    pub targets: PathBuf,
    /// Verified TUF metadata in the reference layout.
    pub metadata: PathBuf,
}

impl CacheDirs {
    /// Two explicit directories.
    pub fn new(targets: impl Into<PathBuf>, metadata: impl Into<PathBuf>) -> Self {
        Self {
            targets: targets.into(),
            metadata: metadata.into(),
        }
    }

    /// `<root>/migrations` and `<root>/metadata` (handy for tests and non-default installs).
    pub fn under(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        Self::new(root.join("migrations"), root.join("metadata"))
    }

    /// The reference system's directories ([`REFERENCE_TARGETS_DIR`], [`REFERENCE_METADATA_DIR`]).
    pub fn reference() -> Self {
        Self::new(REFERENCE_TARGETS_DIR, REFERENCE_METADATA_DIR)
    }

    /// Path of the cached copy of a target with the given digest.
    pub fn target_path(&self, sha256: &[u8; 32], name: &str) -> PathBuf {
        self.targets.join(target_file_name(sha256, name))
    }

    /// Creates both directories if needed.
    pub fn create(&self) -> Result<(), CacheError> {
        for dir in [&self.targets, &self.metadata] {
            fs::create_dir_all(dir).map_err(|source| CacheError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// The consistent-snapshot file name of a target: `<sha256 hex>.<name>`.
pub fn target_file_name(sha256: &[u8; 32], name: &str) -> String {
    format!("{}.{name}", hex::encode(sha256))
}

/// Splits a cached target file name `<sha256 hex>.<name>` into digest and target name; `None`
/// for anything else.
pub fn parse_target_file_name(file_name: &str) -> Option<([u8; 32], &str)> {
    let (hash, name) = file_name.split_at_checked(64)?;
    let name = name.strip_prefix('.')?;
    if name.is_empty()
        || !hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hash, &mut digest).ok()?;
    Some((digest, name))
}

/// Checks that a target name can be stored as a plain file name in the cache: not empty, not
/// too long, no `/` or NUL, not `.`/`..`, not starting with `.`.
pub fn validate_target_name(name: &str) -> Result<(), FileNameError> {
    validate_plain_name(name, MAX_TARGET_NAME_LEN)
}

/// Checks that a metadata file name is a plain `*.json` file name.
// Metadata names are exact, lowercase `.json` in the reference layout.
#[allow(clippy::case_sensitive_file_extension_comparisons)]
pub fn validate_metadata_name(name: &str) -> Result<(), FileNameError> {
    validate_plain_name(name, 255)?;
    if !name.ends_with(".json") {
        return Err(FileNameError::NotJson {
            name: name.to_owned(),
        });
    }
    if parse_target_file_name(name).is_some() {
        return Err(FileNameError::LooksLikeTarget {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn validate_plain_name(name: &str, max: usize) -> Result<(), FileNameError> {
    let bad = |reason: &'static str| FileNameError::Invalid {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > max {
        return Err(bad("too long"));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(bad("contains a path separator"));
    }
    if name.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if name.starts_with('.') {
        return Err(bad("starts with '.'"));
    }
    Ok(())
}

/// Writes a file atomically: a temporary file in the same directory, filled by `fill`, flushed
/// with `fsync`, renamed over `dir/name`, then the directory is `fsync`ed (the workspace's one
/// implementation, [`manifest::fs::AtomicWrite`]). On any error the temporary file is removed
/// and `dir/name` is untouched.
pub(crate) fn write_atomic<T, E>(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<CacheError>,
{
    use manifest::fs::{AtomicStep, AtomicWrite, AtomicWriteError};
    let opts = AtomicWrite {
        temp_prefix: TEMP_PREFIX,
        ..AtomicWrite::default()
    };
    opts.write(&dir.join(name), fill).map_err(|e| match e {
        AtomicWriteError::Fill(e) => e,
        AtomicWriteError::Io { step, path, source } => match step {
            AtomicStep::CreateTemp => CacheError::CreateTemp {
                dir: dir.to_owned(),
                source,
            },
            AtomicStep::Rename => CacheError::Rename { path, source },
            AtomicStep::SyncDir => CacheError::Sync {
                path: dir.to_owned(),
                source,
            },
            _ => CacheError::Sync { path, source },
        }
        .into(),
    })
}

/// `fsync` a directory so that renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    manifest::fs::sync_dir(dir).map_err(|source| CacheError::Sync {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `bytes` atomically to `dir/name`.
pub(crate) fn write_bytes_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CacheError> {
    write_atomic(dir, name, |f| {
        f.write_all(bytes).map_err(|source| CacheError::Write {
            path: dir.join(name),
            source,
        })
    })
}

/// What hashing a file on disk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileCheck {
    /// No such file.
    Missing,
    /// Length and digest match.
    Matches,
    /// The file is longer or shorter than signed.
    WrongLength { actual: u64 },
    /// Same length, different digest.
    WrongDigest { actual: [u8; 32] },
    /// A symbolic link, directory or other non-regular file: never trusted, replaced on fetch.
    NotRegular,
}

/// Compares a file with a signed length and digest, reading at most `length + 1` bytes.
pub(crate) fn check_file(path: &Path, length: u64, sha256: &[u8; 32]) -> io::Result<FileCheck> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => return Ok(FileCheck::NotRegular),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileCheck::Missing),
        Err(e) => return Err(e),
    }
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(FileCheck::NotRegular);
    }
    if meta.len() != length {
        return Ok(FileCheck::WrongLength { actual: meta.len() });
    }
    let (actual_len, digest) = hash_reader(file.take(length.saturating_add(1)))?;
    if actual_len != length {
        return Ok(FileCheck::WrongLength { actual: actual_len });
    }
    if &digest == sha256 {
        Ok(FileCheck::Matches)
    } else {
        Ok(FileCheck::WrongDigest { actual: digest })
    }
}

/// Reads a file of at most `max` bytes into memory; a longer file is an error.
pub(crate) fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut out = Vec::with_capacity(usize::try_from(max.min(1 << 20)).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is longer than the signed {max} bytes"),
        ));
    }
    Ok(out)
}

pub(crate) const COPY_BUF: usize = 64 * 1024;

fn hash_reader(mut r: impl Read) -> io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf
            .get(..n)
            .ok_or_else(|| io::Error::other("reader overran its buffer"))?;
        hasher.update(chunk);
        total += n as u64;
    }
    Ok((total, hasher.finalize().into()))
}

/// Lists the entries directly in `dir` that are not directories (regular files, and symbolic
/// links or other entries that stand where a cached file might be), with UTF-8 names (others
/// are never ours).
pub(crate) fn list_files(dir: &Path) -> Result<Vec<String>, CacheError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CacheError::ReadDir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CacheError::ReadDir {
            path: dir.to_owned(),
            source,
        })?;
        let not_dir = entry.file_type().is_ok_and(|t| !t.is_dir());
        if let (true, Ok(name)) = (not_dir, entry.file_name().into_string()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_file_names_round_trip() {
        let digest = [0xab; 32];
        let name = target_file_name(&digest, "migrate_v1.1.0_foo.lz4");
        assert_eq!(name.len(), 64 + 1 + "migrate_v1.1.0_foo.lz4".len());
        assert_eq!(
            parse_target_file_name(&name),
            Some((digest, "migrate_v1.1.0_foo.lz4"))
        );
    }

    #[test]
    fn non_target_file_names_are_not_parsed() {
        for name in [
            "timestamp.json",
            "1.root.json",
            ".migrations-fetch-tmp-abc",
            &format!("{}.", "a".repeat(64)),
            &format!("{}x{}", "a".repeat(64), "name"),
            &format!("{}.name", "A".repeat(64)),
            &format!("{}.name", "g".repeat(64)),
            "short.name",
        ] {
            assert_eq!(parse_target_file_name(name), None, "{name}");
        }
    }

    #[test]
    fn target_names_that_escape_or_hide_are_refused() {
        for name in ["", ".", "..", "../x", "a/b", ".hidden", "a\0b", "a\\b"] {
            assert!(validate_target_name(name).is_err(), "{name:?}");
        }
        assert!(validate_target_name(&"x".repeat(MAX_TARGET_NAME_LEN + 1)).is_err());
        assert!(validate_target_name(&"x".repeat(MAX_TARGET_NAME_LEN)).is_ok());
        assert!(validate_target_name("manifest.json").is_ok());
    }

    #[test]
    fn metadata_names_must_be_plain_json() {
        assert!(validate_metadata_name("12.root.json").is_ok());
        assert!(validate_metadata_name("timestamp.json").is_ok());
        assert!(validate_metadata_name("root.txt").is_err());
        assert!(validate_metadata_name("../timestamp.json").is_err());
        let target_like = format!("{}.manifest.json", "0".repeat(64));
        assert!(validate_metadata_name(&target_like).is_err());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        write_bytes_atomic(dir.path(), "a.json", b"one").unwrap();
        write_bytes_atomic(dir.path(), "a.json", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("a.json")).unwrap(), b"two");
        assert_eq!(list_files(dir.path()).unwrap(), vec!["a.json".to_owned()]);
    }

    #[test]
    fn failed_atomic_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        write_bytes_atomic(dir.path(), "a.json", b"old").unwrap();
        let err: Result<(), CacheError> = write_atomic(dir.path(), "a.json", |f| {
            f.write_all(b"partial").unwrap();
            Err(CacheError::Write {
                path: dir.path().join("a.json"),
                source: io::Error::other("simulated"),
            })
        });
        assert!(err.is_err());
        assert_eq!(fs::read(dir.path().join("a.json")).unwrap(), b"old");
        assert_eq!(list_files(dir.path()).unwrap(), vec!["a.json".to_owned()]);
    }

    #[test]
    fn check_file_tells_missing_short_and_changed_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let digest: [u8; 32] = Sha256::digest(b"hello").into();
        assert_eq!(check_file(&path, 5, &digest).unwrap(), FileCheck::Missing);
        fs::write(&path, b"hell").unwrap();
        assert_eq!(
            check_file(&path, 5, &digest).unwrap(),
            FileCheck::WrongLength { actual: 4 }
        );
        fs::write(&path, b"hellO").unwrap();
        assert!(matches!(
            check_file(&path, 5, &digest).unwrap(),
            FileCheck::WrongDigest { .. }
        ));
        fs::write(&path, b"hello").unwrap();
        assert_eq!(check_file(&path, 5, &digest).unwrap(), FileCheck::Matches);
    }

    #[test]
    fn read_bounded_refuses_longer_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap(), b"0123456789");
        assert!(read_bounded(&path, 9).is_err());
    }
}
