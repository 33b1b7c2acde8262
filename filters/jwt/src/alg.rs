//! The JWA signature algorithms this filter verifies (RFC 7518 §3.1), by the names a config
//! file, a JWK's `alg` and a token header use.

use std::fmt;

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

    pub(crate) fn is_rsa(self) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn header_names_map_to_algorithms() {
        assert_eq!(Alg::from_header("Ed25519"), Some(Alg::EdDSA));
        assert_eq!(Alg::from_header("none"), None);
        assert_eq!(Alg::from_name("Ed25519"), None);
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
        }
    }
}
