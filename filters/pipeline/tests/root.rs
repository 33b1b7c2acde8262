//! The pipeline's root context over the recording fake, as `wasm.rs` drives it with
//! `ProxyHost`: the tick (audit's `batch_flush_ms`), fetch checks once a second, the JWKS
//! GET and its answer, the audit batch at each tick, at reconfiguration and at `on_done`,
//! and the refusing stream of a root whose configuration was refused.

use phi_guard::PipelineRoot;
use phi_guard_common::GrpcStatus;
use phi_guard_host::{bus, Bus, FakeHost, Flow};

const VM: &str = "phi_guard_audit";
const QUEUE: &str = "phi_guard_audit_events";

fn config(flush_ms: u64) -> String {
    serde_json::json!({"stages": [
        {"jwt": {
            "providers": [{"name": "idp", "issuer": "https://idp.test", "audiences": ["api"],
                           "algorithms": ["EdDSA"],
                           "jwks": {"remote": {"cluster": "idp", "path": "/jwks", "authority": "idp",
                                               "min_refetch_interval_s": 30, "retry_interval_s": 5}}}],
            "rules": [{"match": "health.v1.PatientService/*", "requires": {"provider": "idp"}}]
        }},
        {"audit": {"batch_flush_ms": flush_ms}}
    ]})
    .to_string()
}

/// An audit service's registration on the bus: its queue, batch format and admitting flag.
fn audit_bus() -> Bus {
    let bus = bus();
    {
        let mut b = bus.borrow_mut();
        b.names.insert((VM.into(), QUEUE.into()), 1);
        b.queues.insert(1, Default::default());
        b.set_shared(VM, &phi_guard_audit::batch::format_key(QUEUE), b"1");
        b.set_shared(VM, &phi_guard_audit::config::backlog_flag_key(QUEUE), b"0");
    }
    bus
}

fn host(bus: &Bus, config: &str) -> FakeHost {
    let host = FakeHost::on_bus(bus.clone(), VM);
    *host.plugin_config.borrow_mut() = Some(config.as_bytes().to_vec());
    host.set_clock(1_800_000_000);
    host
}

/// One call without a token: jwt refuses it, audit records it at `on_log`.
fn refused_call(root: &PipelineRoot, h: &FakeHost) {
    *h.request_headers.borrow_mut() = vec![(
        ":path".into(),
        "/health.v1.PatientService/GetPatient".into(),
    )];
    let mut s = root.stream();
    assert_eq!(s.on_request_headers(h), Flow::Pause);
    s.on_log(h);
}

#[test]
fn ticks_send_the_audit_batch_and_check_fetches_once_a_second() {
    let bus = audit_bus();
    let h = host(&bus, &config(250));
    let mut root = PipelineRoot::default();
    assert!(root.on_configure(&h));
    assert_eq!(h.tick_ms.get(), Some(250), "audit's batch_flush_ms");
    // The JWKS is fetched at once, as a GET with the stage's accept header.
    let call = h.last_call().expect("the JWKS fetch");
    assert_eq!(call.cluster, "idp");
    assert_eq!(call.header(":path"), Some("/jwks"));
    assert_eq!(call.header("accept"), Some("application/json"));
    // The answer is handed to jwt by token: a failed fetch is counted.
    *h.call_response.borrow_mut() = (Some("503".into()), Vec::new());
    root.on_http_call_response(&h, call.token, 0);
    assert_eq!(h.counter("phi_guard.jwt.jwks_fetch_failed"), 1);
    // Refused calls are audited; their events leave at the next tick, one item for both.
    refused_call(&root, &h);
    refused_call(&root, &h);
    assert_eq!(h.queued(1), 0);
    root.on_tick(&h);
    assert_eq!(h.queued(1), 1);
    // Four ticks of 250 ms make a second: the fetches are checked on the fourth only. The
    // retry is due 5 s after the failure, so move the clock past it first.
    h.set_clock(1_800_000_010);
    let calls = h.calls.borrow().len();
    root.on_tick(&h);
    root.on_tick(&h);
    assert_eq!(h.calls.borrow().len(), calls, "not checked yet");
    root.on_tick(&h);
    assert_eq!(
        h.calls.borrow().len(),
        calls + 1,
        "checked on the fourth tick"
    );
    // A reconfiguration queues the old audit stage's batch; on_done the new one's.
    refused_call(&root, &h);
    assert!(root.on_configure(&h));
    assert_eq!(h.queued(1), 2);
    refused_call(&root, &h);
    assert!(root.on_done(&h));
    assert_eq!(h.queued(1), 3);
    // An answer to a token nobody waits for is dropped.
    root.on_http_call_response(&h, 999, 0);
}

#[test]
fn a_refused_configuration_refuses_every_call_and_queues_the_old_batch() {
    let bus = audit_bus();
    let h = host(&bus, &config(100));
    let mut root = PipelineRoot::default();
    assert!(root.on_configure(&h));
    refused_call(&root, &h);
    *h.plugin_config.borrow_mut() =
        Some(br#"{"stages": [{"audit": {"batch_flush_ms": 0}}]}"#.to_vec());
    assert!(!root.on_configure(&h));
    assert!(
        h.log_text().contains("stages[0].audit.batch_flush_ms"),
        "{}",
        h.log_text()
    );
    assert_eq!(h.queued(1), 1, "the old stage's batch went out");
    let mut s = root.stream();
    *h.sent.borrow_mut() = None;
    assert_eq!(s.on_request_headers(&h), Flow::Pause);
    assert_eq!(h.sent_status(), Some(GrpcStatus::Unavailable));
}
