//! The filter's JSON configuration, parsed strictly: unknown keys, unknown classes, wrong
//! types and missing secrets are errors naming the field (never echoing a value).
//!
//! ```json
//! {
//!   "descriptor_set": "<base64 FileDescriptorSet>",
//!   "max_message_bytes": 4194304,
//!   "token_key_env": "PHI_GUARD_MASK_TOKEN_KEY",
//!   "free_text": { "mrn_pattern": "\\bMRN-[0-9A-Z]{4}-[0-9A-Z]+\\b" },
//!   "roles": {
//!     "billing": { "*": "reveal" },
//!     "nurse": { "SSN": { "action": "partial", "keep_last": 4 }, "*": "redact" }
//!   },
//!   "default": { "*": "remove" }
//! }
//! ```

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use phi_guard_common::ConfigError;
use serde_json::{Map, Value};

use crate::descriptor::Catalog;
use crate::framing::DEFAULT_MAX_MESSAGE_BYTES;
use crate::freetext::{Detectors, DEFAULT_MRN_PATTERN, EMAIL_PATTERN, PHONE_PATTERN, SSN_PATTERN};
use crate::plan::{Class, Plans};
use crate::policy::{builtin_class_name, Action, Policy, RolePolicy};
use crate::rewriter::Rewriter;
use crate::token::{TokenKey, MIN_KEY_BYTES};

/// Upper bound for `max_message_bytes`: the framer holds one message in memory per stream.
pub const MAX_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Everything the filter needs, built once at configure time and shared by every stream.
#[derive(Debug)]
pub struct MaskConfig {
    pub plans: Plans,
    pub policy: Policy,
    /// Class number → name, for every class the plans or the policy mention.
    pub class_names: BTreeMap<Class, String>,
    pub detectors: Detectors,
    /// Classes the detectors report, to skip scanning for roles that reveal them all.
    detector_classes: Vec<Class>,
    pub free_text: Option<Class>,
    pub token_key: Option<TokenKey>,
    pub max_message_bytes: usize,
}

const TOP_KEYS: &[&str] = &[
    "descriptor_set",
    "max_message_bytes",
    "token_key_env",
    "free_text",
    "roles",
    "default",
];

impl MaskConfig {
    /// Parses the plugin configuration. `env` reads a VM environment variable (the HMAC key).
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let doc: Value = phi_guard_common::config::parse_document(json, "mask")?;
        let top = object(&doc, "")?;
        reject_unknown(top, TOP_KEYS, "")?;

        let b64 = top
            .get("descriptor_set")
            .ok_or_else(|| ConfigError::new("descriptor_set", "missing"))?
            .as_str()
            .ok_or_else(|| ConfigError::new("descriptor_set", "must be a base64 string"))?;
        let set = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| ConfigError::new("descriptor_set", "not valid base64"))?;
        let catalog = Catalog::decode(&set).map_err(|e| ConfigError::new("descriptor_set", e.0))?;
        let plans = Plans::build(&catalog).map_err(|e| ConfigError::new("descriptor_set", e.0))?;
        if plans.methods.is_empty() {
            // Most likely the set went through prost-types (or another decoder that drops
            // unknown fields) and lost its extensions: the filter would silently mask nothing.
            return Err(ConfigError::new(
                "descriptor_set",
                "no method returns a field annotated with phi.v1.sensitivity (was the set \
                 re-encoded by a tool that drops extension options, such as prost-types?)",
            ));
        }

        let mut class_by_name: HashMap<String, Class> = (1..=10)
            .filter_map(|c| builtin_class_name(c).map(|n| (n.to_string(), c)))
            .collect();
        for (&c, n) in &catalog.class_names {
            class_by_name.insert(n.clone(), c);
        }
        let mut class_names: BTreeMap<Class, String> =
            class_by_name.iter().map(|(n, &c)| (c, n.clone())).collect();
        for plan in &plans.messages {
            for f in &plan.fields {
                if let crate::plan::Node::Leaf { class, .. } = f.node {
                    class_names
                        .entry(class)
                        .or_insert_with(|| catalog.class_name(class));
                }
            }
        }

        let max_message_bytes = match top.get("max_message_bytes") {
            None => DEFAULT_MAX_MESSAGE_BYTES,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=MAX_MAX_MESSAGE_BYTES).contains(n))
                .ok_or_else(|| {
                    ConfigError::new(
                        "max_message_bytes",
                        format!("must be an integer from 1 to {MAX_MAX_MESSAGE_BYTES}"),
                    )
                })?,
        };

        let mut roles = HashMap::new();
        let roles_obj = object(
            top.get("roles")
                .ok_or_else(|| ConfigError::new("roles", "missing"))?,
            "roles",
        )?;
        for (name, block) in roles_obj {
            if name.is_empty() {
                return Err(ConfigError::new("roles", "role names must not be empty"));
            }
            let path = format!("roles.{name}");
            roles.insert(name.clone(), role_block(block, &path, &class_by_name)?);
        }
        let default = match top.get("default") {
            None => RolePolicy::strictest(),
            Some(block) => role_block(block, "default", &class_by_name)?,
        };
        let policy = Policy { roles, default };

        let token_key = token_key(top, &policy, env)?;

        let (detectors, detector_classes) = detectors(top, &class_by_name)?;
        let free_text = class_by_name.get("FREE_TEXT").copied();

        Ok(MaskConfig {
            plans,
            policy,
            class_names,
            detectors,
            detector_classes,
            free_text,
            token_key,
            max_message_bytes,
        })
    }

    /// The rewriter for one role's block.
    pub fn rewriter<'a>(&'a self, role: &'a RolePolicy) -> Rewriter<'a> {
        let needs_scan = self
            .detector_classes
            .iter()
            .any(|&c| *role.action(c) != Action::Reveal);
        Rewriter {
            plans: &self.plans,
            role,
            key: self.token_key.as_ref(),
            detectors: needs_scan.then_some(&self.detectors),
            free_text: self.free_text,
            names: &self.class_names,
        }
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ConfigError> {
    v.as_object()
        .ok_or_else(|| ConfigError::new(path, "must be an object"))
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn reject_unknown(
    obj: &Map<String, Value>,
    allowed: &[&str],
    path: &str,
) -> Result<(), ConfigError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ConfigError::new(
            join(path, k),
            format!("unknown field, expected one of: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A role block: class name (or `*`) → action. A block without `*` removes unnamed classes.
fn role_block(
    v: &Value,
    path: &str,
    classes: &HashMap<String, Class>,
) -> Result<RolePolicy, ConfigError> {
    let obj = object(v, path)?;
    let mut policy = RolePolicy::strictest();
    for (key, action) in obj {
        let here = join(path, key);
        let action = parse_action(action, &here)?;
        if key == "*" {
            policy.otherwise = action;
        } else {
            let class = classes.get(key).ok_or_else(|| {
                ConfigError::new(
                    &here,
                    "unknown sensitivity class (not in phi.v1.Sensitivity)",
                )
            })?;
            policy.classes.insert(*class, action);
        }
    }
    Ok(policy)
}

/// `"reveal" | "redact" | "token" | "remove"`, or an object
/// `{"action": "redact", "replacement": "..."}` / `{"action": "partial", "keep_last": N}`.
fn parse_action(v: &Value, path: &str) -> Result<Action, ConfigError> {
    let simple = |name: &str| -> Result<Action, ConfigError> {
        Ok(match name {
            "reveal" => Action::Reveal,
            "redact" => Action::Redact { replacement: None },
            "token" => Action::Token,
            "remove" => Action::Remove,
            "partial" => return Err(ConfigError::new(
                path,
                "partial needs an object with keep_last: {\"action\":\"partial\",\"keep_last\":4}",
            )),
            _ => {
                return Err(ConfigError::new(
                    path,
                    "unknown action, expected reveal, redact, partial, token or remove",
                ))
            }
        })
    };
    match v {
        Value::String(s) => simple(s),
        Value::Object(obj) => {
            let name = obj
                .get("action")
                .and_then(Value::as_str)
                .ok_or_else(|| ConfigError::new(join(path, "action"), "missing or not a string"))?;
            match name {
                "partial" => {
                    reject_unknown(obj, &["action", "keep_last"], path)?;
                    let keep_last = obj
                        .get("keep_last")
                        .and_then(Value::as_u64)
                        .filter(|&n| n <= 64)
                        .ok_or_else(|| {
                            ConfigError::new(
                                join(path, "keep_last"),
                                "missing or not an integer from 0 to 64",
                            )
                        })?;
                    Ok(Action::Partial {
                        keep_last: keep_last as usize,
                    })
                }
                "redact" => {
                    reject_unknown(obj, &["action", "replacement"], path)?;
                    let replacement = match obj.get("replacement") {
                        None => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(_) => {
                            return Err(ConfigError::new(
                                join(path, "replacement"),
                                "must be a string",
                            ))
                        }
                    };
                    Ok(Action::Redact { replacement })
                }
                other => {
                    reject_unknown(obj, &["action"], path)?;
                    simple(other).map_err(|e| ConfigError::new(join(path, "action"), e.reason))
                }
            }
        }
        _ => Err(ConfigError::new(
            path,
            "must be an action name or an object",
        )),
    }
}

fn token_key(
    top: &Map<String, Value>,
    policy: &Policy,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<TokenKey>, ConfigError> {
    let uses_token =
        policy.default.uses_token() || policy.roles.values().any(RolePolicy::uses_token);
    let var = match top.get("token_key_env") {
        None if uses_token => {
            return Err(ConfigError::new(
                "token_key_env",
                "missing: a role uses the token action, which needs an HMAC key",
            ))
        }
        None => return Ok(None),
        Some(v) => v
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConfigError::new("token_key_env", "must be a non-empty string"))?,
    };
    match env(var) {
        Some(key) => TokenKey::new(key.as_bytes()).map(Some).ok_or_else(|| {
            ConfigError::new(
                "token_key_env",
                format!("the environment variable it names holds fewer than {MIN_KEY_BYTES} bytes"),
            )
        }),
        None if uses_token => Err(ConfigError::new(
            "token_key_env",
            "the environment variable it names is not set in the VM (vm_config.environment_variables)",
        )),
        None => Ok(None),
    }
}

fn detectors(
    top: &Map<String, Value>,
    classes: &HashMap<String, Class>,
) -> Result<(Detectors, Vec<Class>), ConfigError> {
    let mut mrn = DEFAULT_MRN_PATTERN.to_string();
    if let Some(ft) = top.get("free_text") {
        let obj = object(ft, "free_text")?;
        reject_unknown(obj, &["mrn_pattern"], "free_text")?;
        if let Some(p) = obj.get("mrn_pattern") {
            mrn = p
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    ConfigError::new("free_text.mrn_pattern", "must be a non-empty string")
                })?
                .to_string();
        }
    }
    // Order matters on ties at one position: an e-mail's digits are not a phone number.
    let mut patterns = Vec::new();
    for (name, pattern) in [
        ("EMAIL", EMAIL_PATTERN.to_string()),
        ("SSN", SSN_PATTERN.to_string()),
        ("PHONE", PHONE_PATTERN.to_string()),
        ("MRN", mrn),
    ] {
        if let Some(&c) = classes.get(name) {
            patterns.push((c, pattern));
        }
    }
    let classes = patterns.iter().map(|(c, _)| *c).collect();
    let detectors = Detectors::new(&patterns).map_err(|(i, reason)| {
        let field = if i == patterns.len() - 1 {
            "free_text.mrn_pattern"
        } else {
            "free_text"
        };
        ConfigError::new(field, format!("pattern does not compile: {reason}"))
    })?;
    Ok((detectors, classes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64() -> String {
        base64::engine::general_purpose::STANDARD.encode(crate::testdata::demo_descriptor_set())
    }

    fn parse(doc: Value) -> Result<MaskConfig, ConfigError> {
        MaskConfig::parse(doc.to_string().as_bytes(), &|name| {
            (name == "KEY").then(|| "0123456789abcdef0123456789abcdef".to_string())
        })
    }

    fn field_of(doc: Value) -> String {
        parse(doc).unwrap_err().field
    }

    #[test]
    fn the_demo_policy_parses() {
        let mut doc: Value = serde_json::from_str(include_str!("../policy.demo.json")).unwrap();
        doc["descriptor_set"] = b64().into();
        doc["token_key_env"] = "KEY".into();
        let cfg = parse(doc).unwrap();
        assert_eq!(cfg.max_message_bytes, 4 << 20);
        assert_eq!(cfg.policy.roles.len(), 3);
        assert!(cfg.token_key.is_some());
        assert_eq!(cfg.policy.default, RolePolicy::strictest());
    }

    #[test]
    fn errors_name_the_field() {
        let base = || json!({"descriptor_set": b64(), "roles": {"nurse": {"*": "redact"}}});
        assert!(parse(base()).is_ok());
        let with = |key: &str, v: Value| {
            let mut d = base();
            d[key] = v;
            d
        };
        assert_eq!(field_of(json!({"roles": {}})), "descriptor_set");
        assert_eq!(
            field_of(with("descriptor_set", "%%%".into())),
            "descriptor_set"
        );
        assert_eq!(
            field_of(with("descriptor_set", "AAAA".into())),
            "descriptor_set"
        );
        assert_eq!(
            field_of(with("max_message_bytes", 0.into())),
            "max_message_bytes"
        );
        assert_eq!(
            field_of(with("max_message_bytes", "1".into())),
            "max_message_bytes"
        );
        assert_eq!(field_of(with("rolez", json!({}))), "rolez");
        assert_eq!(field_of(json!({"descriptor_set": b64()})), "roles");
        assert_eq!(
            field_of(with("roles", json!({"nurse": {"SSNN": "redact"}}))),
            "roles.nurse.SSNN"
        );
        assert_eq!(
            field_of(with("roles", json!({"nurse": {"SSN": "mask"}}))),
            "roles.nurse.SSN"
        );
        assert_eq!(
            field_of(with("roles", json!({"nurse": {"SSN": "partial"}}))),
            "roles.nurse.SSN"
        );
        assert_eq!(
            field_of(with(
                "roles",
                json!({"nurse": {"SSN": {"action": "partial"}}})
            )),
            "roles.nurse.SSN.keep_last"
        );
        assert_eq!(
            field_of(with(
                "roles",
                json!({"nurse": {"SSN": {"action": "partial", "keep_last": 4, "x": 1}}})
            )),
            "roles.nurse.SSN.x"
        );
        assert_eq!(
            field_of(with(
                "roles",
                json!({"nurse": {"SSN": {"action": "redact", "replacement": 3}}})
            )),
            "roles.nurse.SSN.replacement"
        );
        assert_eq!(field_of(with("default", json!({"*": 5}))), "default.*");
        assert_eq!(
            field_of(with("free_text", json!({"mrn_pattern": "("}))),
            "free_text.mrn_pattern"
        );
        assert_eq!(
            field_of(with("free_text", json!({"ssn": "x"}))),
            "free_text.ssn"
        );
        assert!(parse(json!("[1]")).is_err());
    }

    #[test]
    fn a_set_without_annotations_is_refused() {
        use prost::Message;
        use prost_types::{
            DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
            MethodDescriptorProto, ServiceDescriptorProto,
        };
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                package: Some("x".into()),
                message_type: vec![DescriptorProto {
                    name: Some("M".into()),
                    field: vec![FieldDescriptorProto {
                        name: Some("a".into()),
                        number: Some(1),
                        r#type: Some(9),
                        label: Some(1),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                service: vec![ServiceDescriptorProto {
                    name: Some("S".into()),
                    method: vec![MethodDescriptorProto {
                        name: Some("G".into()),
                        input_type: Some(".x.M".into()),
                        output_type: Some(".x.M".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(set.encode_to_vec());
        let err = parse(json!({"descriptor_set": b64, "roles": {}})).unwrap_err();
        assert_eq!(err.field, "descriptor_set");
        assert!(err.reason.contains("phi.v1.sensitivity"));
    }

    #[test]
    fn empty_documents_and_repeated_members_are_refused() {
        let err = MaskConfig::parse(b"", &|_| None).unwrap_err();
        assert!(err.reason.contains("mask configuration is empty"), "{err}");
        // A repeated role block: serde_json would keep the second (here: reveal everything).
        let doc = format!(
            r#"{{"descriptor_set":"{}","roles":{{"nurse":{{"SSN":"redact"}},"nurse":{{"SSN":"reveal"}}}}}}"#,
            b64()
        );
        let err = MaskConfig::parse(doc.as_bytes(), &|_| None).unwrap_err();
        assert_eq!(err.field, "nurse");
        assert!(err.reason.contains("twice"), "{err}");
        let doc = format!(
            r#"{{"descriptor_set":"{}","roles":{{"nurse":{{"SSN":"redact","SSN":"reveal"}}}}}}"#,
            b64()
        );
        let err = MaskConfig::parse(doc.as_bytes(), &|_| None).unwrap_err();
        assert_eq!(err.field, "SSN");
    }

    #[test]
    fn a_sixteen_byte_token_key_is_refused() {
        let doc = json!({"descriptor_set": b64(), "token_key_env": "KEY",
                         "roles": {"research": {"MRN": "token"}}})
        .to_string();
        let err =
            MaskConfig::parse(doc.as_bytes(), &|_| Some("0123456789abcdef".into())).unwrap_err();
        assert_eq!(err.field, "token_key_env");
        assert!(err.reason.contains("32"), "{err}");
        assert!(MaskConfig::parse(doc.as_bytes(), &|_| Some("k".repeat(32))).is_ok());
    }

    #[test]
    fn tokens_need_a_key_from_the_environment() {
        let doc = |env: Option<&str>| {
            let mut d = json!({"descriptor_set": b64(), "roles": {"research": {"MRN": "token"}}});
            if let Some(e) = env {
                d["token_key_env"] = e.into();
            }
            d
        };
        assert_eq!(field_of(doc(None)), "token_key_env");
        assert_eq!(field_of(doc(Some("UNSET"))), "token_key_env");
        assert!(parse(doc(Some("KEY"))).is_ok());
        let short = MaskConfig::parse(doc(Some("KEY")).to_string().as_bytes(), &|_| {
            Some("short".into())
        });
        let err = short.unwrap_err();
        assert_eq!(err.field, "token_key_env");
        assert!(
            !err.to_string().contains("short"),
            "the key is never echoed"
        );
    }

    #[test]
    fn scanning_is_skipped_when_the_role_reveals_every_detected_class() {
        let cfg = parse(json!({
            "descriptor_set": b64(),
            "roles": {"billing": {"*": "reveal"}, "nurse": {"*": "reveal", "SSN": "redact"}}
        }))
        .unwrap();
        let (_, billing) = cfg.policy.for_role(Some("billing"));
        assert!(cfg.rewriter(billing).detectors.is_none());
        let (_, nurse) = cfg.policy.for_role(Some("nurse"));
        assert!(cfg.rewriter(nurse).detectors.is_some());
    }
}
