//! The plan of a delta update: where each chunk of the new image will come from.
//!
//! [`Planned::new`] needs only the indexes (no I/O), so `check-update` can show it; a resumed run
//! refines it with [`Planned::find_in_place`], which re-hashes what is already on the inactive
//! partition.

use std::collections::HashMap;

use serde::Serialize;

use super::index::{BlobIndex, Chunk, ChunkId};
use super::region::Device;
use super::store::verify_chunk;

/// Where one chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// All zeros: written as zeros, nothing read or fetched.
    Zero,
    /// Already at its place on the inactive partition (a resumed run), verified by its hash.
    InPlace,
    /// In the running set's partition at this offset; re-hashed when read.
    Seed(u64),
    /// From the chunk store.
    Fetch,
}

/// A count of chunks and their uncompressed bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Chunks.
    pub chunks: usize,
    /// Their uncompressed bytes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, len: u32) {
        self.chunks += 1;
        self.bytes += u64::from(len);
    }

    fn remove(&mut self, len: u32) {
        self.chunks -= 1;
        self.bytes -= u64::from(len);
    }
}

/// How many chunks and bytes of the image come from where (uncompressed bytes; the store sends
/// them zstd-compressed, so fewer bytes cross the network than `fetch.bytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The image: every chunk.
    pub image: Tally,
    /// All-zero chunks.
    pub zero: Tally,
    /// Chunks already in place (resumed run).
    pub in_place: Tally,
    /// Chunks reused from the running set.
    pub seed: Tally,
    /// Chunks not found anywhere on the host (each of its places in the image).
    pub fetch: Tally,
    /// What is downloaded for them: each distinct chunk once (a chunk the image holds at
    /// several places is fetched once and written to each).
    pub download: Tally,
}

impl Plan {
    /// Bytes that need not be downloaded (zero, in place, reused).
    pub fn reused_bytes(&self) -> u64 {
        self.zero.bytes + self.in_place.bytes + self.seed.bytes
    }

    fn tally(&mut self, source: Source) -> &mut Tally {
        match source {
            Source::Zero => &mut self.zero,
            Source::InPlace => &mut self.in_place,
            Source::Seed(_) => &mut self.seed,
            Source::Fetch => &mut self.fetch,
        }
    }
}

/// A plan with the source of every chunk.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The totals.
    pub plan: Plan,
    /// One source per chunk of the target index.
    pub sources: Vec<Source>,
    /// How many places in the image each chunk to fetch has.
    fetch_places: HashMap<ChunkId, usize>,
}

impl Planned {
    /// Plans `target` with the chunks of `seed` (the running set's index) available; one
    /// [`Source`] per chunk, in order.
    pub fn new(target: &BlobIndex, seed: Option<&BlobIndex>) -> Planned {
        let zeros = ZeroIds::new(target);
        let in_seed: HashMap<ChunkId, (u64, u32)> = seed
            .map(|s| s.chunks().map(|c| (c.id, (c.offset, c.len))).collect())
            .unwrap_or_default();
        let mut plan = Plan::default();
        let mut fetch_places = HashMap::new();
        let sources = target
            .chunks()
            .map(|c| {
                let source = if zeros.is_zero(&c) {
                    Source::Zero
                } else {
                    match in_seed.get(&c.id) {
                        Some(&(offset, len)) if len == c.len => Source::Seed(offset),
                        _ => Source::Fetch,
                    }
                };
                plan.image.add(c.len);
                plan.tally(source).add(c.len);
                if source == Source::Fetch {
                    add_place(&mut fetch_places, &mut plan, &c);
                }
                source
            })
            .collect();
        Planned {
            plan,
            sources,
            fetch_places,
        }
    }

    /// Marks the non-zero chunks `numbers` of `index` as [`Source::InPlace`] without reading
    /// them: the caller wrote and verified them (numbers past the index are ignored).
    pub fn mark_in_place(&mut self, index: &BlobIndex, numbers: std::ops::Range<u64>) {
        for number in numbers {
            let Some(chunk) = usize::try_from(number).ok().and_then(|n| index.chunk(n)) else {
                break;
            };
            self.place(&chunk);
        }
    }

    /// Marks one chunk as in place, taking it out of the tallies of where it came from.
    fn place(&mut self, chunk: &Chunk) {
        let source = &mut self.sources[chunk.number];
        if matches!(*source, Source::Zero | Source::InPlace) {
            return;
        }
        if *source == Source::Fetch {
            remove_place(&mut self.fetch_places, &mut self.plan, chunk);
        }
        self.plan.tally(*source).remove(chunk.len);
        self.plan.in_place.add(chunk.len);
        *source = Source::InPlace;
    }

    /// Marks as [`Source::InPlace`] every non-zero chunk that `target` already holds at its
    /// offset with the right hash. Reads each such chunk once; `buf` is reused.
    pub fn find_in_place(
        &mut self,
        index: &BlobIndex,
        target: &dyn Device,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        for chunk in index.chunks() {
            let source = self.sources[chunk.number];
            if matches!(source, Source::Zero | Source::InPlace) || chunk.end() > target.len() {
                continue;
            }
            buf.resize(chunk.len as usize, 0);
            target.read_at(buf, chunk.offset)?;
            if verify_chunk(&chunk, buf).is_ok() {
                self.place(&chunk);
            }
        }
        Ok(())
    }

    /// Returns a chunk planned in place by [`Planned::mark_in_place`] to `source`, the plan it
    /// had before (whoever was to write it did not).
    pub fn unplace(&mut self, chunk: &Chunk, source: Source) {
        let Some(current) = self.sources.get_mut(chunk.number) else {
            return;
        };
        if *current != Source::InPlace || source == Source::InPlace {
            return;
        }
        *current = source;
        self.plan.in_place.remove(chunk.len);
        self.plan.tally(source).add(chunk.len);
        if source == Source::Fetch {
            add_place(&mut self.fetch_places, &mut self.plan, chunk);
        }
    }

    /// Records that a chunk planned from the seed must be fetched after all.
    pub fn seed_failed(&mut self, chunk: &Chunk) {
        if let Some(source @ Source::Seed(_)) = self.sources.get_mut(chunk.number) {
            *source = Source::Fetch;
            self.plan.seed.remove(chunk.len);
            self.plan.fetch.add(chunk.len);
            add_place(&mut self.fetch_places, &mut self.plan, chunk);
        }
    }
}

/// Counts one more place of a chunk to fetch; its first place adds a download.
fn add_place(places: &mut HashMap<ChunkId, usize>, plan: &mut Plan, chunk: &Chunk) {
    let n = places.entry(chunk.id).or_default();
    *n += 1;
    if *n == 1 {
        plan.download.add(chunk.len);
    }
}

/// Counts one place less; its last place removes the download.
fn remove_place(places: &mut HashMap<ChunkId, usize>, plan: &mut Plan, chunk: &Chunk) {
    if let Some(n) = places.get_mut(&chunk.id) {
        *n -= 1;
        if *n == 0 {
            places.remove(&chunk.id);
            plan.download.remove(chunk.len);
        }
    }
}

/// The ids an all-zero chunk can have. The chunker cuts a run of zeros at a fixed length (the
/// minimum or the maximum, by what the zero window hashes to), and the last chunk of a blob may be
/// shorter; so the zero chunks of an index have those lengths only.
struct ZeroIds(HashMap<u32, ChunkId>);

impl ZeroIds {
    fn new(index: &BlobIndex) -> ZeroIds {
        let sizes = index.sizes();
        let mut lens = vec![sizes.min, sizes.max];
        if let Some(last) = index.len().checked_sub(1).and_then(|n| index.chunk(n)) {
            lens.push(u64::from(last.len));
        }
        let zeros = vec![0u8; lens.iter().copied().max().unwrap_or(0) as usize];
        ZeroIds(
            lens.into_iter()
                .map(|len| (len as u32, ChunkId::of(&zeros[..len as usize])))
                .collect(),
        )
    }

    fn is_zero(&self, chunk: &Chunk) -> bool {
        self.0.get(&chunk.len) == Some(&chunk.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkSizes, Chunker};

    #[test]
    fn plans_zero_seed_and_fetch() {
        let chunker = Chunker::new(ChunkSizes {
            min: 1024,
            avg: 4096,
            max: 16384,
        })
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(5);
        let old: Vec<u8> = (0..200_000).map(|_| rng.u8(..)).collect();
        let mut new = old.clone();
        new[100_000..100_100].fill(1);
        new.extend(std::iter::repeat_n(0u8, 100_000));
        let index = |d: &[u8]| chunker.index(d, |_, _| Ok(())).unwrap();
        let (seed, target) = (index(&old), index(&new));
        let planned = Planned::new(&target, Some(&seed));
        let p = planned.plan;
        assert_eq!(p.image.bytes, new.len() as u64);
        assert_eq!(p.image.chunks, target.len());
        assert_eq!(p.zero.bytes + p.seed.bytes + p.fetch.bytes, p.image.bytes);
        assert!(p.zero.bytes >= 80_000, "{p:?}");
        assert!(p.seed.bytes >= 150_000, "{p:?}");
        assert!(p.fetch.chunks >= 1 && p.fetch.bytes < 60_000, "{p:?}");
        assert_eq!(p.in_place, Tally::default());
        // Without a seed, everything that is not zero is fetched.
        let alone = Planned::new(&target, None).plan;
        assert_eq!(alone.fetch.bytes + alone.zero.bytes, alone.image.bytes);
    }
}
