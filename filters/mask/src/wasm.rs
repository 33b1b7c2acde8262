//! proxy-wasm entry points: a root context that parses the config once per VM (and, for a
//! fetched descriptor set, dispatches the fetches on a tick and hands the answers to
//! [`remote_shell`]), and an HTTP context per stream that forwards every callback to
//! [`MaskStream`] (or, before the first set, refuses the call through [`remote_shell`]).
//! Wiring only: every host call goes through `phi_guard_host::ProxyHost`.

use std::rc::Rc;

use phi_guard_host::{Environment, Host, HttpCalls, PluginConfig, ProxyHost, Timers};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::config::MaskConfig;
use crate::remote::{MaskSource, RemoteMask, READ_LIMIT};
use crate::remote_shell::{self, FetchMetrics};
use crate::shell::{MaskStream, Metrics};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(MaskRoot {
            config: None,
            remote: None,
            pending: None,
            metrics: Rc::new(Metrics::default()),
            fetch_metrics: Rc::new(FetchMetrics::default()),
        })
    });
}}

/// Due descriptor-set fetches are checked every second; the intervals are in the config.
const TICK_MS: u64 = 1_000;

/// Istio passes secrets as VM environment variables (vmConfig.env), which WASI exposes.
fn env(name: &str) -> Option<String> {
    ProxyHost.env_string(name)
}

struct MaskRoot {
    /// The inline set's config; `None` with a fetched set (see `remote`).
    config: Option<Rc<MaskConfig>>,
    remote: Option<RemoteMask>,
    /// Token of the descriptor-set fetch in flight.
    pending: Option<u32>,
    metrics: Rc<Metrics>,
    fetch_metrics: Rc<FetchMetrics>,
}

impl MaskRoot {
    fn dispatch_due(&mut self) {
        let host = ProxyHost;
        let Some(remote) = self.remote.as_mut() else {
            return;
        };
        if !remote.start_due_fetch(host.now()) {
            return;
        }
        let source = remote.source();
        let token = host.get_document(
            &source.cluster,
            &source.path,
            &source.authority,
            "application/octet-stream",
            source.timeout_ms,
        );
        match token {
            Some(token) => self.pending = Some(token),
            None => remote_shell::on_dispatch_failed(&host, remote, &self.fetch_metrics),
        }
    }
}

impl Context for MaskRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if self.pending != Some(token_id) {
            return;
        }
        self.pending = None;
        let Some(remote) = self.remote.as_mut() else {
            return;
        };
        let (status, body) = ProxyHost.http_call_response(body_size, READ_LIMIT);
        remote_shell::on_response(
            &ProxyHost,
            remote,
            &self.fetch_metrics,
            status.as_deref(),
            &body,
            &env,
        );
    }
}

impl RootContext for MaskRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let host = ProxyHost;
        // An absent configuration is an empty one: the common parser refuses both by name.
        let json = host.plugin_configuration().unwrap_or_default();
        let Some(source) = remote_shell::configure(&host, &json, &env) else {
            return false;
        };
        // Metrics are defined once per VM; a reconfigure keeps the same ids.
        if self.config.is_none() && self.remote.is_none() {
            self.metrics = Rc::new(Metrics::define(&host));
            self.fetch_metrics = Rc::new(FetchMetrics::define(&host));
        }
        // A reconfiguration starts over: the answer to the old source's fetch is dropped.
        self.pending = None;
        match source {
            MaskSource::Inline(config) => {
                self.config = Some(Rc::new(*config));
                self.remote = None;
            }
            MaskSource::Remote(remote) => {
                self.config = None;
                self.remote = Some(*remote);
                host.set_tick_period_ms(TICK_MS);
                self.dispatch_due();
            }
        }
        true
    }

    fn on_tick(&mut self) {
        self.dispatch_due();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = match (&self.config, &self.remote) {
            (Some(config), _) => Some(Rc::clone(config)),
            (None, Some(remote)) => remote.config(),
            (None, None) => return None,
        };
        Some(match config {
            Some(config) => Box::new(MaskHttp {
                stream: MaskStream::new(config, Rc::clone(&self.metrics)),
            }),
            None => Box::new(NoSetHttp {
                metrics: Rc::clone(&self.fetch_metrics),
            }),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A stream that began before the first descriptor set arrived: refused at its headers.
struct NoSetHttp {
    metrics: Rc<FetchMetrics>,
}

impl Context for NoSetHttp {}

impl HttpContext for NoSetHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        remote_shell::refuse_no_set(&ProxyHost, &self.metrics).into()
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
