//! The one config error every filter reports. It always names the offending field (a JSON path
//! such as `providers[0].issuer`) so an operator can fix the YAML from the log line alone, and
//! it never echoes the value: a misplaced secret must not end up in Envoy's log.

use std::fmt;

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

    /// Maps a serde_json error to the field it names. serde reports unknown and missing
    /// fields by name in its message; the position is kept so nested errors stay findable.
    pub fn from_json(err: &serde_json::Error) -> Self {
        let msg = err.to_string();
        let field = extract_backticked(&msg).unwrap_or_default();
        Self::new(field, msg)
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

fn extract_backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
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
    #[allow(dead_code)]
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
    fn nesting_builds_a_path() {
        let err = ConfigError::new("issuer", "must not be empty").within("providers[0]");
        assert_eq!(err.field, "providers[0].issuer");
        let err = ConfigError::new("[2]", "bad").within("rules");
        assert_eq!(err.field, "rules[2]");
        let err = ConfigError::new("", "bad").within("rules");
        assert_eq!(err.field, "rules");
    }
}
