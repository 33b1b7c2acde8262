//! The policy document: strict parsing and compiling, once, at configure time.
//!
//! Parsing goes through `serde_json::Value` one level at a time so every error names its full
//! path (`rules[3].principals[0]`), while each object level still refuses unknown fields.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use phi_guard_common::{ConfigError, GrpcMethod};

use crate::json::field;
use crate::principal::Principals;

/// Longest rule name; names become metric names (`phi_guard.rbac.rule.<name>.matched`).
const MAX_NAME: usize = 64;

/// HL7 v3 ActReason / PurposeOfUse code "break the glass"
/// (`http://terminology.hl7.org/CodeSystem/v3-ActReason#BTG`): emergency access beyond the
/// caller's normal privileges. A `break_glass` rule matches only callers whose purpose of use
/// is this code.
pub const BREAK_GLASS_PURPOSE: &str = "BTG";

/// A rule's `break_glass` block: emergency access, allowed only with one of these reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    /// Reason codes the policy accepts; the identity's `break_glass_reason` must be one of
    /// them exactly. Only a code from this list is ever recorded.
    pub reasons: Vec<String>,
}

/// The policy's `mode` is the one the authz contract records (`phi_guard.authz` `mode`):
/// `enforce` (denials end the RPC) or `shadow` (every request goes through; the decision
/// enforce mode would take is recorded).
pub use phi_guard_common::AuthzMode as Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// `tenant`: the identity's tenant must equal a fixed value or the value of a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenant {
    Fixed(String),
    Header(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodMatch {
    /// `*`
    Any,
    /// `pkg.Service/*`
    Service(String),
    /// `pkg.Service/Method`
    Exact(GrpcMethod),
}

impl MethodMatch {
    fn parse(s: &str, path: &str) -> Result<Self, ConfigError> {
        if s == "*" {
            return Ok(MethodMatch::Any);
        }
        let bad = || {
            ConfigError::new(
                path,
                "expected `pkg.Service/Method`, `pkg.Service/*` or `*`",
            )
        };
        if let Some(service) = s.strip_suffix("/*") {
            // Validate the service half with the same parser the request path goes through.
            GrpcMethod::from_path(&format!("/{service}/M")).ok_or_else(bad)?;
            return Ok(MethodMatch::Service(service.to_string()));
        }
        GrpcMethod::from_path(&format!("/{s}"))
            .map(MethodMatch::Exact)
            .ok_or_else(bad)
    }

    pub(crate) fn matches(&self, m: &GrpcMethod) -> bool {
        match self {
            MethodMatch::Any => true,
            MethodMatch::Service(s) => *s == m.service,
            MethodMatch::Exact(e) => e == m,
        }
    }
}

/// One compiled rule. A condition that is `None` does not restrict.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    /// The effective role this rule assigns, overriding the caller's own roles.
    pub role: Option<String>,
    pub(crate) principals: Option<Principals>,
    pub(crate) roles: Option<Vec<String>>,
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) tenant: Option<Tenant>,
    pub(crate) purpose_of_use: Option<Vec<String>>,
    pub(crate) methods: Option<Vec<MethodMatch>>,
    /// Lower-case header name and the exact value it must carry; all must hold.
    pub(crate) headers: Vec<(String, String)>,
    /// Emergency access: the rule matches only purpose of use `BTG`, needs a listed reason.
    pub break_glass: Option<BreakGlass>,
}

impl Rule {
    /// True when any condition reads the verified end-user identity, so the rule can only
    /// match a request that carries one.
    pub fn needs_end_user(&self) -> bool {
        self.roles.is_some()
            || self.scopes.is_some()
            || self.tenant.is_some()
            || self.purpose_of_use.is_some()
            || self.break_glass.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub version: String,
    pub mode: Mode,
    pub rules: Vec<Rule>,
    /// IdP role name → phi-guard role, consulted in the user's role order.
    pub(crate) role_map: BTreeMap<String, String>,
    /// Roles the policy knows: role_map values, rules' `role` and `roles` entries.
    pub(crate) known_roles: BTreeSet<String>,
    /// Every request header some rule reads, so the shell fetches only those.
    pub(crate) header_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Value,
    #[serde(default)]
    mode: Option<Value>,
    #[serde(default)]
    role_map: Option<Value>,
    rules: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Value,
    action: Value,
    #[serde(default)]
    role: Option<Value>,
    #[serde(default)]
    principals: Option<Value>,
    #[serde(default)]
    roles: Option<Value>,
    #[serde(default)]
    scopes: Option<Value>,
    #[serde(default)]
    tenant: Option<Value>,
    #[serde(default)]
    purpose_of_use: Option<Value>,
    #[serde(default)]
    methods: Option<Value>,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default)]
    break_glass: Option<Value>,
}

impl Policy {
    /// Parses and compiles the policy JSON (the Envoy `configuration` / Istio `pluginConfig`).
    pub fn parse(json: &[u8]) -> Result<Self, ConfigError> {
        // The one config parser: an empty document, a top level other than an object and a
        // repeated member at any depth (which could hide a rule) are refused.
        let doc: Value = phi_guard_common::config::parse_document(json, "rbac policy")?;
        let raw: RawPolicy = field(doc, "")?;
        let version: String = field(raw.version, "version")?;
        if version.trim().is_empty() {
            return Err(ConfigError::new("version", "must not be empty"));
        }
        let mode = match raw.mode {
            Some(v) => field(v, "mode")?,
            None => Mode::Enforce,
        };
        let role_map: BTreeMap<String, String> = match raw.role_map {
            Some(v) => field(v, "role_map")?,
            None => BTreeMap::new(),
        };
        for (from, to) in &role_map {
            if from.is_empty() {
                return Err(ConfigError::new("role_map", "keys must not be empty"));
            }
            check_role(to).map_err(|r| ConfigError::new(format!("role_map.{from}"), r))?;
        }
        let raw_rules: Vec<Value> = field(raw.rules, "rules")?;
        let mut rules = Vec::with_capacity(raw_rules.len());
        let mut names = BTreeSet::new();
        for (i, v) in raw_rules.into_iter().enumerate() {
            let path = format!("rules[{i}]");
            let rule = compile_rule(v, &path)?;
            if !names.insert(rule.name.clone()) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    "duplicate rule name (names key the per-rule metrics)",
                ));
            }
            rules.push(rule);
        }
        let mut known_roles: BTreeSet<String> = role_map.values().cloned().collect();
        let mut header_names = BTreeSet::new();
        for rule in &rules {
            known_roles.extend(rule.role.iter().cloned());
            known_roles.extend(rule.roles.iter().flatten().cloned());
            header_names.extend(rule.headers.iter().map(|(k, _)| k.clone()));
            if let Some(Tenant::Header(h)) = &rule.tenant {
                header_names.insert(h.clone());
            }
        }
        Ok(Policy {
            version,
            mode,
            rules,
            role_map,
            known_roles,
            header_names: header_names.into_iter().collect(),
        })
    }

    /// The request headers the policy reads (lower-case).
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// The entries of `headers` (a request's whole header list, in arrival order) that the
    /// policy reads, names lower-cased, **every** entry kept: a header sent twice appears twice,
    /// and [`crate::evaluate`] refuses it. The filter and the checker both go through here.
    pub fn select_headers<'h>(
        &self,
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) -> Vec<(String, String)> {
        if self.header_names.is_empty() {
            return Vec::new();
        }
        headers
            .into_iter()
            .filter_map(|(name, value)| {
                let name = name.to_ascii_lowercase();
                self.header_names
                    .contains(&name)
                    .then(|| (name, value.to_string()))
            })
            .collect()
    }
}

fn compile_rule(v: Value, path: &str) -> Result<Rule, ConfigError> {
    if !v.is_object() {
        return Err(ConfigError::new(path, "expected a rule object"));
    }
    let raw: RawRule = field(v, path)?;
    let at = |f: &str| format!("{path}.{f}");
    let name: String = field(raw.name, &at("name"))?;
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(ConfigError::new(
            at("name"),
            "must be 1 to 64 letters, digits, `-` or `_` (it becomes part of a metric name)",
        ));
    }
    let action: Action = field(raw.action, &at("action"))?;
    let role = match raw.role {
        Some(v) => {
            let role: String = field(v, &at("role"))?;
            check_role(&role).map_err(|r| ConfigError::new(at("role"), r))?;
            Some(role)
        }
        None => None,
    };
    let principals = match raw.principals {
        Some(v) => {
            let list: Vec<Value> = field(v, &at("principals"))?;
            Some(Principals::compile(&list, &at("principals"))?)
        }
        None => None,
    };
    let methods = match raw.methods {
        Some(v) => {
            let list = string_list(v, &at("methods"))?;
            let parsed = list
                .iter()
                .enumerate()
                .map(|(i, m)| MethodMatch::parse(m, &format!("{}[{i}]", at("methods"))))
                .collect::<Result<Vec<_>, _>>()?;
            Some(parsed)
        }
        None => None,
    };
    let tenant = match raw.tenant {
        None => None,
        Some(Value::String(t)) if !t.is_empty() => Some(Tenant::Fixed(t)),
        Some(Value::Object(map)) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct FromHeader {
                header: String,
            }
            let h: FromHeader = field(Value::Object(map), &at("tenant"))?;
            let name = check_header_name(&h.header)
                .map_err(|r| ConfigError::new(at("tenant.header"), r))?;
            Some(Tenant::Header(name))
        }
        Some(_) => {
            return Err(ConfigError::new(
                at("tenant"),
                "expected a non-empty string or {\"header\": \"name\"}",
            ))
        }
    };
    let headers = match raw.headers {
        None => Vec::new(),
        Some(Value::Object(map)) if !map.is_empty() => {
            let mut out = Vec::with_capacity(map.len());
            for (name, value) in map {
                let hpath = format!("{}.{name}", at("headers"));
                let lower = check_header_name(&name).map_err(|r| ConfigError::new(&hpath, r))?;
                if out.iter().any(|(k, _)| *k == lower) {
                    return Err(ConfigError::new(hpath, "header listed twice"));
                }
                let value: String = field(value, &hpath)?;
                if value.contains(',') {
                    // A request value with a comma is a list and always refused
                    // (`repeated_header`), so this condition could never hold.
                    return Err(ConfigError::new(
                        hpath,
                        "must not contain `,` (HTTP reads it as a list separator)",
                    ));
                }
                out.push((lower, value));
            }
            out
        }
        Some(_) => {
            return Err(ConfigError::new(
                at("headers"),
                "expected a non-empty object of header name to exact value",
            ))
        }
    };
    let break_glass = match raw.break_glass {
        None => None,
        Some(v) => Some(compile_break_glass(
            v,
            &at("break_glass"),
            action,
            role.is_some(),
            raw.purpose_of_use.is_some(),
        )?),
    };
    Ok(Rule {
        name,
        action,
        role,
        break_glass,
        principals,
        roles: raw
            .roles
            .map(|v| string_list(v, &at("roles")))
            .transpose()?,
        scopes: raw
            .scopes
            .map(|v| string_list(v, &at("scopes")))
            .transpose()?,
        tenant,
        purpose_of_use: raw
            .purpose_of_use
            .map(|v| string_list(v, &at("purpose_of_use")))
            .transpose()?,
        methods,
        headers,
    })
}

/// `break_glass: {"reasons": [...]}`. Refused unless the rule is an `allow` rule that pins the
/// effective `role` (the role break-glass grants is the policy's, not the token's) and has no
/// `purpose_of_use` of its own (break-glass rules match purpose `BTG` only).
fn compile_break_glass(
    v: Value,
    path: &str,
    action: Action,
    has_role: bool,
    has_purpose: bool,
) -> Result<BreakGlass, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        reasons: Value,
    }
    if !v.is_object() {
        return Err(ConfigError::new(path, "expected {\"reasons\": [codes]}"));
    }
    let raw: Raw = field(v, path)?;
    let reasons_at = format!("{path}.reasons");
    let reasons = string_list(raw.reasons, &reasons_at)?;
    for (i, code) in reasons.iter().enumerate() {
        // Codes reach audit events and logs: plain identifiers only, never free text.
        check_role(code).map_err(|_| {
            ConfigError::new(
                format!("{reasons_at}[{i}]"),
                "reason codes must be 1 to 64 letters, digits, `-`, `_` or `.`",
            )
        })?;
        if reasons[..i].contains(code) {
            return Err(ConfigError::new(
                format!("{reasons_at}[{i}]"),
                "listed twice",
            ));
        }
    }
    if action != Action::Allow {
        return Err(ConfigError::new(
            path,
            "only an `allow` rule can break the glass",
        ));
    }
    if !has_role {
        return Err(ConfigError::new(
            path,
            "a break-glass rule must set `role`: the role emergency access grants is fixed by the policy",
        ));
    }
    if has_purpose {
        return Err(ConfigError::new(
            path,
            "a break-glass rule matches purpose of use `BTG` only; remove `purpose_of_use`",
        ));
    }
    Ok(BreakGlass { reasons })
}

/// A non-empty list of non-empty strings. An empty list is refused rather than read as
/// "matches nothing" or "matches anything": omitting the field is the way to not restrict.
fn string_list(v: Value, path: &str) -> Result<Vec<String>, ConfigError> {
    let list: Vec<String> = field(v, path)?;
    if list.is_empty() {
        return Err(ConfigError::new(
            path,
            "must not be empty; omit the field to not restrict",
        ));
    }
    if let Some(i) = list.iter().position(String::is_empty) {
        return Err(ConfigError::new(
            format!("{path}[{i}]"),
            "must not be empty",
        ));
    }
    Ok(list)
}

/// Roles travel to the mask filter and into audit events: keep them plain identifiers.
fn check_role(role: &str) -> Result<(), &'static str> {
    let ok = !role.is_empty()
        && role.len() <= MAX_NAME
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("role must be 1 to 64 letters, digits, `-`, `_` or `.`")
    }
}

/// Header names a rule may read. Refused, and why:
/// - `x-phi-guard-*`: phi-guard strips these before evaluating (they are spoofing attempts),
///   so a condition on one could never hold as written.
/// - `authorization` / `proxy-authorization`: they carry bearer credentials. The user is known
///   only from the jwt filter's verified claims; matching the raw header would put a
///   credential in the policy and bypass verification.
/// - pseudo-headers (`:authority`, `:path`, ...): `:authority` is client-chosen and arrives in
///   many equivalent spellings (case, port, trailing dot), so an exact match is either
///   bypassable or brittle; host routing belongs to Envoy's virtual hosts. `:path` is covered,
///   normalised, by `methods`; `:method` is always POST for gRPC.
fn check_header_name(name: &str) -> Result<String, &'static str> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty()
        || !lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
    {
        return Err("not a valid header name");
    }
    if lower.starts_with(':') {
        return Err("pseudo-headers are refused: use `methods` for the path; `:authority` is client-chosen and not an identity");
    }
    if lower == "authorization" || lower == "proxy-authorization" {
        return Err("credential headers are refused: conditions on the user go through the verified identity");
    }
    if phi_guard_common::state::is_reserved_header(&lower) {
        return Err("x-phi-guard-* headers are stripped before evaluation");
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> ConfigError {
        Policy::parse(v.to_string().as_bytes()).unwrap_err()
    }

    fn rule(extra: Value) -> Value {
        let mut r = json!({"name": "r", "action": "allow"});
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        r
    }

    fn with_rules(rules: Vec<Value>) -> Value {
        json!({"version": "1", "rules": rules})
    }

    #[test]
    fn parses_a_complete_policy() {
        let p = Policy::parse(
            json!({
                "version": "2026-11-01",
                "mode": "shadow",
                "role_map": {"billing_clerk": "billing"},
                "rules": [rule(json!({
                    "principals": ["spiffe://td/ns/a/sa/b", {"prefix": "spiffe://td/ns/c/"}],
                    "roles": ["nurse"], "scopes": ["patient.read"], "tenant": {"header": "X-Tenant-Id"},
                    "purpose_of_use": ["TREAT"], "methods": ["a.B/C", "a.B/*", "*"],
                    "headers": {"x-client": "ehr"}, "role": "nurse"
                }))]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Shadow);
        assert_eq!(p.version, "2026-11-01");
        assert!(p.rules[0].needs_end_user());
        assert_eq!(p.header_names(), ["x-client", "x-tenant-id"]);
        assert!(p.known_roles.contains("billing") && p.known_roles.contains("nurse"));
    }

    #[test]
    fn mode_defaults_to_enforce() {
        let p = Policy::parse(br#"{"version":"1","rules":[]}"#).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"version": "1", "rules": [], "extra": 1}), "extra"),
            (json!({"rules": []}), "version"),
            (json!({"version": "", "rules": []}), "version"),
            (json!({"version": 3, "rules": []}), "version"),
            (
                json!({"version": "1", "mode": "audit", "rules": []}),
                "mode",
            ),
            (json!({"version": "1", "rules": {}}), "rules"),
            (
                json!({"version": "1", "role_map": {"a": "b c"}, "rules": []}),
                "role_map.a",
            ),
            (with_rules(vec![json!("x")]), "rules[0]"),
            (with_rules(vec![json!({"name": "r"})]), "rules[0].action"),
            (with_rules(vec![rule(json!({"rol": "x"}))]), "rules[0].rol"),
            (
                with_rules(vec![rule(json!({"action": "permit"}))]),
                "rules[0].action",
            ),
            (
                with_rules(vec![rule(json!({"name": "a.b"}))]),
                "rules[0].name",
            ),
            (
                with_rules(vec![rule(json!({})), rule(json!({}))]),
                "rules[1].name",
            ),
            (
                with_rules(vec![
                    rule(json!({})),
                    rule(json!({"name": "s", "principals": ["spiffe://td", "nope"]})),
                ]),
                "rules[1].principals[1]",
            ),
            (
                with_rules(vec![rule(json!({"methods": ["a.B/C", "/a.B/C"]}))]),
                "rules[0].methods[1]",
            ),
            (
                with_rules(vec![rule(json!({"methods": ["a.B/C/D"]}))]),
                "rules[0].methods[0]",
            ),
            (
                with_rules(vec![rule(json!({"roles": []}))]),
                "rules[0].roles",
            ),
            (
                with_rules(vec![rule(json!({"scopes": ["a", ""]}))]),
                "rules[0].scopes[1]",
            ),
            (
                with_rules(vec![rule(json!({"scopes": "a b"}))]),
                "rules[0].scopes",
            ),
            (
                with_rules(vec![rule(json!({"tenant": {"header": "authorization"}}))]),
                "rules[0].tenant.header",
            ),
            (
                with_rules(vec![rule(json!({"tenant": {"hdr": "x"}}))]),
                "rules[0].tenant.hdr",
            ),
            (
                with_rules(vec![rule(json!({"tenant": 5}))]),
                "rules[0].tenant",
            ),
            (
                with_rules(vec![rule(json!({"headers": {":authority": "x"}}))]),
                "rules[0].headers.:authority",
            ),
            (
                with_rules(vec![rule(json!({"headers": {"Authorization": "x"}}))]),
                "rules[0].headers.Authorization",
            ),
            (
                with_rules(vec![rule(json!({"headers": {"x-phi-guard-role": "x"}}))]),
                "rules[0].headers.x-phi-guard-role",
            ),
            (
                with_rules(vec![rule(json!({"headers": {"x-a": 1}}))]),
                "rules[0].headers.x-a",
            ),
            (
                with_rules(vec![rule(json!({"headers": {"X-A": "1", "x-a": "2"}}))]),
                "rules[0].headers.x-a",
            ),
            (
                with_rules(vec![rule(json!({"headers": {"x-app": "a,b"}}))]),
                "rules[0].headers.x-app",
            ),
            (with_rules(vec![rule(json!({"role": ""}))]), "rules[0].role"),
            (
                with_rules(vec![rule(json!({"break_glass": {"reasons": ["a"]}}))]),
                "rules[0].break_glass",
            ),
            (
                with_rules(vec![rule(
                    json!({"role": "nurse", "break_glass": {"reasons": ["a"]}, "purpose_of_use": ["BTG"]}),
                )]),
                "rules[0].break_glass",
            ),
            (
                with_rules(vec![rule(
                    json!({"role": "nurse", "break_glass": {"reasons": []}}),
                )]),
                "rules[0].break_glass.reasons",
            ),
            (
                with_rules(vec![rule(
                    json!({"role": "nurse", "break_glass": {"reasons": ["ok", "free text"]}}),
                )]),
                "rules[0].break_glass.reasons[1]",
            ),
            (
                with_rules(vec![rule(
                    json!({"role": "nurse", "break_glass": {"reasons": ["a", "a"]}}),
                )]),
                "rules[0].break_glass.reasons[1]",
            ),
            (
                with_rules(vec![rule(
                    json!({"role": "nurse", "break_glass": {"reason": ["a"]}}),
                )]),
                "rules[0].break_glass.reason",
            ),
            (
                with_rules(vec![rule(json!({"role": "nurse", "break_glass": true}))]),
                "rules[0].break_glass",
            ),
            (
                with_rules(vec![
                    json!({"name": "d", "action": "deny", "role": "x", "break_glass": {"reasons": ["a"]}}),
                ]),
                "rules[0].break_glass",
            ),
        ];
        for (doc, field) in cases {
            let e = err(doc.clone());
            assert_eq!(e.field, field, "{doc} -> {e}");
            assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
        }
    }

    #[test]
    fn syntax_errors_and_empty_config() {
        assert!(Policy::parse(b"  ")
            .unwrap_err()
            .reason
            .contains("rbac policy configuration is empty"));
        assert!(Policy::parse(b"{").is_err());
        assert!(Policy::parse(b"[]").is_err());
    }

    #[test]
    fn repeated_members_are_refused() {
        // serde_json keeps the last `action`: this deny rule would silently become an allow.
        let doc = br#"{"version":"v1","rules":[{"name":"research-never-deletes","action":"deny",
            "principals":["spiffe://phi-guard.test/ns/research/sa/analytics"],
            "methods":["health.v1.PatientService/DeletePatient"],"action":"allow"}]}"#;
        let e = Policy::parse(doc).unwrap_err();
        assert_eq!(e.field, "action");
        assert!(e.reason.contains("twice"), "{e}");
        let doc = br#"{"version":"v1","rules":[],"rules":[{"name":"all","action":"allow",
            "principals":[{"any_authenticated":true}],"methods":["*"]}]}"#;
        assert_eq!(Policy::parse(doc).unwrap_err().field, "rules");
        let doc = br#"{"version":"v1","role_map":{"a":"x","a":"admin"},"rules":[]}"#;
        assert_eq!(Policy::parse(doc).unwrap_err().field, "a");
    }

    #[test]
    fn never_panics_on_truncated_or_mangled_input() {
        let demo = include_bytes!("../policy.demo.json");
        for end in 0..demo.len() {
            let _ = Policy::parse(&demo[..end]);
            let mut mangled = demo.to_vec();
            mangled[end] = b'*';
            let _ = Policy::parse(&mangled);
        }
        assert!(Policy::parse(demo).is_ok());
    }

    #[test]
    fn error_messages_do_not_echo_values() {
        let e = err(with_rules(vec![rule(
            json!({"role": ["Bearer eyJsecret"]}),
        )]));
        assert!(!e.to_string().contains("eyJsecret"), "{e}");
        let e = err(with_rules(vec![rule(json!({"action": "eyJsecret"}))]));
        assert!(!e.to_string().contains("eyJsecret"), "{e}");
    }
}
