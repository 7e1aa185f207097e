//! `updog.toml`: where the repository is, who this host is in the rollout, and where things live.
//!
//! The reference keys (`metadata_base_url`, `targets_base_url`, `seed`, `version_lock`,
//! `ignore_waves`, `https_proxy`, `no_proxy`) keep their meaning and spelling, so an existing
//! `/etc/updog.toml` works unchanged. Our keys all have defaults (listed on [`Config`]).
//!
//! The keys are defined once, as the fields of one serde table (`Keys`, private):
//! [`known_keys`] lists them, unknown keys are not errors (a newer config on an older host must
//! not stop updates) but are returned as [`ConfigWarning`]s for the caller to print, and the
//! README's configuration table is checked against [`known_keys`] by a test. A missing required
//! key, or a value of the wrong type, out of range, or too large for its type, is a
//! [`ConfigError`] naming the key (and the line).
//!
//! ```
//! let (config, warnings) = updog::config::Config::from_toml_str(
//!     r#"
//!     metadata_base_url = "https://updates.example.com/2020-07-07/aws-k8s-1.31/x86_64/"
//!     targets_base_url = "https://updates.example.com/targets/"
//!     seed = 1625
//!     version_lock = "latest"
//!     ignore_waves = false
//!     colour = "blue"
//!     "#,
//! )
//! .unwrap();
//! assert_eq!(config.seed.get(), 1625);
//! assert_eq!(config.reboot_command, ["systemctl", "reboot"]);
//! assert_eq!(warnings.len(), 1); // `colour` is unknown
//! ```

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bootpart::SetId;
use manifest::select::VersionLock;
use url::Url;
use waves::{Seed, WaveTiming};

/// Where `updog` reads its configuration unless told otherwise (`--config`).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/updog.toml";
/// Default for `trusted_root`: the root metadata shipped in the OS image.
pub use crate::tuf::DEFAULT_TRUSTED_ROOT;
/// Default for `metadata_dir`: the trusted-metadata directory kept between runs.
pub const DEFAULT_METADATA_DIR: &str = "/var/lib/updog/metadata";
/// Default for `state_file`: the record of what is staged, read by `updog status`.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/updog/state.json";
/// Default for `migrations_dir`: the reference's migrations cache.
pub const DEFAULT_MIGRATIONS_DIR: &str = "/var/lib/bottlerocket-migrations";
/// Default for `migrations_metadata_dir`: the reference's cache of the metadata that signs the
/// migrations, verified offline at boot.
pub const DEFAULT_MIGRATIONS_METADATA_DIR: &str = "/var/cache/bottlerocket-metadata";
/// Default for `os_release`.
pub const DEFAULT_OS_RELEASE: &str = "/usr/lib/os-release";
/// Default for `reboot_command`.
pub const DEFAULT_REBOOT_COMMAND: [&str; 2] = ["systemctl", "reboot"];
/// Default for `stall_timeout_secs`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `retries`.
pub const DEFAULT_RETRIES: u32 = 5;

/// The whole configuration, with every default filled in. The keys, their types and defaults
/// are listed in the README's configuration table (checked against [`known_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the TUF metadata (`file://` or `http(s)://`).
    pub metadata_base_url: Url,
    /// Base URL of the TUF targets.
    pub targets_base_url: Url,
    /// This host's place in the rollout waves.
    pub seed: Seed,
    /// Take the newest update, or exactly one version.
    pub version_lock: VersionLock,
    /// Ignore wave schedules (update as soon as a release exists).
    pub ignore_waves: bool,
    /// How this host's time inside a wave is computed: ours (spread by offset) or the
    /// reference's, for fleets that mix both updaters.
    pub wave_timing: WaveTiming,
    /// Proxy for HTTPS requests.
    pub https_proxy: Option<String>,
    /// Hosts that bypass the proxy.
    pub no_proxy: Vec<String>,
    /// The root metadata shipped with the OS, the start of the chain of trust.
    pub trusted_root: PathBuf,
    /// The trusted-metadata directory kept between runs.
    pub metadata_dir: PathBuf,
    /// The record of what is staged on the inactive set.
    pub state_file: PathBuf,
    /// The migrations cache.
    pub migrations_dir: PathBuf,
    /// The metadata that signs the cached migrations, for offline verification at boot.
    pub migrations_metadata_dir: PathBuf,
    /// The disk holding the partition sets; `None` discovers it from the device of `/`.
    pub disk: Option<PathBuf>,
    /// Which set is running; `None` discovers it. Needed for disk-image files.
    pub active_set: Option<SetId>,
    /// The command run (after a flush) to reboot into the new set.
    pub reboot_command: Vec<String>,
    /// Where the running OS describes itself.
    pub os_release: PathBuf,
    /// How long a download may go without receiving a byte before it fails.
    pub stall_timeout: Duration,
    /// How many times a dropped download is resumed.
    pub retries: u32,
    /// Each metadata file must arrive within 10 s plus its size cap at this rate (bytes per
    /// second); see [`crate::tuf::Limits::metadata_min_rate`].
    pub metadata_min_rate: u64,
    /// Delta updates: assemble each image from chunks of the running set and the chunk store
    /// when the update lists a casync index for it (falls back to the full image by itself).
    pub delta: bool,
}

/// A key in the configuration that this version does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The unknown key.
    pub key: String,
    /// The file it is in (`<string>` for [`Config::from_toml_str`]).
    pub path: PathBuf,
    /// The known key it is probably a typo of.
    pub did_you_mean: Option<&'static str>,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown configuration key {:?} in {} ignored",
            self.key,
            self.path.display()
        )?;
        match self.did_you_mean {
            Some(known) => write!(
                f,
                ": did you mean `{known}`? (rename it, or it has no effect)"
            ),
            None => write!(f, " (`man 5 updog.toml` lists every key)"),
        }
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading configuration {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("configuration {path} is not valid TOML: {message}")]
    Syntax {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A required key is absent.
    #[error(
        "configuration key `{key}` is required but missing from {}{}",
        .path.display(),
        missing_hint(key, .typo.as_deref())
    )]
    Missing {
        /// The key.
        key: &'static str,
        /// The file (`<string>` for [`Config::from_toml_str`]).
        path: PathBuf,
        /// An unknown key in the file that is probably this one misspelt.
        typo: Option<String>,
    },
    /// A key has a value of the wrong type, out of range, or too large for its type.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
}

/// The keys of `updog.toml`, as written: the one definition of which keys exist and of their
/// TOML types. Everything is optional here; [`Config::from_keys`] applies the defaults, the
/// required keys and the range checks.
#[derive(Debug, Default, serde::Deserialize)]
struct Keys {
    metadata_base_url: Option<String>,
    targets_base_url: Option<String>,
    seed: Option<u32>,
    version_lock: Option<VersionLock>,
    ignore_waves: Option<bool>,
    wave_timing: Option<WaveTiming>,
    https_proxy: Option<String>,
    no_proxy: Option<StringList<','>>,
    trusted_root: Option<PathBuf>,
    metadata_dir: Option<PathBuf>,
    state_file: Option<PathBuf>,
    migrations_dir: Option<PathBuf>,
    migrations_metadata_dir: Option<PathBuf>,
    disk: Option<PathBuf>,
    active_set: Option<String>,
    reboot_command: Option<StringList<' '>>,
    os_release: Option<PathBuf>,
    stall_timeout_secs: Option<u64>,
    retries: Option<u32>,
    metadata_min_bytes_per_sec: Option<u64>,
    delta: Option<bool>,
}

/// Every key `updog.toml` may hold, in definition order (the fields of the one key table).
///
/// ```
/// let keys = updog::config::known_keys();
/// assert!(keys.contains(&"metadata_base_url") && keys.contains(&"wave_timing"));
/// ```
pub fn known_keys() -> &'static [&'static str] {
    static KEYS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    KEYS.get_or_init(fields::of::<Keys>)
}

/// Every key of `updog.toml` with its default and meaning, in the order of [`known_keys`] (a
/// test holds them equal): the source of the `updog.toml(5)` man page, and what the README's
/// configuration table lists.
pub const KEY_DOCS: &[KeyDoc] = &[
    doc(
        "metadata_base_url",
        "required",
        "Base URL of the TUF metadata (https://, http:// or file://), ending in /.",
    ),
    doc(
        "targets_base_url",
        "required",
        "Base URL of the TUF targets (images, migrations, the manifest).",
    ),
    doc(
        "seed",
        "required",
        "This host's place in the rollout waves, 0..=2047; hosts with low seeds update first. Give every host its own, spread evenly.",
    ),
    doc(
        "version_lock",
        "\"latest\"",
        "\"latest\", or a version (\"1.20.3\", \"v1.20.3\") to go to and stay on, up or down.",
    ),
    doc(
        "ignore_waves",
        "false",
        "Take a release as soon as it is published, whatever its wave schedule says.",
    ),
    doc(
        "wave_timing",
        "\"offset\"",
        "How a host's time inside a wave is computed: \"offset\" (spread by the seed's offset in the wave) or \"reference\" (Bottlerocket's timing, for fleets that mix both updaters).",
    ),
    doc(
        "https_proxy",
        "none",
        "Proxy for https:// repositories; otherwise HTTPS_PROXY/https_proxy from the environment.",
    ),
    doc(
        "no_proxy",
        "none",
        "Hosts that bypass the proxy: a list, or one comma-separated string; otherwise NO_PROXY/no_proxy.",
    ),
    doc(
        "trusted_root",
        DEFAULT_TRUSTED_ROOT,
        "The root metadata shipped in the OS image; it seeds metadata_dir on the first run (later runs start from the stored root).",
    ),
    doc(
        "metadata_dir",
        DEFAULT_METADATA_DIR,
        "Trusted metadata kept between runs (root.json and the roles).",
    ),
    doc(
        "state_file",
        DEFAULT_STATE_FILE,
        "The record of what is staged, read by updog status.",
    ),
    doc(
        "migrations_dir",
        DEFAULT_MIGRATIONS_DIR,
        "Where the migrations a version jump needs are cached for the migrator at boot.",
    ),
    doc(
        "migrations_metadata_dir",
        DEFAULT_MIGRATIONS_METADATA_DIR,
        "The metadata that signs the cached migrations, for offline verification at boot.",
    ),
    doc(
        "disk",
        "discovered from the device of /",
        "The OS disk: a block device or a disk-image file with the A/B GPT layout. Set active_set with it for a disk-image file.",
    ),
    doc(
        "active_set",
        "discovered",
        "The running partition set, \"A\" or \"B\".",
    ),
    doc(
        "reboot_command",
        "[\"systemctl\", \"reboot\"]",
        "What update --reboot and update-apply --reboot run after the flip: a list, or one string split on spaces.",
    ),
    doc(
        "os_release",
        DEFAULT_OS_RELEASE,
        "Where the running OS names its variant and version (VARIANT_ID, VERSION_ID, BUILD_ID).",
    ),
    doc(
        "stall_timeout_secs",
        "30",
        "A download fails after this many seconds without a byte (1..=86400).",
    ),
    doc(
        "retries",
        "5",
        "How many times a dropped download is resumed with a Range request (0..=1000).",
    ),
    doc(
        "metadata_min_bytes_per_sec",
        "4096",
        "Each metadata file must arrive whole within 10 s plus its size cap at this rate.",
    ),
    doc(
        "delta",
        "true",
        "Build images from chunks of the running set and the chunk store when the update offers casync indexes; false: always the full image.",
    ),
];

/// One key of `updog.toml`, for its documentation (the `updog.toml(5)` man page that the
/// `updog` binary writes from [`KEY_DOCS`] and [`CONFIG_PAGE_ABOUT`]).
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// The key.
    pub key: &'static str,
    /// Its default (or "required").
    pub default: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

const fn doc(key: &'static str, default: &'static str, meaning: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        default,
        meaning,
    }
}

/// The description paragraph of the `updog.toml(5)` man page.
pub const CONFIG_PAGE_ABOUT: &str = "updog reads /etc/updog.toml (or the file given with --config). The reference keys \
     (metadata_base_url, targets_base_url, seed, version_lock, ignore_waves, https_proxy, \
     no_proxy) keep Bottlerocket's names and meaning; the others have defaults. Unknown keys \
     are warnings (naming the known key a misspelt one probably is); a missing required key \
     or a bad value is an error naming the key.";

/// The largest configuration file read (a real one is well under 1 KiB).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

impl Config {
    /// A configuration built in code: the required values, every other key at its default.
    pub fn new(metadata_base_url: Url, targets_base_url: Url, seed: Seed) -> Config {
        Config {
            metadata_base_url,
            targets_base_url,
            seed,
            version_lock: VersionLock::Latest,
            ignore_waves: false,
            wave_timing: WaveTiming::Offset,
            https_proxy: None,
            no_proxy: Vec::new(),
            trusted_root: PathBuf::from(DEFAULT_TRUSTED_ROOT),
            metadata_dir: PathBuf::from(DEFAULT_METADATA_DIR),
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
            migrations_dir: PathBuf::from(DEFAULT_MIGRATIONS_DIR),
            migrations_metadata_dir: PathBuf::from(DEFAULT_MIGRATIONS_METADATA_DIR),
            disk: None,
            active_set: None,
            reboot_command: DEFAULT_REBOOT_COMMAND
                .iter()
                .map(ToString::to_string)
                .collect(),
            os_release: PathBuf::from(DEFAULT_OS_RELEASE),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            retries: DEFAULT_RETRIES,
            metadata_min_rate: crate::tuf::DEFAULT_METADATA_MIN_RATE,
            delta: true,
        }
    }

    /// Reads and validates a configuration file.
    pub fn from_path(path: &Path) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        use std::io::Read;
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                message: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text.
    pub fn from_toml_str(text: &str) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        Self::parse(text, Path::new("<string>"))
    }

    fn parse(text: &str, path: &Path) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        // Syntax first (a duplicate key, an integer too large for TOML), then the types.
        let table: toml::Table = toml::from_str(text).map_err(|e| located(&e, text, path))?;
        let mut warnings: Vec<ConfigWarning> = table
            .keys()
            .filter(|k| !known_keys().contains(&k.as_str()))
            .map(|k| ConfigWarning {
                key: k.clone(),
                path: path.to_path_buf(),
                did_you_mean: did_you_mean(k),
            })
            .collect();
        warnings.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Keys = toml::from_str(text).map_err(|e| located(&e, text, path))?;
        let config = Self::from_keys(keys).map_err(|e| match e {
            // Name the file, and the unknown key that is probably the missing one misspelt.
            ConfigError::Missing { key, .. } => ConfigError::Missing {
                key,
                path: path.to_path_buf(),
                typo: warnings
                    .iter()
                    .find(|w| w.did_you_mean == Some(key))
                    .map(|w| w.key.clone()),
            },
            other => other,
        })?;
        Ok((config, warnings))
    }

    /// Applies defaults, required keys and range checks to the keys as written.
    fn from_keys(k: Keys) -> Result<Config, ConfigError> {
        let metadata_base_url = url("metadata_base_url", k.metadata_base_url)?;
        let targets_base_url = url("targets_base_url", k.targets_base_url)?;
        let seed_raw = k.seed.ok_or(missing("seed"))?;
        let seed = Seed::new(seed_raw).map_err(|_| out_of_range("seed", seed_raw.into()))?;
        let mut c = Config::new(metadata_base_url, targets_base_url, seed);
        let set = |target: &mut PathBuf, key, value: Option<PathBuf>| {
            if let Some(p) = path(key, value)? {
                *target = p;
            }
            Ok::<(), ConfigError>(())
        };
        if let Some(lock) = k.version_lock {
            c.version_lock = lock;
        }
        c.ignore_waves = k.ignore_waves.unwrap_or(c.ignore_waves);
        c.delta = k.delta.unwrap_or(c.delta);
        c.wave_timing = k.wave_timing.unwrap_or(c.wave_timing);
        c.https_proxy = k.https_proxy.filter(|s| !s.is_empty());
        if let Some(list) = k.no_proxy {
            c.no_proxy = list.0;
        }
        set(&mut c.trusted_root, "trusted_root", k.trusted_root)?;
        set(&mut c.metadata_dir, "metadata_dir", k.metadata_dir)?;
        set(&mut c.state_file, "state_file", k.state_file)?;
        set(&mut c.migrations_dir, "migrations_dir", k.migrations_dir)?;
        set(
            &mut c.migrations_metadata_dir,
            "migrations_metadata_dir",
            k.migrations_metadata_dir,
        )?;
        c.disk = path("disk", k.disk)?;
        if let Some(s) = k.active_set {
            c.active_set = Some(s.parse().map_err(|_| ConfigError::Invalid {
                key: "active_set",
                reason: format!("{s:?} is not \"A\" or \"B\""),
            })?);
        }
        if let Some(cmd) = k.reboot_command {
            if cmd.0.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "reboot_command",
                    reason: "is empty".to_string(),
                });
            }
            c.reboot_command = cmd.0;
        }
        set(&mut c.os_release, "os_release", k.os_release)?;
        if let Some(secs) = k.stall_timeout_secs {
            if !range_of("stall_timeout_secs").contains(&secs) {
                return Err(out_of_range("stall_timeout_secs", secs));
            }
            c.stall_timeout = Duration::from_secs(secs);
        }
        if let Some(r) = k.retries {
            if !range_of("retries").contains(&r.into()) {
                return Err(out_of_range("retries", r.into()));
            }
            c.retries = r;
        }
        if let Some(r) = k.metadata_min_bytes_per_sec {
            if !range_of("metadata_min_bytes_per_sec").contains(&r) {
                return Err(out_of_range("metadata_min_bytes_per_sec", r));
            }
            c.metadata_min_rate = r;
        }
        Ok(c)
    }
}

/// [`ConfigError::Missing`] before [`Config::parse`] names the file.
fn missing(key: &'static str) -> ConfigError {
    ConfigError::Missing {
        key,
        path: PathBuf::new(),
        typo: None,
    }
}

/// What to do about a missing required key.
fn missing_hint(key: &str, typo: Option<&str>) -> String {
    match typo {
        Some(typo) => format!(": `{typo}` is not a key, did you mean `{key}`? Rename it"),
        None => format!(": add `{key} = ...` (`man 5 updog.toml` lists every key)"),
    }
}

/// The known key that `unknown` is most likely a misspelling of: the closest by edit distance,
/// when it is close enough (about one edit in four characters, at most three) to be a typo
/// rather than another key.
pub fn did_you_mean(unknown: &str) -> Option<&'static str> {
    let unknown = unknown.to_ascii_lowercase().replace('-', "_");
    known_keys()
        .iter()
        .map(|k| (edit_distance(&unknown, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 4).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, counting an adjacent swap as one edit (a common typo).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Three rows: two back (for swaps), one back, current.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

fn path(key: &'static str, value: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    match value {
        Some(p) if p.as_os_str().is_empty() => Err(ConfigError::Invalid {
            key,
            reason: "is an empty path".to_string(),
        }),
        other => Ok(other),
    }
}

fn url(key: &'static str, value: Option<String>) -> Result<Url, ConfigError> {
    let s = value.ok_or(missing(key))?;
    let url = Url::parse(&s).map_err(|e| ConfigError::Invalid {
        key,
        reason: format!("{s:?} is not a URL: {e}"),
    })?;
    match url.scheme() {
        "http" | "https" | "file" => Ok(url),
        other => Err(ConfigError::Invalid {
            key,
            reason: format!("scheme {other:?} is not http, https or file"),
        }),
    }
}

/// A TOML error as a [`ConfigError`]: when it points into the value of a known key (a wrong
/// type, a number too large for its type or for TOML itself), [`ConfigError::Invalid`] naming
/// that key; otherwise [`ConfigError::Syntax`] with the line.
fn located(e: &toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let message = e.message().trim_end().replace('\n', " ");
    let Some(span) = e.span() else {
        return ConfigError::Syntax {
            path: path.to_path_buf(),
            message,
        };
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    // The key whose value holds the span: the nearest `key =` at or above it (values such as
    // arrays may span lines).
    // A key on an earlier line counts only when its value is an array left open there: a stray
    // line (a binary byte, a word without `=`) after `retries = 3` is the file's syntax, not
    // the value of `retries`.
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (above, here) = (
        text.get(..line_start).unwrap_or(""),
        text.get(line_start..).unwrap_or(""),
    );
    let lines: Vec<&str> = above.lines().chain(here.lines().next()).collect();
    let last = lines.len().saturating_sub(1);
    let key = lines.iter().enumerate().rev().find_map(|(n, l)| {
        let (k, value) = l.split_once('=')?;
        let k = k.trim().trim_matches('"');
        let open_array = value.matches('[').count() > value.matches(']').count();
        if n != last && !open_array {
            return Some(None);
        }
        Some(known_keys().iter().find(|known| **known == k).copied())
    });
    let key = key.flatten();
    match key {
        // A duplicate key is a syntax problem of the file, not of the value.
        Some(key) if !message.contains("duplicate key") => ConfigError::Invalid {
            key,
            reason: format!(
                "{} (line {line})",
                describe_value_error(key, &message, text, span)
            ),
        },
        _ => ConfigError::Syntax {
            path: path.to_path_buf(),
            message: format!("line {line}: {message}"),
        },
    }
}

/// The integer keys and the ranges they accept.
const INTEGER_RANGES: [(&str, RangeInclusive<u64>); 4] = [
    ("seed", 0..=(waves::SEED_COUNT as u64 - 1)),
    ("stall_timeout_secs", 1..=86_400),
    ("retries", 0..=1000),
    ("metadata_min_bytes_per_sec", 1..=1 << 30),
];

fn range_of(key: &str) -> RangeInclusive<u64> {
    INTEGER_RANGES
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(0..=u64::MAX, |(_, r)| r.clone())
}

fn out_of_range(key: &'static str, value: u64) -> ConfigError {
    let r = range_of(key);
    ConfigError::Invalid {
        key,
        reason: format!("{value} is outside {}..={}", r.start(), r.end()),
    }
}

/// The parser's message, or for an integer that does not fit its key (too large for its type,
/// or for TOML itself), the range that the key accepts.
fn describe_value_error(
    key: &str,
    message: &str,
    text: &str,
    span: std::ops::Range<usize>,
) -> String {
    let literal = text.get(span).unwrap_or("").trim();
    let integer = message.contains("as i128") || message.starts_with("invalid value: integer");
    if !integer || literal.is_empty() {
        return message.to_string();
    }
    let r = range_of(key);
    format!("{literal} is outside {}..={}", r.start(), r.end())
}

/// A list of strings, or one string split on `SEP` (empty parts dropped): how `no_proxy` and
/// `reboot_command` may be written.
#[derive(Debug, Default)]
struct StringList<const SEP: char>(Vec<String>);

impl<'de, const SEP: char> serde::Deserialize<'de> for StringList<SEP> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const SEP: char>;
        impl<'de, const SEP: char> serde::de::Visitor<'de> for V<SEP> {
            type Value = StringList<SEP>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of strings, or one string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(StringList(
                    s.split(SEP)
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(ToString::to_string)
                        .collect(),
                ))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    out.push(item);
                }
                Ok(StringList(out))
            }
        }
        d.deserialize_any(V::<SEP>)
    }
}

/// The field names of a `#[derive(Deserialize)]` struct, read from what serde's derive passes to
/// `deserialize_struct` (so the list cannot drift from the struct).
mod fields {
    use serde::de::{self, Visitor};
    use std::cell::Cell;

    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field introspection")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Stop
        }
    }

    struct Grab<'a>(&'a Cell<&'static [&'static str]>);

    impl<'de> de::Deserializer<'de> for Grab<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Stop> {
            self.0.set(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    /// The fields of `T` (empty if `T` is not a struct).
    pub(super) fn of<T: de::DeserializeOwned>() -> &'static [&'static str] {
        let fields = Cell::new(&[][..]);
        let _ = T::deserialize(Grab(&fields));
        fields.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        metadata_base_url = "https://example.com/meta/"
        targets_base_url = "https://example.com/targets/"
        seed = 7
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let (c, w) = Config::from_toml_str(MINIMAL).unwrap();
        assert!(w.is_empty());
        assert_eq!(c.seed.get(), 7);
        assert_eq!(c.version_lock, VersionLock::Latest);
        assert!(!c.ignore_waves);
        assert_eq!(c.trusted_root, Path::new("/usr/share/updog/root.json"));
        assert_eq!(c.reboot_command, vec!["systemctl", "reboot"]);
        assert_eq!(c.os_release, Path::new("/usr/lib/os-release"));
        assert_eq!(c.disk, None);
        assert_eq!(c.active_set, None);
    }

    #[test]
    fn reference_keys_and_ours_are_read() {
        let text = format!(
            "{MINIMAL}
            version_lock = \"v1.2.3\"
            ignore_waves = true
            https_proxy = \"http://proxy:3128\"
            no_proxy = \"localhost, .internal\"
            disk = \"/tmp/disk.img\"
            active_set = \"b\"
            reboot_command = [\"/bin/echo\", \"bye\"]
            stall_timeout_secs = 2
            retries = 0
            "
        );
        let (c, w) = Config::from_toml_str(&text).unwrap();
        assert!(w.is_empty());
        assert_eq!(
            c.version_lock,
            VersionLock::Exact(semver::Version::new(1, 2, 3))
        );
        assert!(c.ignore_waves);
        assert_eq!(c.https_proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!(c.no_proxy, vec!["localhost", ".internal"]);
        assert_eq!(c.disk.as_deref(), Some(Path::new("/tmp/disk.img")));
        assert_eq!(c.active_set, Some(SetId::B));
        assert_eq!(c.reboot_command, vec!["/bin/echo", "bye"]);
        assert_eq!(c.stall_timeout, Duration::from_secs(2));
        assert_eq!(c.retries, 0);
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let text = format!("{MINIMAL}\nzeta = 1\nalpha = \"x\"\n");
        let (_, w) = Config::from_toml_str(&text).unwrap();
        let keys: Vec<_> = w.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["alpha", "zeta"]);
        assert!(w[0].to_string().contains("alpha"));
    }

    /// `MINIMAL` with `line` in place of the line of the same key.
    fn minimal_with(line: &str) -> String {
        let key_of_line = line.split(' ').next().unwrap();
        MINIMAL
            .lines()
            .filter(|l| !l.trim_start().starts_with(key_of_line))
            .chain(std::iter::once(line))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn err_of(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn missing_required_keys_are_named() {
        for key in ["metadata_base_url", "targets_base_url", "seed"] {
            let text: String = MINIMAL
                .lines()
                .filter(|l| !l.trim_start().starts_with(key))
                .collect::<Vec<_>>()
                .join("\n");
            let e = err_of(&text);
            assert!(e.contains(key) && e.contains("missing"), "{e}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("seed = 2048", "seed"),
            ("wave_timing = 1", "wave_timing"),
            ("seed = -1", "seed"),
            ("seed = \"7\"", "seed"),
            ("metadata_base_url = \"not a url\"", "metadata_base_url"),
            ("targets_base_url = \"ftp://x/\"", "targets_base_url"),
            ("version_lock = \"newest\"", "version_lock"),
            ("ignore_waves = \"yes\"", "ignore_waves"),
            ("active_set = \"C\"", "active_set"),
            ("reboot_command = []", "reboot_command"),
            ("reboot_command = [1]", "reboot_command"),
            ("stall_timeout_secs = 0", "stall_timeout_secs"),
            ("disk = \"\"", "disk"),
        ];
        for (line, key) in cases {
            let text = minimal_with(line);
            let e = err_of(&text);
            assert!(e.contains(&format!("`{key}`")), "{line}: {e}");
        }
    }

    #[test]
    fn values_too_large_for_their_type_name_the_key() {
        let cases = [
            (
                "seed = 99999999999999999999999",
                "seed",
                "99999999999999999999999",
            ),
            ("seed = 5000000000", "seed", "5000000000"),
            (
                "stall_timeout_secs = 18446744073709551616",
                "stall_timeout_secs",
                "18446744073709551616",
            ),
            ("retries = 4294967296", "retries", "4294967296"),
            ("retries = -1", "retries", "-1"),
        ];
        for (line, key, literal) in cases {
            let text = minimal_with(line);
            let e = err_of(&text);
            assert!(
                e.starts_with(&format!("configuration key `{key}`: ")) && e.contains(literal),
                "{line}: {e}"
            );
            assert!(e.contains("line "), "{line}: {e}");
        }
    }

    #[test]
    fn wrong_types_inside_a_multi_line_list_name_the_key() {
        let text = format!("{MINIMAL}\nreboot_command = [\n  \"/bin/echo\",\n  7,\n]\n");
        let e = err_of(&text);
        assert!(e.contains("`reboot_command`"), "{e}");
    }

    /// Issue 24, finding 8: a binary byte on a line of its own is the file's syntax (with its
    /// line), not a bad value of the key on the line above it.
    #[test]
    fn a_stray_byte_after_a_key_is_a_syntax_error_not_that_keys_value() {
        let text = format!("{MINIMAL}\nretries = 3\n\u{1}\n");
        let line = text.lines().count();
        let e = Config::from_toml_str(&text).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        let e = e.to_string();
        assert!(
            !e.contains("retries") && e.contains(&format!("line {line}")),
            "{e}"
        );
    }

    #[test]
    fn wave_timing_is_read_and_checked() {
        let (c, _) = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.wave_timing, WaveTiming::Offset);
        let (c, _) =
            Config::from_toml_str(&format!("{MINIMAL}\nwave_timing = \"reference\"\n")).unwrap();
        assert_eq!(c.wave_timing, WaveTiming::Reference);
        let e = err_of(&format!("{MINIMAL}\nwave_timing = \"absolute\"\n"));
        assert!(e.contains("`wave_timing`") && e.contains("absolute"), "{e}");
    }

    #[test]
    fn delta_is_on_by_default_and_can_be_turned_off() {
        let (c, _) = Config::from_toml_str(MINIMAL).unwrap();
        assert!(c.delta);
        let (c, w) = Config::from_toml_str(&format!("{MINIMAL}\ndelta = false\n")).unwrap();
        assert!(!c.delta);
        assert!(w.is_empty(), "{w:?}");
        assert!(Config::from_toml_str(&format!("{MINIMAL}\ndelta = \"no\"\n")).is_err());
    }

    #[test]
    fn known_keys_are_the_fields_of_the_key_table() {
        let keys = known_keys();
        assert_eq!(keys.len(), 21, "{keys:?}");
        for key in [
            "metadata_base_url",
            "seed",
            "no_proxy",
            "retries",
            "wave_timing",
        ] {
            assert!(keys.contains(&key), "{key}");
        }
        // Every known key is accepted without a warning.
        let (_, w) = Config::from_toml_str(MINIMAL).unwrap();
        assert!(w.is_empty());
    }

    #[test]
    fn key_docs_cover_the_key_table_in_order() {
        // The man page made of them is checked by the `updog` binary's package (`cli/`).
        let documented: Vec<&str> = KEY_DOCS.iter().map(|k| k.key).collect();
        assert_eq!(documented, known_keys(), "KEY_DOCS vs the key table");
    }

    /// The README's configuration table lists exactly the keys of the key table.
    #[test]
    fn readme_table_lists_exactly_the_known_keys() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("Configuration"))
            .expect("README has a Configuration section");
        let mut documented: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| cell.split('`').skip(1).step_by(2))
            .collect();
        documented.sort_unstable();
        let mut known = known_keys().to_vec();
        known.sort_unstable();
        assert_eq!(
            documented, known,
            "README configuration table vs the key table"
        );
    }

    #[test]
    fn typos_of_known_keys_are_suggested() {
        for (typo, key) in [
            ("metdata_base_url", Some("metadata_base_url")),
            ("ignore_wave", Some("ignore_waves")),
            ("IGNORE-WAVES", Some("ignore_waves")),
            ("sede", Some("seed")),
            ("retires", Some("retries")),
            ("colour", None),
            ("lock_file", None),
        ] {
            assert_eq!(did_you_mean(typo), key, "{typo}");
        }
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn a_misspelt_required_key_is_named_with_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("updog.toml");
        std::fs::write(
            &path,
            MINIMAL.replace("metadata_base_url", "metdata_base_url"),
        )
        .unwrap();
        let e = Config::from_path(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "configuration key `metadata_base_url` is required but missing from {}: \
                 `metdata_base_url` is not a key, did you mean `metadata_base_url`? Rename it",
                path.display()
            )
        );
        std::fs::write(&path, "seed = 1\ntargets_base_url = \"file:///t/\"\n").unwrap();
        let e = Config::from_path(&path).unwrap_err().to_string();
        assert!(e.ends_with("add `metadata_base_url = ...` (`man 5 updog.toml` lists every key)"));
        // An unknown optional key is a warning that names the file and the likely key.
        std::fs::write(&path, format!("{MINIMAL}\nignore_wave = true\n")).unwrap();
        let (_, w) = Config::from_path(&path).unwrap();
        assert_eq!(
            w[0].to_string(),
            format!(
                "unknown configuration key \"ignore_wave\" in {} ignored: did you mean \
                 `ignore_waves`? (rename it, or it has no effect)",
                path.display()
            )
        );
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("updog.toml");
        std::fs::write(&path, "seed = 3\nseed = 4\n").unwrap();
        let e = Config::from_path(&path).unwrap_err().to_string();
        assert!(
            e.contains("updog.toml") && e.contains("line 2: duplicate key"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        let e = Config::from_path(&dir.path().join("nope.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml"), "{e}");
    }
}
