//! The `migrations_fetch` traits over the TUF client, so that `updog update` can cache the
//! migrations a version jump needs and a boot-time step can verify them offline.
//!
//! - [`TufSource`] (a [`Repository`]) implements [`MigrationSource`]: signed target descriptions, verifying target
//!   readers, and the verified metadata renamed into the reference migrator's layout (with
//!   consistent snapshots: `N.root.json`, `timestamp.json`, `<v>.snapshot.json`,
//!   `<v>.targets.json`, `<v>.<role>.json`).
//! - [`TufOfflineLoader`] implements [`OfflineLoader`]: it maps that layout back to the names
//!   [`Repository::load_offline`] reads and verifies it from the shipped trusted root, with
//!   expiry ignored.
//!
//! ```no_run
//! use migrations_fetch::{CacheDirs, FetchOptions, MigrationPlan, fetch, verify_offline};
//! use updog::migrations::{TufOfflineLoader, TufSource};
//! # fn demo(repo: &updog::tuf::Repository, manifest: &manifest::Manifest)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! let (from, to) = ("1.0.0".parse()?, "1.2.0".parse()?);
//! // Before the inactive partition set is touched:
//! let repo = &TufSource(repo);
//! let plan = MigrationPlan::new(manifest, &from, &to, repo)?;
//! let dirs = CacheDirs::reference();
//! fetch(&plan, repo, &dirs, &FetchOptions::default())?;
//! // At the next boot, offline:
//! let loader = TufOfflineLoader::new("/usr/share/updog/root.json");
//! let verified = verify_offline(&dirs, &loader, &from, &to)?;
//! for migration in &verified.migrations {
//!     let _lz4_bytes = migration.read_verified()?;
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use migrations_fetch::{
    BoxError, MetadataFile, MigrationSource, OfflineLoader, TargetInfo, TargetLookup,
};

use crate::tuf::{Repository, TargetDescription};

/// What the pipeline and the migrations cache check of a signed target: its length and sha256.
pub trait SignedInfo {
    /// The signed length and sha256; `None` when no well-formed sha256 is listed.
    fn info(&self) -> Option<TargetInfo>;
}

impl SignedInfo for TargetDescription {
    fn info(&self) -> Option<TargetInfo> {
        Some(TargetInfo {
            length: self.length,
            sha256: self.sha256()?,
        })
    }
}

/// A verified [`Repository`] as the migrations source: the `migrations_fetch` traits over the
/// TUF client (a wrapper because both the traits and the client are other crates').
#[derive(Debug, Clone, Copy)]
pub struct TufSource<'a>(pub &'a Repository);

impl TargetLookup for TufSource<'_> {
    fn target_info(&self, name: &str) -> Result<Option<TargetInfo>, BoxError> {
        let Some(desc) = self.0.target(name)? else {
            return Ok(None);
        };
        let info = desc
            .info()
            .ok_or_else(|| format!("target {name:?} lists no sha256 hash"))?;
        Ok(Some(info))
    }
}

impl MigrationSource for TufSource<'_> {
    fn open_target(&self, name: &str) -> Result<Box<dyn Read + Send>, BoxError> {
        Ok(Box::new(self.0.read_target(name)?))
    }

    fn metadata_files(&self) -> Result<Vec<MetadataFile>, BoxError> {
        // With consistent snapshots, the verified versions name the files
        // (`<v>.snapshot.json`, `<v>.<role>.json`).
        let consistent = self.0.consistent_snapshot();
        Ok(self
            .0
            .metadata_bytes()
            .into_iter()
            .map(|f| MetadataFile {
                name: if consistent {
                    f.consistent_name()
                } else {
                    f.name
                },
                bytes: f.bytes,
            })
            .collect())
    }
}

/// `N.root.json` with a decimal `N`.
fn is_root_file(name: &str) -> bool {
    name.strip_suffix(".root.json")
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// `signed.meta[file].version` of a timestamp or snapshot envelope (unverified, see above).
fn meta_version(bytes: &[u8], file: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("signed")?
        .get("meta")?
        .get(file)?
        .get("version")?
        .as_u64()
}

/// Loads the cached metadata offline from the trusted root shipped with the OS.
#[derive(Debug, Clone)]
pub struct TufOfflineLoader {
    /// The trusted `root.json` (the reference ships it as `/usr/share/updog/root.json`).
    pub trusted_root: PathBuf,
}

impl TufOfflineLoader {
    /// A loader that starts trusting from `trusted_root`.
    pub fn new(trusted_root: impl Into<PathBuf>) -> Self {
        Self {
            trusted_root: trusted_root.into(),
        }
    }
}

/// The most metadata bytes read to pick file names (never more than the client's own caps).
const MAX_NAME_PROBE: u64 = 16 * 1024 * 1024;

/// An offline repository and the directory of links it reads delegated roles from.
struct OfflineRepo {
    repo: Repository,
    /// Which cached file each loader name is, for error messages.
    names: String,
    _links: tempfile::TempDir,
}

impl TargetLookup for OfflineRepo {
    fn target_info(&self, name: &str) -> Result<Option<TargetInfo>, BoxError> {
        // Delegated roles are verified on demand: name the cached files in their errors too.
        TufSource(&self.repo)
            .target_info(name)
            .map_err(|e| with_names(&*e, &self.names).into())
    }
}

/// `"snapshot.json is 7.snapshot.json, ..."` for the files whose cached name differs.
fn describe_names(mapping: &BTreeMap<String, String>) -> String {
    mapping
        .iter()
        .filter(|(offline, cached)| offline != cached)
        .map(|(offline, cached)| format!("{offline} is {cached}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `e` and its causes, then the cached files' names when any differ.
fn with_names(e: &(dyn std::error::Error + 'static), names: &str) -> String {
    let chain = crate::advice::error_chain(e);
    if names.is_empty() {
        chain
    } else {
        format!("{chain} (cached files: {names})")
    }
}

impl OfflineLoader for TufOfflineLoader {
    fn load_offline(&self, metadata_dir: &Path) -> Result<Box<dyn TargetLookup>, BoxError> {
        let links = tempfile::tempdir()?;
        let mapping = offline_names(metadata_dir)?;
        for (offline, cached) in &mapping {
            std::os::unix::fs::symlink(metadata_dir.join(cached), links.path().join(offline))?;
        }
        let names = describe_names(&mapping);
        let repo = Repository::load_offline(links.path(), &self.trusted_root)
            .map_err(|e| with_names(&e, &names))?;
        Ok(Box::new(OfflineRepo {
            repo,
            names,
            _links: links,
        }))
    }
}

/// Maps the cached reference layout to the names `Repository::load_offline` reads:
/// `offline name -> cached name`.
// Metadata names are exact, lowercase `.json` in the reference layout.
#[allow(clippy::case_sensitive_file_extension_comparisons)]
fn offline_names(dir: &Path) -> Result<BTreeMap<String, String>, BoxError> {
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
    }
    let read = |name: &str| -> Option<Vec<u8>> {
        let f = fs::File::open(dir.join(name)).ok()?;
        let mut buf = Vec::new();
        f.take(MAX_NAME_PROBE).read_to_end(&mut buf).ok()?;
        Some(buf)
    };
    let mut map = BTreeMap::new();
    let mut versioned: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for name in &names {
        if is_root_file(name) || name == "timestamp.json" || !name.ends_with(".json") {
            map.insert(name.clone(), name.clone());
            continue;
        }
        match name.split_once('.') {
            Some((v, rest)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(v) = v.parse::<u64>() {
                    versioned
                        .entry(rest.to_owned())
                        .or_default()
                        .push((v, name.clone()));
                }
            }
            // Plain names (no consistent snapshots) are already what the loader reads.
            _ => {
                map.insert(name.clone(), name.clone());
            }
        }
    }
    // The snapshot and targets versions the (still unverified) timestamp and snapshot name;
    // falling back to the highest version present.
    let pick = |role_file: &str, wanted: Option<u64>| -> Option<String> {
        let candidates = versioned.get(role_file)?;
        wanted
            .and_then(|w| candidates.iter().find(|(v, _)| *v == w))
            .or_else(|| candidates.iter().max_by_key(|(v, _)| *v))
            .map(|(_, n)| n.clone())
    };
    let timestamp = read("timestamp.json");
    let snapshot_version = timestamp
        .as_deref()
        .and_then(|t| meta_version(t, "snapshot.json"));
    let snapshot_name = pick("snapshot.json", snapshot_version);
    let snapshot = snapshot_name.as_deref().and_then(read);
    for role_file in versioned.keys() {
        let wanted = if role_file == "snapshot.json" {
            snapshot_version
        } else {
            snapshot.as_deref().and_then(|s| meta_version(s, role_file))
        };
        if let Some(cached) = pick(role_file, wanted) {
            map.entry(role_file.clone()).or_insert(cached);
        }
    }
    Ok(map)
}
