//! `phi-guard-policy`: the native policy checker. It runs the filter's own parser and evaluator,
//! so a policy that validates here loads in Envoy and decides the same way.
//!
//! Exit codes: 0 = yes (allow / valid / all cases passed), 1 = no (deny or unauthenticated /
//! invalid policy / some case failed), 2 = could not answer (usage error, unreadable file,
//! a policy that does not parse for `check` and `test`).

use std::collections::BTreeMap;
use std::io::Write;

use serde::Deserialize;
use serde_json::{json, Value};

use phi_guard_common::{ConfigError, GrpcMethod, Identity};
use phi_guard_jwt::{Decision, Reason as JwtReason};

use phi_guard_rbac::evaluate::{evaluate, Evaluation, Request, Verdict};
use phi_guard_rbac::policy::Policy;
use phi_guard_rbac::principal::Peer;

pub const USAGE: &str = "\
usage:
  phi-guard-policy validate POLICY.json
  phi-guard-policy check POLICY.json --method pkg.Service/Method
        [--san URI ...] [--dns NAME ...] [--no-mtls]
        [--claims CLAIMS.json | --role R ... --scope S ... --tenant T --purpose P
         --break-glass-reason CODE]
        [--header name=value ...] [--json]
  phi-guard-policy test CASES.json [--policy POLICY.json] [--jwt-config JWT.json]
        (or \"policy\", \"jwt_config\", \"listener\" in CASES.json)
exit: 0 allow / valid / all passed, 1 deny / invalid / failures, 2 error";

/// The end-user claims a check or a test case supplies: the parts of an [`Identity`] that
/// policies read. A full `Identity` JSON (as the jwt filter writes it) is accepted too.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub purpose_of_use: Option<String>,
    #[serde(default)]
    pub break_glass_reason: Option<String>,
}

impl Claims {
    fn parse(v: Value) -> Result<Identity, String> {
        if let Ok(id) = serde_json::from_value::<Identity>(v.clone()) {
            return Ok(id);
        }
        let c: Claims = serde_json::from_value(v).map_err(|e| format!("claims: {e}"))?;
        Ok(c.into_identity())
    }

    pub fn into_identity(self) -> Identity {
        Identity {
            provider: "phi-guard-policy".into(),
            issuer: "phi-guard-policy".into(),
            subject: "checker".into(),
            roles: self.roles,
            scopes: self.scopes,
            tenant: self.tenant,
            purpose_of_use: self.purpose_of_use,
            break_glass_reason: self.break_glass_reason,
            expires_at: u64::MAX,
            cert_bound: false,
        }
    }
}

/// One expectation, like an `opa test` case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    #[serde(default)]
    pub name: Option<String>,
    /// The peer certificate's URI SAN (a SPIFFE ID), or a list of URI SANs; with `dns`,
    /// implies mTLS unless `mtls` says otherwise.
    #[serde(default)]
    pub san: Option<OneOrMany>,
    /// The peer certificate's DNS SAN, or a list of them.
    #[serde(default)]
    pub dns: Option<OneOrMany>,
    #[serde(default)]
    pub mtls: Option<bool>,
    /// End-user claims; absent or null means no end-user identity.
    #[serde(default)]
    pub claims: Option<Value>,
    pub method: String,
    /// Header name → a value, or a list of values for a header sent repeatedly.
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    pub expect: Expect,
    /// The expected effective role.
    #[serde(default)]
    pub role: Option<String>,
    /// The expected deciding rule.
    #[serde(default)]
    pub rule: Option<String>,
    /// Whether a break-glass rule is expected to decide.
    #[serde(default)]
    pub break_glass: Option<bool>,
    /// With a jwt config: the providers (by name) the request has a valid token from; `[]`
    /// or `null` for none. Absent: the one provider when `claims` are given and the config
    /// has exactly one, else none.
    #[serde(default, deserialize_with = "present")]
    pub token: Option<Option<OneOrMany>>,
}

/// Keeps a member given as `null` apart from an absent one (serde folds both into `None`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// `"v"` or `["v1", "v2"]`: a case's header (sent once per value) or SANs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn entries(&self) -> Vec<String> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(vs) => vs.clone(),
        }
    }
}

/// A case's expected outcome: rbac's verdict, or a refusal before rbac sees the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Allow,
    Deny,
    Unauthenticated,
    /// The inbound listener closes the connection (TLS SAN matchers or the one-SPIFFE-ID
    /// network RBAC of envoy/inbound.yaml); needs a `listener` in the test file.
    RefusedByListener,
    /// The jwt filter answers UNAUTHENTICATED or PERMISSION_DENIED (`no_rule`); needs a jwt
    /// config.
    RefusedByJwt,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
            Expect::Unauthenticated => "unauthenticated",
            Expect::RefusedByListener => "refused_by_listener",
            Expect::RefusedByJwt => "refused_by_jwt",
        }
    }
}

/// The listener in front of the filters, as envoy/inbound.yaml renders it (`[trust] domain`
/// of the project file): mTLS required, the client's certificate carries exactly one URI SAN,
/// a SPIFFE ID (X.509-SVID §2) in `trust_domain`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub trust_domain: String,
    /// The project's `[trust] allowed_spiffe_ids`: when given, the listener's SAN matcher
    /// lets only these SPIFFE IDs through (exact match), as render writes it. An empty list is
    /// refused when the file is read, as `phi-guard render` refuses it.
    #[serde(default)]
    pub allowed_spiffe_ids: Option<Vec<String>>,
}

impl Listener {
    /// Why the listener refuses the peer, or `None` when it lets it through.
    pub fn refuses(&self, input: &Input) -> Option<&'static str> {
        if !input.mtls {
            return Some("no client certificate (mTLS required)");
        }
        let [uri] = input.san.as_slice() else {
            return Some("not exactly one URI SAN (one SPIFFE ID)");
        };
        // inbound.yaml's network RBAC: `^spiffe://[a-z0-9._-]+/[^,]+$`.
        let shaped = uri.strip_prefix("spiffe://").and_then(|rest| {
            let (domain, path) = rest.split_once('/')?;
            let ok = !domain.is_empty()
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && !path.is_empty()
                && !path.contains(',');
            ok.then_some(domain)
        });
        match shaped {
            None => Some("the URI SAN is not a SPIFFE ID"),
            // The TLS context's SAN matcher: the trust domain's prefix.
            Some(domain) if domain != self.trust_domain => {
                Some("SPIFFE ID outside the trust domain")
            }
            Some(_)
                if self
                    .allowed_spiffe_ids
                    .as_ref()
                    .is_some_and(|ids| !ids.contains(uri)) =>
            {
                Some("SPIFFE ID not in allowed_spiffe_ids")
            }
            Some(_) => None,
        }
    }
}

/// What stands before rbac in the chain: the listener and the jwt filter, each optional
/// (absent: the case is checked against rbac alone).
#[derive(Debug, Clone, Default)]
pub struct Chain {
    pub listener: Option<Listener>,
    pub jwt: Option<phi_guard_jwt::Config>,
}

/// Where a case ended.
#[derive(Debug, Clone)]
enum Outcome {
    Listener(&'static str),
    Jwt {
        status: &'static str,
        reason: JwtReason,
    },
    Rbac(Evaluation),
}

/// The jwt filter's decision for `method` when the request carries valid tokens from the
/// providers `presented` (indices), through the filter's own [`phi_guard_jwt::decide`].
/// `Ok(true)`: verified (rbac gets an identity), `Ok(false)`: skipped (`allow_missing`, no
/// token).
fn jwt_decides(
    config: &phi_guard_jwt::Config,
    method: &str,
    presented: &[usize],
) -> Result<bool, (&'static str, JwtReason)> {
    let path = if method.starts_with('/') {
        method.to_string()
    } else {
        format!("/{method}")
    };
    let Some(method) = GrpcMethod::from_path(&path) else {
        return Err(("UNAUTHENTICATED", JwtReason::BadPath));
    };
    // A presented token is valid for its provider; another provider reading the same header
    // sees a token that names another issuer; the rest see none.
    let mut try_provider = |i: usize| {
        if presented.contains(&i) {
            Ok(())
        } else if presented
            .iter()
            .any(|&p| config.providers[p].token_source == config.providers[i].token_source)
        {
            Err(JwtReason::WrongIssuer)
        } else {
            Err(JwtReason::Missing)
        }
    };
    match phi_guard_jwt::decide(
        config.requirement_for(&method),
        config.providers.len(),
        &mut try_provider,
    ) {
        Decision::Satisfied(_) => Ok(true),
        Decision::Skipped => Ok(false),
        Decision::Denied(reason) => Err(("UNAUTHENTICATED", reason)),
        Decision::Forbidden(_, reason) => Err(("PERMISSION_DENIED", reason)),
    }
}

/// The test file: `{"policy": "path"?, "jwt_config": "path"?, "listener": {...}?,
/// "cases": [...]}` or a bare list of cases. Parsed by shape (not `serde(untagged)`, whose
/// error names neither the case nor the field): a typo is reported as `cases[3]: unknown
/// field `expcet``.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    jwt_config: Option<String>,
    #[serde(default)]
    listener: Option<Listener>,
    cases: Vec<Value>,
}

/// Each case on its own, so an error names its index (and its `name` when it has one).
fn parse_cases(cases: Vec<Value>) -> Result<Vec<Case>, String> {
    cases
        .into_iter()
        .enumerate()
        .map(|(i, case)| {
            let name = case
                .get("name")
                .and_then(Value::as_str)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            serde_json::from_value(case).map_err(|e| format!("cases[{i}]{name}: {e}"))
        })
        .collect()
}

/// A parsed test file; relative paths already resolved against its folder.
#[derive(Debug, Clone, Default)]
pub struct Suite {
    pub policy: Option<String>,
    pub jwt_config: Option<String>,
    pub listener: Option<Listener>,
    pub cases: Vec<Case>,
}

/// Facts of one check, the checker-side twin of what the shell reads from Envoy.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub mtls: bool,
    /// Every URI SAN of the peer certificate.
    pub san: Vec<String>,
    /// Every DNS SAN of the peer certificate.
    pub dns: Vec<String>,
    pub identity: Option<Identity>,
    pub method: String,
    pub headers: Vec<(String, String)>,
}

impl Input {
    pub fn evaluate(&self, policy: &Policy) -> Evaluation {
        let uris: Vec<&str> = self.san.iter().map(String::as_str).collect();
        let dns: Vec<&str> = self.dns.iter().map(String::as_str).collect();
        let peer = Peer::from_sans(self.mtls, &uris, &dns);
        let path = if self.method.starts_with('/') {
            self.method.clone()
        } else {
            format!("/{}", self.method)
        };
        let method = GrpcMethod::from_path(&path);
        // Exactly what the shell passes: the entries of the headers the policy reads, repeated
        // ones included.
        let headers =
            policy.select_headers(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        evaluate(
            policy,
            &Request {
                peer: &peer,
                identity: self.identity.as_ref(),
                method: method.as_ref(),
                headers: &headers,
            },
        )
    }
}

impl Case {
    /// The providers (indices) this case has a valid token from.
    fn presented(&self, config: &phi_guard_jwt::Config) -> Result<Vec<usize>, String> {
        let names =
            match &self.token {
                Some(Some(names)) => names.entries(),
                Some(None) => Vec::new(),
                None => match (&self.claims, config.providers.as_slice()) {
                    (None | Some(Value::Null), _) => Vec::new(),
                    (Some(_), [only]) => vec![only.name.clone()],
                    (Some(_), _) => return Err(
                        "`claims` with several jwt providers: name the token's provider in `token`"
                            .into(),
                    ),
                },
            };
        names
            .iter()
            .map(|n| {
                config
                    .providers
                    .iter()
                    .position(|p| p.name == *n)
                    .ok_or_else(|| format!("token: no jwt provider named {n:?}"))
            })
            .collect()
    }

    /// Runs the case through the chain: listener, jwt, rbac.
    fn outcome(&self, policy: &Policy, chain: &Chain) -> Result<Outcome, String> {
        let mut input = self.input()?;
        if self.expect == Expect::RefusedByListener && chain.listener.is_none() {
            return Err("`refused_by_listener` needs a `listener` in the test file".into());
        }
        if self.expect == Expect::RefusedByJwt && chain.jwt.is_none() {
            return Err(
                "`refused_by_jwt` needs a jwt config (`jwt_config` or --jwt-config)".into(),
            );
        }
        if let Some(listener) = &chain.listener {
            if let Some(why) = listener.refuses(&input) {
                return Ok(Outcome::Listener(why));
            }
        }
        if let Some(config) = &chain.jwt {
            let presented = self.presented(config)?;
            match jwt_decides(config, &self.method, &presented) {
                Err((status, reason)) => return Ok(Outcome::Jwt { status, reason }),
                // A verified token without listed claims: an identity with none.
                Ok(true) if input.identity.is_none() => {
                    input.identity = Some(Claims::default().into_identity());
                }
                Ok(true) => {}
                Ok(false) => input.identity = None,
            }
        } else if self.token.is_some() {
            return Err("`token` needs a jwt config (`jwt_config` or --jwt-config)".into());
        }
        Ok(Outcome::Rbac(input.evaluate(policy)))
    }

    fn input(&self) -> Result<Input, String> {
        let identity = match &self.claims {
            None | Some(Value::Null) => None,
            Some(v) => Some(Claims::parse(v.clone())?),
        };
        Ok(Input {
            mtls: self
                .mtls
                .unwrap_or(self.san.is_some() || self.dns.is_some()),
            san: self
                .san
                .as_ref()
                .map(OneOrMany::entries)
                .unwrap_or_default(),
            dns: self
                .dns
                .as_ref()
                .map(OneOrMany::entries)
                .unwrap_or_default(),
            identity,
            method: self.method.clone(),
            headers: self
                .headers
                .iter()
                .flat_map(|(k, v)| v.entries().into_iter().map(|v| (k.clone(), v)))
                .collect(),
        })
    }
}

/// Result of running a case list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub passed: usize,
    /// One line per failed case.
    pub failures: Vec<String>,
}

/// Runs every case through `chain` (listener, jwt, as configured) and `policy`.
pub fn run_cases(policy: &Policy, chain: &Chain, cases: &[Case]) -> Report {
    let mut report = Report::default();
    for (i, case) in cases.iter().enumerate() {
        let label = match &case.name {
            Some(n) => format!("cases[{i}] {n}"),
            None => format!("cases[{i}]"),
        };
        let eval = match case.outcome(policy, chain) {
            Ok(Outcome::Rbac(eval)) => eval,
            Ok(Outcome::Listener(why)) => {
                if case.expect == Expect::RefusedByListener {
                    report.passed += 1;
                } else {
                    report.failures.push(format!(
                        "{label}: expected {}, got refused_by_listener ({why})",
                        case.expect.as_str()
                    ));
                }
                continue;
            }
            Ok(Outcome::Jwt { status, reason }) => {
                if case.expect == Expect::RefusedByJwt {
                    report.passed += 1;
                } else {
                    report.failures.push(format!(
                        "{label}: expected {}, got refused_by_jwt ({status} {})",
                        case.expect.as_str(),
                        reason.code()
                    ));
                }
                continue;
            }
            Err(e) => {
                report.failures.push(format!("{label}: {e}"));
                continue;
            }
        };
        let rule = rule_name(policy, &eval);
        let mut problems = Vec::new();
        if case.expect.as_str() != eval.verdict.as_str() {
            problems.push(format!(
                "expected {}, got {}",
                case.expect.as_str(),
                eval.verdict.as_str()
            ));
        }
        if let Some(role) = &case.role {
            if *role != eval.role {
                problems.push(format!("expected role {role}, got {}", eval.role));
            }
        }
        if let Some(want) = case.break_glass {
            if want != eval.break_glass {
                problems.push(format!(
                    "expected break_glass {want}, got {}",
                    eval.break_glass
                ));
            }
        }
        if let Some(want) = &case.rule {
            if Some(want.as_str()) != rule {
                problems.push(format!("expected rule {want}, got {}", rule.unwrap_or("-")));
            }
        }
        if problems.is_empty() {
            report.passed += 1;
        } else {
            report.failures.push(format!(
                "{label}: {} (rule {}, role {}, reason {})",
                problems.join("; "),
                rule.unwrap_or("-"),
                eval.role,
                eval.reason.as_str()
            ));
        }
    }
    report
}

fn rule_name<'p>(policy: &'p Policy, eval: &Evaluation) -> Option<&'p str> {
    eval.rule
        .and_then(|i| policy.rules.get(i))
        .map(|r| r.name.as_str())
}

/// Loads and parses a policy file.
pub fn load_policy(path: &str) -> Result<Policy, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Policy::parse(&bytes).map_err(|e: ConfigError| format!("{path}: {e}"))
}

/// Loads and parses a jwt filter config (the JSON Envoy's `configuration` holds, e.g.
/// envoy/demo/jwt.json) with the jwt filter's own parser. HS256 secrets are not needed to
/// decide requirements, so `*_env` variables read as unset; nor are keys, so a provider
/// without `jwks` (a project's `[jwks]` supplies it at render time) is checked with a
/// placeholder source that is never fetched.
pub fn load_jwt_config(path: &str) -> Result<phi_guard_jwt::Config, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let mut doc: Value = phi_guard_common::config::parse_document(&bytes, "jwt")
        .map_err(|e| format!("{path}: {e}"))?;
    if let Some(providers) = doc.get_mut("providers").and_then(Value::as_array_mut) {
        for provider in providers.iter_mut().filter_map(Value::as_object_mut) {
            provider.entry("jwks").or_insert_with(|| {
                json!({"remote": {
                    "cluster": "phi_guard_policy_check",
                    "path": "/",
                    "authority": "never-fetched.invalid"
                }})
            });
        }
    }
    let bytes = serde_json::to_vec(&doc).map_err(|e| format!("{path}: {e}"))?;
    phi_guard_jwt::Config::parse(&bytes, &|_| None).map_err(|e| format!("{path}: {e}"))
}

/// Parses a case file; relative `policy` and `jwt_config` paths inside it are resolved
/// against the file's folder.
pub fn load_cases(path: &str) -> Result<Suite, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    // A repeated member (`"expect"` twice) would otherwise be decided by serde_json's choice.
    let file: Value = phi_guard_common::config::parse_json(&bytes, "policy test")
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(match file {
        Value::Array(cases) => Suite {
            cases: parse_cases(cases).map_err(|e| format!("{path}: {e}"))?,
            ..Suite::default()
        },
        Value::Object(_) => {
            let file: SuiteFile =
                serde_json::from_value(file).map_err(|e| format!("{path}: {e}"))?;
            let base = std::path::Path::new(path)
                .parent()
                .unwrap_or(std::path::Path::new(""));
            let resolve = |p: String| base.join(p).to_string_lossy().into_owned();
            if file
                .listener
                .as_ref()
                .and_then(|l| l.allowed_spiffe_ids.as_ref())
                .is_some_and(Vec::is_empty)
            {
                return Err(format!(
                    "{path}: listener.allowed_spiffe_ids is empty: list the SPIFFE IDs that may connect, or leave it out for the whole trust domain"
                ));
            }
            Suite {
                policy: file.policy.map(resolve),
                jwt_config: file.jwt_config.map(resolve),
                listener: file.listener,
                cases: parse_cases(file.cases).map_err(|e| format!("{path}: {e}"))?,
            }
        }
        _ => {
            return Err(format!(
                "{path}: not a list of cases or {{\"policy\", \"cases\", ...}}"
            ))
        }
    })
}

/// The command line. `args` excludes the program name. Returns the exit code.
pub fn run(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let result = match args.first().map(String::as_str) {
        Some("validate") => validate(&args[1..], out),
        Some("check") => check(&args[1..], out),
        Some("test") => test(&args[1..], out),
        Some("-h" | "--help" | "help") => {
            let _ = writeln!(out, "{USAGE}");
            return 0;
        }
        _ => Err(format!("unknown or missing command\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            let _ = writeln!(err, "phi-guard-policy: {msg}");
            2
        }
    }
}

fn validate(args: &[String], out: &mut dyn Write) -> Result<i32, String> {
    let [path] = args else {
        return Err(format!("validate takes one POLICY.json\n{USAGE}"));
    };
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    match Policy::parse(&bytes) {
        Ok(p) => {
            let _ = writeln!(out, "ok: {} rules, version {}", p.rules.len(), p.version);
            Ok(0)
        }
        Err(e) => {
            let _ = writeln!(out, "{path}: {e}");
            Ok(1)
        }
    }
}

fn check(args: &[String], out: &mut dyn Write) -> Result<i32, String> {
    let mut policy_path = None;
    let mut input = Input::default();
    let mut claims_file = None;
    let mut claims = Claims::default();
    let mut inline_claims = false;
    let mut no_mtls = false;
    let mut as_json = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--san" => input.san.push(value()?),
            "--dns" => input.dns.push(value()?),
            "--no-mtls" => no_mtls = true,
            "--claims" => claims_file = Some(value()?),
            "--role" => {
                claims.roles.push(value()?);
                inline_claims = true;
            }
            "--scope" => {
                claims.scopes.push(value()?);
                inline_claims = true;
            }
            "--tenant" => {
                claims.tenant = Some(value()?);
                inline_claims = true;
            }
            "--purpose" => {
                claims.purpose_of_use = Some(value()?);
                inline_claims = true;
            }
            "--break-glass-reason" => {
                claims.break_glass_reason = Some(value()?);
                inline_claims = true;
            }
            "--method" => input.method = value()?,
            "--header" => {
                let kv = value()?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--header wants name=value, got {kv}"))?;
                input.headers.push((k.to_string(), v.to_string()));
            }
            "--json" => as_json = true,
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            s if policy_path.is_none() => policy_path = Some(s.to_string()),
            s => return Err(format!("unexpected argument {s}\n{USAGE}")),
        }
    }
    let policy_path = policy_path.ok_or_else(|| format!("check needs POLICY.json\n{USAGE}"))?;
    if input.method.is_empty() {
        return Err(format!("check needs --method\n{USAGE}"));
    }
    input.identity = match (claims_file, inline_claims) {
        (Some(_), true) => {
            return Err("use --claims or --role/--scope/--tenant/--purpose, not both".into())
        }
        (Some(path), false) => {
            let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
            let v: Value = phi_guard_common::config::parse_json(&bytes, "claims")
                .map_err(|e| format!("{path}: {e}"))?;
            Some(Claims::parse(v)?)
        }
        (None, true) => Some(claims.into_identity()),
        (None, false) => None,
    };
    input.mtls = !no_mtls && (!input.san.is_empty() || !input.dns.is_empty());
    let policy = load_policy(&policy_path)?;
    let eval = input.evaluate(&policy);
    let rule = rule_name(&policy, &eval);
    if as_json {
        let doc = json!({
            "decision": eval.verdict.as_str(),
            "rule": rule,
            "role": eval.role,
            "reason": eval.reason.as_str(),
            "mode": policy.mode.as_str(),
            "policy_version": policy.version,
            "break_glass": eval.break_glass,
            "break_glass_reason": eval.break_glass_reason,
        });
        let _ = writeln!(out, "{doc}");
    } else {
        let _ = writeln!(out, "decision: {}", eval.verdict.as_str());
        let _ = writeln!(out, "rule:     {}", rule.unwrap_or("- (default deny)"));
        let _ = writeln!(out, "role:     {}", eval.role);
        let _ = writeln!(out, "reason:   {}", eval.reason.as_str());
        if eval.break_glass {
            let _ = writeln!(
                out,
                "note:     break-glass rule: audited with break_glass=true{}",
                eval.break_glass_reason
                    .as_deref()
                    .map(|c| format!(", reason code {c}"))
                    .unwrap_or_default()
            );
        }
        if policy.mode == phi_guard_rbac::policy::Mode::Shadow {
            let _ = writeln!(out, "note:     policy is in shadow mode; Envoy records this decision but lets the request through");
        }
    }
    Ok(if eval.verdict == Verdict::Allow { 0 } else { 1 })
}

fn test(args: &[String], out: &mut dyn Write) -> Result<i32, String> {
    let mut cases_path = None;
    let mut policy_path = None;
    let mut jwt_path = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--policy" => {
                policy_path = Some(it.next().cloned().ok_or("--policy needs a value")?);
            }
            "--jwt-config" => {
                jwt_path = Some(it.next().cloned().ok_or("--jwt-config needs a value")?);
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            s if cases_path.is_none() => cases_path = Some(s.to_string()),
            s => return Err(format!("unexpected argument {s}\n{USAGE}")),
        }
    }
    let cases_path = cases_path.ok_or_else(|| format!("test needs CASES.json\n{USAGE}"))?;
    let suite = load_cases(&cases_path)?;
    let policy_path = policy_path
        .or(suite.policy)
        .ok_or("no policy: pass --policy POLICY.json or set \"policy\" in the case file")?;
    let policy = load_policy(&policy_path)?;
    let chain = Chain {
        listener: suite.listener,
        jwt: jwt_path
            .or(suite.jwt_config)
            .map(|p| load_jwt_config(&p))
            .transpose()?,
    };
    if suite.cases.is_empty() {
        // A suite that tests nothing must not be a green CI step.
        return Err(format!("{cases_path}: no cases"));
    }
    let report = run_cases(&policy, &chain, &suite.cases);
    if policy.mode == phi_guard_rbac::policy::Mode::Shadow {
        let _ = writeln!(
            out,
            "note: {policy_path} is in shadow mode: the cases check what enforce mode would decide; Envoy records those decisions but lets every request through"
        );
    }
    for line in &report.failures {
        let _ = writeln!(out, "FAIL {line}");
    }
    let _ = writeln!(
        out,
        "{} passed, {} failed",
        report.passed,
        report.failures.len()
    );
    Ok(if report.failures.is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = env!("CARGO_MANIFEST_DIR");

    fn run_args(args: &[&str]) -> (i32, String, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(&args, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    fn demo() -> String {
        format!("{DIR}/../../filters/rbac/policy.demo.json")
    }

    /// The demo's chain: envoy/demo/jwt.json and the demo project's trust domain.
    fn demo_chain() -> Chain {
        Chain {
            listener: Some(Listener {
                trust_domain: "phi-guard.test".into(),
                allowed_spiffe_ids: None,
            }),
            jwt: Some(load_jwt_config(&format!("{DIR}/../../envoy/demo/jwt.json")).unwrap()),
        }
    }

    fn cases(json: &str) -> Vec<Case> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_method_rbac_allows_but_no_jwt_rule_names_is_refused_by_jwt() {
        let policy = load_policy(&demo()).unwrap();
        // The issue's case: rbac alone allows Health/Watch to any workload...
        let watch = r#"[{"san": "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend",
            "claims": {"roles": ["nurse"]}, "method": "grpc.health.v1.Health/Watch",
            "expect": "allow"}]"#;
        let alone = run_cases(&policy, &Chain::default(), &cases(watch));
        assert_eq!((alone.passed, alone.failures.len()), (1, 0));
        // ...the jwt filter refuses it: a valid token, no rule: PERMISSION_DENIED no_rule.
        let chained = run_cases(&policy, &demo_chain(), &cases(watch));
        assert_eq!(chained.passed, 0);
        assert!(
            chained.failures[0]
                .ends_with("expected allow, got refused_by_jwt (PERMISSION_DENIED no_rule)"),
            "{:?}",
            chained.failures
        );
        // Without a token: UNAUTHENTICATED.
        let report = run_cases(
            &policy,
            &demo_chain(),
            &cases(
                r#"[{"san": "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend",
                "token": null, "claims": {"roles": ["nurse"]},
                "method": "grpc.health.v1.Health/Watch", "expect": "allow"}]"#,
            ),
        );
        assert!(
            report.failures[0].ends_with("got refused_by_jwt (UNAUTHENTICATED missing)"),
            "{:?}",
            report.failures
        );
        let report = run_cases(
            &policy,
            &demo_chain(),
            &cases(&watch.replace(r#""expect": "allow""#, r#""expect": "refused_by_jwt""#)),
        );
        assert_eq!((report.passed, report.failures.len()), (1, 0));
    }

    #[test]
    fn jwt_requirements_decide_with_the_filters_matcher() {
        let policy = load_policy(&demo()).unwrap();
        let fe = "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend";
        let run = |case: &str| {
            let case = format!(r#"[{{"san": "{fe}", {case}}}]"#);
            let r = run_cases(&policy, &demo_chain(), &cases(&case));
            (r.passed, r.failures)
        };
        // The provider named explicitly, or implied by claims (one provider).
        let get =
            r#""method": "health.v1.PatientService/GetPatient", "claims": {"roles": ["nurse"]}"#;
        assert_eq!(
            run(&format!(
                r#"{get}, "token": "phi-guard-idp", "expect": "allow""#
            ))
            .0,
            1
        );
        assert_eq!(
            run(&format!(r#"{get}, "expect": "allow", "role": "nurse""#)).0,
            1
        );
        // Claims without a token: the jwt filter refuses before rbac.
        assert_eq!(
            run(&format!(
                r#"{get}, "token": [], "expect": "refused_by_jwt""#
            ))
            .0,
            1
        );
        // allow_missing (Health/Check): no token passes jwt; rbac decides.
        let (passed, failures) = run(
            r#""method": "grpc.health.v1.Health/Check", "expect": "allow", "rule": "health-checks""#,
        );
        assert_eq!((passed, failures), (1, vec![]));
        // A token from a provider the config does not have is a case error.
        let (_, failures) = run(&format!(
            r#"{get}, "token": "other-idp", "expect": "allow""#
        ));
        assert!(
            failures[0].contains(r#"no jwt provider named "other-idp""#),
            "{failures:?}"
        );
    }

    #[test]
    fn a_dns_only_workload_is_refused_by_the_listener() {
        let policy = load_policy(&demo()).unwrap();
        // The issue's case: rbac alone lets a DNS-named workload run health checks...
        let probe = r#"[{"dns": "probe.phi-guard.test", "method": "grpc.health.v1.Health/Check",
            "expect": "allow"}]"#;
        let alone = run_cases(&policy, &Chain::default(), &cases(probe));
        assert_eq!((alone.passed, alone.failures.len()), (1, 0));
        // ...the listener requires exactly one URI SAN, a SPIFFE ID.
        let chained = run_cases(&policy, &demo_chain(), &cases(probe));
        assert!(
            chained.failures[0].contains("expected allow, got refused_by_listener"),
            "{:?}",
            chained.failures
        );
        let fe = "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend";
        let listener = demo_chain().listener.unwrap();
        let peer = |mtls: bool, san: &[&str], dns: &[&str]| Input {
            mtls,
            san: san.iter().map(|s| s.to_string()).collect(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            ..Input::default()
        };
        assert_eq!(
            listener.refuses(&peer(true, &[fe], &["probe.phi-guard.test"])),
            None
        );
        for refused in [
            peer(true, &[], &["probe.phi-guard.test"]),
            peer(false, &[fe], &[]),
            peer(
                true,
                &[fe, "spiffe://phi-guard.test/ns/research/sa/analytics"],
                &[],
            ),
            peer(true, &["spiffe://evil.test/ns/clinic/sa/ehr-frontend"], &[]),
            peer(true, &["spiffe://phi-guard.test"], &[]),
            peer(true, &["https://phi-guard.test/ns/clinic"], &[]),
        ] {
            assert!(listener.refuses(&refused).is_some(), "{refused:?}");
        }
        // A refusal expectation without the stage that refuses is a case error.
        let report = run_cases(
            &policy,
            &Chain::default(),
            &cases(
                r#"[{"dns": "probe.phi-guard.test", "method": "grpc.health.v1.Health/Check",
                "expect": "refused_by_listener"},
                {"san": "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend",
                "method": "grpc.health.v1.Health/Watch", "expect": "refused_by_jwt"}]"#,
            ),
        );
        assert!(
            report.failures[0].contains("needs a `listener`"),
            "{:?}",
            report.failures
        );
        assert!(
            report.failures[1].contains("needs a jwt config"),
            "{:?}",
            report.failures
        );
    }

    #[test]
    fn test_takes_the_jwt_config_on_the_command_line() {
        let dir =
            std::env::temp_dir().join(format!("phi-guard-rbac-jwtcli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = dir.join("cases.json");
        std::fs::write(
            &cases,
            format!(
                r#"{{"policy": "{}", "cases": [{{"san": "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend",
                "claims": {{"roles": ["nurse"]}}, "method": "grpc.health.v1.Health/Watch",
                "expect": "allow"}}]}}"#,
                demo()
            ),
        )
        .unwrap();
        let cases = cases.to_str().unwrap();
        let (code, out, _) = run_args(&["test", cases]);
        assert_eq!((code, out.trim()), (0, "1 passed, 0 failed"));
        let jwt = format!("{DIR}/../../envoy/demo/jwt.json");
        let (code, out, _) = run_args(&["test", cases, "--jwt-config", &jwt]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("got refused_by_jwt (PERMISSION_DENIED no_rule)"),
            "{out}"
        );
    }

    #[test]
    fn a_project_style_suite_checks_jwt_without_jwks_and_the_allowed_spiffe_ids() {
        // From the trial: ADOPTING's jwt.json leaves `jwks` to the project's [jwks], and the
        // project's [trust] allowed_spiffe_ids narrows the listener.
        let dir =
            std::env::temp_dir().join(format!("phi-guard-cases-project-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("jwt.json"),
            r#"{"providers": [{"name": "idp", "issuer": "https://idp.rx.example",
                "audiences": ["rx"], "algorithms": ["ES256"]}],
               "rules": [{"match": "rx.v1.Rx/*", "requires": {"provider": "idp"}}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("policy.json"),
            r#"{"version": "rx-1", "mode": "enforce", "rules": [{"name": "portal-reads",
                "action": "allow", "methods": ["rx.v1.Rx/Get"],
                "principals": ["spiffe://rx.example/ns/rx/sa/portal"],
                "roles": ["pharmacist"]}]}"#,
        )
        .unwrap();
        let portal = "spiffe://rx.example/ns/rx/sa/portal";
        let other = "spiffe://rx.example/ns/rx/sa/other";
        let cases = serde_json::json!({
            "policy": "policy.json", "jwt_config": "jwt.json",
            "listener": {"trust_domain": "rx.example", "allowed_spiffe_ids": [portal]},
            "cases": [
                {"san": portal, "claims": {"roles": ["pharmacist"]}, "method": "rx.v1.Rx/Get",
                 "expect": "allow"},
                {"san": portal, "token": [], "method": "rx.v1.Rx/Get",
                 "expect": "refused_by_jwt"},
                {"san": other, "claims": {"roles": ["pharmacist"]}, "method": "rx.v1.Rx/Get",
                 "expect": "refused_by_listener"}
            ]
        });
        let path = dir.join("cases.json");
        std::fs::write(&path, cases.to_string()).unwrap();
        let (code, out, err) = run_args(&["test", &path.to_string_lossy()]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!((code, out.trim()), (0, "3 passed, 0 failed"), "{out}{err}");
    }

    #[test]
    fn a_typo_in_a_case_file_names_the_case_and_the_field() {
        let dir = std::env::temp_dir().join(format!("phi-guard-cases-typo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        let case = r#"{"name": "ok", "method": "/a.B/C", "expect": "deny"}"#;
        // From the trial: `expcet` and `rol` were reported as "did not match any variant".
        let bare = write(
            "bare.json",
            &format!(
                r#"[{case}, {{"name": "nurse reads", "method": "/a.B/C", "expcet": "allow"}}]"#
            ),
        );
        let err = load_cases(&bare).unwrap_err();
        assert!(
            err.contains("cases[1] (nurse reads): unknown field `expcet`"),
            "{err}"
        );
        let suite = write(
            "suite.json",
            &format!(
                r#"{{"cases": [{case}, {case}, {{"method": "/a.B/C", "expect": "allow", "rol": "nurse"}}]}}"#
            ),
        );
        let err = load_cases(&suite).unwrap_err();
        assert!(err.contains("cases[2]: unknown field `rol`"), "{err}");
        let top = write("top.json", r#"{"polcy": "p.json", "cases": []}"#);
        let err = load_cases(&top).unwrap_err();
        assert!(err.contains("unknown field `polcy`"), "{err}");
        // A repeated member is refused, not decided by the parser (trial finding: a case with
        // `expect` twice ran as the last one).
        let twice = write(
            "twice.json",
            r#"[{"name": "x", "method": "/a.B/C", "expect": "refused_by_jwt", "expect": "allow"}]"#,
        );
        let err = load_cases(&twice).unwrap_err();
        assert!(
            err.contains("`expect`") && err.contains("appears twice"),
            "{err}"
        );
        let jwt = write(
            "jwt.json",
            r#"{"providers": [], "rules": [], "clock_skew_s": 60, "clock_skew_s": 600}"#,
        );
        let err = load_jwt_config(&jwt).unwrap_err();
        assert!(err.contains("appears twice"), "{err}");
        // Trial findings: an empty suite was a green run; an empty allow list read as "all".
        let policy = format!("{DIR}/../../filters/rbac/policy.demo.json");
        let empty = write(
            "empty.json",
            &format!(r#"{{"policy": "{policy}", "cases": []}}"#),
        );
        let (code, _, err) = run_args(&["test", &empty]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("no cases"), "{err}");
        let listener = write(
            "listener.json",
            r#"{"listener": {"trust_domain": "rx.example", "allowed_spiffe_ids": []}, "cases": []}"#,
        );
        let err = load_cases(&listener).unwrap_err();
        assert!(err.contains("allowed_spiffe_ids is empty"), "{err}");
        let scalar = write("scalar.json", "42");
        assert!(load_cases(&scalar)
            .unwrap_err()
            .contains("not a list of cases"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn demo_cases_all_pass() {
        let suite = load_cases(&format!("{DIR}/../../filters/rbac/policy.demo.test.json")).unwrap();
        let policy = load_policy(&suite.policy.expect("case file names its policy")).unwrap();
        let chain = demo_chain();
        assert_eq!(chain.listener, suite.listener);
        let cases = suite.cases;
        let report = run_cases(&policy, &chain, &cases);
        assert!(report.failures.is_empty(), "{:#?}", report.failures);
        assert_eq!(report.passed, cases.len());
        assert!(cases.len() >= 20);
        let (code, out, _) = run_args(&[
            "test",
            &format!("{DIR}/../../filters/rbac/policy.demo.test.json"),
        ]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.trim(), format!("{} passed, 0 failed", cases.len()));
    }

    #[test]
    fn failing_cases_are_reported() {
        let policy = load_policy(&demo()).unwrap();
        let cases: Vec<Case> = serde_json::from_str(
            r#"[{"name":"wrong","san":"spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend",
                 "claims":{"roles":["nurse"]},"method":"health.v1.PatientService/GetPatient",
                 "expect":"deny","role":"billing"},
                {"method":"health.v1.PatientService/GetPatient","expect":"deny"}]"#,
        )
        .unwrap();
        let report = run_cases(&policy, &Chain::default(), &cases);
        assert_eq!(report.passed, 1);
        assert_eq!(report.failures.len(), 1);
        assert!(
            report.failures[0].contains("expected deny, got allow"),
            "{:?}",
            report.failures
        );
        assert!(report.failures[0].contains("expected role billing, got nurse"));
    }

    #[test]
    fn validate_reports_ok_or_the_field() {
        let (code, out, _) = run_args(&["validate", &demo()]);
        assert_eq!((code, out.trim()), (0, "ok: 6 rules, version demo-2026-01"));
        let bad =
            std::env::temp_dir().join(format!("phi-guard-rbac-bad-{}.json", std::process::id()));
        std::fs::write(
            &bad,
            br#"{"version":"1","rules":[{"name":"a","action":"allow","methods":["x"]}]}"#,
        )
        .unwrap();
        let (code, out, _) = run_args(&["validate", bad.to_str().unwrap()]);
        let _ = std::fs::remove_file(&bad);
        assert_eq!(code, 1);
        assert!(out.contains("`rules[0].methods[0]`"), "{out}");
        let (code, _, err) = run_args(&["validate", "/nonexistent/policy.json"]);
        assert_eq!(code, 2);
        assert!(err.contains("/nonexistent/policy.json"));
    }

    #[test]
    fn check_prints_and_exits_by_decision() {
        let fe = "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend";
        let (code, out, _) = run_args(&[
            "check",
            &demo(),
            "--san",
            fe,
            "--role",
            "billing_clerk",
            "--method",
            "health.v1.PatientService/GetPatient",
        ]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("decision: allow") && out.contains("role:     billing"),
            "{out}"
        );
        assert!(out.contains("rule:     frontend-clinical-reads"));
        let (code, out, _) = run_args(&[
            "check",
            &demo(),
            "--san",
            fe,
            "--method",
            "health.v1.PatientService/GetPatient",
            "--json",
        ]);
        assert_eq!(code, 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["decision"], "unauthenticated");
        assert_eq!(v["reason"], "no_identity");
        assert_eq!(v["rule"], Value::Null);
        let (code, _, _) = run_args(&[
            "check",
            &demo(),
            "--san",
            fe,
            "--role",
            "nurse",
            "--no-mtls",
            "--method",
            "health.v1.PatientService/GetPatient",
        ]);
        assert_eq!(code, 1);
    }

    #[test]
    fn check_reads_a_claims_file() {
        let claims =
            std::env::temp_dir().join(format!("phi-guard-rbac-claims-{}.json", std::process::id()));
        std::fs::write(
            &claims,
            br#"{"roles":["research"],"scopes":["patient.read"]}"#,
        )
        .unwrap();
        let (code, out, err) = run_args(&[
            "check",
            &demo(),
            "--san",
            "spiffe://phi-guard.test/ns/research/sa/analytics",
            "--claims",
            claims.to_str().unwrap(),
            "--method",
            "/health.v1.PatientService/GetPatient",
        ]);
        let _ = std::fs::remove_file(&claims);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("role:     research"));
    }

    #[test]
    fn check_and_test_refuse_a_repeated_header_like_the_filter() {
        let dir = std::env::temp_dir().join(format!("phi-guard-rbac-rep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("policy.json");
        std::fs::write(
            &policy,
            br#"{"version":"t","rules":[{"name":"tenant-reads","action":"allow",
                "tenant":{"header":"x-tenant-id"},"methods":["health.v1.PatientService/GetPatient"]}]}"#,
        )
        .unwrap();
        let policy = policy.to_str().unwrap();
        let check = |headers: &[&str]| {
            let mut args = vec![
                "check",
                policy,
                "--san",
                "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend",
                "--tenant",
                "north",
                "--method",
                "health.v1.PatientService/GetPatient",
                "--json",
            ];
            for h in headers {
                args.extend(["--header", h]);
            }
            let (code, out, err) = run_args(&args);
            let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
            (code, v["decision"].clone(), v["reason"].clone())
        };
        assert_eq!(
            check(&["x-tenant-id=north"]),
            (0, json!("allow"), json!("matched_allow"))
        );
        // The issue's input.
        assert_eq!(
            check(&["x-tenant-id=north", "x-tenant-id=south"]),
            (1, json!("deny"), json!("repeated_header"))
        );
        assert_eq!(
            check(&["X-Tenant-Id=north", "x-tenant-id=north"]),
            (1, json!("deny"), json!("repeated_header"))
        );
        assert_eq!(
            check(&["x-tenant-id=north,south"]),
            (1, json!("deny"), json!("repeated_header"))
        );
        // A test case says a repeated header with a list of values.
        let cases = dir.join("cases.json");
        std::fs::write(
            &cases,
            br#"{"policy": "policy.json", "cases": [
                {"san": "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend", "claims": {"tenant": "north"},
                 "method": "health.v1.PatientService/GetPatient",
                 "headers": {"x-tenant-id": ["north", "south"]}, "expect": "deny"},
                {"san": "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend", "claims": {"tenant": "north"},
                 "method": "health.v1.PatientService/GetPatient",
                 "headers": {"x-tenant-id": "north"}, "expect": "allow"}]}"#,
        )
        .unwrap();
        let (code, out, _) = run_args(&["test", cases.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!((code, out.trim()), (0, "2 passed, 0 failed"));
    }

    #[test]
    fn check_sees_every_san_like_the_filter() {
        // The issue's certificate: admin-tool first, analytics second, with an admin token.
        let (code, out, _) = run_args(&[
            "check",
            &demo(),
            "--san",
            "spiffe://phi-guard.test/ns/ops/sa/admin-tool",
            "--san",
            "spiffe://phi-guard.test/ns/research/sa/analytics",
            "--role",
            "admin",
            "--method",
            "health.v1.PatientService/DeletePatient",
            "--json",
        ]);
        assert_eq!(code, 1, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["decision"].as_str(), v["reason"].as_str()),
            (Some("deny"), Some("multiple_uri_sans"))
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &[][..],
            &["frobnicate"][..],
            &["check", "p.json"][..],
            &["check", "p.json", "--method"][..],
            &[
                "check", "p.json", "--method", "a.B/C", "--header", "novalue",
            ][..],
            &["check", "p.json", "--method", "a.B/C", "--bogus"][..],
            &["validate"][..],
            &["test"][..],
        ] {
            let (code, _, err) = run_args(args);
            assert_eq!(code, 2, "{args:?}");
            assert!(err.starts_with("phi-guard-policy: "), "{err}");
        }
    }
}
