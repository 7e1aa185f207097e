use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::layout::{Partition, PartitionSet};

/// Which of the three images of a partition set: the one type for it across the workspace
/// (staging, progress events, the staged record, errors).
///
/// Serializes as its lowercase name (`"root"`, `"boot"`, `"hash"`), also as a map key, and
/// orders by that name, so a map keyed by kind reads the same as one keyed by the names.
///
/// ```
/// use bootpart::ImageKind;
/// assert_eq!(ImageKind::Root.to_string(), "root");
/// assert_eq!("hash".parse::<ImageKind>().unwrap(), ImageKind::Hash);
/// assert!(ImageKind::Boot < ImageKind::Hash && ImageKind::Hash < ImageKind::Root);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// The root filesystem.
    Root,
    /// The boot partition (kernel, initrd).
    Boot,
    /// The dm-verity hash tree of the root filesystem.
    Hash,
}

impl ImageKind {
    /// The order images are staged in.
    pub const ALL: [ImageKind; 3] = [ImageKind::Root, ImageKind::Boot, ImageKind::Hash];

    /// The lowercase name (`root`, `boot`, `hash`), as the manifest's `images` keys spell it.
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Root => "root",
            ImageKind::Boot => "boot",
            ImageKind::Hash => "hash",
        }
    }
}

impl Ord for ImageKind {
    /// By name: a `BTreeMap<ImageKind, _>` serializes its keys in the order the string-keyed
    /// maps it replaced did (`boot`, `hash`, `root`).
    fn cmp(&self, other: &Self) -> Ordering {
        self.name().cmp(other.name())
    }
}

impl PartialOrd for ImageKind {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that is not `root`, `boot` or `hash`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an image kind (expected root, boot or hash): {0:?}")]
pub struct ParseImageKindError(pub String);

impl FromStr for ImageKind {
    type Err = ParseImageKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ParseImageKindError(s.chars().take(32).collect()))
    }
}

impl PartitionSet {
    /// The partition that holds the image `kind`.
    pub fn partition(&self, kind: ImageKind) -> &Partition {
        match kind {
            ImageKind::Root => &self.root,
            ImageKind::Boot => &self.boot,
            ImageKind::Hash => &self.hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for kind in ImageKind::ALL {
            assert_eq!(kind.name().parse::<ImageKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<ImageKind>(&json).unwrap(), kind);
        }
        assert!("Root".parse::<ImageKind>().is_err());
        assert!(serde_json::from_str::<ImageKind>("\"reserved\"").is_err());
    }

    #[test]
    fn a_map_keyed_by_kind_serializes_like_one_keyed_by_name() {
        let by_kind: std::collections::BTreeMap<ImageKind, u8> =
            ImageKind::ALL.into_iter().zip(0..).collect();
        let by_name: std::collections::BTreeMap<&str, u8> = ImageKind::ALL
            .into_iter()
            .map(ImageKind::name)
            .zip(0..)
            .collect();
        assert_eq!(
            serde_json::to_string(&by_kind).unwrap(),
            serde_json::to_string(&by_name).unwrap()
        );
    }
}
