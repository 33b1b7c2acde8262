//! proxy-wasm entry points, wiring only: every callback goes to [`crate::root`] with a
//! `phi_guard_host::ProxyHost`.

use phi_guard_host::ProxyHost;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::root::{AuditHttp, AuditRoot};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root(AuditRoot::default())) });
}}

struct Root(AuditRoot);

impl Context for Root {
    fn on_done(&mut self) -> bool {
        self.0.on_done(&ProxyHost)
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        self.0.on_http_call_response(&ProxyHost, token, body_size);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.0.on_configure(&ProxyHost)
    }

    fn on_tick(&mut self) {
        self.0.on_tick(&ProxyHost);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        self.0.on_queue_ready(&ProxyHost, queue_id);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http(self.0.stream())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http(AuditHttp);

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.0.on_request_headers(&ProxyHost).into()
    }

    fn on_log(&mut self) {
        self.0.on_log(&ProxyHost);
    }
}
