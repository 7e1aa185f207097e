//! Block I/O: the [`BlockIo`] trait the GPT code uses, bounded partition writers and readers
//! (the one partition-I/O stack: staging writes through it too), aligned buffers for direct
//! I/O, and the disk's direct-I/O alignment asked from the kernel.

mod aligned;
mod block;
mod device;
mod partition;

pub use aligned::AlignedBuf;
pub use block::{BlockIo, MemDisk};
pub use device::{DEFAULT_ALIGN, direct_alignment};
pub use partition::{CHUNK, DirectWriter, IoMode, PartitionReader, PartitionWriter};
