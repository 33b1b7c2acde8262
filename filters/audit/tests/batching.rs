//! Events leave the worker in batches: one queue item per `batch_max_events` events, per
//! `batch_max_bytes`, per tick, at retirement; the service takes each item whole or refuses
//! it whole; the fail-closed rule and "every event delivered" hold with batches; a service of
//! the previous release still gets bare events.

mod support;

use phi_guard_audit::batch::{self, BatchWriter, EventMeta};
use phi_guard_audit::chain::ChainKey;
use phi_guard_audit::config::{backlog_flag_key, FilterConfig};
use phi_guard_audit::filter::{
    Admission, AuditStream, FilterRuntime, METRIC_BATCHES, METRIC_ENQUEUED, METRIC_ENQUEUE_FAILED,
};
use phi_guard_audit::service::{
    AuditService, METRIC_BATCH_REFUSED, METRIC_CHAINED, METRIC_DROPPED, METRIC_SHIPPED,
};
use phi_guard_audit::verify::{verify, VerifyOptions};
use phi_guard_common::{state, GrpcStatus};
use phi_guard_host::{bus, Bus, FakeHost};
use support::records;

const VM: &str = "phi_guard_audit";
const QUEUE: &str = "phi_guard_audit_events";
const KEY: &[u8] = b"batch-key-0123456789abcdef-0123456789";

fn service(bus: &Bus, max_batch: usize, max_backlog: usize) -> (AuditService, FakeHost) {
    let host = FakeHost::on_bus(bus.clone(), VM);
    host.set_env("PHI_GUARD_AUDIT_KEY", KEY);
    let doc = format!(
        r#"{{"cluster":"audit_collector","key_env":"PHI_GUARD_AUDIT_KEY","max_batch_events":{max_batch},"max_backlog_events":{max_backlog},"max_batch_delay_ms":100,"initial_backoff_ms":100,"max_backoff_ms":100}}"#
    );
    let mut svc = AuditService::default();
    assert!(svc.on_configure(&host, doc.as_bytes()));
    (svc, host)
}

fn filter(bus: &Bus, config: &str) -> (FilterRuntime, FakeHost) {
    let host = FakeHost::on_bus(bus.clone(), VM);
    let rt = FilterRuntime::new(&host, FilterConfig::parse(config.as_bytes()).unwrap());
    (rt, host)
}

/// A bus on which a service of some release registered the queue (id 1) and admits RPCs,
/// publishing batch format `format` (none before batching), without this crate's service.
fn published_service(format: Option<&[u8]>) -> Bus {
    let bus = bus();
    {
        let mut b = bus.borrow_mut();
        b.names.insert((VM.into(), QUEUE.into()), 1);
        b.queues.insert(1, Default::default());
        if let Some(format) = format {
            b.set_shared(VM, &batch::format_key(QUEUE), format);
        }
        b.set_shared(VM, &backlog_flag_key(QUEUE), b"0");
    }
    bus
}

/// One RPC through the filter, no tick.
fn rpc(rt: &FilterRuntime, host: &FakeHost, n: u32) -> Admission {
    *host.request_headers.borrow_mut() = vec![
        (
            ":path".into(),
            "/health.v1.PatientService/GetPatient".into(),
        ),
        ("x-request-id".into(), format!("req-{n:05}")),
    ];
    host.insert_property(&[state::RESOURCE], format!("p-{n:05}").as_bytes());
    *host.sent.borrow_mut() = None;
    host.set_response_trailers(&[("grpc-status", "0")]);
    let mut s = AuditStream::default();
    let a = s.on_request_headers(host, rt);
    s.on_log(host, rt);
    a
}

fn items(bus: &Bus) -> Vec<Vec<u8>> {
    bus.borrow()
        .queues
        .values()
        .flat_map(|q| q.iter().cloned())
        .collect()
}

/// The request ids of every event on the queue, in queue order.
fn queued_ids(bus: &Bus) -> Vec<String> {
    items(bus)
        .iter()
        .flat_map(|item| {
            batch::decode(item)
                .unwrap()
                .into_iter()
                .map(|e| {
                    let v: serde_json::Value = serde_json::from_slice(e.event).unwrap();
                    v["correlation"]["request_id"].as_str().unwrap().to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("req-{n:05}")).collect()
}

/// Ticks the service and acknowledges every call until nothing is left.
fn drain(svc: &mut AuditService, host: &FakeHost) {
    for _ in 0..1000 {
        host.now_ms.set(host.now_ms.get() + 100);
        let before = host.calls.borrow().len();
        svc.on_tick(host);
        let calls = host.calls.borrow().len();
        if calls > before {
            let call = host.last_call().unwrap();
            svc.on_http_call_response(host, call.token, Some(200), &[]);
        } else if svc.core().unwrap().backlog_len() == 0 && host.queued(1) == 0 {
            return;
        }
    }
    panic!("never drained");
}

#[test]
fn events_leave_the_worker_one_item_per_batch() {
    let bus = bus();
    let (mut svc, shost) = service(&bus, 50, 1000);
    let (rt, fhost) = filter(&bus, "{}");
    for n in 0..70 {
        assert_eq!(rpc(&rt, &fhost, n), Admission::Continue);
    }
    // 32 events per item (the default): two items, six events still in the VM.
    assert_eq!(items(&bus).len(), 2);
    assert_eq!(rt.buffered(), 6);
    assert_eq!(fhost.counter(METRIC_ENQUEUED), 64);
    assert_eq!(fhost.counter(METRIC_BATCHES), 2);
    // The tick sends the rest; an empty tick sends nothing.
    rt.on_tick(&fhost);
    rt.on_tick(&fhost);
    assert_eq!(items(&bus).len(), 3);
    assert_eq!(rt.buffered(), 0);
    assert_eq!(fhost.counter(METRIC_ENQUEUED), 70);
    assert_eq!(fhost.counter(METRIC_BATCHES), 3);
    assert_eq!(queued_ids(&bus), ids(0..70), "in order, none twice");
    // The service takes each item's events and chains them in queue order.
    svc.on_queue_ready(&shost, 1);
    assert_eq!(shost.metric(METRIC_CHAINED), 70);
    drain(&mut svc, &shost);
    let recs = records(&shost);
    let report = verify(
        &recs,
        &ChainKey::new(KEY).unwrap(),
        &VerifyOptions {
            expect_count: Some(70),
            single_segment: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.events, 70);
    assert_eq!(shost.metric(METRIC_SHIPPED), 70);
    let first = recs[0].record.as_ref().unwrap();
    assert!(first.event.contains(r#""request_id":"req-00000""#));
    assert_eq!(shost.metric(METRIC_BATCH_REFUSED), 0);
    assert_eq!(shost.metric(METRIC_DROPPED), 0);
}

#[test]
fn a_batch_never_exceeds_its_byte_bound() {
    let bus = bus();
    let _svc = service(&bus, 50, 1000);
    let (rt, fhost) = filter(&bus, r#"{"batch_max_bytes":1024,"batch_max_events":1024}"#);
    for n in 0..40 {
        rpc(&rt, &fhost, n);
    }
    rt.on_tick(&fhost);
    let items = items(&bus);
    assert!(items.len() > 1, "the byte bound split the batch");
    for item in &items {
        assert!(item.len() <= 1024, "{} bytes", item.len());
    }
    assert_eq!(queued_ids(&bus), ids(0..40));
    assert_eq!(fhost.counter(METRIC_ENQUEUED), 40);
}

#[test]
fn batch_max_events_1_queues_each_event_at_its_end() {
    let bus = bus();
    let _svc = service(&bus, 50, 1000);
    let (rt, fhost) = filter(&bus, r#"{"batch_max_events":1}"#);
    rpc(&rt, &fhost, 0);
    assert_eq!(items(&bus).len(), 1);
    assert_eq!(rt.buffered(), 0);
}

#[test]
fn a_retired_configuration_queues_what_it_holds_and_then_every_event_at_once() {
    let bus = bus();
    let _svc = service(&bus, 50, 1000);
    let (rt, fhost) = filter(&bus, "{}");
    for n in 0..3 {
        rpc(&rt, &fhost, n);
    }
    assert!(items(&bus).is_empty());
    // A new configuration (or the VM's on_done) retires this one.
    rt.retire(&fhost);
    assert_eq!(items(&bus).len(), 1);
    // A stream that started under it ends later: its event goes at once, not on a tick.
    rpc(&rt, &fhost, 3);
    assert_eq!(items(&bus).len(), 2);
    assert_eq!(rt.buffered(), 0);
    assert_eq!(queued_ids(&bus), ids(0..4));
}

#[test]
fn a_failed_enqueue_counts_every_event_of_the_batch() {
    let bus = bus();
    let _svc = service(&bus, 50, 1000);
    let (rt, fhost) = filter(&bus, "{}");
    for n in 0..3 {
        rpc(&rt, &fhost, n);
    }
    // The service VM goes away with its queue.
    bus.borrow_mut().queues.clear();
    rt.on_tick(&fhost);
    assert_eq!(fhost.counter(METRIC_ENQUEUE_FAILED), 3);
    assert_eq!(fhost.counter(METRIC_ENQUEUED), 0);
    let log = fhost.log_text();
    assert!(log.contains("3 event(s) could not be enqueued"), "{log}");
    assert!(!log.contains("p-0000"), "no content in logs");
}

#[test]
fn a_restarted_service_gets_the_batch_on_its_new_queue() {
    let bus = bus();
    let _svc = service(&bus, 50, 1000);
    let (rt, fhost) = filter(&bus, "{}");
    for n in 0..3 {
        rpc(&rt, &fhost, n);
    }
    // The old queue is gone; the restarted service registered the name again, with a new id.
    {
        let mut b = bus.borrow_mut();
        b.queues.clear();
        b.names.insert((VM.into(), QUEUE.into()), 7);
        b.queues.insert(7, Default::default());
    }
    rt.on_tick(&fhost);
    assert_eq!(fhost.counter(METRIC_ENQUEUE_FAILED), 0);
    assert_eq!(fhost.counter(METRIC_ENQUEUED), 3);
    assert_eq!(queued_ids(&bus), ids(0..3));
}

/// A service that reads version 1 only (the release before version 2) gets version-1
/// batches; one that reads version 2 gets the time and severity beside each event, the same
/// values its JSON carries.
#[test]
fn each_service_gets_the_batch_version_it_reads() {
    for (published, version) in [(&b"1"[..], 1u8), (b"2", 2), (b"9", 2)] {
        let bus = published_service(Some(published));
        let (rt, fhost) = filter(&bus, "{}");
        fhost.now_ms.set(1_764_180_184_512);
        rpc(&rt, &fhost, 0);
        fhost.set_response_trailers(&[("grpc-status", "7")]);
        let mut s = AuditStream::default();
        s.on_request_headers(&fhost, &rt);
        s.on_log(&fhost, &rt);
        rt.on_tick(&fhost);
        let items = items(&bus);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0][4], version, "{published:?}");
        let events = batch::decode(&items[0]).unwrap();
        assert_eq!(events.len(), 2);
        for (item, ok) in events.iter().zip([true, false]) {
            let v: serde_json::Value = serde_json::from_slice(item.event).unwrap();
            assert_eq!(v["outcome"]["grpc_status"] == 0, ok);
            assert_eq!(v["time"], "2025-11-26T18:03:04.512Z");
            let want = (version == 2).then_some(EventMeta {
                time_ms: 1_764_180_184_512,
                ok,
            });
            assert_eq!(item.meta, want);
        }
    }
}

/// The format is read again on each tick: a service replaced by a release that reads only
/// version 1 gets version 1 from the next batch on.
#[test]
fn a_changed_format_is_followed_from_the_next_tick() {
    let bus = published_service(Some(b"2"));
    let (rt, fhost) = filter(&bus, "{}");
    rpc(&rt, &fhost, 0);
    bus.borrow_mut()
        .set_shared(VM, &batch::format_key(QUEUE), b"1");
    rt.on_tick(&fhost);
    rpc(&rt, &fhost, 1);
    rt.on_tick(&fhost);
    let versions: Vec<u8> = items(&bus).iter().map(|i| i[4]).collect();
    assert_eq!(versions, vec![2, 1]);
    assert_eq!(queued_ids(&bus), ids(0..2));
}

#[test]
fn a_service_of_the_previous_release_gets_bare_events() {
    // What a service before batching publishes: its queue and the flag, no format.
    let bus = published_service(None);
    let (rt, fhost) = filter(&bus, "{}");
    for n in 0..2 {
        assert_eq!(rpc(&rt, &fhost, n), Admission::Continue);
    }
    let items = items(&bus);
    assert_eq!(items.len(), 2, "one item per RPC, at once");
    for item in &items {
        assert_eq!(item.first(), Some(&b'{'), "a bare event");
    }
    assert_eq!(rt.buffered(), 0);
    // And this release's service takes bare events as well as batches.
    let (mut svc, shost) = service(&bus, 50, 1000);
    assert_eq!(
        shost.shared(&batch::format_key(QUEUE)).as_deref(),
        Some(&b"2"[..])
    );
    svc.on_queue_ready(&shost, 1);
    assert_eq!(shost.metric(METRIC_CHAINED), 2);
}

#[test]
fn the_service_writes_its_format_before_its_flag() {
    let bus = bus();
    let (_svc, shost) = service(&bus, 50, 1000);
    // The fake's CAS tokens count writes: the format's is the older.
    let shared = shost.shared.borrow();
    let (format, format_cas) = shared.get(&batch::format_key(QUEUE)).unwrap();
    let (flag, flag_cas) = shared.get(&backlog_flag_key(QUEUE)).unwrap();
    assert_eq!((format.as_slice(), flag.as_slice()), (&b"2"[..], &b"0"[..]));
    assert!(format_cas < flag_cas);
}

#[test]
fn a_malformed_item_is_refused_whole_and_counted() {
    for version in [1, 2] {
        let bus = bus();
        let (mut svc, shost) = service(&bus, 50, 1000);
        let good = |n: u64| {
            format!(r#"{{"outcome":{{"grpc_status":0}},"schema":"phi_guard.audit.v1","time":"2025-11-26T18:03:04.512Z","what":{{"n":{n}}}}}"#)
                .into_bytes()
        };
        let meta = EventMeta {
            time_ms: 1_764_180_184_512,
            ok: true,
        };
        let mut w = BatchWriter::new(8, 65_536);
        w.set_version(version);
        w.push(&good(1), meta);
        w.push(&good(2), meta);
        let (two, _) = w.take().unwrap();
        let mut truncated = two.clone();
        truncated.pop();
        let mut unknown = two.clone();
        unknown[4] = 3;
        // Well framed, but its second event is not JSON: none of its three events is chained.
        w.push(&good(3), meta);
        w.push(b"not json at all", meta);
        w.push(&good(4), meta);
        let (poisoned, _) = w.take().unwrap();
        for item in [
            truncated,
            unknown,
            poisoned,
            b"garbage".to_vec(),
            Vec::new(),
            two,
        ] {
            bus.borrow_mut().queues.get_mut(&1).unwrap().push_back(item);
        }
        svc.on_queue_ready(&shost, 1);
        assert_eq!(shost.metric(METRIC_BATCH_REFUSED), 5, "v{version}");
        assert_eq!(shost.metric(METRIC_CHAINED), 2, "only the good batch");
        assert_eq!(svc.core().unwrap().next_seq(), 2);
        assert_eq!(
            shost.metric(METRIC_DROPPED),
            3,
            "the poisoned batch's events"
        );
        drain(&mut svc, &shost);
        let recs = records(&shost);
        assert_eq!(recs.len(), 2);
        let first = recs[0].record.as_ref().unwrap();
        assert!(first.event.contains(r#""n":1"#));
        // Version 1's time comes from the event's JSON, version 2's from beside it: the same.
        assert_eq!(first.time_ms, meta.time_ms, "v{version}");
        let log = shost.log_text();
        assert!(!log.contains("not json"), "no content in logs: {log}");
    }
}

#[test]
fn fail_closed_takes_whole_batches_refuses_new_rpcs_and_loses_nothing() {
    let bus = bus();
    let (mut svc, shost) = service(&bus, 2, 4);
    let (rt, fhost) = filter(&bus, r#"{"batch_max_events":6}"#);
    let flag = || shost.shared(&backlog_flag_key(QUEUE));
    // The collector is down: every call fails.
    shost.refuse_calls.set(true);
    for n in 0..6 {
        assert_eq!(rpc(&rt, &fhost, n), Admission::Continue);
    }
    assert_eq!(items(&bus).len(), 1);
    svc.on_queue_ready(&shost, 1);
    // The whole batch is chained, past the bound of 4: none of its events is dropped.
    assert_eq!(svc.core().unwrap().backlog_len(), 6);
    assert_eq!(flag().as_deref(), Some(&b"1"[..]));
    assert_eq!(rpc(&rt, &fhost, 99), Admission::Refused);
    assert_eq!(fhost.sent_status(), Some(GrpcStatus::Unavailable));
    // RPCs admitted before the flag end now: their batch waits in Envoy's queue.
    for n in 6..8 {
        let mut s = AuditStream::default();
        *fhost.request_headers.borrow_mut() = vec![("x-request-id".into(), format!("req-{n:05}"))];
        s.on_log(&fhost, &rt);
    }
    rt.on_tick(&fhost);
    svc.on_queue_ready(&shost, 1);
    assert_eq!(shost.queued(1), 1, "not taken while full");
    assert_eq!(shost.metric(METRIC_DROPPED), 0);
    // The collector comes back: everything drains, the flag drops, RPCs are admitted again.
    shost.refuse_calls.set(false);
    drain(&mut svc, &shost);
    assert_eq!(flag().as_deref(), Some(&b"0"[..]));
    assert_eq!(rpc(&rt, &fhost, 100), Admission::Continue);
    rt.on_tick(&fhost);
    drain(&mut svc, &shost);
    let report = verify(
        &records(&shost),
        &ChainKey::new(KEY).unwrap(),
        &VerifyOptions {
            expect_count: Some(9),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.events, 9, "6 + 2 late + 1 after recovery");
    assert_eq!(shost.metric(METRIC_SHIPPED), 9);
    assert_eq!(shost.metric(METRIC_DROPPED), 0);
}
