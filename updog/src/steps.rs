//! The named steps of stage, apply and revert, and the hooks that observe them.
//!
//! Every change to the disk or the staged record is one [`Step`]; the updater calls the step
//! observer (see [`crate::updater::Updater::on_step`]) right before each, so a test can stop the
//! operation at every step boundary, and a GPT I/O wrapper (see
//! [`crate::updater::Updater::with_gpt_io`]) can stop it between any two writes or flushes of a
//! GPT update. The crash-point tests use both, in process and against the real binary.
//!
//! The library never installs a hook by itself and reads no environment variable for them: a
//! program installs them explicitly. The end-to-end tests' shim of the `updog` binary does, to
//! kill the real command line program at a named step or inside a GPT write (see the
//! `e2e-tests` package); the packaged `updog` installs none.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bootpart::io::BlockIo;

use bootpart::ImageKind;

/// One step of an operation that changes the disk or the record, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// stage: clear the inactive set (GPT write).
    Clear,
    /// stage: remove the record of the set just cleared.
    RemoveRecord,
    /// stage: stream one image onto its partition.
    WriteImage(ImageKind),
    /// stage: write the record of the verified images (not applied yet).
    RecordStaged,
    /// stage: mark the inactive set valid (GPT write).
    MarkValid,
    /// apply: record the set as applied.
    RecordApplied,
    /// apply: flip the boot flags to the staged set (GPT write).
    Flip,
    /// revert: cancel the flip (GPT write).
    CancelFlip,
    /// revert: record the set as no longer applied.
    RecordReverted,
}

impl Step {
    /// Every step, in the order stage, apply and revert run them.
    pub const ALL: [Step; 11] = [
        Step::Clear,
        Step::RemoveRecord,
        Step::WriteImage(ImageKind::Root),
        Step::WriteImage(ImageKind::Boot),
        Step::WriteImage(ImageKind::Hash),
        Step::RecordStaged,
        Step::MarkValid,
        Step::RecordApplied,
        Step::Flip,
        Step::CancelFlip,
        Step::RecordReverted,
    ];

    /// The step's name (as the end-to-end tests' crash hook takes it).
    pub fn name(self) -> &'static str {
        match self {
            Step::Clear => "clear",
            Step::RemoveRecord => "remove-record",
            Step::WriteImage(ImageKind::Root) => "write-root",
            Step::WriteImage(ImageKind::Boot) => "write-boot",
            Step::WriteImage(ImageKind::Hash) => "write-hash",
            Step::RecordStaged => "record-staged",
            Step::MarkValid => "mark-valid",
            Step::RecordApplied => "record-applied",
            Step::Flip => "flip",
            Step::CancelFlip => "cancel-flip",
            Step::RecordReverted => "record-reverted",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Observes each step before it runs.
pub type StepObserver = Arc<dyn Fn(Step) + Send + Sync>;

/// Wraps the disk handle boot flags are read and written through.
pub type GptIoWrapper = Arc<dyn Fn(File) -> Box<dyn BlockIo + Send> + Send + Sync>;

/// A GPT handle that calls `before` with a running count (1, 2, ...) before each write or flush.
pub struct CountingIo<F> {
    inner: File,
    count: Arc<AtomicUsize>,
    before: F,
}

impl<F: Fn(usize) + Send> CountingIo<F> {
    /// Counts the writes and flushes through `inner` into `count` (shared across handles, so
    /// the count runs over a whole operation).
    pub fn new(inner: File, count: Arc<AtomicUsize>, before: F) -> Self {
        CountingIo {
            inner,
            count,
            before,
        }
    }

    fn tick(&self) {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        (self.before)(n);
    }
}

impl<F: Fn(usize) + Send> BlockIo for CountingIo<F> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        BlockIo::read_exact_at(&self.inner, buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.tick();
        BlockIo::write_all_at(&mut self.inner, buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.tick();
        BlockIo::sync_data(&mut self.inner)
    }

    fn len(&self) -> io::Result<u64> {
        BlockIo::len(&self.inner)
    }
}
