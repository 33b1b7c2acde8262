//! [`Host`], [`AuditHost`] and [`ServiceHost`] over the proxy-wasm host calls (wasm32 only):
//! [`ProxyHost`] plus the audit-specific calls. The audit module's entry points (`wasm.rs`)
//! and the one-module pipeline (filters/pipeline) both use it.

use std::time::{Duration, UNIX_EPOCH};

use phi_guard_common::{GrpcStatus, UnixSeconds};
use phi_guard_host::{Host, LogLevel, ProxyHost};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, MetricType};

use crate::hostx::{AuditHost, ServiceHost};
use crate::time::UnixMillis;

fn now_ms() -> UnixMillis {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// [`ProxyHost`] plus the audit-specific host calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Proxy(pub ProxyHost);

impl Host for Proxy {
    fn request_header(&self, name: &str) -> Option<String> {
        self.0.request_header(name)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        self.0.request_headers()
    }
    fn set_request_header(&self, name: &str, value: &str) {
        self.0.set_request_header(name, value)
    }
    fn remove_request_header(&self, name: &str) {
        self.0.remove_request_header(name)
    }
    fn response_header(&self, name: &str) -> Option<String> {
        self.0.response_header(name)
    }
    fn remove_response_header(&self, name: &str) {
        self.0.remove_response_header(name)
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.0.property(path)
    }
    fn set_property(&self, path: &[&str], value: &[u8]) {
        self.0.set_property(path, value)
    }
    fn send_grpc_error(&self, status: GrpcStatus, extra_headers: &[(&str, &str)]) {
        self.0.send_grpc_error(status, extra_headers)
    }
    fn now(&self) -> UnixSeconds {
        self.0.now()
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.0.log(level, message)
    }
    fn define_counter(&self, name: &str) -> Option<u32> {
        self.0.define_counter(name)
    }
    fn increment_counter(&self, id: u32, by: i64) {
        self.0.increment_counter(id, by)
    }
}

impl AuditHost for Proxy {
    fn now_ms(&self) -> UnixMillis {
        now_ms()
    }

    fn response_trailer(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpResponseTrailers, name)
            .ok()
            .flatten()
    }

    fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        hostcalls::resolve_shared_queue(vm_id, name).ok().flatten()
    }

    fn enqueue(&self, queue_id: u32, bytes: &[u8]) -> bool {
        hostcalls::enqueue_shared_queue(queue_id, Some(bytes)).is_ok()
    }

    fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(key).ok().and_then(|(v, _)| v)
    }
}

impl ServiceHost for Proxy {
    fn now_ms(&self) -> UnixMillis {
        now_ms()
    }

    fn log(&self, level: LogLevel, message: &str) {
        ProxyHost.log(level, message);
    }

    fn env_var(&self, name: &str) -> Option<Vec<u8>> {
        // Envoy hands `vm_config.environment_variables` to the VM through WASI environ.
        std::env::var_os(name).map(|v| v.into_encoded_bytes())
    }

    fn register_queue(&self, name: &str) -> Option<u32> {
        hostcalls::register_shared_queue(name).ok()
    }

    fn dequeue(&self, queue_id: u32) -> Option<Vec<u8>> {
        hostcalls::dequeue_shared_queue(queue_id).ok().flatten()
    }

    fn set_shared_data(&self, key: &str, value: &[u8]) -> bool {
        // No CAS: the singleton is the only writer.
        hostcalls::set_shared_data(key, Some(value), None).is_ok()
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            Some(body),
            Vec::new(),
            Duration::from_millis(timeout_ms),
        )
        .ok()
    }

    fn set_tick_period_ms(&self, ms: u64) {
        let _ = hostcalls::set_tick_period(Duration::from_millis(ms));
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    fn define_gauge(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Gauge, name).ok()
    }

    fn increment_metric(&self, id: u32, by: i64) {
        let _ = hostcalls::increment_metric(id, by);
    }

    fn record_metric(&self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

impl phi_guard_host::SharedData for Proxy {
    fn get_shared_data_cas(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, u32)>, phi_guard_host::SharedDataError> {
        self.0.get_shared_data_cas(key)
    }

    fn set_shared_data_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), phi_guard_host::SharedDataError> {
        self.0.set_shared_data_cas(key, value, cas)
    }
}
