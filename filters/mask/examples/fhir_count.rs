//! Masks the FHIR demo Patient N times per role, for instruction counts under
//! `valgrind --tool=callgrind` (repeatable on a loaded machine, unlike wall-clock time):
//! `cargo build --release -p phi-guard-mask --example fhir_count`, then run it under callgrind
//! with `ROLE=<role> N=0` and `N=1000`; the difference / 1000 is the cost of one message.

use base64::Engine;
use phi_guard_mask::rewriter::Counts;
use phi_guard_mask::MaskConfig;
use phi_guard_proto::fhir;

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let role = std::env::var("ROLE").unwrap_or_else(|_| "nurse".into());
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../policy.fhir.json")).expect("policy");
    doc["descriptor_set"] = base64::engine::general_purpose::STANDARD
        .encode(fhir::DESCRIPTOR_SET)
        .into();
    let cfg = MaskConfig::parse(doc.to_string().as_bytes(), &|_| {
        Some("bench-key-0123456789abcdef-0123456789".into())
    })
    .expect("config");
    let root = cfg.plans.method(fhir::GET_PATIENT).expect("method");
    let patient = fhir::patient();
    let (_, block) = cfg.policy.for_role(Some(&role));
    let rw = cfg.rewriter(block);
    let mut out = Vec::with_capacity(patient.len() * 2);
    let mut total = 0;
    for _ in 0..n {
        out.clear();
        let mut counts = Counts::default();
        rw.rewrite(root, std::hint::black_box(&patient), &mut out, &mut counts)
            .expect("rewrite");
        total += std::hint::black_box(&out).len();
    }
    println!("{role}: {n} messages, {total} bytes out");
}
