//! Why a request was refused. The code is what operators see (AUTHN filter state, metric
//! names, debug logs); callers only ever get a generic UNAUTHENTICATED.

use std::fmt;

/// A short machine code for every way authentication can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// No token where the method's requirement needs one.
    Missing,
    /// The token is longer than `max_token_bytes`; refused before any parsing.
    TooLarge,
    /// Not three base64url segments, or a segment that does not decode.
    Malformed,
    /// Header or payload is not a JSON object.
    BadJson,
    /// A JSON member name appears twice in the header or the payload.
    DuplicateMember,
    /// A header parameter has the wrong type (`typ`, `kid`, `crit` shape).
    BadHeader,
    /// `typ` is not one the provider accepts (e.g. `logout+jwt`), or absent where required.
    BadTyp,
    /// `crit` names an extension this filter does not understand (it understands none).
    UnknownCrit,
    /// `alg` is `none`, unknown, or HS256 without a configured secret.
    UnsupportedAlg,
    /// `alg` is supported but not in the provider's `algorithms`.
    AlgNotAllowed,
    /// No key in the key set has the token's `kid` (or no usable key at all).
    UnknownKid,
    /// No `kid` and more than one key could verify the token.
    MissingKid,
    /// The key `kid` names cannot verify the token's `alg`.
    KeyAlgMismatch,
    /// The provider's remote key set has not been fetched yet.
    JwksUnavailable,
    /// The signature does not verify with the selected key.
    BadSignature,
    /// A registered or mapped claim has the wrong JSON type.
    BadClaim,
    /// `iss` does not match any acceptable provider.
    WrongIssuer,
    /// `aud` names none of the provider's audiences.
    WrongAudience,
    /// `sub` is absent.
    MissingSub,
    /// `exp` is absent.
    MissingExp,
    /// `iat` is absent but `max_lifetime_s` needs it.
    MissingIat,
    Expired,
    /// `nbf` is in the future beyond the clock skew.
    NotYetValid,
    /// `iat` is in the future beyond the clock skew.
    IssuedInFuture,
    /// `exp - iat` exceeds `max_lifetime_s`.
    LifetimeTooLong,
    /// The provider requires a certificate-bound token and `cnf.x5t#S256` is absent.
    CnfMissing,
    /// `cnf` carries a confirmation method other than `x5t#S256` (e.g. DPoP `jkt`).
    CnfUnsupported,
    /// The token is bound to a certificate and the connection presented none.
    NoClientCert,
    /// `cnf.x5t#S256` does not match the client certificate.
    CnfMismatch,
    /// `:path` is not a gRPC method.
    BadPath,
    /// No requirement matches the method and there is no default. With a valid token this
    /// is answered PERMISSION_DENIED (the caller is known, the method is not allowed).
    NoRule,
    /// Replay protection is on and the token's `jti` was already used.
    Replayed,
    /// Replay protection is on and the token carries no `jti`.
    MissingJti,
    /// The shared replay cache has no room for another `jti` (UNAVAILABLE: retry later).
    ReplayCacheFull,
    /// The shared replay cache could not be read or written (UNAVAILABLE).
    ReplayCacheError,
}

impl Reason {
    /// Every reason, so the shell can define one counter per reason at configure time.
    pub const ALL: [Reason; 35] = [
        Reason::Missing,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::BadJson,
        Reason::DuplicateMember,
        Reason::BadHeader,
        Reason::BadTyp,
        Reason::UnknownCrit,
        Reason::UnsupportedAlg,
        Reason::AlgNotAllowed,
        Reason::UnknownKid,
        Reason::MissingKid,
        Reason::KeyAlgMismatch,
        Reason::JwksUnavailable,
        Reason::BadSignature,
        Reason::BadClaim,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::MissingSub,
        Reason::MissingExp,
        Reason::MissingIat,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::LifetimeTooLong,
        Reason::CnfMissing,
        Reason::CnfUnsupported,
        Reason::NoClientCert,
        Reason::CnfMismatch,
        Reason::BadPath,
        Reason::NoRule,
        Reason::Replayed,
        Reason::MissingJti,
        Reason::ReplayCacheFull,
        Reason::ReplayCacheError,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::BadJson => "bad_json",
            Reason::DuplicateMember => "duplicate_member",
            Reason::BadHeader => "bad_header",
            Reason::BadTyp => "bad_typ",
            Reason::UnknownCrit => "unknown_crit",
            Reason::UnsupportedAlg => "unsupported_alg",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::UnknownKid => "unknown_kid",
            Reason::MissingKid => "missing_kid",
            Reason::KeyAlgMismatch => "key_alg_mismatch",
            Reason::JwksUnavailable => "jwks_unavailable",
            Reason::BadSignature => "bad_signature",
            Reason::BadClaim => "bad_claim",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::MissingSub => "missing_sub",
            Reason::MissingExp => "missing_exp",
            Reason::MissingIat => "missing_iat",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::CnfMissing => "cnf_missing",
            Reason::CnfUnsupported => "cnf_unsupported",
            Reason::NoClientCert => "no_client_cert",
            Reason::CnfMismatch => "cnf_mismatch",
            Reason::BadPath => "bad_path",
            Reason::NoRule => "no_rule",
            Reason::Replayed => "replayed",
            Reason::MissingJti => "missing_jti",
            Reason::ReplayCacheFull => "replay_cache_full",
            Reason::ReplayCacheError => "replay_cache_error",
        }
    }

    /// The status a refusal for this reason is answered with: UNAVAILABLE when the replay
    /// cache cannot decide (the token may be fine; retry), else UNAUTHENTICATED. (A valid
    /// token on a method no rule names is answered PERMISSION_DENIED by the engine's
    /// [`crate::Outcome::Forbidden`], not through this.)
    pub fn status(self) -> phi_guard_common::GrpcStatus {
        match self {
            Reason::ReplayCacheFull | Reason::ReplayCacheError => {
                phi_guard_common::GrpcStatus::Unavailable
            }
            _ => phi_guard_common::GrpcStatus::Unauthenticated,
        }
    }

    /// The RFC 6750 §3 challenge. A request without credentials gets a bare `Bearer`
    /// (§3.1: no error code when authentication information is absent); a request whose token
    /// was refused gets `invalid_token`. Failures not about the token (no rule, bad path) are
    /// answered like a missing token: there is nothing the client can fix in its token.
    pub fn www_authenticate(self) -> &'static str {
        match self {
            Reason::Missing
            | Reason::BadPath
            | Reason::NoRule
            | Reason::ReplayCacheFull
            | Reason::ReplayCacheError => "Bearer",
            _ => "Bearer error=\"invalid_token\"",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use std::collections::BTreeSet;

    #[test]
    fn codes_are_unique_metric_safe_names() {
        let codes: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        for code in codes {
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    #[test]
    fn challenges_follow_rfc6750() {
        assert_eq!(Reason::Missing.www_authenticate(), "Bearer");
        assert_eq!(
            Reason::Expired.www_authenticate(),
            "Bearer error=\"invalid_token\""
        );
    }
}
