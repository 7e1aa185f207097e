//! The only place this crate calls the manifest crate: chain search and parsing.

use semver::Version;

use crate::plan::PlannedHop;
use crate::source::BoxError;

/// The manifest's migration chain from `from` to `to`, as planned hops.
pub(crate) fn chain(
    manifest: &manifest::Manifest,
    from: &Version,
    to: &Version,
) -> Result<Vec<PlannedHop>, BoxError> {
    let hops = manifest.migration_chain(from, to)?;
    Ok(hops
        .into_iter()
        .map(|hop| PlannedHop {
            from: hop.from,
            to: hop.to,
            targets: hop.targets,
        })
        .collect())
}

/// Parses manifest bytes.
pub(crate) fn parse(bytes: &[u8]) -> Result<manifest::Manifest, BoxError> {
    Ok(manifest::Manifest::from_slice(bytes)?)
}
