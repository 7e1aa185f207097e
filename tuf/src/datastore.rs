//! The trusted-metadata directory: exact bytes received, written atomically.
//!
//! The directory holds only `root.json`, `timestamp.json`, `snapshot.json`, `targets.json` and
//! `<role>.json` per delegated role (role name percent-encoded). Every root version ever trusted
//! is also kept, in the `root-history/` sub-directory, so that [`super::Repository::metadata_bytes`]
//! can hand out the whole chain for offline verification.

use super::error::Error;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Sub-directory holding `N.root.json` for every trusted root version.
pub(crate) const ROOT_HISTORY: &str = "root-history";

/// Writes `bytes` to `dir/name` atomically: temp file in `dir`, fsync, rename, fsync `dir`.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    write_atomic_with(dir, name, |file, store| {
        file.write_all(bytes).map_err(store)
    })
}

/// Makes `dir/name` hold what `fill` writes, atomically: temp file in `dir`, `fill`, fsync,
/// rename, fsync `dir` (the workspace's one implementation, [`atomic_write::AtomicWrite`]).
/// `fill` gets the temp file and the mapping of an I/O error to [`Error::Store`] naming
/// `dir/name`; on any error the temp file is removed and `dir/name` is untouched.
pub(crate) fn write_atomic_with<T>(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut File, &dyn Fn(io::Error) -> Error) -> Result<T, Error>,
) -> Result<T, Error> {
    let path = dir.join(name);
    let store = |source: io::Error| Error::Store {
        path: path.clone(),
        source,
    };
    atomic_write::AtomicWrite::default()
        .write(&path, |file| fill(file, &store))
        .map_err(|e| match e {
            atomic_write::AtomicWriteError::Io { source, .. } => store(source),
            atomic_write::AtomicWriteError::Fill(e) => e,
        })
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    atomic_write::sync_dir(dir).map_err(|source| Error::Store {
        path: dir.to_owned(),
        source,
    })
}

/// Reads `dir/name` up to `limit` bytes; `Ok(None)` when it does not exist.
pub(crate) fn read_optional(dir: &Path, name: &str, limit: u64) -> Result<Option<Vec<u8>>, Error> {
    let path = dir.join(name);
    match File::open(&path) {
        Ok(f) => read_capped(f, limit, &path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Store { path, source }),
    }
}

fn read_capped(f: File, limit: u64, path: &Path) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| Error::Store {
            path: path.to_owned(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(Error::Store {
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than the limit of {limit} bytes"),
            ),
        });
    }
    Ok(buf)
}

/// Removes `dir/name` if present, then fsyncs `dir`.
pub(crate) fn remove(dir: &Path, name: &str) -> Result<(), Error> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Store { path, source }),
    }
}

/// Creates `dir` (and parents) if needed.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|source| Error::Store {
        path: dir.to_owned(),
        source,
    })
}

/// The file name used for a delegated role, in the trusted directory and in offline caches.
pub(crate) fn role_file_name(role: &str) -> String {
    format!("{}.json", encode_component(role))
}

/// Percent-encodes everything except ASCII alphanumerics and `.-_`, so any string becomes one
/// safe path component (`/` and `%` included). `.` and `..` alone are encoded too.
pub(crate) fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    out
}

/// `dir/root-history`.
pub(crate) fn history_dir(dir: &Path) -> PathBuf {
    dir.join(ROOT_HISTORY)
}

/// The file in the history directory that says where the stored root came from.
const ROOT_ORIGIN: &str = "origin.txt";

/// Records (one line) where the root stored in `dir` came from.
pub(crate) fn write_root_origin(dir: &Path, origin: &str) -> Result<(), Error> {
    let history = history_dir(dir);
    ensure_dir(&history)?;
    write_atomic(&history, ROOT_ORIGIN, format!("{origin}\n").as_bytes())
}

/// Where the root stored in `dir` came from, if recorded (first line, at most 1 KiB).
pub(crate) fn read_root_origin(dir: &Path) -> Option<String> {
    let bytes = read_optional(&history_dir(dir), ROOT_ORIGIN, 1024).ok()??;
    let text = String::from_utf8_lossy(&bytes);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}
