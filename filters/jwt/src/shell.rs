//! The filter's host-facing logic, written against [`Host`] so it runs under [`FakeHost`] in
//! unit tests; `wasm.rs` only wires these functions to the proxy-wasm contexts.
//!
//! Logging rule: reason codes, provider names and counts only. Never a token, a header
//! value or a claim value.
//!
//! [`FakeHost`]: phi_guard_host::FakeHost

use std::cell::RefCell;

use phi_guard_common::{AuthnOutcome, AuthnResult, GrpcStatus, MethodLabel, RequestId};
use phi_guard_host::{write_state, Counter, Host, HostExt, LogLevel, SharedData};

use crate::config::Config;
use crate::engine::{Engine, FetchRequest, JwksFetchError, Outcome, Request};
use crate::jwks::MAX_JWKS_BYTES;
use crate::reason::Reason;

/// Envoy attribute with the SHA-256 of the client certificate's DER, lower-case hex.
pub const PEER_CERT_DIGEST: [&str; 2] = ["connection", "sha256_peer_certificate_digest"];

/// Most bytes of a JWKS answer read from the host: one more than is accepted, so an
/// oversized document is seen as such.
pub const JWKS_READ_LIMIT: usize = MAX_JWKS_BYTES + 1;

/// Counters, defined once at configure time.
#[derive(Debug, Default)]
pub struct Metrics {
    pub verified: Counter,
    pub cache_hit: Counter,
    failed: Vec<(Reason, Counter)>,
    pub jwks_fetch_ok: Counter,
    pub jwks_fetch_failed: Counter,
}

impl Metrics {
    pub fn define(host: &dyn Host) -> Self {
        Metrics {
            verified: Counter::define(host, "phi_guard.jwt.verified"),
            cache_hit: Counter::define(host, "phi_guard.jwt.cache_hit"),
            failed: Reason::ALL
                .iter()
                .map(|r| {
                    (
                        *r,
                        Counter::define(host, &format!("phi_guard.jwt.failed.{}", r.code())),
                    )
                })
                .collect(),
            jwks_fetch_ok: Counter::define(host, "phi_guard.jwt.jwks_fetch_ok"),
            jwks_fetch_failed: Counter::define(host, "phi_guard.jwt.jwks_fetch_failed"),
        }
    }

    pub fn failed(&self, reason: Reason) -> Option<&Counter> {
        self.failed
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, c)| c)
    }
}

/// on_configure: parses the plugin configuration. On error, logs the field path and reason
/// (never a value) and returns `None`: the plugin must not start.
pub fn configure<H: Host + SharedData>(
    host: &H,
    configuration: Option<&[u8]>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(Engine, Metrics)> {
    let bytes = configuration.unwrap_or_default();
    match Config::parse(bytes, env) {
        Ok(config) => {
            let engine = Engine::new(config);
            if let Some(cache) = engine.replay_cache() {
                // Requests that need the cache fail closed if this did not work; say why.
                if cache.prepare(host).is_err() {
                    host.log(
                        LogLevel::Error,
                        "phi-guard jwt: the shared replay cache could not be prepared; replay-protected requests will be refused",
                    );
                }
            }
            let config = engine.config();
            host.log(
                LogLevel::Info,
                &format!(
                    "phi-guard jwt: configured {} provider(s), {} rule(s)",
                    config.providers.len(),
                    config.rules.len()
                ),
            );
            Some((engine, Metrics::define(host)))
        }
        Err(err) => {
            host.log(LogLevel::Error, &format!("phi-guard jwt: {err}"));
            None
        }
    }
}

/// Client-chosen correlation headers that Envoy's access log, the audit event and the
/// upstream see. The first filter sanitizes them in place (`phi_guard_common::sanitize`).
pub const CLIENT_ID_HEADERS: [&str; 1] = ["x-request-id"];

/// on_http_request_headers. Returns `true` to continue the request, `false` when it was
/// answered (UNAUTHENTICATED, PERMISSION_DENIED for a valid token on a method no rule names,
/// UNAVAILABLE when the replay cache cannot decide).
pub fn on_request_headers<H: Host + SharedData>(
    host: &H,
    engine: &RefCell<Engine>,
    metrics: &Metrics,
) -> bool {
    // Before anything else: no path through this filter lets a client-set identity header by,
    // and no SSN-shaped request id reaches a log line.
    host.strip_reserved_headers();
    for name in CLIENT_ID_HEADERS {
        host.sanitize_request_header(name);
    }
    // Access logs print these, never `:path` or the raw header (a client chose both).
    if let Some(id) = host.request_header("x-request-id") {
        write_state(host, &RequestId(id));
    }
    let now = host.now();
    let method = host.grpc_method();
    write_state(
        host,
        &MethodLabel(phi_guard_common::grpc::method_label(method.as_deref())),
    );
    let peer_digest = host.string_property(&PEER_CERT_DIGEST);
    let header = |name: &str| host.request_header(name);
    let request = Request {
        method: method.as_deref(),
        header: &header,
        peer_cert_sha256_hex: peer_digest.as_deref(),
    };
    let outcome =
        engine
            .borrow_mut()
            .authenticate_with(&request, now, Some(host as &dyn SharedData));
    match outcome {
        Outcome::Verified {
            identity,
            strip_headers,
            cache_hit,
        } => {
            for name in strip_headers {
                host.remove_request_header(&name);
            }
            write_state(host, &*identity);
            let authn = AuthnOutcome {
                result: AuthnResult::Ok,
                provider: Some(identity.provider.clone()),
                reason: None,
            };
            write_state(host, &authn);
            metrics.verified.inc(host);
            if cache_hit {
                metrics.cache_hit.inc(host);
            }
            // No log line on the success path: every RPC takes it, and the access log already
            // carries phi_guard.authn.
            true
        }
        Outcome::Skipped => {
            let authn = AuthnOutcome {
                result: AuthnResult::Skipped,
                provider: None,
                reason: None,
            };
            write_state(host, &authn);
            host.log(LogLevel::Debug, "phi-guard jwt: no token, method allows it");
            true
        }
        Outcome::Denied(reason) => {
            let authn = AuthnOutcome {
                result: AuthnResult::Failed,
                provider: None,
                reason: Some(reason.code().into()),
            };
            write_state(host, &authn);
            if let Some(counter) = metrics.failed(reason) {
                counter.inc(host);
            }
            host.log(LogLevel::Debug, &format!("phi-guard jwt: denied: {reason}"));
            match reason.status() {
                GrpcStatus::Unauthenticated => host.send_grpc_error(
                    GrpcStatus::Unauthenticated,
                    &[("www-authenticate", reason.www_authenticate())],
                ),
                status => host.send_grpc_error(status, &[]),
            }
            false
        }
        Outcome::Forbidden { identity, reason } => {
            // The token is valid: the audit event records who asked for the unlisted method.
            write_state(host, &*identity);
            let authn = AuthnOutcome {
                result: AuthnResult::Failed,
                provider: Some(identity.provider.clone()),
                reason: Some(reason.code().into()),
            };
            write_state(host, &authn);
            if let Some(counter) = metrics.failed(reason) {
                counter.inc(host);
            }
            host.log(
                LogLevel::Debug,
                &format!("phi-guard jwt: forbidden: {reason}"),
            );
            host.send_grpc_error(GrpcStatus::PermissionDenied, &[]);
            false
        }
    }
}

/// on_tick (and right after configure): the JWKS fetches to dispatch now.
pub fn due_fetches(host: &dyn Host, engine: &RefCell<Engine>) -> Vec<FetchRequest> {
    engine.borrow_mut().due_fetches(host.now())
}

/// on_http_call_response for a JWKS fetch of `provider`.
pub fn on_jwks_response(
    host: &dyn Host,
    engine: &RefCell<Engine>,
    metrics: &Metrics,
    provider: usize,
    status: Option<&str>,
    body: &[u8],
) {
    let status = status.and_then(|s| s.parse::<u32>().ok());
    let name = provider_name(engine, provider);
    let result = engine
        .borrow_mut()
        .on_jwks_response(provider, status, body, host.now());
    match result {
        Ok(fetched) => {
            metrics.jwks_fetch_ok.inc(host);
            let level = if fetched.changed {
                LogLevel::Info
            } else {
                LogLevel::Debug
            };
            host.log(
                level,
                &format!(
                    "phi-guard jwt: JWKS for provider {name}: {} usable key(s)",
                    fetched.keys
                ),
            );
        }
        Err(err) => {
            metrics.jwks_fetch_failed.inc(host);
            let why = match err {
                JwksFetchError::UnknownProvider => "no such remote provider".to_string(),
                JwksFetchError::Status(Some(code)) => format!("HTTP {code}"),
                JwksFetchError::Status(None) => "no response".to_string(),
                JwksFetchError::Document(e) => format!("unusable document ({e})"),
            };
            let then = kept(engine, provider);
            host.log(
                LogLevel::Warn,
                &format!("phi-guard jwt: JWKS fetch for provider {name} failed: {why}; {then}"),
            );
        }
    }
}

/// dispatch_http_call refused the fetch (e.g. unknown cluster).
pub fn on_jwks_dispatch_failed(
    host: &dyn Host,
    engine: &RefCell<Engine>,
    metrics: &Metrics,
    provider: usize,
) {
    metrics.jwks_fetch_failed.inc(host);
    let name = provider_name(engine, provider);
    engine.borrow_mut().on_jwks_failed(provider, host.now());
    host.log(
        LogLevel::Warn,
        &format!(
            "phi-guard jwt: could not dispatch the JWKS fetch for provider {name} (check the cluster name); {}",
            kept(engine, provider)
        ),
    );
}

/// What a failed fetch leaves in force, for its log line: the previous key set, or (before
/// the first good fetch) nothing, so the provider's requests are refused.
fn kept(engine: &RefCell<Engine>, provider: usize) -> &'static str {
    if engine.borrow().has_remote_keys(provider) {
        "keeping the previous key set"
    } else {
        "no key set yet: requests for this provider are refused (jwks_unavailable) until one arrives"
    }
}

fn provider_name(engine: &RefCell<Engine>, provider: usize) -> String {
    engine
        .borrow()
        .config()
        .providers
        .get(provider)
        .map(|p| p.name.clone())
        .unwrap_or_default()
}
