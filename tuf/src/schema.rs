//! The TUF metadata schema, one set of serde types for the client (which reads them) and the
//! publisher (which writes them), so the two cannot disagree on a field.
//!
//! Reading is deliberately more lenient than `tough::schema` where the specification is
//! lenient (unknown fields are ignored, targets may list only sha512, keys of unknown types are
//! ignored rather than failing the whole file, `spec_version` may be missing), and strict where
//! it matters (versions of at least 1, thresholds of at least 1, at most one of `paths` /
//! `path_hash_prefixes`, a repeated field is refused). The client checks signatures over the
//! canonical JSON of the `signed` object as received (`CanonicalEnvelope`), never over a
//! re-serialisation of these types, so fields we do not model still count. The publisher
//! signs the canonical JSON of these types as it serialises them ([`crate::canonical_json`];
//! the `updata` crate's `metadata` module).

use super::canonical::{Canon, CanonSeed};
use super::error::Error;
use super::role::{KeyId, Role};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The TUF specification version the publisher writes, and assumed for a file without one.
pub const SPEC_VERSION: &str = "1.0.0";

/// Expiry times as written: whole seconds in UTC (`2030-01-01T00:00:00Z`), which every TUF
/// client parses; read as any RFC 3339 time.
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

fn spec_version() -> String {
    SPEC_VERSION.to_owned()
}

/// A field the client reads but never judges: any JSON value, a string as it is.
fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// The fields every role's `signed` object starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// `root`, `timestamp`, `snapshot` or `targets` (delegated roles too).
    #[serde(rename = "_type")]
    pub type_name: String,
    /// The specification version the file follows. The client does not check it: a missing
    /// one reads as [`SPEC_VERSION`], one that is not a string as its JSON text.
    #[serde(default = "spec_version", deserialize_with = "lenient_string")]
    pub spec_version: String,
    /// The file's version, at least 1.
    pub version: u64,
    /// When the file expires.
    #[serde(with = "tuf_time")]
    pub expires: DateTime<Utc>,
}

impl Header {
    /// A header of `role`'s metadata as the publisher writes it: the current specification
    /// version, `expires` cut to whole seconds.
    pub fn new(role: &Role, version: u64, expires: DateTime<Utc>) -> Self {
        use chrono::SubsecRound;
        Self {
            type_name: role.metadata_type().to_owned(),
            spec_version: SPEC_VERSION.to_owned(),
            version,
            expires: expires.trunc_subsecs(0),
        }
    }
}

/// A signature entry of a metadata file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The key that made it.
    pub keyid: KeyId,
    /// The signature, hex.
    pub sig: String,
}

/// A metadata file: the `signed` object and the signatures over its canonical JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// The signed object.
    pub signed: T,
    /// Signatures over its canonical JSON.
    pub signatures: Vec<Signature>,
}

/// What signatures are checked over: the canonical JSON of `signed` (as received by the
/// client, as serialised by the publisher) and the signatures.
#[derive(Debug, Clone)]
pub(crate) struct CanonicalEnvelope {
    pub canonical: Vec<u8>,
    pub signatures: Vec<Signature>,
}

/// The envelope with `signed` turned into canonical JSON while it is parsed.
#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(deserialize_with = "canonical_signed")]
    signed: Canon,
}

fn canonical_signed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Canon, D::Error> {
    use serde::de::DeserializeSeed;
    CanonSeed::new().deserialize(d)
}

impl CanonicalEnvelope {
    /// Parses `role`'s metadata: the canonical JSON of `signed` as received, the signatures,
    /// and `signed` decoded as `T`, checking `_type` and `version >= 1`.
    ///
    /// The canonical JSON is made while the envelope is parsed (no generic `serde_json::Value`
    /// tree, see [`super::canonical`]); the [`Envelope`] is then decoded from `bytes` directly
    /// (on a 20,000-target `targets.json`, the generic tree next to the typed one was most of
    /// the peak memory of a refresh). Decoding from the bytes is at least as strict as decoding
    /// a tree (a repeated field is refused instead of the last one winning).
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
        let typed: Envelope<T> = serde_json::from_slice(bytes).map_err(parse_err)?;
        let Envelope { signed, signatures } = typed;
        if signed.header().version == 0 {
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
                version: signed.header().version,
                keyid: dup.keyid.clone(),
            });
        }
        Ok((
            Self {
                canonical,
                signatures,
            },
            signed,
        ))
    }
}

/// Every role's `signed` object has a [`Header`].
pub trait Common {
    /// The header.
    fn header(&self) -> &Header;

    /// The version.
    fn version(&self) -> u64 {
        self.header().version
    }

    /// The expiry.
    fn expires(&self) -> DateTime<Utc> {
        self.header().expires
    }
}

macro_rules! common {
    ($t:ty) => {
        impl Common for $t {
            fn header(&self) -> &Header {
                &self.header
            }
        }
    };
}

/// A key as root or a delegation lists it: the key object exactly as listed, and what to
/// verify signatures with, parsed once when the file is loaded (or the key is added).
#[derive(Debug, Clone)]
pub struct Key {
    /// The verification algorithm and public key bytes; `None` for a key type or scheme we do
    /// not support (such a key never verifies a signature).
    verifier: Option<(KeyAlgorithm, Vec<u8>)>,
    /// The key object as listed.
    value: Value,
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

impl Key {
    /// Parses a key object (`keytype`, `scheme`, `keyval`); one of a type or scheme we do not
    /// support is kept, but never verifies a signature.
    pub fn from_value(value: Value) -> Self {
        let verifier = crate::public_key::decode(&value);
        Self { verifier, value }
    }

    /// The key object as listed.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The algorithm and public key bytes, when we can verify with this key.
    pub(crate) fn verifier(&self) -> Option<&(KeyAlgorithm, Vec<u8>)> {
        self.verifier.as_ref()
    }
}

/// Two keys are the same when their key objects are (the verifier follows from it).
impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for Key {}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from_value(Value::deserialize(d)?))
    }
}

/// The keys and threshold of one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Key ids that may sign.
    pub keyids: Vec<KeyId>,
    /// How many distinct keys must.
    pub threshold: u64,
}

/// root.json's `signed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Root {
    /// `_type` (`root`), `spec_version`, `version`, `expires`.
    #[serde(flatten)]
    pub header: Header,
    /// Whether metadata and target file names carry their version or hash (always `true` for
    /// repositories `updata` writes).
    #[serde(default)]
    pub consistent_snapshot: bool,
    /// Key id -> key, parsed once here; a key of an unknown type does not fail the file.
    pub keys: BTreeMap<KeyId, Key>,
    /// Role name -> keys and threshold.
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
                    reason: format!(
                        "version {} does not define the {top} role",
                        self.header.version
                    ),
                });
            };
            if keys.threshold == 0 {
                return Err(Error::Invalid {
                    role: Role::Root,
                    reason: format!("version {}: {top} threshold is 0", self.header.version),
                });
            }
        }
        Ok(())
    }

    /// The keys and threshold of a top-level role.
    pub fn role(&self, role: &Role) -> Option<&RoleKeys> {
        self.roles.get(role.as_str())
    }
}

/// An entry of timestamp's or snapshot's `meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// The listed file's version.
    pub version: u64,
    /// Its length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes: algorithm -> hex digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
}

/// timestamp.json's or snapshot.json's `signed`: a list of metadata files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaList {
    /// `_type` (`timestamp` or `snapshot`), `spec_version`, `version`, `expires`.
    #[serde(flatten)]
    pub header: Header,
    /// File name -> version, length, hashes.
    pub meta: BTreeMap<String, MetaFile>,
}
common!(MetaList);

/// timestamp.json's `signed`.
pub type Timestamp = MetaList;

/// snapshot.json's `signed`.
pub type Snapshot = MetaList;

impl MetaList {
    /// What a timestamp lists for `snapshot.json`.
    pub(crate) fn snapshot_meta(&self) -> Result<&MetaFile, Error> {
        self.meta
            .get("snapshot.json")
            .ok_or_else(|| Error::Invalid {
                role: Role::Timestamp,
                reason: format!(
                    "version {} does not list snapshot.json",
                    self.header.version
                ),
            })
    }
}

/// What the signed metadata says about one target file.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct TargetDescription {
    /// Length in bytes, as signed.
    pub length: u64,
    /// Hash algorithm name (`sha256`, `sha512`, ...) to lowercase hex digest, as signed.
    pub hashes: BTreeMap<String, String>,
    /// The opaque `custom` object, `Null` when absent (and then not written); `updata`
    /// records `decompressed_length` of lz4 images here.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub custom: Value,
}

impl TargetDescription {
    /// The decoded size `custom.decompressed_length` signs (as `updata publish` records it for
    /// lz4 images), if listed as an unsigned integer.
    pub fn decompressed_length(&self) -> Option<u64> {
        self.custom.get("decompressed_length")?.as_u64()
    }

    /// The signed sha256 digest, if listed and well-formed.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.digest("sha256")
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// The delegated role's name.
    pub name: String,
    /// Key ids that may sign it.
    pub keyids: Vec<KeyId>,
    /// How many distinct keys must.
    pub threshold: u64,
    /// Whether the search stops here when the patterns match.
    #[serde(default)]
    pub terminating: bool,
    /// Target name patterns it is trusted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Target name hash prefixes it is trusted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
}

/// The `delegations` object of a targets role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegations {
    /// Key id -> key, parsed once here.
    pub keys: BTreeMap<KeyId, Key>,
    /// The delegations, in search order.
    pub roles: Vec<DelegatedRole>,
}

/// targets.json's (or a delegated role's) `signed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// `_type` (`targets`), `spec_version`, `version`, `expires`.
    #[serde(flatten)]
    pub header: Header,
    /// Target name -> description.
    pub targets: BTreeMap<String, TargetDescription>,
    /// Delegations to other targets roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
                    reason: format!("version {}: {reason}", self.header.version),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_file(signed: &str) -> Vec<u8> {
        format!(r#"{{"signed":{signed},"signatures":[]}}"#).into_bytes()
    }

    const ROOT: &str = r#"{"_type":"root","spec_version":"1.0.0","version":1,
        "expires":"2030-01-01T00:00:00Z","consistent_snapshot":true,"keys":{},
        "roles":{"root":{"keyids":[],"threshold":1}}}"#;

    #[test]
    fn header_fields_are_read_through_the_flattened_header() {
        let (_, root) = CanonicalEnvelope::parse::<Root>(&Role::Root, &root_file(ROOT)).unwrap();
        assert_eq!(root.header.type_name, "root");
        assert_eq!(root.version(), 1);
        assert!(root.consistent_snapshot);
        assert_eq!(root.expires().to_rfc3339(), "2030-01-01T00:00:00+00:00");
    }

    #[test]
    fn spec_version_is_not_judged() {
        // The client never checked spec_version; the shared header must not start to.
        for (from, to) in [
            (r#""spec_version":"1.0.0","#, ""),
            (r#""spec_version":"1.0.0","#, r#""spec_version":2,"#),
        ] {
            let signed = ROOT.replace(from, to);
            let (_, root) =
                CanonicalEnvelope::parse::<Root>(&Role::Root, &root_file(&signed)).unwrap();
            assert!(!root.header.spec_version.is_empty());
        }
    }

    #[test]
    fn a_repeated_header_field_is_refused() {
        // The flattened header must not let the last `version` win.
        let signed = ROOT.replace(r#""version":1,"#, r#""version":1,"version":7,"#);
        let e = CanonicalEnvelope::parse::<Root>(&Role::Root, &root_file(&signed)).unwrap_err();
        assert!(
            matches!(&e, Error::Parse { role: Role::Root, source } if source.to_string().contains("duplicate field")),
            "{e}"
        );
    }

    #[test]
    fn what_the_publisher_signs_is_what_the_client_checks() {
        // Written by our types, read back: the client's canonical bytes of the file as
        // received are the bytes the publisher signed.
        let (_, root) = CanonicalEnvelope::parse::<Root>(&Role::Root, &root_file(ROOT)).unwrap();
        let envelope = Envelope {
            signed: root,
            signatures: Vec::new(),
        };
        let written = serde_json::to_vec_pretty(&envelope).unwrap();
        let (received, _) = CanonicalEnvelope::parse::<Root>(&Role::Root, &written).unwrap();
        let signed = crate::canonical_json(&envelope.signed).unwrap();
        assert_eq!(received.canonical, signed);
    }
}
