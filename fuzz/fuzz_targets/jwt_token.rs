//! The token parser and the whole verification path on hostile tokens: an engine configured
//! with every key of the PyJWT fixtures (all supported algorithms) and certificate binding.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use phi_guard_common::GrpcMethod;
use phi_guard_jwt::{Config, Engine, Outcome, Request};
use std::sync::Mutex;

const FIXTURES: &str = include_str!("../../tests/jose/fixtures.json");

fn engine() -> &'static Mutex<Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let fixtures: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
        let config = serde_json::json!({
            "providers": [{
                "name": "fixtures",
                "issuer": fixtures["issuer"],
                "audiences": [fixtures["audience"]],
                "algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                               "ES256", "ES384", "EdDSA"],
                "jwks": {"inline": fixtures["jwks"]},
                "max_lifetime_s": 7200
            }],
            "rules": [{"match": "*", "requires": {"provider": "fixtures"}}]
        });
        let config = Config::parse(config.to_string().as_bytes(), &|_| None).unwrap();
        Mutex::new(Engine::new(config))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = phi_guard_jwt::token::parse(text, 8192);

    let method = GrpcMethod::from_path("/health.v1.PatientService/GetPatient").unwrap();
    let header = |name: &str| (name == "authorization").then(|| format!("Bearer {text}"));
    let request = Request {
        method: Some(&method),
        header: &header,
        peer_cert_sha256_hex: Some("00ff"),
    };
    let now = 1_767_227_400;
    let outcome = engine().lock().unwrap().authenticate(&request, now);
    // Arbitrary bytes must never verify: only a fixture token does, with at most the
    // whitespace RFC 6750 allows after "Bearer" (1*SP) and HTTP trims from a header value.
    if let Outcome::Verified { .. } = outcome {
        let text = text.trim_matches(|c| c == ' ' || c == '\t');
        let fixtures: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
        let known = fixtures["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["token"].as_str() == Some(text));
        assert!(known, "an unknown token verified");
    }
});
