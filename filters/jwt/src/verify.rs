//! Verifying a parsed token for one provider: key, signature, registered claims, time,
//! claim mapping and certificate binding, in that order.
//!
//! Time is an argument (the host clock, read once per request by the shell); nothing here
//! reads a clock.

use phi_guard_common::{Identity, UnixSeconds};
use serde_json::{Map, Value};

use crate::config::{ClaimMapping, Provider};
use crate::keys::{Alg, KeySet, SelectError, SignatureError};
use crate::reason::Reason;
use crate::token::{Confirmation, ParsedToken};

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

    let bound_to = match &claims.cnf {
        Confirmation::X5tS256(thumbprint) => Some(thumbprint.clone()),
        Confirmation::Unsupported => return Err(Reason::CnfUnsupported),
        Confirmation::None if provider.require_cert_binding => return Err(Reason::CnfMissing),
        Confirmation::None => None,
    };
    check_binding(bound_to.as_deref(), peer_thumbprint)?;

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
    check_binding(verified.bound_to.as_deref(), peer_thumbprint)
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

fn check_binding(bound_to: Option<&str>, peer_thumbprint: Option<&str>) -> Result<(), Reason> {
    match (bound_to, peer_thumbprint) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(Reason::NoClientCert),
        (Some(expected), Some(actual)) if expected == actual => Ok(()),
        (Some(_), Some(_)) => Err(Reason::CnfMismatch),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

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
    fn binding_outcomes() {
        assert_eq!(check_binding(None, None), Ok(()));
        assert_eq!(check_binding(None, Some("a")), Ok(()));
        assert_eq!(check_binding(Some("a"), None), Err(Reason::NoClientCert));
        assert_eq!(
            check_binding(Some("a"), Some("b")),
            Err(Reason::CnfMismatch)
        );
        assert_eq!(check_binding(Some("a"), Some("a")), Ok(()));
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
}
