//! [`Host`] over the proxy-wasm host calls.
//!
//! Host calls return `Err` only when Envoy refuses (e.g. a header map that is no longer
//! available after the stream ended); the shells treat that like an absent value and fail
//! closed where it matters, so errors are folded into `None` here rather than unwrapped: a
//! panic would trap the VM for every stream on this worker.

use std::time::UNIX_EPOCH;

use phi_guard_common::{GrpcStatus, UnixSeconds};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, GrpcStatusCode, MapType, MetricType};

use crate::{Host, LogLevel};

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

impl ProxyHost {
    /// The answer to a `dispatch_http_call`, read in `on_http_call_response`: the `:status`
    /// header (absent when the host has none) and at most `limit` bytes of the body (empty
    /// when there is none or the host refused), so a caller can tell an oversized body by
    /// asking for one byte more than it accepts.
    pub fn http_call_response(&self, body_size: usize, limit: usize) -> (Option<String>, Vec<u8>) {
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(limit))
            .ok()
            .flatten()
            .unwrap_or_default();
        (status, body)
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
