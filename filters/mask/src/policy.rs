//! What each role sees of each class, and the value transforms behind each action.

use std::collections::{BTreeMap, HashMap};

use crate::plan::Class;
use crate::token::TokenKey;

/// The class names of `phi.v1.Sensitivity`, used when the descriptor set does not carry the
/// enum itself (a set built from the service protos without their imports).
pub fn builtin_class_name(class: Class) -> Option<&'static str> {
    Some(match class {
        1 => "SSN",
        2 => "MRN",
        3 => "NAME",
        4 => "DOB",
        5 => "ADDRESS",
        6 => "PHONE",
        7 => "EMAIL",
        8 => "FREE_TEXT",
        9 => "INSURANCE_ID",
        10 => "CLINICAL",
        _ => return None,
    })
}

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
}

/// The five action kinds, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionKind {
    Reveal,
    Redact,
    Partial,
    Token,
    Remove,
}

impl ActionKind {
    pub const ALL: [ActionKind; 5] = [
        ActionKind::Reveal,
        ActionKind::Redact,
        ActionKind::Partial,
        ActionKind::Token,
        ActionKind::Remove,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Reveal => "reveal",
            ActionKind::Redact => "redact",
            ActionKind::Partial => "partial",
            ActionKind::Token => "token",
            ActionKind::Remove => "remove",
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
        }
    }

    /// Appends the transformed `value` to `out`. `Remove` appends nothing (the caller drops
    /// the field; in free text the identifier disappears). `Token` without a key cannot happen
    /// (config refuses it), and falls back to nothing rather than the value.
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
            Action::Remove => {}
        }
    }
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
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
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
