//! The jwt filter in Envoy: tokens from the demo IdP, its JWKS fetched over HTTP from a
//! local server, rotation, outage, and certificate-bound tokens.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use phi_guard_e2e::{all_logs, get_patient_code, logged_reasons, wait_until};
use phi_guard_proto::health::v1::GetPatientRequest;
use phi_guard_tools::backend::PATIENT_ID;
use phi_guard_tools::client::{connect_mtls, ClientCert};
use phi_guard_tools::issuer::{self, cert_thumbprint, JwksMode, SigningKey, UserClaims};
use phi_guard_tools::stack::Stack;
use tonic::Code;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn nurse() -> UserClaims {
    UserClaims::user("nurse-7", &["nurse"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_unauthenticated_with_its_reason_logged() {
    let stack = Stack::builder("jwt_rejects")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    let key = &stack.idp.key;
    let t = now();
    let valid = stack.token("nurse").to_string();
    assert_eq!(
        get_patient_code(&stack, "frontend", Some(&valid)).await,
        Code::Ok
    );

    let rogue = SigningKey::generate("rogue-key");
    // Flip one character at the start of the signature: the last character of a base64url
    // signature carries padding bits, and changing it may only make the encoding invalid.
    let signature_at = valid.rfind('.').unwrap() + 1;
    let mut tampered = valid.clone();
    let flipped = if &valid[signature_at..=signature_at] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(signature_at..=signature_at, flipped);
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        valid.split('.').nth(1).unwrap()
    );
    let cases: Vec<(&str, Option<String>, &[&str])> = vec![
        ("no token", None, &["missing"]),
        ("garbage", Some("not-a-jwt".into()), &["malformed"]),
        (
            "alg none",
            Some(alg_none),
            &["unsupported_alg", "alg_not_allowed"],
        ),
        ("tampered signature", Some(tampered), &["bad_signature"]),
        (
            "expired",
            Some(key.mint_at(
                &nurse(),
                issuer::ISSUER,
                issuer::AUDIENCE,
                t - 7200,
                t - 3600,
            )),
            &["expired"],
        ),
        (
            "not yet valid",
            Some(key.mint_at(
                &nurse(),
                issuer::ISSUER,
                issuer::AUDIENCE,
                t + 600,
                t + 1200,
            )),
            &["not_yet_valid", "issued_in_future"],
        ),
        (
            "lifetime beyond the 1 h maximum",
            Some(key.mint_at(&nurse(), issuer::ISSUER, issuer::AUDIENCE, t, t + 7200)),
            &["lifetime_too_long"],
        ),
        (
            "wrong audience",
            Some(key.mint_at(&nurse(), issuer::ISSUER, "billing-service", t, t + 600)),
            &["wrong_audience"],
        ),
        (
            "wrong issuer",
            Some(key.mint_at(
                &nurse(),
                "https://evil.example",
                issuer::AUDIENCE,
                t,
                t + 600,
            )),
            &["wrong_issuer"],
        ),
        (
            "signed by a key the IdP never published",
            Some(rogue.mint_at(&nurse(), issuer::ISSUER, issuer::AUDIENCE, t, t + 600)),
            &["unknown_kid"],
        ),
    ];
    let leaf = &stack.workload("frontend").leaf;
    for (what, token, reasons) in &cases {
        let before = logged_reasons(&stack, "authn").len();
        let mut client = connect_mtls(
            &stack.target(),
            Some(ClientCert {
                cert: &leaf.cert,
                key: &leaf.key,
            }),
            token.as_deref(),
        )
        .await
        .unwrap();
        let status = client
            .get_patient(GetPatientRequest {
                patient_id: PATIENT_ID.into(),
            })
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}");
        assert_eq!(
            status.message(),
            "unauthenticated",
            "{what}: generic message only"
        );
        let challenge = status
            .metadata()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
        let logged = wait_until(Duration::from_secs(5), || {
            logged_reasons(&stack, "authn").len() > before
        })
        .await;
        assert!(logged, "{what}: no access-log line");
        let reason = logged_reasons(&stack, "authn")[before].clone();
        assert!(
            reasons.contains(&reason.as_str()),
            "{what}: logged {reason}"
        );
    }

    // The operator sees reasons as metrics too; no token ever reaches a log.
    assert!(
        stack
            .inbound
            .stat("wasmcustom.phi_guard.jwt.failed.expired")
            .unwrap_or(0)
            >= 1
    );
    assert!(
        stack
            .inbound
            .stat("wasmcustom.phi_guard.jwt.verified")
            .unwrap_or(0)
            >= 1
    );
    let logs = all_logs(&stack);
    for (what, token, _) in &cases {
        if let Some(token) = token.as_deref().filter(|t| t.len() > 20) {
            let signature = token.rsplit('.').next().unwrap();
            assert!(!logs.contains(token), "{what}: token in logs");
            if signature.len() > 20 {
                assert!(!logs.contains(signature), "{what}: signature in logs");
            }
        }
    }
    assert!(!logs.contains(&valid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_key_rotation_and_outage() {
    let stack = Stack::builder("jwt_jwks")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    let server = stack.idp.server.as_ref().expect("in-process IdP");
    let old = stack.token("nurse").to_string();
    assert_eq!(
        get_patient_code(&stack, "frontend", Some(&old)).await,
        Code::Ok
    );

    // The IdP publishes a second key and starts signing with it: an unknown kid makes the
    // filter refetch the JWKS (rate-limited), after which the new tokens verify.
    let new_key = SigningKey::generate("demo-key-2");
    server.set_jwks(&issuer::jwks(&[&stack.idp.key, &new_key]));
    let new = new_key.mint(
        &nurse(),
        issuer::AUDIENCE,
        jwt_simple::prelude::Duration::from_mins(10),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut accepted = false;
    while Instant::now() < deadline {
        if get_patient_code(&stack, "frontend", Some(&new)).await == Code::Ok {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        accepted,
        "token signed with the rotated-in key never accepted"
    );
    assert!(
        stack
            .inbound
            .stat("wasmcustom.phi_guard.jwt.jwks_fetch_ok")
            .unwrap_or(0)
            >= 2
    );

    // The IdP goes down. Refetches (triggered by an unknown kid) fail, and the last good key
    // set keeps working.
    server.set_mode(JwksMode::Failing);
    let requests_before = server.requests();
    let rogue = SigningKey::generate("rogue-key").mint(
        &nurse(),
        issuer::AUDIENCE,
        jwt_simple::prelude::Duration::from_mins(10),
    );
    let refetched = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert_eq!(
                get_patient_code(&stack, "frontend", Some(&rogue)).await,
                Code::Unauthenticated
            );
            if server.requests() > requests_before || Instant::now() > deadline {
                break server.requests() > requests_before;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    assert!(refetched, "unknown kid never triggered a refetch");
    assert!(
        wait_until(Duration::from_secs(5), || stack
            .inbound
            .stat("wasmcustom.phi_guard.jwt.jwks_fetch_failed")
            .unwrap_or(0)
            >= 1)
        .await
    );
    for token in [&old, &new] {
        assert_eq!(
            get_patient_code(&stack, "frontend", Some(token)).await,
            Code::Ok
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_set_requests_fail_closed_at_once() {
    let stack = Stack::builder("jwt_no_jwks")
        .workload("frontend", "clinic", "ehr-frontend")
        .jwks_failing()
        .start()
        .await
        .expect("stack starts");
    let token = stack.token("nurse").to_string();
    let started = Instant::now();
    assert_eq!(
        get_patient_code(&stack, "frontend", Some(&token)).await,
        Code::Unauthenticated
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no hang while the key set is missing"
    );
    assert!(
        wait_until(Duration::from_secs(5), || logged_reasons(&stack, "authn")
            .contains(&"jwks_unavailable".to_string()))
        .await
    );

    // Once the IdP answers, the filter's retry picks the key set up.
    stack
        .idp
        .server
        .as_ref()
        .unwrap()
        .set_mode(JwksMode::Serving);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ok = false;
    while !ok && Instant::now() < deadline {
        ok = get_patient_code(&stack, "frontend", Some(&token)).await == Code::Ok;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(ok, "key set never loaded after the IdP recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_bound_tokens_only_work_with_their_certificate() {
    let stack = Stack::builder("jwt_cnf")
        .workload("frontend", "clinic", "ehr-frontend")
        .workload("frontend-2", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    let thumbprint = cert_thumbprint(&stack.workload("frontend").leaf.cert).unwrap();
    let bound = stack.idp.key.mint(
        &UserClaims {
            cnf_x5t_s256: Some(thumbprint),
            ..nurse()
        },
        issuer::AUDIENCE,
        jwt_simple::prelude::Duration::from_mins(10),
    );
    assert_eq!(
        get_patient_code(&stack, "frontend", Some(&bound)).await,
        Code::Ok
    );
    assert_eq!(
        get_patient_code(&stack, "frontend-2", Some(&bound)).await,
        Code::Unauthenticated,
        "a stolen bound token is useless with another certificate"
    );
    assert!(
        wait_until(Duration::from_secs(5), || logged_reasons(&stack, "authn")
            .contains(&"cnf_mismatch".to_string()))
        .await
    );
}
