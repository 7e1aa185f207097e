//! Why staging failed.

use std::io;

use thiserror::Error;

use super::lz4frame::FrameError;

/// Why staging failed. Nothing is known about the partition's content after an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StageError {
    /// The cancellation handle was triggered.
    #[error("staging cancelled")]
    Cancelled,
    /// The source returned an error.
    #[error("reading the image stream failed after {offset} bytes")]
    Read {
        /// Bytes received before the error.
        offset: u64,
        /// The source's error.
        source: io::Error,
    },
    /// The stream has more bytes than the signed length.
    #[error("image stream is longer than its signed length of {expected} bytes")]
    TooLong {
        /// Signed length.
        expected: u64,
    },
    /// The stream ended before the signed length.
    #[error("image stream ended after {actual} bytes, its signed length is {expected}")]
    TooShort {
        /// Signed length.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// The stream's sha256 is not the signed one.
    #[error("image sha256 {actual} does not match the signed sha256 {expected}")]
    HashMismatch {
        /// Signed, hex.
        expected: String,
        /// Computed, hex.
        actual: String,
    },
    /// The (correctly signed) stream is not one valid lz4 frame.
    #[error("image is not a valid lz4 frame")]
    Frame(#[from] FrameError),
    /// The decoded image is larger than the partition; nothing was written past its end.
    #[error(
        "decoded image does not fit its {capacity}-byte partition (needs at least {needed} bytes)"
    )]
    TooLarge {
        /// Partition size.
        capacity: u64,
        /// Decoded size known so far (or declared).
        needed: u64,
    },
    /// Writing to the partition failed.
    #[error("writing {len} bytes at partition offset {offset} failed")]
    Write {
        /// Offset in the partition.
        offset: u64,
        /// Length of the write.
        len: usize,
        /// The I/O error.
        source: io::Error,
    },
    /// Flushing the partition failed.
    #[error("flushing the partition failed")]
    Sync {
        /// The I/O error.
        source: io::Error,
    },
    /// Reading the partition back failed.
    #[error("reading back the partition at offset {offset} failed")]
    ReadBack {
        /// Offset in the partition.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// What is on the partition is not what was written.
    #[error(
        "read-back of the partition does not match what was written \
         (xxh3-128 {actual:032x} on disk, {expected:032x} written)"
    )]
    ReadBackMismatch {
        /// Digest of the written bytes.
        expected: u128,
        /// Digest of the bytes read back.
        actual: u128,
    },
    /// A pipeline thread could not be started or ended unexpectedly.
    #[error("staging pipeline failed internally: {0}")]
    Internal(String),
}

impl StageError {
    /// Errors caused by the stream's content: the stream is still hashed to the end so that a
    /// tampered stream reports [`StageError::HashMismatch`] instead.
    pub(super) fn is_content(&self) -> bool {
        matches!(self, Self::Frame(_) | Self::TooLarge { .. })
    }
}
