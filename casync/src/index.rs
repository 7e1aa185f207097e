//! casync blob indexes (`.caibx`): which chunks, in which order, make up an image.
//!
//! The layout (all integers little-endian, facts from casync's `caformat.h`):
//!
//! ```text
//! INDEX  header: size = 48, type = CA_FORMAT_INDEX
//!        feature_flags (must include CA_FORMAT_SHA512_256), chunk_size_min, _avg, _max
//! TABLE  header: size = u64::MAX (written before the table length is known), type = CA_FORMAT_TABLE
//!        items: { end offset of the chunk in the blob: u64, chunk id: 32 bytes } ...
//!        tail:  { 0: u64, 0: u64, index_offset = 48, table size: u64, CA_FORMAT_TABLE_TAIL_MARKER }
//! ```
//!
//! [`BlobIndex::parse`] checks every one of those fields, that end offsets strictly increase,
//! that no chunk is longer than the index's maximum, and that nothing follows the tail; it
//! allocates only in proportion to the bytes it was given, so a hostile file cannot make it
//! reserve more than its own size. [`BlobIndex::to_bytes`] writes the same layout, with the flags
//! `casync make` writes for a blob, so our index of an image is byte-identical to casync's.

use std::fmt;

use sha2::{Digest, Sha512_256};

/// Length of a chunk id (SHA-512/256).
pub const CHUNK_ID_LEN: usize = 32;

const INDEX_MAGIC: u64 = 0x9682_4d9c_7b12_9ff9;
const TABLE_MAGIC: u64 = 0xe75b_9e11_2f17_417d;
const TABLE_TAIL_MARKER: u64 = 0x4b4f_050e_5549_ecd1;

/// Feature flag: chunk ids are SHA-512/256 (without it they would be SHA-256).
pub const FLAG_SHA512_256: u64 = 0x2000_0000_0000_0000;
/// Feature flags casync sets on a blob index besides the digest: "exclude nodump" and "exclude
/// file" (meaningless for a blob, but part of what `casync make` writes).
const FLAGS_BLOB_EXCLUDES: u64 = 0x8000_0000_0000_0000 | 0x1000_0000_0000_0000;
/// Every feature flag casync knows: the `WITH_*` bits (0x1 ..= 0x1_0000_0000) and the four top bits.
const FLAGS_KNOWN: u64 = 0x1_ffff_ffff | 0xf000_0000_0000_0000;

/// casync's absolute limits on chunk sizes.
pub const CHUNK_SIZE_LIMIT_MAX: u64 = 128 * 1024 * 1024;

const INDEX_HEADER_LEN: usize = 48;
const TABLE_HEADER_LEN: usize = 16;
const ITEM_LEN: usize = 8 + CHUNK_ID_LEN;
const TAIL_LEN: usize = ITEM_LEN;
/// Size of an index with no chunks.
const FIXED_LEN: usize = INDEX_HEADER_LEN + TABLE_HEADER_LEN + TAIL_LEN;

/// A chunk id: the SHA-512/256 of the chunk's uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; CHUNK_ID_LEN]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(Sha512_256::digest(data).into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<ChunkId> {
        let mut id = [0u8; CHUNK_ID_LEN];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(ChunkId(id))
    }

    /// The id as 64 lower-case hex digits (how stores name chunk files).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

/// The chunk size parameters an index was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    /// Smallest chunk the chunker cuts (the last chunk of a blob may be shorter).
    pub min: u64,
    /// Target average.
    pub avg: u64,
    /// Largest chunk; no chunk in a valid index is longer.
    pub max: u64,
}

impl ChunkSizes {
    /// casync's defaults, which we use everywhere: 16 / 64 / 256 KiB.
    pub const CASYNC_DEFAULT: ChunkSizes = ChunkSizes {
        min: 16 * 1024,
        avg: 64 * 1024,
        max: 256 * 1024,
    };
}

/// One chunk of a blob: where it sits and what it must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Position of the chunk in the index (0-based).
    pub number: usize,
    /// Offset of its first byte in the blob.
    pub offset: u64,
    /// Its length in bytes (1 ..= the index's maximum chunk size).
    pub len: u32,
    /// Its id.
    pub id: ChunkId,
}

impl Chunk {
    /// Offset one past its last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// What is wrong with an index file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// Shorter than a header, table header and tail.
    #[error("chunk index is {0} bytes, too short to be a casync index")]
    TooShort(usize),
    /// The table's length is not a whole number of items.
    #[error("chunk index is {0} bytes: its table is not a whole number of 40-byte items")]
    Ragged(usize),
    /// A magic value or fixed field does not match.
    #[error("chunk index: {what} is {found:#x}, expected {expected:#x}")]
    BadField {
        /// Which field.
        what: &'static str,
        /// What the file has.
        found: u64,
        /// What the format requires.
        expected: u64,
    },
    /// The digest flag is not set: the ids would be SHA-256, which we do not accept.
    #[error(
        "chunk index feature flags {0:#x} lack CA_FORMAT_SHA512_256: only SHA-512/256 chunk ids are supported (make it with casync's default --digest=sha512-256)"
    )]
    NotSha512_256(u64),
    /// Feature flags casync does not define.
    #[error("chunk index feature flags {0:#x} have bits casync does not define")]
    UnknownFlags(u64),
    /// Chunk size parameters out of range or out of order.
    #[error(
        "chunk index sizes min {min} / avg {avg} / max {max} are invalid (need 1 <= min <= avg <= max <= {CHUNK_SIZE_LIMIT_MAX})"
    )]
    BadSizes {
        /// Declared minimum.
        min: u64,
        /// Declared average.
        avg: u64,
        /// Declared maximum.
        max: u64,
    },
    /// A chunk's end offset is not past the previous one's.
    #[error(
        "chunk index entry {number}: end offset {end} is not past the previous chunk's end {previous}"
    )]
    OffsetNotIncreasing {
        /// The entry.
        number: usize,
        /// Its end offset.
        end: u64,
        /// The previous entry's end offset.
        previous: u64,
    },
    /// A chunk is longer than the index's maximum.
    #[error("chunk index entry {number} is {len} bytes, over the index's maximum chunk size {max}")]
    ChunkTooLong {
        /// The entry.
        number: usize,
        /// Its length.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// The blob the index describes is not the size it must be.
    #[error("chunk index describes {found} bytes, expected {expected}")]
    WrongTotal {
        /// What the index adds up to.
        found: u64,
        /// What the caller expected.
        expected: u64,
    },
}

/// A parsed, validated casync blob index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobIndex {
    feature_flags: u64,
    sizes: ChunkSizes,
    /// (end offset, id) per chunk, end offsets strictly increasing.
    entries: Vec<(u64, ChunkId)>,
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn expect(what: &'static str, found: u64, expected: u64) -> Result<(), IndexError> {
    if found == expected {
        Ok(())
    } else {
        Err(IndexError::BadField {
            what,
            found,
            expected,
        })
    }
}

impl BlobIndex {
    /// Starts an index with casync's blob flags (SHA-512/256 ids) and `sizes`; add chunks with
    /// [`BlobIndex::push`].
    pub fn new(sizes: ChunkSizes) -> BlobIndex {
        BlobIndex {
            feature_flags: FLAG_SHA512_256 | FLAGS_BLOB_EXCLUDES,
            sizes,
            entries: Vec::new(),
        }
    }

    /// Appends a chunk of `len` bytes with id `id` at the end of the blob.
    pub fn push(&mut self, len: u64, id: ChunkId) {
        let end = self.total_len() + len;
        self.entries.push((end, id));
    }

    /// Parses and validates an index file.
    pub fn parse(bytes: &[u8]) -> Result<BlobIndex, IndexError> {
        let len = bytes.len();
        if len < FIXED_LEN {
            return Err(IndexError::TooShort(len));
        }
        let table_items = len - FIXED_LEN;
        if table_items % ITEM_LEN != 0 {
            return Err(IndexError::Ragged(len));
        }
        let count = table_items / ITEM_LEN;

        expect("index header size", le64(bytes, 0), INDEX_HEADER_LEN as u64)?;
        expect("index header type", le64(bytes, 8), INDEX_MAGIC)?;
        let feature_flags = le64(bytes, 16);
        if feature_flags & FLAG_SHA512_256 == 0 {
            return Err(IndexError::NotSha512_256(feature_flags));
        }
        if feature_flags & !FLAGS_KNOWN != 0 {
            return Err(IndexError::UnknownFlags(feature_flags));
        }
        let sizes = ChunkSizes {
            min: le64(bytes, 24),
            avg: le64(bytes, 32),
            max: le64(bytes, 40),
        };
        if !(1 <= sizes.min
            && sizes.min <= sizes.avg
            && sizes.avg <= sizes.max
            && sizes.max <= CHUNK_SIZE_LIMIT_MAX)
        {
            return Err(IndexError::BadSizes {
                min: sizes.min,
                avg: sizes.avg,
                max: sizes.max,
            });
        }
        expect("table header size", le64(bytes, 48), u64::MAX)?;
        expect("table header type", le64(bytes, 56), TABLE_MAGIC)?;

        let tail = &bytes[len - TAIL_LEN..];
        expect("table tail padding", le64(tail, 0), 0)?;
        expect("table tail padding", le64(tail, 8), 0)?;
        expect(
            "table tail index offset",
            le64(tail, 16),
            INDEX_HEADER_LEN as u64,
        )?;
        let table_len = (TABLE_HEADER_LEN + count * ITEM_LEN + TAIL_LEN) as u64;
        expect("table tail size", le64(tail, 24), table_len)?;
        expect("table tail marker", le64(tail, 32), TABLE_TAIL_MARKER)?;

        // `count` is derived from the length of bytes we already hold: the allocation is bounded.
        let mut entries = Vec::with_capacity(count);
        let mut previous = 0u64;
        let items = &bytes[INDEX_HEADER_LEN + TABLE_HEADER_LEN..len - TAIL_LEN];
        for (number, item) in items.chunks_exact(ITEM_LEN).enumerate() {
            let end = le64(item, 0);
            if end <= previous {
                return Err(IndexError::OffsetNotIncreasing {
                    number,
                    end,
                    previous,
                });
            }
            if end - previous > sizes.max {
                return Err(IndexError::ChunkTooLong {
                    number,
                    len: end - previous,
                    max: sizes.max,
                });
            }
            let mut id = [0u8; CHUNK_ID_LEN];
            id.copy_from_slice(&item[8..]);
            entries.push((end, ChunkId(id)));
            previous = end;
        }
        Ok(BlobIndex {
            feature_flags,
            sizes,
            entries,
        })
    }

    /// Writes the index in casync's format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let count = self.entries.len();
        let mut out = Vec::with_capacity(FIXED_LEN + count * ITEM_LEN);
        for v in [
            INDEX_HEADER_LEN as u64,
            INDEX_MAGIC,
            self.feature_flags,
            self.sizes.min,
            self.sizes.avg,
            self.sizes.max,
            u64::MAX,
            TABLE_MAGIC,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for (end, id) in &self.entries {
            out.extend_from_slice(&end.to_le_bytes());
            out.extend_from_slice(&id.0);
        }
        let table_len = (TABLE_HEADER_LEN + count * ITEM_LEN + TAIL_LEN) as u64;
        for v in [0, 0, INDEX_HEADER_LEN as u64, table_len, TABLE_TAIL_MARKER] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The feature flags.
    pub fn feature_flags(&self) -> u64 {
        self.feature_flags
    }

    /// The chunk size parameters.
    pub fn sizes(&self) -> ChunkSizes {
        self.sizes
    }

    /// How many chunks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index has no chunks (an empty blob).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The size of the blob: the end offset of the last chunk.
    pub fn total_len(&self) -> u64 {
        self.entries.last().map_or(0, |(end, _)| *end)
    }

    /// The longest chunk in the index (at most the declared maximum).
    pub fn longest_chunk(&self) -> u32 {
        self.chunks().map(|c| c.len).max().unwrap_or(0)
    }

    /// Checks that the index describes exactly `expected` bytes.
    pub fn check_total(&self, expected: u64) -> Result<(), IndexError> {
        let found = self.total_len();
        if found == expected {
            Ok(())
        } else {
            Err(IndexError::WrongTotal { found, expected })
        }
    }

    /// Chunk number `number`.
    pub fn chunk(&self, number: usize) -> Option<Chunk> {
        let (end, id) = *self.entries.get(number)?;
        let offset = match number {
            0 => 0,
            n => self.entries[n - 1].0,
        };
        Some(Chunk {
            number,
            offset,
            // Validated (parse) or built (push) with len <= max <= 128 MiB.
            len: (end - offset) as u32,
            id,
        })
    }

    /// The number of the chunk that starts at `offset`, if one does.
    pub fn chunk_at(&self, offset: u64) -> Option<usize> {
        let number = self.entries.partition_point(|&(end, _)| end <= offset);
        (self.chunk(number)?.offset == offset).then_some(number)
    }

    /// The chunks in blob order.
    pub fn chunks(&self) -> impl Iterator<Item = Chunk> + '_ {
        (0..self.entries.len()).filter_map(|n| self.chunk(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BlobIndex {
        let mut index = BlobIndex::new(ChunkSizes::CASYNC_DEFAULT);
        index.push(20_000, ChunkId::of(b"one"));
        index.push(70_000, ChunkId::of(b"two"));
        index.push(5, ChunkId::of(b"three"));
        index
    }

    fn set_u64(bytes: &mut [u8], at: usize, v: u64) {
        bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn round_trips() {
        let index = sample();
        let bytes = index.to_bytes();
        assert_eq!(bytes.len(), FIXED_LEN + 3 * ITEM_LEN);
        let parsed = BlobIndex::parse(&bytes).unwrap();
        assert_eq!(parsed, index);
        assert_eq!(parsed.total_len(), 90_005);
        let chunks: Vec<_> = parsed.chunks().collect();
        assert_eq!(chunks[1].offset, 20_000);
        assert_eq!(chunks[1].len, 70_000);
        assert_eq!(chunks[2].end(), 90_005);
        assert_eq!(chunks[2].id, ChunkId::of(b"three"));
        assert_eq!(parsed.longest_chunk(), 70_000);
        parsed.check_total(90_005).unwrap();
        assert!(matches!(
            parsed.check_total(90_006),
            Err(IndexError::WrongTotal {
                found: 90_005,
                expected: 90_006
            })
        ));
    }

    #[test]
    fn empty_index_round_trips() {
        let index = BlobIndex::new(ChunkSizes::CASYNC_DEFAULT);
        let parsed = BlobIndex::parse(&index.to_bytes()).unwrap();
        assert!(parsed.is_empty());
        assert_eq!(parsed.total_len(), 0);
    }

    #[test]
    fn refuses_each_bad_field() {
        let good = sample().to_bytes();
        let tail = good.len() - TAIL_LEN;
        let cases = [
            ("index header size", 0, 40),
            ("index header type", 8, 1),
            ("table header size", 48, 4096),
            ("table header type", 56, TABLE_TAIL_MARKER),
            ("table tail padding", tail, 1),
            ("table tail index offset", tail + 16, 0),
            ("table tail size", tail + 24, 1),
            ("table tail marker", tail + 32, 7),
        ];
        for (what, at, value) in cases {
            let mut bytes = good.clone();
            set_u64(&mut bytes, at, value);
            match BlobIndex::parse(&bytes) {
                Err(IndexError::BadField { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_sha256_ids_and_unknown_flags() {
        let mut bytes = sample().to_bytes();
        set_u64(&mut bytes, 16, FLAGS_BLOB_EXCLUDES);
        assert!(matches!(
            BlobIndex::parse(&bytes),
            Err(IndexError::NotSha512_256(_))
        ));
        let msg = BlobIndex::parse(&bytes).unwrap_err().to_string();
        assert!(msg.contains("CA_FORMAT_SHA512_256"), "{msg}");
        set_u64(&mut bytes, 16, FLAG_SHA512_256 | 0x0000_0100_0000_0000);
        assert!(matches!(
            BlobIndex::parse(&bytes),
            Err(IndexError::UnknownFlags(_))
        ));
    }

    #[test]
    fn refuses_bad_sizes() {
        for (min, avg, max) in [
            (0, 1, 1),
            (2, 1, 4),
            (1, 4, 2),
            (1, 1, CHUNK_SIZE_LIMIT_MAX + 1),
        ] {
            let mut bytes = sample().to_bytes();
            set_u64(&mut bytes, 24, min);
            set_u64(&mut bytes, 32, avg);
            set_u64(&mut bytes, 40, max);
            assert!(
                matches!(BlobIndex::parse(&bytes), Err(IndexError::BadSizes { .. })),
                "{min}/{avg}/{max}"
            );
        }
    }

    #[test]
    fn refuses_bad_offsets_and_long_chunks() {
        let first_item = INDEX_HEADER_LEN + TABLE_HEADER_LEN;
        let mut bytes = sample().to_bytes();
        // Second chunk ends where the first does.
        set_u64(&mut bytes, first_item + ITEM_LEN, 20_000);
        assert!(matches!(
            BlobIndex::parse(&bytes),
            Err(IndexError::OffsetNotIncreasing { number: 1, .. })
        ));
        let mut bytes = sample().to_bytes();
        // First chunk of zero length.
        set_u64(&mut bytes, first_item, 0);
        assert!(matches!(
            BlobIndex::parse(&bytes),
            Err(IndexError::OffsetNotIncreasing { number: 0, .. })
        ));
        let mut bytes = sample().to_bytes();
        // Second chunk longer than the 256 KiB maximum.
        set_u64(&mut bytes, first_item + ITEM_LEN, 20_000 + 256 * 1024 + 1);
        set_u64(
            &mut bytes,
            first_item + 2 * ITEM_LEN,
            20_000 + 256 * 1024 + 10,
        );
        assert!(matches!(
            BlobIndex::parse(&bytes),
            Err(IndexError::ChunkTooLong { number: 1, .. })
        ));
    }

    #[test]
    fn refuses_truncated_and_ragged_files() {
        let good = sample().to_bytes();
        assert!(matches!(
            BlobIndex::parse(&good[..50]),
            Err(IndexError::TooShort(50))
        ));
        assert!(matches!(
            BlobIndex::parse(&good[..good.len() - 1]),
            Err(IndexError::Ragged(_))
        ));
        // A whole item cut off: the tail no longer sits where the table says.
        let cut = good.len() - ITEM_LEN;
        let mut short = good[..cut - TAIL_LEN].to_vec();
        short.extend_from_slice(&good[good.len() - TAIL_LEN..]);
        assert!(matches!(
            BlobIndex::parse(&short),
            Err(IndexError::BadField {
                what: "table tail size",
                ..
            })
        ));
        // Trailing garbage after the tail.
        let mut long = good.clone();
        long.extend_from_slice(&[0u8; ITEM_LEN]);
        assert!(BlobIndex::parse(&long).is_err());
    }

    #[test]
    fn chunk_ids_print_as_hex() {
        let id = ChunkId::of(b"");
        let text = id.to_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(ChunkId::from_hex(&text), Some(id));
        assert_eq!(ChunkId::from_hex("xyz"), None);
        // SHA-512/256 of the empty string (FIPS 180-4 test vector).
        assert_eq!(
            text,
            "c672b8d1ef56ed28ab87c3622c5114069bdd3ad7b8f9737498d0c01ecef0967a"
        );
    }
}
