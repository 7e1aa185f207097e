//! An async update agent that embeds `updog` instead of running the CLI: what a Kubernetes
//! operator or an ECS agent would do on each host.
//!
//! ```text
//! cargo run -p updog --example agent -- \
//!     --metadata-url http://127.0.0.1:8080/metadata/ --targets-url http://127.0.0.1:8080/targets/ \
//!     --disk /path/to/disk.img --active A --root /path/to/root.json \
//!     --os-release /path/to/os-release --state-dir /tmp/agent [--seed N] [--now]
//! ```
//!
//! The agent runs on tokio; the updater's API is blocking and `Send + Sync`, so it is shared
//! through an `Arc` and each call runs on the blocking pool (`spawn_blocking`) while the runtime
//! stays free for the agent's own work: here, printing progress that arrives over a channel and
//! watching for Ctrl-C / SIGTERM, which set the updater's cancellation handle. It builds the
//! configuration in code (no `/etc/updog.toml`), checks for an update (the update state becomes
//! `Available`), stages it (`Staged`), flips the boot flags (`Ready`) and prints the status an
//! operator dashboard would show. It never reboots: a real agent drains the node first, then
//! calls `updater.reboot()`; after the reboot it calls `updater.mark_successful_boot(&lock)`
//! once the node is healthy, or `updater.rollback_to_inactive(&lock)` if it is not.
//!
//! Exit codes follow `updog`'s: 0 done or nothing to do, 1 failure, 4 another update in
//! progress, 5 cancelled (nothing applied).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use updog::config::Config;
use updog::progress::ProgressEvent;
use updog::updater::{CancelHandle, CheckOptions, CheckOutcome, UpdateError, Updater};

// What lets the agent share one updater between tasks and threads.
const _: () = {
    const fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Updater>();
};

struct Args {
    metadata_url: url::Url,
    targets_url: url::Url,
    disk: PathBuf,
    active: Option<bootpart::SetId>,
    root: PathBuf,
    os_release: PathBuf,
    state_dir: PathBuf,
    seed: u32,
    now: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut metadata_url = None;
    let mut targets_url = None;
    let mut disk = None;
    let mut active = None;
    let mut root = None;
    let mut os_release = None;
    let mut state_dir = None;
    let mut seed = 0;
    let mut now = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--now" {
            now = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--metadata-url" => {
                metadata_url = Some(value.parse().map_err(|e| format!("--metadata-url: {e}"))?);
            }
            "--targets-url" => {
                targets_url = Some(value.parse().map_err(|e| format!("--targets-url: {e}"))?);
            }
            "--disk" => disk = Some(PathBuf::from(value)),
            "--active" => active = Some(value.parse().map_err(|_| "--active: A or B")?),
            "--root" => root = Some(PathBuf::from(value)),
            "--os-release" => os_release = Some(PathBuf::from(value)),
            "--state-dir" => state_dir = Some(PathBuf::from(value)),
            "--seed" => seed = value.parse().map_err(|e| format!("--seed: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        metadata_url: metadata_url.ok_or("--metadata-url URL is required")?,
        targets_url: targets_url.ok_or("--targets-url URL is required")?,
        disk: disk.ok_or("--disk PATH is required")?,
        active,
        root: root.unwrap_or_else(|| updog::config::DEFAULT_TRUSTED_ROOT.into()),
        os_release: os_release.unwrap_or_else(|| updog::config::DEFAULT_OS_RELEASE.into()),
        state_dir: state_dir.unwrap_or_else(|| "/var/lib/updog-agent".into()),
        seed,
        now,
    })
}

/// Why the agent stopped.
enum Failure {
    Update(UpdateError),
    Other(String),
}

impl From<UpdateError> for Failure {
    fn from(e: UpdateError) -> Self {
        Failure::Update(e)
    }
}

/// Runs one blocking updater call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, UpdateError> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(Failure::Other(format!("updater task failed: {e}"))),
    }
}

/// Sets `cancel` at the first Ctrl-C or SIGTERM: the call in progress stops cleanly (a check
/// fetches nothing more; staging leaves the inactive set cleared; an apply does not flip).
fn cancel_on_signals(cancel: CancelHandle) -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::Other(format!("watching SIGTERM: {e}")))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        println!("agent: stopping at the next safe point");
        cancel.cancel();
    });
    Ok(())
}

/// Configuration built in code (no updog.toml); everything stateful goes under one directory.
fn updater(args: Args) -> Result<(Updater, bool), Failure> {
    let seed = waves::Seed::new(args.seed).map_err(|e| Failure::Other(e.to_string()))?;
    let mut config = Config::new(args.metadata_url, args.targets_url, seed);
    config.trusted_root = args.root;
    config.disk = Some(args.disk);
    config.active_set = args.active;
    config.os_release = args.os_release;
    config.metadata_dir = args.state_dir.join("metadata");
    config.state_file = args.state_dir.join("state.json");
    config.migrations_dir = args.state_dir.join("migrations");
    config.migrations_metadata_dir = args.state_dir.join("migrations-metadata");
    Ok((Updater::new(config)?, args.now))
}

async fn run(updater: Arc<Updater>, now: bool) -> Result<(), Failure> {
    let cancel = CancelHandle::new();
    cancel_on_signals(cancel.clone())?;

    // 2. Check, with the reason when there is nothing to do; cancellable while it fetches.
    let opts = CheckOptions {
        ignore_waves: now,
        ..CheckOptions::default()
    };
    let check = blocking({
        let (updater, opts, cancel) = (Arc::clone(&updater), opts.clone(), cancel.clone());
        move || updater.check_cancellable(&opts, &cancel)
    })
    .await?;
    let status = blocking({
        let updater = Arc::clone(&updater);
        move || updater.status()
    })
    .await?
    .with_check(&check);
    println!("agent: update state {}", status.update_state);
    let update = match check.outcome {
        CheckOutcome::NoUpdate(reason) => {
            println!(
                "agent: running {}, nothing to do: {reason}",
                check.running.version_id
            );
            return Ok(());
        }
        CheckOutcome::Available(update) => update,
    };
    println!(
        "agent: {} -> {} ({} migration(s))",
        check.running.version_id,
        update.update.version,
        update.migrations.len()
    );

    // 3. Stage exactly the plan the check returned (refused with PlanChanged if the repository
    //    now offers something else), holding the disk lock until the flip. Progress events
    //    cross a channel to this task, which reports every 25% of each image, as an agent
    //    would update a status field; the last one is `done` or `error`.
    let lock = Arc::new(
        blocking({
            let updater = Arc::clone(&updater);
            move || updater.lock()
        })
        .await?,
    );
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel::<ProgressEvent>();
    let staging = tokio::task::spawn_blocking({
        let (updater, lock, cancel) = (Arc::clone(&updater), Arc::clone(&lock), cancel.clone());
        move || {
            let progress = move |event: &ProgressEvent| {
                // The receiver lives until staging ends.
                let _ = events.send(event.clone());
            };
            updater.stage_plan(&lock, update.plan, &progress, &cancel)
        }
    });
    let mut last_quarter = std::collections::BTreeMap::new();
    while let Some(event) = received.recv().await {
        match &event {
            ProgressEvent::Image {
                image, done, total, ..
            } => {
                let percent = done.saturating_mul(100).checked_div(*total).unwrap_or(100);
                if last_quarter.insert(*image, percent / 25) != Some(percent / 25) {
                    println!("agent: {image} {percent}%");
                }
            }
            other => {
                if let Some(text) = updog::progress::describe(other) {
                    println!("agent: {text}");
                }
            }
        }
    }
    let staged = staging
        .await
        .map_err(|e| Failure::Other(format!("staging task failed: {e}")))??;

    // 4. Flip the boot flags (not if a signal came first). From here a real agent drains the
    //    node and calls `updater.reboot()`; `updater.revert(&lock)` undoes the flip instead.
    let next = blocking({
        let (updater, lock, cancel) = (Arc::clone(&updater), Arc::clone(&lock), cancel.clone());
        move || updater.apply_cancellable(&lock, &cancel)
    })
    .await?;
    println!(
        "agent: {} staged on set {}; set {next} boots next",
        staged.version, staged.set
    );

    // 5. The status an operator dashboard shows: `Ready` now, until the reboot.
    let status = blocking({
        let updater = Arc::clone(&updater);
        move || updater.status()
    })
    .await?;
    println!("agent: update state {}", status.update_state);
    match serde_json::to_string_pretty(&status) {
        Ok(text) => println!("{text}"),
        Err(e) => return Err(Failure::Other(format!("status as JSON: {e}"))),
    }
    Ok(())
}

/// The example's program. Public because the end-to-end tests compile this file into their
/// shim binary (`e2e_tests::shim`) and run it from there.
pub fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("agent: {e}");
            return ExitCode::from(updog::exit::USAGE);
        }
    };
    // Async tasks hold clones of the `Arc` and only ever call the updater through
    // `spawn_blocking`: its calls block.
    let result = updater(args).and_then(|(updater, now)| {
        let updater = Arc::new(updater);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Other(format!("starting the runtime: {e}")))?;
        let result = runtime.block_on(run(Arc::clone(&updater), now));
        drop(runtime);
        drop(updater);
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Update(e)) => {
            eprintln!("agent: {}", updog::advice::error_chain(&e));
            ExitCode::from(e.exit_code())
        }
        Err(Failure::Other(message)) => {
            eprintln!("agent: {message}");
            ExitCode::from(updog::exit::FAILURE)
        }
    }
}
