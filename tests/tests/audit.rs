//! The audit filter and service in Envoy: one hash-chained, PHI-free event per RPC, shipped
//! over OTLP/HTTP to the collector, through outages and a full backlog.

use std::time::Duration;

use phi_guard_audit::chain::ChainKey;
use phi_guard_audit::verify::{parse_input, verify, VerifyOptions};
use phi_guard_audit_cli::collector::{Collector, FailMode};
use phi_guard_e2e::{all_logs, get_patient_code, raw_call, wait_until, Load};
use phi_guard_proto::health::v1::{GetPatientRequest, ListEncountersRequest};
use phi_guard_tools::backend::{canary, PATIENT_ID};
use phi_guard_tools::issuer::{self, UserClaims};
use phi_guard_tools::stack::Stack;
use serde_json::Value;
use tonic::Code;

fn events(stack: &Stack) -> Vec<Value> {
    std::fs::read_to_string(&stack.audit_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|line| serde_json::from_str(line["event"].as_str()?).ok())
        .collect()
}

fn verify_text(stack: &Stack, text: &str, expect: Option<usize>) -> Result<usize, String> {
    let key = ChainKey::from_file_bytes(&std::fs::read(&stack.audit_key).unwrap()).unwrap();
    let records = parse_input("events.jsonl", text);
    let options = VerifyOptions {
        expect_count: expect,
        single_segment: true,
        ..Default::default()
    };
    verify(&records, &key, &options)
        .map(|report| report.events)
        .map_err(|failure| failure.to_string())
}

async fn wait_for_events(stack: &Stack, count: usize) {
    let arrived = wait_until(Duration::from_secs(30), || events(stack).len() >= count).await;
    assert!(arrived, "{} of {count} events arrived", events(stack).len());
}

async fn restart_collector(stack: &mut Stack) {
    let collector = Collector::start(stack.collector_addr, &stack.audit_log, FailMode::default())
        .await
        .expect("collector restarts on its port");
    stack.collector = Some(collector);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chained_event_per_rpc_with_no_phi() {
    let stack = Stack::builder("audit_events")
        .workload("frontend", "clinic", "ehr-frontend")
        .workload("analytics", "research", "analytics")
        .start()
        .await
        .expect("stack starts");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = stack.idp.key.mint_at(
        &UserClaims::user("nurse-9", &["nurse"]),
        issuer::ISSUER,
        issuer::AUDIENCE,
        now - 7200,
        now - 3600,
    );

    // A correlated call for p-0001 whose header claims another patient: the event records
    // what the request message asked for, the header only as the claim.
    let mut client = stack.client_as("frontend", Some("nurse")).await.unwrap();
    let mut request = tonic::Request::new(GetPatientRequest {
        patient_id: PATIENT_ID.into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "audit-e2e-0001".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-patient-id", "p-0002".parse().unwrap());
    client.get_patient(request).await.unwrap();
    let mut stream = stack
        .client_as("frontend", Some("billing"))
        .await
        .unwrap()
        .list_encounters(ListEncountersRequest {
            patient_id: PATIENT_ID.into(),
            limit: 3,
            note_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    let outcomes = [
        (
            get_patient_code(&stack, "analytics", Some(stack.token("research"))).await,
            Code::Ok,
        ),
        (
            get_patient_code(&stack, "frontend", Some(stack.token("research"))).await,
            Code::PermissionDenied,
        ),
        (
            get_patient_code(&stack, "frontend", None).await,
            Code::Unauthenticated,
        ),
        (
            get_patient_code(&stack, "frontend", Some(&expired)).await,
            Code::Unauthenticated,
        ),
    ];
    for (got, want) in outcomes {
        assert_eq!(got, want);
    }
    let total = 6;
    wait_for_events(&stack, total).await;
    let events = events(&stack);
    assert_eq!(events.len(), total, "exactly one event per RPC");
    let text = std::fs::read_to_string(&stack.audit_log).unwrap();
    assert_eq!(verify_text(&stack, &text, Some(total)), Ok(total));

    let first = events
        .iter()
        .find(|e| e["correlation"]["request_id"] == "audit-e2e-0001")
        .expect("the correlated call");
    assert_eq!(first["schema"], "phi_guard.audit.v1");
    assert_eq!(first["what"]["service"], "health.v1.PatientService");
    assert_eq!(first["what"]["method"], "GetPatient");
    assert_eq!(first["what"]["resource_id"], PATIENT_ID);
    assert_eq!(first["what"]["claimed_resource_id"], "p-0002");
    // Without the header (the research analytics call, and the stream): the resource id
    // still, no claimed id.
    let research = events
        .iter()
        .find(|e| e["who"]["role"] == "research" && e["outcome"]["grpc_status"] == 0)
        .expect("the analytics call");
    assert_eq!(research["what"]["method"], "GetPatient");
    assert_eq!(research["what"]["resource_id"], PATIENT_ID);
    assert!(
        research["what"].get("claimed_resource_id").is_none(),
        "{research}"
    );
    let listed = events
        .iter()
        .find(|e| e["what"]["method"] == "ListEncounters")
        .expect("the stream");
    assert_eq!(listed["what"]["resource_id"], PATIENT_ID);
    assert!(
        listed["what"].get("claimed_resource_id").is_none(),
        "{listed}"
    );
    // Refused before mask (rbac, jwt): nothing read the request message.
    for e in events.iter().filter(|e| e["outcome"]["grpc_status"] != 0) {
        assert!(e["what"].get("resource_id").is_none(), "{e}");
    }
    assert_eq!(
        first["who"]["peer"],
        "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend"
    );
    assert_eq!(first["who"]["subject"], "nurse");
    assert_eq!(first["who"]["issuer"], issuer::ISSUER);
    assert_eq!(first["who"]["role"], "nurse");
    assert_eq!(first["outcome"]["authn"]["result"], "ok");
    assert_eq!(first["outcome"]["authz"]["decision"], "allow");
    assert_eq!(first["outcome"]["authz"]["rule"], "frontend-clinical-reads");
    assert_eq!(first["outcome"]["authz"]["policy_version"], "demo-2026-01");
    assert_eq!(first["outcome"]["grpc_status"], 0);
    assert!(first["outcome"]["mask"]["fields"]["SSN/partial"].as_u64() >= Some(1));
    assert!(first["time"].as_str().unwrap().ends_with('Z'));

    let statuses: Vec<i64> = events
        .iter()
        .map(|e| e["outcome"]["grpc_status"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 0).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 7).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 16).count(),
        2,
        "{statuses:?}"
    );
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|e| e["outcome"]["authn"]["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"expired") && reasons.contains(&"missing"),
        "{reasons:?}"
    );

    // No PHI, no token anywhere: events, Envoy's logs, Envoy's stats.
    let (_, stats) = stack.inbound.admin_get("/stats").unwrap();
    // The collector's answers were read as OTLP responses that kept every record.
    for counter in [
        "phi_guard.audit.unreadable_answers",
        "phi_guard.audit.rejected",
    ] {
        let line = stats
            .lines()
            .find(|l| l.contains(counter))
            .unwrap_or_else(|| panic!("{counter} not in /stats"));
        assert!(line.ends_with(": 0"), "{line}");
    }
    let logs = all_logs(&stack);
    for (place, content) in [
        ("audit events", &text),
        ("envoy logs", &logs),
        ("stats", &stats),
    ] {
        for value in canary::ALL {
            assert!(!content.contains(value), "{value} in {place}");
        }
        for token in [
            stack.token("nurse"),
            stack.token("billing"),
            expired.as_str(),
        ] {
            assert!(!content.contains(token), "a token in {place}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_deleted_or_swapped_events_are_detected() {
    let stack = Stack::builder("audit_tamper")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    for _ in 0..5 {
        assert_eq!(
            get_patient_code(&stack, "frontend", Some(stack.token("nurse"))).await,
            Code::Ok
        );
    }
    wait_for_events(&stack, 5).await;
    let text = std::fs::read_to_string(&stack.audit_log).unwrap();
    assert_eq!(verify_text(&stack, &text, Some(5)), Ok(5));
    let lines: Vec<&str> = text.lines().collect();

    let altered = text.replacen(
        "\\\"method\\\":\\\"GetPatient\\\"",
        "\\\"method\\\":\\\"DeletePatient\\\"",
        1,
    );
    assert_ne!(altered, text, "the edit applied");
    let err = verify_text(&stack, &altered, Some(5)).unwrap_err();
    assert!(err.contains("altered") || err.contains("broken"), "{err}");

    let deleted = [&lines[..2], &lines[3..]].concat().join("\n");
    let err = verify_text(&stack, &deleted, Some(5)).unwrap_err();
    assert!(err.contains("missing"), "{err}");

    let mut swapped = lines.clone();
    swapped.swap(1, 3);
    let err = verify_text(&stack, &swapped.join("\n"), Some(5)).unwrap_err();
    assert!(
        err.contains("reordered") || err.contains("missing"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_under_load_loses_nothing() {
    let mut stack = Stack::builder("audit_outage")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    let target = stack.target();
    let leaf = stack.workload("frontend").leaf.clone();
    let token = stack.token("nurse").to_string();
    let connect: phi_guard_e2e::Connect = std::sync::Arc::new(move || {
        let (target, leaf, token) = (target.clone(), leaf.clone(), token.clone());
        Box::pin(async move {
            let id = phi_guard_tools::client::ClientCert {
                cert: &leaf.cert,
                key: &leaf.key,
            };
            phi_guard_tools::client::connect_mtls(&target, Some(id), Some(&token))
                .await
                .map_err(|e| e.to_string())
        })
    });
    let load = Load::start(connect, 2, 50);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The collector answers 503 for a while, then goes away entirely, then comes back.
    stack.collector.as_ref().unwrap().set_fail(FailMode {
        status: Some(503),
        remaining: None,
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.collector.take().unwrap().stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    restart_collector(&mut stack).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (report, first_error) = load.finish().await;
    println!(
        "audit outage: rpcs sent={} failed={} events expected={}",
        report.sent, report.failed, report.sent
    );
    assert_eq!(report.failed, 0, "{first_error:?}");

    let total = report.sent as usize;
    wait_for_events(&stack, total).await;
    let text = std::fs::read_to_string(&stack.audit_log).unwrap();
    let verified = verify_text(&stack, &text, Some(total));
    assert_eq!(verified, Ok(total), "every event delivered, chain intact");
    assert!(
        stack
            .inbound
            .stat("wasmcustom.phi_guard.audit.retried")
            .unwrap_or(0)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_fails_closed_with_unavailable_until_it_drains() {
    let mut stack = Stack::builder("audit_backlog")
        .workload("frontend", "clinic", "ehr-frontend")
        .patch_inbound(|yaml| {
            yaml.replacen(
                r#""max_backlog_events": 10000"#,
                r#""max_backlog_events": 4"#,
                1,
            )
            .replacen(r#""max_batch_events": 100"#, r#""max_batch_events": 2"#, 1)
        })
        .start()
        .await
        .expect("stack starts");
    let nurse = stack.token("nurse").to_string();
    assert_eq!(
        get_patient_code(&stack, "frontend", Some(&nurse)).await,
        Code::Ok
    );
    wait_for_events(&stack, 1).await;

    stack.collector.take().unwrap().stop().await;
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(get_patient_code(&stack, "frontend", Some(&nurse)).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(codes.contains(&Code::Unavailable), "{codes:?}");
    assert!(
        stack
            .inbound
            .stat("wasmcustom.phi_guard.audit.refused")
            .unwrap_or(0)
            >= 1
    );

    restart_collector(&mut stack).await;
    let admitted = wait_until(Duration::from_secs(30), || {
        // The service drains, clears the flag, and RPCs are admitted again.
        stack
            .inbound
            .stat("wasmcustom.phi_guard.audit.shipped")
            .unwrap_or(0)
            > codes.iter().filter(|c| **c == Code::Ok).count() as u64
    })
    .await;
    assert!(admitted, "backlog never drained");
    let mut ok = false;
    for _ in 0..50 {
        if get_patient_code(&stack, "frontend", Some(&nurse)).await == Code::Ok {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "RPCs never admitted again");
    let delivered = 2 + codes.iter().filter(|c| **c == Code::Ok).count();
    wait_for_events(&stack, delivered).await;
    let text = std::fs::read_to_string(&stack.audit_log).unwrap();
    assert_eq!(verify_text(&stack, &text, Some(delivered)), Ok(delivered));
}

/// Issue 12 item 4: a client-chosen id shaped like an SSN (`x-request-id: 078-05-1120`) is
/// masked at source, so it reaches no audit event, no Envoy log line and no metric; the same
/// for a resource id and for request ids that are not identifiers at all (an e-mail address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_supplied_ids_are_sanitized_before_any_event_log_or_metric() {
    const SSN: &str = "078-05-1120";
    const PHONE: &str = "555.867.5309";
    const EMAIL: &str = "jane.doe@example.org";
    // A client that copies a token into id headers: never kept (a JWT, a Bearer value).
    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnbmF0dXJlY2FuYXJ5";
    const BEARER: &str = "Bearer-SECRETTOKENCANARY";
    let stack = Stack::builder("audit_client_ids")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    let mut cases = Vec::new();
    for (request_id, patient_id) in [
        (SSN, PATIENT_ID),
        ("req-ok-0001", PHONE),
        (EMAIL, PATIENT_ID),
        (TOKEN, BEARER),
    ] {
        let mut client = stack.client_as("frontend", Some("nurse")).await.unwrap();
        let mut request = tonic::Request::new(GetPatientRequest {
            patient_id: PATIENT_ID.into(),
        });
        request
            .metadata_mut()
            .insert("x-request-id", request_id.parse().unwrap());
        request
            .metadata_mut()
            .insert("x-patient-id", patient_id.parse().unwrap());
        client.get_patient(request).await.unwrap();
        cases.push((request_id, patient_id));
    }
    // A refused call too: jwt answers before the other filters, and still sanitizes first.
    let mut client = stack.client_as("frontend", None).await.unwrap();
    let mut request = tonic::Request::new(GetPatientRequest {
        patient_id: PATIENT_ID.into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", SSN.parse().unwrap());
    assert_eq!(
        client.get_patient(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // The client chose `:path` too: a method named like an SSN is refused cleanly and logged
    // only as `invalid` (not a method) or masked (a method made of digits).
    for (path, code) in [
        (
            "/health.v1.PatientService/078-05-1120",
            Code::Unauthenticated,
        ),
        (
            "/health.v1.PatientService/078051120",
            Code::PermissionDenied,
        ),
    ] {
        let (messages, status) =
            raw_call(&stack, "frontend", Some("nurse"), path, Vec::new()).await;
        assert!(messages.is_empty(), "{path}");
        assert_eq!(status.code(), code, "{path}");
        assert!(!status.message().contains("078"), "{path}: {status:?}");
    }
    wait_for_events(&stack, 7).await;
    let events = events(&stack);
    let ids: Vec<&Value> = events
        .iter()
        .map(|e| &e["correlation"]["request_id"])
        .collect();
    assert_eq!(
        ids.iter().filter(|v| **v == "***-**-****").count(),
        2,
        "the SSN-shaped id is masked, not dropped: {ids:?}"
    );
    assert!(ids.contains(&&Value::from("req-ok-0001")), "{ids:?}");
    let phone_event = events
        .iter()
        .find(|e| e["correlation"]["request_id"] == "req-ok-0001")
        .unwrap();
    assert_eq!(phone_event["what"]["claimed_resource_id"], "***.***.****");
    assert_eq!(phone_event["what"]["resource_id"], PATIENT_ID);

    // Nowhere: the audit trail, every Envoy log (access logs included), the metrics.
    let audit_text = std::fs::read_to_string(&stack.audit_log).unwrap();
    // Envoy writes file access logs on a flush timer (`file_flush_interval_msec`, 1 s by
    // default): wait for the refused calls' lines before scanning, or a loaded machine reads
    // the log before they are in it.
    let methods = [
        "health.v1.PatientService/GetPatient",
        "invalid",
        "health.v1.PatientService/*********",
    ];
    wait_until(Duration::from_secs(15), || {
        let logs = all_logs(&stack);
        methods
            .iter()
            .all(|m| logs.contains(&format!("\"method\":\"{m}\"")))
    })
    .await;
    let envoy_logs = all_logs(&stack);
    let (_, stats) = stack.inbound.admin_get("/stats").unwrap();
    let (_, prometheus) = stack.inbound.admin_get("/stats/prometheus").unwrap();
    for canary in [
        SSN,
        "078051120",
        PHONE,
        "5558675309",
        EMAIL,
        "c2lnbmF0dXJlY2FuYXJ5",
        "SECRETTOKENCANARY",
    ] {
        for (what, text) in [
            ("audit log", &audit_text),
            ("Envoy logs", &envoy_logs),
            ("stats", &stats),
            ("prometheus", &prometheus),
        ] {
            assert!(!text.contains(canary), "{canary} in the {what}");
        }
    }
    assert!(
        envoy_logs.contains("\"request_id\":\"***-**-****\""),
        "the access log shows the masked id"
    );
    for method in methods {
        assert!(
            envoy_logs.contains(&format!("\"method\":\"{method}\"")),
            "the access log shows the sanitized method {method}"
        );
    }
    // The chain still verifies.
    assert_eq!(verify_text(&stack, &audit_text, Some(7)), Ok(7));
}
