//! The verified end-user identity the jwt filter hands to rbac, mask and audit.

use serde::{Deserialize, Serialize};

use crate::clock::UnixSeconds;

/// What a verified JWT says about the end user. Written by the jwt filter only after the
/// signature and every registered claim checked out; stored as JSON under
/// [`crate::state::IDENTITY`] (its [`crate::state::StateContract`]); a missing or unreadable
/// identity means no end user. Claims the operator did not ask to pass on are not here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Name of the jwt provider (from the jwt filter's config) that verified the token.
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_of_use: Option<String>,
    /// The break-glass justification the IdP put in the token, as the IdP wrote it. rbac
    /// compares it with a break-glass rule's reason codes and never copies it anywhere
    /// (free text could carry PHI); only a matching policy code reaches the audit event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_reason: Option<String>,
    /// The token's `exp`.
    pub expires_at: UnixSeconds,
    /// True when the token was bound to the client certificate (RFC 8705) and the binding held.
    pub cert_bound: bool,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateContract;

    fn nurse() -> Identity {
        Identity {
            provider: "hospital-idp".into(),
            issuer: "https://idp.example".into(),
            subject: "u-1".into(),
            roles: vec!["nurse".into()],
            scopes: vec!["patient.read".into()],
            tenant: Some("north".into()),
            purpose_of_use: Some("TREAT".into()),
            break_glass_reason: None,
            expires_at: 1_700_000_900,
            cert_bound: true,
        }
    }

    #[test]
    fn round_trips_through_filter_state_bytes() {
        let id = nurse();
        assert_eq!(Identity::decode(&id.encode()), Some(id));
    }

    #[test]
    fn garbage_is_no_identity() {
        assert_eq!(Identity::decode(b""), None);
        assert_eq!(Identity::decode(b"{\"subject\":1}"), None);
        assert_eq!(
            Identity::decode(br#"{"provider":"p","issuer":"i","subject":"s","expires_at":1,"cert_bound":false,"admin":true}"#),
            None,
            "unknown fields are refused, not ignored"
        );
    }

    #[test]
    fn role_and_scope_lookups() {
        let id = nurse();
        assert!(id.has_role("nurse"));
        assert!(!id.has_role("billing"));
        assert!(id.has_scope("patient.read"));
    }
}
