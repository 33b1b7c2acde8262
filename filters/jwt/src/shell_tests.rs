//! The shell against [`FakeHost`]: what reaches filter state, headers, the caller, the
//! metrics and the logs.

use std::cell::RefCell;

use phi_guard_common::{state, AuthnOutcome, AuthnResult, GrpcStatus, Identity};
use phi_guard_host::{read_state, FakeHost, Host};
use serde_json::json;

use crate::engine_tests::world;
use crate::shell::{self, Metrics};
use crate::test_support::test;
use crate::testkit::{self, ed25519_key, sign_eddsa};

const NOW: u64 = 1_767_227_400;
/// A claim value that must never appear in a log line.
const CANARY: &str = "CANARY-7f3a-patient-ssn";

fn token(claims: serde_json::Value) -> String {
    let (pair, _) = ed25519_key(Some("k1"));
    sign_eddsa(&pair, r#"{"alg":"EdDSA","kid":"k1"}"#, &claims.to_string())
}

fn good_claims() -> serde_json::Value {
    json!({
        "iss": "https://idp.example", "sub": CANARY, "aud": "phi-api",
        "iat": NOW - 60, "exp": NOW + 600, "roles": ["nurse"], "tenant": CANARY
    })
}

fn host_with(path: &str, authorization: Option<&str>) -> FakeHost {
    let mut headers = vec![
        (":path", path),
        ("content-type", "application/grpc"),
        ("x-phi-guard-role", "admin"),
        ("X-Phi-Guard-Subject", "root"),
    ];
    if let Some(value) = authorization {
        headers.push(("authorization", value));
    }
    let host = FakeHost::with_request_headers(&headers);
    host.set_clock(NOW);
    host
}

fn setup(host: &FakeHost) -> (RefCell<crate::Engine>, Metrics) {
    (RefCell::new(world()), Metrics::define(host))
}

fn authn(host: &FakeHost) -> AuthnOutcome {
    read_state(host).unwrap().expect("authn state")
}

fn identity(host: &FakeHost) -> Option<Identity> {
    read_state(host).unwrap()
}

fn header_names(host: &FakeHost) -> Vec<String> {
    host.request_headers().into_iter().map(|(k, _)| k).collect()
}

#[test]
fn success_writes_identity_and_strips_token_and_reserved_headers() {
    let bearer = format!("Bearer {}", token(good_claims()));
    let host = host_with("/svc.v1.S/Get", Some(&bearer));
    let (engine, metrics) = setup(&host);
    assert!(shell::on_request_headers(&host, &engine, &metrics));
    assert_eq!(host.sent_status(), None);
    assert_eq!(header_names(&host), vec![":path", "content-type"]);
    let identity = identity(&host).unwrap();
    assert_eq!(identity.provider, "idp");
    assert_eq!(identity.roles, vec!["nurse"]);
    assert_eq!(
        authn(&host),
        AuthnOutcome {
            result: AuthnResult::Ok,
            provider: Some("idp".into()),
            reason: None
        }
    );
    assert_eq!(host.counter("phi_guard.jwt.verified"), 1);
    assert_eq!(host.counter("phi_guard.jwt.cache_hit"), 0);

    // The same token again is a cache hit.
    let again = host_with("/svc.v1.S/Get", Some(&bearer));
    let metrics_again = Metrics::define(&again);
    assert!(shell::on_request_headers(&again, &engine, &metrics_again));
    assert_eq!(again.counter("phi_guard.jwt.cache_hit"), 1);
    assert!(!host.log_text().contains(CANARY) && !again.log_text().contains(CANARY));
}

#[test]
fn forwarded_token_header_stays() {
    let host = host_with("/svc.v1.S/Fwd", None);
    let claims =
        json!({"iss": "https://fwd.example", "sub": "s", "aud": "phi-api", "exp": NOW + 60});
    host.set_request_header("x-token", &token(claims));
    let (engine, metrics) = setup(&host);
    assert!(shell::on_request_headers(&host, &engine, &metrics));
    assert!(host.request_header("x-token").is_some());
    assert!(host.request_header("x-phi-guard-role").is_none());
}

#[test]
fn failure_answers_unauthenticated_with_invalid_token_and_logs_no_token_or_claims() {
    let mut claims = good_claims();
    claims["exp"] = json!(NOW - 3600);
    let expired = token(claims);
    let bearer = format!("Bearer {expired}");
    let host = host_with("/svc.v1.S/Get", Some(&bearer));
    let (engine, metrics) = setup(&host);
    assert!(!shell::on_request_headers(&host, &engine, &metrics));
    let (status, headers) = host.sent.borrow().clone().unwrap();
    assert_eq!(status, GrpcStatus::Unauthenticated);
    assert_eq!(
        headers,
        vec![(
            "www-authenticate".to_string(),
            "Bearer error=\"invalid_token\"".to_string()
        )]
    );
    assert_eq!(authn(&host).reason.as_deref(), Some("expired"));
    assert_eq!(authn(&host).result, AuthnResult::Failed);
    assert!(identity(&host).is_none());
    assert_eq!(host.counter("phi_guard.jwt.failed.expired"), 1);
    assert_eq!(host.counter("phi_guard.jwt.verified"), 0);
    assert!(header_names(&host)
        .iter()
        .all(|h| !h.starts_with("x-phi-guard")));
    let logs = host.log_text();
    assert!(logs.contains("expired"), "the reason is logged: {logs}");
    for secret in [CANARY, expired.as_str(), expired.split('.').nth(1).unwrap()] {
        assert!(!logs.contains(secret), "leaked into logs: {logs}");
    }
}

#[test]
fn every_failure_path_keeps_claims_out_of_logs() {
    let mut variants = Vec::new();
    for (name, value) in [
        ("aud", json!("other")),
        ("exp", json!("soon")),
        ("roles", json!(1)),
    ] {
        let mut claims = good_claims();
        claims[name] = value;
        variants.push(token(claims));
    }
    variants.push(format!("{}x", token(good_claims())));
    for t in variants {
        let bearer = format!("Bearer {t}");
        let host = host_with("/svc.v1.S/Get", Some(&bearer));
        let (engine, metrics) = setup(&host);
        assert!(!shell::on_request_headers(&host, &engine, &metrics));
        assert!(!host.log_text().contains(CANARY));
        assert!(!host.log_text().contains(&t));
    }
}

#[test]
fn missing_token_gets_a_bare_bearer_challenge() {
    let host = host_with("/svc.v1.S/Get", None);
    let (engine, metrics) = setup(&host);
    assert!(!shell::on_request_headers(&host, &engine, &metrics));
    let (_, headers) = host.sent.borrow().clone().unwrap();
    assert_eq!(
        headers,
        vec![("www-authenticate".to_string(), "Bearer".to_string())]
    );
    assert_eq!(authn(&host).reason.as_deref(), Some("missing"));
    assert_eq!(host.counter("phi_guard.jwt.failed.missing"), 1);
}

#[test]
fn allow_missing_continues_with_skipped() {
    let host = host_with("/grpc.health.v1.Health/Check", None);
    let (engine, metrics) = setup(&host);
    assert!(shell::on_request_headers(&host, &engine, &metrics));
    assert_eq!(authn(&host).result, AuthnResult::Skipped);
    assert!(identity(&host).is_none());
    assert!(host.request_header("x-phi-guard-role").is_none());
}

#[test]
fn non_grpc_path_fails_closed() {
    let bearer = format!("Bearer {}", token(good_claims()));
    let host = host_with("/index.html", Some(&bearer));
    let (engine, metrics) = setup(&host);
    assert!(!shell::on_request_headers(&host, &engine, &metrics));
    assert_eq!(authn(&host).reason.as_deref(), Some("bad_path"));
}

#[test]
fn certificate_binding_uses_envoys_hex_digest() {
    let der = b"client cert";
    let mut claims = good_claims();
    claims["cnf"] = json!({"x5t#S256": crate::binding::thumbprint_of_der(der)});
    let bearer = format!("Bearer {}", token(claims));
    let host = host_with("/svc.v1.S/Get", Some(&bearer));
    let hex: String = hmac_sha256::Hash::hash(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    host.insert_property(&shell::PEER_CERT_DIGEST, hex.as_bytes());
    let (engine, metrics) = setup(&host);
    assert!(shell::on_request_headers(&host, &engine, &metrics));
    let identity = identity(&host).unwrap();
    assert!(identity.cert_bound);
}

#[test]
fn jwks_not_loaded_fails_closed_at_once_then_fetch_results_are_counted() {
    let claims =
        json!({"iss": "https://remote.example", "sub": "s", "aud": "phi-api", "exp": NOW + 60});
    let bearer = format!("Bearer {}", token(claims));
    let host = host_with("/svc.v1.S/Remote", Some(&bearer));
    let (engine, metrics) = setup(&host);
    assert!(!shell::on_request_headers(&host, &engine, &metrics));
    assert_eq!(host.sent_status(), Some(GrpcStatus::Unauthenticated));
    assert_eq!(authn(&host).reason.as_deref(), Some("jwks_unavailable"));

    let due = shell::due_fetches(&host, &engine);
    assert_eq!(due.len(), 1);
    shell::on_jwks_response(&host, &engine, &metrics, due[0].provider, Some("503"), b"");
    assert_eq!(host.counter("phi_guard.jwt.jwks_fetch_failed"), 1);
    // There is no previous key set to keep: the log says what happens instead.
    let log = host.log_text();
    assert!(
        log.contains("failed: HTTP 503; no key set yet: requests for this provider are refused"),
        "{log}"
    );
    assert!(!log.contains("previous key set"), "{log}");
    host.set_clock(NOW + 10);
    let due = shell::due_fetches(&host, &engine);
    shell::on_jwks_dispatch_failed(&host, &engine, &metrics, due[0].provider);
    assert_eq!(host.counter("phi_guard.jwt.jwks_fetch_failed"), 2);
    assert!(!host.log_text().contains("previous key set"));
    host.set_clock(NOW + 20);
    let due = shell::due_fetches(&host, &engine);
    let (_, jwks) = ed25519_key(Some("k1"));
    shell::on_jwks_response(
        &host,
        &engine,
        &metrics,
        due[0].provider,
        Some("200"),
        jwks.as_bytes(),
    );
    assert_eq!(host.counter("phi_guard.jwt.jwks_fetch_ok"), 1);

    let retry = host_with("/svc.v1.S/Remote", Some(&bearer));
    retry.set_clock(NOW + 20);
    assert!(shell::on_request_headers(&retry, &engine, &metrics));

    // Once a set arrived, a failed refresh keeps it, and says so.
    host.set_clock(NOW + 20 + 3600 * 24);
    let due = shell::due_fetches(&host, &engine);
    assert_eq!(due.len(), 1);
    shell::on_jwks_response(&host, &engine, &metrics, due[0].provider, Some("503"), b"");
    assert!(
        host.log_text()
            .contains("failed: HTTP 503; keeping the previous key set"),
        "{}",
        host.log_text()
    );
}

#[test]
fn bad_configuration_refuses_to_start_and_names_the_field() {
    let host = FakeHost::default();
    let doc =
        testkit::minimal_config("").replace("\"audiences\":[\"phi-api\"]", "\"audiences\":[]");
    assert!(shell::configure(&host, Some(doc.as_bytes()), &|_| None).is_none());
    assert!(
        host.log_text().contains("providers[0].audiences"),
        "{}",
        host.log_text()
    );
    assert!(shell::configure(&host, None, &|_| None).is_none());

    let secret_env = |_: &str| Some("a-very-secret-value-that-must-not-be-logged!!".to_string());
    let good = testkit::hs256_config();
    assert!(shell::configure(&host, Some(good.as_bytes()), &secret_env).is_some());
    assert!(!host.log_text().contains("a-very-secret"));
}

#[test]
fn a_valid_token_on_an_unlisted_method_is_permission_denied() {
    let bearer = format!("Bearer {}", token(good_claims()));
    let host = host_with("/other.v1.O/Get", Some(&bearer));
    let (engine, metrics) = setup(&host);
    assert!(!shell::on_request_headers(&host, &engine, &metrics));
    let (status, headers) = host.sent.borrow().clone().unwrap();
    assert_eq!(status, GrpcStatus::PermissionDenied);
    assert!(
        headers.is_empty(),
        "no RFC 6750 challenge: the token is fine"
    );
    assert_eq!(
        authn(&host),
        AuthnOutcome {
            result: AuthnResult::Failed,
            provider: Some("idp".into()),
            reason: Some("no_rule".into())
        }
    );
    // The audit event can say who asked.
    assert!(identity(&host).is_some());
    assert_eq!(host.counter("phi_guard.jwt.failed.no_rule"), 1);

    // Without a token the same method is still UNAUTHENTICATED.
    let host = host_with("/other.v1.O/Get", None);
    let (engine, metrics) = setup(&host);
    assert!(!shell::on_request_headers(&host, &engine, &metrics));
    assert_eq!(host.sent_status(), Some(GrpcStatus::Unauthenticated));
    assert_eq!(authn(&host).reason.as_deref(), Some("missing"));
    assert!(identity(&host).is_none());
}

#[test]
fn a_logout_token_is_refused_with_bad_typ() {
    let (pair, _) = ed25519_key(Some("k1"));
    let logout = sign_eddsa(
        &pair,
        r#"{"alg":"EdDSA","kid":"k1","typ":"logout+jwt"}"#,
        &good_claims().to_string(),
    );
    let bearer = format!("Bearer {logout}");
    let host = host_with("/svc.v1.S/Get", Some(&bearer));
    let (engine, metrics) = setup(&host);
    assert!(!shell::on_request_headers(&host, &engine, &metrics));
    assert_eq!(host.sent_status(), Some(GrpcStatus::Unauthenticated));
    assert_eq!(authn(&host).reason.as_deref(), Some("bad_typ"));
    assert_eq!(host.counter("phi_guard.jwt.failed.bad_typ"), 1);
}

#[test]
fn an_ssn_shaped_request_id_is_masked_before_anything_reads_it() {
    for path in ["/svc.v1.S/Get", "/other.v1.O/Get", "/index.html"] {
        let host = host_with(path, None);
        host.set_request_header("x-request-id", "078-05-1120");
        let (engine, metrics) = setup(&host);
        shell::on_request_headers(&host, &engine, &metrics);
        assert_eq!(
            host.request_header("x-request-id").as_deref(),
            Some("***-**-****"),
            "{path}"
        );
        assert!(!host.log_text().contains("078-05-1120"));
    }
    let host = host_with("/svc.v1.S/Get", None);
    host.set_request_header("x-request-id", "jane.doe@example.org");
    let (engine, metrics) = setup(&host);
    shell::on_request_headers(&host, &engine, &metrics);
    assert_eq!(host.request_header("x-request-id"), None);
}

#[test]
fn access_logs_get_a_sanitized_method_and_request_id_in_filter_state() {
    // The bytes under the keys, as Envoy's access log prints them.
    let text =
        |host: &FakeHost, key: &str| host.property(&[key]).map(|b| String::from_utf8(b).unwrap());
    for (path, label) in [
        ("/svc.v1.S/Get", "svc.v1.S/Get"),
        ("/svc.v1.S/078051120", "svc.v1.S/*********"),
        ("/svc.v1.S/078-05-1120", "invalid"),
        ("/index.html", "invalid"),
    ] {
        let host = host_with(path, None);
        host.set_request_header("x-request-id", "078-05-1120");
        let (engine, metrics) = setup(&host);
        shell::on_request_headers(&host, &engine, &metrics);
        assert_eq!(text(&host, state::METHOD).as_deref(), Some(label), "{path}");
        assert_eq!(
            text(&host, state::REQUEST_ID).as_deref(),
            Some("***-**-****"),
            "{path}"
        );
    }
    let host = host_with("/svc.v1.S/Get", None);
    host.set_request_header("x-request-id", "jane.doe@example.org");
    let (engine, metrics) = setup(&host);
    shell::on_request_headers(&host, &engine, &metrics);
    assert_eq!(text(&host, state::REQUEST_ID), None);
}

#[test]
fn replay_protected_requests_use_the_hosts_shared_data() {
    let env = |name: &str| (name == "RK").then(|| "r".repeat(32));
    let doc = testkit::minimal_config("\"replay_protection\":true,").replace(
        "\"max_token_bytes\":8192}",
        "\"max_token_bytes\":8192,\"replay\":{\"key_env\":\"RK\"}}",
    );
    let host = FakeHost::default();
    host.set_clock(NOW);
    let (engine, metrics) = shell::configure(&host, Some(doc.as_bytes()), &env).unwrap();
    assert_eq!(
        host.shared.borrow().len(),
        crate::replay::BUCKETS,
        "prepared"
    );
    let engine = RefCell::new(engine);
    let mut claims = good_claims();
    claims["jti"] = json!(CANARY);
    let bearer = format!("Bearer {}", token(claims));
    let run = |host: &FakeHost| {
        host.set_clock(NOW);
        host.set_request_header(":path", "/svc.v1.S/Get");
        host.set_request_header("authorization", &bearer);
        shell::on_request_headers(host, &engine, &metrics)
    };
    assert!(run(&host));
    // A second stream (same VM or another worker's: the store is the host's).
    let second = FakeHost::default();
    *second.shared.borrow_mut() = host.shared.borrow().clone();
    *second.counters.borrow_mut() = host.counters.borrow().clone();
    assert!(!run(&second));
    assert_eq!(second.sent_status(), Some(GrpcStatus::Unauthenticated));
    assert_eq!(authn(&second).reason.as_deref(), Some("replayed"));
    assert_eq!(second.counter("phi_guard.jwt.failed.replayed"), 1);
    // Shared data failing: UNAVAILABLE, never a pass.
    let broken = FakeHost::default();
    *broken.counters.borrow_mut() = host.counters.borrow().clone();
    broken.shared_data_broken.set(true);
    assert!(!run(&broken));
    assert_eq!(broken.sent_status(), Some(GrpcStatus::Unavailable));
    let stored = format!("{:?}", host.shared.borrow());
    assert!(!stored.contains("CANARY"), "no jti in shared data");
}
