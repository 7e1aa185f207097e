//! One image of an update staged as a delta: what the updater calls before (and instead of)
//! streaming the full lz4 image.
//!
//! `DeltaImage::stage` (called by the cleared set of [`crate::staging`]) loads the plan's signed
//! index for the image through TUF (its length and hash are signed), finds a seed index for the running partition cut with the target index's chunk
//! sizes (the running version's index if the repository still lists it with those sizes, else a
//! cached or freshly computed one under the state directory), and assembles the image on the inactive partition. A marker file under the state
//! directory says a run for this exact index was started, so a run after a crash or kill checks
//! the chunks already in place first. Any failure that the full image could avoid is reported
//! with [`DeltaError::should_fall_back`] set; the caller then streams the full image.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bootpart::{ImageKind, Partition, SetId};
use manifest::{Manifest, Update};
use semver::Version;
use serde::Serialize;
use sha2::Digest;
use url::Url;

use super::assemble::{
    AssembleError, AssembleOptions, AssembleProgress, Assembled, Beside, BesideReport,
    assemble_beside,
};
use super::index::{BlobIndex, ChunkSizes, IndexError};
use super::partition::PartitionDevice;
use super::patch::PatchIndex;
use super::plan::{Plan, Planned};
use super::seed::{SeedOrigin, cache_path, prune_stale_caches, seed_index, write_file_atomic};
use super::store::{ChunkFetcher, ChunkTimeLimit};
use crate::plan::SignedTarget;
use crate::transport::Transport;
use crate::tuf::Repository;

/// The largest index accepted (a 1 GiB image has about 16,000 chunks: 640 KiB of index).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// One image to stage as a delta: the image of a plan and the partitions it goes to and is
/// seeded from, all from one read of the GPT (see `ClearedSet::stage_delta`, its only
/// caller).
#[derive(Debug, Clone)]
pub(crate) struct DeltaImage<'a> {
    /// Which image.
    pub(crate) image: ImageKind,
    /// The plan's signed chunk index for it.
    pub(crate) index: &'a SignedTarget,
    /// The update being staged (its chunk store, and its variant and arch to find the running
    /// version's index).
    pub(crate) update: &'a Update,
    /// The verified manifest (to find the running version's index).
    pub(crate) manifest: &'a Manifest,
    /// The running version.
    pub(crate) running_version: &'a Version,
    /// The running set, for the seed cache's file name.
    pub(crate) running_set: SetId,
    /// The disk holding both sets.
    pub(crate) disk: &'a Path,
    /// The image's signed decoded size (the full image target's `custom.decompressed_length`):
    /// the index must describe exactly this many bytes, or the full image is staged instead.
    /// `None` (the target signs no size) is no delta.
    pub(crate) image_len: Option<u64>,
    /// The inactive set's partition for this image (written).
    pub(crate) target: &'a Partition,
    /// The running set's partition for this image (read).
    pub(crate) seed: &'a Partition,
    /// Where the seed cache and the resume marker live.
    pub(crate) state_dir: &'a Path,
}

/// Where the chunks come from.
#[derive(Clone)]
pub struct DeltaStore {
    /// The transport chunks are fetched through.
    pub transport: Arc<dyn Transport>,
    /// The repository's targets URL (a relative store path is resolved against it).
    pub targets_base_url: Url,
    /// How long each chunk may take to arrive whole (`None`: only the transport's stall
    /// timeout); a chunk over it ends the delta, and the full image is staged instead.
    pub chunk_time_limit: Option<ChunkTimeLimit>,
}

impl std::fmt::Debug for DeltaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaStore")
            .field("targets_base_url", &self.targets_base_url.as_str())
            .field("chunk_time_limit", &self.chunk_time_limit)
            .finish_non_exhaustive()
    }
}

/// Why an image could not be staged as a delta.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The update lists no index for this image.
    #[error("the update lists no chunk index for this image")]
    NoIndex,
    /// The update lists an index for this image, but the plan holds none: it is no signed
    /// target with a sha256 (or delta updates were off when the plan was made).
    #[error("the chunk index listed for this image is not a signed target with a sha256")]
    NotPlanned,
    /// The index read is not the one the plan signed.
    #[error("chunk index {target} read differs from the one the plan signed")]
    PlanMismatch {
        /// Its target name.
        target: String,
    },
    /// The index target could not be loaded or verified.
    #[error("chunk index {target}")]
    Repository {
        /// Its target name.
        target: String,
        /// The TUF error.
        #[source]
        source: crate::tuf::Error,
    },
    /// The index target is verified but unusable.
    #[error("chunk index {target}")]
    Index {
        /// Its target name.
        target: String,
        /// What is wrong.
        #[source]
        source: IndexError,
    },
    /// The full image target signs no decoded size to hold the index to.
    #[error(
        "the image target signs no decompressed_length, so the length the chunk index {target} describes cannot be checked"
    )]
    NoSignedLength {
        /// The index target.
        target: String,
    },
    /// The index describes another length than the image's signed decoded size.
    #[error(
        "chunk index {target} describes {index_len} bytes, but the image's signed decompressed_length is {signed}"
    )]
    LengthMismatch {
        /// The index target.
        target: String,
        /// Bytes the index describes.
        index_len: u64,
        /// The signed decoded size.
        signed: u64,
    },
    /// The index is larger than we accept.
    #[error("chunk index {target} is over {MAX_INDEX_BYTES} bytes")]
    IndexTooLarge {
        /// Its target name.
        target: String,
    },
    /// The store URL does not parse.
    #[error("chunk store {store:?}")]
    StoreUrl {
        /// The manifest's store value.
        store: String,
        /// The parse error.
        #[source]
        source: url::ParseError,
    },
    /// Reading the running partition or the state directory failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Assembling failed.
    #[error(transparent)]
    Assemble(#[from] AssembleError),
}

impl DeltaError {
    /// Whether the full image should be tried instead (everything but a cancellation and
    /// failures writing the inactive partition, which the full image would hit too).
    pub fn should_fall_back(&self) -> bool {
        match self {
            DeltaError::Assemble(e) => e.should_fall_back(),
            _ => true,
        }
    }
}

/// An image staged as a delta and read back.
#[derive(Debug, Clone)]
pub struct DeltaStaged {
    /// The index target it was built from.
    pub index_target: String,
    /// The signed sha256 of that index (hex).
    pub index_sha256: String,
    /// The image's size.
    pub written: u64,
    /// Where the seed index came from.
    pub seed: Option<SeedOrigin>,
    /// What the assembly did.
    pub assembled: Assembled,
    /// The patch against the running release that was applied beside the assembly, if one was.
    pub patch: Option<PatchUse>,
}

/// What a patch against the running release contributed to an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchUse {
    /// The patch data target.
    pub target: String,
    /// The release it is made against (the running one).
    pub from: String,
    /// Chunks it wrote (each verified against the new index), those a stopped run wrote and this
    /// one found in place included.
    pub chunks: u64,
    /// Patch data bytes downloaded.
    pub downloaded: u64,
    /// Why the patch, or some of its entries, could not be used (those chunks came from the
    /// store).
    pub skipped: Vec<String>,
}

/// The largest patch index read (a patch of an 8 GiB image at 64 KiB chunks has far fewer
/// entries than this allows).
const MAX_PATCH_INDEX_BYTES: u64 = 16 << 20;

fn load_index(repo: &Repository, target: &str) -> Result<(BlobIndex, String), DeltaError> {
    let repo_err = |source| DeltaError::Repository {
        target: target.to_owned(),
        source,
    };
    let desc = repo
        .target(target)
        .map_err(repo_err)?
        .ok_or(DeltaError::NoIndex)?;
    if desc.length > MAX_INDEX_BYTES {
        return Err(DeltaError::IndexTooLarge {
            target: target.to_owned(),
        });
    }
    let sha256 = desc.sha256().map(hex::encode).unwrap_or_default();
    let mut reader = repo.read_target(target).map_err(repo_err)?;
    let mut bytes = Vec::new();
    // The reader checks the signed length and hashes and fails at the end if they differ.
    reader.read_to_end(&mut bytes).map_err(|e| DeltaError::Io {
        what: format!("reading chunk index {target}"),
        source: e,
    })?;
    let index = BlobIndex::parse(&bytes).map_err(|source| DeltaError::Index {
        target: target.to_owned(),
        source,
    })?;
    Ok((index, sha256))
}

/// The resume marker: present while a run for one index on one set is under way.
struct Marker(PathBuf, String);

impl Marker {
    fn new(state_dir: &Path, image: &str, sha256: &str, target: (u64, u64)) -> Marker {
        Marker(
            state_dir.join("delta").join(format!("in-progress-{image}")),
            format!("{sha256} {} {}\n", target.0, target.1),
        )
    }

    fn resumed(&self) -> bool {
        std::fs::read_to_string(&self.0).is_ok_and(|s| s == self.1)
    }

    fn begin(&self) -> std::io::Result<()> {
        write_file_atomic(&self.0, self.1.as_bytes())
    }

    fn end(&self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads and parses the plan's signed chunk index `index` through `repo` (whose reader checks
/// the signed length and hashes and fails at the end if they differ).
fn load_planned_index(repo: &Repository, index: &SignedTarget) -> Result<BlobIndex, DeltaError> {
    let target = &index.name;
    if index.length > MAX_INDEX_BYTES {
        return Err(DeltaError::IndexTooLarge {
            target: target.clone(),
        });
    }
    let mut reader = repo
        .read_target(target)
        .map_err(|source| DeltaError::Repository {
            target: target.clone(),
            source,
        })?;
    let mut bytes = Vec::new();
    (&mut reader)
        .take(MAX_INDEX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DeltaError::Io {
            what: format!("reading chunk index {target}"),
            source: e,
        })?;
    // The repository read is the one the plan was made on; its signed hash must be the plan's.
    let read: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    if read != index.sha256 || bytes.len() as u64 != index.length {
        return Err(DeltaError::PlanMismatch {
            target: target.clone(),
        });
    }
    BlobIndex::parse(&bytes).map_err(|source| DeltaError::Index {
        target: target.clone(),
        source,
    })
}

impl DeltaImage<'_> {
    /// Stages the image as a delta.
    pub(crate) fn stage(
        &self,
        repo: &Repository,
        store: &DeltaStore,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(&AssembleProgress),
    ) -> Result<DeltaStaged, DeltaError> {
        let image = self.image.name();
        let store_path = &self.update.delta.as_ref().ok_or(DeltaError::NoIndex)?.store;
        let target = self.index.name.clone();
        let sha256 = hex::encode(self.index.sha256);
        let index = load_planned_index(repo, self.index)?;
        // Whatever the index says, the image written must be exactly the signed decoded size:
        // an index that covers less (or more) would leave other bytes on the partition.
        let signed = self.image_len.ok_or_else(|| DeltaError::NoSignedLength {
            target: target.clone(),
        })?;
        if index.total_len() != signed {
            return Err(DeltaError::LengthMismatch {
                target,
                index_len: index.total_len(),
                signed,
            });
        }
        let store_url =
            store
                .targets_base_url
                .join(store_path)
                .map_err(|source| DeltaError::StoreUrl {
                    store: store_path.clone(),
                    source,
                })?;
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| DeltaError::Io { what, source }
        };
        let open = |part: &Partition, write: bool, what: &str| {
            PartitionDevice::open(self.disk, part, write).map_err(|e| DeltaError::Io {
                what: what.to_owned(),
                source: std::io::Error::other(e),
            })
        };
        let active = open(self.seed, false, "opening the running partition")?;
        let inactive = open(self.target, true, "opening the inactive partition")?;

        // The seed must be cut with the target's chunk sizes, or its chunks would not match.
        let sizes = index.sizes();
        let (running_set, running_version) = (
            self.running_set.to_string(),
            self.running_version.to_string(),
        );
        let running = running_index(
            repo,
            self.manifest,
            self.update,
            image,
            self.running_version,
            sizes,
        );
        let (seed, origin) = if let Some(index) = running {
            (index, None)
        } else {
            let cache = cache_path(self.state_dir, &running_set, image, &running_version, sizes);
            let (index, origin) = seed_index(&active, sizes, Some(&cache))
                .map_err(io("indexing the running partition"))?;
            if origin == SeedOrigin::Chunked {
                prune_stale_caches(self.state_dir, &running_set, image, &running_version);
            }
            (index, Some(origin))
        };

        // A patch against the running release, when the update has one and the running
        // version's index is the repository's (signed): the patch's windows are verified against
        // it chunk by chunk.
        let (patch, not_used) = self.find_patch(repo, &seed, origin.is_none(), &index);

        let marker = Marker::new(
            self.state_dir,
            image,
            &sha256,
            (self.target.byte_offset(), self.target.byte_len()),
        );
        let resumed = marker.resumed();
        marker
            .begin()
            .map_err(io("writing the delta resume marker"))?;
        let mut fetcher = ChunkFetcher::new(Arc::clone(&store.transport), store_url);
        if let Some(limit) = store.chunk_time_limit {
            fetcher = fetcher.with_time_limit(limit);
        }
        let options = AssembleOptions {
            resumed,
            ..AssembleOptions::default()
        };
        let seed_part = Some((&active as &dyn casync::Device, &seed));
        // The patch pass runs beside the assembly, on its own thread: the assembly copies and
        // fetches everything else meanwhile and takes each entry's chunks as in place once the
        // pass reports them written (the read-back checks them against the digests of the
        // verified bytes written). Entries the pass does not write come from the seed or the
        // store like any other chunk.
        let stop_patch = AtomicBool::new(false);
        let (assembled, patched) = std::thread::scope(|scope| {
            let (beside, applying) = match &patch {
                Some((patch, data)) => {
                    let (reports, reports_rx) = std::sync::mpsc::channel();
                    let job = PatchJob {
                        patch,
                        data,
                        from: self.running_version,
                        old: &seed,
                        new: &index,
                        active: &active,
                        inactive: &inactive,
                        resumed,
                    };
                    let stop = &stop_patch;
                    let applying = scope.spawn(move || job.apply(repo, cancel, stop, reports));
                    let ranges = patch.entries.iter().map(|e| e.chunks.clone()).collect();
                    (
                        Some(Beside {
                            ranges,
                            reports: reports_rx,
                        }),
                        Some(applying),
                    )
                }
                None => (None, None),
            };
            let assembled = assemble_beside(
                &inactive, &index, seed_part, &fetcher, &options, beside, cancel, progress,
            );
            // After a failed assembly the pass has nothing left to do.
            stop_patch.store(true, std::sync::atomic::Ordering::Relaxed);
            let patched = applying.and_then(|a| a.join().ok()).or(not_used);
            (assembled, patched)
        });
        let assembled = assembled?;
        marker.end();
        if assembled.plan.image.bytes != signed {
            return Err(DeltaError::LengthMismatch {
                target,
                index_len: assembled.plan.image.bytes,
                signed,
            });
        }
        Ok(DeltaStaged {
            index_target: target,
            index_sha256: sha256,
            written: index.total_len(),
            seed: origin,
            assembled,
            patch: patched,
        })
    }

    /// The update's patch of this image against the running version, read and checked against
    /// both indexes, to apply; or, when the update lists one that cannot be used (with the
    /// reason logged), what to report instead. `verifiable`: `old` is the running release's
    /// signed index from the repository, the only index a patch's windows may be checked against.
    fn find_patch(
        &self,
        repo: &Repository,
        old: &BlobIndex,
        verifiable: bool,
        new: &BlobIndex,
    ) -> (Option<(PatchIndex, String)>, Option<PatchUse>) {
        let image = self.image.name();
        let Some(listed) = listed_patch(self.update, self.running_version, image) else {
            return (None, None);
        };
        let reason = if verifiable {
            match read_patch(repo, self.update, self.running_version, image, old, new) {
                Some(Ok(found)) => return (Some(found), None),
                Some(Err(reason)) => reason,
                None => return (None, None),
            }
        } else {
            unverifiable(listed)
        };
        log::warn!("{reason}; its chunks come from the chunk store");
        (
            None,
            Some(PatchUse {
                target: listed.data.clone(),
                from: listed.from.to_string(),
                chunks: 0,
                downloaded: 0,
                skipped: vec![reason],
            }),
        )
    }
}

/// Why `listed` cannot be used when the running release's signed index is not at hand.
fn unverifiable(listed: &manifest::Patch) -> String {
    format!(
        "patch {} of {} from {} not used (the repository lists no index of {} for {} cut with \
         the new index's chunk sizes, which its windows must be verified against)",
        listed.index, listed.image, listed.from, listed.image, listed.from
    )
}

/// The patch of `image` against `running_version` the update lists, if any.
fn listed_patch<'u>(
    update: &'u Update,
    running_version: &Version,
    image: &str,
) -> Option<&'u manifest::Patch> {
    update
        .delta
        .as_ref()?
        .patches
        .iter()
        .find(|p| &p.from == running_version && p.image == image)
}

/// The update's patch of `image` against `running_version`, read through TUF and checked against
/// both indexes: `None` when the update lists none, `Err` (a sentence naming the patch) when
/// it cannot be used.
fn read_patch(
    repo: &Repository,
    update: &Update,
    running_version: &Version,
    image: &str,
    old: &BlobIndex,
    new: &BlobIndex,
) -> Option<Result<(PatchIndex, String), String>> {
    let listed = listed_patch(update, running_version, image)?;
    let read = || -> Result<PatchIndex, String> {
        let mut reader = repo
            .read_target(&listed.index)
            .map_err(|e| crate::advice::error_chain(&e))?;
        let mut bytes = Vec::new();
        (&mut reader)
            .take(MAX_PATCH_INDEX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| crate::advice::error_chain(&e))?;
        if bytes.len() as u64 > MAX_PATCH_INDEX_BYTES {
            return Err(format!("larger than {MAX_PATCH_INDEX_BYTES} bytes"));
        }
        reader
            .finish()
            .map_err(|e| crate::advice::error_chain(&e))?;
        PatchIndex::parse(&bytes, old, new).map_err(|e| crate::advice::error_chain(&e))
    };
    Some(
        read()
            .map(|patch| (patch, listed.data.clone()))
            .map_err(|reason| {
                format!(
                    "patch {} of {image} from {} not used ({reason})",
                    listed.index, listed.from
                )
            }),
    )
}

/// A patch's data as read: the whole target through TUF's verifying reader, or the rest of it
/// from an offset on (a resumed run), whose signed hashes cannot be checked.
enum PatchData {
    Whole(Box<crate::tuf::TargetReader>),
    Rest(Box<dyn Read + Send>),
}

impl Read for PatchData {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            PatchData::Whole(reader) => reader.read(buf),
            PatchData::Rest(reader) => reader.read(buf),
        }
    }
}

/// A patch to apply: its index and data target, the two indexes, the two partitions.
struct PatchJob<'a> {
    patch: &'a PatchIndex,
    data: &'a str,
    from: &'a Version,
    old: &'a BlobIndex,
    new: &'a BlobIndex,
    active: &'a dyn casync::Device,
    inactive: &'a dyn casync::Device,
    /// A run for the same image on the same set was stopped part way: entries it wrote are
    /// looked for in place first.
    resumed: bool,
}

impl PatchJob<'_> {
    /// The leading entries whose chunks are all on the inactive partition already, each read
    /// back and checked against the new index (a stopped run wrote them; the pass writes in
    /// entry order, so what it finished leads the patch), reported to the assembly as written.
    /// Returns how many entries and chunks. Stops at the first entry that is not all there.
    fn entries_in_place(
        &self,
        reports: &std::sync::mpsc::Sender<BesideReport>,
        cancel: &AtomicBool,
        stop: &AtomicBool,
    ) -> (usize, u64) {
        let mut buf = Vec::new();
        let (mut entries, mut chunks) = (0, 0);
        for entry in &self.patch.entries {
            if cancel.load(std::sync::atomic::Ordering::Relaxed)
                || stop.load(std::sync::atomic::Ordering::Relaxed)
            {
                break;
            }
            let in_entry: Vec<casync::Chunk> = entry
                .chunks
                .clone()
                .filter_map(|n| usize::try_from(n).ok().and_then(|n| self.new.chunk(n)))
                .collect();
            let (Some(first), Some(last)) = (in_entry.first(), in_entry.last()) else {
                break;
            };
            buf.resize((last.end() - first.offset) as usize, 0);
            if self.inactive.read_at(&mut buf, first.offset).is_err() {
                break;
            }
            let all_there = in_entry.iter().all(|c| {
                let at = (c.offset - first.offset) as usize;
                buf.get(at..at + c.len as usize)
                    .is_some_and(|bytes| casync::ChunkId::of(bytes) == c.id)
            });
            let Some(report) = all_there
                .then(|| BesideReport::written(self.new, first.offset, &buf))
                .flatten()
            else {
                break;
            };
            // The assembly is gone only after it failed.
            let _ = reports.send(report);
            entries += 1;
            chunks += in_entry.len() as u64;
        }
        (entries, chunks)
    }

    /// Streams the patch data target through `casync::patch::apply_stream`: windows read from
    /// the running partition, chunks written to the inactive one, each entry's chunks reported
    /// to the assembly on `reports` once written. Any failure keeps what was written (each chunk
    /// verified) and says so; the rest comes from the seed or the store. Stops early when
    /// `cancel` or `stop` is set.
    fn apply(
        &self,
        repo: &Repository,
        cancel: &AtomicBool,
        stop: &AtomicBool,
        reports: std::sync::mpsc::Sender<BesideReport>,
    ) -> PatchUse {
        let data = self.data;
        let unused = |reason: String| PatchUse {
            target: data.to_owned(),
            from: self.from.to_string(),
            chunks: 0,
            downloaded: 0,
            skipped: vec![reason],
        };
        let reported = std::cell::Cell::new(0u64);
        // A resumed run takes the entries a stopped run wrote (the pass writes them in order,
        // so they lead the patch) and reads the data from the first entry it must apply.
        let (in_place, in_place_chunks) = if self.resumed {
            self.entries_in_place(&reports, cancel, stop)
        } else {
            (0, 0)
        };
        let rest;
        let patch = if in_place == 0 {
            self.patch
        } else {
            let mut tail = self.patch.clone();
            tail.entries.drain(..in_place);
            tail.data_len = tail.entries.iter().map(|e| e.len).sum();
            rest = tail;
            &rest
        };
        let skipped_data = self.patch.data_len - patch.data_len;
        if in_place > 0 {
            log::info!(
                "patch {data}: {in_place} entries ({in_place_chunks} chunks) already in place from \
                 the stopped run; reading the patch data from byte {skipped_data}"
            );
        }
        if patch.entries.is_empty() && in_place > 0 {
            return PatchUse {
                target: data.to_owned(),
                from: self.from.to_string(),
                chunks: in_place_chunks,
                downloaded: 0,
                skipped: Vec::new(),
            };
        }
        let opened = if in_place == 0 {
            repo.read_target(data)
                .map(|r| PatchData::Whole(Box::new(r)))
        } else {
            // Part of a target cannot be checked against its signed hashes; every chunk the
            // rest produces is still checked against the signed index before it is written.
            repo.fetch_target_unverified_from(data, skipped_data)
                .map(|(_, reader)| PatchData::Rest(reader))
        };
        let mut reader = match opened {
            Ok(reader) => reader,
            Err(e) => {
                let reason = format!(
                    "patch {data} not used ({e})",
                    e = crate::advice::error_chain(&e)
                );
                log::warn!("{reason}; its chunks come from the chunk store");
                return PatchUse {
                    chunks: in_place_chunks,
                    ..unused(reason)
                };
            }
        };
        let applied = casync::patch::apply_stream(
            patch,
            self.old,
            self.new,
            &mut reader,
            |offset, buf| self.active.read_at(buf, offset),
            casync::patch::NewImage {
                write: |offset, bytes: &[u8]| {
                    self.inactive.write_at(bytes, offset)?;
                    // Bytes not at chunk boundaries are not reported: the assembly writes them
                    // again, from elsewhere.
                    if let Some(report) = BesideReport::written(self.new, offset, bytes) {
                        if let BesideReport::Written { chunks, .. } = &report {
                            reported.set(reported.get() + (chunks.end - chunks.start));
                        }
                        // The assembly is gone only after it failed.
                        let _ = reports.send(report);
                    }
                    Ok(())
                },
                read: |offset, buf: &mut [u8]| self.inactive.read_at(buf, offset),
            },
            &|| {
                cancel.load(std::sync::atomic::Ordering::Relaxed)
                    || stop.load(std::sync::atomic::Ordering::Relaxed)
            },
        );
        match applied {
            Ok(applied) => {
                // Each chunk was verified on its own; a data file that fails its signed hash at the
                // end is still worth saying.
                if let PatchData::Whole(reader) = reader {
                    if let Err(e) = reader.finish() {
                        log::warn!("patch {data}: {e}", e = crate::advice::error_chain(&e));
                    }
                }
                for (chunks, why) in &applied.failed {
                    log::warn!(
                        "patch {data}: chunks {}..{} not patched ({why}); they come from the chunk store",
                        chunks.start,
                        chunks.end
                    );
                }
                log::info!(
                    "patch {data}: {} chunk(s) from {} byte(s) of patch data",
                    applied.chunks(),
                    applied.data_read
                );
                PatchUse {
                    target: data.to_owned(),
                    from: self.from.to_string(),
                    chunks: in_place_chunks + applied.chunks(),
                    downloaded: applied.data_read,
                    skipped: applied
                        .failed
                        .iter()
                        .map(|(c, why)| format!("chunks {}..{}: {why}", c.start, c.end))
                        .collect(),
                }
            }
            Err(e) => {
                log::warn!(
                    "patch {data} stopped ({e}); the chunks it did not write come from the chunk store",
                    e = crate::advice::error_chain(&e)
                );
                // What it wrote before stopping is verified and taken by the assembly.
                let reason = format!(
                    "patch {data} stopped ({e})",
                    e = crate::advice::error_chain(&e)
                );
                PatchUse {
                    chunks: in_place_chunks + reported.get(),
                    ..unused(reason)
                }
            }
        }
    }
}

/// The running version's index of `image`, if the repository still lists it and it was cut with
/// `sizes` (an index with other sizes describes the same bytes but shares few chunk boundaries
/// with the target: the partition is chunked with the target's sizes instead).
fn running_index(
    repo: &Repository,
    manifest: &Manifest,
    update: &Update,
    image: &str,
    running_version: &Version,
    sizes: ChunkSizes,
) -> Option<BlobIndex> {
    let running = manifest.updates.iter().find(|u| {
        u.variant == update.variant && u.arch == update.arch && &u.version == running_version
    })?;
    let target = running.delta.as_ref()?.indexes.get(image)?;
    load_index(repo, target)
        .ok()
        .map(|(index, _)| index)
        .filter(|index| index.sizes() == sizes)
}

/// The seed index a plan for `target` (the update's index of `image`) can use without reading
/// the disk, and where it came from: only one cut with the target's chunk sizes.
fn plan_seed(
    repo: &Repository,
    request: &EstimateRequest<'_>,
    image: &str,
    target: &BlobIndex,
) -> (Option<BlobIndex>, PlanSeed) {
    let sizes = target.sizes();
    if let Some(index) = running_index(
        repo,
        request.manifest,
        request.update,
        image,
        request.running_version,
        sizes,
    ) {
        return (Some(index), PlanSeed::RunningIndex);
    }
    // The partition's length is not known here (no disk access); the cache was written for it.
    let cached = request.running_set.and_then(|set| {
        let path = cache_path(
            request.state_dir,
            &set.to_string(),
            image,
            &request.running_version.to_string(),
            sizes,
        );
        let index = BlobIndex::parse(&std::fs::read(path).ok()?).ok()?;
        (index.sizes() == sizes).then_some(index)
    });
    match cached {
        Some(index) => (Some(index), PlanSeed::CachedIndex),
        None => (None, PlanSeed::None),
    }
}

/// What [`estimate_update`] needs to know about the host and the update.
#[derive(Debug, Clone, Copy)]
pub struct EstimateRequest<'a> {
    /// The verified manifest (to find the running version's indexes).
    pub manifest: &'a Manifest,
    /// The update chosen.
    pub update: &'a Update,
    /// The running version.
    pub running_version: &'a Version,
    /// The running set, for the seed cache's file name, when known.
    pub running_set: Option<SetId>,
    /// Where the seed cache lives.
    pub state_dir: &'a Path,
}

/// Where a plan found the chunks of the running set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanSeed {
    /// The running version's index, which the repository still lists.
    RunningIndex,
    /// The index of the running partition that an earlier update kept on this host.
    CachedIndex,
    /// Neither: the plan counts every non-zero chunk as a download, and staging will chunk the
    /// running partition first (one read), so it will download less than this plan says.
    None,
}

/// A plan's totals in the form an operator reads them: bytes and chunks of the image, reused
/// (zero, already in place, from the running set) and to download (each distinct chunk once,
/// uncompressed; the store sends them zstd-compressed, so fewer bytes cross the network).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PlanTotals {
    /// Bytes of the image.
    pub image_bytes: u64,
    /// Chunks of the image.
    pub image_chunks: usize,
    /// Bytes not downloaded.
    pub reused_bytes: u64,
    /// Chunks not downloaded.
    pub reused_chunks: usize,
    /// Uncompressed bytes to download.
    pub download_bytes: u64,
    /// Chunks to download.
    pub download_chunks: usize,
}

impl PlanTotals {
    /// The totals of `plan`.
    pub fn of(plan: &Plan) -> PlanTotals {
        PlanTotals {
            image_bytes: plan.image.bytes,
            image_chunks: plan.image.chunks,
            reused_bytes: plan.reused_bytes(),
            reused_chunks: plan.zero.chunks + plan.in_place.chunks + plan.seed.chunks,
            download_bytes: plan.download.bytes,
            download_chunks: plan.download.chunks,
        }
    }

    fn add(&mut self, other: &PlanTotals) {
        self.image_bytes += other.image_bytes;
        self.image_chunks += other.image_chunks;
        self.reused_bytes += other.reused_bytes;
        self.reused_chunks += other.reused_chunks;
        self.download_bytes += other.download_bytes;
        self.download_chunks += other.download_chunks;
    }
}

/// The delta plan of one image of an update.
#[derive(Debug, Clone, Serialize)]
pub struct ImageEstimate {
    /// `root`, `boot` or `hash`.
    pub image: String,
    /// The index target.
    pub index: String,
    /// Where the running set's chunks were found.
    pub seed: PlanSeed,
    /// The totals.
    #[serde(flatten)]
    pub totals: PlanTotals,
    /// Every count of the plan.
    pub plan: Plan,
    /// The patch against the running release the update lists for this image, when it can be
    /// used: what it produces and what it downloads instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchEstimate>,
    /// Why the patch against the running release the update lists for this image cannot be
    /// used (its chunks would come from the chunk store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_not_used: Option<String>,
}

/// What a patch against the running release would save.
#[derive(Debug, Clone, Serialize)]
pub struct PatchEstimate {
    /// The patch data target.
    pub target: String,
    /// The release it is made against.
    pub from: String,
    /// Chunks it produces (not fetched from the store).
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub bytes: u64,
    /// Patch data downloaded for them.
    pub download_bytes: u64,
}

/// An image whose index cannot be used.
#[derive(Debug, Clone, Serialize)]
pub struct UnusableIndex {
    /// `root`, `boot` or `hash`.
    pub image: String,
    /// Why.
    pub reason: String,
}

/// The delta plan of an update, per image and in total, as `check-update` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateEstimate {
    /// Images the update offers an index for, planned.
    pub images: Vec<ImageEstimate>,
    /// Images offered as a delta whose index cannot be used (they would be downloaded whole).
    pub unusable: Vec<UnusableIndex>,
    /// The sum over `images`.
    pub total: PlanTotals,
}

/// Plans every image `request.update` offers an index for, reading indexes through TUF and the
/// seed cache only (not the disk). `None` when the update offers no delta.
pub fn estimate_update(repo: &Repository, request: &EstimateRequest<'_>) -> Option<UpdateEstimate> {
    let delta = request.update.delta.as_ref()?;
    let mut out = UpdateEstimate {
        images: Vec::new(),
        unusable: Vec::new(),
        total: PlanTotals::default(),
    };
    // Staging order (root, boot, hash), then any other name the manifest lists.
    let mut names: Vec<&String> = delta.indexes.keys().collect();
    let order = |n: &str| ["root", "boot", "hash"].iter().position(|k| *k == n);
    names.sort_by_key(|n| (order(n).unwrap_or(usize::MAX), n.as_str()));
    for image in names {
        let target = &delta.indexes[image];
        match load_index(repo, target) {
            Ok((index, _)) => {
                let (seed, origin) = plan_seed(repo, request, image, &index);
                let plan = Planned::new(&index, seed.as_ref()).plan;
                let totals = PlanTotals::of(&plan);
                out.total.add(&totals);
                // Only the repository's (signed) running index can verify a patch's windows.
                let (mut patch, mut patch_not_used) = (None, None);
                if let Some(listed) = listed_patch(request.update, request.running_version, image) {
                    match seed.as_ref().filter(|_| origin == PlanSeed::RunningIndex) {
                        Some(old) => match read_patch(
                            repo,
                            request.update,
                            request.running_version,
                            image,
                            old,
                            &index,
                        ) {
                            Some(Ok((found, data))) => {
                                patch = Some(estimate_patch(&found, &index, data, request));
                            }
                            Some(Err(reason)) => patch_not_used = Some(reason),
                            None => {}
                        },
                        None => {
                            patch_not_used = Some(unverifiable(listed));
                        }
                    }
                }
                out.images.push(ImageEstimate {
                    image: image.clone(),
                    index: target.clone(),
                    seed: origin,
                    totals,
                    plan,
                    patch,
                    patch_not_used,
                });
            }
            Err(e) => out.unusable.push(UnusableIndex {
                image: image.clone(),
                reason: crate::advice::error_chain(&e),
            }),
        }
    }
    Some(out)
}

fn estimate_patch(
    patch: &PatchIndex,
    index: &BlobIndex,
    target: String,
    request: &EstimateRequest<'_>,
) -> PatchEstimate {
    let chunks = patch
        .entries
        .iter()
        .map(|e| e.chunks.end - e.chunks.start)
        .sum();
    let bytes = patch
        .entries
        .iter()
        .flat_map(|e| e.chunks.clone())
        .filter_map(|n| index.chunk(usize::try_from(n).ok()?))
        .map(|c| u64::from(c.len))
        .sum();
    PatchEstimate {
        target,
        from: request.running_version.to_string(),
        chunks,
        bytes,
        download_bytes: patch.data_len,
    }
}

/// `estimate` as lines for people: one per image and the total.
pub fn describe_estimate(estimate: &UpdateEstimate) -> Vec<String> {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let line = |what: &str, t: &PlanTotals| {
        format!(
            "{what}: {:.1} MiB to download ({} chunks, before compression), {:.1} MiB reused ({} chunks) of {:.1} MiB",
            mib(t.download_bytes),
            t.download_chunks,
            mib(t.reused_bytes),
            t.reused_chunks,
            mib(t.image_bytes)
        )
    };
    let mut out: Vec<String> = estimate
        .images
        .iter()
        .map(|i| {
            let seed = match i.seed {
                PlanSeed::RunningIndex => "",
                PlanSeed::CachedIndex => " (seed: cached index of the running partition)",
                PlanSeed::None => {
                    " (no index of the running set yet: staging chunks it first and downloads less)"
                }
            };
            let patch = i.patch.as_ref().map_or(String::new(), |p| {
                format!(
                    "; a patch from {} makes {:.1} MiB of it ({} chunks) from {:.1} MiB",
                    p.from,
                    mib(p.bytes),
                    p.chunks,
                    mib(p.download_bytes)
                )
            });
            let not_used = i
                .patch_not_used
                .as_ref()
                .map_or(String::new(), |reason| format!("; {reason}"));
            format!(
                "{}{seed}{patch}{not_used}",
                line(&format!("Delta {}", i.image), &i.totals)
            )
        })
        .collect();
    for u in &estimate.unusable {
        out.push(format!(
            "Delta {}: not possible ({}); the full image would be downloaded",
            u.image, u.reason
        ));
    }
    if estimate.images.len() > 1 {
        out.push(line("Delta total", &estimate.total));
    }
    out
}
