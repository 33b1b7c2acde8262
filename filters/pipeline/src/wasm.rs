//! proxy-wasm wiring only: the root context forwards to [`PipelineRoot`], each HTTP context
//! every callback to its [`Stream`], with a `phi_guard_host::ProxyHost`.

use phi_guard_host::ProxyHost;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::pipeline::Stream;
use crate::root::PipelineRoot;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root(PipelineRoot::default())) });
}}

struct Root(PipelineRoot);

impl Context for Root {
    fn on_done(&mut self) -> bool {
        self.0.on_done(&ProxyHost)
    }

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
        Some(Box::new(Http {
            stream: self.0.stream(),
        }))
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
