//! Checking many chunks against their ids at once, on the machine's cores.
//!
//! SHA-512/256 is most of the CPU a delta costs: a patch's reference windows, its output, and
//! the seed chunks reused from the running partition are all hashed before they are used. One
//! core hashes about 0.7 GB/s, so a batch of a few MiB is worth sharing out.

use std::ops::Range;
use std::sync::OnceLock;

use super::index::ChunkId;

/// Below this many bytes a batch is hashed on the calling thread: a thread costs more than it
/// saves.
const SHARE_ABOVE: usize = 512 << 10;

/// Threads to hash on: the cores available, at most 4.
fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
}

/// Whether each part of `bytes` (`parts`: a byte range of `bytes` and the id it must hash to)
/// matches, in the order of `parts`. The parts are shared out in contiguous groups of about
/// equal bytes, one group per thread.
pub(crate) fn ids_match(bytes: &[u8], parts: &[(Range<usize>, ChunkId)]) -> Vec<bool> {
    let check = |group: &[(Range<usize>, ChunkId)]| -> Vec<bool> {
        group
            .iter()
            .map(|(range, id)| {
                bytes
                    .get(range.clone())
                    .is_some_and(|b| ChunkId::of(b) == *id)
            })
            .collect()
    };
    let total: usize = parts.iter().map(|(r, _)| r.len()).sum();
    let threads = threads().min(parts.len());
    if threads < 2 || total < SHARE_ABOVE {
        return check(parts);
    }
    // Cut `parts` where the running byte count passes each thread's share.
    let mut cuts = vec![0];
    let mut sum = 0;
    for (i, (range, _)) in parts.iter().enumerate() {
        sum += range.len();
        if sum * threads >= total * cuts.len() && cuts.len() < threads {
            cuts.push(i + 1);
        }
    }
    cuts.push(parts.len());
    cuts.dedup();
    let groups: Vec<&[(Range<usize>, ChunkId)]> =
        cuts.windows(2).map(|w| &parts[w[0]..w[1]]).collect();
    std::thread::scope(|scope| {
        let Some((own, others)) = groups.split_last() else {
            return Vec::new();
        };
        let handles: Vec<_> = others
            .iter()
            .map(|group| scope.spawn(move || check(group)))
            .collect();
        let mine = check(own);
        let mut out = Vec::with_capacity(parts.len());
        for (handle, group) in handles.into_iter().zip(others) {
            // A hashing thread cannot panic on its input; if it did, its group counts as
            // not matching rather than taking the process down.
            out.extend(handle.join().unwrap_or_else(|_| vec![false; group.len()]));
        }
        out.extend(mine);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts of all sizes, some tampered, large enough to be shared out: each answer must be
    /// the one a single thread gives, in order.
    #[test]
    fn shared_out_answers_match_one_thread_in_order() {
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut parts = Vec::new();
        let mut at = 0;
        let mut size = 1000;
        while at + size <= bytes.len() {
            parts.push((at..at + size, ChunkId::of(&bytes[at..at + size])));
            at += size;
            size = size * 3 / 2 % 200_000 + 1;
        }
        let bad = [0, 3, parts.len() / 2, parts.len() - 1];
        for &b in &bad {
            parts[b].1 = ChunkId([b as u8; 32]);
        }
        // An out-of-range part never matches.
        parts.push((bytes.len() - 10..bytes.len() + 10, ChunkId([0; 32])));
        let got = ids_match(&bytes, &parts);
        assert_eq!(got.len(), parts.len());
        for (i, ok) in got.iter().enumerate() {
            let expected = !bad.contains(&i) && i != parts.len() - 1;
            assert_eq!(*ok, expected, "part {i}");
        }
        assert!(ids_match(&bytes, &[]).is_empty());
    }
}
