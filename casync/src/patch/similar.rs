//! Where the content of a run of new bytes sits in the older image.
//!
//! A run of new chunks is often an older file that moved (a file system lays files out again
//! when others change size) or an older version of itself stored elsewhere. The chunks around the
//! run in the newer image then say nothing about where its bytes were. So the publisher samples
//! the older image by content: an *anchor* is a position where a rolling hash of the 64 bytes
//! before it has its top bits clear (about one position in 512, chosen by content, so the same
//! bytes give the same anchors wherever they are). [`ContentMap`] remembers where each anchor
//! hash occurs in the older image; the anchors of a run of new bytes that are found there say
//! which stretch of the older image holds the same content, and the patch's reference window
//! is placed there.
//!
//! Publisher side only: the host never computes anchors, it reads the window the patch index
//! names and verifies it against the signed index as before.

use std::collections::HashMap;

/// Anchor density: a position is an anchor when these top bits of the rolling hash are clear
/// (9 bits: one position in 512 on average).
const ANCHOR_MASK: u64 = 0xff80_0000_0000_0000;
/// An anchor hash seen more often than this in the older image (runs of one byte, padding,
/// repeated tables) says nothing about where a run came from, and is forgotten.
const MAX_REPEATS: u32 = 4;
/// The rolling hash depends on the last 64 bytes; earlier positions of a stream are not anchors.
const SPAN: u64 = 64;

/// The gear table of the rolling hash: fixed pseudo-random words (splitmix64 of 0..256), so
/// anchors are the same on every machine and in every release.
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut z = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
};

/// A rolling hash over a stream fed in pieces.
#[derive(Default)]
struct Roller {
    hash: u64,
    seen: u64,
}

impl Roller {
    /// Calls `each(anchor hash, offset in the stream)` for every anchor in `bytes`, the next
    /// bytes of the stream.
    fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(u64, u64)) {
        for &b in bytes {
            self.hash = (self.hash << 1).wrapping_add(GEAR[usize::from(b)]);
            self.seen += 1;
            if self.hash & ANCHOR_MASK == 0 && self.seen >= SPAN {
                each(self.hash, self.seen - 1);
            }
        }
    }
}

/// Where each anchor of the older image is (its first occurrence), and how often it occurs.
///
/// Memory: about 32 bytes per anchor, one anchor per 512 bytes of content (64 MiB for a full
/// 1 GiB image; runs of zeros or of one repeated pattern add at most a few entries).
#[derive(Default)]
pub(super) struct ContentMap {
    roller: Roller,
    anchors: HashMap<u64, (u64, u32)>,
}

impl ContentMap {
    /// Adds the next bytes of the older image (fed in order, from offset 0).
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        let anchors = &mut self.anchors;
        self.roller.feed(bytes, |hash, offset| {
            let entry = anchors.entry(hash).or_insert((offset, 0));
            entry.1 = entry.1.saturating_add(1);
        });
    }

    /// The older image's offsets that hold the anchors of `bytes` (one per anchor found, in the
    /// order of `bytes`), skipping anchors that repeat too often to say anything.
    pub(super) fn hits(&self, bytes: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        Roller::default().feed(bytes, |hash, _| {
            if let Some(&(offset, seen)) = self.anchors.get(&hash) {
                if seen <= MAX_REPEATS {
                    out.push(offset);
                }
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    #[test]
    fn anchors_follow_content_not_position() {
        let stretch = noise(64 << 10, 1);
        let mut old = noise(300 << 10, 2);
        old.extend_from_slice(&stretch);
        old.extend(noise(100 << 10, 3));
        let mut map = ContentMap::default();
        // Fed in odd pieces: the rolling state carries over.
        for piece in old.chunks(7919) {
            map.feed(piece);
        }
        let hits = map.hits(&stretch);
        // About one anchor per 512 bytes; all inside the stretch's old place.
        assert!(hits.len() > 64, "{} hits", hits.len());
        let place = (300u64 << 10)..(364u64 << 10);
        assert!(hits.iter().all(|o| place.contains(o)), "{hits:?}");
        // Bytes that are not in the older image find (almost) nothing.
        assert!(map.hits(&noise(64 << 10, 4)).len() < 2);
    }

    #[test]
    fn runs_of_one_byte_are_not_evidence() {
        let mut map = ContentMap::default();
        map.feed(&vec![0u8; 1 << 20]);
        map.feed(&vec![0xffu8; 1 << 20]);
        assert!(map.anchors.len() <= 2);
        assert!(map.hits(&vec![0u8; 1 << 16]).is_empty());
    }
}
