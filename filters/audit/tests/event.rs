//! Event building from a fake host: all state present, none present, malformed inputs, and
//! PHI canaries that must never reach an event.

use phi_guard_audit::event::{
    build_event, canonicalize, int_attribute, valid_traceparent, AuditEvent, EventOptions,
};
use phi_guard_common::state;
use phi_guard_common::{
    AuthnOutcome, AuthnResult, AuthzDecision, AuthzMode, Identity, MaskSummary, StateContract,
    Verdict,
};
use phi_guard_host::Host;
use phi_guard_host::{bus, FakeHost};

const T0: u64 = 1_764_180_184_512; // 2025-11-26T18:03:04.512Z

fn opts() -> EventOptions {
    EventOptions {
        claimed_resource_id_header: Some("x-patient-id".into()),
    }
}

fn identity() -> Identity {
    Identity {
        provider: "hospital-idp".into(),
        issuer: "https://idp.phi-guard.test".into(),
        subject: "u-12345".into(),
        roles: vec!["nurse".into()],
        scopes: vec!["patient.read".into()],
        tenant: Some("north".into()),
        purpose_of_use: Some("TREAT".into()),
        break_glass_reason: None,
        expires_at: 1_900_000_000,
        cert_bound: true,
    }
}

fn authz() -> AuthzDecision {
    AuthzDecision {
        decision: Verdict::Allow,
        rule: Some("nurses-read".into()),
        role: "nurse".into(),
        policy_version: "2026-11-01".into(),
        mode: AuthzMode::Shadow,
        shadow_decision: Some(Verdict::Deny),
        reason: "matched_allow".into(),
        break_glass: false,
        break_glass_reason: None,
    }
}

fn full_host() -> FakeHost {
    let host = FakeHost::on_bus(bus(), "phi_guard_audit").headers(&[
        (":path", "/health.v1.PatientService/GetPatient"),
        ("x-request-id", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        // The client claims another patient than its request message asks for.
        ("x-patient-id", "p-0002"),
        (
            "authorization",
            "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.sig",
        ),
    ]);
    host.now_ms.set(T0);
    host.insert_property(
        &["connection", "uri_san_peer_certificate"],
        b"spiffe://phi-guard.test/ns/ehr/sa/frontend",
    );
    host.insert_property(&[state::IDENTITY], &identity().encode());
    host.insert_property(
        &[state::AUTHN],
        &AuthnOutcome {
            result: AuthnResult::Ok,
            provider: Some("hospital-idp".into()),
            reason: None,
        }
        .encode(),
    );
    host.insert_property(&[state::AUTHZ], &authz().encode());
    host.insert_property(&[state::RESOURCE], b"p-0001");
    let mut mask = MaskSummary {
        role: "nurse".into(),
        messages: 2,
        ..Default::default()
    };
    mask.fields.insert("SSN/partial".into(), 2);
    mask.fields.insert("DOB/redact".into(), 1);
    host.insert_property(&[state::MASK], &mask.encode());
    // Envoy's own duration is not what the event reports (the stage's clock is).
    host.insert_property(&["request", "duration"], &7_400_000i64.to_le_bytes());
    host.insert_property(&["request", "total_size"], &412i64.to_le_bytes());
    host.insert_property(&["response", "total_size"], &1890i64.to_le_bytes());
    host.set_response_headers(&[(":status", "200"), ("content-type", "application/grpc")]);
    host.set_response_trailers(&[("grpc-status", "0")]);
    host
}

#[test]
fn builds_a_complete_event() {
    let host = full_host();
    let e = build_event(&host, &opts(), Some(T0 - 9));
    assert_eq!(e.schema, "phi_guard.audit.v1");
    assert_eq!(e.time, "2025-11-26T18:03:04.512Z");
    assert_eq!(
        e.correlation.request_id.as_deref(),
        Some("4bf92f35-77b3-4da6-a3ce-929d0e0e4736")
    );
    assert!(e.correlation.traceparent.is_some());
    assert_eq!(
        e.who.peer.as_deref(),
        Some("spiffe://phi-guard.test/ns/ehr/sa/frontend")
    );
    assert_eq!(e.who.issuer.as_deref(), Some("https://idp.phi-guard.test"));
    assert_eq!(e.who.subject.as_deref(), Some("u-12345"));
    assert_eq!(e.who.provider.as_deref(), Some("hospital-idp"));
    assert_eq!(e.who.role.as_deref(), Some("nurse"));
    assert_eq!(e.who.tenant.as_deref(), Some("north"));
    assert_eq!(e.what.service.as_deref(), Some("health.v1.PatientService"));
    assert_eq!(e.what.method.as_deref(), Some("GetPatient"));
    assert_eq!(e.what.resource_id.as_deref(), Some("p-0001"));
    assert_eq!(e.what.claimed_resource_id.as_deref(), Some("p-0002"));
    let o = &e.outcome;
    assert_eq!(o.authn.as_ref().unwrap().result, AuthnResult::Ok);
    let z = o.authz.as_ref().unwrap();
    assert_eq!(
        (z.decision, z.rule.as_deref(), z.policy_version.as_str()),
        (Verdict::Allow, Some("nurses-read"), "2026-11-01")
    );
    assert_eq!(z.shadow_decision, Some(Verdict::Deny));
    assert_eq!(o.grpc_status, Some(0));
    assert_eq!(
        o.duration_ms,
        Some(9),
        "from the request headers to the stream's end, on the stage's clock"
    );
    assert_eq!(host.reads_of("request.duration"), 0, "no host call for it");
    // A stream the module never saw start (refused by a filter before it): Envoy's figure.
    let unstarted = build_event(&host, &opts(), None);
    assert_eq!(
        unstarted.outcome.duration_ms,
        Some(7),
        "request.duration, ns"
    );
    assert_eq!((o.request_bytes, o.response_bytes), (Some(412), Some(1890)));
    let m = o.mask.as_ref().unwrap();
    assert_eq!((m.messages, m.fields["SSN/partial"]), (2, 2));
    assert!(e.is_ok());
}

#[test]
fn missing_state_leaves_fields_out() {
    let host = FakeHost::on_bus(bus(), "vm");
    host.now_ms.set(T0);
    let e = build_event(&host, &opts(), None);
    assert_eq!(e.time, "2025-11-26T18:03:04.512Z");
    assert_eq!(e.who, Default::default());
    assert_eq!(e.what, Default::default());
    assert_eq!(e.correlation, Default::default());
    assert_eq!(e.outcome, Default::default());
    assert!(!e.is_ok());
    assert_eq!(
        String::from_utf8(e.canonical_bytes()).unwrap(),
        r#"{"correlation":{},"outcome":{},"schema":"phi_guard.audit.v1","time":"2025-11-26T18:03:04.512Z","what":{},"who":{}}"#
    );
    // The filter's own start time gives the duration.
    let e = build_event(&host, &opts(), Some(T0 - 25));
    assert_eq!(e.outcome.duration_ms, Some(25));
}

#[test]
fn garbage_state_is_ignored_not_fatal() {
    let host = FakeHost::on_bus(bus(), "vm").headers(&[
        (":path", "/not a grpc path"),
        ("x-request-id", "has spaces and \"quotes\""),
        ("traceparent", "00-XYZ-bad"),
        ("x-patient-id", &"p".repeat(1000)),
    ]);
    for key in [state::IDENTITY, state::AUTHN, state::AUTHZ, state::MASK] {
        host.insert_property(&[key], b"\xff\x00not json");
    }
    host.insert_property(&["request", "duration"], b"\x01\x02");
    host.insert_property(&["request", "total_size"], &(-5i64).to_le_bytes());
    host.insert_property(&["connection", "uri_san_peer_certificate"], b"\xff\xfe");
    host.set_response_trailers(&[("grpc-status", "abc")]);
    let e = build_event(&host, &opts(), None);
    assert_eq!(e.who, Default::default());
    assert_eq!(e.what, Default::default());
    assert_eq!(e.correlation, Default::default());
    assert_eq!(e.outcome, Default::default());
}

/// A record in the contract's JSON shape whose closed-set value is not one of the set is
/// unreadable: its part of the event is left out, never copied as a string.
#[test]
fn values_outside_the_contracts_sets_leave_their_part_out() {
    let host = full_host();
    let authz = String::from_utf8(authz().encode()).unwrap();
    let bad = authz.replacen(r#""decision":"allow""#, r#""decision":"permit""#, 1);
    assert_ne!(bad, authz);
    host.insert_property(&[state::AUTHZ], bad.as_bytes());
    host.insert_property(&[state::AUTHN], br#"{"result":"maybe"}"#);
    host.insert_property(
        &[state::MASK],
        br#"{"role":"nurse","messages":1,"fields":{},"failure":"oops"}"#,
    );
    let e = build_event(&host, &opts(), None);
    assert_eq!(e.outcome.authz, None);
    assert_eq!(e.outcome.authn, None);
    assert_eq!(e.outcome.mask, None);
    assert_eq!(e.who.role, None);
    // What the other contracts said still stands.
    assert_eq!(e.who.subject.as_deref(), Some("u-12345"));
    assert_eq!(e.what.resource_id.as_deref(), Some("p-0001"));
}

#[test]
fn grpc_status_sources_in_order() {
    let host = FakeHost::on_bus(bus(), "vm");
    host.insert_property(&["response", "grpc_status"], &14i64.to_le_bytes());
    assert_eq!(
        build_event(&host, &opts(), None).outcome.grpc_status,
        Some(14)
    );
    // Trailers-only response: grpc-status in the headers.
    host.set_response_headers(&[(":status", "200"), ("grpc-status", "7")]);
    assert_eq!(
        build_event(&host, &opts(), None).outcome.grpc_status,
        Some(7)
    );
    host.set_response_trailers(&[("grpc-status", "5")]);
    assert_eq!(
        build_event(&host, &opts(), None).outcome.grpc_status,
        Some(5)
    );
}

#[test]
fn traceparent_validation() {
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(valid_traceparent(good).as_deref(), Some(good));
    // A future version may carry more fields; only the known four are kept.
    let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
    assert_eq!(
        valid_traceparent(future).as_deref(),
        Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
    ] {
        assert_eq!(valid_traceparent(bad), None, "{bad:?}");
    }
}

#[test]
fn integer_attributes() {
    assert_eq!(int_attribute(&42i64.to_le_bytes()), Some(42));
    assert_eq!(int_attribute(b"42"), Some(42));
    assert_eq!(int_attribute(b""), None);
    assert_eq!(int_attribute(b"-1"), None);
    assert_eq!(int_attribute(b"99999999999999999999999"), None);
}

#[test]
fn canonical_encoding_is_sorted_compact_and_stable() {
    let e = build_event(&full_host(), &opts(), Some(T0 - 7));
    let bytes = e.canonical_bytes();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(canonicalize(&value), text, "keys sorted, no whitespace");
    // Round trip through the typed struct gives the same bytes.
    let back: AuditEvent = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back.canonical_bytes(), bytes);
    // Pinned: a change here changes every chain and needs a new schema version.
    assert_eq!(
        text,
        concat!(
            r#"{"correlation":{"request_id":"4bf92f35-77b3-4da6-a3ce-929d0e0e4736","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},"#,
            r#""outcome":{"authn":{"result":"ok"},"authz":{"decision":"allow","mode":"shadow","policy_version":"2026-11-01","reason":"matched_allow","rule":"nurses-read","shadow_decision":"deny"},"#,
            r#""duration_ms":7,"grpc_status":0,"mask":{"fields":{"DOB/redact":1,"SSN/partial":2},"messages":2},"request_bytes":412,"response_bytes":1890},"#,
            r#""schema":"phi_guard.audit.v1","time":"2025-11-26T18:03:04.512Z","#,
            r#""what":{"claimed_resource_id":"p-0002","method":"GetPatient","resource_id":"p-0001","service":"health.v1.PatientService"},"#,
            r#""who":{"issuer":"https://idp.phi-guard.test","peer":"spiffe://phi-guard.test/ns/ehr/sa/frontend","provider":"hospital-idp","role":"nurse","subject":"u-12345","tenant":"north"}}"#
        )
    );
}

#[test]
fn phi_canaries_never_reach_the_event() {
    // Canary values placed everywhere a careless implementation might copy from: headers
    // that are not identifiers, a token, claims beyond identifiers, a body-like property
    // and certificate contents. Only the identifiers may appear.
    let canaries = [
        "CANARY-SSN-078-05-1120",
        "CANARY-NAME-Jane-Doe",
        "CANARY-DOB-1960-01-01",
        "CANARY-TOKEN",
        "CANARY-PURPOSE",
        "CANARY-SCOPE",
        "CANARY-CERT-PEM",
        "CANARY-BODY",
    ];
    let host = full_host();
    host.set_request_header("x-patient-name", "CANARY-NAME-Jane-Doe");
    host.set_request_header("x-ssn", "CANARY-SSN-078-05-1120");
    host.set_request_header("authorization", "Bearer CANARY-TOKEN");
    host.set_request_header("cookie", "s=CANARY-TOKEN");
    host.set_response_headers(&[("x-dob", "CANARY-DOB-1960-01-01"), ("grpc-status", "0")]);
    let mut id = identity();
    id.purpose_of_use = Some("CANARY-PURPOSE".into());
    id.scopes = vec!["CANARY-SCOPE".into()];
    host.insert_property(&[state::IDENTITY], &id.encode());
    host.insert_property(
        &["connection", "peer_certificate"],
        b"-----BEGIN CERTIFICATE-----CANARY-CERT-PEM",
    );
    host.insert_property(
        &["request", "body"],
        b"{\"ssn\":\"CANARY-SSN-078-05-1120\"}",
    );
    host.insert_property(&["response", "body"], b"CANARY-BODY");
    let text = String::from_utf8(build_event(&host, &opts(), None).canonical_bytes()).unwrap();
    for c in canaries {
        assert!(!text.contains(c), "{c} leaked into {text}");
    }
    assert!(text.contains("u-12345") && text.contains("p-0001"));
    // Nothing was logged while building either.
    assert!(host.log_text().is_empty());
}

#[test]
fn the_resource_id_comes_from_filter_state_and_the_header_is_only_claimed() {
    let host = full_host();
    // Without the claimed-id option the header is not read at all.
    let e = build_event(&host, &EventOptions::default(), None);
    assert_eq!(e.what.resource_id.as_deref(), Some("p-0001"));
    assert_eq!(e.what.claimed_resource_id, None);
    // Without mask's state there is no resource id, whatever the header says.
    let host = FakeHost::on_bus(bus(), "phi_guard_audit").headers(&[
        (":path", "/health.v1.PatientService/GetPatient"),
        ("x-patient-id", "p-0002"),
    ]);
    let e = build_event(&host, &opts(), None);
    assert_eq!(e.what.resource_id, None);
    assert_eq!(e.what.claimed_resource_id.as_deref(), Some("p-0002"));
    // Both are sanitized here too (the state is mask's, but nothing is trusted blindly).
    let host = FakeHost::on_bus(bus(), "phi_guard_audit").headers(&[
        (":path", "/health.v1.PatientService/GetPatient"),
        ("x-patient-id", "078-05-1120"),
    ]);
    host.insert_property(&[state::RESOURCE], b"555.867.5309");
    let e = build_event(&host, &opts(), None);
    assert_eq!(e.what.resource_id.as_deref(), Some("***.***.****"));
    assert_eq!(e.what.claimed_resource_id.as_deref(), Some("***-**-****"));
    for bad in [&b"jane@example.org"[..], b"has space", b"\xff\xfe", b""] {
        host.insert_property(&[state::RESOURCE], bad);
        assert_eq!(build_event(&host, &opts(), None).what.resource_id, None);
    }
}

#[test]
fn an_identifier_shaped_subject_is_sanitized_like_a_client_id() {
    // The IdP may put an SSN or an e-mail address in `sub` (or the tenant claim); the event
    // keeps neither, through the same sanitizer as x-request-id.
    let host = full_host();
    let mut id = identity();
    id.subject = "078-05-1120".into();
    id.tenant = Some("t-555-867-5309".into());
    host.insert_property(&[state::IDENTITY], &id.encode());
    let e = build_event(&host, &opts(), None);
    assert_eq!(e.who.subject.as_deref(), Some("***-**-****"));
    assert_eq!(e.who.tenant.as_deref(), Some("t-***-***-****"));
    let text = String::from_utf8(e.canonical_bytes()).unwrap();
    assert!(
        !text.contains("078-05-1120") && !text.contains("867-5309"),
        "{text}"
    );
    assert!(text.contains(r#""subject":"***-**-****""#), "{text}");

    for (sub, want) in [
        ("jane.doe@hospital.example", None),
        ("user(078051120)", Some("user(*********)")),
        ("auth0|u-12345", Some("auth0|u-12345")),
        ("u-12345", Some("u-12345")),
    ] {
        let mut id = identity();
        id.subject = sub.into();
        host.insert_property(&[state::IDENTITY], &id.encode());
        let e = build_event(&host, &opts(), None);
        assert_eq!(e.who.subject.as_deref(), want, "{sub}");
    }
}
