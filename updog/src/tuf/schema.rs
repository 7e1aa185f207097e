//! Our own serde types for TUF metadata.
//!
//! They are deliberately more lenient than `tough::schema` where the specification is lenient
//! (unknown fields are ignored, targets may list only sha512, keys of unknown types are ignored
//! rather than failing the whole file), and strict where it matters (versions of at least 1,
//! thresholds of at least 1, at most one of `paths` / `path_hash_prefixes`). Signatures are always checked over the
//! canonical JSON of the `signed` object as received, never over a re-serialisation of these
//! types, so fields we do not model still count.

use super::canonical::{Canon, CanonSeed};
use super::error::Error;
use super::role::{KeyId, Role};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A signature entry of a metadata envelope.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Signature {
    pub keyid: KeyId,
    pub sig: String,
}

/// A parsed metadata envelope: the canonical JSON of `signed` as received (what the signatures
/// are over) and the signatures.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub canonical: Vec<u8>,
    pub signatures: Vec<Signature>,
}

/// The envelope with `signed` turned into canonical JSON while it is parsed.
#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(deserialize_with = "canonical_signed")]
    signed: Canon,
    signatures: Vec<Signature>,
}

fn canonical_signed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Canon, D::Error> {
    use serde::de::DeserializeSeed;
    CanonSeed::new().deserialize(d)
}

/// The envelope again, with `signed` decoded straight into its type (`signatures` skipped).
#[derive(Deserialize)]
struct TypedEnvelope<T> {
    signed: T,
}

impl Envelope {
    /// Parses `role`'s metadata: the envelope, the canonical JSON of `signed` as received, and
    /// `signed` decoded as `T`, checking `_type` and `version >= 1`.
    ///
    /// The canonical JSON is made while the envelope is parsed (no generic `serde_json::Value`
    /// tree, see [`super::canonical`]); `T` is then decoded from `bytes` directly (on a
    /// 20,000-target `targets.json`, the generic tree next to the typed one was most of the peak
    /// memory of a refresh). Decoding from the bytes is at least as strict as decoding a tree
    /// (a repeated field is refused instead of the last one winning).
    pub(crate) fn parse<T: for<'de> Deserialize<'de> + Common>(
        role: &Role,
        bytes: &[u8],
    ) -> Result<(Self, T), Error> {
        let expected_type = role.metadata_type();
        let parse_err = |source| Error::Parse {
            role: role.clone(),
            source,
        };
        let raw: RawEnvelope = serde_json::from_slice(bytes).map_err(parse_err)?;
        let found = raw.signed.type_name.as_deref().unwrap_or("");
        if found != expected_type {
            return Err(Error::WrongType {
                role: role.clone(),
                expected: expected_type.to_owned(),
                found: found.to_owned(),
            });
        }
        if let Some(e) = raw.signed.unrepresentable {
            return Err(Error::Invalid {
                role: role.clone(),
                reason: format!("cannot produce canonical JSON: {e}"),
            });
        }
        let canonical = raw.signed.bytes;
        let signatures = raw.signatures;
        let typed: TypedEnvelope<T> = serde_json::from_slice(bytes).map_err(parse_err)?;
        let value = typed.signed;
        if value.version() == 0 {
            return Err(Error::Invalid {
                role: role.clone(),
                reason: "version must be at least 1".to_owned(),
            });
        }
        // A key id MUST be unique in `signatures` (specification, "Metadata format"): a
        // repeated one is refused outright rather than counted once.
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = signatures.iter().find(|s| !seen.insert(&s.keyid)) {
            return Err(Error::DuplicateSignature {
                role: role.clone(),
                version: value.version(),
                keyid: dup.keyid.clone(),
            });
        }
        Ok((
            Self {
                canonical,
                signatures,
            },
            value,
        ))
    }
}

/// Fields every role has.
pub(crate) trait Common {
    fn version(&self) -> u64;
    fn expires(&self) -> DateTime<Utc>;
}

macro_rules! common {
    ($t:ty) => {
        impl Common for $t {
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> DateTime<Utc> {
                self.expires
            }
        }
    };
}

/// A key as root or a delegation lists it, parsed once when the file is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedKey {
    /// The verification algorithm and public key bytes; `None` for a key type or scheme we do
    /// not support (such a key never verifies a signature).
    pub verifier: Option<(KeyAlgorithm, Vec<u8>)>,
    /// The key object as listed, as JSON text (compared to detect key rotations, 5.3.11).
    pub json: String,
}

/// The signature schemes we verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyAlgorithm {
    /// `ecdsa-sha2-nistp256` (ASN.1 DER signatures).
    EcdsaP256,
    /// `ed25519`.
    Ed25519,
    /// `rsassa-pss-sha256`.
    RsaPssSha256,
}

impl<'de> Deserialize<'de> for ListedKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use tough::schema::key::{EcdsaScheme, Ed25519Scheme, Key, RsaScheme};
        let value = Value::deserialize(d)?;
        let json = value.to_string();
        let verifier = match serde_json::from_value::<Key>(value).ok() {
            Some(
                Key::Ecdsa {
                    scheme: EcdsaScheme::EcdsaSha2Nistp256,
                    keyval,
                    ..
                }
                | Key::EcdsaOld {
                    scheme: EcdsaScheme::EcdsaSha2Nistp256,
                    keyval,
                    ..
                },
            ) => Some((KeyAlgorithm::EcdsaP256, keyval.public.to_vec())),
            Some(Key::Ed25519 {
                scheme: Ed25519Scheme::Ed25519,
                keyval,
                ..
            }) => Some((KeyAlgorithm::Ed25519, keyval.public.to_vec())),
            Some(Key::Rsa {
                scheme: RsaScheme::RsassaPssSha256,
                keyval,
                ..
            }) => Some((KeyAlgorithm::RsaPssSha256, keyval.public.to_vec())),
            None => None,
        };
        Ok(Self { verifier, json })
    }
}

/// The keys and threshold of one role.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct RoleKeys {
    pub keyids: Vec<KeyId>,
    pub threshold: u64,
}

/// root.json's `signed`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Root {
    #[serde(default)]
    pub consistent_snapshot: bool,
    pub version: u64,
    pub expires: DateTime<Utc>,
    /// Key id -> key, parsed once here; a key of an unknown type does not fail the file.
    pub keys: BTreeMap<KeyId, ListedKey>,
    pub roles: BTreeMap<String, RoleKeys>,
}
common!(Root);

impl Root {
    /// Checks the structural rules a root must satisfy to be usable.
    pub(crate) fn check(&self) -> Result<(), Error> {
        for top in &Role::TOP_LEVEL {
            let Some(keys) = self.role(top) else {
                return Err(Error::Invalid {
                    role: Role::Root,
                    reason: format!("version {} does not define the {top} role", self.version),
                });
            };
            if keys.threshold == 0 {
                return Err(Error::Invalid {
                    role: Role::Root,
                    reason: format!("version {}: {top} threshold is 0", self.version),
                });
            }
        }
        Ok(())
    }

    /// The keys and threshold of a top-level role (checked to exist by [`Root::check`]).
    pub(crate) fn role(&self, role: &Role) -> Option<&RoleKeys> {
        self.roles.get(role.as_str())
    }
}

/// An entry of timestamp `meta` or snapshot `meta`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct MetaFile {
    pub version: u64,
    #[serde(default)]
    pub length: Option<u64>,
    #[serde(default)]
    pub hashes: Option<BTreeMap<String, String>>,
}

/// timestamp.json's `signed`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Timestamp {
    pub version: u64,
    pub expires: DateTime<Utc>,
    pub meta: BTreeMap<String, MetaFile>,
}
common!(Timestamp);

impl Timestamp {
    pub(crate) fn snapshot_meta(&self) -> Result<&MetaFile, Error> {
        self.meta
            .get("snapshot.json")
            .ok_or_else(|| Error::Invalid {
                role: Role::Timestamp,
                reason: format!("version {} does not list snapshot.json", self.version),
            })
    }
}

/// snapshot.json's `signed`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Snapshot {
    pub version: u64,
    pub expires: DateTime<Utc>,
    pub meta: BTreeMap<String, MetaFile>,
}
common!(Snapshot);

/// What the signed metadata says about one target file.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct TargetDescription {
    /// Length in bytes, as signed.
    pub length: u64,
    /// Hash algorithm name (`sha256`, `sha512`, ...) to lowercase hex digest, as signed.
    pub hashes: BTreeMap<String, String>,
    /// The opaque `custom` object, `Null` when absent.
    #[serde(default)]
    pub custom: Value,
}

impl TargetDescription {
    /// The signed sha256 digest, if listed and well-formed.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.digest("sha256")
    }

    /// The signed length and sha256, as the pipeline and the migrations cache check them;
    /// `None` when no well-formed sha256 is listed.
    pub fn info(&self) -> Option<migrations_fetch::TargetInfo> {
        Some(migrations_fetch::TargetInfo {
            length: self.length,
            sha256: self.sha256()?,
        })
    }

    /// The signed sha512 digest, if listed and well-formed.
    pub fn sha512(&self) -> Option<[u8; 64]> {
        self.digest("sha512")
    }

    fn digest<const N: usize>(&self, alg: &str) -> Option<[u8; N]> {
        let hex_str = self.hashes.get(alg)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(hex_str, &mut out).ok()?;
        Some(out)
    }
}

/// One delegation of a targets role.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DelegatedRole {
    pub name: String,
    pub keyids: Vec<KeyId>,
    pub threshold: u64,
    #[serde(default)]
    pub terminating: bool,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub path_hash_prefixes: Option<Vec<String>>,
}

/// The `delegations` object of a targets role.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Delegations {
    pub keys: BTreeMap<KeyId, ListedKey>,
    pub roles: Vec<DelegatedRole>,
}

/// targets.json's (or a delegated role's) `signed`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Targets {
    pub version: u64,
    pub expires: DateTime<Utc>,
    pub targets: BTreeMap<String, TargetDescription>,
    #[serde(default)]
    pub delegations: Option<Delegations>,
}
common!(Targets);

impl Targets {
    /// Structural checks on delegations.
    pub(crate) fn check(&self, role: &Role) -> Result<(), Error> {
        let Some(delegations) = &self.delegations else {
            return Ok(());
        };
        for d in &delegations.roles {
            let reason = if d.threshold == 0 {
                Some(format!("delegation to {:?} has threshold 0", d.name))
            } else if d.paths.is_some() && d.path_hash_prefixes.is_some() {
                Some(format!(
                    "delegation to {:?} sets both paths and path_hash_prefixes",
                    d.name
                ))
            } else if Role::from_name(&d.name).is_top_level() {
                Some(format!(
                    "delegation to {:?} reuses a top-level role name",
                    d.name
                ))
            } else if d.name.is_empty() {
                Some("delegation to an empty role name".to_owned())
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::Invalid {
                    role: role.clone(),
                    reason: format!("version {}: {reason}", self.version),
                });
            }
        }
        Ok(())
    }
}
