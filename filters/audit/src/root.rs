//! The module's two root contexts and its HTTP context, host-independent: `wasm.rs` hands
//! every SDK callback here with a `phi_guard_host::ProxyHost`, the tests with a
//! `phi_guard_host::FakeHost`.
//!
//! One module, two roots chosen by `root_id`: `phi_guard_audit` (the HTTP filter) and
//! `phi_guard_audit_service` (the singleton bootstrap service). The root id is read in
//! `on_configure`, where Envoy has bound the plugin, rather than at context creation.

use std::rc::Rc;

use phi_guard_common::GrpcStatus;
use phi_guard_host::{Flow, HostExt, LogLevel, PluginConfig};

use crate::config::{FilterConfig, FILTER_ROOT_ID, SERVICE_ROOT_ID};
use crate::filter::{Admission, AuditStream, FilterRuntime};
use crate::hostx::{AuditHost, ServiceHost};
use crate::service::AuditService;

/// Everything the module asks of the host: both roots' sets and the plugin configuration.
pub trait ModuleHost: AuditHost + ServiceHost + PluginConfig {}

impl<H: AuditHost + ServiceHost + PluginConfig + ?Sized> ModuleHost for H {}

#[derive(Default)]
enum Role {
    #[default]
    Unconfigured,
    Filter(Rc<FilterRuntime>),
    Service(Box<AuditService>),
}

/// The root context: the filter's runtime or the service, once configured.
#[derive(Default)]
pub struct AuditRoot {
    role: Role,
}

impl AuditRoot {
    pub fn on_configure<H: ModuleHost>(&mut self, host: &H) -> bool {
        let config = host.plugin_configuration().unwrap_or_default();
        let root_id = host
            .string_property(&["plugin_root_id"])
            .unwrap_or_default();
        match root_id.as_str() {
            FILTER_ROOT_ID => match FilterConfig::parse(&config) {
                Ok(cfg) => {
                    let runtime = Rc::new(FilterRuntime::new(host, cfg));
                    host.set_tick_period_ms(runtime.tick_ms());
                    // Streams still running under the old configuration queue their events
                    // at once: nothing ticks for the old batch any more.
                    if let Role::Filter(old) =
                        std::mem::replace(&mut self.role, Role::Filter(runtime))
                    {
                        old.retire(host);
                    }
                    true
                }
                Err(e) => {
                    host.log(LogLevel::Error, &format!("phi_guard audit: {e}"));
                    false
                }
            },
            SERVICE_ROOT_ID => {
                // Keep the service across a second on_configure: it owns the chain.
                if !matches!(self.role, Role::Service(_)) {
                    self.role = Role::Service(Box::default());
                }
                match &mut self.role {
                    Role::Service(service) => service.on_configure(host, &config),
                    _ => false,
                }
            }
            other => {
                host.log(
                    LogLevel::Error,
                    &format!(
                        "phi_guard audit: unknown root_id {other:?}: use {FILTER_ROOT_ID:?} (http filter) or {SERVICE_ROOT_ID:?} (bootstrap service)"
                    ),
                );
                false
            }
        }
    }

    /// The filter sends its batch; the service flushes, retries and expires calls.
    pub fn on_tick<H: ModuleHost>(&mut self, host: &H) {
        match &mut self.role {
            Role::Service(service) => service.on_tick(host),
            Role::Filter(runtime) => runtime.on_tick(host),
            Role::Unconfigured => {}
        }
    }

    pub fn on_queue_ready<H: ModuleHost>(&mut self, host: &H, queue_id: u32) {
        if let Role::Service(service) = &mut self.role {
            service.on_queue_ready(host, queue_id);
        }
    }

    /// `body_size`: the answer's body length, as Envoy passes it.
    pub fn on_http_call_response<H: ModuleHost>(&mut self, host: &H, token: u32, body_size: usize) {
        if let Role::Service(service) = &mut self.role {
            // No `:status` means the call failed (reset, timeout, no healthy host).
            let (status, body) =
                host.http_call_response(body_size, crate::service::MAX_RESPONSE_BYTES);
            let status = status.and_then(|s| s.parse::<u32>().ok());
            service.on_http_call_response(host, token, status, &body);
        }
    }

    /// The VM is shutting down (Envoy stops, the plugin is removed): the filter queues the
    /// events it holds (they reach the chain if the service still takes its queue).
    pub fn on_done<H: ModuleHost>(&mut self, host: &H) -> bool {
        if let Role::Filter(runtime) = &self.role {
            runtime.retire(host);
        }
        true
    }

    /// A stream of this root. The SDK traps on a missing context, so a root that is not a
    /// configured filter gets one that refuses every RPC instead (fail closed).
    pub fn stream(&self) -> AuditHttp {
        let runtime = match &self.role {
            Role::Filter(rt) => Some(Rc::clone(rt)),
            _ => None,
        };
        AuditHttp {
            runtime,
            stream: AuditStream::default(),
        }
    }
}

/// One HTTP stream of the filter root.
pub struct AuditHttp {
    runtime: Option<Rc<FilterRuntime>>,
    stream: AuditStream,
}

impl AuditHttp {
    pub fn on_request_headers<H: ModuleHost>(&mut self, host: &H) -> Flow {
        let Some(rt) = &self.runtime else {
            host.send_grpc_error(GrpcStatus::Unavailable, &[]);
            return Flow::Pause;
        };
        match self.stream.on_request_headers(host, rt) {
            Admission::Continue => Flow::Continue,
            Admission::Refused => Flow::Pause,
        }
    }

    pub fn on_log<H: ModuleHost>(&mut self, host: &H) {
        if let Some(rt) = &self.runtime {
            self.stream.on_log(host, rt);
        }
    }
}
