//! The mask filter in Envoy: one patient as billing, nurse and research see it, streamed
//! encounters, gzip, and a malformed upstream message.

use phi_guard_e2e::{raw_call, wait_until};
use phi_guard_proto::health::v1::{patient, GetPatientRequest, ListEncountersRequest, Patient};
use phi_guard_tools::backend::{canary, PATIENT_ID};
use phi_guard_tools::stack::Stack;
use prost::Message;
use tonic::Code;

async fn stack(name: &str) -> Stack {
    Stack::builder(name)
        .workload("frontend", "clinic", "ehr-frontend")
        .workload("analytics", "research", "analytics")
        .start()
        .await
        .expect("stack starts")
}

async fn patient_as(stack: &Stack, workload: &str, user: &str) -> Patient {
    stack
        .client_as(workload, Some(user))
        .await
        .unwrap()
        .get_patient(GetPatientRequest {
            patient_id: PATIENT_ID.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("{user}: {s:?}"))
        .into_inner()
}

/// `value` masked to its last four characters, separators kept.
fn assert_last_four(value: &str, original: &str) {
    assert_eq!(value.len(), original.len(), "{value}");
    assert!(value.ends_with(&original[original.len() - 4..]), "{value}");
    assert_ne!(value, original);
    for (v, o) in value.chars().zip(original.chars()) {
        if !o.is_ascii_alphanumeric() {
            assert_eq!(v, o, "separators kept in {value}");
        }
    }
}

fn is_token(value: &str) -> bool {
    phi_guard_e2e::is_keyed_token(value.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_patient_as_each_role_sees_it() {
    let stack = stack("mask_roles").await;

    // Billing sees every field in full.
    let billing = patient_as(&stack, "frontend", "billing").await;
    assert_eq!(billing, phi_guard_tools::backend::patient());

    // Nurse: names and dates in full, SSN and phone as last four, no e-mail or address.
    let nurse = patient_as(&stack, "frontend", "nurse").await;
    let name = nurse.name.clone().unwrap();
    assert_eq!(name.family, canary::FAMILY);
    assert_eq!(name.given[0], canary::GIVEN);
    assert_eq!(nurse.birth_date, canary::BIRTH_DATE);
    assert_eq!(nurse.mrn, canary::MRN);
    assert_last_four(&nurse.ssn, canary::SSN);
    assert_last_four(&nurse.contacts[0].phone, canary::PHONE);
    assert_last_four(&nurse.insurance_member_id, canary::INSURANCE);
    assert_eq!(nurse.contacts[0].email, "[redacted]");
    let address = nurse.address.clone().unwrap();
    assert!(address.line.iter().all(|l| l == "[redacted]"));
    assert_eq!(address.city, "[redacted]");
    assert_eq!(address.state, "AK", "unannotated fields untouched");
    match &nurse.emergency_contact {
        Some(patient::EmergencyContact::EmergencyPhone(p)) => {
            assert_last_four(p, canary::EMERGENCY_PHONE)
        }
        other => panic!("emergency contact: {other:?}"),
    }
    // Free text keeps what the nurse may see and masks identifiers found inside it.
    assert!(nurse.notes.contains(canary::GIVEN));
    assert!(!nurse.notes.contains(canary::SSN), "{}", nurse.notes);
    assert!(!nurse.notes.contains(canary::PHONE), "{}", nurse.notes);
    assert_eq!(
        nurse.allergy_codes, billing.allergy_codes,
        "packed scalars intact"
    );

    // Research: keyed tokens for identifiers, nothing of the direct identifiers.
    let research = patient_as(&stack, "analytics", "research").await;
    assert!(is_token(&research.mrn), "{}", research.mrn);
    assert!(is_token(&research.insurance_member_id));
    assert!(is_token(&research.identifiers["lab-system"]));
    let again = patient_as(&stack, "analytics", "research").await;
    assert_eq!(
        research.mrn, again.mrn,
        "a keyed token is a stable pseudonym"
    );
    assert_eq!(research.patient_id, PATIENT_ID);
    assert_eq!(research.allergy_codes, billing.allergy_codes);
    let bytes = research.encode_to_vec();
    let text = String::from_utf8_lossy(&bytes);
    for value in canary::ALL.iter().chain([&canary::note().as_str()]) {
        assert!(!text.contains(value), "research saw {value}");
    }
    // Outside the keyed tokens, whose random hex digits may spell a digit run by chance.
    let rest = phi_guard_e2e::without_keyed_tokens(&bytes);
    let rest = String::from_utf8_lossy(&rest);
    for digits in ["1234", "4477", "8822", "7788"] {
        assert!(
            !rest.contains(digits),
            "research saw part of an identifier: {digits}"
        );
    }

    // The audit trail learns what was masked, as counts.
    assert!(
        wait_until(std::time::Duration::from_secs(5), || stack
            .inbound
            .stat("wasmcustom.phi_guard.mask.messages")
            .unwrap_or(0)
            >= 4)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_encounters_are_masked_message_by_message() {
    let stack = stack("mask_stream").await;
    for (workload, user) in [
        ("frontend", "nurse"),
        ("frontend", "billing"),
        ("analytics", "research"),
    ] {
        let mut stream = stack
            .client_as(workload, Some(user))
            .await
            .unwrap_or_else(|e| panic!("{user}: connect: {e}"))
            .list_encounters(ListEncountersRequest {
                patient_id: PATIENT_ID.into(),
                limit: 30,
                note_bytes: 50_000,
            })
            .await
            .unwrap_or_else(|status| panic!("{user}: ListEncounters: {status:?}"))
            .into_inner();
        let mut count = 0;
        while let Some(encounter) = stream
            .message()
            .await
            .unwrap_or_else(|status| panic!("{user}: after {count} messages: {status:?}"))
        {
            count += 1;
            let note_has_ssn = encounter.note.contains(canary::SSN);
            let attending = encounter.attending.clone().unwrap_or_default();
            match user {
                "nurse" => {
                    assert!(encounter.note.len() >= 50_000, "nurse: note kept its body");
                    assert!(!note_has_ssn, "nurse: SSN inside a streamed note");
                    assert_eq!(encounter.mrn, canary::MRN);
                    assert_eq!(attending.family, "Attending");
                }
                "billing" => {
                    assert!(note_has_ssn, "billing sees notes in full");
                    assert_eq!(
                        encounter,
                        phi_guard_tools::backend::encounter(count - 1, 50_000),
                        "billing: every field as the service sent it"
                    );
                }
                _ => {
                    assert!(is_token(&encounter.mrn), "research: {}", encounter.mrn);
                    assert_eq!(encounter.note, "", "research: free text redacted");
                    assert_eq!(encounter.start_time, "", "research: dates removed");
                    assert_eq!(attending.family, "", "research: names removed");
                    assert_eq!(
                        encounter.diagnoses[0].description,
                        canary::DIAGNOSIS,
                        "research keeps clinical content"
                    );
                }
            }
            assert_eq!(encounter.vitals, vec![36.8, 72.0, 118.0, 76.0]);
        }
        assert_eq!(count, 30, "{user}: every message arrived");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compressed_responses_are_masked() {
    let stack = stack("mask_gzip").await;
    let mut client = stack
        .client_as("frontend", Some("nurse"))
        .await
        .unwrap()
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let response = client
        .get_patient(GetPatientRequest {
            patient_id: PATIENT_ID.into(),
        })
        .await
        .unwrap();
    assert_eq!(
        response
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip"),
        "the response really was compressed"
    );
    let nurse = response.into_inner();
    assert_last_four(&nurse.ssn, canary::SSN);
    assert_eq!(nurse.contacts[0].email, "[redacted]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_upstream_message_ends_the_rpc_with_internal_and_leaks_nothing() {
    let stack = Stack::builder("mask_malformed")
        .workload("analytics", "research", "analytics")
        .malformed_backend()
        .start()
        .await
        .expect("stack starts");
    let request = GetPatientRequest {
        patient_id: PATIENT_ID.into(),
    }
    .encode_to_vec();
    let (messages, status) = raw_call(
        &stack,
        "analytics",
        Some("research"),
        "/health.v1.PatientService/GetPatient",
        request,
    )
    .await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "internal error");
    let received: Vec<u8> = messages.concat();
    let text = String::from_utf8_lossy(&received);
    for value in canary::ALL {
        assert!(!text.contains(value), "{value} reached the client");
    }
    assert!(
        wait_until(std::time::Duration::from_secs(5), || stack
            .inbound
            .stat("wasmcustom.phi_guard.mask.failures")
            .unwrap_or(0)
            >= 1)
        .await
    );
}

/// Issue 11 item 1, fail closed. A method that rbac allows but the mask filter's descriptor set
/// does not describe is refused with no byte of its response; the pass-through health check
/// still works; fields a newer upstream added (unknown to the set) never reach a caller whose
/// role does not reveal everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_fields_outside_the_descriptor_set_fail_closed() {
    use phi_guard_tools::backend::UNKNOWN_FIELD_CANARY;
    let stack = Stack::builder("mask_drift")
        .workload("frontend", "clinic", "ehr-frontend")
        .workload("analytics", "research", "analytics")
        .drifted_backend()
        // rbac allows a method the service gained after the descriptor set was built.
        // The first rule of the rendered rbac policy that lists ListEncounters is
        // frontend-clinical-reads (filters/rbac/policy.demo.json); the method joins its list.
        .patch_inbound(|yaml| {
            let rbac = phi_guard_tools::stack::stage_config_at(&yaml, "rbac")
                .expect("the rendered inbound config has the rbac stage");
            let reads = r#""health.v1.PatientService/ListEncounters""#;
            let at = rbac
                + yaml[rbac..]
                    .find(reads)
                    .expect("the rbac policy allows ListEncounters")
                + reads.len();
            let mut patched = yaml.clone();
            patched.insert_str(at, r#", "health.v1.PatientService/ExportEverything""#);
            patched
        })
        .start()
        .await
        .expect("stack starts");
    let request = GetPatientRequest {
        patient_id: PATIENT_ID.into(),
    }
    .encode_to_vec();

    let (messages, status) = raw_call(
        &stack,
        "frontend",
        Some("billing"),
        "/health.v1.PatientService/ExportEverything",
        request.clone(),
    )
    .await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "internal error");
    assert!(messages.is_empty(), "no byte of the response: {messages:?}");

    let (messages, status) = raw_call(
        &stack,
        "frontend",
        None,
        "/grpc.health.v1.Health/Check",
        Vec::new(),
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(messages, vec![vec![0x08, 0x01]], "pass-through: SERVING");

    for (workload, user, sees) in [
        ("frontend", "nurse", false),
        ("analytics", "research", false),
        ("frontend", "billing", true),
    ] {
        let (messages, status) = raw_call(
            &stack,
            workload,
            Some(user),
            "/health.v1.PatientService/GetPatient",
            request.clone(),
        )
        .await;
        assert_eq!(status.code(), Code::Ok, "{user}: {status:?}");
        let bytes = messages.concat();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(
            text.contains(UNKNOWN_FIELD_CANARY),
            sees,
            "{user}: the undeclared field's canary"
        );
        let patient = Patient::decode(&bytes[..]).unwrap();
        assert_eq!(
            patient.patient_id, PATIENT_ID,
            "{user}: declared fields kept"
        );
    }
    for (stat, at_least) in [
        ("wasmcustom.phi_guard.mask.refused_no_plan", 1),
        ("wasmcustom.phi_guard.mask.pass_through", 1),
        ("wasmcustom.phi_guard.mask.unknown_fields_dropped", 4),
    ] {
        assert!(
            wait_until(std::time::Duration::from_secs(5), || stack
                .inbound
                .stat(stat)
                .unwrap_or(0)
                >= at_least)
            .await,
            "{stat}"
        );
    }
}
