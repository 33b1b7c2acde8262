//! Certificate-bound tokens (RFC 8705 §3), the whole `cnf` check in one place: reading the
//! token's `cnf` claim (RFC 7800), what the provider demands of it, and the comparison with
//! the connection's client certificate. `cnf.x5t#S256` is the base64url (no padding) SHA-256
//! of the client certificate's DER. Envoy exposes that digest as lower-case hex in
//! `connection.sha256_peer_certificate_digest`, so the shell's hex is converted once here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::reason::Reason;

/// The `cnf` claim (RFC 7800), as far as this filter can enforce it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Confirmation {
    #[default]
    None,
    /// `cnf.x5t#S256`: base64url SHA-256 of the client certificate (RFC 8705 §3.1).
    X5tS256(String),
    /// A confirmation method this filter cannot check (e.g. DPoP `jkt`).
    Unsupported,
}

impl Confirmation {
    /// The token's `cnf` claim (`None`: absent), type-checked while the token is parsed.
    pub fn from_claim(cnf: Option<Value>) -> Result<Confirmation, Reason> {
        Ok(match cnf {
            None => Confirmation::None,
            Some(Value::Object(cnf)) if cnf.is_empty() => Confirmation::None,
            Some(Value::Object(mut cnf)) => match cnf.remove("x5t#S256") {
                Some(Value::String(thumbprint)) => Confirmation::X5tS256(thumbprint),
                Some(_) => return Err(Reason::BadClaim),
                None => Confirmation::Unsupported,
            },
            Some(_) => return Err(Reason::BadClaim),
        })
    }
}

/// The thumbprint a verified token is bound to, or why its `cnf` is refused: another
/// confirmation method, or none while the provider requires certificate binding.
pub fn bound_to(cnf: &Confirmation, require_cert_binding: bool) -> Result<Option<String>, Reason> {
    match cnf {
        Confirmation::X5tS256(thumbprint) => Ok(Some(thumbprint.clone())),
        Confirmation::Unsupported => Err(Reason::CnfUnsupported),
        Confirmation::None if require_cert_binding => Err(Reason::CnfMissing),
        Confirmation::None => Ok(None),
    }
}

/// A bound token against the connection's client certificate thumbprint (`None`: no
/// readable certificate). Run on every verification and again on every cache hit.
pub fn check(bound_to: Option<&str>, peer_thumbprint: Option<&str>) -> Result<(), Reason> {
    match (bound_to, peer_thumbprint) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(Reason::NoClientCert),
        (Some(expected), Some(actual)) if expected == actual => Ok(()),
        (Some(_), Some(_)) => Err(Reason::CnfMismatch),
    }
}

/// The RFC 8705 thumbprint of the peer certificate, from Envoy's hex digest. Anything that
/// is not exactly 64 hex digits yields `None`, which the verifier treats as "no certificate":
/// a bound token then fails closed.
pub fn thumbprint_from_hex(hex: &str) -> Option<String> {
    Some(URL_SAFE_NO_PAD.encode(phi_guard_common::hex::digest(hex)?))
}

/// The thumbprint of DER bytes, for tests and tools.
pub fn thumbprint_of_der(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(hmac_sha256::Hash::hash(der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn hex_digest_becomes_the_rfc8705_thumbprint() {
        let der = b"not really a certificate";
        let hex: String = hmac_sha256::Hash::hash(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(thumbprint_from_hex(&hex), Some(thumbprint_of_der(der)));
        assert_eq!(
            thumbprint_from_hex(&hex.to_uppercase()),
            Some(thumbprint_of_der(der))
        );
        assert_eq!(thumbprint_of_der(der).len(), 43);
    }

    #[test]
    fn binding_outcomes() {
        assert_eq!(check(None, None), Ok(()));
        assert_eq!(check(None, Some("a")), Ok(()));
        assert_eq!(check(Some("a"), None), Err(Reason::NoClientCert));
        assert_eq!(check(Some("a"), Some("b")), Err(Reason::CnfMismatch));
        assert_eq!(check(Some("a"), Some("a")), Ok(()));
    }

    #[test]
    fn confirmation_methods() {
        use crate::testkit::unsigned;
        let h = r#"{"alg":"EdDSA"}"#;
        let cnf = |p: &str| {
            crate::token::parse(&unsigned(h, p), 8192)
                .unwrap()
                .claims
                .cnf
        };
        assert_eq!(cnf(r#"{"cnf":{}}"#), Confirmation::None);
        assert_eq!(cnf(r#"{"cnf":{"jkt":"x"}}"#), Confirmation::Unsupported);
    }

    #[test]
    fn bad_hex_is_no_certificate() {
        assert_eq!(thumbprint_from_hex(""), None);
        assert_eq!(thumbprint_from_hex(&"g".repeat(64)), None);
        assert_eq!(thumbprint_from_hex(&"a".repeat(63)), None);
        assert_eq!(thumbprint_from_hex(&"é".repeat(32)), None);
    }
}
