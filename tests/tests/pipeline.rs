//! The pipeline layout through real Envoy: one module (`phi_guard.wasm`) running jwt, rbac,
//! mask and audit. Each role's view of the same patient, a call rbac denies, a call without a
//! token, an audit event per call carrying the decision and the role, the access log's
//! reason codes; and the same calls through the single-stage layout answer the same.

use std::time::Duration;

use phi_guard_e2e::{all_logs, get_patient_code, logged_reasons, wait_until};
use phi_guard_proto::health::v1::{GetPatientRequest, Patient};
use phi_guard_tools::backend::{canary, PATIENT_ID};
use phi_guard_tools::stack::{Layout, Stack};
use serde_json::Value;
use tonic::Code;

async fn stack(name: &str, layout: Layout) -> Stack {
    Stack::builder(name)
        .layout(layout)
        .workload("frontend", "clinic", "ehr-frontend")
        .workload("analytics", "research", "analytics")
        .start()
        .await
        .expect("stack starts")
}

async fn patient_as(stack: &Stack, workload: &str, user: &str) -> Patient {
    let mut request = tonic::Request::new(GetPatientRequest {
        patient_id: PATIENT_ID.into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", format!("pipeline-{user}").parse().unwrap());
    stack
        .client_as(workload, Some(user))
        .await
        .unwrap()
        .get_patient(request)
        .await
        .unwrap_or_else(|s| panic!("{user}: {s:?}"))
        .into_inner()
}

fn events(stack: &Stack) -> Vec<Value> {
    std::fs::read_to_string(&stack.audit_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|line| serde_json::from_str(line["event"].as_str()?).ok())
        .collect()
}

fn last_four(value: &str, original: &str) -> bool {
    value.len() == original.len()
        && value.ends_with(&original[original.len() - 4..])
        && value != original
}

/// The calls of the smoke run and what they show; returns the patient each role saw.
async fn smoke(stack: &Stack) -> (Patient, Patient, Patient) {
    let billing = patient_as(stack, "frontend", "billing").await;
    assert_eq!(
        billing,
        phi_guard_tools::backend::patient(),
        "billing sees everything"
    );
    let nurse = patient_as(stack, "frontend", "nurse").await;
    assert!(
        last_four(&nurse.ssn, canary::SSN),
        "nurse SSN: {}",
        nurse.ssn
    );
    assert_eq!(nurse.contacts[0].email, "[redacted]");
    assert_eq!(nurse.mrn, canary::MRN);
    let research = patient_as(stack, "analytics", "research").await;
    assert!(research.ssn.is_empty(), "research sees no SSN");
    assert!(
        research.mrn.starts_with("tok_"),
        "research MRN: {}",
        research.mrn
    );
    let bytes = prost::Message::encode_to_vec(&research);
    let text = String::from_utf8_lossy(&bytes);
    for value in canary::ALL {
        assert!(!text.contains(value), "research saw {value}");
    }

    // research through the EHR frontend: rbac denies; no token: jwt refuses.
    assert_eq!(
        get_patient_code(stack, "frontend", Some(stack.token("research"))).await,
        Code::PermissionDenied
    );
    assert_eq!(
        get_patient_code(stack, "frontend", None).await,
        Code::Unauthenticated
    );
    (billing, nurse, research)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_masks_denies_refuses_and_audits() {
    let stack = stack("pipeline_smoke", Layout::Pipeline).await;
    let config = std::fs::read_to_string(&stack.inbound.config).unwrap();
    assert!(
        config.contains("phi_guard.wasm"),
        "the pipeline module runs"
    );
    assert!(!config.contains("phi_guard_jwt.wasm"));
    smoke(&stack).await;

    // One event per call, with the decision and the role.
    let arrived = wait_until(Duration::from_secs(30), || events(&stack).len() >= 5).await;
    let events = events(&stack);
    assert!(arrived, "{} of 5 events arrived", events.len());
    assert_eq!(events.len(), 5, "{events:#?}");
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["correlation"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no event for {id}: {events:#?}"))
    };
    for (id, role, rule) in [
        ("pipeline-billing", "billing", "frontend-clinical-reads"),
        ("pipeline-nurse", "nurse", "frontend-clinical-reads"),
        ("pipeline-research", "research", "research-reads"),
    ] {
        let e = by_id(id);
        assert_eq!(e["outcome"]["authz"]["decision"], "allow", "{e}");
        assert_eq!(e["outcome"]["authz"]["rule"], rule, "{e}");
        assert_eq!(e["who"]["role"], role, "{e}");
        assert_eq!(e["outcome"]["authn"]["result"], "ok", "{e}");
        assert_eq!(e["outcome"]["grpc_status"], 0, "{e}");
        assert_eq!(e["what"]["resource_id"], PATIENT_ID, "{e}");
        assert_eq!(e["outcome"]["mask"]["messages"], 1, "{e}");
    }
    let denied: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"]["authz"]["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{events:#?}");
    assert_eq!(denied[0]["outcome"]["grpc_status"], 7);
    let unauthenticated: Vec<&Value> = events
        .iter()
        .filter(|e| e["outcome"]["authn"]["result"] == "failed")
        .collect();
    assert_eq!(unauthenticated.len(), 1, "{events:#?}");
    assert_eq!(unauthenticated[0]["outcome"]["authn"]["reason"], "missing");
    assert_eq!(unauthenticated[0]["outcome"]["grpc_status"], 16);

    // The access log still prints the stages' filter state (reason codes only).
    let flushed = wait_until(Duration::from_secs(10), || {
        logged_reasons(&stack, "authn").contains(&"missing".to_string())
    })
    .await;
    assert!(
        flushed,
        "authn reasons: {:?}",
        logged_reasons(&stack, "authn")
    );
    assert!(logged_reasons(&stack, "authz").contains(&"matched_allow".to_string()));
    // No PHI and no token in any log.
    let logs = all_logs(&stack);
    for canary in [canary::SSN, canary::PHONE, canary::FAMILY] {
        assert!(!logs.contains(canary), "a canary reached a log");
    }
    assert!(
        !logs.contains(stack.token("nurse")),
        "a token reached a log"
    );
    assert_eq!(
        stack.inbound.stat("wasmcustom.phi_guard.jwt.verified"),
        Some(4)
    );
    assert!(stack
        .inbound
        .stat("wasmcustom.phi_guard.audit.enqueued")
        .is_some_and(|n| n >= 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_layouts_answer_the_same() {
    let single = stack("pipeline_vs_single", Layout::Single).await;
    let config = std::fs::read_to_string(&single.inbound.config).unwrap();
    assert!(
        config.contains("phi_guard_jwt.wasm"),
        "the single-stage modules run"
    );
    let from_single = smoke(&single).await;
    drop(single);
    let piped = stack("pipeline_vs_pipeline", Layout::Pipeline).await;
    let from_pipeline = smoke(&piped).await;
    // Keyed tokens depend on each stack's fresh key: compare their shape only.
    let (mut a, mut b) = (from_single, from_pipeline);
    for p in [&mut a.2, &mut b.2] {
        p.mrn = p.mrn[..4].to_string();
        p.insurance_member_id = p.insurance_member_id.get(..4).unwrap_or_default().into();
        for v in p.identifiers.values_mut() {
            *v = v.get(..4).unwrap_or_default().into();
        }
    }
    assert_eq!(a, b);
}
