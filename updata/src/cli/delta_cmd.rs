//! Delta updates for publishers: chunk an image into a casync index and chunk store, check an
//! index made by `casync make` or `desync make`, name the indexes in the manifest, and make
//! patches of an image's new chunks against an earlier release's image.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::patches;
use casync::store::{Put, chunk_path, decode_chunk};
use casync::{BlobIndex, ChunkSizes, Chunker, StoreWriter};
use clap::{Args, Subcommand};
use semver::Version;

/// Delta-update subcommands.
#[derive(Subcommand)]
pub enum DeltaCommand {
    /// Chunks a raw (uncompressed) partition image the way `casync make` does (buzhash,
    /// 16/64/256 KiB unless --chunk-size says otherwise, SHA-512/256 ids): writes its index and
    /// adds the chunks the store lacks. Publish the index as a TUF target and the store next to
    /// the targets.
    MakeIndex {
        /// The raw image (not the lz4 file).
        image: PathBuf,
        /// Where to write the index (`.caibx`).
        #[arg(long)]
        index: PathBuf,
        /// The chunk store directory (shared by every release).
        #[arg(long)]
        store: PathBuf,
        /// Chunk sizes MIN:AVG:MAX (or AVG; bytes or K/M suffix, as casync's --chunk-size).
        /// Smaller chunks: fewer bytes downloaded per change, but a larger index and more requests.
        #[arg(long, value_name = "MIN:AVG:MAX", default_value = "16K:64K:256K")]
        chunk_size: ChunkSizes,
    },
    /// Checks an index (ours, casync's or desync's): magic values, the SHA-512/256 flag,
    /// offsets, chunk sizes; with --image that it describes exactly that image, chunk by chunk;
    /// with --store that every chunk is in the store and decompresses to its id.
    CheckIndex {
        /// The `.caibx` file.
        index: PathBuf,
        /// The raw image it should describe.
        #[arg(long)]
        image: Option<PathBuf>,
        /// The chunk store it should be served with.
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Names the indexes of an update's images and the chunk store in the manifest (the
    /// optional `delta` field; hosts without an index for an image use its full lz4 image).
    SetDelta {
        #[command(flatten)]
        update: UpdateSelector,
        /// The chunk store: a URL, or a path relative to the targets URL (such as `chunks/`).
        #[arg(long)]
        store: String,
        /// IMAGE=TARGET for each image with an index (boot, root, hash), e.g. root=root.caibx.
        #[arg(long = "index", value_name = "IMAGE=TARGET", required = true)]
        indexes: Vec<String>,
    },
    /// Makes a patch of the chunks of a new image that an earlier release's image lacks, each
    /// run of them compressed (zstd -19) against at most 8 MiB of the earlier image's chunks
    /// around the same place. Writes the patch data and its index (JSON), checks that every
    /// entry applies and yields the new index's chunks, and prints what it saves against the
    /// chunk store. Publish both files as TUF targets and name them with add-patch.
    MakePatch {
        /// The earlier release's raw image (what hosts running it have on the running set).
        #[arg(long, value_name = "RAW_IMAGE")]
        from_image: PathBuf,
        /// Its casync index.
        #[arg(long, value_name = "CAIBX")]
        from_index: PathBuf,
        /// The new raw image.
        #[arg(long, value_name = "RAW_IMAGE")]
        image: PathBuf,
        /// Its casync index.
        #[arg(long, value_name = "CAIBX")]
        index: PathBuf,
        /// Where to write the patch data.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Where to write the patch index.
        #[arg(long, value_name = "JSON")]
        patch_index: PathBuf,
    },
    /// Makes, in one step, the patches hosts running the newest earlier releases need: for each
    /// --image of the update and each of the --previous newest earlier releases of the same
    /// variant and arch in the manifest, reads that release's index and image from the published
    /// repository (verified from --root, as hosts read them), makes a patch, checks that every
    /// entry applies, writes it to --staging and names it in the manifest (as add-patch does).
    /// A release without a published index of the image is skipped, with why. Then publish
    /// with `--add-targets STAGING`.
    MakePatches {
        #[command(flatten)]
        update: UpdateSelector,
        /// The published repository holding the earlier releases: a directory, or a file://,
        /// http:// or https:// URL of the folder holding metadata/ and targets/.
        #[arg(long)]
        repo: String,
        /// The root hosts ship with (their trusted root).
        #[arg(long, value_name = "ROOT_JSON")]
        root: PathBuf,
        /// IMAGE=RAW_IMAGE for each image to patch (boot, root or hash), e.g.
        /// root=build-1.2.0/root.ext4; its index is the one set-delta named, in --staging.
        #[arg(long = "image", value_name = "IMAGE=RAW_IMAGE", required = true)]
        images: Vec<String>,
        /// The directory holding the update's indexes (make-index --index); the patches are
        /// written there too.
        #[arg(long, value_name = "DIR")]
        staging: PathBuf,
        /// How many earlier releases to patch against, newest first.
        #[arg(long, default_value_t = 2)]
        previous: usize,
    },
    /// Names a patch in an update's delta data in the manifest (after set-delta): hosts running
    /// --from fetch it for that image instead of the chunks it produces. Replaces an earlier
    /// patch for the same --from and --image.
    AddPatch {
        #[command(flatten)]
        update: UpdateSelector,
        /// The release the patch is made against.
        #[arg(long)]
        from: Version,
        /// The image: boot, root or hash.
        #[arg(long)]
        image: String,
        /// TUF target name of the patch index.
        #[arg(long = "patch-index", value_name = "TARGET")]
        index: String,
        /// TUF target name of the patch data.
        #[arg(long = "patch-data", value_name = "TARGET")]
        data: String,
    },
}

/// The manifest to edit and the update in it (the reference's short flags).
#[derive(Args)]
pub struct UpdateSelector {
    /// The manifest.json to edit.
    manifest: PathBuf,
    /// The variant.
    #[arg(short = 'l', long)]
    variant: String,
    /// The architecture.
    #[arg(short = 'a', long)]
    arch: String,
    /// The update's version.
    #[arg(short = 'v', long = "version")]
    version: Version,
}

impl UpdateSelector {
    /// Loads the manifest, lets `change` edit the selected update, saves it.
    fn edit(&self, change: impl FnOnce(&mut manifest::Update) -> Res<()>) -> Res<()> {
        let mut m = manifest::fs::load(&self.manifest)?;
        let update = m
            .updates
            .iter_mut()
            .find(|u| u.variant == self.variant && u.arch == self.arch && u.version == self.version)
            .ok_or_else(|| {
                format!(
                    "no update {} {} {} in {}",
                    self.variant,
                    self.arch,
                    self.version,
                    self.manifest.display()
                )
            })?;
        change(update)?;
        manifest::fs::save(&m, &self.manifest)?;
        Ok(())
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

impl DeltaCommand {
    /// Runs the subcommand.
    pub fn run(self) -> Res<ExitCode> {
        match self {
            Self::MakeIndex {
                image,
                index,
                store,
                chunk_size,
            } => {
                // The parser already refused sizes the chunker cannot cut with.
                let chunker = Chunker::new(chunk_size)?;
                let store = StoreWriter::new(&store)?;
                let (mut new, mut stored) = (0usize, 0u64);
                let file = fs::File::open(&image).map_err(|e| {
                    format!(
                        "opening {}: {e}",
                        image.display(),
                        e = cli_support::error_chain(&e)
                    )
                })?;
                let made = chunker.index(std::io::BufReader::new(file), |id, c| {
                    if let Put::Written(n) = store.put(id, c)? {
                        new += 1;
                        stored += n;
                    }
                    Ok(())
                })?;
                fs::write(&index, made.to_bytes()).map_err(|e| {
                    format!(
                        "writing {}: {e}",
                        index.display(),
                        e = cli_support::error_chain(&e)
                    )
                })?;
                println!(
                    "{}: {} chunks of {chunk_size}, {} bytes; {new} new chunk(s) ({stored} compressed bytes) in {}",
                    index.display(),
                    made.len(),
                    made.total_len(),
                    store.root().display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Self::CheckIndex {
                index,
                image,
                store,
            } => check_index(&index, image.as_ref(), store.as_ref()),
            Self::SetDelta {
                update: selector,
                store,
                indexes,
            } => {
                let mut named = BTreeMap::new();
                for pair in &indexes {
                    let Some((image, target)) = pair.split_once('=') else {
                        return Err(format!("--index {pair:?}: expected IMAGE=TARGET").into());
                    };
                    if !["boot", "root", "hash"].contains(&image) {
                        return Err(
                            format!("--index {pair:?}: image must be boot, root or hash").into(),
                        );
                    }
                    named.insert(image.to_string(), target.to_string());
                }
                selector.edit(|update| {
                    // Patches named earlier stay (set-delta may be run again for a new store).
                    let patches = update.delta.take().map(|d| d.patches).unwrap_or_default();
                    update.delta = Some(manifest::Delta {
                        store,
                        indexes: named,
                        patches,
                    });
                    Ok(())
                })?;
                println!("set delta indexes of {}", describe(&selector));
                Ok(ExitCode::SUCCESS)
            }
            Self::MakePatch {
                from_image,
                from_index,
                image,
                index,
                out,
                patch_index,
            } => make_patch(&from_image, &from_index, &image, &index, &out, &patch_index),
            Self::MakePatches {
                update: selector,
                repo,
                root,
                images,
                staging,
                previous,
            } => make_patches(&selector, &repo, &root, &images, &staging, previous),
            Self::AddPatch {
                update: selector,
                from,
                image,
                index,
                data,
            } => {
                let which = describe(&selector);
                if !["boot", "root", "hash"].contains(&image.as_str()) {
                    return Err(format!("--image {image:?}: must be boot, root or hash").into());
                }
                if from >= selector.version {
                    return Err(format!(
                        "--from {from}: a patch is made against an earlier release than {}",
                        selector.version
                    )
                    .into());
                }
                selector.edit(|update| {
                    let delta = update.delta.as_mut().ok_or_else(|| {
                        format!(
                            "update {which} has no delta data: run set-delta first (a patch only \
                             produces chunks of the image's index)"
                        )
                    })?;
                    if !delta.indexes.contains_key(&image) {
                        return Err(format!(
                            "update {which} names no index for {image}: add it with set-delta"
                        )
                        .into());
                    }
                    delta.add_patch(manifest::Patch {
                        from: from.clone(),
                        image: image.clone(),
                        index,
                        data,
                    });
                    Ok(())
                })?;
                println!("added the {image} patch from {from} to {which}");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn check_index(index: &PathBuf, image: Option<&PathBuf>, store: Option<&PathBuf>) -> Res<ExitCode> {
    let bytes = fs::read(index).map_err(|e| {
        format!(
            "reading {}: {e}",
            index.display(),
            e = cli_support::error_chain(&e)
        )
    })?;
    let parsed = BlobIndex::parse(&bytes)
        .map_err(|e| format!("{}: {e}", index.display(), e = cli_support::error_chain(&e)))?;
    let mut problems = Vec::new();
    if let Some(image) = image {
        let data = fs::read(image).map_err(|e| {
            format!(
                "reading {}: {e}",
                image.display(),
                e = cli_support::error_chain(&e)
            )
        })?;
        if let Err(e) = parsed.check_total(data.len() as u64) {
            problems.push(format!(
                "{}: {e}",
                image.display(),
                e = cli_support::error_chain(&e)
            ));
        } else {
            for c in parsed.chunks() {
                let at = c.offset as usize..c.end() as usize;
                if casync::ChunkId::of(&data[at]) != c.id {
                    problems.push(format!(
                        "chunk {} at offset {}: the image's bytes have another id",
                        c.number, c.offset
                    ));
                }
            }
        }
    }
    if let Some(store) = store {
        let mut out = Vec::new();
        for c in parsed.chunks() {
            let path = store.join(chunk_path(&c.id));
            match fs::read(&path) {
                Ok(file) => {
                    if let Err(e) = decode_chunk(&c, &file, &mut out) {
                        problems.push(format!(
                            "{}: {e}",
                            path.display(),
                            e = cli_support::error_chain(&e)
                        ));
                    }
                }
                Err(e) => problems.push(format!(
                    "{}: {e}",
                    path.display(),
                    e = cli_support::error_chain(&e)
                )),
            }
        }
    }
    if problems.is_empty() {
        println!(
            "{}: valid casync blob index, {} chunks of {}, {} bytes",
            index.display(),
            parsed.len(),
            parsed.sizes(),
            parsed.total_len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn make_patch(
    from_image: &Path,
    from_index: &Path,
    image: &Path,
    index: &Path,
    out: &Path,
    patch_index: &Path,
) -> Res<ExitCode> {
    let (old, old_file) = patches::load_local(from_index, from_image)?;
    let (new, new_file) = patches::load_local(index, image)?;
    let (patch, data, stats) = patches::make_verified(&old, &old_file, &new, &new_file)
        .map_err(|e| format!("making the patch: {e}", e = cli_support::error_chain(&e)))?;
    let json = serde_json::to_vec(&patch)?;
    let opts = atomic_write::AtomicWrite::for_published_file();
    atomic_write::write_bytes(&opts, out, &data)?;
    atomic_write::write_bytes(&opts, patch_index, &json)?;
    println!(
        "{}: {}; index {}",
        out.display(),
        describe_stats(&stats),
        patch_index.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What a patch saves, for people.
fn describe_stats(stats: &casync::patch::PatchStats) -> String {
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    format!(
        "{} of {} new chunk(s) ({} bytes) in {} bytes, against {} bytes from the chunk store ({:.3}x); hosts read {} of {} window bytes",
        stats.patched_chunks,
        stats.new_chunks,
        stats.new_bytes,
        stats.patch_bytes,
        stats.store_bytes,
        ratio(stats.patch_bytes, stats.store_bytes),
        stats.window_bytes - stats.zeroed_bytes,
        stats.window_bytes,
    )
}

fn make_patches(
    selector: &UpdateSelector,
    repo: &str,
    root: &Path,
    images: &[String],
    staging: &Path,
    previous: usize,
) -> Res<ExitCode> {
    let which = describe(selector);
    let m = manifest::fs::load(&selector.manifest)?;
    let id = manifest::UpdateId::new(&selector.variant, &selector.arch, &selector.version);
    let update = m
        .updates
        .iter()
        .find(|u| u.id() == id)
        .ok_or_else(|| format!("no update {which} in {}", selector.manifest.display()))?;
    let mut new_images = Vec::new();
    for pair in images {
        let Some((image, raw)) = pair.split_once('=') else {
            return Err(format!("--image {pair:?}: expected IMAGE=RAW_IMAGE").into());
        };
        let index_target = update
            .delta
            .as_ref()
            .and_then(|d| d.indexes.get(image))
            .ok_or_else(|| {
                format!("update {which} names no index for {image}: add it with set-delta first")
            })?;
        new_images.push(patches::NewImage {
            image: image.to_owned(),
            raw: PathBuf::from(raw),
            index: staging.join(index_target),
            index_target: index_target.clone(),
        });
    }
    let opened = crate::check::open(repo, root, chrono::Utc::now())?;
    let outcomes = patches::make_against_previous(
        &opened.repo,
        &patches::PatchRequest {
            manifest: &m,
            update: id,
            images: &new_images,
            previous,
            out_dir: staging,
        },
    )?;
    let mut made = Vec::new();
    for outcome in outcomes {
        match outcome {
            patches::Outcome::Made(p) => {
                println!(
                    "{} patch from {}: {}; {} and {}",
                    p.patch.image,
                    p.patch.from,
                    describe_stats(&p.stats),
                    p.data_path.display(),
                    p.index_path.display()
                );
                made.push(p.patch);
            }
            patches::Outcome::Skipped {
                from,
                image,
                reason,
            } => println!(
                "{image} patch from {from}: not made ({reason}); hosts running {from} fetch its chunks from the store"
            ),
        }
    }
    if made.is_empty() {
        println!("no patch made for {which}");
        return Ok(ExitCode::SUCCESS);
    }
    let count = made.len();
    selector.edit(|update| {
        let delta = update
            .delta
            .as_mut()
            .ok_or_else(|| format!("update {which} has no delta data: run set-delta first"))?;
        for p in made {
            delta.add_patch(p);
        }
        Ok(())
    })?;
    println!(
        "named {count} patch(es) in {}; publish them with --add-targets {}",
        selector.manifest.display(),
        staging.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn describe(selector: &UpdateSelector) -> String {
    format!(
        "{} {} {}",
        selector.variant, selector.arch, selector.version
    )
}
