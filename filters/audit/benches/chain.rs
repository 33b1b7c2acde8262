//! Events per second through the service core: chaining (HMAC-SHA256), backlog, batching
//! and OTLP encoding, with a realistic ~600-byte event. Native only; see the README's bench
//! note for what to measure through Envoy.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use phi_guard_audit::chain::{ChainKey, Chainer};
use phi_guard_audit::delivery::{CallOutcome, Delivery, DeliveryConfig};
use phi_guard_audit::event::{AuditEvent, Authn, Authz, Correlation, Outcome, What, Who};
use phi_guard_audit::otlp::{Encoding, OtlpMeta};
use phi_guard_common::{AuthnResult, AuthzMode, Verdict};

fn sample_event() -> Vec<u8> {
    AuditEvent {
        schema: "phi_guard.audit.v1".into(),
        time: "2026-11-26T18:03:04.512Z".into(),
        correlation: Correlation {
            request_id: Some("4bf92f35-77b3-4da6-a3ce-929d0e0e4736".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        },
        who: Who {
            peer: Some("spiffe://phi-guard.test/ns/ehr/sa/frontend".into()),
            issuer: Some("https://idp.phi-guard.test".into()),
            subject: Some("u-12345".into()),
            provider: Some("hospital-idp".into()),
            role: Some("nurse".into()),
            tenant: Some("north".into()),
        },
        what: What {
            service: Some("health.v1.PatientService".into()),
            method: Some("GetPatient".into()),
            resource_id: Some("p-0001".into()),
            claimed_resource_id: Some("p-0001".into()),
        },
        outcome: Outcome {
            authn: Some(Authn {
                result: AuthnResult::Ok,
                reason: None,
            }),
            authz: Some(Authz {
                decision: Verdict::Allow,
                mode: AuthzMode::Enforce,
                policy_version: "2026-11-01".into(),
                reason: "matched_allow".into(),
                rule: Some("nurses-read".into()),
                shadow_decision: None,
                break_glass: false,
                break_glass_reason: None,
            }),
            grpc_status: Some(0),
            duration_ms: Some(3),
            request_bytes: Some(412),
            response_bytes: Some(1890),
            mask: None,
        },
    }
    .canonical_bytes()
}

fn key() -> ChainKey {
    ChainKey::new(&[7u8; 32]).expect("32-byte key")
}

fn benches(c: &mut Criterion) {
    let event = sample_event();
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("chain_only", |b| {
        let mut chainer = Chainer::new(key());
        b.iter(|| {
            black_box(chainer.append(String::from_utf8(event.clone()).unwrap_or_default(), 1))
        })
    });
    g.bench_function("encode_event", |b| b.iter(|| black_box(sample_event())));

    // The whole service path for 100-event batches: on_event ×100, poll (OTLP encode), ack;
    // in each OTLP/HTTP encoding.
    g.throughput(Throughput::Elements(100));
    for (name, encoding) in [
        ("chain_batch_encode_100", Encoding::Protobuf),
        ("chain_batch_encode_100_json", Encoding::Json),
    ] {
        g.bench_function(name, |b| {
            let cfg = DeliveryConfig {
                max_batch_events: 100,
                max_backlog_events: 1_000,
                ..DeliveryConfig::default()
            };
            let mut core = Delivery::new(
                cfg,
                key(),
                OtlpMeta {
                    service_name: "phi-guard".into(),
                    encoding,
                },
            );
            let mut now = 0u64;
            b.iter_batched(
                || vec![event.clone(); 100],
                |events| {
                    for e in events {
                        let _ = core.on_event(e, now);
                    }
                    if let Some(batch) = core.poll(now) {
                        black_box(batch.body.len());
                        core.on_response(batch.id, CallOutcome::Status(200), now);
                    }
                    now += 1;
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(audit, benches);
criterion_main!(audit);
