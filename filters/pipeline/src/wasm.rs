//! proxy-wasm wiring: the root context owns the [`Pipeline`] (one per VM, i.e. per Envoy
//! worker), dispatches the stages' fetches on a tick and hands each answer to the stage that
//! asked; each HTTP context forwards every callback to its [`Stream`]. Wiring only: every
//! host call goes through `phi_guard_host::ProxyHost`.

use phi_guard_host::{Environment, Host, HttpCalls, LogLevel, PluginConfig, ProxyHost, Timers};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::pipeline::{Pipeline, Stream};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { pipeline: None, ticks_per_fetch_check: 1, ticks: 0 }) });
}}

/// Due fetches are checked every second; the intervals themselves are in the stages' configs.
/// The tick itself may be faster (audit's `batch_flush_ms`).
const FETCH_CHECK_MS: u64 = 1_000;

/// Envoy's vm_config.environment_variables (Istio vmConfig.env) reach the VM through WASI.
fn env(name: &str) -> Option<String> {
    ProxyHost.env_string(name)
}

struct Root {
    pipeline: Option<Pipeline>,
    /// Ticks per fetch check, and ticks since the last one.
    ticks_per_fetch_check: u64,
    ticks: u64,
}

impl Root {
    fn dispatch_due(&mut self) {
        let Some(pipeline) = self.pipeline.as_mut() else {
            return;
        };
        for fetch in pipeline.due_fetches(&ProxyHost) {
            let token = ProxyHost.get_document(
                &fetch.cluster,
                &fetch.path,
                &fetch.authority,
                fetch.accept,
                fetch.timeout_ms,
            );
            pipeline.on_dispatched(&ProxyHost, fetch.owner, token);
        }
    }
}

impl Context for Root {
    /// The VM is shutting down: the audit stage queues the events it holds, and any stream
    /// that still ends queues its event at once.
    fn on_done(&mut self) -> bool {
        if let Some(pipeline) = &self.pipeline {
            pipeline.retire(&ProxyHost);
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(pipeline) = self.pipeline.as_mut() else {
            return;
        };
        let Some(limit) = pipeline.response_limit(token_id) else {
            return;
        };
        let (status, body) = ProxyHost.http_call_response(body_size, limit);
        pipeline.on_http_call_response(&ProxyHost, token_id, status.as_deref(), &body, &env);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let configuration = ProxyHost.plugin_configuration().unwrap_or_default();
        match Pipeline::configure(&ProxyHost, &configuration, &env) {
            Ok(pipeline) => {
                // A reconfiguration starts over: answers to the old stages' fetches are dropped,
                // the old audit stage's batch is queued.
                let fetches = pipeline.fetches();
                let tick_ms = pipeline.tick_ms(FETCH_CHECK_MS);
                if let Some(old) = self.pipeline.replace(pipeline) {
                    old.retire(&ProxyHost);
                }
                if let Some(ms) = tick_ms {
                    ProxyHost.set_tick_period_ms(ms);
                    self.ticks_per_fetch_check = FETCH_CHECK_MS.div_ceil(ms.max(1));
                    self.ticks = 0;
                }
                if fetches {
                    self.dispatch_due();
                }
                true
            }
            Err(err) => {
                // Names the field, never a value (ConfigError's contract).
                ProxyHost.log(LogLevel::Error, &format!("phi-guard pipeline: {err}"));
                if let Some(old) = self.pipeline.take() {
                    old.retire(&ProxyHost);
                }
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(pipeline) = &self.pipeline {
            pipeline.flush(&ProxyHost);
        }
        self.ticks += 1;
        if self.ticks >= self.ticks_per_fetch_check {
            self.ticks = 0;
            self.dispatch_due();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let stream = match &self.pipeline {
            Some(pipeline) => pipeline.stream(),
            None => Stream::refusing(),
        };
        Some(Box::new(Http { stream }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    stream: Stream,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.stream.on_request_headers(&ProxyHost).into()
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.stream
            .on_request_body(&ProxyHost, &ProxyHost, body_size)
            .into()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.stream
            .on_response_headers(&ProxyHost, end_of_stream)
            .into()
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.stream
            .on_response_body(&ProxyHost, &ProxyHost, body_size, end_of_stream)
            .into()
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.stream
            .on_response_trailers(&ProxyHost, &ProxyHost)
            .into()
    }

    fn on_log(&mut self) {
        self.stream.on_log(&ProxyHost);
    }
}
