//! The named steps of stage, apply and revert, and the hooks that observe them.
//!
//! Every change to the disk or the staged record is one [`Step`]; the updater calls the step
//! observer (see [`crate::updater::Updater::on_step`]) right before each, so a test can stop the
//! operation at every step boundary, and a GPT I/O wrapper (see
//! [`crate::updater::Updater::with_gpt_io`]) can stop it between any two writes or flushes of a
//! GPT update. The crash-point tests use both, in process and against the real binary.
//!
//! For the binary, `UPDOG_CRASH_AT` is a test hook, compiled in only with the `test-hooks`
//! cargo feature (the end-to-end tests build their binaries with it; a release or package build
//! does not, and ignores the variable): `UPDOG_CRASH_AT=<step>` (a [`Step::name`], for example
//! `mark-valid`) makes the process kill itself with `SIGKILL` when it reaches that step, and
//! `UPDOG_CRASH_AT=gpt-io:N` before its N-th GPT write or flush (counting from 1). A real kill:
//! no destructor and no error path runs. `UPDOG_FAIL_AT=gpt-io:N` instead makes that write or
//! flush fail with EIO (a disk that refuses a flush), and the process carries on.

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

    /// The step's name (as `UPDOG_CRASH_AT` takes it).
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

/// Without the `test-hooks` feature there are no crash hooks: the environment is not read.
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn crash_hooks_from_env() -> (Option<StepObserver>, Option<GptIoWrapper>) {
    (None, None)
}

/// The hooks `UPDOG_CRASH_AT` (or `UPDOG_FAIL_AT`) asks for, if it is set.
#[cfg(feature = "test-hooks")]
pub(crate) fn crash_hooks_from_env() -> (Option<StepObserver>, Option<GptIoWrapper>) {
    if let Some(at) = std::env::var("UPDOG_FAIL_AT")
        .ok()
        .and_then(|spec| spec.strip_prefix("gpt-io:")?.parse::<usize>().ok())
    {
        let count = Arc::new(AtomicUsize::new(0));
        let wrap: GptIoWrapper = Arc::new(move |file| {
            Box::new(FailingIo {
                inner: file,
                count: Arc::clone(&count),
                at,
            })
        });
        return (None, Some(wrap));
    }
    let Ok(spec) = std::env::var("UPDOG_CRASH_AT") else {
        return (None, None);
    };
    if let Some(n) = spec.strip_prefix("gpt-io:") {
        let Ok(at) = n.parse::<usize>() else {
            return (None, None);
        };
        let count = Arc::new(AtomicUsize::new(0));
        let wrap: GptIoWrapper = Arc::new(move |file| {
            Box::new(CountingIo::new(file, Arc::clone(&count), move |n| {
                if n == at {
                    kill_self();
                }
            }))
        });
        return (None, Some(wrap));
    }
    let observer: StepObserver = Arc::new(move |step| {
        if step.name() == spec {
            kill_self();
        }
    });
    (Some(observer), None)
}

/// `UPDOG_FAIL_AT=gpt-io:N`: the N-th GPT write or flush fails with EIO without being done (a
/// disk that refuses a flush); every other one goes through.
#[cfg(feature = "test-hooks")]
struct FailingIo {
    inner: File,
    count: Arc<AtomicUsize>,
    at: usize,
}

#[cfg(feature = "test-hooks")]
impl FailingIo {
    fn fails(&self) -> bool {
        self.count.fetch_add(1, Ordering::SeqCst) + 1 == self.at
    }
}

#[cfg(feature = "test-hooks")]
impl BlockIo for FailingIo {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        BlockIo::read_exact_at(&self.inner, buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.fails() {
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        BlockIo::write_all_at(&mut self.inner, buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        if self.fails() {
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        BlockIo::sync_data(&mut self.inner)
    }

    fn len(&self) -> io::Result<u64> {
        BlockIo::len(&self.inner)
    }
}

#[cfg(feature = "test-hooks")]
fn kill_self() {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; should delivery be delayed, do not run on.
    loop {
        std::thread::park();
    }
}
