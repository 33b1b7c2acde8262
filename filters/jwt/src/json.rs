//! Strict JSON for JOSE headers, JWT payloads and JWK sets.
//!
//! serde_json keeps the last of two members with the same name; another parser on the path
//! (the issuer's, a downstream service's) may keep the first. A token whose meaning depends on
//! the parser is refused, so objects are read through a visitor that fails on a repeated name.
//! Names are compared after unescaping, so `"s\u0075b"` repeats `"sub"`. serde_json's
//! recursion limit stays in force because every value goes through `deserialize_any`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON, trailing bytes, too deep, or not an object at the top.
    Invalid,
    /// A member name appears twice in one object.
    Duplicate,
}

const DUPLICATE: &str = "duplicate member";

/// Parses `bytes` as a JSON object, refusing repeated member names at any depth.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match serde_json::from_slice::<UniqueValue>(bytes) {
        Ok(UniqueValue(Value::Object(map))) => Ok(map),
        Ok(_) => Err(JsonError::Invalid),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(JsonError::Duplicate),
        Err(_) => Err(JsonError::Invalid),
    }
}

struct UniqueValue(Value);

impl<'de> Deserialize<'de> for UniqueValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = UniqueValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<UniqueValue, E> {
        Ok(UniqueValue(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<UniqueValue, E> {
        Ok(UniqueValue(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<UniqueValue, E> {
        Ok(UniqueValue(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<UniqueValue, E> {
        Ok(UniqueValue(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<UniqueValue, E> {
        Ok(UniqueValue(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<UniqueValue, E> {
        Ok(UniqueValue(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<UniqueValue, E> {
        Ok(UniqueValue(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueValue, A::Error> {
        let mut values = Vec::new();
        while let Some(UniqueValue(value)) = seq.next_element()? {
            values.push(value);
        }
        Ok(UniqueValue(Value::Array(values)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueValue, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let UniqueValue(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(UniqueValue(Value::Object(members)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn accepts_objects() {
        let map = parse_object(br#"{"a":1,"b":{"c":[true,null,"x"]}}"#).unwrap();
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn refuses_duplicates_at_any_depth_and_after_unescaping() {
        for doc in [
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"sub":"a","s\u0075b":"b"}"#,
            r#"{"cnf":{"x":1,"x":2}}"#,
            r#"{"a":[{"k":1,"k":1}]}"#,
        ] {
            assert_eq!(
                parse_object(doc.as_bytes()),
                Err(JsonError::Duplicate),
                "{doc}"
            );
        }
    }

    #[test]
    fn refuses_non_objects_and_garbage() {
        for doc in ["[]", "1", "\"s\"", "{", "{}x", "", "{\"a\":}", "\u{feff}{}"] {
            assert_eq!(
                parse_object(doc.as_bytes()),
                Err(JsonError::Invalid),
                "{doc}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let doc = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_object(doc.as_bytes()), Err(JsonError::Invalid));
    }
}
