//! The `updata` program: the publisher's tool. Edits a Bottlerocket-compatible `manifest.json`,
//! and makes and maintains the signed TUF repository that hosts update from.
//!
//! A thin shell: each group of subcommands lives in its own module and calls the libraries
//! (`manifest::edit` for the manifest rules, this crate for keys, roots and repositories). The
//! binary (`src/bin/updata.rs`) calls [`main`]; [`run_from_iter`] runs one command line given as
//! arguments (the end-to-end tests' shim binary runs it).

mod delta_cmd;
mod manifest_cmd;
mod repo_cmd;
mod tty;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Publish updates: edit a manifest.json (updates, rollout waves, migrations) and build the
/// signed TUF repository that hosts read it from.
///
/// Every file is written atomically: an interrupted updata leaves the old file or the new one,
/// never a half-written one.
#[derive(Parser)]
#[command(name = "updata", version, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    log: cli_support::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

/// Every subcommand group, flattened into one list.
#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Manifest(manifest_cmd::ManifestCommand),
    #[command(flatten)]
    Repo(repo_cmd::RepoCommand),
    #[command(flatten)]
    Delta(delta_cmd::DeltaCommand),
}

/// The `updata` program: `updata __generate-docs DIR` writes the man pages and completions (and
/// exits), anything else runs [`run_from_iter`] on the process's arguments.
pub fn main() -> ExitCode {
    cli_support::docs::generate_if_asked(Cli::command);
    run_from_iter(std::env::args_os())
}

/// Runs `updata` with `args` as its command line (the program name first, as in
/// `std::env::args_os()`): parses it (a usage error exits 2, as clap does), runs the
/// subcommand, prints, and returns the exit status.
pub fn run_from_iter<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    cli_support::logging::init("updata", &cli.log);
    let result = match cli.command {
        Command::Manifest(c) => c.run(),
        Command::Repo(c) => c.run(),
        Command::Delta(c) => c.run(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            cli_support::logging::print_error(
                "updata",
                &format!("error: {}", cli_support::error_chain(e.as_ref())),
            );
            ExitCode::FAILURE
        }
    }
}
