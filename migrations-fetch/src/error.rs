//! Error types. Each names what was wrong: which target, file, directory or version.

use std::io;
use std::path::PathBuf;

use semver::Version;

use crate::source::BoxError;

/// A target or metadata name that cannot be stored as a plain file name in the cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileNameError {
    /// Not usable as a file name.
    #[error("name {name:?} cannot be used as a cache file name: {reason}")]
    Invalid {
        /// The offending name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A metadata file name that does not end in `.json`.
    #[error("metadata file name {name:?} does not end in .json")]
    NotJson {
        /// The offending name.
        name: String,
    },
    /// A metadata file name that would be mistaken for a cached target `<sha256>.<name>`.
    #[error("metadata file name {name:?} looks like a cached target file")]
    LooksLikeTarget {
        /// The offending name.
        name: String,
    },
}

/// A file-system operation on the cache failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Creating a cache directory failed.
    #[error("cannot create cache directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Creating a temporary file failed.
    #[error("cannot create a temporary file in {}", dir.display())]
    CreateTemp {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing a file failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `fsync` failed.
    #[error("cannot flush {} to disk", path.display())]
    Sync {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Renaming the temporary file into place failed.
    #[error("cannot rename a temporary file to {}", path.display())]
    Rename {
        /// The destination.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Listing a cache directory failed.
    #[error("cannot list cache directory {}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Removing a stale file failed.
    #[error("cannot remove stale cache file {}", path.display())]
    Remove {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Reading an existing cached file failed.
    #[error("cannot read cached file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Building a [`crate::MigrationPlan`] failed. Nothing has been written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The manifest has no chain of migrations from the running version to the target; the
    /// source error names where the chain stops.
    #[error("no migration chain from {from} to {to}")]
    Chain {
        /// Running version.
        from: Version,
        /// Target version.
        to: Version,
        /// The manifest crate's error, naming the missing link.
        source: BoxError,
    },
    /// The manifest names a migration that the repository's targets metadata does not sign.
    #[error(
        "migration {name:?} (needed for {from} -> {to}) is not a signed target of the repository"
    )]
    NotSigned {
        /// Target name.
        name: String,
        /// Hop start.
        from: Version,
        /// Hop end.
        to: Version,
    },
    /// The repository does not sign `manifest.json`.
    #[error("the repository does not sign {name:?}")]
    ManifestNotSigned {
        /// The manifest's target name.
        name: String,
    },
    /// Looking a target up in the repository failed.
    #[error("cannot look up target {name:?} in the repository")]
    Lookup {
        /// Target name.
        name: String,
        /// The repository's error.
        source: BoxError,
    },
    /// A target name that cannot be cached as a file.
    #[error(transparent)]
    Name(#[from] FileNameError),
}

/// Fetching the planned migrations into the cache failed. Files already in place stay there (each
/// was verified before it was renamed into place), so a re-run fetches only what is missing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// A cache file-system operation failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A metadata file name from the source cannot be cached.
    #[error(transparent)]
    Name(#[from] FileNameError),
    /// The files to fetch do not fit in the free space of a cache file system.
    #[error(
        "not enough free space for the migrations cache in {}: {needed} bytes needed for {files} file(s), {available} bytes available",
        dir.display()
    )]
    NotEnoughSpace {
        /// The cache directory (the first one, if both share a file system).
        dir: PathBuf,
        /// Bytes needed (rounded up to the file system's block size).
        needed: u64,
        /// Bytes available to unprivileged writers.
        available: u64,
        /// How many files that is.
        files: usize,
    },
    /// Probing free space failed.
    #[error("cannot find the free space of {}", dir.display())]
    SpaceProbe {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The source refused to open a target.
    #[error("cannot open migration target {name:?}")]
    Open {
        /// Target name.
        name: String,
        /// The source's error.
        source: BoxError,
    },
    /// Reading a target's bytes failed midway.
    #[error("reading migration target {name:?} failed after {received} bytes")]
    Read {
        /// Target name.
        name: String,
        /// Bytes received before the failure.
        received: u64,
        /// The cause.
        source: io::Error,
    },
    /// The target's stream ran past its signed length.
    #[error("migration target {name:?} is longer than its signed length of {signed} bytes")]
    TooLong {
        /// Target name.
        name: String,
        /// Signed length.
        signed: u64,
    },
    /// The target's stream ended before its signed length.
    #[error("migration target {name:?} ended after {received} of its signed {signed} bytes")]
    TooShort {
        /// Target name.
        name: String,
        /// Signed length.
        signed: u64,
        /// Bytes received.
        received: u64,
    },
    /// The target's sha256 differs from the signed one.
    #[error("migration target {name:?} has sha256 {actual}, but the signed sha256 is {expected}")]
    DigestMismatch {
        /// Target name.
        name: String,
        /// Signed digest (hex).
        expected: String,
        /// Received digest (hex).
        actual: String,
    },
    /// The source's signed description of a target differs from the plan's (the plan was made
    /// with other metadata).
    #[error("the plan's signed description of {name:?} does not match the source's metadata")]
    PlanMismatch {
        /// Target name.
        name: String,
    },
    /// Looking a target up in the source failed.
    #[error("cannot look up target {name:?} in the repository")]
    Lookup {
        /// Target name.
        name: String,
        /// The source's error.
        source: BoxError,
    },
    /// The source could not give its verified metadata files.
    #[error("cannot get the verified metadata files to cache")]
    Metadata {
        /// The source's error.
        source: BoxError,
    },
    /// The source gave the same metadata file name twice.
    #[error("the source gave metadata file {name:?} twice")]
    DuplicateMetadata {
        /// The name.
        name: String,
    },
}

/// Why one cached file failed offline verification.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The file the plan needs is not in the cache.
    Missing,
    /// The cached metadata does not sign this target.
    NotSigned,
    /// Wrong length.
    WrongLength {
        /// Signed length.
        expected: u64,
        /// Length on disk.
        actual: u64,
    },
    /// Same length, different content.
    WrongDigest {
        /// Signed sha256 (hex).
        expected: String,
        /// sha256 on disk (hex).
        actual: String,
    },
    /// The file could not be read.
    Unreadable(String),
    /// A symbolic link or other non-regular file where a cached file should be.
    NotRegular,
    /// Looking the target up in the cached metadata failed (e.g. a delegated role there does
    /// not verify).
    LookupFailed(String),
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::NotSigned => f.write_str("not signed by the cached metadata"),
            Self::WrongLength { expected, actual } => {
                write!(f, "{actual} bytes, signed length is {expected}")
            }
            Self::WrongDigest { expected, actual } => {
                write!(f, "sha256 {actual}, signed sha256 is {expected}")
            }
            Self::Unreadable(e) => write!(f, "unreadable: {e}"),
            Self::NotRegular => f.write_str("not a regular file (symbolic link?)"),
            Self::LookupFailed(e) => write!(f, "cannot look it up in the cached metadata: {e}"),
        }
    }
}

/// One cached file that failed offline verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// Cached file name (in the targets directory), e.g. `<sha256>.migrate_1.1_foo.lz4`.
    pub file: String,
    /// The target it stands for.
    pub target: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.file, self.target, self.kind)
    }
}

/// Offline verification of the cache failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The cached metadata did not verify (a changed byte in a metadata file lands here; the
    /// loader's error names the file or role).
    #[error("cached metadata in {} does not verify", dir.display())]
    Metadata {
        /// The metadata directory.
        dir: PathBuf,
        /// The loader's error.
        source: BoxError,
    },
    /// One or more cached target files are missing or changed; every one is listed.
    #[error("{} cached migration file(s) failed verification: {}", .0.len(), join_problems(.0))]
    Files(Vec<FileProblem>),
    /// The cached, verified manifest does not parse.
    #[error("cached manifest {} does not parse", path.display())]
    Manifest {
        /// Its path.
        path: PathBuf,
        /// The parser's error.
        source: BoxError,
    },
    /// The cached manifest has no migration chain for the requested versions.
    #[error("the cached manifest has no migration chain from {from} to {to}")]
    Chain {
        /// Data store version.
        from: Version,
        /// Version being booted.
        to: Version,
        /// The manifest crate's error.
        source: BoxError,
    },
    /// A cache directory could not be read.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

fn join_problems(problems: &[FileProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
