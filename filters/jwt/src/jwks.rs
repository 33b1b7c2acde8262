//! JWK sets (RFC 7517, key parameters of RFC 7518 §6): a JWKS document becomes a [`KeySet`]
//! of verification keys, and a token's `kid` and `alg` select one of them.
//!
//! A key is bound to exactly one algorithm when it is loaded, so the token's `alg` can only
//! pick among keys the operator allowed: an RSA key never verifies an HS256 token (the classic
//! alg-confusion attack, HMAC keyed with the RSA public key bytes), an EC P-256 key only
//! verifies ES256. Keys are built once, when the JWK is loaded (for RSA that includes the
//! Montgomery parameters of the modulus); verifying with them is [`crate::verify`]'s job.

use std::fmt;
use std::ops::RangeInclusive;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::BoxedUint;
use serde_json::{Map, Value};

use crate::alg::Alg;
use crate::json::{self, JsonError};
use crate::verify::VerifyKey;

/// One JWK from a key set, loaded for every allowed algorithm it can serve.
#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: Option<String>,
    pub keys: Vec<VerifyKey>,
}

impl Jwk {
    fn serving(&self, alg: Alg) -> Option<&VerifyKey> {
        self.keys.iter().find(|k| k.alg() == alg)
    }
}

/// Why a JWKS document was refused as a whole. A refused document never replaces a good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksError {
    TooLarge,
    InvalidJson,
    DuplicateMember,
    /// No `keys` array.
    NoKeysArray,
    /// `keys` holds no key usable with the provider's algorithms.
    NoUsableKeys,
}

impl JwksError {
    pub fn code(self) -> &'static str {
        match self {
            JwksError::TooLarge => "too_large",
            JwksError::InvalidJson => "invalid_json",
            JwksError::DuplicateMember => "duplicate_member",
            JwksError::NoKeysArray => "no_keys_array",
            JwksError::NoUsableKeys => "no_usable_keys",
        }
    }
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Largest JWKS document accepted. Real key sets are a few KiB; this bounds parse work and
/// memory if the endpoint misbehaves.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// RSA modulus sizes accepted: below 2048 bits is refused (NIST SP 800-131A); above 4096 bits
/// only costs verification time (and no mainstream issuer uses such keys).
const RSA_MODULUS_BITS: RangeInclusive<usize> = 2048..=4096;

/// The only RSA public exponent accepted, 65537, in its one canonical JWK spelling.
const RSA_EXPONENT_B64: &str = "AQAB";

/// Members that carry key material. A public key of type `kty` may carry only its own public
/// members (`kty_members`); anything else (private members, another type's material) means the
/// JWK is not a plain public key and it is skipped.
const MATERIAL_MEMBERS: [&str; 15] = [
    "crv", "x", "y", "d", "n", "e", "p", "q", "dp", "dq", "qi", "oth", "k", "pub", "priv",
];

fn kty_members(kty: &str) -> &'static [&'static str] {
    match kty {
        "RSA" => &["n", "e"],
        "EC" => &["crv", "x", "y"],
        "OKP" => &["crv", "x"],
        _ => &[],
    }
}

/// A parsed JWK set.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    jwks: Vec<Jwk>,
}

/// How key selection failed, before any signature work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectError {
    /// No key has the token's `kid`, or (without `kid`) no key serves the algorithm.
    UnknownKid,
    /// No `kid` and several keys serve the algorithm.
    Ambiguous,
    /// A key has the `kid`, but none of the keys with it serves the algorithm.
    AlgMismatch,
}

impl KeySet {
    /// Parses a JWKS document, keeping each key for those of `allowed` it can serve. Keys of
    /// unknown types, for encryption, with private members, or otherwise unusable are skipped
    /// (issuers publish such keys alongside signing keys); a set with no usable key is refused.
    pub fn parse(bytes: &[u8], allowed: &[Alg]) -> Result<KeySet, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let doc = json::parse_object(bytes).map_err(|e| match e {
            JsonError::Duplicate => JwksError::DuplicateMember,
            JsonError::Invalid => JwksError::InvalidJson,
        })?;
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(JwksError::NoKeysArray);
        };
        let jwks: Vec<Jwk> = entries
            .iter()
            .filter_map(|entry| entry.as_object())
            .filter_map(|jwk| load_jwk(jwk, allowed))
            .collect();
        if jwks.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(KeySet { jwks })
    }

    /// A key set holding keys built elsewhere (tests, HS256 secret).
    pub fn from_jwks(jwks: Vec<Jwk>) -> KeySet {
        KeySet { jwks }
    }

    pub fn len(&self) -> usize {
        self.jwks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jwks.is_empty()
    }

    /// Picks the key for a token. With a `kid`, only keys carrying that `kid` are considered.
    /// Without one, a key is used only if it is the single key serving `alg`: guessing among
    /// several would make verification depend on key order.
    pub fn select(&self, kid: Option<&str>, alg: Alg) -> Result<&VerifyKey, SelectError> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .jwks
                    .iter()
                    .filter(|j| j.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Err(SelectError::UnknownKid);
                }
                named
                    .find_map(|jwk| jwk.serving(alg))
                    .ok_or(SelectError::AlgMismatch)
            }
            None => {
                let mut candidates = self.jwks.iter().filter_map(|jwk| jwk.serving(alg));
                let first = candidates.next().ok_or(SelectError::UnknownKid)?;
                if candidates.next().is_some() {
                    return Err(SelectError::Ambiguous);
                }
                Ok(first)
            }
        }
    }
}

fn load_jwk(jwk: &Map<String, Value>, allowed: &[Alg]) -> Option<Jwk> {
    let kty = jwk.get("kty")?.as_str()?;
    let crv = jwk.get("crv").and_then(Value::as_str);
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return None,
    };
    let jwk_alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(name)) => Some(Alg::from_name(name)?),
        Some(_) => return None,
    };
    let candidates: Vec<Alg> = allowed
        .iter()
        .copied()
        .filter(|alg| jwk_alg.is_none_or(|a| a == *alg))
        .filter(|alg| match (kty, crv) {
            ("RSA", None) => alg.is_rsa(),
            ("EC", Some("P-256")) => *alg == Alg::ES256,
            ("EC", Some("P-384")) => *alg == Alg::ES384,
            ("OKP", Some("Ed25519")) => *alg == Alg::EdDSA,
            _ => false,
        })
        .collect();
    if candidates.is_empty() || !is_public_signature_key(jwk, kty) {
        return None;
    }
    let keys: Vec<VerifyKey> = match (kty, crv) {
        ("RSA", _) => {
            // Built once (modulus checks and Montgomery parameters), shared by every RSA
            // algorithm the key serves.
            let key = rsa_public_key(jwk)?;
            candidates
                .into_iter()
                .filter_map(|alg| VerifyKey::rsa(alg, key.clone()))
                .collect()
        }
        ("EC", Some("P-256")) => {
            let point = ec_point(jwk, 32)?;
            vec![VerifyKey::ES256(
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).ok()?,
            )]
        }
        ("EC", Some("P-384")) => {
            let point = ec_point(jwk, 48)?;
            vec![VerifyKey::ES384(
                p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).ok()?,
            )]
        }
        ("OKP", Some("Ed25519")) => {
            let x = fixed(jwk, "x", ed25519_compact::PublicKey::BYTES)?;
            let key = ed25519_compact::PublicKey::from_slice(&x).ok()?;
            // A non-canonical or small-order point can never verify anything.
            key.validate().ok()?;
            vec![VerifyKey::EdDSA(key)]
        }
        _ => return None,
    };
    if keys.is_empty() {
        return None;
    }
    Some(Jwk { kid, keys })
}

/// The JWK is a public key meant for verifying signatures: no key material beyond its type's
/// public members, `use` (if present) `sig`, `key_ops` (if present) only `verify`, once.
fn is_public_signature_key(jwk: &Map<String, Value>, kty: &str) -> bool {
    let own = kty_members(kty);
    if MATERIAL_MEMBERS
        .iter()
        .any(|name| jwk.contains_key(*name) && !own.contains(name))
    {
        return false;
    }
    match jwk.get("use") {
        None => {}
        Some(Value::String(key_use)) if key_use == "sig" => {}
        Some(_) => return false,
    }
    match jwk.get("key_ops") {
        None => true,
        Some(Value::Array(ops)) => {
            ops.iter().all(|op| op.as_str() == Some("verify")) && ops.len() <= 1
        }
        Some(_) => false,
    }
}

/// A base64url member (canonical, unpadded) decoding to exactly `len` bytes.
fn fixed(jwk: &Map<String, Value>, name: &str, len: usize) -> Option<Vec<u8>> {
    let bytes = URL_SAFE_NO_PAD.decode(jwk.get(name)?.as_str()?).ok()?;
    (bytes.len() == len).then_some(bytes)
}

/// The uncompressed SEC1 point `04 || x || y` of an EC JWK whose coordinates are each
/// `size` bytes (RFC 7518 §6.2.1.2: full length, leading zeros kept).
fn ec_point(jwk: &Map<String, Value>, size: usize) -> Option<Vec<u8>> {
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend(fixed(jwk, "x", size)?);
    point.extend(fixed(jwk, "y", size)?);
    Some(point)
}

/// The RSA public key of a JWK: `e` exactly `AQAB` (65537), `n` 2048 to 4096 bits, odd.
/// `n` may carry one leading zero byte before a high bit (Java's `BigInteger` sign byte, which
/// some issuers publish); any other leading zero is refused.
fn rsa_public_key(jwk: &Map<String, Value>) -> Option<rsa::PublicKey> {
    if jwk.get("e")?.as_str()? != RSA_EXPONENT_B64 {
        return None;
    }
    let n = URL_SAFE_NO_PAD.decode(jwk.get("n")?.as_str()?).ok()?;
    let n = match n.as_slice() {
        [0, top, ..] if top & 0x80 != 0 => &n[1..],
        n => n,
    };
    if n.first().is_none_or(|top| *top == 0) || n.len() > RSA_MODULUS_BITS.end() / 8 {
        return None;
    }
    let n = BoxedUint::from_be_slice_vartime(n);
    let e = BoxedUint::from(65_537u32);
    // Checks the size range, that n is odd and that e is in range.
    rsa::PublicKey::new_with_size_limits(n, e, RSA_MODULUS_BITS).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use crate::testkit;

    #[test]
    fn rsa_key_is_loaded_for_each_allowed_rsa_alg_only() {
        let set = KeySet::parse(
            testkit::fixture_jwks().as_bytes(),
            &[Alg::RS256, Alg::PS256, Alg::ES256],
        )
        .unwrap();
        let rsa = set.select(Some("rs256"), Alg::RS256).unwrap();
        assert_eq!(rsa.alg(), Alg::RS256);
        // The fixture's RSA JWKs carry "alg", which pins them to one algorithm.
        assert_eq!(
            set.select(Some("rs256"), Alg::PS256).unwrap_err(),
            SelectError::AlgMismatch
        );
        assert_eq!(
            set.select(Some("rs256"), Alg::HS256).unwrap_err(),
            SelectError::AlgMismatch
        );
    }

    #[test]
    fn selection_without_kid_needs_a_single_candidate() {
        let (_, jwks) = testkit::ed25519_key(None);
        let set = KeySet::parse(jwks.as_bytes(), &[Alg::EdDSA]).unwrap();
        assert_eq!(set.select(None, Alg::EdDSA).unwrap().alg(), Alg::EdDSA);
        assert_eq!(
            set.select(None, Alg::ES256).unwrap_err(),
            SelectError::UnknownKid
        );
        let two = testkit::ed25519_jwks_with_two_keys();
        let set = KeySet::parse(two.as_bytes(), &[Alg::EdDSA]).unwrap();
        assert_eq!(
            set.select(None, Alg::EdDSA).unwrap_err(),
            SelectError::Ambiguous
        );
        assert!(set.select(Some("k2"), Alg::EdDSA).is_ok());
        assert_eq!(
            set.select(Some("k9"), Alg::EdDSA).unwrap_err(),
            SelectError::UnknownKid
        );
    }

    #[test]
    fn garbage_documents_are_refused() {
        let all = &Alg::ALL;
        assert_eq!(KeySet::parse(b"", all).unwrap_err(), JwksError::InvalidJson);
        assert_eq!(
            KeySet::parse(b"[]", all).unwrap_err(),
            JwksError::InvalidJson
        );
        assert_eq!(
            KeySet::parse(b"{}", all).unwrap_err(),
            JwksError::NoKeysArray
        );
        assert_eq!(
            KeySet::parse(br#"{"keys":[],"keys":[]}"#, all).unwrap_err(),
            JwksError::DuplicateMember
        );
        assert_eq!(
            KeySet::parse(
                br#"{"keys":[1,{"kty":"oct","k":"AAAA"},{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
                all
            )
            .unwrap_err(),
            JwksError::NoUsableKeys,
            "numbers, symmetric keys and tiny RSA moduli are skipped"
        );
        let huge = vec![b' '; MAX_JWKS_BYTES + 1];
        assert_eq!(KeySet::parse(&huge, all).unwrap_err(), JwksError::TooLarge);
    }

    #[test]
    fn keys_for_other_uses_or_algorithms_are_skipped() {
        let (_, jwks) = testkit::ed25519_key(Some("k1"));
        let enc = jwks.replace("\"kty\"", "\"use\":\"enc\",\"kty\"");
        assert_eq!(
            KeySet::parse(enc.as_bytes(), &[Alg::EdDSA]).unwrap_err(),
            JwksError::NoUsableKeys
        );
        assert_eq!(
            KeySet::parse(jwks.as_bytes(), &[Alg::ES256]).unwrap_err(),
            JwksError::NoUsableKeys
        );
    }

    /// The fixture JWK with `kid`, as a JSON object to edit.
    fn fixture_jwk(kid: &str) -> Map<String, Value> {
        testkit::fixtures()["jwks"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap()
            .as_object()
            .unwrap()
            .clone()
    }

    fn with(mut jwk: Map<String, Value>, name: &str, value: Value) -> Map<String, Value> {
        jwk.insert(name.to_string(), value);
        jwk
    }

    fn loads(jwk: &Map<String, Value>) -> bool {
        let doc = serde_json::json!({ "keys": [jwk] }).to_string();
        KeySet::parse(doc.as_bytes(), &Alg::ALL).is_ok()
    }

    fn decode(b64: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(b64).unwrap()
    }

    #[test]
    fn rsa_keys_need_exponent_65537_and_a_2048_to_4096_bit_odd_modulus() {
        let rsa = fixture_jwk("rs256");
        assert!(loads(&rsa));
        for e in ["Aw", "AQAD", "AAEAAQ", "AQAB=", ""] {
            assert!(!loads(&with(rsa.clone(), "e", e.into())), "e={e}");
        }
        assert!(!loads(&with(rsa.clone(), "e", 65537.into())));

        let n = decode(rsa["n"].as_str().unwrap());
        assert!(n[0] & 0x80 != 0, "the fixture modulus has its top bit set");
        let n_with = |bytes: &[u8]| with(rsa.clone(), "n", testkit::b64(bytes).into());
        // Java's BigInteger sign byte before a high bit is accepted; other leading zeros not.
        assert!(loads(&n_with(&[&[0u8][..], &n].concat())));
        assert!(!loads(&n_with(&[&[0u8, 0][..], &n].concat())));
        let mut small = n.clone();
        small[0] = 0x01;
        assert!(!loads(&n_with(&small[1..])), "2040 bits");
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(!loads(&n_with(&even)));
        let mut top = vec![0xffu8; 512];
        assert!(loads(&n_with(&top)), "4096 bits");
        top.insert(0, 0x01);
        assert!(!loads(&n_with(&top)), "4097 bits");
    }

    #[test]
    fn only_plain_public_signature_keys_are_loaded() {
        for kid in ["rs256", "es256", "es384", "eddsa"] {
            let jwk = fixture_jwk(kid);
            assert!(loads(&jwk), "{kid}");
            // Private members, or another key type's material: not a public key.
            for member in ["d", "p", "k", "priv", "n", "x", "y"] {
                if jwk.contains_key(member) {
                    continue;
                }
                assert!(
                    !loads(&with(jwk.clone(), member, "AQAB".into())),
                    "{kid} {member}"
                );
            }
            assert!(!loads(&with(jwk.clone(), "use", "enc".into())), "{kid}");
            assert!(
                !loads(&with(jwk.clone(), "use", json_list(&["sig"]))),
                "{kid}"
            );
            assert!(
                loads(&with(jwk.clone(), "key_ops", json_list(&[]))),
                "{kid}"
            );
            for ops in [&["sign"][..], &["verify", "verify"], &["verify", "encrypt"]] {
                assert!(
                    !loads(&with(jwk.clone(), "key_ops", json_list(ops))),
                    "{kid} {ops:?}"
                );
            }
            assert!(
                !loads(&with(jwk.clone(), "key_ops", "verify".into())),
                "{kid}"
            );
        }
    }

    fn json_list(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::from(*s)).collect())
    }

    #[test]
    fn curve_points_are_checked_when_loaded() {
        for (kid, size) in [("es256", 32), ("es384", 48)] {
            let jwk = fixture_jwk(kid);
            let x = decode(jwk["x"].as_str().unwrap());
            assert_eq!(x.len(), size);
            // Coordinates must be full length: a stripped leading byte is refused.
            assert!(!loads(&with(
                jwk.clone(),
                "x",
                testkit::b64(&x[1..]).into()
            )));
            assert!(!loads(&with(
                jwk.clone(),
                "x",
                testkit::b64([&x[..], &[0]].concat()).into()
            )));
            // Off the curve.
            let mut off = x.clone();
            off[size - 1] ^= 1;
            assert!(
                !loads(&with(jwk.clone(), "x", testkit::b64(&off).into())),
                "{kid}"
            );
            // P-256 coordinates under P-384 and the other way round.
            let other = if kid == "es256" { "P-384" } else { "P-256" };
            assert!(!loads(&with(jwk.clone(), "crv", other.into())), "{kid}");
        }
        let ed = fixture_jwk("eddsa");
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(!loads(&with(
            ed.clone(),
            "x",
            testkit::b64(identity).into()
        )));
        assert!(!loads(&with(ed, "x", testkit::b64([0u8; 31]).into())));
    }
}
