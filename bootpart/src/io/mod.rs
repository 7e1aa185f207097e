//! Block I/O: the [`BlockIo`] trait the GPT code uses, and (for images) bounded partition
//! writers and readers.

mod block;

pub use block::{BlockIo, MemDisk};
