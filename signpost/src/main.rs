//! `signpost`: show and change the A/B boot selection bits on the OS disk.
//!
//! A thin shell over the `signpost` library: parse arguments, call the library (which takes the
//! disk lock for changes), print.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use signpost::{SetId, Signpost, Transition};

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
    /// device node or image file).
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30)]
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
    /// Clear the inactive set (priority 0, tries 0, not successful) before writing images to it.
    ClearInactive,
    /// Mark the inactive set as holding a complete image (tries 1).
    MarkInactiveValid,
    /// Boot the inactive set next, once, falling back to the running set.
    UpgradeToInactive,
    /// Undo upgrade-to-inactive.
    CancelUpgrade,
    /// Boot the inactive (previous) set next.
    RollbackToInactive,
    /// Mark the running set as successfully booted.
    MarkSuccessfulBoot,
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

impl Command {
    fn transition(&self) -> Option<Transition> {
        Some(match self {
            Command::ClearInactive => Transition::ClearInactive,
            Command::MarkInactiveValid => Transition::MarkInactiveValid,
            Command::UpgradeToInactive => Transition::UpgradeToInactive,
            Command::CancelUpgrade => Transition::CancelUpgrade,
            Command::RollbackToInactive => Transition::RollbackToInactive,
            Command::MarkSuccessfulBoot => Transition::MarkSuccessfulBoot,
            Command::Status { .. }
            | Command::HasBootEverSucceeded { .. }
            | Command::RewriteTable => {
                return None;
            }
        })
    }
}

fn open(cli: &Cli, write: bool) -> Result<Signpost, signpost::Error> {
    let wait = Duration::from_secs(cli.lock_timeout);
    match (&cli.disk, write) {
        (Some(disk), true) => Signpost::open_waiting(disk, cli.active, wait),
        (Some(disk), false) => Signpost::open_read_only(disk, cli.active),
        (None, true) => Signpost::open_host_waiting(cli.active, wait),
        (None, false) => Signpost::open_host_read_only(cli.active),
    }
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(t) = cli.command.transition() {
        let mut sp = open(cli, true)?;
        sp.apply(t)?;
        match sp.next_boot() {
            Some(next) => println!("{t}: done; next boot: set {next}"),
            None => println!("{t}: done; next boot: none"),
        }
        return Ok(());
    }
    if let Command::RewriteTable = cli.command {
        let repaired = open(cli, true)?.rewrite_table()?;
        println!(
            "rewrite-table: done{}",
            if repaired {
                "; a damaged or stale GPT copy was repaired"
            } else {
                ""
            }
        );
        return Ok(());
    }
    let sp = open(cli, false)?;
    match cli.command {
        Command::Status { json: true } => {
            println!("{}", serde_json::to_string_pretty(&sp.status())?);
        }
        Command::Status { json: false } => print!("{}", sp.status()),
        Command::HasBootEverSucceeded { json } => {
            let succeeded = sp.has_boot_ever_succeeded()?;
            if json {
                println!("{succeeded}");
            } else if succeeded {
                println!("true");
            }
        }
        _ => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    cli_support::docs::generate_if_asked(Cli::command);
    let cli = Cli::parse();
    cli_support::logging::init("signpost", &cli.log);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut line = e.to_string().replace('\n', " ");
            if matches!(e.downcast_ref(), Some(signpost::Error::Discovery { .. }))
                && !line.contains("explicitly")
            {
                line.push_str(" (choose explicitly with --disk PATH --active A|B)");
            }
            if permission_denied(e.as_ref()) {
                line.push_str(
                    " (signpost needs root: it reads and writes the disk's partition table and \
                     its lock file)",
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
