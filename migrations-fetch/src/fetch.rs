//! Fetching a plan into the cache: skip what is present, check space, stream-verify the rest,
//! write the metadata, prune what is stale.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cache::{
    COPY_BUF, CacheDirs, FileCheck, TEMP_PREFIX, check_file, list_files, parse_target_file_name,
    sync_dir, validate_metadata_name, write_atomic, write_bytes_atomic,
};
use crate::error::{CacheError, FetchError};
use crate::plan::{MigrationPlan, PlannedTarget};
use crate::source::{MetadataFile, MigrationSource};
use crate::space::{SpaceProbe, StatvfsProbe, on_disk};

/// How to fetch.
pub struct FetchOptions {
    /// Where free space is asked for (default: [`StatvfsProbe`]).
    pub space_probe: Box<dyn SpaceProbe + Send + Sync>,
    /// Remove cached files the plan does not need after a successful fetch (default: true).
    pub prune: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            space_probe: Box::new(StatvfsProbe),
            prune: true,
        }
    }
}

impl std::fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("prune", &self.prune)
            .finish_non_exhaustive()
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FetchReport {
    /// Targets downloaded now (names), in order.
    pub fetched: Vec<String>,
    /// Targets already cached with the right digest, not downloaded again.
    pub reused: Vec<String>,
    /// Bytes downloaded.
    pub bytes_fetched: u64,
    /// Metadata files written, in write order.
    pub metadata_files: Vec<String>,
    /// Stale files removed.
    pub pruned: Vec<PathBuf>,
}

/// Brings everything `plan` needs into the cache, verifiably, then prunes what is stale.
///
/// Order: list what is already present and correct (it is not downloaded again); check that the
/// rest fits the free space (error before the first write otherwise); download each missing
/// target into a temporary file while counting and hashing it against its signed length and
/// sha256, then `fsync` + rename + `fsync` the directory; then `manifest.json`; then the metadata
/// files (root chain first, `timestamp.json` last); then prune. An interrupted run leaves only
/// complete, verified files (and at worst a temporary file that the next run removes).
///
/// ```no_run
/// # fn demo(plan: &migrations_fetch::MigrationPlan, repo: &dyn migrations_fetch::MigrationSource)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// use migrations_fetch::{CacheDirs, FetchOptions, fetch};
/// let report = fetch(plan, repo, &CacheDirs::reference(), &FetchOptions::default())?;
/// println!("fetched {:?}, reused {:?}", report.fetched, report.reused);
/// # Ok(()) }
/// ```
pub fn fetch(
    plan: &MigrationPlan,
    source: &dyn MigrationSource,
    dirs: &CacheDirs,
    opts: &FetchOptions,
) -> Result<FetchReport, FetchError> {
    dirs.create()?;

    for target in plan.targets() {
        let signed = source
            .target_info(&target.name)
            .map_err(|source| FetchError::Lookup {
                name: target.name.clone(),
                source,
            })?;
        if signed != Some(target.info()) {
            return Err(FetchError::PlanMismatch {
                name: target.name.clone(),
            });
        }
    }
    let metadata = ordered_metadata(
        source
            .metadata_files()
            .map_err(|source| FetchError::Metadata { source })?,
    )?;

    // What is already there?
    let mut report = FetchReport::default();
    let mut missing: Vec<&PlannedTarget> = Vec::new();
    for target in plan.targets() {
        let path = dirs.targets.join(target.file_name());
        match check_file(&path, target.length, &target.info.sha256)
            .map_err(|source| CacheError::Read { path, source })?
        {
            FileCheck::Matches => report.reused.push(target.name.clone()),
            _ => missing.push(target),
        }
    }

    check_space(dirs, &missing, &metadata, opts.space_probe.as_ref())?;

    // Migrations first, the manifest last among targets (plan.targets() ends with it).
    for target in missing {
        let received = write_atomic(&dirs.targets, &target.file_name(), |file| {
            download(source, target, file, &dirs.targets)
        })?;
        report.bytes_fetched += received;
        report.fetched.push(target.name.clone());
    }

    for file in &metadata {
        write_bytes_atomic(&dirs.metadata, &file.name, &file.bytes)?;
        report.metadata_files.push(file.name.clone());
    }

    if opts.prune {
        let keep: Vec<String> = metadata.iter().map(|m| m.name.clone()).collect();
        report.pruned = prune(dirs, plan, &keep)?;
    }
    Ok(report)
}

/// Validates metadata names and orders them for writing: root chain (by version), then the
/// other versioned files, then `timestamp.json` last (it is what a reader starts from).
fn ordered_metadata(files: Vec<MetadataFile>) -> Result<Vec<MetadataFile>, FetchError> {
    let mut seen = BTreeSet::new();
    for f in &files {
        validate_metadata_name(&f.name)?;
        if !seen.insert(f.name.clone()) {
            return Err(FetchError::DuplicateMetadata {
                name: f.name.clone(),
            });
        }
    }
    let mut files = files;
    files.sort_by_key(|f| {
        let root_version = f
            .name
            .strip_suffix(".root.json")
            .and_then(|v| v.parse::<u64>().ok());
        match (root_version, f.name.as_str()) {
            (Some(v), _) => (0, v, String::new()),
            (None, "timestamp.json") => (2, 0, String::new()),
            (None, name) => (1, 0, name.to_owned()),
        }
    });
    Ok(files)
}

fn check_space(
    dirs: &CacheDirs,
    missing: &[&PlannedTarget],
    metadata: &[MetadataFile],
    probe: &dyn SpaceProbe,
) -> Result<(), FetchError> {
    let space = |dir: &Path| {
        probe.probe(dir).map_err(|source| FetchError::SpaceProbe {
            dir: dir.to_path_buf(),
            source,
        })
    };
    let targets_space = space(&dirs.targets)?;
    let metadata_space = space(&dirs.metadata)?;
    let target_bytes = missing.iter().fold(0u64, |acc, t| {
        acc.saturating_add(on_disk(t.length, targets_space.block_size))
    });
    // Metadata files are replaced by rename, so the new copy needs room while the old one exists.
    let metadata_bytes = metadata.iter().fold(0u64, |acc, m| {
        acc.saturating_add(on_disk(m.bytes.len() as u64, metadata_space.block_size))
    });
    let same_fs = same_device(&dirs.targets, &dirs.metadata);
    let mut checks = Vec::new();
    if same_fs {
        checks.push((
            &dirs.targets,
            targets_space.available,
            target_bytes.saturating_add(metadata_bytes),
            missing.len() + metadata.len(),
        ));
    } else {
        checks.push((
            &dirs.targets,
            targets_space.available,
            target_bytes,
            missing.len(),
        ));
        checks.push((
            &dirs.metadata,
            metadata_space.available,
            metadata_bytes,
            metadata.len(),
        ));
    }
    for (dir, available, needed, files) in checks {
        if needed > available {
            return Err(FetchError::NotEnoughSpace {
                dir: dir.clone(),
                needed,
                available,
                files,
            });
        }
    }
    Ok(())
}

fn same_device(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => true,
    }
}

/// Streams one target into `file`, counting and hashing; returns the byte count. Reads at most
/// one byte past the signed length.
fn download(
    source: &dyn MigrationSource,
    target: &PlannedTarget,
    file: &mut File,
    dir: &Path,
) -> Result<u64, FetchError> {
    let reader = source
        .open_target(&target.name)
        .map_err(|source| FetchError::Open {
            name: target.name.clone(),
            source,
        })?;
    let signed = target.length;
    let mut reader = reader.take(signed.saturating_add(1));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut received = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(FetchError::Read {
                    name: target.name.clone(),
                    received,
                    source,
                });
            }
        };
        let Some(chunk) = buf.get(..n) else {
            return Err(FetchError::Read {
                name: target.name.clone(),
                received,
                source: io::Error::other("the source reported more bytes than its buffer holds"),
            });
        };
        received += n as u64;
        if received > signed {
            return Err(FetchError::TooLong {
                name: target.name.clone(),
                signed,
            });
        }
        hasher.update(chunk);
        file.write_all(chunk).map_err(|source| CacheError::Write {
            path: dir.join(target.file_name()),
            source,
        })?;
    }
    if received < signed {
        return Err(FetchError::TooShort {
            name: target.name.clone(),
            signed,
            received,
        });
    }
    let digest: [u8; 32] = hasher.finalize().into();
    if digest != target.info.sha256 {
        return Err(FetchError::DigestMismatch {
            name: target.name.clone(),
            expected: target.sha256.clone(),
            actual: hex::encode(digest),
        });
    }
    Ok(received)
}

/// Removes cached files that `plan` and the metadata set `keep_metadata` do not need: target
/// files `<sha256>.<name>` that are not in the plan, versioned metadata files
/// (`<v>.snapshot.json`, `<v>.targets.json`, `<v>.<role>.json`) not in `keep_metadata`, and
/// temporary files of interrupted writes. Nothing else is touched: not the root chain (it only
/// grows), not unversioned names (they are replaced in place, never left stale), not other
/// files — so a metadata directory shared by mistake with a TUF client's own store keeps its
/// `root.json`. Returns the removed paths.
pub fn prune(
    dirs: &CacheDirs,
    plan: &MigrationPlan,
    keep_metadata: &[String],
) -> Result<Vec<PathBuf>, CacheError> {
    let keep_targets: HashSet<String> = plan.targets().map(PlannedTarget::file_name).collect();
    let keep_meta: BTreeSet<&str> = keep_metadata.iter().map(String::as_str).collect();
    let mut removed = Vec::new();

    let mut dirs_seen = Vec::new();
    for dir in [&dirs.targets, &dirs.metadata] {
        if dirs_seen.contains(&dir) {
            continue;
        }
        dirs_seen.push(dir);
        let mut removed_here = false;
        for name in list_files(dir)? {
            let stale = if name.starts_with(TEMP_PREFIX) {
                true
            } else if parse_target_file_name(&name).is_some() {
                !keep_targets.contains(&name)
            } else {
                is_versioned_metadata(&name) && !keep_meta.contains(name.as_str())
            };
            // Target files live in the targets dir and metadata in the metadata dir; leave a
            // kind of file alone in the other directory unless both are the same directory.
            let ours = name.starts_with(TEMP_PREFIX)
                || dirs.targets == dirs.metadata
                || (parse_target_file_name(&name).is_some() == (dir == &dirs.targets));
            if stale && ours {
                let path = dir.join(&name);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(CacheError::Remove { path, source }),
                }
                removed_here = true;
                removed.push(path);
            }
        }
        if removed_here {
            sync_dir(dir)?;
        }
    }
    Ok(removed)
}

/// `<v>.<name>.json` with a decimal `v`, other than the root chain's `<v>.root.json`.
// Metadata names are exact, lowercase `.json` in the reference layout.
#[allow(clippy::case_sensitive_file_extension_comparisons)]
fn is_versioned_metadata(name: &str) -> bool {
    let Some((version, rest)) = name.split_once('.') else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && rest.ends_with(".json")
        && rest.len() > ".json".len()
        && rest != "root.json"
}

#[cfg(test)]
mod tests {
    use super::is_versioned_metadata;

    #[test]
    fn only_versioned_non_root_metadata_is_prunable() {
        for name in [
            "7.snapshot.json",
            "12.targets.json",
            "3.migrations.json",
            "3.a%2Fb.json",
        ] {
            assert!(is_versioned_metadata(name), "{name}");
        }
        for name in [
            "1.root.json",
            "root.json",
            "timestamp.json",
            "snapshot.json",
            "targets.json",
            "x.snapshot.json",
            "7..json",
            "7.json",
            ".json",
            "notes.txt",
        ] {
            assert!(!is_versioned_metadata(name), "{name}");
        }
    }
}
