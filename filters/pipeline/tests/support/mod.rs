//! What the pipeline's native tests and its per-RPC benchmark share: the stages' demo
//! configurations, an HS256 token, the audit service's registration on a bus, and one unary
//! `GetPatient` on a fake host (the frontend's connection, the demo patient).
#![allow(dead_code)] // Each user takes what it needs.

use base64::Engine as _;
use phi_guard_host::{bus, Bus, FakeHost, UnixMillis};
use prost::Message;

pub const FE: &str = "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend";
pub const FE_PEM: &str = include_str!("../../../rbac/testdata/ehr-frontend.pem");
pub const SECRET_ENV: &str = "PHI_GUARD_TEST_HS256";
pub const SECRET: &str = "hs256-test-secret-0123456789abcdef-0123456789";
pub const MASK_KEY_ENV: &str = "PHI_GUARD_MASK_TOKEN_KEY";
pub const MASK_KEY: &str = "mask-test-key-0123456789abcdef-0123456789";
pub const VM_ID: &str = "phi_guard_audit";
pub const QUEUE: &str = "phi_guard_audit_events";
pub const NOW_MS: UnixMillis = 1_800_000_000_000;

pub fn env(name: &str) -> Option<String> {
    match name {
        SECRET_ENV => Some(SECRET.into()),
        MASK_KEY_ENV => Some(MASK_KEY.into()),
        _ => None,
    }
}

pub fn jwt_config() -> serde_json::Value {
    serde_json::json!({
        "providers": [{"name": "test-idp", "issuer": "https://idp.test",
                       "audiences": ["patient-service"], "algorithms": ["HS256"],
                       "hs256_secret_env": SECRET_ENV}],
        "rules": [{"match": "health.v1.PatientService/*", "requires": {"provider": "test-idp"}}]
    })
}

pub fn rbac_config() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../rbac/policy.demo.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn mask_config() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../mask/policy.demo.json"
    ))
    .unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["descriptor_set"] = base64::engine::general_purpose::STANDARD
        .encode(phi_guard_proto::DESCRIPTOR_SET)
        .into();
    doc
}

pub fn audit_config() -> serde_json::Value {
    serde_json::json!({"claimed_resource_id_header": "x-patient-id"})
}

pub fn pipeline_config() -> Vec<u8> {
    serde_json::json!({"stages": [
        {"jwt": jwt_config()}, {"rbac": rbac_config()},
        {"mask": mask_config()}, {"audit": audit_config()}
    ]})
    .to_string()
    .into_bytes()
}

pub fn token(role: &str) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = NOW_MS / 1000;
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64(serde_json::json!({
        "iss": "https://idp.test", "aud": "patient-service", "sub": role,
        "roles": [role], "tenant": "north", "iat": now - 10, "exp": now + 600
    })
    .to_string()
    .as_bytes());
    let input = format!("{header}.{claims}");
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), SECRET.as_bytes());
    format!("{input}.{}", b64(&mac))
}

pub fn frame(message: &impl Message) -> Vec<u8> {
    let payload = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// An audit service's registration on the bus: the queue, the batch format it reads and the
/// admitting flag.
pub fn audit_bus() -> Bus {
    let bus = bus();
    {
        let mut b = bus.borrow_mut();
        b.names.insert((VM_ID.into(), QUEUE.into()), 1);
        b.queues.insert(1, Default::default());
        b.set_shared(VM_ID, &phi_guard_audit::batch::format_key(QUEUE), b"1");
        b.set_shared(
            VM_ID,
            &phi_guard_audit::config::backlog_flag_key(QUEUE),
            b"0",
        );
    }
    bus
}

/// A fake host on `bus` as the audit filter's VM, with the EHR frontend's mTLS connection.
pub fn connected_host(bus: Bus) -> FakeHost {
    let base = FakeHost::on_bus(bus, VM_ID);
    base.now_ms.set(NOW_MS);
    base.insert_property(&["connection", "id"], &7u64.to_le_bytes());
    base.insert_property(&["connection", "mtls"], &[1]);
    base.insert_property(&["connection", "peer_certificate"], FE_PEM.as_bytes());
    base.insert_property(&["connection", "uri_san_peer_certificate"], FE.as_bytes());
    base.insert_property(&["plugin_root_id"], b"phi_guard");
    base
}

/// A new `GetPatient` on `base`'s connection, with `token` as its bearer token if any: its
/// request, no response yet, no filter state.
pub fn reset_stream(base: &FakeHost, token: Option<&str>) {
    let mut headers = vec![
        (":method".to_string(), "POST".to_string()),
        (
            ":path".into(),
            "/health.v1.PatientService/GetPatient".into(),
        ),
        (":authority".into(), "patient-service".into()),
        ("content-type".into(), "application/grpc".into()),
        ("te".into(), "trailers".into()),
        ("x-request-id".into(), "req-0001".into()),
        ("x-patient-id".into(), "p-0001".into()),
        ("x-phi-guard-role".into(), "billing".into()),
    ];
    if let Some(token) = token {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    *base.request_headers.borrow_mut() = headers;
    base.response_headers.borrow_mut().clear();
    base.response_trailers.borrow_mut().clear();
    base.properties
        .borrow_mut()
        .retain(|k, _| !k.starts_with("phi_guard."));
    let request = phi_guard_proto::health::v1::GetPatientRequest {
        patient_id: phi_guard_proto::demo::PATIENT_ID.into(),
    };
    *base.request_body.borrow_mut() = frame(&request);
    *base.response_body.borrow_mut() = frame(&phi_guard_proto::demo::patient());
}

/// The upstream's answer headers and trailers: a gRPC OK.
pub fn respond(base: &FakeHost) {
    base.set_response_headers(&[
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("content-length", "999"),
    ]);
    base.set_response_trailers(&[("grpc-status", "0")]);
}
