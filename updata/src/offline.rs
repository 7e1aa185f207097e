//! Signing on a machine that never sees the repository: the root key stays on an offline
//! machine (or in a token there), and only files cross the air gap.
//!
//! 1. On the publishing machine, [`export`] writes the metadata to sign (a root edited with the
//!    `root` commands, say) without its signatures, or its canonical bytes for a signing tool
//!    that signs bytes.
//! 2. On each offline machine, [`sign`] signs that file with a local key (a key file or a
//!    `pkcs11:` key) and writes a small [`SignatureFile`]: which content it signs (the SHA-256
//!    of the canonical bytes), the key id and the signature.
//! 3. Back on the publishing machine, [`import`] checks every signature file against the
//!    metadata (the same content), the keys the root lists for the role, and the signature
//!    itself, before adding it. One bad file refuses them all; nothing is written.
//!
//! Signature files can come back in any order and from any number of machines; the threshold is
//! what the root asks for, and [`import`] says which thresholds are still unmet.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{Error, io};
use super::keys::KeySource;
use super::metadata::{Envelope, MetaList, Root, SignedFile, Targets, write_atomic};
use super::root;
use tuf::{KeyId, Role};

/// A signature made offline, as `updata offline sign` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureFile {
    /// The role of the metadata signed (`root`, `targets`, ...).
    pub role: String,
    /// Its version.
    pub version: u64,
    /// Hex SHA-256 of the canonical bytes signed: the exact content, so that a signature of an
    /// earlier draft is never imported into a later one.
    pub signed_sha256: String,
    /// The key that signed.
    pub keyid: KeyId,
    /// The signature, hex, as TUF metadata carries it.
    pub sig: String,
}

/// What was imported, and whether the metadata is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The key ids whose signatures were added (or replaced).
    pub keyids: Vec<KeyId>,
    /// `None` when every threshold is met, or what is still missing.
    pub incomplete: Option<String>,
}

/// A metadata file of any top-level role, read from disk.
enum AnyRole {
    Root(Envelope<Root>),
    Targets(Envelope<Targets>),
    List(Envelope<MetaList>),
}

#[derive(Deserialize)]
struct TypeOnly {
    signed: TypeField,
}

#[derive(Deserialize)]
struct TypeField {
    #[serde(rename = "_type")]
    type_name: String,
}

impl AnyRole {
    fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(io("reading", path))?;
        let t: TypeOnly = serde_json::from_slice(&bytes).map_err(|e| Error::BadMetadata {
            path: path.to_owned(),
            reason: format!("not TUF metadata (no signed._type): {e}"),
        })?;
        Ok(match t.signed.type_name.as_str() {
            "root" => Self::Root(Envelope::from_slice(&bytes, path)?),
            "targets" => Self::Targets(Envelope::from_slice(&bytes, path)?),
            "snapshot" | "timestamp" => Self::List(Envelope::from_slice(&bytes, path)?),
            other => {
                return Err(Error::BadMetadata {
                    path: path.to_owned(),
                    reason: format!("{other:?} is not a role updata signs"),
                });
            }
        })
    }

    fn role(&self) -> Role {
        Role::from_name(&self.header().type_name)
    }

    fn header(&self) -> &tuf::schema::Header {
        match self {
            Self::Root(e) => &e.signed.header,
            Self::Targets(e) => &e.signed.header,
            Self::List(e) => &e.signed.header,
        }
    }

    fn canonical(&self) -> Result<Vec<u8>, Error> {
        match self {
            Self::Root(e) => e.canonical(),
            Self::Targets(e) => e.canonical(),
            Self::List(e) => e.canonical(),
        }
    }

    fn signatures_mut(&mut self) -> &mut Vec<tuf::schema::Signature> {
        match self {
            Self::Root(e) => &mut e.signatures,
            Self::Targets(e) => &mut e.signatures,
            Self::List(e) => &mut e.signatures,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Root(e) => e.to_bytes(),
            Self::Targets(e) => e.to_bytes(),
            Self::List(e) => e.to_bytes(),
        }
    }
}

/// How [`export`] writes the metadata to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportForm {
    /// The metadata file without signatures (what [`sign`] reads, and a person can review).
    Unsigned,
    /// The canonical JSON bytes that a signature is over, for a tool that signs bytes.
    Canonical,
}

/// Writes the metadata at `metadata` to `out` in `form`, for signing elsewhere. `out` must not
/// exist. Returns the hex SHA-256 of the canonical bytes, which every signature file of it
/// will carry.
pub fn export(metadata: &Path, out: &Path, form: ExportForm) -> Result<String, Error> {
    let mut file = AnyRole::load(metadata)?;
    let canonical = file.canonical()?;
    let bytes = match form {
        ExportForm::Unsigned => {
            file.signatures_mut().clear();
            file.to_bytes()
        }
        ExportForm::Canonical => canonical.clone(),
    };
    if out.exists() {
        return Err(Error::State(format!(
            "{} exists: give a new file to export to",
            out.display()
        )));
    }
    write_atomic(out, &bytes)?;
    Ok(hex::encode(Sha256::digest(&canonical)))
}

/// Signs the metadata file `metadata` (as [`export`] wrote it, or the file itself) with `key`,
/// on the offline machine. Nothing but the signature file is written.
pub fn sign(metadata: &Path, key: &dyn KeySource) -> Result<SignatureFile, Error> {
    let file = AnyRole::load(metadata)?;
    let canonical = file.canonical()?;
    let sig = key.sign(&canonical)?;
    Ok(SignatureFile {
        role: file.role().to_string(),
        version: file.header().version,
        signed_sha256: hex::encode(Sha256::digest(&canonical)),
        keyid: KeyId::from(key.public_key().id()),
        sig: hex::encode(sig),
    })
}

/// Writes a signature file (pretty JSON), never replacing one.
pub fn save_signature(sig: &SignatureFile, out: &Path) -> Result<(), Error> {
    if out.exists() {
        return Err(Error::State(format!(
            "{} exists: a signature file is never overwritten",
            out.display()
        )));
    }
    let mut bytes = serde_json::to_vec_pretty(sig).unwrap_or_default();
    bytes.push(b'\n');
    write_atomic(out, &bytes)
}

fn load_signature(path: &Path) -> Result<SignatureFile, Error> {
    let bytes = std::fs::read(path).map_err(io("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::BadMetadata {
        path: path.to_owned(),
        reason: format!("not a signature file of `updata offline sign`: {e}"),
    })
}

/// Imports signature files into the metadata file `metadata` and saves it, after checking each
/// one: it signs exactly this content, its key is one the root lists for the role, and the
/// signature verifies. The root is the file itself for a root (and `previous`, the version
/// before it, whose keys sign a rotation too); for another role it is `root`, required.
/// Nothing is written when any file is refused.
pub fn import(
    metadata: &Path,
    signatures: &[PathBuf],
    root_path: Option<&Path>,
    previous: Option<&Path>,
) -> Result<Imported, Error> {
    let mut file = AnyRole::load(metadata)?;
    let role = file.role();
    let canonical = file.canonical()?;
    let sha = hex::encode(Sha256::digest(&canonical));
    let previous = previous.map(Envelope::<Root>::load).transpose()?;
    let authority: Vec<(Root, String)> = match (&file, root_path) {
        (AnyRole::Root(r), _) => {
            let mut a = vec![(r.signed.clone(), root::describe(&r.signed, metadata))];
            if let Some(p) = &previous {
                let what = format!("root version {}", p.signed.header.version);
                a.push((p.signed.clone(), what));
            }
            a
        }
        (_, Some(path)) => {
            let r = Envelope::<Root>::load(path)?;
            vec![(r.signed.clone(), root::describe(&r.signed, path))]
        }
        (_, None) => {
            return Err(Error::State(format!(
                "{}: give the root whose {role} keys sign it (--root ROOT_JSON)",
                metadata.display()
            )));
        }
    };
    let mut added = Vec::new();
    for path in signatures {
        let s = load_signature(path)?;
        let refuse = |reason: String| Error::BadMetadata {
            path: path.clone(),
            reason,
        };
        if s.signed_sha256 != sha || s.role != role.as_str() {
            return Err(refuse(format!(
                "signs other content ({} version {}, sha256 {}) than {} ({role} version {}, \
                 sha256 {sha}): it was made for another draft; sign the current one again",
                s.role,
                s.version,
                s.signed_sha256,
                metadata.display(),
                file.header().version,
            )));
        }
        let Some((r, _)) = authority
            .iter()
            .find(|(r, _)| r.role(&role).is_some_and(|k| k.keyids.contains(&s.keyid)))
        else {
            return Err(Error::KeyNotInRoot {
                key: path.display().to_string(),
                keyid: s.keyid.clone(),
                role: role.to_string(),
                what: authority
                    .iter()
                    .map(|(_, w)| w.as_str())
                    .collect::<Vec<_>>()
                    .join(" nor of "),
            });
        };
        let one = tuf::schema::RoleKeys {
            keyids: vec![s.keyid.clone()],
            threshold: 1,
        };
        let sig = tuf::schema::Signature {
            keyid: s.keyid.clone(),
            sig: s.sig.clone(),
        };
        tuf::check_signed_by_root(r, &role, &one, canonical.clone(), vec![sig.clone()]).map_err(
            |e| {
                refuse(format!(
                    "the signature of key {} does not verify over {}: {e}",
                    s.keyid,
                    metadata.display()
                ))
            },
        )?;
        let sigs = file.signatures_mut();
        sigs.retain(|x| x.keyid != s.keyid);
        sigs.push(sig);
        added.push(s.keyid);
    }
    let incomplete = match &file {
        AnyRole::Root(r) => root::check_complete(
            r,
            &root::describe(&r.signed, metadata),
            previous.as_ref().map(|p| &p.signed),
        )
        .err()
        .map(|e| e.to_string()),
        AnyRole::Targets(t) => {
            let (r, what) = &authority[0];
            t.check_signed_by(r, &role, what)
                .err()
                .map(|e| e.to_string())
        }
        AnyRole::List(l) => {
            let (r, what) = &authority[0];
            l.check_signed_by(r, &role, what)
                .err()
                .map(|e| e.to_string())
        }
    };
    write_atomic(metadata, &file.to_bytes())?;
    Ok(Imported {
        keyids: added,
        incomplete,
    })
}
