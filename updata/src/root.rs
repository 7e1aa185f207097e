//! Making and changing a root: the four top-level roles, their keys, thresholds and expiry;
//! signing the same root file by several key holders in turn; and the checks a new version
//! must pass before it is published (signed by the threshold of the previous root and its own).
//!
//! Every change to `signed` drops the signatures it had (they no longer match), and says so.

use crate::metadata::SignedFile;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::error::Error;
use super::keys::{KeySource, PublicKey};
use super::metadata::{Envelope, Header, Key, RoleKeys, Root, TOP_LEVEL_ROLES};
use tuf::{KeyId, Role};

/// A root file and where it is.
pub type SignedRoot = Envelope<Root>;

/// A new root, version 1, with consistent snapshots, the four top-level roles with no keys and
/// threshold 1, expiring at `expires`.
pub fn new_root(expires: DateTime<Utc>) -> SignedRoot {
    Envelope::new(Root {
        header: Header::new(&Role::Root, 1, expires),
        consistent_snapshot: true,
        keys: std::collections::BTreeMap::new(),
        roles: TOP_LEVEL_ROLES
            .iter()
            .map(|r| {
                (
                    r.to_string(),
                    RoleKeys {
                        keyids: Vec::new(),
                        threshold: 1,
                    },
                )
            })
            .collect(),
    })
}

/// The top-level role `name` names ([`Error::NoSuchRole`] for any other name).
pub fn top_level_role(name: &str) -> Result<Role, Error> {
    let role = Role::from_name(name);
    if !role.is_top_level() {
        return Err(Error::NoSuchRole(name.to_owned()));
    }
    Ok(role)
}

fn role_mut<'a>(root: &'a mut Root, role: &str) -> Result<&'a mut RoleKeys, Error> {
    let role = top_level_role(role)?;
    Ok(root.roles.entry(role.to_string()).or_insert(RoleKeys {
        keyids: Vec::new(),
        threshold: 1,
    }))
}

/// Applies `change` to `signed`; the signatures are dropped when it changed anything. Returns
/// how many signatures were dropped.
pub fn edit(
    root: &mut SignedRoot,
    change: impl FnOnce(&mut Root) -> Result<(), Error>,
) -> Result<usize, Error> {
    let before = root.signed.clone();
    change(&mut root.signed)?;
    if root.signed == before {
        return Ok(0);
    }
    let dropped = root.signatures.len();
    root.signatures.clear();
    Ok(dropped)
}

/// Lists `key` for `role`.
pub fn add_key(root: &mut Root, role: &str, key: &PublicKey) -> Result<(), Error> {
    let r = role_mut(root, role)?;
    let id = KeyId::from(key.id());
    if !r.keyids.contains(&id) {
        r.keyids.push(id.clone());
    }
    root.keys.insert(id, Key::from_value(key.to_tuf().clone()));
    Ok(())
}

/// Removes key `keyid` from `role` (and from `keys` when no role uses it any more).
pub fn remove_key(root: &mut Root, role: &str, keyid: &str) -> Result<(), Error> {
    let r = role_mut(root, role)?;
    let before = r.keyids.len();
    r.keyids.retain(|k| k != keyid);
    if r.keyids.len() == before {
        return Err(Error::State(format!(
            "key {keyid} is not a {role} key of root version {}",
            root.header.version
        )));
    }
    if !root
        .roles
        .values()
        .any(|r| r.keyids.iter().any(|k| k == keyid))
    {
        root.keys.remove(keyid);
    }
    Ok(())
}

/// Sets `role`'s threshold (at least 1).
pub fn set_threshold(root: &mut Root, role: &str, threshold: u64) -> Result<(), Error> {
    if threshold == 0 {
        return Err(Error::State("a threshold is at least 1".to_owned()));
    }
    role_mut(root, role)?.threshold = threshold;
    Ok(())
}

/// Describes a root for messages: `root version N (FILE)`.
pub fn describe(root: &Root, path: &Path) -> String {
    format!("root version {} ({})", root.header.version, path.display())
}

/// Signs `root` with `key`, which must be a root key of `root` itself or of `previous` (the
/// version before it, whose keys sign a rotation too).
pub fn sign(
    root: &mut SignedRoot,
    key: &dyn KeySource,
    what: &str,
    previous: Option<&Root>,
) -> Result<(), Error> {
    let id = key.public_key().id();
    let listed = |r: &Root| {
        r.role(&Role::Root)
            .is_some_and(|k| k.keyids.iter().any(|x| x == id))
    };
    if !listed(&root.signed) && !previous.is_some_and(listed) {
        let what = match previous {
            Some(p) => format!("{what} nor of root version {}", p.header.version),
            None => what.to_owned(),
        };
        return Err(Error::KeyNotInRoot {
            key: key.describe(),
            keyid: KeyId::from(id),
            role: Role::Root.to_string(),
            what,
        });
    }
    root.sign(key)
}

/// Checks that `root` is complete and signed: every top-level role has at least `threshold`
/// keys, and the root role's threshold of valid signatures is met, of `previous` too when given
/// (a rotation must be signed by the old root and the new).
pub fn check_complete(root: &SignedRoot, what: &str, previous: Option<&Root>) -> Result<(), Error> {
    for role in TOP_LEVEL_ROLES {
        let keys = root
            .signed
            .role(&role)
            .ok_or_else(|| Error::State(format!("{what} does not define the {role} role")))?;
        if (keys.keyids.len() as u64) < keys.threshold {
            return Err(Error::State(format!(
                "{what}: the {role} role has {} key(s), fewer than its threshold {} (updata root add-key)",
                keys.keyids.len(),
                keys.threshold
            )));
        }
    }
    root.check_signed_by(&root.signed, &Role::Root, what)?;
    if let Some(prev) = previous {
        root.check_signed_by(
            prev,
            &Role::Root,
            &format!("root version {}", prev.header.version),
        )?;
    }
    Ok(())
}
