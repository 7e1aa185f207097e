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

mod control;
mod decode;
mod error;
mod hash;
mod lz4frame;
mod parse;
mod read;
mod sequence;
mod sink;
mod verify;
mod write;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::Xxh3;

use control::{Shared, TICK, spawn, spawn_scoped};
pub use error::StageError;
pub use lz4frame::FrameError;
/// What the signed TUF target says about the compressed image: its length and sha256.
pub use migrations_fetch::TargetInfo;
use parse::{Input, ParserCtx, parse_stage};
use read::Chunk;
pub use sink::{IoMode, ParallelWrite, PartitionSink, ReadBack, Sink};
use write::WriteDone;

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

    /// The shared flag, for `signal_hook::flag::register`.
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.0
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
/// use updog::migrations::SignedInfo;
/// use updog::pipeline::{IoMode, PartitionSink, StageOptions, stage_image};
///
/// # fn demo(repo: &updog::tuf::Repository) -> Result<(), Box<dyn std::error::Error>> {
/// let disk = Disk::open("/dev/nvme0n1")?;
/// let root_b = &disk.layout().set(SetId::B)?.root;
/// let (target, stream) = repo.fetch_target_unverified("root.ext4.lz4")?;
/// let expected = target.info().ok_or("target has no sha256")?;
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
    expected: &TargetInfo,
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
        spawn("updog-stage-read", move || {
            read::read_stage(source, length, &shared, &pool_rx, &raw_tx);
        })?
    };
    let hasher = {
        let shared = Arc::clone(&shared);
        let events = events_tx.clone();
        let expected = *expected;
        spawn("updog-stage-sha256", move || {
            hash::hash_stage(&expected, &shared, &raw_rx, &hashed_tx, &events);
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
            let v = spawn("updog-stage-readback", move || {
                verify::verify_stage(handle, &shared, &cancel, &rx)
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
        spawn_scoped(s, "updog-stage-lz4", move || {
            parse_stage(s, ctx, input, sink);
        })?;
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
    let on_disk = verify::read_back(sink, start, digest, total, opts, progress)?;
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

/// Terminal reports from the stages to the coordinator.
enum Event {
    Hashed(Result<(), StageError>),
    Written(WriteDone),
    Failed(StageError),
}

fn coordinate(
    expected: &TargetInfo,
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
