//! One update at a time: an exclusive `flock` on the configured lock file.
//!
//! The lock is advisory and tied to the open file, so it is released by the kernel when the
//! holder exits or crashes: a stale lock file never blocks the next run.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("updog.lock");
//! let first = updog::lock::UpdateLock::acquire(&path).unwrap();
//! let second = updog::lock::UpdateLock::acquire(&path);
//! assert!(matches!(second, Err(updog::lock::LockError::Held { .. })));
//! drop(first);
//! updog::lock::UpdateLock::acquire(&path).unwrap();
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// A held update lock; dropping it releases the lock.
#[derive(Debug)]
pub struct UpdateLock {
    _lock: Flock<File>,
    path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock: another update is in progress.
    #[error("another update is in progress (lock {path} held{})", holder_text(*.holder_pid))]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The pid the holder wrote into the lock file, if readable.
        holder_pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("lock file {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    pid.map(|p| format!(" by pid {p}")).unwrap_or_default()
}

impl UpdateLock {
    /// Takes the lock without waiting; fails with [`LockError::Held`] when another process has
    /// it. Creates the lock file (and its directory) when missing, and records our pid in it.
    pub fn acquire(path: &Path) -> Result<UpdateLock, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let holder_pid = (&mut file)
                    .take(32)
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder_pid,
                });
            }
            Err((_, errno)) => return Err(io_err(errno.into())),
        };
        // Record the holder for the "held by" message; failure here does not matter.
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(&mut *lock, "{}", std::process::id()));
        Ok(UpdateLock {
            _lock: lock,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/updog.lock");
        let held = UpdateLock::acquire(&path).unwrap();
        assert_eq!(held.path(), path);
        match UpdateLock::acquire(&path) {
            Err(LockError::Held { holder_pid, .. }) => {
                assert_eq!(holder_pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        UpdateLock::acquire(&path).unwrap();
    }

    #[test]
    fn unopenable_lock_file_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        let e = UpdateLock::acquire(&file.join("lock")).unwrap_err();
        assert!(matches!(e, LockError::Io { .. }));
        assert!(e.to_string().contains("plain"), "{e}");
    }
}
