//! Canonical JSON (OLPC, as `olpc_cjson` writes it) of a JSON document, made while parsing it,
//! without building a `serde_json::Value` tree first.
//!
//! Each value is turned into its canonical bytes as soon as it is parsed; an object keeps only
//! its members' canonical bytes until it is complete, then writes them sorted. Scalars and keys
//! are written by `olpc_cjson::CanonicalFormatter` itself, and objects follow exactly what
//! serialising a `Value` through it does: a repeated key keeps its last value (as `Value`
//! does), members are sorted by their serialised key bytes (as the formatter does). So the
//! output is byte for byte what `Value` + `CanonicalFormatter` gives, and the memory is the
//! canonical bytes plus one small entry per member of the objects being parsed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// One parsed value in canonical form.
pub(crate) struct Canon {
    /// The canonical JSON bytes.
    pub bytes: Vec<u8>,
    /// A float (or another value canonical JSON cannot hold) was seen somewhere inside: the
    /// document has no canonical form. Its message, as the formatter words it.
    pub unrepresentable: Option<String>,
    /// The string value of this object's `_type` member, when it has one.
    pub type_name: Option<String>,
    /// When this value is a string: the string (only kept where asked for).
    string: Option<String>,
}

impl Canon {
    fn scalar(value: &impl Serialize) -> Self {
        let mut bytes = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(
            &mut bytes,
            olpc_cjson::CanonicalFormatter::new(),
        );
        let unrepresentable = value.serialize(&mut ser).err().map(|e| e.to_string());
        Self {
            bytes,
            unrepresentable,
            type_name: None,
            string: None,
        }
    }
}

/// A [`DeserializeSeed`] producing a [`Canon`].
#[derive(Clone, Copy)]
pub(crate) struct CanonSeed {
    /// Keep a string value's text (for `_type`).
    keep_string: bool,
}

impl CanonSeed {
    pub(crate) fn new() -> Self {
        Self { keep_string: false }
    }
}

impl<'de> DeserializeSeed<'de> for CanonSeed {
    type Value = Canon;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Canon, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CanonSeed {
    type Value = Canon;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Canon, E> {
        Ok(Canon::scalar(&v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Canon, E> {
        Ok(Canon::scalar(&v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Canon, E> {
        Ok(Canon::scalar(&v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Canon, E> {
        // Through `Value`, as before: a non-finite float would become `null` there.
        Ok(Canon::scalar(&serde_json::Value::from(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Canon, E> {
        let mut c = Canon::scalar(&v);
        if self.keep_string {
            c.string = Some(v.to_owned());
        }
        Ok(c)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Canon, E> {
        let mut c = Canon::scalar(&v.as_str());
        if self.keep_string {
            c.string = Some(v);
        }
        Ok(c)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Canon, E> {
        Ok(Canon::scalar(&()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Canon, E> {
        Ok(Canon::scalar(&()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Canon, A::Error> {
        let mut out = Canon {
            bytes: vec![b'['],
            unrepresentable: None,
            type_name: None,
            string: None,
        };
        let mut first = true;
        while let Some(item) = seq.next_element_seed(CanonSeed::new())? {
            if !first {
                out.bytes.push(b',');
            }
            first = false;
            out.bytes.extend_from_slice(&item.bytes);
            if out.unrepresentable.is_none() {
                out.unrepresentable = item.unrepresentable;
            }
        }
        out.bytes.push(b']');
        Ok(out)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Canon, A::Error> {
        // By key text first, the last value of a repeated key winning (as in `Value`).
        let mut members: BTreeMap<String, Canon> = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let seed = CanonSeed {
                keep_string: key == "_type",
            };
            let value = map.next_value_seed(seed)?;
            members.insert(key, value);
        }
        let mut out = Canon {
            bytes: Vec::new(),
            unrepresentable: None,
            type_name: None,
            string: None,
        };
        // Then by serialised key bytes, as the formatter sorts them.
        let mut sorted: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (key, value) in members {
            if key == "_type" {
                out.type_name = value.string;
            }
            if out.unrepresentable.is_none() {
                out.unrepresentable = value.unrepresentable;
            }
            let k = Canon::scalar(&key.as_str());
            if out.unrepresentable.is_none() {
                out.unrepresentable = k.unrepresentable;
            }
            sorted.insert(k.bytes, value.bytes);
        }
        let len: usize = sorted.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        out.bytes.reserve_exact(len + 2);
        out.bytes.push(b'{');
        let mut first = true;
        for (k, v) in sorted {
            if !first {
                out.bytes.push(b',');
            }
            first = false;
            out.bytes.extend_from_slice(&k);
            out.bytes.push(b':');
            out.bytes.extend_from_slice(&v);
        }
        out.bytes.push(b'}');
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_value(doc: &str) -> Result<Vec<u8>, String> {
        let v: serde_json::Value = serde_json::from_str(doc).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut ser =
            serde_json::Serializer::with_formatter(&mut buf, olpc_cjson::CanonicalFormatter::new());
        v.serialize(&mut ser).map_err(|e| e.to_string())?;
        Ok(buf)
    }

    fn streamed(doc: &str) -> Result<Vec<u8>, String> {
        let mut d = serde_json::Deserializer::from_str(doc);
        let c = CanonSeed::new()
            .deserialize(&mut d)
            .map_err(|e| e.to_string())?;
        match c.unrepresentable {
            Some(e) => Err(e),
            None => Ok(c.bytes),
        }
    }

    #[test]
    fn same_bytes_as_value_through_the_formatter() {
        let docs = [
            r#"{"b": 1, "a": [1, -2, {"z": null, "y": true}], "_type": "targets"}"#,
            r#"{"k": "quote \" backslash \\ slash \/ tab \t nl \n ctl \u0001 é e\u0301"}"#,
            r#"{"a": 1, "a": 2, "b": {"x": [], "y": {}}}"#,
            r#"{"\u00e9": 1, "e\u0301": 2, "E": 3, "é": 4}"#,
            r#"[18446744073709551615, -9223372036854775808, 0, "", [[]]]"#,
            r#"{"targets": {"a/b.json": {"length": 12, "hashes": {"sha256": "ab"}, "custom": {"k": [1, "v"]}}}}"#,
        ];
        for doc in docs {
            assert_eq!(streamed(doc), through_value(doc), "{doc}");
        }
        for doc in [r#"{"a": 1.5}"#, r"[1e3]"] {
            assert!(streamed(doc).is_err(), "{doc}");
            assert!(through_value(doc).is_err(), "{doc}");
        }
    }

    #[test]
    fn keeps_the_top_level_type() {
        let mut d =
            serde_json::Deserializer::from_str(r#"{"x": {"_type": "inner"}, "_type": "root"}"#);
        let c = CanonSeed::new().deserialize(&mut d).unwrap();
        assert_eq!(c.type_name.as_deref(), Some("root"));
        let mut d = serde_json::Deserializer::from_str(r#"{"_type": 5}"#);
        assert_eq!(
            CanonSeed::new().deserialize(&mut d).unwrap().type_name,
            None
        );
    }
}
