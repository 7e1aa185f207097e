//! The TUF client: the specification's detailed client workflow (section 5), step by step.
//!
//! A crate of its own, usable without the rest of the workspace: [`Repository`] (load, look up
//! and read verified targets), [`schema`] (the metadata types, shared with the publisher, which
//! signs [`canonical_json`] and checks its files with [`check_signed_by_root`]), and
//! [`transport`] (HTTP with resume, stall limits and proxies; local files). The conformance
//! suite's client is `examples/tuf-conformance-client.rs`.
//!
//! [`Repository::load`] runs steps 5.1 to 5.6.6 against a [`Transport`], starting from the
//! trusted-metadata directory (seeded once from the shipped root) and persisting every file it
//! accepts there, atomically, as the exact bytes received. Targets are then looked up lazily
//! with the pre-order depth-first delegation search of step 5.6.7 ([`Repository::target`]) and
//! streamed through a verifying reader ([`Repository::read_target`], step 5.7).
//!
//! Step numbers in comments refer to the TUF specification, section 5 "Detailed client
//! workflow": 5.1 fix the start time, 5.2 load the trusted root, 5.3 update the root,
//! 5.4 timestamp, 5.5 snapshot, 5.6 targets, 5.7 fetch target.
//!
//! # Delegated roles are trusted per delegation path
//!
//! A delegated role has authority only through the delegation being followed. Each time the
//! search reaches a role, its metadata is checked against the delegating role of *that* path:
//! the keys and threshold it names, and its path patterns (the search only enters a delegation
//! whose patterns match the target). Verdicts are cached per delegation path, never per role
//! name, and the copy in the trusted-metadata directory is re-verified against the delegation
//! at hand before it is reused. Of the two behaviours the specification allows for a role that
//! two delegators delegate to (refuse such a role outright, or judge each lookup on its own
//! path), this client judges each lookup: when `parent-a` and `parent-b` both delegate
//! `release` and only `parent-a`'s key signs it, a lookup through `parent-a` succeeds and one
//! through `parent-b` fails, in either order.
//!
//! # The stored root
//!
//! The root stored in the trusted-metadata directory is what every later load starts from;
//! where it came from is recorded beside it (`root-history/origin.txt`) when it is seeded. A
//! signature check that fails against it carries a [`StoredRootNote`] in
//! [`Error::Threshold`], naming the file, its version and its origin, and what an operator can
//! do. Trust is never re-seeded automatically.
//!
//! # Signatures
//!
//! A key id may appear only once in a `signatures` array: a repeated one fails the file with
//! [`Error::DuplicateSignature`] (it is not counted once). Two key ids with the same public key
//! count as one key towards a threshold.
//!
//! Keys are decoded here (ed25519 in hex; ECDSA P-256 and RSA as PEM SubjectPublicKeyInfo, or an
//! ECDSA point in hex as go-tuf writes it: the inputs `tough` accepts, checked against it in a
//! test), and signatures are verified with `aws-lc-rs` over the canonical JSON (OLPC) of the
//! `signed` object exactly as received, with our own lenient serde types (see `schema`).
//!
//! [`Repository::target`] returns an owned `Result<Option<TargetDescription>, Error>` because
//! the delegation search downloads metadata lazily; [`Repository::load_offline`] takes the
//! trusted (shipped) root as a second argument, because verifying a cache against a root stored
//! in that same cache proves nothing.

mod canonical;
mod datastore;
mod error;
mod pattern;
mod public_key;
mod reader;
mod role;
pub mod schema;
mod verify;

pub use error::{Error, StoredRootNote};
pub use pattern::delegation_matches;
pub use reader::TargetReader;
pub use role::{KeyId, Role, Signer};
pub use schema::TargetDescription;
pub use verify::check_signed_by_root;

pub mod transport;

/// The canonical JSON (OLPC) of `value` as serialised: the bytes a signature covers. A
/// publisher signs these; the client checks signatures over the canonical form of what it
/// received, which for a file written from the same types is the same bytes.
pub fn canonical_json(value: &impl serde::Serialize) -> Result<Vec<u8>, serde_json::Error> {
    let mut buf = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut buf, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser)?;
    Ok(buf)
}

use chrono::{DateTime, Utc};
use reader::CappedReader;
use schema::{CanonicalEnvelope, Common, MetaFile, Root, Snapshot, Targets, Timestamp};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use transport::{Transport, TransportErrorKind};
use url::Url;

/// Where the shipped root lives on a host, used to seed an empty trusted-metadata directory.
pub const DEFAULT_TRUSTED_ROOT: &str = "/usr/share/updog/root.json";

/// Size and count limits that keep a hostile repository from exhausting memory or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted `N.root.json` (step 5.3.3's W).
    pub max_root_size: u64,
    /// Largest accepted `timestamp.json` (step 5.4.1's X).
    pub max_timestamp_size: u64,
    /// Largest accepted snapshot when timestamp does not list its length (step 5.5.1's Y).
    pub max_snapshot_size: u64,
    /// Largest accepted targets or delegated targets file when snapshot does not list its
    /// length (step 5.6.1's Z).
    pub max_targets_size: u64,
    /// Most root versions fetched in one load (step 5.3.3's Y).
    pub max_root_rotations: u32,
    /// Most roles visited in one target search (step 5.6.7.1).
    pub max_delegations: u32,
    /// The slowest download rate, in bytes per second, at which a metadata file of the largest
    /// accepted size still arrives in time: each metadata file must arrive whole within
    /// [`Limits::metadata_time_limit`] of its size cap (slow-retrieval attack check). Images
    /// are not limited this way; they only have the transport's stall timeout.
    pub metadata_min_rate: u64,
    /// The fixed part of a metadata file's time limit (connecting, TLS, the response head).
    /// Default 10 s.
    pub metadata_time_base: std::time::Duration,
}

/// Default of [`Limits::metadata_min_rate`]: 4 KiB/s (a 16 KiB `timestamp.json` gets 14 s).
pub const DEFAULT_METADATA_MIN_RATE: u64 = 4096;

impl Limits {
    /// The time a metadata file capped at `cap` bytes may take to arrive whole:
    /// [`Limits::metadata_time_base`] plus `cap` at [`Limits::metadata_min_rate`] bytes per
    /// second.
    ///
    /// ```
    /// use std::time::Duration;
    /// let limits = tuf::Limits::default();
    /// // timestamp.json, capped at 16 KiB: 10 s + 16384 B / 4096 B/s.
    /// assert_eq!(limits.metadata_time_limit(16 * 1024), Duration::from_secs(14));
    /// ```
    pub fn metadata_time_limit(&self, cap: u64) -> std::time::Duration {
        let rate = self.metadata_min_rate.max(1);
        let secs = cap.div_ceil(rate);
        self.metadata_time_base
            .saturating_add(std::time::Duration::from_secs(secs))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_root_size: 512 * 1024,
            max_timestamp_size: 16 * 1024,
            max_snapshot_size: 2 * 1024 * 1024,
            max_targets_size: 8 * 1024 * 1024,
            max_root_rotations: 256,
            max_delegations: 32,
            metadata_min_rate: DEFAULT_METADATA_MIN_RATE,
            metadata_time_base: std::time::Duration::from_secs(10),
        }
    }
}

/// How to load a repository.
#[derive(Debug, Clone)]
pub struct RepositoryOptions {
    /// Base URL of the metadata files (`.../metadata/`).
    pub metadata_base_url: Url,
    /// Base URL of the target files (`.../targets/`).
    pub targets_base_url: Url,
    /// The trusted-metadata directory (created if missing).
    pub datastore: PathBuf,
    /// The shipped root: seeds `datastore` when it has no `root.json` yet, and replaces the
    /// stored root when it has a higher version (an OS update shipped a newer root).
    pub trusted_root: PathBuf,
    /// Size and count limits.
    pub limits: Limits,
    /// The fixed update start time (step 5.1); `None` means "now".
    pub reference_time: Option<DateTime<Utc>>,
}

impl RepositoryOptions {
    /// Options with the default shipped root, default limits and the current time.
    pub fn new(metadata_base_url: Url, targets_base_url: Url, datastore: PathBuf) -> Self {
        Self {
            metadata_base_url,
            targets_base_url,
            datastore,
            trusted_root: PathBuf::from(DEFAULT_TRUSTED_ROOT),
            limits: Limits::default(),
            reference_time: None,
        }
    }
}

/// The delegation path of a role: the role names from the top-level `targets` down to it
/// (`["targets", "parent-a", "release"]`). A delegated role's verdict is cached under its path,
/// never under its name alone, because the same role reached through another delegator must
/// meet that delegator's keys, threshold and paths.
type DelegationPath = Vec<String>;

/// The delegating role of a role on the search stack: its metadata and delegation index.
type Parent = (Arc<Trusted<Targets>>, usize);

/// Root versions and their exact bytes, ascending.
type RootChain = Vec<(u64, Vec<u8>)>;

/// One verified metadata file: the exact bytes and what they say.
#[derive(Debug, Clone)]
struct Trusted<T> {
    bytes: Vec<u8>,
    signed: T,
}

/// Where metadata and targets come from, and where what is accepted goes.
#[derive(Clone)]
enum Source {
    /// A repository reached through a transport ([`Repository::load`]): metadata and targets
    /// are downloaded, what is accepted is persisted in the trusted-metadata directory.
    Remote {
        transport: Arc<dyn Transport>,
        metadata_base: Url,
        targets_base: Url,
        datastore: PathBuf,
    },
    /// An offline cache laid out like [`Repository::metadata_bytes`] names its files
    /// ([`Repository::load_offline`]): nothing is written, expiry is ignored, targets cannot
    /// be downloaded.
    Offline { dir: PathBuf },
}

impl Source {
    /// The trusted-metadata directory, for a remote repository.
    fn datastore(&self) -> Option<&Path> {
        match self {
            Self::Remote { datastore, .. } => Some(datastore),
            Self::Offline { .. } => None,
        }
    }

    /// The transport and targets base URL, for a remote repository.
    fn targets(&self, name: &str) -> Result<(&Arc<dyn Transport>, &Url), Error> {
        match self {
            Self::Remote {
                transport,
                targets_base,
                ..
            } => Ok((transport, targets_base)),
            Self::Offline { .. } => Err(Error::Offline(name.to_owned())),
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Remote { metadata_base, .. } => write!(f, "Remote({metadata_base})"),
            Self::Offline { dir } => write!(f, "Offline({})", dir.display()),
        }
    }
}

/// A metadata file as named remotely (URL path segment, not yet encoded) and in an offline cache.
struct MetaName {
    remote: String,
    offline: String,
}

impl Source {
    /// Fetches a metadata file, at most `cap` bytes, within the time `limits` allow for that
    /// cap. `Ok(None)` when it does not exist.
    fn fetch(
        &self,
        role: &Role,
        name: &MetaName,
        cap: u64,
        limits: &Limits,
    ) -> Result<Option<Vec<u8>>, Error> {
        let reader: Box<dyn Read + Send> = match self {
            Self::Remote {
                transport,
                metadata_base,
                ..
            } => {
                let url = join_url(metadata_base, &[name.remote.as_str()])?;
                match transport.fetch_within(&url, limits.metadata_time_limit(cap)) {
                    Ok(r) => r,
                    Err(e) if matches!(e.kind, TransportErrorKind::NotFound) => return Ok(None),
                    Err(source) => {
                        return Err(Error::Transport {
                            what: format!("{role} metadata"),
                            source: Box::new(source),
                        });
                    }
                }
            }
            Self::Offline { dir } => match File::open(dir.join(&name.offline)) {
                Ok(f) => Box::new(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => {
                    return Err(Error::Store {
                        path: dir.join(&name.offline),
                        source,
                    });
                }
            },
        };
        let mut buf = Vec::new();
        reader
            .take(cap.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|source| Error::Read {
                what: format!("{role} metadata"),
                source,
            })?;
        if buf.len() as u64 > cap {
            return Err(Error::TooLarge {
                role: role.clone(),
                limit: cap,
            });
        }
        Ok(Some(buf))
    }

    fn fetch_required(
        &self,
        role: &Role,
        name: &MetaName,
        cap: u64,
        limits: &Limits,
    ) -> Result<Vec<u8>, Error> {
        self.fetch(role, name, cap, limits)?
            .ok_or_else(|| match self {
                Self::Remote { metadata_base, .. } => Error::Transport {
                    what: format!("{role} metadata"),
                    source: Box::new(crate::transport::TransportError {
                        url: join_url(metadata_base, &[name.remote.as_str()])
                            .unwrap_or_else(|_| metadata_base.clone()),
                        kind: TransportErrorKind::NotFound,
                    }),
                },
                Self::Offline { dir } => Error::Store {
                    path: dir.join(&name.offline),
                    source: io::Error::from(io::ErrorKind::NotFound),
                },
            })
    }
}

/// Appends path segments to a base URL treated as a directory. Each segment is percent-encoded
/// (including `/`); `.`/`..`/empty segments are refused by the callers beforehand.
fn join_url(base: &Url, segments: &[&str]) -> Result<Url, Error> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| Error::BadBaseUrl(base.clone()))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A repository whose metadata has been verified; hands out targets.
///
/// ```no_run
/// use std::sync::Arc;
/// use tuf::{Repository, RepositoryOptions};
/// # fn demo(transport: Arc<dyn tuf::transport::Transport>) -> Result<(), Box<dyn std::error::Error>> {
/// let opts = RepositoryOptions::new(
///     "https://updates.example.com/metadata/".parse()?,
///     "https://updates.example.com/targets/".parse()?,
///     "/var/lib/updog/metadata".into(),
/// );
/// let repo = Repository::load(opts, transport)?;
/// let mut reader = repo.read_target("manifest.json")?;
/// let mut manifest = Vec::new();
/// std::io::copy(&mut reader, &mut manifest)?;
/// reader.finish()?; // verified: length and every supported hash matched
/// # Ok(()) }
/// ```
pub struct Repository {
    /// Where files come from and go, the limits and the fixed start time.
    loader: Loader,
    root: Trusted<Root>,
    root_chain: RootChain,
    timestamp: Trusted<Timestamp>,
    snapshot: Trusted<Snapshot>,
    targets: Arc<Trusted<Targets>>,
    /// Delegated roles verified so far, by delegation path.
    delegated: Mutex<BTreeMap<DelegationPath, Arc<Trusted<Targets>>>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("source", &self.loader.source)
            .field("root_version", &self.root.signed.version())
            .field("timestamp_version", &self.timestamp.signed.version())
            .field("snapshot_version", &self.snapshot.signed.version())
            .field("targets_version", &self.targets.signed.version())
            .finish_non_exhaustive()
    }
}

/// A file of the verified metadata set, as [`Repository::metadata_bytes`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataFile {
    /// File name: `N.root.json`, `timestamp.json`, `snapshot.json`, `targets.json` or
    /// `<role>.json` (role name percent-encoded).
    pub name: String,
    /// The verified `signed.version`.
    pub version: u64,
    /// The exact bytes that were verified.
    pub bytes: Vec<u8>,
}

impl MetadataFile {
    /// Its name in a repository with consistent snapshots: `N.root.json` and `timestamp.json`
    /// as they are, every other role `<version>.<name>`.
    pub fn consistent_name(&self) -> String {
        let root = self
            .name
            .strip_suffix(".root.json")
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
        if root || self.name == "timestamp.json" {
            self.name.clone()
        } else {
            format!("{}.{}", self.version, self.name)
        }
    }
}

/// Result of [`Repository::cache_target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedTarget {
    /// Where the verified target is.
    pub path: PathBuf,
    /// `false` when a file with matching length and hashes was already there.
    pub downloaded: bool,
}

/// Seeds the trusted-metadata directory `dir` with a root trusted out of band, written
/// atomically as `root.json` exactly as given. It is verified (signed by its own threshold)
/// when [`Repository::load`] starts from it.
pub fn init_trusted_root(dir: &Path, bytes: &[u8]) -> Result<(), Error> {
    datastore::ensure_dir(dir)?;
    datastore::write_atomic(dir, "root.json", bytes)?;
    let origin = format!(
        "seeded through tuf::init_trusted_root at {}",
        Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    datastore::write_root_origin(dir, &origin)
}

/// The root stored in the trusted-metadata directory, to name in signature failures.
struct StoredRoot {
    path: PathBuf,
    /// Where it came from, as recorded when it was seeded; `None` for a directory seeded
    /// before updog kept that record.
    origin: Option<String>,
}

impl StoredRoot {
    /// Names this root in a failure to meet its keys' threshold ("from keys of root version
    /// N", N being the stored version; not a new root's check against its own keys). Other
    /// errors pass through.
    fn explain(&self, e: Error) -> Error {
        let Error::Threshold {
            role,
            version,
            signer,
            valid,
            threshold,
            stored_root: None,
        } = e
        else {
            return e;
        };
        let against = match signer {
            Signer::Root { version: n } if !(role == Role::Root && n == version) => Some(n),
            _ => None,
        };
        let stored_root = against.map(|n| {
            Box::new(StoredRootNote {
                path: self.path.clone(),
                version: n,
                origin: self
                    .origin
                    .clone()
                    .unwrap_or_else(|| "origin not recorded".to_owned()),
            })
        });
        Error::Threshold {
            role,
            version,
            signer,
            valid,
            threshold,
            stored_root,
        }
    }
}

/// Loads and checks one envelope: `(envelope, decoded)`.
fn parse<T: for<'de> serde::Deserialize<'de> + Common>(
    role: &Role,
    bytes: &[u8],
) -> Result<(CanonicalEnvelope, T), Error> {
    CanonicalEnvelope::parse(role, bytes)
}

/// Verifies `env` against a root's keys for a top-level role.
fn check_top_level(
    root: &Root,
    role: &Role,
    version: u64,
    env: &CanonicalEnvelope,
) -> Result<(), Error> {
    let keys = root.role(role).ok_or_else(|| Error::Invalid {
        role: Role::Root,
        reason: format!("version {} does not define the {role} role", root.version()),
    })?;
    verify::check_threshold(
        role,
        version,
        Signer::Root {
            version: root.version(),
        },
        env,
        &keys.keyids,
        keys.threshold,
        &root.keys,
    )
}

/// Parses one top-level metadata file of `role` received from a repository and makes the
/// checks the client makes on every such file before it compares versions, hashes and expiry:
/// the envelope and `_type`, the canonical JSON of `signed` (what signatures are over), repeated
/// signatures, `version >= 1`, the role's structural rules (root's key and role listing,
/// targets' delegations, whose path patterns are also matched against the file's own target
/// names), and the signature threshold: for `root`, its own; for the other roles, that of
/// `root`'s keys for the role (each signature's hex and each key's encoding are decoded there).
/// Returns the file's version.
///
/// This is a standalone entry point into the parsing [`Repository::load`] does (the fuzz
/// targets in `fuzz/` call it); it does not make a repository trusted. A delegated role is
/// refused (`root` does not list its keys).
pub fn check_metadata(role: &Role, bytes: &[u8], root: &Root) -> Result<u64, Error> {
    match role {
        Role::Root => {
            let (env, new) = parse::<Root>(role, bytes)?;
            new.check()?;
            check_top_level(&new, role, new.version(), &env)?;
            Ok(new.version())
        }
        Role::Timestamp => {
            let (env, new) = parse::<Timestamp>(role, bytes)?;
            check_top_level(root, role, new.version(), &env)?;
            Ok(new.version())
        }
        Role::Snapshot => {
            let (env, new) = parse::<Snapshot>(role, bytes)?;
            check_top_level(root, role, new.version(), &env)?;
            Ok(new.version())
        }
        Role::Targets | Role::Delegated(_) => {
            let (env, new) = parse::<Targets>(role, bytes)?;
            new.check(role)?;
            if let Some(delegations) = &new.delegations {
                for d in &delegations.roles {
                    for name in new.targets.keys() {
                        pattern::delegation_matches(
                            d.paths.as_deref(),
                            d.path_hash_prefixes.as_deref(),
                            name,
                        );
                    }
                }
            }
            check_top_level(root, role, new.version(), &env)?;
            Ok(new.version())
        }
    }
}

/// The canonical JSON (OLPC, byte for byte what `olpc_cjson` writes for the document read into
/// a `serde_json::Value`) of one JSON document, made the way the client makes it for the
/// `signed` object of every metadata file (while parsing, without a `Value` tree). `Ok(None)`
/// when the document has no canonical form (it holds a float). An entry point for the fuzz
/// targets in `fuzz/`, which compare it with `olpc_cjson`.
pub fn canonical_json_of(bytes: &[u8]) -> Result<Option<Vec<u8>>, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let canon = canonical::CanonSeed::new().deserialize(&mut de)?;
    de.end()?;
    Ok(canon.unrepresentable.is_none().then_some(canon.bytes))
}

// A verified repository is shared between threads (an agent's `Arc<Updater>`, the staging
// pipeline's reader thread), and a target's reader moves to the thread that consumes it.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    const fn sent<T: Send>() {}
    shared::<Repository>();
    sent::<TargetReader>();
};

impl Repository {
    /// Fetches what is still to fetch (targets, delegated metadata) through `transport` from
    /// now on: for a caller whose requests carry values that become known after the metadata
    /// was loaded (updog's `target` query parameter, once an update is chosen). What was
    /// verified is kept; the transport is no more trusted than the first one. No effect on an
    /// offline repository.
    pub fn set_transport(&mut self, transport: Arc<dyn Transport>) {
        if let Source::Remote { transport: t, .. } = &mut self.loader.source {
            *t = transport;
        }
    }

    /// Runs the client workflow (steps 5.1 to 5.6.6) against `transport`, starting from the
    /// trusted-metadata directory `opts.datastore`, and persists what it accepts there.
    pub fn load(opts: RepositoryOptions, transport: Arc<dyn Transport>) -> Result<Self, Error> {
        // 5.1: record the fixed update start time; every expiry check compares against it,
        // so a clock step during the update changes nothing.
        let started = opts.reference_time.unwrap_or_else(Utc::now);
        datastore::ensure_dir(&opts.datastore)?;
        let source = Source::Remote {
            transport,
            metadata_base: opts.metadata_base_url.clone(),
            targets_base: opts.targets_base_url.clone(),
            datastore: opts.datastore.clone(),
        };

        // 5.2: load the trusted root: the newest one we persisted, else the shipped one.
        let dir = opts.datastore.as_path();
        let stored = datastore::read_optional(dir, "root.json", opts.limits.max_root_size)?;
        let seeded = stored.is_none();
        let (root_bytes, root_path) = if let Some(bytes) = stored {
            (bytes, dir.join("root.json"))
        } else {
            let bytes = read_shipped_root(&opts.trusted_root, &opts.limits)?;
            (bytes, opts.trusted_root.clone())
        };
        let mut root = verify_trusted_root(root_bytes, &root_path)?;
        let mut persist_root = seeded;
        let mut origin = seeded.then(|| {
            format!(
                "seeded from {} (version {}) at {}",
                opts.trusted_root.display(),
                root.signed.version(),
                started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        });
        if !seeded {
            // A shipped root newer than the stored one (the OS image was updated with a newer
            // root) is just as trusted and saves walking the chain; an unreadable or invalid
            // shipped root is ignored here, since the stored root is enough.
            let shipped = read_shipped_root(&opts.trusted_root, &opts.limits)
                .ok()
                .and_then(|bytes| verify_trusted_root(bytes, &opts.trusted_root).ok());
            if let Some(shipped) = shipped {
                if shipped.signed.version() > root.signed.version() {
                    origin = Some(format!(
                        "replaced by the newer shipped root {} (version {}) at {}",
                        opts.trusted_root.display(),
                        shipped.signed.version(),
                        started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ));
                    root = shipped;
                    persist_root = true;
                }
            }
        }
        if persist_root {
            datastore::write_atomic(dir, "root.json", &root.bytes)?;
        }
        if let Some(origin) = &origin {
            datastore::write_root_origin(dir, origin)?;
        }
        remember_root(dir, &root)?;
        // A signature failure against the stored root says which root that is and where it
        // came from: a wrong root, once stored, stays until an operator re-seeds trust.
        let stored = StoredRoot {
            path: dir.join("root.json"),
            origin: datastore::read_root_origin(dir),
        };

        let mut loader = Loader {
            source,
            limits: opts.limits,
            started,
        };
        let initial_root = root.signed.clone();
        let (root, mut chain) = loader.update_root(root).map_err(|e| stored.explain(e))?;

        // 5.3.11: if the timestamp and/or snapshot keys were rotated, delete the trusted
        // timestamp and snapshot (recovery from fast-forward attacks).
        let rotated = |role: &Role| {
            role_key_material(&initial_root, role) != role_key_material(&root.signed, role)
        };
        if rotated(&Role::Timestamp) || rotated(&Role::Snapshot) {
            datastore::remove(dir, "timestamp.json")?;
            datastore::remove(dir, "snapshot.json")?;
        }
        // 5.3.12: whether consistent snapshots are used is read from root.signed on each use.

        // Hand out the whole chain we know of, for offline verification elsewhere.
        chain = read_root_history(dir, root.signed.version(), &opts.limits).unwrap_or(chain);

        Self::verified(loader, root, chain, |e| stored.explain(e))
    }

    /// Steps 5.4 to 5.6.6 from the updated root: timestamp, snapshot and top-level targets;
    /// `explain` adds context to their errors.
    fn verified(
        loader: Loader,
        root: Trusted<Root>,
        root_chain: RootChain,
        explain: impl Fn(Error) -> Error,
    ) -> Result<Self, Error> {
        let timestamp = loader.update_timestamp(&root).map_err(&explain)?;
        let snapshot = loader
            .update_snapshot(&root, &timestamp)
            .map_err(&explain)?;
        let targets = loader.update_targets(&root, &snapshot).map_err(&explain)?;
        Ok(Self {
            loader,
            root,
            root_chain,
            timestamp,
            snapshot,
            targets: Arc::new(targets),
            delegated: Mutex::new(BTreeMap::new()),
        })
    }

    /// Verifies an offline metadata cache (files named as [`Repository::metadata_bytes`] names
    /// them) starting from `trusted_root` (the shipped root), with expiry ignored: the root
    /// chain `N.root.json`, then `timestamp.json`, `snapshot.json`, `targets.json`, and
    /// delegated roles on demand. Nothing is written. Targets cannot be downloaded from such a
    /// repository; check cached target files with [`Repository::verify_target_file`].
    pub fn load_offline(
        dir: impl AsRef<Path>,
        trusted_root: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let limits = Limits::default();
        let started = Utc::now();
        let root_bytes = read_shipped_root(trusted_root.as_ref(), &limits)?;
        let root = verify_trusted_root(root_bytes, trusted_root.as_ref())?;
        let mut loader = Loader {
            source: Source::Offline {
                dir: dir.to_owned(),
            },
            limits,
            started,
        };
        let (root, chain) = loader.update_root(root)?;
        Self::verified(loader, root, chain, |e| e)
    }

    /// Version of the trusted root.
    pub fn root_version(&self) -> u64 {
        self.root.signed.version()
    }

    /// Version of the trusted timestamp.
    pub fn timestamp_version(&self) -> u64 {
        self.timestamp.signed.version()
    }

    /// Version of the trusted snapshot.
    pub fn snapshot_version(&self) -> u64 {
        self.snapshot.signed.version()
    }

    /// Version of the trusted top-level targets.
    pub fn targets_version(&self) -> u64 {
        self.targets.signed.version()
    }

    /// Whether the trusted root asks for consistent snapshots.
    pub fn consistent_snapshot(&self) -> bool {
        self.root.signed.consistent_snapshot
    }

    /// The targets listed directly in the top-level targets role.
    pub fn top_level_targets(&self) -> impl Iterator<Item = (&str, &TargetDescription)> {
        self.targets
            .signed
            .targets
            .iter()
            .map(|(k, v)| (k.as_str(), v))
    }

    /// The exact verified metadata, for a cache verifiable offline: the root chain as far back
    /// as this host knows it (`N.root.json`, ascending), `timestamp.json`, `snapshot.json`,
    /// `targets.json`, and every delegated role loaded so far (`<role>.json`).
    pub fn metadata_bytes(&self) -> Vec<MetadataFile> {
        let mut out: Vec<MetadataFile> = self
            .root_chain
            .iter()
            .map(|(v, bytes)| MetadataFile {
                name: format!("{v}.root.json"),
                version: *v,
                bytes: bytes.clone(),
            })
            .collect();
        for (name, version, bytes) in [
            (
                "timestamp.json",
                self.timestamp.signed.version(),
                &self.timestamp.bytes,
            ),
            (
                "snapshot.json",
                self.snapshot.signed.version(),
                &self.snapshot.bytes,
            ),
            (
                "targets.json",
                self.targets.signed.version(),
                &self.targets.bytes,
            ),
        ] {
            out.push(MetadataFile {
                name: name.to_owned(),
                version,
                bytes: bytes.clone(),
            });
        }
        let delegated = self
            .delegated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A role reached through two delegation paths is one file.
        let mut seen: HashSet<&str> = HashSet::new();
        for (path, t) in delegated.iter() {
            let Some(role) = path.last() else { continue };
            if seen.insert(role.as_str()) {
                out.push(MetadataFile {
                    name: datastore::role_file_name(role),
                    version: t.signed.version(),
                    bytes: t.bytes.clone(),
                });
            }
        }
        out
    }

    /// Looks a target up: the pre-order depth-first search of step 5.6.7, starting at the
    /// top-level targets role, downloading and verifying delegated roles only as the search
    /// reaches them. `Ok(None)` when no role on the search path describes it.
    ///
    /// A delegated role is trusted only through the delegation being followed: each time the
    /// search reaches it, its metadata must meet the keys and threshold that *this* delegating
    /// role names for it, and the search only enters it when this delegation's path patterns
    /// match the target. Verdicts are cached per delegation path (the role names from
    /// `targets` down to it), never per role name, and a copy in the trusted-metadata directory
    /// is re-verified against the delegation at hand before it is reused. So when `parent-a`
    /// and `parent-b` both delegate `release` and `release` is signed only by `parent-a`'s key,
    /// a lookup through `parent-a` succeeds and a lookup through `parent-b` fails with
    /// [`Error::Threshold`], in whichever order they run, in one process or across processes.
    pub fn target(&self, name: &str) -> Result<Option<TargetDescription>, Error> {
        // Stack of (delegation path, delegation to verify the role with); top-level first.
        let mut stack: Vec<(DelegationPath, Option<Parent>)> =
            vec![(vec!["targets".to_owned()], None)];
        let mut visited: HashSet<String> = HashSet::new();
        while let Some((path, parent)) = stack.pop() {
            let Some(role) = path.last().cloned() else {
                continue;
            };
            // 5.6.7.1: skip roles visited before (cycles); stop after the maximum number of
            // roles.
            if visited.contains(&role) {
                continue;
            }
            if visited.len() >= self.loader.limits.max_delegations as usize {
                break;
            }
            visited.insert(role.clone());
            let md: Arc<Trusted<Targets>> = match parent {
                None => Arc::clone(&self.targets),
                Some((parent_md, index)) => self.delegated_role(&path, &parent_md, index)?,
            };
            // 5.6.7.1: this role has metadata about the target: done.
            if let Some(desc) = md.signed.targets.get(name) {
                return Ok(Some(desc.clone()));
            }
            // 5.6.7.2: otherwise search the delegations in order of appearance.
            let Some(delegations) = &md.signed.delegations else {
                continue;
            };
            let mut children = Vec::new();
            for (index, d) in delegations.roles.iter().enumerate() {
                if !pattern::delegation_matches(
                    d.paths.as_deref(),
                    d.path_hash_prefixes.as_deref(),
                    name,
                ) {
                    continue;
                }
                let mut child = path.clone();
                child.push(d.name.clone());
                children.push((child, Some((Arc::clone(&md), index))));
                if d.terminating {
                    // 5.6.7.2.1: a terminating delegation: nothing else is searched.
                    stack.clear();
                    break;
                }
            }
            // 5.6.7.2.2: depth first, in order of appearance.
            children.reverse();
            stack.extend(children);
        }
        Ok(None)
    }

    /// Loads (or returns the one already verified along the same delegation `path`) the
    /// delegated role at the end of `path`, delegated by `parent` (the role before it on `path`)
    /// in its delegation number `index`: steps 5.6.1 to 5.6.6 applied to a delegated role,
    /// with the keys and threshold of that delegation.
    fn delegated_role(
        &self,
        path: &[String],
        parent: &Trusted<Targets>,
        index: usize,
    ) -> Result<Arc<Trusted<Targets>>, Error> {
        let (role, delegator) = match path {
            [.., parent_name, role] => {
                (Role::Delegated(role.clone()), Role::from_name(parent_name))
            }
            _ => {
                return Err(Error::Invalid {
                    role: Role::Delegated(path.join("/")),
                    reason: "a delegated role needs a delegating role".to_owned(),
                });
            }
        };
        {
            let cache = self
                .delegated
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(t) = cache.get(path) {
                return Ok(Arc::clone(t));
            }
        }
        let delegations = parent
            .signed
            .delegations
            .as_ref()
            .ok_or_else(|| Error::Invalid {
                role: role.clone(),
                reason: "delegating role has no delegations".to_owned(),
            })?;
        let entry = delegations.roles.get(index).ok_or_else(|| Error::Invalid {
            role: role.clone(),
            reason: "delegation index out of range".to_owned(),
        })?;
        let file = format!("{role}.json");
        let meta = self
            .snapshot
            .signed
            .meta
            .get(&file)
            .ok_or_else(|| Error::NotInSnapshot { file: file.clone() })?
            .clone();
        let loader = &self.loader;
        let check = |env: &CanonicalEnvelope, version: u64| {
            verify::check_threshold(
                &role,
                version,
                Signer::Delegation {
                    delegator: delegator.clone(),
                },
                env,
                &entry.keyids,
                entry.threshold,
                &delegations.keys,
            )
        };
        let t = loader.load_targets_role(
            &role,
            &meta,
            self.root.signed.consistent_snapshot,
            &datastore::role_file_name(role.as_str()),
            &check,
        )?;
        let t = Arc::new(t);
        let mut cache = self
            .delegated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache.insert(path.to_vec(), Arc::clone(&t));
        Ok(t)
    }

    /// Checks, without downloading anything, that target `name` can be fetched: a signed role
    /// describes it and its name maps to a safe URL. Returns the signed description (the
    /// updater's preflight, before the disk is touched).
    pub fn check_fetchable(&self, name: &str) -> Result<TargetDescription, Error> {
        let desc = self.describe(name)?;
        self.target_url(name, &desc)?;
        Ok(desc)
    }

    fn describe(&self, name: &str) -> Result<TargetDescription, Error> {
        self.target(name)?
            .ok_or_else(|| Error::TargetNotFound(name.to_owned()))
    }

    /// The URL of a target (step 5.7.3): `dir/HASH.file` with consistent snapshots, where HASH
    /// is the sha256 when listed (else sha512, else the first listed).
    fn target_url(&self, name: &str, desc: &TargetDescription) -> Result<Url, Error> {
        let (_, base) = self.loader.source.targets(name)?;
        let mut segments: Vec<String> = Vec::new();
        for seg in name.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(Error::BadTargetName(name.to_owned()));
            }
            segments.push(seg.to_owned());
        }
        if self.root.signed.consistent_snapshot {
            let hash = desc
                .hashes
                .get("sha256")
                .or_else(|| desc.hashes.get("sha512"))
                .or_else(|| desc.hashes.values().next())
                .ok_or_else(|| Error::NoSupportedHash {
                    what: format!("target {name}"),
                })?;
            if let Some(last) = segments.last_mut() {
                *last = format!("{hash}.{last}");
            }
        }
        let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
        join_url(base, &refs)
    }

    fn open_target(
        &self,
        name: &str,
        desc: &TargetDescription,
    ) -> Result<Box<dyn Read + Send>, Error> {
        self.open_target_from(name, desc, 0)
    }

    fn open_target_from(
        &self,
        name: &str,
        desc: &TargetDescription,
        from: u64,
    ) -> Result<Box<dyn Read + Send>, Error> {
        let (transport, _) = self.loader.source.targets(name)?;
        let url = self.target_url(name, desc)?;
        transport
            .fetch_from(&url, from)
            .map_err(|source| Error::Transport {
                what: format!("target {name}"),
                source: Box::new(source),
            })
    }

    /// Streams a target through a verifying reader (step 5.7): at most the signed length is
    /// read, every supported listed hash is checked at the end.
    pub fn read_target(&self, name: &str) -> Result<TargetReader, Error> {
        let desc = self.describe(name)?;
        // Refuse targets we could not verify before opening a connection.
        if desc.sha256().is_none() && desc.sha512().is_none() {
            return Err(Error::NoSupportedHash {
                what: format!("target {name}"),
            });
        }
        let inner = self.open_target(name, &desc)?;
        TargetReader::new(name.to_owned(), inner, desc)
    }

    /// The signed description and a raw stream capped at the signed length (it fails with
    /// `UnexpectedEof` if the source ends early). The caller must verify the hashes itself;
    /// this is for the staging pipeline, which hashes on its own thread.
    pub fn fetch_target_unverified(
        &self,
        name: &str,
    ) -> Result<(TargetDescription, Box<dyn Read + Send>), Error> {
        let desc = self.describe(name)?;
        let inner = self.open_target(name, &desc)?;
        let capped = CappedReader::new(name.to_owned(), inner, desc.length);
        Ok((desc, Box::new(capped)))
    }

    /// Like [`Repository::fetch_target_unverified`], from byte `from` of the target on (a
    /// `Range` request over HTTP): the stream is capped at the signed length less `from`. No
    /// hash of the whole target can be checked on part of it, so this is only for data the
    /// caller verifies piece by piece against other signed metadata (a chunk patch, whose every
    /// output chunk is checked against a signed chunk index), when a run resumes part way.
    pub fn fetch_target_unverified_from(
        &self,
        name: &str,
        from: u64,
    ) -> Result<(TargetDescription, Box<dyn Read + Send>), Error> {
        let desc = self.describe(name)?;
        if from > desc.length {
            return Err(Error::LengthMismatch {
                what: format!("target {name} read from byte {from}"),
                listed_in: "its targets metadata".to_owned(),
                expected: desc.length,
                actual: from,
            });
        }
        let inner = self.open_target_from(name, &desc, from)?;
        let capped = CappedReader::new(name.to_owned(), inner, desc.length - from);
        Ok((desc, Box::new(capped)))
    }

    /// Checks a local file against target `name`'s signed length and hashes.
    pub fn verify_target_file(&self, name: &str, path: &Path) -> Result<(), Error> {
        let desc = self.describe(name)?;
        verify_file(name, &desc, path)
    }

    /// Makes `dir/<name, percent-encoded>` hold the verified target `name`: skipped when the file
    /// there already has the signed length and hashes, otherwise downloaded into a temporary
    /// file in `dir`, verified, fsynced and renamed into place (nothing partial is left behind).
    pub fn cache_target(&self, name: &str, dir: &Path) -> Result<CachedTarget, Error> {
        let desc = self.describe(name)?;
        let encoded = datastore::encode_component(name);
        let path = dir.join(&encoded);
        if path.is_file() && verify_file(name, &desc, &path).is_ok() {
            return Ok(CachedTarget {
                path,
                downloaded: false,
            });
        }
        datastore::write_atomic_with(dir, &encoded, |file, store| {
            let inner = self.open_target(name, &desc)?;
            let mut reader = TargetReader::new(name.to_owned(), inner, desc)?;
            let copied = io::copy(&mut reader, file);
            // A verification failure surfaces as an InvalidData read error: report it precisely.
            if let Err(e) = copied {
                if e.kind() == io::ErrorKind::InvalidData
                    || e.kind() == io::ErrorKind::UnexpectedEof
                {
                    reader.finish()?;
                }
                return Err(Error::Read {
                    what: format!("target {name}"),
                    source: e,
                });
            }
            reader.finish()?;
            file.flush().map_err(store)
        })?;
        Ok(CachedTarget {
            path,
            downloaded: true,
        })
    }
}

fn verify_file(name: &str, desc: &TargetDescription, path: &Path) -> Result<(), Error> {
    let f = File::open(path).map_err(|source| Error::Store {
        path: path.to_owned(),
        source,
    })?;
    let mut reader = TargetReader::new(name.to_owned(), Box::new(f), desc.clone())?;
    let _ = io::copy(&mut reader, &mut io::sink());
    reader.finish()
}

/// The bytes of the root shipped at `path` (trusted out of band), at most the root size limit.
fn read_shipped_root(path: &Path, limits: &Limits) -> Result<Vec<u8>, Error> {
    read_file_capped(path, limits.max_root_size).map_err(|source| Error::NoTrustedRoot {
        path: path.to_owned(),
        source,
    })
}

fn read_file_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?
        .take(cap.saturating_add(1))
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the limit of {cap} bytes"),
        ));
    }
    Ok(buf)
}

/// 5.2: parses a root we trust out of band, read from `path`, and checks it is signed by its
/// own threshold. A failure names `path`.
fn verify_trusted_root(bytes: Vec<u8>, path: &Path) -> Result<Trusted<Root>, Error> {
    trusted_root_envelope(bytes).map_err(|source| Error::BadTrustedRoot {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

fn trusted_root_envelope(bytes: Vec<u8>) -> Result<Trusted<Root>, Error> {
    let (env, root) = parse::<Root>(&Role::Root, &bytes)?;
    root.check()?;
    check_top_level(&root, &Role::Root, root.version(), &env)?;
    Ok(Trusted {
        bytes,
        signed: root,
    })
}

/// Records `root` in the history sub-directory if it is not there yet.
fn remember_root(dir: &Path, root: &Trusted<Root>) -> Result<(), Error> {
    let history = datastore::history_dir(dir);
    datastore::ensure_dir(&history)?;
    let name = format!("{}.root.json", root.signed.version());
    if !history.join(&name).exists() {
        datastore::write_atomic(&history, &name, &root.bytes)?;
    }
    Ok(())
}

/// The verified roots in the history directory, ascending, up to `current`.
fn read_root_history(dir: &Path, current: u64, limits: &Limits) -> Option<RootChain> {
    let history = datastore::history_dir(dir);
    let mut versions: Vec<u64> = std::fs::read_dir(&history)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".root.json")?.parse::<u64>().ok()
        })
        .filter(|v| *v <= current)
        .collect();
    versions.sort_unstable();
    // Bound the work: at most as many roots as rotations allowed, newest kept.
    let keep = limits.max_root_rotations as usize + 1;
    if versions.len() > keep {
        versions.drain(..versions.len() - keep);
    }
    let mut out = Vec::new();
    for v in versions {
        let bytes =
            datastore::read_optional(&history, &format!("{v}.root.json"), limits.max_root_size)
                .ok()??;
        out.push((v, bytes));
    }
    Some(out)
}

/// The public key material and threshold of a role, to detect key rotations (5.3.11).
fn role_key_material(root: &Root, role: &Role) -> Option<(u64, Vec<String>)> {
    let keys = root.role(role)?;
    let mut material: Vec<String> = keys
        .keyids
        .iter()
        .map(|id| {
            root.keys
                .get(id)
                .map(|key| key.value().to_string())
                .unwrap_or_default()
        })
        .collect();
    material.sort();
    Some((keys.threshold, material))
}

/// The state of one load: where files come from, where they go, and the fixed time.
struct Loader {
    source: Source,
    limits: Limits,
    started: DateTime<Utc>,
}

impl Loader {
    fn persist(&self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        match self.source.datastore() {
            Some(dir) => datastore::write_atomic(dir, name, bytes),
            None => Ok(()),
        }
    }

    /// Reads a previously trusted file from the datastore (never from the network).
    fn local(&self, name: &str, cap: u64) -> Option<Vec<u8>> {
        let dir = self.source.datastore()?;
        datastore::read_optional(dir, name, cap).ok().flatten()
    }

    /// The trusted copy of a top-level role's file in the datastore, if there is one and it
    /// still meets the current root's keys and threshold (expired or not).
    fn trusted_top_level<T: for<'de> serde::Deserialize<'de> + Common>(
        &self,
        root: &Trusted<Root>,
        role: &Role,
        name: &str,
        cap: u64,
    ) -> Option<Trusted<T>> {
        let bytes = self.local(name, cap)?;
        let (env, signed) = parse::<T>(role, &bytes).ok()?;
        check_top_level(&root.signed, role, signed.version(), &env).ok()?;
        Some(Trusted { bytes, signed })
    }

    /// The last two steps for a new file that passed every other check: the freeze attack
    /// check, then persisting it as `name`.
    fn accept<T: Common>(
        &self,
        role: &Role,
        name: &str,
        bytes: Vec<u8>,
        signed: T,
    ) -> Result<Trusted<T>, Error> {
        self.check_expiry(role, &signed)?;
        self.persist(name, &bytes)?;
        Ok(Trusted { bytes, signed })
    }

    fn check_expiry(&self, role: &Role, signed: &impl Common) -> Result<(), Error> {
        // An offline cache is verified with expiry ignored (it is checked at boot, later).
        let ignore_expiry = matches!(self.source, Source::Offline { .. });
        if ignore_expiry || signed.expires() > self.started {
            return Ok(());
        }
        Err(Error::Expired {
            role: role.clone(),
            version: signed.version(),
            expires: signed.expires(),
            started: self.started,
        })
    }

    /// Step 5.3: walks `N+1.root.json` until none is found or the rotation limit is reached.
    /// Returns the final trusted root and every root seen (trusted one included).
    fn update_root(
        &mut self,
        mut root: Trusted<Root>,
    ) -> Result<(Trusted<Root>, RootChain), Error> {
        let mut chain = vec![(root.signed.version(), root.bytes.clone())];
        // 5.3.3: at most Y root files per update cycle.
        for _ in 0..self.limits.max_root_rotations {
            // 5.3.2: N is the trusted version.
            let n = root.signed.version();
            let Some(next) = n.checked_add(1) else { break };
            let name = MetaName {
                remote: format!("{next}.root.json"),
                offline: format!("{next}.root.json"),
            };
            // 5.3.3: try downloading N+1.root.json, up to W bytes; absent: go to 5.3.10.
            let Some(bytes) =
                self.source
                    .fetch(&Role::Root, &name, self.limits.max_root_size, &self.limits)?
            else {
                break;
            };
            let (env, new) = parse::<Root>(&Role::Root, &bytes)?;
            new.check()?;
            // 5.3.4: signed by a threshold of the trusted root's root keys and by a threshold
            // of the new root's own root keys.
            check_top_level(&root.signed, &Role::Root, new.version(), &env)?;
            check_top_level(&new, &Role::Root, new.version(), &env)?;
            // 5.3.5: rollback check: the new version must be exactly N+1.
            check_not_lower(&Role::Root, n, new.version(), "5.3.5")?;
            if new.version() == n {
                // Equal: discard it and go on with the trusted root.
                break;
            }
            if new.version() != next {
                return Err(Error::VersionMismatch {
                    role: Role::Root,
                    found: new.version(),
                    expected: next,
                    listed_in: format!("the file name {next}.root.json"),
                });
            }
            // 5.3.6: the new root's expiry does not matter yet.
            // 5.3.7: it becomes the trusted root; 5.3.8: persist it.
            root = Trusted { bytes, signed: new };
            self.persist("root.json", &root.bytes)?;
            if let Some(dir) = self.source.datastore() {
                remember_root(dir, &root)?;
            }
            chain.push((root.signed.version(), root.bytes.clone()));
            // 5.3.9: repeat.
        }
        // 5.3.10: freeze attack check on the final root.
        self.check_expiry(&Role::Root, &root.signed)?;
        Ok((root, chain))
    }

    /// Step 5.4.
    fn update_timestamp(&self, root: &Trusted<Root>) -> Result<Trusted<Timestamp>, Error> {
        // The trusted timestamp, if any and still verifiable with the current root.
        let trusted: Option<Trusted<Timestamp>> = self.trusted_top_level(
            root,
            &Role::Timestamp,
            "timestamp.json",
            self.limits.max_timestamp_size,
        );
        // 5.4.1: download timestamp.json, up to X bytes.
        let name = MetaName {
            remote: "timestamp.json".to_owned(),
            offline: "timestamp.json".to_owned(),
        };
        let bytes = self.source.fetch_required(
            &Role::Timestamp,
            &name,
            self.limits.max_timestamp_size,
            &self.limits,
        )?;
        let (env, new) = parse::<Timestamp>(&Role::Timestamp, &bytes)?;
        // 5.4.2: signed by a threshold of the timestamp keys of the trusted root.
        check_top_level(&root.signed, &Role::Timestamp, new.version(), &env)?;
        let new_meta = new.snapshot_meta()?.clone();
        if let Some(trusted) = trusted {
            // 5.4.3.1: the new version must not be lower than the trusted one.
            check_not_lower(
                &Role::Timestamp,
                trusted.signed.version(),
                new.version(),
                "5.4.3.1",
            )?;
            if new.version() == trusted.signed.version() {
                // Equal: discard the new file (even if its content differs) and keep the
                // trusted one, which must still be fresh.
                self.check_expiry(&Role::Timestamp, &trusted.signed)?;
                return Ok(trusted);
            }
            // 5.4.3.2: the snapshot version it lists must not go backwards.
            check_not_lower(
                &Role::Snapshot,
                trusted.signed.snapshot_meta()?.version,
                new_meta.version,
                "5.4.3.2 (snapshot version listed in timestamp)",
            )?;
        }
        // 5.4.4: freeze attack check; 5.4.5: persist.
        self.accept(&Role::Timestamp, "timestamp.json", bytes, new)
    }

    /// Step 5.5.
    fn update_snapshot(
        &self,
        root: &Trusted<Root>,
        timestamp: &Trusted<Timestamp>,
    ) -> Result<Trusted<Snapshot>, Error> {
        let meta = timestamp.signed.snapshot_meta()?.clone();
        let listed_in = format!("timestamp version {}", timestamp.signed.version());
        // The trusted snapshot: verified with the current root's keys, expired or not.
        let trusted: Option<Trusted<Snapshot>> = self.trusted_top_level(
            root,
            &Role::Snapshot,
            "snapshot.json",
            self.limits.max_snapshot_size,
        );
        // Nothing changed since the last update: the trusted snapshot is the one timestamp
        // lists (same version, hashes and length) and is still fresh: no download.
        if let Some(t) = &trusted {
            if t.signed.version() == meta.version
                && verify::check_meta_file("snapshot", &listed_in, &meta, &t.bytes).is_ok()
                && self.check_expiry(&Role::Snapshot, &t.signed).is_ok()
            {
                return Ok(t.clone());
            }
        }
        // 5.5.1: download, up to the length timestamp lists or Y bytes; VERSION.snapshot.json
        // with consistent snapshots. 5.5.2: hashes (and length) against timestamp's listing.
        let bytes = self.fetch_listed(
            &Role::Snapshot,
            &meta,
            &listed_in,
            root.signed.consistent_snapshot,
            "snapshot.json",
            self.limits.max_snapshot_size,
        )?;
        let (env, new) = parse::<Snapshot>(&Role::Snapshot, &bytes)?;
        // 5.5.3: signatures.
        check_top_level(&root.signed, &Role::Snapshot, new.version(), &env)?;
        // 5.5.4: version against timestamp's listing.
        check_listed_version(&Role::Snapshot, new.version(), &meta, listed_in)?;
        // 5.5.5: no targets role goes backwards or vanishes.
        if let Some(t) = &trusted {
            for (file, old) in &t.signed.meta {
                let Some(now) = new.meta.get(file) else {
                    return Err(Error::RoleVanished {
                        version: new.version(),
                        file: file.clone(),
                    });
                };
                check_not_lower(
                    &Role::from_name(file.trim_end_matches(".json")),
                    old.version,
                    now.version,
                    "5.5.5 (version listed in snapshot)",
                )?;
            }
        }
        // 5.5.6: freeze attack check; 5.5.7: persist.
        self.accept(&Role::Snapshot, "snapshot.json", bytes, new)
    }

    /// Step 5.6 (5.6.1 to 5.6.6) for the top-level targets role.
    fn update_targets(
        &self,
        root: &Trusted<Root>,
        snapshot: &Trusted<Snapshot>,
    ) -> Result<Trusted<Targets>, Error> {
        let meta = snapshot
            .signed
            .meta
            .get("targets.json")
            .ok_or_else(|| Error::NotInSnapshot {
                file: "targets.json".to_owned(),
            })?
            .clone();
        let check = |env: &CanonicalEnvelope, version: u64| {
            check_top_level(&root.signed, &Role::Targets, version, env)
        };
        self.load_targets_role(
            &Role::Targets,
            &meta,
            root.signed.consistent_snapshot,
            "targets.json",
            &check,
        )
        .map_err(|e| with_snapshot_context(e, snapshot.signed.version()))
    }

    /// Steps 5.6.1 to 5.6.6 for `role` (top-level or delegated), listed in snapshot as `meta`.
    fn load_targets_role(
        &self,
        role: &Role,
        meta: &MetaFile,
        consistent_snapshot: bool,
        local_name: &str,
        check_signatures: &dyn Fn(&CanonicalEnvelope, u64) -> Result<(), Error>,
    ) -> Result<Trusted<Targets>, Error> {
        let listed_in = "snapshot".to_owned();
        // Already trusted and unchanged: no download.
        if let Some(bytes) = self.local(local_name, self.limits.max_targets_size) {
            let reuse = parse::<Targets>(role, &bytes).ok().filter(|(env, t)| {
                t.version() == meta.version
                    && verify::check_meta_file(role.as_str(), &listed_in, meta, &bytes).is_ok()
                    && check_signatures(env, t.version()).is_ok()
                    && t.check(role).is_ok()
                    && self.check_expiry(role, t).is_ok()
            });
            if let Some((_, signed)) = reuse {
                return Ok(Trusted { bytes, signed });
            }
        }
        // 5.6.1: download, up to the listed length or Z bytes; VERSION.ROLE.json with
        // consistent snapshots. 5.6.2: hashes (and length) against snapshot's listing.
        let bytes = self.fetch_listed(
            role,
            meta,
            &listed_in,
            consistent_snapshot,
            local_name,
            self.limits.max_targets_size,
        )?;
        let (env, new) = parse::<Targets>(role, &bytes)?;
        // 5.6.3: signatures.
        check_signatures(&env, new.version())?;
        drop(env);
        // 5.6.4: version against snapshot's listing.
        check_listed_version(role, new.version(), meta, listed_in)?;
        new.check(role)?;
        // 5.6.5: freeze attack check; 5.6.6: persist.
        self.accept(role, local_name, bytes, new)
    }

    /// Downloads `role`'s metadata as listed (`meta`) in `listed_in`: up to the listed length or
    /// `limit` bytes, as `VERSION.ROLE.json` with consistent snapshots (`ROLE.json` otherwise,
    /// `offline` in a local directory), then checks its length and hashes against the listing.
    fn fetch_listed(
        &self,
        role: &Role,
        meta: &MetaFile,
        listed_in: &str,
        consistent_snapshot: bool,
        offline: &str,
        limit: u64,
    ) -> Result<Vec<u8>, Error> {
        let cap = listed_cap(role, meta.length, limit)?;
        let name = MetaName {
            remote: if consistent_snapshot {
                format!("{}.{role}.json", meta.version)
            } else {
                format!("{role}.json")
            },
            offline: offline.to_owned(),
        };
        let bytes = self.source.fetch_required(role, &name, cap, &self.limits)?;
        verify::check_meta_file(role.as_str(), listed_in, meta, &bytes)?;
        Ok(bytes)
    }
}

/// Rollback attack check: `role`'s `new` version must not be lower than the `trusted` one
/// (`check` names the specification step).
fn check_not_lower(role: &Role, trusted: u64, new: u64, check: &'static str) -> Result<(), Error> {
    if new >= trusted {
        return Ok(());
    }
    Err(Error::Rollback {
        role: role.clone(),
        trusted,
        new,
        check,
    })
}

/// The version `found` in `role`'s metadata must be the one `listed_in` lists (`meta`).
fn check_listed_version(
    role: &Role,
    found: u64,
    meta: &MetaFile,
    listed_in: String,
) -> Result<(), Error> {
    if found == meta.version {
        return Ok(());
    }
    Err(Error::VersionMismatch {
        role: role.clone(),
        found,
        expected: meta.version,
        listed_in,
    })
}

fn with_snapshot_context(e: Error, snapshot_version: u64) -> Error {
    match e {
        Error::VersionMismatch {
            role,
            found,
            expected,
            ..
        } => Error::VersionMismatch {
            role,
            found,
            expected,
            listed_in: format!("snapshot version {snapshot_version}"),
        },
        Error::HashMismatch {
            what, algorithm, ..
        } => Error::HashMismatch {
            what,
            listed_in: format!("snapshot version {snapshot_version}"),
            algorithm,
        },
        Error::LengthMismatch {
            what,
            expected,
            actual,
            ..
        } => Error::LengthMismatch {
            what,
            listed_in: format!("snapshot version {snapshot_version}"),
            expected,
            actual,
        },
        other => other,
    }
}

/// The download cap for a file whose length may be listed: the listed length, refused when
/// above our limit.
fn listed_cap(role: &Role, listed: Option<u64>, limit: u64) -> Result<u64, Error> {
    match listed {
        Some(len) if len > limit => Err(Error::TooLarge {
            role: role.clone(),
            limit,
        }),
        Some(len) => Ok(len),
        None => Ok(limit),
    }
}
