//! The synthetic pair of ext4 images of the `delta` bench (also the small-change pair of
//! `debian_pair`): v1 from copies of real files (`/usr/share`, `/usr/lib`), v2 the same with about
//! 5% of the files replaced by other real files, a few added, and 1 MiB in the middle of the
//! largest file rewritten, each built reproducibly (fixed UUID, hash seed, clock and mtimes).
//! Included with `#[path]` by the benches that use it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Res;

/// The size of each image.
pub const IMAGE_MIB: u64 = 96;

/// `$CARGO_TARGET_DIR` (default: the workspace's `target/`), where the benches keep their images.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// Real files, sorted, up to `budget` bytes: (relative path, bytes).
pub fn real_files(budget: u64, skip: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack: Vec<PathBuf> = ["/usr/share", "/usr/lib"]
        .iter()
        .map(PathBuf::from)
        .collect();
    stack.reverse();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(fs::DirEntry::file_name);
        let mut subdirs = Vec::new();
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                subdirs.push(e.path());
            } else if ft.is_file() {
                let Ok(bytes) = fs::read(e.path()) else {
                    continue;
                };
                if bytes.len() > 4 << 20 || bytes.is_empty() {
                    continue;
                }
                seen += 1;
                if seen <= skip {
                    continue;
                }
                total += bytes.len() as u64;
                let rel = e
                    .path()
                    .strip_prefix("/")
                    .unwrap_or(&e.path())
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, bytes));
                if total >= budget {
                    return out;
                }
            }
        }
        subdirs.reverse();
        stack.extend(subdirs);
    }
    out
}

pub struct Images {
    /// The older version.
    pub v1: PathBuf,
    /// The newer version.
    pub v2: PathBuf,
    /// Other versions of v2, for the plan-only comparison: (what they change, image).
    pub variants: Vec<(&'static str, PathBuf)>,
}

pub type Tree = Vec<(String, Vec<u8>)>;

/// How v2 differs from v1.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Package by package: every file of a few directories spread over the tree (about 5% of
    /// the files) replaced, 1% of the count added inside those directories.
    Packages,
    /// The same, without the added files (so no later inode is renumbered).
    PackagesNothingAdded,
    /// One file in twenty replaced wherever it is, 1% added in one new directory (the first
    /// version of this bench).
    Scattered,
}

/// The directories of `files` in walk order, each with the indexes of its files.
pub fn directories(files: &Tree) -> Vec<(String, Vec<usize>)> {
    let mut dirs: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, (path, _)) in files.iter().enumerate() {
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        match dirs.last_mut() {
            Some((d, members)) if *d == dir => members.push(i),
            _ => dirs.push((dir, vec![i])),
        }
    }
    dirs
}

/// Evenly spread directories ("packages") holding together at least `want` files, none of
/// them more than a third of it.
pub fn pick_packages(dirs: &[(String, Vec<usize>)], want: usize) -> Vec<usize> {
    let eligible: Vec<usize> = (0..dirs.len())
        .filter(|&d| dirs[d].1.len() <= want / 3)
        .collect();
    for picks in 1..=eligible.len() {
        let chosen: Vec<usize> = (0..picks)
            .map(|k| eligible[(2 * k + 1) * eligible.len() / (2 * picks)])
            .collect();
        if chosen.iter().map(|&d| dirs[d].1.len()).sum::<usize>() >= want {
            return chosen;
        }
    }
    eligible
}

/// v2's files: v1 with `change`, and 1 MiB in the middle of the largest file rewritten.
pub fn version_2(files: &Tree, reserve: &Tree, change: Change) -> (Tree, String) {
    let mut v2 = files.clone();
    let mut spare = reserve.iter().map(|(_, bytes)| bytes.clone());
    let added = files.len() / 100;
    let mut replaced = 0;
    let mut new_files = Vec::new();
    if change == Change::Scattered {
        for (i, f) in v2.iter_mut().enumerate() {
            if i % 20 == 7
                && let Some(other) = spare.next()
            {
                f.1 = other;
                replaced += 1;
            }
        }
        for n in 0..added {
            if let Some(bytes) = spare.next() {
                new_files.push((format!("usr/share/added/file{n:03}"), bytes));
            }
        }
    } else {
        let dirs = directories(files);
        let chosen = pick_packages(&dirs, files.len() / 20);
        for &d in &chosen {
            for &i in &dirs[d].1 {
                if let Some(other) = spare.next() {
                    v2[i].1 = other;
                    replaced += 1;
                }
            }
        }
        if change == Change::Packages {
            for n in 0..added {
                let dir = &dirs[chosen[n % chosen.len()]].0;
                if let Some(bytes) = spare.next() {
                    new_files.push((format!("{dir}/added-{n:03}.dat"), bytes));
                }
            }
        }
    }
    let added = new_files.len();
    v2.extend(new_files);
    let largest = (0..files.len())
        .max_by_key(|&i| files[i].1.len())
        .unwrap_or(0);
    let big = &mut v2[largest].1;
    let mid = big.len() / 2;
    let end = (mid + (1 << 20)).min(big.len());
    for (k, b) in big[mid..end].iter_mut().enumerate() {
        *b = b.wrapping_add((k % 251) as u8 + 1);
    }
    let summary = format!(
        "replaces {replaced} files, adds {added}, changes {} bytes of {}",
        end - mid,
        v2[largest].0
    );
    (v2, summary)
}

pub fn build_images(dir: &Path) -> Res<Images> {
    fs::create_dir_all(dir)?;
    let (v1, v2) = (dir.join("v1.img"), dir.join("v2.img"));
    let variants = vec![
        (
            "the same packages replaced, nothing added",
            dir.join("v2-nothing-added.img"),
        ),
        (
            "one file in 20 replaced across the tree, 1% added in a new directory",
            dir.join("v2-scattered.img"),
        ),
    ];
    let images = Images { v1, v2, variants };
    if std::iter::once(&images.v1)
        .chain(std::iter::once(&images.v2))
        .chain(images.variants.iter().map(|(_, p)| p))
        .all(|p| p.exists())
    {
        return Ok(images);
    }
    let budget = IMAGE_MIB * 1024 * 1024 * 45 / 100;
    let files = real_files(budget, 0);
    // Replacement and added files: real files from further along the same walk.
    let reserve = real_files(budget / 4, files.len() + 50);
    eprintln!("bench: v1 {} real files", files.len());
    let builds = [
        (&images.v1, None),
        (&images.v2, Some(Change::Packages)),
        (&images.variants[0].1, Some(Change::PackagesNothingAdded)),
        (&images.variants[1].1, Some(Change::Scattered)),
    ];
    for (out, change) in builds {
        let set = match change {
            None => files.clone(),
            Some(change) => {
                let (set, summary) = version_2(&files, &reserve, change);
                eprintln!("bench: {}: {summary}", out.display());
                set
            }
        };
        let tree = dir.join("tree");
        fixtures::ext4::write_tree(&tree, &set)?;
        fixtures::ext4::build_image(&tree, IMAGE_MIB << 20, out)?;
        fs::remove_dir_all(&tree)?;
    }
    Ok(images)
}
