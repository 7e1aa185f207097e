//! Delta updates for publishers: chunk an image into a casync index and chunk store, check an
//! index made by `casync make` or `desync make`, and name the indexes in the manifest.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use casync::store::{Put, chunk_path, decode_chunk};
use casync::{BlobIndex, ChunkSizes, Chunker, StoreWriter};
use clap::Subcommand;
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
        /// The chunk store: a URL, or a path relative to the targets URL (such as `chunks/`).
        #[arg(long)]
        store: String,
        /// IMAGE=TARGET for each image with an index (boot, root, hash), e.g. root=root.caibx.
        #[arg(long = "index", value_name = "IMAGE=TARGET", required = true)]
        indexes: Vec<String>,
    },
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
                let file = fs::File::open(&image)
                    .map_err(|e| format!("opening {}: {e}", image.display()))?;
                let made = chunker.index(std::io::BufReader::new(file), |id, c| {
                    if let Put::Written(n) = store.put(id, c)? {
                        new += 1;
                        stored += n;
                    }
                    Ok(())
                })?;
                fs::write(&index, made.to_bytes())
                    .map_err(|e| format!("writing {}: {e}", index.display()))?;
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
                manifest: path,
                variant,
                arch,
                version,
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
                let mut m = manifest::fs::load(&path)?;
                let update = m
                    .updates
                    .iter_mut()
                    .find(|u| u.variant == variant && u.arch == arch && u.version == version)
                    .ok_or_else(|| {
                        format!("no update {variant} {arch} {version} in {}", path.display())
                    })?;
                update.delta = Some(manifest::Delta {
                    store,
                    indexes: named,
                });
                manifest::fs::save(&m, &path)?;
                println!("set delta indexes of {variant} {arch} {version}");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn check_index(index: &PathBuf, image: Option<&PathBuf>, store: Option<&PathBuf>) -> Res<ExitCode> {
    let bytes = fs::read(index).map_err(|e| format!("reading {}: {e}", index.display()))?;
    let parsed = BlobIndex::parse(&bytes).map_err(|e| format!("{}: {e}", index.display()))?;
    let mut problems = Vec::new();
    if let Some(image) = image {
        let data = fs::read(image).map_err(|e| format!("reading {}: {e}", image.display()))?;
        if let Err(e) = parsed.check_total(data.len() as u64) {
            problems.push(format!("{}: {e}", image.display()));
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
                        problems.push(format!("{}: {e}", path.display()));
                    }
                }
                Err(e) => problems.push(format!("{}: {e}", path.display())),
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
