//! The staging order as types. A [`ClearedSet`] exists only once the inactive set was cleared
//! and that GPT change flushed ([`ClearedSet::clear`]); a [`VerifiedImage`] only from a
//! completed stage of one image onto that set, flushed and read back (the full-image pipeline
//! or the delta path); and [`ClearedSet::mark_valid`] takes the set with all three verified
//! images, by value. So no byte reaches the inactive set before it is cleared, and the set is
//! never marked valid with an image missing or staged by another run.

use std::sync::atomic::{AtomicU64, Ordering};

use bootpart::{Layout, Partition, PartitionSet, SetId};

use crate::progress::ImageKind;
use crate::status::StagedImageRecord;

/// The boot flags of the locked disk.
pub(crate) type Gpt = signpost::Signpost<Box<dyn bootpart::io::BlockIo + Send>>;

/// Tells the cleared sets of one process apart, so that an image verified on one cannot be
/// counted for another.
static CLEARINGS: AtomicU64 = AtomicU64::new(0);

/// The inactive set, cleared (priority 0, no tries, not successful) with the change flushed,
/// and the partitions of both sets from the GPT read of this operation.
pub(crate) struct ClearedSet {
    gpt: Gpt,
    layout: Layout,
    set: SetId,
    partitions: PartitionSet,
    id: u64,
}

impl ClearedSet {
    /// Clears the inactive set of `gpt` (signpost's clear-inactive: GPT written and flushed,
    /// both copies); `layout` is what the same handle read.
    pub(crate) fn clear(
        mut gpt: Gpt,
        layout: Layout,
    ) -> Result<ClearedSet, crate::updater::UpdateError> {
        let set = gpt.inactive();
        let partitions = layout
            .set(set)
            .map_err(|e| crate::updater::UpdateError::Disk(Box::new(e)))?
            .clone();
        gpt.clear_inactive()
            .map_err(|e| crate::updater::UpdateError::Signpost(Box::new(e)))?;
        Ok(ClearedSet {
            gpt,
            layout,
            set,
            partitions,
            id: CLEARINGS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The set cleared.
    pub(crate) fn set(&self) -> SetId {
        self.set
    }

    /// The locked disk.
    pub(crate) fn disk(&self) -> &std::path::Path {
        self.gpt.disk()
    }

    /// Both sets' partitions, as read before the clear.
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The cleared set's partition for `kind`.
    pub(crate) fn partition(&self, kind: ImageKind) -> &Partition {
        partition_of(&self.partitions, kind)
    }

    /// An image the full-image pipeline wrote onto this set: it returns only after the data
    /// was received whole, matched the signed length and sha256, was flushed and read back.
    pub(crate) fn verified_full(
        &self,
        kind: ImageKind,
        target: &str,
        staged: &crate::pipeline::StagedImage,
    ) -> VerifiedImage {
        self.verified(
            kind,
            StagedImageRecord {
                target: target.to_string(),
                sha256: hex::encode(staged.sha256),
                written: staged.decoded_len,
            },
        )
    }

    /// An image the delta path assembled onto this set: every chunk was hashed against the
    /// signed index before it was written and re-hashed from the device after the flush.
    pub(crate) fn verified_delta(
        &self,
        kind: ImageKind,
        staged: crate::delta::stage::DeltaStaged,
    ) -> VerifiedImage {
        self.verified(
            kind,
            StagedImageRecord {
                target: staged.index_target,
                sha256: staged.index_sha256,
                written: staged.written,
            },
        )
    }

    fn verified(&self, kind: ImageKind, record: StagedImageRecord) -> VerifiedImage {
        VerifiedImage {
            kind,
            set: self.set,
            cleared: self.id,
            record,
        }
    }

    /// Marks the set valid (signpost's mark-inactive-valid, one try) if it holds all three
    /// images verified on it in this run: `before_mark` runs first (the caller writes the
    /// staged record there), then the GPT is re-read and the set must still be as this run
    /// cleared it. On any failure the set is cleared again; the error says why.
    pub(crate) fn mark_valid(
        mut self,
        images: [VerifiedImage; 3],
        before_mark: impl FnOnce(
            SetId,
            &[VerifiedImage; 3],
        )
            -> Result<crate::status::StagedRecord, crate::updater::UpdateError>,
        on_mark: impl FnOnce(),
    ) -> Result<crate::status::StagedRecord, crate::updater::UpdateError> {
        let stray = images
            .iter()
            .zip(ImageKind::ALL)
            .find(|(image, kind)| {
                image.kind != *kind || image.cleared != self.id || image.set != self.set
            })
            .map(|(_, kind)| kind);
        if let Some(image) = stray {
            let set = self.set;
            return Err(self.abandon(crate::updater::UpdateError::UnverifiedImage { image, set }));
        }
        let record = match before_mark(self.set, &images) {
            Ok(record) => record,
            Err(e) => return Err(self.abandon(e)),
        };
        on_mark();
        let marked = self.gpt.apply_expecting(
            signpost::Transition::MarkInactiveValid,
            self.set,
            signpost::SetState::default(),
        );
        match marked {
            Ok(()) => Ok(record),
            // Whatever marked it did not write these images: it is cleared again.
            Err(signpost::Error::SetChanged {
                expected, found, ..
            }) => {
                let set = self.set;
                Err(self.abandon(crate::updater::UpdateError::SetChanged {
                    set,
                    expected,
                    found,
                }))
            }
            Err(e) => Err(self.abandon(crate::updater::UpdateError::Signpost(Box::new(e)))),
        }
    }

    /// After a failure: the set ends cleared (best effort; `error`, returned, is the one that
    /// matters). The caller removes the record.
    pub(crate) fn abandon(
        mut self,
        error: crate::updater::UpdateError,
    ) -> crate::updater::UpdateError {
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

/// One image staged onto a [`ClearedSet`], complete, flushed and read back; only the cleared
/// set makes one (from the pipeline's or the delta path's result).
#[derive(Debug)]
pub(crate) struct VerifiedImage {
    kind: ImageKind,
    set: SetId,
    cleared: u64,
    record: StagedImageRecord,
}

impl VerifiedImage {
    /// What the staged record says of it.
    pub(crate) fn record(&self) -> &StagedImageRecord {
        &self.record
    }

    /// Which image.
    pub(crate) fn kind(&self) -> ImageKind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use fixtures::disk::{DiskImage, DiskImageBuilder};
    use signpost::SetState;

    use super::*;
    use crate::status::StagedRecord;

    /// A disk running set A (booted fine) whose set B held an OS that booted before.
    fn disk() -> DiskImage {
        let booted = SetState::new(1, 0, true).unwrap().apply_to(0);
        DiskImageBuilder::new()
            .attributes(1, booted)
            .attributes(5, booted)
            .build_temp()
            .unwrap()
    }

    fn cleared(disk: &DiskImage) -> ClearedSet {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk.path)
            .unwrap();
        let io: Box<dyn bootpart::io::BlockIo + Send> = Box::new(file);
        let gpt = signpost::Signpost::from_io(io, &disk.path, SetId::A).unwrap();
        let layout = gpt.layout().unwrap();
        ClearedSet::clear(gpt, layout).unwrap()
    }

    fn b_state(disk: &DiskImage) -> SetState {
        signpost::Signpost::open_read_only(&disk.path, Some(SetId::A))
            .unwrap()
            .state(SetId::B)
            .unwrap()
    }

    /// What the pipeline returns for one image (its fields are the pipeline's to fill).
    fn staged() -> crate::pipeline::StagedImage {
        crate::pipeline::StagedImage {
            compressed_len: 1,
            decoded_len: 1,
            sha256: [7; 32],
            digest: 0,
            direct_io: false,
        }
    }

    fn images(on: &ClearedSet, kinds: [ImageKind; 3]) -> [VerifiedImage; 3] {
        kinds.map(|kind| on.verified_full(kind, kind.name(), &staged()))
    }

    fn record(set: SetId, images: &[VerifiedImage; 3]) -> StagedRecord {
        StagedRecord {
            format_version: crate::status::STATUS_FORMAT_VERSION,
            variant: "v".into(),
            arch: "a".into(),
            version: "1.1.0".parse().unwrap(),
            from_version: "1.0.0".parse().unwrap(),
            set,
            staged_at: chrono::Utc::now(),
            images: images
                .iter()
                .map(|i| (i.kind(), i.record().clone()))
                .collect(),
            applied: false,
        }
    }

    #[test]
    fn three_images_verified_on_the_cleared_set_mark_it_valid() {
        let disk = disk();
        let set = cleared(&disk);
        assert_eq!(b_state(&disk), SetState::default(), "cleared and written");
        let images = images(&set, ImageKind::ALL);
        let marked = set
            .mark_valid(images, |set, images| Ok(record(set, images)), || {})
            .unwrap();
        assert_eq!(marked.images.len(), 3);
        assert_eq!(b_state(&disk), SetState::new(0, 1, false).unwrap());
    }

    #[test]
    fn images_verified_on_another_clearing_are_refused_and_the_set_stays_cleared() {
        let disk = disk();
        let earlier = cleared(&disk);
        let stray = images(&earlier, ImageKind::ALL);
        let set = cleared(&disk);
        let err = set
            .mark_valid(
                stray,
                |_, _| panic!("no record for stray images"),
                || panic!("no mark for stray images"),
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                crate::updater::UpdateError::UnverifiedImage {
                    image: ImageKind::Root,
                    set: SetId::B
                }
            ),
            "{err}"
        );
        assert_eq!(b_state(&disk), SetState::default());
    }

    #[test]
    fn images_out_of_order_are_refused() {
        let disk = disk();
        let set = cleared(&disk);
        let swapped = images(&set, [ImageKind::Boot, ImageKind::Root, ImageKind::Hash]);
        let err = set
            .mark_valid(swapped, |set, images| Ok(record(set, images)), || {})
            .unwrap_err();
        assert!(
            matches!(
                err,
                crate::updater::UpdateError::UnverifiedImage {
                    image: ImageKind::Root,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(b_state(&disk), SetState::default());
    }

    #[test]
    fn a_failed_record_leaves_the_set_cleared_and_unmarked() {
        let disk = disk();
        let set = cleared(&disk);
        let images = images(&set, ImageKind::ALL);
        let err = set
            .mark_valid(
                images,
                |set, _| Err(crate::updater::UpdateError::NothingStaged { set }),
                || panic!("marked after a failed record"),
            )
            .unwrap_err();
        assert!(
            matches!(err, crate::updater::UpdateError::NothingStaged { .. }),
            "{err}"
        );
        assert_eq!(b_state(&disk), SetState::default());
    }
}
