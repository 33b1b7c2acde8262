//! Filter-state keys, the contract each one carries, and the request headers the filters own.
//!
//! A filter writes with `set_property(["phi_guard.<key>"], bytes)`; a later filter on the same
//! stream reads with `get_property(["phi_guard.<key>"])`. Envoy stores them as
//! `wasm.phi_guard.<key>`, which access logs can print with `%FILTER_STATE(...)%`.
//!
//! Each key has exactly one type, its [`StateContract`]: the type names the key and its byte
//! format, so no filter names a key by string. Filters read and write them only through
//! `phi_guard_host::read_state` / `write_state`. Every reader tolerates a missing key and
//! fails closed where security depends on it; an unreadable value (not the contract's format)
//! is reported apart from a missing one so a reader can say so.

use crate::identity::Identity;
use crate::outcome::{AuthnOutcome, AuthzDecision, MaskSummary};

/// JSON [`crate::Identity`], written by jwt on success.
pub const IDENTITY: &str = "phi_guard.identity";
/// JSON [`AuthnOutcome`] `{"result":"ok"|"failed"|"skipped","reason":...}` from jwt, for the
/// audit event.
pub const AUTHN: &str = "phi_guard.authn";
/// JSON [`AuthzDecision`] from rbac (decision, rule, effective role, policy version).
pub const AUTHZ: &str = "phi_guard.authz";
/// JSON [`MaskSummary`] from mask (counts per class and action, never values).
pub const MASK: &str = "phi_guard.mask";
/// Plain text ([`ResourceId`]), the id of the resource the request asks for, read by mask
/// from the first request message (the field annotated `phi.v1.resource_id` or named by the
/// catalog) after [`crate::sanitize::client_id`]; absent when the method has no such field,
/// the field is absent or refused, or the message could not be read. The audit event's
/// `what.resource_id`.
pub const RESOURCE: &str = "phi_guard.resource";
/// Plain text ([`MethodLabel`]), the form access logs print instead of `:path`: see
/// [`crate::grpc::method_label`]. Written by jwt, the first phi-guard filter, on every request.
pub const METHOD: &str = "phi_guard.method";
/// Plain text ([`RequestId`]), `x-request-id` after [`crate::sanitize::client_id`] (absent
/// when refused), written by jwt so access logs never print the raw client header.
pub const REQUEST_ID: &str = "phi_guard.request_id";

/// Every contract's key, in the order the stages write them.
pub const KEYS: [&str; 7] = [IDENTITY, AUTHN, AUTHZ, MASK, RESOURCE, METHOD, REQUEST_ID];

/// The contracts a host writes to Envoy's filter state, a subset of [`KEYS`]. A single-stage
/// module writes every one (the next filter reads it there). The pipeline hands its stages'
/// values over in memory and writes only these (its `filter_state` setting; all by
/// default): each new filter-state key costs Envoy an object and a map entry on every RPC
/// (about 1.2 µs in V8, docs/PERFORMANCE.md), worth paying only for a key something reads, an
/// access log's `%FILTER_STATE(wasm.phi_guard.<key>)%` or a filter after the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published(u8);

impl Published {
    /// Every contract.
    pub const ALL: Published = Published((1 << KEYS.len()) - 1);
    /// None: nothing reads phi-guard's filter state.
    pub const NONE: Published = Published(0);

    fn bit(key: &str) -> Option<u8> {
        KEYS.iter().position(|k| *k == key).map(|i| 1 << i)
    }

    /// This set and `key`; `None` when `key` is not one of [`KEYS`].
    pub fn with(self, key: &str) -> Option<Published> {
        Self::bit(key).map(|b| Published(self.0 | b))
    }

    pub fn contains(self, key: &str) -> bool {
        Self::bit(key).is_some_and(|b| self.0 & b != 0)
    }

    /// Both sets' keys.
    pub fn union(self, other: Published) -> Published {
        Published(self.0 | other.0)
    }

    /// The keys in the set, in [`KEYS`] order.
    pub fn keys(self) -> impl Iterator<Item = &'static str> {
        KEYS.into_iter().filter(move |k| self.contains(k))
    }

    /// A configured list of keys (`None` for an item that is not a string), each once: the
    /// pipeline's `filter_state` and the project file's. The error says which item is wrong
    /// and why, never echoing it.
    pub fn from_list<'a>(
        items: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Result<Published, KeyListError> {
        let mut set = Published::NONE;
        for (index, item) in items.into_iter().enumerate() {
            let error = |kind| KeyListError { index, kind };
            let key = item.ok_or(error(KeyListFault::NotAString))?;
            if set.contains(key) {
                return Err(error(KeyListFault::Twice));
            }
            set = set.with(key).ok_or(error(KeyListFault::Unknown))?;
        }
        Ok(set)
    }
}

/// What is wrong with item `index` of a list of filter-state keys ([`Published::from_list`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyListError {
    pub index: usize,
    pub kind: KeyListFault,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyListFault {
    NotAString,
    Unknown,
    Twice,
}

impl KeyListError {
    /// The reason, for a config error naming the item's field.
    pub fn reason(&self) -> String {
        match self.kind {
            KeyListFault::NotAString => "must be a string, a filter-state key".to_string(),
            KeyListFault::Unknown => format!(
                "not a phi-guard filter-state key (the keys are {})",
                KEYS.join(", ")
            ),
            KeyListFault::Twice => "the key appears twice".to_string(),
        }
    }
}

/// The type a filter-state key carries: its key and its byte format. Implemented once per key
/// (below); `phi_guard_host::{read_state, write_state}` are the only code that turns one into
/// bytes or back.
pub trait StateContract: Sized + Clone {
    /// The filter-state key, `phi_guard.<name>`.
    const KEY: &'static str;

    /// The bytes written to filter state (what Envoy's access log prints).
    fn encode(&self) -> Vec<u8>;

    /// `None` when `bytes` are not this contract's format.
    fn decode(bytes: &[u8]) -> Option<Self>;

    /// This contract's place in a stream's [`StateSlots`].
    fn slot(slots: &mut StateSlots) -> &mut Option<Self>;
}

/// One typed slot per contract: what a host that runs several stages in one stream (the
/// pipeline) keeps of each value a stage wrote, so a later stage gets the value itself and
/// nothing is serialised for one stage and parsed again by the next. A new contract gets a
/// field here and its [`StateContract::slot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateSlots {
    pub identity: Option<Identity>,
    pub authn: Option<AuthnOutcome>,
    pub authz: Option<AuthzDecision>,
    pub mask: Option<MaskSummary>,
    pub resource: Option<ResourceId>,
    pub method: Option<MethodLabel>,
    pub request_id: Option<RequestId>,
}

/// JSON contracts: serde's encoding, read back strictly (`deny_unknown_fields` on each type,
/// every closed set an enum).
macro_rules! json_contract {
    ($($t:ty => $key:expr, $slot:ident),* $(,)?) => {$(
        impl StateContract for $t {
            const KEY: &'static str = $key;

            fn slot(slots: &mut StateSlots) -> &mut Option<Self> {
                &mut slots.$slot
            }

            fn encode(&self) -> Vec<u8> {
                // Plain structs of strings, integers and string-keyed maps always serialise;
                // were one not to, an empty value is written, which every reader refuses
                // (fail closed) rather than trapping the VM.
                serde_json::to_vec(self).unwrap_or_default()
            }

            fn decode(bytes: &[u8]) -> Option<Self> {
                serde_json::from_slice(bytes).ok()
            }
        }
    )*};
}

json_contract!(
    Identity => IDENTITY, identity,
    AuthnOutcome => AUTHN, authn,
    AuthzDecision => AUTHZ, authz,
    MaskSummary => MASK, mask,
);

/// Plain-text contracts: the UTF-8 bytes of one string.
macro_rules! text_contract {
    ($($(#[$meta:meta])* $t:ident => $key:expr, $slot:ident),* $(,)?) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $t(pub String);

        impl StateContract for $t {
            const KEY: &'static str = $key;

            fn slot(slots: &mut StateSlots) -> &mut Option<Self> {
                &mut slots.$slot
            }

            fn encode(&self) -> Vec<u8> {
                self.0.as_bytes().to_vec()
            }

            fn decode(bytes: &[u8]) -> Option<Self> {
                String::from_utf8(bytes.to_vec()).ok().map($t)
            }
        }
    )*};
}

text_contract!(
    /// Under [`RESOURCE`]: the resource id mask read from the first request message.
    ResourceId => RESOURCE, resource,
    /// Under [`METHOD`]: [`crate::grpc::method_label`] of the request.
    MethodLabel => METHOD, method,
    /// Under [`REQUEST_ID`]: the sanitized `x-request-id`.
    RequestId => REQUEST_ID, request_id,
);

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
    fn a_key_list_is_a_set_of_known_keys_each_once() {
        let set = Published::from_list([Some(AUTHZ), Some(IDENTITY)]).unwrap();
        assert_eq!(set.keys().collect::<Vec<_>>(), [IDENTITY, AUTHZ]);
        let more = set.union(Published::from_list([Some(MASK)]).unwrap());
        assert_eq!(more.keys().collect::<Vec<_>>(), [IDENTITY, AUTHZ, MASK]);
        assert_eq!(Published::ALL.keys().collect::<Vec<_>>(), KEYS);
        assert_eq!(Published::from_list([]), Ok(Published::NONE));
        let fault =
            |items: &[Option<&str>]| Published::from_list(items.iter().copied()).unwrap_err();
        assert_eq!(
            fault(&[Some(AUTHN), None]),
            KeyListError {
                index: 1,
                kind: KeyListFault::NotAString
            }
        );
        assert_eq!(
            fault(&[Some("wasm.phi_guard.authn")]).kind,
            KeyListFault::Unknown
        );
        assert_eq!(fault(&[Some(AUTHN), Some(AUTHN)]).index, 1);
        // The reason lists the keys, never the item.
        let e = fault(&[Some("SECRET-VALUE-123")]);
        assert!(e.reason().contains(IDENTITY) && !e.reason().contains("SECRET"));
    }

    #[test]
    fn keys_share_the_namespace() {
        for key in [IDENTITY, AUTHN, AUTHZ, MASK, RESOURCE, METHOD, REQUEST_ID] {
            assert!(key.starts_with("phi_guard."), "{key}");
        }
    }

    #[test]
    fn each_key_has_one_contract() {
        let keys = [
            Identity::KEY,
            AuthnOutcome::KEY,
            AuthzDecision::KEY,
            MaskSummary::KEY,
            ResourceId::KEY,
            MethodLabel::KEY,
            RequestId::KEY,
        ];
        let mut unique = keys.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
        assert_eq!(
            keys,
            [IDENTITY, AUTHN, AUTHZ, MASK, RESOURCE, METHOD, REQUEST_ID]
        );
    }

    #[test]
    fn each_contract_has_its_own_slot() {
        let mut slots = StateSlots::default();
        *Identity::slot(&mut slots) = Some(Identity::default());
        *ResourceId::slot(&mut slots) = Some(ResourceId("p-1".into()));
        *MethodLabel::slot(&mut slots) = Some(MethodLabel("a.B/C".into()));
        assert_eq!(slots.identity, Some(Identity::default()));
        assert_eq!(slots.resource, Some(ResourceId("p-1".into())));
        assert_eq!(slots.method, Some(MethodLabel("a.B/C".into())));
        assert_eq!(
            (&slots.authn, &slots.authz, &slots.mask, &slots.request_id),
            (&None, &None, &None, &None)
        );
    }

    #[test]
    fn text_contracts_are_the_plain_bytes() {
        let id = ResourceId("p-0001".into());
        assert_eq!(id.encode(), b"p-0001");
        assert_eq!(ResourceId::decode(b"p-0001"), Some(id));
        assert_eq!(MethodLabel::decode(b"\xff\xfe"), None, "not UTF-8");
        assert_eq!(RequestId::decode(b""), Some(RequestId(String::new())));
    }

    #[test]
    fn reserved_headers() {
        assert!(is_reserved_header("x-phi-guard-role"));
        assert!(is_reserved_header("X-Phi-Guard-Subject"));
        assert!(!is_reserved_header("x-request-id"));
        assert!(!is_reserved_header("x-phi"));
    }
}
