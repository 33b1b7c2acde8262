//! The host calls audit needs beyond [`phi_guard_host::Host`]: millisecond time, response
//! trailers (for `grpc-status`), shared queues and shared data for the filter, and a root
//! context's view (queue registration, HTTP callouts, ticks, gauges) for the service.
//!
//! They live here rather than in `filters/host` while audit is their only user; the fakes in
//! [`crate::testing`] share one [`crate::testing::Bus`] so a filter and a service can be
//! driven end to end natively.

use phi_guard_host::{Host, LogLevel};

use crate::time::UnixMillis;

/// What the HTTP filter needs on top of [`Host`].
pub trait AuditHost: Host {
    /// Host wall clock in milliseconds (the base trait only has whole seconds).
    fn now_ms(&self) -> UnixMillis;
    fn response_trailer(&self, name: &str) -> Option<String>;
    /// `resolve_shared_queue(vm_id, name)`; `None` when the service has not registered it.
    fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32>;
    /// `false` when the host refused (e.g. the queue is gone).
    fn enqueue(&self, queue_id: u32, bytes: &[u8]) -> bool;
    /// Shared data of this VM id; `None` when absent.
    fn shared_data(&self, key: &str) -> Option<Vec<u8>>;
}

/// What the singleton service's root context needs.
pub trait ServiceHost {
    fn now_ms(&self) -> UnixMillis;
    fn log(&self, level: LogLevel, message: &str);
    /// A VM environment variable (Envoy `vm_config.environment_variables`).
    fn env_var(&self, name: &str) -> Option<Vec<u8>>;
    /// `register_shared_queue`: returns the same id when called again with the same name.
    fn register_queue(&self, name: &str) -> Option<u32>;
    /// Next queued item; `None` when empty or on error.
    fn dequeue(&self, queue_id: u32) -> Option<Vec<u8>>;
    fn set_shared_data(&self, key: &str, value: &[u8]) -> bool;
    /// `dispatch_http_call`; returns the call's token, `None` when the host refused
    /// (unknown cluster, bad headers).
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u32>;
    fn set_tick_period_ms(&self, ms: u64);
    fn define_counter(&self, name: &str) -> Option<u32>;
    fn define_gauge(&self, name: &str) -> Option<u32>;
    /// Adds to a counter or sets a gauge.
    fn increment_metric(&self, id: u32, by: i64);
    fn record_metric(&self, id: u32, value: u64);
}
