//! Compact JWS parsing, before any key is involved.
//!
//! Everything that can be refused without a key is refused here, in a fixed order (size,
//! encoding, JSON, header, registered-claim types) so each bad token gets one predictable
//! reason. Nothing here trusts the token: it only decides whether it is worth a signature check.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::alg::Alg;
pub use crate::binding::Confirmation;
use crate::json::{self, JsonError};
use crate::reason::Reason;

/// A token that is well-formed, with typed registered claims.
#[derive(Debug, Clone)]
pub struct ParsedToken<'a> {
    /// `header.payload` exactly as sent: the JWS signing input (RFC 7515 §5.2).
    pub signing_input: &'a str,
    /// The decoded signature segment.
    pub signature: Vec<u8>,
    pub alg: Alg,
    pub kid: Option<String>,
    /// The JOSE `typ`, normalised (lower-case, `application/` removed; RFC 7515 §4.1.9).
    /// Which values are acceptable is the provider's choice (`verify` checks it).
    pub typ: Option<String>,
    pub claims: Claims,
}

/// The registered claims, type-checked; other claims stay as JSON for the claim mapping.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Vec<String>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    /// RFC 7519 §4.1.7; read only for replay protection.
    pub jti: Option<String>,
    pub cnf: Confirmation,
    pub other: Map<String, Value>,
}

fn decode(segment: &str) -> Result<Vec<u8>, Reason> {
    // URL_SAFE_NO_PAD refuses padding, the standard alphabet and non-canonical trailing bits.
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Reason::Malformed)
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, Reason> {
    json::parse_object(bytes).map_err(|e| match e {
        JsonError::Duplicate => Reason::DuplicateMember,
        JsonError::Invalid => Reason::BadJson,
    })
}

/// Parses a compact JWS. `max_bytes` is checked before anything else is looked at.
pub fn parse(compact: &str, max_bytes: usize) -> Result<ParsedToken<'_>, Reason> {
    if compact.len() > max_bytes {
        return Err(Reason::TooLarge);
    }
    let mut parts = compact.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::Malformed);
    };
    let signing_input = &compact[..header.len() + 1 + payload.len()];
    let header = decode(header)?;
    let payload = decode(payload)?;
    let signature = decode(signature)?;

    let header = object(&header)?;
    let (alg, kid, typ) = check_header(&header)?;
    let claims = typed_claims(object(&payload)?)?;
    Ok(ParsedToken {
        signing_input,
        signature,
        alg,
        kid,
        typ,
        claims,
    })
}

type HeaderParams = (Alg, Option<String>, Option<String>);

fn check_header(header: &Map<String, Value>) -> Result<HeaderParams, Reason> {
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Alg::from_header(name).ok_or(Reason::UnsupportedAlg)?,
        _ => return Err(Reason::BadHeader),
    };
    // RFC 7515 §4.1.11: crit, if present, is a non-empty list of names; every name must be
    // understood. This filter implements no extension, so any listed name is refused.
    match header.get("crit") {
        None => {}
        Some(Value::Array(names)) if !names.is_empty() && names.iter().all(Value::is_string) => {
            return Err(Reason::UnknownCrit)
        }
        Some(_) => return Err(Reason::BadHeader),
    }
    // `typ` (RFC 8725 §3.11 explicit typing) is checked against the provider's list after
    // the signature: a `logout+jwt` or any other `*+jwt` the provider does not name is not
    // an access token. Here only its shape.
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(crate::config::normalize_typ(typ)),
        Some(_) => return Err(Reason::BadHeader),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Reason::BadHeader),
    };
    for name in ["cty", "jku", "x5u", "x5t", "x5t#S256"] {
        if header.get(name).is_some_and(|v| !v.is_string()) {
            return Err(Reason::BadHeader);
        }
    }
    Ok((alg, kid, typ))
}

fn string_claim(claims: &mut Map<String, Value>, name: &str) -> Result<Option<String>, Reason> {
    match claims.remove(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Reason::BadClaim),
    }
}

/// NumericDate (RFC 7519 §2) as whole non-negative seconds. Fractions and negative values
/// are refused rather than rounded: no mainstream issuer emits them, and rounding is where
/// two parsers start disagreeing about expiry.
fn time_claim(claims: &mut Map<String, Value>, name: &str) -> Result<Option<u64>, Reason> {
    match claims.remove(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(Reason::BadClaim),
        Some(_) => Err(Reason::BadClaim),
    }
}

fn typed_claims(mut claims: Map<String, Value>) -> Result<Claims, Reason> {
    let iss = string_claim(&mut claims, "iss")?;
    let sub = string_claim(&mut claims, "sub")?;
    let aud = match claims.remove("aud") {
        None => Vec::new(),
        Some(Value::String(aud)) => vec![aud],
        Some(Value::Array(list)) => list
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(Reason::BadClaim),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Reason::BadClaim),
    };
    let exp = time_claim(&mut claims, "exp")?;
    let nbf = time_claim(&mut claims, "nbf")?;
    let iat = time_claim(&mut claims, "iat")?;
    let jti = string_claim(&mut claims, "jti")?;
    // OpenID Connect `nonce`: a string. Nothing reads it, but a wrong type is a malformed
    // token.
    if claims.get("nonce").is_some_and(|v| !v.is_string()) {
        return Err(Reason::BadClaim);
    }
    let cnf = Confirmation::from_claim(claims.remove("cnf"))?;
    Ok(Claims {
        iss,
        sub,
        aud,
        exp,
        nbf,
        iat,
        jti,
        cnf,
        other: claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use crate::testkit::{b64, unsigned};

    #[test]
    fn parses_a_well_formed_token() {
        let t = unsigned(
            r#"{"alg":"EdDSA","kid":"k1","typ":"at+jwt"}"#,
            r#"{"iss":"i","sub":"s","aud":["a","b"],"exp":10,"nbf":1,"iat":1,"cnf":{"x5t#S256":"abc"},"roles":["r"]}"#,
        );
        let parsed = parse(&t, 8192).unwrap();
        assert_eq!(parsed.alg, Alg::EdDSA);
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.typ.as_deref(), Some("at+jwt"));
        assert_eq!(parsed.claims.aud, vec!["a", "b"]);
        assert_eq!(parsed.claims.exp, Some(10));
        assert_eq!(parsed.claims.cnf, Confirmation::X5tS256("abc".into()));
        assert!(parsed.claims.other.contains_key("roles"));
        assert_eq!(parsed.signing_input, t.trim_end_matches('.'));
        assert!(parsed.signature.is_empty());
        let signed = format!("{}{}", t, b64([1u8, 2, 3]));
        let parsed = parse(&signed, 8192).unwrap();
        assert_eq!(parsed.signing_input, t.trim_end_matches('.'));
        assert_eq!(parsed.signature, [1, 2, 3]);
    }

    #[test]
    fn structure_errors() {
        let good = unsigned(r#"{"alg":"EdDSA"}"#, r#"{"sub":"s"}"#);
        assert_eq!(parse(&good, 10).unwrap_err(), Reason::TooLarge);
        for bad in ["", ".", "a.b", "a.b.c.d", "e30.e30", "e30.e30.e30.e30"] {
            assert_eq!(parse(bad, 8192).unwrap_err(), Reason::Malformed, "{bad}");
        }
        let padded = format!("{}=", good);
        assert_eq!(parse(&padded, 8192).unwrap_err(), Reason::Malformed);
        let std_alphabet = format!("{}.{}.ab+/", b64("{\"alg\":\"EdDSA\"}"), b64("{}"));
        assert_eq!(parse(&std_alphabet, 8192).unwrap_err(), Reason::Malformed);
    }

    #[test]
    fn header_errors() {
        let p = r#"{"sub":"s"}"#;
        let cases = [
            (r#"{"alg":"none"}"#, Reason::UnsupportedAlg),
            (r#"{"alg":"None"}"#, Reason::UnsupportedAlg),
            (r#"{"alg":"HS512"}"#, Reason::UnsupportedAlg),
            (r#"{"alg":"ES512"}"#, Reason::UnsupportedAlg),
            (r#"{"typ":"JWT"}"#, Reason::BadHeader),
            (r#"{"alg":7}"#, Reason::BadHeader),
            (r#"{"alg":"EdDSA","kid":7}"#, Reason::BadHeader),
            (r#"{"alg":"EdDSA","typ":["JWT"]}"#, Reason::BadHeader),
            (
                r#"{"alg":"EdDSA","crit":["exp"],"exp":1}"#,
                Reason::UnknownCrit,
            ),
            (r#"{"alg":"EdDSA","crit":[]}"#, Reason::BadHeader),
            (r#"{"alg":"EdDSA","crit":"b64"}"#, Reason::BadHeader),
            (r#"{"alg":"EdDSA","alg":"EdDSA"}"#, Reason::DuplicateMember),
            (r#"["alg"]"#, Reason::BadJson),
        ];
        for (header, reason) in cases {
            assert_eq!(
                parse(&unsigned(header, p), 8192).unwrap_err(),
                reason,
                "{header}"
            );
        }
    }

    #[test]
    fn claim_type_errors() {
        let h = r#"{"alg":"EdDSA"}"#;
        for payload in [
            r#"{"iss":1}"#,
            r#"{"sub":["s"]}"#,
            r#"{"aud":1}"#,
            r#"{"aud":["a",1]}"#,
            r#"{"exp":"10"}"#,
            r#"{"exp":1.5}"#,
            r#"{"exp":-1}"#,
            r#"{"nbf":true}"#,
            r#"{"iat":null}"#,
            r#"{"jti":1}"#,
            r#"{"cnf":"x"}"#,
            r#"{"cnf":{"x5t#S256":1}}"#,
        ] {
            assert_eq!(
                parse(&unsigned(h, payload), 8192).unwrap_err(),
                Reason::BadClaim,
                "{payload}"
            );
        }
        assert_eq!(
            parse(&unsigned(h, "{\"a\":1,\"a\":1}"), 8192).unwrap_err(),
            Reason::DuplicateMember
        );
        assert_eq!(
            parse(&unsigned(h, "[1]"), 8192).unwrap_err(),
            Reason::BadJson
        );
        assert_eq!(parse(&unsigned(h, "{"), 8192).unwrap_err(), Reason::BadJson);
    }

    #[test]
    fn fuzz_like_inputs_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"eyJhbGciOiJFZERTQSJ9.-_=+/ \x00{}\"";
        for len in 0..600 {
            let s: String = (0..len % 97)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize] as char
                })
                .collect();
            let _ = parse(&s, 8192);
        }
    }
}
