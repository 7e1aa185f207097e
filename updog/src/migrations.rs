//! The glue between the TUF client and `migrations-fetch`: a verified repository is the
//! [`migrations_fetch::MigrationSource`] the migrations come from, and cached metadata loaded
//! offline is the [`migrations_fetch::OfflineLoader`] a boot-time step verifies them with.

use std::io::Read;
use std::path::Path;

use migrations_fetch::{
    BoxError, MetadataFile, MigrationSource, OfflineLoader, TargetInfo, TargetLookup,
};

use crate::tuf::Repository;

/// A loaded, verified repository seen as the source of migration targets.
#[derive(Debug, Clone, Copy)]
pub struct RepositorySource<'a>(pub &'a Repository);

impl TargetLookup for RepositorySource<'_> {
    fn target_info(&self, name: &str) -> Option<TargetInfo> {
        // A lookup failure (a delegated role that does not verify) means "not signed" here;
        // the fetch then stops with the target named.
        let desc = self.0.target(name).ok().flatten()?;
        Some(TargetInfo {
            length: desc.length,
            sha256: desc.sha256()?,
        })
    }
}

impl MigrationSource for RepositorySource<'_> {
    fn open_target(&self, name: &str) -> Result<Box<dyn Read + Send>, BoxError> {
        // migrations-fetch counts and hashes every byte against `target_info` itself.
        let (_, reader) = self.0.fetch_target_unverified(name)?;
        Ok(reader)
    }

    fn metadata_files(&self) -> Result<Vec<MetadataFile>, BoxError> {
        Ok(self
            .0
            .metadata_bytes()
            .into_iter()
            .map(|f| MetadataFile {
                name: f.name,
                bytes: f.bytes,
            })
            .collect())
    }
}

/// Loads cached metadata with expiry ignored, for verifying cached migrations at boot, starting
/// from the shipped root.
#[derive(Debug, Clone)]
pub struct OfflineRepositoryLoader {
    /// The shipped root metadata.
    pub trusted_root: std::path::PathBuf,
}

struct OfflineLookup(Repository);

impl TargetLookup for OfflineLookup {
    fn target_info(&self, name: &str) -> Option<TargetInfo> {
        RepositorySource(&self.0).target_info(name)
    }
}

impl OfflineLoader for OfflineRepositoryLoader {
    fn load_offline(&self, metadata_dir: &Path) -> Result<Box<dyn TargetLookup>, BoxError> {
        Ok(Box::new(OfflineLookup(Repository::load_offline(
            metadata_dir,
            &self.trusted_root,
        )?)))
    }
}
