//! Every accept and reject path of the core, through [`Engine::authenticate`], each asserting
//! the exact reason code. Fixed clock; tokens hand-signed (Ed25519, HMAC) or minted by PyJWT.

use phi_guard_common::{GrpcMethod, Identity};
use serde_json::{json, Map, Value};

use crate::binding;
use crate::config::Config;
use crate::engine::{Engine, Outcome, Request};
use crate::reason::Reason;
use crate::test_support::test;
use crate::testkit::{
    self, b64, ed25519_key, fixture_token, fixtures, sign_eddsa, sign_hs256, HS256_SECRET,
};

/// The fixtures' verification instant (PyJWT tokens are valid for an hour around it).
const NOW: u64 = 1_767_227_400;
const IDP: &str = "https://idp.example";
const CERT_DER: &[u8] = b"client certificate DER stand-in";

fn cert_hex(der: &[u8]) -> String {
    hmac_sha256::Hash::hash(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fixture_secret() -> String {
    fixtures()["hs256_secret"].as_str().unwrap().to_string()
}

fn world_config() -> String {
    let (k1, _) = ed25519_key(Some("k1"));
    let (k2, _) = ed25519_key(Some("k2"));
    let mut keys: Vec<Value> = fixtures()["jwks"]["keys"].as_array().unwrap().clone();
    for (pair, kid) in [(&k1, "k1"), (&k2, "k2")] {
        keys.push(serde_json::from_str(&testkit::ed25519_jwk(pair, Some(kid))).unwrap());
    }
    let k1_only: Value = serde_json::from_str(&testkit::ed25519_jwk(&k1, Some("k1"))).unwrap();
    json!({
        "providers": [
            {"name": "idp", "issuer": IDP, "audiences": ["phi-api"],
             "algorithms": ["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA"],
             "jwks": {"inline": {"keys": keys}}, "max_lifetime_s": 7200},
            {"name": "hs", "issuer": "https://hs.example", "audiences": ["phi-api"],
             "algorithms": ["HS256", "RS256"], "hs256_secret_env": "JWT_SECRET",
             "jwks": {"inline": fixtures()["jwks"].clone()}},
            {"name": "bound", "issuer": "https://bound.example", "audiences": ["phi-api"],
             "algorithms": ["EdDSA"], "require_cert_binding": true,
             "jwks": {"inline": {"keys": [k1_only.clone()]}}},
            {"name": "remote", "issuer": "https://remote.example", "audiences": ["phi-api"],
             "algorithms": ["EdDSA"],
             "jwks": {"remote": {"cluster": "idp", "path": "/jwks", "authority": "idp",
                                 "min_refetch_interval_s": 30, "retry_interval_s": 5}}},
            {"name": "fixture-hs", "issuer": IDP, "audiences": ["phi-api"],
             "algorithms": ["HS256"], "hs256_secret_env": "FIXTURE_SECRET"},
            {"name": "fwd", "issuer": "https://fwd.example", "audiences": ["phi-api"],
             "algorithms": ["EdDSA"], "token_header": "x-token", "forward": true,
             "jwks": {"inline": {"keys": [k1_only]}}}
        ],
        "rules": [
            {"match": "svc.v1.S/*", "requires": {"provider": "idp"}},
            {"match": "svc.v1.S/Hs", "requires": {"provider": "hs"}},
            {"match": "svc.v1.S/Bound", "requires": {"provider": "bound"}},
            {"match": "svc.v1.S/Remote", "requires": {"provider": "remote"}},
            {"match": "svc.v1.S/Any", "requires": {"any_of": ["idp", "hs"]}},
            {"match": "svc.v1.S/Fwd", "requires": {"provider": "fwd"}},
            {"match": "fix.v1.F/Hs", "requires": {"provider": "fixture-hs"}},
            {"match": "grpc.health.v1.Health/Check", "requires": {"allow_missing": true}}
        ]
    })
    .to_string()
}

pub(crate) fn world() -> Engine {
    let env = |name: &str| match name {
        "JWT_SECRET" => Some(HS256_SECRET.to_string()),
        "FIXTURE_SECRET" => Some(fixture_secret()),
        _ => None,
    };
    Engine::new(Config::parse(world_config().as_bytes(), &env).expect("world config"))
}

/// Claims of a good token for `iss`, valid at NOW.
fn claims_for(iss: &str) -> Map<String, Value> {
    json!({
        "iss": iss, "sub": "user-1", "aud": "phi-api",
        "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 600,
        "roles": ["nurse"], "scope": "patient.read patient.write",
        "tenant": "north", "purpose_of_use": "TREAT"
    })
    .as_object()
    .unwrap()
    .clone()
}

fn claims() -> Map<String, Value> {
    claims_for(IDP)
}

fn with(mut c: Map<String, Value>, name: &str, value: Value) -> Map<String, Value> {
    c.insert(name.into(), value);
    c
}

fn without(mut c: Map<String, Value>, name: &str) -> Map<String, Value> {
    c.remove(name);
    c
}

fn ed_header(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#),
        None => r#"{"alg":"EdDSA","typ":"JWT"}"#.to_string(),
    }
}

/// An EdDSA token signed by key `k1` with header kid `k1`.
fn ed(c: &Map<String, Value>) -> String {
    let (pair, _) = ed25519_key(Some("k1"));
    sign_eddsa(
        &pair,
        &ed_header(Some("k1")),
        &Value::Object(c.clone()).to_string(),
    )
}

fn ed_raw(header: &str, payload: &str) -> String {
    let (pair, _) = ed25519_key(Some("k1"));
    sign_eddsa(&pair, header, payload)
}

struct Call<'a> {
    method: &'a str,
    headers: Vec<(&'a str, String)>,
    cert: Option<String>,
    now: u64,
}

impl<'a> Call<'a> {
    fn new(method: &'a str, token: &str) -> Self {
        Call {
            method,
            headers: vec![("authorization", format!("Bearer {token}"))],
            cert: None,
            now: NOW,
        }
    }

    fn at(mut self, now: u64) -> Self {
        self.now = now;
        self
    }

    fn cert(mut self, der: &[u8]) -> Self {
        self.cert = Some(cert_hex(der));
        self
    }

    fn run(&self, engine: &mut Engine) -> Outcome {
        let method = GrpcMethod::from_path(self.method);
        let header = |name: &str| {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let request = Request {
            method: method.as_ref(),
            header: &header,
            peer_cert_sha256_hex: self.cert.as_deref(),
        };
        engine.authenticate(&request, self.now)
    }
}

const S: &str = "/svc.v1.S/Get";

fn deny(call: Call<'_>) -> Reason {
    match call.run(&mut world()) {
        Outcome::Denied(reason) => reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn accept(call: Call<'_>) -> Identity {
    match call.run(&mut world()) {
        Outcome::Verified { identity, .. } => *identity,
        other => panic!("expected success, got {other:?}"),
    }
}

/// Replaces segment `index` of a compact token.
fn replace_segment(token: &str, index: usize, segment: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[index] = segment.to_string();
    parts.join(".")
}

fn flip_last_signature_char(token: &str) -> String {
    let mut t = token.to_string();
    let last = t.pop().unwrap();
    // Flipping the first of the final base64 chars keeps the encoding canonical.
    let sig_start = t.rfind('.').unwrap() + 1;
    let first = t.as_bytes()[sig_start];
    let replacement = if first == b'A' { 'B' } else { 'A' };
    t.replace_range(sig_start..sig_start + 1, &replacement.to_string());
    t.push(last);
    t
}

// ---------------------------------------------------------------- accepted

#[test]
fn good_eddsa_token_yields_the_mapped_identity() {
    let id = accept(Call::new(S, &ed(&claims())));
    assert_eq!(
        id,
        Identity {
            provider: "idp".into(),
            issuer: IDP.into(),
            subject: "user-1".into(),
            roles: vec!["nurse".into()],
            scopes: vec!["patient.read".into(), "patient.write".into()],
            tenant: Some("north".into()),
            purpose_of_use: Some("TREAT".into()),
            break_glass_reason: None,
            expires_at: NOW + 600,
            cert_bound: false,
        }
    );
}

#[test]
fn accepts_ed25519_alg_name_at_jwt_typ_and_audience_arrays() {
    let c = with(claims(), "aud", json!(["other", "phi-api"]));
    let token = ed_raw(
        r#"{"alg":"Ed25519","typ":"at+jwt","kid":"k1"}"#,
        &Value::Object(c).to_string(),
    );
    accept(Call::new(S, &token));
}

#[test]
fn expiry_and_not_before_are_widened_by_the_skew() {
    let token = ed(&claims());
    accept(Call::new(S, &token).at(NOW + 600 + 59));
    let early = with(claims(), "nbf", json!(NOW + 60));
    accept(Call::new(S, &ed(&early)));
}

#[test]
fn hs256_with_the_configured_secret() {
    let c = claims_for("https://hs.example");
    let token = sign_hs256(
        HS256_SECRET.as_bytes(),
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &Value::Object(c).to_string(),
    );
    assert_eq!(accept(Call::new("/svc.v1.S/Hs", &token)).provider, "hs");
}

#[test]
fn any_of_picks_the_provider_by_issuer() {
    let c = claims_for("https://hs.example");
    let hs = sign_hs256(
        HS256_SECRET.as_bytes(),
        r#"{"alg":"HS256"}"#,
        &Value::Object(c).to_string(),
    );
    assert_eq!(accept(Call::new("/svc.v1.S/Any", &hs)).provider, "hs");
    assert_eq!(
        accept(Call::new("/svc.v1.S/Any", &ed(&claims()))).provider,
        "idp"
    );
}

#[test]
fn kid_may_be_omitted_when_one_key_serves_the_alg() {
    let c = claims_for("https://bound.example");
    let thumb = binding::thumbprint_of_der(CERT_DER);
    let c = with(c, "cnf", json!({"x5t#S256": thumb}));
    let (pair, _) = ed25519_key(Some("k1"));
    let token = sign_eddsa(&pair, &ed_header(None), &Value::Object(c).to_string());
    let id = accept(Call::new("/svc.v1.S/Bound", &token).cert(CERT_DER));
    assert!(id.cert_bound);
}

#[test]
fn certificate_bound_token_on_the_right_connection() {
    let c = with(
        claims(),
        "cnf",
        json!({"x5t#S256": binding::thumbprint_of_der(CERT_DER)}),
    );
    assert!(accept(Call::new(S, &ed(&c)).cert(CERT_DER)).cert_bound);
}

#[test]
fn allow_missing_skips_without_a_token_but_checks_one_that_is_present() {
    let mut engine = world();
    let mut call = Call::new("/grpc.health.v1.Health/Check", "x");
    call.headers.clear();
    assert_eq!(call.run(&mut engine), Outcome::Skipped);
    call.headers.push(("authorization", "Basic dTpw".into()));
    assert_eq!(
        call.run(&mut engine),
        Outcome::Skipped,
        "a non-Bearer credential is not ours"
    );
    let good = Call::new("/grpc.health.v1.Health/Check", &ed(&claims()));
    assert!(matches!(good.run(&mut engine), Outcome::Verified { .. }));
    let expired = Call::new("/grpc.health.v1.Health/Check", &ed(&claims())).at(NOW + 3600);
    assert_eq!(expired.run(&mut world()), Outcome::Denied(Reason::Expired));
}

#[test]
fn token_header_is_stripped_unless_forwarded() {
    let mut engine = world();
    match Call::new(S, &ed(&claims())).run(&mut engine) {
        Outcome::Verified { strip_headers, .. } => {
            assert_eq!(strip_headers, vec!["authorization"])
        }
        other => panic!("{other:?}"),
    }
    let token = ed(&claims_for("https://fwd.example"));
    let call = Call {
        method: "/svc.v1.S/Fwd",
        headers: vec![("x-token", token)],
        cert: None,
        now: NOW,
    };
    match call.run(&mut engine) {
        Outcome::Verified { strip_headers, .. } => assert!(strip_headers.is_empty()),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- the token cache

#[test]
fn a_reused_token_is_verified_once_and_time_is_rechecked_on_hits() {
    let mut engine = world();
    let token = ed(&claims());
    let hit = |o: Outcome| match o {
        Outcome::Verified { cache_hit, .. } => cache_hit,
        other => panic!("{other:?}"),
    };
    assert!(!hit(Call::new(S, &token).run(&mut engine)));
    assert!(hit(Call::new(S, &token).run(&mut engine)));
    assert_eq!(engine.cached_tokens(), 1);
    assert_eq!(
        Call::new(S, &token).at(NOW + 660).run(&mut engine),
        Outcome::Denied(Reason::Expired)
    );
    assert_eq!(engine.cached_tokens(), 0, "dropped at exp");
    // nbf is re-applied too: a hit before the token's window opens is refused.
    let later = with(claims(), "nbf", json!(NOW + 30));
    let later = ed(&later);
    assert!(!hit(Call::new(S, &later).run(&mut engine)));
    assert_eq!(
        Call::new(S, &later).at(NOW - 100).run(&mut engine),
        Outcome::Denied(Reason::NotYetValid)
    );
}

#[test]
fn a_cached_bound_token_still_needs_its_certificate() {
    let mut engine = world();
    let c = with(
        claims(),
        "cnf",
        json!({"x5t#S256": binding::thumbprint_of_der(CERT_DER)}),
    );
    let token = ed(&c);
    assert!(matches!(
        Call::new(S, &token).cert(CERT_DER).run(&mut engine),
        Outcome::Verified { .. }
    ));
    assert_eq!(
        Call::new(S, &token).cert(b"another cert").run(&mut engine),
        Outcome::Denied(Reason::CnfMismatch)
    );
    assert_eq!(
        Call::new(S, &token).run(&mut engine),
        Outcome::Denied(Reason::NoClientCert)
    );
    assert!(matches!(
        Call::new(S, &token).cert(CERT_DER).run(&mut engine),
        Outcome::Verified {
            cache_hit: true,
            ..
        }
    ));
}

// ---------------------------------------------------------------- remote JWKS

#[test]
fn remote_keys_fail_closed_until_fetched_then_verify() {
    let mut engine = world();
    let token = ed(&claims_for("https://remote.example"));
    let call = || Call::new("/svc.v1.S/Remote", &token);
    assert_eq!(
        call().run(&mut engine),
        Outcome::Denied(Reason::JwksUnavailable)
    );
    let due = engine.due_fetches(NOW);
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].cluster.as_str(), due[0].path.as_str()),
        ("idp", "/jwks")
    );
    assert!(engine.due_fetches(NOW).is_empty(), "in flight");
    assert!(engine
        .on_jwks_response(due[0].provider, Some(503), b"", NOW)
        .is_err());
    assert_eq!(
        call().run(&mut engine),
        Outcome::Denied(Reason::JwksUnavailable)
    );
    let due = engine.due_fetches(NOW + 5);
    let (_, jwks) = ed25519_key(Some("k1"));
    engine
        .on_jwks_response(due[0].provider, Some(200), jwks.as_bytes(), NOW + 5)
        .unwrap();
    assert!(matches!(call().run(&mut engine), Outcome::Verified { .. }));
    // Garbage later does not replace the good set.
    let due = engine.due_fetches(NOW + 5 + 600);
    assert_eq!(due.len(), 1);
    assert!(engine
        .on_jwks_response(due[0].provider, Some(200), b"{\"keys\":\"no\"}", NOW + 605)
        .is_err());
    assert!(matches!(
        call().at(NOW + 606).run(&mut engine),
        Outcome::Verified { .. }
    ));
}

#[test]
fn unknown_kid_triggers_a_rate_limited_refetch_and_rotation_clears_the_cache() {
    let mut engine = world();
    let due = engine.due_fetches(NOW);
    let (_, k1_jwks) = ed25519_key(Some("k1"));
    engine
        .on_jwks_response(due[0].provider, Some(200), k1_jwks.as_bytes(), NOW)
        .unwrap();
    let old = ed(&claims_for("https://remote.example"));
    assert!(matches!(
        Call::new("/svc.v1.S/Remote", &old).run(&mut engine),
        Outcome::Verified { .. }
    ));

    let (k2, k2_jwks) = ed25519_key(Some("k2"));
    let rotated = sign_eddsa(
        &k2,
        &ed_header(Some("k2")),
        &Value::Object(claims_for("https://remote.example")).to_string(),
    );
    let call = |at: u64| Call::new("/svc.v1.S/Remote", &rotated).at(at);
    assert_eq!(
        call(NOW + 10).run(&mut engine),
        Outcome::Denied(Reason::UnknownKid)
    );
    assert!(
        engine.due_fetches(NOW + 10).is_empty(),
        "within min_refetch_interval_s"
    );
    assert_eq!(
        call(NOW + 30).run(&mut engine),
        Outcome::Denied(Reason::UnknownKid)
    );
    let due = engine.due_fetches(NOW + 30);
    assert_eq!(due.len(), 1, "unknown kid scheduled an early fetch");
    engine
        .on_jwks_response(due[0].provider, Some(200), k2_jwks.as_bytes(), NOW + 31)
        .unwrap();
    assert!(matches!(
        call(NOW + 31).run(&mut engine),
        Outcome::Verified { .. }
    ));
    // k1 was rotated out: its cached token must not keep passing.
    assert_eq!(
        Call::new("/svc.v1.S/Remote", &old)
            .at(NOW + 31)
            .run(&mut engine),
        Outcome::Denied(Reason::UnknownKid)
    );
}

// ---------------------------------------------------------------- rejected: one reason each

#[test]
fn rejects_alg_none_and_unknown_algorithms() {
    let payload = Value::Object(claims()).to_string();
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&payload)
    );
    assert_eq!(deny(Call::new(S, &none)), Reason::UnsupportedAlg);
    let none_cased = format!("{}.{}.", b64(r#"{"alg":"nOnE"}"#), b64(&payload));
    assert_eq!(deny(Call::new(S, &none_cased)), Reason::UnsupportedAlg);
    let es512 = ed_raw(r#"{"alg":"ES512","kid":"k1"}"#, &payload);
    assert_eq!(deny(Call::new(S, &es512)), Reason::UnsupportedAlg);
}

#[test]
fn rejects_hs256_signed_with_the_rsa_public_key() {
    let pem = fixtures()["rs256_public_pem"].as_str().unwrap().to_string();
    let header = r#"{"alg":"HS256","typ":"JWT","kid":"rs256"}"#;
    let forged = sign_hs256(pem.as_bytes(), header, &Value::Object(claims()).to_string());
    // Where HS256 is not allowed the algorithm alone refuses it...
    assert_eq!(deny(Call::new(S, &forged)), Reason::AlgNotAllowed);
    // ...and where it is, only the configured secret verifies HS256, never a JWKS key.
    let forged = sign_hs256(
        pem.as_bytes(),
        header,
        &Value::Object(claims_for("https://hs.example")).to_string(),
    );
    assert_eq!(
        deny(Call::new("/svc.v1.S/Hs", &forged)),
        Reason::BadSignature
    );
    let wrong_secret = sign_hs256(
        &[b'x'; 32],
        header,
        &Value::Object(claims_for("https://hs.example")).to_string(),
    );
    assert_eq!(
        deny(Call::new("/svc.v1.S/Hs", &wrong_secret)),
        Reason::BadSignature
    );
}

#[test]
fn rejects_algorithms_the_provider_does_not_allow() {
    let token = ed(&claims_for("https://hs.example"));
    assert_eq!(
        deny(Call::new("/svc.v1.S/Hs", &token)),
        Reason::AlgNotAllowed
    );
}

#[test]
fn rejects_tampered_payloads_for_every_pyjwt_algorithm() {
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ] {
        let token = fixture_token(alg);
        let payload = token.split('.').nth(1).unwrap();
        let mut claims: Value = serde_json::from_slice(&base64_decode(payload)).unwrap();
        claims["roles"] = json!(["admin"]);
        let tampered = replace_segment(&token, 1, &b64(claims.to_string()));
        assert_eq!(deny(Call::new(S, &tampered)), Reason::BadSignature, "{alg}");
    }
}

#[test]
fn rejects_tampered_signatures_for_every_pyjwt_algorithm() {
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ] {
        let tampered = flip_last_signature_char(&fixture_token(alg));
        assert_eq!(deny(Call::new(S, &tampered)), Reason::BadSignature, "{alg}");
        let token = fixture_token(alg);
        let mut signature = base64_decode(token.rsplit('.').next().unwrap());
        signature.pop();
        let truncated = replace_segment(&token, 2, &b64(&signature));
        assert_eq!(
            deny(Call::new(S, &truncated)),
            Reason::BadSignature,
            "{alg} truncated"
        );
    }
}

#[test]
fn rejects_a_signature_by_another_key_under_a_known_kid() {
    let (k2, _) = ed25519_key(Some("k2"));
    let token = sign_eddsa(
        &k2,
        &ed_header(Some("k1")),
        &Value::Object(claims()).to_string(),
    );
    assert_eq!(deny(Call::new(S, &token)), Reason::BadSignature);
    let swapped = replace_segment(&ed(&claims()), 2, &b64([0u8; 64]));
    assert_eq!(deny(Call::new(S, &swapped)), Reason::BadSignature);
}

#[test]
fn rejects_on_time() {
    assert_eq!(
        deny(Call::new(S, &ed(&claims())).at(NOW + 660)),
        Reason::Expired
    );
    assert_eq!(
        deny(Call::new(S, &fixture_token("RS256")).at(NOW + 7200)),
        Reason::Expired
    );
    assert_eq!(
        deny(Call::new(S, &ed(&without(claims(), "exp")))),
        Reason::MissingExp
    );
    assert_eq!(
        deny(Call::new(S, &ed(&with(claims(), "nbf", json!(NOW + 61))))),
        Reason::NotYetValid
    );
    assert_eq!(
        deny(Call::new(S, &ed(&with(claims(), "iat", json!(NOW + 61))))),
        Reason::IssuedInFuture
    );
    let long = with(claims(), "exp", json!(NOW - 60 + 7201));
    assert_eq!(deny(Call::new(S, &ed(&long))), Reason::LifetimeTooLong);
    assert_eq!(
        deny(Call::new(S, &ed(&without(claims(), "iat")))),
        Reason::MissingIat
    );
    let backwards = with(claims(), "iat", json!(NOW + 601));
    let backwards = with(backwards, "exp", json!(NOW + 600));
    // exp before iat: the lifetime is negative, which no issuer means.
    assert_eq!(
        deny(Call::new(S, &ed(&backwards)).at(NOW + 599)),
        Reason::BadClaim
    );
}

#[test]
fn rejects_on_issuer_audience_and_subject() {
    assert_eq!(
        deny(Call::new(S, &ed(&claims_for("https://evil.example")))),
        Reason::WrongIssuer
    );
    assert_eq!(
        deny(Call::new(S, &ed(&without(claims(), "iss")))),
        Reason::WrongIssuer
    );
    assert_eq!(
        deny(Call::new(
            "/svc.v1.S/Any",
            &ed(&claims_for("https://bound.example"))
        )),
        Reason::WrongIssuer
    );
    assert_eq!(
        deny(Call::new(S, &ed(&with(claims(), "aud", json!("other"))))),
        Reason::WrongAudience
    );
    assert_eq!(
        deny(Call::new(S, &ed(&with(claims(), "aud", json!(["a", "b"]))))),
        Reason::WrongAudience
    );
    assert_eq!(
        deny(Call::new(S, &ed(&with(claims(), "aud", json!([]))))),
        Reason::WrongAudience
    );
    assert_eq!(
        deny(Call::new(S, &ed(&without(claims(), "aud")))),
        Reason::WrongAudience
    );
    assert_eq!(
        deny(Call::new(S, &ed(&without(claims(), "sub")))),
        Reason::MissingSub
    );
}

#[test]
fn rejects_on_key_selection() {
    let payload = Value::Object(claims()).to_string();
    let (k1, _) = ed25519_key(Some("k1"));
    let unknown = sign_eddsa(&k1, &ed_header(Some("k9")), &payload);
    assert_eq!(deny(Call::new(S, &unknown)), Reason::UnknownKid);
    let ambiguous = sign_eddsa(&k1, &ed_header(None), &payload);
    assert_eq!(deny(Call::new(S, &ambiguous)), Reason::MissingKid);
    let mismatched = sign_eddsa(&k1, r#"{"alg":"ES256","kid":"rs256"}"#, &payload);
    assert_eq!(deny(Call::new(S, &mismatched)), Reason::KeyAlgMismatch);
    let eddsa_as_rsa = sign_eddsa(&k1, r#"{"alg":"RS256","kid":"k1"}"#, &payload);
    assert_eq!(deny(Call::new(S, &eddsa_as_rsa)), Reason::KeyAlgMismatch);
}

#[test]
fn rejects_malformed_encodings() {
    let good = ed(&claims());
    assert_eq!(
        deny(Call::new(S, &replace_segment(&good, 1, "e30*"))),
        Reason::Malformed
    );
    assert_eq!(
        deny(Call::new(
            S,
            &good.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
        )),
        Reason::Malformed
    );
    assert_eq!(
        deny(Call::new(S, &format!("{good}.e30"))),
        Reason::Malformed
    );
    assert_eq!(deny(Call::new(S, &format!("{good}="))), Reason::Malformed);
    assert_eq!(deny(Call::new(S, "a b")), Reason::Malformed);
    let mut empty = Call::new(S, "");
    empty.headers = vec![("authorization", "Bearer ".into())];
    assert_eq!(deny(empty), Reason::Malformed);
}

#[test]
fn rejects_malformed_json() {
    assert_eq!(
        deny(Call::new(
            S,
            &ed_raw("not json", &Value::Object(claims()).to_string())
        )),
        Reason::BadJson
    );
    assert_eq!(
        deny(Call::new(S, &ed_raw(&ed_header(Some("k1")), "{\"sub\":"))),
        Reason::BadJson
    );
    assert_eq!(
        deny(Call::new(S, &ed_raw(&ed_header(Some("k1")), "[\"sub\"]"))),
        Reason::BadJson
    );
}

#[test]
fn rejects_oversized_tokens_before_parsing() {
    let c = with(claims(), "padding", json!("p".repeat(9000)));
    assert_eq!(deny(Call::new(S, &ed(&c))), Reason::TooLarge);
    assert_eq!(deny(Call::new(S, &"x".repeat(8193))), Reason::TooLarge);
}

#[test]
fn rejects_duplicate_members() {
    let dup_claim = r#"{"iss":"https://idp.example","sub":"user-1","sub":"admin","aud":"phi-api","exp":1767228000,"iat":1767227340}"#;
    assert_eq!(
        deny(Call::new(S, &ed_raw(&ed_header(Some("k1")), dup_claim))),
        Reason::DuplicateMember
    );
    let escaped = r#"{"iss":"https://idp.example","sub":"user-1","s\u0075b":"admin","aud":"phi-api","exp":1767228000}"#;
    assert_eq!(
        deny(Call::new(S, &ed_raw(&ed_header(Some("k1")), escaped))),
        Reason::DuplicateMember
    );
    let dup_header = r#"{"alg":"EdDSA","kid":"k1","kid":"k2"}"#;
    assert_eq!(
        deny(Call::new(
            S,
            &ed_raw(dup_header, &Value::Object(claims()).to_string())
        )),
        Reason::DuplicateMember
    );
}

#[test]
fn rejects_wrongly_typed_claims() {
    for (name, value) in [
        ("exp", json!("1767228000")),
        ("exp", json!(1_767_228_000.5)),
        ("iat", json!(-5)),
        ("aud", json!(7)),
        ("sub", json!(42)),
        ("roles", json!(3)),
        ("roles", json!(["nurse", 1])),
        ("scope", json!({"read": true})),
        ("tenant", json!(["north"])),
        ("purpose_of_use", json!(false)),
        ("cnf", json!("x5t")),
        ("jti", json!(1)),
    ] {
        assert_eq!(
            deny(Call::new(S, &ed(&with(claims(), name, value.clone())))),
            Reason::BadClaim,
            "{name}={value}"
        );
    }
}

#[test]
fn rejects_bad_headers() {
    let payload = Value::Object(claims()).to_string();
    assert_eq!(
        deny(Call::new(
            S,
            &ed_raw(r#"{"alg":"EdDSA","kid":"k1","crit":["exp"]}"#, &payload)
        )),
        Reason::UnknownCrit
    );
    assert_eq!(
        deny(Call::new(
            S,
            &ed_raw(r#"{"alg":"EdDSA","kid":"k1","crit":[]}"#, &payload)
        )),
        Reason::BadHeader
    );
    assert_eq!(
        deny(Call::new(
            S,
            &ed_raw(r#"{"alg":"EdDSA","kid":"k1","typ":"JOSE"}"#, &payload)
        )),
        Reason::BadTyp
    );
    assert_eq!(
        deny(Call::new(
            S,
            &ed_raw(r#"{"alg":"EdDSA","kid":"k1","typ":7}"#, &payload)
        )),
        Reason::BadHeader
    );
    assert_eq!(
        deny(Call::new(
            S,
            &ed_raw(r#"{"alg":"EdDSA","kid":1}"#, &payload)
        )),
        Reason::BadHeader
    );
    assert_eq!(
        deny(Call::new(S, &ed_raw(r#"{"kid":"k1"}"#, &payload))),
        Reason::BadHeader
    );
}

#[test]
fn rejects_on_certificate_binding() {
    let bound = with(
        claims(),
        "cnf",
        json!({"x5t#S256": binding::thumbprint_of_der(CERT_DER)}),
    );
    assert_eq!(
        deny(Call::new(S, &ed(&bound)).cert(b"someone else")),
        Reason::CnfMismatch
    );
    assert_eq!(deny(Call::new(S, &ed(&bound))), Reason::NoClientCert);
    let mut garbage_digest = Call::new(S, &ed(&bound));
    garbage_digest.cert = Some("zz".into());
    assert_eq!(deny(garbage_digest), Reason::NoClientCert);
    let unbound = ed(&claims_for("https://bound.example"));
    assert_eq!(
        deny(Call::new("/svc.v1.S/Bound", &unbound).cert(CERT_DER)),
        Reason::CnfMissing
    );
    let dpop = with(claims(), "cnf", json!({"jkt": "abc"}));
    assert_eq!(
        deny(Call::new(S, &ed(&dpop)).cert(CERT_DER)),
        Reason::CnfUnsupported
    );
}

#[test]
fn rejects_requests_without_a_usable_token_or_method() {
    let mut none = Call::new(S, "");
    none.headers.clear();
    assert_eq!(deny(none), Reason::Missing);
    let mut basic = Call::new(S, "");
    basic.headers = vec![("authorization", "Basic dTpw".into())];
    assert_eq!(deny(basic), Reason::Missing);
    let good = ed(&claims());
    assert_eq!(deny(Call::new("/svc.v1.S", &good)), Reason::BadPath);
    assert_eq!(deny(Call::new("/svc.v1.S/Get?x=1", &good)), Reason::BadPath);
    // A method no rule names: with a valid token the caller is known (PERMISSION_DENIED).
    match Call::new("/other.v1.O/Get", &good).run(&mut world()) {
        Outcome::Forbidden { identity, reason } => {
            assert_eq!(reason, Reason::NoRule);
            assert_eq!(identity.subject, "user-1");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unlisted_method_never_lets_an_unauthenticated_call_through() {
    let m = "/other.v1.O/Get";
    let mut none = Call::new(m, "");
    none.headers.clear();
    assert_eq!(deny(none), Reason::Missing);
    let expired = ed(&with(claims(), "exp", json!(NOW - 3600)));
    assert_eq!(deny(Call::new(m, &expired)), Reason::Expired);
    let forged = flip_last_signature_char(&ed(&claims()));
    assert_eq!(deny(Call::new(m, &forged)), Reason::BadSignature);
    assert_eq!(
        deny(Call::new(m, &ed(&claims_for("https://nobody.example")))),
        Reason::WrongIssuer
    );
    let logout = ed_raw(
        r#"{"alg":"EdDSA","kid":"k1","typ":"logout+jwt"}"#,
        &Value::Object(claims()).to_string(),
    );
    assert_eq!(deny(Call::new(m, &logout)), Reason::BadTyp);
}

// ---------------------------------------------------------------- explicit typing

#[test]
fn token_types_other_than_access_tokens_are_refused() {
    let payload = Value::Object(claims()).to_string();
    let typed = |typ: &str| {
        ed_raw(
            &format!(r#"{{"alg":"EdDSA","kid":"k1","typ":"{typ}"}}"#),
            &payload,
        )
    };
    // The issue's input: an OIDC back-channel logout token, otherwise valid.
    for typ in [
        "logout+jwt",
        "secevent+jwt",
        "dpop+jwt",
        "application/logout+jwt",
        "JWS",
        "+jwt",
    ] {
        assert_eq!(deny(Call::new(S, &typed(typ))), Reason::BadTyp, "{typ}");
    }
    // The default list, compared per RFC 7515 §4.1.9.
    for typ in [
        "JWT",
        "jwt",
        "application/jwt",
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
    ] {
        accept(Call::new(S, &typed(typ)));
    }
    accept(Call::new(
        S,
        &ed_raw(r#"{"alg":"EdDSA","kid":"k1"}"#, &payload),
    ));
}

fn configured(extra_provider: &str, rules: &str, env: &dyn Fn(&str) -> Option<String>) -> Engine {
    let doc = testkit::minimal_config(extra_provider).replace(
        "\"rules\":[{\"match\":\"svc.v1.S/*\",\"requires\":{\"provider\":\"idp\"}}]",
        rules,
    );
    Engine::new(Config::parse(doc.as_bytes(), env).expect("config"))
}

#[test]
fn typ_is_configurable_per_provider() {
    let rules = r#""rules":[{"match":"svc.v1.S/*","requires":{"provider":"idp"}}]"#;
    let mut engine = configured(r#""typ":["at+jwt"],"typ_required":true,"#, rules, &|_| None);
    let payload = Value::Object(with(claims(), "iss", json!("https://idp.example"))).to_string();
    let run =
        |engine: &mut Engine, header: &str| Call::new(S, &ed_raw(header, &payload)).run(engine);
    assert!(matches!(
        run(&mut engine, r#"{"alg":"EdDSA","kid":"k1","typ":"at+jwt"}"#),
        Outcome::Verified { .. }
    ));
    for header in [
        r#"{"alg":"EdDSA","kid":"k1","typ":"JWT"}"#,
        r#"{"alg":"EdDSA","kid":"k1"}"#,
    ] {
        assert_eq!(
            run(&mut engine, header),
            Outcome::Denied(Reason::BadTyp),
            "{header}"
        );
    }
}

// ---------------------------------------------------------------- all_of / any_of

/// Two providers on two headers: `a` (authorization, key k1) and `b` (x-b-token, key k2).
fn two_header_engine(requires: &str) -> Engine {
    let jwk = |kid: &str| -> Value {
        let (pair, _) = ed25519_key(Some(kid));
        serde_json::from_str(&testkit::ed25519_jwk(&pair, Some(kid))).unwrap()
    };
    let requires: Value = serde_json::from_str(requires).unwrap();
    let doc = json!({
        "providers": [
            {"name": "a", "issuer": IDP, "audiences": ["phi-api"], "algorithms": ["EdDSA"],
             "jwks": {"inline": {"keys": [jwk("k1")]}}},
            {"name": "b", "issuer": "https://b.example", "audiences": ["phi-api"],
             "algorithms": ["EdDSA"], "token_header": "x-b-token",
             "jwks": {"inline": {"keys": [jwk("k2")]}}}
        ],
        "rules": [{"match": "svc.v1.S/*", "requires": requires}]
    });
    Engine::new(Config::parse(doc.to_string().as_bytes(), &|_| None).expect("config"))
}

fn b_token(c: &Map<String, Value>) -> String {
    let (pair, _) = ed25519_key(Some("k2"));
    sign_eddsa(
        &pair,
        &ed_header(Some("k2")),
        &Value::Object(c.clone()).to_string(),
    )
}

fn two_tokens(a: Option<String>, b: Option<String>) -> Call<'static> {
    let mut call = Call::new(S, "");
    call.headers.clear();
    if let Some(a) = a {
        call.headers.push(("authorization", format!("Bearer {a}")));
    }
    if let Some(b) = b {
        call.headers.push(("x-b-token", b));
    }
    call
}

#[test]
fn all_of_needs_every_token_and_strips_every_header() {
    let mut engine = two_header_engine(r#"{"all_of":["a","b"]}"#);
    let a = ed(&claims());
    let b = b_token(&claims_for("https://b.example"));
    match two_tokens(Some(a.clone()), Some(b.clone())).run(&mut engine) {
        Outcome::Verified {
            identity,
            strip_headers,
            ..
        } => {
            assert_eq!(
                identity.provider, "a",
                "the first requirement gives the identity"
            );
            assert_eq!(strip_headers, vec!["authorization", "x-b-token"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        two_tokens(Some(a.clone()), None).run(&mut engine),
        Outcome::Denied(Reason::Missing)
    );
    assert_eq!(
        two_tokens(None, Some(b.clone())).run(&mut engine),
        Outcome::Denied(Reason::Missing)
    );
    let bad_b = flip_last_signature_char(&b);
    assert_eq!(
        two_tokens(Some(a), Some(bad_b)).run(&mut engine),
        Outcome::Denied(Reason::BadSignature)
    );
}

#[test]
fn any_of_and_nesting() {
    let mut engine = two_header_engine(r#"{"any_of":["a","b"]}"#);
    let a = ed(&claims());
    let b = b_token(&claims_for("https://b.example"));
    assert!(matches!(
        two_tokens(None, Some(b.clone())).run(&mut engine),
        Outcome::Verified { ref identity, .. } if identity.provider == "b"
    ));
    assert!(matches!(
        two_tokens(Some(a.clone()), None).run(&mut engine),
        Outcome::Verified { ref identity, .. } if identity.provider == "a"
    ));
    // The telling reason wins over `missing` from the other alternative.
    let expired = ed(&with(claims(), "exp", json!(NOW - 3600)));
    assert_eq!(
        two_tokens(Some(expired), None).run(&mut engine),
        Outcome::Denied(Reason::Expired)
    );
    assert_eq!(
        two_tokens(None, None).run(&mut engine),
        Outcome::Denied(Reason::Missing)
    );
    // any_of [b, all_of [a, b]]: b alone suffices; a alone does not.
    let mut engine = two_header_engine(r#"{"any_of":[{"all_of":["a","b"]},"b"]}"#);
    assert!(matches!(
        two_tokens(None, Some(b.clone())).run(&mut engine),
        Outcome::Verified { .. }
    ));
    assert_eq!(
        two_tokens(Some(a), None).run(&mut engine),
        Outcome::Denied(Reason::Missing)
    );
}

// ---------------------------------------------------------------- replay

fn replay_engine(provider_flag: bool) -> Engine {
    let env = |name: &str| (name == "RK").then(|| "r".repeat(32));
    let (extra, rules) = if provider_flag {
        (
            r#""replay_protection":true,"#,
            r#""rules":[{"match":"svc.v1.S/*","requires":{"provider":"idp"}}],"replay":{"key_env":"RK"}"#,
        )
    } else {
        (
            "",
            r#""rules":[{"match":"svc.v1.S/*","requires":{"provider":"idp"}},{"match":"svc.v1.S/Delete","requires":{"provider":"idp"},"replay_protection":true}],"replay":{"key_env":"RK"}"#,
        )
    };
    configured(extra, rules, &env)
}

fn run_with_store(
    engine: &mut Engine,
    store: &phi_guard_host::FakeHost,
    method: &str,
    token: &str,
) -> Outcome {
    let call = Call::new(method, token);
    let m = GrpcMethod::from_path(method);
    let header = |name: &str| {
        call.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let request = Request {
        method: m.as_ref(),
        header: &header,
        peer_cert_sha256_hex: None,
    };
    engine.authenticate_with(&request, NOW, Some(store))
}

#[test]
fn replay_on_a_method_refuses_the_second_use_across_workers() {
    let store = phi_guard_host::FakeHost::default();
    // Two engines (two Envoy workers' VMs) sharing one shared-data store.
    let (mut w1, mut w2) = (replay_engine(false), replay_engine(false));
    let token = ed(&with(claims(), "jti", json!("jti-0001")));
    let del = "/svc.v1.S/Delete";
    assert!(matches!(
        run_with_store(&mut w1, &store, del, &token),
        Outcome::Verified { .. }
    ));
    assert_eq!(
        run_with_store(&mut w2, &store, del, &token),
        Outcome::Denied(Reason::Replayed)
    );
    // The cache hit on the first worker is a use too.
    assert_eq!(
        run_with_store(&mut w1, &store, del, &token),
        Outcome::Denied(Reason::Replayed)
    );
    // Other methods of the provider are not protected: reuse is fine there.
    for _ in 0..2 {
        assert!(matches!(
            run_with_store(&mut w2, &store, S, &token),
            Outcome::Verified { .. }
        ));
    }
    // No jti on a protected method.
    assert_eq!(
        run_with_store(&mut w1, &store, del, &ed(&claims())),
        Outcome::Denied(Reason::MissingJti)
    );
    // Without a store the engine fails closed.
    let mut call = Call::new(del, &ed(&with(claims(), "jti", json!("jti-0002"))));
    call.now = NOW;
    assert_eq!(call.run(&mut w1), Outcome::Denied(Reason::ReplayCacheError));
}

#[test]
fn replay_on_a_provider_covers_all_its_methods() {
    let store = phi_guard_host::FakeHost::default();
    let mut engine = replay_engine(true);
    let token = ed(&with(claims(), "jti", json!("once")));
    assert!(matches!(
        run_with_store(&mut engine, &store, S, &token),
        Outcome::Verified { .. }
    ));
    assert_eq!(
        run_with_store(&mut engine, &store, "/svc.v1.S/Other", &token),
        Outcome::Denied(Reason::Replayed)
    );
    let broken = phi_guard_host::FakeHost::default();
    broken.shared_data_broken.set(true);
    let fresh = ed(&with(claims(), "jti", json!("fresh")));
    assert_eq!(
        run_with_store(&mut engine, &broken, S, &fresh),
        Outcome::Denied(Reason::ReplayCacheError)
    );
    assert_eq!(
        Reason::ReplayCacheError.status(),
        phi_guard_common::GrpcStatus::Unavailable
    );
    assert_eq!(
        Reason::Replayed.status(),
        phi_guard_common::GrpcStatus::Unauthenticated
    );
}

// ---------------------------------------------------------------- PyJWT fixtures

#[test]
fn every_pyjwt_token_verifies_at_the_fixture_clock() {
    let f = fixtures();
    assert_eq!(f["verify_at"].as_u64(), Some(NOW));
    let mut algs = Vec::new();
    for entry in f["tokens"].as_array().unwrap() {
        let alg = entry["alg"].as_str().unwrap();
        let method = if alg == "HS256" { "/fix.v1.F/Hs" } else { S };
        let id = accept(Call::new(method, entry["token"].as_str().unwrap()));
        let claims = &entry["claims"];
        assert_eq!(id.subject, claims["sub"].as_str().unwrap(), "{alg}");
        assert_eq!(id.issuer, claims["iss"].as_str().unwrap());
        assert_eq!(id.expires_at, claims["exp"].as_u64().unwrap());
        assert_eq!(id.roles, vec!["nurse"]);
        assert_eq!(
            id.scopes,
            vec!["patient.read", "patient.write"],
            "{alg}: scope string or scp list"
        );
        assert_eq!(id.tenant.as_deref(), Some("north"));
        assert_eq!(id.purpose_of_use.as_deref(), Some("TREAT"));
        assert!(!id.cert_bound);
        algs.push(alg.to_string());
    }
    algs.sort();
    assert_eq!(
        algs,
        [
            "ES256", "ES384", "EdDSA", "HS256", "PS256", "PS384", "PS512", "RS256", "RS384",
            "RS512"
        ]
    );
}

/// Regression (cargo-fuzz jwt_token, fuzz/seeds/jwt_token/vertical-tabs): a valid token with
/// control whitespace around it used to verify because extraction trimmed all Unicode
/// whitespace. Only SP and HTAB may surround a bearer token.
#[test]
fn control_whitespace_around_a_valid_token_is_malformed() {
    let token = fixture_token("ES256");
    for junk in ["\u{b}\u{b}", "\u{c}", "\u{a0}"] {
        assert_eq!(
            deny(Call::new(S, &format!("{junk}{token}"))),
            Reason::Malformed,
            "{junk:?} before"
        );
        assert_eq!(
            deny(Call::new(S, &format!("{token}{junk}"))),
            Reason::Malformed,
            "{junk:?} after"
        );
    }
    accept(Call::new(S, &format!(" \t{token}\t ")));
}

#[test]
fn pyjwt_tokens_fail_outside_their_window() {
    let f = fixtures();
    let (iat, exp) = (f["iat"].as_u64().unwrap(), f["exp"].as_u64().unwrap());
    for alg in ["RS256", "ES384", "EdDSA"] {
        assert_eq!(
            deny(Call::new(S, &fixture_token(alg)).at(exp + 60)),
            Reason::Expired
        );
        assert_eq!(
            deny(Call::new(S, &fixture_token(alg)).at(iat - 61)),
            Reason::NotYetValid
        );
    }
}

fn base64_decode(segment: &str) -> Vec<u8> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    URL_SAFE_NO_PAD.decode(segment).unwrap()
}
