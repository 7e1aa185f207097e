//! The decoder stage: decodes jobs of consecutive lz4 blocks into pooled aligned buffers
//! (several decoders in parallel for frames with independent blocks).

use std::sync::mpsc::{Receiver, SyncSender};

use bootpart::io::AlignedBuf;

use super::control::{Filled, Shared, recv};
use super::lz4frame::{BlockDecoder, BlockRef, FrameEnd, FrameError};

/// A decode job: several consecutive blocks whose decoded sizes fit one output buffer.
pub(super) struct Job {
    pub comp: Vec<u8>,
    pub used: usize,
    pub blocks: Vec<BlockRef>,
}

impl Job {
    pub fn new(cap: usize, blocks: usize) -> Self {
        Self {
            comp: vec![0u8; cap],
            used: 0,
            blocks: Vec::with_capacity(blocks),
        }
    }
}

/// What the parser sends a decoder.
pub(super) enum Work {
    Job(Job),
    End(FrameEnd),
}

/// A decoded buffer and the decoder whose pool it goes back to.
pub(super) struct OutBuf {
    pub buf: Filled<AlignedBuf>,
    pub owner: usize,
}

/// What a decoder sends the sequencer.
pub(super) enum Decoded {
    Data(OutBuf),
    End(FrameEnd),
}

/// One decoder thread and its queues.
pub(super) struct DecodeStage<'a> {
    /// Which decoder (and output pool) this is.
    pub id: usize,
    pub decoder: BlockDecoder,
    pub shared: &'a Shared,
    pub work: Receiver<Work>,
    /// Its empty output buffers.
    pub pool: Receiver<AlignedBuf>,
    pub results: SyncSender<Decoded>,
    /// Where decoded jobs' buffers go back to the parser.
    pub job_pool: SyncSender<Job>,
}

impl DecodeStage<'_> {
    pub fn run(mut self) -> Result<(), FrameError> {
        let shared = self.shared;
        let stop = || shared.decoding_stopped();
        while let Some(msg) = recv(&self.work, stop) {
            let job = match msg {
                Work::Job(job) => job,
                Work::End(end) => {
                    let _ = self.results.send(Decoded::End(end));
                    return Ok(());
                }
            };
            let Some(mut out) = recv(&self.pool, stop) else {
                return Ok(());
            };
            let len = self.decoder.decode(&job.blocks, &job.comp, &mut out)?;
            let _ = self.job_pool.try_send(job);
            let buf = OutBuf {
                buf: Filled::new(out, len),
                owner: self.id,
            };
            if self.results.send(Decoded::Data(buf)).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}
