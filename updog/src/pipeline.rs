//! The streaming image pipeline: bounded stages for reading, hashing, lz4 decoding and writing.
//!
//! [`stage_image`] takes the raw (compressed, unverified) image stream of one TUF target and
//! writes the decoded image onto a partition ([`Sink`]), verifying everything on the way:
//!
//! ```text
//! reader ──► sha256 ──► lz4 frame parser ──► decoder × N ──► in-order digest ──► writer
//! (source)   (signed    (header, block        (lz4_flex::block,  (xxh32 content   (aligned,
//!            length +    boundaries, trailing  independent blocks  checksum, xxh3   O_DIRECT,
//!            sha256)     data, truncation)     in parallel)        read-back digest) capacity)
//! ```
//!
//! (the writer keeps [`StageOptions::write_queue_depth`] direct writes in flight on extra I/O
//! threads when the sink offers a [`Sink::parallel_writer`]), then one `fdatasync`, then a
//! read-back of the written range (bypassing the page cache, hashed on a helper thread) compared
//! with the xxh3-128 digest computed while writing.
//!
//! The read-back overlaps the writes when the sink offers a [`Sink::read_back_handle`]: every
//! [`StageOptions::read_back_region`] bytes (at a page boundary) the writer announces a
//! checkpoint; a read-back thread waits until every write below it has returned, flushes
//! (`fdatasync`), then reads that range from the device and feeds it to one running xxh3-128.
//! The final flush covers the rest, which is read back last. So every byte is flushed before it
//! is read back, each byte is read back exactly once and in order, and the image is only
//! accepted when the digest of everything read back equals the digest of everything written.
//! The read-back thread holds one 4 MiB buffer.
//!
//! Frames with linked blocks decode on one thread, each block with the previous 64 KiB of output
//! as its dictionary (`lz4_flex::block::decompress_into_with_dict`), rather than through
//! `lz4_flex::frame::FrameDecoder`, so that both kinds of frame get the same strict parsing
//! (truncation, trailing data, checksums, content size).
//!
//! Each stage runs on its own thread; stages pass reusable buffers through bounded channels and
//! get them back through bounded pools, so memory is bounded by the buffers (a few tens of MiB
//! with the defaults, see [`StageOptions`]) whatever the image size.
//!
//! Guarantees: the call succeeds only if the stream's length and sha256 match `expected`, the
//! stream is exactly one valid lz4 frame (block and content checksums and the declared content
//! size checked when present; a truncated frame, a second frame or any other trailing byte is an
//! error), the decoded image fits the partition (nothing is ever written past its end), the
//! data was flushed, and the read-back matched. Data is written *before* the sha256 verdict is
//! known (that is what streaming means): callers must treat the partition as garbage unless this
//! returns `Ok`. When decoding fails, the rest of the stream is still read and hashed so that a
//! tampered image is reported as a hash mismatch rather than as a corrupt frame.
//!
//! The authenticity check is the signed sha256; the read-back digest is xxh3-128, which costs a
//! small fraction of sha256 (measured in `BENCHMARKS.md`).

mod lz4frame;
pub mod sink;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use thiserror::Error;
use xxhash_rust::xxh3::Xxh3;
use xxhash_rust::xxh32::Xxh32;

use bootpart::io::AlignedBuf;
pub use lz4frame::FrameError;
use lz4frame::{BlockRef, FrameHeader, WINDOW};
pub use sink::{IoMode, ParallelWrite, PartitionSink, ReadBack, Sink};

/// How often blocked stages look at the stop flags.
const TICK: Duration = Duration::from_millis(20);
/// Decoded bytes per decode job (and per write): large enough for efficient direct writes.
const JOB_CAP: usize = 4 << 20;
/// Read-back chunk size.
const READ_BACK_CHUNK: usize = 4 << 20;
/// Alignment of the pipeline's buffers: a page, which covers any disk's logical block size
/// up to 4096 (larger ones get aligned carry buffers).
const BUF_ALIGN: usize = sink::PAGE as usize;

/// A cancellation handle: clone it, hand one to [`StageOptions`], call [`CancelHandle::cancel`]
/// from anywhere (a signal handler thread, an agent's shutdown path). Staging checks it between
/// buffers and returns [`StageError::Cancelled`] promptly.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// A fresh, not cancelled handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wrap an existing flag (for example one registered with `signal_hook::flag::register`).
    pub fn from_flag(flag: Arc<AtomicBool>) -> Self {
        Self(flag)
    }

    /// Request cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the signed TUF target says about the compressed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedImage {
    /// Signed length of the compressed stream in bytes.
    pub length: u64,
    /// Signed sha256 of the compressed stream.
    pub sha256: [u8; 32],
}

impl ExpectedImage {
    /// From a length and a hex sha256 (as in TUF `targets.json`); `None` if the hex is not 32
    /// bytes.
    pub fn from_hex(length: u64, sha256_hex: &str) -> Option<Self> {
        let v = hex::decode(sha256_hex).ok()?;
        let sha256 = <[u8; 32]>::try_from(v.as_slice()).ok()?;
        Some(Self { length, sha256 })
    }
}

impl ExpectedImage {
    /// From a signed TUF target description; `None` when it lists no (well-formed) sha256.
    pub fn from_target(target: &crate::tuf::TargetDescription) -> Option<Self> {
        Some(Self {
            length: target.length,
            sha256: target.sha256()?,
        })
    }
}

/// Tuning and control for [`stage_image`]. The defaults suit images from the `lz4` CLI.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// Checked between buffers by every stage.
    pub cancel: CancelHandle,
    /// Decoder threads for frames with independent blocks; 0 = one per available core (at most
    /// 4). Linked-block frames always decode on one thread.
    pub decode_threads: usize,
    /// Size of one read from the source.
    pub read_chunk: usize,
    /// Number of read buffers in flight.
    pub read_buffers: usize,
    /// Decoded-output buffers per decoder thread (each 4 MiB).
    pub buffers_per_decoder: usize,
    /// Direct writes kept in flight at once when the sink offers a
    /// [`Sink::parallel_writer`] (1 = one at a time). Virtual and NVMe disks write faster with
    /// a few in flight (measured in `BENCHMARKS.md`).
    pub write_queue_depth: usize,
    /// How often the progress callback is called at most.
    pub progress_interval: Duration,
    /// Flush and read back the image in regions of about this many bytes while later regions
    /// are still being written (when the sink offers a [`Sink::read_back_handle`]); the final
    /// flush covers the rest. 0 = flush once and read everything back after the last write.
    pub read_back_region: u64,
}

impl Default for StageOptions {
    fn default() -> Self {
        Self {
            cancel: CancelHandle::new(),
            decode_threads: 0,
            read_chunk: 256 << 10,
            read_buffers: 8,
            buffers_per_decoder: 4,
            write_queue_depth: 2,
            progress_interval: Duration::from_millis(100),
            read_back_region: 32 << 20,
        }
    }
}

/// The step staging is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Receiving, verifying, decoding and writing.
    Writing,
    /// Flushing the partition (`fdatasync`).
    Syncing,
    /// Reading the partition back and comparing.
    Verifying,
}

/// A progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Current phase.
    pub phase: Phase,
    /// Bytes done in this phase: compressed bytes received while writing, bytes read back
    /// while verifying.
    pub done: u64,
    /// Bytes in this phase: the signed compressed length while writing, the decoded length
    /// while syncing and verifying.
    pub total: u64,
    /// Decoded bytes written to the partition so far.
    pub written: u64,
}

/// A successfully staged image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedImage {
    /// Compressed bytes received (equals the signed length).
    pub compressed_len: u64,
    /// Decoded bytes written at the start of the partition.
    pub decoded_len: u64,
    /// sha256 of the compressed stream (equals the signed one).
    pub sha256: [u8; 32],
    /// xxh3-128 of the decoded bytes, as written and as read back.
    pub digest: u128,
    /// Whether the writes bypassed the page cache.
    pub direct_io: bool,
}

/// Why staging failed. Nothing is known about the partition's content after an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StageError {
    /// The cancellation handle was triggered.
    #[error("staging cancelled")]
    Cancelled,
    /// The source returned an error.
    #[error("reading the image stream failed after {offset} bytes: {source}")]
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
    #[error("image is not a valid lz4 frame: {0}")]
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
    #[error("writing {len} bytes at partition offset {offset} failed: {source}")]
    Write {
        /// Offset in the partition.
        offset: u64,
        /// Length of the write.
        len: usize,
        /// The I/O error.
        source: io::Error,
    },
    /// Flushing the partition failed.
    #[error("flushing the partition failed: {source}")]
    Sync {
        /// The I/O error.
        source: io::Error,
    },
    /// Reading the partition back failed.
    #[error("reading back the partition at offset {offset} failed: {source}")]
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
    fn is_content(&self) -> bool {
        matches!(self, Self::Frame(_) | Self::TooLarge { .. })
    }
}

/// Stream `source` (the raw, compressed target) through verification and lz4 decoding onto
/// `sink`, flush, read back and compare. See the [module docs](self) for the guarantees.
///
/// `progress` is called on the calling thread, at most every `opts.progress_interval`, and once
/// at the start of each phase.
///
/// # Example
///
/// Stage the `root` image of a verified repository onto set B's ROOT partition:
///
/// ```no_run
/// use bootpart::{Disk, SetId};
/// use updog::pipeline::{ExpectedImage, IoMode, PartitionSink, StageOptions, stage_image};
///
/// # fn demo(repo: &updog::tuf::Repository) -> Result<(), Box<dyn std::error::Error>> {
/// let disk = Disk::open("/dev/nvme0n1")?;
/// let root_b = &disk.layout().set(SetId::B)?.root;
/// let (target, stream) = repo.fetch_target_unverified("root.ext4.lz4")?;
/// let expected = ExpectedImage::from_target(&target).ok_or("target has no sha256")?;
/// let mut sink = PartitionSink::open(&disk, root_b, IoMode::Auto)?;
/// let staged = stage_image(stream, &expected, &mut sink, &StageOptions::default(), &|p| {
///     eprintln!("{:?} {}/{}", p.phase, p.done, p.total);
/// })?;
/// println!("wrote {} bytes", staged.decoded_len);
/// # Ok(())
/// # }
/// ```
pub fn stage_image<S: Sink + ?Sized>(
    source: Box<dyn Read + Send>,
    expected: &ExpectedImage,
    sink: &mut S,
    opts: &StageOptions,
    progress: &dyn Fn(Progress),
) -> Result<StagedImage, StageError> {
    let shared = Arc::new(Shared::default());
    let (events_tx, events_rx) = mpsc::channel::<Event>();
    let capacity = sink.capacity();

    // Read buffers circulate reader -> hasher -> parser -> back to the pool.
    let read_chunk = opts.read_chunk.max(4096);
    let read_buffers = opts.read_buffers.max(2);
    let (pool_tx, pool_rx) = mpsc::sync_channel::<Vec<u8>>(read_buffers);
    for _ in 0..read_buffers {
        let _ = pool_tx.send(vec![0u8; read_chunk]);
    }
    let (raw_tx, raw_rx) = mpsc::sync_channel::<Chunk>(2);
    let (hashed_tx, hashed_rx) = mpsc::sync_channel::<Chunk>(2);

    // Reader and hasher own everything they touch, so they are detached threads: a source
    // blocked in `read` cannot hold up a cancellation.
    let reader = {
        let shared = Arc::clone(&shared);
        let length = expected.length;
        spawn_detached("updog-stage-read", move || {
            read_stage(source, length, &shared, &pool_rx, &raw_tx);
        })?
    };
    let hasher = {
        let shared = Arc::clone(&shared);
        let events = events_tx.clone();
        let expected = *expected;
        spawn_detached("updog-stage-sha256", move || {
            hash_stage(&expected, &shared, &raw_rx, &hashed_tx, &events);
        })?
    };

    let decode_threads = if opts.decode_threads == 0 {
        thread::available_parallelism().map_or(2, |n| n.get().min(4))
    } else {
        opts.decode_threads.min(64)
    };
    let direct_io = sink.is_direct();

    // The read-back of the regions flushed while later ones are written.
    let (checkpoint_tx, verifier) = match sink.read_back_handle() {
        Some(handle) if opts.read_back_region > 0 => {
            let (tx, rx) = mpsc::channel::<u64>();
            let shared = Arc::clone(&shared);
            let cancel = opts.cancel.clone();
            let v = spawn_detached_with("updog-stage-readback", move || {
                verify_stage(handle, &shared, &cancel, &rx)
            })?;
            (Some(tx), Some(v))
        }
        _ => (None, None),
    };

    let outcome = thread::scope(|s| -> Result<WriteDone, StageError> {
        let ctx = ParserCtx {
            shared: &shared,
            events: events_tx.clone(),
            capacity,
            decode_threads,
            buffers_per_decoder: opts.buffers_per_decoder.max(2),
            write_queue_depth: opts.write_queue_depth.clamp(1, 16),
            checkpoints: checkpoint_tx,
            read_back_region: opts.read_back_region,
        };
        let sink: &mut S = sink;
        let input = Input::new(hashed_rx, pool_tx, &shared);
        thread::Builder::new()
            .name("updog-stage-lz4".into())
            .spawn_scoped(s, move || parse_stage(s, ctx, input, sink))
            .map_err(|e| StageError::Internal(format!("cannot start a staging thread: {e}")))?;
        drop(events_tx);
        coordinate(expected, opts, &shared, &events_rx, progress)
            .inspect_err(|_| shared.abort.store(true, Ordering::SeqCst))
    });

    // The writer has hung up on the verifier: it finishes the regions announced so far (or
    // stops at once when staging failed).
    let verified = verifier.map(|v| {
        v.join()
            .map_err(|_| StageError::Internal("read-back thread panicked".into()))
    });
    let outcome = outcome?;
    // Both detached stages have finished once the hash verdict and the last write are in.
    let _ = reader.join();
    let _ = hasher.join();
    let (start, digest) = match verified {
        Some(v) => v??,
        None => (0, Xxh3::new()),
    };

    let total = outcome.decoded_len;
    progress(Progress {
        phase: Phase::Syncing,
        done: 0,
        total,
        written: total,
    });
    sink.sync().map_err(|source| StageError::Sync { source })?;
    let on_disk = read_back(sink, start, digest, total, opts, progress)?;
    if on_disk != outcome.digest {
        return Err(StageError::ReadBackMismatch {
            expected: outcome.digest,
            actual: on_disk,
        });
    }
    Ok(StagedImage {
        compressed_len: expected.length,
        decoded_len: total,
        sha256: expected.sha256,
        digest: outcome.digest,
        direct_io: direct_io && sink.is_direct(),
    })
}

/// State shared by all stages.
#[derive(Default)]
struct Shared {
    /// Stop everything now (cancelled, fatal error, or finished with an error).
    abort: AtomicBool,
    /// Stop decoding and writing, but keep reading and hashing to the end.
    stop_decode: AtomicBool,
    /// Compressed bytes received.
    received: AtomicU64,
    /// Decoded bytes written.
    written: AtomicU64,
    /// Which writes have returned.
    completed: Completion,
}

impl Shared {
    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
    fn decoding_stopped(&self) -> bool {
        self.aborted() || self.stop_decode.load(Ordering::Relaxed)
    }
}

/// Terminal reports from the stages to the coordinator.
enum Event {
    Hashed(Result<(), StageError>),
    Written(WriteDone),
    Failed(StageError),
}

#[derive(Debug, Clone, Copy)]
struct WriteDone {
    decoded_len: u64,
    digest: u128,
}

enum Chunk {
    Data(Vec<u8>, usize),
    End,
    Failed(io::Error),
}

fn spawn_detached(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<thread::JoinHandle<()>, StageError> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StageError::Internal(format!("cannot start a staging thread: {e}")))
}

fn spawn_detached_with<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>, StageError> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| StageError::Internal(format!("cannot start a staging thread: {e}")))
}

/// The prefix of the partition whose writes have all returned (writes finish out of order
/// when several are in flight).
#[derive(Default)]
struct Completion {
    state: std::sync::Mutex<CompletionState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct CompletionState {
    /// Every write below this offset has returned.
    prefix: u64,
    /// Returned writes past the prefix: start -> end.
    ahead: BTreeMap<u64, u64>,
}

impl Completion {
    /// The write of `[start, end)` returned successfully.
    fn done(&self, start: u64, end: u64) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.ahead.insert(start, end);
        loop {
            let prefix = st.prefix;
            match st.ahead.remove(&prefix) {
                Some(e) => st.prefix = e,
                None => break,
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Wait until every write below `upto` has returned; `false` when `stop` said so first.
    fn wait_for(&self, upto: u64, stop: impl Fn() -> bool) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        while st.prefix < upto {
            if stop() {
                return false;
            }
            st = match self.changed.wait_timeout(st, TICK) {
                Ok((st, _)) => st,
                Err(_) => return false,
            };
        }
        true
    }
}

/// Read back, while the writer goes on, each region the writer announces: wait until every
/// write below the announced offset has returned, `fdatasync`, then read the region from the
/// device and digest it. Returns how far it got and the running digest; stops early (with
/// what it has) when staging is aborted or cancelled.
fn verify_stage(
    mut handle: Box<dyn ReadBack>,
    shared: &Shared,
    cancel: &CancelHandle,
    checkpoints: &Receiver<u64>,
) -> Result<(u64, Xxh3), StageError> {
    let stop = || shared.aborted() || cancel.is_cancelled();
    let mut digest = Xxh3::new();
    let mut done = 0u64;
    let mut buf: Option<AlignedBuf> = None;
    while let Some(mut upto) = recv(checkpoints, stop) {
        // Catch up in one go when behind: one flush for all the announced regions.
        while let Ok(later) = checkpoints.try_recv() {
            upto = upto.max(later);
        }
        if upto <= done {
            continue;
        }
        if !shared.completed.wait_for(upto, stop) {
            break;
        }
        handle
            .sync_data()
            .map_err(|source| StageError::Sync { source })?;
        let buf = buf.get_or_insert_with(|| AlignedBuf::new(READ_BACK_CHUNK, BUF_ALIGN));
        while done < upto {
            if stop() {
                return Ok((done, digest));
            }
            let len =
                usize::try_from(upto - done).map_or(READ_BACK_CHUNK, |l| l.min(READ_BACK_CHUNK));
            let chunk = &mut buf[..][..len];
            handle
                .read_exact_at(chunk, done)
                .map_err(|source| StageError::ReadBack {
                    offset: done,
                    source,
                })?;
            digest.update(chunk);
            done += len as u64;
        }
    }
    Ok((done, digest))
}

/// Receive, looking at `stop` every tick; `None` when stopped or disconnected.
fn recv<T>(rx: &Receiver<T>, stop: impl Fn() -> bool) -> Option<T> {
    loop {
        match rx.recv_timeout(TICK) {
            Ok(v) => return Some(v),
            Err(RecvTimeoutError::Timeout) => {
                if stop() {
                    return None;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn coordinate(
    expected: &ExpectedImage,
    opts: &StageOptions,
    shared: &Shared,
    events: &Receiver<Event>,
    progress: &dyn Fn(Progress),
) -> Result<WriteDone, StageError> {
    let mut hashed: Option<()> = None;
    let mut written: Option<WriteDone> = None;
    let mut content_failure: Option<StageError> = None;
    let mut last = (0, 0);
    let mut last_report = Instant::now();
    let wait = opts
        .progress_interval
        .min(TICK)
        .max(Duration::from_millis(1));
    progress(Progress {
        phase: Phase::Writing,
        done: 0,
        total: expected.length,
        written: 0,
    });
    loop {
        match events.recv_timeout(wait) {
            Ok(Event::Hashed(Ok(()))) => hashed = Some(()),
            Ok(Event::Hashed(Err(e))) => return Err(e),
            Ok(Event::Written(w)) => written = Some(w),
            Ok(Event::Failed(e)) if e.is_content() => {
                shared.stop_decode.store(true, Ordering::SeqCst);
                content_failure.get_or_insert(e);
            }
            Ok(Event::Failed(e)) => return Err(e),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(content_failure.unwrap_or_else(|| {
                    StageError::Internal("staging threads ended without a result".into())
                }));
            }
        }
        if opts.cancel.is_cancelled() {
            return Err(StageError::Cancelled);
        }
        let now = (
            shared.received.load(Ordering::Relaxed),
            shared.written.load(Ordering::Relaxed),
        );
        let finished = hashed.is_some() && (written.is_some() || content_failure.is_some());
        if now != last && (last_report.elapsed() >= opts.progress_interval || finished) {
            progress(Progress {
                phase: Phase::Writing,
                done: now.0,
                total: expected.length,
                written: now.1,
            });
            last = now;
            last_report = Instant::now();
        }
        if hashed.is_some() {
            if let Some(e) = content_failure {
                return Err(e);
            }
            if let Some(w) = written {
                return Ok(w);
            }
        }
    }
}

fn read_stage(
    mut source: Box<dyn Read + Send>,
    length: u64,
    shared: &Shared,
    pool: &Receiver<Vec<u8>>,
    out: &SyncSender<Chunk>,
) {
    // Read at most one byte past the signed length, to tell "too long" from "exact".
    let limit = length.saturating_add(1);
    let mut total = 0u64;
    loop {
        let Some(mut buf) = recv(pool, || shared.aborted()) else {
            return;
        };
        let mut n = 0;
        let mut eof = false;
        while n < buf.len() && !eof {
            let left = usize::try_from(limit - total).unwrap_or(usize::MAX);
            let room = (buf.len() - n).min(left);
            if room == 0 {
                break;
            }
            match source.read(&mut buf[n..n + room]) {
                Ok(0) => eof = true,
                Ok(k) => {
                    let k = k.min(room);
                    n += k;
                    total += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if n > 0 && out.send(Chunk::Data(buf, n)).is_err() {
                        return;
                    }
                    let _ = out.send(Chunk::Failed(e));
                    return;
                }
            }
            if shared.aborted() {
                return;
            }
        }
        if n > 0 && out.send(Chunk::Data(buf, n)).is_err() {
            return;
        }
        if eof || total >= limit {
            let _ = out.send(Chunk::End);
            return;
        }
    }
}

fn hash_stage(
    expected: &ExpectedImage,
    shared: &Shared,
    input: &Receiver<Chunk>,
    out: &SyncSender<Chunk>,
    events: &Sender<Event>,
) {
    let mut sha = Sha256::new();
    let mut total = 0u64;
    // Once the parser is gone (aborted), keep nothing going.
    let mut parser_alive = true;
    loop {
        let Some(chunk) = recv(input, || shared.aborted()) else {
            return;
        };
        match chunk {
            Chunk::Data(buf, n) => {
                let data = buf.get(..n).unwrap_or(&[]);
                sha.update(data);
                total += n as u64;
                shared.received.store(total, Ordering::Relaxed);
                if total > expected.length {
                    let _ = events.send(Event::Hashed(Err(StageError::TooLong {
                        expected: expected.length,
                    })));
                    return;
                }
                if parser_alive && out.send(Chunk::Data(buf, n)).is_err() {
                    parser_alive = false;
                }
                if !parser_alive && shared.aborted() {
                    return;
                }
            }
            Chunk::End => {
                let verdict = if total == expected.length {
                    let actual: [u8; 32] = sha.finalize().into();
                    if actual == expected.sha256 {
                        Ok(())
                    } else {
                        Err(StageError::HashMismatch {
                            expected: hex::encode(expected.sha256),
                            actual: hex::encode(actual),
                        })
                    }
                } else {
                    Err(StageError::TooShort {
                        expected: expected.length,
                        actual: total,
                    })
                };
                let ok = verdict.is_ok();
                let _ = events.send(Event::Hashed(verdict));
                if ok && parser_alive {
                    let _ = out.send(Chunk::End);
                }
                return;
            }
            Chunk::Failed(source) => {
                let _ = events.send(Event::Failed(StageError::Read {
                    offset: total,
                    source,
                }));
                return;
            }
        }
    }
}

/// Why the parser stopped reading.
enum ParseStop {
    /// The frame is invalid (or too large): report and drain.
    Content(StageError),
    /// Abort, or decoding stopped because a later stage failed: drain (or quit on abort).
    Stopped,
}

impl From<FrameError> for ParseStop {
    fn from(e: FrameError) -> Self {
        Self::Content(StageError::Frame(e))
    }
}

/// The parser's view of the verified compressed stream.
struct Input<'a> {
    rx: Receiver<Chunk>,
    pool: SyncSender<Vec<u8>>,
    shared: &'a Shared,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
    consumed: u64,
    ended: bool,
}

impl<'a> Input<'a> {
    fn new(rx: Receiver<Chunk>, pool: SyncSender<Vec<u8>>, shared: &'a Shared) -> Self {
        Self {
            rx,
            pool,
            shared,
            cur: Vec::new(),
            len: 0,
            pos: 0,
            consumed: 0,
            ended: false,
        }
    }

    /// Make unread bytes available; `Ok(false)` at the end of the stream.
    fn fill(&mut self, draining: bool) -> Result<bool, ParseStop> {
        while self.pos >= self.len {
            if self.ended {
                return Ok(false);
            }
            let shared = self.shared;
            let stop = || {
                if draining {
                    shared.aborted()
                } else {
                    shared.decoding_stopped()
                }
            };
            if !draining && stop() {
                return Err(ParseStop::Stopped);
            }
            match recv(&self.rx, stop) {
                Some(Chunk::Data(buf, n)) => {
                    let old = std::mem::replace(&mut self.cur, buf);
                    if !old.is_empty() {
                        let _ = self.pool.try_send(old);
                    }
                    self.len = n.min(self.cur.len());
                    self.pos = 0;
                }
                Some(Chunk::End) => self.ended = true,
                // A read error is reported by the hasher.
                Some(Chunk::Failed(_)) | None => return Err(ParseStop::Stopped),
            }
        }
        Ok(true)
    }

    fn read_exact(&mut self, mut dst: &mut [u8], what: &'static str) -> Result<(), ParseStop> {
        while !dst.is_empty() {
            if !self.fill(false)? {
                return Err(FrameError::Truncated {
                    offset: self.consumed,
                    what,
                }
                .into());
            }
            let n = dst.len().min(self.len - self.pos);
            let (head, tail) = dst.split_at_mut(n);
            head.copy_from_slice(&self.cur[self.pos..self.pos + n]);
            dst = tail;
            self.pos += n;
            self.consumed += n as u64;
        }
        Ok(())
    }

    fn read_u32(&mut self, what: &'static str) -> Result<u32, ParseStop> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Consume and drop everything up to the end of the stream (so the hasher can finish).
    fn drain(&mut self) {
        while let Ok(true) = self.fill(true) {
            self.pos = self.len;
        }
    }
}

struct ParserCtx<'a> {
    shared: &'a Shared,
    events: Sender<Event>,
    capacity: u64,
    decode_threads: usize,
    buffers_per_decoder: usize,
    write_queue_depth: usize,
    /// Where the writer announces checkpoints (`None`: no read-back while writing).
    checkpoints: Option<Sender<u64>>,
    read_back_region: u64,
}

/// A decode job: several consecutive blocks whose decoded sizes fit one output buffer.
struct Job {
    comp: Vec<u8>,
    used: usize,
    blocks: Vec<BlockRef>,
}

/// What the end of the frame says.
#[derive(Clone, Copy)]
struct FrameEnd {
    content_checksum: Option<u32>,
}

enum Work {
    Job(Job),
    End(FrameEnd),
}

struct OutBuf {
    buf: AlignedBuf,
    owner: usize,
}

enum Decoded {
    Data(OutBuf, usize),
    End(FrameEnd),
}

enum WriteMsg {
    Data(OutBuf, usize),
    End(WriteDone),
}

fn parse_stage<'scope, 'env, S: Sink + ?Sized>(
    s: &'scope thread::Scope<'scope, 'env>,
    ctx: ParserCtx<'env>,
    mut input: Input<'env>,
    sink: &'env mut S,
) {
    let shared = ctx.shared;
    let events = ctx.events.clone();
    match parse_frame(s, ctx, &mut input, sink) {
        Ok(()) => {
            // Anything after the frame is an error, and an empty remainder must really be the
            // end of the stream.
            match input.fill(false) {
                Ok(false) => {}
                Ok(true) => {
                    let second_frame = input.len - input.pos >= 4
                        && input.cur[input.pos..input.pos + 4] == lz4frame::MAGIC.to_le_bytes();
                    let _ = events.send(Event::Failed(
                        FrameError::TrailingData {
                            offset: input.consumed,
                            second_frame,
                        }
                        .into(),
                    ));
                    input.drain();
                }
                Err(_) => input.drain(),
            }
        }
        Err(ParseStop::Content(e)) => {
            let _ = events.send(Event::Failed(e));
            input.drain();
        }
        Err(ParseStop::Stopped) => {
            if !shared.aborted() {
                input.drain();
            }
        }
    }
}

fn parse_frame<'scope, 'env, S: Sink + ?Sized>(
    s: &'scope thread::Scope<'scope, 'env>,
    ctx: ParserCtx<'env>,
    input: &mut Input<'env>,
    sink: &'env mut S,
) -> Result<(), ParseStop> {
    let magic = input.read_u32("frame magic")?;
    if magic != lz4frame::MAGIC {
        return Err(FrameError::BadMagic { found: magic }.into());
    }
    let mut desc = [0u8; 15];
    input.read_exact(&mut desc[..2], "frame descriptor")?;
    let rest = FrameHeader::rest_len(desc[0]);
    input.read_exact(&mut desc[2..2 + rest], "frame descriptor")?;
    let header = FrameHeader::parse(&desc[..2 + rest])?;
    if let Some(declared) = header.content_size {
        if declared > ctx.capacity {
            return Err(ParseStop::Content(StageError::TooLarge {
                capacity: ctx.capacity,
                needed: declared,
            }));
        }
    }

    let workers = if header.independent {
        ctx.decode_threads.max(1)
    } else {
        1
    };
    let blocks_per_job = (JOB_CAP / header.block_max).max(1);
    let job_cap = blocks_per_job * header.block_max;
    let shared = ctx.shared;

    // Jobs: parser -> worker -> back to the pool.
    let jobs = workers + 2;
    let (job_pool_tx, job_pool_rx) = mpsc::sync_channel::<Job>(jobs);
    for _ in 0..jobs {
        let _ = job_pool_tx.send(Job {
            comp: vec![0u8; job_cap],
            used: 0,
            blocks: Vec::with_capacity(blocks_per_job),
        });
    }
    // Decoded buffers: one pool per worker, returned by the writer.
    let mut out_pool_tx = Vec::with_capacity(workers);
    let mut work_tx = Vec::with_capacity(workers);
    let mut result_rx = Vec::with_capacity(workers);
    for id in 0..workers {
        let (ptx, prx) = mpsc::sync_channel::<AlignedBuf>(ctx.buffers_per_decoder);
        for _ in 0..ctx.buffers_per_decoder {
            let _ = ptx.send(AlignedBuf::new(job_cap, BUF_ALIGN));
        }
        out_pool_tx.push(ptx);
        let (wtx, wrx) = mpsc::sync_channel::<Work>(1);
        let (rtx, rrx) = mpsc::sync_channel::<Decoded>(1);
        work_tx.push(wtx);
        result_rx.push(rrx);
        let job_pool = job_pool_tx.clone();
        let events = ctx.events.clone();
        let block_max = header.block_max;
        let linked = !header.independent;
        spawn_scoped(s, "updog-stage-decode", move || {
            if let Err(e) = decode_stage(id, linked, block_max, shared, &wrx, &prx, &rtx, &job_pool)
            {
                let _ = events.send(Event::Failed(e.into()));
            }
        })
        .map_err(ParseStop::Content)?;
    }
    drop(job_pool_tx);
    let (write_tx, write_rx) = mpsc::sync_channel::<WriteMsg>(1);
    {
        let events = ctx.events.clone();
        spawn_scoped(s, "updog-stage-digest", move || {
            if let Err(e) = sequence_stage(&header, shared, &result_rx, &write_tx) {
                let _ = events.send(Event::Failed(e));
            }
        })
        .map_err(ParseStop::Content)?;
    }
    {
        let events = ctx.events.clone();
        let capacity = ctx.capacity;
        let write_queue_depth = ctx.write_queue_depth;
        let checkpoints = ctx.checkpoints.clone().map(|tx| Checkpoints {
            tx,
            region: ctx.read_back_region,
        });
        spawn_scoped(s, "updog-stage-write", move || {
            match write_stage(
                sink,
                capacity,
                job_cap,
                shared,
                &write_rx,
                &out_pool_tx,
                write_queue_depth,
                checkpoints,
            ) {
                Ok(Some(done)) => {
                    let _ = events.send(Event::Written(done));
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = events.send(Event::Failed(e));
                }
            }
        })
        .map_err(ParseStop::Content)?;
    }

    // Split the blocks into jobs and deal them round-robin.
    let mut seq = 0usize;
    let mut job: Option<Job> = None;
    let mut index = 0u64;
    let dispatch = |job: Job, seq: &mut usize| -> Result<(), ParseStop> {
        let tx = &work_tx[*seq % workers];
        *seq += 1;
        tx.send(Work::Job(job)).map_err(|_| ParseStop::Stopped)
    };
    loop {
        let at = input.consumed;
        let word = input.read_u32("block header")?;
        if word == 0 {
            break;
        }
        let uncompressed = word & 0x8000_0000 != 0;
        let size = word & 0x7FFF_FFFF;
        let len = size as usize;
        if len > header.block_max {
            return Err(FrameError::BlockTooLarge {
                index,
                offset: at,
                size,
                max: header.block_max,
            }
            .into());
        }
        if job
            .as_ref()
            .is_some_and(|j| j.blocks.len() >= blocks_per_job)
        {
            if let Some(full) = job.take() {
                dispatch(full, &mut seq)?;
            }
        }
        let mut j = if let Some(j) = job.take() {
            j
        } else {
            let Some(mut j) = recv(&job_pool_rx, || shared.decoding_stopped()) else {
                return Err(ParseStop::Stopped);
            };
            j.used = 0;
            j.blocks.clear();
            j
        };
        let start = j.used;
        let Some(dst) = j.comp.get_mut(start..start + len) else {
            return Err(ParseStop::Content(StageError::Internal(
                "decode job buffer too small".into(),
            )));
        };
        input.read_exact(dst, "block data")?;
        j.used += len;
        let checksum = if header.block_checksums {
            Some(input.read_u32("block checksum")?)
        } else {
            None
        };
        j.blocks.push(BlockRef {
            index,
            start,
            len,
            uncompressed,
            checksum,
        });
        index += 1;
        job = Some(j);
    }
    if let Some(last) = job.take() {
        dispatch(last, &mut seq)?;
    }
    let content_checksum = if header.content_checksum {
        Some(input.read_u32("content checksum")?)
    } else {
        None
    };
    work_tx[seq % workers]
        .send(Work::End(FrameEnd { content_checksum }))
        .map_err(|_| ParseStop::Stopped)?;
    Ok(())
}

fn spawn_scoped<'scope, 'env>(
    s: &'scope thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() + Send + 'scope,
) -> Result<(), StageError> {
    thread::Builder::new()
        .name(name.into())
        .spawn_scoped(s, f)
        .map(|_| ())
        .map_err(|e| StageError::Internal(format!("cannot start a staging thread: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn decode_stage(
    id: usize,
    linked: bool,
    block_max: usize,
    shared: &Shared,
    work: &Receiver<Work>,
    pool: &Receiver<AlignedBuf>,
    results: &SyncSender<Decoded>,
    job_pool: &SyncSender<Job>,
) -> Result<(), FrameError> {
    // Linked blocks: the last WINDOW bytes of decoded content, and a scratch dictionary.
    let mut window: Vec<u8> = Vec::new();
    let mut scratch: Vec<u8> = Vec::new();
    let stop = || shared.decoding_stopped();
    while let Some(msg) = recv(work, stop) {
        let job = match msg {
            Work::Job(job) => job,
            Work::End(end) => {
                let _ = results.send(Decoded::End(end));
                return Ok(());
            }
        };
        let Some(mut out) = recv(pool, stop) else {
            return Ok(());
        };
        let mut pos = 0usize;
        {
            let out = &mut out[..];
            for b in &job.blocks {
                let data = job.comp.get(b.start..b.start + b.len).unwrap_or(&[]);
                let end = (pos + block_max).min(out.len());
                let n = if !linked || (pos == 0 && window.is_empty()) {
                    lz4frame::decode_block(b, data, &mut out[pos..end], &[])?
                } else if pos >= WINDOW {
                    let (before, after) = out.split_at_mut(pos);
                    let dict = &before[pos - WINDOW..];
                    lz4frame::decode_block(b, data, &mut after[..end - pos], dict)?
                } else {
                    // The dictionary spans the previous jobs' window and this job's output.
                    scratch.clear();
                    let keep = window.len().min(WINDOW - pos);
                    scratch.extend_from_slice(&window[window.len() - keep..]);
                    scratch.extend_from_slice(&out[..pos]);
                    lz4frame::decode_block(b, data, &mut out[pos..end], &scratch)?
                };
                pos += n;
            }
            if linked {
                if pos >= WINDOW {
                    window.clear();
                    window.extend_from_slice(&out[pos - WINDOW..pos]);
                } else {
                    window.extend_from_slice(&out[..pos]);
                    let excess = window.len().saturating_sub(WINDOW);
                    window.drain(..excess);
                }
            }
        }
        let _ = job_pool.try_send(job);
        if results
            .send(Decoded::Data(
                OutBuf {
                    buf: out,
                    owner: id,
                },
                pos,
            ))
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Put decoded buffers back in frame order, check the content size and checksum, compute the
/// read-back digest.
fn sequence_stage(
    header: &FrameHeader,
    shared: &Shared,
    results: &[Receiver<Decoded>],
    out: &SyncSender<WriteMsg>,
) -> Result<(), StageError> {
    let mut digest = Xxh3::new();
    let mut content = header.content_checksum.then(|| Xxh32::new(0));
    let mut total = 0u64;
    for i in 0.. {
        let Some(msg) = recv(&results[i % results.len()], || shared.decoding_stopped()) else {
            return Ok(());
        };
        match msg {
            Decoded::Data(buf, len) => {
                let data = buf.buf[..].get(..len).unwrap_or(&[]);
                total += len as u64;
                if let Some(declared) = header.content_size {
                    if total > declared {
                        return Err(FrameError::ContentSize {
                            declared,
                            actual: total,
                        }
                        .into());
                    }
                }
                if let Some(h) = content.as_mut() {
                    h.update(data);
                }
                digest.update(data);
                if out.send(WriteMsg::Data(buf, len)).is_err() {
                    return Ok(());
                }
            }
            Decoded::End(end) => {
                if let (Some(stored), Some(h)) = (end.content_checksum, content.as_ref()) {
                    let computed = h.digest();
                    if stored != computed {
                        return Err(FrameError::ContentChecksum { stored, computed }.into());
                    }
                }
                if let Some(declared) = header.content_size {
                    if total != declared {
                        return Err(FrameError::ContentSize {
                            declared,
                            actual: total,
                        }
                        .into());
                    }
                }
                let _ = out.send(WriteMsg::End(WriteDone {
                    decoded_len: total,
                    digest: digest.digest128(),
                }));
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Where and how often the writer announces flushed-and-readable regions to the verifier.
struct Checkpoints {
    tx: Sender<u64>,
    region: u64,
}

/// Aligned writes, coalescing unaligned pieces in a carry buffer.
struct Writer<'a, S: Sink + ?Sized> {
    sink: &'a mut S,
    completed: &'a Completion,
    align: usize,
    /// Bytes handed to the sink (always a multiple of `align` until the final tail).
    offset: u64,
    carry: Option<AlignedBuf>,
    carry_len: usize,
    carry_cap: usize,
}

impl<S: Sink + ?Sized> Writer<'_, S> {
    fn write(&mut self, buf: &[u8]) -> Result<(), StageError> {
        self.sink
            .write_all_at(buf, self.offset)
            .map_err(|source| StageError::Write {
                offset: self.offset,
                len: buf.len(),
                source,
            })?;
        let end = self.offset + buf.len() as u64;
        self.completed.done(self.offset, end);
        self.offset = end;
        Ok(())
    }

    fn push(&mut self, data: &[u8]) -> Result<(), StageError> {
        let mut rest = data;
        if self.carry_len == 0 && data.as_ptr().align_offset(self.align) == 0 {
            let n = data.len() - data.len() % self.align;
            if n > 0 {
                self.write(&data[..n])?;
            }
            rest = &data[n..];
        }
        while !rest.is_empty() {
            let cap = self.carry_cap;
            let carry = self
                .carry
                .get_or_insert_with(|| AlignedBuf::new(cap, BUF_ALIGN.max(self.align)));
            let take = rest.len().min(cap - self.carry_len);
            carry[..][self.carry_len..self.carry_len + take].copy_from_slice(&rest[..take]);
            self.carry_len += take;
            rest = &rest[take..];
            if self.carry_len == cap {
                self.flush_carry()?;
            }
        }
        Ok(())
    }

    fn flush_carry(&mut self) -> Result<(), StageError> {
        if self.carry_len == 0 {
            return Ok(());
        }
        let len = self.carry_len;
        self.carry_len = 0;
        let carry = self.carry.take().unwrap_or_else(|| AlignedBuf::new(0, 1));
        let r = self.write(carry[..].get(..len).unwrap_or(&[]));
        self.carry = Some(carry);
        r
    }
}

#[allow(clippy::too_many_arguments)]
fn write_stage<S: Sink + ?Sized>(
    sink: &mut S,
    capacity: u64,
    job_cap: usize,
    shared: &Shared,
    input: &Receiver<WriteMsg>,
    pools: &[SyncSender<AlignedBuf>],
    queue_depth: usize,
    checkpoints: Option<Checkpoints>,
) -> Result<Option<WriteDone>, StageError> {
    let align = sink.alignment().max(1);
    let parallel = if queue_depth > 1 {
        sink.parallel_writer()
    } else {
        None
    };
    let io_error: std::sync::Mutex<Option<StageError>> = std::sync::Mutex::new(None);
    let mut w = Writer {
        sink,
        completed: &shared.completed,
        align,
        offset: 0,
        carry: None,
        carry_len: 0,
        carry_cap: job_cap.div_ceil(align) * align,
    };
    let (job_tx, job_rx) = mpsc::sync_channel::<(OutBuf, usize, u64)>(0);
    let job_rx = std::sync::Mutex::new(job_rx);
    let job_tx = Some(job_tx);
    let outcome = thread::scope(|s| {
        // Owned by this closure, so that every way out of it (end, error, abort) hangs up on
        // the I/O threads before the scope waits for them.
        let mut job_tx = job_tx;
        // With a parallel handle, whole aligned buffers go to `queue_depth` I/O threads, so the
        // device sees several writes at once; everything else (carry, tail) stays here.
        if let Some(handle) = &parallel {
            for _ in 0..queue_depth {
                let (handle, job_rx, io_error) = (Arc::clone(handle), &job_rx, &io_error);
                let spawned = spawn_scoped(s, "updog-stage-io", move || {
                    loop {
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok((buf, len, offset)) = job else {
                            return;
                        };
                        let data = buf.buf[..].get(..len).unwrap_or(&[]);
                        if let Err(source) = handle.write_all_at(data, offset) {
                            if let Ok(mut slot) = io_error.lock() {
                                slot.get_or_insert(StageError::Write {
                                    offset,
                                    len,
                                    source,
                                });
                            }
                            return;
                        }
                        shared.completed.done(offset, offset + len as u64);
                        if let Some(pool) = pools.get(buf.owner) {
                            let _ = pool.try_send(buf.buf);
                        }
                    }
                });
                if spawned.is_err() {
                    // Fewer I/O threads (or none) only costs speed.
                    break;
                }
            }
        } else {
            job_tx = None;
        }
        let take_io_error = || io_error.lock().ok().and_then(|mut e| e.take());
        let mut logical = 0u64;
        let mut announced = 0u64;
        while let Some(msg) = recv(input, || shared.decoding_stopped()) {
            match msg {
                WriteMsg::Data(buf, len) => {
                    let needed = logical + len as u64;
                    if needed > capacity {
                        return Err(StageError::TooLarge { capacity, needed });
                    }
                    logical = needed;
                    let whole = w.carry_len == 0
                        && len % align == 0
                        && buf.buf[..].as_ptr().align_offset(align) == 0;
                    match &job_tx {
                        Some(tx) if whole && len > 0 => {
                            let offset = w.offset;
                            w.offset += len as u64;
                            if tx.send((buf, len, offset)).is_err() {
                                return Err(take_io_error().unwrap_or_else(|| {
                                    StageError::Internal("write threads ended".into())
                                }));
                            }
                        }
                        _ => {
                            w.push(buf.buf[..].get(..len).unwrap_or(&[]))?;
                            if let Some(pool) = pools.get(buf.owner) {
                                let _ = pool.try_send(buf.buf);
                            }
                        }
                    }
                    shared.written.store(logical, Ordering::Relaxed);
                    // Everything below `w.offset` is written or being written: once those
                    // writes return, the verifier may flush and read it back. Only at page
                    // boundaries, so that no later write touches a page it has read.
                    if let Some(c) = &checkpoints {
                        if c.region > 0
                            && w.offset >= announced.saturating_add(c.region)
                            && w.offset % sink::PAGE == 0
                        {
                            announced = w.offset;
                            // The verifier stops listening only when it failed or staging
                            // is aborted; both are reported elsewhere.
                            let _ = c.tx.send(announced);
                        }
                    }
                }
                WriteMsg::End(done) => {
                    // Let the I/O threads finish, then write the (possibly unaligned) tail.
                    drop(job_tx.take());
                    return Ok(Some(done));
                }
            }
        }
        Ok(None)
    })?;
    // The scope has joined the I/O threads.
    if let Some(e) = io_error.lock().ok().and_then(|mut e| e.take()) {
        return Err(e);
    }
    if outcome.is_some() {
        // The (possibly unaligned) tail goes last, through the sink.
        w.flush_carry()?;
    }
    Ok(outcome)
}

/// Read the written range back and digest it; the digest runs on a helper thread so that it
/// overlaps the next read.
fn read_back<S: Sink + ?Sized>(
    sink: &mut S,
    start: u64,
    mut digest: Xxh3,
    total: u64,
    opts: &StageOptions,
    progress: &dyn Fn(Progress),
) -> Result<u128, StageError> {
    let report = |done| {
        progress(Progress {
            phase: Phase::Verifying,
            done,
            total,
            written: total,
        });
    };
    report(start);
    let (full_tx, full_rx) = mpsc::sync_channel::<(AlignedBuf, usize)>(1);
    let (free_tx, free_rx) = mpsc::sync_channel::<AlignedBuf>(2);
    for _ in 0..2 {
        let _ = free_tx.send(AlignedBuf::new(READ_BACK_CHUNK, BUF_ALIGN));
    }
    let digest = thread::scope(|s| -> Result<u128, StageError> {
        let hasher = thread::Builder::new()
            .name("updog-readback-xxh3".into())
            .spawn_scoped(s, move || {
                while let Ok((buf, len)) = full_rx.recv() {
                    digest.update(buf[..].get(..len).unwrap_or(&[]));
                    let _ = free_tx.send(buf);
                }
                digest.digest128()
            })
            .map_err(|e| StageError::Internal(format!("cannot start a staging thread: {e}")))?;
        let mut offset = start;
        let mut last_report = Instant::now();
        while offset < total {
            if opts.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            let Ok(mut buf) = free_rx.recv() else {
                return Err(StageError::Internal("read-back digest thread ended".into()));
            };
            let len =
                usize::try_from(total - offset).map_or(READ_BACK_CHUNK, |l| l.min(READ_BACK_CHUNK));
            sink.read_exact_at(&mut buf[..][..len], offset)
                .map_err(|source| StageError::ReadBack { offset, source })?;
            if full_tx.send((buf, len)).is_err() {
                return Err(StageError::Internal("read-back digest thread ended".into()));
            }
            offset += len as u64;
            if last_report.elapsed() >= opts.progress_interval {
                report(offset);
                last_report = Instant::now();
            }
        }
        drop(full_tx);
        hasher
            .join()
            .map_err(|_| StageError::Internal("read-back digest thread panicked".into()))
    })?;
    report(total);
    Ok(digest)
}
