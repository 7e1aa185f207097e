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
//! - [`store`]: the chunk store, written by publishers and read, capped and verified, by hosts.

pub mod chunker;
pub mod index;
pub mod store;

pub use chunker::Chunker;
pub use index::{BlobIndex, Chunk, ChunkId, ChunkSizes, IndexError};
