//! The recording fake host for unit tests of the filter shells: every host trait of this
//! crate, over plain memory, each call's effect visible in a public field.
//!
//! What Envoy shares between VMs (shared queues, and shared data, both scoped by `vm_id`)
//! lives on a [`Bus`]: fakes made with [`FakeHost::on_bus`] on one bus see each other's queues
//! and, with the same `vm_id`, each other's shared data, so a filter's fake and a service's
//! fake exercise the real hand-off natively. A `FakeHost::default()` has a bus of its own.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use crate::{
    BodyHost, Clock, Environment, Gauges, Host, HttpCalls, LogLevel, PluginConfig, Queues,
    SharedData, SharedDataError, Timers, Trailers, UnixMillis,
};
use phi_guard_common::{GrpcStatus, UnixSeconds};

/// A gRPC error a filter sent: the status and its extra headers.
pub type SentError = (GrpcStatus, Vec<(String, String)>);

/// Shared data of one `vm_id`: key → (value, CAS token).
pub type SharedMap = Rc<RefCell<BTreeMap<String, (Vec<u8>, u32)>>>;

/// What Envoy shares between VMs in one process.
#[derive(Debug, Default)]
pub struct BusState {
    /// (vm_id, name) → queue id.
    pub names: BTreeMap<(String, String), u32>,
    pub queues: BTreeMap<u32, VecDeque<Vec<u8>>>,
    /// vm_id → its shared data.
    pub shared: BTreeMap<String, SharedMap>,
}

impl BusState {
    /// The shared data of `vm_id` (made empty on first use).
    pub fn shared_of(&mut self, vm_id: &str) -> SharedMap {
        Rc::clone(self.shared.entry(vm_id.to_string()).or_default())
    }

    /// Writes shared data of `vm_id` as another VM would.
    pub fn set_shared(&mut self, vm_id: &str, key: &str, value: &[u8]) {
        let map = self.shared_of(vm_id);
        let mut map = map.borrow_mut();
        let next = map.values().map(|(_, c)| *c).max().unwrap_or(0) + 1;
        map.insert(key.to_string(), (value.to_vec(), next));
    }
}

pub type Bus = Rc<RefCell<BusState>>;

pub fn bus() -> Bus {
    Rc::default()
}

/// One `dispatch_http_call` a fake recorded.
#[derive(Debug, Clone)]
pub struct FakeCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    /// Empty for a call without a body.
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

impl FakeCall {
    /// The value of the call's header `name` (exact, lower-case as the shells send them).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
pub struct FakeHost {
    pub request_headers: RefCell<Vec<(String, String)>>,
    pub response_headers: RefCell<Vec<(String, String)>>,
    pub response_trailers: RefCell<Vec<(String, String)>>,
    /// The current request and response body chunks ([`BodyHost`]).
    pub request_body: RefCell<Vec<u8>>,
    pub response_body: RefCell<Vec<u8>>,
    /// Whether the response was reset.
    pub reset: Cell<bool>,
    /// Properties keyed by their path joined with '.'.
    pub properties: RefCell<BTreeMap<String, Vec<u8>>>,
    /// How often each property (its path joined with '.') and the request header map
    /// (`request_headers`) was read: what a caching host saves ([`FakeHost::reads_of`]).
    pub reads: RefCell<BTreeMap<String, usize>>,
    /// The gRPC error sent, with its extra headers, if any.
    pub sent: RefCell<Option<SentError>>,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
    /// Counters and gauges, in definition order (the index is the metric id).
    pub counters: RefCell<Vec<(String, i64)>>,
    /// The clock, in milliseconds ([`Host::now`] is this in whole seconds).
    pub now_ms: Cell<UnixMillis>,
    /// Shared data of this host's `vm_id`: key → (value, CAS token). Share one `FakeHost`
    /// (or this map's contents) between engines to model two Envoy workers.
    pub shared: SharedMap,
    /// When set, the next this many CAS writes fail with `CasMismatch` (a concurrent writer).
    pub cas_conflicts: Cell<u32>,
    /// When set, every shared-data call fails.
    pub shared_data_broken: Cell<bool>,
    /// Shared queues and other VMs' shared data.
    pub bus: Bus,
    pub vm_id: String,
    pub env: RefCell<BTreeMap<String, Vec<u8>>>,
    pub plugin_config: RefCell<Option<Vec<u8>>>,
    /// Every `dispatch_http_call`, in order.
    pub calls: RefCell<Vec<FakeCall>>,
    /// When set, `dispatch_http_call` fails as for an unknown cluster.
    pub refuse_calls: Cell<bool>,
    /// The answer `http_call_response` reads: `:status` and body.
    pub call_response: RefCell<(Option<String>, Vec<u8>)>,
    /// That answer's other headers (`http_call_response_header`), names lower-case.
    pub call_response_headers: RefCell<Vec<(String, String)>>,
    /// The tick period last set.
    pub tick_ms: Cell<Option<u64>>,
}

impl SharedData for FakeHost {
    fn get_shared_data_cas(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, SharedDataError> {
        if self.shared_data_broken.get() {
            return Err(SharedDataError::Failed);
        }
        Ok(self.shared.borrow().get(key).cloned())
    }

    fn set_shared_data_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        if self.shared_data_broken.get() {
            return Err(SharedDataError::Failed);
        }
        let mut map = self.shared.borrow_mut();
        // Envoy's CAS tokens come from one process-wide counter.
        let next = map.values().map(|(_, c)| *c).max().unwrap_or(0) + 1;
        match map.get_mut(key) {
            Some(entry) => {
                if let Some(cas) = cas.filter(|c| *c != 0) {
                    if self.cas_conflicts.get() > 0 {
                        self.cas_conflicts.set(self.cas_conflicts.get() - 1);
                        return Err(SharedDataError::CasMismatch);
                    }
                    if cas != entry.1 {
                        return Err(SharedDataError::CasMismatch);
                    }
                }
                *entry = (value.to_vec(), next);
            }
            None => {
                map.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        Ok(())
    }
}

impl FakeHost {
    /// A host of VM `vm_id` on `bus`.
    pub fn on_bus(bus: Bus, vm_id: &str) -> Self {
        let shared = bus.borrow_mut().shared_of(vm_id);
        FakeHost {
            bus,
            vm_id: vm_id.to_string(),
            shared,
            ..FakeHost::default()
        }
    }

    pub fn with_request_headers(headers: &[(&str, &str)]) -> Self {
        let host = FakeHost::default();
        *host.request_headers.borrow_mut() = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        host
    }

    /// Replaces the request headers (builder form).
    pub fn headers(self, headers: &[(&str, &str)]) -> Self {
        *self.request_headers.borrow_mut() = pairs(headers);
        self
    }

    pub fn set_response_headers(&self, headers: &[(&str, &str)]) {
        *self.response_headers.borrow_mut() = pairs(headers);
    }

    pub fn set_response_trailers(&self, trailers: &[(&str, &str)]) {
        *self.response_trailers.borrow_mut() = pairs(trailers);
    }

    /// Sets the clock in whole seconds.
    pub fn set_clock(&self, now: UnixSeconds) {
        self.now_ms.set(now.saturating_mul(1000));
    }

    pub fn set_env(&self, name: &str, value: &[u8]) {
        self.env
            .borrow_mut()
            .insert(name.to_string(), value.to_vec());
    }

    /// A counter's or gauge's value (0 when not defined).
    pub fn metric(&self, name: &str) -> i64 {
        self.counter(name)
    }

    /// Shared data of this host's `vm_id`.
    pub fn shared(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.borrow().get(key).map(|(v, _)| v.clone())
    }

    /// Items waiting on queue `queue_id`.
    pub fn queued(&self, queue_id: u32) -> usize {
        self.bus
            .borrow()
            .queues
            .get(&queue_id)
            .map_or(0, VecDeque::len)
    }

    pub fn last_call(&self) -> Option<FakeCall> {
        self.calls.borrow().last().cloned()
    }

    /// How often `what` (a property path joined with '.', or `request_headers`) was read.
    pub fn reads_of(&self, what: &str) -> usize {
        self.reads.borrow().get(what).copied().unwrap_or(0)
    }

    fn count_read(&self, what: &str) {
        *self.reads.borrow_mut().entry(what.to_string()).or_default() += 1;
    }

    pub fn insert_property(&self, path: &[&str], value: &[u8]) {
        self.properties
            .borrow_mut()
            .insert(path.join("."), value.to_vec());
    }

    /// A counter's value (0 when not defined).
    pub fn counter(&self, name: &str) -> i64 {
        self.counters
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }

    pub fn sent_status(&self) -> Option<GrpcStatus> {
        self.sent.borrow().as_ref().map(|(s, _)| *s)
    }

    /// Everything the filter logged, one line per entry, for canary scans.
    pub fn log_text(&self) -> String {
        self.logs
            .borrow()
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn lookup(map: &[(String, String)], name: &str) -> Option<String> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

impl Host for FakeHost {
    fn request_header(&self, name: &str) -> Option<String> {
        lookup(&self.request_headers.borrow(), name)
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        self.count_read("request_headers");
        self.request_headers.borrow().clone()
    }

    fn set_request_header(&self, name: &str, value: &str) {
        self.remove_request_header(name);
        self.request_headers
            .borrow_mut()
            .push((name.to_string(), value.to_string()));
    }

    fn remove_request_header(&self, name: &str) {
        self.request_headers
            .borrow_mut()
            .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    fn response_header(&self, name: &str) -> Option<String> {
        lookup(&self.response_headers.borrow(), name)
    }

    fn remove_response_header(&self, name: &str) {
        self.response_headers
            .borrow_mut()
            .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path.join(".");
        self.count_read(&key);
        self.properties.borrow().get(&key).cloned()
    }

    fn set_property(&self, path: &[&str], value: &[u8]) {
        self.insert_property(path, value);
    }

    fn send_grpc_error(&self, status: GrpcStatus, extra_headers: &[(&str, &str)]) {
        let headers = extra_headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        *self.sent.borrow_mut() = Some((status, headers));
    }

    fn now(&self) -> UnixSeconds {
        self.now_ms.get() / 1000
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        let mut counters = self.counters.borrow_mut();
        counters.push((name.to_string(), 0));
        Some(counters.len() as u32 - 1)
    }

    fn increment_counter(&self, id: u32, by: i64) {
        if let Some((_, v)) = self.counters.borrow_mut().get_mut(id as usize) {
            *v += by;
        }
    }
}

impl Clock for FakeHost {
    fn now_ms(&self) -> UnixMillis {
        self.now_ms.get()
    }
}

impl Trailers for FakeHost {
    fn response_trailer(&self, name: &str) -> Option<String> {
        lookup(&self.response_trailers.borrow(), name)
    }
}

impl BodyHost for FakeHost {
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        let body = self.request_body.borrow();
        body.get(start..start.checked_add(size)?)
            .map(<[u8]>::to_vec)
    }

    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        let body = self.response_body.borrow();
        body.get(start..start.checked_add(size)?)
            .map(<[u8]>::to_vec)
    }

    fn set_response_body(&self, start: usize, size: usize, value: &[u8]) {
        let mut body = self.response_body.borrow_mut();
        let end = start.saturating_add(size).min(body.len());
        if start <= end {
            body.splice(start..end, value.iter().copied());
        }
    }

    fn set_response_trailer(&self, name: &str, value: &str) {
        let mut t = self.response_trailers.borrow_mut();
        t.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        t.push((name.to_string(), value.to_string()));
    }

    fn reset_response(&self) {
        self.reset.set(true);
    }
}

impl Queues for FakeHost {
    fn register_queue(&self, name: &str) -> Option<u32> {
        let mut bus = self.bus.borrow_mut();
        let key = (self.vm_id.clone(), name.to_string());
        if let Some(id) = bus.names.get(&key) {
            return Some(*id);
        }
        let id = bus.names.len() as u32 + 1;
        bus.names.insert(key, id);
        bus.queues.insert(id, VecDeque::new());
        Some(id)
    }

    fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.bus
            .borrow()
            .names
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    fn enqueue(&self, queue_id: u32, bytes: &[u8]) -> bool {
        match self.bus.borrow_mut().queues.get_mut(&queue_id) {
            Some(q) => {
                q.push_back(bytes.to_vec());
                true
            }
            None => false,
        }
    }

    fn dequeue(&self, queue_id: u32) -> Option<Vec<u8>> {
        self.bus.borrow_mut().queues.get_mut(&queue_id)?.pop_front()
    }
}

impl HttpCalls for FakeHost {
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Option<u32> {
        if self.refuse_calls.get() {
            return None;
        }
        let mut calls = self.calls.borrow_mut();
        let token = calls.len() as u32 + 1;
        calls.push(FakeCall {
            token,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.map(<[u8]>::to_vec).unwrap_or_default(),
            timeout_ms,
        });
        Some(token)
    }

    fn http_call_response(&self, body_size: usize, limit: usize) -> (Option<String>, Vec<u8>) {
        let (status, body) = self.call_response.borrow().clone();
        let n = body_size.min(limit).min(body.len());
        (status, body[..n].to_vec())
    }

    fn http_call_response_header(&self, name: &str) -> Option<String> {
        self.call_response_headers
            .borrow()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

impl Timers for FakeHost {
    fn set_tick_period_ms(&self, ms: u64) {
        self.tick_ms.set(Some(ms));
    }
}

impl Gauges for FakeHost {
    fn define_gauge(&self, name: &str) -> Option<u32> {
        self.define_counter(name)
    }

    fn record_gauge(&self, id: u32, value: u64) {
        if let Some((_, v)) = self.counters.borrow_mut().get_mut(id as usize) {
            *v = i64::try_from(value).unwrap_or(i64::MAX);
        }
    }
}

impl Environment for FakeHost {
    fn env_var(&self, name: &str) -> Option<Vec<u8>> {
        self.env.borrow().get(name).cloned()
    }
}

impl PluginConfig for FakeHost {
    fn plugin_configuration(&self) -> Option<Vec<u8>> {
        self.plugin_config.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counter, HostExt};

    #[test]
    fn strips_only_reserved_headers() {
        let host = FakeHost::with_request_headers(&[
            (":path", "/health.v1.PatientService/GetPatient"),
            ("x-phi-guard-role", "billing"),
            ("X-Phi-Guard-Subject", "admin"),
            ("x-request-id", "abc"),
        ]);
        host.strip_reserved_headers();
        let names: Vec<String> = host.request_headers().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec![":path", "x-request-id"]);
        assert_eq!(
            host.grpc_method().unwrap().full_name(),
            "health.v1.PatientService/GetPatient"
        );
    }

    #[test]
    fn counters_count() {
        let host = FakeHost::default();
        let ok = Counter::define(&host, "phi_guard.jwt.verified");
        ok.inc(&host);
        ok.inc(&host);
        assert_eq!(host.counter("phi_guard.jwt.verified"), 2);
    }

    #[test]
    fn shared_data_compare_and_swap() {
        let host = FakeHost::default();
        assert_eq!(host.get_shared_data_cas("k"), Ok(None));
        host.set_shared_data_cas("k", b"a", None).unwrap();
        let (v, cas) = host.get_shared_data_cas("k").unwrap().unwrap();
        assert_eq!(v, b"a");
        host.set_shared_data_cas("k", b"b", Some(cas)).unwrap();
        assert_eq!(
            host.set_shared_data_cas("k", b"c", Some(cas)),
            Err(SharedDataError::CasMismatch)
        );
        assert_eq!(host.get_shared_data_cas("k").unwrap().unwrap().0, b"b");
    }

    #[test]
    fn client_headers_are_sanitized_in_place() {
        let host = FakeHost::with_request_headers(&[
            ("x-request-id", "078-05-1120"),
            ("x-other", "jane@example.org"),
            ("x-ok", "req-1"),
        ]);
        assert_eq!(
            host.sanitize_request_header("x-request-id").as_deref(),
            Some("***-**-****")
        );
        assert_eq!(
            host.request_header("x-request-id").as_deref(),
            Some("***-**-****")
        );
        assert_eq!(host.sanitize_request_header("x-other"), None);
        assert_eq!(host.request_header("x-other"), None);
        assert_eq!(
            host.sanitize_request_header("x-ok").as_deref(),
            Some("req-1")
        );
        assert_eq!(host.sanitize_request_header("absent"), None);
    }

    #[test]
    fn fakes_on_one_bus_share_queues_and_their_vm_s_shared_data() {
        let bus = bus();
        let service = FakeHost::on_bus(bus.clone(), "vm");
        let filter = FakeHost::on_bus(bus.clone(), "vm");
        let other = FakeHost::on_bus(bus.clone(), "other");
        let q = service.register_queue("events").unwrap();
        assert_eq!(service.register_queue("events"), Some(q));
        assert_eq!(filter.resolve_queue("vm", "events"), Some(q));
        assert_eq!(filter.resolve_queue("other", "events"), None);
        assert!(filter.enqueue(q, b"one"));
        assert!(!filter.enqueue(q + 1, b"two"));
        assert_eq!(service.queued(q), 1);
        assert_eq!(service.dequeue(q).as_deref(), Some(&b"one"[..]));
        assert_eq!(service.dequeue(q), None);
        assert!(service.set_shared_data("flag", b"0"));
        assert_eq!(filter.shared_data("flag").as_deref(), Some(&b"0"[..]));
        assert_eq!(other.shared_data("flag"), None, "scoped by vm_id");
    }

    #[test]
    fn callouts_ticks_gauges_env_and_bodies_are_recorded() {
        let host = FakeHost::default();
        host.refuse_calls.set(true);
        assert_eq!(host.dispatch_http_call("c", &[], None, 10), None);
        host.refuse_calls.set(false);
        let t = host
            .dispatch_http_call("c", &[(":path", "/x")], Some(b"body"), 10)
            .unwrap();
        assert_eq!(host.last_call().unwrap().token, t);
        assert_eq!(host.last_call().unwrap().body, b"body");
        host.get_document("jwks", "/keys", "idp", "application/json", 5)
            .unwrap();
        let call = host.last_call().unwrap();
        let names: Vec<&str> = call.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, [":method", ":path", ":authority", "accept"]);
        assert_eq!(call.headers[0].1, "GET");
        assert!(call.body.is_empty());
        *host.call_response.borrow_mut() = (Some("200".into()), b"0123456789".to_vec());
        assert_eq!(
            host.http_call_response(10, 4),
            (Some("200".into()), b"0123".to_vec())
        );
        host.set_tick_period_ms(100);
        assert_eq!(host.tick_ms.get(), Some(100));
        let g = host.define_gauge("backlog").unwrap();
        host.record_gauge(g, 7);
        assert_eq!(host.metric("backlog"), 7);
        host.set_env("K", b"v");
        assert_eq!(host.env_string("K").as_deref(), Some("v"));
        host.set_env("B", b"\xff");
        assert_eq!(host.env_string("B"), None);
        *host.response_body.borrow_mut() = b"abcdef".to_vec();
        assert_eq!(host.response_body(1, 2).as_deref(), Some(&b"bc"[..]));
        assert_eq!(host.response_body(5, 2), None);
        host.set_response_body(1, 2, b"XYZ");
        assert_eq!(*host.response_body.borrow(), b"aXYZdef");
        host.set_response_trailer("grpc-status", "13");
        assert_eq!(host.response_trailer("grpc-status").as_deref(), Some("13"));
        host.set_clock(5);
        assert_eq!((host.now(), host.now_ms()), (5, 5000));
    }

    #[test]
    fn records_the_error_sent() {
        let host = FakeHost::default();
        host.send_grpc_error(GrpcStatus::PermissionDenied, &[]);
        assert_eq!(host.sent_status(), Some(GrpcStatus::PermissionDenied));
    }
}
