//! proxy-wasm entry points: a root context that parses the config once per VM and an HTTP
//! context per stream that forwards every callback to [`MaskStream`].

use std::rc::Rc;

use phi_guard_host::{Host, LogLevel, ProxyHost};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

use crate::config::MaskConfig;
use crate::shell::{BodyHost, MaskStream, Metrics};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(MaskRoot { config: None, metrics: Rc::new(Metrics::default()) })
    });
}}

/// [`BodyHost`] over the proxy-wasm buffer and trailer host calls.
struct ProxyBody;

impl BodyHost for ProxyBody {
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

struct MaskRoot {
    config: Option<Rc<MaskConfig>>,
    metrics: Rc<Metrics>,
}

impl Context for MaskRoot {}

impl RootContext for MaskRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let host = ProxyHost;
        // An absent configuration is an empty one: the common parser refuses both by name.
        let json = self.get_plugin_configuration().unwrap_or_default();
        // Istio passes secrets as VM environment variables (vmConfig.env), which WASI exposes.
        match MaskConfig::parse(&json, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                // Metrics are defined once per VM; a reconfigure keeps the same ids.
                if self.config.is_none() {
                    self.metrics = Rc::new(Metrics::define(&host));
                }
                host.log(
                    LogLevel::Info,
                    &format!(
                        "phi-guard mask: configured, {} method(s) with a plan, {} role(s)",
                        config.plans.methods.len(),
                        config.policy.roles.len()
                    ),
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(err) => {
                host.log(LogLevel::Error, &format!("phi-guard mask: {err}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(MaskHttp {
            stream: MaskStream::new(config, Rc::clone(&self.metrics)),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct MaskHttp {
    stream: MaskStream,
}

impl Context for MaskHttp {}

impl HttpContext for MaskHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.stream.on_request_headers(&ProxyHost).into()
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.stream
            .on_request_body(&ProxyHost, &ProxyBody, body_size)
            .into()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.stream
            .on_response_headers(&ProxyHost, end_of_stream)
            .into()
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.stream
            .on_response_body(&ProxyHost, &ProxyBody, body_size, end_of_stream)
            .into()
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.stream
            .on_response_trailers(&ProxyHost, &ProxyBody)
            .into()
    }

    fn on_log(&mut self) {
        self.stream.on_log(&ProxyHost);
    }
}
