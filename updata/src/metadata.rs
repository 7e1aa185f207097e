//! Writing and signing the metadata files `updata` publishes.
//!
//! The types are the client's own ([`tuf::schema`], re-exported here), so what the
//! publisher writes and what the client reads cannot disagree on a field. A file is an
//! [`Envelope`]: the `signed` object and its signatures. Signatures are over the canonical JSON
//! (OLPC) of `signed` as these types serialise it. Files are written pretty-printed with a
//! final newline; expiry times have whole seconds (`2030-01-01T00:00:00Z`), which every TUF
//! client parses.

use std::path::Path;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::error::{Error, io};
use super::keys::KeySource;
use tuf::Role;

pub use tuf::schema::{
    Common, DelegatedRole, Delegations, Envelope, Header, Key, MetaFile, MetaList, RoleKeys, Root,
    SPEC_VERSION, Signature, TargetDescription, Targets,
};

/// The four top-level roles, in the order they are shown.
pub const TOP_LEVEL_ROLES: [Role; 4] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp];

/// Canonical JSON (OLPC) of a value, as TUF signs it. Fails on a value without a canonical
/// form (a number with a fraction or exponent, which only a hand-edited `custom` could hold).
pub use tuf::canonical_json;

/// An expiry as written: whole seconds.
pub fn expiry(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(0)
}

/// What the publisher does with a metadata file ([`Envelope`], the client's type): read, sign,
/// check against a root, write. A trait because the type is the `tuf` crate's; bring it into
/// scope (`use updata::metadata::SignedFile`) to call these on an `Envelope`.
pub trait SignedFile: Sized {
    /// The `signed` object's type.
    type Signed;
    /// An unsigned envelope.
    fn new(signed: Self::Signed) -> Self;
    /// Reads a file.
    fn load(path: &Path) -> Result<Self, Error>;
    /// Parses bytes read from `path`.
    fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, Error>;
    /// The bytes signatures are over.
    fn canonical(&self) -> Result<Vec<u8>, Error>;
    /// Adds `key`'s signature, replacing an earlier one by the same key.
    fn sign(&mut self, key: &dyn KeySource) -> Result<(), Error>;
    /// The file as written: pretty JSON and a final newline.
    fn to_bytes(&self) -> Vec<u8>;
    /// Writes the file atomically.
    fn save(&self, path: &Path) -> Result<(), Error>;
    /// Checks that `role` as `root` defines it has signed this file with its threshold.
    fn check_signed_by(&self, root: &Root, role: &Role, what: &str) -> Result<(), Error>;
}

impl<T: Serialize + for<'de> Deserialize<'de>> SignedFile for Envelope<T> {
    type Signed = T;

    fn new(signed: T) -> Self {
        Self {
            signed,
            signatures: Vec::new(),
        }
    }

    fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(io("reading", path))?;
        Self::from_slice(&bytes, path)
    }

    fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::BadMetadata {
            path: path.to_owned(),
            reason: format!("not a metadata file of the expected kind: {e}"),
        })
    }

    fn canonical(&self) -> Result<Vec<u8>, Error> {
        canonical_json(&self.signed).map_err(|e| {
            Error::State(format!(
                "metadata without a canonical JSON form (TUF signs that): {e}"
            ))
        })
    }

    fn sign(&mut self, key: &dyn KeySource) -> Result<(), Error> {
        let sig = key.sign(&self.canonical()?)?;
        let keyid = tuf::KeyId::from(key.public_key().id());
        self.signatures.retain(|s| s.keyid != keyid);
        self.signatures.push(Signature {
            keyid,
            sig: hex::encode(sig),
        });
        Ok(())
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn save(&self, path: &Path) -> Result<(), Error> {
        write_atomic(path, &self.to_bytes())
    }

    fn check_signed_by(&self, root: &Root, role: &Role, what: &str) -> Result<(), Error> {
        let keys = root
            .role(role)
            .ok_or_else(|| Error::NoSuchRole(role.to_string()))?;
        tuf::check_signed_by_root(root, role, keys, self.canonical()?, self.signatures.clone())
            .map_err(|e| match e {
                tuf::Error::Threshold {
                    valid, threshold, ..
                } => Error::ThresholdNotMet {
                    role: role.clone(),
                    valid,
                    threshold,
                    what: what.to_owned(),
                    keyids: keys.keyids.join(", "),
                },
                other => Error::State(other.to_string()),
            })
    }
}

/// Makes `dest` hold what `fill` writes, atomically, with the options of a published file (see
/// [`atomic_write::AtomicWrite::for_published_file`]): the workspace's one atomic write.
pub(crate) fn write_published<T>(
    dest: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<T, Error>,
) -> Result<T, Error> {
    atomic_write::AtomicWrite::for_published_file()
        .write(dest, fill)
        .map_err(|e| match e {
            atomic_write::AtomicWriteError::Io { step, path, source } => Error::Io {
                action: step.describe(),
                path,
                source,
            },
            atomic_write::AtomicWriteError::Fill(e) => e,
        })
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    manifest::fs::write_atomic(path, bytes).map_err(|e| match e {
        manifest::Error::Io {
            action,
            path,
            source,
        } => Error::Io {
            action,
            path,
            source,
        },
        other => Error::Manifest(other),
    })
}
