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
/// named (`rules[2].rol`), anything else stays on `path`; no value is echoed.
pub(crate) fn serde_error(err: &serde_json::Error, path: &str) -> ConfigError {
    let err = ConfigError::from_json(err);
    if path.is_empty() {
        err
    } else {
        err.within(path)
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
