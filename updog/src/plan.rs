//! The exact update [`crate::updater::Updater::check`] chose: what
//! [`crate::updater::Updater::stage_plan`] stages, and nothing else.
//!
//! An [`UpdatePlan`] holds the version, the three image targets with their signed lengths and
//! sha256, the chunk indexes a delta would use, the migration plan, and the set it is staged
//! on. Staging a plan loads fresh metadata, chooses again with the same options and compares
//! the two plans; a difference is a [`PlanChange`] that names what changed, and nothing is
//! written.
//!
//! ```no_run
//! use updog::updater::{CancelHandle, CheckOptions, CheckOutcome, UpdateError, Updater};
//!
//! # let (config, _) = updog::config::Config::from_path("/etc/updog.toml".as_ref())?;
//! let updater = Updater::new(config)?;
//! if let CheckOutcome::Available(update) = updater.check(&CheckOptions::default())?.outcome {
//!     let plan = update.plan;
//!     for image in plan.images() {
//!         println!("{}: {} ({} bytes)", image.kind, image.target.name, image.target.length);
//!     }
//!     let lock = updater.lock()?;
//!     match updater.stage_plan(&lock, plan, &|_| {}, &CancelHandle::new()) {
//!         Err(UpdateError::PlanChanged { change, .. }) => println!("check again: {change}"),
//!         other => println!("{} staged", other?.version),
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use bootpart::SetId;
use manifest::select::NoUpdateReason;
use semver::Version;
use serde::Serialize;

use bootpart::ImageKind;
use chrono::{DateTime, Utc};

use crate::os_release::OsRelease;
use crate::status::UpdateState;

/// How to choose an update.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Ignore wave schedules (`--now`); the configuration's `ignore_waves` also does.
    pub ignore_waves: bool,
    /// Choose exactly this version (`--image V`), up or down, overriding the version lock.
    pub image: Option<Version>,
    /// The time to judge wave eligibility at; `None` is now.
    pub now: Option<DateTime<Utc>>,
    /// Stage even though the running set has not been marked successful, when the other set
    /// is no fallback anyway (`--allow-unconfirmed-boot`): if the update then fails its one
    /// try, no set boots. Never overrides the refusal to clear the only fallback.
    pub allow_unconfirmed_boot: bool,
}

/// The result of [`crate::updater::Updater::check`].
#[derive(Debug, Clone)]
pub struct Check {
    /// What is running.
    pub running: OsRelease,
    /// Whether there is something to do.
    pub outcome: CheckOutcome,
}

/// An update, or why there is none.
#[derive(Debug, Clone)]
pub enum CheckOutcome {
    /// An update this host should take now.
    Available(Box<AvailableUpdate>),
    /// Nothing to do, and why (none newer; locked; not eligible until a time).
    NoUpdate(NoUpdateReason),
}

/// An update chosen for this host.
#[derive(Debug, Clone, Serialize)]
pub struct AvailableUpdate {
    /// The manifest's update entry (serializes as the reference's update object).
    #[serde(flatten)]
    pub update: manifest::Update,
    /// The migration targets the version jump needs, in the order they run.
    pub migrations: Vec<String>,
    /// The full plan: hops, each target's signed length and sha256, total bytes.
    pub migration_plan: migrations_fetch::MigrationPlan,
    /// Exactly what [`crate::updater::Updater::stage_plan`] stages: the image targets with their signed
    /// lengths and sha256, chunk indexes, migrations and the target set.
    #[serde(skip)]
    pub plan: UpdatePlan,
    /// `Available`, or `Staged`/`Ready` when this very update (version and signed images) is on
    /// the inactive set already, staged or applied: staging it again downloads nothing. Ours,
    /// shown only when not `Available`.
    #[serde(
        rename = "update_state",
        skip_serializing_if = "UpdateState::is_available"
    )]
    pub state: UpdateState,
    /// What a delta update would reuse and download, per image and in total, when the update
    /// offers chunk indexes and `delta` is on (filled in by [`crate::updater::Updater::check`]). Ours; the
    /// reference's fields are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_plan: Option<crate::delta::stage::UpdateEstimate>,
}

/// A TUF target as the repository signs it: name, length and sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignedTarget {
    /// The target name.
    pub name: String,
    /// The signed length in bytes (compressed, for an image).
    pub length: u64,
    /// The signed sha256.
    #[serde(serialize_with = "hex_sha256")]
    pub sha256: [u8; 32],
    /// The signed decoded size of an image (`custom.decompressed_length`, which `updata
    /// publish` records), when the target lists one: what every path that stages the image
    /// must end up having written and read back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decompressed_length: Option<u64>,
}

fn hex_sha256<S: serde::Serializer>(sha256: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(sha256))
}

impl SignedTarget {
    /// The length and sha256, as the staging pipeline checks them.
    pub fn info(&self) -> migrations_fetch::TargetInfo {
        migrations_fetch::TargetInfo {
            length: self.length,
            sha256: self.sha256,
        }
    }
}

impl std::fmt::Display for SignedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} ({} bytes, sha256 {})",
            self.name,
            self.length,
            hex::encode(self.sha256)
        )
    }
}

/// One image of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedImage {
    /// Which image.
    pub kind: ImageKind,
    /// Its full lz4 image target.
    pub target: SignedTarget,
    /// The chunk index a delta stage of it would use, when the update offers one.
    pub delta_index: Option<SignedTarget>,
}

/// The exact update a check chose (see the [module docs](self)). Only
/// [`crate::updater::Updater::check`] makes one; [`crate::updater::Updater::stage_plan`]
/// stages it, or refuses if the repository now says something else.
#[derive(Debug, Clone, Serialize)]
pub struct UpdatePlan {
    pub(crate) update: manifest::Update,
    pub(crate) images: [PlannedImage; 3],
    pub(crate) migration_plan: migrations_fetch::MigrationPlan,
    pub(crate) target_set: Option<SetId>,
    #[serde(skip)]
    pub(crate) options: CheckOptions,
}

impl UpdatePlan {
    /// The version to stage.
    pub fn version(&self) -> &Version {
        &self.update.version
    }

    /// The manifest's update entry (the reference's update object).
    pub fn update(&self) -> &manifest::Update {
        &self.update
    }

    /// The images, in the order they are staged (root, boot, hash).
    pub fn images(&self) -> &[PlannedImage; 3] {
        &self.images
    }

    /// One image.
    pub fn image(&self, kind: ImageKind) -> &PlannedImage {
        match kind {
            ImageKind::Root => &self.images[0],
            ImageKind::Boot => &self.images[1],
            ImageKind::Hash => &self.images[2],
        }
    }

    /// The migrations the version jump needs, with their signed lengths and sha256.
    pub fn migration_plan(&self) -> &migrations_fetch::MigrationPlan {
        &self.migration_plan
    }

    /// The set the update is staged on (the one not running), when the check could tell which
    /// set runs (configured, or found from the running root); `None` otherwise, and staging
    /// takes the inactive set of the locked disk.
    pub fn target_set(&self) -> Option<SetId> {
        self.target_set
    }

    /// The options the update was chosen with (staging chooses again with them).
    pub fn options(&self) -> &CheckOptions {
        &self.options
    }

    /// The first difference between this plan and `now` (the same choice on fresh metadata),
    /// if any.
    pub fn changes_in(&self, now: &UpdatePlan) -> Option<PlanChange> {
        if self.update.version != now.update.version {
            return Some(PlanChange::Version {
                planned: self.update.version.clone(),
                now: now.update.version.clone(),
            });
        }
        if let (Some(planned), Some(now)) = (self.target_set, now.target_set)
            && planned != now
        {
            return Some(PlanChange::TargetSet { planned, now });
        }
        for (planned, fresh) in self.images.iter().zip(&now.images) {
            if planned.target != fresh.target {
                return Some(PlanChange::Image {
                    image: planned.kind,
                    planned: planned.target.clone(),
                    now: fresh.target.clone(),
                });
            }
            if planned.delta_index != fresh.delta_index {
                return Some(PlanChange::DeltaIndex {
                    image: planned.kind,
                    planned: planned.delta_index.clone(),
                    now: fresh.delta_index.clone(),
                });
            }
        }
        // The manifest cached with the migrations is the one signed at staging time: a new
        // release changes it without changing what this update needs.
        let (planned, fresh) = (&self.migration_plan, &now.migration_plan);
        if planned.hops != fresh.hops || planned.migrations != fresh.migrations {
            let listed = |p: &migrations_fetch::MigrationPlan| {
                p.migrations
                    .iter()
                    .map(|t| format!("{} ({} bytes, sha256 {})", t.name, t.length, t.sha256))
                    .collect()
            };
            return Some(PlanChange::Migrations {
                planned: listed(planned),
                now: listed(fresh),
            });
        }
        None
    }
}

/// What changed between a plan and the repository's answer at staging time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanChange {
    /// The same options now choose no update.
    #[error("the repository offers no update now: {0}")]
    Withdrawn(NoUpdateReason),
    /// The same options now choose another version.
    #[error("the repository now offers {now} instead")]
    Version {
        /// The version planned.
        planned: Version,
        /// The version chosen now.
        now: Version,
    },
    /// An image target is signed with another name, length or sha256.
    #[error("the {image} image is now {now}, it was {planned}")]
    Image {
        /// Which image.
        image: ImageKind,
        /// As planned.
        planned: SignedTarget,
        /// As signed now.
        now: SignedTarget,
    },
    /// A chunk index appeared, went away, or is signed differently.
    #[error("the {image} image's chunk index is now {}, it was {}", show(.now.as_ref()), show(.planned.as_ref()))]
    DeltaIndex {
        /// Which image.
        image: ImageKind,
        /// As planned.
        planned: Option<SignedTarget>,
        /// As signed now.
        now: Option<SignedTarget>,
    },
    /// The migrations the jump needs changed (names, order, signed lengths or sha256).
    #[error("the migrations are now [{}], they were [{}]", .now.join(", "), .planned.join(", "))]
    Migrations {
        /// As planned: each target with its signed length and sha256.
        planned: Vec<String>,
        /// As signed now.
        now: Vec<String>,
    },
    /// The set the update would go to is another one (the host booted the other set since).
    #[error("it would now go to set {now}, it was planned for set {planned}")]
    TargetSet {
        /// As planned.
        planned: SetId,
        /// The inactive set of the locked disk.
        now: SetId,
    },
}

fn show(target: Option<&SignedTarget>) -> String {
    target.map_or_else(|| "none".to_string(), ToString::to_string)
}
