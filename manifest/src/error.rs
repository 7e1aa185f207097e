use std::path::PathBuf;

use semver::Version;

/// Everything that can go wrong in this crate; each variant names what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The manifest is not valid JSON of the expected shape. The message names the field, wave
    /// key or migration key, with line and column.
    #[error("manifest.json is not valid")]
    Parse {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest is larger than [`crate::MAX_MANIFEST_LEN`].
    #[error("manifest.json is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A migration key that is not `(X, Y)` with semver versions.
    #[error("migration key {key:?} is not \"(X, Y)\" with semantic versions X and Y: {reason}")]
    BadMigrationKey {
        /// The key (shortened if long).
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The migration chain has a gap (boxed: three versions would make every `Result` large).
    #[error(transparent)]
    MissingMigration(Box<MigrationGap>),
    /// A version lock that is neither `latest` nor a version.
    #[error("version lock {value:?} is neither \"latest\" nor a version such as 1.2.3 or v1.2.3")]
    BadVersionLock {
        /// The rejected text.
        value: String,
    },
    /// Adding an update that already exists.
    #[error("the manifest already has an update for {update}")]
    DuplicateUpdate {
        /// The update.
        update: crate::UpdateId,
    },
    /// Editing an update that does not exist.
    #[error("the manifest has no update for {update}")]
    NoSuchUpdate {
        /// The update.
        update: crate::UpdateId,
    },
    /// A `Release.toml` that is not valid or has a bad `[migrations]` table.
    #[error("Release.toml: {reason}")]
    ReleaseToml {
        /// What was wrong.
        reason: String,
    },
    /// A wave policy or schedule problem.
    #[error(transparent)]
    Waves(#[from] waves::Error),
    /// A wave policy file that is not valid.
    #[error("wave policy {path}")]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: waves::Error,
    },
    /// The manifest has problems (all of them are listed).
    #[error(transparent)]
    Invalid(#[from] crate::ValidationError),
    /// Creating a file that already exists.
    #[error("{path} exists (use --force to overwrite it)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// `set-waves` without a source of waves.
    #[error("no waves given: use --wave-file FILE, --default-waves or --clear")]
    NoWaveSource,
    /// `set-migrations` without a manifest.
    #[error("no manifest given: name it as the argument or with -t/--to")]
    NoManifestGiven,
    /// Reading or writing a file.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Where a migration chain breaks: no step leaves `stuck_at` towards `to`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no migration path from {from} to {to}: the chain stops at {stuck_at} (no migration from {stuck_at} to a version up to {to})"
)]
pub struct MigrationGap {
    /// Where the chain was to start.
    pub from: Version,
    /// Where it was to end.
    pub to: Version,
    /// The last version reached.
    pub stuck_at: Version,
}
