//! The proxy-wasm entry points: a root context that parses the policy and an HTTP context per
//! stream that runs the shell. Everything else lives in the host-independent modules.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use phi_guard_host::{Host, LogLevel, PluginConfig, ProxyHost};

use crate::shell::{deny_without_policy, Filter};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { filter: None }) });
}}

struct Root {
    /// Shared with the streams created under this configuration; a reconfiguration swaps it
    /// and streams already running keep the policy they started with.
    filter: Option<Rc<Filter>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Through ProxyHost, not the SDK's getter, which unwraps.
        let config = ProxyHost.plugin_configuration().unwrap_or_default();
        match Filter::configure(&ProxyHost, &config) {
            Ok(filter) => {
                self.filter = Some(Rc::new(filter));
                true
            }
            Err(err) => {
                // Names the field, never echoes the value (ConfigError's contract).
                ProxyHost.log(LogLevel::Error, &format!("phi-guard rbac: {err}"));
                self.filter = None;
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            filter: self.filter.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    filter: Option<Rc<Filter>>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let proceed = match &self.filter {
            Some(filter) => filter.on_request_headers(&ProxyHost),
            None => deny_without_policy(&ProxyHost),
        };
        if proceed {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}
