//! A repository on disk in the reference's layout, and the steps that change it: publishing a
//! release (targets, `targets.json`, snapshot, timestamp), refreshing the timestamp (and
//! snapshot) before it expires, and rotating the root.
//!
//! ```text
//! REPO/metadata/1.root.json        every root version, N.root.json
//! REPO/metadata/timestamp.json     the only file without a version in its name
//! REPO/metadata/N.snapshot.json    consistent snapshots: old versions stay
//! REPO/metadata/N.targets.json
//! REPO/targets/<sha256>.<name>     every target, named by its hash
//! ```
//!
//! Order makes an interrupted publish harmless: target files first, then `N.targets.json`,
//! `N.snapshot.json`, and `timestamp.json` last, each written atomically. Until the timestamp
//! is replaced, clients see the previous release, whose files are all still there.

use crate::metadata::SignedFile;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

use super::error::{Error, io};
use super::keys::{KeySource, PublicKey};
use super::metadata::{
    DelegatedRole, Delegations, Envelope, Header, Key, MetaFile, MetaList, RoleKeys, Root,
    TargetDescription, Targets, expiry,
};
use super::root::{self, SignedRoot};
use tuf::{KeyId, Role};

/// The manifest's target name (the one the client reads).
pub use manifest::MANIFEST_TARGET;

/// Expiry of each role a publish signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiries {
    /// targets.json.
    pub targets: DateTime<Utc>,
    /// N.snapshot.json.
    pub snapshot: DateTime<Utc>,
    /// timestamp.json.
    pub timestamp: DateTime<Utc>,
    /// Warn when the root or targets expire within this long.
    pub warn_within: Duration,
}

/// What a publish adds.
#[derive(Debug, Clone, Default)]
pub struct Release {
    /// The root to start a new repository from (ignored, but checked to match, when the
    /// repository already has one).
    pub root: Option<PathBuf>,
    /// The manifest, published as target `manifest.json`; `None` keeps the current one.
    pub manifest: Option<PathBuf>,
    /// Files to add as targets, each named by its file name (images, migrations, ...).
    pub targets: Vec<PathBuf>,
}

/// What a step wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The files written, in order.
    pub written: Vec<PathBuf>,
    /// Roles that expire within the warning horizon, and other things worth saying.
    pub warnings: Vec<String>,
}

/// The repository's current metadata, as read from its directory.
struct State {
    root: SignedRoot,
    root_path: PathBuf,
    timestamp: Option<Envelope<MetaList>>,
    snapshot: Option<Envelope<MetaList>>,
    targets: Option<Envelope<Targets>>,
}

/// A release checked and built, before its targets are signed.
struct Plan {
    state: Option<State>,
    root: SignedRoot,
    new_root: Option<SignedRoot>,
    /// The new targets metadata, unsigned.
    targets: Envelope<Targets>,
    /// (target name, source file, sha256) of the files to copy.
    sources: Vec<(String, PathBuf, String)>,
}

/// A repository directory.
#[derive(Debug, Clone)]
pub struct Repository {
    dir: PathBuf,
}

impl Repository {
    /// The repository in `dir` (which may not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `REPO/metadata`.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// `REPO/targets`.
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    /// The highest `N.root.json` in the metadata directory.
    pub fn latest_root(&self) -> Result<Option<(u64, PathBuf)>, Error> {
        let dir = self.metadata_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", &dir)(e)),
        };
        let mut best = None;
        for entry in entries {
            let name = entry.map_err(io("reading", &dir))?.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".root.json"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, dir.join(name)));
            }
        }
        Ok(best)
    }

    fn state(&self) -> Result<Option<State>, Error> {
        let Some((_, root_path)) = self.latest_root()? else {
            return Ok(None);
        };
        let root = Envelope::<Root>::load(&root_path)?;
        let md = self.metadata_dir();
        let ts_path = md.join("timestamp.json");
        if !ts_path.exists() {
            return Ok(Some(State {
                root,
                root_path,
                timestamp: None,
                snapshot: None,
                targets: None,
            }));
        }
        let timestamp = Envelope::<MetaList>::load(&ts_path)?;
        let listed = |list: &MetaList, name: &str, path: &Path| {
            list.meta
                .get(name)
                .map(|m| m.version)
                .ok_or_else(|| Error::BadMetadata {
                    path: path.to_owned(),
                    reason: format!("does not list {name}"),
                })
        };
        let sv = listed(&timestamp.signed, "snapshot.json", &ts_path)?;
        let snap_path = md.join(format!("{sv}.snapshot.json"));
        let snapshot = Envelope::<MetaList>::load(&snap_path)?;
        let tv = listed(&snapshot.signed, "targets.json", &snap_path)?;
        let targets = Envelope::<Targets>::load(&md.join(format!("{tv}.targets.json")))?;
        Ok(Some(State {
            root,
            root_path,
            timestamp: Some(timestamp),
            snapshot: Some(snapshot),
            targets: Some(targets),
        }))
    }

    /// Publishes a release: adds `release`'s files and manifest as targets and signs new
    /// versions of targets, snapshot and timestamp with `keys` (each role's threshold of the
    /// keys the current root lists for it).
    ///
    /// Everything is checked before the first file is written: the root (complete, signed by
    /// its threshold, not expired), the keys (each one a targets, snapshot or timestamp key of
    /// the root, every threshold met), the manifest (valid, and every image and migration it
    /// names is a target after this publish; lz4 images must decode).
    pub fn publish(
        &self,
        release: &Release,
        keys: &[&dyn KeySource],
        expires: &Expiries,
        now: DateTime<Utc>,
    ) -> Result<Report, Error> {
        check_future("targets", expires.targets, now)?;
        check_future("snapshot", expires.snapshot, now)?;
        check_future("timestamp", expires.timestamp, now)?;
        let plan = self.plan(release, expires.targets, now)?;
        let signers = Signers::pick(
            &plan.root.signed,
            keys,
            &[Role::Targets, Role::Snapshot, Role::Timestamp],
        )?;
        let mut new_targets = plan.targets.clone();
        signers.sign(&mut new_targets, &plan.root.signed, &Role::Targets)?;
        self.finish(plan, new_targets, &signers, expires, now)
    }

    /// The targets metadata `publish` would sign for `release` (expiring at
    /// `targets_expires`), unsigned, after every check `publish` makes; nothing is written.
    /// It is signed elsewhere ([`crate::offline`]) and published with
    /// [`Repository::publish_signed_targets`].
    pub fn draft_targets(
        &self,
        release: &Release,
        targets_expires: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Envelope<Targets>, Error> {
        check_future("targets", targets_expires, now)?;
        Ok(self.plan(release, targets_expires, now)?.targets)
    }

    /// Publishes `release` with targets metadata signed elsewhere (`signed`, from
    /// [`Repository::draft_targets`] and [`crate::offline`]): it must be exactly the metadata
    /// this release makes (the same files, manifest, version and expiry) and carry the targets
    /// threshold of the root; `keys` sign the snapshot and timestamp.
    pub fn publish_signed_targets(
        &self,
        release: &Release,
        signed: &Envelope<Targets>,
        keys: &[&dyn KeySource],
        expires: &Expiries,
        now: DateTime<Utc>,
    ) -> Result<Report, Error> {
        check_future("targets", signed.signed.header.expires, now)?;
        check_future("snapshot", expires.snapshot, now)?;
        check_future("timestamp", expires.timestamp, now)?;
        let plan = self.plan(release, signed.signed.header.expires, now)?;
        if plan.targets.signed != signed.signed {
            return Err(Error::State(format!(
                "the signed targets (version {}) are not what this release makes (version {}{}): \
                 sign a draft of exactly this release (updata publish ... --draft-targets FILE)",
                signed.signed.header.version,
                plan.targets.signed.header.version,
                if plan.targets.signed.targets == signed.signed.targets {
                    ""
                } else {
                    ", other target files"
                }
            )));
        }
        let what = format!("root version {}", plan.root.signed.header.version);
        signed.check_signed_by(&plan.root.signed, &Role::Targets, &what)?;
        let signers = Signers::pick(&plan.root.signed, keys, &[Role::Snapshot, Role::Timestamp])?;
        self.finish(plan, signed.clone(), &signers, expires, now)
    }

    /// Everything `publish` checks and builds before it signs: the root, the new target list
    /// and manifest, and the unsigned targets metadata.
    fn plan(
        &self,
        release: &Release,
        targets_expires: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Plan, Error> {
        let state = self.state()?;
        let (root, new_root) = match (&state, &release.root) {
            (Some(s), Some(given)) => {
                let given_root = Envelope::<Root>::load(given)?;
                if given_root.signed != s.root.signed {
                    return Err(Error::State(format!(
                        "{} is not the repository's current root ({}): to change the root use rotate-root",
                        given.display(),
                        s.root_path.display()
                    )));
                }
                (s.root.clone(), None)
            }
            (Some(s), None) => (s.root.clone(), None),
            (None, Some(given)) => {
                let r = Envelope::<Root>::load(given)?;
                root::check_complete(&r, &root::describe(&r.signed, given), None)?;
                (r.clone(), Some(r))
            }
            (None, None) => {
                return Err(Error::State(format!(
                    "{} has no root yet: give the root to start it from (--root root.json)",
                    self.metadata_dir().display()
                )));
            }
        };
        check_root_alive(&root.signed, now)?;

        // The new target list: the current one, plus the new files.
        let mut targets: BTreeMap<String, TargetDescription> = state
            .as_ref()
            .and_then(|s| s.targets.as_ref())
            .map(|t| t.signed.targets.clone())
            .unwrap_or_default();
        let mut sources: Vec<(String, PathBuf, String)> = Vec::new();
        let mut files: Vec<(String, PathBuf)> = release
            .targets
            .iter()
            .map(|p| Ok((target_name(p)?, p.clone())))
            .collect::<Result<_, Error>>()?;
        let manifest = match &release.manifest {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(io("reading the manifest", path))?;
                let m = manifest::Manifest::from_slice(&bytes)?;
                m.validate().map_err(manifest::Error::from)?;
                files.push((MANIFEST_TARGET.to_owned(), path.clone()));
                Some(m)
            }
            None => None,
        };
        let mut seen = BTreeSet::new();
        for (name, path) in &files {
            if !seen.insert(name.clone()) {
                return Err(Error::BadTarget {
                    name: name.clone(),
                    reason: "given twice".to_owned(),
                });
            }
            let (entry, sha) = describe_file(path)?;
            targets.insert(name.clone(), entry);
            sources.push((name.clone(), path.clone(), sha));
        }
        if let Some(m) = &manifest {
            check_manifest_targets(m, &targets)?;
            // Images decode, and their decoded length is recorded for the check before upload.
            for u in &m.updates {
                for (_, name) in u.images.named() {
                    if let Some((_, path, _)) = sources.iter().find(|(n, _, _)| n == name) {
                        let len = File::open(path)
                            .and_then(super::image::decoded_length)
                            .map_err(|e| Error::BadTarget {
                                name: name.to_owned(),
                                reason: format!("{} is not a valid lz4 frame: {e}", path.display()),
                            })?;
                        if let Some(t) = targets.get_mut(name) {
                            t.custom = serde_json::json!({ "decompressed_length": len });
                        }
                    }
                }
            }
        } else if !targets.contains_key(MANIFEST_TARGET) {
            return Err(Error::State(
                "the repository has no manifest.json yet: give one (--manifest manifest.json)"
                    .to_owned(),
            ));
        }

        let versions = |f: fn(&State) -> Option<u64>| state.as_ref().and_then(f).unwrap_or(0) + 1;
        let new_targets = Envelope::new(Targets {
            header: Header::new(
                &Role::Targets,
                versions(|s| s.targets.as_ref().map(|t| t.signed.header.version)),
                targets_expires,
            ),
            targets,
            delegations: state
                .as_ref()
                .and_then(|s| s.targets.as_ref())
                .and_then(|t| t.signed.delegations.clone()),
        });
        Ok(Plan {
            state,
            root,
            new_root,
            targets: new_targets,
            sources,
        })
    }

    /// Signs snapshot and timestamp for the signed `new_targets` of `plan` and writes
    /// everything, in the order that keeps the published repository consistent.
    fn finish(
        &self,
        plan: Plan,
        new_targets: Envelope<Targets>,
        signers: &Signers<'_>,
        expires: &Expiries,
        now: DateTime<Utc>,
    ) -> Result<Report, Error> {
        check_future("snapshot", expires.snapshot, now)?;
        check_future("timestamp", expires.timestamp, now)?;
        let Plan {
            state,
            root,
            new_root,
            sources,
            ..
        } = plan;
        let mut report = Report::default();
        let versions = |f: fn(&State) -> Option<u64>| state.as_ref().and_then(f).unwrap_or(0) + 1;
        let targets_bytes = new_targets.to_bytes();
        let mut snapshot = Envelope::new(MetaList {
            header: Header::new(
                &Role::Snapshot,
                versions(|s| s.snapshot.as_ref().map(|t| t.signed.header.version)),
                expires.snapshot,
            ),
            meta: snapshot_meta(
                state.as_ref().and_then(|s| s.snapshot.as_ref()),
                "targets.json",
                meta_entry(new_targets.signed.header.version, &targets_bytes),
            ),
        });
        signers.sign(&mut snapshot, &root.signed, &Role::Snapshot)?;
        let timestamp = Self::timestamp_for(
            &snapshot,
            versions(|s| s.timestamp.as_ref().map(|t| t.signed.header.version)) - 1,
            expires.timestamp,
            signers,
            &root,
        )?;

        // Checked; now write, in the order that keeps the published repository consistent.
        let md = self.metadata_dir();
        let td = self.targets_dir();
        for dir in [&md, &td] {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        if let Some(r) = new_root {
            let path = md.join(format!("{}.root.json", r.signed.header.version));
            super::metadata::write_atomic(&path, &r.to_bytes())?;
            report.written.push(path);
        }
        for (name, path, sha) in &sources {
            let dest = td.join(format!("{sha}.{name}"));
            if !dest.exists() {
                copy_atomic(path, &dest)?;
                report.written.push(dest);
            }
        }
        let path = md.join(format!(
            "{}.targets.json",
            new_targets.signed.header.version
        ));
        super::metadata::write_atomic(&path, &targets_bytes)?;
        report.written.push(path);
        report
            .written
            .extend(self.write_snapshot_and_timestamp(&snapshot, &timestamp)?);
        report.warnings = expiry_warnings(
            &root.signed,
            Some(&new_targets.signed),
            now,
            expires.warn_within,
        );
        Ok(report)
    }

    fn timestamp_for(
        snapshot: &Envelope<MetaList>,
        previous_version: u64,
        expires: DateTime<Utc>,
        signers: &Signers<'_>,
        root: &SignedRoot,
    ) -> Result<Envelope<MetaList>, Error> {
        let snapshot_bytes = snapshot.to_bytes();
        let mut timestamp = Envelope::new(MetaList {
            header: Header::new(&Role::Timestamp, previous_version + 1, expires),
            meta: BTreeMap::from([(
                "snapshot.json".to_owned(),
                meta_entry(snapshot.signed.header.version, &snapshot_bytes),
            )]),
        });
        signers.sign(&mut timestamp, &root.signed, &Role::Timestamp)?;
        Ok(timestamp)
    }

    fn write_snapshot_and_timestamp(
        &self,
        snapshot: &Envelope<MetaList>,
        timestamp: &Envelope<MetaList>,
    ) -> Result<Vec<PathBuf>, Error> {
        let md = self.metadata_dir();
        let mut written = Vec::new();
        let snap_path = md.join(format!("{}.snapshot.json", snapshot.signed.header.version));
        if !snap_path.exists() {
            snapshot.save(&snap_path)?;
            written.push(snap_path);
        }
        let ts_path = md.join("timestamp.json");
        timestamp.save(&ts_path)?;
        written.push(ts_path);
        Ok(written)
    }

    /// Signs a new timestamp (and, with `snapshot_expires`, first a new snapshot version with
    /// the same content) so a repository stays fresh without a release: what a cron job runs.
    /// Warns when the root or targets expire within `warn_within`.
    pub fn refresh(
        &self,
        keys: &[&dyn KeySource],
        timestamp_expires: DateTime<Utc>,
        snapshot_expires: Option<DateTime<Utc>>,
        warn_within: Duration,
        now: DateTime<Utc>,
    ) -> Result<Report, Error> {
        check_future("timestamp", timestamp_expires, now)?;
        if let Some(e) = snapshot_expires {
            check_future("snapshot", e, now)?;
        }
        let state = self
            .state()?
            .filter(|s| s.timestamp.is_some())
            .ok_or_else(|| {
                Error::State(format!(
                    "{} has no timestamp.json: publish a release first",
                    self.metadata_dir().display()
                ))
            })?;
        check_root_alive(&state.root.signed, now)?;
        let roles: &[Role] = if snapshot_expires.is_some() {
            &[Role::Snapshot, Role::Timestamp]
        } else {
            &[Role::Timestamp]
        };
        let signers = Signers::pick(&state.root.signed, keys, roles)?;
        let Some(mut snapshot) = state.snapshot.clone() else {
            return Err(Error::State("no snapshot".to_owned()));
        };
        if let Some(e) = snapshot_expires {
            snapshot.signed.header.version += 1;
            snapshot.signed.header.expires = expiry(e);
            snapshot.signatures.clear();
            signers.sign(&mut snapshot, &state.root.signed, &Role::Snapshot)?;
        }
        let previous = state
            .timestamp
            .as_ref()
            .map_or(0, |t| t.signed.header.version);
        let timestamp = Self::timestamp_for(
            &snapshot,
            previous,
            timestamp_expires,
            &signers,
            &state.root,
        )?;
        let written = self.write_snapshot_and_timestamp(&snapshot, &timestamp)?;
        Ok(Report {
            written,
            warnings: expiry_warnings(
                &state.root.signed,
                state.targets.as_ref().map(|t| &t.signed),
                now,
                warn_within,
            ),
        })
    }

    /// Publishes the next root version from `draft` (a root file edited with the `root`
    /// commands): it gets version N+1 if it does not have it, is signed with `keys` (each a
    /// root key of version N or of the draft), must then carry the threshold of both, and is
    /// written as `metadata/(N+1).root.json`; the draft is saved with the new version and
    /// signatures. Roles whose keys changed need a new publish (or refresh) to be re-signed:
    /// the report says which.
    pub fn rotate_root(
        &self,
        draft_path: &Path,
        keys: &[&dyn KeySource],
        now: DateTime<Utc>,
    ) -> Result<Report, Error> {
        let state = self.state()?.ok_or_else(|| {
            Error::State(format!(
                "{} has no root to rotate from",
                self.metadata_dir().display()
            ))
        })?;
        let current = &state.root.signed;
        let mut draft = Envelope::<Root>::load(draft_path)?;
        let next = current.header.version + 1;
        if draft.signed.header.version > next {
            return Err(Error::State(format!(
                "{} is version {}, but the repository's root is version {}: the next one is {next}",
                draft_path.display(),
                draft.signed.header.version,
                current.header.version
            )));
        }
        root::edit(&mut draft, |r| {
            r.header.version = next;
            Ok(())
        })?;
        let what = root::describe(&draft.signed, draft_path);
        if draft.signed.header.expires <= now {
            return Err(Error::RootExpired {
                version: draft.signed.header.version,
                expires: draft.signed.header.expires.to_rfc3339(),
            });
        }
        for key in keys {
            root::sign(&mut draft, *key, &what, Some(current))?;
        }
        root::check_complete(&draft, &what, Some(current))?;
        let path = self.metadata_dir().join(format!("{next}.root.json"));
        super::metadata::write_atomic(&path, &draft.to_bytes())?;
        draft.save(draft_path)?;
        let mut warnings = Vec::new();
        for role in [Role::Targets, Role::Snapshot, Role::Timestamp] {
            if draft.signed.role(&role) != current.role(&role) {
                warnings.push(format!(
                    "the {role} keys changed: run `updata publish` to re-sign with the new ones"
                ));
            }
        }
        Ok(Report {
            written: vec![path, draft_path.to_owned()],
            warnings,
        })
    }
}

/// A delegation from the top-level targets role to a role of its own: target names matching
/// `paths` may be signed by `threshold` of `keys`.
#[derive(Debug, Clone)]
pub struct Delegation {
    /// The delegated role's name (not a top-level role's).
    pub name: String,
    /// Its keys.
    pub keys: Vec<PublicKey>,
    /// How many of them must sign.
    pub threshold: u64,
    /// The target name patterns it is trusted for (`*` matches within one path segment).
    pub paths: Vec<String>,
    /// Whether a client that finds a matching pattern here searches no further delegation.
    pub terminating: bool,
}

impl Repository {
    /// The current state, which must have a published release.
    fn published(&self) -> Result<State, Error> {
        self.state()?
            .filter(|s| s.targets.is_some() && s.snapshot.is_some())
            .ok_or_else(|| {
                Error::State(format!(
                    "{} has no published release: publish one first",
                    self.metadata_dir().display()
                ))
            })
    }

    /// Adds (or replaces) the delegation `d` in the top-level targets role and publishes new
    /// targets, snapshot and timestamp versions signed with `keys` (the root's targets,
    /// snapshot and timestamp keys). The delegated role's own metadata is published with
    /// [`Repository::publish_delegated`].
    pub fn delegate(
        &self,
        d: &Delegation,
        keys: &[&dyn KeySource],
        expires: &Expiries,
        now: DateTime<Utc>,
    ) -> Result<Report, Error> {
        check_future("targets", expires.targets, now)?;
        check_future("snapshot", expires.snapshot, now)?;
        check_future("timestamp", expires.timestamp, now)?;
        let bad = |reason: String| Error::State(format!("delegation to {:?}: {reason}", d.name));
        // The name becomes a file name (N.NAME.json) and a URL path segment: keep it plain.
        let plain = d
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if d.name.is_empty()
            || !plain
            || d.name.starts_with('.')
            || Role::from_name(&d.name).is_top_level()
        {
            return Err(bad(
                "a delegated role needs a name of its own: letters, digits, '-', '_', '.', not \
                 starting with '.', and not root, targets, snapshot or timestamp"
                    .to_owned(),
            ));
        }
        let distinct: BTreeSet<&str> = d.keys.iter().map(PublicKey::id).collect();
        if d.threshold == 0 || (distinct.len() as u64) < d.threshold {
            return Err(bad(format!(
                "threshold {} with {} distinct key(s): give at least as many keys, threshold at least 1",
                d.threshold,
                distinct.len()
            )));
        }
        if d.paths.is_empty() {
            return Err(bad("give the target paths it is trusted for".to_owned()));
        }
        let state = self.published()?;
        check_root_alive(&state.root.signed, now)?;
        let signers = Signers::pick(
            &state.root.signed,
            keys,
            &[Role::Targets, Role::Snapshot, Role::Timestamp],
        )?;
        let Some(current) = state.targets.as_ref() else {
            return Err(Error::State("no targets".to_owned()));
        };
        let mut targets = current.signed.clone();
        targets.header = Header::new(
            &Role::Targets,
            current.signed.header.version + 1,
            expires.targets,
        );
        let mut delegations = targets.delegations.take().unwrap_or(Delegations {
            keys: BTreeMap::new(),
            roles: Vec::new(),
        });
        for k in &d.keys {
            delegations
                .keys
                .insert(KeyId::from(k.id()), Key::from_value(k.to_tuf().clone()));
        }
        let role = DelegatedRole {
            name: d.name.clone(),
            keyids: distinct.iter().map(|id| KeyId::from(*id)).collect(),
            threshold: d.threshold,
            terminating: d.terminating,
            paths: Some(d.paths.clone()),
            path_hash_prefixes: None,
        };
        match delegations.roles.iter_mut().find(|r| r.name == d.name) {
            Some(r) => *r = role,
            None => delegations.roles.push(role),
        }
        let used: BTreeSet<KeyId> = delegations
            .roles
            .iter()
            .flat_map(|r| r.keyids.iter().cloned())
            .collect();
        delegations.keys.retain(|id, _| used.contains(id));
        targets.delegations = Some(delegations);
        let mut new_targets = Envelope::new(targets);
        signers.sign(&mut new_targets, &state.root.signed, &Role::Targets)?;
        let bytes = new_targets.to_bytes();
        let entry = meta_entry(new_targets.signed.header.version, &bytes);
        let path = self.metadata_dir().join(format!(
            "{}.targets.json",
            new_targets.signed.header.version
        ));
        self.commit_role(
            &state,
            &signers,
            expires,
            "targets.json",
            entry,
            &[],
            (path, bytes),
        )
    }

    /// Publishes a new version of the delegated role `name` with `files` added as its targets,
    /// signed with `keys`: the threshold of the keys the top-level targets role delegates to it,
    /// plus the root's snapshot and timestamp keys. Every target name must match the paths it
    /// is delegated: a host would refuse it otherwise.
    pub fn publish_delegated(
        &self,
        name: &str,
        files: &[PathBuf],
        keys: &[&dyn KeySource],
        expires: &Expiries,
        now: DateTime<Utc>,
    ) -> Result<Report, Error> {
        check_future("delegated targets", expires.targets, now)?;
        check_future("snapshot", expires.snapshot, now)?;
        check_future("timestamp", expires.timestamp, now)?;
        let state = self.published()?;
        check_root_alive(&state.root.signed, now)?;
        let top = state.targets.as_ref().map(|t| &t.signed);
        let delegations = top.and_then(|t| t.delegations.as_ref());
        let Some((delegation, delegation_keys)) = delegations.and_then(|ds| {
            ds.roles
                .iter()
                .find(|r| r.name == name)
                .map(|r| (r, &ds.keys))
        }) else {
            return Err(Error::State(format!(
                "the targets role does not delegate to {name:?}: add the delegation first (updata delegate)"
            )));
        };
        // The delegation's keys as a root-shaped key set, so one signature check serves both.
        let authority = Root {
            header: state.root.signed.header.clone(),
            consistent_snapshot: true,
            keys: delegation_keys.clone(),
            roles: BTreeMap::from([(
                name.to_owned(),
                RoleKeys {
                    keyids: delegation.keyids.clone(),
                    threshold: delegation.threshold,
                },
            )]),
        };
        let role = Role::from_name(name);
        let mine: Vec<&dyn KeySource> = keys
            .iter()
            .copied()
            .filter(|k| delegation.keyids.iter().any(|x| x == k.public_key().id()))
            .collect();
        let others: Vec<&dyn KeySource> = keys
            .iter()
            .copied()
            .filter(|k| !delegation.keyids.iter().any(|x| x == k.public_key().id()))
            .collect();
        let signers = Signers::pick(
            &state.root.signed,
            &others,
            &[Role::Snapshot, Role::Timestamp],
        )?;
        let meta_name = format!("{name}.json");
        let md = self.metadata_dir();
        let previous = match state
            .snapshot
            .as_ref()
            .and_then(|s| s.signed.meta.get(&meta_name))
        {
            Some(m) => Some(Envelope::<Targets>::load(
                &md.join(format!("{}.{meta_name}", m.version)),
            )?),
            None => None,
        };
        let mut targets = previous
            .as_ref()
            .map(|p| p.signed.targets.clone())
            .unwrap_or_default();
        let mut sources = Vec::new();
        for path in files {
            let target = target_name(path)?;
            if !tuf::delegation_matches(delegation.paths.as_deref(), None, &target) {
                return Err(Error::BadTarget {
                    name: target,
                    reason: format!(
                        "outside the paths {name:?} is delegated ({}): hosts would refuse it",
                        delegation.paths.clone().unwrap_or_default().join(", ")
                    ),
                });
            }
            let (entry, sha) = describe_file(path)?;
            targets.insert(target.clone(), entry);
            sources.push((target, path.clone(), sha));
        }
        let mut new_role = Envelope::new(Targets {
            header: Header::new(
                &Role::Targets,
                previous.as_ref().map_or(0, |p| p.signed.header.version) + 1,
                expires.targets,
            ),
            targets,
            delegations: None,
        });
        for k in &mine {
            new_role.sign(*k)?;
        }
        new_role.check_signed_by(&authority, &role, &format!("the delegation to {name:?}"))?;
        let bytes = new_role.to_bytes();
        let entry = meta_entry(new_role.signed.header.version, &bytes);
        let path = md.join(format!("{}.{meta_name}", new_role.signed.header.version));
        self.commit_role(
            &state,
            &signers,
            expires,
            &meta_name,
            entry,
            &sources,
            (path, bytes),
        )
    }

    /// Writes target files, one role's new metadata, and a new snapshot (listing it) and
    /// timestamp signed by `signers`, in the order that keeps the repository consistent.
    #[allow(clippy::too_many_arguments)]
    fn commit_role(
        &self,
        state: &State,
        signers: &Signers<'_>,
        expires: &Expiries,
        meta_name: &str,
        entry: MetaFile,
        sources: &[(String, PathBuf, String)],
        role_file: (PathBuf, Vec<u8>),
    ) -> Result<Report, Error> {
        let root = &state.root;
        let version = |v: Option<u64>| v.unwrap_or(0) + 1;
        let mut snapshot = Envelope::new(MetaList {
            header: Header::new(
                &Role::Snapshot,
                version(state.snapshot.as_ref().map(|s| s.signed.header.version)),
                expires.snapshot,
            ),
            meta: snapshot_meta(state.snapshot.as_ref(), meta_name, entry),
        });
        signers.sign(&mut snapshot, &root.signed, &Role::Snapshot)?;
        let timestamp = Self::timestamp_for(
            &snapshot,
            state
                .timestamp
                .as_ref()
                .map_or(0, |t| t.signed.header.version),
            expires.timestamp,
            signers,
            root,
        )?;
        let mut report = Report::default();
        let td = self.targets_dir();
        std::fs::create_dir_all(&td).map_err(io("creating", &td))?;
        for (name, path, sha) in sources {
            let dest = td.join(format!("{sha}.{name}"));
            if !dest.exists() {
                copy_atomic(path, &dest)?;
                report.written.push(dest);
            }
        }
        super::metadata::write_atomic(&role_file.0, &role_file.1)?;
        report.written.push(role_file.0);
        report
            .written
            .extend(self.write_snapshot_and_timestamp(&snapshot, &timestamp)?);
        Ok(report)
    }
}

fn check_root_alive(root: &Root, now: DateTime<Utc>) -> Result<(), Error> {
    if root.header.expires <= now {
        return Err(Error::RootExpired {
            version: root.header.version,
            expires: root.header.expires.to_rfc3339(),
        });
    }
    Ok(())
}

/// Refuses to sign `role` metadata whose expiry `expires` is not after `now`: published, it
/// would make every host fail with "expired".
fn check_future(
    role: &'static str,
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    if expires <= now {
        return Err(Error::ExpiresInThePast {
            role,
            expires: expires.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            now: now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
    }
    Ok(())
}

/// Warnings for a root or targets role that expires within `horizon`.
pub fn expiry_warnings(
    root: &Root,
    targets: Option<&Targets>,
    now: DateTime<Utc>,
    horizon: Duration,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut warn = |what: String, expires: DateTime<Utc>| {
        if expires <= now + horizon {
            out.push(format!(
                "{what} expires at {} (within {} day(s)): renew it",
                expires.format("%Y-%m-%dT%H:%M:%SZ"),
                horizon.num_days()
            ));
        }
    };
    warn(
        format!("root version {}", root.header.version),
        root.header.expires,
    );
    if let Some(t) = targets {
        warn(
            format!("targets version {}", t.header.version),
            t.header.expires,
        );
    }
    out
}

/// The keys that sign each role in one operation.
struct Signers<'a> {
    by_role: BTreeMap<Role, Vec<&'a dyn KeySource>>,
}

impl<'a> Signers<'a> {
    /// Picks, for each of `roles`, the given keys that `root` lists for it; every threshold
    /// must be met and every key must serve at least one of the roles.
    fn pick(root: &Root, keys: &[&'a dyn KeySource], roles: &[Role]) -> Result<Self, Error> {
        let what = format!("root version {}", root.header.version);
        for key in keys {
            let id = key.public_key().id();
            if !roles.iter().any(|r| {
                root.role(r)
                    .is_some_and(|k| k.keyids.iter().any(|x| x == id))
            }) {
                return Err(Error::KeyNotInRoot {
                    key: key.describe(),
                    keyid: KeyId::from(id),
                    role: roles
                        .iter()
                        .map(Role::as_str)
                        .collect::<Vec<_>>()
                        .join(" or "),
                    what: what.clone(),
                });
            }
        }
        let mut by_role = BTreeMap::new();
        for role in roles {
            let listed = root
                .role(role)
                .ok_or_else(|| Error::NoSuchRole(role.to_string()))?;
            let mine: Vec<&dyn KeySource> = keys
                .iter()
                .copied()
                .filter(|k| listed.keyids.iter().any(|x| x == k.public_key().id()))
                .collect();
            let distinct: BTreeSet<&str> = mine.iter().map(|k| k.public_key().id()).collect();
            if (distinct.len() as u64) < listed.threshold {
                return Err(Error::ThresholdNotMet {
                    role: role.clone(),
                    valid: distinct.len() as u64,
                    threshold: listed.threshold,
                    what: what.clone(),
                    keyids: listed.keyids.join(", "),
                });
            }
            by_role.insert(role.clone(), mine);
        }
        Ok(Self { by_role })
    }

    fn sign<T>(&self, env: &mut Envelope<T>, root: &Root, role: &Role) -> Result<(), Error>
    where
        T: serde::Serialize + for<'de> serde::Deserialize<'de>,
    {
        for key in self.by_role.get(role).into_iter().flatten() {
            env.sign(*key)?;
        }
        // A key source that signs wrongly is caught here, before anything is written.
        env.check_signed_by(root, role, &format!("root version {}", root.header.version))
    }
}

/// The snapshot's `meta` after a change to one role: the current entries (the delegated roles
/// stay listed) with `name`'s replaced.
fn snapshot_meta(
    current: Option<&Envelope<MetaList>>,
    name: &str,
    entry: MetaFile,
) -> BTreeMap<String, MetaFile> {
    let mut meta = current.map(|s| s.signed.meta.clone()).unwrap_or_default();
    meta.insert(name.to_owned(), entry);
    meta
}

fn meta_entry(version: u64, bytes: &[u8]) -> MetaFile {
    MetaFile {
        version,
        length: Some(bytes.len() as u64),
        hashes: Some(BTreeMap::from([(
            "sha256".to_owned(),
            hex::encode(Sha256::digest(bytes)),
        )])),
    }
}

fn target_name(path: &Path) -> Result<String, Error> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::BadTarget {
            name: path.display().to_string(),
            reason: "has no UTF-8 file name".to_owned(),
        })?;
    if name.starts_with('.') {
        return Err(Error::BadTarget {
            name: name.to_owned(),
            reason: "target names may not start with '.'".to_owned(),
        });
    }
    Ok(name.to_owned())
}

/// Length and sha256 of a file.
fn describe_file(path: &Path) -> Result<(TargetDescription, String), Error> {
    let mut file = File::open(path).map_err(io("opening the target", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut length = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        length += n as u64;
    }
    let sha = hex::encode(hasher.finalize());
    Ok((
        TargetDescription {
            length,
            hashes: BTreeMap::from([("sha256".to_owned(), sha.clone())]),
            custom: serde_json::Value::Null,
        },
        sha,
    ))
}

/// Every image and migration the manifest names must be a target.
fn check_manifest_targets(
    m: &manifest::Manifest,
    targets: &BTreeMap<String, TargetDescription>,
) -> Result<(), Error> {
    let missing: BTreeSet<String> = manifest_target_names(m)
        .into_iter()
        .filter(|n| !targets.contains_key(n))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingTargets {
            names: missing.into_iter().collect(),
        })
    }
}

/// The target names a manifest refers to, without repeats: images, migrations, and the chunk
/// indexes and patches of delta updates (a delta naming a file that is not a signed target
/// would make every host fall back to the full image, silently).
pub fn manifest_target_names(m: &manifest::Manifest) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for u in &m.updates {
        for (_, name) in u.images.named() {
            out.insert(name.to_owned());
        }
        if let Some(delta) = &u.delta {
            out.extend(delta.indexes.values().cloned());
            for p in &delta.patches {
                out.insert(p.index.clone());
                out.insert(p.data.clone());
            }
        }
    }
    for names in m.migrations.values() {
        out.extend(names.iter().cloned());
    }
    out
}

/// Copies `src` to `dest` atomically.
fn copy_atomic(src: &Path, dest: &Path) -> Result<(), Error> {
    let mut input = File::open(src).map_err(io("opening", src))?;
    super::metadata::write_published(dest, |file| {
        io::copy(&mut input, file).map_err(io("copying", src))?;
        Ok(())
    })
}
