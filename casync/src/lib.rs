//! The casync chunk format: build an image from verified chunks, as `casync` and `desync` do.
//!
//! An image comes with a casync blob index (`.caibx`) naming its content-defined chunks by their
//! SHA-512/256, and a chunk store (`chunks/<first 4 hex>/<id>.cacnk`, zstd) shared by all
//! releases. Nothing about a chunk is trusted until its decompressed bytes hash to the id the
//! index names; whoever trusts the index (an updater: because its length and hash are signed)
//! trusts what is assembled from it. This crate knows nothing of updates, releases or TUF
//! metadata; chunks are fetched through the `tuf` crate's [`tuf::transport::Transport`], the one
//! HTTP and file stack of the workspace.
//!
//! - [`index`]: the `.caibx` format, read (validating every field) and written;
//! - [`chunker`]: casync's buzhash chunker (same boundaries and ids as `casync make`);
//! - [`store`]: the chunk store, written by publishers and read, capped and verified, by hosts;
//! - [`plan`]: where each chunk of the new image comes from (zero, in place, seed, store);
//! - [`assemble`](mod@assemble): writing the image onto a partition and reading it back;
//! - [`region`]: bounded positional I/O on a partition: the [`Device`] trait assembly goes
//!   through, and [`Region`], a plain implementation;
//! - [`patch`]: new chunks encoded against a window of an older image's verified chunks.

pub mod assemble;
pub mod chunker;
pub mod index;
pub mod patch;
pub mod plan;
pub mod region;
pub mod store;
mod verify;

pub use assemble::{
    AssembleError, AssembleOptions, AssembleProgress, Assembled, Beside, BesideReport, assemble,
    assemble_beside,
};
pub use chunker::{ChunkSizesError, Chunker};
pub use index::{BlobIndex, Chunk, ChunkId, ChunkSizes, IndexError};
pub use plan::{Plan, Tally};
pub use region::{Device, DeviceReader, Region};
pub use store::{ChunkFetcher, StoreWriter};
