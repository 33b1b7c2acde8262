//! Evaluation cost for generated policies of 10 and 200 rules. The request is built to hit the
//! slow path: it matches only the last allow rule, so every rule before it is tried.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

use phi_guard_common::{GrpcMethod, Identity};
use phi_guard_rbac::{evaluate, Peer, Policy, Request, Verdict};

fn policy_json(n: usize) -> Vec<u8> {
    let rules: Vec<_> = (0..n)
        .map(|i| {
            let principal = match i % 3 {
                0 => json!(format!("spiffe://phi-guard.test/ns/ns{i}/sa/svc{i}")),
                1 => json!({"prefix": format!("spiffe://phi-guard.test/ns/ns{i}/")}),
                _ => json!(format!("spiffe://*/ns/ns{i}/sa/*")),
            };
            json!({
                "name": format!("rule-{i}"),
                "action": if i % 10 == 5 { "deny" } else { "allow" },
                "principals": [principal],
                "roles": ["nurse", format!("role{i}")],
                "methods": [format!("health.v1.PatientService/Method{i}"), "health.v1.Other/*"],
            })
        })
        .collect();
    let doc = json!({"version": "bench", "role_map": {"rn": "nurse"}, "rules": rules});
    doc.to_string().into_bytes()
}

fn bench(c: &mut Criterion) {
    for n in [10usize, 200] {
        let json = policy_json(n);
        let policy = Policy::parse(&json).expect("generated policy parses");
        let last = n - 1;
        // Pick the SAN by the last rule's principal kind so the request matches that rule.
        let san = match last % 3 {
            0 => format!("spiffe://phi-guard.test/ns/ns{last}/sa/svc{last}"),
            1 => format!("spiffe://phi-guard.test/ns/ns{last}/sa/x"),
            _ => format!("spiffe://other.test/ns/ns{last}/sa/x"),
        };
        let peer = Peer::from_attributes(Some(&[1]), Some(&san), None);
        let method = GrpcMethod::from_path(&format!("/health.v1.PatientService/Method{last}"))
            .expect("valid method");
        let identity = Identity {
            roles: vec!["rn".into()],
            ..Default::default()
        };
        let req = Request {
            peer: &peer,
            identity: Some(&identity),
            method: Some(&method),
            headers: &[],
        };
        assert_eq!(evaluate(&policy, &req).verdict, Verdict::Allow);
        c.bench_function(&format!("evaluate/{n}_rules/last_rule_allows"), |b| {
            b.iter(|| evaluate(std::hint::black_box(&policy), std::hint::black_box(&req)))
        });
        let miss = GrpcMethod::from_path("/health.v1.PatientService/Nope").expect("valid method");
        let req_miss = Request {
            method: Some(&miss),
            ..req
        };
        c.bench_function(&format!("evaluate/{n}_rules/default_deny"), |b| {
            b.iter(|| {
                evaluate(
                    std::hint::black_box(&policy),
                    std::hint::black_box(&req_miss),
                )
            })
        });
        c.bench_function(&format!("parse_and_compile/{n}_rules"), |b| {
            b.iter(|| Policy::parse(std::hint::black_box(&json)).map(|p| p.rules.len()))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
