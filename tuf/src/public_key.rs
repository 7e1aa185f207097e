//! Public keys as TUF metadata lists them (`keytype`, `scheme`, `keyval.public`), decoded into
//! what the signature verifier takes.
//!
//! - `ed25519` / `ed25519`: 32 bytes, hex.
//! - `ecdsa` or `ecdsa-sha2-nistp256` / `ecdsa-sha2-nistp256`: a PEM SubjectPublicKeyInfo
//!   (`id-ecPublicKey`, curve `prime256v1`) as the specification suggests, or the point in hex as
//!   go-tuf writes it; the verifier takes the uncompressed point.
//! - `rsa` / `rsassa-pss-sha256`: a PEM SubjectPublicKeyInfo (`rsaEncryption`, NULL
//!   parameters); the verifier takes the DER `RSAPublicKey` inside it.
//!
//! The set of inputs accepted is the one `tough` (0.24) accepts, checked by a test that decodes
//! every key both ways, damaged copies included: updog read Bottlerocket's repositories through
//! `tough` before, and a key that decoded there must decode here to the same bytes. Anything
//! else is `None`: a key we cannot use, which never verifies a signature.

use serde_json::Value;

use crate::schema::KeyAlgorithm;

/// DER of the OID `rsaEncryption` (1.2.840.113549.1.1.1), without tag and length.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// DER of `id-ecPublicKey` (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER of the curve `prime256v1` / `secp256r1` (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

const TAG_SEQUENCE: u8 = 0x30;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_NULL: u8 = 0x05;

/// The verification algorithm and key bytes of a key object; `None` for a type, scheme or
/// encoding we do not support.
pub(crate) fn decode(key: &Value) -> Option<(KeyAlgorithm, Vec<u8>)> {
    let keytype = key.get("keytype")?.as_str()?;
    let scheme = key.get("scheme")?.as_str()?;
    let public = key.get("keyval")?.as_object()?.get("public")?.as_str()?;
    match (keytype, scheme) {
        ("ed25519", "ed25519") => Some((KeyAlgorithm::Ed25519, hex::decode(public).ok()?)),
        ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
            let bytes = if public.starts_with("-----BEGIN ") {
                spki(public, OID_EC_PUBLIC_KEY, Some(OID_P256))?
            } else {
                hex::decode(public).ok()?
            };
            Some((KeyAlgorithm::EcdsaP256, bytes))
        }
        ("rsa", "rsassa-pss-sha256") => Some((
            KeyAlgorithm::RsaPssSha256,
            spki(public, OID_RSA_ENCRYPTION, None)?,
        )),
        _ => None,
    }
}

/// The subject public key of a PEM SubjectPublicKeyInfo with algorithm `algorithm` and either
/// the curve `curve` or NULL parameters; every level consumed exactly.
fn spki(pem_text: &str, algorithm: &[u8], curve: Option<&[u8]>) -> Option<Vec<u8>> {
    let pem = pem::parse(pem_text).ok()?;
    let (spki, rest) = expect(TAG_SEQUENCE, pem.contents())?;
    if !rest.is_empty() {
        return None;
    }
    let (identifier, rest) = expect(TAG_SEQUENCE, spki)?;
    let (bits, rest) = expect(TAG_BIT_STRING, rest)?;
    if !rest.is_empty() {
        return None;
    }
    let (oid, params) = expect(TAG_OID, identifier)?;
    if oid != algorithm {
        return None;
    }
    let rest = match curve {
        Some(curve) => {
            let (named, rest) = expect(TAG_OID, params)?;
            (named == curve).then_some(rest)?
        }
        None => expect(TAG_NULL, params)?.1,
    };
    if !rest.is_empty() {
        return None;
    }
    // The first byte of a BIT STRING counts the unused bits of its last byte: a key has none.
    match bits.split_first() {
        Some((0, key)) => Some(key.to_vec()),
        _ => None,
    }
}

/// One DER element with tag `tag` at the start of `input`: (its value, what follows).
fn expect(tag: u8, input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&actual, rest) = input.split_first()?;
    // The high-tag-number form never occurs in a key and is not accepted.
    if actual != tag || actual & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    // Short form, or one or two length bytes in their shortest (canonical) encoding.
    let (len, rest) = match first {
        n if n & 0x80 == 0 => (usize::from(n), rest),
        0x81 => match rest.split_first()? {
            (&n, rest) if n >= 0x80 => (usize::from(n), rest),
            _ => return None,
        },
        0x82 => {
            let (len, rest) = rest.split_at_checked(2)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            if len < 0x100 {
                return None;
            }
            (len, rest)
        }
        _ => return None,
    };
    rest.split_at_checked(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fixtures::repo::{KeyKind, TestKey};
    use serde_json::json;

    /// What `tough` 0.24 made of the same key object (the decoder this one replaced).
    fn tough_decode(value: &Value) -> Option<(KeyAlgorithm, Vec<u8>)> {
        use serde::Deserialize;
        use tough::schema::key::{EcdsaScheme, Ed25519Scheme, Key, RsaScheme};
        match Key::deserialize(value).ok()? {
            Key::Ecdsa {
                scheme: EcdsaScheme::EcdsaSha2Nistp256,
                keyval,
                ..
            }
            | Key::EcdsaOld {
                scheme: EcdsaScheme::EcdsaSha2Nistp256,
                keyval,
                ..
            } => Some((KeyAlgorithm::EcdsaP256, keyval.public.to_vec())),
            Key::Ed25519 {
                scheme: Ed25519Scheme::Ed25519,
                keyval,
                ..
            } => Some((KeyAlgorithm::Ed25519, keyval.public.to_vec())),
            Key::Rsa {
                scheme: RsaScheme::RsassaPssSha256,
                keyval,
                ..
            } => Some((KeyAlgorithm::RsaPssSha256, keyval.public.to_vec())),
        }
    }

    fn same(value: &Value) {
        assert_eq!(decode(value), tough_decode(value), "{value}");
    }

    fn committed() -> Vec<Value> {
        let mut keys = Vec::new();
        for i in 0..5 {
            keys.push(TestKey::get(KeyKind::Ed25519, i).public_json().clone());
            keys.push(TestKey::get(KeyKind::EcdsaP256, i).public_json().clone());
        }
        for i in 0..4 {
            keys.push(TestKey::get(KeyKind::Rsa, i).public_json().clone());
        }
        keys
    }

    fn with_public(key: &Value, public: &str) -> Value {
        let mut key = key.clone();
        key["keyval"]["public"] = json!(public);
        key
    }

    #[test]
    fn every_committed_key_decodes_as_tough_decodes_it() {
        for key in committed() {
            assert!(decode(&key).is_some(), "{key}");
            same(&key);
            // The older ECDSA key type, and extra fields, are read the same way.
            let mut old = key.clone();
            if old["keytype"] == "ecdsa" {
                old["keytype"] = json!("ecdsa-sha2-nistp256");
            }
            old["keyid_hash_algorithms"] = json!(["sha256", "sha512"]);
            old["keyval"]["private"] = json!("");
            assert!(decode(&old).is_some(), "{old}");
            same(&old);
        }
    }

    #[test]
    fn damaged_keys_are_refused_exactly_where_tough_refuses_them() {
        for key in committed() {
            let public = key["keyval"]["public"].as_str().unwrap().to_owned();
            let Ok(pem) = pem::parse(&public) else {
                // ed25519: hex.
                for bad in [&public[1..], &public.to_uppercase(), "zz", ""] {
                    same(&with_public(&key, bad));
                }
                continue;
            };
            let der = pem.contents().to_vec();
            let as_pem = |bytes: Vec<u8>, label: &str| pem::encode(&pem::Pem::new(label, bytes));
            let mut variants = vec![
                as_pem(der.clone(), "RSA PUBLIC KEY"),
                as_pem([der.clone(), vec![0]].concat(), "PUBLIC KEY"),
                format!("  {public}\n\n"),
                public.replace('\n', "\r\n"),
                public.replace("-----BEGIN ", "-----BEGIN  "),
            ];
            // Every prefix of the DER, and every byte of the first 40 changed (the headers, the
            // identifiers and the bit string's count of unused bits are all there).
            for len in 0..der.len() {
                variants.push(as_pem(der[..len].to_vec(), "PUBLIC KEY"));
            }
            for at in 0..der.len().min(40) {
                for flip in [0x01, 0x80, 0xff] {
                    let mut d = der.clone();
                    d[at] ^= flip;
                    variants.push(as_pem(d, "PUBLIC KEY"));
                }
            }
            for v in &variants {
                same(&with_public(&key, v));
            }
            // Another scheme or key type for the same bytes.
            for (keytype, scheme) in [
                ("rsa", "ecdsa-sha2-nistp256"),
                ("ecdsa", "rsassa-pss-sha256"),
                ("ed25519", "ecdsa-sha2-nistp256"),
                ("rsa", "rsassa-pss-sha384"),
                ("RSA", "rsassa-pss-sha256"),
            ] {
                let mut k = key.clone();
                k["keytype"] = json!(keytype);
                k["scheme"] = json!(scheme);
                same(&k);
            }
        }
    }

    #[test]
    fn ecdsa_points_in_hex_and_odd_shapes_match_tough() {
        let key = TestKey::get(KeyKind::EcdsaP256, 0).public_json().clone();
        let (_, point) = decode(&key).unwrap();
        for public in [hex::encode(&point), hex::encode_upper(&point), "04".into()] {
            let k = with_public(&key, &public);
            same(&k);
        }
        assert_eq!(
            decode(&with_public(&key, &hex::encode(&point))),
            Some((KeyAlgorithm::EcdsaP256, point))
        );
        for odd in [
            json!({"keytype": "ed25519", "scheme": "ed25519"}),
            json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": 7}}),
            json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": "00"}),
            json!({"scheme": "ed25519", "keyval": {"public": "00"}}),
            json!({"keytype": "ed25519", "keyval": {"public": "00"}}),
            json!("ed25519"),
        ] {
            assert!(decode(&odd).is_none(), "{odd}");
            same(&odd);
        }
    }
}
