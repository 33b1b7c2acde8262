//! Where a provider's token is taken from (Envoy jwt_authn's extractor): the
//! `authorization: Bearer` header (RFC 6750 §2.1) or the whole value of a configured header.

use crate::reason::Reason;

/// Where one provider's token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `authorization: Bearer <token>` (RFC 6750 §2.1).
    AuthorizationBearer,
    /// The whole value of the named (lower-case) header.
    Header(String),
}

impl TokenSource {
    pub fn header_name(&self) -> &str {
        match self {
            TokenSource::AuthorizationBearer => "authorization",
            TokenSource::Header(name) => name,
        }
    }
}

/// Reads the token from where `source` says. `None`: no token there (a non-Bearer
/// `authorization`, e.g. Basic, is someone else's credential, so it counts as none).
pub fn extract(
    source: &TokenSource,
    header: &dyn Fn(&str) -> Option<String>,
) -> Option<Result<String, Reason>> {
    let value = header(source.header_name())?;
    // Only HTTP's optional whitespace (SP, HTAB) surrounds a token; any other byte, a vertical
    // tab or form feed included, stays and makes the token malformed.
    const OWS: [char; 2] = [' ', '\t'];
    let value = value.trim_matches(OWS);
    let token = match source {
        TokenSource::AuthorizationBearer => {
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            rest.trim_matches(OWS)
        }
        TokenSource::Header(_) => value,
    };
    if token.is_empty() {
        return match source {
            TokenSource::AuthorizationBearer => Some(Err(Reason::Malformed)),
            TokenSource::Header(_) => None,
        };
    }
    Some(Ok(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn extraction() {
        let h =
            |v: &'static str| move |name: &str| (name == "authorization").then(|| v.to_string());
        let bearer = TokenSource::AuthorizationBearer;
        assert_eq!(extract(&bearer, &h("Bearer abc")), Some(Ok("abc".into())));
        assert_eq!(
            extract(&bearer, &h("bearer   abc ")),
            Some(Ok("abc".into()))
        );
        assert_eq!(extract(&bearer, &h("Basic dXNlcjpwdw==")), None);
        assert_eq!(extract(&bearer, &h("Bearer")), Some(Err(Reason::Malformed)));
        assert_eq!(
            extract(&bearer, &h("Bearer  ")),
            Some(Err(Reason::Malformed))
        );
        assert_eq!(extract(&bearer, &|_: &str| None), None);
        assert_eq!(
            extract(&bearer, &h("Bearer \t abc\t")),
            Some(Ok("abc".into()))
        );
        assert_eq!(
            extract(&bearer, &h("Bearer \u{b}\u{b}abc\u{c}")),
            Some(Ok("\u{b}\u{b}abc\u{c}".into()))
        );
        let custom = TokenSource::Header("x-token".into());
        let x = |name: &str| (name == "x-token").then(|| " t ".to_string());
        assert_eq!(extract(&custom, &x), Some(Ok("t".into())));
        assert_eq!(extract(&custom, &h("Bearer abc")), None);
    }
}
