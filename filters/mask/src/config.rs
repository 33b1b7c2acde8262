//! The filter's JSON configuration, parsed strictly: unknown keys, unknown classes, wrong
//! types and missing secrets are errors naming the field (never echoing a value).
//!
//! ```json
//! {
//!   "descriptor_set": "<base64 FileDescriptorSet>",
//!   "max_message_bytes": 4194304,
//!   "token_key_env": "PHI_GUARD_MASK_TOKEN_KEY",
//!   "pass_through": ["grpc.health.v1.Health/Check"],
//!   "unknown_fields": "drop",
//!   "catalog": [
//!     {"field": "google.fhir.r4.core.Patient.birth_date", "class": "DOB"},
//!     {"type": "google.fhir.r4.core.Address", "class": "ADDRESS"},
//!     {"field": "google.fhir.r4.core.Identifier.value", "class": "SSN",
//!      "when": {"path": "system.value", "equals": "http://hl7.org/fhir/sid/us-ssn"}}
//!   ],
//!   "free_text": { "detectors": [{"name": "phone"}, {"name": "npi", "class": "OTHER_ID",
//!                                 "pattern": "\\bNPI[: ]*[0-9]{10}\\b"}] },
//!   "roles": {
//!     "billing": { "*": "reveal" },
//!     "nurse": { "SSN": { "action": "partial", "keep_last": 4 }, "*": "redact" },
//!     "deid": "safe_harbor"
//!   },
//!   "default": { "*": "remove" }
//! }
//! ```
//!
//! `descriptor_set` may instead name a set fetched from an Envoy cluster (see [`crate::remote`]
//! and [`crate::remote::MaskSource::parse`]):
//!
//! ```json
//! "descriptor_set": {"remote": {
//!   "cluster": "mask_descriptor_set", "path": "/api.binpb", "authority": "schemas.internal",
//!   "sha256": ["<64 hex digits>"], "refresh_interval_s": 300, "timeout_ms": 5000,
//!   "retry_interval_s": 10
//! }}
//! ```
//!
//! The remote block is checked at configure time (errors name the field and the filter does
//! not start); everything else in the document is checked against each set that arrives, and
//! a set it does not build with is refused like a set that does not decode (the last good
//! config stays; until a first good one, every request is refused with UNAVAILABLE).

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use phi_guard_common::ConfigError;
use serde_json::{Map, Value};

use crate::catalog::Catalog;
use crate::descriptor::DescriptorSet;
use crate::framing::DEFAULT_MAX_MESSAGE_BYTES;
use crate::freetext::{Detectors, DEFAULT_MRN_PATTERN, EMAIL_PATTERN, PHONE_PATTERN, SSN_PATTERN};
use crate::plan::{Class, Plans};
use crate::policy::{Action, Policy, RolePolicy, BUILTIN_CLASSES, RESTRICTED_ZIP3};
use crate::resource::ResourceIds;
use crate::rewriter::{Quiet, Rewriter};
use crate::token::{TokenKey, MIN_KEY_BYTES};

/// Upper bound for `max_message_bytes`: the framer holds one message in memory per stream.
pub const MAX_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// What happens to fields the descriptor set does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownFields {
    /// Dropped (and counted) for every role that does not reveal everything. The default.
    Drop,
    /// Copied through for every role.
    Keep,
}

/// A `pass_through` entry: a method whose responses the filter lets through unmasked when the
/// descriptor set does not describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodPattern {
    /// `package.Service/Method`.
    Exact(String),
    /// `package.Service/*`: every method of the service.
    Service(String),
}

impl MethodPattern {
    pub fn matches(&self, method: &str) -> bool {
        match self {
            MethodPattern::Exact(m) => m == method,
            MethodPattern::Service(s) => method
                .strip_prefix(s.as_str())
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1),
        }
    }
}

/// Everything the filter needs, built once at configure time and shared by every stream.
#[derive(Debug)]
pub struct MaskConfig {
    pub plans: Plans,
    pub policy: Policy,
    /// The decoded descriptor set (for tools that walk the schema: coverage, lint).
    pub descriptor: DescriptorSet,
    /// The resolved catalog entries.
    pub catalog: Catalog,
    /// Method → the request field holding the resource id (annotations and catalog).
    pub resource_ids: ResourceIds,
    /// Class number → name, for every class the plans or the policy mention.
    pub class_names: BTreeMap<Class, String>,
    pub detectors: Detectors,
    /// Classes the detectors report, to skip scanning for roles that reveal them all.
    detector_classes: Vec<Class>,
    pub free_text: Option<Class>,
    pub token_key: Option<TokenKey>,
    pub max_message_bytes: usize,
    pub pass_through: Vec<MethodPattern>,
    pub unknown_fields: UnknownFields,
    /// Per role (and for the default block): what lets its rewrite skip the messages it leaves
    /// as they are ([`Quiet`]), computed once here instead of per stream.
    quiet: HashMap<String, Quiet>,
    quiet_default: Quiet,
}

/// The top-level keys this crate reads. A shell that adds keys of its own (such as a remote
/// descriptor set) strips them before [`MaskConfig::parse_with_descriptor_set`], or lists
/// them in `extra_keys`.
pub const TOP_KEYS: &[&str] = &[
    "descriptor_set",
    "max_message_bytes",
    "token_key_env",
    "free_text",
    "roles",
    "default",
    "catalog",
    "classes",
    "pass_through",
    "unknown_fields",
];

impl MaskConfig {
    /// Parses the plugin configuration with its inline `descriptor_set` (required). `env`
    /// reads a VM environment variable (the HMAC key).
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let doc: Value = phi_guard_common::config::parse_document(json, "mask")?;
        let top = object(&doc, "")?;
        let b64 = top
            .get("descriptor_set")
            .ok_or_else(|| ConfigError::new("descriptor_set", "missing"))?
            .as_str()
            .ok_or_else(|| {
                ConfigError::new(
                    "descriptor_set",
                    "must be a base64 string (or {\"remote\": {...}}, read with MaskSource::parse)",
                )
            })?;
        let set = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| ConfigError::new("descriptor_set", "not valid base64"))?;
        Self::build(&doc, &set, &[], env, false)
    }

    /// As [`MaskConfig::parse`], for a static check that never masks a value (the
    /// `phi-guard-mask` tool's `coverage` and `lint`): a set in which no method returns a field
    /// with a class is accepted, since an untagged API is where a lint matters most. The
    /// filter never parses its configuration this way (library code for cli/mask).
    pub fn parse_for_inspection(
        json: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let doc: Value = phi_guard_common::config::parse_document(json, "mask")?;
        let b64 = doc
            .get("descriptor_set")
            .and_then(Value::as_str)
            .ok_or_else(|| ConfigError::new("descriptor_set", "missing"))?;
        let set = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| ConfigError::new("descriptor_set", "not valid base64"))?;
        Self::build(&doc, &set, &[], env, true)
    }

    /// Parses the configuration against an encoded `FileDescriptorSet` supplied separately
    /// (fetched, or read from a file by a command-line tool); an inline `descriptor_set` in
    /// `json` is ignored. `extra_keys` are further top-level keys the caller handles itself.
    /// Errors name the field; problems with the set are reported under `descriptor_set`.
    pub fn parse_with_descriptor_set(
        json: &[u8],
        set: &[u8],
        extra_keys: &[&str],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        // The one entry point every filter reads its document through: an empty document, a
        // repeated member at any depth and a non-object top level are refused here too.
        let doc = phi_guard_common::config::parse_document(json, "mask")?;
        Self::build(&doc, set, extra_keys, env, false)
    }

    /// Builds the configuration document `doc` (already read by the strict parser) against a
    /// fetched set: what [`crate::remote::RemoteMask`] does with each set that arrives.
    pub(crate) fn build_with_set(
        doc: &Value,
        set: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::build(doc, set, &[], env, false)
    }

    fn build(
        doc: &Value,
        set: &[u8],
        extra_keys: &[&str],
        env: &dyn Fn(&str) -> Option<String>,
        inspection: bool,
    ) -> Result<Self, ConfigError> {
        let top = object(doc, "")?;
        let allowed: Vec<&str> = TOP_KEYS.iter().chain(extra_keys).copied().collect();
        reject_unknown(top, &allowed, "")?;

        let descriptor =
            DescriptorSet::decode(set).map_err(|e| ConfigError::new("descriptor_set", e.0))?;

        let custom: Vec<String> = match top.get("classes") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| {
                            x.as_str()
                                .filter(|s| valid_class_name(s))
                                .map(str::to_string)
                        })
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    ConfigError::new(
                        "classes",
                        "must be a list of class names (upper-case letters, digits, _)",
                    )
                })?,
        };
        let (class_by_name, class_names) = classes(&descriptor, &custom);
        let class = |n: &str| class_by_name.get(n).copied();

        let catalog = match top.get("catalog") {
            None => Catalog::default(),
            Some(v) => Catalog::parse(v, &descriptor, &class)?,
        };
        let class_name = |c: Class| {
            class_names
                .get(&c)
                .cloned()
                .unwrap_or_else(|| c.to_string())
        };
        let resource_ids = ResourceIds::build(&descriptor, &catalog, &class_name)?;
        let plans = Plans::build(&descriptor, &catalog)
            .map_err(|e| ConfigError::new("descriptor_set", e.0))?;
        if !inspection && !plans.methods.values().any(|&m| plans.messages[m].touch) {
            // Most likely the set went through prost-types (or another decoder that drops
            // unknown fields) and lost its extensions: the filter would silently mask nothing.
            return Err(ConfigError::new(
                "descriptor_set",
                "no method returns a field with a class: none annotated with phi.v1.sensitivity \
                 and none tagged by the catalog (was the set re-encoded by a tool that drops \
                 extension options, such as prost-types?)",
            ));
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
            roles.insert(name.clone(), role_block(block, &path, &class)?);
        }
        let default = match top.get("default") {
            None => RolePolicy::strictest(),
            Some(block) => role_block(block, "default", &class)?,
        };
        let policy = Policy { roles, default };

        let token_key = token_key(top, &policy, env)?;

        let (detectors, detector_classes) = detectors(top, &class)?;
        let free_text = class("FREE_TEXT");

        let pass_through = match top.get("pass_through") {
            None => Vec::new(),
            Some(v) => pass_through(v)?,
        };
        let unknown_fields = match top.get("unknown_fields") {
            None => UnknownFields::Drop,
            Some(v) => match v.as_str() {
                Some("drop") => UnknownFields::Drop,
                Some("keep") => UnknownFields::Keep,
                _ => {
                    return Err(ConfigError::new(
                        "unknown_fields",
                        "must be \"drop\" or \"keep\"",
                    ))
                }
            },
        };

        let scans = |role: &RolePolicy| scans(&detector_classes, role);
        let quiet = policy
            .roles
            .iter()
            .map(|(name, role)| {
                let table = Quiet::new(&plans, role, free_text, scans(role));
                (name.clone(), table)
            })
            .collect();
        let quiet_default = Quiet::new(&plans, &policy.default, free_text, scans(&policy.default));

        Ok(MaskConfig {
            plans,
            policy,
            descriptor,
            catalog,
            resource_ids,
            class_names,
            detectors,
            detector_classes,
            free_text,
            token_key,
            max_message_bytes,
            pass_through,
            unknown_fields,
            quiet,
            quiet_default,
        })
    }

    /// The rewriter for one role's block, at the current time (the `year` action's age bound
    /// reads the current year).
    pub fn rewriter<'a>(&'a self, role: &'a RolePolicy) -> Rewriter<'a> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.rewriter_at(role, now)
    }

    /// The rewriter for one role's block at `now` (Unix seconds).
    pub fn rewriter_at<'a>(&'a self, role: &'a RolePolicy, now: i64) -> Rewriter<'a> {
        let needs_scan = scans(&self.detector_classes, role);
        let reveal_all = role.reveals_everything();
        // The quiet plans of this block, when it is one of this config's own (a block built
        // elsewhere gets none: every message is rewritten).
        let quiet = if std::ptr::eq(role, &self.policy.default) {
            Some(&self.quiet_default)
        } else {
            self.policy
                .roles
                .iter()
                .find(|(_, block)| std::ptr::eq(*block, role))
                .and_then(|(name, _)| self.quiet.get(name))
        };
        Rewriter {
            plans: &self.plans,
            role,
            key: self.token_key.as_ref(),
            detectors: needs_scan.then_some(&self.detectors),
            free_text: self.free_text,
            names: &self.class_names,
            drop_unknown: !reveal_all && self.unknown_fields == UnknownFields::Drop,
            reveal_all,
            now_year: crate::rewriter::year_of_unix(now),
            quiet,
        }
    }

    /// Whether `method` (`package.Service/Method`) is on the pass-through list. Methods the
    /// descriptor set describes are masked whatever the list says.
    pub fn passes_through(&self, method: &str) -> bool {
        self.plans.method(method).is_none() && self.pass_through.iter().any(|p| p.matches(method))
    }
}

/// Whether `role`'s rewriter runs the free-text detectors: some class they report is not
/// revealed.
fn scans(detector_classes: &[Class], role: &RolePolicy) -> bool {
    detector_classes
        .iter()
        .any(|&c| *role.action(c) != Action::Reveal)
}

fn valid_class_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Class names and numbers: the set's `phi.v1.Sensitivity` values, then the built-in names it
/// does not define (their own numbers when free), then the config's `classes`.
fn classes(
    set: &DescriptorSet,
    custom: &[String],
) -> (HashMap<String, Class>, BTreeMap<Class, String>) {
    let mut by_name: HashMap<String, Class> = HashMap::new();
    let mut names: BTreeMap<Class, String> = BTreeMap::new();
    for (&c, n) in &set.class_names {
        by_name.insert(n.clone(), c);
        names.insert(c, n.clone());
    }
    let mut fresh = 1000;
    let mut add = |name: &str, wanted: Option<Class>| {
        if by_name.contains_key(name) {
            return;
        }
        let c = match wanted.filter(|w| !names.contains_key(w)) {
            Some(w) => w,
            None => {
                while names.contains_key(&fresh) {
                    fresh += 1;
                }
                fresh
            }
        };
        by_name.insert(name.to_string(), c);
        names.insert(c, name.to_string());
    };
    for (c, n) in BUILTIN_CLASSES {
        add(n, Some(*c));
    }
    for n in custom {
        add(n, None);
    }
    (by_name, names)
}

fn pass_through(v: &Value) -> Result<Vec<MethodPattern>, ConfigError> {
    let list = v
        .as_array()
        .ok_or_else(|| ConfigError::new("pass_through", "must be a list of method names"))?;
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let here = format!("pass_through[{i}]");
        let m = m
            .as_str()
            .ok_or_else(|| ConfigError::new(&here, "must be a string"))?;
        let (service, method) = m.split_once('/').ok_or_else(|| {
            ConfigError::new(&here, "must be package.Service/Method or package.Service/*")
        })?;
        if service.is_empty() || method.is_empty() || method.contains('/') || service == "*" {
            return Err(ConfigError::new(
                &here,
                "must be package.Service/Method or package.Service/*",
            ));
        }
        out.push(if method == "*" {
            MethodPattern::Service(service.to_string())
        } else {
            MethodPattern::Exact(m.to_string())
        });
    }
    Ok(out)
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

/// Built-in role profiles a block can name (`"safe_harbor"`) or extend
/// (`{"extends": "safe_harbor", "CLINICAL": "remove"}`).
fn profile(
    name: &str,
    path: &str,
    classes: &dyn Fn(&str) -> Option<Class>,
) -> Result<RolePolicy, ConfigError> {
    match name {
        "safe_harbor" => Ok(RolePolicy::safe_harbor(classes)),
        _ => Err(ConfigError::new(
            path,
            "unknown profile, expected safe_harbor",
        )),
    }
}

/// A role block: class name (or `*`) → action, a profile name, or a profile with overrides.
/// A block without `*` removes unnamed classes.
fn role_block(
    v: &Value,
    path: &str,
    classes: &dyn Fn(&str) -> Option<Class>,
) -> Result<RolePolicy, ConfigError> {
    if let Value::String(name) = v {
        return profile(name, path, classes);
    }
    let obj = object(v, path)?;
    let mut policy = match obj.get("extends") {
        None => RolePolicy::strictest(),
        Some(Value::String(name)) => profile(name, &join(path, "extends"), classes)?,
        Some(_) => return Err(ConfigError::new(join(path, "extends"), "must be a string")),
    };
    for (key, action) in obj {
        if key == "extends" {
            continue;
        }
        let here = join(path, key);
        let action = parse_action(action, &here)?;
        if key == "*" {
            policy.otherwise = action;
        } else {
            let class = classes(key).ok_or_else(|| {
                ConfigError::new(
                    &here,
                    "unknown sensitivity class (not in phi.v1.Sensitivity, the built-in classes or `classes`)",
                )
            })?;
            policy.classes.insert(class, action);
        }
    }
    Ok(policy)
}

/// `"reveal" | "redact" | "token" | "remove" | "year" | "zip3" | "age"`, or an object
/// `{"action": "redact", "replacement": "..."}` / `{"action": "partial", "keep_last": N}` /
/// `{"action": "year", "max_age": N}` / `{"action": "zip3", "restricted": ["036", ...]}` /
/// `{"action": "age", "max": N}`.
fn parse_action(v: &Value, path: &str) -> Result<Action, ConfigError> {
    let simple = |name: &str| -> Result<Action, ConfigError> {
        Ok(match name {
            "reveal" => Action::Reveal,
            "redact" => Action::Redact { replacement: None },
            "token" => Action::Token,
            "remove" => Action::Remove,
            "year" => Action::Year { max_age: None },
            "zip3" => Action::Zip3 {
                restricted: default_restricted(),
            },
            "age" => Action::Age {
                max: crate::policy::SAFE_HARBOR_MAX_AGE,
            },
            "partial" => return Err(ConfigError::new(
                path,
                "partial needs an object with keep_last: {\"action\":\"partial\",\"keep_last\":4}",
            )),
            _ => {
                return Err(ConfigError::new(
                    path,
                    "unknown action, expected reveal, redact, partial, token, remove, year, zip3 or age",
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
            let small_int = |key: &str, max: u64| -> Result<Option<u64>, ConfigError> {
                match obj.get(key) {
                    None => Ok(None),
                    Some(v) => v.as_u64().filter(|&n| n <= max).map(Some).ok_or_else(|| {
                        ConfigError::new(
                            join(path, key),
                            format!("must be an integer from 0 to {max}"),
                        )
                    }),
                }
            };
            match name {
                "partial" => {
                    reject_unknown(obj, &["action", "keep_last"], path)?;
                    let keep_last = small_int("keep_last", 64)?.ok_or_else(|| {
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
                "year" => {
                    reject_unknown(obj, &["action", "max_age"], path)?;
                    Ok(Action::Year {
                        max_age: small_int("max_age", 200)?.map(|n| n as u32),
                    })
                }
                "age" => {
                    reject_unknown(obj, &["action", "max"], path)?;
                    Ok(Action::Age {
                        max: small_int("max", 200)?
                            .map_or(crate::policy::SAFE_HARBOR_MAX_AGE, |n| n as u32),
                    })
                }
                "zip3" => {
                    reject_unknown(obj, &["action", "restricted"], path)?;
                    let restricted = match obj.get("restricted") {
                        None => default_restricted(),
                        Some(v) => v
                            .as_array()
                            .and_then(|a| {
                                a.iter()
                                    .map(|z| {
                                        let z = z.as_str()?.as_bytes();
                                        (z.len() == 3 && z.iter().all(u8::is_ascii_digit))
                                            .then(|| [z[0], z[1], z[2]])
                                    })
                                    .collect::<Option<Vec<_>>>()
                            })
                            .ok_or_else(|| {
                                ConfigError::new(
                                    join(path, "restricted"),
                                    "must be a list of three-digit strings",
                                )
                            })?,
                    };
                    Ok(Action::Zip3 { restricted })
                }
                other => {
                    // The name first: a misspelled `partial` must be reported as the action,
                    // not as its `keep_last` being unexpected.
                    let action = simple(other)
                        .map_err(|e| ConfigError::new(join(path, "action"), e.reason))?;
                    reject_unknown(obj, &["action"], path)?;
                    Ok(action)
                }
            }
        }
        _ => Err(ConfigError::new(
            path,
            "must be an action name or an object",
        )),
    }
}

fn default_restricted() -> Vec<[u8; 3]> {
    RESTRICTED_ZIP3
        .iter()
        .map(|z| {
            let b = z.as_bytes();
            [b[0], b[1], b[2]]
        })
        .collect()
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

/// The built-in detectors: name, class name, pattern. Their order is the tie order.
const BUILTIN_DETECTORS: &[(&str, &str, &str)] = &[
    ("email", "EMAIL", EMAIL_PATTERN),
    ("ssn", "SSN", SSN_PATTERN),
    ("phone", "PHONE", PHONE_PATTERN),
    ("mrn", "MRN", DEFAULT_MRN_PATTERN),
];

/// `free_text`: `mrn_pattern` (the built-in `mrn` detector's pattern) and `detectors`, a list
/// of `{"name", "class", "pattern"}` (a built-in name may leave out class and pattern; a list
/// without a built-in turns it off). Without `detectors`, the four built-ins run.
fn detectors(
    top: &Map<String, Value>,
    classes: &dyn Fn(&str) -> Option<Class>,
) -> Result<(Detectors, Vec<Class>), ConfigError> {
    let mut mrn = None;
    let mut list: Option<&Vec<Value>> = None;
    if let Some(ft) = top.get("free_text") {
        let obj = object(ft, "free_text")?;
        reject_unknown(obj, &["mrn_pattern", "detectors"], "free_text")?;
        if let Some(p) = obj.get("mrn_pattern") {
            mrn = Some(
                p.as_str()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        ConfigError::new("free_text.mrn_pattern", "must be a non-empty string")
                    })?
                    .to_string(),
            );
        }
        if let Some(d) = obj.get("detectors") {
            list = Some(d.as_array().ok_or_else(|| {
                ConfigError::new("free_text.detectors", "must be a list of detectors")
            })?);
        }
    }
    // (config path of the pattern, class, pattern)
    let mut patterns: Vec<(String, Class, String)> = Vec::new();
    let builtin_pattern = |name: &str, default: &str| -> String {
        if name == "mrn" {
            mrn.clone().unwrap_or_else(|| default.to_string())
        } else {
            default.to_string()
        }
    };
    match list {
        None => {
            for (name, class, pattern) in BUILTIN_DETECTORS {
                if let Some(c) = classes(class) {
                    let at = if *name == "mrn" && mrn.is_some() {
                        "free_text.mrn_pattern".to_string()
                    } else {
                        "free_text".to_string()
                    };
                    patterns.push((at, c, builtin_pattern(name, pattern)));
                }
            }
        }
        Some(list) => {
            let mut seen = Vec::new();
            for (i, d) in list.iter().enumerate() {
                let here = format!("free_text.detectors[{i}]");
                let obj = object(d, &here)?;
                reject_unknown(obj, &["name", "class", "pattern"], &here)?;
                let name = obj
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        ConfigError::new(join(&here, "name"), "missing or not a string")
                    })?;
                if seen.contains(&name) {
                    return Err(ConfigError::new(join(&here, "name"), "duplicate detector"));
                }
                seen.push(name);
                let builtin = BUILTIN_DETECTORS.iter().find(|(n, _, _)| *n == name);
                let class_name = match (obj.get("class"), builtin) {
                    (Some(v), _) => v.as_str().ok_or_else(|| {
                        ConfigError::new(join(&here, "class"), "must be a string")
                    })?,
                    (None, Some((_, c, _))) => c,
                    (None, None) => {
                        return Err(ConfigError::new(
                            join(&here, "class"),
                            "missing (needed for a detector that is not built in)",
                        ))
                    }
                };
                let class = classes(class_name).ok_or_else(|| {
                    ConfigError::new(join(&here, "class"), "unknown sensitivity class")
                })?;
                let pattern = match (obj.get("pattern"), builtin) {
                    (Some(v), _) => v
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| {
                            ConfigError::new(join(&here, "pattern"), "must be a non-empty string")
                        })?
                        .to_string(),
                    (None, Some((n, _, p))) => builtin_pattern(n, p),
                    (None, None) => {
                        return Err(ConfigError::new(
                            join(&here, "pattern"),
                            "missing (needed for a detector that is not built in)",
                        ))
                    }
                };
                patterns.push((join(&here, "pattern"), class, pattern));
            }
        }
    }
    let pairs: Vec<(Class, String)> = patterns.iter().map(|(_, c, p)| (*c, p.clone())).collect();
    let classes = pairs.iter().map(|(c, _)| *c).collect();
    let detectors = Detectors::new(&pairs).map_err(|(i, reason)| {
        let field = patterns
            .get(i)
            .map_or("free_text", |(at, _, _)| at.as_str());
        ConfigError::new(field, format!("pattern {reason}"))
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
        // Trial finding: a misspelled action was reported as its keep_last being unknown.
        assert_eq!(
            field_of(with(
                "roles",
                json!({"nurse": {"SSN": {"action": "partail", "keep_last": 4}}})
            )),
            "roles.nurse.SSN.action"
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
        // The same through the entry point a fetched set and `phi-guard-mask apply --policy`
        // use: the set comes separately, the document is read as strictly.
        let set = phi_guard_proto::DESCRIPTOR_SET;
        let doc = br#"{"roles":{"nurse":{"SSN":"redact"},"nurse":{"SSN":"reveal"}}}"#;
        let err = MaskConfig::parse_with_descriptor_set(doc, set, &[], &|_| None).unwrap_err();
        assert_eq!(err.field, "nurse");
        assert!(err.reason.contains("twice"), "{err}");
        let err = MaskConfig::parse_with_descriptor_set(b" ", set, &[], &|_| None).unwrap_err();
        assert!(err.reason.contains("mask configuration is empty"), "{err}");
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
