//! The two small traits through which this crate talks to a TUF repository, so that it does not
//! depend on `updog`: [`MigrationSource`] (online, at fetch time) and [`OfflineLoader`] (at boot
//! time, over the cached metadata).

use std::fmt;
use std::io::Read;
use std::path::Path;

/// A boxed error from a trait implementation (the TUF client's own error type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the signed targets metadata says about one target: its length and sha256, both over the
/// stored (lz4-compressed) bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetInfo {
    /// Signed length in bytes.
    pub length: u64,
    /// Signed sha256 digest.
    pub sha256: [u8; 32],
}

impl TargetInfo {
    /// From a length and a hex sha256 (as in TUF `targets.json`); `None` if the hex is not 32
    /// bytes.
    pub fn from_hex(length: u64, sha256_hex: &str) -> Option<Self> {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(sha256_hex, &mut sha256).ok()?;
        Some(Self { length, sha256 })
    }

    /// The digest as lowercase hex, as used in consistent-snapshot file names.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

impl fmt::Debug for TargetInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetInfo")
            .field("length", &self.length)
            .field("sha256", &self.sha256_hex())
            .finish()
    }
}

/// Looks up signed target descriptions. Implemented by a loaded, verified TUF repository.
pub trait TargetLookup {
    /// The signed length and sha256 of `name`; `Ok(None)` if no trusted role signs it; an error
    /// if the lookup itself failed (a delegated role could not be fetched or verified, or the
    /// target lists no sha256).
    fn target_info(&self, name: &str) -> Result<Option<TargetInfo>, BoxError>;
}

/// A verified metadata file to cache, named as in the reference layout: `1.root.json` ..
/// `N.root.json`, `timestamp.json`, `<v>.snapshot.json`, `<v>.targets.json`, `<v>.<role>.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataFile {
    /// File name (no directory part).
    pub name: String,
    /// The exact bytes that were verified.
    pub bytes: Vec<u8>,
}

/// Where migration targets and the metadata that signs them come from at fetch time.
///
/// `updog` implements this for its TUF client (`updog::tuf::Repository`); tests may implement it
/// over a local directory. This crate never trusts a reader to verify on its own: it counts and
/// hashes every byte it stores against [`TargetLookup::target_info`].
pub trait MigrationSource: TargetLookup {
    /// Opens the stored (compressed) bytes of target `name`.
    fn open_target(&self, name: &str) -> Result<Box<dyn Read + Send>, BoxError>;

    /// The verified metadata files a boot-time step needs to verify cached targets offline.
    fn metadata_files(&self) -> Result<Vec<MetadataFile>, BoxError>;
}

/// Loads cached metadata from a directory without network and with expiry ignored (the host may
/// have been powered off for weeks), giving a lookup of the targets it signs.
///
/// `updog` implements this over `updog::tuf::Repository::load_offline`.
pub trait OfflineLoader {
    /// Verifies the metadata in `metadata_dir` and returns its signed targets.
    fn load_offline(&self, metadata_dir: &Path) -> Result<Box<dyn TargetLookup>, BoxError>;
}

impl<T: TargetLookup + ?Sized> TargetLookup for &T {
    fn target_info(&self, name: &str) -> Result<Option<TargetInfo>, BoxError> {
        (**self).target_info(name)
    }
}

impl<T: TargetLookup + ?Sized> TargetLookup for Box<T> {
    fn target_info(&self, name: &str) -> Result<Option<TargetInfo>, BoxError> {
        (**self).target_info(name)
    }
}
