//! proxy-wasm wiring only: the root parses the config, each stream runs [`crate::run`] once
//! in its request headers and continues.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use phi_guard_host::{Host, LogLevel, PluginConfig, ProxyHost};

use crate::Config;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None, counter: None }) });
}}

struct Root {
    config: Option<Config>,
    counter: Option<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = ProxyHost.plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.config = Some(config);
                self.counter = ProxyHost.define_counter("phi_guard_hostcost.calls");
                true
            }
            Err(err) => {
                ProxyHost.log(LogLevel::Error, &format!("phi-guard hostcost: {err}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            config: self.config,
            counter: self.counter,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: Option<Config>,
    counter: Option<u32>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(config) = self.config {
            std::hint::black_box(crate::run(&ProxyHost, self.counter, config));
        }
        Action::Continue
    }
}
