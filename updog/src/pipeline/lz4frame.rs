//! The parts of the LZ4 frame format the pipeline parses itself: the frame descriptor, block
//! headers and checksums, so that blocks can be handed to several decoder threads. Block
//! payloads are decoded with `lz4_flex::block`.
//!
//! Format facts (LZ4 Frame Format Description 1.6.x): magic `0x184D2204` (little endian); FLG
//! (version `01` in bits 7-6, independent blocks bit 5, block checksums bit 4, content size bit 3,
//! content checksum bit 2, reserved bit 1, dictionary id bit 0); BD (block max size in bits 6-4:
//! 4 = 64 KiB ... 7 = 4 MiB; other bits reserved); optional 8-byte content size; optional 4-byte
//! dictionary id; header checksum byte = second byte of xxh32(descriptor, seed 0). Then blocks: a
//! little-endian u32 size (bit 31: stored uncompressed; 0 = end mark), the data, an optional
//! xxh32 of the data; after the end mark an optional xxh32 of the whole content.

use thiserror::Error;
use xxhash_rust::xxh32::{Xxh32, xxh32};

/// The LZ4 frame magic number.
pub const MAGIC: u32 = 0x184D_2204;
/// Back-reference window of linked blocks.
pub const WINDOW: usize = 64 * 1024;

/// What was wrong with an lz4 frame. Offsets are in the compressed stream.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream does not start with the lz4 frame magic.
    #[error("not an lz4 frame: magic {found:#010x}, expected {MAGIC:#010x}")]
    BadMagic {
        /// What was found instead.
        found: u32,
    },
    /// FLG version bits are not `01`.
    #[error("unsupported lz4 frame version bits {0:#04b}")]
    UnsupportedVersion(u8),
    /// A reserved bit is set in FLG or BD.
    #[error("reserved bit set in the lz4 frame descriptor")]
    ReservedBits,
    /// The block max size code is not 4..=7.
    #[error("invalid lz4 block max size code {0}")]
    BadBlockSize(u8),
    /// The frame needs an external dictionary, which images never use.
    #[error("lz4 frame requires dictionary {0:#010x}; dictionaries are not supported")]
    DictionaryUnsupported(u32),
    /// The frame descriptor checksum is wrong.
    #[error("lz4 frame header checksum mismatch (found {found:#04x}, computed {computed:#04x})")]
    HeaderChecksum {
        /// Stored value.
        found: u8,
        /// Computed value.
        computed: u8,
    },
    /// A block's stored size exceeds the frame's block max size.
    #[error(
        "lz4 block {index} at offset {offset} claims {size} bytes, more than the frame's maximum {max}"
    )]
    BlockTooLarge {
        /// Block number (0-based).
        index: u64,
        /// Offset of its header.
        offset: u64,
        /// Claimed size.
        size: u32,
        /// Block max size.
        max: usize,
    },
    /// A block checksum does not match.
    #[error("lz4 block {index} checksum mismatch")]
    BlockChecksum {
        /// Block number (0-based).
        index: u64,
    },
    /// A block failed to decode.
    #[error("lz4 block {index} is corrupt: {reason}")]
    Corrupt {
        /// Block number (0-based).
        index: u64,
        /// The decoder's message.
        reason: String,
    },
    /// The stream ended inside the frame.
    #[error("lz4 stream truncated at offset {offset} while reading {what}")]
    Truncated {
        /// Bytes consumed when the stream ended.
        offset: u64,
        /// What was being read.
        what: &'static str,
    },
    /// Bytes follow the end of the frame.
    #[error(
        "data after the end of the lz4 frame at offset {offset}{}",
        if *.second_frame { " (a second lz4 frame; concatenated frames are not accepted)" } else { "" }
    )]
    TrailingData {
        /// Where the extra data starts.
        offset: u64,
        /// Whether it looks like another frame.
        second_frame: bool,
    },
    /// The content checksum does not match.
    #[error("lz4 content checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ContentChecksum {
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// The decoded size differs from the content size in the header.
    #[error("lz4 frame declares {declared} bytes of content but decodes to {actual}")]
    ContentSize {
        /// From the frame header.
        declared: u64,
        /// Decoded (so far, when larger).
        actual: u64,
    },
}

/// A parsed frame descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Blocks do not reference earlier blocks.
    pub independent: bool,
    /// Each block is followed by an xxh32 of its data.
    pub block_checksums: bool,
    /// The content ends with an xxh32 of the whole decoded content.
    pub content_checksum: bool,
    /// Declared decoded size.
    pub content_size: Option<u64>,
    /// Maximum decoded (and stored) size of one block.
    pub block_max: usize,
}

impl FrameHeader {
    /// Bytes in the descriptor after the 4-byte magic and the FLG/BD bytes (content size and
    /// dictionary id fields, plus the header checksum byte), from the FLG byte.
    pub fn rest_len(flg: u8) -> usize {
        let mut n = 1; // HC
        if flg & 0b0000_1000 != 0 {
            n += 8;
        }
        if flg & 0b0000_0001 != 0 {
            n += 4;
        }
        n
    }

    /// Parse a descriptor: `desc` is FLG, BD, the optional fields and the HC byte (no magic).
    pub fn parse(desc: &[u8]) -> Result<Self, FrameError> {
        let [flg, bd, ..] = *desc else {
            return Err(FrameError::Truncated {
                offset: 4,
                what: "frame descriptor",
            });
        };
        if flg >> 6 != 0b01 {
            return Err(FrameError::UnsupportedVersion(flg >> 6));
        }
        if flg & 0b0000_0010 != 0 || bd & 0b1000_1111 != 0 {
            return Err(FrameError::ReservedBits);
        }
        let code = (bd >> 4) & 0b111;
        let block_max = match code {
            4 => 64 << 10,
            5 => 256 << 10,
            6 => 1 << 20,
            7 => 4 << 20,
            other => return Err(FrameError::BadBlockSize(other)),
        };
        if desc.len() != 2 + Self::rest_len(flg) {
            return Err(FrameError::Truncated {
                offset: 4,
                what: "frame descriptor",
            });
        }
        let mut pos = 2;
        let content_size = if flg & 0b0000_1000 != 0 {
            let v = u64::from_le_bytes(array8(&desc[pos..pos + 8]));
            pos += 8;
            Some(v)
        } else {
            None
        };
        if flg & 0b0000_0001 != 0 {
            let id = u32::from_le_bytes(array4(&desc[pos..pos + 4]));
            return Err(FrameError::DictionaryUnsupported(id));
        }
        let found = desc[pos];
        let computed = (xxh32(&desc[..pos], 0) >> 8) as u8;
        if found != computed {
            return Err(FrameError::HeaderChecksum { found, computed });
        }
        Ok(Self {
            independent: flg & 0b0010_0000 != 0,
            block_checksums: flg & 0b0001_0000 != 0,
            content_checksum: flg & 0b0000_0100 != 0,
            content_size,
            block_max,
        })
    }
}

/// Where the frame parser takes its bytes from: the caller's stream, whose own errors (a stop,
/// a read failure) pass through as `Self::Error`.
pub trait FrameInput {
    /// The stream's error; frame errors convert into it.
    type Error: From<FrameError>;
    /// Fill `dst`; a [`FrameError::Truncated`] naming `what` if the stream ends first.
    fn read_exact(&mut self, dst: &mut [u8], what: &'static str) -> Result<(), Self::Error>;
    /// Bytes consumed so far.
    fn consumed(&self) -> u64;
    /// A little-endian `u32`.
    fn read_u32(&mut self, what: &'static str) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }
}

/// Read the magic and the frame descriptor.
pub fn read_header<I: FrameInput>(input: &mut I) -> Result<FrameHeader, I::Error> {
    let magic = input.read_u32("frame magic")?;
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic }.into());
    }
    let mut desc = [0u8; 15];
    input.read_exact(&mut desc[..2], "frame descriptor")?;
    let rest = FrameHeader::rest_len(desc[0]);
    input.read_exact(&mut desc[2..2 + rest], "frame descriptor")?;
    Ok(FrameHeader::parse(&desc[..2 + rest])?)
}

/// A block header: where its data is and how it is stored.
#[derive(Debug, Clone, Copy)]
pub struct BlockHeader {
    /// Block number in the frame.
    pub index: u64,
    /// Length of its data (at most the frame's block max size).
    pub len: usize,
    /// Stored without compression.
    pub uncompressed: bool,
}

impl FrameHeader {
    /// Read block `index`'s header; `None` at the end mark.
    pub fn read_block<I: FrameInput>(
        &self,
        input: &mut I,
        index: u64,
    ) -> Result<Option<BlockHeader>, I::Error> {
        let at = input.consumed();
        let word = input.read_u32("block header")?;
        if word == 0 {
            return Ok(None);
        }
        let size = word & 0x7FFF_FFFF;
        let len = size as usize;
        if len > self.block_max {
            return Err(FrameError::BlockTooLarge {
                index,
                offset: at,
                size,
                max: self.block_max,
            }
            .into());
        }
        Ok(Some(BlockHeader {
            index,
            len,
            uncompressed: word & 0x8000_0000 != 0,
        }))
    }

    /// Read the checksum that follows a block's data, when the frame has them.
    pub fn read_block_checksum<I: FrameInput>(
        &self,
        input: &mut I,
    ) -> Result<Option<u32>, I::Error> {
        if self.block_checksums {
            input.read_u32("block checksum").map(Some)
        } else {
            Ok(None)
        }
    }

    /// Read what follows the end mark.
    pub fn read_end<I: FrameInput>(&self, input: &mut I) -> Result<FrameEnd, I::Error> {
        let content_checksum = if self.content_checksum {
            Some(input.read_u32("content checksum")?)
        } else {
            None
        };
        Ok(FrameEnd { content_checksum })
    }
}

/// What the end of the frame says.
#[derive(Debug, Clone, Copy)]
pub struct FrameEnd {
    /// The stored xxh32 of the content, when the frame has one.
    pub content_checksum: Option<u32>,
}

/// Whether the bytes after a frame start like another frame.
pub fn starts_a_frame(rest: &[u8]) -> bool {
    rest.get(..4) == Some(&MAGIC.to_le_bytes()[..])
}

/// The checks on the decoded content, in frame order: the declared content size and the
/// content checksum.
pub struct ContentCheck {
    declared: Option<u64>,
    checksum: Option<Xxh32>,
    total: u64,
}

impl ContentCheck {
    /// The checks `header` asks for.
    pub fn new(header: &FrameHeader) -> Self {
        Self {
            declared: header.content_size,
            checksum: header.content_checksum.then(|| Xxh32::new(0)),
            total: 0,
        }
    }

    /// The next decoded bytes; an error as soon as they pass the declared content size.
    pub fn update(&mut self, data: &[u8]) -> Result<(), FrameError> {
        self.total += data.len() as u64;
        if let Some(declared) = self.declared {
            if self.total > declared {
                return Err(FrameError::ContentSize {
                    declared,
                    actual: self.total,
                });
            }
        }
        if let Some(h) = self.checksum.as_mut() {
            h.update(data);
        }
        Ok(())
    }

    /// At the end of the frame: the stored checksum and the declared size must match. Returns
    /// the decoded length.
    pub fn finish(&self, end: FrameEnd) -> Result<u64, FrameError> {
        if let (Some(stored), Some(h)) = (end.content_checksum, self.checksum.as_ref()) {
            let computed = h.digest();
            if stored != computed {
                return Err(FrameError::ContentChecksum { stored, computed });
            }
        }
        if let Some(declared) = self.declared {
            if self.total != declared {
                return Err(FrameError::ContentSize {
                    declared,
                    actual: self.total,
                });
            }
        }
        Ok(self.total)
    }
}

/// A block inside a decode job's compressed buffer.
#[derive(Debug, Clone, Copy)]
pub struct BlockRef {
    /// Block number in the frame.
    pub index: u64,
    /// Start of its data in the job buffer.
    pub start: usize,
    /// Length of its data.
    pub len: usize,
    /// Stored without compression.
    pub uncompressed: bool,
    /// Its xxh32, when the frame carries block checksums.
    pub checksum: Option<u32>,
}

/// Decode one block into `out` (which holds at least `block_max` bytes), with `dict` the
/// preceding content for linked blocks (empty for independent blocks). Returns the decoded
/// length.
pub fn decode_block(
    block: &BlockRef,
    data: &[u8],
    out: &mut [u8],
    dict: &[u8],
) -> Result<usize, FrameError> {
    if let Some(expected) = block.checksum {
        if xxh32(data, 0) != expected {
            return Err(FrameError::BlockChecksum { index: block.index });
        }
    }
    if block.uncompressed {
        let Some(dst) = out.get_mut(..data.len()) else {
            return Err(FrameError::Corrupt {
                index: block.index,
                reason: "stored block larger than the output buffer".into(),
            });
        };
        dst.copy_from_slice(data);
        return Ok(data.len());
    }
    let r = if dict.is_empty() {
        lz4_flex::block::decompress_into(data, out)
    } else {
        lz4_flex::block::decompress_into_with_dict(data, out, dict)
    };
    r.map_err(|e| FrameError::Corrupt {
        index: block.index,
        reason: e.to_string(),
    })
}

/// Decodes runs of consecutive blocks into output buffers; for linked blocks it keeps the last
/// [`WINDOW`] bytes of content as the next block's dictionary.
#[derive(Debug, Default)]
pub struct BlockDecoder {
    linked: bool,
    block_max: usize,
    /// Linked blocks: the last WINDOW bytes of decoded content.
    window: Vec<u8>,
    /// Linked blocks: a dictionary spanning the previous window and this run's output.
    scratch: Vec<u8>,
}

impl BlockDecoder {
    /// A decoder for the blocks of a frame with `header`.
    pub fn new(header: &FrameHeader) -> Self {
        Self {
            linked: !header.independent,
            block_max: header.block_max,
            window: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Decode `blocks` (whose data is in `comp`) one after the other into `out`, which must
    /// hold `blocks.len()` times the block max size. Returns the decoded length.
    pub fn decode(
        &mut self,
        blocks: &[BlockRef],
        comp: &[u8],
        out: &mut [u8],
    ) -> Result<usize, FrameError> {
        let mut pos = 0usize;
        for b in blocks {
            let data = comp
                .get(b.start..b.start + b.len)
                .ok_or_else(|| FrameError::Corrupt {
                    index: b.index,
                    reason: "block outside its job buffer".into(),
                })?;
            let end = (pos + self.block_max).min(out.len());
            let n = if !self.linked || (pos == 0 && self.window.is_empty()) {
                decode_block(b, data, &mut out[pos..end], &[])?
            } else if pos >= WINDOW {
                let (before, after) = out.split_at_mut(pos);
                let dict = &before[pos - WINDOW..];
                decode_block(b, data, &mut after[..end - pos], dict)?
            } else {
                // The dictionary spans the previous runs' window and this run's output.
                self.scratch.clear();
                let keep = self.window.len().min(WINDOW - pos);
                self.scratch
                    .extend_from_slice(&self.window[self.window.len() - keep..]);
                self.scratch.extend_from_slice(&out[..pos]);
                decode_block(b, data, &mut out[pos..end], &self.scratch)?
            };
            pos += n;
        }
        if self.linked {
            if pos >= WINDOW {
                self.window.clear();
                self.window.extend_from_slice(&out[pos - WINDOW..pos]);
            } else {
                self.window.extend_from_slice(&out[..pos]);
                let excess = self.window.len().saturating_sub(WINDOW);
                self.window.drain(..excess);
            }
        }
        Ok(pos)
    }
}

fn array4(s: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    a
}

fn array8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(flg: u8, bd: u8, extra: &[u8]) -> Vec<u8> {
        let mut d = vec![flg, bd];
        d.extend_from_slice(extra);
        let hc = (xxh32(&d, 0) >> 8) as u8;
        d.push(hc);
        d
    }

    #[test]
    fn parses_the_lz4_cli_default_descriptor() {
        // lz4 CLI default: version 01, independent blocks, content checksum; 4 MiB blocks.
        let h = FrameHeader::parse(&desc(0x64, 0x70, &[])).unwrap();
        assert!(h.independent && h.content_checksum && !h.block_checksums);
        assert_eq!(h.block_max, 4 << 20);
        assert_eq!(h.content_size, None);
    }

    #[test]
    fn rejects_bad_descriptors() {
        assert_eq!(
            FrameHeader::parse(&desc(0x24, 0x70, &[])),
            Err(FrameError::UnsupportedVersion(0))
        );
        assert_eq!(
            FrameHeader::parse(&desc(0x66, 0x70, &[])),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            FrameHeader::parse(&desc(0x64, 0x30, &[])),
            Err(FrameError::BadBlockSize(3))
        );
        assert_eq!(
            FrameHeader::parse(&desc(0x65, 0x70, &[1, 2, 3, 4])),
            Err(FrameError::DictionaryUnsupported(0x0403_0201))
        );
        let mut d = desc(0x6C, 0x40, &7u64.to_le_bytes());
        let h = FrameHeader::parse(&d).unwrap();
        assert_eq!(h.content_size, Some(7));
        *d.last_mut().unwrap() ^= 1;
        assert!(matches!(
            FrameHeader::parse(&d),
            Err(FrameError::HeaderChecksum { .. })
        ));
    }
}
