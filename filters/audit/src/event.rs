//! The audit event: one per RPC, built at stream end from headers, Envoy attributes and the
//! filter state the other phi-guard filters left. It holds identifiers, decisions and counts
//! only: never a token, a claim beyond issuer/subject/tenant/role, certificate contents or a
//! message body.
//!
//! Every struct declares its fields in alphabetical order and maps are `BTreeMap`s, so
//! `serde_json::to_vec` yields sorted keys without whitespace whatever features other crates
//! switch on for `serde_json` (its `preserve_order` would change `Value`, not structs). That
//! byte string is the canonical encoding the chain covers.

use std::collections::BTreeMap;

use phi_guard_common::{
    AuthnOutcome, AuthnResult, AuthzDecision, AuthzMode, Identity, MaskFailure, MaskSummary,
    ResourceId, Verdict,
};
use phi_guard_host::{take_state, HostExt};
use serde::{Deserialize, Serialize};

use crate::hostx::AuditHost;
use crate::time::{format_iso8601_ms, UnixMillis};

/// Value of [`AuditEvent::schema`]; bumped on any incompatible change.
pub const SCHEMA: &str = "phi_guard.audit.v1";

/// Longest identifier (request id, resource id, SAN, claim) copied into an event; longer
/// values are dropped rather than cut, so a truncated id can never match another record.
pub const MAX_ID_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub correlation: Correlation,
    pub outcome: Outcome,
    pub schema: String,
    /// UTC, `YYYY-MM-DDTHH:MM:SS.mmmZ`, host time at stream end.
    pub time: String,
    pub what: What,
    pub who: Who,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Correlation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Only a well-formed W3C traceparent; anything else is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Who {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The peer certificate's URI SAN (the SPIFFE ID), never the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The effective role rbac decided with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct What {
    /// What the client claims it asks for: the request header named by
    /// `claimed_resource_id_header`, sanitized. Evidence of intent only; `resource_id` is
    /// what the request asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_resource_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The resource the request message asks for: the field annotated `phi.v1.resource_id`
    /// (or named by the mask catalog), read by the mask filter from the first request message
    /// into filter state `phi_guard.resource` (sanitized there and again here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authn: Option<Authn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz: Option<Authz>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<Mask>,
    /// Envoy `request.total_size` (headers + body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
}

/// No `Default`: a verdict or a result is never implied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub result: AuthnResult,
}

/// No `Default`: a verdict or a result is never implied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authz {
    /// Set when a break-glass rule decided (allowed or refused): the post-access review list
    /// (`phi-guard-audit-verify --break-glass`) is made of these events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// The policy's reason code for an allowed break-glass access (never free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_reason: Option<String>,
    pub decision: Verdict,
    pub mode: AuthzMode,
    pub policy_version: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<Verdict>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Mask {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<MaskFailure>,
    /// `"<class>/<action>"` → number of fields masked.
    pub fields: BTreeMap<String, u64>,
    pub messages: u64,
    /// Fields unknown to the descriptor set, dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_fields: u64,
    /// `Any` values of unknown types, dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_any: u64,
    /// The method was passed through unmasked (mask's pass-through list).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_through: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl AuditEvent {
    /// The canonical bytes: sorted keys, no whitespace, UTF-8.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_canonical(&mut out);
        out
    }

    /// Appends the canonical bytes to `out` (the filter reuses one buffer per VM, so an
    /// event costs no allocation of its own).
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // Serialising plain structs of strings and integers cannot fail; an empty object
        // would still be chained and visible rather than trapping the VM.
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.truncate(start);
            out.extend_from_slice(b"{}");
        }
    }

    /// Severity for the log record: anything but a clean OK is worth a second look.
    pub fn is_ok(&self) -> bool {
        self.outcome.grpc_status == Some(0)
    }
}

/// What the filter's config says about building events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventOptions {
    /// Request header holding the resource id the client claims (e.g. `x-patient-id`).
    pub claimed_resource_id_header: Option<String>,
}

/// A client-chosen identifier (request id, resource id): validated and pattern-masked by the
/// one sanitizer every filter uses (`phi_guard_common::sanitize::client_id`), so an
/// SSN-shaped `x-request-id` never reaches the tamper-evident log; anything that could
/// smuggle free text (spaces, quotes, control bytes, e-mail addresses) is dropped.
fn id_like(value: &str) -> Option<String> {
    phi_guard_common::sanitize::client_id(value).value()
}

/// A claim value the token's holder could choose (`sub`, tenant): the one sanitizer every
/// filter uses, over the claim alphabet (`phi_guard_common::sanitize::printable`), so an
/// SSN-shaped `sub` is masked and an e-mail-shaped one dropped before it reaches the log.
fn claim(value: &str) -> Option<String> {
    phi_guard_common::sanitize::printable(value).value()
}

/// A SAN URI or configured name: printable ASCII without spaces, bounded (kept as it is, or
/// left out).
fn printable(value: String) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(value)
}

/// W3C trace-context `traceparent`: `vv-<32 hex>-<16 hex>-ff`, lower-case hex, version not
/// `ff`, trace and parent ids not all zero. A future version may append `-...`; only the
/// four known fields are kept.
pub fn valid_traceparent(value: &str) -> Option<String> {
    let b = value.as_bytes();
    if !value.is_ascii() || b.len() < 55 || (b.len() > 55 && (b[55] != b'-' || &b[..2] == b"00")) {
        return None;
    }
    let head = &value[..55];
    let parts: Vec<&str> = head.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    if parts.len() != 4
        || !hex(parts[0], 2)
        || parts[0] == "ff"
        || !hex(parts[1], 32)
        || !hex(parts[2], 16)
        || !hex(parts[3], 2)
        || parts[1].bytes().all(|c| c == b'0')
        || parts[2].bytes().all(|c| c == b'0')
    {
        return None;
    }
    Some(head.to_string())
}

/// Envoy serialises integer attributes (`request.total_size`, `response.grpc_status`) as
/// 8 little-endian bytes and durations (`request.duration`) as 8-byte nanoseconds; a
/// decimal string is accepted too so a host that stringifies still works.
pub fn int_attribute(bytes: &[u8]) -> Option<i64> {
    if let Ok(raw) = <[u8; 8]>::try_from(bytes) {
        return Some(i64::from_le_bytes(raw));
    }
    let s = std::str::from_utf8(bytes).ok()?;
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn grpc_status_text(value: &str) -> Option<u32> {
    let v = value.trim();
    if v.is_empty() || v.len() > 3 || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Where [`grpc_status`] found the status, for a debug line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcStatusSource {
    Trailers,
    Headers,
    Attribute,
}

/// The RPC's gRPC status: trailers for a normal response, response headers for a
/// trailers-only one, else Envoy's `response.grpc_status` attribute (which also maps an
/// HTTP-only failure such as a 503 from the router to a gRPC code).
pub fn grpc_status<H: AuditHost + ?Sized>(host: &H) -> Option<(u32, GrpcStatusSource)> {
    if let Some(v) = host
        .response_trailer("grpc-status")
        .and_then(|v| grpc_status_text(&v))
    {
        return Some((v, GrpcStatusSource::Trailers));
    }
    if let Some(v) = host
        .response_header("grpc-status")
        .and_then(|v| grpc_status_text(&v))
    {
        return Some((v, GrpcStatusSource::Headers));
    }
    host.property(&["response", "grpc_status"])
        .and_then(|b| int_attribute(&b))
        .and_then(|v| u32::try_from(v).ok())
        .map(|v| (v, GrpcStatusSource::Attribute))
}

fn non_negative(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

/// Builds the event for the stream that is ending. `started_ms` is when the filter saw the
/// request headers (absent if it never did, e.g. a stream reset before them); the duration is
/// `now - started_ms` in milliseconds, on the host clock, and Envoy's `request.duration`
/// without a start. The stages' contracts are taken from
/// the host's typed slots ([`take_state`]): call it once, at the stream's end. Missing inputs
/// leave fields out; nothing panics.
pub fn build_event<H: AuditHost + ?Sized>(
    host: &H,
    opts: &EventOptions,
    started_ms: Option<UnixMillis>,
) -> AuditEvent {
    build_event_at(host, opts, started_ms, host.now_ms())
}

/// [`build_event`] at `now_ms` (Unix milliseconds): the event's `time`, and the end of its
/// duration.
pub fn build_event_at<H: AuditHost + ?Sized>(
    host: &H,
    opts: &EventOptions,
    started_ms: Option<UnixMillis>,
    now_ms: UnixMillis,
) -> AuditEvent {
    // A missing or unreadable record leaves its part of the event out. The event is the
    // stream's last reader of them: taken, not copied.
    let mut identity = take_state::<Identity, _>(host).ok().flatten();
    let mut authn = take_state::<AuthnOutcome, _>(host).ok().flatten();
    let mut authz = take_state::<AuthzDecision, _>(host).ok().flatten();
    let mask = take_state::<MaskSummary, _>(host).ok().flatten();
    let method = host.grpc_method();

    // Moved out of the records where the event does not carry them again.
    let provider = identity
        .as_mut()
        .map(|i| std::mem::take(&mut i.provider))
        .or_else(|| authn.as_mut().and_then(|a| a.provider.take()))
        .and_then(printable);
    let issuer = identity
        .as_mut()
        .map(|i| std::mem::take(&mut i.issuer))
        .and_then(printable);
    let role = authz
        .as_mut()
        .map(|a| std::mem::take(&mut a.role))
        .and_then(printable);

    // The module's own clock, not Envoy's `request.duration`: the same span within the
    // clock's millisecond (the request headers arrive microseconds after the stream's first
    // byte), without a host call per RPC. Envoy's figure only for a stream the module never
    // saw start (refused by a filter before it, or reset before its headers).
    let duration_ms = match started_ms {
        Some(start) => Some(now_ms.saturating_sub(start)),
        None => host
            .property(&["request", "duration"])
            .and_then(|b| int_attribute(&b))
            .and_then(|ns| u64::try_from(ns).ok())
            .map(|ns| ns / 1_000_000),
    };

    AuditEvent {
        schema: SCHEMA.to_string(),
        time: format_iso8601_ms(now_ms),
        correlation: Correlation {
            request_id: host
                .request_header("x-request-id")
                .and_then(|v| id_like(&v)),
            traceparent: host
                .request_header("traceparent")
                .and_then(|v| valid_traceparent(&v)),
        },
        who: Who {
            peer: host
                .string_property(&["connection", "uri_san_peer_certificate"])
                .and_then(printable),
            issuer,
            subject: identity.as_ref().and_then(|i| claim(&i.subject)),
            tenant: identity
                .as_ref()
                .and_then(|i| i.tenant.as_deref())
                .and_then(claim),
            provider,
            role,
        },
        what: What {
            // The client chose `:path` too: a method named like an SSN is masked.
            service: method.as_ref().and_then(|m| id_like(&m.service)),
            method: method.as_ref().and_then(|m| id_like(&m.method)),
            resource_id: take_state::<ResourceId, _>(host)
                .ok()
                .flatten()
                .and_then(|ResourceId(v)| id_like(&v)),
            claimed_resource_id: opts
                .claimed_resource_id_header
                .as_deref()
                .and_then(|h| host.request_header(h))
                .and_then(|v| id_like(&v)),
        },
        outcome: Outcome {
            authn: authn.map(|a| Authn {
                result: a.result,
                reason: a.reason,
            }),
            authz: authz.map(|a| Authz {
                decision: a.decision,
                mode: a.mode,
                policy_version: a.policy_version,
                reason: a.reason,
                rule: a.rule,
                shadow_decision: a.shadow_decision,
                break_glass: a.break_glass,
                break_glass_reason: a.break_glass_reason,
            }),
            grpc_status: grpc_status(host).map(|(v, _)| v),
            // The mask summary is counts by class; its role duplicates who.role.
            mask: mask.map(|m| Mask {
                failure: m.failure,
                fields: m.fields,
                messages: m.messages,
                unknown_fields: m.unknown_fields,
                unknown_any: m.unknown_any,
                pass_through: m.pass_through,
            }),
            duration_ms,
            request_bytes: non_negative(
                host.property(&["request", "total_size"])
                    .and_then(|b| int_attribute(&b)),
            ),
            response_bytes: non_negative(
                host.property(&["response", "total_size"])
                    .and_then(|b| int_attribute(&b)),
            ),
        },
    }
}

/// Re-encodes any JSON value with object keys sorted and no whitespace, independently of
/// serde_json's map type: tests use it to prove [`AuditEvent::canonical_bytes`] is canonical,
/// and the verifier to report a non-canonical body.
pub fn canonicalize(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        canonicalize(&map[k.as_str()])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonicalize).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}
