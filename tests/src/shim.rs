//! The programs the end-to-end tests run, in one multi-call binary (`e2e-shim`): run through a
//! link named `updog`, `signpost`, `updata`, `agent` or `embed` (see [`crate::bin_dir`]), it is
//! that program.
//!
//! Each is the real program's entry point: `updog_cli::updog`, `updog_cli::signpost`,
//! `updata::cli`, and updog's examples `agent` and `embed` compiled from their own source
//! files. One binary rather than five because each is a link of the whole updater, and cargo
//! builds it with the tests (it is a bin of this package: `CARGO_BIN_EXE_e2e-shim`) instead of
//! a nested `cargo build`.
//!
//! `updog` alone takes the tests' fault hooks, installed through
//! [`updog_cli::updog::run_from_iter_with`]; the updog library never reads them, and the
//! packaged `updog` has none:
//!
//! - `UPDOG_CRASH_AT=<step>` (a [`Step::name`], for example `mark-valid`): the process kills
//!   itself with `SIGKILL` right before that step; `UPDOG_CRASH_AT=gpt-io:N`: before its N-th
//!   GPT write or flush (counting from 1). A real kill: no destructor and no error path runs.
//! - `UPDOG_FAIL_AT=gpt-io:N`: that GPT write or flush fails with EIO without being done (a
//!   disk that refuses a flush), and the process carries on.
//!
//! A value that names no step or operation is a usage error (exit 2), so a misspelt hook
//! cannot pass for a crash point that was never reached.

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bootpart::io::BlockIo;
use updog::steps::{CountingIo, Step};
use updog::updater::Updater;

// The examples, from updog's own `examples/` so that what the tests run is what embedders
// read. Their `main` is `pub` for this.
#[path = "../../updog/examples/agent.rs"]
mod agent;
#[path = "../../updog/examples/embed.rs"]
mod embed;

/// The names the shim answers to: the file names of the links in [`crate::bin_dir`].
pub const PROGRAMS: [&str; 5] = ["updog", "signpost", "updata", "agent", "embed"];

/// The shim binary's `main`: runs the program its link is named after.
pub fn main() -> ExitCode {
    dispatch().unwrap_or_else(|| {
        eprintln!(
            "e2e-shim: run through a link named one of {PROGRAMS:?} (see e2e_tests::bin_dir)"
        );
        ExitCode::from(2)
    })
}

/// Runs the program named by the file name this process was started as (`argv[0]`), if it is
/// one of [`PROGRAMS`]; `None` otherwise. A program of this package that the harness uses as
/// the shim (the demo, run by `cargo run` without the shim built) calls it first thing.
pub fn dispatch() -> Option<ExitCode> {
    let argv0 = std::env::args_os().next()?;
    let name = Path::new(&argv0).file_name()?.to_str()?.to_string();
    Some(match name.as_str() {
        "updog" => updog(),
        "signpost" => updog_cli::signpost::main(),
        "updata" => updata::cli::main(),
        "agent" => agent::main(),
        "embed" => embed::main(),
        _ => return None,
    })
}

/// `updog`, with the hook `UPDOG_CRASH_AT` or `UPDOG_FAIL_AT` asks for.
fn updog() -> ExitCode {
    match Fault::from_env() {
        Ok(None) => updog_cli::updog::main(),
        Ok(Some(fault)) => {
            updog_cli::updog::run_from_iter_with(std::env::args_os(), |u| fault.install(u))
        }
        Err(e) => {
            eprintln!("updog (e2e-shim): {e}");
            ExitCode::from(2)
        }
    }
}

/// A fault to inject into one `updog` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Kill the process right before this step.
    CrashAtStep(Step),
    /// Kill the process right before the N-th GPT write or flush.
    CrashAtGptIo(usize),
    /// The N-th GPT write or flush fails with EIO.
    FailAtGptIo(usize),
}

impl Fault {
    fn from_env() -> Result<Option<Fault>, String> {
        if let Some(spec) = std::env::var_os("UPDOG_FAIL_AT") {
            let spec = spec.to_string_lossy();
            return match gpt_io(&spec) {
                Some(n) => Ok(Some(Fault::FailAtGptIo(n))),
                None => Err(format!("UPDOG_FAIL_AT={spec}: want gpt-io:N (N from 1)")),
            };
        }
        let Some(spec) = std::env::var_os("UPDOG_CRASH_AT") else {
            return Ok(None);
        };
        let spec = spec.to_string_lossy();
        if let Some(n) = gpt_io(&spec) {
            return Ok(Some(Fault::CrashAtGptIo(n)));
        }
        match Step::ALL.iter().find(|s| s.name() == spec) {
            Some(step) => Ok(Some(Fault::CrashAtStep(*step))),
            None => Err(format!(
                "UPDOG_CRASH_AT={spec}: want gpt-io:N or a step, one of {:?}",
                Step::ALL.map(Step::name)
            )),
        }
    }

    fn install(self, updater: Updater) -> Updater {
        let count = Arc::new(AtomicUsize::new(0));
        match self {
            Fault::CrashAtStep(at) => updater.on_step(move |step| {
                if step == at {
                    kill_self();
                }
            }),
            Fault::CrashAtGptIo(at) => updater.with_gpt_io(move |file| {
                Box::new(CountingIo::new(file, Arc::clone(&count), move |n| {
                    if n == at {
                        kill_self();
                    }
                }))
            }),
            Fault::FailAtGptIo(at) => updater.with_gpt_io(move |file| {
                Box::new(FailingIo {
                    inner: file,
                    count: Arc::clone(&count),
                    at,
                })
            }),
        }
    }
}

/// `gpt-io:N` with N at least 1.
fn gpt_io(spec: &str) -> Option<usize> {
    spec.strip_prefix("gpt-io:")?
        .parse()
        .ok()
        .filter(|n| *n > 0)
}

/// A GPT handle whose `at`-th write or flush (counted over the whole run through `count`)
/// fails with EIO without being done; every other one goes through.
struct FailingIo {
    inner: File,
    count: Arc<AtomicUsize>,
    at: usize,
}

impl FailingIo {
    fn fail_now(&self) -> io::Result<()> {
        if self.count.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        Ok(())
    }
}

impl BlockIo for FailingIo {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        BlockIo::read_exact_at(&self.inner, buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.fail_now()?;
        BlockIo::write_all_at(&mut self.inner, buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.fail_now()?;
        BlockIo::sync_data(&mut self.inner)
    }

    fn len(&self) -> io::Result<u64> {
        BlockIo::len(&self.inner)
    }
}

fn kill_self() -> ! {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; should delivery be delayed, do not run on.
    loop {
        std::thread::park();
    }
}
