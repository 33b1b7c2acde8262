//! Filter-state keys and the request headers the filters own.
//!
//! A filter writes with `set_property(["phi_guard.<key>"], bytes)`; a later filter on the same
//! stream reads with `get_property(["phi_guard.<key>"])`. Envoy stores them as
//! `wasm.phi_guard.<key>`, which access logs can print with `%FILTER_STATE(...)%`. Every reader
//! tolerates a missing key and fails closed where security depends on it.

/// JSON [`crate::Identity`], written by jwt on success.
pub const IDENTITY: &str = "phi_guard.identity";
/// JSON `{"result":"ok"|"failed"|"skipped","reason":...}` from jwt, for the audit event.
pub const AUTHN: &str = "phi_guard.authn";
/// JSON authorization decision from rbac (decision, rule, effective role, policy version).
pub const AUTHZ: &str = "phi_guard.authz";
/// JSON mask summary from mask (counts per class and action, never values).
pub const MASK: &str = "phi_guard.mask";
/// Plain text, the id of the resource the request asks for, read by mask from the first
/// request message (the field annotated `phi.v1.resource_id` or named by the catalog) after
/// [`crate::sanitize::client_id`]; absent when the method has no such field, the field is
/// absent or refused, or the message could not be read. The audit event's `what.resource_id`.
pub const RESOURCE: &str = "phi_guard.resource";
/// Plain text, the form access logs print instead of `:path`: see
/// [`crate::grpc::method_label`]. Written by jwt, the first phi-guard filter, on every request.
pub const METHOD: &str = "phi_guard.method";
/// Plain text, `x-request-id` after [`crate::sanitize::client_id`] (absent when refused),
/// written by jwt so access logs never print the raw client header.
pub const REQUEST_ID: &str = "phi_guard.request_id";

/// The property path a filter passes to `set_property` / `get_property` for `key`.
pub fn property_path(key: &str) -> Vec<&str> {
    vec![key]
}

/// Prefix of every request header phi-guard could emit. Identity travels in filter state,
/// never in headers, so any incoming header with this prefix is a spoofing attempt or a stale
/// hop and is removed by the first phi-guard filter that sees the request.
pub const HEADER_PREFIX: &str = "x-phi-guard-";

/// True for a header name (lower-case, as Envoy presents HTTP/2 headers) phi-guard strips.
pub fn is_reserved_header(name: &str) -> bool {
    name.len() >= HEADER_PREFIX.len()
        && name[..HEADER_PREFIX.len()].eq_ignore_ascii_case(HEADER_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_namespace() {
        for key in [IDENTITY, AUTHN, AUTHZ, MASK, RESOURCE, METHOD, REQUEST_ID] {
            assert!(key.starts_with("phi_guard."), "{key}");
        }
        assert_eq!(property_path(IDENTITY), vec!["phi_guard.identity"]);
    }

    #[test]
    fn reserved_headers() {
        assert!(is_reserved_header("x-phi-guard-role"));
        assert!(is_reserved_header("X-Phi-Guard-Subject"));
        assert!(!is_reserved_header("x-request-id"));
        assert!(!is_reserved_header("x-phi"));
    }
}
