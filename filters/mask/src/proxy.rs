//! [`BodyHost`] over the proxy-wasm buffer and trailer host calls (wasm32 only), for the mask
//! module's entry points (`wasm.rs`) and the one-module pipeline (filters/pipeline).

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use crate::shell::BodyHost;

/// [`BodyHost`] over the proxy-wasm buffer and trailer host calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyBody;

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
