//! proxy-wasm entry points. One module, two root contexts chosen by `root_id`:
//! `phi_guard_audit` (the HTTP filter) and `phi_guard_audit_service` (the singleton
//! bootstrap service). The root id is read in `on_configure`, where Envoy has bound the
//! plugin, rather than at context creation.

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use phi_guard_common::{GrpcStatus, UnixSeconds};
use phi_guard_host::{Host, LogLevel, ProxyHost};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};

use crate::config::{FilterConfig, FILTER_ROOT_ID, SERVICE_ROOT_ID};
use crate::filter::{Admission, AuditStream, FilterRuntime};
use crate::hostx::{AuditHost, ServiceHost};
use crate::service::AuditService;
use crate::time::UnixMillis;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuditRoot::default()) });
}}

fn now_ms() -> UnixMillis {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// [`ProxyHost`] plus the audit-specific host calls.
#[derive(Debug, Default, Clone, Copy)]
struct Proxy(ProxyHost);

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

#[derive(Default)]
enum Role {
    #[default]
    Unconfigured,
    Filter(Rc<FilterRuntime>),
    Service(Box<AuditService>),
}

#[derive(Default)]
struct AuditRoot {
    role: Role,
}

impl Context for AuditRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        if let Role::Service(service) = &mut self.role {
            // No `:status` means the call failed (reset, timeout, no healthy host).
            let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| s.parse::<u32>().ok());
            service.on_http_call_response(&Proxy::default(), token, status);
        }
    }
}

impl RootContext for AuditRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let host = Proxy::default();
        let config = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let root_id = host
            .property(&["plugin_root_id"])
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        match root_id.as_str() {
            FILTER_ROOT_ID => match FilterConfig::parse(&config) {
                Ok(cfg) => {
                    self.role = Role::Filter(Rc::new(FilterRuntime::new(&host, cfg)));
                    true
                }
                Err(e) => {
                    Host::log(&host, LogLevel::Error, &format!("phi_guard audit: {e}"));
                    false
                }
            },
            SERVICE_ROOT_ID => {
                // Keep the service across a second on_configure: it owns the chain.
                if !matches!(self.role, Role::Service(_)) {
                    self.role = Role::Service(Box::default());
                }
                match &mut self.role {
                    Role::Service(service) => service.on_configure(&host, &config),
                    _ => false,
                }
            }
            other => {
                Host::log(
                    &host,
                    LogLevel::Error,
                    &format!(
                        "phi_guard audit: unknown root_id {other:?}: use {FILTER_ROOT_ID:?} (http filter) or {SERVICE_ROOT_ID:?} (bootstrap service)"
                    ),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Role::Service(service) = &mut self.role {
            service.on_tick(&Proxy::default());
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Role::Service(service) = &mut self.role {
            service.on_queue_ready(&Proxy::default(), queue_id);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK traps on None; a root that is not a configured filter gets a context that
        // refuses every RPC instead (fail closed).
        let runtime = match &self.role {
            Role::Filter(rt) => Some(rt.clone()),
            _ => None,
        };
        Some(Box::new(AuditHttp {
            runtime,
            stream: AuditStream::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AuditHttp {
    runtime: Option<Rc<FilterRuntime>>,
    stream: AuditStream,
}

impl Context for AuditHttp {}

impl HttpContext for AuditHttp {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let host = Proxy::default();
        let Some(rt) = &self.runtime else {
            host.send_grpc_error(GrpcStatus::Unavailable, &[]);
            return Action::Pause;
        };
        match self.stream.on_request_headers(&host, rt) {
            Admission::Continue => Action::Continue,
            Admission::Refused => Action::Pause,
        }
    }

    fn on_log(&mut self) {
        if let Some(rt) = &self.runtime {
            self.stream.on_log(&Proxy::default(), rt);
        }
    }
}
