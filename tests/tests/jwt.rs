//! The jwt filter in Envoy: tokens from the demo IdP, its JWKS fetched over HTTP from a
//! local server, rotation, outage, and certificate-bound tokens.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use phi_guard_e2e::{all_logs, get_patient_code, logged_reasons, raw_call, wait_until};
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

/// Issue 12 item 1 and 8 (`typ`): a token the demo IdP signed, valid `iss`/`aud`/`exp`, with
/// header `typ: logout+jwt` (an OIDC back-channel logout token) is not an access token.
/// Item 5: a valid token on a method no jwt rule names is PERMISSION_DENIED, not
/// UNAUTHENTICATED; without a token it stays UNAUTHENTICATED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_types_and_unlisted_methods() {
    let stack = Stack::builder("jwt_typ")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    let ttl = jwt_simple::prelude::Duration::from_mins(10);
    let typed = |typ: &str| {
        stack.idp.key.mint(
            &UserClaims {
                typ: Some(typ.into()),
                ..UserClaims::user("nurse", &["nurse"])
            },
            issuer::AUDIENCE,
            ttl,
        )
    };
    for typ in ["logout+jwt", "secevent+jwt", "application/logout+jwt"] {
        let before = logged_reasons(&stack, "authn").len();
        assert_eq!(
            get_patient_code(&stack, "frontend", Some(&typed(typ))).await,
            Code::Unauthenticated,
            "{typ}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || logged_reasons(&stack, "authn")
                .len()
                > before)
            .await
        );
        assert_eq!(logged_reasons(&stack, "authn")[before], "bad_typ", "{typ}");
    }
    for typ in ["at+jwt", "JWT", "application/at+jwt"] {
        assert_eq!(
            get_patient_code(&stack, "frontend", Some(&typed(typ))).await,
            Code::Ok,
            "{typ}"
        );
    }
    assert!(
        stack
            .inbound
            .stat("wasmcustom.phi_guard.jwt.failed.bad_typ")
            .unwrap_or(0)
            >= 3
    );

    // grpc.health.v1.Health/Watch: no jwt rule names it.
    let before = logged_reasons(&stack, "authn").len();
    let (_, status) = raw_call(
        &stack,
        "frontend",
        Some("nurse"),
        "/grpc.health.v1.Health/Watch",
        vec![],
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "permission denied",
        "generic message only"
    );
    let (_, status) = raw_call(
        &stack,
        "frontend",
        None,
        "/grpc.health.v1.Health/Watch",
        vec![],
    )
    .await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        wait_until(Duration::from_secs(5), || logged_reasons(&stack, "authn")
            .len()
            >= before + 2)
        .await
    );
    assert_eq!(
        logged_reasons(&stack, "authn")[before..before + 2],
        ["no_rule".to_string(), "missing".to_string()]
    );
}

/// Issue 12 item 8: `all_of` (Envoy's `requires_all`): GetPatient needs the IdP's access
/// token and a second token for another audience in `x-second-token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_of_requires_every_token() {
    let stack = Stack::builder("jwt_all_of")
        .workload("frontend", "clinic", "ehr-frontend")
        .patch_inbound(|yaml| {
            let second = r#""providers": [
                        {
                          "name": "second",
                          "issuer": "https://idp.phi-guard.test",
                          "audiences": ["second-service"],
                          "algorithms": ["ES256"],
                          "token_header": "x-second-token",
                          "jwks": {"remote": {"cluster": "idp_jwks", "path": "/.well-known/jwks.json", "authority": "idp.phi-guard.test", "retry_interval_s": 1}}
                        },"#;
            let rule = r#""rules": [
                        {"match": "health.v1.PatientService/GetPatient", "requires": {"all_of": ["phi-guard-idp", "second"]}},"#;
            yaml.replacen("\"providers\": [", second, 1)
                .replacen("\"rules\": [", rule, 1)
        })
        .start()
        .await
        .expect("stack starts");
    let leaf = &stack.workload("frontend").leaf;
    let access = stack.token("nurse").to_string();
    let second = stack.idp.key.mint(
        &UserClaims::user("nurse", &["nurse"]),
        "second-service",
        jwt_simple::prelude::Duration::from_mins(10),
    );
    let target = stack.target();
    let call = |second: Option<String>| {
        let access = access.clone();
        let target = target.clone();
        async move {
            let mut client = connect_mtls(
                &target,
                Some(ClientCert {
                    cert: &leaf.cert,
                    key: &leaf.key,
                }),
                Some(&access),
            )
            .await
            .unwrap();
            let mut request = tonic::Request::new(GetPatientRequest {
                patient_id: PATIENT_ID.into(),
            });
            if let Some(t) = second {
                request
                    .metadata_mut()
                    .insert("x-second-token", t.parse().unwrap());
            }
            match client.get_patient(request).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            }
        }
    };
    // The remote JWKS may not have arrived on the first call.
    let mut got = Code::Unknown;
    for _ in 0..20 {
        got = call(Some(second.clone())).await;
        if got == Code::Ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(got, Code::Ok, "both tokens");
    let before = logged_reasons(&stack, "authn").len();
    assert_eq!(
        call(None).await,
        Code::Unauthenticated,
        "the second is missing"
    );
    // The access token in the second header has the wrong audience for `second`.
    assert_eq!(
        call(Some(access.clone())).await,
        Code::Unauthenticated,
        "the access token cannot stand in for the second"
    );
    assert!(
        wait_until(Duration::from_secs(5), || logged_reasons(&stack, "authn")
            .len()
            >= before + 2)
        .await
    );
    assert_eq!(
        logged_reasons(&stack, "authn")[before..before + 2],
        ["missing".to_string(), "wrong_audience".to_string()]
    );
    // Other methods keep their own rule (any one access token).
    let mut client = stack.client_as("frontend", Some("nurse")).await.unwrap();
    client
        .list_encounters(phi_guard_proto::health::v1::ListEncountersRequest {
            patient_id: PATIENT_ID.into(),
            limit: 1,
            note_bytes: 0,
        })
        .await
        .expect("ListEncounters with one token");
}

/// Issue 12 item 7: replay protection on DeletePatient. Envoy runs two worker threads
/// (`--concurrency 2`, one jwt VM each); the `jti` is remembered in shared data, so the second
/// use is refused whichever worker takes the connection, and the refusal is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_jti_is_refused_across_two_workers() {
    let stack = Stack::builder("jwt_replay")
        .workload("admin", "ops", "admin-tool")
        .start()
        .await
        .expect("stack starts");
    let key: String = (0..64)
        .map(|i| char::from(b'a' + (now() as u8).wrapping_add(i) % 26))
        .collect();
    let envoy = stack
        .start_inbound_variant("inbound_replay", 2, move |yaml| {
            let rule = r#""rules": [
                        {"match": "health.v1.PatientService/DeletePatient", "requires": {"provider": "phi-guard-idp"}, "replay_protection": true},"#;
            let yaml = phi_guard_tools::stack::with_stage_vm_env(
                &yaml,
                "jwt",
                "PHI_GUARD_JWT_REPLAY_KEY",
                &key,
            )
            .expect("the jwt stage's VM");
            yaml.replacen("\"rules\": [", rule, 1).replacen(
                "\"max_token_bytes\": 8192,",
                "\"replay\": {\"key_env\": \"PHI_GUARD_JWT_REPLAY_KEY\"}, \"max_token_bytes\": 8192,",
                1,
            )
        })
        .expect("the two-worker Envoy starts");
    let target = phi_guard_tools::client::MtlsTarget {
        endpoint: envoy.listen.to_string(),
        server_name: phi_guard_tools::pki::SERVER_NAME.into(),
        ca_bundle: stack.pki.bundle(),
    };
    let leaf = &stack.workload("admin").leaf;
    let ttl = jwt_simple::prelude::Duration::from_mins(10);
    let with_jti = |jti: Option<&str>| {
        stack.idp.key.mint(
            &UserClaims {
                jti: jti.map(str::to_string),
                ..UserClaims::user("admin", &["admin"])
            },
            issuer::AUDIENCE,
            ttl,
        )
    };
    // One connection per call: Envoy hands each to a worker.
    let delete = |token: String| {
        let target = target.clone();
        async move {
            let mut client = connect_mtls(
                &target,
                Some(ClientCert {
                    cert: &leaf.cert,
                    key: &leaf.key,
                }),
                Some(&token),
            )
            .await
            .unwrap();
            match client
                .delete_patient(phi_guard_proto::health::v1::DeletePatientRequest {
                    patient_id: PATIENT_ID.into(),
                })
                .await
            {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            }
        }
    };
    let token = with_jti(Some("delete-0001"));
    let mut first = Code::Unknown;
    for _ in 0..40 {
        // Until the remote JWKS arrived (`jwks_unavailable` comes before the replay check, so
        // it does not record the jti).
        let before = logged_reasons(&stack, "authn").len();
        first = delete(token.clone()).await;
        if first != Code::Unauthenticated {
            break;
        }
        wait_until(Duration::from_secs(5), || {
            logged_reasons(&stack, "authn").len() > before
        })
        .await;
        let reasons = logged_reasons(&stack, "authn");
        assert_eq!(
            reasons.get(before).map(String::as_str),
            Some("jwks_unavailable"),
            "only a missing key set may refuse the first use"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(first, Code::Ok, "the first use");
    let workers = |envoy: &phi_guard_tools::stack::Envoy| {
        let prefix = envoy.listener_stat_prefix();
        [0, 1].map(|w| {
            envoy
                .stat(&format!("{prefix}worker_{w}.downstream_cx_total"))
                .unwrap_or(0)
        })
    };
    let mut replays = 0;
    while replays < 40 && !(replays >= 6 && workers(&envoy).iter().all(|n| *n >= 1)) {
        assert_eq!(
            delete(token.clone()).await,
            Code::Unauthenticated,
            "use {} of the same jti",
            replays + 2
        );
        replays += 1;
    }
    let per_worker = workers(&envoy);
    assert!(
        per_worker.iter().all(|n| *n >= 1),
        "both workers took connections: {per_worker:?}"
    );
    // A fresh jti is fine; a token without one is refused on this method.
    assert_eq!(delete(with_jti(Some("delete-0002"))).await, Code::Ok);
    assert_eq!(delete(with_jti(None)).await, Code::Unauthenticated);
    // Envoy flushes access logs about once a second.
    let logged = wait_until(Duration::from_secs(10), || {
        let reasons = logged_reasons(&stack, "authn");
        reasons.iter().filter(|r| *r == "replayed").count() >= replays
            && reasons.iter().any(|r| r == "missing_jti")
    })
    .await;
    assert!(logged, "{:?}", logged_reasons(&stack, "authn"));
    assert!(
        envoy
            .stat("wasmcustom.phi_guard.jwt.failed.replayed")
            .unwrap_or(0)
            >= replays as u64
    );
    // Audited: the refusal's reason is in the audit events.
    let audited = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&stack.audit_log)
            .unwrap_or_default()
            .contains("replayed")
    })
    .await;
    assert!(audited, "a replay reaches the audit trail");
    // Neither the jti nor the token is in any log.
    let logs = all_logs(&stack);
    assert!(!logs.contains("delete-0001"));
    assert!(!logs.contains(&token));
}

/// Issue 12 item 10: the one config parser refuses a duplicate member in a policy, so
/// Envoy does not start a listener whose rbac rule could silently change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_member_in_a_filter_config_stops_envoy() {
    let stack = Stack::builder("config_duplicates")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    // The research deny rule gets a second `action`: serde_json alone would keep `allow`.
    let started = stack.start_inbound_variant("inbound_duplicate", 1, |yaml| {
        yaml.replacen(
            "\"action\": \"deny\",",
            "\"action\": \"deny\", \"action\": \"allow\",",
            1,
        )
    });
    assert!(started.is_err(), "Envoy must refuse the configuration");
    let log = std::fs::read_to_string(stack.dir.join("logs/inbound_duplicate-envoy.log"))
        .unwrap_or_default();
    assert!(
        log.contains("field `action`") && log.contains("appears twice"),
        "the log names the field: {}",
        log.lines()
            .filter(|l| l.contains("phi-guard"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
