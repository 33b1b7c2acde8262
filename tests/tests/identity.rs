//! Identity hardening through the real Envoy: a certificate with two SPIFFE IDs and a
//! DNS-SAN-only workload (certificates from the demo PKI's intermediate), a repeated header a
//! policy reads, and break-glass access from token to audit review list.

use std::time::Duration;

use jwt_simple::prelude::Duration as JwtDuration;
use phi_guard_audit::chain::ChainKey;
use phi_guard_audit::verify::{break_glass_accesses, parse_input, verify, VerifyOptions};
use phi_guard_common::Verdict;
use phi_guard_e2e::{all_logs, logged_reasons, wait_until};
use phi_guard_proto::health::v1::{DeletePatientRequest, GetPatientRequest};
use phi_guard_tools::backend::PATIENT_ID;
use phi_guard_tools::client::{connect_mtls, ClientCert};
use phi_guard_tools::issuer::{self, UserClaims};
use phi_guard_tools::pki::{spiffe_id, Kind, Leaf};
use phi_guard_tools::stack::Stack;
use serde_json::Value;
use tonic::Code;

/// The issue's certificate: admin-tool first (allowed to delete), analytics second (denied).
fn issue_two_ids(stack: &Stack) -> Leaf {
    stack
        .pki
        .issue(
            "two-ids",
            Kind::Client,
            &spiffe_id("ops", "admin-tool"),
            &[],
            &["--extra-uri", &spiffe_id("research", "analytics")],
        )
        .expect("scripts/pki issues the two-SAN certificate")
}

fn token(stack: &Stack, claims: UserClaims) -> String {
    stack
        .idp
        .key
        .mint(&claims, issuer::AUDIENCE, JwtDuration::from_mins(10))
}

/// DeletePatient as `leaf` with `token`: the status code, or `None` when no gRPC status came
/// back (the connection was refused or closed).
async fn delete_as(stack: &Stack, leaf: &Leaf, token: &str) -> Option<Code> {
    let cert = ClientCert {
        cert: &leaf.cert,
        key: &leaf.key,
    };
    let mut client = connect_mtls(&stack.target(), Some(cert), Some(token))
        .await
        .ok()?;
    let result = client
        .delete_patient(DeletePatientRequest {
            patient_id: PATIENT_ID.into(),
        })
        .await;
    match result {
        Ok(_) => Some(Code::Ok),
        // A connection the listener closes surfaces as UNAVAILABLE / UNKNOWN / CANCELLED,
        // never a status from Envoy's filters.
        Err(s)
            if matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ) =>
        {
            None
        }
        Err(s) => Some(s.code()),
    }
}

fn events(stack: &Stack) -> Vec<Value> {
    std::fs::read_to_string(&stack.audit_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|line| serde_json::from_str(line["event"].as_str()?).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_refuses_two_uri_sans_and_a_dns_san_only() {
    let stack = Stack::builder("identity_listener")
        .workload("admin-tool", "ops", "admin-tool")
        .start()
        .await
        .expect("stack starts");
    let admin = stack.token("admin").to_string();
    let single = stack.workload("admin-tool").leaf.clone();
    assert_eq!(delete_as(&stack, &single, &admin).await, Some(Code::Ok));

    let two = issue_two_ids(&stack);
    assert_eq!(
        delete_as(&stack, &two, &admin).await,
        None,
        "the network RBAC filter closes the connection"
    );
    let denied = || {
        stack
            .inbound
            .stat("inbound_one_spiffe_id.rbac.denied")
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(5), || denied() >= 1).await,
        "network RBAC denied nothing"
    );

    let dns_only = stack
        .pki
        .issue_dns_only("dns-only", Kind::Client, &["probe.phi-guard.test"])
        .expect("scripts/pki issues a DNS-only certificate");
    assert_eq!(
        delete_as(&stack, &dns_only, &admin).await,
        None,
        "the TLS context requires a SPIFFE URI SAN"
    );
    // Neither reached the backend: the only delete that did is the single-ID one.
    assert_eq!(
        logged_reasons(&stack, "authz"),
        ["matched_allow"],
        "only the valid workload reached the rbac filter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_refuses_two_uri_sans_repeated_headers_and_unjustified_break_glass() {
    // Without the listener's network RBAC filter (as in a mesh that lacks it), and with two
    // rules the demo policy does not have: a tenant-header rule and a break-glass rule.
    let stack = Stack::builder("identity_filter")
        .workload("admin-tool", "ops", "admin-tool")
        .workload("frontend", "clinic", "ehr-frontend")
        .patch_inbound(|yaml| {
            let start = yaml
                .find("      - name: envoy.filters.network.rbac\n")
                .expect("inbound.yaml has the network RBAC filter");
            let end = yaml[start..]
                .find("      - name: envoy.filters.network.http_connection_manager")
                .expect("followed by the HCM")
                + start;
            let mut yaml = format!("{}{}", &yaml[..start], &yaml[end..]);
            let rbac = phi_guard_tools::stack::stage_config_at(&yaml, "rbac").expect("rbac stage");
            let rules = yaml[rbac..].find("\"rules\": [").expect("policy rules") + rbac;
            yaml.insert_str(
                rules + "\"rules\": [".len(),
                concat!(
                    r#"{"name": "tenant-reads", "action": "allow", "principals": ["spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend"], "#,
                    r#""roles": ["volunteer"], "tenant": {"header": "x-tenant-id"}, "#,
                    r#""methods": ["health.v1.PatientService/GetPatient"], "role": "nurse"}, "#,
                    r#"{"name": "emergency-reads", "action": "allow", "principals": ["spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend"], "#,
                    r#""roles": ["physician"], "methods": ["health.v1.PatientService/GetPatient"], "#,
                    r#""break_glass": {"reasons": ["patient-unconscious", "life-threat"]}, "role": "nurse"},"#,
                ),
            );
            yaml
        })
        .start()
        .await
        .expect("stack starts");

    // 1. The issue's certificate with an admin token: refused by the filter itself.
    let two = issue_two_ids(&stack);
    let admin = stack.token("admin").to_string();
    assert_eq!(
        delete_as(&stack, &two, &admin).await,
        Some(Code::PermissionDenied)
    );
    let single = stack.workload("admin-tool").leaf.clone();
    assert_eq!(delete_as(&stack, &single, &admin).await, Some(Code::Ok));

    // 2. A repeated tenant header: the first entry matches the claim, the second does not.
    let frontend = stack.workload("frontend").leaf.clone();
    let volunteer = token(
        &stack,
        UserClaims {
            tenant: Some("north".into()),
            ..UserClaims::user("volunteer-1", &["volunteer"])
        },
    );
    let get = |tenants: &'static [&'static str], token: String| {
        let leaf = frontend.clone();
        let target = stack.target();
        async move {
            let cert = ClientCert {
                cert: &leaf.cert,
                key: &leaf.key,
            };
            let mut client = connect_mtls(&target, Some(cert), Some(&token))
                .await
                .expect("mTLS connects");
            let mut request = tonic::Request::new(GetPatientRequest {
                patient_id: PATIENT_ID.into(),
            });
            for t in tenants {
                // `append`, not `insert`: one HTTP/2 header entry per value.
                request
                    .metadata_mut()
                    .append("x-tenant-id", t.parse().unwrap());
            }
            match client.get_patient(request).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        }
    };
    assert_eq!(get(&["north"], volunteer.clone()).await, Code::Ok);
    assert_eq!(
        get(&["south"], volunteer.clone()).await,
        Code::PermissionDenied
    );
    assert_eq!(
        get(&["north", "south"], volunteer.clone()).await,
        Code::PermissionDenied,
        "two x-tenant-id entries"
    );
    assert_eq!(
        get(&["north,south"], volunteer.clone()).await,
        Code::PermissionDenied,
        "one comma-joined x-tenant-id"
    );

    // 3. Break-glass: allowed with a listed reason, refused without one or with free text.
    let physician = |reason: Option<&str>| {
        token(
            &stack,
            UserClaims {
                purpose_of_use: Some("BTG".into()),
                break_glass_reason: reason.map(str::to_string),
                ..UserClaims::user("dr-on-call", &["physician"])
            },
        )
    };
    assert_eq!(
        get(&[], physician(Some("life-threat"))).await,
        Code::Ok,
        "break-glass with a listed reason"
    );
    assert_eq!(
        get(&[], physician(None)).await,
        Code::PermissionDenied,
        "break-glass without a reason"
    );
    const FREE_TEXT: &str = "Canary-Patient-Jane-Roe collapsed in ward 7";
    assert_eq!(
        get(&[], physician(Some(FREE_TEXT))).await,
        Code::PermissionDenied,
        "break-glass with free text instead of a code"
    );

    // Every decision's reason reached the access log.
    let wanted = [
        "multiple_uri_sans",
        "repeated_header",
        "break_glass",
        "break_glass_without_reason",
    ];
    assert!(
        wait_until(Duration::from_secs(10), || {
            let reasons = logged_reasons(&stack, "authz");
            wanted.iter().all(|w| reasons.iter().any(|r| r == w))
        })
        .await,
        "{:?}",
        logged_reasons(&stack, "authz")
    );
    // 9 calls → 9 events; the chain verifies and the review list has the three break-glass
    // decisions, the allowed one with its code.
    assert!(
        wait_until(Duration::from_secs(30), || events(&stack).len() >= 9).await,
        "audit events did not arrive"
    );
    let text = std::fs::read_to_string(&stack.audit_log).unwrap();
    let records = parse_input("audit.jsonl", &text);
    let key = ChainKey::from_file_bytes(&std::fs::read(&stack.audit_key).unwrap()).unwrap();
    verify(&records, &key, &VerifyOptions::default()).expect("chain intact");
    let review = break_glass_accesses(&records);
    let lines: Vec<String> = review.iter().map(|a| a.to_string()).collect();
    assert_eq!(review.len(), 3, "{lines:#?}");
    let allowed: Vec<_> = review
        .iter()
        .filter(|a| a.event.outcome.authz.as_ref().unwrap().decision == Verdict::Allow)
        .collect();
    assert_eq!(allowed.len(), 1, "{lines:#?}");
    let authz = allowed[0].event.outcome.authz.as_ref().unwrap();
    assert_eq!(
        (
            authz.break_glass_reason.as_deref(),
            authz.rule.as_deref(),
            allowed[0].event.who.role.as_deref()
        ),
        (Some("life-threat"), Some("emergency-reads"), Some("nurse"))
    );
    assert!(lines.iter().all(|l| l.contains("subject=dr-on-call")));
    // The refusal of the two-SAN peer is in the audit trail with its reason.
    assert!(events(&stack)
        .iter()
        .any(|e| e["outcome"]["authz"]["reason"] == "multiple_uri_sans"));
    // Never silent, never the free text: a warning in Envoy's log, counted.
    let logs = all_logs(&stack);
    assert!(logs.contains("break-glass access allowed (rule emergency-reads, reason life-threat"));
    assert!(logs.contains("break-glass access refused"));
    assert!(
        !logs.contains("Canary-Patient"),
        "free-text reason leaked into a log"
    );
    assert!(
        !text.contains("Canary-Patient"),
        "free-text reason leaked into the audit trail"
    );
    assert_eq!(
        stack
            .inbound
            .stat("wasmcustom.phi_guard.rbac.break_glass_allowed"),
        Some(1)
    );
    assert_eq!(
        stack
            .inbound
            .stat("wasmcustom.phi_guard.rbac.break_glass_refused"),
        Some(2)
    );
}
