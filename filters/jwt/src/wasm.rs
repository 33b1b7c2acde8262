//! proxy-wasm wiring: the root context owns the per-VM engine (one VM per Envoy worker) and
//! drives JWKS fetches; each HTTP stream context borrows the same engine through an `Rc`.
//!
//! Wiring only: every host call goes through `phi_guard_host::ProxyHost`, which folds errors
//! into "absent" instead of the SDK's `Context` helpers, which `unwrap()`: a panic would trap
//! the VM for every stream on this worker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use phi_guard_host::{Environment, HttpCalls, PluginConfig, ProxyHost, Timers};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::engine::Engine;
use crate::shell::{self, Metrics, JWKS_READ_LIMIT};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(JwtRoot::default()) });
}}

/// Due fetches are checked every second; the JWKS intervals themselves are in the config.
const TICK_MS: u64 = 1_000;

#[derive(Clone)]
struct Shared {
    engine: Rc<RefCell<Engine>>,
    metrics: Rc<Metrics>,
}

#[derive(Default)]
struct JwtRoot {
    shared: Option<Shared>,
    /// dispatch_http_call token → provider index.
    pending: HashMap<u32, usize>,
}

impl JwtRoot {
    fn dispatch_due(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        for fetch in shell::due_fetches(&ProxyHost, &shared.engine) {
            let token = ProxyHost.get_document(
                &fetch.cluster,
                &fetch.path,
                &fetch.authority,
                "application/json",
                fetch.timeout_ms,
            );
            match token {
                Some(token) => {
                    self.pending.insert(token, fetch.provider);
                }
                None => shell::on_jwks_dispatch_failed(
                    &ProxyHost,
                    &shared.engine,
                    &shared.metrics,
                    fetch.provider,
                ),
            }
        }
    }
}

impl Context for JwtRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(provider) = self.pending.remove(&token_id) else {
            return;
        };
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let (status, body) = ProxyHost.http_call_response(body_size, JWKS_READ_LIMIT);
        shell::on_jwks_response(
            &ProxyHost,
            &shared.engine,
            &shared.metrics,
            provider,
            status.as_deref(),
            &body,
        );
    }
}

impl RootContext for JwtRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let configuration = ProxyHost.plugin_configuration();
        // Envoy's vm_config.environment_variables (Istio vmConfig.env) reach the VM as WASI
        // environment variables.
        let env = |name: &str| ProxyHost.env_string(name);
        let Some((engine, metrics)) = shell::configure(&ProxyHost, configuration.as_deref(), &env)
        else {
            return false;
        };
        // A reconfiguration starts over: answers to the old engine's fetches are dropped.
        self.pending.clear();
        self.shared = Some(Shared {
            engine: Rc::new(RefCell::new(engine)),
            metrics: Rc::new(metrics),
        });
        ProxyHost.set_tick_period_ms(TICK_MS);
        self.dispatch_due();
        true
    }

    fn on_tick(&mut self) {
        self.dispatch_due();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(JwtStream { shared }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct JwtStream {
    shared: Shared,
}

impl Context for JwtStream {}

impl HttpContext for JwtStream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if shell::on_request_headers(&ProxyHost, &self.shared.engine, &self.shared.metrics) {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}
