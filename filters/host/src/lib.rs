//! The host behind traits: the one host surface of every phi-guard stage.
//!
//! Filter shells talk to Envoy only through the capability traits here, so a shell can be
//! unit-tested natively with [`FakeHost`], which implements every one of them and records
//! every call. [`ProxyHost`] is the real thing: a thin wrapper over the proxy-wasm host
//! calls, compiled only for wasm32 because the host imports exist nowhere else
//! (wasm32-wasip1, the target Envoy loads). No crate but this one calls
//! `proxy_wasm::hostcalls`; the modules' `wasm.rs` files only wire the SDK's contexts to
//! the shells, handing them a `ProxyHost`.
//!
//! | trait | what | used by |
//! |---|---|---|
//! | [`Host`] | request and response headers, properties and filter state, local replies, time in seconds, logs, counters | every stage |
//! | [`Clock`] | time in milliseconds | audit |
//! | [`SharedData`] | compare-and-swap shared data (per `vm_id`, across workers) | jwt (replay cache), audit (the backlog flag) |
//! | [`BodyHost`] | request and response body buffers, response trailers written, reset | mask |
//! | [`Trailers`] | response trailers read | audit |
//! | [`Queues`] | shared queues: register, resolve, enqueue, dequeue | audit |
//! | [`HttpCalls`] | `dispatch_http_call` and the answer's status and body | jwt (JWKS), mask (descriptor set), audit service (OTLP) |
//! | [`Timers`] | the root context's tick period | jwt, mask, audit |
//! | [`Gauges`] | gauge metrics | audit service |
//! | [`Environment`] | VM environment variables (`vm_config.environment_variables`) | jwt, mask, audit service |
//! | [`PluginConfig`] | the plugin's configuration bytes | every module's `on_configure` |

// A panic traps the VM for every stream of its worker: none outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::cell::RefCell;
use std::rc::Rc;

use phi_guard_common::{GrpcMethod, GrpcStatus, StateSlots, UnixSeconds};

pub mod fake;
#[cfg(target_os = "wasi")]
mod proxy;
mod state;

pub use fake::{bus, Bus, FakeCall, FakeHost};
#[cfg(target_os = "wasi")]
pub use proxy::ProxyHost;
pub use state::{read_state, take_state, write_state, Unreadable};

/// A header as the host lists it: name (lower-case, as Envoy keeps them) and value.
pub type Header = (String, String);

/// Log levels, as proxy-wasm has them. Defined here rather than re-exported so that the
/// cores and their tests build for wasm32-unknown-unknown (wasm-bindgen-test) without the
/// proxy-wasm crate, whose exported entry points import Envoy's host functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

/// What a filter shell may ask of the host during one HTTP stream or at configure time.
pub trait Host {
    fn request_header(&self, name: &str) -> Option<String>;
    /// The request's gRPC method (`:path` parsed by [`GrpcMethod::from_path`]), or `None`
    /// when `:path` is not a well-formed method. A host that keeps the stream's request (the
    /// pipeline's) parses it once for all its stages.
    fn grpc_method(&self) -> Option<Rc<GrpcMethod>> {
        self.request_header(":path")
            .and_then(|p| GrpcMethod::from_path(&p))
            .map(Rc::new)
    }
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Calls `f` with the request header list as [`Host::request_headers`] returns it; a host
    /// that keeps the list (the pipeline's) lends it without copying every name and value.
    /// `f` must not call the host.
    fn with_request_headers(&self, f: &mut dyn FnMut(&[Header])) {
        f(&self.request_headers());
    }
    fn set_request_header(&self, name: &str, value: &str);
    fn remove_request_header(&self, name: &str);
    fn response_header(&self, name: &str) -> Option<String>;
    fn remove_response_header(&self, name: &str);
    /// An Envoy attribute, e.g. `["connection", "uri_san_peer_certificate"]`, or a filter-state
    /// key written by another phi-guard filter (stages use [`read_state`] for those).
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Stages write their filter-state contracts with [`write_state`].
    fn set_property(&self, path: &[&str], value: &[u8]);
    /// Ends the stream with a trailers-only gRPC response carrying `status` and its generic
    /// message; `extra_headers` go along (e.g. `www-authenticate`).
    fn send_grpc_error(&self, status: GrpcStatus, extra_headers: &[(&str, &str)]);
    /// The host's wall clock, in whole seconds.
    fn now(&self) -> UnixSeconds;
    fn log(&self, level: LogLevel, message: &str);
    /// Defines a counter (Envoy shows it as `wasmcustom.<name>`); `None` if the host refused.
    fn define_counter(&self, name: &str) -> Option<u32>;
    fn increment_counter(&self, id: u32, by: i64);
    /// The stream's typed filter-state slots, for a host that runs several stages in one
    /// stream (the pipeline): [`write_state`] keeps each value there besides writing its
    /// bytes, and [`read_state`] answers from there. `None` (the default, every single-stage
    /// host): state goes through filter-state bytes only.
    fn state_slots(&self) -> Option<&RefCell<StateSlots>> {
        None
    }
    /// Whether [`write_state`] writes the contract under `key` to the host's filter state.
    /// `true` (the default, every single-stage host): the next filter reads it there. The
    /// pipeline answers from its `filter_state` setting
    /// ([`phi_guard_common::state::Published`]); its own stages read the typed slots either way.
    fn publishes_state(&self, key: &str) -> bool {
        let _ = key;
        true
    }
}

/// Milliseconds since the Unix epoch.
pub type UnixMillis = u64;

/// The host's wall clock in milliseconds ([`Host::now`] has whole seconds).
pub trait Clock {
    fn now_ms(&self) -> UnixMillis;
}

/// The current stream's body buffers and the response trailers it writes (mask).
pub trait BodyHost {
    /// `size` bytes of the current request body chunk from `start`; `None` if the host has none.
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>>;
    /// `size` bytes of the current body chunk from `start`; `None` if the host has none.
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>>;
    /// Replaces `size` bytes from `start` of the current chunk with `value`.
    fn set_response_body(&self, start: usize, size: usize, value: &[u8]);
    fn set_response_trailer(&self, name: &str, value: &str);
    /// Resets the response stream (the last resort when no trailers will follow).
    fn reset_response(&self);
}

/// The response trailers of the current stream, read (audit reads `grpc-status` at `on_log`).
pub trait Trailers {
    fn response_trailer(&self, name: &str) -> Option<String>;
}

/// proxy-wasm shared queues: one VM registers a queue by name, VMs of any worker resolve it
/// by (vm_id, name) and enqueue; the registering VM dequeues on `on_queue_ready`.
pub trait Queues {
    /// `register_shared_queue`: returns the same id when called again with the same name.
    fn register_queue(&self, name: &str) -> Option<u32>;
    /// `resolve_shared_queue(vm_id, name)`; `None` when nobody registered it.
    fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32>;
    /// `false` when the host refused (e.g. the queue is gone).
    fn enqueue(&self, queue_id: u32, bytes: &[u8]) -> bool;
    /// Next queued item; `None` when empty or on error.
    fn dequeue(&self, queue_id: u32) -> Option<Vec<u8>>;
}

/// HTTP callouts from a root context.
pub trait HttpCalls {
    /// `dispatch_http_call` (no trailers); the call's token, `None` when the host refused
    /// (unknown cluster, bad headers).
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Option<u32>;
    /// The answer to a `dispatch_http_call`, read in `on_http_call_response`: the `:status`
    /// header (absent when the host has none, e.g. the call failed) and at most `limit` bytes
    /// of the body (empty when there is none or the host refused), so a caller can tell an
    /// oversized body by asking for one byte more than it accepts; `limit` 0 reads the status
    /// only.
    fn http_call_response(&self, body_size: usize, limit: usize) -> (Option<String>, Vec<u8>);
    /// A header of that answer (`name` lower-case, e.g. `content-type`), read in
    /// `on_http_call_response`; `None` when the answer has none.
    fn http_call_response_header(&self, name: &str) -> Option<String>;

    /// A GET of a document (jwt's JWKS, mask's descriptor set): `:method`, `:path`,
    /// `:authority` and `accept`, in that order, no body.
    fn get_document(
        &self,
        cluster: &str,
        path: &str,
        authority: &str,
        accept: &str,
        timeout_ms: u64,
    ) -> Option<u32> {
        let headers = [
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            ("accept", accept),
        ];
        self.dispatch_http_call(cluster, &headers, None, timeout_ms)
    }
}

/// The root context's timer.
pub trait Timers {
    /// `set_tick_period`; 0 stops the tick.
    fn set_tick_period_ms(&self, ms: u64);
}

/// Gauge metrics (counters are in [`Host`]).
pub trait Gauges {
    /// Defines a gauge (`wasmcustom.<name>`); `None` if the host refused.
    fn define_gauge(&self, name: &str) -> Option<u32>;
    fn record_gauge(&self, id: u32, value: u64);
}

/// The VM's environment (Envoy `vm_config.environment_variables`, Istio `vmConfig.env`):
/// where secrets come from, since a plugin's configuration cannot carry them.
pub trait Environment {
    fn env_var(&self, name: &str) -> Option<Vec<u8>>;

    /// The variable as UTF-8; `None` when absent or not UTF-8.
    fn env_string(&self, name: &str) -> Option<String> {
        self.env_var(name).and_then(|v| String::from_utf8(v).ok())
    }
}

/// The plugin's configuration (Envoy's `configuration` StringValue, Istio's `pluginConfig`).
pub trait PluginConfig {
    /// `None` when there is none or the host refused; callers treat both as empty.
    fn plugin_configuration(&self) -> Option<Vec<u8>>;
}

/// Why a shared-data write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDataError {
    /// The key changed since the CAS token was read: read again and retry.
    CasMismatch,
    /// The host refused (any other status).
    Failed,
}

/// proxy-wasm shared data: a key-value store shared by every VM with the same `vm_id` in one
/// Envoy process (so across worker threads), with compare-and-swap. Keys are never removed;
/// callers bound their own key space.
pub trait SharedData {
    /// The value and its CAS token; `Ok(None)` when the key was never set.
    fn get_shared_data_cas(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, SharedDataError>;
    /// Writes `value`. With `Some(cas)` the write happens only if the key still has that CAS
    /// token; a key never set is written whatever `cas` says (proxy-wasm semantics).
    fn set_shared_data_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError>;

    /// The value of `key`; `None` when absent or on error.
    fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        self.get_shared_data_cas(key).ok().flatten().map(|(v, _)| v)
    }

    /// Writes `key` without CAS (a single writer); `false` when the host refused.
    fn set_shared_data(&self, key: &str, value: &[u8]) -> bool {
        self.set_shared_data_cas(key, value, None).is_ok()
    }
}

/// What a shell's stream callback tells the host: go on, or hold the stream (proxy-wasm's
/// `Action`, defined here so shells stay testable off wasm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

#[cfg(target_os = "wasi")]
impl From<Flow> for proxy_wasm::types::Action {
    fn from(flow: Flow) -> Self {
        match flow {
            Flow::Continue => proxy_wasm::types::Action::Continue,
            Flow::Pause => proxy_wasm::types::Action::Pause,
        }
    }
}

/// The names in `headers` that only phi-guard may set (`x-phi-guard-*`): what a client sent
/// there is a spoof attempt, removed before any stage reads headers.
pub fn reserved_header_names(headers: &[Header]) -> Vec<String> {
    headers
        .iter()
        .filter(|(name, _)| phi_guard_common::state::is_reserved_header(name))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Helpers every shell needs, built on [`Host`] so there is one copy of each.
pub trait HostExt: Host {
    /// Removes every incoming `x-phi-guard-*` header: identity travels in filter state, so
    /// such a header can only be an attempt to spoof it.
    fn strip_reserved_headers(&self) {
        let mut reserved = Vec::new();
        self.with_request_headers(&mut |headers| reserved = reserved_header_names(headers));
        for name in &reserved {
            self.remove_request_header(name);
        }
    }

    /// Sanitizes a client-chosen request header that Envoy's access log, the audit event or
    /// the upstream will see (`x-request-id`): identifier-shaped digits are masked in place,
    /// and a value that is not an identifier at all is removed
    /// ([`phi_guard_common::sanitize::client_id`]). Returns what the header holds now.
    fn sanitize_request_header(&self, name: &str) -> Option<String> {
        use phi_guard_common::sanitize::{client_id, Sanitized};
        let value = self.request_header(name)?;
        match client_id(&value) {
            Sanitized::Clean(v) => Some(v),
            Sanitized::Masked(v) => {
                self.set_request_header(name, &v);
                Some(v)
            }
            Sanitized::Refused => {
                self.remove_request_header(name);
                None
            }
        }
    }

    /// A string attribute such as `connection.uri_san_peer_certificate`.
    fn string_property(&self, path: &[&str]) -> Option<String> {
        self.property(path)
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty())
    }
}

impl<H: Host + ?Sized> HostExt for H {}

/// Counters defined once at configure time and bumped by name-less id afterwards.
#[derive(Debug, Default, Clone)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn define(host: &dyn Host, name: &str) -> Self {
        Counter(host.define_counter(name))
    }

    pub fn inc(&self, host: &dyn Host) {
        self.add(host, 1);
    }

    /// Adds `by` (nothing for 0: no host call).
    pub fn add(&self, host: &dyn Host, by: i64) {
        if let (Some(id), true) = (self.0, by != 0) {
            host.increment_counter(id, by);
        }
    }
}
