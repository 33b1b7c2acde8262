//! What the stages see of the host inside the pipeline: the real host, with the hand-off
//! between stages kept in memory.
//!
//! In the single-stage layout each filter writes its result to Envoy filter state and the next
//! filter reads it back through a host call and parses it (`phi_guard.identity` from jwt to
//! rbac, `phi_guard.authz` from rbac to mask and audit, ...), and each filter reads the request
//! headers and the clock through host calls of its own. [`Cached`] wraps the host for one
//! stream. It gives the stages the stream's typed slots ([`StateSlots`], one per contract):
//! `phi_guard_host::write_state` still writes the bytes to the host once (Envoy's access log
//! and any filter after the pipeline read them there) and keeps the value itself in its slot;
//! a later stage's `read_state` gets that value, with no host call and nothing parsed. A
//! contract no stage of this stream wrote is read from the host, so a phi-guard single-stage
//! module placed before the pipeline still hands its results over.
//!
//! Within one callback the request header map is read once (one `get_map`) and the clock once;
//! header writes go to the host and to the copy, so every stage sees what the host would show.
//! Both are dropped when the callback ends ([`StreamCache::end_callback`]): between callbacks
//! other Envoy filters may change the headers, and time moves. The slots last the stream.

use std::cell::RefCell;

use phi_guard_common::{GrpcStatus, StateSlots, UnixSeconds};
use phi_guard_host::{
    Clock, Host, LogLevel, Queues, SharedData, SharedDataError, Trailers, UnixMillis,
};

/// Everything a stage may ask of the host during a stream, as `filters/host`'s capability
/// traits: the base surface, shared data (jwt's replay cache, audit's flag), millisecond
/// time, response trailers and shared queues (audit). Body buffers come beside it, as a
/// `phi_guard_host::BodyHost`, to the callbacks that have a body.
pub trait StageHost: Host + SharedData + Clock + Trailers + Queues {}

impl<H: Host + SharedData + Clock + Trailers + Queues> StageHost for H {}

/// A stream's in-memory copies.
#[derive(Debug, Default)]
pub struct StreamCache {
    /// The request header map as the host has it, for the current callback.
    headers: Option<Vec<(String, String)>>,
    /// The host clock, for the current callback.
    now_ms: Option<UnixMillis>,
}

impl StreamCache {
    /// Drops what holds only for one callback.
    pub fn end_callback(&mut self) {
        self.headers = None;
        self.now_ms = None;
    }
}

/// The host for one callback of one stream.
pub struct Cached<'a, H> {
    pub inner: &'a H,
    pub cache: &'a RefCell<StreamCache>,
    /// The stream's contracts, as the stages wrote them.
    pub slots: &'a RefCell<StateSlots>,
}

impl<'a, H> Cached<'a, H> {
    pub fn new(
        inner: &'a H,
        cache: &'a RefCell<StreamCache>,
        slots: &'a RefCell<StateSlots>,
    ) -> Self {
        Cached {
            inner,
            cache,
            slots,
        }
    }
}

impl<H: StageHost> Cached<'_, H> {
    fn with_headers<T>(&self, f: impl FnOnce(&[(String, String)]) -> T) -> T {
        let mut cache = self.cache.borrow_mut();
        let headers = cache
            .headers
            .get_or_insert_with(|| self.inner.request_headers());
        f(headers)
    }

    fn clock_ms(&self) -> UnixMillis {
        let mut cache = self.cache.borrow_mut();
        *cache.now_ms.get_or_insert_with(|| self.inner.now_ms())
    }
}

impl<H: StageHost> Host for Cached<'_, H> {
    fn request_header(&self, name: &str) -> Option<String> {
        // Envoy's get_map_value answers the first value of a repeated header, as this does.
        self.with_headers(|headers| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        })
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        self.with_headers(<[(String, String)]>::to_vec)
    }

    fn set_request_header(&self, name: &str, value: &str) {
        self.inner.set_request_header(name, value);
        // Envoy replaces every value of the header with this one (`setCopy`).
        if let Some(headers) = self.cache.borrow_mut().headers.as_mut() {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }

    fn remove_request_header(&self, name: &str) {
        self.inner.remove_request_header(name);
        if let Some(headers) = self.cache.borrow_mut().headers.as_mut() {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        }
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.inner.response_header(name)
    }

    fn remove_response_header(&self, name: &str) {
        self.inner.remove_response_header(name)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.inner.property(path)
    }

    fn set_property(&self, path: &[&str], value: &[u8]) {
        self.inner.set_property(path, value)
    }

    fn send_grpc_error(&self, status: GrpcStatus, extra_headers: &[(&str, &str)]) {
        self.inner.send_grpc_error(status, extra_headers)
    }

    fn now(&self) -> UnixSeconds {
        self.clock_ms() / 1000
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, message)
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        self.inner.define_counter(name)
    }

    fn increment_counter(&self, id: u32, by: i64) {
        self.inner.increment_counter(id, by)
    }

    fn state_slots(&self) -> Option<&RefCell<StateSlots>> {
        Some(self.slots)
    }
}

impl<H: StageHost> SharedData for Cached<'_, H> {
    fn get_shared_data_cas(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, SharedDataError> {
        self.inner.get_shared_data_cas(key)
    }

    fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.shared_data(key)
    }

    fn set_shared_data_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        self.inner.set_shared_data_cas(key, value, cas)
    }
}

impl<H: StageHost> Clock for Cached<'_, H> {
    fn now_ms(&self) -> UnixMillis {
        self.clock_ms()
    }
}

impl<H: StageHost> Trailers for Cached<'_, H> {
    fn response_trailer(&self, name: &str) -> Option<String> {
        self.inner.response_trailer(name)
    }
}

impl<H: StageHost> Queues for Cached<'_, H> {
    fn register_queue(&self, name: &str) -> Option<u32> {
        self.inner.register_queue(name)
    }

    fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.inner.resolve_queue(vm_id, name)
    }

    fn enqueue(&self, queue_id: u32, bytes: &[u8]) -> bool {
        self.inner.enqueue(queue_id, bytes)
    }

    fn dequeue(&self, queue_id: u32) -> Option<Vec<u8>> {
        self.inner.dequeue(queue_id)
    }
}
