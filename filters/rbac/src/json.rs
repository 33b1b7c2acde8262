//! Small helpers that turn serde errors into [`ConfigError`]s with a full field path and no
//! echoed value (a misplaced token pasted into the policy must not reach Envoy's log).

use serde::de::DeserializeOwned;
use serde_json::Value;

use phi_guard_common::ConfigError;

/// Deserializes `value` (the field at `path`) strictly.
pub(crate) fn field<T: DeserializeOwned>(value: Value, path: &str) -> Result<T, ConfigError> {
    serde_json::from_value(value).map_err(|e| serde_error(&e, path))
}

pub(crate) fn expect_str<'a>(value: &'a Value, path: &str) -> Result<&'a str, ConfigError> {
    value
        .as_str()
        .ok_or_else(|| ConfigError::new(path, "expected a string"))
}

/// Maps a serde error inside the field at `path`: unknown, missing and duplicate fields are
/// named (`rules[2].rol`), anything else stays on `path`.
pub(crate) fn serde_error(err: &serde_json::Error, path: &str) -> ConfigError {
    let msg = err.to_string();
    let named = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .any(|p| msg.starts_with(p));
    let name = if named {
        msg.split('`').nth(1).unwrap_or_default()
    } else {
        ""
    };
    let err = ConfigError::new(name, sanitize(&msg));
    if path.is_empty() {
        err
    } else {
        err.within(path)
    }
}

/// Drops values serde quotes in its messages: `invalid type: string "abc", expected u64`
/// becomes `invalid type, expected u64`; `unknown variant `x`, expected ...` becomes
/// `unknown value, expected ...`. Positions are dropped too (they point into the one-line
/// configuration string and do not help).
pub(crate) fn sanitize(msg: &str) -> String {
    let msg = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let expected = msg.find(", expected ").map(|i| &msg[i..]);
    if msg.starts_with("invalid type") {
        format!("invalid type{}", expected.unwrap_or_default())
    } else if msg.starts_with("invalid value") {
        format!("invalid value{}", expected.unwrap_or_default())
    } else if msg.starts_with("unknown variant") {
        format!("unknown value{}", expected.unwrap_or_default())
    } else if msg.starts_with("invalid length") {
        format!("invalid length{}", expected.unwrap_or_default())
    } else {
        msg.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_not_echoed() {
        let err = field::<u64>(Value::String("secret-token".into()), "rules[1].x").unwrap_err();
        assert_eq!(err.field, "rules[1].x");
        assert!(!err.to_string().contains("secret-token"), "{err}");
        assert_eq!(err.reason, "invalid type, expected u64");
    }
}
