//! Cost of one authentication decision: a full verification per algorithm (PyJWT-minted
//! fixture tokens, cache off) and a cache hit. Native numbers; under V8 expect a few times
//! slower.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use phi_guard_common::GrpcMethod;
use phi_guard_jwt::{Config, Engine, Outcome, Request};
use serde_json::{json, Value};

const FIXTURES: &str = include_str!("../../../tests/jose/fixtures.json");

fn engine(fixtures: &Value, cache_entries: usize) -> Engine {
    let config = json!({
        "providers": [
            {"name": "idp", "issuer": fixtures["issuer"], "audiences": [fixtures["audience"]],
             "algorithms": ["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA"],
             "jwks": {"inline": fixtures["jwks"]}},
            {"name": "hs", "issuer": fixtures["issuer"], "audiences": [fixtures["audience"]],
             "algorithms": ["HS256"], "hs256_secret_env": "SECRET"}
        ],
        "rules": [
            {"match": "bench.v1.B/*", "requires": {"provider": "idp"}},
            {"match": "bench.v1.B/Hs", "requires": {"provider": "hs"}}
        ],
        "cache": {"max_entries": cache_entries}
    });
    let secret = fixtures["hs256_secret"].as_str().map(str::to_string);
    let env = move |_: &str| secret.clone();
    Engine::new(Config::parse(config.to_string().as_bytes(), &env).expect("bench config"))
}

fn authenticate(engine: &mut Engine, method: &GrpcMethod, bearer: &str, now: u64) -> Outcome {
    let header = |name: &str| (name == "authorization").then(|| bearer.to_string());
    let request = Request {
        method: Some(method),
        header: &header,
        peer_cert_sha256_hex: None,
    };
    engine.authenticate(&request, now)
}

fn bench(c: &mut Criterion) {
    let fixtures: Value = serde_json::from_str(FIXTURES).expect("fixtures");
    let now = fixtures["verify_at"].as_u64().expect("verify_at");
    let idp_method = GrpcMethod::from_path("/bench.v1.B/Get").expect("method");
    let hs_method = GrpcMethod::from_path("/bench.v1.B/Hs").expect("method");
    let mut uncached = engine(&fixtures, 0);

    let mut group = c.benchmark_group("verify");
    for entry in fixtures["tokens"].as_array().expect("tokens") {
        let alg = entry["alg"].as_str().expect("alg");
        let bearer = format!("Bearer {}", entry["token"].as_str().expect("token"));
        let method = if alg == "HS256" {
            &hs_method
        } else {
            &idp_method
        };
        assert!(matches!(
            authenticate(&mut uncached, method, &bearer, now),
            Outcome::Verified {
                cache_hit: false,
                ..
            }
        ));
        group.bench_function(alg, |b| {
            b.iter(|| authenticate(&mut uncached, method, black_box(&bearer), now))
        });
    }
    group.finish();

    let mut cached = engine(&fixtures, 1024);
    let rs256 = fixtures["tokens"][0]["token"].as_str().expect("token");
    let bearer = format!("Bearer {rs256}");
    authenticate(&mut cached, &idp_method, &bearer, now);
    assert!(matches!(
        authenticate(&mut cached, &idp_method, &bearer, now),
        Outcome::Verified {
            cache_hit: true,
            ..
        }
    ));
    c.bench_function("cache_hit/RS256", |b| {
        b.iter(|| authenticate(&mut cached, &idp_method, black_box(&bearer), now))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
