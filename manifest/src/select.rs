//! Update selection: which update (if any) a host should take now, and why not when none.
//!
//! Candidates are the updates for the host's variant and arch with `version <= max_version`,
//! and wave-ready for the host's seed at `now` (by [`SelectionRequest::wave_timing`]) unless
//! waves are ignored. These rules are the reference's (`update_required` in Bottlerocket's
//! updog):
//!
//! - A forced version ([`SelectionRequest::force_version`], `updog -i`) picks exactly that
//!   version, overriding the version lock, even if it is the running version; but only once its
//!   wave has opened for this host, unless waves are ignored (`-n`).
//! - [`VersionLock::Latest`]: the highest candidate newer than the running version; or, when the
//!   running version is above a candidate's `max_version`, that candidate even if it is older
//!   (this is how a bad release is pulled back).
//! - [`VersionLock::Exact`]: exactly that version, up or down; a lock equal to the running
//!   version means no update.
//!
//! When nothing is selected, [`NoUpdateReason`] says why; `NotEligibleYet` gives the version the
//! host is waiting for and when its wave lets it in (the earliest such time among the updates it
//! would otherwise take).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use semver::Version;
use waves::{Seed, WaveTiming};

use crate::{Error, Manifest, Update};

/// Which version a host follows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VersionLock {
    /// The newest available.
    #[default]
    Latest,
    /// Exactly this version.
    Exact(Version),
}

impl FromStr for VersionLock {
    type Err = Error;

    /// Parses `latest` (any case) or a version, with an optional `v` prefix.
    ///
    /// ```
    /// use manifest::select::VersionLock;
    /// assert_eq!("latest".parse::<VersionLock>()?, VersionLock::Latest);
    /// assert_eq!("v1.2.3".parse::<VersionLock>()?, VersionLock::Exact("1.2.3".parse()?));
    /// assert!("1.2".parse::<VersionLock>().is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("latest") {
            return Ok(VersionLock::Latest);
        }
        let v = t
            .strip_prefix('v')
            .or_else(|| t.strip_prefix('V'))
            .unwrap_or(t);
        v.parse()
            .map(VersionLock::Exact)
            .map_err(|_| Error::BadVersionLock {
                value: s.chars().take(80).collect(),
            })
    }
}

impl fmt::Display for VersionLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionLock::Latest => f.write_str("latest"),
            VersionLock::Exact(v) => write!(f, "{v}"),
        }
    }
}

impl serde::Serialize for VersionLock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for VersionLock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a host knows about itself when it asks for an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectionRequest {
    /// The running variant.
    pub variant: String,
    /// The running architecture.
    pub arch: String,
    /// The running version.
    pub running_version: Version,
    /// The host's rollout seed.
    pub seed: Seed,
    /// The current time.
    pub now: DateTime<Utc>,
    /// Which version to follow.
    pub version_lock: VersionLock,
    /// Take updates regardless of their wave schedule.
    pub ignore_waves: bool,
    /// How eligibility inside a wave is timed (this project's, or the reference's).
    pub wave_timing: WaveTiming,
    /// Take exactly this version, overriding the lock (still subject to its wave unless
    /// `ignore_waves`).
    pub force_version: Option<Version>,
    /// Versions that were tried on this host and failed to boot: never chosen by `latest` or
    /// the version lock (an older release that is still newer than the running one may be
    /// chosen instead); only [`SelectionRequest::force_version`] takes one again.
    pub failed_versions: Vec<Version>,
}

impl SelectionRequest {
    /// When this host may take `update`: `None` when it may now (its wave is open, the update
    /// has no waves, or waves are ignored).
    pub fn waits_until(&self, update: &Update) -> Option<DateTime<Utc>> {
        if self.ignore_waves {
            return None;
        }
        update
            .waves
            .ready_at_timing(self.seed, self.wave_timing)
            .filter(|&at| at > self.now)
    }
}

/// The outcome of [`select_update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<'a> {
    /// Take this update.
    Update(&'a Update),
    /// Stay; here is why.
    NoUpdate(NoUpdateReason),
}

impl<'a> Selection<'a> {
    /// The selected update, if any.
    pub fn update(&self) -> Option<&'a Update> {
        match self {
            Selection::Update(u) => Some(u),
            Selection::NoUpdate(_) => None,
        }
    }
}

/// Why no update was selected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NoUpdateReason {
    /// The manifest has no usable update (`version <= max_version`) for this variant and arch.
    NoUpdatesForVariant {
        /// The variant asked for.
        variant: String,
        /// The arch asked for.
        arch: String,
        /// What the manifest does offer: `VARIANT (ARCH)` for each variant and arch with a
        /// usable update, sorted (empty: nothing at all).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        offered: Vec<String>,
    },
    /// Nothing newer than the running version is on offer.
    NoneNewer {
        /// The running version.
        running: Version,
    },
    /// The version lock names the running version.
    Locked {
        /// The locked (and running) version.
        version: Version,
    },
    /// The locked or forced version is not on offer for this variant and arch (or is above its
    /// `max_version`).
    VersionNotOffered {
        /// The version asked for.
        version: Version,
    },
    /// An update is on offer but this host's wave has not opened yet.
    NotEligibleYet {
        /// The update waited for.
        version: Version,
        /// When this host may take it.
        ready_at: DateTime<Utc>,
    },
    /// The update this host would take was tried here before and failed to boot: it is not
    /// taken again unless asked for by version.
    FailedToBoot {
        /// The version that failed (the newest such, when several would be taken).
        version: Version,
    },
}

impl fmt::Display for NoUpdateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoUpdateReason::NoUpdatesForVariant {
                variant,
                arch,
                offered,
            } => {
                write!(f, "no updates are offered for variant {variant} on {arch}")?;
                if offered.is_empty() {
                    write!(f, "; the repository offers no updates at all")
                } else {
                    write!(f, "; the repository offers {}", offered.join(", "))
                }
            }
            NoUpdateReason::NoneNewer { running } => {
                write!(f, "no update newer than the running version {running}")
            }
            NoUpdateReason::Locked { version } => {
                write!(f, "locked to {version}, which is already running")
            }
            NoUpdateReason::VersionNotOffered { version } => {
                write!(
                    f,
                    "version {version} is not offered for this variant and arch"
                )
            }
            NoUpdateReason::NotEligibleYet { version, ready_at } => write!(
                f,
                "update {version} is available but this host's wave opens at {}",
                waves::time::format_time(*ready_at)
            ),
            NoUpdateReason::FailedToBoot { version } => write!(
                f,
                "update {version} failed to boot on this host before and is not taken again \
                 automatically (`updog update -i {version}` takes it anyway; a newer release \
                 is taken as usual)"
            ),
        }
    }
}

/// The updates for a variant and arch with `version <= max_version`, highest version first
/// (what `updog check-update` lists as available).
pub fn available_updates<'a>(manifest: &'a Manifest, variant: &str, arch: &str) -> Vec<&'a Update> {
    let mut out: Vec<&Update> = manifest
        .updates
        .iter()
        .filter(|u| u.variant == variant && u.arch == arch && u.version <= u.max_version)
        .collect();
    // Stable: for duplicate versions the first one in the manifest wins.
    out.sort_by(|a, b| b.version.cmp(&a.version));
    out
}

/// Each variant and arch the manifest has a usable update for, as `VARIANT (ARCH)`, sorted.
///
/// ```
/// let m = manifest::Manifest::from_slice(br#"{"updates":[{"variant":"v","arch":"x86_64",
///   "version":"1.1.0","max_version":"1.1.0","waves":{},
///   "images":{"boot":"b","root":"r","hash":"h"}}]}"#)?;
/// assert_eq!(manifest::select::offered(&m), ["v (x86_64)"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn offered(manifest: &Manifest) -> Vec<String> {
    let set: std::collections::BTreeSet<String> = manifest
        .updates
        .iter()
        .filter(|u| u.version <= u.max_version)
        .map(|u| format!("{} ({})", u.variant, u.arch))
        .collect();
    set.into_iter().collect()
}

/// The updates this host may take now, highest version first: [`available_updates`] whose wave
/// is open for the request's seed at its `now` (all of them when waves are ignored). This is
/// the reference's list for `updog whats --all`, which its callers record as available and then
/// expect `update-image` to stage; the running version and the version lock do not filter it.
pub fn ready_updates<'a>(manifest: &'a Manifest, req: &SelectionRequest) -> Vec<&'a Update> {
    available_updates(manifest, &req.variant, &req.arch)
        .into_iter()
        .filter(|u| req.waits_until(u).is_none())
        .collect()
}

/// Picks the update a host should take now (see the module docs for the rules).
///
/// ```
/// use manifest::select::{select_update, NoUpdateReason, Selection, SelectionRequest, VersionLock};
/// let m = manifest::Manifest::from_slice(br#"{"updates":[{"variant":"v","arch":"x86_64",
///   "version":"1.1.0","max_version":"1.1.0","waves":{"0":"2100-01-01T00:00:00Z"},
///   "images":{"boot":"b","root":"r","hash":"h"}}]}"#)?;
/// let req = SelectionRequest {
///     variant: "v".into(), arch: "x86_64".into(), running_version: "1.0.0".parse()?,
///     seed: waves::Seed::new(0)?, now: chrono::Utc::now(), version_lock: VersionLock::Latest,
///     ignore_waves: false, wave_timing: waves::WaveTiming::Offset, force_version: None,
///     failed_versions: vec![],
/// };
/// match select_update(&m, &req) {
///     Selection::NoUpdate(NoUpdateReason::NotEligibleYet { version, .. }) => {
///         assert_eq!(version.to_string(), "1.1.0")
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn select_update<'a>(manifest: &'a Manifest, req: &SelectionRequest) -> Selection<'a> {
    let candidates = available_updates(manifest, &req.variant, &req.arch);
    if candidates.is_empty() {
        return Selection::NoUpdate(NoUpdateReason::NoUpdatesForVariant {
            variant: req.variant.clone(),
            arch: req.arch.clone(),
            offered: offered(manifest),
        });
    }
    let ready_at = |u: &Update| req.waits_until(u);

    let wanted: Vec<&Update> = if let Some(forced) = &req.force_version {
        let Some(u) = candidates.iter().find(|u| &u.version == forced) else {
            return Selection::NoUpdate(NoUpdateReason::VersionNotOffered {
                version: forced.clone(),
            });
        };
        vec![*u]
    } else {
        match &req.version_lock {
            VersionLock::Exact(v) if v == &req.running_version => {
                return Selection::NoUpdate(NoUpdateReason::Locked { version: v.clone() });
            }
            VersionLock::Exact(v) => {
                let Some(u) = candidates.iter().find(|u| &u.version == v) else {
                    return Selection::NoUpdate(NoUpdateReason::VersionNotOffered {
                        version: v.clone(),
                    });
                };
                if req.failed_versions.contains(v) {
                    return Selection::NoUpdate(NoUpdateReason::FailedToBoot {
                        version: v.clone(),
                    });
                }
                vec![*u]
            }
            VersionLock::Latest => {
                let running = &req.running_version;
                let wanted: Vec<&Update> = candidates
                    .iter()
                    .copied()
                    .filter(|u| running < &u.version || running > &u.max_version)
                    .collect();
                if wanted.is_empty() {
                    return Selection::NoUpdate(NoUpdateReason::NoneNewer {
                        running: running.clone(),
                    });
                }
                let (failed, untried): (Vec<&Update>, Vec<&Update>) = wanted
                    .into_iter()
                    .partition(|u| req.failed_versions.contains(&u.version));
                match failed.first() {
                    // Only releases that failed here are left: say so (they are newest first).
                    Some(newest) if untried.is_empty() => {
                        return Selection::NoUpdate(NoUpdateReason::FailedToBoot {
                            version: newest.version.clone(),
                        });
                    }
                    _ => untried,
                }
            }
        }
    };

    // Highest version first; take the first whose wave is open.
    if let Some(u) = wanted.iter().find(|u| ready_at(u).is_none()) {
        return Selection::Update(u);
    }
    // None is open yet: report the earliest opening (ties: the higher version, listed first).
    let waiting = wanted
        .iter()
        .filter_map(|u| ready_at(u).map(|at| (at, *u)))
        .min_by_key(|(at, _)| *at);
    match waiting {
        Some((ready_at, u)) => Selection::NoUpdate(NoUpdateReason::NotEligibleYet {
            version: u.version.clone(),
            ready_at,
        }),
        // Unreachable in practice (every update was either open or waiting); stay safe.
        None => Selection::NoUpdate(NoUpdateReason::NoneNewer {
            running: req.running_version.clone(),
        }),
    }
}
