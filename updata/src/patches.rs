//! Patches of a new release's images against the releases hosts run now, in one step.
//!
//! A host can only use a patch made against the exact bytes on its running set, and it verifies
//! every window against the running release's *signed* index. So the earlier releases are read
//! here from the published repository, through our TUF client from a trusted root, exactly as
//! hosts read them: the index target, and the full lz4 image target decoded. Nothing is taken
//! from a build directory that may have been rebuilt since. For each of the `previous` newest
//! earlier releases of the same variant and architecture, and each image of the new release
//! that has an index, a patch is made ([`casync::patch::make_patch`]), every entry is checked to
//! apply and give the new index's chunks, and the patch index and data are written next to the
//! new release's other targets, named for the manifest ([`manifest::Delta::add_patch`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use casync::patch::{
    PatchError, PatchIndex, PatchStats, append_produced, apply_entry, reference_window,
};
use casync::{BlobIndex, IndexError};
use cli_support::error_chain;
use manifest::{Manifest, UpdateId};
use semver::Version;

/// The largest index read from the repository (hosts refuse larger ones too).
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// One image of the new release: its kind and where its raw bytes and index are.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// `boot`, `root` or `hash`.
    pub image: String,
    /// The raw (decoded) image.
    pub raw: PathBuf,
    /// Its casync index, as `make-index` wrote it.
    pub index: PathBuf,
    /// The index's target name in the manifest (the patch files are named after it).
    pub index_target: String,
}

/// What to patch: the new release, its images, how many earlier releases, where to write.
#[derive(Debug, Clone)]
pub struct PatchRequest<'a> {
    /// The manifest being published (it lists the earlier releases and their indexes).
    pub manifest: &'a Manifest,
    /// The new release.
    pub update: UpdateId,
    /// Its images to patch.
    pub images: &'a [NewImage],
    /// How many earlier releases (newest first) to patch against.
    pub previous: usize,
    /// Where to write the patch data and indexes (publish it with `--add-targets`).
    pub out_dir: &'a Path,
}

/// A patch made and written.
#[derive(Debug, Clone)]
pub struct MadePatch {
    /// What to name in the new release's delta data.
    pub patch: manifest::Patch,
    /// What it saves against the chunk store.
    pub stats: PatchStats,
    /// The patch data file written.
    pub data_path: PathBuf,
    /// The patch index file written.
    pub index_path: PathBuf,
}

/// For one earlier release and image: a patch, or why there is none.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Made, checked and written.
    Made(MadePatch),
    /// Not made; hosts running `from` fetch this image's new chunks from the store.
    Skipped {
        /// The earlier release.
        from: Version,
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
}

/// Why patches could not be made at all (a single earlier release that cannot be patched
/// against is an [`Outcome::Skipped`], not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchesError {
    /// The manifest does not list the new release.
    #[error("the manifest lists no update {0}")]
    NoUpdate(UpdateId),
    /// Reading or writing a local file.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// A local index that does not parse or does not describe its image.
    #[error("{}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: IndexError,
    },
    /// Making the patch failed, or what was made does not apply: a bug to report, never
    /// published.
    #[error("the {image} patch from {from}")]
    Patch {
        /// The earlier release.
        from: Version,
        /// The image.
        image: String,
        /// What failed.
        #[source]
        source: PatchError,
    },
}

/// Makes the patches `request` asks for, reading the earlier releases from `repo` (loaded from
/// the hosts' trusted root, see [`crate::check::open`]). Returns one outcome per earlier release
/// and image, newest release first.
pub fn make_against_previous(
    repo: &tuf::Repository,
    request: &PatchRequest<'_>,
) -> Result<Vec<Outcome>, PatchesError> {
    let id = &request.update;
    if !request.manifest.updates.iter().any(|u| &u.id() == id) {
        return Err(PatchesError::NoUpdate(id.clone()));
    }
    let mut earlier: Vec<&manifest::Update> = request
        .manifest
        .updates
        .iter()
        .filter(|u| u.variant == id.variant && u.arch == id.arch && u.version < id.version)
        .collect();
    earlier.sort_by(|a, b| b.version.cmp(&a.version));
    earlier.truncate(request.previous);
    let mut outcomes = Vec::new();
    for image in request.images {
        let (new, new_file) = load_local(&image.index, &image.raw)?;
        for old in &earlier {
            let skip = |reason: String| Outcome::Skipped {
                from: old.version.clone(),
                image: image.image.clone(),
                reason,
            };
            let outcome = match read_published(repo, old, &image.image, request.out_dir)? {
                Err(reason) => skip(reason),
                Ok((old_index, old_file)) => {
                    let made = make_verified(&old_index, &old_file, &new, &new_file).map_err(
                        |source| PatchesError::Patch {
                            from: old.version.clone(),
                            image: image.image.clone(),
                            source,
                        },
                    )?;
                    Outcome::Made(write_patch(made, old, image, request.out_dir)?)
                }
            };
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

/// A patch made from two indexes and images, every entry checked to apply against the older
/// image and give the newer index's chunks (what a host checks), before anything is written.
pub fn make_verified(
    old: &BlobIndex,
    old_image: &File,
    new: &BlobIndex,
    new_image: &File,
) -> Result<(PatchIndex, Vec<u8>, PatchStats), PatchError> {
    let mut data = Vec::new();
    let (patch, stats) =
        casync::patch::make_patch(old, read(old_image), new, read(new_image), &mut data)?;
    for entry in &patch.entries {
        let mut window = reference_window(entry, old, read(old_image))?;
        append_produced(&mut window, entry, new, read(new_image))?;
        let frame = usize::try_from(entry.offset)
            .ok()
            .zip(usize::try_from(entry.offset.saturating_add(entry.len)).ok())
            .and_then(|(a, b)| data.get(a..b))
            .ok_or_else(|| PatchError::Malformed("an entry lies outside the patch data".into()))?;
        apply_entry(entry, frame, &window, new)?;
    }
    Ok((patch, data, stats))
}

/// Positional reads of an image file.
fn read(file: &File) -> impl FnMut(u64, &mut [u8]) -> io::Result<()> + '_ {
    move |offset, buf| file.read_exact_at(buf, offset)
}

/// An index file and the image it must describe exactly.
pub fn load_local(index: &Path, image: &Path) -> Result<(BlobIndex, File), PatchesError> {
    let io_err = |what, path: &Path| {
        let path = path.to_owned();
        move |source| PatchesError::Io { what, path, source }
    };
    let bytes = std::fs::read(index).map_err(io_err("reading", index))?;
    let parsed = BlobIndex::parse(&bytes).map_err(|source| PatchesError::Index {
        path: index.to_owned(),
        source,
    })?;
    let file = File::open(image).map_err(io_err("opening", image))?;
    let len = file.metadata().map_err(io_err("reading", image))?.len();
    parsed
        .check_total(len)
        .map_err(|source| PatchesError::Index {
            path: index.to_owned(),
            source,
        })?;
    Ok((parsed, file))
}

/// The earlier release's index of `image` and its image decoded into a temporary file in
/// `scratch`, both read through TUF; `Ok(Err(reason))` when the repository does not have them
/// as hosts would need them.
fn read_published(
    repo: &tuf::Repository,
    old: &manifest::Update,
    image: &str,
    scratch: &Path,
) -> Result<Result<(BlobIndex, File), String>, PatchesError> {
    let Some(index_name) = old.delta.as_ref().and_then(|d| d.indexes.get(image)) else {
        return Ok(Err(format!(
            "it names no index of its {image} image, which hosts need to verify a patch's windows"
        )));
    };
    let index = match read_target(repo, index_name, MAX_INDEX_BYTES) {
        Ok(bytes) => match BlobIndex::parse(&bytes) {
            Ok(index) => index,
            Err(e) => return Ok(Err(format!("{index_name}: {}", error_chain(&e)))),
        },
        Err(reason) => return Ok(Err(reason)),
    };
    let Some((_, image_name)) = old.images.named().into_iter().find(|(k, _)| *k == image) else {
        return Ok(Err(format!("it has no {image} image")));
    };
    let mut tmp = tempfile::tempfile_in(scratch).map_err(|source| PatchesError::Io {
        what: "creating a temporary file in",
        path: scratch.to_owned(),
        source,
    })?;
    let decoded = match repo.read_target(image_name) {
        Ok(mut reader) => {
            let copied = io::copy(
                &mut lz4_flex::frame::FrameDecoder::new(&mut reader),
                &mut tmp,
            )
            .and_then(|n| {
                // The rest of the target still counts towards its signed length and hashes.
                io::copy(&mut reader, &mut io::sink())?;
                Ok(n)
            });
            match copied.map_err(|e| error_chain(&e)).and_then(|n| {
                reader.finish().map_err(|e| error_chain(&e))?;
                Ok(n)
            }) {
                Ok(n) => n,
                Err(e) => return Ok(Err(format!("{image_name}: {e}"))),
            }
        }
        Err(e) => return Ok(Err(format!("{image_name}: {}", error_chain(&e)))),
    };
    tmp.flush().map_err(|source| PatchesError::Io {
        what: "writing a temporary file in",
        path: scratch.to_owned(),
        source,
    })?;
    if decoded != index.total_len() {
        return Ok(Err(format!(
            "{image_name} decodes to {decoded} bytes but {index_name} describes {}",
            index.total_len()
        )));
    }
    Ok(Ok((index, tmp)))
}

/// A whole target through TUF, refused above `limit` bytes; `Err` says why.
fn read_target(repo: &tuf::Repository, name: &str, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut reader = repo
        .read_target(name)
        .map_err(|e| format!("{name}: {}", error_chain(&e)))?;
    let mut bytes = Vec::new();
    (&mut reader)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {}", error_chain(&e)))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{name}: larger than {limit} bytes"));
    }
    reader
        .finish()
        .map_err(|e| format!("{name}: {}", error_chain(&e)))?;
    Ok(bytes)
}

/// Writes the patch data and index into `out_dir`, named after the new index's target.
fn write_patch(
    (patch, data, stats): (PatchIndex, Vec<u8>, PatchStats),
    old: &manifest::Update,
    image: &NewImage,
    out_dir: &Path,
) -> Result<MadePatch, PatchesError> {
    let stem = image
        .index_target
        .strip_suffix(".caibx")
        .unwrap_or(&image.index_target);
    let data_name = format!("{stem}.from-{}.patch", old.version);
    let index_name = format!("{data_name}.json");
    let (data_path, index_path) = (out_dir.join(&data_name), out_dir.join(&index_name));
    let json = serde_json::to_vec(&patch).map_err(|e| PatchesError::Io {
        what: "encoding",
        path: index_path.clone(),
        source: io::Error::other(e),
    })?;
    let opts = atomic_write::AtomicWrite::for_published_file();
    for (path, bytes) in [(&data_path, &data[..]), (&index_path, &json[..])] {
        atomic_write::write_bytes(&opts, path, bytes).map_err(|e| PatchesError::Io {
            what: "writing",
            path: path.clone(),
            source: match e {
                atomic_write::AtomicWriteError::Io { source, .. }
                | atomic_write::AtomicWriteError::Fill(source) => source,
            },
        })?;
    }
    Ok(MadePatch {
        patch: manifest::Patch {
            from: old.version.clone(),
            image: image.image.clone(),
            index: index_name,
            data: data_name,
        },
        stats,
        data_path,
        index_path,
    })
}
