//! The per-stream shell against a fake host: role lookup, header handling, summary, metrics
//! and the failure path.

mod support;

use std::rc::Rc;

use phi_guard_common::{
    state, AuthzDecision, AuthzMode, GrpcStatus, MaskFailure, MaskSummary, ResourceId,
    StateContract, Verdict,
};
use phi_guard_host::Flow as Action;
use phi_guard_host::{read_state, FakeHost, Host, Trailers};
use phi_guard_mask::{MaskStream, Metrics};
use phi_guard_proto::health::v1::{GetPatientRequest, ListEncountersRequest, Patient};
use prost::Message;
use support::*;

/// The shell against the recording fake, which is its `Host` and its `BodyHost` both.
struct Harness {
    host: FakeHost,
    stream: MaskStream,
}

fn authz(role: &str) -> Vec<u8> {
    AuthzDecision {
        decision: Verdict::Allow,
        rule: Some("r".into()),
        role: role.into(),
        policy_version: "1".into(),
        mode: AuthzMode::Enforce,
        shadow_decision: None,
        reason: "matched_allow".into(),
        break_glass: false,
        break_glass_reason: None,
    }
    .encode()
}

fn harness(method: &str, role: Option<&str>, content_type: &str) -> Harness {
    let host = FakeHost::with_request_headers(&[(":path", &format!("/{method}"))]);
    if let Some(role) = role {
        host.insert_property(&[state::AUTHZ], &authz(role));
    }
    *host.response_headers.borrow_mut() = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), content_type.into()),
        ("content-length".into(), "1234".into()),
    ];
    let metrics = Rc::new(Metrics::define(&host));
    let stream = MaskStream::new(Rc::new(demo_config()), metrics);
    Harness { host, stream }
}

impl Harness {
    fn headers(&mut self) -> Action {
        self.stream.on_request_headers(&self.host);
        self.stream.on_response_headers(&self.host, false)
    }

    /// Sends each chunk through the body callback; returns what reached the client.
    fn body(&mut self, chunks: &[&[u8]], end_of_stream: bool) -> Vec<u8> {
        let mut sent = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            *self.host.response_body.borrow_mut() = c.to_vec();
            let eos = end_of_stream && i + 1 == chunks.len();
            let action = self
                .stream
                .on_response_body(&self.host, &self.host, c.len(), eos);
            assert_eq!(action, Action::Continue);
            sent.extend(self.host.response_body.borrow().iter().copied());
        }
        sent
    }

    fn trailers(&mut self) {
        *self.host.response_trailers.borrow_mut() = vec![("grpc-status".into(), "0".into())];
        self.stream.on_response_trailers(&self.host, &self.host);
    }

    fn stream_summary_role(&mut self) -> String {
        self.trailers();
        self.summary().unwrap().role
    }

    fn summary(&self) -> Option<MaskSummary> {
        read_state(&self.host).unwrap()
    }
}

fn patient_frames(n: usize) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..n {
        s.extend(frame(&patient().encode_to_vec()));
    }
    s
}

#[test]
fn masks_for_the_role_rbac_decided() {
    let mut h = harness(GET_PATIENT, Some("nurse"), "application/grpc");
    assert_eq!(h.headers(), Action::Continue);
    assert_eq!(h.host.response_header("content-length"), None);
    let stream = patient_frames(2);
    let chunks: Vec<&[u8]> = stream.chunks(100).collect();
    let sent = h.body(&chunks, false);
    h.trailers();
    assert_eq!(h.host.response_trailer("grpc-status").as_deref(), Some("0"));
    let frames = unframe(&sent);
    assert_eq!(frames.len(), 2);
    let p = Patient::decode(&frames[1].1[..]).unwrap();
    assert_eq!(p.ssn, "***-**-1234");
    assert!(!contains(&sent, CANARY_SSN));

    let summary = h.summary().unwrap();
    assert_eq!(summary.role, "nurse");
    assert_eq!(summary.messages, 2);
    assert_eq!(summary.fields["SSN/partial"], 4);
    assert_eq!(summary.fields["NAME/reveal"], 6);
    assert_eq!(summary.failure, None);
    assert_eq!(h.host.counter("phi_guard.mask.messages"), 2);
    // Per patient: ssn, phone, emergency phone, insurance id, and the SSN and phone in the note.
    assert_eq!(h.host.counter("phi_guard.mask.fields_partial"), 12);
    let partial: u64 = summary
        .fields
        .iter()
        .filter(|(k, _)| k.ends_with("/partial"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(partial, 12);
    assert_eq!(h.host.counter("phi_guard.mask.failures"), 0);
    assert!(!h.host.log_text().contains(CANARY_SSN));
}

#[test]
fn missing_or_unknown_role_gets_the_strictest_block() {
    for role in [None, Some("admin")] {
        let mut h = harness(GET_PATIENT, role, "application/grpc+proto");
        h.headers();
        let sent = h.body(&[&patient_frames(1)], false);
        h.trailers();
        let p = Patient::decode(&unframe(&sent)[0].1[..]).unwrap();
        assert_eq!((p.ssn.as_str(), p.mrn.as_str()), ("", ""));
        assert_eq!(p.name.unwrap().family, "");
        assert_eq!(h.summary().unwrap().role, "default");
    }
    // A role on a decision other than allow is not trusted.
    let mut h = harness(GET_PATIENT, None, "application/grpc");
    let mut denied: AuthzDecision = serde_json::from_slice(&authz("billing")).unwrap();
    denied.decision = Verdict::Deny;
    h.host.insert_property(&[state::AUTHZ], &denied.encode());
    h.headers();
    let sent = h.body(&[&patient_frames(1)], false);
    assert!(!contains(&sent, CANARY_SSN));
    assert_eq!(h.stream_summary_role(), "default");
    // An AUTHZ entry that does not parse is no role either.
    let mut h = harness(GET_PATIENT, None, "application/grpc");
    h.host
        .insert_property(&[state::AUTHZ], b"{\"role\":\"billing\"}");
    h.headers();
    let sent = h.body(&[&patient_frames(1)], false);
    assert!(!contains(&sent, CANARY_SSN));
    // Nor one whose decision is outside the contract's set (no string compare lets
    // `"Allow"` or `"permit"` through).
    for decision in ["Allow", "permit", ""] {
        let mut h = harness(GET_PATIENT, None, "application/grpc");
        let bad = String::from_utf8(authz("billing")).unwrap().replacen(
            r#""decision":"allow""#,
            &format!(r#""decision":"{decision}""#),
            1,
        );
        assert!(bad.contains(&format!(r#""decision":"{decision}""#)));
        h.host.insert_property(&[state::AUTHZ], bad.as_bytes());
        h.headers();
        let sent = h.body(&[&patient_frames(1)], false);
        assert!(!contains(&sent, CANARY_SSN), "{decision}");
        assert_eq!(h.stream_summary_role(), "default");
    }
}

#[test]
fn malformed_message_ends_the_rpc_with_internal() {
    let mut h = harness(GET_PATIENT, Some("billing"), "application/grpc");
    h.headers();
    let good = patient_frames(1);
    let mut bad_payload = patient().encode_to_vec();
    bad_payload.extend_from_slice(&[4 << 3, 1]); // ssn as a varint
    let bad = frame(&bad_payload);
    let sent_good = h.body(&[&good], false);
    assert_eq!(sent_good, good, "billing: unchanged");
    let sent_bad = h.body(&[&bad[..50], &bad[50..], &good], false);
    assert!(sent_bad.is_empty(), "nothing after the failure");
    h.trailers();
    assert_eq!(
        h.host.response_trailer("grpc-status").as_deref(),
        Some("13")
    );
    assert_eq!(
        h.host.response_trailer("grpc-message").as_deref(),
        Some("internal error")
    );
    let summary = h.summary().unwrap();
    assert_eq!(summary.failure, Some(MaskFailure::WireTypeMismatch));
    assert_eq!(summary.messages, 1);
    assert_eq!(h.host.counter("phi_guard.mask.failures"), 1);
    let logs = h.host.log_text();
    assert!(logs.contains("wire_type_mismatch"));
    assert!(!logs.contains(CANARY_SSN) && !logs.contains("Canarysmith"));
}

#[test]
fn truncated_stream_without_trailers_is_reset() {
    let mut h = harness(GET_PATIENT, Some("nurse"), "application/grpc");
    h.headers();
    let stream = patient_frames(1);
    let sent = h.body(&[&stream[..stream.len() - 3]], true);
    assert!(sent.is_empty());
    assert!(h.host.reset.get());
    assert_eq!(
        h.summary().unwrap().failure,
        Some(MaskFailure::TruncatedFrame)
    );
}

#[test]
fn partial_frame_at_trailers_fails() {
    let mut h = harness(GET_PATIENT, Some("nurse"), "application/grpc");
    h.headers();
    let stream = patient_frames(1);
    h.body(&[&stream[..10]], false);
    h.trailers();
    assert_eq!(
        h.host.response_trailer("grpc-status").as_deref(),
        Some("13")
    );
}

#[test]
fn non_grpc_response_of_a_masked_method_is_replaced() {
    let mut h = harness(GET_PATIENT, Some("billing"), "text/html");
    assert_eq!(h.headers(), Action::Pause);
    assert_eq!(h.host.sent_status(), Some(GrpcStatus::Internal));
    assert_eq!(h.summary().unwrap().failure, Some(MaskFailure::NotGrpc));
    let sent = h.body(&[b"<html>900-55-1234</html>"], true);
    assert!(sent.is_empty());
}

#[test]
fn methods_outside_the_descriptor_set_are_refused_before_the_service_sees_them() {
    for path in [
        "health.v1.PatientService/ExportEverything",
        "grpc.health.v1.Health/Watch",
    ] {
        let mut h = harness(path, Some("billing"), "application/grpc");
        assert_eq!(
            h.stream.on_request_headers(&h.host),
            Action::Pause,
            "{path}"
        );
        assert_eq!(h.host.sent_status(), Some(GrpcStatus::Internal));
        let s = h.summary().unwrap();
        assert_eq!(s.failure, Some(MaskFailure::NoPlan));
        assert_eq!(s.role, "billing");
        assert_eq!(h.host.counter("phi_guard.mask.refused_no_plan"), 1);
        // Whatever comes back (the local reply, or a response racing it) carries no byte.
        h.stream.on_response_headers(&h.host, false);
        assert!(h.body(&[&patient_frames(1)], false).is_empty());
        h.trailers();
        assert_eq!(
            h.host.response_trailer("grpc-status").as_deref(),
            Some("13")
        );
    }
    // A path that is not a gRPC method at all.
    let mut h = harness("not a method", Some("nurse"), "text/plain");
    assert_eq!(h.stream.on_request_headers(&h.host), Action::Pause);
    assert_eq!(h.host.sent_status(), Some(GrpcStatus::Internal));
    assert!(h.body(&[b"hello"], true).is_empty());
}

#[test]
fn pass_through_methods_are_untouched_and_say_so() {
    let method = "grpc.health.v1.Health/Check";
    let mut h = harness(method, None, "application/grpc");
    assert_eq!(h.headers(), Action::Continue);
    assert_eq!(h.host.sent_status(), None);
    assert_eq!(
        h.host.response_header("content-length").as_deref(),
        Some("1234")
    );
    let stream = frame(&[0x08, 0x01]);
    assert_eq!(h.body(&[&stream], false), stream);
    h.trailers();
    let s = h.summary().unwrap();
    assert!(s.pass_through);
    assert_eq!((s.failure, s.messages), (None, 0));
    assert_eq!(h.host.counter("phi_guard.mask.pass_through"), 1);
}

#[test]
fn methods_without_sensitive_fields_still_lose_unknown_fields() {
    let method = "health.v1.PatientService/DeletePatient";
    let mut h = harness(method, Some("nurse"), "application/grpc");
    assert_eq!(h.headers(), Action::Continue);
    // deleted = true, then unknown field 9 holding a canary.
    let mut msg = vec![0x08, 0x01, 9 << 3 | 2, CANARY_SSN.len() as u8];
    msg.extend_from_slice(CANARY_SSN.as_bytes());
    let sent = h.body(&[&frame(&msg)], false);
    assert_eq!(sent, frame(&[0x08, 0x01]));
    h.trailers();
    let s = h.summary().unwrap();
    assert_eq!((s.unknown_fields, s.messages), (1, 1));
    assert_eq!(h.host.counter("phi_guard.mask.unknown_fields_dropped"), 1);
    // Billing reveals everything: unknown fields reach it.
    let mut h = harness(method, Some("billing"), "application/grpc");
    h.headers();
    assert_eq!(h.body(&[&frame(&msg)], false), frame(&msg));
}

#[test]
fn trailers_only_response_writes_an_empty_summary() {
    let mut h = harness(GET_PATIENT, Some("research"), "application/grpc");
    h.stream.on_request_headers(&h.host);
    h.stream.on_response_headers(&h.host, true);
    let s = h.summary().unwrap();
    assert_eq!(
        (s.role.as_str(), s.messages, s.failure),
        ("research", 0, None)
    );
}

#[test]
fn summary_is_left_at_on_log_when_the_stream_was_cut() {
    let mut h = harness(GET_PATIENT, Some("nurse"), "application/grpc");
    h.headers();
    h.body(&[&patient_frames(1)[..20]], false);
    h.stream.on_log(&h.host);
    assert_eq!(
        h.summary().unwrap().failure,
        Some(MaskFailure::TruncatedFrame)
    );
}

impl Harness {
    /// Sends each chunk through the request body callback; every call must go on.
    fn request_body(&mut self, chunks: &[&[u8]]) {
        for c in chunks {
            *self.host.request_body.borrow_mut() = c.to_vec();
            let action = self.stream.on_request_body(&self.host, &self.host, c.len());
            assert_eq!(action, Action::Continue);
        }
    }

    fn resource(&self) -> Option<String> {
        read_state::<ResourceId, _>(&self.host)
            .unwrap()
            .map(|ResourceId(id)| id)
    }
}

#[test]
fn the_resource_id_comes_from_the_first_request_message() {
    let first = GetPatientRequest {
        patient_id: "p-0001".into(),
    }
    .encode_to_vec();
    let second = GetPatientRequest {
        patient_id: "p-0002".into(),
    }
    .encode_to_vec();
    let body = [frame(&first), frame(&second)].concat();
    for split in [1, 3, 5, 7, body.len() - 1] {
        let mut h = harness(GET_PATIENT, Some("nurse"), "application/grpc");
        // A client header claiming another patient changes nothing here.
        h.host
            .request_headers
            .borrow_mut()
            .push(("x-patient-id".into(), "p-0002".into()));
        assert_eq!(h.stream.on_request_headers(&h.host), Action::Continue);
        h.request_body(&[&body[..split]]);
        if split < frame(&first).len() {
            assert_eq!(h.resource(), None, "not complete at {split}");
        }
        h.request_body(&[&body[split..]]);
        assert_eq!(h.resource().as_deref(), Some("p-0001"), "split {split}");
    }
    // Streaming methods too; an SSN-shaped id is masked as any client id.
    let mut h = harness(LIST_ENCOUNTERS, Some("billing"), "application/grpc");
    h.stream.on_request_headers(&h.host);
    let req = ListEncountersRequest {
        patient_id: "078-05-1120".into(),
        limit: 3,
        note_bytes: 0,
    };
    h.request_body(&[&frame(&req.encode_to_vec())]);
    assert_eq!(h.resource().as_deref(), Some("***-**-****"));
}

#[test]
fn no_resource_id_when_the_field_is_absent_or_the_message_unreadable() {
    let id = GetPatientRequest {
        patient_id: "p-0001".into(),
    }
    .encode_to_vec();
    let mut oversized = frame(&id);
    oversized[1..5].copy_from_slice(&(64u32 << 20).to_be_bytes());
    for body in [
        frame(&[]),                 // the field is absent
        frame(&id[..id.len() - 2]), // cut inside the field
        frame_with_flag(1, &id),    // compressed without grpc-encoding
        oversized,                  // over max_message_bytes
    ] {
        let mut h = harness(GET_PATIENT, Some("nurse"), "application/grpc");
        h.stream.on_request_headers(&h.host);
        h.request_body(&[&body]);
        assert_eq!(h.resource(), None);
        // The call goes on: the response is masked as usual.
        assert_eq!(h.headers(), Action::Continue);
        let sent = h.body(&[&patient_frames(1)], false);
        h.trailers();
        assert_eq!(unframe(&sent).len(), 1);
        assert_eq!(h.summary().unwrap().failure, None);
    }
}
