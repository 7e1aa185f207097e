use std::ops::Bound;

use semver::Version;

use crate::{Error, Manifest, MigrationGap};

/// One step of a migration chain: run `targets` (TUF target names, in order) to move the
/// settings from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationHop {
    /// The version the step starts from.
    pub from: Version,
    /// The version the step reaches.
    pub to: Version,
    /// The migrations to run, in order.
    pub targets: Vec<String>,
}

impl Manifest {
    /// The migration steps from version `from` to version `to`.
    ///
    /// Upgrades walk forward from `from`: at each step, of the manifest's `(current, x)` entries
    /// with `current < x <= to`, the one with the highest `x` is taken. A gap is
    /// [`Error::MissingMigration`] ([`MigrationGap`]) naming where the chain stops. A downgrade returns the upgrade
    /// chain from `to` to `from` reversed: the hops in reverse order, each with `from` and `to`
    /// swapped and its targets in reverse order (so the flattened target list is the upgrade's
    /// list reversed, as the reference system runs it). `from == to` is an empty chain.
    ///
    /// ```
    /// let m = manifest::Manifest::from_slice(br#"{"updates":[],"migrations":{
    ///   "(1.0.0, 1.1.0)":["a.lz4","b.lz4"], "(1.1.0, 1.2.0)":[], "(1.0.0, 1.0.1)":["x.lz4"]}}"#)?;
    /// let v = |s: &str| s.parse::<semver::Version>().unwrap();
    /// let up = m.migration_chain(&v("1.0.0"), &v("1.2.0"))?;
    /// assert_eq!(up.len(), 2);
    /// assert_eq!(up[0].targets, ["a.lz4", "b.lz4"]);
    /// let down = m.migration_chain(&v("1.2.0"), &v("1.0.0"))?;
    /// assert_eq!((&down[1].from, &down[1].to), (&v("1.1.0"), &v("1.0.0")));
    /// assert_eq!(down[1].targets, ["b.lz4", "a.lz4"]);
    /// assert!(m.migration_chain(&v("1.0.1"), &v("1.2.0")).is_err());
    /// # Ok::<(), manifest::Error>(())
    /// ```
    pub fn migration_chain(
        &self,
        from: &Version,
        to: &Version,
    ) -> Result<Vec<MigrationHop>, Error> {
        if from > to {
            let mut chain = self.migration_chain(to, from).map_err(|e| match e {
                Error::MissingMigration(gap) => Error::MissingMigration(Box::new(MigrationGap {
                    from: from.clone(),
                    to: to.clone(),
                    stuck_at: gap.stuck_at,
                })),
                other => other,
            })?;
            chain.reverse();
            for hop in &mut chain {
                std::mem::swap(&mut hop.from, &mut hop.to);
                hop.targets.reverse();
            }
            return Ok(chain);
        }
        let mut chain = Vec::new();
        let mut current = from.clone();
        while &current < to {
            // Keys (current, t) with current < t <= to, sorted by t; take the highest. Every
            // step strictly rises, so this ends within migrations.len() steps. The range is
            // never empty-and-reversed because current < to.
            let next = self
                .migrations
                .range((
                    Bound::Excluded((current.clone(), current.clone())),
                    Bound::Included((current.clone(), to.clone())),
                ))
                .next_back();
            let Some(((_, t), targets)) = next else {
                return Err(Error::MissingMigration(Box::new(MigrationGap {
                    from: from.clone(),
                    to: to.clone(),
                    stuck_at: current,
                })));
            };
            chain.push(MigrationHop {
                from: current.clone(),
                to: t.clone(),
                targets: targets.clone(),
            });
            current = t.clone();
        }
        Ok(chain)
    }

    /// The flattened list of migration targets from `from` to `to` (see
    /// [`Manifest::migration_chain`]).
    pub fn migration_targets(&self, from: &Version, to: &Version) -> Result<Vec<String>, Error> {
        Ok(self
            .migration_chain(from, to)?
            .into_iter()
            .flat_map(|h| h.targets)
            .collect())
    }
}
