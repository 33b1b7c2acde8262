//! The one config error every filter reports. It always names the offending field (a JSON path
//! such as `providers[0].issuer`) so an operator can fix the YAML from the log line alone, and
//! it never echoes the value: a misplaced secret must not end up in Envoy's log.

//!
//! Every filter reads its configuration through [`parse_config`] (or [`parse_document`] when
//! it walks the document itself), so all of them treat a document the same way:
//!
//! - an empty or absent configuration is an error naming the document (`the rbac policy is
//!   empty`), never a silent set of defaults: a filter whose config failed to reach Envoy
//!   must not start (write `{}` to take every default where a filter has them);
//! - a member name repeated in one object, at any depth, is refused (serde_json would keep the
//!   last one silently, and another tool reading the same YAML may keep the first: in a
//!   policy that can hide a rule);
//! - the top level must be a JSON object;
//! - errors name the field and never carry a value.
//!
//! The shortest secret each filter accepts is fixed here too, one constant per key, so the
//! READMEs and the code cannot drift apart.

use std::fmt;

use serde_json::Value;

use crate::json::{self, JsonError};

/// Shortest audit chain HMAC key (`PHI_GUARD_AUDIT_KEY`), in bytes: the HMAC-SHA256 output
/// size (RFC 2104 §3 recommends a key at least that long).
pub const MIN_AUDIT_CHAIN_KEY_BYTES: usize = 32;
/// Shortest mask keyed-token key (`PHI_GUARD_MASK_TOKEN_KEY`), in bytes; as above.
pub const MIN_MASK_TOKEN_KEY_BYTES: usize = 32;
/// Shortest jwt HS256 shared secret, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Shortest jwt replay-cache key (keys the hash of a `jti` in shared data), in bytes.
pub const MIN_REPLAY_KEY_BYTES: usize = 32;

/// Reads a filter's configuration document (`document` names it in errors: `jwt`, `rbac
/// policy`, `mask`, `audit`, `audit service`): refuses an empty document, invalid JSON, a
/// top level other than an object and repeated member names at any depth.
pub fn parse_document(bytes: &[u8], document: &str) -> Result<Value, ConfigError> {
    match parse_json(bytes, document)? {
        value @ Value::Object(_) => Ok(value),
        _ => Err(ConfigError::new(
            "",
            format!("the {document} configuration must be a JSON object"),
        )),
    }
}

/// [`parse_document`] for a document of any JSON shape (a list of test cases, a claims file):
/// refuses an empty document, invalid JSON and repeated member names at any depth. The
/// command-line tools and the renderer read every file a user writes through this or
/// [`parse_document`], so a repeated member is refused before a filter would see the file
/// (serde_json alone keeps the last of two: a renderer that re-serialises would hand the
/// filter a document that no longer shows the repetition).
pub fn parse_json(bytes: &[u8], document: &str) -> Result<Value, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::new(
            "",
            format!("the {document} configuration is empty (write `{{}}` for the defaults, where there are any)"),
        ));
    }
    match json::parse_value_naming(bytes) {
        Ok(value) => Ok(value),
        Err((JsonError::Duplicate, name)) => {
            // A member name is a key, not a value; still, only a plain name is shown.
            let name = name.filter(|n| {
                !n.is_empty()
                    && n.len() <= 64
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.:/*".contains(&b))
            });
            Err(ConfigError::new(
                name.unwrap_or_default(),
                format!("appears twice in one object of the {document} configuration (a repeated member is refused)"),
            ))
        }
        Err((JsonError::Invalid, _)) => {
            let reason = match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Err(e) => sanitize_serde_message(&e.to_string()),
                Ok(_) => "not valid JSON".to_string(),
            };
            Err(ConfigError::new(
                "",
                format!("the {document} configuration is not valid JSON ({reason})"),
            ))
        }
    }
}

/// [`parse_document`], then strict deserialisation as `T` (see [`from_json_value`]).
pub fn parse_config<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    document: &str,
) -> Result<T, ConfigError> {
    from_json_value(&parse_document(bytes, document)?)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the field, e.g. `rules[3].principals[0]`; empty for the document itself.
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Maps a serde_json error to a config error. Unknown, missing and duplicate fields are
    /// named (serde quotes the field name); the reason never carries a value, since serde's
    /// "invalid type" messages quote it and a secret pasted into the wrong field must not
    /// reach Envoy's log.
    pub fn from_json(err: &serde_json::Error) -> Self {
        let msg = err.to_string();
        let named = ["unknown field `", "missing field `", "duplicate field `"]
            .iter()
            .any(|p| msg.starts_with(p));
        let field = if named {
            msg.split('`').nth(1).unwrap_or_default()
        } else {
            ""
        };
        Self::new(field, sanitize_serde_message(&msg))
    }

    /// Prefixes the field path with its parent, e.g. `issuer` inside `providers[0]`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// Deserialises `value` strictly as `T`. On failure the error names the member at fault:
/// serde names unknown, missing and duplicate fields itself; for a badly typed value the
/// member is found from the column serde reports in the compact text.
pub fn from_json_value<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> Result<T, ConfigError> {
    let text = value.to_string();
    serde_json::from_str(&text).map_err(|e| {
        let mut err = ConfigError::from_json(&e);
        if err.field.is_empty() {
            err.field = member_at(&text, e.column()).unwrap_or_default();
        }
        err
    })
}

/// The top-level member whose value contains byte `column` of one-line JSON `text`.
fn member_at(text: &str, column: usize) -> Option<String> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut string_start = 0;
    let mut last_string = None;
    let mut member = None;
    for (i, c) in text.char_indices().take_while(|(i, _)| *i < column) {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    in_string = false;
                    last_string = Some(&text[string_start..i]);
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                string_start = i + 1;
            }
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            ':' if depth == 1 => member = last_string.map(str::to_string),
            _ => {}
        }
    }
    member
}

/// Drops the values serde quotes in its messages: `invalid type: string "abc", expected u64`
/// becomes `invalid type, expected u64`; `unknown variant `x`, expected ...` becomes
/// `unknown value, expected ...`. Positions go too (they point into a one-line string).
pub fn sanitize_serde_message(msg: &str) -> String {
    let msg = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let expected = msg.find(", expected ").map_or("", |i| &msg[i..]);
    for (prefix, label) in [
        ("invalid type", "invalid type"),
        ("invalid value", "invalid value"),
        ("unknown variant", "unknown value"),
        ("invalid length", "invalid length"),
    ] {
        if msg.starts_with(prefix) {
            return format!("{label}{expected}");
        }
    }
    msg.to_string()
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration: {}", self.reason)
        } else {
            write!(
                f,
                "invalid configuration: field `{}`: {}",
                self.field, self.reason
            )
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        issuer: String,
    }

    #[test]
    fn unknown_field_is_named() {
        let err = serde_json::from_str::<Sample>(r#"{"issuer":"a","isuer":"b"}"#).unwrap_err();
        let err = ConfigError::from_json(&err);
        assert_eq!(err.field, "isuer");
        assert!(err.to_string().contains("field `isuer`"));
    }

    #[test]
    fn missing_field_is_named() {
        let err = serde_json::from_str::<Sample>("{}").unwrap_err();
        assert_eq!(ConfigError::from_json(&err).field, "issuer");
    }

    #[test]
    fn values_are_never_echoed() {
        let err = serde_json::from_str::<Sample>(r#"{"issuer":12345678}"#).unwrap_err();
        let err = ConfigError::from_json(&err);
        assert_eq!(err.field, "", "a type error names no made-up field");
        assert!(!err.to_string().contains("12345678"), "{err}");
        assert_eq!(err.reason, "invalid type, expected a string");
    }

    #[test]
    fn badly_typed_members_are_located() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Two {
            name: String,
            limit: u64,
        }
        let value = serde_json::json!({"name": "x", "limit": "secret-value"});
        let err = from_json_value::<Two>(&value).unwrap_err();
        assert_eq!(err.field, "limit");
        assert!(!err.to_string().contains("secret-value"), "{err}");
    }

    #[test]
    fn empty_and_absent_documents_are_refused_by_name() {
        for doc in ["", "  \n\t"] {
            let err = parse_document(doc.as_bytes(), "rbac policy").unwrap_err();
            assert_eq!(err.field, "");
            assert!(
                err.reason.contains("rbac policy configuration is empty"),
                "{err}"
            );
        }
    }

    #[test]
    fn repeated_members_are_refused_at_any_depth_and_named() {
        for (doc, field) in [
            (r#"{"issuer":"a","issuer":"b"}"#, "issuer"),
            (
                r#"{"rules":[{"name":"x","action":"allow","action":"deny"}]}"#,
                "action",
            ),
            (r#"{"a":{"b":{"c":1,"c":2}}}"#, "c"),
            (r#"{"a":1,"\u0061":2}"#, "a"),
            (r#"{"a b\u0000":1,"a b\u0000":2}"#, ""),
        ] {
            let err = parse_document(doc.as_bytes(), "test").unwrap_err();
            assert_eq!(err.field, field, "{doc}");
            assert!(err.reason.contains("appears twice"), "{err}");
        }
    }

    #[test]
    fn documents_must_be_objects_of_valid_json() {
        for doc in ["[]", "1", "\"secret-string\"", "{", "{}x", "{\"a\":secret}"] {
            let err = parse_document(doc.as_bytes(), "test").unwrap_err();
            assert_eq!(err.field, "", "{doc}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        assert!(parse_document(b" {} ", "test").is_ok());
    }

    #[test]
    fn parse_config_is_strict() {
        let err = parse_config::<Sample>(br#"{"issuer":"a","issuer":"b"}"#, "t").unwrap_err();
        assert_eq!(err.field, "issuer");
        let ok = parse_config::<Sample>(br#"{"issuer":"a"}"#, "t").unwrap();
        assert_eq!(ok.issuer, "a");
        let err = parse_config::<Sample>(br#"{"issuer":7}"#, "t").unwrap_err();
        assert_eq!(err.field, "issuer");
    }

    #[test]
    fn nesting_builds_a_path() {
        let err = ConfigError::new("issuer", "must not be empty").within("providers[0]");
        assert_eq!(err.field, "providers[0].issuer");
        let err = ConfigError::new("[2]", "bad").within("rules");
        assert_eq!(err.field, "rules[2]");
        let err = ConfigError::new("", "bad").within("rules");
        assert_eq!(err.field, "rules");
    }
}
