//! The seed: the running set's partition and an index of it.
//!
//! Under dm-verity the running partitions are bit-identical to what was published, so the
//! repository's index of the running version describes them; when the repository no longer lists
//! it, [`seed_index`] chunks the partition here in one sequential read and keeps the result in a
//! cache file for the next update. Neither source is trusted for content: every seed chunk is
//! re-hashed against the *target* index when it is read, so a stale or wrong seed index only
//! costs downloads.
//!
//! A seed is only useful when it was cut with the target index's chunk sizes (content-defined
//! boundaries depend on them: a 64 KiB-average seed shares almost no chunk with a 16 KiB-average
//! target). So the partition is chunked with the target's sizes, and the cache is keyed by them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::chunker::Chunker;
use super::index::{BlobIndex, ChunkSizes};
use super::region::{Device, DeviceReader};

/// Where a seed index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedOrigin {
    /// A cache file written by an earlier run.
    Cached,
    /// Chunked from the partition just now (and cached, if a cache path was given).
    Chunked,
}

/// The cache file for the index of `image` (e.g. "root") of running `version` on `set`, chunked
/// with `sizes` (min-avg-max in bytes in the name, so each size has its own file).
pub fn cache_path(
    state_dir: &Path,
    set: &str,
    image: &str,
    version: &str,
    sizes: ChunkSizes,
) -> PathBuf {
    let ChunkSizes { min, avg, max } = sizes;
    state_dir.join("delta").join(format!(
        "seed-{set}-{image}-{version}-{min}-{avg}-{max}.caibx"
    ))
}

/// The cache file at `path` if it parses, was cut with `sizes` and covers `len` bytes.
pub fn read_cache(path: &Path, sizes: ChunkSizes, len: u64) -> Option<BlobIndex> {
    let index = BlobIndex::parse(&fs::read(path).ok()?).ok()?;
    (index.sizes() == sizes && index.total_len() == len).then_some(index)
}

/// The index of the running partition `active` cut with `sizes` (the target index's): the cache
/// file at `cache` if it parses, has those sizes and covers the partition, else the partition
/// chunked in one read (then written to `cache`, atomically; a failure to write it is not an
/// error, the next update just chunks again). Sizes our chunker cannot cut with are an
/// `InvalidInput` error.
pub fn seed_index(
    active: &dyn Device,
    sizes: ChunkSizes,
    cache: Option<&Path>,
) -> io::Result<(BlobIndex, SeedOrigin)> {
    if let Some(index) = cache.and_then(|path| read_cache(path, sizes, active.len())) {
        return Ok((index, SeedOrigin::Cached));
    }
    let chunker =
        Chunker::new(sizes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let reader = io::BufReader::with_capacity(1 << 20, DeviceReader::new(active));
    let index = chunker.index(reader, |_, _| Ok(()))?;
    if let Some(path) = cache {
        let _ = write_file_atomic(path, &index.to_bytes());
    }
    Ok((index, SeedOrigin::Chunked))
}

/// Writes `bytes` to `path` whole or not at all, creating the directory if needed (the
/// workspace's one atomic write; mode 0600, as all of updog's state).
pub(super) fn write_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let opts = atomic_write::AtomicWrite {
        create_dir: true,
        ..atomic_write::AtomicWrite::default()
    };
    atomic_write::write_bytes(&opts, path, bytes).map_err(|e| match e {
        atomic_write::AtomicWriteError::Io { source, .. }
        | atomic_write::AtomicWriteError::Fill(source) => source,
    })
}

/// Removes the cache files of `image` on `set` for any version other than `keep_version`
/// (and files in an older naming), so the state directory holds at most one running version's
/// seeds per set, not one per update ever taken. A set that was restaged holds another
/// version, so its older seeds can never be used again. Best effort: what cannot be listed or
/// removed stays.
pub fn prune_stale_caches(state_dir: &Path, set: &str, image: &str, keep_version: &str) {
    let dir = state_dir.join("delta");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    let prefix = format!("seed-{set}-{image}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".caibx"))
        else {
            continue;
        };
        // `<version>-<min>-<avg>-<max>`: the version is what precedes the three sizes.
        let mut parts = rest.rsplitn(4, '-');
        let sizes_ok = parts
            .by_ref()
            .take(3)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .count()
            == 3;
        if sizes_ok && parts.next() == Some(keep_version) {
            continue;
        }
        let _ = fs::remove_file(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::Region;

    #[test]
    fn chunks_once_then_uses_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let mut rng = fastrand::Rng::with_seed(9);
        let data: Vec<u8> = (0..700_000).map(|_| rng.u8(..)).collect();
        fs::write(&disk, &data).unwrap();
        let active = Region::open(&disk, 4096, 600_000, false).unwrap();
        let sizes = ChunkSizes::CASYNC_DEFAULT;
        let cache = cache_path(dir.path(), "A", "root", "1.0.0", sizes);
        let (first, origin) = seed_index(&active, sizes, Some(&cache)).unwrap();
        assert_eq!(origin, SeedOrigin::Chunked);
        assert_eq!(first.total_len(), 600_000);
        let expected = Chunker::casync_default()
            .index(&data[4096..604_096], |_, _| Ok(()))
            .unwrap();
        assert_eq!(first, expected);
        let (second, origin) = seed_index(&active, sizes, Some(&cache)).unwrap();
        assert_eq!((second, origin), (first.clone(), SeedOrigin::Cached));
        // A cache that does not cover the partition (another size) is not used.
        let other = Region::open(&disk, 0, 500_000, false).unwrap();
        let (third, origin) = seed_index(&other, sizes, Some(&cache)).unwrap();
        assert_eq!(origin, SeedOrigin::Chunked);
        assert_eq!(third.total_len(), 500_000);
        // A corrupt cache is chunked over.
        fs::write(&cache, b"garbage").unwrap();
        assert_eq!(
            seed_index(&active, sizes, Some(&cache)).unwrap().1,
            SeedOrigin::Chunked
        );
    }

    #[test]
    fn stale_caches_of_other_versions_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let small = ChunkSizes {
            min: 4096,
            avg: 16 * 1024,
            max: 64 * 1024,
        };
        let keep = [
            cache_path(dir.path(), "A", "root", "1.2.0", ChunkSizes::CASYNC_DEFAULT),
            cache_path(dir.path(), "A", "root", "1.2.0", small),
            // Another image, another set: not this call's to prune.
            cache_path(dir.path(), "A", "boot", "1.0.0", small),
            cache_path(dir.path(), "B", "root", "1.0.0", small),
            dir.path().join("delta/in-progress-root"),
        ];
        let stale = [
            cache_path(dir.path(), "A", "root", "1.0.0", ChunkSizes::CASYNC_DEFAULT),
            cache_path(dir.path(), "A", "root", "1.2.0-rc1", small),
            dir.path().join("delta/seed-A-root-1.1.0.caibx"),
        ];
        for path in keep.iter().chain(&stale) {
            write_file_atomic(path, b"x").unwrap();
        }
        prune_stale_caches(dir.path(), "A", "root", "1.2.0");
        for path in &keep {
            assert!(path.exists(), "{} was removed", path.display());
        }
        for path in &stale {
            assert!(!path.exists(), "{} was kept", path.display());
        }
        // No state directory yet: nothing to do, no error.
        prune_stale_caches(&dir.path().join("none"), "A", "root", "1.2.0");
    }

    #[test]
    fn a_cached_seed_is_not_used_for_other_chunk_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let mut rng = fastrand::Rng::with_seed(10);
        let data: Vec<u8> = (0..900_000).map(|_| rng.u8(..)).collect();
        fs::write(&disk, &data).unwrap();
        let active = Region::open(&disk, 0, 900_000, false).unwrap();
        let default = ChunkSizes::CASYNC_DEFAULT;
        let small = ChunkSizes {
            min: 4096,
            avg: 16 * 1024,
            max: 64 * 1024,
        };
        let default_cache = cache_path(dir.path(), "A", "root", "1.0.0", default);
        let small_cache = cache_path(dir.path(), "A", "root", "1.0.0", small);
        assert_ne!(default_cache, small_cache, "the cache is keyed by sizes");
        let (big, origin) = seed_index(&active, default, Some(&default_cache)).unwrap();
        assert_eq!(origin, SeedOrigin::Chunked);
        // A 16 KiB target gets a seed cut with 16 KiB chunks, not the cached 64 KiB one.
        let (fine, origin) = seed_index(&active, small, Some(&small_cache)).unwrap();
        assert_eq!(origin, SeedOrigin::Chunked);
        assert_eq!(fine.sizes(), small);
        let expected = Chunker::new(small)
            .unwrap()
            .index(&data[..], |_, _| Ok(()))
            .unwrap();
        assert_eq!(fine, expected);
        assert!(
            fine.len() > big.len() * 2,
            "{} vs {}",
            fine.len(),
            big.len()
        );
        // Even a 64 KiB seed found under the 16 KiB name (an older file, a rename) is refused.
        fs::copy(&default_cache, &small_cache).unwrap();
        let (again, origin) = seed_index(&active, small, Some(&small_cache)).unwrap();
        assert_eq!((again.sizes(), origin), (small, SeedOrigin::Chunked));
        // And each size's own cache is then used.
        assert_eq!(
            seed_index(&active, small, Some(&small_cache)).unwrap(),
            (fine, SeedOrigin::Cached)
        );
        assert_eq!(
            seed_index(&active, default, Some(&default_cache)).unwrap(),
            (big, SeedOrigin::Cached)
        );
    }
}
