//! casync chunk stores: `<store>/<first 4 hex of the id>/<id>.cacnk`, each chunk one or more
//! zstd frames of its uncompressed bytes.
//!
//! [`StoreWriter`] is the publisher's side (what `casync make --store` writes, shareable with
//! it). [`ChunkFetcher`] is the host's: chunks are not TUF targets, so nothing about a fetched
//! file is trusted until its decompressed bytes hash to the id the signed index names. Before
//! that, its compressed size is capped (read stops one byte past the cap) and it is decompressed
//! into a buffer of exactly the chunk's signed length, so a chunk that inflates past it is
//! refused without growing memory.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::index::{Chunk, ChunkId};
use tuf::transport::{Transport, TransportError};

/// zstd's frame magic number, little-endian on disk.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The compression level casync uses.
pub(crate) const LEVEL: i32 = 3;

/// The path of a chunk inside a store, relative to the store's root.
pub fn chunk_path(id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("{}/{hex}.cacnk", &hex[..4])
}

/// The largest compressed file accepted for a chunk of `len` bytes: zstd's worst case for that
/// input plus room for a few frame headers (other compressors may split a chunk into frames).
pub fn compressed_cap(len: u32) -> u64 {
    zstd::zstd_safe::compress_bound(len as usize) as u64 + 1024
}

/// Writes chunks into a store directory.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    root: PathBuf,
}

/// What [`StoreWriter::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The chunk was new; this many compressed bytes were written.
    Written(u64),
    /// The store already had it (chunks are shared by releases and variants).
    Present,
}

impl StoreWriter {
    /// A writer for the store at `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<StoreWriter> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(StoreWriter { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores `data` under `id` unless it is there already. The file appears whole or not at all
    /// (written to a temporary name, flushed, renamed), so an interrupted publish leaves no torn
    /// chunk behind.
    pub fn put(&self, id: &ChunkId, data: &[u8]) -> io::Result<Put> {
        let path = self.root.join(chunk_path(id));
        if path.exists() {
            return Ok(Put::Present);
        }
        let compressed = zstd::bulk::compress(data, LEVEL)?;
        let opts = atomic_write::AtomicWrite {
            create_dir: true,
            ..atomic_write::AtomicWrite::for_published_file()
        };
        atomic_write::write_bytes(&opts, &path, &compressed).map_err(|e| match e {
            atomic_write::AtomicWriteError::Io { source, .. }
            | atomic_write::AtomicWriteError::Fill(source) => source,
        })?;
        Ok(Put::Written(compressed.len() as u64))
    }
}

/// Why a chunk could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The store could not be reached or does not have the chunk.
    #[error("chunk {id}")]
    Transport {
        /// The chunk.
        id: ChunkId,
        /// What the transport said.
        #[source]
        source: Box<TransportError>,
    },
    /// Reading the body failed.
    #[error("chunk {id}: reading from the store")]
    Read {
        /// The chunk.
        id: ChunkId,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// The compressed file is larger than any honest compression of the chunk.
    #[error("chunk {id}: compressed file is over {cap} bytes, refused")]
    CompressedTooLarge {
        /// The chunk.
        id: ChunkId,
        /// The cap.
        cap: u64,
    },
    /// The file is not zstd.
    #[error("chunk {id}: not a zstd-compressed chunk (casync stores use zstd)")]
    NotZstd {
        /// The chunk.
        id: ChunkId,
    },
    /// Decompressing needs more room than the chunk's signed length, or the data is corrupt.
    #[error("chunk {id}: does not decompress to at most {len} bytes: {detail}")]
    Decompress {
        /// The chunk.
        id: ChunkId,
        /// The chunk's length in the signed index (the cap).
        len: u32,
        /// zstd's message.
        detail: String,
    },
    /// It decompressed, but to the wrong length.
    #[error("chunk {id}: decompressed to {found} bytes, the index says {expected}")]
    WrongLength {
        /// The chunk.
        id: ChunkId,
        /// Its decompressed length.
        found: usize,
        /// Its length in the index.
        expected: u32,
    },
    /// The bytes do not hash to the id.
    #[error("chunk {id}: its bytes hash to {found}, not to its id")]
    HashMismatch {
        /// The chunk.
        id: ChunkId,
        /// What they hash to.
        found: ChunkId,
    },
}

impl ChunkError {
    /// Whether the chunk did not arrive whole within its [`ChunkTimeLimit`] (a store that
    /// trickles: asking again would only wait as long again).
    pub fn is_too_slow(&self) -> bool {
        let too_slow =
            |e: &TransportError| matches!(e.kind, tuf::transport::TransportErrorKind::TooSlow(_));
        match self {
            ChunkError::Transport { source, .. } => too_slow(source),
            ChunkError::Read { source, .. } => {
                TransportError::from_io(source).is_some_and(too_slow)
            }
            _ => false,
        }
    }

    /// Whether the store does not have the chunk (HTTP 404 or no such file).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ChunkError::Transport { source, .. }
                if matches!(source.kind, tuf::transport::TransportErrorKind::NotFound)
        )
    }
}

/// Checks that `data` is chunk `chunk`: its length and its SHA-512/256.
pub fn verify_chunk(chunk: &Chunk, data: &[u8]) -> Result<(), ChunkError> {
    if data.len() != chunk.len as usize {
        return Err(ChunkError::WrongLength {
            id: chunk.id,
            found: data.len(),
            expected: chunk.len,
        });
    }
    let found = ChunkId::of(data);
    if found != chunk.id {
        return Err(ChunkError::HashMismatch {
            id: chunk.id,
            found,
        });
    }
    Ok(())
}

/// Decompresses a chunk file into `out` (cleared first; at most `chunk.len` bytes) and verifies it.
pub fn decode_chunk(chunk: &Chunk, compressed: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
    if !compressed.starts_with(&ZSTD_MAGIC) {
        return Err(ChunkError::NotZstd { id: chunk.id });
    }
    let mut decoder = zstd::bulk::Decompressor::new().map_err(|e| ChunkError::Decompress {
        id: chunk.id,
        len: chunk.len,
        detail: e.to_string(),
    })?;
    // The destination is exactly the chunk's signed length: zstd fails rather than write past it.
    out.clear();
    out.resize(chunk.len as usize, 0);
    let n = decoder
        .decompress_to_buffer(compressed, &mut out[..])
        .map_err(|e| ChunkError::Decompress {
            id: chunk.id,
            len: chunk.len,
            detail: e.to_string(),
        })?;
    out.truncate(n);
    verify_chunk(chunk, out)
}

/// Fetches chunks from a store over a [`Transport`] and verifies each against its id.
///
/// Share one fetcher (it is `Sync`) between several threads to have several chunks in flight;
/// the HTTP transport keeps its connections alive between requests.
#[derive(Clone)]
pub struct ChunkFetcher {
    transport: Arc<dyn Transport>,
    base: Url,
    time_limit: Option<ChunkTimeLimit>,
}

/// How long one chunk may take to arrive whole: `base` plus its largest accepted compressed
/// size at `min_rate` bytes per second. A store that trickles bytes (never silent long enough
/// for the transport's stall timeout) then fails the chunk instead of holding the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkTimeLimit {
    /// The fixed part (connecting, the response head).
    pub base: Duration,
    /// The slowest rate accepted, in bytes per second.
    pub min_rate: u64,
}

impl ChunkTimeLimit {
    /// The time a chunk of `len` (uncompressed) bytes may take.
    ///
    /// ```
    /// use std::time::Duration;
    /// use casync::store::{ChunkTimeLimit, compressed_cap};
    /// let limit = ChunkTimeLimit { base: Duration::from_secs(30), min_rate: 4096 };
    /// let cap = compressed_cap(65536);
    /// assert_eq!(limit.for_chunk(65536), Duration::from_secs(30 + cap.div_ceil(4096)));
    /// ```
    pub fn for_chunk(&self, len: u32) -> Duration {
        let secs = compressed_cap(len).div_ceil(self.min_rate.max(1));
        self.base.saturating_add(Duration::from_secs(secs))
    }
}

impl std::fmt::Debug for ChunkFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkFetcher")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl ChunkFetcher {
    /// A fetcher for the store at `base` (a trailing `/` is added if missing).
    pub fn new(transport: Arc<dyn Transport>, mut base: Url) -> ChunkFetcher {
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        ChunkFetcher {
            transport,
            base,
            time_limit: None,
        }
    }

    /// This fetcher with a time limit for each chunk (none by default: only the transport's
    /// stall timeout).
    pub fn with_time_limit(mut self, limit: ChunkTimeLimit) -> ChunkFetcher {
        self.time_limit = Some(limit);
        self
    }

    /// The store's URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of a chunk.
    pub fn url(&self, id: &ChunkId) -> Url {
        // A relative path of hex digits and one '/' always joins onto a base URL.
        self.base
            .join(&chunk_path(id))
            .unwrap_or_else(|_| self.base.clone())
    }

    /// Fetches `chunk` into `out` (replacing its contents) and verifies it. Returns the number of
    /// compressed bytes received.
    pub fn fetch(&self, chunk: &Chunk, out: &mut Vec<u8>) -> Result<u64, ChunkError> {
        let id = chunk.id;
        let url = self.url(&id);
        let body = match self.time_limit {
            Some(limit) => self
                .transport
                .fetch_within(&url, limit.for_chunk(chunk.len)),
            None => self.transport.fetch(&url),
        }
        .map_err(|source| ChunkError::Transport {
            id,
            source: Box::new(source),
        })?;
        let cap = compressed_cap(chunk.len);
        let mut compressed = Vec::new();
        body.take(cap + 1)
            .read_to_end(&mut compressed)
            .map_err(|source| ChunkError::Read { id, source })?;
        if compressed.len() as u64 > cap {
            return Err(ChunkError::CompressedTooLarge { id, cap });
        }
        decode_chunk(chunk, &compressed, out)?;
        Ok(compressed.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChunkSizes;
    use crate::index::BlobIndex;

    fn chunk_of(data: &[u8]) -> Chunk {
        let mut index = BlobIndex::new(ChunkSizes::CASYNC_DEFAULT);
        index.push(data.len() as u64, ChunkId::of(data));
        index.chunk(0).unwrap()
    }

    #[test]
    fn paths_follow_casync() {
        let id = ChunkId::of(b"x");
        let hex = id.to_hex();
        assert_eq!(chunk_path(&id), format!("{}/{hex}.cacnk", &hex[..4]));
    }

    #[test]
    fn writes_once_and_decodes_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreWriter::new(dir.path().join("chunks")).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let chunk = chunk_of(&data);
        assert!(matches!(
            store.put(&chunk.id, &data).unwrap(),
            Put::Written(_)
        ));
        assert_eq!(store.put(&chunk.id, &data).unwrap(), Put::Present);
        let file = fs::read(store.root().join(chunk_path(&chunk.id))).unwrap();
        assert!(file.starts_with(&ZSTD_MAGIC));
        let mut out = Vec::new();
        decode_chunk(&chunk, &file, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn refuses_what_is_not_the_chunk() {
        let data = vec![7u8; 50_000];
        let chunk = chunk_of(&data);
        let mut out = Vec::new();
        // Another chunk's bytes of the same length.
        let other = zstd::bulk::compress(&vec![8u8; 50_000], 3).unwrap();
        assert!(matches!(
            decode_chunk(&chunk, &other, &mut out),
            Err(ChunkError::HashMismatch { .. })
        ));
        // Shorter than the index says.
        let short = zstd::bulk::compress(&data[..49_999], 3).unwrap();
        assert!(matches!(
            decode_chunk(&chunk, &short, &mut out),
            Err(ChunkError::WrongLength { found: 49_999, .. })
        ));
        // Inflates past the chunk's length: refused, and the buffer never grew past it.
        let bomb = zstd::bulk::compress(&vec![7u8; 10 << 20], 19).unwrap();
        assert!(bomb.len() < 2000);
        let err = decode_chunk(&chunk, &bomb, &mut out).unwrap_err();
        assert!(matches!(err, ChunkError::Decompress { .. }), "{err}");
        assert!(out.capacity() < 60_000, "{}", out.capacity());
        // Not zstd at all.
        assert!(matches!(
            decode_chunk(&chunk, &data, &mut out),
            Err(ChunkError::NotZstd { .. })
        ));
    }
}
