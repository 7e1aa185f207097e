//! The parser stage: reads the verified compressed stream as one lz4 frame (through
//! [`lz4frame`](super::lz4frame)), starts the decoder, sequencer and writer stages, and deals
//! the blocks out to the decoders in jobs of consecutive blocks.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;

use bootpart::io::AlignedBuf;

use super::control::{Shared, recv, spawn_scoped};
use super::decode::{DecodeStage, Decoded, Job, Work};
use super::lz4frame::{self, BlockRef, FrameError, FrameHeader, FrameInput};
use super::read::Chunk;
use super::sequence::sequence_stage;
use super::write::{Checkpoints, WriteMsg, WriteStage};
use super::{BUF_ALIGN, Event, Sink, StageError};

/// Decoded bytes per decode job (and per write): large enough for efficient direct writes.
const JOB_CAP: usize = 4 << 20;

/// Why the parser stopped reading.
pub(super) enum ParseStop {
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

impl From<StageError> for ParseStop {
    fn from(e: StageError) -> Self {
        Self::Content(e)
    }
}

/// The parser's view of the verified compressed stream.
pub(super) struct Input<'a> {
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
    pub fn new(rx: Receiver<Chunk>, pool: SyncSender<Vec<u8>>, shared: &'a Shared) -> Self {
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
                Some(Chunk::Data(buf)) => {
                    self.len = buf.len();
                    let old = std::mem::replace(&mut self.cur, buf.into_inner());
                    if !old.is_empty() {
                        let _ = self.pool.try_send(old);
                    }
                    self.pos = 0;
                }
                Some(Chunk::End) => self.ended = true,
                // A read error is reported by the hasher.
                Some(Chunk::Failed(_)) | None => return Err(ParseStop::Stopped),
            }
        }
        Ok(true)
    }

    /// Consume and drop everything up to the end of the stream (so the hasher can finish).
    fn drain(&mut self) {
        while let Ok(true) = self.fill(true) {
            self.pos = self.len;
        }
    }
}

impl FrameInput for Input<'_> {
    type Error = ParseStop;

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

    fn consumed(&self) -> u64 {
        self.consumed
    }
}

/// What the parser needs to start the later stages.
pub(super) struct ParserCtx<'a> {
    pub shared: &'a Shared,
    pub events: Sender<Event>,
    pub capacity: u64,
    pub decode_threads: usize,
    pub buffers_per_decoder: usize,
    pub write_queue_depth: usize,
    /// Where the writer announces checkpoints (`None`: no read-back while writing).
    pub checkpoints: Option<Sender<u64>>,
    pub read_back_region: u64,
}

pub(super) fn parse_stage<'scope, 'env, S: Sink + ?Sized>(
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
                    let second_frame = lz4frame::starts_a_frame(&input.cur[input.pos..input.len]);
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

/// Where the parser sends jobs: one work queue per decoder, dealt round-robin (the sequencer
/// collects the results in the same order), and the pool of job buffers.
struct Dispatch {
    work: Vec<SyncSender<Work>>,
    job_pool: Receiver<Job>,
    blocks_per_job: usize,
    sent: usize,
}

impl Dispatch {
    fn send(&mut self, work: Work) -> Result<(), ParseStop> {
        let tx = &self.work[self.sent % self.work.len()];
        self.sent += 1;
        tx.send(work).map_err(|_| ParseStop::Stopped)
    }
}

fn parse_frame<'scope, 'env, S: Sink + ?Sized>(
    s: &'scope thread::Scope<'scope, 'env>,
    ctx: ParserCtx<'env>,
    input: &mut Input<'env>,
    sink: &'env mut S,
) -> Result<(), ParseStop> {
    let header = lz4frame::read_header(input)?;
    if let Some(declared) = header.content_size {
        if declared > ctx.capacity {
            return Err(ParseStop::Content(StageError::TooLarge {
                capacity: ctx.capacity,
                needed: declared,
            }));
        }
    }
    let shared = ctx.shared;
    let mut dispatch = start_stages(s, &ctx, &header, sink)?;

    // Split the blocks into jobs.
    let mut job: Option<Job> = None;
    let mut index = 0u64;
    while let Some(block) = header.read_block(input, index)? {
        if job
            .as_ref()
            .is_some_and(|j| j.blocks.len() >= dispatch.blocks_per_job)
        {
            if let Some(full) = job.take() {
                dispatch.send(Work::Job(full))?;
            }
        }
        let mut j = if let Some(j) = job.take() {
            j
        } else {
            let Some(mut j) = recv(&dispatch.job_pool, || shared.decoding_stopped()) else {
                return Err(ParseStop::Stopped);
            };
            j.used = 0;
            j.blocks.clear();
            j
        };
        let start = j.used;
        let Some(dst) = j.comp.get_mut(start..start + block.len) else {
            return Err(StageError::Internal("decode job buffer too small".into()).into());
        };
        input.read_exact(dst, "block data")?;
        j.used += block.len;
        let checksum = header.read_block_checksum(input)?;
        j.blocks.push(BlockRef {
            index: block.index,
            start,
            len: block.len,
            uncompressed: block.uncompressed,
            checksum,
        });
        index += 1;
        job = Some(j);
    }
    if let Some(last) = job.take() {
        dispatch.send(Work::Job(last))?;
    }
    let end = header.read_end(input)?;
    dispatch.send(Work::End(end))
}

/// Start the decoders (several for independent blocks, one for linked ones), the sequencer and
/// the writer, connected by bounded channels and buffer pools.
fn start_stages<'scope, 'env, S: Sink + ?Sized>(
    s: &'scope thread::Scope<'scope, 'env>,
    ctx: &ParserCtx<'env>,
    header: &FrameHeader,
    sink: &'env mut S,
) -> Result<Dispatch, ParseStop> {
    let workers = if header.independent {
        ctx.decode_threads.max(1)
    } else {
        1
    };
    let blocks_per_job = (JOB_CAP / header.block_max).max(1);
    let job_cap = blocks_per_job * header.block_max;
    let shared = ctx.shared;

    // Jobs: parser -> decoder -> back to the pool.
    let jobs = workers + 2;
    let (job_pool_tx, job_pool_rx) = mpsc::sync_channel::<Job>(jobs);
    for _ in 0..jobs {
        let _ = job_pool_tx.send(Job::new(job_cap, blocks_per_job));
    }
    // Decoded buffers: one pool per decoder, returned by the writer.
    let mut out_pools = Vec::with_capacity(workers);
    let mut work_tx = Vec::with_capacity(workers);
    let mut result_rx = Vec::with_capacity(workers);
    for id in 0..workers {
        let (ptx, prx) = mpsc::sync_channel::<AlignedBuf>(ctx.buffers_per_decoder);
        for _ in 0..ctx.buffers_per_decoder {
            let _ = ptx.send(AlignedBuf::new(job_cap, BUF_ALIGN));
        }
        out_pools.push(ptx);
        let (wtx, wrx) = mpsc::sync_channel::<Work>(1);
        let (rtx, rrx) = mpsc::sync_channel::<Decoded>(1);
        work_tx.push(wtx);
        result_rx.push(rrx);
        let stage = DecodeStage {
            id,
            decoder: lz4frame::BlockDecoder::new(header),
            shared,
            work: wrx,
            pool: prx,
            results: rtx,
            job_pool: job_pool_tx.clone(),
        };
        let events = ctx.events.clone();
        spawn_scoped(s, "updog-stage-decode", move || {
            if let Err(e) = stage.run() {
                let _ = events.send(Event::Failed(e.into()));
            }
        })?;
    }
    drop(job_pool_tx);
    let (write_tx, write_rx) = mpsc::sync_channel::<WriteMsg>(1);
    {
        let events = ctx.events.clone();
        let header = *header;
        spawn_scoped(s, "updog-stage-digest", move || {
            if let Err(e) = sequence_stage(&header, shared, &result_rx, &write_tx) {
                let _ = events.send(Event::Failed(e));
            }
        })?;
    }
    let stage = WriteStage {
        sink,
        capacity: ctx.capacity,
        job_cap,
        shared,
        input: write_rx,
        pools: out_pools,
        queue_depth: ctx.write_queue_depth,
        checkpoints: ctx.checkpoints.clone().map(|tx| Checkpoints {
            tx,
            region: ctx.read_back_region,
        }),
    };
    let events = ctx.events.clone();
    spawn_scoped(s, "updog-stage-write", move || match stage.run() {
        Ok(Some(done)) => {
            let _ = events.send(Event::Written(done));
        }
        Ok(None) => {}
        Err(e) => {
            let _ = events.send(Event::Failed(e));
        }
    })?;
    Ok(Dispatch {
        work: work_tx,
        job_pool: job_pool_rx,
        blocks_per_job,
        sent: 0,
    })
}
