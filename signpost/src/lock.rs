//! An advisory lock file (`flock(2)`) so two mutating signpost runs cannot interleave their
//! read-modify-write of the GPT.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::Error;

/// The lock file used when none is configured.
pub const DEFAULT_LOCK_FILE: &str = "/run/lock/signpost.lock";

/// How often a waiting process retries the lock.
const POLL: Duration = Duration::from_millis(20);

/// An exclusive lock held until dropped (or the process exits, whichever comes first: the
/// kernel releases `flock` locks with the last file descriptor).
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl LockFile {
    /// Creates `path` if needed and takes an exclusive lock on it, waiting at most `wait`
    /// (`Duration::ZERO`: fail at once if another process holds it).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let _guard = signpost::LockFile::acquire("/run/lock/signpost.lock", Duration::from_secs(10))?;
    /// // ... read, change and write the GPT ...
    /// # Ok::<(), signpost::Error>(())
    /// ```
    pub fn acquire(path: impl AsRef<Path>, wait: Duration) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let start = Instant::now();
        let mut file = open(&path)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Self { path, _lock: lock }),
                Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => {
                    let waited = start.elapsed();
                    if waited >= wait {
                        return Err(Error::LockBusy {
                            path,
                            waited_ms: waited.as_millis(),
                        });
                    }
                    std::thread::sleep(POLL.min(wait.saturating_sub(waited)));
                    file = f;
                }
                Err((_, errno)) => {
                    return Err(Error::Lock {
                        path,
                        source: errno.into(),
                    });
                }
            }
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| Error::Lock {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_in_same_process_is_busy_until_first_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let first = LockFile::acquire(&path, Duration::ZERO).unwrap();
        let err = LockFile::acquire(&path, Duration::from_millis(60)).unwrap_err();
        assert!(matches!(err, Error::LockBusy { .. }), "{err}");
        drop(first);
        LockFile::acquire(&path, Duration::ZERO).unwrap();
    }
}
