//! Errors of the publishing library: each names the file, role or key concerned and, where
//! there is one, what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong while publishing. Every operation checks its inputs before it
/// writes, so an error means nothing was changed, except [`Error::Io`] during a write, which
/// leaves the repository as it was before the interrupted file (see the [crate] docs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A key file that would be overwritten.
    #[error("{path} exists: a key file is never overwritten (move it away first)")]
    KeyExists {
        /// The file.
        path: PathBuf,
    },
    /// A key file that is not a key we can use.
    #[error("{path}: {reason}")]
    BadKey {
        /// The file (or key source).
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Signing failed in the key source.
    #[error("signing with {key}: {reason}")]
    Sign {
        /// The key source.
        key: String,
        /// What failed.
        reason: String,
    },
    /// A key in a PKCS#11 token that cannot be used: the module, the token, the PIN or the
    /// object (the message says which).
    #[error("{key}: {reason}")]
    Pkcs11 {
        /// The key's URI (without module path and PIN source).
        key: String,
        /// What failed.
        reason: String,
    },
    /// A metadata file that does not parse or breaks a rule.
    #[error("{path}: {reason}")]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A role name that is not one of the four top-level roles.
    #[error("{0:?} is not a top-level role (root, targets, snapshot or timestamp)")]
    NoSuchRole(String),
    /// A key given for signing that the root does not list for that purpose.
    #[error("key {keyid} ({key}) is not a {role} key of {what}")]
    KeyNotInRoot {
        /// The key source.
        key: String,
        /// Its key id.
        keyid: tuf::KeyId,
        /// The role it was to sign.
        role: String,
        /// The root (version and file) it was looked up in.
        what: String,
    },
    /// Too few valid signatures.
    #[error(
        "{role}: {valid} valid signature(s) of the {threshold} that {what} requires; sign with more of its {role} keys ({keyids})"
    )]
    ThresholdNotMet {
        /// The role.
        role: tuf::Role,
        /// Valid signatures counted.
        valid: u64,
        /// Threshold required.
        threshold: u64,
        /// The root the threshold comes from.
        what: String,
        /// The key ids that may sign.
        keyids: String,
    },
    /// An expiry given for new metadata is not in the future: every client would refuse it.
    #[error(
        "refusing to sign {role} metadata that expires at {expires}, which is not after now ({now}): give an expiry in the future"
    )]
    ExpiresInThePast {
        /// The role (`targets`, `snapshot`, `timestamp`).
        role: &'static str,
        /// The expiry given.
        expires: String,
        /// Now.
        now: String,
    },
    /// The root has expired or would expire before the metadata it governs.
    #[error(
        "root version {version} expired at {expires}: rotate it (updata root set-expires, then rotate-root)"
    )]
    RootExpired {
        /// Its version.
        version: u64,
        /// When.
        expires: String,
    },
    /// The manifest names targets that would not be in the repository.
    #[error("the manifest names target(s) that no file provides: {}", names.join(", "))]
    MissingTargets {
        /// The names.
        names: Vec<String>,
    },
    /// A target that cannot be published as given.
    #[error("target {name}: {reason}")]
    BadTarget {
        /// Its name.
        name: String,
        /// What was wrong.
        reason: String,
    },
    /// The manifest does not parse or validate.
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    /// A publishing step that does not apply to this repository's state.
    #[error("{0}")]
    State(String),
    /// A time that does not parse.
    #[error(transparent)]
    Time(#[from] waves::Error),
}

pub(crate) fn io(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
