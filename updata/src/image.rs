//! Partition images as the reference builds them: lz4 frames with the frame parameters
//! `lz4 -9` writes (4 MiB independent blocks, a content checksum, no block checksums, no
//! content size), so any lz4 tool and any updater reads them.
//!
//! The blocks are compressed by `lz4_flex`'s fast compressor, not lz4's high-compression mode:
//! the frame is the same format and decodes identically, the compressed bytes differ (and are
//! somewhat larger than `lz4 -9`'s).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

use super::error::{Error, io};

/// The frame parameters of `lz4 -9`.
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
        let mut enc = FrameEncoder::with_frame_info(frame_info(), BufWriter::new(&*file));
        io::copy(&mut BufReader::with_capacity(1 << 20, input), &mut enc)
            .map_err(io("compressing", src))?;
        let mut out = enc.finish().map_err(|e| Error::Io {
            action: "compressing",
            path: src.to_owned(),
            source: io::Error::other(e),
        })?;
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
