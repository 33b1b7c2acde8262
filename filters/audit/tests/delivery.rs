//! The delivery state machine: batching, retry/backoff keeping order, drain after recovery
//! with an intact chain, backlog bounds under both policies.

use phi_guard_audit::chain::ChainKey;
use phi_guard_audit::delivery::{
    BacklogPolicy, BatchToSend, CallOutcome, Delivery, DeliveryConfig, Rejected,
};
use phi_guard_audit::otlp::{records_from_protobuf, Encoding, OtlpMeta};
use phi_guard_audit::verify::{verify, Located, VerifyOptions};

const KEY: &[u8] = b"test-key-0123456789abcdef-0123456789";

fn key() -> ChainKey {
    ChainKey::new(KEY).unwrap()
}

fn cfg() -> DeliveryConfig {
    DeliveryConfig {
        max_batch_events: 3,
        max_batch_delay_ms: 100,
        max_backlog_events: 6,
        policy: BacklogPolicy::FailClosed,
        initial_backoff_ms: 50,
        max_backoff_ms: 400,
        request_timeout_ms: 1_000,
        max_event_bytes: 1024,
    }
}

fn core(cfg: DeliveryConfig) -> Delivery {
    core_in(cfg, Encoding::Protobuf)
}

fn core_in(cfg: DeliveryConfig, encoding: Encoding) -> Delivery {
    Delivery::new(
        cfg,
        key(),
        OtlpMeta {
            service_name: "phi-guard".into(),
            encoding,
        },
    )
}

fn ev(i: u64) -> Vec<u8> {
    format!(r#"{{"outcome":{{"grpc_status":0}},"schema":"phi_guard.audit.v1","time":"2025-11-26T18:03:04.512Z","what":{{"n":{i}}}}}"#)
        .into_bytes()
}

fn seqs(batch: &BatchToSend) -> Vec<u64> {
    records_from_protobuf(&batch.body)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().seq)
        .collect()
}

fn located(batches: &[BatchToSend]) -> Vec<Located> {
    let mut out = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        for (i, r) in records_from_protobuf(&batch.body)
            .unwrap()
            .into_iter()
            .enumerate()
        {
            out.push(Located {
                at: format!("batch{b}#{i}"),
                record: r,
            });
        }
    }
    out
}

#[test]
fn batches_by_size_and_by_delay() {
    let mut c = core(cfg());
    c.on_event(ev(0), 0).unwrap();
    c.on_event(ev(1), 10).unwrap();
    assert_eq!(c.poll(50), None, "neither full nor due");
    c.on_event(ev(2), 60).unwrap();
    let b = c.poll(60).expect("full batch goes at once");
    assert_eq!((seqs(&b), b.attempt, b.first_seq), (vec![0, 1, 2], 0, 0));
    c.on_response(b.id, CallOutcome::Status(200), 70);
    assert_eq!(c.stats().shipped, 3);
    c.on_event(ev(3), 100).unwrap();
    assert_eq!(c.poll(199), None);
    let b = c.poll(200).expect("oldest waited max_batch_delay_ms");
    assert_eq!(seqs(&b), vec![3]);
    // One batch at a time.
    c.on_event(ev(4), 200).unwrap();
    c.on_event(ev(5), 200).unwrap();
    c.on_event(ev(6), 200).unwrap();
    assert_eq!(c.poll(300), None);
    c.on_response(b.id, CallOutcome::Status(204), 300);
    assert_eq!(seqs(&c.poll(300).unwrap()), vec![4, 5, 6]);
}

/// The binary body, read with the official OTLP schema's types.
#[test]
fn otlp_protobuf_body_shape() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;
    let mut c = core(cfg());
    // Observed (taken off the queue) at 3 ms, sent at 5: OTLP's observed time is the former.
    for i in 0..3 {
        c.on_event(ev(i), 3).unwrap();
    }
    let b = c.poll(5).unwrap();
    let req = ExportLogsServiceRequest::decode(b.body.as_slice()).unwrap();
    let rl = &req.resource_logs[0];
    let resource = &rl.resource.as_ref().unwrap().attributes[0];
    assert_eq!(resource.key, "service.name");
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("not a string: {other:?}"),
    };
    assert_eq!(text(&resource.value), "phi-guard");
    let sl = &rl.scope_logs[0];
    assert_eq!(sl.scope.as_ref().unwrap().name, "phi_guard.audit");
    assert_eq!(sl.log_records.len(), 3);
    let lr = &sl.log_records[1];
    assert_eq!(lr.time_unix_nano, 1_764_180_184_512_000_000);
    assert_eq!(lr.observed_time_unix_nano, 3_000_000);
    assert_eq!((lr.severity_number, lr.severity_text.as_str()), (9, "INFO"));
    assert_eq!(text(&lr.body), String::from_utf8(ev(1)).unwrap());
    let keys: Vec<&str> = lr.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["phi_guard.seq", "phi_guard.chain", "phi_guard.prev"]);
    assert_eq!(
        lr.attributes[0].value.as_ref().unwrap().value,
        Some(Value::IntValue(1))
    );
    assert_eq!(text(&lr.attributes[1].value).len(), 64, "hex link");
    // And the reader the collector uses gets the chain back from it.
    let back = records_from_protobuf(&b.body).unwrap();
    assert_eq!(back.len(), 3);
    assert_eq!(back[1].as_ref().unwrap().seq, 1);
    assert_eq!(back[1].as_ref().unwrap().event.as_bytes(), ev(1));
}

/// The same records as OTLP JSON (`encoding: "json"`).
#[test]
fn otlp_json_body_shape() {
    let mut c = core_in(cfg(), Encoding::Json);
    // Observed (taken off the queue) at 3 ms, sent at 5: OTLP's observed time is the former.
    for i in 0..3 {
        c.on_event(ev(i), 3).unwrap();
    }
    let b = c.poll(5).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
    let rl = &doc["resourceLogs"][0];
    assert_eq!(rl["resource"]["attributes"][0]["key"], "service.name");
    assert_eq!(rl["scopeLogs"][0]["scope"]["name"], "phi_guard.audit");
    let lr = &rl["scopeLogs"][0]["logRecords"][1];
    assert_eq!(lr["timeUnixNano"], "1764180184512000000");
    assert_eq!(lr["observedTimeUnixNano"], "3000000");
    assert_eq!(lr["severityText"], "INFO");
    assert_eq!(lr["body"]["stringValue"], String::from_utf8(ev(1)).unwrap());
    let keys: Vec<&str> = lr["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["phi_guard.seq", "phi_guard.chain", "phi_guard.prev"]);
    assert_eq!(lr["attributes"][0]["value"]["intValue"], "1");
}

#[test]
fn retries_with_exponential_backoff_keeping_the_batch() {
    let mut c = core(DeliveryConfig {
        max_backlog_events: 20,
        ..cfg()
    });
    for i in 0..3 {
        c.on_event(ev(i), 0).unwrap();
    }
    let first = c.poll(0).unwrap();
    let mut now = 0;
    let mut sent = vec![first.clone()];
    let mut last = first.clone();
    // 503, 429, connection failure, 500, 400: backoff 50, 100, 200, 400, 400 (capped).
    for (outcome, wait) in [
        (CallOutcome::Status(503), 50),
        (CallOutcome::Status(429), 100),
        (CallOutcome::Failed, 200),
        (CallOutcome::Status(500), 400),
        (CallOutcome::Status(400), 400),
    ] {
        c.on_response(last.id, outcome, now);
        // Events keep arriving; they queue behind the retained batch.
        c.on_event(ev(100 + now), now).unwrap();
        assert_eq!(c.retry_at(), Some(now + wait));
        assert_eq!(c.poll(now + wait - 1), None, "not before the backoff");
        now += wait;
        let again = c.poll(now).unwrap();
        assert_eq!(seqs(&again), vec![0, 1, 2], "same records, same order");
        assert_eq!(again.attempt, last.attempt + 1);
        assert_ne!(again.id, last.id);
        sent.push(again.clone());
        last = again;
    }
    assert_eq!(c.stats().retried, 5);
    // Same chain on every resend: identical records, and the very same body.
    let bodies: Vec<Vec<u64>> = sent.iter().map(seqs).collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert!(sent.windows(2).all(|w| w[0].body == w[1].body));
    c.on_response(last.id, CallOutcome::Status(200), now);
    assert_eq!(c.stats().shipped, 3);
    let next = c.poll(now).unwrap();
    assert_eq!(seqs(&next), vec![3, 4, 5]);
    assert_eq!(next.attempt, 0, "backoff resets after success");
}

#[test]
fn a_lost_response_times_out_and_a_late_answer_is_ignored() {
    let mut c = core(cfg());
    for i in 0..3 {
        c.on_event(ev(i), 0).unwrap();
    }
    let b = c.poll(0).unwrap();
    assert_eq!(c.poll(999), None);
    assert_eq!(
        c.poll(1_000),
        None,
        "deadline passes: retained, retry after backoff"
    );
    assert_eq!(c.retry_at(), Some(1_050));
    // The abandoned call answers late: ignored, the batch is still retained.
    c.on_response(b.id, CallOutcome::Status(200), 1_010);
    assert_eq!(c.stats().shipped, 0);
    let again = c.poll(1_050).unwrap();
    assert_eq!(seqs(&again), vec![0, 1, 2]);
    c.on_response(again.id, CallOutcome::Status(200), 1_060);
    assert_eq!(c.stats().shipped, 3);
}

#[test]
fn drains_after_recovery_with_every_event_delivered_and_the_chain_intact() {
    let mut c = core(DeliveryConfig {
        max_backlog_events: 100,
        ..cfg()
    });
    let mut delivered = Vec::new();
    let mut now = 0;
    let mut next_event = 0;
    // An outage for the first 2 s, then recovery; 40 events arrive over time.
    while (c.stats().shipped as usize) < 40 {
        if next_event < 40 && now % 20 == 0 {
            c.on_event(ev(next_event), now).unwrap();
            next_event += 1;
        }
        if let Some(b) = c.poll(now) {
            if now < 2_000 {
                c.on_response(b.id, CallOutcome::Status(503), now);
            } else {
                delivered.push(b.clone());
                c.on_response(b.id, CallOutcome::Status(200), now);
            }
        }
        now += 10;
        assert!(now < 100_000, "never drained");
    }
    let report = verify(
        &located(&delivered),
        &key(),
        &VerifyOptions {
            expect_count: Some(40),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((report.events, report.duplicates), (40, 0));
    assert_eq!(c.backlog_len(), 0);
    assert!(c.stats().retried > 0);
}

#[test]
fn fail_closed_raises_and_lowers_the_flag() {
    let mut c = core(cfg());
    for i in 0..5 {
        c.on_event(ev(i), 0).unwrap();
        assert!(!c.blocked());
    }
    assert!(c.has_room());
    c.on_event(ev(5), 0).unwrap();
    assert!(c.blocked(), "full at 6");
    assert!(
        !c.has_room(),
        "the shell leaves further events in Envoy's queue"
    );
    assert_eq!(c.stats().backlog_full, 1);
    // Misuse (dequeuing anyway) is refused and counted, not silently absorbed.
    assert_eq!(c.on_event(ev(6), 0), Err(Rejected::BacklogFull));
    assert_eq!(c.stats().dropped, 1);
    let b = c.poll(0).unwrap();
    c.on_response(b.id, CallOutcome::Status(200), 1);
    assert_eq!(c.backlog_len(), 3);
    assert!(!c.blocked(), "cleared at half the bound");
    assert!(c.has_room());
}

#[test]
fn fail_closed_flag_stays_up_between_half_and_full() {
    let mut c = core(DeliveryConfig {
        max_batch_events: 1,
        ..cfg()
    });
    for i in 0..6 {
        c.on_event(ev(i), 0).unwrap();
    }
    assert!(c.blocked());
    for expected_blocked in [true, true, false] {
        let b = c.poll(0).unwrap();
        c.on_response(b.id, CallOutcome::Status(200), 0);
        assert_eq!(c.blocked(), expected_blocked, "backlog {}", c.backlog_len());
    }
}

#[test]
fn drop_oldest_counts_drops_and_spares_the_batch_in_flight() {
    let mut c = core(DeliveryConfig {
        policy: BacklogPolicy::DropOldest,
        ..cfg()
    });
    for i in 0..3 {
        c.on_event(ev(i), 0).unwrap();
    }
    let b = c.poll(0).unwrap();
    for i in 3..9 {
        c.on_event(ev(i), 0).unwrap();
        assert!(!c.blocked() && c.has_room());
    }
    // Backlog 6: seq 0..2 in flight, then 3..8 arrived; 3, 4, 5 were dropped for 6, 7, 8.
    assert_eq!(c.backlog_len(), 6);
    assert_eq!(c.stats().dropped, 3);
    assert_eq!(c.stats().backlog_full, 3);
    c.on_response(b.id, CallOutcome::Status(200), 0);
    let b2 = c.poll(0).unwrap();
    assert_eq!(seqs(&b2), vec![6, 7, 8]);
    // The verifier sees the gap exactly where the drops happened.
    let err = verify(&located(&[b, b2]), &key(), &VerifyOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing events seq 3..=5: not found before batch1#0 (seq 6)"
    );
}

#[test]
fn refuses_oversized_and_non_json_items_without_chaining_them() {
    let mut c = core_in(cfg(), Encoding::Json);
    assert_eq!(c.on_event(vec![b'x'; 2000], 0), Err(Rejected::TooLarge));
    assert_eq!(c.on_event(b"\xff\xfe".to_vec(), 0), Err(Rejected::NotJson));
    assert_eq!(c.on_event(b"not json".to_vec(), 0), Err(Rejected::NotJson));
    assert_eq!(c.stats().dropped, 3);
    assert_eq!(c.next_seq(), 0, "nothing chained");
    c.on_event(b"{}".to_vec(), 7).unwrap();
    assert_eq!(c.next_seq(), 1);
    // An event without time or outcome uses arrival time and WARN.
    let b = c.poll(1_000).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
    let lr = &doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
    assert_eq!(lr["timeUnixNano"], "7000000");
    assert_eq!(lr["severityText"], "WARN");
}

#[test]
fn reconfigure_keeps_chain_and_backlog() {
    let mut c = core(cfg());
    for i in 0..2 {
        c.on_event(ev(i), 0).unwrap();
    }
    c.reconfigure(
        DeliveryConfig {
            max_batch_events: 2,
            ..cfg()
        },
        OtlpMeta {
            service_name: "other".into(),
            encoding: Encoding::Protobuf,
        },
    );
    assert_eq!((c.next_seq(), c.backlog_len()), (2, 2));
    assert_eq!(seqs(&c.poll(0).unwrap()), vec![0, 1]);
}
