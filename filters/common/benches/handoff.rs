//! What one allowed RPC's hand-off between stages costs inside the pipeline, natively: the
//! reads rbac, mask and audit make of the contracts earlier stages wrote (identity twice:
//! rbac and audit; authz twice: mask and audit; authn, mask summary and resource id once,
//! by audit).
//!
//! - `bytes`: the hand-off before the typed slots: the stream kept the bytes each stage
//!   wrote and every read copied them and parsed them (`StateContract::decode`);
//! - `typed`: the hand-off now: every read clones the value from its typed slot.
//!
//! Both layouts still encode each contract once for Envoy's filter state; that is not here.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use phi_guard_common::{
    AuthnOutcome, AuthnResult, AuthzDecision, AuthzMode, Identity, MaskSummary, ResourceId,
    StateContract, StateSlots, Verdict,
};

fn slots() -> StateSlots {
    let mut mask = MaskSummary {
        role: "nurse".into(),
        messages: 1,
        ..Default::default()
    };
    mask.fields.insert("SSN/partial".into(), 1);
    mask.fields.insert("DOB/redact".into(), 1);
    mask.fields.insert("NAME/redact".into(), 2);
    StateSlots {
        identity: Some(Identity {
            provider: "hospital-idp".into(),
            issuer: "https://idp.phi-guard.test".into(),
            subject: "nurse".into(),
            roles: vec!["nurse".into()],
            scopes: vec!["patient.read".into(), "encounter.read".into()],
            tenant: Some("north".into()),
            purpose_of_use: Some("TREAT".into()),
            break_glass_reason: None,
            expires_at: 1_900_000_000,
            cert_bound: true,
        }),
        authn: Some(AuthnOutcome {
            result: AuthnResult::Ok,
            provider: Some("hospital-idp".into()),
            reason: None,
        }),
        authz: Some(AuthzDecision {
            decision: Verdict::Allow,
            rule: Some("frontend-clinical-reads".into()),
            role: "nurse".into(),
            policy_version: "2026-11-01".into(),
            mode: AuthzMode::Enforce,
            shadow_decision: None,
            reason: "matched_allow".into(),
            break_glass: false,
            break_glass_reason: None,
        }),
        mask: Some(mask),
        resource: Some(ResourceId("p-0001".into())),
        ..Default::default()
    }
}

/// As `Cached` answered a read before: a copy of the kept bytes, then the parse.
fn bytes_read<T: StateContract>(bytes: &[u8]) -> Option<T> {
    let copy: Vec<u8> = black_box(bytes.to_vec());
    T::decode(&copy)
}

fn enc<T: StateContract>(v: &Option<T>) -> Vec<u8> {
    v.as_ref().map(StateContract::encode).unwrap_or_default()
}

fn handoff(c: &mut Criterion) {
    let s = slots();
    let (identity, authn, authz, mask, resource) = (
        enc(&s.identity),
        enc(&s.authn),
        enc(&s.authz),
        enc(&s.mask),
        enc(&s.resource),
    );
    let mut group = c.benchmark_group("handoff_per_rpc");
    group.bench_function("bytes", |b| {
        b.iter(|| {
            black_box(bytes_read::<Identity>(black_box(&identity)));
            black_box(bytes_read::<Identity>(black_box(&identity)));
            black_box(bytes_read::<AuthzDecision>(black_box(&authz)));
            black_box(bytes_read::<AuthzDecision>(black_box(&authz)));
            black_box(bytes_read::<AuthnOutcome>(black_box(&authn)));
            black_box(bytes_read::<MaskSummary>(black_box(&mask)));
            black_box(bytes_read::<ResourceId>(black_box(&resource)));
        })
    });
    group.bench_function("typed", |b| {
        b.iter(|| {
            let s = black_box(&s);
            black_box(s.identity.clone());
            black_box(s.identity.clone());
            black_box(s.authz.clone());
            black_box(s.authz.clone());
            black_box(s.authn.clone());
            black_box(s.mask.clone());
            black_box(s.resource.clone());
        })
    });
    group.finish();
}

criterion_group!(benches, handoff);
criterion_main!(benches);
