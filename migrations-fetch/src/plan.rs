//! The plan: which migration targets a version jump needs, with their signed lengths and digests.

use std::collections::HashSet;

use semver::Version;
use serde::Serialize;

use crate::cache::{target_file_name, validate_target_name};
use crate::error::PlanError;
use crate::source::{TargetInfo, TargetLookup};

/// The TUF target name of the manifest. It is cached with the migrations so that the boot-time
/// step can find the chain on its own.
pub use manifest::MANIFEST_TARGET;

/// One target to cache, with what the repository signs about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedTarget {
    /// TUF target name.
    pub name: String,
    /// Signed length in bytes (compressed).
    pub length: u64,
    /// Signed sha256 (hex).
    pub sha256: String,
    #[serde(skip)]
    pub(crate) info: TargetInfo,
}

impl PlannedTarget {
    fn new(name: &str, info: TargetInfo) -> Self {
        Self {
            name: name.to_owned(),
            length: info.length,
            sha256: info.sha256_hex(),
            info,
        }
    }

    /// The signed description.
    pub fn info(&self) -> TargetInfo {
        self.info
    }

    /// The cache file name, `<sha256>.<name>`.
    pub fn file_name(&self) -> String {
        target_file_name(&self.info.sha256, &self.name)
    }
}

/// One hop of the chain: the manifest's `(from, to)` entry and its migrations, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedHop {
    /// Hop start.
    pub from: Version,
    /// Hop end.
    pub to: Version,
    /// Migration target names of this hop, in the manifest's order.
    pub targets: Vec<String>,
}

/// Which migrations a jump from `from` to `to` needs and what they weigh.
///
/// Serializes to JSON for `updog check-update --json`:
/// `{"from", "to", "hops": [{"from", "to", "targets"}], "migrations": [{"name", "length",
/// "sha256"}], "manifest": {..}, "total_bytes"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationPlan {
    /// Running version.
    pub from: Version,
    /// Target version.
    pub to: Version,
    /// The chain, in the order the manifest crate returned it.
    pub hops: Vec<PlannedHop>,
    /// Every distinct migration target of the chain, in first-use order.
    pub migrations: Vec<PlannedTarget>,
    /// `manifest.json`, always cached (even without migrations) so the boot-time step can verify
    /// that nothing is needed.
    pub manifest: PlannedTarget,
    /// Sum of the signed lengths of everything above.
    pub total_bytes: u64,
}

impl MigrationPlan {
    /// Plans the jump from `from` to `to` with the manifest's migration-chain search, looking up
    /// every target's signed length and digest. A missing link is an error naming where the chain
    /// stops; nothing is written.
    ///
    /// ```no_run
    /// # fn demo(manifest: &manifest::Manifest, repo: &dyn migrations_fetch::TargetLookup)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// use migrations_fetch::MigrationPlan;
    /// let from = semver::Version::new(1, 0, 0);
    /// let to = semver::Version::new(1, 2, 0);
    /// let plan = MigrationPlan::new(manifest, &from, &to, repo)?;
    /// for m in &plan.migrations {
    ///     println!("{} ({} bytes)", m.name, m.length);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn new(
        manifest: &manifest::Manifest,
        from: &Version,
        to: &Version,
        lookup: &dyn TargetLookup,
    ) -> Result<Self, PlanError> {
        let hops = crate::chain::chain(manifest, from, to).map_err(|source| PlanError::Chain {
            from: from.clone(),
            to: to.clone(),
            source,
        })?;
        Self::from_hops(from, to, hops, lookup)
    }

    /// Plans from an already computed chain (for callers with their own chain search).
    pub fn from_hops(
        from: &Version,
        to: &Version,
        hops: Vec<PlannedHop>,
        lookup: &dyn TargetLookup,
    ) -> Result<Self, PlanError> {
        let find = |name: &str| {
            lookup
                .target_info(name)
                .map_err(|source| PlanError::Lookup {
                    name: name.to_owned(),
                    source,
                })
        };
        let manifest_info = find(MANIFEST_TARGET)?.ok_or_else(|| PlanError::ManifestNotSigned {
            name: MANIFEST_TARGET.to_owned(),
        })?;
        let manifest = PlannedTarget::new(MANIFEST_TARGET, manifest_info);
        let mut seen = HashSet::new();
        let mut migrations = Vec::new();
        for hop in &hops {
            for name in &hop.targets {
                validate_target_name(name)?;
                if !seen.insert(name.as_str()) {
                    continue;
                }
                let info = find(name)?.ok_or_else(|| PlanError::NotSigned {
                    name: name.clone(),
                    from: hop.from.clone(),
                    to: hop.to.clone(),
                })?;
                migrations.push(PlannedTarget::new(name, info));
            }
        }
        let total_bytes = migrations
            .iter()
            .chain(std::iter::once(&manifest))
            .fold(0u64, |acc, t| acc.saturating_add(t.length));
        Ok(Self {
            from: from.clone(),
            to: to.clone(),
            hops,
            migrations,
            manifest,
            total_bytes,
        })
    }

    /// Every file the cache must hold for this plan: the migrations, then the manifest.
    pub fn targets(&self) -> impl Iterator<Item = &PlannedTarget> {
        self.migrations
            .iter()
            .chain(std::iter::once(&self.manifest))
    }

    /// The migration target names in run order (a name used by two hops appears once).
    pub fn migration_names(&self) -> Vec<&str> {
        self.migrations.iter().map(|m| m.name.as_str()).collect()
    }

    /// True when the jump needs no migration (only the manifest is cached).
    pub fn has_no_migrations(&self) -> bool {
        self.migrations.is_empty()
    }
}

/// One line for `updog check-update`: `migrations 1.0.0 -> 1.3.0 via 1.1.0: a.lz4, c.lz4
/// (75100 bytes with manifest.json)`, or `no migrations from 1.0.0 to 1.0.1`.
impl std::fmt::Display for MigrationPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.migrations.is_empty() {
            return write!(f, "no migrations from {} to {}", self.from, self.to);
        }
        write!(f, "migrations {} -> {}", self.from, self.to)?;
        let via: Vec<String> = self
            .hops
            .iter()
            .skip(1)
            .map(|h| h.from.to_string())
            .collect();
        if !via.is_empty() {
            write!(f, " via {}", via.join(", "))?;
        }
        write!(
            f,
            ": {} ({} bytes with {})",
            self.migration_names().join(", "),
            self.total_bytes,
            MANIFEST_TARGET
        )
    }
}
