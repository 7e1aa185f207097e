//! Delta updates: build an image on the inactive partition from verified chunks, in the casync
//! format of the [`casync`] crate (re-exported here as this module's `index`, `chunker`,
//! `store`, `plan`, `assemble`, `region` and `patch`).
//!
//! The chain of trust runs timestamp -> snapshot -> targets -> index -> chunk ids -> chunk bytes:
//! the index is a TUF target (its length and hash signed), and every chunk is hashed against it
//! before it is written, wherever it came from. What is the updater's own lives here:
//!
//! - [`seed`]: the running partition's index (from the repository, a cache, or chunked here);
//! - [`stage`]: staging one image from chunks, with the fallback to the full image, reading and
//!   writing the partitions through `bootpart::io` (the workspace's one partition-I/O stack).

pub use casync::{assemble, chunker, index, patch, plan, region, store};

mod partition;
pub mod seed;
pub mod stage;

pub use casync::{
    AssembleError, AssembleOptions, AssembleProgress, Assembled, Beside, BesideReport, BlobIndex,
    Chunk, ChunkFetcher, ChunkId, ChunkSizes, ChunkSizesError, Chunker, Device, IndexError, Plan,
    Region, StoreWriter, Tally,
};
