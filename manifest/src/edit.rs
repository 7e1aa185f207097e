//! Edits a publisher makes to a manifest (the logic behind `updata`).

use semver::Version;
use waves::WaveSchedule;

use crate::{Error, Images, Manifest, Migrations, Update, parse_migration_key};

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
                    variant: update.variant,
                    arch: update.arch,
                    version: update.version,
                });
            }
            None => self.updates.push(update),
        }
        Ok(())
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
                variant: variant.to_owned(),
                arch: arch.to_owned(),
                version: version.clone(),
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
                variant: variant.to_owned(),
                arch: arch.to_owned(),
                version: version.clone(),
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
