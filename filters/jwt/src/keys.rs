//! Algorithms, verification keys and JWK sets.
//!
//! A key is bound to exactly one algorithm when it is loaded, so the token's `alg` can only
//! pick among keys the operator allowed: an RSA key never verifies an HS256 token (the classic
//! alg-confusion attack, HMAC keyed with the RSA public key bytes), an EC P-256 key only
//! verifies ES256. The crypto is jwt-simple's (pure Rust, builds for wasm32).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::*;
use serde_json::{Map, Value};

use crate::json::{self, JsonError};

/// The signature algorithms this filter verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
}

impl Alg {
    pub const ALL: [Alg; 10] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
        Alg::HS256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
        }
    }

    /// The name in a config file or a JWK's `alg`.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The name in a token header: also accepts `Ed25519`, the fully specified name
    /// (RFC 9864) some issuers now emit for EdDSA over Ed25519.
    pub fn from_header(name: &str) -> Option<Alg> {
        match name {
            "Ed25519" => Some(Alg::EdDSA),
            other => Alg::from_name(other),
        }
    }

    fn is_rsa(self) -> bool {
        matches!(
            self,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
        )
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the signature step refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature does not verify.
    Invalid,
    /// The signature verified but jwt-simple could not read the claims it checks itself.
    ClaimsUnreadable,
}

/// One key bound to one algorithm.
#[derive(Clone)]
pub enum VerifyKey {
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    ES256(ES256PublicKey),
    ES384(ES384PublicKey),
    EdDSA(Ed25519PublicKey),
    HS256(HS256Key),
}

impl fmt::Debug for VerifyKey {
    // Key material stays out of debug output; the HS256 key is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyKey({})", self.alg())
    }
}

/// jwt-simple also checks claims; the filter checks them itself against the host clock with
/// specific reasons, so jwt-simple's own checks are switched off: time frozen at 0 with no
/// tolerance (`exp >= 0` always holds), future tokens accepted, no size limits (the filter
/// enforces `max_token_bytes` before parsing). It never reads the VM clock this way.
fn signature_only_options() -> VerificationOptions {
    VerificationOptions {
        accept_future: true,
        time_tolerance: Some(Duration::from_secs(0)),
        artificial_time: Some(UnixTimeStamp::from_secs(0)),
        max_token_length: None,
        max_header_length: Some(usize::MAX),
        ..Default::default()
    }
}

impl VerifyKey {
    pub fn alg(&self) -> Alg {
        match self {
            VerifyKey::RS256(_) => Alg::RS256,
            VerifyKey::RS384(_) => Alg::RS384,
            VerifyKey::RS512(_) => Alg::RS512,
            VerifyKey::PS256(_) => Alg::PS256,
            VerifyKey::PS384(_) => Alg::PS384,
            VerifyKey::PS512(_) => Alg::PS512,
            VerifyKey::ES256(_) => Alg::ES256,
            VerifyKey::ES384(_) => Alg::ES384,
            VerifyKey::EdDSA(_) => Alg::EdDSA,
            VerifyKey::HS256(_) => Alg::HS256,
        }
    }

    pub fn hs256(secret: &[u8]) -> Self {
        VerifyKey::HS256(HS256Key::from_bytes(secret))
    }

    /// Verifies the compact token's signature. The caller has already parsed the token
    /// strictly, so whatever jwt-simple refuses before the signature is a signature failure.
    pub fn verify_signature(&self, token: &str) -> Result<(), SignatureError> {
        let options = Some(signature_only_options());
        let result = match self {
            VerifyKey::RS256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            VerifyKey::RS384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            VerifyKey::RS512(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            VerifyKey::PS256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            VerifyKey::PS384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            VerifyKey::PS512(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            VerifyKey::ES256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            VerifyKey::ES384(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            VerifyKey::EdDSA(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
            VerifyKey::HS256(k) => k.verify_token::<NoCustomClaims>(token, options).map(drop),
        };
        result.map_err(|e| {
            // Claims are deserialised only after the signature checked out.
            if e.downcast_ref::<serde_json::Error>().is_some() {
                SignatureError::ClaimsUnreadable
            } else {
                SignatureError::Invalid
            }
        })
    }

    /// Builds the key for `alg` from a minimal public JWK document; `None` if the JWK does not
    /// describe a valid public key of the type `alg` needs.
    fn from_jwk(alg: Alg, jwk: &str) -> Option<Self> {
        let key = match alg {
            Alg::RS256 => VerifyKey::RS256(RS256PublicKey::from_jwk(jwk).ok()?),
            Alg::RS384 => VerifyKey::RS384(RS384PublicKey::from_jwk(jwk).ok()?),
            Alg::RS512 => VerifyKey::RS512(RS512PublicKey::from_jwk(jwk).ok()?),
            Alg::PS256 => VerifyKey::PS256(PS256PublicKey::from_jwk(jwk).ok()?),
            Alg::PS384 => VerifyKey::PS384(PS384PublicKey::from_jwk(jwk).ok()?),
            Alg::PS512 => VerifyKey::PS512(PS512PublicKey::from_jwk(jwk).ok()?),
            Alg::ES256 => VerifyKey::ES256(ES256PublicKey::from_jwk(jwk).ok()?),
            Alg::ES384 => VerifyKey::ES384(ES384PublicKey::from_jwk(jwk).ok()?),
            Alg::EdDSA => VerifyKey::EdDSA(Ed25519PublicKey::from_jwk(jwk).ok()?),
            // Symmetric keys never come from a JWKS: a published HMAC key is no key at all.
            Alg::HS256 => return None,
        };
        Some(key)
    }
}

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

/// RSA moduli below 2048 bits are refused (NIST SP 800-131A).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Members copied into the minimal JWK handed to jwt-simple. Everything else (x5c chains,
/// vendor extensions) is dropped: it plays no part in verification and would only count
/// against jwt-simple's JWK size limit.
const JWK_MEMBERS: [&str; 9] = ["kty", "crv", "alg", "use", "key_ops", "n", "e", "x", "y"];

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
    if candidates.is_empty() {
        return None;
    }
    if kty == "RSA" {
        let n = URL_SAFE_NO_PAD.decode(jwk.get("n")?.as_str()?).ok()?;
        let significant = n.iter().skip_while(|b| **b == 0).count();
        if significant < MIN_RSA_MODULUS_BYTES {
            return None;
        }
    }
    let minimal: Map<String, Value> = JWK_MEMBERS
        .iter()
        .filter_map(|name| jwk.get(*name).map(|v| ((*name).to_string(), v.clone())))
        .collect();
    // jwt-simple checks `use`, `key_ops` and private members; a key it refuses is skipped.
    let minimal = serde_json::to_string(&minimal).ok()?;
    let keys: Vec<VerifyKey> = candidates
        .into_iter()
        .filter_map(|alg| VerifyKey::from_jwk(alg, &minimal))
        .collect();
    if keys.is_empty() {
        return None;
    }
    Some(Jwk { kid, keys })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use crate::testkit;

    #[test]
    fn header_names_map_to_algorithms() {
        assert_eq!(Alg::from_header("Ed25519"), Some(Alg::EdDSA));
        assert_eq!(Alg::from_header("none"), None);
        assert_eq!(Alg::from_name("Ed25519"), None);
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
        }
    }

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
}
