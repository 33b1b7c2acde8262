//! proxy-wasm entry points. One module, two root contexts chosen by `root_id`:
//! `phi_guard_audit` (the HTTP filter) and `phi_guard_audit_service` (the singleton
//! bootstrap service). The root id is read in `on_configure`, where Envoy has bound the
//! plugin, rather than at context creation.

use std::rc::Rc;
use std::time::Duration;

use phi_guard_common::GrpcStatus;
use phi_guard_host::{Host, LogLevel};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};

use crate::config::{FilterConfig, FILTER_ROOT_ID, SERVICE_ROOT_ID};
use crate::filter::{Admission, AuditStream, FilterRuntime};
use crate::proxy::Proxy;
use crate::service::AuditService;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuditRoot::default()) });
}}

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
    /// The VM is shutting down (Envoy stops, the plugin is removed): the filter queues the
    /// events it holds (they reach the chain if the service still takes its queue).
    fn on_done(&mut self) -> bool {
        if let Role::Filter(runtime) = &self.role {
            runtime.retire(&Proxy::default());
        }
        true
    }

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
                    let runtime = Rc::new(FilterRuntime::new(&host, cfg));
                    let _ = hostcalls::set_tick_period(Duration::from_millis(runtime.tick_ms()));
                    // Streams still running under the old configuration queue their events
                    // at once: nothing ticks for the old batch any more.
                    if let Role::Filter(old) =
                        std::mem::replace(&mut self.role, Role::Filter(runtime))
                    {
                        old.retire(&host);
                    }
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
        match &mut self.role {
            Role::Service(service) => service.on_tick(&Proxy::default()),
            Role::Filter(runtime) => runtime.on_tick(&Proxy::default()),
            Role::Unconfigured => {}
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
