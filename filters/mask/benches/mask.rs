//! Masking throughput: a ~1 KiB and a ~64 KiB message per role, and a 16 KiB-chunked stream.

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use phi_guard_mask::rewriter::Counts;
use prost::Message;
use support::*;

fn bench(c: &mut Criterion) {
    let cfg = demo_config();
    let root = cfg.plans.method(LIST_ENCOUNTERS).unwrap();
    let small = encounter(1, 900).encode_to_vec();
    let large = encounter(2, 64 * 1024).encode_to_vec();

    let mut group = c.benchmark_group("rewrite");
    for (label, payload) in [("1KiB", &small), ("64KiB", &large)] {
        group.throughput(Throughput::Bytes(payload.len() as u64));
        for role in ["billing", "nurse", "research"] {
            let (_, block) = cfg.policy.for_role(Some(role));
            let rw = cfg.rewriter(block);
            let mut out = Vec::with_capacity(payload.len() * 2);
            group.bench_with_input(BenchmarkId::new(role, label), payload, |b, p| {
                b.iter(|| {
                    out.clear();
                    let mut counts = Counts::default();
                    rw.rewrite(root, p, &mut out, &mut counts).unwrap();
                    out.len()
                })
            });
        }
    }
    group.finish();

    // The free-text scan alone: over the large message's note (identifiers, then prose), and
    // over a note as dense in numbers as a clinician's (vitals, doses, dates, a phone number
    // every sentence), where the prefilter finds a window in every sentence.
    let note = encounter(2, 64 * 1024).note;
    let mut dense = String::new();
    while dense.len() < 64 * 1024 {
        dense.push_str(
            "BP 118/76, HR 72, T 36.8 C, SpO2 98% on RA at 2026-01-05 09:30. Metoprolol 25 mg \
             PO BID; follow up in 2 weeks, call 555-013-4477 or mail the clinic. ",
        );
    }
    let mut group = c.benchmark_group("scan");
    for (label, text) in [("64KiB", &note), ("64KiB-dense", &dense)] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(label, |b| {
            b.iter(|| {
                let mut n = 0;
                cfg.detectors.each(text.as_bytes(), |_| n += 1).unwrap();
                n
            })
        });
    }
    group.finish();

    // A server stream of 16 x 64 KiB messages in 16 KiB DATA chunks, framing included.
    let mut stream = Vec::new();
    for _ in 0..16 {
        stream.extend(frame(&large));
    }
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    let (_, block) = cfg.policy.for_role(Some("nurse"));
    let rw = cfg.rewriter(block);
    group.bench_function("nurse/16x64KiB", |b| {
        b.iter(|| mask_stream(&rw, root, cfg.max_message_bytes, &stream))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
