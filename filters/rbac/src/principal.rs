//! Workload identity: who is on the other end of the mTLS connection, and the `principals`
//! condition that matches it.
//!
//! Envoy validates the client certificate (chain, expiry, trust anchors from SDS); this module
//! only reads what Envoy exposes about the validated certificate and compares identifiers.

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::{Anchored, Input};
use serde_json::Value;

use phi_guard_common::ConfigError;

use crate::json::expect_str;
use phi_guard_common::config::sanitize_serde_message;

/// SPIFFE IDs are capped at 2048 bytes by the spec; longer input is not a SPIFFE ID.
const MAX_SPIFFE_ID: usize = 2048;
const SCHEME: &str = "spiffe://";
/// A wildcard rule's DFA stays far below this; the cap keeps a hostile config from making
/// `on_configure` allocate without bound.
const DFA_SIZE_LIMIT: usize = 1 << 20;

/// What the connection says about the peer, from the client certificate Envoy validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// The SPIFFE ID: the certificate's only URI SAN, when that is a well-formed SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// Every well-formed DNS SAN of the certificate, lower-cased, in certificate order.
    pub dns: Vec<String>,
    /// Set when the certificate cannot name one workload; the request is refused before any
    /// rule is looked at.
    pub problem: Option<PeerProblem>,
}

/// Why a peer that presented a certificate is refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerProblem {
    /// More than one URI SAN. An X.509-SVID carries exactly one (SPIFFE X.509-SVID §2), and a
    /// policy that matched one of several would let the others go unexamined (a deny rule on
    /// the second ID would never fire).
    MultipleUriSans,
    /// mTLS is on but Envoy's `connection.peer_certificate` is missing or does not parse, so
    /// the SANs cannot all be seen: fail closed.
    UnreadableCertificate,
}

impl Peer {
    /// A connection without mTLS: matches no principal condition.
    pub fn none() -> Self {
        Self::default()
    }

    /// A peer whose certificate could not be read (see [`PeerProblem::UnreadableCertificate`]).
    pub fn unreadable() -> Self {
        Peer {
            problem: Some(PeerProblem::UnreadableCertificate),
            ..Self::default()
        }
    }

    /// Builds the peer from **all** the SANs of its certificate. Without `mtls` (no client
    /// certificate) there is no workload identity, whatever the SANs say. More than one URI
    /// SAN makes the peer [`PeerProblem::MultipleUriSans`]. A single URI SAN that is not a
    /// well-formed SPIFFE ID (e.g. one with `..` segments) is ignored rather than compared, so
    /// path tricks cannot satisfy a prefix; malformed DNS SANs are ignored likewise.
    pub fn from_sans(mtls: bool, uri_sans: &[&str], dns_sans: &[&str]) -> Self {
        if !mtls {
            return Self::none();
        }
        if uri_sans.len() > 1 {
            return Peer {
                problem: Some(PeerProblem::MultipleUriSans),
                ..Self::default()
            };
        }
        let spiffe_id = uri_sans
            .first()
            .filter(|s| validate_spiffe_id(s, false).is_ok())
            .map(|s| s.to_string());
        let dns = dns_sans
            .iter()
            .filter(|s| validate_dns(s).is_ok())
            .map(|s| s.to_ascii_lowercase())
            .collect();
        Self {
            spiffe_id,
            dns,
            problem: None,
        }
    }

    /// A certificate with at most one URI SAN and one DNS SAN, given as Envoy's raw
    /// `connection.mtls` (a CEL bool the Wasm ABI serialises as one byte; only `0x01` is
    /// true) and the two SANs. For tests and tools; the filter reads every SAN from the
    /// certificate itself ([`crate::cert`]).
    pub fn from_attributes(
        mtls: Option<&[u8]>,
        uri_san: Option<&str>,
        dns_san: Option<&str>,
    ) -> Self {
        let uris: Vec<&str> = uri_san.into_iter().collect();
        let dns: Vec<&str> = dns_san.into_iter().collect();
        Self::from_sans(mtls == Some(&[1u8][..]), &uris, &dns)
    }

    /// A verified workload we can name: mTLS, no [`PeerProblem`], and at least one usable SAN.
    pub fn is_authenticated(&self) -> bool {
        self.problem.is_none() && (self.spiffe_id.is_some() || !self.dns.is_empty())
    }
}

/// One rule's `principals` list, compiled: any element matching is a match.
#[derive(Debug, Clone, Default)]
pub struct Principals {
    exact: Vec<String>,
    prefixes: Vec<String>,
    dns: Vec<String>,
    any_authenticated: bool,
    /// Every wildcard pattern of the rule in one anchored multi-pattern DFA.
    patterns: Option<dense::DFA<Vec<u32>>>,
}

/// The shape of one `principals` entry, for the error on anything else.
const PRINCIPAL_SHAPE: &str =
    "expected a SPIFFE ID string or an object with one of `prefix`, `dns`, `any_authenticated`";

impl Principals {
    /// Compiles a `principals` list; `path` is its field path, e.g. `rules[3].principals`.
    pub fn compile(values: &[Value], path: &str) -> Result<Self, ConfigError> {
        if values.is_empty() {
            return Err(ConfigError::new(
                path,
                "must not be empty; omit the field to match any peer",
            ));
        }
        let mut out = Principals::default();
        let mut regexes = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let at = format!("{path}[{i}]");
            match value {
                Value::String(id) => {
                    validate_spiffe_id(id, true).map_err(|r| ConfigError::new(&at, r))?;
                    if id.contains('*') {
                        regexes.push(wildcard_regex(id));
                    } else {
                        out.exact.push(id.clone());
                    }
                }
                Value::Object(map) if map.len() == 1 => {
                    let Some((key, inner)) = map.iter().next() else {
                        return Err(ConfigError::new(at, PRINCIPAL_SHAPE));
                    };
                    let key_at = format!("{at}.{key}");
                    match key.as_str() {
                        "prefix" => {
                            let prefix = expect_str(inner, &key_at)?;
                            validate_prefix(prefix).map_err(|r| ConfigError::new(&key_at, r))?;
                            out.prefixes.push(prefix.to_string());
                        }
                        "dns" => {
                            let name = expect_str(inner, &key_at)?;
                            validate_dns(name).map_err(|r| ConfigError::new(&key_at, r))?;
                            out.dns.push(name.to_ascii_lowercase());
                        }
                        "any_authenticated" => match inner {
                            Value::Bool(true) => out.any_authenticated = true,
                            _ => {
                                return Err(ConfigError::new(
                                    key_at,
                                    "must be true (omit `principals` to match any peer)",
                                ))
                            }
                        },
                        _ => {
                            return Err(ConfigError::new(
                                key_at,
                                "unknown principal kind, expected `prefix`, `dns` or `any_authenticated`",
                            ))
                        }
                    }
                }
                _ => return Err(ConfigError::new(at, PRINCIPAL_SHAPE)),
            }
        }
        if !regexes.is_empty() {
            let dfa = dense::Builder::new()
                .configure(
                    dense::Config::new()
                        .start_kind(StartKind::Anchored)
                        .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                        .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
                )
                .build_many(&regexes)
                .map_err(|e| ConfigError::new(path, sanitize_serde_message(&e.to_string())))?;
            out.patterns = Some(dfa);
        }
        Ok(out)
    }

    pub fn matches(&self, peer: &Peer) -> bool {
        if !peer.is_authenticated() {
            return false;
        }
        if self.any_authenticated {
            return true;
        }
        // Any of the certificate's DNS SANs: the CA vouched for each of them.
        if peer.dns.iter().any(|dns| self.dns.contains(dns)) {
            return true;
        }
        let Some(id) = peer.spiffe_id.as_deref() else {
            return false;
        };
        if self.exact.iter().any(|e| e == id)
            || self.prefixes.iter().any(|p| id.starts_with(p.as_str()))
        {
            return true;
        }
        match &self.patterns {
            // A search error (only possible with quit bytes, which are not configured) is no
            // match: fail closed.
            Some(dfa) => matches!(
                dfa.try_search_fwd(&Input::new(id).anchored(Anchored::Yes).earliest(true)),
                Ok(Some(_))
            ),
            None => false,
        }
    }
}

/// `spiffe://*/ns/clinic/sa/*` → `^spiffe://[^/]+/ns/clinic/sa/[^/]+$`. A whole-segment `*`
/// is one non-empty segment; a `*` inside a segment (`ehr-*`) is any run within it. Everything
/// else is escaped, so `.` in a trust domain is a literal dot.
fn wildcard_regex(pattern: &str) -> String {
    let rest = &pattern[SCHEME.len()..];
    let mut out = String::from("^spiffe://");
    for (i, segment) in rest.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if segment == "*" {
            out.push_str("[^/]+");
            continue;
        }
        for (j, literal) in segment.split('*').enumerate() {
            if j > 0 {
                out.push_str("[^/]*");
            }
            out.push_str(&regex_syntax::escape(literal));
        }
    }
    out.push('$');
    out
}

fn is_trust_domain_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

/// Checks a SPIFFE ID per the SPIFFE spec (lower-case trust domain; path segments of
/// `[A-Za-z0-9._-]`, none empty, `.` or `..`; no query, fragment, port, userinfo or percent
/// encoding). With `wildcards`, `*` may stand for a trust domain or appear in path segments.
pub(crate) fn validate_spiffe_id(id: &str, wildcards: bool) -> Result<(), &'static str> {
    if id.len() > MAX_SPIFFE_ID {
        return Err("SPIFFE ID longer than 2048 bytes");
    }
    let rest = id
        .strip_prefix(SCHEME)
        .ok_or("must start with `spiffe://`")?;
    let mut parts = rest.split('/');
    let trust_domain = parts.next().unwrap_or_default();
    let td_ok = (wildcards && trust_domain == "*")
        || (!trust_domain.is_empty() && trust_domain.bytes().all(is_trust_domain_char));
    if !td_ok {
        return Err("trust domain must be lower-case letters, digits, `.`, `-` or `_` (or `*` in a pattern)");
    }
    for segment in parts {
        if segment.is_empty() {
            return Err("path segments must not be empty (no `//` and no trailing `/`)");
        }
        if segment == "." || segment == ".." {
            return Err("path segments must not be `.` or `..`");
        }
        let ok = segment
            .bytes()
            .all(|b| is_path_char(b) || (wildcards && b == b'*'));
        if !ok {
            return Err(
                "path segments may only hold letters, digits, `.`, `-`, `_` (and `*` in a pattern)",
            );
        }
        if segment.contains("**") {
            return Err("`**` is not supported: `*` matches within one segment");
        }
    }
    Ok(())
}

/// A prefix must end at a segment boundary: `spiffe://td/ns/clinic` would also match
/// `spiffe://td/ns/clinical/...`.
fn validate_prefix(prefix: &str) -> Result<(), &'static str> {
    let trimmed = prefix
        .strip_suffix('/')
        .ok_or("prefix must end with `/` so it cannot match a longer segment")?;
    if trimmed.contains('*') {
        return Err("prefix must not contain `*`; use a pattern string instead");
    }
    validate_spiffe_id(trimmed, false)
}

/// A DNS name: labels of letters, digits and `-`, no wildcard (a wildcard certificate must not
/// stand in for a named workload).
fn validate_dns(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("DNS name must be 1 to 253 bytes");
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err("DNS name must be dot-separated labels of letters, digits and `-` (no wildcards)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn peer(id: &str) -> Peer {
        Peer::from_attributes(Some(&[1]), Some(id), None)
    }

    fn compile(v: Value) -> Principals {
        Principals::compile(v.as_array().unwrap(), "p").unwrap()
    }

    #[test]
    fn exact_ids_match_only_themselves() {
        let p = compile(json!(["spiffe://td/ns/clinic/sa/ehr"]));
        assert!(p.matches(&peer("spiffe://td/ns/clinic/sa/ehr")));
        assert!(!p.matches(&peer("spiffe://td/ns/clinic/sa/ehr2")));
        assert!(!p.matches(&peer("spiffe://td/ns/clinic/sa")));
    }

    #[test]
    fn wildcards_match_one_segment() {
        let p = compile(json!(["spiffe://*/ns/clinic/sa/*"]));
        assert!(p.matches(&peer("spiffe://td/ns/clinic/sa/ehr")));
        assert!(p.matches(&peer("spiffe://other.org/ns/clinic/sa/x")));
        assert!(!p.matches(&peer("spiffe://td/ns/clinic/sa/ehr/extra")));
        assert!(!p.matches(&peer("spiffe://td/ns/research/sa/ehr")));
        let ns = compile(json!(["spiffe://td/ns/*/sa/analytics"]));
        assert!(ns.matches(&peer("spiffe://td/ns/research/sa/analytics")));
        assert!(!ns.matches(&peer("spiffe://td/ns/a/b/sa/analytics")));
        // The `.` of the trust domain is literal, not "any character".
        let dot = compile(json!(["spiffe://phi-guard.test/ns/*/sa/x"]));
        assert!(!dot.matches(&peer("spiffe://phi-guardxtest/ns/a/sa/x")));
        let partial = compile(json!(["spiffe://td/ns/clinic/sa/ehr-*"]));
        assert!(partial.matches(&peer("spiffe://td/ns/clinic/sa/ehr-frontend")));
        assert!(!partial.matches(&peer("spiffe://td/ns/clinic/sa/billing")));
    }

    #[test]
    fn prefixes_end_at_a_segment() {
        let p = compile(json!([{"prefix": "spiffe://td/ns/clinic/"}]));
        assert!(p.matches(&peer("spiffe://td/ns/clinic/sa/ehr")));
        assert!(!p.matches(&peer("spiffe://td/ns/clinical/sa/ehr")));
        // `..` is not a SPIFFE path segment: the peer has no SPIFFE identity at all.
        assert!(!p.matches(&peer("spiffe://td/ns/clinic/../ops/sa/admin")));
        let err =
            Principals::compile(&[json!({"prefix": "spiffe://td/ns/clinic"})], "p").unwrap_err();
        assert_eq!(err.field, "p[0].prefix");
    }

    #[test]
    fn dns_and_any_authenticated() {
        let p = compile(json!([{"dns": "Billing.example.org"}]));
        let billing = Peer::from_attributes(Some(&[1]), None, Some("billing.EXAMPLE.org"));
        assert!(p.matches(&billing));
        assert!(!p.matches(&peer("spiffe://td/ns/a/sa/b")));
        let any = compile(json!([{"any_authenticated": true}]));
        assert!(any.matches(&billing));
        assert!(any.matches(&peer("spiffe://td/ns/a/sa/b")));
        assert!(!any.matches(&Peer::none()));
    }

    #[test]
    fn without_mtls_nothing_matches() {
        let any = compile(
            json!([{"any_authenticated": true}, "spiffe://td/ns/a/sa/b", "spiffe://*/ns/*/sa/*"]),
        );
        for mtls in [
            None,
            Some(&[0u8][..]),
            Some(&[][..]),
            Some(&b"true"[..]),
            Some(&[1u8, 0][..]),
        ] {
            let p = Peer::from_attributes(mtls, Some("spiffe://td/ns/a/sa/b"), Some("b.example"));
            assert!(!p.is_authenticated());
            assert!(!any.matches(&p), "{mtls:?}");
        }
        // mTLS with a certificate carrying no usable SAN is not a nameable workload either.
        assert!(!any.matches(&Peer::from_attributes(Some(&[1]), Some("https://x"), None)));
    }

    #[test]
    fn every_san_is_seen() {
        let admin = "spiffe://td/ns/ops/sa/admin-tool";
        let analytics = "spiffe://td/ns/research/sa/analytics";
        // Two SPIFFE IDs, or a SPIFFE ID beside another URI: not one workload, in any order.
        for uris in [
            &[admin, analytics][..],
            &[analytics, admin][..],
            &[admin, "https://td.example/x"][..],
            &["https://td.example/x", admin][..],
            &["https://a.example", "https://b.example"][..],
        ] {
            let p = Peer::from_sans(true, uris, &["a.example"]);
            assert_eq!(p.problem, Some(PeerProblem::MultipleUriSans), "{uris:?}");
            assert!(!p.is_authenticated());
            assert!(!compile(json!([{"any_authenticated": true}])).matches(&p));
            assert!(!compile(json!([admin])).matches(&p));
        }
        // Several DNS SANs are normal: each one is the peer's name.
        let p = Peer::from_sans(true, &[], &["a.example", "Billing.Example.org", "*.bad"]);
        assert_eq!(p.dns, ["a.example", "billing.example.org"]);
        assert!(compile(json!([{"dns": "billing.example.org"}])).matches(&p));
        assert!(!Peer::unreadable().is_authenticated());
        assert_eq!(
            Peer::from_sans(false, &[admin, analytics], &[]),
            Peer::none()
        );
    }

    #[test]
    fn config_errors_name_the_element() {
        for (v, field) in [
            (json!(["https://td/ns/a"]), "p[0]"),
            (json!(["spiffe://td/ns/a", "spiffe://TD/ns/a"]), "p[1]"),
            (json!(["spiffe://td/ns//a"]), "p[0]"),
            (json!(["spiffe://td/ns/**"]), "p[0]"),
            (json!([{"dns": "*.example.org"}]), "p[0].dns"),
            (
                json!([{"any_authenticated": false}]),
                "p[0].any_authenticated",
            ),
            (json!([{"spiffe": "x"}]), "p[0].spiffe"),
            (json!([{"prefix": 3}]), "p[0].prefix"),
            (json!([7]), "p[0]"),
            (json!([]), "p"),
        ] {
            let err = Principals::compile(v.as_array().unwrap(), "p").unwrap_err();
            assert_eq!(err.field, field, "{v}");
        }
    }
}
