//! Test helpers: fixture access, deterministic keys and a raw token signer that can produce
//! any header and payload (duplicate members, wrong types), which no JWT library will emit.
//! No system clock, no randomness: the same tests run under wasm-bindgen-test.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_compact::{KeyPair, Seed};
use serde_json::Value;

/// Tokens and JWKS minted by PyJWT (tests/jose/mint.py).
pub const FIXTURES: &str = include_str!("../../../tests/jose/fixtures.json");
pub const README: &str = include_str!("../README.md");

/// A test HS256 secret (at least 32 bytes).
pub const HS256_SECRET: &str = "test-only-hs256-secret-0123456789abcdef";

pub fn b64(s: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// A token with an empty signature, for parser tests.
pub fn unsigned(header: &str, payload: &str) -> String {
    format!("{}.{}.", b64(header), b64(payload))
}

pub fn fixtures() -> Value {
    serde_json::from_str(FIXTURES).expect("fixtures.json is JSON")
}

/// The PyJWT fixture token signed with `alg`.
pub fn fixture_token(alg: &str) -> String {
    let f = fixtures();
    let entry = f["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["alg"] == alg)
        .unwrap();
    entry["token"].as_str().unwrap().to_string()
}

pub fn fixture_jwks() -> String {
    fixtures()["jwks"].to_string()
}

/// The complete configuration example in README.md (the first json block after the marker),
/// so the documented example is tested.
pub fn readme_config_json() -> String {
    let start = README.find("<!-- config-example -->").expect("marker");
    let rest = &README[start..];
    let open = rest.find("```json\n").expect("json block") + "```json\n".len();
    let close = rest[open..].find("```").expect("end of block");
    rest[open..open + close].to_string()
}

fn seed(kid: Option<&str>) -> Seed {
    let mut bytes = [7u8; 32];
    for (b, k) in bytes.iter_mut().zip(kid.unwrap_or("").bytes()) {
        *b ^= k;
    }
    Seed::new(bytes)
}

/// A deterministic Ed25519 key pair (derived from `kid`) and a JWKS holding its public key.
pub fn ed25519_key(kid: Option<&str>) -> (KeyPair, String) {
    let pair = KeyPair::from_seed(seed(kid));
    let jwks = format!("{{\"keys\":[{}]}}", ed25519_jwk(&pair, kid));
    (pair, jwks)
}

pub fn ed25519_jwk(pair: &KeyPair, kid: Option<&str>) -> String {
    let kid = kid.map(|k| format!(",\"kid\":\"{k}\"")).unwrap_or_default();
    format!(
        "{{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"{}\"{kid}}}",
        b64(pair.pk.as_ref())
    )
}

pub fn ed25519_jwks_with_two_keys() -> String {
    let one = KeyPair::from_seed(seed(Some("k1")));
    let two = KeyPair::from_seed(seed(Some("k2")));
    format!(
        "{{\"keys\":[{},{}]}}",
        ed25519_jwk(&one, Some("k1")),
        ed25519_jwk(&two, Some("k2"))
    )
}

/// Signs `header`.`payload` (raw JSON text) with Ed25519.
pub fn sign_eddsa(pair: &KeyPair, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let signature = pair.sk.sign(input.as_bytes(), None);
    format!("{input}.{}", b64(signature.as_ref()))
}

/// Signs `header`.`payload` with HMAC-SHA256 under `key`.
pub fn sign_hs256(key: &[u8], header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), key);
    format!("{input}.{}", b64(mac))
}

/// One provider `idp` (issuer `https://idp.example`, audience `phi-api`, EdDSA, inline JWKS
/// with key `k1`) and one rule `svc.v1.S/*`. `extra` is spliced into the provider object.
/// Tests edit the text with `replace`, so keep the member spellings stable.
pub fn minimal_config(extra: &str) -> String {
    let (pair, _) = ed25519_key(Some("k1"));
    format!(
        concat!(
            "{{\"providers\":[{{\"name\":\"idp\",\"issuer\":\"https://idp.example\",",
            "\"audiences\":[\"phi-api\"],\"algorithms\":[\"EdDSA\"],\"clock_skew_s\":60,",
            "\"forward\":false,\"claims\":{{}},{extra}",
            "\"jwks\":{{\"inline\":{{\"keys\":[{jwk}]}}}}}}],",
            "\"rules\":[{{\"match\":\"svc.v1.S/*\",\"requires\":{{\"provider\":\"idp\"}}}}],",
            "\"max_token_bytes\":8192}}"
        ),
        extra = extra,
        jwk = ed25519_jwk(&pair, Some("k1")),
    )
}

/// One HS256-only provider `hs` whose secret is in `JWT_SECRET`.
pub fn hs256_config() -> String {
    concat!(
        "{\"providers\":[{\"name\":\"hs\",\"issuer\":\"https://hs.example\",",
        "\"audiences\":[\"phi-api\"],\"algorithms\":[\"HS256\"],\"hs256_secret_env\":\"JWT_SECRET\"}],",
        "\"rules\":[{\"match\":\"*\",\"requires\":{\"provider\":\"hs\"}}]}"
    )
    .to_string()
}
