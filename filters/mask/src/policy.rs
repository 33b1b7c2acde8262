//! What each role sees of each class, and the value transforms behind each action.

use std::collections::{BTreeMap, HashMap};

use crate::plan::Class;
use crate::token::TokenKey;

/// Built-in classes: the values of `phi.v1.Sensitivity` (1–10, used when the descriptor set
/// does not carry the enum itself) and further names for the HIPAA Safe Harbor identifier
/// kinds (45 CFR 164.514(b)(2)(i)) that catalog entries can use. A descriptor set whose
/// `phi.v1.Sensitivity` defines a name keeps its own number for it.
pub const BUILTIN_CLASSES: &[(Class, &str)] = &[
    (1, "SSN"),
    (2, "MRN"),
    (3, "NAME"),
    (4, "DOB"),
    (5, "ADDRESS"),
    (6, "PHONE"),
    (7, "EMAIL"),
    (8, "FREE_TEXT"),
    (9, "INSURANCE_ID"),
    (10, "CLINICAL"),
    (11, "ZIP"),
    (12, "DATE"),
    (13, "AGE"),
    (14, "FAX"),
    (15, "ACCOUNT"),
    (16, "LICENSE"),
    (17, "VEHICLE_ID"),
    (18, "DEVICE_ID"),
    (19, "URL"),
    (20, "IP_ADDRESS"),
    (21, "BIOMETRIC"),
    (22, "PHOTO"),
    (23, "OTHER_ID"),
];

/// The built-in name of a class number.
pub fn builtin_class_name(class: Class) -> Option<&'static str> {
    BUILTIN_CLASSES
        .iter()
        .find(|(c, _)| *c == class)
        .map(|(_, n)| *n)
}

/// The three-digit ZIP areas of 20,000 or fewer people (2000 Census) that HHS lists for Safe
/// Harbor: their first three digits become `000`.
pub const RESTRICTED_ZIP3: &[&str] = &[
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// Safe Harbor's age bound: ages above it are aggregated ("90 or older").
pub const SAFE_HARBOR_MAX_AGE: u32 = 89;

/// Characters `partial` keeps in place (and does not count): they carry format, not identity.
pub const PARTIAL_SEPARATORS: &[char] = &['-', ' ', '(', ')', '.', '@', '/', '+'];

/// What a caller sees of one field (or of one identifier found in free text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The value unchanged. On FREE_TEXT: the text, with identifiers found in it transformed
    /// by the role's action for their class.
    Reveal,
    /// The field stays, its value becomes `replacement` (empty by default).
    Redact { replacement: Option<String> },
    /// Every character but the last `keep_last` becomes `*`; separators stay.
    Partial { keep_last: usize },
    /// A keyed pseudonym, `tok_` + 32 hex digits.
    Token,
    /// The field is dropped from the message (in free text: the identifier is deleted).
    Remove,
    /// Dates reduced to their year: ISO-8601 strings (`1931-02-28T10:00Z` → `1931`), FHIR
    /// `Date`/`DateTime` messages (`value_us` at January 1 of the year, UTC, precision `YEAR`)
    /// and `google.protobuf.Timestamp` (January 1, 00:00 UTC). With `max_age`, a year more
    /// than `max_age` years ago is raised to `current year - max_age - 1`, the one category
    /// for everyone older (Safe Harbor: 89, so "90 or older"). Anything else is removed.
    Year { max_age: Option<u32> },
    /// US ZIP codes (`99501`, `99501-7788`) reduced to their first three digits, `000` for
    /// the areas in `restricted`. Anything else is removed.
    Zip3 { restricted: Vec<[u8; 3]> },
    /// Ages above `max` become `max + 1` (the category "older than max"), integer or decimal,
    /// in a number field or a string; smaller ages stay. Anything else is removed.
    Age { max: u32 },
}

/// The action kinds, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionKind {
    Reveal,
    Redact,
    Partial,
    Token,
    Remove,
    Year,
    Zip3,
    Age,
}

impl ActionKind {
    pub const ALL: [ActionKind; 8] = [
        ActionKind::Reveal,
        ActionKind::Redact,
        ActionKind::Partial,
        ActionKind::Token,
        ActionKind::Remove,
        ActionKind::Year,
        ActionKind::Zip3,
        ActionKind::Age,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Reveal => "reveal",
            ActionKind::Redact => "redact",
            ActionKind::Partial => "partial",
            ActionKind::Token => "token",
            ActionKind::Remove => "remove",
            ActionKind::Year => "year",
            ActionKind::Zip3 => "zip3",
            ActionKind::Age => "age",
        }
    }
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Reveal => ActionKind::Reveal,
            Action::Redact { .. } => ActionKind::Redact,
            Action::Partial { .. } => ActionKind::Partial,
            Action::Token => ActionKind::Token,
            Action::Remove => ActionKind::Remove,
            Action::Year { .. } => ActionKind::Year,
            Action::Zip3 { .. } => ActionKind::Zip3,
            Action::Age { .. } => ActionKind::Age,
        }
    }

    /// Appends the transformed text or bytes `value` to `out` and returns true, or returns
    /// false (appending nothing) when the action cannot express the value (`remove`; a `year`
    /// on something that is not an ISO-8601 date, a `zip3` on something that is not a ZIP
    /// code, an `age` on something that is not a number): the caller then drops the field, or
    /// deletes the identifier from free text. `Token` without a key cannot happen (config
    /// refuses it), and falls back to nothing rather than the value.
    pub fn apply(
        &self,
        class_name: &str,
        value: &[u8],
        ctx: &Context<'_>,
        out: &mut Vec<u8>,
    ) -> bool {
        match self {
            Action::Remove => false,
            Action::Year { max_age } => match iso_year(value) {
                Some(y) => {
                    let y = clamp_year(y, *max_age, ctx.now_year);
                    out.extend_from_slice(format!("{y:04}").as_bytes());
                    true
                }
                None => false,
            },
            Action::Zip3 { restricted } => match zip3(value, restricted) {
                Some(z) => {
                    out.extend_from_slice(&z);
                    true
                }
                None => false,
            },
            Action::Age { max } => match decimal(value) {
                Some(age) => {
                    if age > f64::from(*max) {
                        out.extend_from_slice((max + 1).to_string().as_bytes());
                    } else {
                        out.extend_from_slice(value);
                    }
                    true
                }
                None => false,
            },
            other => {
                other.transform(class_name, value, ctx.key, out);
                true
            }
        }
    }

    /// Appends the transformed `value` to `out` for the character-level actions. `Remove` and
    /// the generalizing actions append nothing here (see [`Action::apply`]).
    pub fn transform(
        &self,
        class_name: &str,
        value: &[u8],
        key: Option<&TokenKey>,
        out: &mut Vec<u8>,
    ) {
        match self {
            Action::Reveal => out.extend_from_slice(value),
            Action::Redact { replacement } => {
                if let Some(r) = replacement {
                    out.extend_from_slice(r.as_bytes());
                }
            }
            Action::Partial { keep_last } => partial(value, *keep_last, out),
            Action::Token => {
                if let Some(key) = key {
                    key.write_token(class_name, value, out);
                }
            }
            Action::Remove | Action::Year { .. } | Action::Zip3 { .. } | Action::Age { .. } => {}
        }
    }
}

/// What transforms need beyond the value: the token key and the current year (for `year`'s
/// age bound).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub key: Option<&'a TokenKey>,
    pub now_year: i64,
}

/// `year` with an age bound: a year more than `max_age` years before `now_year` becomes
/// `now_year - max_age - 1`.
pub fn clamp_year(year: i64, max_age: Option<u32>, now_year: i64) -> i64 {
    match max_age {
        Some(max) => year.max(now_year - i64::from(max) - 1),
        None => year,
    }
}

/// The year of an ISO-8601 calendar date or date-time (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`,
/// `YYYY-MM-DDThh:mm...`, basic `YYYYMMDD`), surrounding spaces allowed.
pub fn iso_year(value: &[u8]) -> Option<i64> {
    let v = value.trim_ascii();
    if v.len() < 4 || !v[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let rest = &v[4..];
    let ok = match rest.first() {
        None => true,
        Some(b'-') => rest.len() >= 3 && rest[1..3].iter().all(u8::is_ascii_digit),
        Some(_) => rest.len() >= 4 && rest[..4].iter().all(u8::is_ascii_digit),
    };
    if !ok {
        return None;
    }
    std::str::from_utf8(&v[..4]).ok()?.parse().ok()
}

/// The first three digits of a US ZIP code (`NNNNN` or `NNNNN-NNNN`), `000` when restricted.
fn zip3(value: &[u8], restricted: &[[u8; 3]]) -> Option<[u8; 3]> {
    let v = value.trim_ascii();
    let ok = match v.len() {
        5 => v.iter().all(u8::is_ascii_digit),
        9 => v.iter().all(u8::is_ascii_digit),
        10 => {
            v[..5].iter().all(u8::is_ascii_digit)
                && v[5] == b'-'
                && v[6..].iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    if !ok {
        return None;
    }
    let z = [v[0], v[1], v[2]];
    Some(if restricted.contains(&z) { *b"000" } else { z })
}

/// A non-negative decimal number (`93`, `93.5`), surrounding spaces allowed.
fn decimal(value: &[u8]) -> Option<f64> {
    let v = std::str::from_utf8(value.trim_ascii()).ok()?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    v.parse().ok()
}

/// `partial`: counts the characters that are not [`PARTIAL_SEPARATORS`]; if there are more
/// than `keep_last`, all but the last `keep_last` of them become `*`; otherwise all of them do
/// (a value no longer than what would be kept is masked entirely, never shown whole).
/// Separators stay where they are. Characters are Unicode scalar values for valid UTF-8, bytes
/// otherwise.
fn partial(value: &[u8], keep_last: usize, out: &mut Vec<u8>) {
    match std::str::from_utf8(value) {
        Ok(text) => {
            let maskable = text
                .chars()
                .filter(|c| !PARTIAL_SEPARATORS.contains(c))
                .count();
            let hide = if maskable > keep_last {
                maskable - keep_last
            } else {
                maskable
            };
            let mut seen = 0;
            let mut buf = [0u8; 4];
            for c in text.chars() {
                if PARTIAL_SEPARATORS.contains(&c) {
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                } else {
                    if seen < hide {
                        out.push(b'*');
                    } else {
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    seen += 1;
                }
            }
        }
        Err(_) => {
            let is_sep = |b: u8| b.is_ascii() && PARTIAL_SEPARATORS.contains(&(b as char));
            let maskable = value.iter().filter(|&&b| !is_sep(b)).count();
            let hide = if maskable > keep_last {
                maskable - keep_last
            } else {
                maskable
            };
            let mut seen = 0;
            for &b in value {
                if is_sep(b) {
                    out.push(b);
                } else {
                    out.push(if seen < hide { b'*' } else { b });
                    seen += 1;
                }
            }
        }
    }
}

/// One role's actions per class, and what applies to classes it does not name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePolicy {
    pub classes: BTreeMap<Class, Action>,
    /// The `*` entry; `remove` when the block has none.
    pub otherwise: Action,
}

impl RolePolicy {
    /// The strictest block: every class removed.
    pub fn strictest() -> Self {
        RolePolicy {
            classes: BTreeMap::new(),
            otherwise: Action::Remove,
        }
    }

    #[inline]
    pub fn action(&self, class: Class) -> &Action {
        self.classes.get(&class).unwrap_or(&self.otherwise)
    }

    pub fn uses_token(&self) -> bool {
        self.otherwise == Action::Token || self.classes.values().any(|a| *a == Action::Token)
    }

    /// Every class revealed: such a role also gets unknown fields and `Any` values of unknown
    /// types (nothing it could be denied).
    pub fn reveals_everything(&self) -> bool {
        self.otherwise == Action::Reveal && self.classes.values().all(|a| *a == Action::Reveal)
    }

    /// The built-in `safe_harbor` profile (HIPAA, 45 CFR 164.514(b)(2)): `class` resolves a
    /// class name. Dates to the year (years of people older than 89 aggregated), ZIP codes to
    /// three digits, ages over 89 aggregated, clinical content revealed, every other class
    /// (names, addresses, phone and fax numbers, e-mails, SSNs, MRNs, health plan, account,
    /// licence, vehicle and device numbers, URLs, IP addresses, biometrics, photos, other
    /// identifiers, free text) removed.
    pub fn safe_harbor(class: &dyn Fn(&str) -> Option<Class>) -> Self {
        let mut p = RolePolicy::strictest();
        let restricted = RESTRICTED_ZIP3
            .iter()
            .map(|z| {
                let b = z.as_bytes();
                [b[0], b[1], b[2]]
            })
            .collect();
        let year = Action::Year {
            max_age: Some(SAFE_HARBOR_MAX_AGE),
        };
        for (name, action) in [
            ("DOB", year.clone()),
            ("DATE", year),
            ("ZIP", Action::Zip3 { restricted }),
            (
                "AGE",
                Action::Age {
                    max: SAFE_HARBOR_MAX_AGE,
                },
            ),
            ("CLINICAL", Action::Reveal),
        ] {
            if let Some(c) = class(name) {
                p.classes.insert(c, action);
            }
        }
        p
    }
}

/// Name of the policy applied when the caller's role is missing or not in `roles`.
pub const DEFAULT_ROLE: &str = "default";

/// Every role's block plus the default block for unknown or missing roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub roles: HashMap<String, RolePolicy>,
    pub default: RolePolicy,
}

impl Policy {
    /// The block for `role` and the name to report it under: the role itself when the policy
    /// names it, [`DEFAULT_ROLE`] otherwise (no AUTHZ state, or a role nobody configured).
    pub fn for_role(&self, role: Option<&str>) -> (&str, &RolePolicy) {
        match role.and_then(|r| self.roles.get_key_value(r)) {
            Some((name, block)) => (name.as_str(), block),
            None => (DEFAULT_ROLE, &self.default),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(action: &Action, value: &str) -> String {
        let key = TokenKey::new(b"0123456789abcdef").unwrap();
        let mut out = Vec::new();
        action.transform("SSN", value.as_bytes(), Some(&key), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn partial_keeps_separators_and_the_tail() {
        let p = Action::Partial { keep_last: 4 };
        assert_eq!(apply(&p, "900-55-1234"), "***-**-1234");
        assert_eq!(apply(&p, "(555) 013-4477"), "(***) ***-4477");
        assert_eq!(apply(&p, "a.b@ex.com"), "*.*@*x.com");
        assert_eq!(apply(&p, "1234"), "****", "short values never shown whole");
        assert_eq!(apply(&p, ""), "");
        assert_eq!(apply(&p, "Zoë Ångström"), "*** ****tröm");
        assert_eq!(apply(&Action::Partial { keep_last: 0 }, "ab-c"), "**-*");
    }

    #[test]
    fn partial_on_bytes_that_are_not_utf8() {
        let mut out = Vec::new();
        Action::Partial { keep_last: 2 }.transform("X", b"\xff\x01-\x02\x03", None, &mut out);
        assert_eq!(out, b"**-\x02\x03");
    }

    #[test]
    fn other_actions() {
        assert_eq!(apply(&Action::Reveal, "x"), "x");
        assert_eq!(apply(&Action::Redact { replacement: None }, "x"), "");
        let r = Action::Redact {
            replacement: Some("[redacted]".into()),
        };
        assert_eq!(apply(&r, "x"), "[redacted]");
        assert_eq!(apply(&Action::Remove, "x"), "");
        assert!(apply(&Action::Token, "x").starts_with("tok_"));
        let mut out = Vec::new();
        Action::Token.transform("SSN", b"x", None, &mut out);
        assert!(out.is_empty(), "no key, no value");
    }

    #[test]
    fn unknown_roles_get_the_default_block() {
        let mut roles = HashMap::new();
        roles.insert(
            "billing".to_string(),
            RolePolicy {
                classes: BTreeMap::new(),
                otherwise: Action::Reveal,
            },
        );
        let policy = Policy {
            roles,
            default: RolePolicy::strictest(),
        };
        assert_eq!(policy.for_role(Some("billing")).0, "billing");
        assert_eq!(policy.for_role(Some("admin")).0, DEFAULT_ROLE);
        assert_eq!(policy.for_role(None).1.action(1), &Action::Remove);
    }
}
