//! Block I/O: the [`BlockIo`] trait the GPT code uses, bounded partition writers and readers,
//! and aligned buffers for direct I/O.

mod aligned;
mod block;
mod partition;

pub use aligned::AlignedBuf;
pub use block::{BlockIo, MemDisk};
pub use partition::{CHUNK, DIRECT_ALIGN, IoMode, PartitionReader, PartitionWriter};
