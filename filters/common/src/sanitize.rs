//! The one sanitizer for values a client chose that phi-guard writes into an audit event, a
//! log line, a metric or a header Envoy logs (`x-request-id`, `traceparent`, a resource-id
//! header, claim values copied into an event, ...).
//!
//! A client can put anything in a header, PHI included (`x-request-id: 078-05-1120`). Such a
//! value is first validated (length, a conservative identifier alphabet: no spaces, quotes or
//! control bytes that could smuggle free text into a tamper-evident log), then pattern-masked:
//! every digit of a run shaped like an SSN or a telephone number (7 or more digits, possibly
//! with separators) becomes `*`, and a value shaped like an e-mail address or a credential (a
//! JWT, a `Bearer` token) is refused. The
//! masking is conservative: it may also hide the digits of an id that merely looks like a
//! number, never the other way round.
//!
//! One shape passes whole: a canonical random UUID (RFC 9562 §5.4, version 4, the
//! 8-4-4-4-12 hex form Envoy generates for `x-request-id`). Masking digit runs inside it would
//! garble the id Envoy's access log and the audit event share (one in three of Envoy's ids has
//! a 7-digit run), and the shape is not one an SSN or telephone number is written in.

/// Longest client value kept, in bytes; longer values are dropped rather than cut, so a
/// truncated id can never match another record.
pub const MAX_CLIENT_VALUE_LEN: usize = 256;

/// Fewest digits in one run (separators allowed) that are masked: a 7-digit local telephone
/// number is the shortest identifier shape this aims at (SSNs have 9, NANP numbers 10).
pub const MIN_MASKED_DIGITS: usize = 7;

/// What became of a client value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sanitized {
    /// Valid and nothing identifier-shaped in it: the value unchanged.
    Clean(String),
    /// Valid, with the digits of identifier-shaped runs replaced by `*`.
    Masked(String),
    /// Empty, too long, outside the alphabet, e-mail or credential shaped: keep nothing of it.
    Refused,
}

impl Sanitized {
    /// The value to write, if any.
    pub fn value(self) -> Option<String> {
        match self {
            Sanitized::Clean(v) | Sanitized::Masked(v) => Some(v),
            Sanitized::Refused => None,
        }
    }
}

/// Bytes allowed in an identifier: letters, digits and `-._:/+=~`, and `*` so that a value
/// masked by an earlier filter passes the next one unchanged. `@` is left out on purpose
/// (e-mail addresses), as are spaces, quotes, `%` and control bytes.
fn id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._:/+=~*".contains(&b)
}

/// Separators that may sit inside a telephone- or SSN-shaped run of digits.
fn digit_separator(b: u8) -> bool {
    b"-.:/+=~_".contains(&b)
}

/// Sanitizes an identifier a client sent (request id, resource id): see the module docs.
pub fn client_id(value: &str) -> Sanitized {
    if is_random_uuid(value) {
        return Sanitized::Clean(value.to_string());
    }
    sanitize(value, id_byte)
}

/// A UUID in its canonical hyphenated form (36 characters) with the RFC 9562 variant and
/// version 4 (random) — what Envoy's request-id extension generates.
fn is_random_uuid(value: &str) -> bool {
    // `Uuid::try_parse` also takes the simple, braced and URN forms; only the hyphenated one,
    // whose groups are fixed, is let through.
    value.len() == 36
        && value.as_bytes()[8] == b'-'
        && uuid::Uuid::try_parse(value).is_ok_and(|id| {
            id.get_variant() == uuid::Variant::RFC4122
                && id.get_version() == Some(uuid::Version::Random)
        })
}

/// Sanitizes a value that must be printable ASCII without spaces (a SAN URI, a claim value
/// copied into an event): the same masking over a wider alphabet, `@` still refused.
pub fn printable(value: &str) -> Sanitized {
    sanitize(value, |b| b.is_ascii_graphic() && b != b'@')
}

/// A value shaped like a credential a client copied into an id: a JOSE compact
/// serialisation (a JWT: RFC 7515 §7.1 and RFC 7516 §7.1, whose first segment, a JSON header,
/// base64url-encodes to `eyJ`, then `.`), or the `Bearer` scheme (RFC 6750) as a word of its
/// own (`Bearer-…`, `x_bearer`; not inside a name such as `BearerTokenService`).
fn looks_like_credential(value: &str) -> bool {
    if value.contains("eyJ") && value.contains('.') {
        return true;
    }
    // Compared in place: this runs on every sanitized value, several per RPC.
    const WORD: &[u8] = b"bearer";
    let bytes = value.as_bytes();
    bytes.windows(WORD.len()).enumerate().any(|(at, w)| {
        w.eq_ignore_ascii_case(WORD)
            && bytes
                .get(at + WORD.len())
                .is_none_or(|b| !b.is_ascii_alphabetic())
    })
}

fn sanitize(value: &str, allowed: impl Fn(u8) -> bool) -> Sanitized {
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_CLIENT_VALUE_LEN
        || !bytes.iter().all(|&b| allowed(b))
        || looks_like_credential(value)
    {
        return Sanitized::Refused;
    }
    let mut out = bytes.to_vec();
    let mut masked = false;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A run: digits, with single separators between digits. Letters end it, so hex ids
        // (`4f9a2c...`) split into short runs.
        let start = i;
        let mut end = i;
        let mut digits = 0;
        let mut j = i;
        while j < bytes.len() {
            if bytes[j].is_ascii_digit() {
                digits += 1;
                j += 1;
                end = j;
            } else if digit_separator(bytes[j]) && bytes.get(j + 1).is_some_and(u8::is_ascii_digit)
            {
                j += 1;
            } else {
                break;
            }
        }
        if digits >= MIN_MASKED_DIGITS {
            for b in &mut out[start..end] {
                if b.is_ascii_digit() {
                    *b = b'*';
                }
            }
            masked = true;
        }
        i = end.max(start + 1);
    }
    // Only ASCII bytes were replaced by ASCII, so this cannot fail.
    let out = String::from_utf8(out).unwrap_or_default();
    if masked {
        Sanitized::Masked(out)
    } else {
        Sanitized::Clean(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token a client put into an id header is never kept (the developers' guide: no token
    /// in an event or a log, not even when a client puts it in a header).
    #[test]
    fn credential_shaped_values_are_refused() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1LTEyMzQ1In0.c2lnbmF0dXJl";
        for value in [
            jwt,
            "eyJhbGciOiJub25lIn0.e30.",
            "req-eyJhbGciOiJIUzI1NiJ9.e30.x",
            "Bearer-SECRETTOKENCANARY",
            "x-bearer_token",
            "BEARER",
        ] {
            assert_eq!(client_id(value), Sanitized::Refused, "{value}");
            assert_eq!(printable(value), Sanitized::Refused, "{value}");
        }
        // Neither shape alone: kept.
        for value in [
            "req-eyJ-1",
            "a.b.c",
            "4bf92f35-77b3-4da6-a3ce-929d0e0e4736",
            "auth.v1.BearerTokenService",
        ] {
            assert!(client_id(value).value().is_some(), "{value}");
        }
    }

    #[test]
    fn identifier_shaped_digits_are_masked() {
        for (input, want) in [
            ("078-05-1120", "***-**-****"),
            ("078051120", "*********"),
            ("req-078-05-1120-x", "req-***-**-****-x"),
            ("555-867-5309", "***-***-****"),
            ("+1.555.867.5309", "+*.***.***.****"),
            ("tel:5558675309", "tel:**********"),
            ("867-5309", "***-****"),
            ("a1b2c3-4455-667788", "a1b2c*-****-******"),
        ] {
            assert_eq!(client_id(input), Sanitized::Masked(want.into()), "{input}");
        }
    }

    #[test]
    fn envoy_generated_request_ids_pass_whole() {
        // From the trial: ids Envoy generated, garbled by digit-run masking before.
        for input in [
            "12345678-123d-4272-acc7-b6c27edde02d",
            "8b550cdd-4958-4cf1-b5b2-0a9912345678",
            "8B550CDD-4958-4CF1-B5B2-0A9912345678",
        ] {
            assert_eq!(client_id(input), Sanitized::Clean(input.into()), "{input}");
        }
        // Not a random UUID (version 1, wrong variant, other forms): the digit rule applies.
        for (input, want) in [
            (
                "12345678-123d-1272-acc7-b6c27edde02d",
                "********-***d-1272-acc7-b6c27edde02d",
            ),
            (
                "12345678-123d-4272-ccc7-b6c27edde02d",
                "********-***d-4272-ccc7-b6c27edde02d",
            ),
            (
                "urn:uuid:12345678-123d-4272-acc7-b6c27edde02d",
                "urn:uuid:********-***d-4272-acc7-b6c27edde02d",
            ),
        ] {
            assert_eq!(client_id(input), Sanitized::Masked(want.into()), "{input}");
        }
        // An SSN before or after a UUID is still masked.
        assert_eq!(
            client_id("078-05-1120-8b550cdd-4958-4cf1-b5b2-0a99c1234567"),
            Sanitized::Masked("***-**-****-*b550cdd-4958-4cf1-b5b2-0a99c*******".into())
        );
    }

    #[test]
    fn ordinary_ids_pass_unchanged() {
        for input in [
            "audit-e2e-0001",
            "p-0001",
            "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "req-2026-11",
            "123456",
        ] {
            assert_eq!(client_id(input), Sanitized::Clean(input.into()), "{input}");
        }
    }

    #[test]
    fn invalid_values_are_refused() {
        let long = "a".repeat(MAX_CLIENT_VALUE_LEN + 1);
        for input in [
            "",
            "jane.doe@example.org",
            "has space",
            "quote\"",
            "ctl\u{1}",
            "caf\u{e9}",
            "50%",
            long.as_str(),
        ] {
            assert_eq!(client_id(input), Sanitized::Refused, "{input:?}");
        }
        assert_eq!(printable("jane@example.org"), Sanitized::Refused);
        assert_eq!(
            printable("spiffe://d/ns/a/sa/b"),
            Sanitized::Clean("spiffe://d/ns/a/sa/b".into())
        );
        assert_eq!(
            printable("user(078-05-1120)"),
            Sanitized::Masked("user(***-**-****)".into())
        );
    }

    #[test]
    fn sanitizing_twice_changes_nothing() {
        // jwt masks x-request-id in place; audit sanitizes what it then reads.
        for input in ["078-05-1120", "req-078051120", "p-0001"] {
            let once = client_id(input).value().unwrap();
            assert_eq!(client_id(&once), Sanitized::Clean(once.clone()), "{input}");
        }
    }

    #[test]
    fn output_never_contains_the_digits_of_a_masked_run() {
        // Whatever the separators, no 7 digits of a run survive.
        for sep in ["-", ".", ":", "/", "+", "=", "~", "_"] {
            let input = ["078", "05", "1120"].join(sep);
            let out = client_id(&input).value().unwrap();
            assert_eq!(out.bytes().filter(u8::is_ascii_digit).count(), 0, "{out}");
        }
    }
}
