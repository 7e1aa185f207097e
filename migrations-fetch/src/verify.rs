//! Offline verification at boot: load the cached metadata (expiry ignored), check every cached
//! target file against it, and resolve the migrations to run from the cached manifest.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use semver::Version;
use sha2::{Digest, Sha256};

use crate::cache::{
    CacheDirs, FileCheck, check_file, list_files, parse_target_file_name, read_bounded,
    target_file_name,
};
use crate::error::{FileProblem, ProblemKind, VerifyError};
use crate::plan::{MANIFEST_TARGET, PlannedHop};
use crate::source::{OfflineLoader, TargetInfo, TargetLookup};

/// A migration file that matched its signed length and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedMigration {
    /// TUF target name.
    pub name: String,
    /// Its cached file.
    pub path: PathBuf,
    /// What the cached metadata signs about it.
    pub info: TargetInfo,
}

impl VerifiedMigration {
    /// Reads the file again, bounded by the signed length, and returns its bytes only if they
    /// still match the signed digest. Use this to run the migration, so that a file changed after
    /// verification is not run.
    pub fn read_verified(&self) -> Result<Vec<u8>, VerifyError> {
        let problem = |kind| {
            VerifyError::Files(vec![FileProblem {
                file: file_name_of(&self.path),
                target: self.name.clone(),
                kind,
            }])
        };
        let bytes = read_bounded(&self.path, self.info.length)
            .map_err(|e| problem(ProblemKind::Unreadable(e.to_string())))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if bytes.len() as u64 != self.info.length {
            return Err(problem(ProblemKind::WrongLength {
                expected: self.info.length,
                actual: bytes.len() as u64,
            }));
        }
        if digest != self.info.sha256 {
            return Err(problem(ProblemKind::WrongDigest {
                expected: self.info.sha256_hex(),
                actual: hex::encode(digest),
            }));
        }
        Ok(bytes)
    }
}

/// The outcome of a successful offline verification.
#[derive(Debug, Clone)]
pub struct VerifiedCache {
    /// The cached manifest, verified and parsed.
    pub manifest: manifest::Manifest,
    /// The chain from the data store's version to the booted version.
    pub hops: Vec<PlannedHop>,
    /// The migrations to run, in chain order, each verified.
    pub migrations: Vec<VerifiedMigration>,
    /// Every cached target file that was checked (the chain's and any other signed one).
    pub checked_files: Vec<String>,
    /// Cached files that the metadata does not sign at this digest (left-overs); not used.
    pub extraneous: Vec<String>,
}

impl VerifiedCache {
    /// The verified migrations' target names, in run order (as
    /// [`crate::MigrationPlan::migration_names`] lists them before the fetch).
    pub fn migration_names(&self) -> Vec<&str> {
        self.migrations.iter().map(|m| m.name.as_str()).collect()
    }
}

/// Verifies the cache with metadata loaded through `loader` (expiry ignored), then resolves
/// the migrations from `from` (the data store's version) to `to` (the version being booted).
///
/// Every problem is collected and reported by cached file name, not just the first.
///
/// ```no_run
/// # fn demo(loader: &dyn migrations_fetch::OfflineLoader) -> Result<(), Box<dyn std::error::Error>> {
/// use migrations_fetch::{CacheDirs, verify_offline};
/// let from = semver::Version::new(1, 0, 0);
/// let to = semver::Version::new(1, 2, 0);
/// let verified = verify_offline(&CacheDirs::reference(), loader, &from, &to)?;
/// for m in &verified.migrations {
///     let _bytes = m.read_verified()?; // decompress and run
/// }
/// # Ok(()) }
/// ```
pub fn verify_offline(
    dirs: &CacheDirs,
    loader: &dyn OfflineLoader,
    from: &Version,
    to: &Version,
) -> Result<VerifiedCache, VerifyError> {
    let lookup = loader
        .load_offline(&dirs.metadata)
        .map_err(|source| VerifyError::Metadata {
            dir: dirs.metadata.clone(),
            source,
        })?;
    verify_with(dirs, lookup.as_ref(), from, to)
}

/// Like [`verify_offline`], with metadata the caller already loaded and verified.
pub fn verify_with(
    dirs: &CacheDirs,
    lookup: &dyn TargetLookup,
    from: &Version,
    to: &Version,
) -> Result<VerifiedCache, VerifyError> {
    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    let mut extraneous = Vec::new();

    // Every cached target file the metadata signs at this digest must match it.
    for file in list_files(&dirs.targets)? {
        let Some((digest, name)) = parse_target_file_name(&file) else {
            continue;
        };
        // A failed lookup is reported below if the chain needs this target.
        match lookup.target_info(name) {
            Ok(Some(info)) if info.sha256 == digest => {
                if let Some(kind) = check(&dirs.targets.join(&file), &info) {
                    problems.push(FileProblem {
                        file: file.clone(),
                        target: name.to_owned(),
                        kind,
                    });
                }
                checked.insert(file);
            }
            _ => extraneous.push(file),
        }
    }

    // The manifest.
    let manifest_info = match lookup.target_info(MANIFEST_TARGET) {
        Ok(Some(info)) => info,
        found => {
            problems.push(FileProblem {
                file: MANIFEST_TARGET.to_owned(),
                target: MANIFEST_TARGET.to_owned(),
                kind: lookup_problem(found),
            });
            return Err(VerifyError::Files(problems));
        }
    };
    let manifest_file = target_file_name(&manifest_info.sha256, MANIFEST_TARGET);
    let manifest_path = dirs.targets.join(&manifest_file);
    let manifest_problem = |kind| FileProblem {
        file: manifest_file.clone(),
        target: MANIFEST_TARGET.to_owned(),
        kind,
    };
    if !checked.contains(&manifest_file) {
        problems.push(manifest_problem(ProblemKind::Missing));
    }
    // Without a good manifest the chain is unknown: report what was found so far.
    if problems.iter().any(|p| p.file == manifest_file) {
        return Err(VerifyError::Files(problems));
    }
    // Hash the very bytes that are parsed.
    let bytes = read_bounded(&manifest_path, manifest_info.length).map_err(|e| {
        VerifyError::Files(vec![manifest_problem(ProblemKind::Unreadable(
            e.to_string(),
        ))])
    })?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    if digest != manifest_info.sha256 || bytes.len() as u64 != manifest_info.length {
        return Err(VerifyError::Files(vec![manifest_problem(
            ProblemKind::WrongDigest {
                expected: manifest_info.sha256_hex(),
                actual: hex::encode(digest),
            },
        )]));
    }
    let manifest = crate::chain::parse(&bytes).map_err(|source| VerifyError::Manifest {
        path: manifest_path.clone(),
        source,
    })?;
    let hops = crate::chain::chain(&manifest, from, to).map_err(|source| VerifyError::Chain {
        from: from.clone(),
        to: to.clone(),
        source,
    })?;

    // The chain's migrations.
    let mut migrations = Vec::new();
    let mut seen = BTreeSet::new();
    for name in hops.iter().flat_map(|h| h.targets.iter()) {
        if !seen.insert(name.as_str()) {
            continue;
        }
        let info = match lookup.target_info(name) {
            Ok(Some(info)) => info,
            found => {
                problems.push(FileProblem {
                    file: name.clone(),
                    target: name.clone(),
                    kind: lookup_problem(found),
                });
                continue;
            }
        };
        let file = target_file_name(&info.sha256, name);
        let path = dirs.targets.join(&file);
        if problems.iter().any(|p| p.file == file) {
            continue;
        }
        if !checked.contains(&file) {
            problems.push(FileProblem {
                file,
                target: name.clone(),
                kind: ProblemKind::Missing,
            });
            continue;
        }
        migrations.push(VerifiedMigration {
            name: name.clone(),
            path,
            info,
        });
    }
    if !problems.is_empty() {
        return Err(VerifyError::Files(problems));
    }
    Ok(VerifiedCache {
        manifest,
        hops,
        migrations,
        checked_files: checked.into_iter().collect(),
        extraneous,
    })
}

fn check(path: &Path, info: &TargetInfo) -> Option<ProblemKind> {
    match check_file(path, info.length, &info.sha256) {
        Ok(FileCheck::Matches) => None,
        Ok(FileCheck::Missing) => Some(ProblemKind::Missing),
        Ok(FileCheck::WrongLength { actual }) => Some(ProblemKind::WrongLength {
            expected: info.length,
            actual,
        }),
        Ok(FileCheck::WrongDigest { actual }) => Some(ProblemKind::WrongDigest {
            expected: info.sha256_hex(),
            actual: hex::encode(actual),
        }),
        Ok(FileCheck::NotRegular) => Some(ProblemKind::NotRegular),
        Err(e) => Some(ProblemKind::Unreadable(io_msg(&e))),
    }
}

fn io_msg(e: &io::Error) -> String {
    e.to_string()
}

fn lookup_problem(found: Result<Option<TargetInfo>, crate::BoxError>) -> ProblemKind {
    match found {
        Err(e) => ProblemKind::LookupFailed(e.to_string()),
        Ok(_) => ProblemKind::NotSigned,
    }
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
