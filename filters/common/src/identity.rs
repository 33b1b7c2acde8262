//! The verified end-user identity the jwt filter hands to rbac, mask and audit.

use serde::{Deserialize, Serialize};

use crate::clock::UnixSeconds;

/// What a verified JWT says about the end user. Written by the jwt filter only after the
/// signature and every registered claim checked out; stored as JSON under
/// [`crate::state::IDENTITY`]. Claims the operator did not ask to pass on are not here.
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
    pub fn to_bytes(&self) -> Vec<u8> {
        // Cannot fail: plain strings, numbers and lists (serde_json errs only on non-string map
        // keys or a failing writer). Were it ever to, empty bytes read back as `None`, which
        // every reader treats as unauthenticated: fail closed, no panic.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A missing or unreadable identity is `None`: callers treat that as unauthenticated.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

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
        assert_eq!(Identity::from_bytes(&id.to_bytes()), Some(id));
    }

    #[test]
    fn garbage_is_no_identity() {
        assert_eq!(Identity::from_bytes(b""), None);
        assert_eq!(Identity::from_bytes(b"{\"subject\":1}"), None);
        assert_eq!(
            Identity::from_bytes(br#"{"provider":"p","issuer":"i","subject":"s","expires_at":1,"cert_bound":false,"admin":true}"#),
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
