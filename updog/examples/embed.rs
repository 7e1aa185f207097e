//! The smallest embedding: configuration in code, a check, and what to do about each kind of
//! failure, with nothing but the `updog` crate's own exports (no `url`, `waves` or `bootpart`
//! dependency to add and pin).
//!
//! ```sh
//! cargo run -p updog --example embed -- METADATA_URL TARGETS_URL DISK ROOT_JSON OS_RELEASE STATE_DIR
//! ```
//!
//! It prints the update on offer (exit 0), why there is none (exit 0), or the error's kind and
//! the error (exit 1). `tests/tests/agent_api.rs` runs it against a served repository.

use std::path::PathBuf;
use std::process::ExitCode;

use updog::config::Config;
use updog::updater::{CheckOptions, CheckOutcome, ErrorKind, Updater};
use updog::{Seed, SetId, Url};

/// The example's program. Public because the end-to-end tests compile this file into their
/// shim binary (`e2e_tests::shim`) and run it from there.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [meta, targets, disk, root, os_release, state] = args.as_slice() else {
        eprintln!("usage: embed METADATA_URL TARGETS_URL DISK ROOT_JSON OS_RELEASE STATE_DIR");
        return ExitCode::from(2);
    };
    let (Ok(meta), Ok(targets)) = (meta.parse::<Url>(), targets.parse::<Url>()) else {
        eprintln!("embed: the URLs must be absolute (http://, https:// or file://)");
        return ExitCode::from(2);
    };
    let Ok(seed) = Seed::new(42) else {
        return ExitCode::FAILURE;
    };
    let mut config = Config::new(meta, targets, seed);
    config.disk = Some(PathBuf::from(disk));
    config.active_set = Some(SetId::A);
    config.trusted_root = PathBuf::from(root);
    config.os_release = PathBuf::from(os_release);
    let state = PathBuf::from(state);
    config.metadata_dir = state.join("metadata");
    config.state_file = state.join("state.json");

    let updater = match Updater::new(config) {
        Ok(u) => u,
        Err(e) => {
            println!("error kind: {:?}: {e}", e.kind());
            return ExitCode::FAILURE;
        }
    };
    match updater.check(&CheckOptions::default()) {
        Ok(check) => {
            match check.outcome {
                CheckOutcome::Available(a) => println!("available: {}", a.version()),
                CheckOutcome::NoUpdate(reason) => println!("no update: {reason}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One match for what an agent acts on.
            let advice = match e.kind() {
                ErrorKind::Unreachable | ErrorKind::Busy => "retry later",
                ErrorKind::Untrusted => "alert: the repository is not trusted",
                ErrorKind::Cancelled => "stopped; safe to retry",
                ErrorKind::BootNotConfirmed => "mark the running boot good first",
                ErrorKind::NoUpdate => "nothing to do",
                ErrorKind::Disk => "check the disk configuration",
                _ => "see the error",
            };
            println!("error kind: {:?} ({advice}): {e}", e.kind());
            ExitCode::FAILURE
        }
    }
}
