//! A minimal update agent that embeds `updog` instead of running the CLI: what a Kubernetes
//! operator or an ECS agent would do on each host.
//!
//! ```text
//! cargo run -p updog --example agent -- \
//!     --metadata-url http://127.0.0.1:8080/metadata/ --targets-url http://127.0.0.1:8080/targets/ \
//!     --disk /path/to/disk.img --active A --root /path/to/root.json \
//!     --os-release /path/to/os-release --state-dir /tmp/agent [--seed N] [--now]
//! ```
//!
//! It builds the configuration in code (no `/etc/updog.toml`), checks for an update and prints
//! why there is none, stages it with a progress callback and a cancellation handle wired to
//! Ctrl-C / SIGTERM, flips the boot flags, and prints the status an operator dashboard would show.
//! It never reboots: a real agent drains the node first, then calls `updater.reboot()`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use updog::config::Config;
use updog::progress::ProgressEvent;
use updog::updater::{CancelHandle, CheckOptions, CheckOutcome, Updater};

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;

    // 1. Configuration built in code (no updog.toml); everything stateful goes under one
    //    directory.
    let mut config = Config::new(
        args.metadata_url,
        args.targets_url,
        waves::Seed::new(args.seed)?,
    );
    config.trusted_root = args.root;
    config.disk = Some(args.disk);
    config.active_set = args.active;
    config.os_release = args.os_release;
    config.metadata_dir = args.state_dir.join("metadata");
    config.state_file = args.state_dir.join("state.json");
    config.migrations_dir = args.state_dir.join("migrations");
    config.migrations_metadata_dir = args.state_dir.join("migrations-metadata");
    let updater = Updater::new(config)?;

    // 2. Check, with the reason when there is nothing to do.
    let opts = CheckOptions {
        ignore_waves: args.now,
        ..CheckOptions::default()
    };
    let check = updater.check(&opts)?;
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

    // 3. Stage with a progress callback and a cancellation handle. SIGINT/SIGTERM cancel
    //    cleanly: the inactive set is left cleared and the running set untouched.
    let lock = updater.lock()?;
    let cancel = CancelHandle::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(cancel.flag()))?;
    }
    let last_percent = AtomicU64::new(u64::MAX);
    let progress = |event: &ProgressEvent| match event {
        ProgressEvent::Image {
            image, done, total, ..
        } => {
            let percent = done.saturating_mul(100).checked_div(*total).unwrap_or(100);
            // Report every 25%, as an agent would update a status field.
            if percent / 25 != last_percent.swap(percent, Ordering::Relaxed) / 25 {
                println!("agent: {image} {percent}%");
            }
        }
        other => {
            if let Some(text) = updog::progress::describe(other) {
                println!("agent: {text}");
            }
        }
    };
    let staged = updater.stage(&lock, &opts, &progress, &cancel)?;

    // 4. Flip the boot flags. From here a real agent drains the node and calls
    //    `updater.reboot()`; `updater.revert(&lock)` undoes the flip instead.
    let next = updater.apply(&lock)?;
    println!(
        "agent: {} staged on set {}; set {next} boots next",
        staged.version, staged.set
    );

    // 5. The status an operator dashboard shows.
    println!("{}", serde_json::to_string_pretty(&updater.status()?)?);
    Ok(())
}
