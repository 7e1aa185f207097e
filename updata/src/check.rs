//! The check before upload: the repository read exactly as a host reads it, with our own TUF
//! client ([`tuf::Repository`]) from a given trusted root, then every target the
//! manifest names fetched and verified, and every image decoded.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use url::Url;

use tuf::schema::{Envelope, Header};
use tuf::transport::{FileTransport, HttpOptions, HttpTransport, Transport};
use tuf::{Repository, RepositoryOptions};

use super::repo::{MANIFEST_TARGET, manifest_target_names};

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Everything that would stop a host from updating (empty: the repository is good).
    pub problems: Vec<String>,
    /// What was verified, and when each role expires.
    pub notes: Vec<String>,
    /// The root or targets expires within the horizon.
    pub warnings: Vec<String>,
}

/// The base URL of a repository given as a directory or a URL.
pub fn repository_url(location: &str) -> Result<Url, String> {
    if location.contains("://") {
        let mut url = Url::parse(location).map_err(|e| {
            format!(
                "{location}: not a URL: {e}",
                e = cli_support::error_chain(&e)
            )
        })?;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        return Ok(url);
    }
    let dir = std::fs::canonicalize(location)
        .map_err(|e| format!("{location}: {e}", e = cli_support::error_chain(&e)))?;
    Url::from_directory_path(&dir).map_err(|()| format!("{}: not a directory path", dir.display()))
}

/// Checks the repository at `location` (a directory, `file://`, `http://` or `https://` URL
/// of the folder holding `metadata/` and `targets/`) starting from `trusted_root`, at `now`.
pub fn check(
    location: &str,
    trusted_root: &Path,
    warn_within: Duration,
    now: DateTime<Utc>,
) -> CheckReport {
    let mut report = CheckReport::default();
    if let Err(p) = run(location, trusted_root, warn_within, now, &mut report) {
        report.problems.push(p);
    }
    report
}

/// A repository loaded as a host loads it, from a trusted root.
pub struct Opened {
    /// The verified repository.
    pub repo: Repository,
    /// What it was read through.
    pub transport: Arc<dyn Transport>,
    /// The folder holding `metadata/` and `targets/`.
    pub base: Url,
    /// Where the client keeps its metadata while the repository is in use.
    _datastore: tempfile::TempDir,
}

/// Loads the repository at `location` (as [`check`] takes it) with our TUF client from
/// `trusted_root`, at `now`: every role verified, as a host would.
pub fn open(location: &str, trusted_root: &Path, now: DateTime<Utc>) -> Result<Opened, String> {
    let base = repository_url(location)?;
    let join = |p: &str| {
        base.join(p)
            .map_err(|e| format!("{base}: {e}", e = cli_support::error_chain(&e)))
    };
    let transport: Arc<dyn Transport> = if base.scheme() == "file" {
        Arc::new(FileTransport)
    } else {
        Arc::new(
            HttpTransport::new(HttpOptions::default()).map_err(|e| cli_support::error_chain(&e))?,
        )
    };
    let datastore = tempfile::tempdir().map_err(|e| {
        format!(
            "creating a temporary directory: {e}",
            e = cli_support::error_chain(&e)
        )
    })?;
    let mut opts = RepositoryOptions::new(
        join("metadata/")?,
        join("targets/")?,
        datastore.path().join("metadata"),
    );
    trusted_root.clone_into(&mut opts.trusted_root);
    opts.reference_time = Some(now);
    let repo = Repository::load(opts, Arc::clone(&transport))
        .map_err(|e| format!("metadata: {e}", e = cli_support::error_chain(&e)))?;
    Ok(Opened {
        repo,
        transport,
        base,
        _datastore: datastore,
    })
}

fn run(
    location: &str,
    trusted_root: &Path,
    warn_within: Duration,
    now: DateTime<Utc>,
    report: &mut CheckReport,
) -> Result<(), String> {
    let Opened {
        repo,
        transport,
        base,
        _datastore,
    } = open(location, trusted_root, now)?;
    let join = |p: &str| {
        base.join(p)
            .map_err(|e| format!("{base}: {e}", e = cli_support::error_chain(&e)))
    };
    report.notes.push(format!(
        "metadata verified from {}: root version {}, timestamp {}, snapshot {}, targets {}",
        trusted_root.display(),
        repo.root_version(),
        repo.timestamp_version(),
        repo.snapshot_version(),
        repo.targets_version()
    ));
    for file in repo.metadata_bytes() {
        // Verified bytes, read with the client's own schema: only the header is decoded.
        let expires = serde_json::from_slice::<Envelope<Header>>(&file.bytes)
            .ok()
            .map(|e| e.signed.expires);
        if let Some(t) = expires {
            let line = format!(
                "{} expires at {} (in {} day(s))",
                file.name,
                t.format("%Y-%m-%dT%H:%M:%SZ"),
                (t - now).num_days()
            );
            // The short-lived roles are refreshed by a cron job; the long-lived ones need a person.
            let long_lived = file.name.ends_with("root.json") || file.name == "targets.json";
            if long_lived && t <= now + warn_within {
                report.warnings.push(line);
            } else {
                report.notes.push(line);
            }
        }
    }
    let manifest = read_manifest(&repo)?;
    for p in manifest.problems().iter().filter(|p| !p.is_note()) {
        report.problems.push(format!("manifest.json: {p}"));
    }
    for p in manifest.migration_gaps() {
        report.problems.push(format!("manifest.json: {p}"));
    }
    let images: BTreeSet<&str> = manifest
        .updates
        .iter()
        .flat_map(|u| u.images.named().map(|(_, n)| n))
        .collect();
    for name in manifest_target_names(&manifest) {
        match check_target(&repo, &name, images.contains(name.as_str())) {
            Ok(line) => report.notes.push(line),
            Err(p) => report.problems.push(p),
        }
    }
    check_chunk_stores(&repo, &manifest, &join("targets/")?, &transport, report);
    Ok(())
}

/// Chunks checked per index: every one up to this many, else this many spread evenly.
const CHUNK_SAMPLE: usize = 256;

/// For each chunk index a delta names: that it parses, and that its chunks (all, or an even
/// sample of [`CHUNK_SAMPLE`]) are in the store the delta names and hash to their ids, as a host
/// fetches them.
fn check_chunk_stores(
    repo: &Repository,
    manifest: &manifest::Manifest,
    targets: &Url,
    transport: &Arc<dyn Transport>,
    report: &mut CheckReport,
) {
    for u in &manifest.updates {
        let Some(delta) = &u.delta else { continue };
        let store = match targets.join(&delta.store) {
            Ok(url) => url,
            Err(e) => {
                report.problems.push(format!(
                    "{}: chunk store {:?}: {e}",
                    u.id(),
                    delta.store,
                    e = cli_support::error_chain(&e)
                ));
                continue;
            }
        };
        let fetcher = casync::ChunkFetcher::new(Arc::clone(transport), store.clone());
        for (image, name) in &delta.indexes {
            let index = match read_index(repo, name) {
                Ok(index) => index,
                Err(p) => {
                    report.problems.push(p);
                    continue;
                }
            };
            let step = index.len().div_ceil(CHUNK_SAMPLE).max(1);
            let mut buf = Vec::new();
            let mut checked = 0;
            let mut bad = Vec::new();
            for chunk in index.chunks().step_by(step) {
                checked += 1;
                if let Err(e) = fetcher.fetch(&chunk, &mut buf) {
                    bad.push(format!(
                        "chunk {} ({}): {e}",
                        chunk.number,
                        chunk.id,
                        e = cli_support::error_chain(&e)
                    ));
                }
            }
            if bad.is_empty() {
                report.notes.push(format!(
                    "{name}: {} chunks; {checked} checked in the store {store} for {image}",
                    index.len()
                ));
            } else {
                report.problems.push(format!(
                    "{name}: {} of {checked} chunks checked are not usable from the store {store} (hosts would download the full {image} image): {}",
                    bad.len(),
                    bad.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
                ));
            }
        }
    }
}

fn read_index(repo: &Repository, name: &str) -> Result<casync::BlobIndex, String> {
    let mut reader = repo
        .read_target(name)
        .map_err(|e| format!("{name}: {e}", e = cli_support::error_chain(&e)))?;
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}", e = cli_support::error_chain(&e)))?;
    reader
        .finish()
        .map_err(|e| format!("{name}: {e}", e = cli_support::error_chain(&e)))?;
    casync::BlobIndex::parse(&bytes).map_err(|e| {
        format!(
            "{name}: not a chunk index: {e}",
            e = cli_support::error_chain(&e)
        )
    })
}

fn read_manifest(repo: &Repository) -> Result<manifest::Manifest, String> {
    let mut reader = repo
        .read_target(MANIFEST_TARGET)
        .map_err(|e| format!("{MANIFEST_TARGET}: {e}", e = cli_support::error_chain(&e)))?;
    let mut bytes = Vec::new();
    (&mut reader)
        .take(manifest::MAX_MANIFEST_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{MANIFEST_TARGET}: {e}", e = cli_support::error_chain(&e)))?;
    reader
        .finish()
        .map_err(|e| format!("{MANIFEST_TARGET}: {e}", e = cli_support::error_chain(&e)))?;
    manifest::Manifest::from_slice(&bytes).map_err(|e| cli_support::error_chain(&e))
}

/// Fetches and verifies one target; an image is decoded as well.
fn check_target(repo: &Repository, name: &str, image: bool) -> Result<String, String> {
    let desc = repo
        .target(name)
        .map_err(|e| format!("{name}: {e}", e = cli_support::error_chain(&e)))?
        .ok_or_else(|| format!("{name}: named by the manifest but not a signed target"))?;
    let mut reader = repo
        .read_target(name)
        .map_err(|e| format!("{name}: {e}", e = cli_support::error_chain(&e)))?;
    if !image {
        std::io::copy(&mut reader, &mut std::io::sink())
            .map_err(|e| format!("{name}: {e}", e = cli_support::error_chain(&e)))?;
        reader
            .finish()
            .map_err(|e| format!("{name}: {e}", e = cli_support::error_chain(&e)))?;
        return Ok(format!("{name}: {} bytes, hashes match", desc.length));
    }
    let decoded = super::image::decoded_length(&mut reader).map_err(|e| {
        format!(
            "{name}: does not decode as an lz4 frame: {e}",
            e = cli_support::error_chain(&e)
        )
    })?;
    // Whatever the decoder left unread still counts towards the signed length and hashes.
    std::io::copy(&mut reader, &mut std::io::sink())
        .map_err(|e| format!("{name}: {e}", e = cli_support::error_chain(&e)))?;
    reader
        .finish()
        .map_err(|e| format!("{name}: {e}", e = cli_support::error_chain(&e)))?;
    match desc
        .custom
        .get("decompressed_length")
        .and_then(serde_json::Value::as_u64)
    {
        Some(declared) if declared != decoded => Err(format!(
            "{name}: decodes to {decoded} bytes, but its target declares {declared}"
        )),
        Some(_) => Ok(format!(
            "{name}: {} bytes, hashes match, decodes to its declared {decoded} bytes",
            desc.length
        )),
        None => Ok(format!(
            "{name}: {} bytes, hashes match, decodes to {decoded} bytes (no declared size)",
            desc.length
        )),
    }
}
