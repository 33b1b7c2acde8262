//! What each filter reports about a request, for the filters after it and for the audit
//! event. Stored as JSON under the keys in [`crate::state`]. None of these carries a token,
//! a claim value beyond identifiers, certificate contents or PHI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// jwt's verdict, under [`crate::state::AUTHN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthnOutcome {
    /// `ok`, `failed`, or `skipped` (the method allows a missing token and none came).
    pub result: String,
    /// The provider that verified the token, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// A short machine code on failure (`expired`, `bad_signature`, `unknown_kid`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// rbac's decision, under [`crate::state::AUTHZ`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzDecision {
    /// `allow`, `deny` or `unauthenticated`: what was enforced (always `allow` in shadow mode).
    pub decision: String,
    /// The rule that decided, if any (none: default deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The caller's effective role, which the mask filter masks by.
    pub role: String,
    pub policy_version: String,
    /// `enforce` or `shadow`.
    pub mode: String,
    /// In shadow mode, what enforce mode would have decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<String>,
    /// A short machine code (`matched_allow`, `matched_deny`, `no_rule`, `no_identity`, ...).
    pub reason: String,
    /// True when a break-glass rule decided (HL7 PurposeOfUse `BTG`), allowed or refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// The break-glass reason code, from the rule's list (never the token's free text), when
    /// the break-glass access was allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_reason: Option<String>,
}

/// mask's summary of one RPC's responses, under [`crate::state::MASK`]: counts only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSummary {
    /// The role masked for.
    pub role: String,
    pub messages: u64,
    /// `"<class>/<action>"` (e.g. `"SSN/partial"`) → number of fields.
    pub fields: BTreeMap<String, u64>,
    /// Set when masking failed or the method was refused, and the RPC was ended with
    /// INTERNAL (`no_plan`: the method is not in the descriptor set nor on the pass-through
    /// list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Fields the descriptor set does not declare, dropped from the responses.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_fields: u64,
    /// `google.protobuf.Any` values of a type the descriptor set does not have, dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_any: u64,
    /// The method is on the pass-through list: its responses were not masked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_through: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

macro_rules! json_bytes {
    ($($t:ty),*) => {$(
        impl $t {
            pub fn to_bytes(&self) -> Vec<u8> {
                // Cannot fail (plain enums, strings and numbers); were it ever to, empty
                // bytes read back as `None` and the readers fail closed, without a panic.
                serde_json::to_vec(self).unwrap_or_default()
            }

            /// Missing or unreadable is `None`; readers fail closed on it where it matters.
            pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
                serde_json::from_slice(bytes).ok()
            }
        }
    )*};
}

json_bytes!(AuthnOutcome, AuthzDecision, MaskSummary);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        let authn = AuthnOutcome {
            result: "failed".into(),
            provider: None,
            reason: Some("expired".into()),
        };
        assert_eq!(AuthnOutcome::from_bytes(&authn.to_bytes()), Some(authn));
        let authz = AuthzDecision {
            decision: "allow".into(),
            rule: Some("nurses-read".into()),
            role: "nurse".into(),
            policy_version: "2026-11-01".into(),
            mode: "enforce".into(),
            shadow_decision: None,
            reason: "matched_allow".into(),
            break_glass: false,
            break_glass_reason: None,
        };
        assert_eq!(AuthzDecision::from_bytes(&authz.to_bytes()), Some(authz));
        let mut mask = MaskSummary {
            role: "nurse".into(),
            messages: 3,
            ..Default::default()
        };
        mask.fields.insert("SSN/partial".into(), 3);
        assert_eq!(MaskSummary::from_bytes(&mask.to_bytes()), Some(mask));
        assert_eq!(AuthzDecision::from_bytes(b"{}"), None);
    }
}
