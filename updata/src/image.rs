//! Partition images as the reference builds them: lz4 frames with the frame parameters
//! `lz4 -9` writes (4 MiB independent blocks, a content checksum, no block checksums, no
//! content size), so any lz4 tool and any updater reads them.
//!
//! The blocks are compressed by liblz4's high-compression mode at level 9 (through the `lz4`
//! crate, on the publisher's side only), as `lz4 -9` compresses them: the same size within a
//! fraction of a percent. Hosts decode with the pure-Rust `lz4_flex`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameInfo};

use super::error::{Error, io};

/// The compression level of `lz4 -9` (liblz4's high-compression mode).
pub const LEVEL: u32 = 9;

/// The frame parameters of `lz4 -9` (as `lz4_flex` names them; [`compress`] writes them with
/// liblz4).
pub fn frame_info() -> FrameInfo {
    FrameInfo::new()
        .block_size(BlockSize::Max4MB)
        .block_mode(BlockMode::Independent)
        .content_checksum(true)
        .block_checksums(false)
        .content_size(None)
}

/// Sizes of a compressed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compressed {
    /// Bytes of the lz4 frame.
    pub length: u64,
    /// Bytes it decodes to.
    pub decompressed_length: u64,
}

/// Compresses `src` into an lz4 frame at `dest`, atomically (a temporary file next to it,
/// fsynced, renamed into place). `dest` is replaced if it exists.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("boot.ext4"), vec![7u8; 100_000])?;
/// let c = updata::image::compress(
///     &dir.path().join("boot.ext4"),
///     &dir.path().join("boot.ext4.lz4"),
/// )?;
/// assert_eq!(c.decompressed_length, 100_000);
/// assert_eq!(updata::image::decoded_length(
///     std::fs::File::open(dir.path().join("boot.ext4.lz4"))?)?, 100_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn compress(src: &Path, dest: &Path) -> Result<Compressed, Error> {
    let input = File::open(src).map_err(io("opening the image", src))?;
    let decompressed_length = input.metadata().map_err(io("reading", src))?.len();
    let length = super::metadata::write_published(dest, |file| {
        let mut enc = lz4::EncoderBuilder::new()
            .block_size(lz4::BlockSize::Max4MB)
            .block_mode(lz4::BlockMode::Independent)
            .checksum(lz4::ContentChecksum::ChecksumEnabled)
            .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
            .level(LEVEL)
            .build(BufWriter::new(&*file))
            .map_err(io("compressing", src))?;
        io::copy(&mut BufReader::with_capacity(1 << 20, input), &mut enc)
            .map_err(io("compressing", src))?;
        let (mut out, finished) = enc.finish();
        finished.map_err(io("compressing", src))?;
        out.flush().map_err(io("writing", dest))?;
        drop(out);
        Ok(file.metadata().map_err(io("writing", dest))?.len())
    })?;
    Ok(Compressed {
        length,
        decompressed_length,
    })
}

/// Decodes an lz4 frame (content checksum verified) and returns how many bytes it holds.
pub fn decoded_length(input: impl Read) -> io::Result<u64> {
    io::copy(&mut FrameDecoder::new(input), &mut io::sink())
}
