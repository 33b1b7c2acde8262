//! Every host trait over the proxy-wasm host calls: the only file of phi-guard that calls
//! `proxy_wasm::hostcalls`.
//!
//! Host calls return `Err` only when Envoy refuses (e.g. a header map that is no longer
//! available after the stream ended); the shells treat that like an absent value and fail
//! closed where it matters, so errors are folded into `None` here rather than unwrapped: a
//! panic would trap the VM for every stream on this worker.

use std::time::{Duration, UNIX_EPOCH};

use phi_guard_common::{GrpcStatus, UnixSeconds};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, GrpcStatusCode, MapType, MetricType};

use crate::{
    BodyHost, Clock, Environment, Gauges, Host, HttpCalls, LogLevel, PluginConfig, Queues, Timers,
    Trailers, UnixMillis,
};

fn proxy_level(level: LogLevel) -> proxy_wasm::types::LogLevel {
    use proxy_wasm::types::LogLevel as P;
    match level {
        LogLevel::Trace => P::Trace,
        LogLevel::Debug => P::Debug,
        LogLevel::Info => P::Info,
        LogLevel::Warn => P::Warn,
        LogLevel::Error => P::Error,
        LogLevel::Critical => P::Critical,
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyHost;

fn grpc_code(status: GrpcStatus) -> GrpcStatusCode {
    match status {
        GrpcStatus::Ok => GrpcStatusCode::Ok,
        GrpcStatus::InvalidArgument => GrpcStatusCode::InvalidArgument,
        GrpcStatus::PermissionDenied => GrpcStatusCode::PermissionDenied,
        GrpcStatus::ResourceExhausted => GrpcStatusCode::ResourceExhausted,
        GrpcStatus::Internal => GrpcStatusCode::Internal,
        GrpcStatus::Unavailable => GrpcStatusCode::Unavailable,
        GrpcStatus::Unauthenticated => GrpcStatusCode::Unauthenticated,
    }
}

impl HttpCalls for ProxyHost {
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Option<u32> {
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            body,
            Vec::new(),
            Duration::from_millis(timeout_ms),
        )
        .ok()
    }

    fn http_call_response(&self, body_size: usize, limit: usize) -> (Option<String>, Vec<u8>) {
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        // A caller that wants only the status (the audit service) reads no body.
        if limit == 0 {
            return (status, Vec::new());
        }
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(limit))
            .ok()
            .flatten()
            .unwrap_or_default();
        (status, body)
    }

    fn http_call_response_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpCallResponseHeaders, name)
            .ok()
            .flatten()
    }
}

impl Clock for ProxyHost {
    fn now_ms(&self) -> UnixMillis {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

impl BodyHost for ProxyHost {
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, start, size)
            .ok()
            .flatten()
    }

    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, start, size)
            .ok()
            .flatten()
    }

    fn set_response_body(&self, start: usize, size: usize, value: &[u8]) {
        let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, start, size, value);
    }

    fn set_response_trailer(&self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpResponseTrailers, name, Some(value));
    }

    fn reset_response(&self) {
        let _ = hostcalls::reset_http_response();
    }
}

impl Trailers for ProxyHost {
    fn response_trailer(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpResponseTrailers, name)
            .ok()
            .flatten()
    }
}

impl Queues for ProxyHost {
    fn register_queue(&self, name: &str) -> Option<u32> {
        hostcalls::register_shared_queue(name).ok()
    }

    fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        hostcalls::resolve_shared_queue(vm_id, name).ok().flatten()
    }

    fn enqueue(&self, queue_id: u32, bytes: &[u8]) -> bool {
        hostcalls::enqueue_shared_queue(queue_id, Some(bytes)).is_ok()
    }

    fn dequeue(&self, queue_id: u32) -> Option<Vec<u8>> {
        hostcalls::dequeue_shared_queue(queue_id).ok().flatten()
    }
}

impl Timers for ProxyHost {
    fn set_tick_period_ms(&self, ms: u64) {
        let _ = hostcalls::set_tick_period(Duration::from_millis(ms));
    }
}

impl Gauges for ProxyHost {
    fn define_gauge(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Gauge, name).ok()
    }

    fn record_gauge(&self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

impl Environment for ProxyHost {
    fn env_var(&self, name: &str) -> Option<Vec<u8>> {
        // Envoy hands `vm_config.environment_variables` to the VM through WASI environ.
        std::env::var_os(name).map(|v| v.into_encoded_bytes())
    }

    fn env_string(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl PluginConfig for ProxyHost {
    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
    }
}

impl Host for ProxyHost {
    fn request_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn set_request_header(&self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn remove_request_header(&self, name: &str) {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }

    fn response_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn remove_response_header(&self, name: &str) {
        let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, name);
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn set_property(&self, path: &[&str], value: &[u8]) {
        let _ = hostcalls::set_property(path.to_vec(), Some(value));
    }

    fn send_grpc_error(&self, status: GrpcStatus, extra_headers: &[(&str, &str)]) {
        let metadata = extra_headers
            .iter()
            .map(|(k, v)| (*k, v.as_bytes()))
            .collect();
        let _ = hostcalls::send_grpc_response(
            grpc_code(status),
            Some(status.generic_message()),
            metadata,
        );
    }

    fn now(&self) -> UnixSeconds {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn log(&self, level: LogLevel, message: &str) {
        let _ = hostcalls::log(proxy_level(level), message);
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    fn increment_counter(&self, id: u32, by: i64) {
        let _ = hostcalls::increment_metric(id, by);
    }
}

impl crate::SharedData for ProxyHost {
    fn get_shared_data_cas(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, u32)>, crate::SharedDataError> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Ok(Some((value, cas))),
            Ok((Some(value), None)) => Ok(Some((value, 0))),
            Ok((None, _)) => Ok(None),
            Err(_) => Err(crate::SharedDataError::Failed),
        }
    }

    fn set_shared_data_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), crate::SharedDataError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(proxy_wasm::types::Status::CasMismatch) => Err(crate::SharedDataError::CasMismatch),
            Err(_) => Err(crate::SharedDataError::Failed),
        }
    }
}
