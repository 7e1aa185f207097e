//! Publishing: everything between an empty directory and a signed TUF repository that hosts
//! update from, as `updata` does it. The library and the `updata` binary ([`cli`], a
//! thin shell of subcommands over it); the metadata types and the repository check are the
//! `tuf` crate's, the chunk indexes and stores the `casync` crate's.
//!
//! - [`keys`]: ed25519 and ECDSA P-256 keys as PEM files, and the [`keys::KeySource`] trait
//!   every signature goes through;
//! - [`pkcs11`]: keys in a hardware token, named by `pkcs11:` URIs (RFC 7512), that never
//!   leave it;
//! - [`root`]: a root's roles, keys, thresholds and expiry, signed by several holders in turn;
//! - [`image`]: raw partition images into lz4 frames as the reference builds them;
//! - [`offline`]: signing a root (or any role) on a machine that never sees the repository;
//! - [`repo`]: publishing a release, refreshing the timestamp, rotating the root, in the
//!   reference's layout with consistent snapshots, crash-safe by write order;
//! - [`check`]: the repository verified as a host would, with our own TUF client, before upload;
//! - [`patches`]: patches of a new release's images against the earlier releases hosts run,
//!   read from the published repository as hosts read them.
//!
//! Metadata is written by our own signer ([`metadata`]) rather than `tough::editor`: it is
//! synchronous like the rest of the crate, writes every file atomically in an order that keeps
//! the published repository consistent, lets several people sign one root file in turn, and
//! loads ed25519 and ECDSA PEM keys. Tests check that python-tuf and our client accept what it
//! writes, and that our client still reads what `tough::editor` writes.
//!
//! ```
//! use updata::{keys, repo, root};
//! use updata::keys::KeySource;
//! use updata::metadata::SignedFile;
//! let dir = tempfile::tempdir()?;
//! let d = dir.path();
//! let now = chrono::Utc::now();
//! let year = now + chrono::Duration::days(365);
//! let mut r = root::new_root(year);
//! let mut signers = Vec::new();
//! for role in ["root", "targets", "snapshot", "timestamp"] {
//!     let path = d.join(format!("{role}.pem"));
//!     let public = keys::generate(&path, keys::KeyType::Ed25519)?;
//!     root::add_key(&mut r.signed, role, &public)?;
//!     signers.push(keys::FileKey::load(&path)?);
//! }
//! r.sign(&signers[0])?;
//! r.save(&d.join("root.json"))?;
//! std::fs::write(d.join("manifest.json"), br#"{"updates":[],"migrations":{}}"#)?;
//! let release = repo::Release {
//!     root: Some(d.join("root.json")),
//!     manifest: Some(d.join("manifest.json")),
//!     targets: vec![],
//! };
//! let keys: Vec<&dyn KeySource> = signers[1..].iter().map(|k| k as &dyn KeySource).collect();
//! let expires = repo::Expiries {
//!     targets: year, snapshot: year, timestamp: year, warn_within: chrono::Duration::days(30),
//! };
//! repo::Repository::new(d.join("repo")).publish(&release, &keys, &expires, now)?;
//! assert!(d.join("repo/metadata/1.root.json").is_file());
//! assert!(d.join("repo/metadata/timestamp.json").is_file());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod check;
pub mod cli;
mod error;
pub mod image;
pub mod keys;
pub mod metadata;
pub mod offline;
pub mod patches;
pub mod pkcs11;
pub mod repo;
pub mod root;

pub use error::Error;
