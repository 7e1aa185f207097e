use std::collections::BTreeMap;

use semver::Version;

use crate::Error;

/// The migrations of each version step: `(from, to)` to the TUF target names to run, in order.
pub type Migrations = BTreeMap<(Version, Version), Vec<String>>;

/// The longest migration key accepted.
const MAX_KEY_LEN: usize = 256;

/// Parses a migration key `(X, Y)`; spaces around `X` and `Y` are tolerated.
///
/// ```
/// let (from, to) = manifest::parse_migration_key("(1.0.0,1.1.0)")?;
/// assert_eq!(manifest::format_migration_key(&from, &to), "(1.0.0, 1.1.0)");
/// # Ok::<(), manifest::Error>(())
/// ```
pub fn parse_migration_key(key: &str) -> Result<(Version, Version), Error> {
    let bad = |reason: String| Error::BadMigrationKey {
        key: key.chars().take(80).collect(),
        reason,
    };
    if key.len() > MAX_KEY_LEN {
        return Err(bad(format!("longer than {MAX_KEY_LEN} bytes")));
    }
    let inner = key
        .trim()
        .strip_prefix('(')
        .and_then(|k| k.strip_suffix(')'))
        .ok_or_else(|| bad("not in parentheses".to_owned()))?;
    let (from, to) = inner
        .split_once(',')
        .ok_or_else(|| bad("no comma between the two versions".to_owned()))?;
    let parse = |part: &str, which: &str| {
        part.trim()
            .parse::<Version>()
            .map_err(|e| bad(format!("{which} version {:?}: {e}", part.trim())))
    };
    Ok((parse(from, "from")?, parse(to, "to")?))
}

/// Formats a migration key as `(X, Y)`.
pub fn format_migration_key(from: &Version, to: &Version) -> String {
    format!("({from}, {to})")
}

/// Serde for the `migrations` object: `"(X, Y)"` keys, unique.
pub(crate) mod serde_map {
    use std::fmt;

    use serde::de::{Error as _, MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    use super::{Migrations, format_migration_key, parse_migration_key};

    pub(crate) fn serialize<S: Serializer>(m: &Migrations, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for ((from, to), targets) in m {
            map.serialize_entry(&format_migration_key(from, to), targets)?;
        }
        map.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Migrations, D::Error> {
        d.deserialize_map(MigrationsVisitor)
    }

    struct MigrationsVisitor;

    impl<'de> Visitor<'de> for MigrationsVisitor {
        type Value = Migrations;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of \"(X, Y)\" version pairs to lists of migration names")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Migrations, A::Error> {
            let mut out = Migrations::new();
            while let Some(key) = map.next_key::<String>()? {
                let shown: String = key.chars().take(80).collect();
                let pair = parse_migration_key(&key).map_err(A::Error::custom)?;
                let targets = map.next_value::<Vec<String>>().map_err(|e| {
                    A::Error::custom(format!(
                        "migration key {shown:?}: expected a list of migration names: {e}"
                    ))
                })?;
                if out.insert(pair, targets).is_some() {
                    return Err(A::Error::custom(format!(
                        "duplicate migration key {shown:?}: each version pair may appear once"
                    )));
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_format() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert_eq!(
            parse_migration_key("(0.1.0, 0.2.0)").unwrap(),
            (v("0.1.0"), v("0.2.0"))
        );
        assert_eq!(
            parse_migration_key(" ( 1.2.3-rc.1 ,1.2.3 ) ").unwrap(),
            (v("1.2.3-rc.1"), v("1.2.3"))
        );
        for bad in [
            "",
            "()",
            "(1.0.0)",
            "1.0.0, 1.1.0",
            "(1.0, 1.1.0)",
            "(1.0.0, 1.1.0, 1.2.0)",
            "(1.0.0; 1.1.0)",
            "(v1.0.0, 1.1.0)",
        ] {
            let err = parse_migration_key(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(parse_migration_key(&"(".repeat(10_000)).is_err());
    }
}
