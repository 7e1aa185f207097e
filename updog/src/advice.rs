//! One-line explanations of [`UpdateError`]s for the person at the terminal: what failed (the
//! error and its causes), then what to do about it, in terms of `updog.toml`.
//!
//! - A download that failed names the key that gave its URL (`metadata_base_url` or
//!   `targets_base_url`) and the configuration file; when the server cannot be reached at all,
//!   the message says so and names the base URL, rather than the first file it tried (on a first
//!   run that is `2.root.json`, which is not what is wrong).
//! - A disk or running set that could not be discovered points at the `disk` and `active_set`
//!   keys.
//! - Permission denied on a device, a lock or a state directory says that root is needed (or,
//!   when updog runs as root, that the file may be immutable).
//!
//! ```
//! use updog::updater::UpdateError;
//! let config = updog::config::Config::new(
//!     "http://127.0.0.1:1/metadata/".parse()?,
//!     "http://127.0.0.1:1/targets/".parse()?,
//!     waves::Seed::new(7)?,
//! );
//! let err = UpdateError::Disk(Box::new(bootpart::Error::Running("no device for /".into())));
//! let text = updog::advice::explain(&err, &config, "/etc/updog.toml".as_ref());
//! assert!(text.contains("`disk` and `active_set` in /etc/updog.toml"), "{text}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::error::Error;
use std::io;
use std::path::Path;

use manifest::select::NoUpdateReason;

use crate::config::Config;
use crate::error::UpdateError;
use crate::transport::{TransportError, TransportErrorKind};

/// The error and its causes on one line, outermost first, joined by `": "`.
///
/// Each layer's Display says only what that layer adds (the workspace's error types never
/// repeat their source), so the whole chain is printed as it is, nothing left out:
///
/// ```
/// let err = updog::config::ConfigError::Read {
///     path: "/etc/updog.toml".into(),
///     source: std::io::Error::from(std::io::ErrorKind::NotFound),
/// };
/// assert_eq!(
///     updog::advice::error_chain(&err),
///     "reading configuration /etc/updog.toml: entity not found"
/// );
/// ```
pub fn error_chain(e: &(dyn Error + 'static)) -> String {
    std::iter::successors(Some(e), |&e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// `err` as one line, with advice where the configuration or the privileges are the likely
/// cause. `config_path` is the file `config` was read from.
pub fn explain(err: &UpdateError, config: &Config, config_path: &Path) -> String {
    explain_as(err, config, config_path, nix::unistd::geteuid().is_root())
}

/// [`explain`] for a process that runs as root (`as_root`) or not: root is told what else
/// refuses it (an immutable file, a read-only mount), not that it needs root.
fn explain_as(err: &UpdateError, config: &Config, config_path: &Path, as_root: bool) -> String {
    if let UpdateError::NoUpdate(reason) = err {
        return format!(
            "no update: {}",
            explain_no_update(reason, config, config_path)
        );
    }
    let chain = error_chain(err);
    let file = config_path.display();
    if let Some(t) = transport_error(err) {
        let key = url_key(config, t);
        if let TransportErrorKind::Io(e) = &t.kind {
            if e.kind() == io::ErrorKind::NotConnected {
                let (base, from) = match key {
                    Some((key, base)) => (base.to_string(), format!(" ({key} in {file})")),
                    None => (t.url.to_string(), String::new()),
                };
                return format!("cannot reach the repository at {base}{from}: {e}");
            }
        }
        if let Some((key, _)) = key {
            return format!("{chain} (the URL comes from {key} in {file})");
        }
        return chain;
    }
    if is_discovery_failure(err) {
        return format!(
            "{chain} (set `disk` and `active_set` in {file} to name the disk and the running set)"
        );
    }
    if causes(err).any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::PermissionDenied)
    }) {
        if as_root {
            return format!(
                "{chain} (refused although updog runs as root: the file may be immutable \
                 (`lsattr`, `chattr -i`), or a security module denies it)"
            );
        }
        return format!(
            "{chain} (updog needs root: it writes the disk's partitions and boot flags, its lock \
             and its state directories)"
        );
    }
    if let Some(path) = missing_trusted_root(err) {
        return format!(
            "{chain} (`trusted_root` in {file} names {}: install the repository's root.json \
             there, verified out of band, or point `trusted_root` at it)",
            path.display()
        );
    }
    if let Some(disk) = unusable_configured_disk(err, config) {
        return format!(
            "{chain} (`disk` in {file} names {}: point it at the OS disk, a block device or a \
             disk-image file with the A/B GPT layout, and set `active_set` to its running set)",
            disk.display()
        );
    }
    if let Some(hint) = cancelled_hint(err) {
        return format!("{chain}; {hint}");
    }
    chain
}

/// What to add to a "no update" reason for the person at the terminal: for a variant the
/// repository does not offer, where the variant and the repository come from.
///
/// ```
/// use manifest::select::NoUpdateReason;
/// let config = updog::config::Config::new(
///     "https://updates.example.com/metadata/".parse()?,
///     "https://updates.example.com/targets/".parse()?,
///     waves::Seed::new(7)?,
/// );
/// let reason = NoUpdateReason::NoUpdatesForVariant {
///     variant: "aws-k8s-1.31".into(),
///     arch: "x86_64".into(),
///     offered: vec!["aws-k8s-1.30 (x86_64)".into()],
/// };
/// let text = updog::advice::explain_no_update(&reason, &config, "/etc/updog.toml".as_ref());
/// assert!(text.contains("the repository offers aws-k8s-1.30 (x86_64)"), "{text}");
/// assert!(text.contains("`metadata_base_url` in /etc/updog.toml"), "{text}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn explain_no_update(reason: &NoUpdateReason, config: &Config, config_path: &Path) -> String {
    match reason {
        NoUpdateReason::NoUpdatesForVariant { .. } => format!(
            "{reason} (the variant is VARIANT_ID in {}, or --variant; check it, and that \
             `metadata_base_url` in {} is this variant's repository: {})",
            config.os_release.display(),
            config_path.display(),
            config.metadata_base_url
        ),
        other => other.to_string(),
    }
}

/// Whether a "no update" reason is a mistake to report (exit 1) rather than nothing to do: a
/// variant the repository does not offer at all is a misconfigured host, and a periodic
/// `updog update` that exited 0 would never tell anyone.
pub fn is_misconfiguration(reason: &NoUpdateReason) -> bool {
    matches!(reason, NoUpdateReason::NoUpdatesForVariant { .. })
}

/// The trusted root file that does not exist or cannot be read.
fn missing_trusted_root(err: &UpdateError) -> Option<&Path> {
    causes(err).find_map(|e| match e.downcast_ref::<crate::tuf::Error>() {
        Some(crate::tuf::Error::NoTrustedRoot { path, .. }) => Some(path.as_path()),
        _ => None,
    })
}

/// The configured disk, when the error is about it (it cannot be opened, locked or read as an
/// A/B GPT disk).
fn unusable_configured_disk<'a>(err: &UpdateError, config: &'a Config) -> Option<&'a Path> {
    let disk = config.disk.as_deref()?;
    let about_disk = causes(err).any(|e| {
        e.downcast_ref::<bootpart::Error>().is_some()
            || e.downcast_ref::<bootpart::gpt::GptError>().is_some()
            || matches!(
                e.downcast_ref::<crate::lock::LockError>(),
                Some(crate::lock::LockError::Io { .. })
            )
            || matches!(
                e.downcast_ref::<signpost::Error>(),
                Some(e) if !matches!(e, signpost::Error::Lock(crate::lock::LockError::Held { .. }))
            )
    });
    (about_disk && error_chain(err).contains(&disk.display().to_string())).then_some(disk)
}

/// For a cancelled operation: what was left, and that running it again is safe.
fn cancelled_hint(err: &UpdateError) -> Option<String> {
    match err {
        UpdateError::Cancelled { set } => Some(format!(
            "set {} boots next as before and nothing else changed: running `updog update` \
             again is safe (it starts over)",
            set.other()
        )),
        UpdateError::CheckCancelled => Some("running it again is safe".to_string()),
        UpdateError::ApplyCancelled { set } => Some(format!(
            "running `updog update-apply` again is safe (it flips to set {set})"
        )),
        _ => None,
    }
}

/// `e` and its causes, outermost first.
/// `e` and its chain of causes, each a concrete error type that `downcast_ref` finds: a source
/// that [`UpdateError`] keeps boxed (to stay small) is given as the error in the box, not as
/// the `Box` (whose `source` is the boxed error's own).
pub fn causes<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(unbox(e)), |e: &&'a (dyn Error + 'static)| {
        (*e).source().map(unbox)
    })
}

/// The error inside `e` when `e` is one of the boxes [`UpdateError`] holds its large sources in.
fn unbox<'a>(e: &'a (dyn Error + 'static)) -> &'a (dyn Error + 'static) {
    macro_rules! inside {
        ($($t:ty),*) => {
            $(
                if let Some(b) = e.downcast_ref::<Box<$t>>() {
                    return &**b;
                }
            )*
        };
    }
    inside!(
        crate::lock::LockError,
        crate::tuf::Error,
        bootpart::Error,
        signpost::Error,
        migrations_fetch::PlanError,
        migrations_fetch::FetchError,
        crate::pipeline::StageError,
        crate::delta::stage::DeltaError,
        manifest::Error
    );
    e
}

/// The transport error behind `err`, also when it travelled inside an I/O error of a reader.
fn transport_error(err: &UpdateError) -> Option<&TransportError> {
    causes(err).find_map(|e| {
        e.downcast_ref::<TransportError>()
            .or_else(|| e.downcast_ref::<Box<TransportError>>().map(|b| &**b))
            .or_else(|| {
                e.downcast_ref::<io::Error>()
                    .and_then(TransportError::from_io)
            })
    })
}

/// Which base URL of the configuration the failed URL is under.
fn url_key<'a>(config: &'a Config, t: &TransportError) -> Option<(&'static str, &'a url::Url)> {
    [
        ("metadata_base_url", &config.metadata_base_url),
        ("targets_base_url", &config.targets_base_url),
    ]
    .into_iter()
    .find(|(_, base)| t.url.as_str().starts_with(base.as_str()))
}

fn is_discovery_failure(err: &UpdateError) -> bool {
    causes(err).any(|e| {
        matches!(
            e.downcast_ref::<bootpart::Error>(),
            Some(bootpart::Error::Running(_))
        ) || matches!(
            e.downcast_ref::<signpost::Error>(),
            Some(signpost::Error::Discovery { .. })
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(
            "http://127.0.0.1:1/metadata/".parse().unwrap(),
            "http://127.0.0.1:1/targets/".parse().unwrap(),
            waves::Seed::new(7).unwrap(),
        )
    }

    fn repo_error(url: &str, kind: TransportErrorKind) -> UpdateError {
        UpdateError::Repository(Box::new(crate::tuf::Error::Transport {
            what: "root metadata".into(),
            source: Box::new(TransportError::new(&url.parse().unwrap(), kind)),
        }))
    }

    #[test]
    fn an_unreachable_server_is_named_by_its_base_url_and_key() {
        let err = repo_error(
            "http://127.0.0.1:1/metadata/2.root.json",
            TransportErrorKind::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "cannot connect: Connection refused",
            )),
        );
        let text = explain(&err, &config(), Path::new("/etc/updog.toml"));
        assert_eq!(
            text,
            "cannot reach the repository at http://127.0.0.1:1/metadata/ \
             (metadata_base_url in /etc/updog.toml): cannot connect: Connection refused"
        );
    }

    #[test]
    fn other_download_failures_name_the_key_of_their_url() {
        let err = repo_error(
            "http://127.0.0.1:1/targets/abc.root.img.lz4",
            TransportErrorKind::HttpStatus(500),
        );
        let text = explain(&err, &config(), Path::new("/etc/updog.toml"));
        assert!(text.contains("HTTP 500"), "{text}");
        assert!(
            text.ends_with("(the URL comes from targets_base_url in /etc/updog.toml)"),
            "{text}"
        );
    }

    #[test]
    fn permission_denied_says_root_is_needed() {
        let err = UpdateError::Disk(Box::new(bootpart::Error::Io {
            path: "/dev/nvme0n1".into(),
            what: "opening".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        }));
        let text = explain_as(&err, &config(), Path::new("/etc/updog.toml"), false);
        assert!(
            text.contains("/dev/nvme0n1") && text.contains("needs root"),
            "{text}"
        );
        // Issue 24, finding 8: root refused (`chattr +i` on the disk) is not told it needs root.
        let text = explain_as(&err, &config(), Path::new("/etc/updog.toml"), true);
        assert!(
            text.contains("/dev/nvme0n1")
                && !text.contains("needs root")
                && text.contains("immutable"),
            "{text}"
        );
        // Other I/O errors get no such advice.
        let err = UpdateError::Disk(Box::new(bootpart::Error::Io {
            path: "/dev/nvme0n1".into(),
            what: "opening".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        }));
        assert!(!explain(&err, &config(), Path::new("/etc/updog.toml")).contains("root"));
    }
}
