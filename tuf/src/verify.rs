//! Signature thresholds and hash checks.

use super::error::Error;
use super::role::{KeyId, Role, Signer};
use super::schema::{CanonicalEnvelope, Key, KeyAlgorithm, MetaFile, RoleKeys, Root, Signature};
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use sha2::{Digest, Sha256, Sha512};
use std::collections::{BTreeMap, HashSet};

/// Verifies one signature with a listed key; the public key bytes when it verifies. Keys of
/// unsupported types never verify.
fn verify_with<'k>(key: &'k Key, msg: &[u8], sig: &[u8]) -> Option<&'k [u8]> {
    let (alg, public) = key.verifier()?;
    let alg: &'static dyn VerificationAlgorithm = match alg {
        KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyAlgorithm::Ed25519 => &signature::ED25519,
        KeyAlgorithm::RsaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
    };
    UnparsedPublicKey::new(alg, public)
        .verify(msg, sig)
        .ok()
        .map(|()| public.as_slice())
}

/// Checks that `signatures` over `canonical` (the canonical JSON of a `signed` object, see
/// [`crate::canonical_json`]) come from at least `keys.threshold` distinct keys among
/// `keys.keyids`, looked up in `root`'s keys: what a publisher checks before it writes a file
/// that a client will verify against `root`. The error is [`Error::Threshold`] with the count.
pub fn check_signed_by_root(
    root: &Root,
    role: &Role,
    keys: &RoleKeys,
    canonical: Vec<u8>,
    signatures: Vec<Signature>,
) -> Result<(), Error> {
    let envelope = CanonicalEnvelope {
        canonical,
        signatures,
    };
    check_threshold(
        role,
        0,
        Signer::Root {
            version: root.header.version,
        },
        &envelope,
        &keys.keyids,
        keys.threshold,
        &root.keys,
    )
}

/// Checks that `envelope` carries valid signatures from at least `threshold` distinct keys among
/// `keyids` (looked up in `keys`). Repeated key ids in `signatures` were already refused when the
/// envelope was parsed; two key ids with the same public key material count once.
pub(crate) fn check_threshold(
    role: &Role,
    version: u64,
    signer: Signer,
    envelope: &CanonicalEnvelope,
    keyids: &[KeyId],
    threshold: u64,
    keys: &BTreeMap<KeyId, Key>,
) -> Result<(), Error> {
    let msg = envelope.canonical.as_slice();
    let allowed: HashSet<&KeyId> = keyids.iter().collect();
    let mut counted_ids: HashSet<&KeyId> = HashSet::new();
    let mut counted_material: HashSet<&[u8]> = HashSet::new();
    for sig in &envelope.signatures {
        if !allowed.contains(&sig.keyid) || counted_ids.contains(&sig.keyid) {
            continue;
        }
        let Some(key) = keys.get(&sig.keyid) else {
            continue;
        };
        let Ok(sig_bytes) = hex::decode(&sig.sig) else {
            continue;
        };
        if let Some(material) = verify_with(key, msg, &sig_bytes) {
            counted_ids.insert(&sig.keyid);
            counted_material.insert(material);
        }
    }
    let valid = counted_material.len() as u64;
    if valid >= threshold {
        Ok(())
    } else {
        Err(Error::Threshold {
            role: role.clone(),
            version,
            signer,
            valid,
            threshold,
            stored_root: None,
        })
    }
}

/// Checks length and every supported hash listed in `meta` against `bytes`.
pub(crate) fn check_meta_file(
    role: &str,
    listed_in: &str,
    meta: &MetaFile,
    bytes: &[u8],
) -> Result<(), Error> {
    if let Some(length) = meta.length {
        if bytes.len() as u64 != length {
            return Err(Error::LengthMismatch {
                what: role.to_owned(),
                listed_in: listed_in.to_owned(),
                expected: length,
                actual: bytes.len() as u64,
            });
        }
    }
    if let Some(hashes) = &meta.hashes {
        check_hashes(role, listed_in, hashes, bytes)?;
    }
    Ok(())
}

/// Checks every supported hash in `hashes`; fails when none is supported.
pub(crate) fn check_hashes(
    what: &str,
    listed_in: &str,
    hashes: &BTreeMap<String, String>,
    bytes: &[u8],
) -> Result<(), Error> {
    let mut checked = 0;
    for (alg, expected) in hashes {
        let actual = match alg.as_str() {
            "sha256" => hex::encode(Sha256::digest(bytes)),
            "sha512" => hex::encode(Sha512::digest(bytes)),
            _ => continue,
        };
        checked += 1;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Error::HashMismatch {
                what: what.to_owned(),
                listed_in: listed_in.to_owned(),
                algorithm: alg.clone(),
            });
        }
    }
    if checked == 0 {
        return Err(Error::NoSupportedHash {
            what: what.to_owned(),
        });
    }
    Ok(())
}
