//! Masking throughput on Google's FHIR R4 Patient (the FHIR demo's GetPatient response) per
//! role, under `policy.fhir.json`: catalog entries with conditions (Identifier by system and
//! type code, ContactPoint by system), type entries (HumanName, Address), an extension by URL,
//! a contained resource in an `Any`, and the safe_harbor profile's date and ZIP actions; and
//! the FHIR demo's stream of 1,000 Observations for the nurse, as `scripts/bench` masks it.

#[path = "../tests/support/mod.rs"]
mod support;

use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use phi_guard_mask::rewriter::Counts;
use phi_guard_mask::MaskConfig;
use phi_guard_proto::fhir;

fn bench(c: &mut Criterion) {
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../policy.fhir.json")).unwrap();
    doc["descriptor_set"] = base64::engine::general_purpose::STANDARD
        .encode(fhir::DESCRIPTOR_SET)
        .into();
    let cfg = MaskConfig::parse(doc.to_string().as_bytes(), &|_| {
        Some("bench-key-0123456789abcdef-0123456789".into())
    })
    .unwrap();
    let root = cfg.plans.method(fhir::GET_PATIENT).unwrap();
    let patient = fhir::patient();
    let mut group = c.benchmark_group("fhir_patient");
    group.throughput(Throughput::Bytes(patient.len() as u64));
    for role in ["billing", "nurse", "research", "safe_harbor"] {
        let (_, block) = cfg.policy.for_role(Some(role));
        let rw = cfg.rewriter(block);
        let mut out = Vec::with_capacity(patient.len() * 2);
        group.bench_with_input(
            BenchmarkId::new(role, format!("{}B", patient.len())),
            &patient,
            |b, p| {
                b.iter(|| {
                    out.clear();
                    let mut counts = Counts::default();
                    rw.rewrite(root, p, &mut out, &mut counts).unwrap();
                    out.len()
                })
            },
        );
    }
    group.finish();

    // The FHIR demo's Observation stream (phi-bench's `pm_fhir`), as the nurse sees it: 1,000
    // length-prefixed messages in the 16 KiB chunks Envoy hands the filter.
    let root = cfg.plans.method(fhir::LIST_OBSERVATIONS).unwrap();
    let stream: Vec<u8> = (0..1000)
        .flat_map(|i| support::frame(&fhir::observation(i)))
        .collect();
    let mut group = c.benchmark_group("fhir_observations");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    let (_, block) = cfg.policy.for_role(Some("nurse"));
    let rw = cfg.rewriter(block);
    group.bench_function("nurse/1000", |b| {
        b.iter(|| support::mask_stream(&rw, root, cfg.max_message_bytes, &stream))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
