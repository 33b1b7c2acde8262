//! The rbac filter in Envoy with the demo policy: client workloads × user roles × methods (of
//! both demo services), shadow mode, and a broken policy that keeps the plugin from starting.

use phi_guard_e2e::{get_patient_code, logged_reasons, wait_until};
use phi_guard_proto::health::v1::{DeletePatientRequest, GetPatientRequest, ListEncountersRequest};
use phi_guard_tools::backend::PATIENT_ID;
use phi_guard_tools::stack::Stack;
use tonic::Code;

#[derive(Debug, Clone, Copy)]
enum Method {
    GetPatient,
    ListEncounters,
    DeletePatient,
    /// `phi.fhir.v1.FhirService/GetPatient`.
    FhirGetPatient,
    /// `phi.fhir.v1.FhirService/ListObservations`.
    FhirListObservations,
}

/// A FHIR call through [`raw_call`] (the FHIR service has no generated Rust client).
async fn fhir_call(
    stack: &Stack,
    workload: &str,
    user: Option<&str>,
    method: Method,
) -> Result<(), tonic::Status> {
    use phi_guard_proto::fhir;
    use prost::Message;
    let (path, request) = match method {
        Method::FhirGetPatient => (
            "/phi.fhir.v1.FhirService/GetPatient",
            fhir::GetPatientRequest {
                id: fhir::PATIENT_ID.into(),
            }
            .encode_to_vec(),
        ),
        _ => (
            "/phi.fhir.v1.FhirService/ListObservations",
            fhir::ListObservationsRequest {
                patient_id: fhir::PATIENT_ID.into(),
                limit: 2,
            }
            .encode_to_vec(),
        ),
    };
    let (messages, status) = phi_guard_e2e::raw_call(stack, workload, user, path, request).await;
    if status.code() == Code::Ok {
        assert!(!messages.is_empty(), "{path}: an answer");
        Ok(())
    } else {
        assert!(messages.is_empty(), "{path}: no byte of a refused call");
        Err(status)
    }
}

async fn call(stack: &Stack, workload: &str, user: Option<&str>, method: Method) -> Code {
    if matches!(
        method,
        Method::FhirGetPatient | Method::FhirListObservations
    ) {
        return match fhir_call(stack, workload, user, method).await {
            Ok(()) => Code::Ok,
            Err(status) => {
                assert!(
                    ["permission denied", "unauthenticated"].contains(&status.message()),
                    "only generic messages reach the caller: {status:?}"
                );
                status.code()
            }
        };
    }
    let mut client = stack
        .client_as(workload, user)
        .await
        .expect("mTLS connects");
    let result = match method {
        Method::GetPatient => client
            .get_patient(GetPatientRequest {
                patient_id: PATIENT_ID.into(),
            })
            .await
            .map(|_| ()),
        Method::ListEncounters => match client
            .list_encounters(ListEncountersRequest {
                patient_id: PATIENT_ID.into(),
                limit: 2,
                note_bytes: 0,
            })
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    }
                }
            }
            Err(status) => Err(status),
        },
        Method::DeletePatient => client
            .delete_patient(DeletePatientRequest {
                patient_id: PATIENT_ID.into(),
            })
            .await
            .map(|_| ()),
        Method::FhirGetPatient | Method::FhirListObservations => unreachable!("handled above"),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => {
            assert!(
                ["permission denied", "unauthenticated"].contains(&status.message()),
                "only generic messages reach the caller: {status:?}"
            );
            status.code()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_times_roles_times_methods() {
    let stack = Stack::builder("rbac_matrix")
        .workload("frontend", "clinic", "ehr-frontend")
        .workload("analytics", "research", "analytics")
        .workload("admin-tool", "ops", "admin-tool")
        .workload("deid-export", "research", "deid-export")
        .start()
        .await
        .expect("stack starts");
    use Method::*;
    let matrix: &[(&str, Option<&str>, Method, Code)] = &[
        ("frontend", Some("nurse"), GetPatient, Code::Ok),
        ("frontend", Some("nurse"), ListEncounters, Code::Ok),
        ("frontend", Some("billing"), GetPatient, Code::Ok),
        ("frontend", Some("billing"), ListEncounters, Code::Ok),
        (
            "frontend",
            Some("research"),
            GetPatient,
            Code::PermissionDenied,
        ),
        (
            "frontend",
            Some("nurse"),
            DeletePatient,
            Code::PermissionDenied,
        ),
        (
            "frontend",
            Some("admin"),
            DeletePatient,
            Code::PermissionDenied,
        ),
        ("frontend", None, GetPatient, Code::Unauthenticated),
        ("analytics", Some("research"), GetPatient, Code::Ok),
        ("analytics", Some("research"), ListEncounters, Code::Ok),
        (
            "analytics",
            Some("research"),
            DeletePatient,
            Code::PermissionDenied,
        ),
        (
            "analytics",
            Some("nurse"),
            GetPatient,
            Code::PermissionDenied,
        ),
        (
            "analytics",
            Some("admin"),
            DeletePatient,
            Code::PermissionDenied,
        ),
        ("admin-tool", Some("admin"), DeletePatient, Code::Ok),
        (
            "admin-tool",
            Some("nurse"),
            DeletePatient,
            Code::PermissionDenied,
        ),
        (
            "admin-tool",
            Some("admin"),
            GetPatient,
            Code::PermissionDenied,
        ),
        // The FHIR service: the clinical frontend and research analytics as for the demo
        // service; the de-identified export workload for researchers (as safe_harbor), and
        // for the FHIR service only.
        ("frontend", Some("nurse"), FhirGetPatient, Code::Ok),
        ("frontend", Some("billing"), FhirListObservations, Code::Ok),
        (
            "frontend",
            Some("research"),
            FhirGetPatient,
            Code::PermissionDenied,
        ),
        ("analytics", Some("research"), FhirGetPatient, Code::Ok),
        (
            "analytics",
            Some("research"),
            FhirListObservations,
            Code::Ok,
        ),
        ("deid-export", Some("research"), FhirGetPatient, Code::Ok),
        (
            "deid-export",
            Some("research"),
            FhirListObservations,
            Code::Ok,
        ),
        (
            "deid-export",
            Some("nurse"),
            FhirGetPatient,
            Code::PermissionDenied,
        ),
        (
            "deid-export",
            Some("research"),
            GetPatient,
            Code::PermissionDenied,
        ),
        ("deid-export", None, FhirGetPatient, Code::Unauthenticated),
        (
            "admin-tool",
            Some("admin"),
            FhirGetPatient,
            Code::PermissionDenied,
        ),
    ];
    let mut mismatches = Vec::new();
    for (workload, user, method, expected) in matrix {
        let got = call(&stack, workload, *user, *method).await;
        if got != *expected {
            mismatches.push(format!(
                "{workload} as {user:?} {method:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");

    // Each decision is explained in the access log: the research workload's delete was
    // refused by the explicit deny rule, others by default deny.
    assert!(
        wait_until(std::time::Duration::from_secs(5), || {
            let reasons = logged_reasons(&stack, "authz");
            reasons.iter().any(|r| r == "matched_deny") && reasons.iter().any(|r| r == "no_rule")
        })
        .await,
        "{:?}",
        logged_reasons(&stack, "authz")
    );
    assert!(
        stack
            .inbound
            .stat("wasmcustom.phi_guard.rbac.allowed")
            .unwrap_or(0)
            >= 6
    );
    assert!(
        stack
            .inbound
            .stat("wasmcustom.phi_guard.rbac.denied")
            .unwrap_or(0)
            >= 7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_records_but_never_blocks() {
    let stack = Stack::builder("rbac_shadow")
        .workload("analytics", "research", "analytics")
        .patch_inbound(|yaml| yaml.replacen(r#""mode": "enforce""#, r#""mode": "shadow""#, 1))
        .start()
        .await
        .expect("stack starts");
    assert_eq!(
        call(&stack, "analytics", Some("research"), Method::DeletePatient).await,
        Code::Ok,
        "shadow mode lets the explicitly denied call through"
    );
    assert!(
        wait_until(std::time::Duration::from_secs(5), || stack
            .inbound
            .stat("wasmcustom.phi_guard.rbac.shadow_denied")
            .unwrap_or(0)
            >= 1)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_error_keeps_the_plugin_from_starting_and_names_the_field() {
    let result = Stack::builder("rbac_bad_policy")
        .workload("frontend", "clinic", "ehr-frontend")
        .patch_inbound(|yaml| yaml.replacen(r#""action": "deny""#, r#""action": "maybe""#, 1))
        .start()
        .await;
    let err = match result {
        Ok(_) => panic!("Envoy started with a broken policy"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("rules[0].action"),
        "error does not name the field:\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_identity_header_does_not_stand_in_for_a_token() {
    let stack = Stack::builder("rbac_spoof")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    // Without a token no x-phi-guard-* header can stand in for an identity.
    let leaf = &stack.workload("frontend").leaf;
    let mut client = phi_guard_tools::client::connect_mtls(
        &stack.target(),
        Some(phi_guard_tools::client::ClientCert {
            cert: &leaf.cert,
            key: &leaf.key,
        }),
        None,
    )
    .await
    .unwrap();
    let mut request = tonic::Request::new(GetPatientRequest {
        patient_id: PATIENT_ID.into(),
    });
    request
        .metadata_mut()
        .insert("x-phi-guard-role", "billing".parse().unwrap());
    let status = client.get_patient(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        get_patient_code(&stack, "frontend", Some(stack.token("nurse"))).await,
        Code::Ok
    );
}
