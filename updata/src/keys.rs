//! Signing keys: generating them as PEM files, loading them, and the [`KeySource`] trait every
//! signature goes through.
//!
//! Key files are PKCS#8 `PRIVATE KEY` PEM (what `openssl genpkey` writes), ed25519 or ECDSA
//! P-256. Public keys are SPKI `PUBLIC KEY` PEM, so a key holder can hand out only the public
//! half for someone else's root. In TUF metadata an ed25519 key is `keytype`/`scheme`
//! `ed25519` with a hex `public`, an ECDSA key is `ecdsa` / `ecdsa-sha2-nistp256` with the PEM
//! text, as tough and python-tuf read them; the key id is the sha256 of the key object's
//! canonical JSON.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::error::{Error, io};
use super::metadata::canonical_json;
use super::pkcs11::{self, PinPrompt, Pkcs11Key};

/// SPKI DER header of an ed25519 public key (followed by the 32 key bytes).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// SPKI DER header of an uncompressed P-256 public key (followed by the 65 point bytes).
pub(crate) const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The key algorithms `updata` generates and signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ed25519.
    Ed25519,
    /// ECDSA on P-256 with SHA-256 (signatures DER-encoded).
    EcdsaP256,
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ed25519" => Ok(Self::Ed25519),
            "ecdsa-p256" | "ecdsa" => Ok(Self::EcdsaP256),
            _ => Err(format!("{s:?} is not a key type (ed25519 or ecdsa-p256)")),
        }
    }
}

/// A public key as TUF metadata lists it, with its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    tuf: Value,
    id: String,
}

impl PublicKey {
    fn new(tuf: Value) -> Self {
        // A key object we built holds strings only, so it always has a canonical form.
        let id = hex::encode(Sha256::digest(canonical_json(&tuf).unwrap_or_default()));
        Self { tuf, id }
    }

    fn from_spki_der(der: &[u8], origin: &str) -> Result<Self, Error> {
        if let Some(raw) = der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            if raw.len() == 32 {
                return Ok(Self::ed25519(raw));
            }
        }
        if der
            .strip_prefix(&P256_SPKI_PREFIX[..])
            .is_some_and(|p| p.len() == 65)
        {
            return Ok(Self::ecdsa_p256_spki(der));
        }
        Err(Error::BadKey {
            path: origin.to_owned(),
            reason: "not an ed25519 or ECDSA P-256 public key".to_owned(),
        })
    }

    pub(crate) fn ed25519(raw: &[u8]) -> Self {
        Self::new(json!({
            "keytype": "ed25519",
            "scheme": "ed25519",
            "keyval": {"public": hex::encode(raw)},
        }))
    }

    pub(crate) fn ecdsa_p256_spki(der: &[u8]) -> Self {
        Self::new(json!({
            "keytype": "ecdsa",
            "scheme": "ecdsa-sha2-nistp256",
            "keyval": {"public": pem_text("PUBLIC KEY", der)},
        }))
    }

    /// Reads a public key from a `PUBLIC KEY` PEM file, or the public half of a private key file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read(path).map_err(io("reading", path))?;
        let origin = path.display().to_string();
        let block = pem::parse(&text).map_err(|e| Error::BadKey {
            path: origin.clone(),
            reason: format!("not a PEM file: {e}"),
        })?;
        match block.tag() {
            "PUBLIC KEY" => Self::from_spki_der(block.contents(), &origin),
            _ => Ok(FileKey::from_pem(&text, &origin)?.public),
        }
    }

    /// The key id (hex sha256 of the canonical JSON of the key object).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key object as root.json lists it.
    pub fn to_tuf(&self) -> &Value {
        &self.tuf
    }

    /// The `PUBLIC KEY` PEM text (SPKI) of this key.
    pub fn to_pem(&self) -> String {
        let public = self.tuf["keyval"]["public"].as_str().unwrap_or_default();
        if self.tuf["keytype"] == "ed25519" {
            let mut der = ED25519_SPKI_PREFIX.to_vec();
            der.extend(hex::decode(public).unwrap_or_default());
            pem_text("PUBLIC KEY", &der)
        } else {
            public.to_owned()
        }
    }
}

fn pem_text(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Where signatures come from. Everything `updata` signs goes through this trait, so a key
/// held elsewhere only needs an implementation of these three methods; [`FileKey`] is the one
/// for PEM files, [`Pkcs11Key`] the one for keys in a PKCS#11 token.
///
/// `sign` gets the exact bytes to sign (the canonical JSON of a metadata file's `signed`
/// object) and returns the raw signature: 64 bytes for ed25519, a DER `ECDSA-Sig-Value` for
/// ECDSA P-256 (SHA-256 is applied by the signer), as the key's TUF `scheme` says.
pub trait KeySource: Send + Sync {
    /// The public key, as root lists it.
    fn public_key(&self) -> &PublicKey;
    /// Signs `msg`.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error>;
    /// Names the key for messages (a file path, a KMS key ARN, ...).
    fn describe(&self) -> String;
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
}

/// A private key in a PKCS#8 PEM file.
pub struct FileKey {
    path: String,
    pair: Pair,
    public: PublicKey,
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileKey({}, {})", self.path, self.public.id())
    }
}

impl FileKey {
    /// Loads a private key file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read(path).map_err(io("reading the key file", path))?;
        Self::from_pem(&text, &path.display().to_string())
    }

    fn from_pem(text: &[u8], origin: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadKey {
            path: origin.to_owned(),
            reason,
        };
        let block = pem::parse(text).map_err(|e| bad(format!("not a PEM file: {e}")))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(bad(format!(
                "a {:?} PEM block, not a PKCS#8 \"PRIVATE KEY\"",
                block.tag()
            )));
        }
        let der = block.contents();
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let public = PublicKey::ed25519(pair.public_key().as_ref());
            return Ok(Self {
                path: origin.to_owned(),
                pair: Pair::Ed25519(pair),
                public,
            });
        }
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der)
        {
            let mut spki = P256_SPKI_PREFIX.to_vec();
            spki.extend_from_slice(pair.public_key().as_ref());
            let public = PublicKey::ecdsa_p256_spki(&spki);
            return Ok(Self {
                path: origin.to_owned(),
                pair: Pair::Ecdsa(pair),
                public,
            });
        }
        Err(bad(
            "not an ed25519 or ECDSA P-256 private key (PKCS#8)".to_owned()
        ))
    }
}

impl KeySource for FileKey {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.pair {
            Pair::Ed25519(p) => Ok(p.sign(msg).as_ref().to_vec()),
            Pair::Ecdsa(p) => p
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| Error::Sign {
                    key: self.path.clone(),
                    reason: e.to_string(),
                }),
        }
    }

    fn describe(&self) -> String {
        self.path.clone()
    }
}

/// Opens the key a `--key` argument names: a `pkcs11:` URI ([`Pkcs11Key`]) or a private key
/// file ([`FileKey`]). `prompt` asks for a token's PIN when no other source gives it.
pub fn open(arg: &str, prompt: Option<PinPrompt<'_>>) -> Result<Box<dyn KeySource>, Error> {
    if pkcs11::is_uri(arg) {
        Ok(Box::new(Pkcs11Key::open(arg, prompt)?))
    } else {
        Ok(Box::new(FileKey::load(Path::new(arg))?))
    }
}

/// The public key an argument names: a `pkcs11:` URI (read from the token), a public key file,
/// or a private key file.
pub fn public_key_of(arg: &str, prompt: Option<PinPrompt<'_>>) -> Result<PublicKey, Error> {
    if pkcs11::is_uri(arg) {
        pkcs11::public_key(arg, prompt)
    } else {
        PublicKey::from_file(Path::new(arg))
    }
}

/// The public key file written next to a generated key: `x.pem` -> `x.pub.pem`.
pub fn public_key_path(private: &Path) -> PathBuf {
    let stem = private
        .file_stem()
        .map_or_else(|| "key".into(), |s| s.to_string_lossy().into_owned());
    private.with_file_name(format!("{stem}.pub.pem"))
}

/// Generates a key: the private key at `path` (PKCS#8 PEM, mode 0600) and its public key at
/// [`public_key_path`] (mode 0644). Neither file may exist: a key is never overwritten.
///
/// ```
/// use updata::keys::{generate, FileKey, KeySource, KeyType};
/// let dir = tempfile::tempdir()?;
/// let public = generate(&dir.path().join("root.pem"), KeyType::Ed25519)?;
/// let key = FileKey::load(&dir.path().join("root.pem"))?;
/// assert_eq!(key.public_key(), &public);
/// assert!(generate(&dir.path().join("root.pem"), KeyType::Ed25519).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn generate(path: &Path, kind: KeyType) -> Result<PublicKey, Error> {
    let rng = SystemRandom::new();
    let failed = |e: aws_lc_rs::error::Unspecified| Error::BadKey {
        path: path.display().to_string(),
        reason: format!("generating the key failed: {e}"),
    };
    let pkcs8 = match kind {
        KeyType::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        KeyType::EcdsaP256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map_err(failed)?
                .as_ref()
                .to_vec()
        }
    };
    let private_pem = pem_text("PRIVATE KEY", &pkcs8);
    let key = FileKey::from_pem(private_pem.as_bytes(), &path.display().to_string())?;
    let public_path = public_key_path(path);
    for p in [path, public_path.as_path()] {
        if p.exists() {
            return Err(Error::KeyExists { path: p.to_owned() });
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    write_new(path, private_pem.as_bytes(), 0o600)?;
    write_new(&public_path, key.public.to_pem().as_bytes(), 0o644)?;
    Ok(key.public)
}

/// Writes `key`'s public key PEM to a new file `path` (mode 0644; never replacing a file).
pub fn write_public(path: &Path, key: &PublicKey) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    write_new(path, key.to_pem().as_bytes(), 0o644)
}

/// Creates `path` (never replacing a file) with `mode`, writes and fsyncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                Error::KeyExists {
                    path: path.to_owned(),
                }
            } else {
                Error::Io {
                    action: "creating",
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("writing", path))
}
