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
            .map_err(crate::updater::UpdateError::Disk)?
            .clone();
        gpt.clear_inactive()
            .map_err(crate::updater::UpdateError::Signpost)?;
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
        match kind {
            ImageKind::Root => &self.partitions.root,
            ImageKind::Boot => &self.partitions.boot,
            ImageKind::Hash => &self.partitions.hash,
        }
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
            Err(e) => Err(self.abandon(crate::updater::UpdateError::Signpost(e))),
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
