//! The updater library: check, plan, stage, apply, revert and status of A/B image updates, over
//! the workspace's other crates: [`tuf`] (the TUF client and its transports, re-exported here),
//! `casync` (the chunk format), `manifest`, `migrations_fetch`, `signpost` and `bootpart`.
//!
//! The library is the product; the `updog` binary (in the `updog-cli` package, so that this
//! crate does not depend on clap) is one user of it. An update agent embeds
//! [`updater::Updater`], which does everything the CLI does through a typed API:
//!
//! - [`advice`]: errors explained for people, in terms of `updog.toml`;
//! - [`config`]: `updog.toml` (the reference keys plus ours, each with a documented default), or a
//!   [`config::Config`] built in code;
//! - [`os_release`]: the running variant, version and build;
//! - [`updater`]: `check` (a [`plan::UpdatePlan`], or the reason when there is nothing to do),
//!   `stage_plan` (exactly that plan, with a progress callback and a
//!   [`updater::CancelHandle`], also honoured by `check_cancellable` and `apply_cancellable`),
//!   `stage` (check and stage at once), `apply`, `revert`, `status` (with the
//!   [`updater::UpdateState`] in Bottlerocket's terms), `reboot`; after the reboot
//!   `mark_successful_boot`, `rollback_to_inactive`, `has_boot_ever_succeeded`;
//! - [`progress`]: the events `stage` reports, and their JSON-lines and terminal renderings;
//! - [`lock`]: one owner per disk; [`status`]: the staged-state record; [`steps`]: the named
//!   steps of stage, apply and revert; [`reboot`]: the reboot hand-off; [`exit`]: the CLI's
//!   exit codes;
//! - [`plan`]: the signed plan `check` returns; [`failed`]: releases that failed to boot here;
//! - underneath: [`tuf`] (the TUF client) and [`transport`] (HTTP and file), both the `tuf`
//!   crate's; [`pipeline`] (the streaming image writer); [`delta`] (images built from chunks of
//!   the running set and the chunk store, in the `casync` crate's format); [`migrations`] (the
//!   TUF client as the migrations source).
//!
//! `updog/examples/agent.rs` is a complete agent built on this API.

pub mod advice;
pub mod config;
pub mod delta;
pub mod exit;
pub mod failed;
pub mod lock;
pub mod migrations;
pub mod os_release;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod reboot;
pub mod status;
pub mod steps;
pub mod updater;

mod off_runtime;
mod staging;

// The TUF client and its transports are the `tuf` crate; re-exported so that an agent can name
// what `Updater` takes and returns (`updog::tuf::Repository`, `updog::transport::HttpOptions`)
// without depending on it separately.
pub use tuf::{self, transport};

// What building a [`config::Config`] and reading a [`updater::Status`] or an
// [`plan::UpdatePlan`] take, so an embedder needs no other crate (nor pins its version to ours).
pub use bootpart::{ImageKind, SetId};
pub use manifest::select::{NoUpdateReason, VersionLock};
pub use semver::Version;
pub use url::Url;
pub use waves::{Seed, WaveTiming};

// The README's Rust snippets, compiled by `cargo test --doc` so they keep matching the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme_doctests {}
