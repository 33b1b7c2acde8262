//! The filter and service shells against fakes sharing one bus: admission, enqueue, the
//! service's idempotent configure, batching, retries, the fail-closed flag seen by the
//! filter, and metrics.

mod support;

use phi_guard_audit::chain::ChainKey;
use phi_guard_audit::config::{backlog_flag_key, FilterConfig};
use phi_guard_audit::filter::{
    Admission, AuditStream, FilterRuntime, METRIC_ENQUEUED, METRIC_ENQUEUE_FAILED, METRIC_REFUSED,
};
use phi_guard_audit::service::{
    AuditService, METRIC_BACKLOG, METRIC_BACKLOG_FULL, METRIC_CHAINED, METRIC_DROPPED,
    METRIC_RETRIED, METRIC_SHIPPED,
};
use phi_guard_audit::verify::{verify, VerifyOptions};
use phi_guard_common::{state, GrpcStatus};
use phi_guard_host::{bus, Bus, FakeHost};
use support::records;

const VM: &str = "phi_guard_audit";
const KEY: &[u8] = b"shell-key-0123456789abcdef-0123456789";

fn service_config(extra: &str) -> Vec<u8> {
    format!(
        r#"{{"cluster":"audit_collector","key_env":"PHI_GUARD_AUDIT_KEY","max_batch_events":2,"max_backlog_events":4,"max_batch_delay_ms":100,"initial_backoff_ms":100,"max_backoff_ms":1000{extra}}}"#
    )
    .into_bytes()
}

fn service(bus: &Bus, extra: &str) -> (AuditService, FakeHost) {
    let host = FakeHost::on_bus(bus.clone(), VM);
    host.set_env("PHI_GUARD_AUDIT_KEY", KEY);
    let mut svc = AuditService::default();
    assert!(svc.on_configure(&host, &service_config(extra)));
    (svc, host)
}

fn filter(bus: &Bus) -> (FilterRuntime, FakeHost) {
    let host = FakeHost::on_bus(bus.clone(), VM);
    let rt = FilterRuntime::new(
        &host,
        FilterConfig::parse(br#"{"claimed_resource_id_header":"x-patient-id"}"#).unwrap(),
    );
    (rt, host)
}

/// One RPC through the filter, then the VM's tick (which queues the batch). The filter's
/// host is reused per stream (one VM: counters are VM-wide); its headers and sent response
/// are reset first.
fn rpc(rt: &FilterRuntime, host: &FakeHost, n: u32) -> (Admission, Option<GrpcStatus>) {
    *host.request_headers.borrow_mut() = vec![
        (
            ":path".into(),
            "/health.v1.PatientService/GetPatient".into(),
        ),
        ("x-patient-id".into(), format!("c-{n:04}")),
    ];
    // What mask read from the request message.
    host.insert_property(&[state::RESOURCE], format!("p-{n:04}").as_bytes());
    *host.sent.borrow_mut() = None;
    host.set_response_trailers(&[("grpc-status", "0")]);
    let mut s = AuditStream::default();
    let a = s.on_request_headers(host, rt);
    s.on_log(host, rt);
    rt.on_tick(host);
    (a, host.sent_status())
}

#[test]
fn filter_refuses_until_the_service_is_up() {
    let bus = bus();
    let (rt, fhost) = filter(&bus);
    let (a, sent) = rpc(&rt, &fhost, 1);
    assert_eq!(a, Admission::Refused);
    assert_eq!(sent, Some(GrpcStatus::Unavailable));
    assert!(
        bus.borrow().queues.is_empty(),
        "a refused RPC leaves no event"
    );
    rpc(&rt, &fhost, 3);
    assert_eq!(
        fhost.log_text().matches("refusing RPCs").count(),
        1,
        "refusals are logged on change, not per RPC"
    );
    let _svc = service(&bus, "");
    let (a, sent) = rpc(&rt, &fhost, 2);
    assert_eq!(a, Admission::Continue);
    assert_eq!(sent, None);
    assert_eq!(fhost.counter(METRIC_REFUSED), 2);
    assert_eq!(fhost.counter(METRIC_ENQUEUED), 1);
    assert!(fhost.log_text().contains("admitting RPCs again"));
}

#[test]
fn events_flow_to_the_collector_call_chained() {
    let bus = bus();
    let (mut svc, shost) = service(&bus, "");
    let (rt, fhost) = filter(&bus);
    assert_eq!(shost.tick_ms.get(), Some(200));
    assert_eq!(
        shost
            .shared(&backlog_flag_key("phi_guard_audit_events"))
            .as_deref(),
        Some(&b"0"[..])
    );
    for n in 0..2 {
        rpc(&rt, &fhost, n);
    }
    svc.on_queue_ready(&shost, 1);
    let call = shost.last_call().expect("a full batch is sent at once");
    assert_eq!(call.cluster, "audit_collector");
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.header(":path"), Some("/v1/logs"));
    assert_eq!(call.header(":authority"), Some("audit_collector"));
    assert_eq!(call.header("content-type"), Some("application/x-protobuf"));
    svc.on_http_call_response(&shost, call.token, Some(200), &[]);
    // A third event waits for the delay, then goes on a tick.
    rpc(&rt, &fhost, 2);
    svc.on_queue_ready(&shost, 1);
    assert_eq!(shost.calls.borrow().len(), 1);
    shost.now_ms.set(100);
    svc.on_tick(&shost);
    let call = shost.last_call().unwrap();
    svc.on_http_call_response(&shost, call.token, Some(200), &[]);
    let recs = records(&shost);
    let report = verify(
        &recs,
        &ChainKey::new(KEY).unwrap(),
        &VerifyOptions::default(),
    )
    .unwrap();
    assert_eq!(report.events, 3);
    let first = recs[0].record.as_ref().unwrap();
    assert!(first.event.contains(r#""resource_id":"p-0000""#));
    assert!(first.event.contains(r#""claimed_resource_id":"c-0000""#));
    assert_eq!(shost.metric(METRIC_CHAINED), 3);
    assert_eq!(shost.metric(METRIC_SHIPPED), 3);
    assert_eq!(shost.metric(METRIC_BACKLOG), 0);
}

#[test]
fn configure_twice_keeps_the_queue_and_the_chain() {
    let bus = bus();
    let (mut svc, shost) = service(&bus, "");
    let (rt, fhost) = filter(&bus);
    rpc(&rt, &fhost, 0);
    svc.on_queue_ready(&shost, 1);
    assert_eq!(svc.core().unwrap().next_seq(), 1);
    assert!(svc.on_configure(&shost, &service_config("")));
    assert_eq!(bus.borrow().names.len(), 1, "same queue id");
    assert_eq!(svc.core().unwrap().next_seq(), 1, "chain continues");
    assert_eq!(svc.core().unwrap().backlog_len(), 1);
    rpc(&rt, &fhost, 1);
    svc.on_queue_ready(&shost, 1);
    let call = shost.last_call().unwrap();
    svc.on_http_call_response(&shost, call.token, Some(200), &[]);
    assert!(verify(
        &records(&shost),
        &ChainKey::new(KEY).unwrap(),
        &VerifyOptions::default()
    )
    .is_ok());
    // Metrics were defined once.
    let names: Vec<String> = shost
        .counters
        .borrow()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == METRIC_SHIPPED).count(), 1);
}

#[test]
fn configure_fails_closed_without_a_key() {
    let bus = bus();
    let host = FakeHost::on_bus(bus.clone(), VM);
    let mut svc = AuditService::default();
    assert!(!svc.on_configure(&host, &service_config("")));
    host.set_env("PHI_GUARD_AUDIT_KEY", b"tiny-key-value");
    assert!(!svc.on_configure(&host, &service_config("")));
    assert!(host.log_text().contains("PHI_GUARD_AUDIT_KEY"));
    assert!(
        !host.log_text().contains("tiny-key-value"),
        "the key value is never logged"
    );
    assert!(!svc.on_configure(&host, br#"{"cluster":"c"}"#));
    assert!(host.log_text().contains("field `key_env`"));
    assert!(host
        .shared(&backlog_flag_key("phi_guard_audit_events"))
        .is_none());
}

#[test]
fn retries_on_503_429_and_failure_then_fail_closed_and_recover() {
    let bus = bus();
    let (mut svc, shost) = service(&bus, "");
    let (rt, fhost) = filter(&bus);
    let flag = || shost.shared(&backlog_flag_key("phi_guard_audit_events"));
    for n in 0..2 {
        rpc(&rt, &fhost, n);
    }
    svc.on_queue_ready(&shost, 1);
    let call = shost.last_call().unwrap();
    svc.on_http_call_response(&shost, call.token, Some(503), &[]);
    // Two more RPCs fill the backlog (4): the flag goes up and the filter refuses.
    for n in 2..4 {
        assert_eq!(rpc(&rt, &fhost, n).0, Admission::Continue);
    }
    svc.on_queue_ready(&shost, 1);
    assert_eq!(flag().as_deref(), Some(&b"1"[..]));
    let (a, sent) = rpc(&rt, &fhost, 99);
    assert_eq!(a, Admission::Refused);
    assert_eq!(sent, Some(GrpcStatus::Unavailable));
    // An RPC admitted before the flag ends now: its event waits in Envoy's queue.
    let late = FakeHost::on_bus(bus.clone(), VM);
    let mut s = AuditStream::default();
    s.on_log(&late, &rt);
    rt.on_tick(&late);
    svc.on_queue_ready(&shost, 1);
    assert_eq!(shost.queued(1), 1, "not dequeued while full");
    // Retries: 429 after 100 ms, a failed call after 200 ms.
    shost.now_ms.set(100);
    svc.on_tick(&shost);
    let call = shost.last_call().unwrap();
    svc.on_http_call_response(&shost, call.token, Some(429), &[]);
    shost.now_ms.set(300);
    svc.on_tick(&shost);
    let call = shost.last_call().unwrap();
    svc.on_http_call_response(&shost, call.token, None, &[]);
    // The host refuses the call (cluster gone) at the next try: still retained.
    shost.refuse_calls.set(true);
    shost.now_ms.set(700);
    svc.on_tick(&shost);
    shost.refuse_calls.set(false);
    // Recovery at 1.5 s: drain everything.
    let mut now = 1_500;
    for _ in 0..20 {
        shost.now_ms.set(now);
        svc.on_tick(&shost);
        let call = shost.last_call().unwrap();
        svc.on_http_call_response(&shost, call.token, Some(200), &[]);
        now += 100;
    }
    assert_eq!(flag().as_deref(), Some(&b"0"[..]));
    assert_eq!(rpc(&rt, &fhost, 100).0, Admission::Continue);
    svc.on_queue_ready(&shost, 1);
    shost.now_ms.set(now + 100);
    svc.on_tick(&shost);
    let call = shost.last_call().unwrap();
    svc.on_http_call_response(&shost, call.token, Some(200), &[]);
    let recs = records(&shost);
    let report = verify(
        &recs,
        &ChainKey::new(KEY).unwrap(),
        &VerifyOptions::default(),
    )
    .unwrap();
    assert_eq!(
        report.events, 6,
        "4 before the flag, 1 late, 1 after recovery"
    );
    assert!(report.duplicates >= 3, "resends of the first batch");
    assert_eq!(shost.metric(METRIC_SHIPPED), 6);
    // Resends at 100 (after 503), 300 (after 429), 700 (after no answer; refused by the
    // host) and 1500 ms.
    assert_eq!(shost.metric(METRIC_RETRIED), 4);
    assert_eq!(shost.metric(METRIC_DROPPED), 0);
    assert_eq!(shost.metric(METRIC_BACKLOG_FULL), 1);
    assert_eq!(fhost.counter(METRIC_REFUSED), 1);
    assert!(
        !shost.log_text().contains("p-00"),
        "no event content in logs"
    );
}

#[test]
fn drop_oldest_keeps_serving_and_counts() {
    let bus = bus();
    let (mut svc, shost) = service(&bus, r#","on_backlog_full":"drop_oldest""#);
    let (rt, fhost) = filter(&bus);
    shost.refuse_calls.set(true);
    for n in 0..10 {
        assert_eq!(rpc(&rt, &fhost, n).0, Admission::Continue);
        svc.on_queue_ready(&shost, 1);
    }
    assert_eq!(
        shost
            .shared(&backlog_flag_key("phi_guard_audit_events"))
            .as_deref(),
        Some(&b"0"[..])
    );
    assert_eq!(svc.core().unwrap().backlog_len(), 4);
    assert_eq!(shost.metric(METRIC_DROPPED), 6);
    assert_eq!(shost.metric(METRIC_BACKLOG_FULL), 6);
}

#[test]
fn enqueue_failure_is_counted_and_re_resolves() {
    let bus = bus();
    let _svc = service(&bus, "");
    let (rt, fhost) = filter(&bus);
    assert_eq!(rpc(&rt, &fhost, 0).0, Admission::Continue);
    // The queue vanishes (service VM gone) between admission and stream end.
    bus.borrow_mut().queues.clear();
    rpc(&rt, &fhost, 1);
    assert_eq!(fhost.counter(METRIC_ENQUEUE_FAILED), 1);
    assert!(fhost.log_text().contains("could not be enqueued"));
    assert!(!fhost.log_text().contains("p-0001"));
}

#[test]
fn json_encoding_is_sent_as_json() {
    let bus = bus();
    let (mut svc, shost) = service(&bus, r#","encoding":"json""#);
    let (rt, fhost) = filter(&bus);
    for n in 0..2 {
        rpc(&rt, &fhost, n);
    }
    svc.on_queue_ready(&shost, 1);
    let call = shost.last_call().expect("a full batch is sent at once");
    assert_eq!(call.header("content-type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
    assert!(doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"].is_array());
    svc.on_http_call_response(&shost, call.token, Some(200), &[]);
    assert_eq!(records(&shost).len(), 2);
}
