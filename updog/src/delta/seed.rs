//! The seed: the running set's partition and an index of it.
//!
//! Under dm-verity the running partitions are bit-identical to what was published, so the
//! repository's index of the running version describes them; when the repository no longer lists
//! it, [`seed_index`] chunks the partition here in one sequential read and keeps the result in a
//! cache file for the next update. Neither source is trusted for content: every seed chunk is
//! re-hashed against the *target* index when it is read, so a stale or wrong seed index only
//! costs downloads.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::chunker::Chunker;
use super::index::BlobIndex;
use super::region::Region;

/// Where a seed index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedOrigin {
    /// A cache file written by an earlier run.
    Cached,
    /// Chunked from the partition just now (and cached, if a cache path was given).
    Chunked,
}

/// The cache file for the index of `image` (e.g. "root") of running `version` on `set`.
pub fn cache_path(state_dir: &Path, set: &str, image: &str, version: &str) -> PathBuf {
    state_dir
        .join("delta")
        .join(format!("seed-{set}-{image}-{version}.caibx"))
}

/// The index of the running partition `active`: the cache file at `cache` if it parses and
/// covers the partition, else the partition chunked in one read (then written to `cache`,
/// atomically; a failure to write it is not an error, the next update just chunks again).
pub fn seed_index(active: &Region, cache: Option<&Path>) -> io::Result<(BlobIndex, SeedOrigin)> {
    if let Some(path) = cache
        && let Ok(bytes) = fs::read(path)
        && let Ok(index) = BlobIndex::parse(&bytes)
        && index.total_len() == active.len()
    {
        return Ok((index, SeedOrigin::Cached));
    }
    let reader = io::BufReader::with_capacity(1 << 20, active.reader());
    let index = Chunker::casync_default().index(reader, |_, _| Ok(()))?;
    if let Some(path) = cache {
        let _ = write_file_atomic(path, &index.to_bytes());
    }
    Ok((index, SeedOrigin::Chunked))
}

/// Writes `bytes` to `path` whole or not at all (temporary file, flushed, renamed), creating
/// the directory if needed.
pub(super) fn write_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_once_then_uses_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let mut rng = fastrand::Rng::with_seed(9);
        let data: Vec<u8> = (0..700_000).map(|_| rng.u8(..)).collect();
        fs::write(&disk, &data).unwrap();
        let active = Region::open(&disk, 4096, 600_000, false).unwrap();
        let cache = cache_path(dir.path(), "A", "root", "1.0.0");
        let (first, origin) = seed_index(&active, Some(&cache)).unwrap();
        assert_eq!(origin, SeedOrigin::Chunked);
        assert_eq!(first.total_len(), 600_000);
        let expected = Chunker::casync_default()
            .index(&data[4096..604_096], |_, _| Ok(()))
            .unwrap();
        assert_eq!(first, expected);
        let (second, origin) = seed_index(&active, Some(&cache)).unwrap();
        assert_eq!((second, origin), (first.clone(), SeedOrigin::Cached));
        // A cache that does not cover the partition (another size) is not used.
        let other = Region::open(&disk, 0, 500_000, false).unwrap();
        let (third, origin) = seed_index(&other, Some(&cache)).unwrap();
        assert_eq!(origin, SeedOrigin::Chunked);
        assert_eq!(third.total_len(), 500_000);
        // A corrupt cache is chunked over.
        fs::write(&cache, b"garbage").unwrap();
        assert_eq!(
            seed_index(&active, Some(&cache)).unwrap().1,
            SeedOrigin::Chunked
        );
    }
}
