//! The crate's error type.

use std::io;
use std::path::PathBuf;

use crate::SetId;
use crate::gpt::GptError;
use crate::guid::PartitionType;

/// Errors from opening disks, finding partition sets, partition I/O and running-set discovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The disk (or image) could not be opened or inspected.
    #[error("{path}: {what}")]
    Io {
        /// The disk or file.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The GPT could not be read or written.
    #[error("{path}")]
    Gpt {
        /// The disk.
        path: PathBuf,
        /// The error.
        #[source]
        source: GptError,
    },
    /// The partitions do not form the expected A/B layout.
    #[error("{path}: {problem}")]
    Layout {
        /// The disk.
        path: PathBuf,
        /// What is wrong.
        problem: LayoutError,
    },
    /// The disk has only set A; set B was asked for.
    #[error(
        "the disk has only one partition set (A); set {wanted} does not exist (single-set mode)"
    )]
    SingleSet {
        /// The set asked for.
        wanted: SetId,
    },
    /// A write or read would pass the end of the partition; nothing was written.
    #[error(
        "partition {partition} ({kind}): {len} bytes at offset {offset} would pass its end at {capacity} bytes; nothing written"
    )]
    OutOfBounds {
        /// Partition number.
        partition: u32,
        /// Partition kind name.
        kind: &'static str,
        /// Offset within the partition.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Partition size in bytes.
        capacity: u64,
    },
    /// I/O on a partition failed.
    #[error("partition {partition} of {path}: {what}")]
    PartitionIo {
        /// Partition number.
        partition: u32,
        /// The disk.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Direct I/O was required but is not possible here.
    #[error("{path}: direct I/O not available for partition {partition}: {reason}")]
    DirectUnsupported {
        /// The disk.
        path: PathBuf,
        /// Partition number.
        partition: u32,
        /// Why.
        reason: String,
    },
    /// Which set is running could not be determined.
    #[error("cannot find the running partition set: {0}")]
    Running(String),
}

/// What is wrong with the partition layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A partition that the set needs is absent.
    #[error("set {set} has no {kind} partition")]
    Missing {
        /// The type.
        kind: PartitionType,
        /// The set.
        set: SetId,
    },
    /// A third partition of a per-set type: more than two sets.
    #[error(
        "partition {number} is a third {kind} partition: more than two partition sets (A and B) are not supported"
    )]
    TooManySets {
        /// The type.
        kind: PartitionType,
        /// The extra partition's number.
        number: u32,
    },
    /// A shared partition type appears more than once.
    #[error("partitions {first} and {second} are both {kind}; expected at most one")]
    Duplicate {
        /// The type.
        kind: PartitionType,
        /// First partition number.
        first: u32,
        /// Second partition number.
        second: u32,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
