//! `signpost`: show and change the A/B boot selection bits on the OS disk.
//!
//! A thin shell over the `signpost` library: parse arguments, call the library ([`Target`]: it
//! takes the disk lock for changes), print.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use signpost::{SetId, Target, Transition};

/// Show and change which partition set (A or B) the bootloader boots next.
#[derive(Debug, Parser)]
#[command(name = "signpost", version)]
struct Cli {
    /// The OS disk (block device or disk image). Default: the disk holding the running root
    /// filesystem.
    #[arg(long, global = true, value_name = "PATH")]
    disk: Option<PathBuf>,
    /// The running set. Default: found from the running root filesystem.
    #[arg(long, global = true, value_name = "A|B")]
    active: Option<SetId>,
    /// Seconds to wait for another process (signpost, updog, a partitioning tool) that holds
    /// the disk's lock (0: fail at once). Changes lock the disk itself (a BSD flock on its
    /// device node or image file). Longer than updog's 2 s: signpost's changes are one-shot,
    /// mostly from boot-time units, and should outlast a brief owner rather than fail.
    #[arg(long, global = true, value_name = "SECS", default_value_t = signpost::lock::ONE_SHOT_WAIT.as_secs())]
    lock_timeout: u64,
    #[command(flatten)]
    log: cli_support::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show both partition sets, the running set and the set that boots next.
    Status {
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Change(Change),
    /// Print `true` if any boot has ever succeeded on this disk, nothing otherwise (exit 0
    /// either way, as the reference: its unit writes this to a file tested for being empty).
    HasBootEverSucceeded {
        /// Print `true` or `false` as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite both GPT copies unchanged (repairs a damaged or stale copy).
    RewriteTable,
}

/// The subcommands that apply one [`Transition`]: one per entry of [`Transition::ALL`], named
/// and described by the library, so the CLI cannot drift from the state machine.
#[derive(Debug, Clone, Copy)]
struct Change(Transition);

impl clap::FromArgMatches for Change {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        matches
            .subcommand_name()
            .and_then(Transition::from_name)
            .map(Change)
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Subcommand for Change {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        Transition::ALL.into_iter().fold(cmd, |cmd, t| {
            cmd.subcommand(clap::Command::new(t.name()).about(t.summary()))
        })
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        Transition::from_name(name).is_some()
    }
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let target = Target {
        disk: cli.disk.clone(),
        active: cli.active,
    };
    let wait = Duration::from_secs(cli.lock_timeout);
    match cli.command {
        Command::Change(Change(t)) => match target.apply(t, wait)? {
            Some(next) => println!("{t}: done; next boot: set {next}"),
            None => println!("{t}: done; next boot: none"),
        },
        Command::RewriteTable => {
            let repaired = target.rewrite_table(wait)?;
            println!(
                "rewrite-table: done{}",
                if repaired {
                    "; a damaged or stale GPT copy was repaired"
                } else {
                    ""
                }
            );
        }
        Command::Status { json } => {
            let status = target.open_read_only()?.status();
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
        Command::HasBootEverSucceeded { json } => {
            let succeeded = target.open_read_only()?.has_boot_ever_succeeded()?;
            if json {
                println!("{succeeded}");
            } else if succeeded {
                println!("true");
            }
        }
    }
    Ok(())
}

/// The `signpost` program: `signpost __generate-docs DIR` writes the man pages and
/// completions (and exits), anything else runs [`run_from_iter`] on the process's arguments.
pub fn main() -> ExitCode {
    cli_support::docs::generate_if_asked(Cli::command);
    run_from_iter(std::env::args_os())
}

/// Runs `signpost` with `args` as its command line (the program name first, as in
/// `std::env::args_os()`): parses it (a usage error exits 2, as clap does), runs the
/// subcommand, prints, and returns the exit status.
pub fn run_from_iter<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    cli_support::logging::init("signpost", &cli.log);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut line = cli_support::error_chain(e.as_ref()).replace('\n', " ");
            if matches!(e.downcast_ref(), Some(signpost::Error::Discovery { .. }))
                && !line.contains("explicitly")
            {
                line.push_str(" (choose explicitly with --disk PATH --active A|B)");
            }
            if permission_denied(e.as_ref()) {
                line.push_str(
                    " (signpost needs root: it reads and writes the disk's partition table, and \
                     changes lock the disk itself)",
                );
            }
            cli_support::logging::print_error("signpost", &line);
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` or one of its causes is an I/O "permission denied".
fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_is_found_among_the_causes() {
        let denied = signpost::Error::Discovery {
            disk: None,
            source: Box::new(bootpart::Error::Io {
                path: "/dev/vda".into(),
                what: "opening".into(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            }),
        };
        assert!(permission_denied(&denied));
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!permission_denied(&missing));
    }
}
