//! Patches of an image's new chunks against the bytes of an older image, for bytes on the wire
//! below what a chunk store can offer.
//!
//! A host that runs release R and installs release S from chunks fetches every chunk of S that R
//! does not have, each compressed on its own. Most of those chunks differ from a neighbouring
//! stretch of R only a little (a rebuilt binary, a changed table), so each run of new chunks is
//! compressed here with zstd against a *reference window*: the bytes of a few ranges of R's
//! chunks, at most [`MAX_WINDOW`] in all. The publisher places the ranges where the run's
//! content sits in R, found by content anchors (`similar`); a run whose content R does not have
//! is encoded against the chunks of R between those that surround it in S (or at its own
//! offsets).
//!
//! Trust: the host builds the window from its running partition, and every chunk of it must hash
//! to the id in R's signed index before it is used ([`reference_window`]), except the chunks the
//! entry lists as not needed ([`PatchEntry::zeroed`]), which are zeros and never read; what a
//! patch entry produces is cut at S's chunk boundaries and every chunk must hash to S's index id
//! ([`apply_entry`]). A patch can therefore make an update fail, never make it wrong. The patch
//! data and its [`PatchIndex`] are meant to be signed targets, like the indexes.
//!
//! Memory is bounded by the format: a window is at most [`MAX_WINDOW`] bytes and an entry's
//! output at most [`MAX_OUTPUT`] bytes, so applying one entry holds at most their sum plus
//! zstd's decoder state, whatever the image size.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;
use zstd::zstd_safe;

use crate::index::{BlobIndex, Chunk, ChunkId};
use crate::verify;

mod similar;

/// The format name of a [`PatchIndex`] whose windows are each one range of the older index.
pub const PATCH_FORMAT: &str = "updog-chunk-patch-1";
/// The format name of a [`PatchIndex`] where some window is several ranges
/// ([`PatchEntry::also`]). A host that knows only [`PATCH_FORMAT`] refuses it as a whole, and
/// fetches those chunks from the store, rather than decoding against the wrong bytes.
pub const PATCH_FORMAT_2: &str = "updog-chunk-patch-2";
/// The format name of a [`PatchIndex`] where some window also holds chunks of the newer image
/// that earlier entries produced ([`PatchEntry::produced`]). A host that knows only the formats
/// before refuses it as a whole.
pub const PATCH_FORMAT_3: &str = "updog-chunk-patch-3";
/// The most ranges one window may have.
pub const MAX_RANGES: usize = 8;
/// The largest reference window an entry may name (bytes of the older image, and of the newer
/// one that earlier entries produced).
pub const MAX_WINDOW: u64 = 8 << 20;
/// The largest output of one entry (bytes of the newer image).
pub const MAX_OUTPUT: u64 = 8 << 20;
/// The zstd level patches are made with (slow to make, as fast as any level to apply).
pub const LEVEL: i32 = 19;
/// The most new bytes the publisher puts in one entry. Smaller than [`MAX_OUTPUT`]: a long run
/// of new chunks is usually several files from different places of the older image, and a
/// shorter entry needs fewer places in its window.
const PIECE_BYTES: u64 = 1 << 20;

/// One run of the newer image's chunks, encoded against ranges of the older image's chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchEntry {
    /// The newer index's chunk numbers this entry produces.
    pub chunks: Range<u64>,
    /// The older index's chunk numbers whose bytes, in order, begin the reference window.
    pub reference: Range<u64>,
    /// Further ranges of the older index whose bytes follow, in order, in the window: a run
    /// whose content sits in several places of the older image ([`PATCH_FORMAT_2`] only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Range<u64>>,
    /// Chunks of the window, by position in the order of [`PatchEntry::ranges`] (the first
    /// chunk of `reference` is 0), that the frame decodes without: the publisher checked that
    /// the frame gives the same output with zeros there. A host puts zeros there instead of
    /// reading and verifying them. A host that does not know the field reads them, and the
    /// frame decodes against those bytes just as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zeroed: Vec<Range<u64>>,
    /// Ranges of the newer index, all before [`PatchEntry::chunks`], whose bytes follow the
    /// older ranges in the window: content an earlier entry produced (the same file placed twice
    /// in the new image, say). The host reads them back from the partition it is writing and
    /// checks them against the newer index first ([`PATCH_FORMAT_3`] only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub produced: Vec<Range<u64>>,
    /// Where the entry's zstd frame starts in the patch data.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

impl PatchEntry {
    /// Whether the window chunk at `position` is one the frame decodes without
    /// ([`PatchEntry::zeroed`], in order and disjoint once parsed).
    pub fn zeroed_at(&self, position: u64) -> bool {
        let i = self.zeroed.partition_point(|z| z.end <= position);
        self.zeroed.get(i).is_some_and(|z| z.contains(&position))
    }

    /// The ranges of the older index that make up the window, in order.
    pub fn ranges(&self) -> impl Iterator<Item = &Range<u64>> {
        std::iter::once(&self.reference).chain(&self.also)
    }
}

/// What a patch holds: which chunks of the newer image it produces, from what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchIndex {
    /// [`PATCH_FORMAT`], or [`PATCH_FORMAT_2`] when some window has several ranges.
    pub format: String,
    /// The older image's chunk count and length (a check that the host uses the right index).
    pub reference_chunks: u64,
    /// The older image's length.
    pub reference_len: u64,
    /// The newer image's chunk count.
    pub target_chunks: u64,
    /// The newer image's length.
    pub target_len: u64,
    /// The entries, in chunk order, not overlapping.
    pub entries: Vec<PatchEntry>,
    /// Length of the patch data (the sum of the entries' lengths).
    pub data_len: u64,
}

/// What the publisher's side measured while making a patch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PatchStats {
    /// Chunks of the newer image the older one lacks.
    pub new_chunks: u64,
    /// Their uncompressed bytes.
    pub new_bytes: u64,
    /// What fetching them from a chunk store costs (each compressed alone at the store's level).
    pub store_bytes: u64,
    /// Chunks the patch produces (new chunks whose patch beats the store).
    pub patched_chunks: u64,
    /// The patch data's length.
    pub patch_bytes: u64,
    /// Bytes of the entries' windows, in all.
    pub window_bytes: u64,
    /// Of those, bytes the frames decode without ([`PatchEntry::zeroed`]): hosts neither read
    /// nor hash them.
    pub zeroed_bytes: u64,
}

/// Why a patch could not be made, read or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// Reading an image, or writing the patch data.
    #[error("{what}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The patch index does not fit the indexes it is used with, or breaks a bound.
    #[error("patch index: {0}")]
    Malformed(String),
    /// A chunk of the reference window read from the running image is not the chunk the older
    /// index names: the bytes on disk are not that release's, so the patch cannot be used.
    #[error(
        "reference chunk {number} (bytes {offset}..{end} of the running image) does not match the running release's index"
    )]
    ReferenceMismatch {
        /// The older index's chunk number.
        number: usize,
        /// Its offset.
        offset: u64,
        /// One past its last byte.
        end: u64,
    },
    /// The entry's zstd frame did not decode (to exactly the entry's length).
    #[error("patch entry for chunks {first}..{end}: {detail}")]
    Decode {
        /// First chunk of the entry.
        first: u64,
        /// One past its last chunk.
        end: u64,
        /// What zstd said.
        detail: String,
    },
    /// A chunk of the newer image that the window takes from what earlier entries produced does
    /// not read back as the newer index's chunk (its entry failed, or was not applied yet).
    #[error(
        "chunk {number} of the new image, read back for a window, does not match the new index"
    )]
    ProducedMismatch {
        /// The newer index's chunk number.
        number: usize,
    },
    /// A chunk the entry produced does not hash to the newer index's id.
    #[error("patched chunk {number} does not match the new index")]
    ChunkMismatch {
        /// The newer index's chunk number.
        number: usize,
    },
}

/// Makes a patch of `new`'s chunks that `old` lacks, against `old_image`'s bytes. The patch data
/// goes to `out`; entries whose patch is not smaller than fetching their chunks from a store are
/// left out (the host fetches those chunks as before).
///
/// `read_old` and `read_new` fill a buffer from an offset of the older and newer image. The
/// older image is read once whole first, for its content anchors (memory: about 64 MiB per GiB
/// of non-empty content), then window by window.
pub fn make_patch(
    old: &BlobIndex,
    mut read_old: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    new: &BlobIndex,
    mut read_new: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    out: &mut impl Write,
) -> Result<(PatchIndex, PatchStats), PatchError> {
    let old_chunks: Vec<Chunk> = old.chunks().collect();
    let new_chunks: Vec<Chunk> = new.chunks().collect();
    let mut where_old: HashMap<ChunkId, usize> = HashMap::new();
    for c in &old_chunks {
        where_old.entry(c.id).or_insert(c.number);
    }
    let content = content_map(old.total_len(), &mut read_old)?;
    // The content of the entries made so far, for later runs that repeat it.
    let mut produced = Produced::default();
    let mut stats = PatchStats::default();
    let mut entries = Vec::new();
    let mut offset = 0u64;
    for piece in pieces(&new_chunks, &where_old, PIECE_BYTES) {
        let target = read_chunks(&new_chunks, &piece, &mut read_new, "reading the new image")?;
        let ranges = windows_by_content(&content.hits(&target), &old_chunks, target.len())
            .unwrap_or_else(|| vec![reference_for(&piece, &new_chunks, &old_chunks, &where_old)]);
        let mut window = Vec::new();
        for r in &ranges {
            window.extend(read_chunks(
                &old_chunks,
                r,
                &mut read_old,
                "reading the old image",
            )?);
        }
        let budget = MAX_WINDOW.saturating_sub(window.len() as u64);
        let taken = produced.ranges_for(&target, &new_chunks, budget, MAX_RANGES - ranges.len());
        for r in &taken {
            window.extend(read_chunks(
                &new_chunks,
                r,
                &mut read_new,
                "reading the new image",
            )?);
        }
        let store_cost: u64 = new_chunks[to_usize(piece.start)..to_usize(piece.end)]
            .iter()
            .map(|c| {
                let start = to_usize(c.offset - new_chunks[to_usize(piece.start)].offset);
                zstd::bulk::compress(&target[start..start + c.len as usize], crate::store::LEVEL)
                    .map_or(u64::from(c.len), |z| z.len() as u64)
            })
            .sum();
        stats.new_chunks += piece.end - piece.start;
        stats.new_bytes += target.len() as u64;
        stats.store_bytes += store_cost;
        let frame = encode(&target, &window).map_err(|detail| PatchError::Decode {
            first: piece.start,
            end: piece.end,
            detail,
        })?;
        if frame.len() as u64 >= store_cost {
            continue;
        }
        out.write_all(&frame).map_err(|source| PatchError::Io {
            what: "writing the patch data".into(),
            source,
        })?;
        stats.patched_chunks += piece.end - piece.start;
        stats.patch_bytes += frame.len() as u64;
        let lens: Vec<usize> = ranges
            .iter()
            .flat_map(Clone::clone)
            .filter_map(|n| old_chunks.get(to_usize(n)))
            .chain(
                taken
                    .iter()
                    .flat_map(Clone::clone)
                    .filter_map(|n| new_chunks.get(to_usize(n))),
            )
            .map(|c| c.len as usize)
            .collect();
        produced.add(&target, piece.clone());
        stats.window_bytes += window.len() as u64;
        let zeroed = not_needed(&frame, &mut window, &lens, &target);
        stats.zeroed_bytes += zeroed
            .iter()
            .flat_map(Clone::clone)
            .filter_map(|i| lens.get(to_usize(i)))
            .map(|&l| l as u64)
            .sum::<u64>();
        let mut ranges = ranges.into_iter();
        entries.push(PatchEntry {
            chunks: piece,
            reference: ranges.next().unwrap_or(0..0),
            also: ranges.collect(),
            zeroed,
            produced: taken,
            offset,
            len: frame.len() as u64,
        });
        offset += frame.len() as u64;
    }
    let format = if entries.iter().any(|e| !e.produced.is_empty()) {
        PATCH_FORMAT_3
    } else if entries.iter().any(|e| !e.also.is_empty()) {
        PATCH_FORMAT_2
    } else {
        PATCH_FORMAT
    };
    let index = PatchIndex {
        format: format.into(),
        reference_chunks: old.len() as u64,
        reference_len: old.total_len(),
        target_chunks: new.len() as u64,
        target_len: new.total_len(),
        entries,
        data_len: offset,
    };
    Ok((index, stats))
}

impl PatchIndex {
    /// Parses a patch index and checks it against the older and newer indexes it is for: the
    /// format, the counts and lengths, every range inside its index, entries in order without
    /// overlap, frames inside the data, and the bounds on windows and outputs.
    pub fn parse(bytes: &[u8], old: &BlobIndex, new: &BlobIndex) -> Result<PatchIndex, PatchError> {
        let index: PatchIndex =
            serde_json::from_slice(bytes).map_err(|e| PatchError::Malformed(e.to_string()))?;
        index.check(old, new)?;
        Ok(index)
    }

    fn check(&self, old: &BlobIndex, new: &BlobIndex) -> Result<(), PatchError> {
        let bad = |m: String| Err(PatchError::Malformed(m));
        let version = match self.format.as_str() {
            PATCH_FORMAT => 1,
            PATCH_FORMAT_2 => 2,
            PATCH_FORMAT_3 => 3,
            _ => {
                return bad(format!(
                    "format {:?}, expected {PATCH_FORMAT:?}, {PATCH_FORMAT_2:?} or {PATCH_FORMAT_3:?}",
                    self.format
                ));
            }
        };
        let several = version >= 2;
        if (self.reference_chunks, self.reference_len) != (old.len() as u64, old.total_len()) {
            return bad("made against another index of the running release".into());
        }
        if (self.target_chunks, self.target_len) != (new.len() as u64, new.total_len()) {
            return bad("made for another index of the new release".into());
        }
        let mut next_chunk = 0u64;
        let mut next_offset = 0u64;
        for (i, e) in self.entries.iter().enumerate() {
            let span = |r: &Range<u64>, index: &BlobIndex| -> Option<u64> {
                if r.start >= r.end || r.end > index.len() as u64 {
                    return None;
                }
                let first = index.chunk(to_usize(r.start))?;
                let last = index.chunk(to_usize(r.end - 1))?;
                Some(last.end() - first.offset)
            };
            if e.chunks.start < next_chunk || e.offset != next_offset {
                return bad(format!("entry {i} is out of order"));
            }
            match span(&e.chunks, new) {
                Some(len) if len <= MAX_OUTPUT => {}
                Some(len) => {
                    return bad(format!(
                        "entry {i} produces {len} bytes (limit {MAX_OUTPUT})"
                    ));
                }
                None => {
                    return bad(format!(
                        "entry {i}: chunks {:?} outside the new index",
                        e.chunks
                    ));
                }
            }
            if !e.also.is_empty() && !several {
                return bad(format!(
                    "entry {i}: several window ranges in a {PATCH_FORMAT:?} index"
                ));
            }
            if !e.produced.is_empty() && version < 3 {
                return bad(format!(
                    "entry {i}: produced ranges in a {:?} index",
                    self.format
                ));
            }
            if e.also.len() + e.produced.len() + 1 > MAX_RANGES {
                return bad(format!(
                    "entry {i}: {} window ranges (limit {MAX_RANGES})",
                    e.also.len() + e.produced.len() + 1
                ));
            }
            let mut window = 0u64;
            for r in e.ranges() {
                match span(r, old) {
                    Some(len) => window = window.saturating_add(len),
                    None => {
                        return bad(format!(
                            "entry {i}: reference {r:?} outside the running index"
                        ));
                    }
                }
            }
            for r in &e.produced {
                match span(r, new) {
                    Some(len) if r.end <= e.chunks.start => window = window.saturating_add(len),
                    _ => {
                        return bad(format!(
                            "entry {i}: produced {r:?} not before its chunks {:?}",
                            e.chunks
                        ));
                    }
                }
            }
            if window > MAX_WINDOW {
                return bad(format!(
                    "entry {i}: window of {window} bytes (limit {MAX_WINDOW})"
                ));
            }
            let window_chunks: u64 = e.ranges().chain(&e.produced).map(|r| r.end - r.start).sum();
            let mut after = 0u64;
            for z in &e.zeroed {
                if z.start < after || z.start >= z.end || z.end > window_chunks {
                    return bad(format!(
                        "entry {i}: zeroed chunks {z:?} out of order or outside the window's {window_chunks}"
                    ));
                }
                after = z.end;
            }
            if e.len > max_frame_len() {
                return bad(format!(
                    "entry {i}: a frame of {} bytes (limit {})",
                    e.len,
                    max_frame_len()
                ));
            }
            next_chunk = e.chunks.end;
            next_offset = match e.offset.checked_add(e.len) {
                Some(end) if e.len > 0 => end,
                _ => return bad(format!("entry {i}: bad frame length")),
            };
        }
        if next_offset != self.data_len {
            return bad(format!(
                "entries cover {next_offset} bytes of data, data_len says {}",
                self.data_len
            ));
        }
        Ok(())
    }
}

/// Reads an entry's reference window from the running image through `read_old` and checks every
/// chunk of it against the running release's (signed) index before it is used.
pub fn reference_window(
    entry: &PatchEntry,
    old: &BlobIndex,
    read_old: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<Vec<u8>, PatchError> {
    reference_window_reusing(
        entry,
        old,
        read_old,
        &mut VerifiedChunks::new(0),
        Vec::new(),
    )
}

/// Chunks of the older image that earlier entries' windows read and verified, kept (up to a
/// number of bytes, the oldest dropped first) so a later window that shares them copies them
/// instead of reading and hashing them again: the publisher gives neighbouring entries
/// overlapping windows, and places in the older image that many runs resemble recur.
struct VerifiedChunks {
    bytes: HashMap<u64, Vec<u8>>,
    /// Chunk numbers in the order they were kept.
    order: std::collections::VecDeque<u64>,
    held: usize,
    limit: usize,
}

impl VerifiedChunks {
    fn new(limit: usize) -> Self {
        VerifiedChunks {
            bytes: HashMap::new(),
            order: std::collections::VecDeque::new(),
            held: 0,
            limit,
        }
    }

    fn get(&self, number: u64) -> Option<&[u8]> {
        self.bytes.get(&number).map(Vec::as_slice)
    }

    /// Keeps `bytes` (verified against chunk `number`'s id) if they fit.
    fn keep(&mut self, number: u64, bytes: &[u8]) {
        if bytes.len() > self.limit || self.bytes.contains_key(&number) {
            return;
        }
        while self.held + bytes.len() > self.limit {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.bytes.remove(&oldest) {
                self.held -= b.len();
            }
        }
        self.held += bytes.len();
        self.order.push_back(number);
        self.bytes.insert(number, bytes.to_vec());
    }
}

/// Bytes of verified older chunks [`apply_stream`] keeps between entries.
const KEEP_VERIFIED: usize = 16 << 20;

/// [`reference_window`] into `window` (a spent window's buffer, so its pages are not faulted in
/// again), taking the chunks `verified` holds from there, and keeping there the chunks it reads
/// and verifies.
fn reference_window_reusing(
    entry: &PatchEntry,
    old: &BlobIndex,
    mut read_old: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    verified: &mut VerifiedChunks,
    mut window: Vec<u8>,
) -> Result<Vec<u8>, PatchError> {
    window.clear();
    // Chunks read from the running image, to check: where they are in the window, which chunk.
    let mut read = Vec::new();
    for (position, number) in entry.ranges().flat_map(Clone::clone).enumerate() {
        let n = to_usize(number);
        let chunk = old.chunk(n).ok_or_else(|| {
            PatchError::Malformed(format!("reference chunk {n} is not in the index"))
        })?;
        if entry.zeroed_at(position as u64) {
            // The frame does not need these bytes: nothing read, nothing to trust.
            window.resize(window.len() + chunk.len as usize, 0);
            continue;
        }
        if let Some(bytes) = verified.get(number) {
            window.extend_from_slice(bytes);
            continue;
        }
        let start = window.len();
        window.resize(start + chunk.len as usize, 0);
        read_old(chunk.offset, &mut window[start..]).map_err(|source| PatchError::Io {
            what: format!("reading reference chunk {n} from the running image"),
            source,
        })?;
        read.push((start..window.len(), chunk));
    }
    let parts: Vec<_> = read.iter().map(|(r, c)| (r.clone(), c.id)).collect();
    let matches = verify::ids_match(&window, &parts);
    let mut mismatch = None;
    for ((range, chunk), good) in read.iter().zip(matches) {
        if good {
            verified.keep(chunk.number as u64, &window[range.clone()]);
        } else if mismatch.is_none() {
            mismatch = Some(PatchError::ReferenceMismatch {
                number: chunk.number,
                offset: chunk.offset,
                end: chunk.end(),
            });
        }
    }
    match mismatch {
        Some(e) => Err(e),
        None => Ok(window),
    }
}

/// Appends to `window` (an entry's older ranges, from [`reference_window`]) the chunks of the
/// newer image it takes from what earlier entries produced ([`PatchEntry::produced`]), read
/// through `read_new` and checked against the newer index; the chunks listed in
/// [`PatchEntry::zeroed`] are zeros instead.
pub fn append_produced(
    window: &mut Vec<u8>,
    entry: &PatchEntry,
    new: &BlobIndex,
    read_new: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<(), PatchError> {
    append_produced_known(window, entry, new, read_new, &HashMap::new())
}

/// [`append_produced`], where a chunk in `written` (chunk number to the xxh3-128 of the
/// verified bytes this pass wrote there) is checked against that digest instead of hashed with
/// SHA-512/256 again: those bytes matched the newer index's id before they were written, and
/// the digest tells whether the partition gives back what was written. About a fifth of the
/// hashing on the bench's pairs was this second look at the pass's own output.
fn append_produced_known(
    window: &mut Vec<u8>,
    entry: &PatchEntry,
    new: &BlobIndex,
    mut read_new: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    written: &HashMap<u64, u128>,
) -> Result<(), PatchError> {
    if entry.produced.is_empty() {
        return Ok(());
    }
    let before: u64 = entry.ranges().map(|r| r.end - r.start).sum();
    let mut read = Vec::new();
    for (i, number) in entry.produced.iter().flat_map(Clone::clone).enumerate() {
        let position = before + i as u64;
        let n = to_usize(number);
        let chunk = new.chunk(n).ok_or_else(|| {
            PatchError::Malformed(format!("produced chunk {n} is not in the index"))
        })?;
        let start = window.len();
        window.resize(start + chunk.len as usize, 0);
        if entry.zeroed_at(position) {
            continue;
        }
        read_new(chunk.offset, &mut window[start..]).map_err(|source| PatchError::Io {
            what: format!("reading back chunk {n} of the new image"),
            source,
        })?;
        match written.get(&number) {
            Some(&digest) if xxh3_128(&window[start..]) == digest => {}
            Some(_) => return Err(PatchError::ProducedMismatch { number: n }),
            None => read.push((start..window.len(), chunk)),
        }
    }
    let parts: Vec<_> = read.iter().map(|(r, c)| (r.clone(), c.id)).collect();
    let matches = verify::ids_match(window, &parts);
    match read.iter().zip(matches).find(|(_, ok)| !ok) {
        Some(((_, chunk), _)) => Err(PatchError::ProducedMismatch {
            number: chunk.number,
        }),
        None => Ok(()),
    }
}

/// Decodes one entry's frame against its (verified) reference window and checks every chunk it
/// produces against the new index. Returns the entry's bytes: chunks `entry.chunks`, in order.
pub fn apply_entry(
    entry: &PatchEntry,
    frame: &[u8],
    window: &[u8],
    new: &BlobIndex,
) -> Result<Vec<u8>, PatchError> {
    let decode_error = |detail: String| PatchError::Decode {
        first: entry.chunks.start,
        end: entry.chunks.end,
        detail,
    };
    let chunks: Vec<Chunk> = entry
        .chunks
        .clone()
        .filter_map(|n| new.chunk(to_usize(n)))
        .collect();
    let expected: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    if chunks.len() as u64 != entry.chunks.end.saturating_sub(entry.chunks.start)
        || expected > MAX_OUTPUT
        || window.len() as u64 > MAX_WINDOW
    {
        return Err(PatchError::Malformed(format!(
            "entry for chunks {:?} breaks the format's bounds",
            entry.chunks
        )));
    }
    let mut out = Vec::with_capacity(to_usize(expected));
    let mut dctx = zstd_safe::DCtx::create();
    // 2^27 is zstd's default decoder limit; ours is smaller still: window plus output.
    dctx.set_parameter(zstd_safe::DParameter::WindowLogMax(window_log(
        MAX_WINDOW + MAX_OUTPUT,
    )))
    .map_err(|code| decode_error(zstd_safe::get_error_name(code).to_string()))?;
    dctx.ref_prefix(window)
        .map_err(|code| decode_error(zstd_safe::get_error_name(code).to_string()))?;
    let n = dctx
        .decompress(&mut out, frame)
        .map_err(|code| decode_error(zstd_safe::get_error_name(code).to_string()))?;
    if n as u64 != expected {
        return Err(decode_error(format!(
            "decoded {n} bytes, expected {expected}"
        )));
    }
    let base = chunks.first().map_or(0, |c| c.offset);
    let parts: Vec<_> = chunks
        .iter()
        .map(|c| {
            let start = to_usize(c.offset - base);
            (start..start + c.len as usize, c.id)
        })
        .collect();
    let matches = verify::ids_match(&out, &parts);
    if let Some((c, _)) = chunks.iter().zip(matches).find(|(_, ok)| !ok) {
        return Err(PatchError::ChunkMismatch { number: c.number });
    }
    Ok(out)
}

/// The longest frame an entry may have: zstd's bound for [`MAX_OUTPUT`] bytes.
pub fn max_frame_len() -> u64 {
    zstd_safe::compress_bound(to_usize(MAX_OUTPUT)) as u64
}

/// What [`apply_stream`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Chunk ranges of the new index written (each chunk verified against its id).
    pub written: Vec<Range<u64>>,
    /// Entries that could not be used, with why (their chunks are left for the chunk store).
    pub failed: Vec<(Range<u64>, String)>,
    /// Patch data bytes read.
    pub data_read: u64,
    /// For each chunk written, its number and the xxh3-128 of the verified bytes written, for
    /// [`AssembleOptions::written_digests`](crate::AssembleOptions::written_digests).
    pub digests: Vec<(u64, u128)>,
}

impl Applied {
    /// Chunks written.
    pub fn chunks(&self) -> u64 {
        self.written.iter().map(|r| r.end - r.start).sum()
    }
}

/// Applies a whole patch from its data stream (read once, in order, as it arrives): for each
/// entry, the reference window is read from the running image and verified, the frame decoded,
/// every chunk verified against the new index, and the entry's bytes written where they go in
/// the new image through `write_new`. An entry whose window or frame is bad is skipped and
/// listed in [`Applied::failed`]; a failure to read the stream or to write ends the pass with
/// the error (what was written stays written and verified).
///
/// Windows are read and verified on a second thread while the entry before is decoded, so
/// `read_old` must be `Send`.
///
/// Memory: one frame, two windows (the current one and the next) and one entry's output at a
/// time, each bounded by the format, and up to 16 MiB of verified older chunks kept from
/// earlier windows (a later window that shares them copies them instead of reading and hashing
/// them again).
pub fn apply_stream<W, R>(
    patch: &PatchIndex,
    old: &BlobIndex,
    new: &BlobIndex,
    data: &mut impl io::Read,
    read_old: impl FnMut(u64, &mut [u8]) -> io::Result<()> + Send,
    mut new_image: NewImage<W, R>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Applied, PatchError>
where
    W: FnMut(u64, &[u8]) -> io::Result<()>,
    R: FnMut(u64, &mut [u8]) -> io::Result<()>,
{
    // Windows are read and verified on a second thread, one entry ahead of the decoding: the
    // two halves hash about as much as each other. A rendezvous channel: the reader holds at
    // most the next window while this thread uses the current one.
    let (windows_tx, windows) = std::sync::mpsc::sync_channel(0);
    // Spent windows go back to the reader, to be filled again.
    let (spent, spent_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut read_old = read_old;
            let mut verified = VerifiedChunks::new(KEEP_VERIFIED);
            for entry in &patch.entries {
                let buffer = spent_rx.try_recv().unwrap_or_default();
                let window =
                    reference_window_reusing(entry, old, &mut read_old, &mut verified, buffer);
                let fatal = matches!(window, Err(PatchError::Io { .. }));
                // A closed channel: the decoding side stopped, and so does this.
                if windows_tx.send(window).is_err() || fatal {
                    return;
                }
            }
        });
        decode_stream(
            patch,
            new,
            data,
            (windows, spent),
            &mut new_image,
            cancelled,
        )
    })
}

/// Verified windows from the reader thread, in entry order, and spent buffers back to it.
type WindowChannels = (
    std::sync::mpsc::Receiver<Result<Vec<u8>, PatchError>>,
    std::sync::mpsc::Sender<Vec<u8>>,
);

/// Where [`apply_stream`] puts the newer image: `write` takes an entry's verified bytes at their
/// offset, and `read` gives back bytes written earlier, for windows that take from them
/// ([`PatchEntry::produced`]).
pub struct NewImage<W, R> {
    /// Writes bytes at an offset of the newer image.
    pub write: W,
    /// Reads bytes at an offset of the newer image.
    pub read: R,
}

/// The decoding side of [`apply_stream`]: each entry's frame from `data`, its verified window
/// from `windows` (in entry order), the output verified and written.
fn decode_stream(
    patch: &PatchIndex,
    new: &BlobIndex,
    data: &mut impl io::Read,
    (windows, spent): WindowChannels,
    new_image: &mut NewImage<
        impl FnMut(u64, &[u8]) -> io::Result<()>,
        impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    >,
    cancelled: &dyn Fn() -> bool,
) -> Result<Applied, PatchError> {
    let mut applied = Applied::default();
    // The digests of `applied.digests`, by chunk number, for windows that take them back.
    let mut written_digests = HashMap::new();
    let mut frame = Vec::new();
    for entry in &patch.entries {
        if cancelled() {
            return Err(PatchError::Io {
                what: "applying the patch".into(),
                source: io::Error::new(io::ErrorKind::Interrupted, "cancelled"),
            });
        }
        // Entries are contiguous in the data (checked by `PatchIndex::parse`).
        frame.clear();
        let got = (&mut *data)
            .take(entry.len)
            .read_to_end(&mut frame)
            .map_err(|source| PatchError::Io {
                what: "reading the patch data".into(),
                source,
            })?;
        applied.data_read += got as u64;
        if (got as u64) < entry.len {
            return Err(PatchError::Io {
                what: "reading the patch data".into(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "it ends early"),
            });
        }
        // The reader sends one result per entry and stops only after a fatal one, which ends
        // this loop first; a closed channel means its thread is gone.
        let window = windows.recv().unwrap_or_else(|_| {
            Err(PatchError::Io {
                what: "reading reference windows".into(),
                source: io::Error::other("the window reader stopped"),
            })
        });
        let out = match window.and_then(|mut window| {
            // Chunks earlier entries produced: read back here, where they are known written.
            let out = append_produced_known(
                &mut window,
                entry,
                new,
                &mut new_image.read,
                &written_digests,
            )
            .and_then(|()| apply_entry(entry, &frame, &window, new));
            // The reader may be gone (it stops after its last entry).
            let _ = spent.send(window);
            out
        }) {
            Ok(out) => out,
            Err(e @ PatchError::Io { .. }) => return Err(e),
            Err(e) => {
                applied.failed.push((entry.chunks.clone(), e.to_string()));
                continue;
            }
        };
        let at = new
            .chunk(to_usize(entry.chunks.start))
            .map_or(0, |c| c.offset);
        (new_image.write)(at, &out).map_err(|source| PatchError::Io {
            what: format!(
                "writing patched chunks {}..{} to the new image",
                entry.chunks.start, entry.chunks.end
            ),
            source,
        })?;
        applied.written.push(entry.chunks.clone());
        for c in entry.chunks.clone().filter_map(|n| new.chunk(to_usize(n))) {
            let start = to_usize(c.offset - at);
            if let Some(bytes) = out.get(start..start + c.len as usize) {
                let digest = xxh3_128(bytes);
                applied.digests.push((c.number as u64, digest));
                written_digests.insert(c.number as u64, digest);
            }
        }
    }
    Ok(applied)
}

/// The content of the entries a patch has made so far (the publisher's view of what a host will
/// have written by then), for windows of later runs that repeat it.
#[derive(Default)]
struct Produced {
    map: similar::ContentMap,
    /// Each entry's start in the stream fed to `map`, and its chunks of the newer index.
    entries: Vec<(u64, Range<u64>)>,
    fed: u64,
}

/// Anchor hits an earlier entry needs before a window takes it.
const MIN_PRODUCED_HITS: usize = 8;

impl Produced {
    fn add(&mut self, target: &[u8], chunks: Range<u64>) {
        self.entries.push((self.fed, chunks));
        self.map.feed(target);
        self.fed += target.len() as u64;
    }

    /// Whole earlier entries that `target` repeats (the most anchor hits first, at least
    /// [`MIN_PRODUCED_HITS`]), as many as fit in `budget` bytes and `ranges` ranges, in order.
    fn ranges_for(
        &self,
        target: &[u8],
        new_chunks: &[Chunk],
        budget: u64,
        ranges: usize,
    ) -> Vec<Range<u64>> {
        let mut hits: HashMap<usize, usize> = HashMap::new();
        for at in self.map.hits(target) {
            let i = self.entries.partition_point(|(start, _)| *start <= at);
            if let Some(i) = i.checked_sub(1) {
                *hits.entry(i).or_default() += 1;
            }
        }
        let mut best: Vec<(usize, usize)> = hits
            .into_iter()
            .filter(|&(_, count)| count >= MIN_PRODUCED_HITS)
            .collect();
        best.sort_by_key(|&(i, count)| (std::cmp::Reverse(count), i));
        let span = |r: &Range<u64>| -> u64 {
            new_chunks
                .get(to_usize(r.start)..to_usize(r.end))
                .unwrap_or_default()
                .iter()
                .map(|c| u64::from(c.len))
                .sum()
        };
        let mut taken = Vec::new();
        let mut left = budget;
        for (i, _) in best {
            let r = &self.entries[i].1;
            if taken.len() < ranges && span(r) <= left {
                left -= span(r);
                taken.push(r.clone());
            }
        }
        taken.sort_by_key(|r| r.start);
        taken
    }
}

/// The older image's content anchors, read through `read_old` in order.
fn content_map(
    len: u64,
    read_old: &mut impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<similar::ContentMap, PatchError> {
    let mut map = similar::ContentMap::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = to_usize((len - at).min(buf.len() as u64));
        read_old(at, &mut buf[..n]).map_err(|source| PatchError::Io {
            what: "reading the old image".into(),
            source,
        })?;
        map.feed(&buf[..n]);
        at += n as u64;
    }
    Ok(map)
}

/// How far apart (bytes of the older image) two hits may be and still belong to one place.
const PLACE_GAP: u64 = 1 << 20;
/// The most places one window is made of.
const MAX_PLACES: usize = 4;

/// The ranges of old chunks that make up a piece's window, from `hits` (old offsets where the
/// piece's content anchors were found): the places with the most hits (hits less than
/// [`PLACE_GAP`] apart are one place), at most [`MAX_PLACES`] of them, each widened by an equal
/// share of what is left towards twice the piece's length, in the older image's order, at most
/// [`MAX_WINDOW`] bytes in all. `None` when nothing was found.
fn windows_by_content(
    hits: &[u64],
    old_chunks: &[Chunk],
    piece_len: usize,
) -> Option<Vec<Range<u64>>> {
    let numbers = hit_chunks(hits, old_chunks);
    let span = |s: usize, e: usize| old_chunks[e - 1].end() - old_chunks[s].offset;
    // Places: (first chunk, one past the last, hits).
    let mut places: Vec<(usize, usize, usize)> = Vec::new();
    for &n in &numbers {
        match places.last_mut() {
            Some((_, end, count))
                if old_chunks[n].offset <= old_chunks[*end - 1].end() + PLACE_GAP =>
            {
                *end = (*end).max(n + 1);
                *count += 1;
            }
            _ => places.push((n, n + 1, 1)),
        }
    }
    // The most hits first; ties by position, so the choice does not depend on the sort.
    places.sort_by_key(|&(start, _, count)| (std::cmp::Reverse(count), start));
    places.truncate(MAX_PLACES);
    let mut total: u64 = places.iter().map(|&(s, e, _)| span(s, e)).sum();
    while total > MAX_WINDOW && places.len() > 1 {
        if let Some((s, e, _)) = places.pop() {
            total -= span(s, e);
        }
    }
    if places.is_empty() {
        return None;
    }
    if total > MAX_WINDOW {
        // One place longer than a window: its densest stretch.
        return window_by_content(&numbers, old_chunks, piece_len).map(|r| vec![r]);
    }
    let share = ((2 * piece_len as u64).max(total).min(MAX_WINDOW) - total) / places.len() as u64;
    let mut ranges: Vec<Range<u64>> = places
        .iter()
        .map(|&(mut start, mut end, _)| {
            let want = span(start, end) + share;
            widen(&mut start, &mut end, want, want, old_chunks);
            start as u64..end as u64
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
            _ => merged.push(r),
        }
    }
    Some(merged)
}

/// The old chunks that hold `hits` (old offsets where a piece's content anchors were found),
/// sorted, one per hit.
fn hit_chunks(hits: &[u64], old_chunks: &[Chunk]) -> Vec<usize> {
    let mut numbers: Vec<usize> = hits
        .iter()
        .map(|&o| old_chunks.partition_point(|c| c.end() <= o))
        .filter(|&n| n < old_chunks.len())
        .collect();
    numbers.sort_unstable();
    numbers
}

/// The window of old chunks, at most [`MAX_WINDOW`] bytes, that holds the most of the hits in
/// `numbers` (from [`hit_chunks`]), widened on both sides towards twice the piece's length.
/// `None` when there is no hit.
fn window_by_content(
    numbers: &[usize],
    old_chunks: &[Chunk],
    piece_len: usize,
) -> Option<Range<u64>> {
    let span = |s: usize, e: usize| old_chunks[e - 1].end() - old_chunks[s].offset;
    // The densest stretch: two pointers over the sorted chunk numbers of the hits.
    let (mut best, mut range) = (0usize, None);
    let mut first = 0;
    for last in 0..numbers.len() {
        while span(numbers[first], numbers[last] + 1) > MAX_WINDOW {
            first += 1;
        }
        if last + 1 - first > best {
            best = last + 1 - first;
            range = Some((numbers[first], numbers[last] + 1));
        }
    }
    let (mut start, mut end) = range?;
    let want = (2 * piece_len as u64).max(span(start, end)).min(MAX_WINDOW);
    widen(&mut start, &mut end, want, MAX_WINDOW, old_chunks);
    Some(start as u64..end as u64)
}

/// Grows `start..end`, alternating sides, while it is short of `want` bytes and stays within
/// `limit` bytes.
fn widen(start: &mut usize, end: &mut usize, want: u64, limit: u64, old_chunks: &[Chunk]) {
    let span = |s: usize, e: usize| old_chunks[e - 1].end() - old_chunks[s].offset;
    loop {
        let mut grew = false;
        if span(*start, *end) < want && *end < old_chunks.len() && span(*start, *end + 1) <= limit {
            *end += 1;
            grew = true;
        }
        if span(*start, *end) < want && *start > 0 && span(*start - 1, *end) <= limit {
            *start -= 1;
            grew = true;
        }
        if !grew {
            break;
        }
    }
}

/// Runs of new chunks the old index lacks, split so none produces more than `max` bytes (or
/// one chunk, if a chunk is longer).
fn pieces(new_chunks: &[Chunk], where_old: &HashMap<ChunkId, usize>, max: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut current: Option<(u64, u64)> = None; // (first chunk, bytes so far)
    for c in new_chunks {
        let n = c.number as u64;
        if where_old.contains_key(&c.id) {
            if let Some((first, _)) = current.take() {
                out.push(first..n);
            }
            continue;
        }
        match current {
            Some((first, bytes)) if bytes + u64::from(c.len) > max => {
                out.push(first..n);
                current = Some((n, u64::from(c.len)));
            }
            Some((first, bytes)) => current = Some((first, bytes + u64::from(c.len))),
            None => current = Some((n, u64::from(c.len))),
        }
    }
    if let Some((first, _)) = current {
        out.push(first..new_chunks.len() as u64);
    }
    out
}

/// The old chunks to encode `piece` against: those between the old positions of the piece's
/// known neighbours when both exist and are in order, otherwise those at the piece's own
/// offsets; then widened to at least twice the piece's length and cut to [`MAX_WINDOW`].
fn reference_for(
    piece: &Range<u64>,
    new_chunks: &[Chunk],
    old_chunks: &[Chunk],
    where_old: &HashMap<ChunkId, usize>,
) -> Range<u64> {
    if old_chunks.is_empty() {
        return 0..0;
    }
    let first = &new_chunks[to_usize(piece.start)];
    let last = &new_chunks[to_usize(piece.end - 1)];
    let piece_len = last.end() - first.offset;
    let before = piece
        .start
        .checked_sub(1)
        .and_then(|n| where_old.get(&new_chunks[to_usize(n)].id).copied());
    let after = new_chunks
        .get(to_usize(piece.end))
        .and_then(|c| where_old.get(&c.id).copied());
    let (mut start, mut end) = match (before, after) {
        (Some(b), Some(a)) if b + 1 < a => (b + 1, a),
        (Some(b), _) if b + 1 < old_chunks.len() => (b + 1, b + 2),
        (_, Some(a)) if a > 0 => (a - 1, a),
        _ => {
            // The old chunk holding the piece's first offset, if the old image is that long.
            let at = old_chunks
                .partition_point(|c| c.end() <= first.offset)
                .min(old_chunks.len() - 1);
            (at, at + 1)
        }
    };
    let span = |s: usize, e: usize| old_chunks[e - 1].end() - old_chunks[s].offset;
    widen(
        &mut start,
        &mut end,
        (2 * piece_len).min(MAX_WINDOW),
        MAX_WINDOW,
        old_chunks,
    );
    // A gap between neighbours larger than the limit keeps its first stretch.
    while end > start + 1 && span(start, end) > MAX_WINDOW {
        end -= 1;
    }
    if span(start, end) > MAX_WINDOW {
        return 0..0;
    }
    start as u64..end as u64
}

/// The bytes of chunks `numbers` of `chunks`, read in one go.
fn read_chunks(
    chunks: &[Chunk],
    numbers: &Range<u64>,
    read: &mut impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    what: &str,
) -> Result<Vec<u8>, PatchError> {
    let range = chunks
        .get(to_usize(numbers.start)..to_usize(numbers.end))
        .unwrap_or_default();
    read_range(range, read).map_err(|source| PatchError::Io {
        what: what.into(),
        source,
    })
}

fn read_range(
    chunks: &[Chunk],
    read: &mut impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<Vec<u8>> {
    let (Some(first), Some(last)) = (chunks.first(), chunks.last()) else {
        return Ok(Vec::new());
    };
    let mut buf = vec![0u8; to_usize(last.end() - first.offset)];
    read(first.offset, &mut buf)?;
    Ok(buf)
}

/// Positions of the window's chunks (`lens`: their lengths, in window order) that `frame`
/// decodes to `target` without: zeros there give the same output. Greedy, a group of chunks at a
/// time, then each chunk of a group that is needed; every step decodes with all the zeros so
/// far, so the answer holds as a whole. `window` is left with those chunks zeroed.
fn not_needed(frame: &[u8], window: &mut [u8], lens: &[usize], target: &[u8]) -> Vec<Range<u64>> {
    const GROUP: usize = 8;
    let mut out = Vec::with_capacity(target.len());
    let mut decodes_to_target = |window: &[u8]| {
        out.clear();
        let mut dctx = zstd_safe::DCtx::create();
        dctx.ref_prefix(window).is_ok()
            && dctx.decompress(&mut out, frame).is_ok()
            && out.as_slice() == target
    };
    let starts: Vec<usize> = lens
        .iter()
        .scan(0, |at, &len| {
            let start = *at;
            *at += len;
            Some(start)
        })
        .collect();
    let span = |from: usize, to: usize| starts[from]..starts[to - 1] + lens[to - 1];
    let mut zero = vec![false; lens.len()];
    // Tries zeros over chunks `from..to`; keeps them if the frame still decodes to the target.
    let mut try_zero = |from: usize, to: usize, window: &mut [u8], zero: &mut [bool]| {
        let range = span(from, to);
        if window[range.clone()].iter().all(|&b| b == 0) {
            zero[from..to].fill(true);
            return true;
        }
        let saved = window[range.clone()].to_vec();
        window[range.clone()].fill(0);
        if decodes_to_target(window) {
            zero[from..to].fill(true);
            true
        } else {
            window[range].copy_from_slice(&saved);
            false
        }
    };
    let mut from = 0;
    while from < lens.len() {
        let to = (from + GROUP).min(lens.len());
        if !try_zero(from, to, window, &mut zero) && to - from > 1 {
            for one in from..to {
                try_zero(one, one + 1, window, &mut zero);
            }
        }
        from = to;
    }
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for (i, _) in zero.iter().enumerate().filter(|(_, z)| **z) {
        match ranges.last_mut() {
            Some(r) if r.end == i as u64 => r.end += 1,
            _ => ranges.push(i as u64..i as u64 + 1),
        }
    }
    ranges
}

fn encode(target: &[u8], window: &[u8]) -> Result<Vec<u8>, String> {
    let name = |code| zstd_safe::get_error_name(code).to_string();
    // A context per frame: a referenced prefix borrows the window for the context's life.
    let mut cctx = zstd_safe::CCtx::create();
    cctx.set_parameter(zstd_safe::CParameter::CompressionLevel(LEVEL))
        .map_err(name)?;
    cctx.set_parameter(zstd_safe::CParameter::WindowLog(window_log(
        (window.len() + target.len()) as u64,
    )))
    .map_err(name)?;
    cctx.set_parameter(zstd_safe::CParameter::ContentSizeFlag(true))
        .map_err(name)?;
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(target.len()));
    cctx.ref_prefix(window).map_err(name)?;
    cctx.compress2(&mut out, target).map_err(name)?;
    Ok(out)
}

/// The zstd window log that covers `len` bytes (within zstd's limits).
fn window_log(len: u64) -> u32 {
    let bits = 64 - len.max(1).saturating_sub(1).leading_zeros();
    bits.clamp(10, 30)
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
