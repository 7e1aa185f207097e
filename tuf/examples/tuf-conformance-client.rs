//! The client CLI the TUF community's conformance suite drives (`tuf-conformance`):
//!
//! ```text
//! tuf-conformance-client --metadata-dir DIR init TRUSTED_ROOT
//! tuf-conformance-client --metadata-url URL --metadata-dir DIR refresh
//! tuf-conformance-client --metadata-url URL --metadata-dir DIR --target-name P [--target-name P2 ...]
//!     --target-dir TDIR --target-base-url TURL download
//! ```
//!
//! Exit status 0 on success, 1 on any failure (a panic included). `DIR` holds only the
//! unversioned metadata files (plus the client's `root-history/` sub-directory); `TDIR` holds
//! the verified targets under their percent-encoded names and nothing partial.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tuf::transport::{AnyTransport, Backoff, HttpOptions};
use tuf::{Repository, RepositoryOptions};
use url::Url;

#[derive(Parser, Debug)]
#[command(about = "TUF conformance-suite client over tuf")]
struct Args {
    /// Trusted metadata directory.
    #[arg(long, global = true)]
    metadata_dir: Option<PathBuf>,
    /// Base URL of the repository's metadata.
    #[arg(long, global = true)]
    metadata_url: Option<Url>,
    /// Target to download (repeatable; downloaded in order).
    #[arg(long = "target-name", global = true)]
    target_names: Vec<String>,
    /// Where downloaded targets go.
    #[arg(long, global = true)]
    target_dir: Option<PathBuf>,
    /// Base URL of the repository's targets.
    #[arg(long, global = true)]
    target_base_url: Option<Url>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Seed DIR with a trusted root (no network).
    Init {
        /// The trusted root file.
        trusted_root: PathBuf,
    },
    /// Update the metadata.
    Refresh,
    /// Update the metadata, then download each target.
    Download,
}

fn required<T>(value: Option<T>, name: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("--{name} is required"))
}

fn transport() -> Result<Arc<AnyTransport>, String> {
    let options = HttpOptions {
        stall_timeout: Duration::from_secs(10),
        retries: 1,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        ..HttpOptions::default()
    };
    AnyTransport::new(options)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

fn load(args: &Args, targets_base: Option<Url>) -> Result<Repository, String> {
    let dir = required(args.metadata_dir.clone(), "metadata-dir")?;
    let metadata_url = required(args.metadata_url.clone(), "metadata-url")?;
    let mut opts = RepositoryOptions::new(
        metadata_url.clone(),
        targets_base.unwrap_or(metadata_url),
        dir.clone(),
    );
    // `init` put the trusted root into DIR itself; there is no shipped root to fall back to.
    opts.trusted_root = dir.join("root.json");
    Repository::load(opts, transport()?).map_err(|e| e.to_string())
}

fn run(args: &Args) -> Result<(), String> {
    match &args.command {
        Command::Init { trusted_root } => {
            let dir = required(args.metadata_dir.clone(), "metadata-dir")?;
            let bytes = std::fs::read(trusted_root)
                .map_err(|e| format!("{}: {e}", trusted_root.display()))?;
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            tuf::init_trusted_root(&dir, &bytes).map_err(|e| e.to_string())
        }
        Command::Refresh => load(args, None).map(drop),
        Command::Download => {
            let base = required(args.target_base_url.clone(), "target-base-url")?;
            let target_dir = required(args.target_dir.clone(), "target-dir")?;
            if args.target_names.is_empty() {
                return Err("--target-name is required".to_owned());
            }
            let repo = load(args, Some(base))?;
            for name in &args.target_names {
                let cached = repo
                    .cache_target(name, &target_dir)
                    .map_err(|e| e.to_string())?;
                eprintln!(
                    "{name}: {} {}",
                    if cached.downloaded {
                        "downloaded to"
                    } else {
                        "already verified at"
                    },
                    cached.path.display()
                );
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match std::panic::catch_unwind(|| run(&args)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("error: internal panic");
            ExitCode::from(1)
        }
    }
}
