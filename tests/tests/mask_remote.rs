//! The mask filter with its descriptor set fetched from a cluster (`[mask] descriptor_set_url`,
//! rendered as `descriptor_set.remote`): refused before the first set, masking once it
//! arrives, the last good set kept through an outage and garbage, and a set outside the pins
//! never installed.

use std::time::Duration;

use phi_guard_e2e::{raw_call, wait_until};
use phi_guard_proto::health::v1::{GetPatientRequest, Patient};
use phi_guard_tools::backend::{canary, PATIENT_ID};
use phi_guard_tools::docserver::{sha256_hex, Answer, DocumentServer};
use phi_guard_tools::render::{RemoteDescriptorSet, Upstream};
use phi_guard_tools::stack::Stack;
use prost::Message;
use tonic::Code;

const SET_PATH: &str = "/schemas/patient.binpb";
const FETCH_OK: &str = "wasmcustom.phi_guard.mask.descriptor_set_fetch_ok";
const FETCH_FAILED: &str = "wasmcustom.phi_guard.mask.descriptor_set_fetch_failed";
const PIN_MISMATCH: &str = "wasmcustom.phi_guard.mask.descriptor_set_pin_mismatch";
const REFUSED: &str = "wasmcustom.phi_guard.mask.refused_no_descriptor_set";
const BACKEND_REQUESTS: &str = "cluster.backend.upstream_rq_total";

/// The demo APIs' descriptor set, as the stack otherwise carries it inline.
fn demo_set() -> Vec<u8> {
    phi_guard_tools::demo_api::descriptor_set().expect("the demo descriptor set builds")
}

/// A stack whose mask filter fetches its set from `server` (pinned to `pin` when given),
/// refreshing and retrying every second.
async fn stack(name: &str, server: &DocumentServer, pin: Option<&str>) -> Stack {
    let upstream = Upstream::parse(&server.url(), "mask.descriptor_set_url", "/", None).unwrap();
    Stack::builder(name)
        .workload("frontend", "clinic", "ehr-frontend")
        .workload("analytics", "research", "analytics")
        .mask_descriptor_set_remote(RemoteDescriptorSet {
            upstream,
            sha256: pin.map(str::to_string).into_iter().collect(),
            refresh_interval_s: Some(1),
            retry_interval_s: Some(1),
        })
        .start()
        .await
        .expect("stack starts")
}

/// Whether Envoy's log shows `needle` within 10 s: Envoy writes its log file from a flush
/// thread, so a line can reach the disk after the counter bumped beside it is visible.
async fn logged(stack: &Stack, needle: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        stack.inbound.log_text().contains(needle)
    })
    .await
}

fn stat(stack: &Stack, name: &str) -> u64 {
    stack.inbound.stat(name).unwrap_or(0)
}

async fn get_patient(stack: &Stack, workload: &str, user: &str) -> (Vec<u8>, tonic::Status) {
    let request = GetPatientRequest {
        patient_id: PATIENT_ID.into(),
    }
    .encode_to_vec();
    let (messages, status) = raw_call(
        stack,
        workload,
        Some(user),
        "/health.v1.PatientService/GetPatient",
        request,
    )
    .await;
    (messages.concat(), status)
}

/// The call is refused by mask before it reaches the service: UNAVAILABLE, the generic
/// message, no message byte, and the backend saw no request.
async fn assert_refused_before_the_service(stack: &Stack) {
    let backend_before = stat(stack, BACKEND_REQUESTS);
    let (bytes, status) = get_patient(stack, "frontend", "nurse").await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "service unavailable");
    assert!(bytes.is_empty(), "no byte of a response: {bytes:?}");
    assert_eq!(
        stat(stack, BACKEND_REQUESTS),
        backend_before,
        "the service was never called"
    );
}

/// Envoy runs one VM per worker thread (and one on the main thread), each fetching its own
/// set: the stats count every VM's install, so the first `fetch_ok` does not mean the worker
/// serving the next call has its set yet. Until it has, its calls must be refused cleanly;
/// waits (bounded) for the first call that is served.
async fn wait_until_served(stack: &Stack) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (bytes, status) = get_patient(stack, "frontend", "nurse").await;
        if status.code() == Code::Ok {
            return;
        }
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "refused cleanly: {status:?}"
        );
        assert!(bytes.is_empty(), "no byte of a response while refused");
        assert!(
            std::time::Instant::now() < deadline,
            "the installed set never served a call"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Nurse and research see the patient masked as with the inline set.
async fn assert_masked(stack: &Stack) {
    let (bytes, status) = get_patient(stack, "frontend", "nurse").await;
    assert_eq!(status.code(), Code::Ok, "nurse: {status:?}");
    let nurse = Patient::decode(&bytes[..]).unwrap();
    assert_eq!(nurse.mrn, canary::MRN, "nurse sees the MRN");
    assert_ne!(nurse.ssn, canary::SSN, "nurse: SSN masked");
    assert!(nurse.ssn.ends_with(&canary::SSN[canary::SSN.len() - 4..]));
    assert_eq!(nurse.contacts[0].email, "[redacted]");

    let (bytes, status) = get_patient(stack, "analytics", "research").await;
    assert_eq!(status.code(), Code::Ok, "research: {status:?}");
    let text = String::from_utf8_lossy(&bytes);
    for value in canary::ALL.iter().chain([&canary::note().as_str()]) {
        assert!(!text.contains(value), "research saw {value}");
    }
    assert_eq!(Patient::decode(&bytes[..]).unwrap().patient_id, PATIENT_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_set_fails_closed_until_served_then_masks_and_outlives_an_outage() {
    let set = demo_set();
    let server = DocumentServer::start(SET_PATH, "application/octet-stream", set.clone())
        .await
        .unwrap();
    // Not published yet.
    server.set_answer(Answer::Status(404));
    let stack = stack("mask_remote", &server, None).await;

    // (a) No set yet: every call is refused at its headers, and counted.
    assert!(
        wait_until(Duration::from_secs(10), || stat(&stack, FETCH_FAILED) >= 1).await,
        "the filter never tried to fetch"
    );
    assert_refused_before_the_service(&stack).await;
    assert!(wait_until(Duration::from_secs(5), || stat(&stack, REFUSED) >= 1).await);
    assert_eq!(stat(&stack, FETCH_OK), 0);

    // (b) Published: the retry picks it up and calls are masked as with the inline set.
    server.set_answer(Answer::Document);
    assert!(
        wait_until(Duration::from_secs(15), || stat(&stack, FETCH_OK) >= 1).await,
        "the set was never installed"
    );
    wait_until_served(&stack).await;
    assert_masked(&stack).await;

    // (c) The schema server fails, then answers garbage: the last good set keeps masking.
    // Each VM fetches on its own and the counters add them all up: the main thread's VM,
    // which never serves a call and so may still have no set, fails too. Each step therefore
    // waits for the line only a VM holding a set logs, not for the counter.
    let failed = stat(&stack, FETCH_FAILED);
    server.set_answer(Answer::Status(500));
    assert!(
        logged(&stack, "failed: HTTP 500; keeping the last good set").await,
        "the outage is logged by the VM that keeps its set"
    );
    assert!(
        wait_until(Duration::from_secs(5), || stat(&stack, FETCH_FAILED)
            > failed)
        .await,
        "the outage is counted"
    );
    assert_masked(&stack).await;
    let failed = stat(&stack, FETCH_FAILED);
    server.set_answer(Answer::Body(b"<html>maintenance</html>".to_vec()));
    assert!(
        logged(
            &stack,
            "field `descriptor_set`: malformed descriptor set (FileDescriptorSet); keeping the last good set"
        )
        .await,
        "the undecodable set is logged with its field, and the last good set kept"
    );
    assert!(
        wait_until(Duration::from_secs(5), || stat(&stack, FETCH_FAILED)
            > failed)
        .await,
        "garbage is counted"
    );
    assert_masked(&stack).await;
    assert_eq!(stat(&stack, PIN_MISMATCH), 0, "no pin configured");
    assert!(
        !stack.inbound.log_text().contains("maintenance"),
        "the body is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_outside_the_pins_is_never_installed() {
    let set = demo_set();
    let server = DocumentServer::start(SET_PATH, "application/octet-stream", set.clone())
        .await
        .unwrap();
    // Pinned to another release of the set: the one served must not be installed.
    let other = sha256_hex(b"the next release of the schema");
    let stack = stack("mask_remote_pin", &server, Some(&other)).await;
    assert!(
        wait_until(Duration::from_secs(10), || stat(&stack, PIN_MISMATCH) >= 2).await,
        "the served set was not refused for its digest (and retried)"
    );
    assert_refused_before_the_service(&stack).await;
    assert_eq!(stat(&stack, FETCH_OK), 0, "never installed");
    assert!(stat(&stack, FETCH_FAILED) >= stat(&stack, PIN_MISMATCH));
    assert!(
        logged(&stack, "field `descriptor_set.remote.sha256`").await,
        "the refusal names the pin field"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_matching_one_of_its_pins_is_installed() {
    let set = demo_set();
    let server = DocumentServer::start(SET_PATH, "application/octet-stream", set.clone())
        .await
        .unwrap();
    let stack = stack("mask_remote_pinned", &server, Some(&sha256_hex(&set))).await;
    assert!(
        wait_until(Duration::from_secs(10), || stat(&stack, FETCH_OK) >= 1).await,
        "the pinned set was never installed"
    );
    wait_until_served(&stack).await;
    assert_masked(&stack).await;
    assert_eq!(stat(&stack, PIN_MISMATCH), 0);
}
