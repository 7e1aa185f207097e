//! Keys in hardware: a [`KeySource`] whose private key lives in a PKCS#11 token (an HSM, a
//! smart card, a YubiKey's PIV applet through its module, SoftHSM2) and never leaves it.
//!
//! A key is named by an RFC 7512 `pkcs11:` URI:
//!
//! ```text
//! pkcs11:token=updata;object=targets?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:pin.txt
//! ```
//!
//! - path attributes (`;`-separated, percent-encoded): `token`, `serial`, `manufacturer`,
//!   `model` pick the token (any left out match every token; exactly one token must match);
//!   `object` (the key's label) and/or `id` (its `CKA_ID`, bytes percent-encoded such as
//!   `%01%a2`) pick the key; `type` may be given as `private` (or `public`) and is otherwise
//!   ignored;
//! - query attributes (`&`-separated): `module-path`, the module to load (default: the
//!   `UPDATA_PKCS11_MODULE` environment variable); `pin-source`, where the user PIN is read:
//!   `file:PATH` or a plain `PATH` (the first line of the file), or `env:VAR` (an
//!   environment variable). Without `pin-source`, `UPDATA_PKCS11_PIN` is read, and then the
//!   caller's prompt (the `updata` binary asks on the terminal). `pin-value` is refused: a
//!   PIN on the command line is visible to every user of the machine.
//!
//! Key types: ECDSA P-256 (`CKM_ECDSA` over a SHA-256 digest made here; the signature is
//! converted to the DER `ECDSA-Sig-Value` that [`FileKey`](crate::keys::FileKey) produces,
//! scheme `ecdsa-sha2-nistp256`) and ed25519 (`CKM_EDDSA`, pure ed25519, scheme `ed25519`).
//! Public keys appear in TUF metadata exactly as those of key files do, so a key can move
//! from a file to a token without any client noticing a difference in format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};

use super::error::Error;
use super::keys::{KeySource, KeyType, P256_SPKI_PREFIX, PublicKey};

/// The environment variable naming the PKCS#11 module when a URI has no `module-path`.
pub const MODULE_ENV: &str = "UPDATA_PKCS11_MODULE";
/// The environment variable holding the user PIN when a URI has no `pin-source`.
pub const PIN_ENV: &str = "UPDATA_PKCS11_PIN";

/// DER of the P-256 curve's OID (`CKA_EC_PARAMS` of a P-256 key).
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the ed25519 OID 1.3.101.112 (`CKA_EC_PARAMS` of an ed25519 key).
const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER PrintableString "edwards25519", the other `CKA_EC_PARAMS` form of an ed25519 key.
const ED25519_PARAMS_NAME: &[u8] = b"\x13\x0cedwards25519";

/// Asks the user for a PIN; gets a description of the token. The `updata` binary reads the
/// terminal without echo.
pub type PinPrompt<'a> = &'a dyn Fn(&str) -> std::io::Result<String>;

/// A parsed `pkcs11:` URI (RFC 7512), with the attributes `updata` uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token`: the token's label.
    pub token: Option<String>,
    /// `serial`: the token's serial number.
    pub serial: Option<String>,
    /// `manufacturer`: the token's manufacturer.
    pub manufacturer: Option<String>,
    /// `model`: the token's model.
    pub model: Option<String>,
    /// `object`: the key's label (`CKA_LABEL`).
    pub object: Option<String>,
    /// `id`: the key's `CKA_ID`.
    pub id: Option<Vec<u8>>,
    /// `module-path`: the PKCS#11 module.
    pub module_path: Option<PathBuf>,
    /// `pin-source`: where the PIN is read.
    pub pin_source: Option<String>,
}

/// Whether a `--key` argument is a PKCS#11 URI rather than a file.
pub fn is_uri(arg: &str) -> bool {
    arg.starts_with("pkcs11:")
}

fn percent_decode(value: &str, uri: &str) -> Result<Vec<u8>, Error> {
    let bad = || Error::Pkcs11 {
        key: uri.split_once('?').map_or(uri, |(path, _)| path).to_owned(),
        reason: "a value has a bad percent-encoding (each % is followed by two hex digits)"
            .to_owned(),
    };
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
    out
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI.
    ///
    /// ```
    /// use updata::pkcs11::Pkcs11Uri;
    /// let uri = Pkcs11Uri::parse("pkcs11:token=My%20HSM;object=root;id=%01%02?pin-source=file:pin")?;
    /// assert_eq!(uri.token.as_deref(), Some("My HSM"));
    /// assert_eq!(uri.id.as_deref(), Some(&[1u8, 2][..]));
    /// assert_eq!(uri.to_string(), "pkcs11:token=My%20HSM;object=root;id=%01%02");
    /// assert!(Pkcs11Uri::parse("pkcs11:object=root?pin-value=1234").is_err());
    /// # Ok::<(), updata::Error>(())
    /// ```
    pub fn parse(uri: &str) -> Result<Self, Error> {
        // Messages name the URI without its query, which may hold a PIN by mistake.
        let shown = uri.split_once('?').map_or(uri, |(path, _)| path);
        let bad = |reason: String| Error::Pkcs11 {
            key: shown.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| bad("not a pkcs11: URI".to_owned()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let text = |v: &str| {
            String::from_utf8(percent_decode(v, uri)?)
                .map_err(|_| bad(format!("{v:?} is not UTF-8 once decoded")))
        };
        let mut out = Self::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("{attr:?} is not NAME=VALUE")))?;
            match name {
                "token" => out.token = Some(text(value)?),
                "serial" => out.serial = Some(text(value)?),
                "manufacturer" => out.manufacturer = Some(text(value)?),
                "model" => out.model = Some(text(value)?),
                "object" => out.object = Some(text(value)?),
                "id" => out.id = Some(percent_decode(value, uri)?),
                "type" if matches!(value, "private" | "public") => {}
                "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "slot-id" => {}
                _ => {
                    return Err(bad(format!(
                        "{name}={value} is not a path attribute updata knows (token, serial, \
                         manufacturer, model, object, id, type=private)"
                    )));
                }
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad("a query attribute is not NAME=VALUE".to_owned()))?;
            match name {
                "module-path" => out.module_path = Some(PathBuf::from(text(value)?)),
                "pin-source" => out.pin_source = Some(text(value)?),
                "pin-value" => {
                    return Err(bad(
                        "pin-value is refused: a PIN on the command line is visible to every \
                         user of this machine; use pin-source=file:PATH, pin-source=env:VAR, \
                         UPDATA_PKCS11_PIN or the prompt"
                            .to_owned(),
                    ));
                }
                _ => {
                    return Err(bad(format!(
                        "{name}= is not a query attribute updata knows (module-path, pin-source)"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The module to load: `module-path`, or the [`MODULE_ENV`] variable.
    fn module(&self) -> Result<PathBuf, Error> {
        self.module_path
            .clone()
            .or_else(|| std::env::var_os(MODULE_ENV).map(PathBuf::from))
            .ok_or_else(|| Error::Pkcs11 {
                key: self.to_string(),
                reason: format!(
                    "no PKCS#11 module: give module-path=PATH in the URI or set {MODULE_ENV}"
                ),
            })
    }
}

/// The URI without its query (no module path, no PIN source): how a key is named in messages.
impl std::fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (name, value) in [
            ("token", &self.token),
            ("serial", &self.serial),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("object", &self.object),
        ] {
            if let Some(v) = value {
                parts.push(format!("{name}={}", percent_encode(v.as_bytes())));
            }
        }
        if let Some(id) = &self.id {
            let hex = id.iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "%{b:02x}");
                s
            });
            parts.push(format!("id={hex}"));
        }
        write!(f, "pkcs11:{}", parts.join(";"))
    }
}

/// One context per module for the whole process: a module is initialised once
/// (`C_Initialize` a second time fails), and its tokens' logins are shared by its sessions.
fn context(module: &Path, uri: &Pkcs11Uri) -> Result<Pkcs11, Error> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let fail = |reason: String| Error::Pkcs11 {
        key: uri.to_string(),
        reason,
    };
    let mut contexts = CONTEXTS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| fail("an earlier PKCS#11 call panicked".to_owned()))?;
    if let Some(c) = contexts.get(module) {
        return Ok(c.clone());
    }
    if !module.is_file() {
        return Err(fail(format!(
            "the PKCS#11 module {} does not exist (module-path= in the URI, or {MODULE_ENV})",
            module.display()
        )));
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        fail(format!(
            "loading the PKCS#11 module {}: {}",
            module.display(),
            describe_ck(&e)
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(fail(format!(
                "initialising the PKCS#11 module {}: {}",
                module.display(),
                describe_ck(&e)
            )));
        }
    }
    contexts.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

/// The PIN (its SHA-256) each token of this process was logged in with, by module and slot.
type Logins = Mutex<HashMap<(PathBuf, u64), Vec<u8>>>;

fn logins() -> &'static Logins {
    static LOGINS: OnceLock<Logins> = OnceLock::new();
    LOGINS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// One line for a PKCS#11 error: what the return value means to the user, and its name.
fn describe_ck(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => {
            let what = match rv {
                RvError::PinIncorrect => "the PIN is wrong",
                RvError::PinLocked => {
                    "the PIN is locked (too many wrong PINs; unlock it with the SO PIN)"
                }
                RvError::PinExpired => "the PIN has expired",
                RvError::TokenNotPresent => "the token is not present (removed?)",
                RvError::DeviceRemoved => "the token was removed",
                RvError::TokenNotRecognized => "the token is not recognised",
                RvError::UserPinNotInitialized => "the token's user PIN is not initialised",
                RvError::MechanismInvalid => "the token does not support this mechanism",
                RvError::DeviceError => "the device failed",
                RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => {
                    "the key is no longer on the token (was the token removed?)"
                }
                RvError::SessionHandleInvalid | RvError::SessionClosed => {
                    "the session with the token is gone (was the token removed?)"
                }
                _ => "",
            };
            if what.is_empty() {
                format!("{} failed: {rv:?}", c_name(*function))
            } else {
                format!("{what} ({}: {rv:?})", c_name(*function))
            }
        }
        CkError::LibraryLoading(e) => format!("not a loadable PKCS#11 module: {e}"),
        other => other.to_string(),
    }
}

/// `C_Login` for `Function::Login`.
fn c_name(function: cryptoki::context::Function) -> String {
    let name = format!("{function}");
    format!("C_{}", name.strip_prefix("Function::").unwrap_or(&name))
}

/// The PIN, from the URI's `pin-source`, [`PIN_ENV`], or `prompt`.
fn read_pin(uri: &Pkcs11Uri, token: &str, prompt: Option<PinPrompt<'_>>) -> Result<String, Error> {
    let fail = |reason: String| Error::Pkcs11 {
        key: uri.to_string(),
        reason,
    };
    let first_line = |s: String| s.lines().next().unwrap_or_default().to_owned();
    let pin =
        match uri.pin_source.as_deref() {
            Some(src) => {
                if let Some(var) = src.strip_prefix("env:") {
                    std::env::var(var).map_err(|_| {
                        fail(format!(
                            "pin-source=env:{var}: the variable {var} is not set"
                        ))
                    })?
                } else {
                    let path = src.strip_prefix("file:").unwrap_or(src);
                    let path = path.strip_prefix("//").unwrap_or(path);
                    first_line(std::fs::read_to_string(path).map_err(|e| {
                        fail(format!("reading the PIN file {path} (pin-source): {e}"))
                    })?)
                }
            }
            None => match std::env::var(PIN_ENV) {
                Ok(p) => p,
                Err(_) => match prompt {
                    Some(ask) => first_line(
                        ask(&format!("PIN for token {token:?}"))
                            .map_err(|e| fail(format!("reading the PIN: {e}")))?,
                    ),
                    None => {
                        return Err(fail(format!(
                            "no PIN for token {token:?}: give pin-source=file:PATH (or env:VAR) in \
                         the URI, set {PIN_ENV}, or run on a terminal to be asked"
                        )));
                    }
                },
            },
        };
    Ok(pin)
}

/// A logged-in session on the token a URI names.
struct Token {
    /// Keeps the module loaded while the session lives.
    _ctx: Pkcs11,
    session: Session,
    label: String,
}

impl Token {
    fn open(uri: &Pkcs11Uri, rw: bool, prompt: Option<PinPrompt<'_>>) -> Result<Self, Error> {
        let fail = |reason: String| Error::Pkcs11 {
            key: uri.to_string(),
            reason,
        };
        let module = uri.module()?;
        let ctx = context(&module, uri)?;
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| fail(format!("listing the tokens: {}", describe_ck(&e))))?;
        let mut found: Vec<(Slot, String)> = Vec::new();
        let mut seen = Vec::new();
        for slot in slots {
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            let matches = |want: &Option<String>, have: &str| {
                want.as_deref().is_none_or(|w| w == have.trim_end())
            };
            let label = info.label().trim_end().to_owned();
            if matches(&uri.token, info.label())
                && matches(&uri.serial, info.serial_number())
                && matches(&uri.manufacturer, info.manufacturer_id())
                && matches(&uri.model, info.model())
            {
                found.push((slot, label.clone()));
            }
            if !label.is_empty() {
                seen.push(format!("{label:?}"));
            }
        }
        let (slot, label) = match found.len() {
            1 => found.remove(0),
            0 => {
                return Err(fail(format!(
                    "no such token in {} (tokens present: {})",
                    module.display(),
                    if seen.is_empty() {
                        "none".to_owned()
                    } else {
                        seen.join(", ")
                    }
                )));
            }
            _ => {
                return Err(fail(format!(
                    "{} tokens match ({}): name one with token=, serial=, ...",
                    found.len(),
                    seen.join(", ")
                )));
            }
        };
        let session = if rw {
            ctx.open_rw_session(slot)
        } else {
            ctx.open_ro_session(slot)
        }
        .map_err(|e| {
            fail(format!(
                "opening a session on token {label:?}: {}",
                describe_ck(&e)
            ))
        })?;
        let pin = read_pin(uri, &label, prompt)?;
        // A token's login is shared by all of this process's sessions on it: a second key on
        // the same token finds it logged in. Its PIN must still be the one that logged in, or
        // a wrong PIN would go unnoticed behind a right one.
        let pin_hash = Sha256::digest(pin.as_bytes()).to_vec();
        let pin = AuthPin::from(pin);
        let login_key = (module.clone(), slot.id());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {
                logins()
                    .lock()
                    .map_err(|_| fail("an earlier PKCS#11 call panicked".to_owned()))?
                    .insert(login_key, pin_hash);
            }
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                let same = logins()
                    .lock()
                    .map_err(|_| fail("an earlier PKCS#11 call panicked".to_owned()))?
                    .get(&login_key)
                    .is_none_or(|h| *h == pin_hash);
                if !same {
                    return Err(fail(format!(
                        "logging in to token {label:?}: the PIN is wrong (it is not the PIN this \
                         token was logged in with for another key)"
                    )));
                }
            }
            Err(e) => {
                return Err(fail(format!(
                    "logging in to token {label:?}: {}",
                    describe_ck(&e)
                )));
            }
        }
        Ok(Self {
            _ctx: ctx,
            session,
            label,
        })
    }

    fn fail(&self, uri: &Pkcs11Uri, what: &str, e: &CkError) -> Error {
        Error::Pkcs11 {
            key: uri.to_string(),
            reason: format!("{what} on token {:?}: {}", self.label, describe_ck(e)),
        }
    }

    /// The objects of `class` that the URI's `object` and `id` name.
    fn find(&self, uri: &Pkcs11Uri, class: ObjectClass) -> Result<Vec<ObjectHandle>, Error> {
        let mut template = vec![Attribute::Class(class)];
        if let Some(label) = &uri.object {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        self.session
            .find_objects(&template)
            .map_err(|e| self.fail(uri, "searching for the key", &e))
    }

    /// The one object of `class` the URI names.
    fn find_one(&self, uri: &Pkcs11Uri, class: ObjectClass) -> Result<ObjectHandle, Error> {
        let kind = if class == ObjectClass::PRIVATE_KEY {
            "private"
        } else {
            "public"
        };
        let mut found = self.find(uri, class)?;
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Error::Pkcs11 {
                key: uri.to_string(),
                reason: format!(
                    "token {:?} has no {kind} key with this object/id (generate one with \
                     `updata key generate URI`)",
                    self.label
                ),
            }),
            n => Err(Error::Pkcs11 {
                key: uri.to_string(),
                reason: format!(
                    "{n} {kind} keys on token {:?} match: name one by object= and id=",
                    self.label
                ),
            }),
        }
    }

    /// The public key of the key pair the URI names, as TUF lists it.
    fn public_key(&self, uri: &Pkcs11Uri) -> Result<(PublicKey, Algorithm), Error> {
        let public = self.find_one(uri, ObjectClass::PUBLIC_KEY)?;
        let attrs = self
            .session
            .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(|e| self.fail(uri, "reading the public key", &e))?;
        let (mut params, mut point) = (None, None);
        for a in attrs {
            match a {
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                _ => {}
            }
        }
        let bad = |reason: &str| Error::Pkcs11 {
            key: uri.to_string(),
            reason: format!("the public key on token {:?} {reason}", self.label),
        };
        let (Some(params), Some(point)) = (params, point) else {
            return Err(bad(
                "is not an elliptic-curve key (ECDSA P-256 and ed25519 are supported)",
            ));
        };
        // CKA_EC_POINT is a DER OCTET STRING around the point; some tokens give it bare.
        let unwrap = |want: usize| match point.as_slice() {
            [0x04, len, rest @ ..] if *len as usize == want && rest.len() == want => {
                Some(rest.to_vec())
            }
            raw if raw.len() == want => Some(raw.to_vec()),
            _ => None,
        };
        if params == P256_PARAMS {
            let raw = unwrap(65)
                .filter(|p| p[0] == 0x04)
                .ok_or_else(|| bad("has a P-256 point that is not 65 uncompressed bytes"))?;
            let mut spki = P256_SPKI_PREFIX.to_vec();
            spki.extend_from_slice(&raw);
            Ok((PublicKey::ecdsa_p256_spki(&spki), Algorithm::EcdsaP256))
        } else if params == ED25519_PARAMS || params == ED25519_PARAMS_NAME {
            let raw = unwrap(32).ok_or_else(|| bad("has an ed25519 point that is not 32 bytes"))?;
            Ok((PublicKey::ed25519(&raw), Algorithm::Ed25519))
        } else {
            Err(bad(
                "is on a curve updata does not sign with (ECDSA P-256 and ed25519 are supported)",
            ))
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Algorithm {
    Ed25519,
    EcdsaP256,
}

/// A key pair in a PKCS#11 token: signs there, with a session logged in when it was opened.
pub struct Pkcs11Key {
    uri: Pkcs11Uri,
    label: String,
    algorithm: Algorithm,
    private: ObjectHandle,
    public: PublicKey,
    /// `Session` is `Send` but not `Sync`; signing takes the lock.
    session: Mutex<Token>,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkcs11Key({}, {})", self.uri, self.public.id())
    }
}

impl Pkcs11Key {
    /// Opens the key `uri` names: loads the module, finds the token, logs in (the PIN from
    /// the URI's `pin-source`, [`PIN_ENV`], or `prompt`), finds the private key and reads the
    /// public key of the same label/id.
    pub fn open(uri: &str, prompt: Option<PinPrompt<'_>>) -> Result<Self, Error> {
        let uri = Pkcs11Uri::parse(uri)?;
        require_name(&uri)?;
        let token = Token::open(&uri, false, prompt)?;
        let private = token.find_one(&uri, ObjectClass::PRIVATE_KEY)?;
        let (public, algorithm) = token.public_key(&uri)?;
        Ok(Self {
            label: token.label.clone(),
            uri,
            algorithm,
            private,
            public,
            session: Mutex::new(token),
        })
    }
}

fn require_name(uri: &Pkcs11Uri) -> Result<(), Error> {
    if uri.object.is_none() && uri.id.is_none() {
        return Err(Error::Pkcs11 {
            key: uri.to_string(),
            reason: "name the key with object=LABEL and/or id=%XX...".to_owned(),
        });
    }
    Ok(())
}

/// The public key of the key pair `uri` names, read from the token (logging in: tokens may
/// keep even public objects private).
pub fn public_key(uri: &str, prompt: Option<PinPrompt<'_>>) -> Result<PublicKey, Error> {
    let uri = Pkcs11Uri::parse(uri)?;
    require_name(&uri)?;
    let token = Token::open(&uri, false, prompt)?;
    Ok(token.public_key(&uri)?.0)
}

/// Generates a key pair in the token `uri` names, labelled with its `object` (required) and
/// with its `id` (or 16 random bytes). The private key is sensitive and not extractable: it
/// never leaves the token. Refuses when the token already holds a key with that label or id.
pub fn generate(
    uri: &str,
    kind: KeyType,
    prompt: Option<PinPrompt<'_>>,
) -> Result<PublicKey, Error> {
    let mut uri = Pkcs11Uri::parse(uri)?;
    let Some(label) = uri.object.clone() else {
        return Err(Error::Pkcs11 {
            key: uri.to_string(),
            reason: "a new key needs a label: give object=LABEL".to_owned(),
        });
    };
    let token = Token::open(&uri, true, prompt)?;
    // Nothing with this label (or id) may exist: a key is never replaced or shadowed.
    let by_label = Pkcs11Uri {
        id: None,
        ..uri.clone()
    };
    let by_id = Pkcs11Uri {
        object: None,
        ..uri.clone()
    };
    for (u, check) in [(&by_label, true), (&by_id, uri.id.is_some())] {
        if !check {
            continue;
        }
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            if !token.find(u, class)?.is_empty() {
                return Err(Error::Pkcs11 {
                    key: uri.to_string(),
                    reason: format!(
                        "token {:?} already holds a key with this {}: a key is never replaced \
                         (choose another object= label)",
                        token.label,
                        if u.object.is_some() { "label" } else { "id" }
                    ),
                });
            }
        }
    }
    let id = if let Some(id) = uri.id.clone() {
        id
    } else {
        let mut id = vec![0u8; 16];
        aws_lc_rs::rand::fill(&mut id).map_err(|e| Error::Pkcs11 {
            key: uri.to_string(),
            reason: format!("making a random key id: {e}"),
        })?;
        uri.id = Some(id.clone());
        id
    };
    let (mechanism, params) = match kind {
        KeyType::EcdsaP256 => (Mechanism::EccKeyPairGen, P256_PARAMS.to_vec()),
        KeyType::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, ED25519_PARAMS.to_vec()),
    };
    let common = [
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id),
    ];
    let mut public_template = common.to_vec();
    public_template.extend([
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(params),
    ]);
    let mut private_template = common.to_vec();
    private_template.extend([
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    token
        .session
        .generate_key_pair(&mechanism, &public_template, &private_template)
        .map_err(|e| token.fail(&uri, "generating the key pair", &e))?;
    Ok(token.public_key(&uri)?.0)
}

/// DER `ECDSA-Sig-Value` (SEQUENCE of two INTEGERs) from the raw `r || s` that `CKM_ECDSA`
/// returns.
fn ecdsa_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let integer = |half: &[u8]| {
        let start = half.iter().position(|&b| b != 0).unwrap_or(half.len() - 1);
        let mut v = half[start..].to_vec();
        if v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let (r, s) = raw.split_at(32);
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    Some(out)
}

impl KeySource for Pkcs11Key {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        let fail = |reason: String| Error::Sign {
            key: self.describe(),
            reason,
        };
        let token = self
            .session
            .lock()
            .map_err(|_| fail("an earlier signature panicked".to_owned()))?;
        match self.algorithm {
            Algorithm::EcdsaP256 => {
                let digest = Sha256::digest(msg);
                let raw = token
                    .session
                    .sign(&Mechanism::Ecdsa, self.private, &digest)
                    .map_err(|e| fail(format!("on token {:?}: {}", self.label, describe_ck(&e))))?;
                ecdsa_der(&raw).ok_or_else(|| {
                    fail(format!(
                        "the token returned a {}-byte ECDSA signature, not 64",
                        raw.len()
                    ))
                })
            }
            Algorithm::Ed25519 => token
                .session
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    self.private,
                    msg,
                )
                .map_err(|e| fail(format!("on token {:?}: {}", self.label, describe_ck(&e)))),
        }
    }

    fn describe(&self) -> String {
        self.uri.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_print() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=a%3bb;serial=12;object=root;id=%00%ff;type=private?module-path=/m.so&pin-source=env:P",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("a;b"));
        assert_eq!(u.serial.as_deref(), Some("12"));
        assert_eq!(u.id.as_deref(), Some(&[0u8, 255][..]));
        assert_eq!(u.module_path.as_deref(), Some(Path::new("/m.so")));
        assert_eq!(u.pin_source.as_deref(), Some("env:P"));
        assert_eq!(
            u.to_string(),
            "pkcs11:token=a%3bb;serial=12;object=root;id=%00%ff"
        );
        for bad in [
            "pkcs11:object=root?pin-value=1",
            "pkcs11:objekt=root",
            "pkcs11:object=%zz",
            "pkcs11:object",
            "file:root.pem",
        ] {
            assert!(Pkcs11Uri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ecdsa_signatures_become_der() {
        let mut raw = [0u8; 64];
        raw[31] = 1; // r = 1
        raw[32] = 0x80; // s has its high bit set: a leading zero byte
        let der = ecdsa_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 3 + 35, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 33, 0x00]);
        assert_eq!(der.len(), 2 + 3 + 35);
        assert!(ecdsa_der(&raw[..63]).is_none());
    }
}
