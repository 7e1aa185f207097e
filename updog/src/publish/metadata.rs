//! The metadata files `updata` writes, as typed serde structs, and their signing.
//!
//! A file is an [`Envelope`]: the `signed` object and its signatures. Signatures are over the
//! canonical JSON (OLPC) of `signed`. Files are written pretty-printed with a final newline;
//! expiry times have whole seconds (`2030-01-01T00:00:00Z`), which every TUF client parses.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{Error, io};
use super::keys::KeySource;
use crate::tuf::schema::{Envelope as VerifyEnvelope, Signature as VerifySignature};
use crate::tuf::verify::check_threshold_json;

/// The TUF specification version written in every file.
pub const SPEC_VERSION: &str = "1.0.0";

/// The four top-level roles, in the order they are shown.
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// Canonical JSON (OLPC) of a value, as TUF signs it. Fails on a value without a canonical
/// form (a number with a fraction or exponent, which only a hand-edited `custom` could hold).
pub fn canonical_json(value: &impl Serialize) -> Result<Vec<u8>, serde_json::Error> {
    let mut buf = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut buf, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser)?;
    Ok(buf)
}

mod tuf_time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }
}

/// An expiry as written: whole seconds.
pub fn expiry(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(0)
}

/// Keys and threshold of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Key ids that may sign.
    pub keyids: Vec<String>,
    /// How many distinct keys must.
    pub threshold: u64,
}

/// root.json's `signed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Root {
    /// `"root"`.
    #[serde(rename = "_type")]
    pub type_name: String,
    /// Specification version.
    pub spec_version: String,
    /// Always `true` for repositories `updata` writes.
    pub consistent_snapshot: bool,
    /// Version.
    pub version: u64,
    /// Expiry.
    #[serde(with = "tuf_time")]
    pub expires: DateTime<Utc>,
    /// Key id -> key object.
    pub keys: BTreeMap<String, Value>,
    /// Role -> keys and threshold.
    pub roles: BTreeMap<String, RoleKeys>,
}

/// An entry of snapshot's or timestamp's `meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaEntry {
    /// The listed file's version.
    pub version: u64,
    /// Its length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
}

/// snapshot.json's or timestamp.json's `signed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaList {
    /// `"snapshot"` or `"timestamp"`.
    #[serde(rename = "_type")]
    pub type_name: String,
    /// Specification version.
    pub spec_version: String,
    /// Version.
    pub version: u64,
    /// Expiry.
    #[serde(with = "tuf_time")]
    pub expires: DateTime<Utc>,
    /// File name -> version, length, hashes.
    pub meta: BTreeMap<String, MetaEntry>,
}

/// A target's entry in targets.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetEntry {
    /// Length in bytes.
    pub length: u64,
    /// Algorithm -> hex digest.
    pub hashes: BTreeMap<String, String>,
    /// Opaque data; `updata` records `decompressed_length` of lz4 images here.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub custom: Value,
}

/// targets.json's `signed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// `"targets"`.
    #[serde(rename = "_type")]
    pub type_name: String,
    /// Specification version.
    pub spec_version: String,
    /// Version.
    pub version: u64,
    /// Expiry.
    #[serde(with = "tuf_time")]
    pub expires: DateTime<Utc>,
    /// Target name -> entry.
    pub targets: BTreeMap<String, TargetEntry>,
    /// Delegations, kept as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Value>,
}

/// One signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Key id.
    pub keyid: String,
    /// Hex signature.
    pub sig: String,
}

/// A metadata file: `signed` and its signatures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// The signed object.
    pub signed: T,
    /// Signatures over its canonical JSON.
    pub signatures: Vec<Signature>,
}

impl<T: Serialize + for<'de> Deserialize<'de>> Envelope<T> {
    /// An unsigned envelope.
    pub fn new(signed: T) -> Self {
        Self {
            signed,
            signatures: Vec::new(),
        }
    }

    /// Reads a file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(io("reading", path))?;
        Self::from_slice(&bytes, path)
    }

    /// Parses bytes read from `path`.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::BadMetadata {
            path: path.to_owned(),
            reason: format!("not a metadata file of the expected kind: {e}"),
        })
    }

    /// The bytes signatures are over.
    pub fn canonical(&self) -> Result<Vec<u8>, Error> {
        canonical_json(&self.signed).map_err(|e| {
            Error::State(format!(
                "metadata without a canonical JSON form (TUF signs that): {e}"
            ))
        })
    }

    /// Adds `key`'s signature, replacing an earlier one by the same key.
    pub fn sign(&mut self, key: &dyn KeySource) -> Result<(), Error> {
        let sig = key.sign(&self.canonical()?)?;
        let keyid = key.public_key().id().to_owned();
        self.signatures.retain(|s| s.keyid != keyid);
        self.signatures.push(Signature {
            keyid,
            sig: hex::encode(sig),
        });
        Ok(())
    }

    /// The file as written: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        write_atomic(path, &self.to_bytes())
    }

    /// Checks that `role` as `root` defines it has signed this file with its threshold.
    pub fn check_signed_by(&self, root: &Root, role: &str, what: &str) -> Result<(), Error> {
        let keys = root
            .roles
            .get(role)
            .ok_or_else(|| Error::NoSuchRole(role.to_owned()))?;
        let envelope = VerifyEnvelope {
            canonical: self.canonical()?,
            signatures: self
                .signatures
                .iter()
                .map(|s| VerifySignature {
                    keyid: s.keyid.as_str().into(),
                    sig: s.sig.clone(),
                })
                .collect(),
        };
        check_threshold_json(
            &crate::tuf::Role::from_name(role),
            0,
            crate::tuf::Signer::Root {
                version: root.version,
            },
            &envelope,
            &keys.keyids,
            keys.threshold,
            &root.keys,
        )
        .map_err(|e| match e {
            crate::tuf::Error::Threshold {
                valid, threshold, ..
            } => Error::ThresholdNotMet {
                role: role.to_owned(),
                valid,
                threshold,
                what: what.to_owned(),
                keyids: keys.keyids.join(", "),
            },
            other => Error::State(other.to_string()),
        })
    }
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
