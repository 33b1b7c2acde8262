//! Strict JSON: every document phi-guard reads from outside (JOSE headers, JWT payloads, JWK
//! sets, every filter's configuration through [`crate::config::parse_config`]).
//!
//! serde_json keeps the last of two members with the same name; another parser on the path
//! (the issuer's, a downstream service's, the operator's YAML linter) may keep the first. A
//! document whose meaning depends on the parser is refused (in a policy, a repeated member can
//! hide a rule), so objects are read through a visitor that fails on a repeated name.
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
    match parse_value(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(JsonError::Invalid),
        Err(e) => Err(e),
    }
}

/// Parses `bytes` as any JSON value, refusing repeated member names at any depth.
pub fn parse_value(bytes: &[u8]) -> Result<Value, JsonError> {
    parse_value_naming(bytes).map_err(|(e, _)| e)
}

/// As [`parse_value`]; a repeated member also comes back with its name (for config errors,
/// which name the field). The caller decides whether the name is safe to show.
pub(crate) fn parse_value_naming(bytes: &[u8]) -> Result<Value, (JsonError, Option<String>)> {
    match serde_json::from_slice::<UniqueValue>(bytes) {
        Ok(UniqueValue(value)) => Ok(value),
        Err(e) => {
            let msg = e.to_string();
            match msg.strip_prefix(DUPLICATE) {
                Some(rest) => {
                    let name = rest
                        .strip_prefix(" `")
                        .and_then(|r| r.rsplit_once('`'))
                        .map(|(name, _)| name.to_string());
                    Err((JsonError::Duplicate, name))
                }
                None => Err((JsonError::Invalid, None)),
            }
        }
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
                return Err(de::Error::custom(format_args!("{DUPLICATE} `{name}`")));
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
