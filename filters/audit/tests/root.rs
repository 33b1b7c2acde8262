//! The module's roots over the recording fake, as `wasm.rs` drives them with `ProxyHost`:
//! which root by `root_id`, the filter's tick and batch at reconfiguration and `on_done`, the
//! service's collector answers, and the fail-closed stream of an unconfigured root.

use phi_guard_audit::batch;
use phi_guard_audit::filter::{METRIC_ENQUEUED, METRIC_REFUSED};
use phi_guard_audit::otlp::{export_response, records_from_body, Encoding};
use phi_guard_audit::root::AuditRoot;
use phi_guard_audit::service::{
    METRIC_REJECTED, METRIC_RETRIED, METRIC_SHIPPED, METRIC_UNREADABLE_ANSWERS,
};
use phi_guard_common::GrpcStatus;
use phi_guard_host::{bus, Bus, FakeHost, Flow};

const VM: &str = "phi_guard_audit";
const KEY: &[u8] = b"root-key-0123456789abcdef-0123456789";

fn host(bus: &Bus, root_id: &str, config: &str) -> FakeHost {
    let host = FakeHost::on_bus(bus.clone(), VM);
    host.insert_property(&["plugin_root_id"], root_id.as_bytes());
    *host.plugin_config.borrow_mut() = Some(config.as_bytes().to_vec());
    host.set_env("PHI_GUARD_AUDIT_KEY", KEY);
    host
}

fn service(bus: &Bus) -> (AuditRoot, FakeHost) {
    let h = host(
        bus,
        "phi_guard_audit_service",
        r#"{"cluster":"audit_collector","key_env":"PHI_GUARD_AUDIT_KEY","max_batch_events":2,"max_batch_delay_ms":100}"#,
    );
    let mut root = AuditRoot::default();
    assert!(root.on_configure(&h));
    (root, h)
}

fn rpc(root: &AuditRoot, h: &FakeHost) -> Flow {
    *h.request_headers.borrow_mut() = vec![(
        ":path".into(),
        "/health.v1.PatientService/GetPatient".into(),
    )];
    *h.sent.borrow_mut() = None;
    let mut s = root.stream();
    let flow = s.on_request_headers(h);
    s.on_log(h);
    flow
}

#[test]
fn the_root_id_picks_the_role_and_an_unknown_one_is_refused() {
    let bus = bus();
    let h = host(&bus, "phi_guard_other", "{}");
    let mut root = AuditRoot::default();
    assert!(!root.on_configure(&h));
    assert!(h.log_text().contains("unknown root_id"), "{}", h.log_text());
    // Its streams refuse every RPC.
    assert_eq!(rpc(&root, &h), Flow::Pause);
    assert_eq!(h.sent_status(), Some(GrpcStatus::Unavailable));
    // A filter config error names the field and the plugin does not start.
    let h = host(&bus, "phi_guard_audit", r#"{"batch_flush_ms":0}"#);
    assert!(!AuditRoot::default().on_configure(&h));
    assert!(h.log_text().contains("batch_flush_ms"), "{}", h.log_text());
    // No configuration at all is refused too.
    let h = host(&bus, "phi_guard_audit", "");
    *h.plugin_config.borrow_mut() = None;
    assert!(!AuditRoot::default().on_configure(&h));
}

#[test]
fn the_filter_root_ticks_batches_and_queues_what_it_holds_when_replaced_or_done() {
    let bus = bus();
    let (mut svc, sh) = service(&bus);
    let fh = host(&bus, "phi_guard_audit", r#"{"batch_flush_ms":50}"#);
    let mut root = AuditRoot::default();
    assert!(root.on_configure(&fh));
    assert_eq!(fh.tick_ms.get(), Some(50), "the tick is batch_flush_ms");
    for _ in 0..3 {
        assert_eq!(rpc(&root, &fh), Flow::Continue);
    }
    assert_eq!(sh.queued(1), 0, "held in the VM");
    root.on_tick(&fh);
    assert_eq!(sh.queued(1), 1, "one item for three events");
    rpc(&root, &fh);
    // A stream that began under the old configuration ends after a reconfiguration.
    let mut late = root.stream();
    *fh.request_headers.borrow_mut() = vec![];
    assert_eq!(late.on_request_headers(&fh), Flow::Continue);
    assert!(root.on_configure(&fh));
    assert_eq!(sh.queued(1), 2, "the old batch went at reconfiguration");
    late.on_log(&fh);
    assert_eq!(
        sh.queued(1),
        3,
        "the old configuration's late event goes at once"
    );
    rpc(&root, &fh);
    assert!(root.on_done(&fh));
    assert_eq!(sh.queued(1), 4, "on_done sends the last batch");
    // Each configuration defined its counters (Envoy would hand back the same id; the fake
    // keeps one entry per definition): sum them.
    let enqueued: i64 = fh
        .counters
        .borrow()
        .iter()
        .filter(|(n, _)| n == METRIC_ENQUEUED)
        .map(|(_, v)| v)
        .sum();
    assert_eq!(enqueued, 6);
    let items: Vec<Vec<u8>> = bus.borrow().queues[&1].iter().cloned().collect();
    let events: usize = items.iter().map(|i| batch::decode(i).unwrap().len()).sum();
    assert_eq!(events, 6);
    // The service takes them and ships them; the collector's answer comes back by token.
    svc.on_queue_ready(&sh, 1);
    for _ in 0..3 {
        let call = sh.last_call().unwrap();
        *sh.call_response.borrow_mut() = (Some("200".into()), Vec::new());
        svc.on_http_call_response(&sh, call.token, 0);
        sh.now_ms.set(sh.now_ms.get() + 100);
        svc.on_tick(&sh);
    }
    assert_eq!(sh.metric(METRIC_SHIPPED), 6);
    assert_eq!(fh.counter(METRIC_REFUSED), 0);
}

#[test]
fn a_collector_call_without_a_status_is_retried() {
    let bus = bus();
    let (mut svc, sh) = service(&bus);
    let fh = host(&bus, "phi_guard_audit", r#"{"batch_max_events":2}"#);
    let mut root = AuditRoot::default();
    assert!(root.on_configure(&fh));
    rpc(&root, &fh);
    rpc(&root, &fh);
    svc.on_queue_ready(&sh, 1);
    let first = sh.last_call().unwrap();
    // No `:status`: the call failed; the batch is retained and resent after the backoff.
    svc.on_http_call_response(&sh, first.token, 0);
    sh.now_ms.set(10_000);
    svc.on_tick(&sh);
    let again = sh.last_call().unwrap();
    assert_ne!(again.token, first.token);
    let records = |body: &[u8]| -> Vec<(u64, String)> {
        records_from_body(body, Encoding::Protobuf)
            .unwrap()
            .into_iter()
            .map(|r| {
                let r = r.unwrap();
                (r.seq, r.event)
            })
            .collect()
    };
    assert_eq!(records(&again.body).len(), 2);
    assert_eq!(
        records(&again.body),
        records(&first.body),
        "resent unchanged"
    );
}

/// A 2xx with `partial_success` (OTLP specification, *Partial Success*): the batch is done and
/// not resent; what the collector rejected is counted apart from what it kept, and logged as a
/// count, never with the collector's message.
#[test]
fn a_partial_success_counts_the_rejected_records_and_is_not_resent() {
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        let bus = bus();
        let h = host(
            &bus,
            "phi_guard_audit_service",
            &format!(
                r#"{{"cluster":"audit_collector","key_env":"PHI_GUARD_AUDIT_KEY","max_batch_events":2,"max_batch_delay_ms":100,"encoding":"{}"}}"#,
                match encoding {
                    Encoding::Protobuf => "protobuf",
                    Encoding::Json => "json",
                }
            ),
        );
        let mut svc = AuditRoot::default();
        assert!(svc.on_configure(&h));
        let fh = host(&bus, "phi_guard_audit", r#"{"batch_max_events":2}"#);
        let mut root = AuditRoot::default();
        assert!(root.on_configure(&fh));
        for _ in 0..4 {
            rpc(&root, &fh);
        }
        svc.on_queue_ready(&h, 1);
        let first = h.last_call().unwrap();
        let answer = export_response(encoding, 1, "SECRET-COLLECTOR-TEXT");
        *h.call_response.borrow_mut() = (Some("200".into()), answer.clone());
        svc.on_http_call_response(&h, first.token, answer.len());
        assert_eq!(
            (h.metric(METRIC_SHIPPED), h.metric(METRIC_REJECTED)),
            (1, 1)
        );
        let log = h.log_text();
        assert!(log.contains("rejected 1 record"), "{log}");
        assert!(!log.contains("SECRET-COLLECTOR-TEXT"), "{log}");
        // The next batch is the next two events, not the first one again.
        h.now_ms.set(h.now_ms.get() + 200);
        svc.on_tick(&h);
        let second = h.last_call().unwrap();
        assert_ne!(second.token, first.token);
        assert_eq!(h.metric(METRIC_RETRIED), 0, "{encoding:?}");
        let seqs = |body: &[u8]| -> Vec<u64> {
            records_from_body(body, encoding)
                .unwrap()
                .into_iter()
                .map(|r| r.unwrap().seq)
                .collect()
        };
        assert_eq!(seqs(&first.body), vec![0, 1]);
        assert_eq!(seqs(&second.body), vec![2, 3]);
        // A plain 2xx (empty answer) and an answer that is not a response both ship whole;
        // the second is counted and logged (the receiver may not be an OTLP one).
        for body in [
            Vec::new(),
            b"\xff\xff\xff<html>not a response</html>".to_vec(),
        ] {
            let call = h.last_call().unwrap();
            *h.call_response.borrow_mut() = (Some("200".into()), body.clone());
            svc.on_http_call_response(&h, call.token, body.len());
            // The next batch, for the next answer.
            rpc(&root, &fh);
            rpc(&root, &fh);
            h.now_ms.set(h.now_ms.get() + 200);
            svc.on_queue_ready(&h, 1);
            svc.on_tick(&h);
            assert_ne!(h.last_call().unwrap().token, call.token);
        }
        assert_eq!(
            (h.metric(METRIC_SHIPPED), h.metric(METRIC_REJECTED)),
            (5, 1)
        );
        assert_eq!(h.metric(METRIC_UNREADABLE_ANSWERS), 1, "{encoding:?}");
        // A web page that happens to decode (an empty body) is told apart by its
        // content-type; the request's own content-type is an OTLP answer.
        for (content_type, unreadable) in [("text/html", 2), (encoding.content_type(), 2)] {
            let call = h.last_call().unwrap();
            *h.call_response.borrow_mut() = (Some("200".into()), Vec::new());
            *h.call_response_headers.borrow_mut() =
                vec![("content-type".into(), content_type.into())];
            svc.on_http_call_response(&h, call.token, 0);
            assert_eq!(
                h.metric(METRIC_UNREADABLE_ANSWERS),
                unreadable,
                "{encoding:?} {content_type}"
            );
            rpc(&root, &fh);
            rpc(&root, &fh);
            h.now_ms.set(h.now_ms.get() + 200);
            svc.on_queue_ready(&h, 1);
            svc.on_tick(&h);
        }
        assert!(h
            .log_text()
            .contains("not an OTLP ExportLogsServiceResponse"));
        assert!(!h.log_text().contains("<html>"));
    }
}
