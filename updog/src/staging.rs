//! The staging order as types: each step of [`crate::updater::Updater::stage_plan`] takes the
//! value of the step before it, by value, and only that step makes the next. All fields are
//! private to this module and nothing outside it can make any of these values.
//!
//! 1. [`Confirmed`]: the boot flags of the locked disk, on which the running set was found
//!    marked successful (or, with `--allow-unconfirmed-boot`, on which the other set is no
//!    fallback that clearing would destroy). The running set is the one the lock was taken
//!    for, resolved by the updater; no caller picks it.
//! 2. [`Preflight`]: a confirmed disk plus the plan it checked: no image empty, each fits its
//!    partition of the inactive set. It owns the plan from here on: what gets written is what
//!    was checked.
//! 3. [`MigrationsFetched`]: a passed preflight whose migrations are in the cache.
//! 4. [`ClearedSet`]: the inactive set cleared (priority 0, no tries, not successful) with the
//!    GPT change flushed, then the staged record of the set removed. Images are written into
//!    it only through its own methods, onto its own partitions, from its own plan's targets
//!    ([`ClearedSet::stage_full`], `ClearedSet::stage_delta`), and each is recorded in it
//!    once written, flushed and read back.
//! 5. `ClearedSet::mark_valid(self, ..)`: takes the cleared set and nothing that could come
//!    from elsewhere (no image, no record, no set): it writes the record of the images it
//!    holds and marks the set valid, or refuses when one of the three is missing.
//!
//! So no byte reaches the inactive set before it is cleared, the set is never marked valid
//! with an image missing or written by another run, and the order refuse-unconfirmed,
//! preflight, migrations, clear, remove record cannot be written differently.
//!
//! The steps after the first are public methods, so that the rules can be shown from outside
//! the crate; the first step ([`Confirmed`]) is made only by the updater from the lock it
//! handed out, so outside the crate none of these values can exist. This is the sequence,
//! which compiles:
//!
//! ```
//! use updog::staging::{ClearedSet, Confirmed};
//!
//! fn sequence(
//!     confirmed: Confirmed,
//!     plan: updog::plan::UpdatePlan,
//!     repo: &updog::tuf::Repository,
//!     dirs: &migrations_fetch::CacheDirs,
//!     state: &std::path::Path,
//! ) -> Result<updog::status::StagedRecord, updog::updater::UpdateError> {
//!     let preflight = confirmed.preflight(plan, updog::Version::new(1, 0, 0))?;
//!     let fetched = preflight.fetch_migrations(repo, dirs)?;
//!     let mut set: ClearedSet = fetched.clear(state, &|_| {})?;
//!     for kind in updog::ImageKind::ALL {
//!         set.stage_full(kind, repo, &Default::default(), &|_| {})?;
//!     }
//!     set.mark_valid(state, &|_| {})
//! }
//! ```
//!
//! Each rule is that sequence with one change, which does not compile (the error code is the
//! one rustdoc checks on a nightly toolchain; building a struct with private fields has none).
//!
//! A cleared set (or any other step) cannot be built by hand:
//!
//! ```compile_fail
//! fn forge(set: updog::SetId) -> updog::staging::ClearedSet {
//!     updog::staging::ClearedSet { set }
//! }
//! ```
//!
//! Nor a preflight without the confirmation of the running set:
//!
//! ```compile_fail
//! fn forge(plan: updog::plan::UpdatePlan) -> updog::staging::Preflight {
//!     updog::staging::Preflight { plan }
//! }
//! ```
//!
//! What a cleared set holds (its partitions, its plan, the images written) cannot be changed
//! from outside:
//!
//! ```compile_fail,E0616
//! fn tamper(mut set: updog::staging::ClearedSet) {
//!     set.written = Default::default();
//! }
//! ```
//!
//! A confirmed disk cannot fetch migrations (nor be cleared) without a preflight:
//!
//! ```compile_fail,E0599
//! fn skip_preflight(
//!     confirmed: updog::staging::Confirmed,
//!     repo: &updog::tuf::Repository,
//!     dirs: &migrations_fetch::CacheDirs,
//! ) {
//!     let _ = confirmed.fetch_migrations(repo, dirs);
//! }
//! ```
//!
//! A passed preflight cannot be cleared before its migrations are fetched:
//!
//! ```compile_fail,E0599
//! fn skip_migrations(preflight: updog::staging::Preflight, state: &std::path::Path) {
//!     let _ = preflight.clear(state, &|_| {});
//! }
//! ```
//!
//! Nothing is written before the clear (only a cleared set writes images):
//!
//! ```compile_fail,E0599
//! fn write_uncleared(fetched: updog::staging::MigrationsFetched, repo: &updog::tuf::Repository) {
//!     let _ = fetched.stage_full(updog::ImageKind::Root, repo, &Default::default(), &|_| {});
//! }
//! ```
//!
//! The pipeline's result for one image is no image of a set: there is no conversion from it,
//! so an image staged elsewhere (or a fabricated result) cannot be counted:
//!
//! ```compile_fail,E0277
//! fn count(staged: updog::pipeline::StagedImage) -> updog::staging::ClearedSet {
//!     staged.into()
//! }
//! ```
//!
//! Marking valid takes no images (nor a set, nor a record) from its caller:
//!
//! ```compile_fail,E0061
//! fn smuggle(
//!     set: updog::staging::ClearedSet,
//!     state: &std::path::Path,
//!     images: Vec<updog::status::StagedImageRecord>,
//! ) {
//!     let _ = set.mark_valid(state, &|_| {}, images);
//! }
//! ```
//!
//! Marking valid consumes the set: nothing is written to it, or marked, afterwards:
//!
//! ```compile_fail,E0382
//! fn write_after_mark(mut set: updog::staging::ClearedSet, repo: &updog::tuf::Repository) {
//!     let _ = set.mark_valid(std::path::Path::new("staged.json"), &|_| {});
//!     let _ = set.stage_full(updog::ImageKind::Root, repo, &Default::default(), &|_| {});
//! }
//! ```
//!
//! The lock, whose running set decides which set is cleared, is taken through
//! [`crate::updater::Updater::lock`] only (the running set is the updater's own resolution of
//! the disk), not for a set a caller picks:
//!
//! ```compile_fail,E0624
//! fn pick(disk: &std::path::Path) {
//!     let _ = updog::lock::UpdateLock::acquire(disk, updog::SetId::B);
//! }
//! ```

use std::path::Path;
use std::sync::atomic::AtomicBool;

use bootpart::{Layout, Partition, PartitionSet, SetId};
use chrono::Utc;
use semver::Version;

use crate::delta::AssembleProgress;
use crate::delta::stage::{DeltaError, DeltaImage, DeltaStaged, DeltaStore};
use crate::error::UpdateError;
use crate::pipeline::{IoMode, PartitionSink, StageError, StageOptions};
use crate::plan::UpdatePlan;
use crate::status::{STATUS_FORMAT_VERSION, StagedImageRecord, StagedRecord};
use crate::steps::Step;
use bootpart::ImageKind;

/// The boot flags of the locked disk.
pub(crate) type Gpt = signpost::Signpost<Box<dyn bootpart::io::BlockIo + Send>>;

/// Step 1: the boot flags of the locked disk, with the running set confirmed (see the
/// [module docs](self)).
pub struct Confirmed {
    gpt: Gpt,
}

impl std::fmt::Debug for Confirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirmed")
            .field("active", &self.gpt.active())
            .finish_non_exhaustive()
    }
}

impl Confirmed {
    /// Refuses to stage while the running set has not been marked successful. If the other
    /// set is one a rollback could go to, clearing it would destroy the only fallback should
    /// this boot fail: always refused. If it is no fallback (cleared, or staged and never
    /// booted), the staged update would be the disk's only bootable set after the flip, for
    /// one try (a disk whose first boot was never marked ends with no bootable set if that try
    /// fails): refused unless `allow` (`--allow-unconfirmed-boot`).
    pub(crate) fn check(gpt: Gpt, allow: bool) -> Result<Confirmed, UpdateError> {
        let set = gpt.active();
        let state = gpt.state(set).unwrap_or_default();
        let fallback = gpt
            .state(set.other())
            .unwrap_or_default()
            .can_roll_back_to();
        if state.successful || (allow && !fallback) {
            Ok(Confirmed { gpt })
        } else {
            Err(UpdateError::BootNotConfirmed {
                set,
                state,
                fallback,
            })
        }
    }

    /// The boot flags as read.
    pub fn flags(&self) -> signpost::BootFlags {
        self.gpt.flags()
    }

    /// The set staging goes to.
    pub fn inactive(&self) -> SetId {
        self.gpt.inactive()
    }

    /// Checks what can be checked before the disk changes and was not settled when the plan
    /// was made: no image is empty, and each can fit its partition of the inactive set.
    /// `running` is the version the staged record will say the update came from.
    pub fn preflight(self, plan: UpdatePlan, running: Version) -> Result<Preflight, UpdateError> {
        let layout = self
            .gpt
            .layout()
            .map_err(|e| UpdateError::Signpost(Box::new(e)))?;
        let set = self.gpt.inactive();
        let partitions = layout
            .set(set)
            .map_err(|e| UpdateError::Disk(Box::new(e)))?
            .clone();
        let mut update_total = 0u64;
        for image in plan.images() {
            let (kind, target) = (image.kind, &image.target);
            if target.length == 0 {
                return Err(UpdateError::EmptyImage {
                    image: kind,
                    target: target.name.clone(),
                });
            }
            let capacity = partition_of(&partitions, kind).byte_len();
            update_total = update_total.saturating_add(target.length);
            if target.length > max_compressed_len(capacity) {
                return Err(UpdateError::ImageTooLarge {
                    image: kind,
                    target: target.name.clone(),
                    length: target.length,
                    capacity,
                    set,
                });
            }
        }
        Ok(Preflight {
            gpt: self.gpt,
            layout,
            set,
            partitions,
            plan,
            running,
            update_total,
        })
    }
}

/// The largest compressed image that can possibly decode into `capacity` bytes: lz4 never
/// expands data by more than 1/255 plus small per-block and per-frame overheads.
pub(crate) fn max_compressed_len(capacity: u64) -> u64 {
    const FRAME_OVERHEAD: u64 = 64;
    const PER_BLOCK: u64 = 8;
    const MIN_BLOCK: u64 = 64 * 1024;
    capacity
        .saturating_add(capacity / 255)
        .saturating_add((capacity / MIN_BLOCK + 1).saturating_mul(PER_BLOCK))
        .saturating_add(FRAME_OVERHEAD)
}

/// Step 2: a passed preflight, owning the plan it checked (see the [module docs](self)).
pub struct Preflight {
    gpt: Gpt,
    layout: Layout,
    set: SetId,
    partitions: PartitionSet,
    plan: UpdatePlan,
    running: Version,
    update_total: u64,
}

impl std::fmt::Debug for Preflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preflight")
            .field("set", &self.set)
            .field("version", self.plan.version())
            .finish_non_exhaustive()
    }
}

impl Preflight {
    /// The plan checked.
    pub fn plan(&self) -> &UpdatePlan {
        &self.plan
    }

    /// Fetches the plan's migrations into the cache: a missing link or a fetch failure stops
    /// the update before the disk changes.
    pub fn fetch_migrations(
        self,
        repo: &crate::tuf::Repository,
        dirs: &migrations_fetch::CacheDirs,
    ) -> Result<MigrationsFetched, UpdateError> {
        migrations_fetch::fetch(
            &self.plan.migration_plan,
            &crate::migrations::TufSource(repo),
            dirs,
            &migrations_fetch::FetchOptions::default(),
        )
        .map_err(|e| UpdateError::MigrationFetch(Box::new(e)))?;
        Ok(MigrationsFetched { preflight: self })
    }
}

/// Step 3: a passed preflight whose migrations are in the cache (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct MigrationsFetched {
    preflight: Preflight,
}

impl MigrationsFetched {
    /// The set staging goes to.
    pub fn set(&self) -> SetId {
        self.preflight.set
    }

    /// Clears the inactive set (signpost's clear-inactive: GPT written and flushed, both
    /// copies), then removes the staged record at `state_file`, which described the set just
    /// cleared. `step` is called right before each.
    pub fn clear(self, state_file: &Path, step: &dyn Fn(Step)) -> Result<ClearedSet, UpdateError> {
        let Preflight {
            mut gpt,
            layout,
            set,
            partitions,
            plan,
            running,
            update_total,
        } = self.preflight;
        step(Step::Clear);
        gpt.clear_inactive()
            .map_err(|e| UpdateError::Signpost(Box::new(e)))?;
        log::info!("cleared set {set} before writing to it");
        let cleared = ClearedSet {
            gpt,
            layout,
            set,
            partitions,
            plan,
            running,
            update_total,
            written: [None, None, None],
        };
        step(Step::RemoveRecord);
        match StagedRecord::remove(state_file) {
            Ok(()) => Ok(cleared),
            Err(e) => Err(cleared.abandon(e.into())),
        }
    }
}

/// Where the chunks of a delta come from, and where its state lives: what
/// [`ClearedSet::stage_delta`] needs beyond the set and its plan.
pub(crate) struct DeltaSource<'a> {
    /// The verified repository the plan was made on.
    pub(crate) repo: &'a crate::tuf::Repository,
    /// Its verified manifest (to find the running version's indexes).
    pub(crate) manifest: &'a manifest::Manifest,
    /// The transport the chunk store is read through, the repository's base URL for a
    /// relative store path, and each chunk's time limit.
    pub(crate) store: DeltaStore,
    /// Where the seed cache and the resume markers live.
    pub(crate) state_dir: &'a Path,
}

/// Step 4: the inactive set, cleared with the change flushed and its record removed, and the
/// images written onto it in this run (see the [module docs](self)).
pub struct ClearedSet {
    gpt: Gpt,
    layout: Layout,
    set: SetId,
    partitions: PartitionSet,
    plan: UpdatePlan,
    running: Version,
    update_total: u64,
    /// Root, boot, hash: what was written, flushed and read back, once it was.
    written: [Option<StagedImageRecord>; 3],
}

impl std::fmt::Debug for ClearedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClearedSet")
            .field("set", &self.set)
            .field("version", self.plan.version())
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

fn slot(kind: ImageKind) -> usize {
    match kind {
        ImageKind::Root => 0,
        ImageKind::Boot => 1,
        ImageKind::Hash => 2,
    }
}

impl ClearedSet {
    /// The set cleared.
    pub fn set(&self) -> SetId {
        self.set
    }

    /// The plan being staged.
    pub fn plan(&self) -> &UpdatePlan {
        &self.plan
    }

    /// The images' total signed (compressed) length, for the update-wide progress.
    pub fn update_total(&self) -> u64 {
        self.update_total
    }

    /// Streams the plan's full image `kind` from `repo` onto this set's partition for it
    /// through the staging pipeline, which returns once the image was received whole, matched
    /// the plan's signed length and sha256, was flushed and read back; the decoded length must
    /// be the signed one. Returns the bytes written.
    pub fn stage_full(
        &mut self,
        kind: ImageKind,
        repo: &crate::tuf::Repository,
        opts: &StageOptions,
        progress: &dyn Fn(crate::pipeline::Progress),
    ) -> Result<u64, UpdateError> {
        let set = self.set;
        let image = self.plan.image(kind);
        let target = &image.target.name;
        self.written[slot(kind)] = None;
        let (_, reader) = repo
            .fetch_target_unverified(target)
            .map_err(|e| UpdateError::Repository(Box::new(e)))?;
        let mut sink = PartitionSink::open_path(
            self.gpt.disk(),
            partition_of(&self.partitions, kind),
            IoMode::Auto,
        )
        .map_err(|e| UpdateError::OpenPartition {
            image: kind,
            set,
            source: std::io::Error::other(e),
        })?;
        let started = std::time::Instant::now();
        let staged =
            crate::pipeline::stage_image(reader, &image.target.info(), &mut sink, opts, progress)
                .map_err(|e| match e {
                StageError::Cancelled => UpdateError::Cancelled { set },
                source => UpdateError::Stage {
                    image: kind,
                    target: target.clone(),
                    set,
                    source: Box::new(source),
                },
            })?;
        let secs = started.elapsed().as_secs_f64();
        log::info!(
            "{kind}: {target}: {} bytes received and verified, {} bytes written and read back in {secs:.1} s ({:.1} MiB/s received){}",
            staged.compressed_len,
            staged.decoded_len,
            staged.compressed_len as f64 / secs.max(1e-6) / (1024.0 * 1024.0),
            if staged.direct_io {
                ""
            } else {
                ", through the page cache"
            }
        );
        if staged.decoded_len == 0 {
            return Err(UpdateError::EmptyImage {
                image: kind,
                target: target.clone(),
            });
        }
        if let Some(signed) = image
            .target
            .decompressed_length
            .filter(|signed| *signed != staged.decoded_len)
        {
            return Err(UpdateError::DecodedLength {
                image: kind,
                target: target.clone(),
                decoded: staged.decoded_len,
                signed,
                set,
            });
        }
        self.written[slot(kind)] = Some(StagedImageRecord {
            target: target.clone(),
            sha256: hex::encode(staged.sha256),
            written: staged.decoded_len,
        });
        Ok(staged.decoded_len)
    }

    /// Assembles image `kind` onto this set's partition from chunks, with the chunk index the
    /// plan signed for it: every chunk is hashed against that index before it is written and
    /// re-hashed from the device after the flush. [`DeltaError::NotPlanned`] when the plan
    /// holds no index for it.
    pub(crate) fn stage_delta(
        &mut self,
        kind: ImageKind,
        source: &DeltaSource<'_>,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(&AssembleProgress),
    ) -> Result<DeltaStaged, DeltaError> {
        let image = self.plan.image(kind);
        let index = image.delta_index.as_ref().ok_or(DeltaError::NotPlanned)?;
        let running_set = self.set.other();
        let seed = self.layout.set(running_set).map_err(|e| DeltaError::Io {
            what: format!("finding the {kind} partition of the running set {running_set}"),
            source: std::io::Error::other(e),
        })?;
        self.written[slot(kind)] = None;
        let request = DeltaImage {
            image: kind,
            index,
            update: self.plan.update(),
            manifest: source.manifest,
            running_version: &self.running,
            running_set,
            disk: self.gpt.disk(),
            image_len: image.target.decompressed_length,
            target: partition_of(&self.partitions, kind),
            seed: partition_of(seed, kind),
            state_dir: source.state_dir,
        };
        let staged = request.stage(source.repo, &source.store, cancel, progress)?;
        self.written[slot(kind)] = Some(StagedImageRecord {
            target: staged.index_target.clone(),
            sha256: staged.index_sha256.clone(),
            written: staged.written,
        });
        Ok(staged)
    }

    /// Marks the set valid (signpost's mark-inactive-valid, one try) if this run wrote all
    /// three images onto it: writes the staged record of them to `state_file` first (a set
    /// marked valid always has a record: a full state file system fails here, with the set
    /// still cleared), then re-reads the GPT, and the set must still be as this run cleared
    /// it. On any failure the set is cleared again; the error says why. `step` is called
    /// right before the record and the mark.
    pub fn mark_valid(
        mut self,
        state_file: &Path,
        step: &dyn Fn(Step),
    ) -> Result<StagedRecord, UpdateError> {
        let set = self.set;
        let mut images = std::collections::BTreeMap::new();
        for kind in ImageKind::ALL {
            match self.written[slot(kind)].take() {
                Some(image) => {
                    images.insert(kind, image);
                }
                None => {
                    return Err(self.abandon(UpdateError::UnverifiedImage { image: kind, set }));
                }
            }
        }
        let update = self.plan.update();
        let record = StagedRecord {
            format_version: STATUS_FORMAT_VERSION,
            variant: update.variant.clone(),
            arch: update.arch.clone(),
            version: update.version.clone(),
            from_version: self.running.clone(),
            set,
            staged_at: Utc::now(),
            images,
            applied: false,
        };
        step(Step::RecordStaged);
        if let Err(e) = record.write_atomic(state_file) {
            return Err(self.abandon(e.into()));
        }
        step(Step::MarkValid);
        let marked = self.gpt.apply_expecting(
            signpost::Transition::MarkInactiveValid,
            set,
            signpost::SetState::default(),
        );
        match marked {
            Ok(()) => Ok(record),
            // Whatever marked it did not write these images: it is cleared again.
            Err(signpost::Error::SetChanged {
                expected, found, ..
            }) => Err(self.abandon(UpdateError::SetChanged {
                set,
                expected,
                found,
            })),
            Err(e) => Err(self.abandon(UpdateError::Signpost(Box::new(e)))),
        }
    }

    /// After a failure: the set ends cleared (best effort; `error`, returned, is the one that
    /// matters). The caller removes the record.
    pub fn abandon(mut self, error: UpdateError) -> UpdateError {
        let cleared = self.gpt.refresh().is_ok()
            && self.gpt.state(self.set).unwrap_or_default() == signpost::SetState::default();
        if !cleared {
            let _ = self.gpt.clear_inactive();
        }
        error
    }
}

/// The partition of `set` that holds `kind`.
pub(crate) fn partition_of(set: &PartitionSet, kind: ImageKind) -> &Partition {
    match kind {
        ImageKind::Root => &set.root,
        ImageKind::Boot => &set.boot,
        ImageKind::Hash => &set.hash,
    }
}

#[cfg(test)]
mod tests {
    use fixtures::disk::{DiskImage, DiskImageBuilder};
    use signpost::SetState;

    use super::*;
    use crate::plan::{PlannedImage, SignedTarget};

    /// A disk running set A (marked successful, or not) whose set B held an OS that booted
    /// before.
    fn disk(running_ok: bool) -> DiskImage {
        let running = SetState::new(1, 0, running_ok).unwrap().apply_to(0);
        let booted = SetState::new(1, 0, true).unwrap().apply_to(0);
        DiskImageBuilder::new()
            .attributes(1, running)
            .attributes(5, booted)
            .build_temp()
            .unwrap()
    }

    fn gpt(disk: &DiskImage) -> Gpt {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk.path)
            .unwrap();
        let io: Box<dyn bootpart::io::BlockIo + Send> = Box::new(file);
        signpost::Signpost::from_io(io, &disk.path, SetId::A).unwrap()
    }

    fn b_state(disk: &DiskImage) -> SetState {
        signpost::Signpost::open_read_only(&disk.path, Some(SetId::A))
            .unwrap()
            .state(SetId::B)
            .unwrap()
    }

    struct ManifestOnly;

    impl migrations_fetch::TargetLookup for ManifestOnly {
        fn target_info(
            &self,
            _: &str,
        ) -> Result<Option<migrations_fetch::TargetInfo>, migrations_fetch::BoxError> {
            Ok(Some(migrations_fetch::TargetInfo {
                length: 1,
                sha256: [1; 32],
            }))
        }
    }

    /// A plan for 1.1.0 whose images are `length` bytes each.
    fn plan(length: u64) -> UpdatePlan {
        let update: manifest::Update = serde_json::from_value(serde_json::json!({
            "variant": "v", "arch": "a", "version": "1.1.0", "max_version": "1.1.0",
            "images": {"boot": "boot.lz4", "root": "root.lz4", "hash": "hash.lz4"}
        }))
        .unwrap();
        let (from, to) = ("1.0.0".parse().unwrap(), "1.1.0".parse().unwrap());
        let image = |kind: ImageKind| PlannedImage {
            kind,
            target: SignedTarget {
                name: format!("{kind}.lz4"),
                length,
                sha256: [7; 32],
                decompressed_length: None,
            },
            delta_index: None,
        };
        UpdatePlan {
            update,
            images: ImageKind::ALL.map(image),
            migration_plan: migrations_fetch::MigrationPlan::from_hops(
                &from,
                &to,
                Vec::new(),
                &ManifestOnly,
            )
            .unwrap(),
            target_set: Some(SetId::B),
            options: crate::plan::CheckOptions::default(),
        }
    }

    /// A set cleared by the steps in order (the migrations, which need a repository, taken as
    /// fetched).
    fn cleared(disk: &DiskImage, state_file: &Path) -> ClearedSet {
        let confirmed = Confirmed::check(gpt(disk), false).unwrap();
        let preflight = confirmed
            .preflight(plan(1), "1.0.0".parse().unwrap())
            .unwrap();
        MigrationsFetched { preflight }
            .clear(state_file, &|_| {})
            .unwrap()
    }

    /// What a completed stage of `kind` leaves in the set (the pipeline's and the delta
    /// path's own tests cover the writing).
    fn written(set: &mut ClearedSet, kind: ImageKind) {
        set.written[slot(kind)] = Some(StagedImageRecord {
            target: format!("{kind}.lz4"),
            sha256: hex::encode([7; 32]),
            written: 1,
        });
    }

    #[test]
    fn an_unconfirmed_running_set_is_refused_before_anything_changes() {
        let disk = disk(false);
        let before = b_state(&disk);
        let err = Confirmed::check(gpt(&disk), false).unwrap_err();
        assert!(
            matches!(
                err,
                UpdateError::BootNotConfirmed {
                    set: SetId::A,
                    fallback: true,
                    ..
                }
            ),
            "{err}"
        );
        // The other set is a fallback: allowing an unconfirmed boot does not clear it either.
        assert!(Confirmed::check(gpt(&disk), true).is_err());
        assert_eq!(b_state(&disk), before);
    }

    #[test]
    fn an_image_that_cannot_fit_fails_the_preflight_before_the_disk_changes() {
        let disk = disk(true);
        let before = b_state(&disk);
        let confirmed = Confirmed::check(gpt(&disk), false).unwrap();
        let err = confirmed
            .preflight(plan(u64::MAX / 2), "1.0.0".parse().unwrap())
            .unwrap_err();
        assert!(
            matches!(
                err,
                UpdateError::ImageTooLarge {
                    image: ImageKind::Root,
                    set: SetId::B,
                    ..
                }
            ),
            "{err}"
        );
        let confirmed = Confirmed::check(gpt(&disk), false).unwrap();
        let err = confirmed
            .preflight(plan(0), "1.0.0".parse().unwrap())
            .unwrap_err();
        assert!(matches!(err, UpdateError::EmptyImage { .. }), "{err}");
        assert_eq!(b_state(&disk), before);
    }

    #[test]
    fn clearing_clears_the_set_then_removes_its_record() {
        let disk = disk(true);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("staged.json");
        std::fs::write(&state, b"{}").unwrap();
        let steps = std::sync::Mutex::new(Vec::new());
        let confirmed = Confirmed::check(gpt(&disk), false).unwrap();
        let preflight = confirmed
            .preflight(plan(1), "1.0.0".parse().unwrap())
            .unwrap();
        let set = MigrationsFetched { preflight }
            .clear(&state, &|step| {
                steps
                    .lock()
                    .unwrap()
                    .push((step, b_state(&disk), state.exists()));
            })
            .unwrap();
        assert_eq!(set.set(), SetId::B);
        assert_eq!(b_state(&disk), SetState::default());
        assert!(!state.exists());
        let booted = SetState::new(1, 0, true).unwrap();
        assert_eq!(
            *steps.lock().unwrap(),
            [
                (Step::Clear, booted, true),
                (Step::RemoveRecord, SetState::default(), true)
            ]
        );
    }

    #[test]
    fn three_images_written_in_this_run_mark_the_set_valid_with_their_record() {
        let disk = disk(true);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("staged.json");
        let mut set = cleared(&disk, &state);
        for kind in ImageKind::ALL {
            written(&mut set, kind);
        }
        let record = set.mark_valid(&state, &|_| {}).unwrap();
        assert_eq!(record.set, SetId::B);
        assert_eq!(record.images.len(), 3);
        assert_eq!(record.version, "1.1.0".parse::<Version>().unwrap());
        assert_eq!(StagedRecord::read(&state).unwrap(), Some(record));
        assert_eq!(b_state(&disk), SetState::new(0, 1, false).unwrap());
    }

    #[test]
    fn a_missing_image_is_refused_and_the_set_stays_cleared_and_unrecorded() {
        let disk = disk(true);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("staged.json");
        let mut set = cleared(&disk, &state);
        written(&mut set, ImageKind::Root);
        written(&mut set, ImageKind::Hash);
        let err = set
            .mark_valid(&state, &|step| panic!("{step:?} with an image missing"))
            .unwrap_err();
        assert!(
            matches!(
                err,
                UpdateError::UnverifiedImage {
                    image: ImageKind::Boot,
                    set: SetId::B
                }
            ),
            "{err}"
        );
        assert!(!state.exists());
        assert_eq!(b_state(&disk), SetState::default());
    }

    #[test]
    fn a_failed_record_leaves_the_set_cleared_and_unmarked() {
        let disk = disk(true);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("staged.json");
        let mut set = cleared(&disk, &state);
        for kind in ImageKind::ALL {
            written(&mut set, kind);
        }
        // The record's directory is a file: the write fails.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"").unwrap();
        let err = set
            .mark_valid(&blocked.join("staged.json"), &|step| {
                assert_ne!(step, Step::MarkValid, "marked after a failed record");
            })
            .unwrap_err();
        assert!(matches!(err, UpdateError::Record(_)), "{err}");
        assert_eq!(b_state(&disk), SetState::default());
    }

    #[test]
    fn a_set_changed_under_the_run_is_not_marked_and_is_cleared_again() {
        let disk = disk(true);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("staged.json");
        let mut set = cleared(&disk, &state);
        for kind in ImageKind::ALL {
            written(&mut set, kind);
        }
        let err = set
            .mark_valid(&state, &|step| {
                if step == Step::MarkValid {
                    // Something that ignores the lock marks the set meanwhile.
                    gpt(&disk)
                        .apply(signpost::Transition::MarkInactiveValid)
                        .unwrap();
                }
            })
            .unwrap_err();
        assert!(matches!(err, UpdateError::SetChanged { .. }), "{err}");
        assert_eq!(b_state(&disk), SetState::default());
    }

    #[test]
    fn compressed_bound_is_above_capacity_but_not_by_much() {
        assert!(max_compressed_len(0) >= 64);
        let cap = 100 * 1024 * 1024;
        let bound = max_compressed_len(cap);
        assert!(bound > cap && bound < cap + cap / 100);
        assert_eq!(max_compressed_len(u64::MAX), u64::MAX);
    }
}
