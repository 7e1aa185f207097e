//! Delta updates: build an image on the inactive partition from verified chunks (casync's format).
//!
//! Each image of a release may come with a casync blob index (`.caibx`, an ordinary TUF target,
//! so its length and hash are signed) naming the image's content-defined chunks by their
//! SHA-512/256, and a chunk store (`chunks/<first 4 hex>/<id>.cacnk`, zstd) shared by all releases.
//! The chain of trust runs timestamp -> snapshot -> targets -> index -> chunk ids -> chunk bytes:
//! every chunk is hashed against the signed index before it is written, wherever it came from.
//!
//! - [`index`]: the `.caibx` format, read (validating every field) and written;
//! - [`chunker`]: casync's buzhash chunker (same boundaries and ids as `casync make`);
//! - [`store`]: the chunk store, written by publishers and read, capped and verified, by hosts;
//! - [`plan`]: where each chunk of the new image comes from (zero, in place, seed, store);
//! - [`assemble`](mod@assemble): writing the image onto the inactive partition and reading it back;
//! - [`seed`]: the running partition's index (from the repository, a cache, or chunked here);
//! - [`region`]: bounded positional I/O on a partition.

pub mod assemble;
pub mod chunker;
pub mod index;
pub mod plan;
pub mod region;
pub mod seed;
pub mod stage;
pub mod store;

pub use assemble::{AssembleError, AssembleOptions, AssembleProgress, Assembled, assemble};
pub use chunker::{ChunkSizesError, Chunker};
pub use index::{BlobIndex, Chunk, ChunkId, ChunkSizes, IndexError};
pub use plan::{Plan, Tally};
pub use region::Region;
pub use store::{ChunkFetcher, StoreWriter};
