//! Certificate-bound tokens (RFC 8705 §3): `cnf.x5t#S256` is the base64url (no padding)
//! SHA-256 of the client certificate's DER. Envoy exposes that digest as lower-case hex in
//! `connection.sha256_peer_certificate_digest`, so the shell's hex is converted once here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The RFC 8705 thumbprint of the peer certificate, from Envoy's hex digest. Anything that
/// is not exactly 64 hex digits yields `None`, which the verifier treats as "no certificate":
/// a bound token then fails closed.
pub fn thumbprint_from_hex(hex: &str) -> Option<String> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let nibble = |c: u8| (c as char).to_digit(16);
        *byte = (nibble(pair[0])? * 16 + nibble(pair[1])?) as u8;
    }
    Some(URL_SAFE_NO_PAD.encode(digest))
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
    fn bad_hex_is_no_certificate() {
        assert_eq!(thumbprint_from_hex(""), None);
        assert_eq!(thumbprint_from_hex(&"g".repeat(64)), None);
        assert_eq!(thumbprint_from_hex(&"a".repeat(63)), None);
        assert_eq!(thumbprint_from_hex(&"é".repeat(32)), None);
    }
}
