//! Who is running: variant, version and build from `/usr/lib/os-release`; arch from the build.
//!
//! ```
//! let os = updog::os_release::OsRelease::parse(
//!     "NAME=Bottlerocket\nVARIANT_ID=aws-k8s-1.31\nVERSION_ID=1.20.3\nBUILD_ID=\"abcdef12\"\n",
//! )
//! .unwrap();
//! assert_eq!(os.variant_id, "aws-k8s-1.31");
//! assert_eq!(os.version_id, semver::Version::new(1, 20, 3));
//! assert_eq!(os.build_id.as_deref(), Some("abcdef12"));
//! ```

use std::path::{Path, PathBuf};

use semver::Version;

/// The fields of os-release that the updater needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OsRelease {
    /// `VARIANT_ID`: which variant's updates this host takes.
    pub variant_id: String,
    /// `VERSION_ID`, as a semantic version.
    pub version_id: Version,
    /// `BUILD_ID`, when present.
    pub build_id: Option<String>,
    /// The architecture this updater was built for (`x86_64`, `aarch64`), as the manifest
    /// spells it.
    pub arch: String,
}

/// Why os-release could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OsReleaseError {
    /// The file could not be read.
    #[error("reading os-release {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any real os-release (it is not read in part).
    #[error("os-release {path} is larger than {limit} bytes; is it the right file?")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The size cap.
        limit: u64,
    },
    /// A required field is absent.
    #[error("os-release has no {0}")]
    Missing(&'static str),
    /// `VERSION_ID` is not a semantic version.
    #[error("os-release VERSION_ID {value:?} is not a version")]
    BadVersion {
        /// The value found.
        value: String,
        /// The parse error.
        #[source]
        source: semver::Error,
    },
    /// A line is not `KEY=value`, or a quoted value is not closed.
    #[error("os-release line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The largest os-release read (real ones are a few hundred bytes).
const MAX_OS_RELEASE_BYTES: u64 = 64 * 1024;

impl OsRelease {
    /// Reads and parses an os-release file.
    pub fn from_path(path: &Path) -> Result<OsRelease, OsReleaseError> {
        use std::io::Read;
        let read_err = |source| OsReleaseError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read_err)?
            .take(MAX_OS_RELEASE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        // Refuse rather than truncate: a cut-off file could lose VERSION_ID silently.
        if text.len() as u64 > MAX_OS_RELEASE_BYTES {
            return Err(OsReleaseError::TooLarge {
                path: path.to_path_buf(),
                limit: MAX_OS_RELEASE_BYTES,
            });
        }
        Self::parse(&text)
    }

    /// Parses os-release text (shell-style `KEY=value`, values optionally quoted).
    pub fn parse(text: &str) -> Result<OsRelease, OsReleaseError> {
        let mut variant = None;
        let mut version = None;
        let mut build = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(OsReleaseError::BadLine {
                    line: i + 1,
                    reason: "expected KEY=value",
                });
            };
            let value = unquote(value.trim()).ok_or(OsReleaseError::BadLine {
                line: i + 1,
                reason: "unterminated quote",
            })?;
            match key.trim() {
                "VARIANT_ID" => variant = Some(value),
                "VERSION_ID" => version = Some(value),
                "BUILD_ID" => build = Some(value),
                _ => {}
            }
        }
        let variant_id = variant
            .filter(|v| !v.is_empty())
            .ok_or(OsReleaseError::Missing("VARIANT_ID"))?;
        let version_raw = version.ok_or(OsReleaseError::Missing("VERSION_ID"))?;
        let version_id = Version::parse(version_raw.trim_start_matches('v')).map_err(|source| {
            OsReleaseError::BadVersion {
                value: version_raw.clone(),
                source,
            }
        })?;
        Ok(OsRelease {
            variant_id,
            version_id,
            build_id: build.filter(|b| !b.is_empty()),
            arch: current_arch().to_string(),
        })
    }
}

/// The architecture this binary was built for, as manifests name it.
pub fn current_arch() -> &'static str {
    std::env::consts::ARCH
}

/// Removes one level of shell quoting (`"..."` with backslash escapes, or `'...'`).
fn unquote(value: &str) -> Option<String> {
    if let Some(inner) = value.strip_prefix('\'') {
        return inner.strip_suffix('\'').map(ToString::to_string);
    }
    if let Some(inner) = value.strip_prefix('"') {
        let inner = inner.strip_suffix('"')?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                out.push(chars.next()?);
            } else {
                out.push(c);
            }
        }
        return Some(out);
    }
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_and_unquoted_values() {
        let os = OsRelease::parse(
            "# comment\nNAME=\"Bottlerocket OS\"\nVARIANT_ID='metal-dev'\nVERSION_ID=\"1.2.0\"\n\nBUILD_ID=5a1b\\\"\n",
        )
        .unwrap();
        assert_eq!(os.variant_id, "metal-dev");
        assert_eq!(os.version_id, Version::new(1, 2, 0));
        assert_eq!(os.build_id.as_deref(), Some("5a1b\\\""));
        assert_eq!(os.arch, std::env::consts::ARCH);
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let e = OsRelease::parse("VERSION_ID=1.0.0\n").unwrap_err();
        assert!(e.to_string().contains("VARIANT_ID"), "{e}");
        let e = OsRelease::parse("VARIANT_ID=x\n").unwrap_err();
        assert!(e.to_string().contains("VERSION_ID"), "{e}");
        let e = OsRelease::parse("VARIANT_ID=x\nVERSION_ID=1.0\n").unwrap_err();
        assert!(e.to_string().contains("\"1.0\""), "{e}");
        let e = OsRelease::parse("VARIANT_ID=\"x\nVERSION_ID=1.0.0\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = OsRelease::parse("garbage\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn reads_from_a_file_and_names_it_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("os-release");
        std::fs::write(&p, "VARIANT_ID=v\nVERSION_ID=0.1.0\n").unwrap();
        assert_eq!(
            OsRelease::from_path(&p).unwrap().version_id,
            Version::new(0, 1, 0)
        );
        let e = OsRelease::from_path(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        // Over the cap: an error naming the file, even though the fields come first.
        let big = dir.path().join("big-os-release");
        let mut text = String::from("VARIANT_ID=v\nVERSION_ID=0.1.0\n");
        while text.len() as u64 <= MAX_OS_RELEASE_BYTES {
            text.push_str("# padding padding padding padding padding padding padding\n");
        }
        std::fs::write(&big, &text).unwrap();
        let e = OsRelease::from_path(&big).unwrap_err();
        assert!(
            matches!(e, OsReleaseError::TooLarge { .. })
                && e.to_string().contains("big-os-release"),
            "{e}"
        );
        // Exactly at the cap is fine.
        std::fs::write(&big, &text[..MAX_OS_RELEASE_BYTES as usize]).unwrap();
        assert!(OsRelease::from_path(&big).is_ok());
    }
}
