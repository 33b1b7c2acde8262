//! The filter's configuration: the JSON in Envoy's `configuration` field (and Istio's
//! `pluginConfig`, which Istio hands over as the same JSON). See README.md for the reference.
//!
//! Parsing is strict: unknown fields, duplicate members and out-of-range values are refused
//! with a [`ConfigError`] naming the field path (e.g. `providers[0].audiences`), and the
//! plugin does not start. Each nesting level is parsed separately so the path is complete.
//! Error reasons never echo a value (serde's "invalid type" messages quote it, and a secret
//! pasted into the wrong field must not reach Envoy's log).

use phi_guard_common::fetch::{RemoteDefaults, RemoteSource};
use phi_guard_common::ConfigError;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::alg::Alg;
pub use crate::extractor::TokenSource;
use crate::jwks::KeySet;
pub use crate::matcher::{MethodPattern, Rule};
pub use crate::requirement::Requirement;
use crate::verify::VerifyKey;

pub const DEFAULT_CLOCK_SKEW_S: u64 = 60;
pub const MAX_CLOCK_SKEW_S: u64 = 3600;
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
pub const DEFAULT_CACHE_MAX_ENTRIES: usize = 1024;
pub const DEFAULT_REFRESH_INTERVAL_S: u64 = 600;
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_MIN_REFETCH_INTERVAL_S: u64 = 30;
pub const DEFAULT_RETRY_INTERVAL_S: u64 = 10;
/// The `typ` values a provider accepts when its config names none: RFC 7519 §5.1's `JWT` and
/// RFC 9068's `at+jwt` (compared as RFC 7515 §4.1.9 says: case-insensitively, `application/`
/// optional). A token without `typ` is accepted unless `typ_required` is set.
pub const DEFAULT_TYP: [&str; 2] = ["jwt", "at+jwt"];
/// Default size of the shared replay cache, in `jti`s (all workers together).
pub const DEFAULT_REPLAY_MAX_ENTRIES: usize = 8192;
/// Deepest nesting of `any_of` / `all_of` in one requirement.
pub const MAX_REQUIREMENT_DEPTH: usize = 4;
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
pub use phi_guard_common::config::MIN_HS256_SECRET_BYTES;
pub use phi_guard_common::config::MIN_REPLAY_KEY_BYTES;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    /// Requirement for a method no rule matches; `None` denies (`no_rule`).
    pub default: Option<Requirement>,
    pub max_token_bytes: usize,
    /// Verified-token cache size; 0 disables the cache.
    pub cache_max_entries: usize,
    /// The shared `jti` replay cache; set iff a provider or a rule turns replay protection on.
    pub replay: Option<ReplayConfig>,
}

/// The `replay` block: how `jti`s are remembered across Envoy workers.
#[derive(Clone)]
pub struct ReplayConfig {
    /// HMAC-SHA256 key for the shared-data tag of a `jti` (the `jti` itself is never stored).
    pub key: Vec<u8>,
    pub max_entries: usize,
}

impl std::fmt::Debug for ReplayConfig {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplayConfig {{ max_entries: {} }}", self.max_entries)
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub algorithms: Vec<Alg>,
    pub clock_skew_s: u64,
    pub max_lifetime_s: Option<u64>,
    pub token_source: TokenSource,
    pub forward: bool,
    pub require_cert_binding: bool,
    pub claims: ClaimMapping,
    /// The HS256 key, read from the VM environment at configure time.
    pub hs256_key: Option<VerifyKey>,
    /// Accepted JOSE `typ` values, normalised by [`normalize_typ`].
    pub typ: Vec<String>,
    /// Refuse a token without `typ`.
    pub typ_required: bool,
    /// Refuse a second use of a token's `jti` (and a token without one) for this provider.
    pub replay_protection: bool,
}

/// RFC 7515 §4.1.9: `typ` is a media type, compared case-insensitively, and `application/`
/// may be left out (so `JWT`, `jwt` and `application/jwt` are one value).
pub fn normalize_typ(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => lower,
    }
}

#[derive(Debug, Clone)]
pub enum JwksSource {
    /// Only HS256 is allowed: no key set needed.
    None,
    Inline(KeySet),
    Remote(RemoteJwks),
}

/// A remote JWKS: the shared remote-source block (`phi_guard_common::fetch`), with jwt's
/// defaults.
pub type RemoteJwks = RemoteSource;

/// jwt's defaults for the optional members of `jwks.remote`.
pub const REMOTE_DEFAULTS: RemoteDefaults = RemoteDefaults {
    refresh_interval_s: DEFAULT_REFRESH_INTERVAL_S,
    timeout_ms: DEFAULT_TIMEOUT_MS,
    min_refetch_interval_s: Some(DEFAULT_MIN_REFETCH_INTERVAL_S),
    retry_interval_s: DEFAULT_RETRY_INTERVAL_S,
};

/// Which claims feed the identity. Each field lists claim names; the first one present wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimMapping {
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub tenant: Vec<String>,
    pub purpose_of_use: Vec<String>,
    pub break_glass_reason: Vec<String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
        ClaimMapping {
            roles: names(&["roles"]),
            scopes: names(&["scope", "scp"]),
            tenant: names(&["tenant"]),
            purpose_of_use: names(&["purpose_of_use"]),
            break_glass_reason: names(&["break_glass_reason"]),
        }
    }
}

impl Config {
    /// Parses and validates the configuration. `env` reads the VM's environment (Envoy
    /// `vm_config.environment_variables`, Istio `vmConfig.env`), where HS256 secrets live.
    pub fn parse(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        // The one config parser: empty documents and repeated members (at any depth, inline
        // JWKS included) are refused as in every phi-guard filter.
        let doc = phi_guard_common::config::parse_document(bytes, "jwt")?;
        let raw: RawConfig = from_value_at(doc, "")?;

        if raw.providers.is_empty() {
            return Err(ConfigError::new(
                "providers",
                "at least one provider is required",
            ));
        }
        let mut providers = Vec::with_capacity(raw.providers.len());
        for (i, value) in raw.providers.into_iter().enumerate() {
            let path = format!("providers[{i}]");
            let provider = parse_provider(value, &path, env)?;
            if providers.iter().any(|p: &Provider| p.name == provider.name) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    "duplicate provider name",
                ));
            }
            providers.push(provider);
        }

        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
        for (i, value) in raw.rules.into_iter().enumerate() {
            let path = format!("rules[{i}]");
            let raw_rule: RawRule = from_value_at(value, &path)?;
            let pattern = MethodPattern::parse(&raw_rule.r#match).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.match"),
                    "expected `pkg.Service/Method`, `pkg.Service/*` or `*`",
                )
            })?;
            if rules.iter().any(|r| r.pattern == pattern) {
                return Err(ConfigError::new(
                    format!("{path}.match"),
                    "duplicate pattern",
                ));
            }
            let requires = parse_requirement(
                raw_rule.requires,
                &format!("{path}.requires"),
                &providers,
                0,
            )?;
            if raw_rule.replay_protection && requires == Requirement::AllowMissing {
                return Err(ConfigError::new(
                    format!("{path}.replay_protection"),
                    "needs a requirement that demands a token (not `allow_missing`)",
                ));
            }
            rules.push(Rule {
                pattern,
                requires,
                replay_protection: raw_rule.replay_protection,
            });
        }
        let default = match raw.default {
            None => None,
            Some(value) => {
                if rules.iter().any(|r| r.pattern == MethodPattern::Any) {
                    return Err(ConfigError::new(
                        "default",
                        "a `*` rule and `default` mean the same; keep one",
                    ));
                }
                Some(parse_requirement(value, "default", &providers, 0)?)
            }
        };

        let max_token_bytes = raw.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
        if !(256..=65536).contains(&max_token_bytes) {
            return Err(ConfigError::new(
                "max_token_bytes",
                "must be between 256 and 65536",
            ));
        }
        let cache: RawCache = match raw.cache {
            None => RawCache::default(),
            Some(value) => from_value_at(value, "cache")?,
        };
        let cache_max_entries = cache.max_entries.unwrap_or(DEFAULT_CACHE_MAX_ENTRIES);
        if cache_max_entries > 1_000_000 {
            return Err(ConfigError::new(
                "cache.max_entries",
                "must be at most 1000000",
            ));
        }

        let replay_wanted = providers.iter().any(|p| p.replay_protection)
            || rules.iter().any(|r| r.replay_protection);
        let replay = match (raw.replay, replay_wanted) {
            (None, false) => None,
            (None, true) => {
                return Err(ConfigError::new(
                    "replay",
                    "replay protection is on: set `replay.key_env`",
                ))
            }
            (Some(_), false) => {
                return Err(ConfigError::new(
                    "replay",
                    "set only when a provider or a rule turns `replay_protection` on",
                ))
            }
            (Some(value), true) => Some(parse_replay(value, env)?),
        };

        Ok(Config {
            providers,
            rules,
            default,
            max_token_bytes,
            cache_max_entries,
            replay,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    providers: Vec<Value>,
    #[serde(default)]
    rules: Vec<Value>,
    default: Option<Value>,
    max_token_bytes: Option<usize>,
    cache: Option<Value>,
    replay: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplay {
    key_env: String,
    max_entries: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    max_entries: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    r#match: String,
    requires: Value,
    #[serde(default)]
    replay_protection: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    provider: Option<String>,
    any_of: Option<Vec<Value>>,
    all_of: Option<Vec<Value>>,
    allow_missing: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    jwks: Option<Value>,
    algorithms: Vec<String>,
    clock_skew_s: Option<u64>,
    max_lifetime_s: Option<u64>,
    token_header: Option<String>,
    #[serde(default)]
    forward: bool,
    #[serde(default)]
    require_cert_binding: bool,
    claims: Option<Value>,
    hs256_secret_env: Option<String>,
    typ: Option<Vec<String>>,
    #[serde(default)]
    typ_required: bool,
    #[serde(default)]
    replay_protection: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    inline: Option<Value>,
    remote: Option<Value>,
}

/// Deserialises `value` as `T`, naming `path` (plus the member at fault) on failure.
fn from_value_at<T: DeserializeOwned>(value: Value, path: &str) -> Result<T, ConfigError> {
    phi_guard_common::config::from_json_value(&value).map_err(|err| {
        if path.is_empty() {
            err
        } else {
            err.within(path)
        }
    })
}

fn non_empty(value: &str, field: String) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    Ok(())
}

fn parse_provider(
    value: Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Provider, ConfigError> {
    let raw: RawProvider = from_value_at(value, path)?;
    let field = |name: &str| format!("{path}.{name}");
    non_empty(&raw.name, field("name"))?;
    if !raw
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ConfigError::new(
            field("name"),
            "use letters, digits, '-', '_' or '.'",
        ));
    }
    non_empty(&raw.issuer, field("issuer"))?;
    if raw.audiences.is_empty() {
        return Err(ConfigError::new(
            field("audiences"),
            "at least one audience is required",
        ));
    }
    for (i, aud) in raw.audiences.iter().enumerate() {
        non_empty(aud, format!("{path}.audiences[{i}]"))?;
    }

    if raw.algorithms.is_empty() {
        return Err(ConfigError::new(
            field("algorithms"),
            "at least one algorithm is required",
        ));
    }
    let mut algorithms = Vec::new();
    for (i, name) in raw.algorithms.iter().enumerate() {
        let alg = Alg::from_name(name).ok_or_else(|| {
            ConfigError::new(
                format!("{path}.algorithms[{i}]"),
                "unsupported; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA or HS256",
            )
        })?;
        if algorithms.contains(&alg) {
            return Err(ConfigError::new(
                format!("{path}.algorithms[{i}]"),
                "listed twice",
            ));
        }
        algorithms.push(alg);
    }
    let asymmetric: Vec<Alg> = algorithms
        .iter()
        .copied()
        .filter(|a| *a != Alg::HS256)
        .collect();

    let hs256_key = match (&raw.hs256_secret_env, algorithms.contains(&Alg::HS256)) {
        (None, false) => None,
        (None, true) => {
            return Err(ConfigError::new(
                field("hs256_secret_env"),
                "HS256 needs a shared secret from a VM environment variable",
            ))
        }
        (Some(_), false) => {
            return Err(ConfigError::new(
                field("hs256_secret_env"),
                "set only when `algorithms` lists HS256",
            ))
        }
        (Some(var), true) => {
            non_empty(var, field("hs256_secret_env"))?;
            let secret = env(var).unwrap_or_default();
            if secret.is_empty() {
                return Err(ConfigError::new(
                    field("hs256_secret_env"),
                    "the VM environment variable it names is not set",
                ));
            }
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(ConfigError::new(
                    field("hs256_secret_env"),
                    format!("the secret must be at least {MIN_HS256_SECRET_BYTES} bytes"),
                ));
            }
            Some(VerifyKey::hs256(secret.as_bytes()))
        }
    };

    let jwks = match raw.jwks {
        None if asymmetric.is_empty() => JwksSource::None,
        None => {
            return Err(ConfigError::new(
                field("jwks"),
                "required for asymmetric algorithms: `inline` or `remote`",
            ))
        }
        Some(_) if asymmetric.is_empty() => {
            return Err(ConfigError::new(
                field("jwks"),
                "HS256 keys never come from a JWKS",
            ))
        }
        Some(value) => parse_jwks_source(value, &field("jwks"), &asymmetric)?,
    };

    let clock_skew_s = raw.clock_skew_s.unwrap_or(DEFAULT_CLOCK_SKEW_S);
    if clock_skew_s > MAX_CLOCK_SKEW_S {
        return Err(ConfigError::new(
            field("clock_skew_s"),
            "must be at most 3600",
        ));
    }
    if raw.max_lifetime_s == Some(0) {
        return Err(ConfigError::new(
            field("max_lifetime_s"),
            "must be positive",
        ));
    }

    let token_source = match raw.token_header {
        None => TokenSource::AuthorizationBearer,
        Some(name) => {
            let valid = !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid || name == "authorization" {
                return Err(ConfigError::new(
                    field("token_header"),
                    "a lower-case header name other than `authorization` (omit for `authorization: Bearer`)",
                ));
            }
            TokenSource::Header(name)
        }
    };

    let claims: ClaimMapping = match raw.claims {
        None => ClaimMapping::default(),
        Some(value) => from_value_at(value, &field("claims"))?,
    };
    for (name, list) in [
        ("roles", &claims.roles),
        ("scopes", &claims.scopes),
        ("tenant", &claims.tenant),
        ("purpose_of_use", &claims.purpose_of_use),
        ("break_glass_reason", &claims.break_glass_reason),
    ] {
        for (i, claim) in list.iter().enumerate() {
            non_empty(claim, format!("{path}.claims.{name}[{i}]"))?;
        }
    }

    let typ: Vec<String> = match raw.typ {
        None => DEFAULT_TYP.iter().map(|t| t.to_string()).collect(),
        Some(list) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    field("typ"),
                    "at least one value (omit for the default `JWT`, `at+jwt`)",
                ));
            }
            let mut out: Vec<String> = Vec::new();
            for (i, t) in list.iter().enumerate() {
                let t = normalize_typ(t);
                // A media type's subtype: RFC 6838 §4.2 restricted-name characters.
                let valid = !t.is_empty()
                    && t.len() <= 127
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
                if !valid {
                    return Err(ConfigError::new(
                        format!("{path}.typ[{i}]"),
                        "a media type such as `JWT` or `at+jwt`",
                    ));
                }
                if out.contains(&t) {
                    return Err(ConfigError::new(format!("{path}.typ[{i}]"), "listed twice"));
                }
                out.push(t);
            }
            out
        }
    };

    Ok(Provider {
        name: raw.name,
        issuer: raw.issuer,
        audiences: raw.audiences,
        jwks,
        algorithms,
        clock_skew_s,
        max_lifetime_s: raw.max_lifetime_s,
        token_source,
        forward: raw.forward,
        require_cert_binding: raw.require_cert_binding,
        claims,
        hs256_key,
        typ,
        typ_required: raw.typ_required,
        replay_protection: raw.replay_protection,
    })
}

fn parse_replay(
    value: Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ReplayConfig, ConfigError> {
    let raw: RawReplay = from_value_at(value, "replay")?;
    non_empty(&raw.key_env, "replay.key_env".into())?;
    let key = env(&raw.key_env).unwrap_or_default();
    if key.is_empty() {
        return Err(ConfigError::new(
            "replay.key_env",
            "the VM environment variable it names is not set",
        ));
    }
    if key.len() < MIN_REPLAY_KEY_BYTES {
        return Err(ConfigError::new(
            "replay.key_env",
            format!("the key must be at least {MIN_REPLAY_KEY_BYTES} bytes"),
        ));
    }
    let max_entries = raw.max_entries.unwrap_or(DEFAULT_REPLAY_MAX_ENTRIES);
    if !(64..=1_000_000).contains(&max_entries) {
        return Err(ConfigError::new(
            "replay.max_entries",
            "must be 64..=1000000",
        ));
    }
    Ok(ReplayConfig {
        key: key.into_bytes(),
        max_entries,
    })
}

fn parse_jwks_source(
    value: Value,
    path: &str,
    algorithms: &[Alg],
) -> Result<JwksSource, ConfigError> {
    let raw: RawJwks = from_value_at(value, path)?;
    match (raw.inline, raw.remote) {
        (Some(inline), None) => {
            // An object (natural in Istio YAML) or a string holding the JSON document.
            let bytes = match inline {
                Value::String(doc) => doc.into_bytes(),
                Value::Object(_) => serde_json::to_vec(&inline).unwrap_or_default(),
                _ => {
                    return Err(ConfigError::new(
                        format!("{path}.inline"),
                        "a JWKS object or a string holding one",
                    ))
                }
            };
            let set = KeySet::parse(&bytes, algorithms).map_err(|e| {
                ConfigError::new(format!("{path}.inline"), format!("unusable JWKS ({e})"))
            })?;
            Ok(JwksSource::Inline(set))
        }
        (None, Some(remote)) => {
            let remote = RemoteSource::parse(&remote, &format!("{path}.remote"), &REMOTE_DEFAULTS)?;
            Ok(JwksSource::Remote(remote))
        }
        _ => Err(ConfigError::new(
            path,
            "set exactly one of `inline` or `remote`",
        )),
    }
}

fn parse_requirement(
    value: Value,
    path: &str,
    providers: &[Provider],
    depth: usize,
) -> Result<Requirement, ConfigError> {
    if depth > MAX_REQUIREMENT_DEPTH {
        return Err(ConfigError::new(
            path,
            format!("`any_of` / `all_of` nested deeper than {MAX_REQUIREMENT_DEPTH}"),
        ));
    }
    // Inside a list a bare string names a provider.
    if depth > 0 {
        if let Value::String(name) = &value {
            return provider_index(providers, name, path).map(Requirement::Provider);
        }
    }
    let raw: RawRequirement = from_value_at(value, path)?;
    let list = |items: Vec<Value>, key: &str| -> Result<Vec<Requirement>, ConfigError> {
        let list_path = format!("{path}.{key}");
        if items.is_empty() {
            return Err(ConfigError::new(list_path, "must not be empty"));
        }
        let mut out: Vec<Requirement> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let item_path = format!("{list_path}[{i}]");
            let req = parse_requirement(item, &item_path, providers, depth + 1)?;
            if out.contains(&req) {
                return Err(ConfigError::new(item_path, "listed twice"));
            }
            out.push(req);
        }
        Ok(out)
    };
    match (raw.provider, raw.any_of, raw.all_of, raw.allow_missing) {
        (Some(name), None, None, None) => {
            provider_index(providers, &name, &format!("{path}.provider")).map(Requirement::Provider)
        }
        (None, Some(items), None, None) => Ok(Requirement::AnyOf(list(items, "any_of")?)),
        (None, None, Some(items), None) => Ok(Requirement::AllOf(list(items, "all_of")?)),
        (None, None, None, Some(true)) if depth == 0 => Ok(Requirement::AllowMissing),
        (None, None, None, Some(true)) => Err(ConfigError::new(
            format!("{path}.allow_missing"),
            "only at the top of a requirement",
        )),
        (None, None, None, Some(false)) => Err(ConfigError::new(
            format!("{path}.allow_missing"),
            "only `true` is meaningful; require a provider instead",
        )),
        _ => Err(ConfigError::new(
            path,
            "set exactly one of `provider`, `any_of`, `all_of` or `allow_missing`",
        )),
    }
}

fn provider_index(providers: &[Provider], name: &str, field: &str) -> Result<usize, ConfigError> {
    providers
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| ConfigError::new(field, "names no provider"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use crate::testkit;
    use phi_guard_common::GrpcMethod;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(doc: &str) -> Result<Config, ConfigError> {
        Config::parse(doc.as_bytes(), &no_env)
    }

    fn err_field(doc: &str) -> String {
        parse(doc).unwrap_err().field
    }

    #[test]
    fn readme_example_parses() {
        let env = |name: &str| {
            matches!(name, "PHI_GUARD_HS256_SECRET" | "PHI_GUARD_JWT_REPLAY_KEY")
                .then(|| "s".repeat(32))
        };
        let config = Config::parse(testkit::readme_config_json().as_bytes(), &env).unwrap();
        assert_eq!(config.providers.len(), 3);
        assert_eq!(config.providers[0].typ, vec!["jwt", "at+jwt"]);
        assert!(!config.providers[0].typ_required && !config.providers[0].replay_protection);
        assert_eq!(config.providers[1].typ, vec!["at+jwt"]);
        assert!(config.providers[1].typ_required && config.providers[1].replay_protection);
        assert_eq!(config.replay.as_ref().unwrap().max_entries, 8192);
        let m = GrpcMethod::from_path("/health.v1.PatientService/DeletePatient").unwrap();
        assert_eq!(
            config.requirement_for(&m),
            Some(&Requirement::AllOf(vec![
                Requirement::Provider(0),
                Requirement::Provider(1)
            ]))
        );
        assert!(config.rule_replay_protection(&m));
        let m = GrpcMethod::from_path("/health.v1.PatientService/GetPatient").unwrap();
        assert!(!config.rule_replay_protection(&m));
        assert_eq!(config.providers[0].clock_skew_s, 60);
        assert!(matches!(config.providers[0].jwks, JwksSource::Remote(_)));
        assert!(matches!(config.providers[1].jwks, JwksSource::Inline(_)));
        assert_eq!(
            config.providers[1].token_source,
            TokenSource::Header("x-service-token".into())
        );
        assert!(config.providers[2].hs256_key.is_some());
        assert_eq!(config.max_token_bytes, 8192);
        assert_eq!(config.cache_max_entries, 4096);
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let config = parse(&testkit::minimal_config("")).unwrap();
        let p = &config.providers[0];
        assert_eq!(p.token_source, TokenSource::AuthorizationBearer);
        assert!(!p.forward && !p.require_cert_binding);
        assert_eq!(p.claims, ClaimMapping::default());
        assert_eq!(config.cache_max_entries, DEFAULT_CACHE_MAX_ENTRIES);
    }

    #[test]
    fn errors_name_the_field_path() {
        let base = testkit::minimal_config("");
        let cases: Vec<(String, &str)> = vec![
            (
                base.replace("\"audiences\":[\"phi-api\"]", "\"audiences\":[]"),
                "providers[0].audiences",
            ),
            (
                base.replace("\"issuer\"", "\"isuer\""),
                "providers[0].isuer",
            ),
            (
                base.replace("\"EdDSA\"", "\"none\""),
                "providers[0].algorithms[0]",
            ),
            (
                base.replace("\"EdDSA\"", "\"HS256\""),
                "providers[0].hs256_secret_env",
            ),
            (
                base.replace("\"clock_skew_s\":60", "\"clock_skew_s\":\"sixty\""),
                "providers[0].clock_skew_s",
            ),
            (
                base.replace("\"clock_skew_s\":60", "\"clock_skew_s\":7200"),
                "providers[0].clock_skew_s",
            ),
            (
                base.replace("{\"provider\":\"idp\"}", "{\"provider\":\"nope\"}"),
                "rules[0].requires.provider",
            ),
            (
                base.replace("\"svc.v1.S/*\"", "\"svc.v1.S/../x\""),
                "rules[0].match",
            ),
            (
                base.replace("{\"provider\":\"idp\"}", "{\"allow_missing\":false}"),
                "rules[0].requires.allow_missing",
            ),
            (
                base.replace(
                    "{\"provider\":\"idp\"}",
                    "{\"provider\":\"idp\",\"all_of\":[\"idp\"]}",
                ),
                "rules[0].requires",
            ),
            (
                base.replace(
                    "\"inline\":",
                    "\"remote\":{\"cluster\":\"c\",\"path\":\"jwks\",\"authority\":\"a\"},\"x\":",
                ),
                "providers[0].jwks.x",
            ),
            (
                base.replace("\"max_token_bytes\":8192", "\"max_token_bytes\":10"),
                "max_token_bytes",
            ),
            (
                base.replace(
                    "\"forward\":false",
                    "\"forward\":false,\"token_header\":\"Authorization\"",
                ),
                "providers[0].token_header",
            ),
            (
                base.replace("\"claims\":{}", "\"claims\":{\"role\":[\"r\"]}"),
                "providers[0].claims.role",
            ),
        ];
        for (doc, field) in cases {
            assert_eq!(err_field(&doc), field, "{doc}");
        }
    }

    #[test]
    fn remote_jwks_fields_are_checked() {
        let base = testkit::minimal_config("");
        // Swap the inline JWKS for a remote one.
        let doc = |inner: &str| {
            let start = base.find("\"jwks\":").unwrap();
            let end = base[start..].find("]}}").unwrap() + start + 3;
            format!(
                "{}\"jwks\":{{\"remote\":{inner}}}{}",
                &base[..start],
                &base[end..]
            )
        };
        let ok = parse(&doc(
            r#"{"cluster":"idp","path":"/jwks","authority":"idp.example"}"#,
        ))
        .unwrap();
        match &ok.providers[0].jwks {
            JwksSource::Remote(r) => {
                assert_eq!(r.refresh_interval_s, DEFAULT_REFRESH_INTERVAL_S);
                assert_eq!(r.timeout_ms, DEFAULT_TIMEOUT_MS);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err_field(&doc(r#"{"cluster":"idp","path":"jwks","authority":"a"}"#)),
            "providers[0].jwks.remote.path"
        );
        assert_eq!(
            err_field(&doc(r#"{"cluster":"","path":"/j","authority":"a"}"#)),
            "providers[0].jwks.remote.cluster"
        );
        assert_eq!(
            err_field(&doc(
                r#"{"cluster":"c","path":"/j","authority":"a","timeout_ms":0}"#
            )),
            "providers[0].jwks.remote.timeout_ms"
        );
        assert_eq!(
            err_field(&doc(r#"{"cluster":"c","path":"/j"}"#)),
            "providers[0].jwks.remote.authority"
        );
    }

    #[test]
    fn document_level_errors() {
        assert_eq!(err_field("not json"), "");
        assert_eq!(err_field("{}"), "providers");
        assert_eq!(err_field(r#"{"providers":[]}"#), "providers");
        let err = parse(r#"{"providers":[],"providers":[]}"#).unwrap_err();
        assert_eq!(err.field, "providers");
        assert!(err.reason.contains("twice"), "{err}");
        let err = parse("").unwrap_err();
        assert!(err.reason.contains("jwt configuration is empty"), "{err}");
    }

    #[test]
    fn repeated_members_are_refused_at_any_depth() {
        let base = testkit::minimal_config("");
        for (doc, field) in [
            (
                base.replace("\"issuer\":", "\"issuer\":\"https://x\",\"issuer\":"),
                "issuer",
            ),
            (
                base.replace(
                    "{\"provider\":\"idp\"}",
                    "{\"provider\":\"idp\",\"provider\":\"idp\"}",
                ),
                "provider",
            ),
            (base.replace("\"kty\":", "\"kty\":\"OKP\",\"kty\":"), "kty"),
        ] {
            assert_ne!(doc, base);
            let err = parse(&doc).unwrap_err();
            assert_eq!(err.field, field, "{doc}");
            assert!(err.reason.contains("twice"), "{err}");
        }
    }

    #[test]
    fn hs256_secret_comes_from_the_environment_only() {
        let doc = testkit::hs256_config();
        let err = Config::parse(doc.as_bytes(), &no_env).unwrap_err();
        assert_eq!(err.field, "providers[0].hs256_secret_env");
        let short = |_: &str| Some("short".to_string());
        assert!(Config::parse(doc.as_bytes(), &short)
            .unwrap_err()
            .reason
            .contains("32"));
        let good = |name: &str| (name == "JWT_SECRET").then(|| testkit::HS256_SECRET.to_string());
        assert!(Config::parse(doc.as_bytes(), &good).is_ok());
        assert_eq!(
            err_field(&doc.replace(
                "\"hs256_secret_env\":\"JWT_SECRET\"",
                "\"hs256_secret\":\"inline\""
            )),
            "providers[0].hs256_secret"
        );
    }

    #[test]
    fn values_are_never_echoed_in_errors() {
        let doc = testkit::minimal_config("")
            .replace("\"clock_skew_s\":60", "\"clock_skew_s\":\"TOPSECRETVALUE\"");
        let err = parse(&doc).unwrap_err();
        assert!(!err.to_string().contains("TOPSECRETVALUE"), "{err}");
    }

    #[test]
    fn typ_lists_are_normalised_and_checked() {
        let base = testkit::minimal_config("");
        let with =
            |typ: &str| base.replace("\"forward\":false", &format!("\"forward\":false,{typ}"));
        let config = parse(&with(r#""typ":["application/JWT","AT+JWT","dpop+jwt"]"#)).unwrap();
        assert_eq!(config.providers[0].typ, vec!["jwt", "at+jwt", "dpop+jwt"]);
        assert_eq!(normalize_typ("Application/At+JWT"), "at+jwt");
        for (typ, field) in [
            (r#""typ":[]"#, "providers[0].typ"),
            (r#""typ":["jwt","JWT"]"#, "providers[0].typ[1]"),
            (r#""typ":["a b"]"#, "providers[0].typ[0]"),
            (r#""typ":[""]"#, "providers[0].typ[0]"),
        ] {
            assert_eq!(err_field(&with(typ)), field, "{typ}");
        }
    }

    #[test]
    fn requirements_nest_like_envoys() {
        let doc = |requires: &str| {
            let base = testkit::minimal_config("");
            base.replace("{\"provider\":\"idp\"}", requires)
        };
        let config = parse(&doc(
            r#"{"any_of":["idp",{"all_of":["idp",{"provider":"idp"}]}]}"#,
        ));
        // `idp` and `{"provider":"idp"}` are the same requirement, listed twice.
        assert_eq!(
            config.unwrap_err().field,
            "rules[0].requires.any_of[1].all_of[1]"
        );
        let config = parse(&doc(r#"{"any_of":["idp",{"all_of":["idp"]}]}"#)).unwrap();
        assert_eq!(
            config.rules[0].requires,
            Requirement::AnyOf(vec![
                Requirement::Provider(0),
                Requirement::AllOf(vec![Requirement::Provider(0)])
            ])
        );
        for (requires, field) in [
            (r#"{"all_of":[]}"#, "rules[0].requires.all_of"),
            (r#"{"all_of":["nope"]}"#, "rules[0].requires.all_of[0]"),
            (
                r#"{"any_of":[{"allow_missing":true}]}"#,
                "rules[0].requires.any_of[0].allow_missing",
            ),
            (
                r#"{"all_of":["idp"],"any_of":["idp"]}"#,
                "rules[0].requires",
            ),
            (
                r#"{"all_of":[{"all_of":[{"all_of":[{"all_of":[{"all_of":["idp"]}]}]}]}]}"#,
                "rules[0].requires.all_of[0].all_of[0].all_of[0].all_of[0].all_of[0]",
            ),
            (r#"{"all_of":[7]}"#, "rules[0].requires.all_of[0]"),
        ] {
            assert_eq!(err_field(&doc(requires)), field, "{requires}");
        }
    }

    #[test]
    fn replay_protection_needs_a_key() {
        let base = testkit::minimal_config("");
        let on_provider = base.replace(
            "\"forward\":false",
            "\"forward\":false,\"replay_protection\":true",
        );
        assert_eq!(err_field(&on_provider), "replay");
        let on_rule = base.replace(
            "\"requires\":{\"provider\":\"idp\"}",
            "\"requires\":{\"provider\":\"idp\"},\"replay_protection\":true",
        );
        assert_ne!(on_rule, base);
        assert_eq!(err_field(&on_rule), "replay");
        let keyed = |doc: &str, block: &str| {
            format!(
                "{},\"replay\":{block}}}",
                doc.trim_end().trim_end_matches('}')
            )
        };
        let env = |name: &str| (name == "RK").then(|| "k".repeat(32));
        let short = |name: &str| (name == "RK").then(|| "k".repeat(31));
        let doc = keyed(&on_rule, r#"{"key_env":"RK"}"#);
        let config = Config::parse(doc.as_bytes(), &env).unwrap();
        assert_eq!(
            config.replay.unwrap().max_entries,
            DEFAULT_REPLAY_MAX_ENTRIES
        );
        let err = Config::parse(doc.as_bytes(), &short).unwrap_err();
        assert_eq!(err.field, "replay.key_env");
        assert!(!err.to_string().contains("kkkk"), "{err}");
        assert_eq!(err_field(&doc), "replay.key_env");
        let doc = keyed(&on_rule, r#"{"key_env":"RK","max_entries":1}"#);
        assert_eq!(
            Config::parse(doc.as_bytes(), &env).unwrap_err().field,
            "replay.max_entries"
        );
        // A replay block with nothing to protect is a mistake.
        let doc = keyed(&base, r#"{"key_env":"RK"}"#);
        assert_eq!(
            Config::parse(doc.as_bytes(), &env).unwrap_err().field,
            "replay"
        );
    }
}
