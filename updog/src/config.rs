//! `updog.toml`: where the repository is, who this host is in the rollout, and where things live.
//!
//! The reference keys (`metadata_base_url`, `targets_base_url`, `seed`, `version_lock`,
//! `ignore_waves`, `https_proxy`, `no_proxy`) keep their meaning and spelling, so an existing
//! `/etc/updog.toml` works unchanged. Our keys all have defaults (listed on [`Config`]).
//!
//! Unknown keys are not errors (a newer config on an older host must not stop updates); they are
//! returned as [`ConfigWarning`]s for the caller to print. A missing required key or a value of
//! the wrong type or range is a [`ConfigError`] naming the key.
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

use std::path::{Path, PathBuf};
use std::time::Duration;

use bootpart::SetId;
use manifest::select::VersionLock;
use url::Url;
use waves::Seed;

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

/// The whole configuration, with every default filled in.
///
/// | key | type | default |
/// |---|---|---|
/// | `metadata_base_url` | URL | required |
/// | `targets_base_url` | URL | required |
/// | `seed` | integer 0..=2047 | required |
/// | `version_lock` | `"latest"` or a version | `"latest"` |
/// | `ignore_waves` | bool | `false` |
/// | `https_proxy` | string | none |
/// | `no_proxy` | list of strings (or one comma-separated string) | empty |
/// | `trusted_root` | path | `/usr/share/updog/root.json` |
/// | `metadata_dir` | path | `/var/lib/updog/metadata` |
/// | `state_file` | path | `/var/lib/updog/state.json` |
/// | `migrations_dir` | path | `/var/lib/bottlerocket-migrations` |
/// | `migrations_metadata_dir` | path | `/var/cache/bottlerocket-metadata` |
/// | `disk` | path | discovered from the device of `/` |
/// | `active_set` | `"A"` or `"B"` | discovered from the device of `/` |
/// | `reboot_command` | list of strings (or one string, split on spaces) | `["systemctl", "reboot"]` |
/// | `os_release` | path | `/usr/lib/os-release` |
/// | `stall_timeout_secs` | positive integer | `30` |
/// | `retries` | integer | `5` |
/// | `metadata_min_bytes_per_sec` | positive integer | `4096` |
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
}

/// A key in the configuration that this version does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The unknown key.
    pub key: String,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown configuration key {:?} ignored", self.key)
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading configuration {path}: {source}")]
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
    #[error("configuration key `{key}` is required but missing")]
    Missing {
        /// The key.
        key: &'static str,
    },
    /// A key has a value of the wrong type or out of range.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
}

const KNOWN_KEYS: &[&str] = &[
    "metadata_base_url",
    "targets_base_url",
    "seed",
    "version_lock",
    "ignore_waves",
    "https_proxy",
    "no_proxy",
    "trusted_root",
    "metadata_dir",
    "state_file",
    "migrations_dir",
    "migrations_metadata_dir",
    "disk",
    "active_set",
    "reboot_command",
    "os_release",
    "stall_timeout_secs",
    "retries",
    "metadata_min_bytes_per_sec",
];

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
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| {
                text.bytes()
                    .take(span.start)
                    .filter(|b| *b == b'\n')
                    .count()
                    + 1
            });
            ConfigError::Syntax {
                path: path.to_path_buf(),
                message: match line {
                    Some(line) => format!("line {line}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        })?;
        let mut warnings: Vec<ConfigWarning> = table
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .map(|k| ConfigWarning { key: k.clone() })
            .collect();
        warnings.sort_by(|a, b| a.key.cmp(&b.key));

        let t = Table(&table);
        let metadata_base_url = t.url("metadata_base_url")?;
        let targets_base_url = t.url("targets_base_url")?;
        let seed_raw = t
            .integer("seed")?
            .ok_or(ConfigError::Missing { key: "seed" })?;
        let seed = u32::try_from(seed_raw)
            .ok()
            .and_then(|s| Seed::new(s).ok())
            .ok_or_else(|| ConfigError::Invalid {
                key: "seed",
                reason: format!("{seed_raw} is outside 0..=2047"),
            })?;
        let mut config = Config::new(metadata_base_url, targets_base_url, seed);

        if let Some(lock) = t.string("version_lock")? {
            config.version_lock =
                lock.parse::<VersionLock>()
                    .map_err(|e| ConfigError::Invalid {
                        key: "version_lock",
                        reason: e.to_string(),
                    })?;
        }
        if let Some(b) = t.boolean("ignore_waves")? {
            config.ignore_waves = b;
        }
        config.https_proxy = t.string("https_proxy")?.filter(|s| !s.is_empty());
        if let Some(list) = t.list_or_split("no_proxy", ',')? {
            config.no_proxy = list;
        }
        if let Some(p) = t.path("trusted_root")? {
            config.trusted_root = p;
        }
        if let Some(p) = t.path("metadata_dir")? {
            config.metadata_dir = p;
        }
        if let Some(p) = t.path("state_file")? {
            config.state_file = p;
        }
        if let Some(p) = t.path("migrations_dir")? {
            config.migrations_dir = p;
        }
        if let Some(p) = t.path("migrations_metadata_dir")? {
            config.migrations_metadata_dir = p;
        }
        config.disk = t.path("disk")?;
        if let Some(s) = t.string("active_set")? {
            config.active_set = Some(s.parse().map_err(|_| ConfigError::Invalid {
                key: "active_set",
                reason: format!("{s:?} is not \"A\" or \"B\""),
            })?);
        }
        if let Some(cmd) = t.list_or_split("reboot_command", ' ')? {
            if cmd.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "reboot_command",
                    reason: "is empty".to_string(),
                });
            }
            config.reboot_command = cmd;
        }
        if let Some(p) = t.path("os_release")? {
            config.os_release = p;
        }
        if let Some(secs) = t.integer("stall_timeout_secs")? {
            let secs = u64::try_from(secs)
                .ok()
                .filter(|s| (1..=86_400).contains(s))
                .ok_or_else(|| ConfigError::Invalid {
                    key: "stall_timeout_secs",
                    reason: format!("{secs} is outside 1..=86400"),
                })?;
            config.stall_timeout = Duration::from_secs(secs);
        }
        if let Some(r) = t.integer("retries")? {
            config.retries = u32::try_from(r)
                .ok()
                .filter(|r| *r <= 1000)
                .ok_or_else(|| ConfigError::Invalid {
                    key: "retries",
                    reason: format!("{r} is outside 0..=1000"),
                })?;
        }
        if let Some(r) = t.integer("metadata_min_bytes_per_sec")? {
            config.metadata_min_rate = u64::try_from(r)
                .ok()
                .filter(|r| (1..=1 << 30).contains(r))
                .ok_or_else(|| ConfigError::Invalid {
                    key: "metadata_min_bytes_per_sec",
                    reason: format!("{r} is outside 1..=1073741824"),
                })?;
        }
        Ok((config, warnings))
    }
}

/// Typed access to the keys of the parsed table, with errors naming the key.
struct Table<'a>(&'a toml::Table);

impl Table<'_> {
    fn type_error(key: &'static str, want: &str, got: &toml::Value) -> ConfigError {
        ConfigError::Invalid {
            key,
            reason: format!("expected {want}, found {}", got.type_str()),
        }
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(Self::type_error(key, "a string", v)),
        }
    }

    fn integer(&self, key: &'static str) -> Result<Option<i64>, ConfigError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => Ok(Some(*i)),
            Some(v) => Err(Self::type_error(key, "an integer", v)),
        }
    }

    fn boolean(&self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::type_error(key, "true or false", v)),
        }
    }

    fn path(&self, key: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Err(ConfigError::Invalid {
                key,
                reason: "is an empty path".to_string(),
            }),
            Some(s) => Ok(Some(PathBuf::from(s))),
        }
    }

    fn url(&self, key: &'static str) -> Result<Url, ConfigError> {
        let s = self.string(key)?.ok_or(ConfigError::Missing { key })?;
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

    /// A list of strings, or one string split on `sep` (empty parts dropped).
    fn list_or_split(
        &self,
        key: &'static str,
        sep: char,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(
                s.split(sep)
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(ToString::to_string)
                    .collect(),
            )),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    v => Err(Self::type_error(key, "a list of strings", v)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(Self::type_error(key, "a list of strings", v)),
        }
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
            let key_of_line = line.split(' ').next().unwrap();
            let text: String = MINIMAL
                .lines()
                .filter(|l| !l.trim_start().starts_with(key_of_line))
                .chain(std::iter::once(line))
                .collect::<Vec<_>>()
                .join("\n");
            let e = err_of(&text);
            assert!(e.contains(&format!("`{key}`")), "{line}: {e}");
        }
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
