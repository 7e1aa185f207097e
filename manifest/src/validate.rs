use std::collections::HashSet;
use std::fmt;

use semver::Version;

use crate::{Manifest, UpdateId};

/// One problem found by [`Manifest::problems`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// Two updates share variant, arch and version.
    DuplicateUpdate {
        /// The update.
        update: UpdateId,
    },
    /// An update above its own `max_version` (never offered).
    VersionAboveMax {
        /// The update.
        update: UpdateId,
        /// Its `max_version`.
        max_version: Version,
    },
    /// Wave start times that do not rise with their bounds.
    WavesNotRising {
        /// The update.
        update: UpdateId,
        /// The offending pair of waves.
        detail: waves::NotRising,
    },
    /// An empty image target name.
    EmptyImageName {
        /// The update.
        update: UpdateId,
        /// `boot`, `root` or `hash`.
        image: &'static str,
    },
    /// An empty variant or arch.
    EmptyField {
        /// Index of the update in `updates` (0-based).
        index: usize,
        /// `variant` or `arch`.
        field: &'static str,
    },
    /// A migration key whose `from` is not below its `to`.
    MigrationNotForward {
        /// The key's from.
        from: Version,
        /// The key's to.
        to: Version,
    },
    /// An empty migration target name.
    EmptyMigrationName {
        /// The key's from.
        from: Version,
        /// The key's to.
        to: Version,
    },
    /// Two listed versions of one variant and arch with no migration path between them: a host
    /// running the lower one refuses the higher (and a host brought back refuses the lower).
    MissingMigrationPath {
        /// The update hosts would refuse (variant, arch, the higher version).
        update: UpdateId,
        /// The version the hosts run.
        from: Version,
        /// Where the chain of migration keys stops.
        stuck_at: Version,
        /// The next listed version above `stuck_at`: the key to add is `(stuck_at, next)`.
        next: Version,
    },
}

impl Problem {
    /// Whether this is a normal state worth a note rather than an error: an update above its
    /// own `max_version` is how a bad release is pulled back.
    pub fn is_note(&self) -> bool {
        matches!(self, Problem::VersionAboveMax { .. })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::DuplicateUpdate { update } => {
                write!(f, "update {update} appears more than once")
            }
            Problem::VersionAboveMax {
                update,
                max_version,
            } => write!(
                f,
                "update {update} is above its max_version {max_version}, so it is not offered (pulled back)"
            ),
            Problem::WavesNotRising { update, detail } => write!(f, "update {update}: {detail}"),
            Problem::EmptyImageName { update, image } => {
                write!(f, "update {update}: the {image} image name is empty")
            }
            Problem::EmptyField { index, field } => {
                write!(f, "update #{} has an empty {field}", index + 1)
            }
            Problem::MigrationNotForward { from, to } => write!(
                f,
                "migration key ({from}, {to}): the first version must be below the second"
            ),
            Problem::EmptyMigrationName { from, to } => {
                write!(
                    f,
                    "migration key ({from}, {to}) lists an empty migration name"
                )
            }
            Problem::MissingMigrationPath {
                update,
                from,
                stuck_at,
                next,
            } => write!(
                f,
                "hosts running {from} refuse update {update}: no migration path (the chain stops at {stuck_at}); add \"({stuck_at}, {next})\" = [] (or the migrations it needs) under [migrations] in Release.toml and run `updata manifest set-migrations`"
            ),
        }
    }
}

/// A manifest with problems: all of them, in manifest order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the manifest has {} problem(s):", self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl Manifest {
    /// Every problem beyond parsing: duplicate (variant, arch, version), `version >
    /// max_version`, wave times not rising with bounds, empty image names, empty variant or
    /// arch, backwards migration keys, empty migration names. (Gaps in the migration chain are
    /// [`Manifest::migration_gaps`]: a manifest being edited has them until its migrations are
    /// set.)
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (index, u) in self.updates.iter().enumerate() {
            for (field, value) in [("variant", &u.variant), ("arch", &u.arch)] {
                if value.is_empty() {
                    out.push(Problem::EmptyField { index, field });
                }
            }
            if !seen.insert((&u.variant, &u.arch, &u.version)) {
                out.push(Problem::DuplicateUpdate { update: u.id() });
            }
            if u.version > u.max_version {
                out.push(Problem::VersionAboveMax {
                    update: u.id(),
                    max_version: u.max_version.clone(),
                });
            }
            for detail in u.waves.problems() {
                out.push(Problem::WavesNotRising {
                    update: u.id(),
                    detail,
                });
            }
            for (image, name) in u.images.named() {
                if name.trim().is_empty() {
                    out.push(Problem::EmptyImageName {
                        update: u.id(),
                        image,
                    });
                }
            }
        }
        for ((from, to), targets) in &self.migrations {
            if from >= to {
                out.push(Problem::MigrationNotForward {
                    from: from.clone(),
                    to: to.clone(),
                });
            }
            if targets.iter().any(|t| t.trim().is_empty()) {
                out.push(Problem::EmptyMigrationName {
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
        out
    }

    /// `Ok` when [`Manifest::problems`] finds nothing but notes ([`Problem::is_note`]);
    /// otherwise all problems that are not notes.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let problems: Vec<Problem> = self
            .problems()
            .into_iter()
            .filter(|p| !p.is_note())
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError { problems })
        }
    }
}

impl Manifest {
    /// What hosts would refuse for want of migrations: for each listed version of a variant and
    /// arch, the lowest higher listed version that [`Manifest::migration_chain`] cannot reach
    /// from it, as [`Problem::MissingMigrationPath`] (a downgrade walks the same keys, so one
    /// direction covers both).
    ///
    /// ```
    /// let m = manifest::Manifest::from_slice(br#"{"updates":[
    ///   {"variant":"v","arch":"x86_64","version":"1.0.0","max_version":"1.1.0",
    ///    "waves":{},"images":{"boot":"b1","root":"r1","hash":"h1"}},
    ///   {"variant":"v","arch":"x86_64","version":"1.1.0","max_version":"1.1.0",
    ///    "waves":{},"images":{"boot":"b2","root":"r2","hash":"h2"}}],
    ///   "migrations":{}}"#)?;
    /// assert_eq!(m.migration_gaps().len(), 1);
    /// # Ok::<(), manifest::Error>(())
    /// ```
    pub fn migration_gaps(&self) -> Vec<Problem> {
        let mut versions: std::collections::BTreeMap<(&str, &str), Vec<&Version>> =
            std::collections::BTreeMap::new();
        for u in &self.updates {
            versions
                .entry((u.variant.as_str(), u.arch.as_str()))
                .or_default()
                .push(&u.version);
        }
        let mut out = Vec::new();
        for ((variant, arch), mut listed) in versions {
            listed.sort();
            listed.dedup();
            for (i, from) in listed.iter().enumerate() {
                let gap =
                    listed[i + 1..]
                        .iter()
                        .find_map(|to| match self.migration_chain(from, to) {
                            Err(crate::Error::MissingMigration(gap)) => Some((*to, gap.stuck_at)),
                            _ => None,
                        });
                if let Some((to, stuck_at)) = gap {
                    let next = listed
                        .iter()
                        .find(|v| ***v > stuck_at)
                        .map_or_else(|| to.clone(), |v| (*v).clone());
                    out.push(Problem::MissingMigrationPath {
                        update: UpdateId::new(variant, arch, to),
                        from: (*from).clone(),
                        stuck_at,
                        next,
                    });
                }
            }
        }
        out
    }
}
