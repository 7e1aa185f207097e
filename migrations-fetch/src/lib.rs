//! Fetch the data migrations a version jump needs into a cache that can be verified offline;
//! prune what is stale.
//!
//! A version jump may need settings migrations that run at the next boot. This crate:
//!
//! 1. **plans** the jump ([`MigrationPlan::new`]): the manifest's migration chain from the
//!    running version to the target version, each migration with its signed length and sha256.
//!    A missing link is an error naming where the chain stops, before anything is written;
//! 2. **fetches** it ([`fetch`]) through the [`MigrationSource`] trait (implemented by `updog`
//!    over its TUF client, so this crate does not depend on `updog`): checks free space first,
//!    skips files already cached with the right digest, verifies length and sha256 while
//!    streaming, writes each file atomically (temporary file, `fsync`, rename, `fsync` of the
//!    directory), caches the verified TUF metadata, and prunes what the plan no longer needs;
//! 3. **verifies offline** at boot ([`verify_offline`]) through the [`OfflineLoader`] trait
//!    (metadata loaded with expiry ignored): every cached file is checked, and each one that was
//!    changed or is missing is reported by name.
//!
//! The on-disk layout is the one the reference's boot-time migrator reads; see [`cache`].

pub mod cache;
mod chain;
mod error;
mod fetch;
mod plan;
mod source;
mod space;
mod verify;

pub use cache::{CacheDirs, REFERENCE_METADATA_DIR, REFERENCE_TARGETS_DIR};
pub use error::{
    CacheError, FetchError, FileNameError, FileProblem, PlanError, ProblemKind, VerifyError,
};
pub use fetch::{FetchOptions, FetchReport, fetch, prune};
pub use plan::{MANIFEST_TARGET, MigrationPlan, PlannedHop, PlannedTarget};
/// The version type of plans and chains, re-exported so callers need not depend on `semver`.
pub use semver::Version;
pub use source::{
    BoxError, MetadataFile, MigrationSource, OfflineLoader, TargetInfo, TargetLookup,
};
pub use space::{FixedSpace, Space, SpaceProbe, StatvfsProbe};
pub use verify::{VerifiedCache, VerifiedMigration, verify_offline, verify_with};
