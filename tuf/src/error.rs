//! Errors of the TUF client. Each names the role (or target), the version where known, and the
//! check that failed.

use super::role::{KeyId, Role, Signer};
use crate::transport::TransportError;
use chrono::{DateTime, Utc};
use std::path::PathBuf;

/// Why loading a repository or reading a target failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport could not open a file.
    #[error("downloading {what}")]
    Transport {
        /// The role or target being fetched.
        what: String,
        /// The transport's error.
        #[source]
        source: Box<TransportError>,
    },
    /// Reading a downloaded or stored file failed midway.
    #[error("reading {what}")]
    Read {
        /// The role or target being read.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A metadata file is larger than its limit: the length another role lists for it, else
    /// the configured maximum (endless-data attack, mix-and-match, or misconfiguration).
    #[error("{role} metadata is larger than {limit} bytes (its listed length or size limit)")]
    TooLarge {
        /// The role.
        role: Role,
        /// The limit in bytes.
        limit: u64,
    },
    /// A metadata file is not valid JSON or lacks required fields.
    #[error("{role} metadata does not parse")]
    Parse {
        /// The role.
        role: Role,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The `_type` field is not the expected one.
    #[error("{role} metadata has _type {found:?}, expected {expected:?}")]
    WrongType {
        /// The role.
        role: Role,
        /// The expected `_type`.
        expected: String,
        /// The `_type` found.
        found: String,
    },
    /// The metadata is structurally invalid.
    #[error("{role} metadata is invalid: {reason}")]
    Invalid {
        /// The role.
        role: Role,
        /// What is wrong.
        reason: String,
    },
    /// Not enough valid signatures (arbitrary software attack check).
    #[error(
        "{role} version {version}: {valid} valid signature(s) from keys of {signer}, {threshold} required{}",
        .stored_root.as_ref().map(ToString::to_string).unwrap_or_default()
    )]
    Threshold {
        /// The role being verified.
        role: Role,
        /// Its version.
        version: u64,
        /// Whose keys were checked (root version 3, role A's delegation).
        signer: Signer,
        /// Distinct keys with a valid signature.
        valid: u64,
        /// The required threshold.
        threshold: u64,
        /// When the keys were those of the root stored in the trusted-metadata directory
        /// ([`crate::Repository::load`]): which file that is and where it came from.
        stored_root: Option<Box<StoredRootNote>>,
    },
    /// Two entries of `signatures` carry the same key id, which the specification forbids.
    #[error(
        "{role} version {version}: key id {keyid} appears more than once in its signatures (key ids must be unique)"
    )]
    DuplicateSignature {
        /// The role.
        role: Role,
        /// Its version.
        version: u64,
        /// The repeated key id.
        keyid: KeyId,
    },
    /// The metadata expired before the update started (freeze attack check).
    #[error("{role} version {version} expired at {expires} (update started at {started})")]
    Expired {
        /// The role.
        role: Role,
        /// Its version.
        version: u64,
        /// Its expiry.
        expires: DateTime<Utc>,
        /// The fixed update start time.
        started: DateTime<Utc>,
    },
    /// A version went backwards (rollback attack check).
    #[error("{role}: version {new} is lower than the trusted version {trusted} ({check})")]
    Rollback {
        /// The role (or, for versions listed in snapshot, the listed role).
        role: Role,
        /// The trusted version.
        trusted: u64,
        /// The new version.
        new: u64,
        /// Which check (spec step).
        check: &'static str,
    },
    /// A role listed in the trusted snapshot vanished from the new snapshot.
    #[error("snapshot version {version} no longer lists {file}, which the trusted snapshot did")]
    RoleVanished {
        /// The new snapshot version.
        version: u64,
        /// The metadata file name that vanished.
        file: String,
    },
    /// The version does not match the version another role lists for it (mix-and-match check),
    /// or a root file's version does not match its file name.
    #[error("{role}: version {found} does not match version {expected} listed in {listed_in}")]
    VersionMismatch {
        /// The role.
        role: Role,
        /// The version found in the file.
        found: u64,
        /// The version expected.
        expected: u64,
        /// Where the expectation comes from.
        listed_in: String,
    },
    /// A hash does not match the hash another role lists for it.
    #[error("{what}: {algorithm} hash does not match the one listed in {listed_in}")]
    HashMismatch {
        /// The role or target.
        what: String,
        /// Where the expectation comes from.
        listed_in: String,
        /// The hash algorithm.
        algorithm: String,
    },
    /// The length does not match the length another role lists for it.
    #[error("{what}: length {actual} does not match length {expected} listed in {listed_in}")]
    LengthMismatch {
        /// The role or target.
        what: String,
        /// Where the expectation comes from.
        listed_in: String,
        /// The listed length.
        expected: u64,
        /// The length received.
        actual: u64,
    },
    /// No hash algorithm we support (sha256, sha512) is listed.
    #[error("{what}: none of the listed hash algorithms is supported (sha256, sha512)")]
    NoSupportedHash {
        /// The role or target.
        what: String,
    },
    /// A role needed for the search is not listed in snapshot.
    #[error("{file} is not listed in the trusted snapshot")]
    NotInSnapshot {
        /// The metadata file name.
        file: String,
    },
    /// The trusted metadata directory or target cache could not be written or read.
    #[error("{path}")]
    Store {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No trusted root could be loaded.
    #[error("no trusted root: {path}")]
    NoTrustedRoot {
        /// Where it was looked for.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A root trusted out of band (the shipped root, or the `root.json` stored in the trusted
    /// metadata directory) does not parse or is not signed by its own threshold.
    #[error("trusted root {path}")]
    BadTrustedRoot {
        /// The file it was read from.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<Error>,
    },
    /// No signed metadata describes this target.
    #[error("target {0:?} is not described by any trusted targets metadata")]
    TargetNotFound(String),
    /// A target name that cannot be turned into a URL or file name safely.
    #[error("target name {0:?} is not usable (empty, '.' or '..' path segment)")]
    BadTargetName(String),
    /// A base URL cannot hold paths.
    #[error("base URL {0} cannot be used as a directory")]
    BadBaseUrl(url::Url),
    /// An offline repository has no transport to download targets with.
    #[error("repository was loaded offline; it cannot download {0:?}")]
    Offline(String),
}

/// The root stored in the trusted-metadata directory that a signature check used, and where it
/// came from. Once stored, that root is what every later run trusts, whatever the shipped root
/// says; only an operator re-seeds trust (see the README, "Re-seeding trust").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRootNote {
    /// The stored root file (`metadata_dir/root.json`).
    pub path: PathBuf,
    /// Its version.
    pub version: u64,
    /// Where it came from ("seeded from PATH (version N) at TIME"), or "origin not recorded".
    pub origin: String,
}

impl std::fmt::Display for StoredRootNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "; the trusted root is {} (version {}, {}): check that metadata_base_url points at \
             the repository this host trusts; if that repository's root keys were replaced on \
             purpose, re-seed trust deliberately (move the metadata directory aside so that the \
             next run seeds it from trusted_root, see the README); updog never does that by \
             itself",
            self.path.display(),
            self.version,
            self.origin
        )
    }
}
