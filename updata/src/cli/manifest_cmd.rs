//! The manifest subcommands: `init`, `add-update`, `remove-update`, `set-waves`,
//! `set-migrations`, `set-max-version`, `validate`, `waves`.
//!
//! Flags follow the reference's `updata` (short and long names), with our longer names kept as
//! aliases. The rules live in `manifest::edit`; this file parses, calls and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{ArgAction, Args, Subcommand};
use manifest::edit::{MigrationsMode, WavesQuery, WavesReport};
use manifest::{Error, Images, Manifest, Update};
use semver::Version;
use waves::sim::FleetPoint;
use waves::time::{format_time, parse_time_or_relative};
use waves::{Seed, WavePolicy, WaveSchedule};

#[derive(Subcommand)]
pub enum ManifestCommand {
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
    #[command(disable_help_flag = true)]
    AddUpdate(AddUpdateArgs),
    /// Remove an update.
    RemoveUpdate {
        /// The manifest file to edit.
        manifest: PathBuf,
        #[command(flatten)]
        id: UpdateId,
    },
    /// Set an update's rollout waves from a wave file or the built-in default policy.
    ///
    /// A wave file is TOML: one [[waves]] table per wave with start_after ("N minutes|hours|
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
        #[arg(long, conflicts_with_all = ["wave_file", "default_waves"])]
        clear: bool,
    },
    #[command(
        about = "Set the migrations from the [migrations] table of a Release.toml",
        long_about = "Set the migrations from the [migrations] table of a Release.toml.\n\n\
            The table maps \"(FROM, TO)\" version pairs to lists of migration target names. By \
            default it replaces all of the manifest's migrations; with --merge it adds to them \
            (replacing the same pairs). The manifest is the positional argument or -t/--to."
    )]
    SetMigrations {
        /// The manifest file to edit.
        #[arg(required_unless_present = "to")]
        manifest: Option<PathBuf>,
        /// The manifest file to edit (the reference's spelling).
        #[arg(
            short = 't',
            long = "to",
            value_name = "MANIFEST",
            conflicts_with = "manifest"
        )]
        to: Option<PathBuf>,
        /// The Release.toml to read.
        #[arg(
            short = 'f',
            long = "from",
            visible_alias = "release",
            value_name = "RELEASE_TOML"
        )]
        from: PathBuf,
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
        #[arg(short = 'v', long, value_name = "VERSION")]
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
    /// Checks parsing (wave keys, dates, migration keys) and then duplicate updates, wave times
    /// that do not rise with their bounds, empty image and migration names, and backwards
    /// migration keys. An update above its own max_version (a pulled-back release) is a note,
    /// not a problem.
    Validate {
        /// The manifest file to check.
        manifest: PathBuf,
    },
    /// Show an update's wave schedule, a host's eligibility time, and how the fleet follows.
    Waves(WavesArgs),
}

/// `waves`' arguments.
#[derive(Args)]
pub struct WavesArgs {
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
}

/// `add-update`'s arguments: the reference's short flags, so `-h` is the hash image.
#[derive(Args)]
pub struct AddUpdateArgs {
    /// The manifest file to edit.
    manifest: PathBuf,
    /// The variant, such as aws-k8s-1.31.
    #[arg(short = 'f', long)]
    variant: String,
    /// The update's version.
    #[arg(short = 'v', long = "version", value_name = "VERSION")]
    version: Version,
    /// The architecture, such as x86_64 or aarch64.
    #[arg(short = 'a', long)]
    arch: String,
    /// Hosts above this version are brought back to the highest update below it.
    #[arg(short = 'm', long, value_name = "VERSION")]
    max_version: Option<Version>,
    /// TUF target name of the boot image [default: VARIANT-ARCH-VERSION-boot.ext4.lz4].
    #[arg(short = 'b', long, value_name = "TARGET")]
    boot: Option<String>,
    /// TUF target name of the root image [default: VARIANT-ARCH-VERSION-root.ext4.lz4].
    #[arg(short = 'r', long, value_name = "TARGET")]
    root: Option<String>,
    /// TUF target name of the hash (verity) image [default: VARIANT-ARCH-VERSION-root.verity.lz4].
    #[arg(short = 'h', long, value_name = "TARGET")]
    hash: Option<String>,
    /// Replace an existing update with the same variant, arch and version.
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    waves: WaveSource,
    /// Print help (-h is the hash image here, as in the reference).
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

/// Which update: the reference's `-l/--variant -a/--arch -v/--version`.
#[derive(Args)]
pub struct UpdateId {
    /// The variant, such as aws-k8s-1.31.
    #[arg(short = 'l', long)]
    variant: String,
    /// The architecture, such as x86_64 or aarch64.
    #[arg(short = 'a', long)]
    arch: String,
    /// The update's version.
    #[arg(short = 'v', long = "version", value_name = "VERSION")]
    version: Version,
}

#[derive(Args)]
pub struct WaveSource {
    /// A wave file (TOML, [[waves]] start_after / fleet_percentage).
    #[arg(
        short = 'w',
        long = "wave-file",
        visible_alias = "policy",
        value_name = "FILE",
        conflicts_with = "default_waves"
    )]
    wave_file: Option<PathBuf>,
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
        let policy = match (&self.wave_file, self.default_waves) {
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

impl ManifestCommand {
    pub fn run(self) -> Result<ExitCode, Box<dyn std::error::Error>> {
        let now = Utc::now();
        match self {
            Self::Init { manifest, force } => {
                if manifest.exists() && !force {
                    return Err(Box::new(Error::Exists { path: manifest }));
                }
                manifest::fs::save(&Manifest::default(), &manifest)?;
                println!("created {}", manifest.display());
            }
            Self::AddUpdate(args) => args.run(now)?,
            Self::RemoveUpdate { manifest: path, id } => {
                let mut m = manifest::fs::load(&path)?;
                m.remove_update(&id.variant, &id.arch, &id.version)?;
                manifest::fs::save(&m, &path)?;
                println!("removed {}", id.describe());
            }
            Self::SetWaves {
                manifest: path,
                id,
                waves,
                clear,
            } => {
                let mut m = manifest::fs::load(&path)?;
                let schedule = if clear {
                    WaveSchedule::new()
                } else {
                    waves.schedule(now)?.ok_or(Error::NoWaveSource)?
                };
                let n = schedule.len();
                m.set_waves(&id.variant, &id.arch, &id.version, schedule)?;
                manifest::fs::save(&m, &path)?;
                println!("{}: {n} wave(s)", id.describe());
            }
            Self::SetMigrations {
                manifest,
                to,
                from,
                merge,
            } => {
                let path = manifest.or(to).ok_or(Error::NoManifestGiven)?;
                let mut m = manifest::fs::load(&path)?;
                let text = std::fs::read_to_string(&from).map_err(|source| Error::Io {
                    action: "reading",
                    path: from.clone(),
                    source,
                })?;
                let migrations = manifest::edit::release_migrations(&text)?;
                let n = migrations.len();
                let mode = if merge {
                    MigrationsMode::Merge
                } else {
                    MigrationsMode::Replace
                };
                let total = m.set_migrations(migrations, mode);
                manifest::fs::save(&m, &path)?;
                println!(
                    "{n} migration step(s) from {}; the manifest now has {total}",
                    from.display()
                );
            }
            Self::SetMaxVersion {
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
            Self::Validate { manifest: path } => return Ok(validate(&path)?),
            Self::Waves(args) => args.run(now)?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl AddUpdateArgs {
    fn run(self, now: DateTime<Utc>) -> Result<(), Error> {
        let Self {
            manifest: path,
            variant,
            version,
            arch,
            max_version,
            boot,
            root,
            hash,
            replace,
            waves,
            help: _,
        } = self;
        let mut m = manifest::fs::load(&path)?;
        let defaults = manifest::edit::default_image_names(&variant, &arch, &version);
        let update = Update {
            variant,
            arch,
            version: version.clone(),
            max_version: version,
            waves: waves.schedule(now)?.unwrap_or_default(),
            images: Images {
                boot: boot.unwrap_or(defaults.boot),
                root: root.unwrap_or(defaults.root),
                hash: hash.unwrap_or(defaults.hash),
            },
            delta: None,
        };
        let what = describe(&update.variant, &update.arch, &update.version);
        let added = m.add_update_with_max(update, max_version, replace)?;
        manifest::fs::save(&m, &path)?;
        println!(
            "added {what}; max_version {} on {} update(s)",
            added.max_version, added.updates_changed
        );
        Ok(())
    }
}

impl WavesArgs {
    fn run(self, now: DateTime<Utc>) -> Result<(), Box<dyn std::error::Error>> {
        let Self {
            manifest: path,
            id,
            seed,
            json,
            svg,
            hosts,
            steps,
            compare_reference,
        } = self;
        let m = manifest::fs::load(&path)?;
        let update = m
            .find_update(&id.variant, &id.arch, &id.version)
            .ok_or_else(|| Error::NoSuchUpdate {
                update: manifest::UpdateId::new(&id.variant, &id.arch, &id.version),
            })?;
        let query = WavesQuery {
            seed: seed.map(Seed::new).transpose().map_err(Error::from)?,
            hosts,
            steps,
            compare_reference,
        };
        let report = WavesReport::new(update, &query, now)?;
        if let Some(svg) = &svg {
            write_svg(update, &report, svg)?;
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_waves(update, &report, hosts, now)?;
            if let Some(svg) = &svg {
                println!("chart written to {}", svg.display());
            }
        }
        Ok(())
    }
}

impl UpdateId {
    fn describe(&self) -> String {
        describe(&self.variant, &self.arch, &self.version)
    }
}

fn describe(variant: &str, arch: &str, version: &Version) -> String {
    format!("{variant} {arch} {version}")
}

fn validate(path: &Path) -> Result<ExitCode, Error> {
    let m = manifest::fs::load(path)?;
    for note in m.problems().iter().filter(|p| p.is_note()) {
        println!("{}: note: {note}", path.display());
    }
    if let Err(e) = m.validate() {
        println!("{}: {e}", path.display(), e = cli_support::error_chain(&e));
        return Ok(ExitCode::FAILURE);
    }
    // Hosts refuse an update that no migration path reaches from what they run.
    let gaps = m.migration_gaps();
    for gap in &gaps {
        println!("{}: {gap}", path.display());
    }
    if !gaps.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "{}: valid ({} update(s), {} migration step(s))",
        path.display(),
        m.updates.len(),
        m.migrations.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn series(report: &WavesReport) -> Vec<(&str, &[FleetPoint])> {
    match &report.fleet_reference {
        Some(r) => vec![("this crate", &report.fleet), ("reference", r)],
        None => vec![("fleet", &report.fleet)],
    }
}

fn write_svg(update: &Update, report: &WavesReport, path: &Path) -> Result<(), Error> {
    let title = format!("{} {} {}", update.variant, update.arch, update.version);
    let chart = waves::sim::render_svg_series(&series(report), &update.waves, &title);
    manifest::fs::write_atomic(path, chart.as_bytes())
}

fn print_waves(
    update: &Update,
    report: &WavesReport,
    hosts: u64,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let schedule = &update.waves;
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
    if let Some(seed) = &report.seed {
        let s = seed.seed;
        match schedule.ready_at(Seed::new(s)?) {
            None => println!("seed {s}: eligible now (no waves)"),
            Some(at) => println!(
                "seed {s}: eligible at {} ({})",
                format_time(at),
                if at <= now { "already" } else { "not yet" }
            ),
        }
    }
    println!("\nfleet of {hosts} host(s):");
    if report.fleet_reference.is_some() {
        print!("{}", waves::sim::render_table_series(&series(report)));
    } else {
        print!("{}", waves::sim::render_table(&report.fleet));
    }
    Ok(())
}
