//! Typed identities of TUF metadata: which role a file is ([`Role`]), which key signed it
//! ([`KeyId`]), and whose keys a signature check used ([`Signer`]).

use std::fmt;

/// A TUF role: one of the four top-level roles, or a delegated targets role by name.
///
/// Its [`Display`](fmt::Display) is the role's name as the metadata spells it (`root`,
/// `timestamp`, `snapshot`, `targets`, or the delegated name).
///
/// ```
/// use tuf::Role;
/// assert_eq!(Role::from_name("snapshot"), Role::Snapshot);
/// assert_eq!(Role::from_name("release").to_string(), "release");
/// assert!(!Role::from_name("release").is_top_level());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `root`: the keys of every top-level role.
    Root,
    /// `timestamp`: the current snapshot.
    Timestamp,
    /// `snapshot`: the versions of every targets role.
    Snapshot,
    /// `targets`: the top-level targets role.
    Targets,
    /// A targets role delegated to by name.
    Delegated(String),
}

impl Role {
    /// The four top-level roles, in the order the client workflow updates them.
    pub const TOP_LEVEL: [Role; 4] = [Role::Root, Role::Timestamp, Role::Snapshot, Role::Targets];

    /// The role a name stands for: a top-level role for its name, a delegated role otherwise.
    pub fn from_name(name: &str) -> Self {
        match name {
            "root" => Self::Root,
            "timestamp" => Self::Timestamp,
            "snapshot" => Self::Snapshot,
            "targets" => Self::Targets,
            other => Self::Delegated(other.to_owned()),
        }
    }

    /// The role's name as metadata spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Root => "root",
            Self::Timestamp => "timestamp",
            Self::Snapshot => "snapshot",
            Self::Targets => "targets",
            Self::Delegated(name) => name,
        }
    }

    /// Whether this is one of the four top-level roles.
    pub fn is_top_level(&self) -> bool {
        !matches!(self, Self::Delegated(_))
    }

    /// The `_type` its metadata carries: a delegated role's is `targets`.
    pub fn metadata_type(&self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Timestamp => "timestamp",
            Self::Snapshot => "snapshot",
            Self::Targets | Self::Delegated(_) => "targets",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of a key, as root and delegations list it and signatures name it (the hex sha256 of
/// the key's canonical JSON, for keys our publisher makes; other repositories may use any
/// string).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for KeyId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for KeyId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl std::borrow::Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for KeyId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whose keys and threshold a signature check used.
///
/// Its [`Display`](fmt::Display) reads `root version N` or `role NAME's delegation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// The keys a root of this version lists for the role.
    Root {
        /// The root's version.
        version: u64,
    },
    /// The keys a delegating role lists for the delegated role.
    Delegation {
        /// The delegating role.
        delegator: Role,
    },
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root { version } => write!(f, "root version {version}"),
            Self::Delegation { delegator } => write!(f, "role {delegator}'s delegation"),
        }
    }
}
