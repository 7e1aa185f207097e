//! The Bottlerocket-compatible `manifest.json`: schema, update selection, migration-chain search,
//! validation; and the rules behind the `updata` publisher CLI's manifest edits ([`edit`]). The
//! `updata` binary itself lives in the `updata` crate (the publisher), which calls [`edit`].
//!
//! # The format
//!
//! ```json
//! {
//!   "updates": [
//!     {
//!       "variant": "aws-k8s-1.31", "arch": "x86_64",
//!       "version": "1.20.0", "max_version": "1.20.0",
//!       "waves": { "0": "2026-08-06T15:00:00Z", "1843": "2026-08-12T15:00:00Z" },
//!       "images": { "boot": "boot.ext4.lz4", "root": "root.ext4.lz4", "hash": "root.verity.lz4" }
//!     }
//!   ],
//!   "migrations": { "(1.19.0, 1.20.0)": ["migrate_v1.20.0_foo.lz4"] }
//! }
//! ```
//!
//! Compatibility rules (each one tested): unknown fields anywhere are ignored; wave keys are u32
//! seed bounds (huge ones such as `858993459` included), unique, and a bad or duplicate key is an
//! error naming it; wave times are RFC 3339 and may have unpadded fields (`2019-8-06T15:00:00Z`);
//! migration keys are `(X, Y)` with semver `X`, `Y` (spaces around the parts are tolerated) and are
//! written back as `(X, Y)`. A missing `updates` or `migrations` reads as empty.
//!
//! # Publishing with `updata`
//!
//! ```sh
//! updata init manifest.json
//! updata add-update manifest.json --variant aws-dev --arch x86_64 --version 1.1.0 \
//!     --boot boot.lz4 --root root.lz4 --hash hash.lz4
//! updata set-waves manifest.json --variant aws-dev --arch x86_64 --version 1.1.0 \
//!     --default-waves --start-at "in 2 hours"      # or --wave-file waves.toml
//! updata set-migrations manifest.json --from Release.toml
//! updata validate manifest.json                     # lists every problem, exit 1 if any
//! updata waves manifest.json --variant aws-dev --arch x86_64 --version 1.1.0 \
//!     --seed 1234 --svg rollout.svg --compare-reference
//! ```
//!
//! Every write is atomic ([`fs::write_atomic`]). The logic lives in this library ([`edit`],
//! [`fs`], [`Manifest::validate`], `waves`); the binary only parses arguments and prints.
//!
//! # Example
//!
//! ```
//! use manifest::Manifest;
//! use manifest::select::{select_update, Selection, SelectionRequest, VersionLock};
//!
//! let m = Manifest::from_slice(br#"{"updates":[{"variant":"aws-dev","arch":"x86_64",
//!   "version":"1.1.0","max_version":"1.1.0","waves":{},
//!   "images":{"boot":"b.lz4","root":"r.lz4","hash":"h.lz4"}}],
//!   "migrations":{"(1.0.0, 1.1.0)":["migrate_a.lz4"]}}"#)?;
//! let request = SelectionRequest {
//!     variant: "aws-dev".into(),
//!     arch: "x86_64".into(),
//!     running_version: "1.0.0".parse()?,
//!     seed: waves::Seed::new(42)?,
//!     now: chrono::Utc::now(),
//!     version_lock: VersionLock::Latest,
//!     ignore_waves: false,
//!     wave_timing: waves::WaveTiming::Offset,
//!     force_version: None,
//!     failed_versions: vec![],
//! };
//! let Selection::Update(update) = select_update(&m, &request) else { panic!() };
//! let chain = m.migration_chain(&request.running_version, &update.version)?;
//! assert_eq!(chain[0].targets, ["migrate_a.lz4"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod chain;
pub mod edit;
mod error;
pub mod fs;
mod migrations;
pub mod select;
mod validate;

pub use chain::MigrationHop;
pub use error::{Error, MigrationGap};
pub use migrations::{Migrations, format_migration_key, parse_migration_key};
pub use validate::{Problem, ValidationError};

use semver::Version;
use serde::{Deserialize, Serialize};
use waves::WaveSchedule;

/// The largest manifest accepted, in bytes: far above any real one, and a bound on what parsing
/// allocates.
pub const MAX_MANIFEST_LEN: usize = 64 * 1024 * 1024;

/// The TUF target name of the manifest in an update repository.
pub const MANIFEST_TARGET: &str = "manifest.json";

/// A whole `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The updates on offer, for every variant and architecture.
    #[serde(default)]
    pub updates: Vec<Update>,
    /// The settings migrations of each version step, keyed by `(from, to)`.
    #[serde(default, with = "migrations::serde_map")]
    pub migrations: Migrations,
}

/// One update on offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The OS variant, such as `aws-k8s-1.31`.
    pub variant: String,
    /// The architecture, such as `x86_64` or `aarch64`.
    pub arch: String,
    /// The version of this update.
    pub version: Version,
    /// Hosts above this version are brought back down to the highest update (how a bad release
    /// is pulled); updates above it are not offered.
    pub max_version: Version,
    /// The rollout schedule (empty: everyone at once).
    #[serde(default)]
    pub waves: WaveSchedule,
    /// The TUF target names of the partition images.
    pub images: Images,
    /// Delta-update data: casync indexes of the images and where their chunks are. Ours; the
    /// reference's parser ignores fields it does not know, and without it hosts use `images`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
}

/// Where a host finds the casync blob index of each image of an update, and the chunk store.
///
/// ```json
/// "delta": {"store": "chunks/", "indexes": {"root": "x86_64-aws-dev-1.1.0-root.caibx"}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The chunk store (`<store>/<4 hex>/<id>.cacnk`): an absolute URL, or a path relative to
    /// the repository's targets URL. Chunks are not TUF targets; the signed index authenticates
    /// each one by its hash.
    pub store: String,
    /// TUF target names of the `.caibx` index per image (`boot`, `root`, `hash`); an image
    /// without one is written from its full lz4 image.
    #[serde(default)]
    pub indexes: std::collections::BTreeMap<String, String>,
    /// Patches of the images' new chunks against earlier releases (ours; see [`Patch`]). A host
    /// running one of those releases fetches the patch instead of those chunks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<Patch>,
}

impl Delta {
    /// Names `patch`, replacing an earlier patch for the same release and image; patches stay
    /// sorted newest release first, then by image.
    pub fn add_patch(&mut self, patch: Patch) {
        self.patches
            .retain(|p| !(p.from == patch.from && p.image == patch.image));
        self.patches.push(patch);
        self.patches
            .sort_by(|a, b| (&b.from, &a.image).cmp(&(&a.from, &b.image)));
    }
}

/// A patch of one image's new chunks against the same image of an earlier release: a patch
/// index (JSON) and its data, both TUF targets, made by `updata make-patch`.
///
/// ```json
/// {"from": "1.0.0", "image": "root", "index": "root-1.0.0-1.1.0.patch.json", "data": "root-1.0.0-1.1.0.patch"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    /// The release whose image (on the running set) the patch is made against.
    pub from: Version,
    /// Which image: `boot`, `root` or `hash`.
    pub image: String,
    /// TUF target name of the patch index.
    pub index: String,
    /// TUF target name of the patch data.
    pub data: String,
}

/// Which update: the variant, architecture and version that identify one in a manifest
/// (shown as `aws-dev x86_64 1.1.0`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpdateId {
    /// The OS variant.
    pub variant: String,
    /// The architecture.
    pub arch: String,
    /// The version.
    pub version: Version,
}

impl UpdateId {
    /// The identity of the update with this variant, arch and version.
    pub fn new(variant: &str, arch: &str, version: &Version) -> Self {
        Self {
            variant: variant.to_owned(),
            arch: arch.to_owned(),
            version: version.clone(),
        }
    }
}

impl std::fmt::Display for UpdateId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.variant, self.arch, self.version)
    }
}

impl Update {
    /// This update's variant, arch and version.
    pub fn id(&self) -> UpdateId {
        UpdateId::new(&self.variant, &self.arch, &self.version)
    }
}

/// The TUF target names of an update's partition images (lz4 frame files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Images {
    /// The BOOT partition image.
    pub boot: String,
    /// The ROOT partition image.
    pub root: String,
    /// The HASH (dm-verity) partition image.
    pub hash: String,
}

impl Images {
    /// `(partition name, target name)` for boot, root and hash, in that order.
    pub fn named(&self) -> [(&'static str, &str); 3] {
        [
            ("boot", &self.boot),
            ("root", &self.root),
            ("hash", &self.hash),
        ]
    }
}

impl Manifest {
    /// Parses `manifest.json` bytes. Errors carry the line and column and name the offending
    /// wave or migration key.
    pub fn from_slice(bytes: &[u8]) -> Result<Manifest, Error> {
        if bytes.len() > MAX_MANIFEST_LEN {
            return Err(Error::TooLarge {
                len: bytes.len() as u64,
                max: MAX_MANIFEST_LEN as u64,
            });
        }
        // serde would also read a struct from a JSON array; a manifest is always an object.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|&b| b != b'{') {
            return Err(Error::Parse {
                source: serde::de::Error::custom("manifest.json must be a JSON object"),
            });
        }
        serde_json::from_slice(bytes).map_err(|source| Error::Parse { source })
    }

    /// The manifest as pretty-printed JSON, with a final newline.
    pub fn to_json_pretty(&self) -> String {
        // Every map key is a string and there are no floats: serialization cannot fail.
        let mut s = serde_json::to_string_pretty(self)
            .expect("a Manifest always serializes: string keys, no floats");
        s.push('\n');
        s
    }

    /// The update with exactly this variant, arch and version.
    pub fn find_update(&self, variant: &str, arch: &str, version: &Version) -> Option<&Update> {
        self.updates
            .iter()
            .find(|u| u.variant == variant && u.arch == arch && &u.version == version)
    }

    /// Mutable access to the update with exactly this variant, arch and version.
    pub fn find_update_mut(
        &mut self,
        variant: &str,
        arch: &str,
        version: &Version,
    ) -> Option<&mut Update> {
        self.updates
            .iter_mut()
            .find(|u| u.variant == variant && u.arch == arch && &u.version == version)
    }
}
