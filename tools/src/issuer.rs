//! The demo's identity provider: an ES256 (or, for the benchmarks, RS256) signing key, its JWKS
//! served over HTTP on loopback (as a real IdP serves `jwks_uri`), and tokens for the demo users.
//!
//! The JWKS server can rotate to a new key and can be taken down, so the e2e tests can show
//! that jwt keeps working on its last good key set.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::{json, Value};

use crate::docserver::{Answer, DocumentServer};

pub const ISSUER: &str = "https://idp.phi-guard.test";
pub const AUDIENCE: &str = "patient-service";
/// The path the JWKS is served on.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// A signing key with its key id.
pub struct SigningKey {
    pub kid: String,
    pub key: KeyPair,
}

/// The algorithms the demo IdP signs with.
pub enum KeyPair {
    ES256(Box<ES256KeyPair>),
    /// RSA-2048, the most common IdP key; the benchmarks measure its verification cost.
    RS256(Box<RS256KeyPair>),
}

impl SigningKey {
    /// An ES256 key (the demo's).
    pub fn generate(kid: &str) -> Self {
        SigningKey {
            kid: kid.into(),
            key: KeyPair::ES256(Box::new(ES256KeyPair::generate().with_key_id(kid))),
        }
    }

    /// An RSA-2048 key signing RS256.
    pub fn generate_rs256(kid: &str) -> Self {
        let key = RS256KeyPair::generate(2048).expect("RSA-2048 key generation");
        SigningKey {
            kid: kid.into(),
            key: KeyPair::RS256(Box::new(key.with_key_id(kid))),
        }
    }

    /// An ES256 key from its PEM ([`SigningKey::private_pem`]).
    pub fn es256_from_pem(kid: &str, pem: &str) -> Result<Self, String> {
        let key = ES256KeyPair::from_pem(pem).map_err(|e| format!("ES256 key: {e}"))?;
        Ok(SigningKey {
            kid: kid.into(),
            key: KeyPair::ES256(Box::new(key.with_key_id(kid))),
        })
    }

    /// An RS256 key from its PKCS#8 PEM ([`SigningKey::private_pem`]).
    pub fn rs256_from_pem(kid: &str, pem: &str) -> Result<Self, String> {
        let key = RS256KeyPair::from_pem(pem).map_err(|e| format!("RS256 key: {e}"))?;
        Ok(SigningKey {
            kid: kid.into(),
            key: KeyPair::RS256(Box::new(key.with_key_id(kid))),
        })
    }

    /// The public key as a JWK (RFC 7518 §6.2, §6.3).
    pub fn jwk(&self) -> Value {
        match &self.key {
            KeyPair::ES256(key) => {
                let point = key.public_key().public_key().to_bytes_uncompressed();
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "alg": "ES256",
                    "use": "sig",
                    "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                })
            }
            KeyPair::RS256(key) => {
                let components = key.public_key().to_components();
                json!({
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": self.kid,
                    "n": URL_SAFE_NO_PAD.encode(&components.n),
                    "e": URL_SAFE_NO_PAD.encode(&components.e),
                })
            }
        }
    }

    pub fn private_pem(&self) -> String {
        match &self.key {
            KeyPair::ES256(key) => key.to_pem(),
            KeyPair::RS256(key) => key.to_pem(),
        }
        .expect("a generated key encodes as PEM")
    }
}

/// What a demo user's token says.
#[derive(Debug, Clone, Default)]
pub struct UserClaims {
    pub subject: String,
    pub roles: Vec<String>,
    pub scope: String,
    pub tenant: Option<String>,
    pub purpose_of_use: Option<String>,
    /// The break-glass justification (`break_glass_reason` claim), for purpose `BTG`.
    pub break_glass_reason: Option<String>,
    /// base64url SHA-256 of the client certificate DER this token is bound to (RFC 8705).
    pub cnf_x5t_s256: Option<String>,
    /// The `jti` claim (RFC 7519 §4.1.7), for replay-protection tests.
    pub jti: Option<String>,
    /// The JOSE header `typ` (default `JWT`), e.g. `logout+jwt` for type-confusion tests.
    pub typ: Option<String>,
}

impl UserClaims {
    pub fn user(subject: &str, roles: &[&str]) -> Self {
        UserClaims {
            subject: subject.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            scope: "patient.read encounter.read".into(),
            tenant: Some("north".into()),
            purpose_of_use: Some("TREAT".into()),
            break_glass_reason: None,
            cnf_x5t_s256: None,
            jti: None,
            typ: None,
        }
    }
}

impl SigningKey {
    /// A token from the demo issuer valid for `ttl` from now, for `audience`.
    pub fn mint(&self, claims: &UserClaims, audience: &str, ttl: Duration) -> String {
        let now = Clock::now_since_epoch().as_secs();
        self.mint_at(claims, ISSUER, audience, now, now + ttl.as_secs())
    }

    /// A token with explicit issuer and times, for tests of the rejection paths.
    pub fn mint_at(
        &self,
        claims: &UserClaims,
        issuer: &str,
        audience: &str,
        issued_at: u64,
        expires_at: u64,
    ) -> String {
        let mut custom = serde_json::Map::new();
        custom.insert("roles".into(), json!(claims.roles));
        custom.insert("scope".into(), json!(claims.scope));
        if let Some(t) = &claims.tenant {
            custom.insert("tenant".into(), json!(t));
        }
        if let Some(p) = &claims.purpose_of_use {
            custom.insert("purpose_of_use".into(), json!(p));
        }
        if let Some(r) = &claims.break_glass_reason {
            custom.insert("break_glass_reason".into(), json!(r));
        }
        if let Some(x5t) = &claims.cnf_x5t_s256 {
            custom.insert("cnf".into(), json!({ "x5t#S256": x5t }));
        }
        let mut jwt = Claims::with_custom_claims(Value::Object(custom), Duration::from_secs(1))
            .with_issuer(issuer)
            .with_audience(audience)
            .with_subject(&claims.subject);
        jwt.issued_at = Some(UnixTimeStamp::from_secs(issued_at));
        jwt.invalid_before = Some(UnixTimeStamp::from_secs(issued_at));
        jwt.expires_at = Some(UnixTimeStamp::from_secs(expires_at));
        if let Some(jti) = &claims.jti {
            jwt = jwt.with_jwt_id(jti);
        }
        let header = HeaderOptions {
            signature_type: claims.typ.clone(),
            content_type: None,
        };
        match &self.key {
            KeyPair::ES256(key) => key.sign_with_options(jwt, &header),
            KeyPair::RS256(key) => key.sign_with_options(jwt, &header),
        }
        .expect("signing with a valid key")
    }
}

/// base64url SHA-256 of the first certificate in a PEM file: the RFC 8705 thumbprint.
pub fn cert_thumbprint(pem_path: &std::path::Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let pem = std::fs::read_to_string(pem_path)?;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(std::io::Error::other)?;
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(der)))
}

/// How the JWKS server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksMode {
    Serving,
    /// Answers 503, as an IdP in trouble does.
    Failing,
}

/// A JWKS endpoint on loopback (a [`DocumentServer`] at [`JWKS_PATH`]).
#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    server: DocumentServer,
}

impl JwksServer {
    /// Serves on an ephemeral loopback port.
    pub async fn start(jwks: &Value) -> std::io::Result<JwksServer> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), jwks).await
    }

    pub async fn bind(addr: SocketAddr, jwks: &Value) -> std::io::Result<JwksServer> {
        let server = DocumentServer::bind(
            addr,
            JWKS_PATH,
            "application/json",
            jwks.to_string().into_bytes(),
        )
        .await?;
        Ok(JwksServer {
            addr: server.addr,
            server,
        })
    }

    pub fn set_jwks(&self, jwks: &Value) {
        self.server.set_document(jwks.to_string().into_bytes());
    }

    pub fn set_mode(&self, mode: JwksMode) {
        self.server.set_answer(match mode {
            JwksMode::Serving => Answer::Document,
            JwksMode::Failing => Answer::Status(503),
        });
    }

    /// How many requests the server has answered, any status.
    pub fn requests(&self) -> u64 {
        self.server.requests()
    }
}

/// A JWKS document holding these keys.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_with_the_public_key() {
        let key = SigningKey::generate("k1");
        let token = key.mint(
            &UserClaims::user("nurse-1", &["nurse"]),
            AUDIENCE,
            Duration::from_mins(5),
        );
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from_strings(&[ISSUER])),
            allowed_audiences: Some(HashSet::from_strings(&[AUDIENCE])),
            ..Default::default()
        };
        let KeyPair::ES256(pair) = &key.key else {
            unreachable!("generate makes ES256 keys")
        };
        let claims = pair
            .public_key()
            .verify_token::<Value>(&token, Some(options.clone()))
            .unwrap();
        assert_eq!(claims.subject.as_deref(), Some("nurse-1"));
        assert_eq!(claims.custom["roles"], json!(["nurse"]));
        let jwk = key.jwk();
        assert_eq!(jwk["kid"], "k1");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );

        let rsa = SigningKey::generate_rs256("r1");
        let token = rsa.mint(
            &UserClaims::user("nurse-1", &["nurse"]),
            AUDIENCE,
            Duration::from_mins(5),
        );
        let KeyPair::RS256(pair) = &rsa.key else {
            unreachable!("generate_rs256 makes RS256 keys")
        };
        let claims = pair
            .public_key()
            .verify_token::<Value>(&token, Some(options))
            .unwrap();
        assert_eq!(claims.subject.as_deref(), Some("nurse-1"));
        let jwk = rsa.jwk();
        assert_eq!(
            (jwk["kty"].as_str(), jwk["e"].as_str()),
            (Some("RSA"), Some("AQAB"))
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["n"].as_str().unwrap())
                .unwrap()
                .len(),
            256
        );
    }
}
