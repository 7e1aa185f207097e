//! Assembling an image on the inactive partition from verified chunks.
//!
//! [`assemble`] takes the signed target index, the inactive partition, optionally the running
//! set's partition with its index (the seed), and a [`ChunkFetcher`]. It plans, then writes every
//! chunk at its offset: zeros as zeros; chunks already in place (a resumed run) left alone after
//! re-hashing; seed chunks read from the running partition and re-hashed (a mismatch means the
//! chunk is fetched instead); the rest fetched, several at once, each verified against its id
//! before it is written (a chunk the image holds at several places is fetched once and written
//! to each). Every chunk is then read back from the device and checked: a chunk this run wrote
//! against the xxh3-128 of the verified bytes it wrote, like the full image's read-back; a zero
//! chunk as zeros; a chunk kept in place against its id. The read-back goes on beside the
//! writing, on two threads: as soon as every chunk of a stretch of about 16 MiB is placed, the
//! stretch is flushed, its cached pages dropped, and it is read back. Only when every stretch
//! matched does [`assemble`] return [`Assembled`]. Nothing unverified is written.
//!
//! Seed chunks are read in batches of up to 4 MiB and hashed on the machine's cores together.
//!
//! Memory: the index and its plan (about 80 bytes a chunk), plus at most `2 * in_flight + 5`
//! chunk buffers and one 4 MiB seed batch, whatever the image size.

use std::collections::HashMap;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_128;

use super::index::{BlobIndex, Chunk, ChunkId, IndexError};
use super::plan::{Plan, Planned, Source};
use super::region::Device;
use super::store::{ChunkError, ChunkFetcher, verify_chunk};

/// How to assemble.
#[derive(Debug, Clone)]
pub struct AssembleOptions {
    /// Chunks fetched at once.
    pub in_flight: usize,
    /// Attempts per chunk before giving up (a corrupt or truncated chunk is fetched again).
    pub attempts: u32,
    /// Whether the inactive partition may hold chunks from an interrupted run: if so, each
    /// chunk's place is re-hashed first and kept when it matches.
    pub resumed: bool,
    /// Chunk numbers (ranges of the index) the caller has already written to the target and
    /// verified against their ids, such as a patch's output: planned as in place without
    /// reading them first. The read-back at the end checks them like every other chunk.
    pub written: Vec<std::ops::Range<u64>>,
    /// For chunks of `written`, the xxh3-128 of the verified bytes the caller wrote (such as
    /// [`Applied::digests`](crate::patch::Applied::digests)): the read-back compares the device
    /// with it, as with the chunks this run writes, instead of re-hashing them against their
    /// ids. A chunk of `written` without one is re-hashed.
    pub written_digests: Vec<(u64, u128)>,
}

impl Default for AssembleOptions {
    fn default() -> Self {
        AssembleOptions {
            in_flight: 4,
            attempts: 3,
            resumed: false,
            written: Vec::new(),
            written_digests: Vec::new(),
        }
    }
}

/// Progress of an assembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssembleProgress {
    /// The plan, once in-place chunks (if any) were found.
    Planned(Plan),
    /// Chunks written so far (bytes of the image placed, compressed bytes downloaded).
    Writing {
        /// Image bytes in place (written, kept or zero).
        done: u64,
        /// Image size.
        total: u64,
        /// Compressed bytes downloaded so far.
        downloaded: u64,
    },
    /// Reading back and re-hashing from the device.
    Verifying {
        /// Bytes re-hashed so far.
        done: u64,
        /// Image size.
        total: u64,
    },
}

/// What an assembly did; the image on the partition was read back and matched the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// The plan as carried out (seed chunks that did not match are counted as fetched).
    pub plan: Plan,
    /// Chunks downloaded (a refetch after a bad chunk counts again).
    pub fetched_chunks: usize,
    /// Compressed bytes downloaded.
    pub downloaded: u64,
    /// Seed chunks whose bytes on the running partition did not match the index.
    pub seed_mismatches: usize,
    /// Fetched chunks refused (corrupt, truncated, too large) and fetched again.
    pub refetched: usize,
}

/// Why an assembly failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssembleError {
    /// The index does not fit the partition.
    #[error("the image's index describes {image} bytes, more than the {partition}-byte partition")]
    TooLarge {
        /// Bytes the index describes.
        image: u64,
        /// The partition's size.
        partition: u64,
    },
    /// The index itself is unusable.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Reading or writing a partition failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The disk or image file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A chunk could not be fetched and verified in the attempts allowed.
    #[error("chunk {number} (offset {offset})")]
    Chunk {
        /// Its number in the index.
        number: usize,
        /// Its offset in the image.
        offset: u64,
        /// The last error.
        #[source]
        source: ChunkError,
    },
    /// A chunk read back from the device does not match (the disk did not keep what was written).
    #[error("read-back of chunk {number} at offset {offset} of {path} does not match the index")]
    ReadBack {
        /// Its number.
        number: usize,
        /// Its offset.
        offset: u64,
        /// The disk.
        path: std::path::PathBuf,
    },
    /// Cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
}

impl AssembleError {
    /// Whether the full image is worth trying instead: a store that is missing, unreachable,
    /// too slow or serving bad chunks, or an index that does not fit the partition (the full
    /// image is checked against it on its own). Not for partition I/O errors or cancellation,
    /// which it would hit too.
    pub fn should_fall_back(&self) -> bool {
        matches!(
            self,
            AssembleError::Chunk { .. } | AssembleError::Index(_) | AssembleError::TooLarge { .. }
        )
    }
}

fn io_err<'a>(
    what: &'static str,
    region: &'a dyn Device,
) -> impl FnOnce(std::io::Error) -> AssembleError + 'a {
    move |source| AssembleError::Io {
        what,
        path: region.path().to_owned(),
        source,
    }
}

/// A chunk's number, how many fetches of it were refused before this result, and its bytes and
/// compressed size or why it could not be had.
type Fetched = (usize, usize, Result<(Vec<u8>, u64), ChunkError>);

/// Fetches chunks from `jobs` until it closes or `stop` is set, retrying each up to `attempts`.
fn fetch_worker(
    index: &BlobIndex,
    fetcher: &ChunkFetcher,
    jobs: &Mutex<mpsc::Receiver<usize>>,
    results: &mpsc::SyncSender<Fetched>,
    attempts: u32,
    stop: &AtomicBool,
) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(number) = job else { return };
        let Some(chunk) = index.chunk(number) else {
            return;
        };
        let mut buf = Vec::new();
        let mut refused = 0;
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match fetcher.fetch(&chunk, &mut buf) {
                Ok(bytes) => break Ok((std::mem::take(&mut buf), bytes)),
                // A store without the chunk will not grow it by asking again, and one that
                // trickles will take as long again.
                Err(e) if e.is_not_found() || e.is_too_slow() => break Err(e),
                Err(e) if refused + 1 >= attempts.max(1) as usize => break Err(e),
                Err(_) => {
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(50 * refused as u64));
                }
            }
        };
        // A chunk that could not be had ends the whole assembly: stop the other workers now
        // rather than let them download chunks that will not be used.
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        if results.send((number, refused, result)).is_err() {
            return;
        }
    }
}

/// Builds the image `index` describes on `target` (the inactive partition), reusing `seed` (the
/// running partition and its index) where it can and fetching the rest with `fetcher`.
pub fn assemble(
    target: &dyn Device,
    index: &BlobIndex,
    seed: Option<(&dyn Device, &BlobIndex)>,
    fetcher: &ChunkFetcher,
    options: &AssembleOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&AssembleProgress),
) -> Result<Assembled, AssembleError> {
    assemble_beside(
        target, index, seed, fetcher, options, None, cancel, progress,
    )
}

/// Chunks someone else writes to the target while [`assemble_beside`] runs, such as a patch
/// pass on another thread: the ranges they will write, and a report on each part once done.
#[derive(Debug)]
pub struct Beside {
    /// Chunk ranges of the index they will write. The assembly neither reads nor fetches
    /// these chunks unless a report says they were not written, and reads a stretch back only
    /// once its chunks are reported.
    pub ranges: Vec<std::ops::Range<u64>>,
    /// Reports, in any order. Once it closes, the chunks of `ranges` not reported written are
    /// placed by the assembly itself (zeros, the seed or the store).
    pub reports: mpsc::Receiver<BesideReport>,
}

/// What the writer beside an assembly did with some of its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BesideReport {
    /// Written to the target, each chunk verified against its id first, with the xxh3-128 of
    /// each chunk's bytes as written, in order (the read-back compares the device with them; a
    /// chunk without one is checked against its id).
    Written {
        /// Chunk numbers.
        chunks: std::ops::Range<u64>,
        /// Each chunk's digest.
        digests: Vec<u128>,
    },
    /// Not written: the assembly places these chunks itself.
    Failed {
        /// Chunk numbers.
        chunks: std::ops::Range<u64>,
    },
}

impl BesideReport {
    /// The report for `bytes` written at `offset`, chunks of `index` each verified against its
    /// id: the chunks they cover and each one's digest. `None` when the bytes do not start
    /// and end at chunk boundaries.
    pub fn written(index: &BlobIndex, offset: u64, bytes: &[u8]) -> Option<BesideReport> {
        let first = index.chunk_at(offset)?;
        let (mut number, mut at) = (first, 0usize);
        let mut digests = Vec::new();
        while at < bytes.len() {
            let chunk = index.chunk(number)?;
            let part = bytes.get(at..at + chunk.len as usize)?;
            digests.push(xxh3_128(part));
            at += part.len();
            number += 1;
        }
        Some(BesideReport::Written {
            chunks: first as u64..number as u64,
            digests,
        })
    }
}

/// [`assemble`], while `beside` (when given) writes some of the chunks on another thread.
/// What it reports written is found in place (and read back with the rest); what fails, or is
/// not reported when its channel closes, is placed here like any other chunk.
#[allow(clippy::too_many_arguments)]
pub fn assemble_beside(
    target: &dyn Device,
    index: &BlobIndex,
    seed: Option<(&dyn Device, &BlobIndex)>,
    fetcher: &ChunkFetcher,
    options: &AssembleOptions,
    beside: Option<Beside>,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&AssembleProgress),
) -> Result<Assembled, AssembleError> {
    if index.total_len() > target.len() {
        return Err(AssembleError::TooLarge {
            image: index.total_len(),
            partition: target.len(),
        });
    }
    let mut planned = Planned::new(index, seed.map(|(_, i)| i));
    let mut buf = Vec::with_capacity(index.longest_chunk() as usize);
    for range in &options.written {
        planned.mark_in_place(index, range.clone());
    }
    // What the writer beside takes is planned in place, and left alone until it reports; the
    // plan as it was first is what a chunk it fails returns to.
    let beside = beside.map(|b| {
        let mut state = BesideState {
            planned_first: planned.sources.clone(),
            theirs: vec![false; index.len()],
            pending: vec![false; index.len()],
            open: 0,
            reports: Some(b.reports),
            resumed: options.resumed,
        };
        for range in &b.ranges {
            for number in range.clone() {
                let number = usize::try_from(number).unwrap_or(usize::MAX);
                if let Some(p) = state.pending.get_mut(number) {
                    if !*p {
                        *p = true;
                        state.open += 1;
                        state.theirs[number] = true;
                    }
                }
            }
            planned.mark_in_place(index, range.clone());
        }
        state
    });
    if options.resumed {
        planned
            .find_in_place(index, target, &mut buf)
            .map_err(io_err("reading the inactive partition", target))?;
    }
    progress(&AssembleProgress::Planned(planned.plan));

    let check_stop = AtomicBool::new(false);
    let mut run = Run {
        target,
        index,
        planned: &mut planned,
        cancel,
        progress,
        done: 0,
        downloaded: 0,
        fetched_chunks: 0,
        seed_mismatches: 0,
        refetched: 0,
        last_report: 0,
        written: vec![None; index.len()],
        stretches: Stretches::of(index),
        to_check: None,
        check_stop: &check_stop,
        beside,
    };
    for &(number, digest) in &options.written_digests {
        let number = usize::try_from(number).unwrap_or(usize::MAX);
        // Only for chunks the plan keeps in place: a chunk written here gets its own.
        if run.planned.sources.get(number) == Some(&Source::InPlace) {
            if let Some(slot) = run.written.get_mut(number) {
                *slot = Some(digest);
            }
        }
    }
    let in_flight = options.in_flight.max(1);
    let stop = AtomicBool::new(false);
    let (job_tx, job_rx) = mpsc::channel::<usize>();
    let job_rx = Mutex::new(job_rx);
    let (res_tx, res_rx) = mpsc::sync_channel::<Fetched>(in_flight);
    let (stretch_tx, stretch_rx) = mpsc::channel::<Vec<(Chunk, Expect)>>();
    let stretch_rx = Mutex::new(stretch_rx);
    let (checked_tx, checked_rx) = mpsc::channel::<Result<u64, AssembleError>>();
    run.to_check = Some(stretch_tx);
    std::thread::scope(|scope| {
        for _ in 0..in_flight {
            let (job_rx, res_tx, stop) = (&job_rx, res_tx.clone(), &stop);
            scope.spawn(move || {
                fetch_worker(index, fetcher, job_rx, &res_tx, options.attempts, stop);
            });
        }
        drop(res_tx);
        for _ in 0..READ_BACK_THREADS {
            let (stretch_rx, checked_tx, stop) = (&stretch_rx, checked_tx.clone(), &check_stop);
            scope.spawn(move || check_stretches(target, stretch_rx, &checked_tx, stop, cancel));
        }
        drop(checked_tx);
        let written = run.write_all(seed.map(|(r, _)| r), job_tx, res_rx, &mut buf);
        // On an error, stop the workers: their channels are gone, the flag ends their retries.
        stop.store(true, Ordering::Relaxed);
        // No more stretches: the checkers end once they have read back what they were given.
        run.to_check = None;
        if written.is_err() {
            run.check_stop.store(true, Ordering::Relaxed);
        }
        let checked = run.finish_read_back(&checked_rx);
        match written {
            // Stopped because a stretch did not read back: that is the error to report.
            Err(AssembleError::Cancelled) if checked.is_err() => checked,
            Err(e) => Err(e),
            Ok(()) => checked,
        }
    })?;
    Ok(Assembled {
        plan: run.planned.plan,
        fetched_chunks: run.fetched_chunks,
        downloaded: run.downloaded,
        seed_mismatches: run.seed_mismatches,
        refetched: run.refetched,
    })
}

struct Run<'a> {
    target: &'a dyn Device,
    index: &'a BlobIndex,
    planned: &'a mut Planned,
    cancel: &'a AtomicBool,
    progress: &'a mut dyn FnMut(&AssembleProgress),
    done: u64,
    downloaded: u64,
    fetched_chunks: usize,
    seed_mismatches: usize,
    refetched: usize,
    last_report: u64,
    /// xxh3-128 of the verified bytes written for each chunk (`None`: not written by this run),
    /// which the read-back compares against.
    written: Vec<Option<u128>>,
    /// The read-back's stretches and how many chunks of each are not placed yet.
    stretches: Stretches,
    /// Where a stretch goes once every chunk of it is placed (`None` once all were sent).
    to_check: Option<mpsc::Sender<Vec<(Chunk, Expect)>>>,
    /// Set when a stretch did not read back (or the run failed): everyone stops.
    check_stop: &'a AtomicBool,
    /// Chunks written beside the assembly, when some are.
    beside: Option<BesideState>,
}

/// The chunks a writer beside the assembly takes, and its reports.
struct BesideState {
    /// Each chunk's source before the writer's ranges were planned in place.
    planned_first: Vec<Source>,
    /// Chunks of the writer's ranges: the writing loop passes them by, their reports place
    /// them (reported before the loop gets there or after).
    theirs: Vec<bool>,
    /// Chunks of the writer's ranges it has not reported on yet.
    pending: Vec<bool>,
    /// How many chunks are pending.
    open: usize,
    /// Its reports (`None` once closed).
    reports: Option<mpsc::Receiver<BesideReport>>,
    /// A resumed run: a chunk the writer hands back that would be fetched is looked for in
    /// place first (a stopped run may have fetched it already).
    resumed: bool,
}

impl BesideState {
    fn is_theirs(&self, number: usize) -> bool {
        self.theirs.get(number) == Some(&true)
    }

    /// Takes chunk `number` off the pending list; whether it was on it.
    fn settle(&mut self, number: usize) -> bool {
        match self.pending.get_mut(number) {
            Some(p) if *p => {
                *p = false;
                self.open -= 1;
                true
            }
            _ => false,
        }
    }
}

impl Run<'_> {
    fn check_cancel(&self) -> Result<(), AssembleError> {
        if self.cancel.load(Ordering::Relaxed) || self.check_stop.load(Ordering::Relaxed) {
            Err(AssembleError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn placed(&mut self, chunk: &Chunk) {
        // Once only: the progress and the read-back count each chunk once.
        if self.stretches.counted.get(chunk.number) != Some(&false) {
            return;
        }
        if let Some(stretch) = self.stretches.placed(chunk.number) {
            let expect = expectations(
                self.index,
                &self.planned.sources,
                &self.written,
                stretch.clone(),
            );
            if let Some(to_check) = &self.to_check {
                // The checkers are gone only after a stop, which the writing loop sees.
                let _ = to_check.send(expect);
            }
        }
        self.done += u64::from(chunk.len);
        let total = self.index.total_len();
        // About a hundred reports over the image, and the last one.
        if self.done - self.last_report >= total / 100 || self.done == total {
            self.last_report = self.done;
            (self.progress)(&AssembleProgress::Writing {
                done: self.done,
                total,
                downloaded: self.downloaded,
            });
        }
    }

    fn write(&mut self, chunk: &Chunk, data: &[u8]) -> Result<(), AssembleError> {
        self.target
            .write_at(data, chunk.offset)
            .map_err(io_err("writing the inactive partition", self.target))?;
        if let Some(slot) = self.written.get_mut(chunk.number) {
            *slot = Some(xxh3_128(data));
        }
        self.placed(chunk);
        Ok(())
    }

    /// Writes a fetched chunk to every place in `waiting` for its id.
    fn take_fetched(
        &mut self,
        (number, refused, result): Fetched,
        waiting: &mut HashMap<ChunkId, Vec<usize>>,
    ) -> Result<(), AssembleError> {
        self.refetched += refused;
        self.fetched_chunks += refused;
        let Some(chunk) = self.index.chunk(number) else {
            return Ok(());
        };
        let (data, bytes) = result.map_err(|source| AssembleError::Chunk {
            number,
            offset: chunk.offset,
            source,
        })?;
        self.downloaded += bytes;
        self.fetched_chunks += 1;
        // `ChunkFetcher::fetch` returns only bytes of the chunk's signed length that hash to its
        // id (hashing them again here would cost a third of the CPU of a fetched chunk).
        for place in waiting.remove(&chunk.id).unwrap_or_default() {
            if let Some(at) = self.index.chunk(place) {
                self.write(&at, &data)?;
            }
        }
        Ok(())
    }

    fn write_all(
        &mut self,
        seed: Option<&dyn Device>,
        jobs: mpsc::Sender<usize>,
        results: mpsc::Receiver<Fetched>,
        buf: &mut Vec<u8>,
    ) -> Result<(), AssembleError> {
        // Each distinct chunk is fetched once, by its first place; the others wait for it.
        let mut waiting: HashMap<ChunkId, Vec<usize>> = HashMap::new();
        for chunk in self.index.chunks() {
            if self.planned.sources[chunk.number] == Source::Fetch {
                want(&jobs, chunk.number, chunk.id, &mut waiting);
            }
        }
        let zeros = vec![0u8; self.index.longest_chunk() as usize];
        let mut number = 0;
        while number < self.index.len() {
            self.check_cancel()?;
            while let Ok(fetched) = results.try_recv() {
                self.take_fetched(fetched, &mut waiting)?;
            }
            self.take_reports(None, seed, &jobs, &mut waiting, buf)?;
            let Some(chunk) = self.index.chunk(number) else {
                break;
            };
            // The writer beside has it: its report places it (or hands it back), whether that
            // came before this point or comes after.
            if self.beside.as_ref().is_some_and(|b| b.is_theirs(number)) {
                number += 1;
                continue;
            }
            match self.planned.sources[number] {
                Source::Zero => self.write(&chunk, &zeros[..chunk.len as usize])?,
                Source::InPlace => self.placed(&chunk),
                Source::Seed(_) => {
                    let batch = self.seed_batch(number);
                    number += batch.len().max(1);
                    self.copy_seed(seed, &batch, &jobs, &mut waiting, buf)?;
                    continue;
                }
                Source::Fetch => {}
            }
            number += 1;
        }
        // What the writer beside still owes; fetched chunks are written meanwhile.
        while self.beside.as_ref().is_some_and(|b| b.open > 0) {
            self.check_cancel()?;
            while let Ok(fetched) = results.try_recv() {
                self.take_fetched(fetched, &mut waiting)?;
            }
            self.take_reports(
                Some(Duration::from_millis(5)),
                seed,
                &jobs,
                &mut waiting,
                buf,
            )?;
        }
        drop(jobs);
        while !waiting.is_empty() {
            self.check_cancel()?;
            match results.recv_timeout(Duration::from_millis(200)) {
                Ok(fetched) => self.take_fetched(fetched, &mut waiting)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Every worker is gone with chunks still owed: only a stop does that.
                    return Err(AssembleError::Cancelled);
                }
            }
        }
        Ok(())
    }

    /// Copies `batch` (seed chunks, each with its offset on the running partition) to the
    /// target; a chunk that does not match its id there (or without a running partition) is
    /// fetched instead.
    fn copy_seed(
        &mut self,
        seed: Option<&dyn Device>,
        batch: &[(Chunk, u64)],
        jobs: &mpsc::Sender<usize>,
        waiting: &mut HashMap<ChunkId, Vec<usize>>,
        buf: &mut Vec<u8>,
    ) -> Result<(), AssembleError> {
        let good = match seed {
            Some(seed) => read_seed_batch(seed, batch, buf),
            None => vec![false; batch.len()],
        };
        let mut at = 0;
        for ((chunk, _), good) in batch.iter().zip(good) {
            let len = chunk.len as usize;
            if good {
                self.write(chunk, &buf[at..at + len])?;
            } else {
                self.seed_mismatches += 1;
                self.planned.seed_failed(chunk);
                want(jobs, chunk.number, chunk.id, waiting);
            }
            at += len;
        }
        Ok(())
    }

    /// Takes the beside writer's reports that are there (waiting up to `wait` for one): chunks
    /// it wrote are placed; chunks it failed, or still owes once its channel closed, are
    /// placed here from where the plan first had them.
    fn take_reports(
        &mut self,
        wait: Option<Duration>,
        seed: Option<&dyn Device>,
        jobs: &mpsc::Sender<usize>,
        waiting: &mut HashMap<ChunkId, Vec<usize>>,
        buf: &mut Vec<u8>,
    ) -> Result<(), AssembleError> {
        let Some(reports) = self.beside.as_ref().and_then(|b| b.reports.as_ref()) else {
            return Ok(());
        };
        let mut taken = Vec::new();
        let closed;
        let first = match wait {
            Some(wait) => reports
                .recv_timeout(wait)
                .map_err(|e| matches!(e, mpsc::RecvTimeoutError::Disconnected)),
            None => reports
                .try_recv()
                .map_err(|e| matches!(e, mpsc::TryRecvError::Disconnected)),
        };
        match first {
            Ok(report) => {
                taken.push(report);
                loop {
                    match reports.try_recv() {
                        Ok(report) => taken.push(report),
                        Err(e) => {
                            closed = matches!(e, mpsc::TryRecvError::Disconnected);
                            break;
                        }
                    }
                }
            }
            Err(disconnected) => closed = disconnected,
        }
        if closed {
            if let Some(b) = self.beside.as_mut() {
                b.reports = None;
                let owed = b.pending.iter().enumerate().filter(|(_, p)| **p);
                let owed: Vec<u64> = owed.map(|(n, _)| n as u64).collect();
                // One report per run of consecutive chunks still owed.
                let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
                for n in owed {
                    match runs.last_mut() {
                        Some(r) if r.end == n => r.end = n + 1,
                        _ => runs.push(n..n + 1),
                    }
                }
                taken.extend(
                    runs.into_iter()
                        .map(|chunks| BesideReport::Failed { chunks }),
                );
            }
        }
        for report in taken {
            match report {
                BesideReport::Written { chunks, digests } => {
                    for (i, number) in chunks.enumerate() {
                        let number = usize::try_from(number).unwrap_or(usize::MAX);
                        if !self.beside.as_mut().is_some_and(|b| b.settle(number)) {
                            continue;
                        }
                        let Some(chunk) = self.index.chunk(number) else {
                            continue;
                        };
                        self.written[number] = digests.get(i).copied();
                        self.placed(&chunk);
                    }
                }
                BesideReport::Failed { chunks } => {
                    for number in chunks {
                        let number = usize::try_from(number).unwrap_or(usize::MAX);
                        if !self.beside.as_mut().is_some_and(|b| b.settle(number)) {
                            continue;
                        }
                        self.place_instead(number, seed, jobs, waiting, buf)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Places chunk `number`, which the writer beside did not write, from where the plan
    /// first had it.
    fn place_instead(
        &mut self,
        number: usize,
        seed: Option<&dyn Device>,
        jobs: &mpsc::Sender<usize>,
        waiting: &mut HashMap<ChunkId, Vec<usize>>,
        buf: &mut Vec<u8>,
    ) -> Result<(), AssembleError> {
        let (Some(chunk), Some(first)) = (
            self.index.chunk(number),
            self.beside
                .as_ref()
                .and_then(|b| b.planned_first.get(number).copied()),
        ) else {
            return Ok(());
        };
        // Still planned in place: kept so when it is there and right.
        if first == Source::Fetch
            && self.beside.as_ref().is_some_and(|b| b.resumed)
            && self.in_place(&chunk, buf)
        {
            self.placed(&chunk);
            return Ok(());
        }
        self.planned.unplace(&chunk, first);
        match first {
            Source::Zero => {
                buf.clear();
                buf.resize(chunk.len as usize, 0);
                self.write(&chunk, buf)
            }
            // In place before the writer took it (a caller's `written` chunk).
            Source::InPlace => {
                self.placed(&chunk);
                Ok(())
            }
            Source::Seed(offset) => self.copy_seed(seed, &[(chunk, offset)], jobs, waiting, buf),
            Source::Fetch => {
                want(jobs, chunk.number, chunk.id, waiting);
                Ok(())
            }
        }
    }
}

impl Run<'_> {
    /// Whether the target holds `chunk` at its place, right (read into `buf` and hashed).
    fn in_place(&self, chunk: &Chunk, buf: &mut Vec<u8>) -> bool {
        buf.resize(chunk.len as usize, 0);
        chunk.end() <= self.target.len()
            && self.target.read_at(buf, chunk.offset).is_ok()
            && verify_chunk(chunk, buf).is_ok()
    }
}

/// Asks for chunk `number` (id `id`) to be fetched, unless a fetch of its id is under way; it is
/// written to every place waiting for it.
fn want(
    jobs: &mpsc::Sender<usize>,
    number: usize,
    id: ChunkId,
    waiting: &mut HashMap<ChunkId, Vec<usize>>,
) {
    let places = waiting.entry(id).or_default();
    if places.is_empty() {
        // The workers' receiver lives until the writing is over.
        let _ = jobs.send(number);
    }
    places.push(number);
}

impl Run<'_> {
    /// The run of consecutive seed chunks from `first` on, at most [`SEED_BATCH`] bytes (and at
    /// least one chunk).
    fn seed_batch(&self, first: usize) -> Vec<(Chunk, u64)> {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        for number in first..self.index.len() {
            let Source::Seed(offset) = self.planned.sources[number] else {
                break;
            };
            let Some(chunk) = self.index.chunk(number) else {
                break;
            };
            if !batch.is_empty() && bytes + u64::from(chunk.len) > SEED_BATCH {
                break;
            }
            bytes += u64::from(chunk.len);
            batch.push((chunk, offset));
        }
        batch
    }
}

/// Seed chunks read and checked together (their hashing shared out over the cores).
const SEED_BATCH: u64 = 4 << 20;

/// Reads `batch` (seed chunks of the new index, each with its offset on the running partition)
/// into `buf`, one after the other, and checks each against its id. Whether each chunk is
/// good, in order; one that cannot be read is not.
fn read_seed_batch(seed: &dyn Device, batch: &[(Chunk, u64)], buf: &mut Vec<u8>) -> Vec<bool> {
    buf.clear();
    let mut parts = Vec::with_capacity(batch.len());
    let mut readable = Vec::with_capacity(batch.len());
    for (chunk, offset) in batch {
        let start = buf.len();
        buf.resize(start + chunk.len as usize, 0);
        readable.push(seed.read_at(&mut buf[start..], *offset).is_ok());
        parts.push((start..buf.len(), chunk.id));
    }
    let matches = crate::verify::ids_match(buf, &parts);
    matches
        .into_iter()
        .zip(readable)
        .map(|(m, r)| m && r)
        .collect()
}

/// Threads reading stretches back.
const READ_BACK_THREADS: usize = 2;

/// Bytes of consecutive chunks read back together (the last stretch may be shorter).
const STRETCH: u64 = 16 << 20;

/// What the read-back compares a chunk with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Zeros: the plan named it zero because its id is the hash of that many zeros.
    Zeros,
    /// The xxh3-128 of the bytes this run (or the caller) wrote for it, after they had been
    /// verified against its id: the device must give back exactly those bytes. xxh3-128, as on
    /// the full image path, because the read-back guards against a disk that does not keep what
    /// it was given, and re-running SHA-512/256 over every byte a second time would double the
    /// CPU of a delta.
    Digest(u128),
    /// Its id: a chunk kept in place from an earlier run, whose bytes nobody here verified.
    Id,
}

/// What the chunks `numbers` of `index` must read back as, given their sources and the digests
/// of what was written.
fn expectations(
    index: &BlobIndex,
    sources: &[Source],
    written: &[Option<u128>],
    numbers: std::ops::Range<usize>,
) -> Vec<(Chunk, Expect)> {
    numbers
        .filter_map(|number| {
            let chunk = index.chunk(number)?;
            let expect = match (sources.get(number), written.get(number)) {
                (Some(Source::Zero), _) => Expect::Zeros,
                (_, Some(Some(digest))) => Expect::Digest(*digest),
                _ => Expect::Id,
            };
            Some((chunk, expect))
        })
        .collect()
}

/// The image cut into stretches of consecutive chunks, with a count of the chunks of each that
/// are not placed yet.
struct Stretches {
    /// The first chunk number of each stretch, then the number of chunks.
    starts: Vec<usize>,
    /// Chunks of each stretch not placed yet.
    unplaced: Vec<usize>,
    /// Whether each chunk was counted (a chunk counted twice would hand its stretch over to
    /// the read-back before the rest of it is written).
    counted: Vec<bool>,
}

impl Stretches {
    fn of(index: &BlobIndex) -> Stretches {
        let mut starts = vec![0usize];
        let mut since = 0u64;
        for chunk in index.chunks() {
            since += u64::from(chunk.len);
            if since >= STRETCH {
                starts.push(chunk.number + 1);
                since = 0;
            }
        }
        if starts.last() != Some(&index.len()) {
            starts.push(index.len());
        }
        let unplaced = starts.windows(2).map(|w| w[1] - w[0]).collect();
        Stretches {
            starts,
            unplaced,
            counted: vec![false; index.len()],
        }
    }

    /// Counts chunk `number` as placed; the chunks of its stretch when that was the last one.
    /// A chunk counts once.
    fn placed(&mut self, number: usize) -> Option<std::ops::Range<usize>> {
        let counted = self.counted.get_mut(number)?;
        if std::mem::replace(counted, true) {
            return None;
        }
        let s = self
            .starts
            .partition_point(|&start| start <= number)
            .checked_sub(1)?;
        let left = self.unplaced.get_mut(s)?;
        *left = left.checked_sub(1)?;
        (*left == 0).then(|| self.starts[s]..self.starts[s + 1])
    }
}

/// Takes stretches from `stretches` and reads each back (see [`check_stretch`]), sending the
/// bytes checked (or the error) to `checked`, until the queue closes, `stop` or `cancel` is
/// set, or a stretch fails (which sets `stop`).
fn check_stretches(
    target: &dyn Device,
    stretches: &Mutex<mpsc::Receiver<Vec<(Chunk, Expect)>>>,
    checked: &mpsc::Sender<Result<u64, AssembleError>>,
    stop: &AtomicBool,
    cancel: &AtomicBool,
) {
    let mut buf = Vec::new();
    let stopped = || stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed);
    loop {
        let next = match stretches.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(stretch) = next else { return };
        if stopped() {
            return;
        }
        let result = check_stretch(target, &stretch, &mut buf, &stopped);
        let failed = result.is_err();
        if failed {
            stop.store(true, Ordering::Relaxed);
        }
        if checked.send(result).is_err() || failed {
            return;
        }
    }
}

/// Whether every byte is zero. Folding fixed blocks with OR lets the compiler use vector
/// instructions, which a byte-by-byte `all` with its early exit does not: the read-back of an
/// image that is mostly empty space spent more time here than in xxh3.
fn all_zeros(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(64);
    blocks.all(|block| block.iter().fold(0, |any, &b| any | b) == 0)
        && blocks.remainder().iter().all(|&b| b == 0)
}

/// Flushes the stretch of consecutive chunks `stretch`, drops its cached pages, reads each
/// chunk back from the device and checks it against what it must be. The bytes checked.
fn check_stretch(
    target: &dyn Device,
    stretch: &[(Chunk, Expect)],
    buf: &mut Vec<u8>,
    stopped: &dyn Fn() -> bool,
) -> Result<u64, AssembleError> {
    let (Some((first, _)), Some((last, _))) = (stretch.first(), stretch.last()) else {
        return Ok(0);
    };
    target
        .sync_range_and_drop_cache(first.offset, last.end() - first.offset)
        .map_err(io_err("flushing the inactive partition", target))?;
    let mut bytes = 0;
    for (chunk, expect) in stretch {
        if stopped() {
            return Err(AssembleError::Cancelled);
        }
        buf.resize(chunk.len as usize, 0);
        target
            .read_at(buf, chunk.offset)
            .map_err(io_err("reading back the inactive partition", target))?;
        let good = match expect {
            Expect::Zeros => all_zeros(buf),
            Expect::Digest(digest) => xxh3_128(buf) == *digest,
            Expect::Id => verify_chunk(chunk, buf).is_ok(),
        };
        if !good {
            return Err(AssembleError::ReadBack {
                number: chunk.number,
                offset: chunk.offset,
                path: target.path().to_owned(),
            });
        }
        bytes += u64::from(chunk.len);
    }
    Ok(bytes)
}

impl Run<'_> {
    /// Waits for the read-back of every stretch (reporting its progress), once the writing
    /// is over; after a failed writing, only for the checkers to stop.
    fn finish_read_back(
        &mut self,
        checked: &mpsc::Receiver<Result<u64, AssembleError>>,
    ) -> Result<(), AssembleError> {
        let total = self.index.total_len();
        let (mut done, mut last) = (0u64, None);
        let mut first_error = None;
        loop {
            let next = match checked.recv_timeout(Duration::from_millis(100)) {
                Ok(next) => Some(next),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                // Every checker is gone: all stretches were taken (or a stop).
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if self.cancel.load(Ordering::Relaxed) {
                self.check_stop.store(true, Ordering::Relaxed);
            }
            match next {
                Some(Ok(bytes)) => done += bytes,
                Some(Err(e)) => {
                    self.check_stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
                None => {}
            }
            let stopping = self.check_stop.load(Ordering::Relaxed);
            if !stopping && last.is_none_or(|l| done - l >= total / 100) {
                last = Some(done);
                (self.progress)(&AssembleProgress::Verifying { done, total });
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        // Every stretch read back and matched, or the run stopped before.
        if done != total || self.check_stop.load(Ordering::Relaxed) {
            return Err(AssembleError::Cancelled);
        }
        if last != Some(done) {
            (self.progress)(&AssembleProgress::Verifying { done, total });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set byte anywhere, in a whole block or in the tail, is not zeros.
    #[test]
    fn all_zeros_finds_a_set_byte_anywhere() {
        for len in [0, 1, 63, 64, 65, 200, 4096] {
            let mut bytes = vec![0u8; len];
            assert!(all_zeros(&bytes), "{len}");
            for at in 0..len {
                bytes[at] = 0x40;
                assert!(!all_zeros(&bytes), "{len} {at}");
                bytes[at] = 0;
            }
        }
    }
    use crate::plan::Planned;
    use crate::{Chunker, Region};

    /// An image of random data with a run of zeros, written whole to a file, its plan, and the
    /// xxh3-128 of each chunk as written.
    fn written() -> (
        tempfile::TempDir,
        Region,
        BlobIndex,
        Vec<Source>,
        Vec<Option<u128>>,
    ) {
        let mut rng = fastrand::Rng::with_seed(4);
        let mut image = vec![0u8; 3 << 20];
        rng.fill(&mut image[..2 << 20]);
        let index = Chunker::casync_default()
            .index(&image[..], |_, _| Ok(()))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        std::fs::write(&path, &image).unwrap();
        let region = Region::open(&path, 0, image.len() as u64, true).unwrap();
        let sources = Planned::new(&index, None).sources;
        let digests = index
            .chunks()
            .map(|c| Some(xxh3_128(&image[c.offset as usize..c.end() as usize])))
            .collect();
        (dir, region, index, sources, digests)
    }

    /// Reads the image back stretch by stretch: the bytes checked, or the first error.
    fn check(
        region: &Region,
        index: &BlobIndex,
        sources: &[Source],
        written: &[Option<u128>],
    ) -> Result<u64, AssembleError> {
        let mut stretches = Stretches::of(index);
        let mut buf = Vec::new();
        let mut bytes = 0;
        for number in 0..index.len() {
            if let Some(stretch) = stretches.placed(number) {
                let expect = expectations(index, sources, written, stretch);
                bytes += check_stretch(region, &expect, &mut buf, &|| false)?;
            }
        }
        Ok(bytes)
    }

    #[test]
    fn each_stretch_is_handed_over_once_when_its_last_chunk_is_placed() {
        let image = vec![0u8; 40 << 20];
        let index = Chunker::casync_default()
            .index(&image[..], |_, _| Ok(()))
            .unwrap();
        let mut stretches = Stretches::of(&index);
        let mut handed = Vec::new();
        // Placed out of order (last first), as fetched chunks arrive.
        for number in (0..index.len()).rev() {
            if let Some(stretch) = stretches.placed(number) {
                assert!(stretch.contains(&number));
                handed.push(stretch);
            }
            // A chunk placed again (a bug elsewhere) does not hand its stretch over early.
            assert!(stretches.placed(number).is_none());
        }
        handed.sort_by_key(|r| r.start);
        assert!(handed.len() >= 3, "{handed:?}");
        let mut next = 0;
        for (i, stretch) in handed.iter().enumerate() {
            assert_eq!(stretch.start, next, "stretches are consecutive");
            next = stretch.end;
            let bytes: u64 = stretch
                .clone()
                .map(|n| u64::from(index.chunk(n).unwrap().len))
                .sum();
            assert!(i + 1 == handed.len() || bytes >= STRETCH, "{bytes}");
            assert!(bytes < STRETCH + u64::from(index.longest_chunk()));
        }
        assert_eq!(next, index.len());
        assert!(stretches.placed(index.len()).is_none());
    }

    #[test]
    fn read_back_accepts_what_was_written_and_names_a_changed_chunk() {
        let (_dir, region, index, sources, digests) = written();
        assert!(sources.contains(&Source::Zero) && sources.contains(&Source::Fetch));
        let unwritten = vec![None; index.len()];
        // Against the digests of what was written, and (chunks found in place) against the ids.
        for written in [&digests, &unwritten] {
            assert_eq!(
                check(&region, &index, &sources, written).unwrap(),
                index.total_len()
            );
        }
        // One flipped byte in a data chunk, then in a zero chunk: each is named, both ways.
        for (kind, by_digest) in [
            (Source::Fetch, true),
            (Source::Fetch, false),
            (Source::Zero, true),
        ] {
            let (_dir, region, index, sources, digests) = written();
            let number = sources.iter().rposition(|s| *s == kind).unwrap();
            let chunk = index.chunk(number).unwrap();
            let mut byte = [0u8];
            region.read_at(&mut byte, chunk.offset + 7).unwrap();
            region.write_at(&[byte[0] ^ 1], chunk.offset + 7).unwrap();
            let written = if by_digest {
                digests
            } else {
                unwritten.clone()
            };
            match check(&region, &index, &sources, &written) {
                Err(AssembleError::ReadBack { number: n, .. }) => assert_eq!(n, number),
                other => panic!("{kind:?} {by_digest}: {other:?}"),
            }
        }
    }
}
