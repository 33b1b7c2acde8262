//! proxy-wasm wiring only: the root context forwards to [`JwtRoot`] (the per-VM engine and
//! the JWKS fetches), each HTTP stream context runs the shell with the root's engine,
//! through `phi_guard_host::ProxyHost`, which folds errors into "absent" instead of the
//! SDK's `Context` helpers, which `unwrap()`: a panic would trap the VM for every stream on
//! this worker.

use phi_guard_host::ProxyHost;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::root::{JwtRoot, Shared};
use crate::shell;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root(JwtRoot::default())) });
}}

struct Root(JwtRoot);

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        self.0
            .on_http_call_response(&ProxyHost, token_id, body_size);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.0.on_configure(&ProxyHost)
    }

    fn on_tick(&mut self) {
        self.0.on_tick(&ProxyHost);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.0.shared()?;
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
