//! `updata`: edit and inspect a Bottlerocket-compatible `manifest.json` for publishing.
//!
//! Every command that changes the manifest writes it atomically (temporary file in the same
//! directory, fsync, rename, fsync of the directory).

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use manifest::{Error, Images, Manifest, Update};
use semver::Version;
use waves::sim::{Fleet, FleetPoint, Formula, simulate, simulate_schedule};
use waves::time::{format_time, parse_time_or_relative};
use waves::{Seed, WavePolicy, WaveSchedule};

/// Edit and inspect a Bottlerocket-compatible manifest.json (the list of updates, their rollout
/// waves and the settings migrations between versions).
///
/// Changes are written atomically: an interrupted updata leaves the old file or the new one,
/// never a half-written one.
#[derive(Parser)]
#[command(name = "updata", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an empty manifest (no updates, no migrations).
    Init {
        /// The manifest file to create.
        manifest: PathBuf,
        /// Overwrite the file if it already exists.
        #[arg(long)]
        force: bool,
    },
    /// Add an update (variant, arch, version and its three image target names).
    ///
    /// The max_version of every update of the same variant and arch is set to --max-version, or,
    /// without it, to the higher of the current max_version and the new version, so the new
    /// update is offered.
    AddUpdate {
        /// The manifest file to edit.
        manifest: PathBuf,
        #[command(flatten)]
        id: UpdateId,
        /// Hosts above this version are brought back to the highest update below it.
        #[arg(long, value_name = "VERSION")]
        max_version: Option<Version>,
        /// TUF target name of the boot image [default: VARIANT-ARCH-VERSION-boot.ext4.lz4].
        #[arg(long, value_name = "TARGET")]
        boot: Option<String>,
        /// TUF target name of the root image [default: VARIANT-ARCH-VERSION-root.ext4.lz4].
        #[arg(long, value_name = "TARGET")]
        root: Option<String>,
        /// TUF target name of the hash (verity) image [default: VARIANT-ARCH-VERSION-root.verity.lz4].
        #[arg(long, value_name = "TARGET")]
        hash: Option<String>,
        /// Replace an existing update with the same variant, arch and version.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        waves: WaveSource,
    },
    /// Remove an update.
    RemoveUpdate {
        /// The manifest file to edit.
        manifest: PathBuf,
        #[command(flatten)]
        id: UpdateId,
    },
    /// Set an update's rollout waves from a policy file or the built-in default policy.
    ///
    /// A policy file is TOML: one [[waves]] table per wave with start_after ("N minutes|hours|
    /// days|weeks", optionally prefixed "in", or an RFC 3339 time) and fleet_percentage (rising,
    /// 1..=100). The built-in default opens 1% after 1 hour, 5% after 4 hours, 15% after 1 day,
    /// 40% after 2 days, 60% after 4 days, 90% after 5 days and everyone after 6 days.
    SetWaves {
        /// The manifest file to edit.
        manifest: PathBuf,
        #[command(flatten)]
        id: UpdateId,
        #[command(flatten)]
        waves: WaveSource,
        /// Remove the update's waves instead: every host may take it at once.
        #[arg(long, conflicts_with_all = ["policy", "default_waves"])]
        clear: bool,
    },
    #[command(
        about = "Set the migrations from the [migrations] table of a Release.toml",
        long_about = "Set the migrations from the [migrations] table of a Release.toml.\n\n\
            The table maps \"(FROM, TO)\" version pairs to lists of migration target names. By \
            default it replaces all of the manifest's migrations; with --merge it adds to them \
            (replacing the same pairs)."
    )]
    SetMigrations {
        /// The manifest file to edit.
        manifest: PathBuf,
        /// The Release.toml to read.
        #[arg(long, value_name = "FILE")]
        release: PathBuf,
        /// Keep the manifest's other migrations.
        #[arg(long)]
        merge: bool,
    },
    /// Set max_version on every update (or only those of a variant and/or arch).
    ///
    /// Updates above max_version are not offered, and hosts running above it are brought back
    /// to the highest update below it: this is how a bad release is pulled.
    SetMaxVersion {
        /// The manifest file to edit.
        manifest: PathBuf,
        /// The new max_version.
        #[arg(long, value_name = "VERSION")]
        max_version: Version,
        /// Only updates of this variant.
        #[arg(long)]
        variant: Option<String>,
        /// Only updates of this architecture.
        #[arg(long)]
        arch: Option<String>,
    },
    /// Check a manifest and list every problem found (exit status 1 if any).
    ///
    /// Checks parsing (wave keys, dates, migration keys) and then duplicate updates, updates
    /// above their max_version, wave times that do not rise with their bounds, empty image and
    /// migration names, and backwards migration keys.
    Validate {
        /// The manifest file to check.
        manifest: PathBuf,
    },
    /// Show an update's wave schedule, a host's eligibility time, and how the fleet follows.
    Waves {
        /// The manifest file to read.
        manifest: PathBuf,
        #[command(flatten)]
        id: UpdateId,
        /// Show when a host with this seed (0..=2047) may take the update.
        #[arg(long)]
        seed: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also write an SVG chart of the eligible share of the fleet over time to FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Fleet size for the simulation (seeds spread evenly).
        #[arg(long, default_value_t = 10_000)]
        hosts: u64,
        /// Points in the simulated timeline (2..=10000).
        #[arg(long, default_value_t = 25)]
        steps: usize,
        /// Also show the reference system's eligibility formula (absolute seed), which makes
        /// most hosts of every later wave wait for the wave's end.
        #[arg(long)]
        compare_reference: bool,
    },
}

#[derive(Args)]
struct UpdateId {
    /// The variant, such as aws-k8s-1.31.
    #[arg(long)]
    variant: String,
    /// The architecture, such as x86_64 or aarch64.
    #[arg(long)]
    arch: String,
    /// The update's version.
    #[arg(long = "version", value_name = "VERSION")]
    version: Version,
}

#[derive(Args)]
struct WaveSource {
    /// A wave policy file (TOML, [[waves]] start_after / fleet_percentage).
    #[arg(long, value_name = "FILE", conflicts_with = "default_waves")]
    policy: Option<PathBuf>,
    /// Use the built-in default policy (1 hour/1% ... 6 days/100%).
    #[arg(long = "default-waves")]
    default_waves: bool,
    /// When the rollout starts: an RFC 3339 time or "in N minutes|hours|days|weeks" [default: now].
    #[arg(long, value_name = "TIME")]
    start_at: Option<String>,
}

impl WaveSource {
    /// The schedule asked for, if any.
    fn schedule(&self, now: DateTime<Utc>) -> Result<Option<WaveSchedule>, Error> {
        let policy = match (&self.policy, self.default_waves) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                    action: "reading",
                    path: path.clone(),
                    source,
                })?;
                WavePolicy::from_toml_str(&text).map_err(|source| Error::Policy {
                    path: path.clone(),
                    source,
                })?
            }
            (None, true) => WavePolicy::default_policy(),
            (None, false) => return Ok(None),
        };
        let start = match &self.start_at {
            Some(s) => parse_time_or_relative(s, now)?,
            None => now,
        };
        Ok(Some(policy.to_schedule(start)?))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("updata: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode, Error> {
    let now = Utc::now();
    match command {
        Command::Init { manifest, force } => {
            if manifest.exists() && !force {
                return Err(Error::Io {
                    action: "creating",
                    path: manifest,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "the file exists (use --force to overwrite it)",
                    ),
                });
            }
            manifest::fs::save(&Manifest::default(), &manifest)?;
            println!("created {}", manifest.display());
        }
        Command::AddUpdate {
            manifest: path,
            id,
            max_version,
            boot,
            root,
            hash,
            replace,
            waves,
        } => {
            let mut m = manifest::fs::load(&path)?;
            let defaults = manifest::edit::default_image_names(&id.variant, &id.arch, &id.version);
            let images = Images {
                boot: boot.unwrap_or(defaults.boot),
                root: root.unwrap_or(defaults.root),
                hash: hash.unwrap_or(defaults.hash),
            };
            let max = max_version.unwrap_or_else(|| {
                m.current_max_version(&id.variant, &id.arch)
                    .filter(|cur| **cur > id.version)
                    .cloned()
                    .unwrap_or_else(|| id.version.clone())
            });
            let update = Update {
                variant: id.variant.clone(),
                arch: id.arch.clone(),
                version: id.version.clone(),
                max_version: max.clone(),
                waves: waves.schedule(now)?.unwrap_or_default(),
                images,
            };
            m.add_update(update, replace)?;
            let n = m.set_max_version(Some(&id.variant), Some(&id.arch), &max);
            manifest::fs::save(&m, &path)?;
            println!(
                "added {} {} {}; max_version {max} on {n} update(s)",
                id.variant, id.arch, id.version
            );
        }
        Command::RemoveUpdate { manifest: path, id } => {
            let mut m = manifest::fs::load(&path)?;
            m.remove_update(&id.variant, &id.arch, &id.version)?;
            manifest::fs::save(&m, &path)?;
            println!("removed {} {} {}", id.variant, id.arch, id.version);
        }
        Command::SetWaves {
            manifest: path,
            id,
            waves,
            clear,
        } => {
            let mut m = manifest::fs::load(&path)?;
            let schedule = if clear {
                WaveSchedule::new()
            } else {
                waves.schedule(now)?.ok_or_else(|| Error::Io {
                    action: "setting waves in",
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "give --policy FILE, --default-waves or --clear",
                    ),
                })?
            };
            let n = schedule.len();
            m.set_waves(&id.variant, &id.arch, &id.version, schedule)?;
            manifest::fs::save(&m, &path)?;
            println!("{} {} {}: {n} wave(s)", id.variant, id.arch, id.version);
        }
        Command::SetMigrations {
            manifest: path,
            release,
            merge,
        } => {
            let mut m = manifest::fs::load(&path)?;
            let text = std::fs::read_to_string(&release).map_err(|source| Error::Io {
                action: "reading",
                path: release.clone(),
                source,
            })?;
            let migrations = manifest::edit::release_migrations(&text)?;
            let n = migrations.len();
            if merge {
                m.migrations.extend(migrations);
            } else {
                m.migrations = migrations;
            }
            manifest::fs::save(&m, &path)?;
            println!(
                "{n} migration step(s) from {}; the manifest now has {}",
                release.display(),
                m.migrations.len()
            );
        }
        Command::SetMaxVersion {
            manifest: path,
            max_version,
            variant,
            arch,
        } => {
            let mut m = manifest::fs::load(&path)?;
            let n = m.set_max_version(variant.as_deref(), arch.as_deref(), &max_version);
            manifest::fs::save(&m, &path)?;
            println!("max_version {max_version} on {n} update(s)");
        }
        Command::Validate { manifest: path } => {
            let m = manifest::fs::load(&path)?;
            if let Err(e) = m.validate() {
                println!("{}: {e}", path.display());
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "{}: valid ({} update(s), {} migration step(s))",
                path.display(),
                m.updates.len(),
                m.migrations.len()
            );
        }
        Command::Waves {
            manifest: path,
            id,
            seed,
            json,
            svg,
            hosts,
            steps,
            compare_reference,
        } => {
            let m = manifest::fs::load(&path)?;
            let update = m
                .find_update(&id.variant, &id.arch, &id.version)
                .ok_or_else(|| Error::NoSuchUpdate {
                    variant: id.variant.clone(),
                    arch: id.arch.clone(),
                    version: id.version.clone(),
                })?;
            let seed = seed.map(Seed::new).transpose()?;
            let opts = ShowWaves {
                seed,
                json,
                svg,
                hosts,
                steps,
                compare_reference,
            };
            show_waves(update, &opts, now)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct ShowWaves {
    seed: Option<Seed>,
    json: bool,
    svg: Option<PathBuf>,
    hosts: u64,
    steps: usize,
    compare_reference: bool,
}

fn show_waves(update: &Update, opts: &ShowWaves, now: DateTime<Utc>) -> Result<(), Error> {
    let schedule = &update.waves;
    let fleet = Fleet::uniform(opts.hosts);
    let points = simulate_schedule(schedule, &fleet, opts.steps)?;
    let reference = match (opts.compare_reference, points.first(), points.last()) {
        (true, Some(first), Some(last)) if first.at < last.at => Some(simulate(
            schedule,
            &fleet,
            first.at,
            last.at,
            opts.steps,
            Formula::Reference,
        )?),
        _ => None,
    };
    let series: Vec<(&str, &[FleetPoint])> = match &reference {
        Some(r) => vec![("this crate", &points), ("reference", r)],
        None => vec![("fleet", &points)],
    };
    let ready_at = opts.seed.map(|s| (s, schedule.ready_at(s)));
    if let Some(path) = &opts.svg {
        let title = format!("{} {} {}", update.variant, update.arch, update.version);
        let chart = waves::sim::render_svg_series(&series, schedule, &title);
        manifest::fs::write_atomic(path, chart.as_bytes())?;
    }
    if opts.json {
        let waves: Vec<serde_json::Value> = schedule
            .waves()
            .map(|w| serde_json::json!({ "bound": w.bound, "start": format_time(w.start) }))
            .collect();
        let mut out = serde_json::json!({
            "variant": update.variant,
            "arch": update.arch,
            "version": update.version.to_string(),
            "waves": waves,
            "fleet": points,
        });
        if let Some(obj) = out.as_object_mut() {
            if let Some((s, at)) = ready_at {
                obj.insert(
                    "seed".into(),
                    serde_json::json!({
                        "seed": s.get(),
                        "ready_at": at.map(format_time),
                        "ready_now": schedule.is_ready(s, now),
                    }),
                );
            }
            if let Some(r) = &reference {
                obj.insert("fleet_reference".into(), serde_json::json!(r));
            }
        }
        println!("{out:#}");
        return Ok(());
    }
    println!(
        "{} {} {}: {} wave(s)",
        update.variant,
        update.arch,
        update.version,
        schedule.len()
    );
    let mut lower: Option<u32> = None;
    for w in schedule.waves() {
        let seeds = match lower {
            None => format!("0..={}", w.bound),
            Some(l) => format!("{}..={}", l.saturating_add(1), w.bound),
        };
        println!(
            "  bound {:>10}  opens {}  seeds {seeds}",
            w.bound,
            format_time(w.start)
        );
        lower = Some(w.bound);
    }
    if let Some(last) = schedule.last_wave() {
        if last.bound < Seed::MAX.get() {
            println!(
                "  seeds {}..=2047 are eligible when the last wave opens",
                last.bound + 1
            );
        }
    }
    if let Some((s, at)) = ready_at {
        match at {
            None => println!("seed {s}: eligible now (no waves)"),
            Some(at) => println!(
                "seed {s}: eligible at {} ({})",
                format_time(at),
                if at <= now { "already" } else { "not yet" }
            ),
        }
    }
    println!("\nfleet of {} host(s):", opts.hosts);
    if reference.is_some() {
        print!("{}", waves::sim::render_table_series(&series));
    } else {
        print!("{}", waves::sim::render_table(&points));
    }
    if let Some(path) = &opts.svg {
        println!("chart written to {}", path.display());
    }
    Ok(())
}
