//! `updog`: check for, stage, apply and revert OS image updates. A thin shell over the
//! `updog` library: parse arguments, call [`updog::updater::Updater`], print.
//!
//! [`main`] is the program; [`run_from_iter`] runs one command line.
//!
//! Exit codes are documented in [`updog::exit`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use manifest::select::NoUpdateReason;
use updog::advice::error_chain;
use updog::config::{Config, DEFAULT_CONFIG_PATH};
use updog::os_release::OsRelease;
use updog::progress::{ProgressEvent, TerminalBar, json_line};
use updog::updater::{
    CancelHandle, Check, CheckOptions, CheckOutcome, Staged, UpdateError, Updater,
};

#[derive(Parser)]
#[command(
    name = "updog",
    version,
    about = "Check for, stage, apply and revert A/B OS image updates from a TUF repository",
    after_help = "Exit codes: 0 success (also `update` with nothing to do, and an empty `whats --all`), \
                  1 failure (also `check-update` with no update available), 2 usage, \
                  4 another update in progress, 5 interrupted (SIGINT/SIGTERM) before anything changed or while staging."
)]
struct Args {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options accepted anywhere on the command line, before or after the subcommand (as the
/// reference accepts them).
#[derive(clap::Args)]
struct GlobalArgs {
    /// Configuration file.
    #[arg(long, short = 'c', global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// os-release file to read the running variant and version from (overrides the config).
    #[arg(long, global = true, hide = true)]
    os_release: Option<PathBuf>,
    /// JSON output: the reference's update object (an array with `whats --all`); the status
    /// object; `{"no_update": {...}}` when there is nothing to take.
    #[arg(long, short = 'j', global = true)]
    json: bool,
    /// Take the updates of this variant instead of os-release's `VARIANT_ID`.
    #[arg(long, global = true, value_name = "NAME")]
    variant: Option<String>,
    #[command(flatten)]
    log: cli_support::logging::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Show the update this host would take (exit 0), or why there is none (exit 1).
    #[command(visible_alias = "whats")]
    CheckUpdate {
        /// List every update this host may take now (its wave is open), newest first, even
        /// older ones; an empty list is not an error.
        #[arg(long, short = 'a')]
        all: bool,
        /// Ignore wave schedules.
        #[arg(long, short = 'n', visible_alias = "now")]
        ignore_waves: bool,
        /// Choose this version (among those whose wave is open, unless -n).
        #[arg(long, short = 'i', value_name = "VERSION")]
        image: Option<semver::Version>,
    },
    /// Accepted for the reference's callers: refreshes and verifies the repository metadata
    /// and the manifest; stages nothing (the reference's `prepare` does no more).
    Prepare,
    /// Fetch migrations, stage the update on the inactive set, and flip to it. With nothing to
    /// do, says "No update required" and exits 0.
    Update {
        /// Reboot into the new set afterwards.
        #[arg(long, short = 'r')]
        reboot: bool,
        #[command(flatten)]
        stage: StageArgs,
    },
    /// Fetch migrations and stage the update on the inactive set, without flipping. With
    /// nothing to do, says "No update required" and exits 0.
    UpdateImage {
        #[command(flatten)]
        stage: StageArgs,
    },
    /// Flip the boot flags to the staged set.
    UpdateApply {
        /// Reboot into the new set afterwards.
        #[arg(long, short = 'r')]
        reboot: bool,
    },
    /// Undo update-apply: boot the running set again.
    UpdateRevert,
    /// Show the running version and set, what is staged, and which set boots next.
    Status,
    /// Serve Bottlerocket's update API (`/updates/status`, `/actions/refresh-updates`,
    /// `prepare-update`, `activate-update`, `deactivate-update`, `reboot`, `/os`) on a Unix
    /// socket, for `apiclient` and the Bottlerocket update operator: the socket systemd passes
    /// (updog-api.socket), or --socket. Runs until SIGTERM or SIGINT.
    Serve {
        /// Listen on this path (mode 0600) when not started by systemd socket activation.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Where the service keeps its state (the last refresh and command) for this boot.
        #[arg(long, value_name = "PATH", default_value = update_api::service::DEFAULT_STATUS_FILE)]
        status_file: PathBuf,
    },
}

impl Command {
    /// The progress mode of a staging command (`update`, `update-image`).
    fn progress(&self) -> Option<ProgressMode> {
        match self {
            Command::Update { stage, .. } | Command::UpdateImage { stage } => Some(stage.progress),
            _ => None,
        }
    }
}

#[derive(clap::Args)]
struct StageArgs {
    /// Choose this version (up or down; among those whose wave is open, unless -n).
    #[arg(long, short = 'i', value_name = "VERSION")]
    image: Option<semver::Version>,
    /// Ignore wave schedules and update now.
    #[arg(long, short = 'n', visible_alias = "ignore-waves")]
    now: bool,
    /// Progress output: a bar on a terminal (auto), JSON lines on stdout, or none.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Stage although the running set was never marked successful, when the other set is no
    /// fallback either (if the update then fails its one try, no set boots). Never clears a
    /// fallback.
    #[arg(long)]
    allow_unconfirmed_boot: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProgressMode {
    /// A bar when stderr is a terminal, quiet otherwise.
    Auto,
    /// JSON lines on stdout (protocol version 1).
    Json,
    /// Nothing.
    None,
}

/// A failure to report: a message and an exit code.
struct Failure {
    code: u8,
    message: String,
    /// The error, to be explained in terms of the configuration once it is known.
    error: Option<Box<UpdateError>>,
}

impl From<UpdateError> for Failure {
    fn from(e: UpdateError) -> Self {
        Failure {
            code: e.exit_code(),
            message: error_chain(&e),
            error: Some(Box::new(e)),
        }
    }
}

/// The `updog` program: `updog __generate-docs DIR` writes the man pages and completions (and
/// exits), anything else runs [`run_from_iter`] on the process's arguments.
pub fn main() -> ExitCode {
    cli_support::docs::generate_if_asked_with(Args::command, |dir| {
        Ok(vec![write_config_page(dir)?])
    });
    run_from_iter(std::env::args_os())
}

/// Writes the `updog.toml(5)` man page from [`updog::config::KEY_DOCS`] into `DIR/man/`.
pub fn write_config_page(out_dir: &std::path::Path) -> std::io::Result<PathBuf> {
    let keys: Vec<cli_support::docs::KeyDoc> = updog::config::KEY_DOCS
        .iter()
        .map(|k| cli_support::docs::KeyDoc {
            key: k.key,
            default: k.default,
            meaning: k.meaning,
        })
        .collect();
    cli_support::docs::write_config_page(
        out_dir,
        "updog.toml",
        "updog",
        updog::config::CONFIG_PAGE_ABOUT,
        &keys,
    )
}

/// Runs `updog` with `args` as its command line (the program name first, as in
/// `std::env::args_os()`): parses it (a usage error exits 2, as clap does), runs the command,
/// prints, and returns the exit status.
pub fn run_from_iter<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run_from_iter_with(args, |updater| updater)
}

/// [`run_from_iter`], with `setup` applied to the [`Updater`] the command runs on, once it is
/// made from the configuration: a program that wraps `updog` installs its own hooks there
/// ([`Updater::on_step`], [`Updater::with_gpt_io`]: the end-to-end tests' shim kills the
/// process at a chosen step). The `updog` binary installs none.
pub fn run_from_iter_with<I, T>(args: I, setup: impl FnOnce(Updater) -> Updater) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::parse_from(args);
    cli_support::logging::init("updog", &args.global.log);
    match run(&args, setup) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            cli_support::logging::print_error("updog", &f.message);
            ExitCode::from(f.code)
        }
    }
}

fn load(global: &GlobalArgs) -> Result<Updater, Failure> {
    let (mut config, warnings) = Config::from_path(&global.config).map_err(|e| Failure {
        code: updog::exit::FAILURE,
        message: error_chain(&e),
        error: None,
    })?;
    for w in warnings {
        log::warn!("{w}");
    }
    if let Some(p) = &global.os_release {
        config.os_release.clone_from(p);
    }
    let mut os = OsRelease::from_path(&config.os_release).map_err(UpdateError::from)?;
    if let Some(variant) = &global.variant {
        os.variant_id.clone_from(variant);
    }
    Ok(Updater::with_os_release(config, os)?)
}

fn run(args: &Args, setup: impl FnOnce(Updater) -> Updater) -> Result<u8, Failure> {
    let result = load(&args.global).map(setup).and_then(|updater| {
        if let Command::Serve {
            socket,
            status_file,
        } = &args.command
        {
            return serve(updater, socket.as_deref(), status_file, &args.global.config);
        }
        execute(&updater, args).map_err(|mut f| {
            if let Some(e) = &f.error {
                f.message = updog::advice::explain(e, updater.config(), &args.global.config);
            }
            f
        })
    });
    // With `--progress json` a staging command's last line is `done` (printed where it
    // succeeded) or this `error`, whatever failed.
    if let (Err(f), Some(ProgressMode::Json)) = (&result, args.command.progress()) {
        report_final(
            ProgressMode::Json,
            &ProgressEvent::Error {
                message: f.message.clone(),
                cancelled: f.code == updog::exit::INTERRUPTED,
                disk_now: f
                    .error
                    .as_deref()
                    .and_then(|e| updog::progress::DiskNow::of(e)),
            },
        );
    }
    result
}

fn execute(updater: &Updater, args: &Args) -> Result<u8, Failure> {
    let json = args.global.json;
    match &args.command {
        Command::CheckUpdate {
            all,
            ignore_waves,
            image,
        } => {
            let opts = CheckOptions {
                ignore_waves: *ignore_waves,
                image: image.clone(),
                ..CheckOptions::default()
            };
            if *all {
                let updates = updater.list_updates(&opts)?;
                if json {
                    print_json(&updates);
                } else {
                    for u in &updates {
                        println!("{} {}", u.variant, u.version);
                    }
                }
                return Ok(updog::exit::SUCCESS);
            }
            let check = updater.check_cancellable(&opts, &cancel_on_signals()?)?;
            let explain = |reason: &NoUpdateReason| {
                updog::advice::explain_no_update(reason, updater.config(), &args.global.config)
            };
            Ok(print_check(&check, json, &explain))
        }
        Command::Prepare => {
            updater.list_updates(&CheckOptions::default())?;
            Ok(updog::exit::SUCCESS)
        }
        Command::Update { reboot, stage } => {
            let cancel = cancel_on_signals()?;
            let lock = updater.lock()?;
            let Some(staged) = stage_with_signals(updater, &lock, stage, json, &cancel)? else {
                return Ok(updog::exit::SUCCESS);
            };
            // A termination signal before the flip stops it (the set stays staged); after it,
            // the reboot hand-off runs to the end.
            let set = updater.apply_cancellable(&lock, &cancel)?;
            report(stage.progress, &ProgressEvent::Flipped { set });
            print_update(&staged.update, json, stage, "Update applied");
            if *reboot {
                updater.reboot()?;
            }
            // After the reboot hand-off: a failed one ends the output with `error` alone (the
            // `flipped` line before it says the set boots next).
            report_final(stage.progress, &ProgressEvent::done(&staged, true));
            Ok(updog::exit::SUCCESS)
        }
        Command::UpdateImage { stage } => {
            let cancel = cancel_on_signals()?;
            let lock = updater.lock()?;
            if let Some(staged) = stage_with_signals(updater, &lock, stage, json, &cancel)? {
                report_final(stage.progress, &ProgressEvent::done(&staged, false));
                print_update(&staged.update, json, stage, "Update staged");
            }
            Ok(updog::exit::SUCCESS)
        }
        Command::UpdateApply { reboot } => {
            let cancel = cancel_on_signals()?;
            let lock = updater.lock()?;
            let set = updater.apply_cancellable(&lock, &cancel)?;
            eprintln!("Set {set} boots next");
            if *reboot {
                updater.reboot()?;
            }
            Ok(updog::exit::SUCCESS)
        }
        Command::UpdateRevert => {
            let lock = updater.lock()?;
            let set = updater.revert(&lock)?;
            eprintln!("Set {set} boots next");
            Ok(updog::exit::SUCCESS)
        }
        // Served by `run`, which owns the updater.
        Command::Serve { .. } => Ok(updog::exit::SUCCESS),
        Command::Status => {
            let mut status = updater.status()?;
            // Best effort: who cannot open the disk cannot tell (and cannot be updating it).
            status.busy = updater.busy().unwrap_or_else(|e| {
                log::debug!(
                    "cannot tell whether the disk is locked: {}",
                    error_chain(&e)
                );
                None
            });
            if json {
                print_json(&status);
            } else {
                println!(
                    "running: {} {} ({}) on set {}",
                    status.running.variant,
                    status.running.version,
                    status.running.arch,
                    status.running.set
                );
                // Staged and applied come from the GPT; the record adds the version.
                match &status.staged {
                    Some(s) => println!(
                        "staged:  {} on set {} at {}{}",
                        s.version,
                        s.set,
                        s.staged_at.to_rfc3339(),
                        if s.applied { " (applied)" } else { "" }
                    ),
                    None if status.record_needs_root => println!(
                        "staged:  unknown to this user (set {}: {}); the staged record is \
                         readable by root only: run `updog status` as root to see it",
                        status.sets.active.other(),
                        status.inactive.describe()
                    ),
                    None => println!(
                        "staged:  nothing (set {}: {})",
                        status.sets.active.other(),
                        status.inactive.describe()
                    ),
                }
                if let Some(problem) = &status.record_problem {
                    println!("warning: {problem}");
                }
                for f in &status.failed_boots {
                    println!(
                        "failed:  {} did not boot on set {} (tried from {}, seen {}); not taken again unless asked for with -i {}",
                        f.version,
                        f.set,
                        f.from_version,
                        f.detected_at.to_rfc3339(),
                        f.version
                    );
                }
                println!(
                    "next boot: {}",
                    status
                        .next_boot
                        .map_or_else(|| "no bootable set".to_string(), |s| s.to_string())
                );
                match status.busy {
                    Some(holder) => println!(
                        "state:   busy: an update or boot-flag change is in progress ({} holds \
                         the disk lock; the sets above are about to change): run `updog status` \
                         again when it ends",
                        holder
                            .holder_pid
                            .map_or_else(|| "another process".to_string(), |p| format!("pid {p}"))
                    ),
                    None => println!("state:   {}", status.update_state),
                }
            }
            Ok(updog::exit::SUCCESS)
        }
    }
}

/// `updog serve`: the update API on the socket systemd passed, or on `socket`, until SIGTERM
/// or SIGINT (a running prepare is then stopped, the inactive set left cleared).
fn serve(
    updater: Updater,
    socket: Option<&std::path::Path>,
    status_file: &std::path::Path,
    config_path: &std::path::Path,
) -> Result<u8, Failure> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let fail = |message: String| Failure {
        code: updog::exit::FAILURE,
        message,
        error: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| fail(format!("installing signal handler: {e}")))?;
    }
    let (listener, bound) = match update_api::listener_from_systemd() {
        Ok(Some(listener)) => (listener, None),
        Ok(None) => match socket {
            Some(path) => (
                update_api::bind(path).map_err(|e| fail(error_chain(&e)))?,
                Some(path),
            ),
            None => {
                return Err(Failure {
                    code: updog::exit::USAGE,
                    message: "no socket to serve: not started by systemd socket activation \
                              (updog-api.socket) and no --socket PATH"
                        .to_string(),
                    error: None,
                });
            }
        },
        Err(e) => return Err(fail(error_chain(&e))),
    };
    match bound {
        Some(path) => log::info!("serving the update API on {}", path.display()),
        None => log::info!("serving the update API on the socket systemd passed"),
    }
    let service = Arc::new(update_api::Service::new(
        updater,
        update_api::ServiceOptions {
            status_file: status_file.to_path_buf(),
            config_path: config_path.to_path_buf(),
        },
    ));
    let served = update_api::serve(
        &listener,
        &service,
        &stop,
        update_api::ServerOptions::default(),
    );
    if let Some(path) = bound {
        let _ = std::fs::remove_file(path);
    }
    served.map_err(|e| fail(format!("serving: {}", error_chain(&e))))?;
    Ok(updog::exit::SUCCESS)
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("updog: cannot print JSON: {e}"),
    }
}

/// After `update` or `update-image`: the reference's update object with `--json`, else one
/// line naming it; nothing with `--progress json`, whose stdout is the JSON-lines protocol only.
fn print_update(update: &manifest::Update, json: bool, stage: &StageArgs, what: &str) {
    if stage.progress == ProgressMode::Json {
        return;
    }
    if json {
        print_json(update);
    } else {
        println!("{what}: {} {}", update.variant, update.version);
    }
}

fn print_no_update(reason: &NoUpdateReason, json: bool) {
    if json {
        print_json(&serde_json::json!({ "no_update": reason }));
    }
}

/// `check-update`: the update on stdout and exit 0, or why there is none and exit 1 (the
/// reference's "no update available" is a failure, so scripts can test for an update).
fn print_check(check: &Check, json: bool, explain: &dyn Fn(&NoUpdateReason) -> String) -> u8 {
    match &check.outcome {
        CheckOutcome::Available(a) => {
            if json {
                print_json(a);
            } else {
                println!("{} {}", a.update.variant, a.update.version);
                for m in &a.migrations {
                    log::info!("{} needs migration {m}", a.update.version);
                }
                // On stderr: stdout keeps the reference's one line for scripts.
                match a.state {
                    updog::updater::UpdateState::Staged => eprintln!(
                        "{} is staged on the inactive set already (`updog update-apply` flips to it)",
                        a.update.version
                    ),
                    updog::updater::UpdateState::Ready => eprintln!(
                        "{} is applied already: it boots at the next reboot",
                        a.update.version
                    ),
                    _ => {}
                }
                if let Some(plan) = &a.delta_plan {
                    for line in updog::delta::stage::describe_estimate(plan) {
                        eprintln!("{line}");
                    }
                }
            }
            updog::exit::SUCCESS
        }
        CheckOutcome::NoUpdate(reason) => {
            print_no_update(reason, json);
            cli_support::logging::print_error(
                "updog",
                &format!("No update available: {}", explain(reason)),
            );
            updog::exit::FAILURE
        }
    }
}

fn report(mode: ProgressMode, event: &ProgressEvent) {
    match mode {
        ProgressMode::Json => println!("{}", json_line(event)),
        ProgressMode::Auto => {
            if let Some(text) = updog::progress::describe(event) {
                eprintln!("{text}");
            }
        }
        ProgressMode::None => {}
    }
}

/// The `done` or `error` line that ends a staging command's `--progress json` output (people
/// read the command's own last line instead).
fn report_final(mode: ProgressMode, event: &ProgressEvent) {
    if mode == ProgressMode::Json {
        report(mode, event);
    }
}

/// A handle that SIGINT and SIGTERM set: the operation stops cleanly (exit 5) instead of the
/// process dying mid-way. A second signal exits at once (exit 5), for a read blocked on a
/// silent server that would otherwise only see the first at the stall timeout; that is as safe
/// as a kill, which every step survives (the set is cleared before its first byte changes).
fn cancel_on_signals() -> Result<CancelHandle, Failure> {
    let cancel = CancelHandle::new();
    let installing = |e: std::io::Error| Failure {
        code: updog::exit::FAILURE,
        message: format!("installing signal handler: {e}"),
        error: None,
    };
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            i32::from(updog::exit::INTERRUPTED),
            std::sync::Arc::clone(cancel.flag()),
        )
        .map_err(installing)?;
        signal_hook::flag::register(signal, std::sync::Arc::clone(cancel.flag()))
            .map_err(installing)?;
    }
    Ok(cancel)
}

/// Stages, stopping cleanly when `cancel` is set (by SIGINT/SIGTERM).
///
/// `None` when there is nothing to do: "No update required" is printed (and with `--json` the
/// reason object; with `--progress json` the `done` line), and the caller exits 0, as the
/// reference does. The library's own final event is not printed: the command prints one when
/// it has finished (after the flip, for `update`), or `run` prints the `error`.
fn stage_with_signals(
    updater: &Updater,
    lock: &updog::lock::UpdateLock,
    stage: &StageArgs,
    json: bool,
    cancel: &CancelHandle,
) -> Result<Option<Staged>, Failure> {
    let bar = Mutex::new(TerminalBar::new(std::io::stderr()));
    let mode = match stage.progress {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Auto,
        ProgressMode::Auto => ProgressMode::None,
        other => other,
    };
    let progress = |event: &ProgressEvent| match mode {
        _ if event.is_final() => {}
        ProgressMode::Json => println!("{}", json_line(event)),
        ProgressMode::Auto => {
            if let Ok(mut bar) = bar.lock() {
                bar.event(event);
            }
        }
        // A delta that falls back to the full image is worth a line even without progress.
        ProgressMode::None => {
            if let ProgressEvent::DeltaFallback { .. } = event
                && let Some(text) = updog::progress::describe(event)
            {
                eprintln!("{text}");
            }
        }
    };
    let opts = CheckOptions {
        ignore_waves: stage.now,
        image: stage.image.clone(),
        allow_unconfirmed_boot: stage.allow_unconfirmed_boot,
        now: None,
    };
    let staged = updater.stage(lock, &opts, &progress, cancel);
    if let Ok(mut bar) = bar.lock() {
        bar.finish();
    }
    let staged = match staged {
        // A variant the repository does not offer is a mistake to report, not nothing to do.
        // (`run` explains it in terms of the configuration.)
        Err(UpdateError::NoUpdate(reason)) if updog::advice::is_misconfiguration(&reason) => {
            return Err(UpdateError::NoUpdate(reason).into());
        }
        Err(UpdateError::NoUpdate(reason)) => {
            if mode == ProgressMode::Json {
                report_final(mode, &ProgressEvent::nothing_to_stage(&reason));
            } else {
                print_no_update(&reason, json);
            }
            eprintln!("No update required: {reason}");
            return Ok(None);
        }
        other => other?,
    };
    if mode != ProgressMode::Json {
        if staged.already_staged {
            eprintln!(
                "{} is already {} on set {}: nothing was downloaded or written",
                staged.version,
                if staged.record.applied {
                    "applied (it boots at the next reboot)"
                } else {
                    "staged"
                },
                staged.set
            );
        } else {
            eprintln!("Staged {} on set {}", staged.version, staged.set);
        }
    }
    Ok(Some(staged))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_page_documents_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let page = std::fs::read_to_string(super::write_config_page(dir.path()).unwrap()).unwrap();
        for key in updog::config::KEY_DOCS.iter().map(|k| k.key) {
            let roff = format!("\\fB{}\\fR", key.replace('-', "\\-"));
            assert!(page.contains(&roff), "{key} not in the man page");
        }
    }
}
