use std::fmt;
use std::str::FromStr;

/// One of the two partition sets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum SetId {
    /// The first BOOT/ROOT/HASH partitions on the disk.
    A,
    /// The second BOOT/ROOT/HASH partitions on the disk.
    B,
}

impl SetId {
    /// The other set.
    pub fn other(self) -> SetId {
        match self {
            SetId::A => SetId::B,
            SetId::B => SetId::A,
        }
    }
}

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetId::A => "A",
            SetId::B => "B",
        })
    }
}

/// A string that is not `A`, `B`, `a` or `b`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a partition set (expected A or B): {0:?}")]
pub struct ParseSetIdError(pub String);

impl FromStr for SetId {
    type Err = ParseSetIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(SetId::A),
            "B" | "b" => Ok(SetId::B),
            _ => Err(ParseSetIdError(s.chars().take(32).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!("a".parse::<SetId>().unwrap(), SetId::A);
        assert_eq!("B".parse::<SetId>().unwrap(), SetId::B);
        assert!("c".parse::<SetId>().is_err());
        assert!(" A".parse::<SetId>().is_err());
        assert_eq!(SetId::A.to_string(), "A");
        assert_eq!(SetId::B.other(), SetId::A);
    }
}
