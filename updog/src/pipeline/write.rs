//! The writer stage: aligned writes onto the sink, a few in flight on I/O threads when the sink
//! offers a parallel handle, unaligned pieces coalesced in a carry buffer, never past the
//! partition's end; it announces flushed-and-readable regions to the read-back stage.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;

use bootpart::io::AlignedBuf;

use super::control::{Completion, Shared, recv, spawn_scoped};
use super::decode::OutBuf;
use super::sink::{PAGE, ParallelWrite};
use super::{BUF_ALIGN, Sink, StageError};

/// What the sequencer sends the writer.
pub(super) enum WriteMsg {
    Data(OutBuf),
    End(WriteDone),
}

/// The decoded length and digest of everything written.
#[derive(Debug, Clone, Copy)]
pub(super) struct WriteDone {
    pub decoded_len: u64,
    pub digest: u128,
}

/// Where and how often the writer announces flushed-and-readable regions to the verifier.
pub(super) struct Checkpoints {
    pub tx: Sender<u64>,
    pub region: u64,
}

/// Aligned writes, coalescing unaligned pieces in a carry buffer.
struct Writer<'a, S: Sink + ?Sized> {
    sink: &'a mut S,
    completed: &'a Completion,
    align: usize,
    /// Bytes handed to the sink (always a multiple of `align` until the final tail).
    offset: u64,
    carry: Option<AlignedBuf>,
    /// Bytes held in `carry` (at most `carry_cap`).
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
            let (cap, align) = (self.carry_cap, BUF_ALIGN.max(self.align));
            let carry = self
                .carry
                .get_or_insert_with(|| AlignedBuf::new(cap, align));
            let take = rest.len().min(cap - self.carry_len);
            carry[self.carry_len..self.carry_len + take].copy_from_slice(&rest[..take]);
            self.carry_len += take;
            rest = &rest[take..];
            if self.carry_len == cap {
                self.flush_carry()?;
            }
        }
        Ok(())
    }

    fn flush_carry(&mut self) -> Result<(), StageError> {
        let Some(carry) = self.carry.take() else {
            return Ok(());
        };
        let len = std::mem::take(&mut self.carry_len);
        let r = if len == 0 {
            Ok(())
        } else {
            self.write(&carry[..len])
        };
        self.carry = Some(carry);
        r
    }
}

/// The writer thread and what it is connected to.
pub(super) struct WriteStage<'a, S: Sink + ?Sized> {
    pub sink: &'a mut S,
    /// The partition's size: nothing is written past it.
    pub capacity: u64,
    /// Size of one decoded buffer (the carry buffer is as large, rounded to the alignment).
    pub job_cap: usize,
    pub shared: &'a Shared,
    pub input: Receiver<WriteMsg>,
    /// Where written buffers go back to their decoder.
    pub pools: Vec<SyncSender<AlignedBuf>>,
    /// Direct writes in flight at once through the sink's parallel handle.
    pub queue_depth: usize,
    pub checkpoints: Option<Checkpoints>,
}

/// A whole aligned buffer for an I/O thread, and where it goes.
struct IoJob {
    buf: OutBuf,
    offset: u64,
}

impl<S: Sink + ?Sized> WriteStage<'_, S> {
    fn give_back(pools: &[SyncSender<AlignedBuf>], buf: OutBuf) {
        if let Some(pool) = pools.get(buf.owner) {
            let _ = pool.try_send(buf.buf.into_inner());
        }
    }

    /// Write whole buffers handed over by the writer until it hangs up; the first error goes
    /// into `io_error` and ends this thread.
    fn io_thread(
        handle: &dyn ParallelWrite,
        jobs: &Mutex<Receiver<IoJob>>,
        io_error: &Mutex<Option<StageError>>,
        completed: &Completion,
        pools: &[SyncSender<AlignedBuf>],
    ) {
        loop {
            let job = match jobs.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(IoJob { buf, offset }) = job else {
                return;
            };
            let data = buf.buf.data();
            if let Err(source) = handle.write_all_at(data, offset) {
                if let Ok(mut slot) = io_error.lock() {
                    slot.get_or_insert(StageError::Write {
                        offset,
                        len: data.len(),
                        source,
                    });
                }
                return;
            }
            completed.done(offset, offset + data.len() as u64);
            Self::give_back(pools, buf);
        }
    }

    pub fn run(self) -> Result<Option<WriteDone>, StageError> {
        let Self {
            sink,
            capacity,
            job_cap,
            shared,
            input,
            pools,
            queue_depth,
            checkpoints,
        } = self;
        let align = sink.alignment().max(1);
        let parallel = if queue_depth > 1 {
            sink.parallel_writer()
        } else {
            None
        };
        let io_error: Mutex<Option<StageError>> = Mutex::new(None);
        let mut w = Writer {
            sink,
            completed: &shared.completed,
            align,
            offset: 0,
            carry: None,
            carry_len: 0,
            carry_cap: job_cap.div_ceil(align) * align,
        };
        let (job_tx, job_rx) = mpsc::sync_channel::<IoJob>(0);
        let job_rx = Mutex::new(job_rx);
        let job_tx = Some(job_tx);
        let pools = &pools[..];
        let outcome = thread::scope(|s| {
            // Owned by this closure, so that every way out of it (end, error, abort) hangs up
            // on the I/O threads before the scope waits for them.
            let mut job_tx = job_tx;
            // With a parallel handle, whole aligned buffers go to `queue_depth` I/O threads,
            // so the device sees several writes at once; everything else (carry, tail) stays
            // here.
            if let Some(handle) = &parallel {
                for _ in 0..queue_depth {
                    let (handle, job_rx, io_error) = (Arc::clone(handle), &job_rx, &io_error);
                    let completed = &shared.completed;
                    let spawned = spawn_scoped(s, "updog-stage-io", move || {
                        Self::io_thread(&*handle, job_rx, io_error, completed, pools);
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
            while let Some(msg) = recv(&input, || shared.decoding_stopped()) {
                let buf = match msg {
                    WriteMsg::Data(buf) => buf,
                    WriteMsg::End(done) => {
                        // Let the I/O threads finish, then write the (possibly unaligned) tail.
                        drop(job_tx.take());
                        return Ok(Some(done));
                    }
                };
                let len = buf.buf.len();
                let needed = logical + len as u64;
                if needed > capacity {
                    return Err(StageError::TooLarge { capacity, needed });
                }
                logical = needed;
                let whole = w.carry_len == 0
                    && len % align == 0
                    && buf.buf.data().as_ptr().align_offset(align) == 0;
                match &job_tx {
                    Some(tx) if whole && len > 0 => {
                        let offset = w.offset;
                        w.offset += len as u64;
                        if tx.send(IoJob { buf, offset }).is_err() {
                            return Err(take_io_error().unwrap_or_else(|| {
                                StageError::Internal("write threads ended".into())
                            }));
                        }
                    }
                    _ => {
                        w.push(buf.buf.data())?;
                        Self::give_back(pools, buf);
                    }
                }
                shared.written.store(logical, Ordering::Relaxed);
                // Everything below `w.offset` is written or being written: once those writes
                // return, the verifier may flush and read it back. Only at page boundaries,
                // so that no later write touches a page it has read.
                if let Some(c) = &checkpoints {
                    if c.region > 0
                        && w.offset >= announced.saturating_add(c.region)
                        && w.offset % PAGE == 0
                    {
                        announced = w.offset;
                        // The verifier stops listening only when it failed or staging is
                        // aborted; both are reported elsewhere.
                        let _ = c.tx.send(announced);
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
}
