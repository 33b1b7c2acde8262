//! What each filter reports about a request, for the filters after it and for the audit
//! event. Stored as JSON under the keys in [`crate::state`] (each type is a
//! [`crate::state::StateContract`]). None of these carries a token, a claim value beyond
//! identifiers, certificate contents or PHI.
//!
//! Every closed set of values is an enum that serialises to the same lower-case string the
//! JSON always carried (`"ok"`, `"allow"`, `"shadow"`, `"no_plan"`, ...), so access logs and
//! the audit event read exactly as before; a value outside the set makes the whole record
//! unreadable, and readers fail closed on an unreadable record.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Closed sets of values: serde names in snake_case, `as_str` the same name, `Display` too.
macro_rules! closed_set {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The value as it appears in the JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_set! {
    /// [`AuthnOutcome::result`].
    pub enum AuthnResult {
        /// A token was verified.
        Ok => "ok",
        /// The request was refused (or, for a valid token on an unlisted method, forbidden).
        Failed => "failed",
        /// The method allows a missing token and none came.
        Skipped => "skipped",
    }
}

closed_set! {
    /// rbac's verdict: [`AuthzDecision::decision`] and [`AuthzDecision::shadow_decision`].
    pub enum Verdict {
        Allow => "allow",
        /// PERMISSION_DENIED.
        Deny => "deny",
        /// UNAUTHENTICATED: the rule needs an end user and there is none.
        Unauthenticated => "unauthenticated",
    }
}

closed_set! {
    /// [`AuthzDecision::mode`], and the `mode` of rbac's policy document.
    pub enum AuthzMode {
        /// Denials end the RPC.
        Enforce => "enforce",
        /// Every request goes through; the decision enforce mode would take is recorded.
        Shadow => "shadow",
    }
}

closed_set! {
    /// [`MaskSummary::failure`]: why masking failed or the call was refused.
    pub enum MaskFailure {
        /// A record inside a message is cut short or has a bad varint, tag or length.
        MalformedMessage => "malformed_message",
        /// A planned field arrived with a wire type its declared type cannot have.
        WireTypeMismatch => "wire_type_mismatch",
        /// Messages (or groups) nested deeper than the rewriter follows.
        TooDeep => "too_deep",
        /// A gRPC frame announces more than `max_message_bytes`.
        FrameTooLarge => "frame_too_large",
        /// A gRPC frame's flag byte is neither 0 nor 1.
        BadFrameFlag => "bad_frame_flag",
        /// The stream ended inside a gRPC frame.
        TruncatedFrame => "truncated_frame",
        /// A compressed frame under a `grpc-encoding` other than gzip (or none).
        UnsupportedEncoding => "unsupported_encoding",
        /// A gzip frame that does not decompress.
        DecompressFailed => "decompress_failed",
        /// A gzip frame that decompresses to more than `max_message_bytes`.
        DecompressedTooLarge => "decompressed_too_large",
        /// Recompressing the masked message failed.
        CompressFailed => "compress_failed",
        /// The free-text scanner could not complete a search.
        ScanFailed => "scan_failed",
        /// The response (or the request) of a masked method is not gRPC.
        NotGrpc => "not_grpc",
        /// The method is neither in the descriptor set nor on the pass-through list.
        NoPlan => "no_plan",
        /// The descriptor set is fetched and none has arrived yet (UNAVAILABLE).
        NoDescriptorSet => "no_descriptor_set",
    }
}

/// jwt's verdict, under [`crate::state::AUTHN`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthnOutcome {
    pub result: AuthnResult,
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
    /// What was enforced (always `allow` in shadow mode).
    pub decision: Verdict,
    /// The rule that decided, if any (none: default deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The caller's effective role, which the mask filter masks by.
    pub role: String,
    pub policy_version: String,
    pub mode: AuthzMode,
    /// In shadow mode, what enforce mode would have decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<Verdict>,
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

impl AuthzDecision {
    /// The role to mask by: only a call rbac allowed has one (a response to a denied call
    /// should not exist; if one does, it gets the strictest treatment).
    pub fn allowed_role(self) -> Option<String> {
        (self.decision == Verdict::Allow).then_some(self.role)
    }
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
    /// INTERNAL (or UNAVAILABLE for `no_descriptor_set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<MaskFailure>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateContract;

    fn authz() -> AuthzDecision {
        AuthzDecision {
            decision: Verdict::Allow,
            rule: Some("nurses-read".into()),
            role: "nurse".into(),
            policy_version: "2026-11-01".into(),
            mode: AuthzMode::Shadow,
            shadow_decision: Some(Verdict::Deny),
            reason: "matched_allow".into(),
            break_glass: false,
            break_glass_reason: None,
        }
    }

    #[test]
    fn outcomes_round_trip() {
        let authn = AuthnOutcome {
            result: AuthnResult::Failed,
            provider: None,
            reason: Some("expired".into()),
        };
        assert_eq!(AuthnOutcome::decode(&authn.encode()), Some(authn));
        let authz = authz();
        assert_eq!(AuthzDecision::decode(&authz.encode()), Some(authz));
        let mut mask = MaskSummary {
            role: "nurse".into(),
            messages: 3,
            failure: Some(MaskFailure::NoDescriptorSet),
            ..Default::default()
        };
        mask.fields.insert("SSN/partial".into(), 3);
        assert_eq!(MaskSummary::decode(&mask.encode()), Some(mask));
        assert_eq!(AuthzDecision::decode(b"{}"), None);
    }

    /// The bytes Envoy's access log prints and the audit filter reads are the ones the
    /// string-typed contracts wrote before the enums: same names, same order, same omissions.
    #[test]
    fn json_on_the_wire_is_unchanged() {
        let text = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap();
        assert_eq!(
            text(&authz().encode()),
            r#"{"decision":"allow","rule":"nurses-read","role":"nurse","policy_version":"2026-11-01","mode":"shadow","shadow_decision":"deny","reason":"matched_allow"}"#
        );
        let enforce = AuthzDecision {
            decision: Verdict::Unauthenticated,
            rule: None,
            mode: AuthzMode::Enforce,
            shadow_decision: None,
            reason: "no_identity".into(),
            break_glass: true,
            ..authz()
        };
        assert_eq!(
            text(&enforce.encode()),
            r#"{"decision":"unauthenticated","role":"nurse","policy_version":"2026-11-01","mode":"enforce","reason":"no_identity","break_glass":true}"#
        );
        for (result, json) in [
            (AuthnResult::Ok, r#"{"result":"ok","provider":"idp"}"#),
            (
                AuthnResult::Failed,
                r#"{"result":"failed","provider":"idp"}"#,
            ),
            (
                AuthnResult::Skipped,
                r#"{"result":"skipped","provider":"idp"}"#,
            ),
        ] {
            let a = AuthnOutcome {
                result,
                provider: Some("idp".into()),
                reason: None,
            };
            assert_eq!(text(&a.encode()), json);
            assert_eq!(AuthnOutcome::decode(json.as_bytes()), Some(a));
        }
        let mask = MaskSummary {
            role: "default".into(),
            failure: Some(MaskFailure::NoPlan),
            ..Default::default()
        };
        assert_eq!(
            text(&mask.encode()),
            r#"{"role":"default","messages":0,"fields":{},"failure":"no_plan"}"#
        );
    }

    /// serde's name of every value is its `as_str`, the string the JSON always carried.
    #[test]
    fn serde_names_are_the_codes() {
        fn check<T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug>(
            all: &[T],
            text: impl Fn(&T) -> &'static str,
        ) {
            for v in all {
                let json = serde_json::to_string(v).unwrap();
                assert_eq!(json, format!("\"{}\"", text(v)));
                assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), v);
            }
        }
        check(AuthnResult::ALL, |v| v.as_str());
        check(Verdict::ALL, |v| v.as_str());
        check(AuthzMode::ALL, |v| v.as_str());
        check(MaskFailure::ALL, |v| v.as_str());
        assert_eq!(MaskFailure::ALL.len(), 14);
        assert_eq!(Verdict::Deny.to_string(), "deny");
    }

    /// A value outside a closed set makes the record unreadable: readers fail closed on it
    /// instead of comparing an unknown string.
    #[test]
    fn values_outside_the_sets_are_refused() {
        let good = String::from_utf8(authz().encode()).unwrap();
        for (from, to) in [
            (r#""decision":"allow""#, r#""decision":"Allow""#),
            (r#""decision":"allow""#, r#""decision":"permit""#),
            (r#""mode":"shadow""#, r#""mode":"audit""#),
            (
                r#""shadow_decision":"deny""#,
                r#""shadow_decision":"maybe""#,
            ),
            (r#""decision":"allow""#, r#""decision":1"#),
        ] {
            let bad = good.replacen(from, to, 1);
            assert_ne!(bad, good);
            assert_eq!(AuthzDecision::decode(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(AuthnOutcome::decode(br#"{"result":"OK"}"#), None);
        assert_eq!(
            MaskSummary::decode(br#"{"role":"r","messages":0,"fields":{},"failure":"oops"}"#),
            None
        );
    }
}
