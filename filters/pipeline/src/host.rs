//! What the stages see of the host inside the pipeline: the real host, with the hand-off
//! between stages kept in memory.
//!
//! In the single-stage layout each filter writes its result to Envoy filter state and the next
//! filter reads it back through a host call and parses it (`phi_guard.identity` from jwt to
//! rbac, `phi_guard.authz` from rbac to mask and audit, ...), and each filter reads the request
//! headers and the clock through host calls of its own. [`Cached`] wraps the host for one
//! stream. It gives the stages the stream's typed slots ([`StateSlots`], one per contract):
//! `phi_guard_host::write_state` writes the bytes to the host once if the pipeline publishes
//! the contract (its `filter_state`: what Envoy's access log and filters after the pipeline
//! read) and keeps the value itself in its slot;
//! a later stage's `read_state` gets that value, with no host call and nothing parsed. A
//! contract no stage of this stream wrote is read from the host, so a phi-guard single-stage
//! module placed before the pipeline still hands its results over.
//!
//! The request header map is read once per stream (one `get_map`, at the request headers) and
//! kept for the stream: header writes go to the host and to the copy, so every stage, audit's
//! `on_log` included, sees the request as the pipeline's stages left it (a filter placed after
//! the pipeline may still change the host's map; what phi-guard authorised and records is
//! this copy). The clock is read once per callback ([`StreamCache::end_callback`] drops it:
//! time moves). The slots last the stream.
//!
//! Connection attributes that cannot change during a connection (its TLS session's peer
//! certificate, SANs, digest, SNI, version: [`CONNECTION_FACTS`]) are kept per connection, in
//! the VM's [`ConnectionFacts`] keyed by Envoy's `connection.id` (unique within the process):
//! a stream reads `connection.id` once and its stages' reads of those attributes are answered
//! from there after the connection's first stream. Host calls that return data are the dear
//! ones in V8 (`phi-bench --hostcost`, docs/PERFORMANCE.md): each costs an allocation call
//! back into the module besides the call itself.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use phi_guard_common::state::Published;
use phi_guard_common::{GrpcMethod, GrpcStatus, StateSlots, UnixSeconds};
use phi_guard_host::{
    Clock, Header, Host, LogLevel, Queues, SharedData, SharedDataError, Trailers, UnixMillis,
};

/// Everything a stage may ask of the host during a stream, as `filters/host`'s capability
/// traits: the base surface, shared data (jwt's replay cache, audit's flag), millisecond
/// time, response trailers and shared queues (audit). Body buffers come beside it, as a
/// `phi_guard_host::BodyHost`, to the callbacks that have a body.
pub trait StageHost: Host + SharedData + Clock + Trailers + Queues {}

impl<H: Host + SharedData + Clock + Trailers + Queues> StageHost for H {}

/// The `connection.*` attributes fixed for a connection's life (Envoy's attributes over the
/// downstream TLS session), which [`ConnectionFacts`] keeps per connection.
pub const CONNECTION_FACTS: [&str; 8] = [
    "mtls",
    "peer_certificate",
    "uri_san_peer_certificate",
    "dns_san_peer_certificate",
    "subject_peer_certificate",
    "sha256_peer_certificate_digest",
    "requested_server_name",
    "tls_version",
];

/// Connections whose facts a VM keeps; the oldest is dropped first. A worker's VM sees only
/// its own connections, and a dropped one costs only its reads again.
pub const MAX_CONNECTIONS: usize = 512;

/// One connection's facts read so far: attribute → the host's answer.
type Facts = Vec<(&'static str, Option<Vec<u8>>)>;

/// One VM's [`CONNECTION_FACTS`] per connection: `connection.id` (its bytes as Envoy gives
/// them) → attribute → the host's answer (`None` cached too: no certificate stays none).
#[derive(Debug, Default)]
pub struct ConnectionFacts {
    by_connection: HashMap<Vec<u8>, Facts>,
    /// Insertion order, for dropping the oldest connection.
    order: VecDeque<Vec<u8>>,
}

impl ConnectionFacts {
    fn get(&self, connection: &[u8], attribute: &str) -> Option<&Option<Vec<u8>>> {
        self.by_connection
            .get(connection)?
            .iter()
            .find(|(a, _)| *a == attribute)
            .map(|(_, v)| v)
    }

    fn insert(&mut self, connection: &[u8], attribute: &'static str, value: Option<Vec<u8>>) {
        if !self.by_connection.contains_key(connection) {
            while self.order.len() >= MAX_CONNECTIONS {
                match self.order.pop_front() {
                    Some(oldest) => {
                        self.by_connection.remove(&oldest);
                    }
                    None => break,
                }
            }
            self.order.push_back(connection.to_vec());
        }
        self.by_connection
            .entry(connection.to_vec())
            .or_default()
            .push((attribute, value));
    }

    /// Connections kept (tests).
    pub fn len(&self) -> usize {
        self.by_connection.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_connection.is_empty()
    }
}

/// A stream's in-memory copies.
#[derive(Debug, Default)]
pub struct StreamCache {
    /// The request header map, read at the first stage's first look and kept for the stream.
    headers: Option<Vec<(String, String)>>,
    /// The host clock, for the current callback.
    now_ms: Option<UnixMillis>,
    /// `connection.id`, read once per stream (`Some(None)`: the host has none).
    connection: Option<Option<Vec<u8>>>,
    /// `:path` as a gRPC method, parsed at the first stage's look (`Some(None)`: not one);
    /// dropped when a stage rewrites `:path`.
    method: Option<Option<Rc<GrpcMethod>>>,
}

impl StreamCache {
    /// Drops what holds only for one callback: the clock.
    pub fn end_callback(&mut self) {
        self.now_ms = None;
    }

    /// A stage wrote request header `name`: what was derived from it goes (the method, from
    /// `:path`).
    fn header_written(&mut self, name: &str) {
        if name.eq_ignore_ascii_case(":path") {
            self.method = None;
        }
    }
}

/// The host for one callback of one stream.
pub struct Cached<'a, H> {
    pub inner: &'a H,
    pub cache: &'a RefCell<StreamCache>,
    /// The stream's contracts, as the stages wrote them.
    pub slots: &'a RefCell<StateSlots>,
    /// The VM's connection facts.
    pub connections: &'a RefCell<ConnectionFacts>,
    /// The contracts written to Envoy's filter state besides the slots (all unless
    /// [`Cached::publishing`] says otherwise).
    pub published: Published,
}

impl<'a, H> Cached<'a, H> {
    pub fn new(
        inner: &'a H,
        cache: &'a RefCell<StreamCache>,
        slots: &'a RefCell<StateSlots>,
        connections: &'a RefCell<ConnectionFacts>,
    ) -> Self {
        Cached {
            inner,
            cache,
            slots,
            connections,
            published: Published::ALL,
        }
    }

    /// Writes only the contracts in `published` to Envoy's filter state (the pipeline's
    /// `filter_state` setting); the slots still get every one.
    pub fn publishing(self, published: Published) -> Self {
        Cached { published, ..self }
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

    /// A [`CONNECTION_FACTS`] attribute, from the connection's facts when this VM has read it
    /// on the connection before. Without a `connection.id` every read goes to the host.
    fn connection_fact(&self, attribute: &'static str) -> Option<Vec<u8>> {
        let path = ["connection", attribute];
        let id = self
            .cache
            .borrow_mut()
            .connection
            .get_or_insert_with(|| self.inner.property(&["connection", "id"]))
            .clone();
        let Some(id) = id else {
            return self.inner.property(&path);
        };
        if let Some(value) = self.connections.borrow().get(&id, attribute) {
            return value.clone();
        }
        let value = self.inner.property(&path);
        self.connections
            .borrow_mut()
            .insert(&id, attribute, value.clone());
        value
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

    fn grpc_method(&self) -> Option<Rc<GrpcMethod>> {
        if let Some(method) = &self.cache.borrow().method {
            return method.clone();
        }
        let method = self
            .request_header(":path")
            .and_then(|p| GrpcMethod::from_path(&p))
            .map(Rc::new);
        self.cache.borrow_mut().method = Some(method.clone());
        method
    }

    fn with_request_headers(&self, f: &mut dyn FnMut(&[Header])) {
        self.with_headers(|headers| f(headers))
    }

    fn set_request_header(&self, name: &str, value: &str) {
        self.inner.set_request_header(name, value);
        let mut cache = self.cache.borrow_mut();
        cache.header_written(name);
        // Envoy replaces every value of the header with this one (`setCopy`).
        if let Some(headers) = cache.headers.as_mut() {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }

    fn remove_request_header(&self, name: &str) {
        self.inner.remove_request_header(name);
        let mut cache = self.cache.borrow_mut();
        cache.header_written(name);
        if let Some(headers) = cache.headers.as_mut() {
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
        if let ["connection", attribute] = path {
            if let Some(fact) = CONNECTION_FACTS.iter().find(|f| *f == attribute) {
                return self.connection_fact(fact);
            }
        }
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

    fn publishes_state(&self, key: &str) -> bool {
        self.published.contains(key)
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

#[cfg(test)]
mod tests {
    use super::*;
    use phi_guard_host::FakeHost;

    /// A FakeHost on connection `id` (its reads are counted: `FakeHost::reads_of`).
    fn on_connection(id: u64) -> FakeHost {
        let host = FakeHost::with_request_headers(&[
            (":path", "/health.v1.PatientService/GetPatient"),
            ("x-request-id", "req-1"),
        ]);
        host.insert_property(&["connection", "id"], &id.to_le_bytes());
        host.insert_property(&["connection", "mtls"], &[1]);
        host.insert_property(&["connection", "peer_certificate"], b"PEM-A");
        host.insert_property(&["connection", "termination_details"], b"t1");
        host
    }

    /// One stream's reads of `path` through a fresh stream cache over `facts`.
    fn stream_reads(
        host: &FakeHost,
        facts: &RefCell<ConnectionFacts>,
        path: &[&str],
    ) -> Option<Vec<u8>> {
        let (cache, slots) = (RefCell::default(), RefCell::default());
        let cached = Cached::new(host, &cache, &slots, facts);
        let first = cached.property(path);
        assert_eq!(cached.property(path), first, "the same answer twice");
        first
    }

    #[test]
    fn connection_facts_are_read_once_per_connection() {
        let facts = RefCell::default();
        let host = on_connection(7);
        for _ in 0..3 {
            assert_eq!(
                stream_reads(&host, &facts, &["connection", "peer_certificate"]).as_deref(),
                Some(&b"PEM-A"[..])
            );
        }
        // Three streams: connection.id once each, the certificate once in all.
        assert_eq!(host.reads_of("connection.id"), 3);
        assert_eq!(host.reads_of("connection.peer_certificate"), 1);
        // An absent fact is kept as absent.
        for _ in 0..2 {
            assert_eq!(
                stream_reads(&host, &facts, &["connection", "uri_san_peer_certificate"]),
                None
            );
        }
        assert_eq!(host.reads_of("connection.uri_san_peer_certificate"), 1);
    }

    #[test]
    fn another_connection_reads_its_own_facts() {
        let facts = RefCell::default();
        let a = on_connection(7);
        stream_reads(&a, &facts, &["connection", "peer_certificate"]);
        let b = on_connection(8);
        b.insert_property(&["connection", "peer_certificate"], b"PEM-B");
        assert_eq!(
            stream_reads(&b, &facts, &["connection", "peer_certificate"]).as_deref(),
            Some(&b"PEM-B"[..])
        );
        assert_eq!(b.reads_of("connection.peer_certificate"), 1);
        assert_eq!(facts.borrow().len(), 2);
    }

    #[test]
    fn other_attributes_and_hosts_without_a_connection_id_always_read() {
        let facts = RefCell::default();
        let host = on_connection(7);
        for _ in 0..2 {
            stream_reads(&host, &facts, &["connection", "termination_details"]);
            stream_reads(&host, &facts, &["request", "duration"]);
        }
        assert_eq!(host.reads_of("connection.termination_details"), 4);
        assert_eq!(host.reads_of("request.duration"), 4);

        let anonymous = on_connection(7);
        anonymous.properties.borrow_mut().remove("connection.id");
        stream_reads(&anonymous, &facts, &["connection", "peer_certificate"]);
        assert_eq!(anonymous.reads_of("connection.peer_certificate"), 2);
        assert!(facts.borrow().is_empty());
    }

    #[test]
    fn the_oldest_connection_is_dropped_past_the_bound() {
        let facts = RefCell::default();
        for id in 0..(MAX_CONNECTIONS as u64 + 3) {
            stream_reads(&on_connection(id), &facts, &["connection", "mtls"]);
        }
        assert_eq!(facts.borrow().len(), MAX_CONNECTIONS);
        // Connection 0 was dropped: read again; the newest is still kept.
        let first = on_connection(0);
        stream_reads(&first, &facts, &["connection", "mtls"]);
        assert_eq!(first.reads_of("connection.mtls"), 1);
        let newest = on_connection(MAX_CONNECTIONS as u64 + 2);
        stream_reads(&newest, &facts, &["connection", "mtls"]);
        assert_eq!(newest.reads_of("connection.mtls"), 0);
    }

    #[test]
    fn the_request_headers_are_read_once_per_stream_and_follow_writes() {
        let facts = RefCell::default();
        let host = on_connection(7);
        let (cache, slots) = (RefCell::new(StreamCache::default()), RefCell::default());
        {
            let cached = Cached::new(&host, &cache, &slots, &facts);
            assert_eq!(
                cached.request_header("x-request-id").as_deref(),
                Some("req-1")
            );
            cached.set_request_header("x-request-id", "req-2");
            cached.remove_request_header(":path");
        }
        cache.borrow_mut().end_callback();
        // A later callback (audit's on_log) sees the request as the stages left it.
        let cached = Cached::new(&host, &cache, &slots, &facts);
        assert_eq!(
            cached.request_header("x-request-id").as_deref(),
            Some("req-2")
        );
        assert_eq!(cached.request_header(":path"), None);
        assert_eq!(host.reads_of("request_headers"), 1);
        // And the host got the same writes.
        assert_eq!(
            host.request_header("x-request-id").as_deref(),
            Some("req-2")
        );
    }

    #[test]
    fn the_method_is_parsed_once_per_stream_and_follows_path_writes() {
        let facts = RefCell::default();
        let host = on_connection(7);
        let (cache, slots) = (RefCell::new(StreamCache::default()), RefCell::default());
        let cached = Cached::new(&host, &cache, &slots, &facts);
        let first = cached.grpc_method().expect("a gRPC method");
        assert_eq!(first.full_name(), "health.v1.PatientService/GetPatient");
        let again = cached.grpc_method().expect("the same");
        assert!(Rc::ptr_eq(&first, &again), "parsed once, then lent");
        cached.set_request_header(":path", "/health.v1.PatientService/DeletePatient");
        assert_eq!(
            cached.grpc_method().map(|m| m.full_name()).as_deref(),
            Some("health.v1.PatientService/DeletePatient")
        );
        cached.set_request_header(":path", "/not/a/method");
        assert_eq!(cached.grpc_method(), None);
        cached.remove_request_header(":path");
        assert_eq!(cached.grpc_method(), None);
    }
}
