//! The pipeline's configuration: `{"stages": [{"jwt": {…}}, {"rbac": {…}}, {"mask": {…}},
//! {"audit": {…}}]}`. Each stage nests that filter's own configuration, unchanged (what the
//! single-stage module of the filter takes as its whole configuration), and is checked by
//! that filter's own parser when the pipeline configures it.
//!
//! `filter_state` (optional) lists the contracts the pipeline writes to Envoy's filter state,
//! by key (`["phi_guard.authn", "phi_guard.authz"]`): what the access log prints or a filter
//! after the pipeline reads. Absent, all seven are written, as the single-stage modules write
//! them; the stages themselves hand their values over in memory either way. An unknown or
//! repeated key is refused. A stage the pipeline does not run may run after it as its own
//! module (audit after a jwt + rbac + mask pipeline, as in an Istio mesh): the contracts that
//! stage reads ([`StageName::reads`]) are written whatever the list says, so such a module
//! never finds its inputs missing.
//!
//! Read through the one config parser (`phi_guard_common::config::parse_document`): an empty
//! document, a repeated member at any depth and unknown top-level fields are refused. A stage
//! list that is empty, names an unknown stage, names one twice or puts them out of order is
//! refused, the error naming the field (`stages[2]`). Errors never carry a value.

use phi_guard_common::state::{self, Published};
use phi_guard_common::ConfigError;
use serde_json::Value;

/// A stage of the pipeline, in the order stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StageName {
    Jwt,
    Rbac,
    Mask,
    Audit,
}

impl StageName {
    /// Every stage, in pipeline order.
    pub const ALL: [StageName; 4] = [
        StageName::Jwt,
        StageName::Rbac,
        StageName::Mask,
        StageName::Audit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StageName::Jwt => "jwt",
            StageName::Rbac => "rbac",
            StageName::Mask => "mask",
            StageName::Audit => "audit",
        }
    }

    /// The contracts this stage reads from the stages before it, by filter-state key.
    pub fn reads(self) -> &'static [&'static str] {
        match self {
            StageName::Jwt => &[],
            StageName::Rbac => &[state::IDENTITY],
            StageName::Mask => &[state::AUTHZ],
            StageName::Audit => &[
                state::IDENTITY,
                state::AUTHN,
                state::AUTHZ,
                state::MASK,
                state::RESOURCE,
            ],
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        StageName::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The parsed envelope: each configured stage with its own configuration document (the bytes
/// its filter's parser reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    pub stages: Vec<(StageName, Vec<u8>)>,
    /// The contracts written to Envoy's filter state: `filter_state` (all when absent) and what
    /// the stages it does not run read.
    pub published: Published,
}

impl PipelineConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let doc = phi_guard_common::config::parse_document(bytes, "pipeline")?;
        let Value::Object(top) = doc else {
            return Err(ConfigError::new("", "must be a JSON object"));
        };
        if let Some(other) = top
            .keys()
            .find(|k| !matches!(k.as_str(), "stages" | "filter_state"))
        {
            // The member name is a key of the envelope, not a value; still shown only if plain.
            let field = if plain(other) { other.as_str() } else { "" };
            return Err(ConfigError::new(
                field,
                "unknown field: the pipeline configuration has `stages` and `filter_state`",
            ));
        }
        let mut published = match top.get("filter_state") {
            None => Published::ALL,
            Some(list) => published(list)?,
        };
        let Some(Value::Array(list)) = top.get("stages") else {
            return Err(ConfigError::new(
                "stages",
                "required: a list of stages, e.g. [{\"jwt\": {…}}, {\"rbac\": {…}}]",
            ));
        };
        if list.is_empty() {
            return Err(ConfigError::new("stages", "must name at least one stage"));
        }
        let mut stages: Vec<(StageName, Vec<u8>)> = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let field = format!("stages[{i}]");
            let Value::Object(one) = entry else {
                return Err(ConfigError::new(
                    field,
                    "must be an object with one member, the stage name",
                ));
            };
            let mut members = one.iter();
            let (Some((name, config)), None) = (members.next(), members.next()) else {
                return Err(ConfigError::new(
                    field,
                    "must have exactly one member, the stage name (jwt, rbac, mask, audit)",
                ));
            };
            let Some(stage) = StageName::from_name(name) else {
                return Err(ConfigError::new(
                    field,
                    "unknown stage (the stages are jwt, rbac, mask, audit)",
                ));
            };
            let field = format!("stages[{i}].{}", stage.name());
            if stages.iter().any(|(s, _)| *s == stage) {
                return Err(ConfigError::new(field, "the stage appears twice"));
            }
            if let Some((last, _)) = stages.last() {
                if *last > stage {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "out of order: stages run jwt, rbac, mask, audit, so {} comes before {}",
                            stage.name(),
                            last.name()
                        ),
                    ));
                }
            }
            if !config.is_object() {
                return Err(ConfigError::new(
                    field,
                    "must be the stage's configuration, a JSON object",
                ));
            }
            stages.push((stage, config.to_string().into_bytes()));
        }
        // What a stage left out of the pipeline reads, if it runs after it as its own module.
        for absent in StageName::ALL
            .into_iter()
            .filter(|s| !stages.iter().any(|(t, _)| t == s))
        {
            for key in absent.reads() {
                published = published.with(key).unwrap_or(published);
            }
        }
        Ok(PipelineConfig { stages, published })
    }

    /// The configuration document of `stage`, if configured.
    pub fn stage(&self, stage: StageName) -> Option<&[u8]> {
        self.stages
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, c)| c.as_slice())
    }
}

/// `filter_state`: a list of contract keys, each once.
fn published(list: &Value) -> Result<Published, ConfigError> {
    let Value::Array(keys) = list else {
        return Err(ConfigError::new(
            "filter_state",
            "must be a list of filter-state keys, e.g. [\"phi_guard.authn\", \"phi_guard.authz\"]",
        ));
    };
    Published::from_list(keys.iter().map(Value::as_str))
        .map_err(|e| ConfigError::new(format!("filter_state[{}]", e.index), e.reason()))
}

fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(doc: &str) -> ConfigError {
        PipelineConfig::parse(doc.as_bytes()).unwrap_err()
    }

    #[test]
    fn stages_keep_their_own_configs() {
        let cfg = PipelineConfig::parse(
            br#"{"stages":[{"jwt":{"providers":[]}},{"rbac":{"version":"v"}},{"audit":{}}]}"#,
        )
        .unwrap();
        let names: Vec<_> = cfg.stages.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            names,
            vec![StageName::Jwt, StageName::Rbac, StageName::Audit]
        );
        assert_eq!(cfg.stage(StageName::Audit), Some(&b"{}"[..]));
        assert_eq!(cfg.stage(StageName::Mask), None);
        let jwt: Value = serde_json::from_slice(cfg.stage(StageName::Jwt).unwrap()).unwrap();
        assert_eq!(jwt, serde_json::json!({"providers": []}));
    }

    #[test]
    fn bad_envelopes_are_refused_naming_the_field() {
        assert_eq!(err("").field, "");
        assert_eq!(err("{}").field, "stages");
        assert_eq!(err(r#"{"stages":[]}"#).field, "stages");
        assert_eq!(err(r#"{"stages":{}}"#).field, "stages");
        assert_eq!(err(r#"{"stages":[], "extra": 1}"#).field, "extra");
        assert_eq!(err(r#"{"stages":[{"authz":{}}]}"#).field, "stages[0]");
        assert_eq!(
            err(r#"{"stages":[{"jwt":{}, "rbac":{}}]}"#).field,
            "stages[0]"
        );
        assert_eq!(err(r#"{"stages":[{}]}"#).field, "stages[0]");
        assert_eq!(err(r#"{"stages":["jwt"]}"#).field, "stages[0]");
        assert_eq!(err(r#"{"stages":[{"jwt":"x"}]}"#).field, "stages[0].jwt");
        let dup = err(r#"{"stages":[{"jwt":{}},{"jwt":{}}]}"#);
        assert_eq!(dup.field, "stages[1].jwt");
        assert!(dup.reason.contains("twice"), "{}", dup.reason);
        let order = err(r#"{"stages":[{"mask":{}},{"rbac":{}}]}"#);
        assert_eq!(order.field, "stages[1].rbac");
        assert!(order.reason.contains("out of order"), "{}", order.reason);
        // A member repeated inside a stage's config is refused by the one parser.
        let repeated = err(r#"{"stages":[{"rbac":{"mode":"enforce","mode":"shadow"}}]}"#);
        assert_eq!(repeated.field, "mode");
    }

    #[test]
    fn filter_state_lists_the_keys_written_to_envoy() {
        let all = PipelineConfig::parse(
            br#"{"stages":[{"jwt":{}},{"rbac":{}},{"mask":{}},{"audit":{}}]}"#,
        )
        .unwrap();
        assert_eq!(all.published, Published::ALL);
        let some = PipelineConfig::parse(
            br#"{"stages":[{"jwt":{}},{"rbac":{}},{"mask":{}},{"audit":{}}],"filter_state":["phi_guard.authz","phi_guard.authn"]}"#,
        )
        .unwrap();
        for key in state::KEYS {
            let expected = key == state::AUTHN || key == state::AUTHZ;
            assert_eq!(some.published.contains(key), expected, "{key}");
        }
        let none = PipelineConfig::parse(
            br#"{"stages":[{"jwt":{}},{"rbac":{}},{"mask":{}},{"audit":{}}],"filter_state":[]}"#,
        );
        assert_eq!(none.unwrap().published, Published::NONE);

        let bad = |list: &str| {
            err(&format!(
                r#"{{"stages":[{{"jwt":{{}}}},{{"rbac":{{}}}},{{"mask":{{}}}},{{"audit":{{}}}}],"filter_state":{list}}}"#
            ))
        };
        assert_eq!(bad(r#""phi_guard.authn""#).field, "filter_state");
        assert_eq!(bad("[1]").field, "filter_state[0]");
        let unknown = bad(r#"["phi_guard.authn","wasm.phi_guard.authz"]"#);
        assert_eq!(unknown.field, "filter_state[1]");
        assert!(
            unknown.reason.contains("phi_guard.identity"),
            "{}",
            unknown.reason
        );
        let twice = bad(r#"["phi_guard.authn","phi_guard.authn"]"#);
        assert_eq!(twice.field, "filter_state[1]");
        assert!(twice.reason.contains("twice"), "{}", twice.reason);
        // The reason lists the keys phi-guard knows, never what the config held.
        assert!(!bad(r#"["SECRET-VALUE-123"]"#)
            .to_string()
            .contains("SECRET"));
    }

    #[test]
    fn what_a_stage_left_out_reads_is_always_written() {
        let parse = |doc: &str| PipelineConfig::parse(doc.as_bytes()).unwrap().published;
        let written = |p: Published| -> Vec<&str> { p.keys().collect() };
        // Audit after the pipeline (an Istio mesh's layout): its five inputs.
        let no_audit = parse(
            r#"{"stages":[{"jwt":{}},{"rbac":{}},{"mask":{}}],"filter_state":["phi_guard.method"]}"#,
        );
        assert_eq!(
            written(no_audit),
            [
                state::IDENTITY,
                state::AUTHN,
                state::AUTHZ,
                state::MASK,
                state::RESOURCE,
                state::METHOD
            ]
        );
        // Mask after a jwt + rbac pipeline with audit in it: the decision, for mask.
        let no_mask =
            parse(r#"{"stages":[{"jwt":{}},{"rbac":{}},{"audit":{}}],"filter_state":[]}"#);
        assert_eq!(written(no_mask), [state::AUTHZ]);
        let no_rbac =
            parse(r#"{"stages":[{"jwt":{}},{"mask":{}},{"audit":{}}],"filter_state":[]}"#);
        assert_eq!(written(no_rbac), [state::IDENTITY]);
        let all = parse(
            r#"{"stages":[{"jwt":{}},{"rbac":{}},{"mask":{}},{"audit":{}}],"filter_state":[]}"#,
        );
        assert_eq!(all, Published::NONE);
    }

    #[test]
    fn errors_carry_no_value() {
        let e = err(r#"{"stages":[{"SECRET-VALUE-123":{}}]}"#);
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let e = err(r#"{"SECRET-VALUE-123/x":1,"stages":[{"jwt":{}}]}"#);
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
}
