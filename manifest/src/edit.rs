//! Edits a publisher makes to a manifest (the logic behind `updata`): adding an update with the
//! `max_version` rule, removing one, waves, migrations from a `Release.toml` (replace or merge),
//! `max_version` filters, and the wave report that `updata waves` prints.

use chrono::{DateTime, Utc};
use semver::Version;
use serde::Serialize;
use waves::sim::{Fleet, FleetPoint, Formula, simulate, simulate_schedule};
use waves::time::format_time;
use waves::{Seed, WaveSchedule};

use crate::{Error, Images, Manifest, Migrations, Update, UpdateId, parse_migration_key};

/// The image target names `updata add-update` uses when none are given:
/// `{variant}-{arch}-{version}-boot.ext4.lz4`, `...-root.ext4.lz4`, `...-root.verity.lz4`.
pub fn default_image_names(variant: &str, arch: &str, version: &Version) -> Images {
    let base = format!("{variant}-{arch}-{version}");
    Images {
        boot: format!("{base}-boot.ext4.lz4"),
        root: format!("{base}-root.ext4.lz4"),
        hash: format!("{base}-root.verity.lz4"),
    }
}

impl Manifest {
    /// Adds an update. With `replace`, an existing update with the same variant, arch and
    /// version is replaced; otherwise that is [`Error::DuplicateUpdate`].
    pub fn add_update(&mut self, update: Update, replace: bool) -> Result<(), Error> {
        match self.find_update_mut(&update.variant, &update.arch, &update.version) {
            Some(existing) if replace => *existing = update,
            Some(_) => {
                return Err(Error::DuplicateUpdate {
                    update: update.id(),
                });
            }
            None => self.updates.push(update),
        }
        Ok(())
    }

    /// Adds `update` and applies the `max_version` rule of `updata add-update` to every update
    /// of the same variant and arch: `max_version` becomes `explicit_max` when given, otherwise
    /// the higher of the current highest `max_version` and the new version (so the new update is
    /// offered, and a release that was pulled back stays pulled back below a newer bound).
    ///
    /// ```
    /// use manifest::{Manifest, edit::default_image_names};
    /// let mut m = Manifest::default();
    /// let v: semver::Version = "1.1.0".parse()?;
    /// let update = manifest::Update {
    ///     variant: "aws-dev".into(), arch: "x86_64".into(), version: v.clone(),
    ///     max_version: v.clone(), waves: Default::default(),
    ///     images: default_image_names("aws-dev", "x86_64", &v), delta: None,
    /// };
    /// let added = m.add_update_with_max(update, None, false)?;
    /// assert_eq!(added.max_version, v);
    /// assert_eq!(added.updates_changed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_update_with_max(
        &mut self,
        mut update: Update,
        explicit_max: Option<Version>,
        replace: bool,
    ) -> Result<AddedUpdate, Error> {
        let max = explicit_max.unwrap_or_else(|| {
            self.current_max_version(&update.variant, &update.arch)
                .filter(|cur| **cur > update.version)
                .cloned()
                .unwrap_or_else(|| update.version.clone())
        });
        update.max_version = max.clone();
        let (variant, arch) = (update.variant.clone(), update.arch.clone());
        self.add_update(update, replace)?;
        let updates_changed = self.set_max_version(Some(&variant), Some(&arch), &max);
        Ok(AddedUpdate {
            max_version: max,
            updates_changed,
        })
    }

    /// Sets the migrations read from a `Release.toml`: all of them replaced, or merged in (a
    /// pair listed in both takes the new list). Returns how many the manifest has afterwards.
    pub fn set_migrations(&mut self, migrations: Migrations, mode: MigrationsMode) -> usize {
        match mode {
            MigrationsMode::Replace => self.migrations = migrations,
            MigrationsMode::Merge => self.migrations.extend(migrations),
        }
        self.migrations.len()
    }

    /// Removes the update with this variant, arch and version (every copy, if duplicated) and
    /// returns the first.
    pub fn remove_update(
        &mut self,
        variant: &str,
        arch: &str,
        version: &Version,
    ) -> Result<Update, Error> {
        let matches = |u: &Update| u.variant == variant && u.arch == arch && &u.version == version;
        let Some(pos) = self.updates.iter().position(matches) else {
            return Err(Error::NoSuchUpdate {
                update: UpdateId::new(variant, arch, version),
            });
        };
        let removed = self.updates.remove(pos);
        self.updates.retain(|u| !matches(u));
        Ok(removed)
    }

    /// Replaces the wave schedule of one update.
    pub fn set_waves(
        &mut self,
        variant: &str,
        arch: &str,
        version: &Version,
        waves: WaveSchedule,
    ) -> Result<(), Error> {
        let update = self
            .find_update_mut(variant, arch, version)
            .ok_or_else(|| Error::NoSuchUpdate {
                update: UpdateId::new(variant, arch, version),
            })?;
        update.waves = waves;
        Ok(())
    }

    /// Sets `max_version` on every update matching the optional variant and arch filters;
    /// returns how many were changed.
    pub fn set_max_version(
        &mut self,
        variant: Option<&str>,
        arch: Option<&str>,
        max_version: &Version,
    ) -> usize {
        let mut n = 0;
        for u in &mut self.updates {
            if variant.is_none_or(|v| v == u.variant) && arch.is_none_or(|a| a == u.arch) {
                u.max_version = max_version.clone();
                n += 1;
            }
        }
        n
    }

    /// The highest `max_version` among updates of this variant and arch.
    pub fn current_max_version(&self, variant: &str, arch: &str) -> Option<&Version> {
        self.updates
            .iter()
            .filter(|u| u.variant == variant && u.arch == arch)
            .map(|u| &u.max_version)
            .max()
    }
}

/// What [`Manifest::add_update_with_max`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedUpdate {
    /// The `max_version` now on every update of the variant and arch.
    pub max_version: Version,
    /// How many updates carry it (the new one included).
    pub updates_changed: usize,
}

/// How [`Manifest::set_migrations`] combines the new migrations with the manifest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationsMode {
    /// The manifest's migrations become exactly the new ones (the reference's behaviour).
    Replace,
    /// The new ones are added; a version pair listed in both takes the new list.
    Merge,
}

/// One wave of a [`WavesReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveEntry {
    /// The seed bound.
    pub bound: u32,
    /// When it opens (RFC 3339).
    pub start: String,
}

/// When one host may take the update, in a [`WavesReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeedReport {
    /// The host's seed.
    pub seed: u32,
    /// When it becomes eligible (RFC 3339), `None` when there are no waves.
    pub ready_at: Option<String>,
    /// Whether it is eligible at the report's time.
    pub ready_now: bool,
}

/// What to put in a [`WavesReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavesQuery {
    /// Also say when a host with this seed may update.
    pub seed: Option<Seed>,
    /// Size of the simulated fleet (seeds spread evenly).
    pub hosts: u64,
    /// Points in the simulated timeline.
    pub steps: usize,
    /// Also simulate the reference system's eligibility formula.
    pub compare_reference: bool,
}

/// An update's wave schedule and how a fleet follows it: what `updata waves` shows, and its
/// `--json` output exactly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WavesReport {
    /// Variant.
    pub variant: String,
    /// Architecture.
    pub arch: String,
    /// Version.
    pub version: String,
    /// The waves, by rising bound.
    pub waves: Vec<WaveEntry>,
    /// The eligible share of the fleet over time.
    pub fleet: Vec<FleetPoint>,
    /// The same under the reference's formula, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_reference: Option<Vec<FleetPoint>>,
    /// One host's eligibility, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedReport>,
}

impl WavesReport {
    /// Simulates `update`'s schedule as `query` asks, at time `now`.
    pub fn new(update: &Update, query: &WavesQuery, now: DateTime<Utc>) -> Result<Self, Error> {
        let schedule = &update.waves;
        let fleet = Fleet::uniform(query.hosts);
        let points = simulate_schedule(schedule, &fleet, query.steps)?;
        let fleet_reference = match (query.compare_reference, points.first(), points.last()) {
            (true, Some(first), Some(last)) if first.at < last.at => Some(simulate(
                schedule,
                &fleet,
                first.at,
                last.at,
                query.steps,
                Formula::Reference,
            )?),
            _ => None,
        };
        let seed = query.seed.map(|s| SeedReport {
            seed: s.get(),
            ready_at: schedule.ready_at(s).map(format_time),
            ready_now: schedule.is_ready(s, now),
        });
        Ok(Self {
            variant: update.variant.clone(),
            arch: update.arch.clone(),
            version: update.version.to_string(),
            waves: schedule
                .waves()
                .map(|w| WaveEntry {
                    bound: w.bound,
                    start: format_time(w.start),
                })
                .collect(),
            fleet: points,
            fleet_reference,
            seed,
        })
    }
}

/// Reads the `[migrations]` table of a `Release.toml`:
///
/// ```toml
/// version = "1.20.0"
/// [migrations]
/// "(1.19.0, 1.20.0)" = ["migrate_v1.20.0_foo.lz4"]
/// ```
///
/// ```
/// let m = manifest::edit::release_migrations(
///     "version = \"1.1.0\"\n[migrations]\n\"(1.0.0, 1.1.0)\" = [\"a.lz4\"]\n",
/// )?;
/// assert_eq!(m.len(), 1);
/// # Ok::<(), manifest::Error>(())
/// ```
pub fn release_migrations(text: &str) -> Result<Migrations, Error> {
    let bad = |reason: String| Error::ReleaseToml { reason };
    let doc: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let table = match doc.get("migrations") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err(bad("[migrations] is not a table".to_owned())),
        None => return Err(bad("there is no [migrations] table".to_owned())),
    };
    let mut out = Migrations::new();
    for (key, value) in table {
        let pair = parse_migration_key(key)?;
        let toml::Value::Array(items) = value else {
            return Err(bad(format!("migrations.{key:?} is not a list of names")));
        };
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            let toml::Value::String(s) = item else {
                return Err(bad(format!(
                    "migrations.{key:?} has an entry that is not a string"
                )));
            };
            names.push(s.clone());
        }
        if out.insert(pair, names).is_some() {
            return Err(bad(format!(
                "migrations.{key:?} names a version pair that is already listed"
            )));
        }
    }
    Ok(out)
}
