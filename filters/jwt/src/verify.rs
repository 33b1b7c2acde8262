//! Verifying a parsed token for one provider: key, signature, registered claims, time,
//! claim mapping and certificate binding (delegated to [`crate::binding`]), in that order;
//! and the signature check itself ([`VerifyKey::verify_signature`]).
//!
//! Time is an argument (the host clock, read once per request by the shell); nothing here
//! reads a clock.

use std::fmt;

use phi_guard_common::{Identity, UnixSeconds};
use serde_json::{Map, Value};

use rsa::signature::{self, Verifier};
use rsa::{pkcs1v15, pss};
use sha2::{Sha256, Sha384, Sha512};

use crate::alg::Alg;
use crate::binding;
use crate::config::{ClaimMapping, Provider};
use crate::jwks::{KeySet, SelectError};
use crate::reason::Reason;
use crate::token::ParsedToken;

/// What a verified token proved, kept in the token cache so a cache hit can re-apply the
/// checks that depend on the request (time, client certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub provider: usize,
    pub identity: Identity,
    pub exp: UnixSeconds,
    pub nbf: Option<UnixSeconds>,
    pub iat: Option<UnixSeconds>,
    pub clock_skew_s: u64,
    /// `cnf.x5t#S256` of a certificate-bound token.
    pub bound_to: Option<String>,
    /// The token's `jti`, for replay protection.
    pub jti: Option<String>,
}

/// The keys a provider verifies with right now.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    Set(&'a KeySet),
    /// A remote key set that has not arrived yet: fail closed at once.
    Unavailable,
    /// No key set configured (HS256-only provider).
    None,
}

/// Verifies `token` for `provider` (index `provider_index`), at `now`, on a connection whose
/// client certificate has RFC 8705 thumbprint `peer_thumbprint`.
pub fn verify(
    token: &ParsedToken<'_>,
    provider_index: usize,
    provider: &Provider,
    keys: Keys<'_>,
    now: UnixSeconds,
    peer_thumbprint: Option<&str>,
) -> Result<Verified, Reason> {
    if !provider.algorithms.contains(&token.alg) {
        return Err(Reason::AlgNotAllowed);
    }
    // HS256 has a single configured secret and ignores `kid`; the asymmetric algorithms
    // only ever use keys from the provider's key set.
    let key = if token.alg == Alg::HS256 {
        provider.hs256_key.as_ref().ok_or(Reason::UnsupportedAlg)?
    } else {
        let set = match keys {
            Keys::Set(set) => set,
            Keys::Unavailable => return Err(Reason::JwksUnavailable),
            Keys::None => return Err(Reason::UnknownKid),
        };
        set.select(token.kid.as_deref(), token.alg)
            .map_err(|e| match e {
                SelectError::UnknownKid => Reason::UnknownKid,
                SelectError::Ambiguous => Reason::MissingKid,
                SelectError::AlgMismatch => Reason::KeyAlgMismatch,
            })?
    };
    key.verify_signature(token.signing_input.as_bytes(), &token.signature)
        .map_err(|e| match e {
            SignatureError::Invalid => Reason::BadSignature,
        })?;
    // Explicit typing (RFC 8725 §3.11): a token the issuer signed for another purpose (an
    // OIDC back-channel `logout+jwt`, a `secevent+jwt`) is not an access token here.
    check_typ(token.typ.as_deref(), provider)?;

    let claims = &token.claims;
    if claims.iss.as_deref() != Some(provider.issuer.as_str()) {
        return Err(Reason::WrongIssuer);
    }
    let subject = claims.sub.clone().ok_or(Reason::MissingSub)?;
    if !claims.aud.iter().any(|a| provider.audiences.contains(a)) {
        return Err(Reason::WrongAudience);
    }
    let exp = claims.exp.ok_or(Reason::MissingExp)?;
    check_time(exp, claims.nbf, claims.iat, provider.clock_skew_s, now)?;
    if let Some(max) = provider.max_lifetime_s {
        let iat = claims.iat.ok_or(Reason::MissingIat)?;
        let lifetime = exp.checked_sub(iat).ok_or(Reason::BadClaim)?;
        if lifetime > max {
            return Err(Reason::LifetimeTooLong);
        }
    }

    let mapped = map_claims(&claims.other, &provider.claims)?;

    let bound_to = binding::bound_to(&claims.cnf, provider.require_cert_binding)?;
    binding::check(bound_to.as_deref(), peer_thumbprint)?;

    Ok(Verified {
        provider: provider_index,
        identity: Identity {
            provider: provider.name.clone(),
            issuer: provider.issuer.clone(),
            subject,
            roles: mapped.roles,
            scopes: mapped.scopes,
            tenant: mapped.tenant,
            purpose_of_use: mapped.purpose_of_use,
            break_glass_reason: mapped.break_glass_reason,
            expires_at: exp,
            cert_bound: bound_to.is_some(),
        },
        exp,
        nbf: claims.nbf,
        iat: claims.iat,
        clock_skew_s: provider.clock_skew_s,
        bound_to,
        jti: claims.jti.clone(),
    })
}

/// `typ` (already normalised) against the provider's list; absent passes unless required.
fn check_typ(typ: Option<&str>, provider: &Provider) -> Result<(), Reason> {
    match typ {
        None if provider.typ_required => Err(Reason::BadTyp),
        None => Ok(()),
        Some(t) if provider.typ.iter().any(|allowed| allowed == t) => Ok(()),
        Some(_) => Err(Reason::BadTyp),
    }
}

/// The checks that depend on the request rather than the token alone, re-applied on every
/// cache hit: time and certificate binding.
pub fn recheck(
    verified: &Verified,
    now: UnixSeconds,
    peer_thumbprint: Option<&str>,
) -> Result<(), Reason> {
    check_time(
        verified.exp,
        verified.nbf,
        verified.iat,
        verified.clock_skew_s,
        now,
    )?;
    binding::check(verified.bound_to.as_deref(), peer_thumbprint)
}

/// `exp` is exclusive (RFC 7519 §4.1.4: reject "on or after"); every bound is widened by the
/// skew. Saturating arithmetic: absurd timestamps must not wrap into validity.
fn check_time(
    exp: UnixSeconds,
    nbf: Option<UnixSeconds>,
    iat: Option<UnixSeconds>,
    skew: u64,
    now: UnixSeconds,
) -> Result<(), Reason> {
    if now >= exp.saturating_add(skew) {
        return Err(Reason::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
        return Err(Reason::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
        return Err(Reason::IssuedInFuture);
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Mapped {
    roles: Vec<String>,
    scopes: Vec<String>,
    tenant: Option<String>,
    purpose_of_use: Option<String>,
    break_glass_reason: Option<String>,
}

/// The first claim of `names` that is present.
fn first<'a>(claims: &'a Map<String, Value>, names: &[String]) -> Option<&'a Value> {
    names.iter().find_map(|n| claims.get(n))
}

/// A list claim: an array of strings, or one string of space-separated values (the OAuth
/// `scope` form, RFC 8693 §4.2).
fn string_list(value: Option<&Value>) -> Result<Vec<String>, Reason> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.split_ascii_whitespace().map(str::to_string).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(Reason::BadClaim))
            .collect(),
        Some(_) => Err(Reason::BadClaim),
    }
}

fn single_string(value: Option<&Value>) -> Result<Option<String>, Reason> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reason::BadClaim),
    }
}

fn map_claims(claims: &Map<String, Value>, mapping: &ClaimMapping) -> Result<Mapped, Reason> {
    Ok(Mapped {
        roles: string_list(first(claims, &mapping.roles))?,
        scopes: string_list(first(claims, &mapping.scopes))?,
        tenant: single_string(first(claims, &mapping.tenant))?,
        purpose_of_use: single_string(first(claims, &mapping.purpose_of_use))?,
        break_glass_reason: single_string(first(claims, &mapping.break_glass_reason))?,
    })
}

// Signature verification (RFC 7515 §5.2, RFC 7518 §3): the key a token selected checks the
// JWS signature over `header.payload`. The crypto is RustCrypto's and ed25519-compact's (pure
// Rust, builds for wasm32), called only through their verify APIs: `rsa` (PKCS#1 v1.5 and
// PSS), `p256`/`p384` (ECDSA), `ed25519-compact` and `hmac-sha256`.

/// Why the signature step refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature does not verify (including a signature of the wrong length or encoding).
    Invalid,
}

/// The HS256 secret. Verification recomputes the MAC and compares in constant time.
#[derive(Clone)]
pub struct Hs256Secret(Vec<u8>);

/// One key bound to one algorithm.
#[derive(Clone)]
pub enum VerifyKey {
    RS256(pkcs1v15::VerifyingKey<Sha256>),
    RS384(pkcs1v15::VerifyingKey<Sha384>),
    RS512(pkcs1v15::VerifyingKey<Sha512>),
    PS256(pss::VerifyingKey<Sha256>),
    PS384(pss::VerifyingKey<Sha384>),
    PS512(pss::VerifyingKey<Sha512>),
    ES256(p256::ecdsa::VerifyingKey),
    ES384(p384::ecdsa::VerifyingKey),
    EdDSA(ed25519_compact::PublicKey),
    HS256(Hs256Secret),
}

impl fmt::Debug for VerifyKey {
    // Key material stays out of debug output; the HS256 key is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyKey({})", self.alg())
    }
}

/// Runs a `signature::Verifier` on a signature parsed from the token's bytes (parsing checks
/// the length where the scheme fixes one): any failure is [`SignatureError::Invalid`].
fn check<S, V: Verifier<S>>(
    key: &V,
    signing_input: &[u8],
    signature: Result<S, signature::Error>,
) -> Result<(), SignatureError> {
    let signature = signature.map_err(|_| SignatureError::Invalid)?;
    key.verify(signing_input, &signature)
        .map_err(|_| SignatureError::Invalid)
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
        VerifyKey::HS256(Hs256Secret(secret.to_vec()))
    }

    /// Verifies a JWS signature: `signing_input` is the token's `header.payload` (ASCII, as
    /// sent), `signature` the decoded third segment. The caller has parsed the token strictly
    /// and picked this key for the token's `alg`.
    ///
    /// Signature formats (RFC 7518): RSA signatures are exactly the modulus length (the `rsa`
    /// crate checks); ECDSA signatures are raw `r || s`, 64 bytes for ES256 and 96 for ES384
    /// (DER or any other length is refused); Ed25519 signatures are 64 bytes, HS256 tags 32.
    pub fn verify_signature(
        &self,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let msg = signing_input;
        match self {
            VerifyKey::RS256(k) => check(k, msg, pkcs1v15::Signature::try_from(signature)),
            VerifyKey::RS384(k) => check(k, msg, pkcs1v15::Signature::try_from(signature)),
            VerifyKey::RS512(k) => check(k, msg, pkcs1v15::Signature::try_from(signature)),
            VerifyKey::PS256(k) => check(k, msg, pss::Signature::try_from(signature)),
            VerifyKey::PS384(k) => check(k, msg, pss::Signature::try_from(signature)),
            VerifyKey::PS512(k) => check(k, msg, pss::Signature::try_from(signature)),
            // `from_slice` takes exactly 2 * 32 (2 * 48) bytes with r and s in [1, n-1].
            VerifyKey::ES256(k) => check(k, msg, p256::ecdsa::Signature::from_slice(signature)),
            VerifyKey::ES384(k) => check(k, msg, p384::ecdsa::Signature::from_slice(signature)),
            VerifyKey::EdDSA(k) => {
                let signature = ed25519_compact::Signature::from_slice(signature)
                    .map_err(|_| SignatureError::Invalid)?;
                k.verify(msg, &signature)
                    .map_err(|_| SignatureError::Invalid)
            }
            VerifyKey::HS256(Hs256Secret(secret)) => {
                let tag: &[u8; 32] = signature.try_into().map_err(|_| SignatureError::Invalid)?;
                // Constant-time comparison of the recomputed tag.
                if hmac_sha256::HMAC::verify(msg, secret, tag) {
                    Ok(())
                } else {
                    Err(SignatureError::Invalid)
                }
            }
        }
    }

    /// The key for RSA algorithm `alg` around an already built public key.
    pub(crate) fn rsa(alg: Alg, key: rsa::PublicKey) -> Option<Self> {
        Some(match alg {
            Alg::RS256 => VerifyKey::RS256(pkcs1v15::VerifyingKey::new(key)),
            Alg::RS384 => VerifyKey::RS384(pkcs1v15::VerifyingKey::new(key)),
            Alg::RS512 => VerifyKey::RS512(pkcs1v15::VerifyingKey::new(key)),
            // RFC 7518 §3.5: the salt is as long as the hash output (`new` does that).
            Alg::PS256 => VerifyKey::PS256(pss::VerifyingKey::new(key)),
            Alg::PS384 => VerifyKey::PS384(pss::VerifyingKey::new(key)),
            Alg::PS512 => VerifyKey::PS512(pss::VerifyingKey::new(key)),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use crate::testkit;

    #[test]
    fn time_window_with_skew() {
        assert_eq!(check_time(100, None, None, 10, 109), Ok(()));
        assert_eq!(check_time(100, None, None, 10, 110), Err(Reason::Expired));
        assert_eq!(check_time(100, Some(60), None, 10, 50), Ok(()));
        assert_eq!(
            check_time(100, Some(61), None, 10, 50),
            Err(Reason::NotYetValid)
        );
        assert_eq!(
            check_time(100, None, Some(61), 10, 50),
            Err(Reason::IssuedInFuture)
        );
        assert_eq!(
            check_time(u64::MAX, Some(0), Some(0), u64::MAX, u64::MAX),
            Err(Reason::Expired)
        );
    }

    #[test]
    fn claim_mapping_accepts_lists_and_space_separated_strings() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"roles":["nurse","admin"],"scp":"patient.read  patient.write","tenant":"north"}"#,
        )
        .unwrap();
        let mapped = map_claims(&claims, &ClaimMapping::default()).unwrap();
        assert_eq!(mapped.roles, vec!["nurse", "admin"]);
        assert_eq!(mapped.scopes, vec!["patient.read", "patient.write"]);
        assert_eq!(mapped.tenant.as_deref(), Some("north"));
        assert_eq!(mapped.purpose_of_use, None);
        for bad in [
            r#"{"roles":[1]}"#,
            r#"{"roles":{}}"#,
            r#"{"tenant":["a"]}"#,
            r#"{"purpose_of_use":1}"#,
        ] {
            let claims: Map<String, Value> = serde_json::from_str(bad).unwrap();
            assert_eq!(
                map_claims(&claims, &ClaimMapping::default()).unwrap_err(),
                Reason::BadClaim,
                "{bad}"
            );
        }
    }

    /// The parsed fixture token for `alg` and the key its `kid` selects in the fixture JWKS.
    fn fixture_case(alg: &str) -> (String, Vec<u8>, VerifyKey) {
        let compact = testkit::fixture_token(alg);
        let token = crate::token::parse(&compact, 8192).unwrap();
        let set = KeySet::parse(testkit::fixture_jwks().as_bytes(), &Alg::ALL).unwrap();
        let key = set.select(token.kid.as_deref(), token.alg).unwrap().clone();
        (token.signing_input.to_string(), token.signature, key)
    }

    #[test]
    fn every_fixture_signature_verifies_and_wrong_encodings_do_not() {
        for alg in Alg::ALL.into_iter().filter(|a| *a != Alg::HS256) {
            let (input, signature, key) = fixture_case(alg.name());
            assert_eq!(key.alg(), alg);
            assert_eq!(key.verify_signature(input.as_bytes(), &signature), Ok(()));
            let invalid = Err(SignatureError::Invalid);
            let mut other_input = input.clone().into_bytes();
            other_input.push(b'x');
            assert_eq!(
                key.verify_signature(&other_input, &signature),
                invalid,
                "{alg}"
            );
            let longer = [&[0u8][..], &signature].concat();
            assert_eq!(
                key.verify_signature(input.as_bytes(), &longer),
                invalid,
                "{alg}"
            );
            assert_eq!(
                key.verify_signature(input.as_bytes(), &signature[1..]),
                invalid
            );
            assert_eq!(
                key.verify_signature(input.as_bytes(), &[]),
                invalid,
                "{alg}"
            );
        }
    }

    /// ASN.1 DER `SEQUENCE { INTEGER r, INTEGER s }` of a raw `r || s` signature.
    fn der(raw: &[u8]) -> Vec<u8> {
        let integer = |x: &[u8]| {
            let x = &x[x.iter().take_while(|b| **b == 0).count()..];
            let pad = x[0] & 0x80 != 0;
            let mut out = vec![0x02, (x.len() + usize::from(pad)) as u8];
            if pad {
                out.push(0);
            }
            out.extend_from_slice(x);
            out
        };
        let (r, s) = raw.split_at(raw.len() / 2);
        let body = [integer(r), integer(s)].concat();
        let mut out = vec![0x30];
        if body.len() >= 0x80 {
            out.push(0x81);
        }
        out.push(body.len() as u8);
        out.extend(body);
        out
    }

    #[test]
    fn ecdsa_signatures_are_raw_r_and_s_only() {
        for (alg, len) in [("ES256", 64), ("ES384", 96)] {
            let (input, signature, key) = fixture_case(alg);
            assert_eq!(signature.len(), len);
            assert_eq!(key.verify_signature(input.as_bytes(), &signature), Ok(()));
            assert_eq!(
                key.verify_signature(input.as_bytes(), &der(&signature)),
                Err(SignatureError::Invalid),
                "{alg} DER"
            );
            // r = 0 or s = 0 is never a signature.
            let mut zero_s = signature.clone();
            zero_s[len / 2..].fill(0);
            assert_eq!(
                key.verify_signature(input.as_bytes(), &zero_s),
                Err(SignatureError::Invalid)
            );
        }
    }

    #[test]
    fn hs256_checks_the_whole_tag() {
        let key = VerifyKey::hs256(testkit::HS256_SECRET.as_bytes());
        let tag = hmac_sha256::HMAC::mac(b"a.b", testkit::HS256_SECRET.as_bytes());
        assert_eq!(key.verify_signature(b"a.b", &tag), Ok(()));
        let invalid = Err(SignatureError::Invalid);
        assert_eq!(key.verify_signature(b"a.c", &tag), invalid);
        assert_eq!(key.verify_signature(b"a.b", &tag[..31]), invalid);
        assert_eq!(
            key.verify_signature(b"a.b", &[&tag[..], &[0]].concat()),
            invalid
        );
        let mut flipped = tag;
        flipped[31] ^= 1;
        assert_eq!(key.verify_signature(b"a.b", &flipped), invalid);
    }
}
