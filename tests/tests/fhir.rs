//! The FHIR demo service (`phi.fhir.v1.FhirService`, Google's FHIR R4 protos tagged only by
//! catalog entries) through the real Envoy, beside the demo PatientService: jwt, rbac, mask
//! and audit with one descriptor set for both APIs. Each role's view of the Patient and of the
//! Observation stream, every canary checked in the raw bytes that reached the client, Safe
//! Harbor's generalizations, the audit event's resource id from the request, and fail-closed
//! behaviour on a method and on fields outside the descriptor set.

use std::time::Duration;

use phi_guard_e2e::{all_logs, raw_call, wait_until};
use phi_guard_proto::fhir::{self, canary};
use phi_guard_tools::stack::Stack;
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::Value;
use tonic::Code;

const GET_PATIENT: &str = "/phi.fhir.v1.FhirService/GetPatient";
const LIST_OBSERVATIONS: &str = "/phi.fhir.v1.FhirService/ListObservations";

/// Who calls, as which demo user, and the role rbac gives the call (the mask view).
const CALLERS: &[(&str, &str, &str)] = &[
    ("frontend", "billing", "billing"),
    ("frontend", "nurse", "nurse"),
    ("analytics", "research", "research"),
    // The de-identified export workload: a researcher's token, the view pinned by the
    // demo policy's `deid-export-reads` rule.
    ("deid-export", "research", "safe_harbor"),
];

/// 1954-01-01T00:00:00Z: the year of the birth date (1954-07-05), in microseconds.
const BIRTH_YEAR_US: &str = "-504921600000000";
/// 2026-01-01T00:00:00Z: the Observations' year, in microseconds.
const OBSERVATION_YEAR_US: &str = "1767225600000000";

fn builder(name: &str) -> phi_guard_tools::stack::StackBuilder {
    Stack::builder(name)
        .workload("frontend", "clinic", "ehr-frontend")
        .workload("analytics", "research", "analytics")
        .workload("deid-export", "research", "deid-export")
}

fn get_patient_request() -> Vec<u8> {
    fhir::GetPatientRequest {
        id: fhir::PATIENT_ID.into(),
    }
    .encode_to_vec()
}

fn list_observations_request(limit: u32) -> Vec<u8> {
    fhir::ListObservationsRequest {
        patient_id: fhir::PATIENT_ID.into(),
        limit,
    }
    .encode_to_vec()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The message as proto3 JSON with the proto field names, decoded with the FHIR set: it must
/// still be a valid message of its type.
fn json(type_name: &str, bytes: &[u8]) -> Value {
    let desc = fhir::pool().get_message_by_name(type_name).unwrap();
    let msg = DynamicMessage::decode(desc, bytes)
        .unwrap_or_else(|e| panic!("not a valid {type_name}: {e}"));
    msg.serialize_with_options(
        serde_json::value::Serializer,
        &SerializeOptions::new().use_proto_field_name(true),
    )
    .unwrap()
}

/// Which string canaries of the Patient each role may see whole.
fn may_see(role: &str, value: &str) -> bool {
    use canary::*;
    match role {
        "billing" => true,
        // Names (the patient's, the contact's, the maiden name in the extension) and the MRN
        // in full; SSN and phones as their last four, e-mail and address redacted.
        "nurse" => [FAMILY, GIVEN, MRN, MAIDEN_NAME, RELATED_GIVEN].contains(&value),
        _ => false,
    }
}

/// Checks every canary of one Patient response in the raw bytes, and each role's
/// transformations in the decoded message.
fn check_patient(role: &str, bytes: &[u8]) {
    for c in canary::ALL {
        assert_eq!(
            contains(bytes, c.as_bytes()),
            may_see(role, c),
            "{role}: the canary {c} in the raw response"
        );
    }
    let dob_visible = matches!(role, "billing" | "nurse");
    assert_eq!(
        contains(bytes, &fhir::birth_date_bytes()),
        dob_visible,
        "{role}: the birth date in the raw response"
    );
    let p = json(fhir::PATIENT_TYPE, bytes);
    assert_eq!(p["id"]["value"], fhir::PATIENT_ID, "{role}: the id stays");
    assert_eq!(
        p["gender"]["value"], "FEMALE",
        "{role}: untagged fields stay"
    );
    match role {
        "billing" => assert_eq!(bytes, fhir::patient(), "billing: byte for byte"),
        "nurse" => {
            for partial in ["***-**-4321", "***-***-9931", "***-***-2277"] {
                assert!(contains(bytes, partial.as_bytes()), "nurse: {partial}");
            }
            let address = &p["address"][0];
            assert_eq!(address["line"][0]["value"], "[redacted]");
            assert_eq!(address["city"]["value"], "[redacted]");
            assert_eq!(address["postal_code"]["value"], "[redacted]");
            assert_eq!(address["state"]["value"], "AK");
            let div = p["text"]["div"]["value"].as_str().unwrap();
            assert!(
                div.contains(canary::GIVEN) && div.contains("[redacted]"),
                "{div}"
            );
        }
        "research" => {
            let mrn = p["identifier"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|i| {
                    i["value"]["value"]
                        .as_str()
                        .filter(|v| v.starts_with("tok_"))
                })
                .unwrap_or_else(|| panic!("research: the MRN as a keyed token: {p}"));
            assert_eq!(mrn.len(), 36, "{mrn}");
            assert!(
                p["birth_date"]["value_us"].is_null(),
                "research: DOB removed: {p}"
            );
        }
        "safe_harbor" => {
            // Dates to the year, ZIP to its first three digits, the state kept.
            let birth = &p["birth_date"];
            assert_eq!(birth["value_us"], BIRTH_YEAR_US, "{p}");
            assert_eq!(birth["precision"], "YEAR", "{p}");
            let address = &p["address"][0];
            assert_eq!(address["postal_code"]["value"], "997", "{p}");
            assert_eq!(address["state"]["value"], "AK", "{p}");
            assert!(
                address["city"]["value"].is_null() && address["line"][0]["value"].is_null(),
                "{p}"
            );
            assert!(
                !contains(bytes, b"tok_"),
                "safe_harbor: no pseudonym either"
            );
        }
        other => panic!("no expectations for {other}"),
    }
    if matches!(role, "research" | "safe_harbor") {
        // Not even part of an identifier (outside the keyed tokens, whose random hex digits
        // may spell one by chance).
        let rest = phi_guard_e2e::without_keyed_tokens(bytes);
        for tail in ["4321", "9931", "2277", "8812"] {
            assert!(!contains(&rest, tail.as_bytes()), "{role}: {tail}");
        }
    }
}

/// Checks one streamed Observation (number `index`) as `role` receives it.
fn check_observation(role: &str, index: u32, bytes: &[u8]) {
    let note = canary::note();
    let o = json(fhir::OBSERVATION_TYPE, bytes);
    assert_eq!(
        o["value"]["quantity"]["value"]["value"], "38.4",
        "{role}: {o}"
    );
    assert_eq!(o["subject"]["patient_id"]["value"], fhir::PATIENT_ID);
    let effective = &o["effective"]["date_time"];
    match role {
        "billing" => assert_eq!(bytes, fhir::observation(index), "billing: byte for byte"),
        "nurse" => {
            let text = o["note"][0]["text"]["value"].as_str().unwrap();
            assert!(text.contains(canary::GIVEN), "nurse reads the note: {text}");
            for c in [canary::SSN, canary::PHONE] {
                assert!(!contains(bytes, c.as_bytes()), "nurse: {c} in the note");
            }
            assert!(
                text.contains("***-**-4321") && text.contains("***-***-9931"),
                "{text}"
            );
            assert_eq!(
                effective["value_us"],
                (1_767_257_400_000_000i64 + i64::from(index) * 3_600_000_000).to_string()
            );
        }
        _ => {
            assert!(!contains(bytes, note.as_bytes()), "{role}: the note");
            for c in canary::ALL {
                assert!(
                    !contains(bytes, c.as_bytes()),
                    "{role}: {c} in an Observation"
                );
            }
            assert_eq!(effective["value_us"], OBSERVATION_YEAR_US, "{role}: {o}");
            assert_eq!(effective["precision"], "YEAR", "{role}: {o}");
        }
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
async fn each_role_sees_its_view_of_the_fhir_patient_and_observations() {
    let stack = builder("fhir_roles").start().await.expect("stack starts");
    for (workload, user, role) in CALLERS {
        let (messages, status) = raw_call(
            &stack,
            workload,
            Some(user),
            GET_PATIENT,
            get_patient_request(),
        )
        .await;
        assert_eq!(status.code(), Code::Ok, "{role}: {status:?}");
        assert_eq!(messages.len(), 1, "{role}");
        check_patient(role, &messages[0]);

        let (messages, status) = raw_call(
            &stack,
            workload,
            Some(user),
            LIST_OBSERVATIONS,
            list_observations_request(3),
        )
        .await;
        assert_eq!(status.code(), Code::Ok, "{role}: {status:?}");
        assert_eq!(messages.len(), 3, "{role}: every Observation arrived");
        for (i, m) in messages.iter().enumerate() {
            check_observation(role, i as u32, m);
        }
    }
    // The PatientService beside it still answers through the same chain and set.
    let (messages, status) = raw_call(
        &stack,
        "frontend",
        Some("nurse"),
        "/health.v1.PatientService/GetPatient",
        phi_guard_proto::health::v1::GetPatientRequest {
            patient_id: phi_guard_tools::backend::PATIENT_ID.into(),
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let demo = phi_guard_proto::health::v1::Patient::decode(&messages.concat()[..]).unwrap();
    assert_eq!(demo.ssn, "***-**-1234");
    // A researcher through the frontend: rbac refuses, no byte of a response.
    let (messages, status) = raw_call(
        &stack,
        "frontend",
        Some("research"),
        GET_PATIENT,
        get_patient_request(),
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(messages.is_empty());

    // One audit event per call, the resource id read from the request message.
    let total = CALLERS.len() * 2 + 2;
    assert!(
        wait_until(Duration::from_secs(30), || events(&stack).len() >= total).await,
        "{} of {total} audit events",
        events(&stack).len()
    );
    let events = events(&stack);
    let fhir_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["what"]["service"] == fhir::SERVICE && e["outcome"]["grpc_status"] == 0)
        .collect();
    assert_eq!(fhir_events.len(), CALLERS.len() * 2, "{events:#?}");
    for (_, _, role) in CALLERS {
        for method in ["GetPatient", "ListObservations"] {
            let e = fhir_events
                .iter()
                .find(|e| e["who"]["role"] == *role && e["what"]["method"] == method)
                .unwrap_or_else(|| panic!("no event for {role} {method}: {events:#?}"));
            assert_eq!(e["what"]["resource_id"], fhir::PATIENT_ID, "{e}");
            assert!(e["what"].get("claimed_resource_id").is_none(), "{e}");
        }
    }
    let sh = fhir_events
        .iter()
        .find(|e| e["who"]["role"] == "safe_harbor" && e["what"]["method"] == "GetPatient")
        .unwrap();
    let fields = &sh["outcome"]["mask"]["fields"];
    for counted in ["DOB/year", "ZIP/zip3", "SSN/remove"] {
        assert!(fields.get(counted).is_some(), "{counted}: {sh}");
    }
    // Nothing of the patient in the audit trail or Envoy's logs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit = std::fs::read_to_string(&stack.audit_log).unwrap();
    let logs = all_logs(&stack);
    for c in canary::ALL.iter().copied().chain([canary::note().as_str()]) {
        assert!(!audit.contains(c), "{c} in the audit log");
        assert!(!logs.contains(c), "{c} in Envoy's logs");
    }
}

/// Fail closed on FHIR: a method the descriptor set does not describe (allowed by rbac, the
/// upstream answering canaries) is refused with no byte of its response; fields Google's
/// protos do not declare never reach a caller whose role does not reveal everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_methods_and_fields_outside_the_descriptor_set_fail_closed() {
    use phi_guard_tools::backend::UNKNOWN_FIELD_CANARY;
    let stack = builder("fhir_drift")
        .drifted_backend()
        // rbac allows a method the FHIR service gained after the descriptor set was built:
        // it joins the FHIR methods of the first rule listing them (frontend-clinical-reads).
        .patch_inbound(|yaml| {
            let rbac = phi_guard_tools::stack::stage_config_at(&yaml, "rbac")
                .expect("the rendered inbound config has the rbac stage");
            let reads = r#""phi.fhir.v1.FhirService/ListObservations""#;
            let at = rbac
                + yaml[rbac..]
                    .find(reads)
                    .expect("the rbac policy allows ListObservations")
                + reads.len();
            let mut patched = yaml.clone();
            patched.insert_str(at, r#", "phi.fhir.v1.FhirService/ExportBundle""#);
            patched
        })
        .start()
        .await
        .expect("stack starts");

    let (messages, status) = raw_call(
        &stack,
        "frontend",
        Some("billing"),
        "/phi.fhir.v1.FhirService/ExportBundle",
        get_patient_request(),
    )
    .await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "internal error");
    assert!(messages.is_empty(), "no byte of the response: {messages:?}");

    for (workload, user, role) in CALLERS {
        let (messages, status) = raw_call(
            &stack,
            workload,
            Some(user),
            GET_PATIENT,
            get_patient_request(),
        )
        .await;
        assert_eq!(status.code(), Code::Ok, "{role}: {status:?}");
        let bytes = messages.concat();
        assert_eq!(
            contains(&bytes, UNKNOWN_FIELD_CANARY.as_bytes()),
            *role == "billing",
            "{role}: the undeclared fields' canary"
        );
        let p = json(fhir::PATIENT_TYPE, &bytes);
        assert_eq!(
            p["id"]["value"],
            fhir::PATIENT_ID,
            "{role}: declared fields kept"
        );
        assert_eq!(p["gender"]["value"], "FEMALE", "{role}");
    }
    for (stat, at_least) in [
        ("wasmcustom.phi_guard.mask.refused_no_plan", 1),
        ("wasmcustom.phi_guard.mask.unknown_fields_dropped", 6),
    ] {
        assert!(
            wait_until(Duration::from_secs(5), || stack
                .inbound
                .stat(stat)
                .unwrap_or(0)
                >= at_least)
            .await,
            "{stat}"
        );
    }
}
