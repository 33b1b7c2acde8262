//! Fakes for the audit host traits. A [`Bus`] plays Envoy's shared queues and shared data,
//! scoped by vm_id as Envoy scopes them, so a [`FakeAuditHost`] (filter) and a
//! [`FakeServiceHost`] (service) on the same bus exercise the real hand-off natively.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use phi_guard_common::{GrpcStatus, UnixSeconds};
use phi_guard_host::{FakeHost, Host, LogLevel};

use crate::hostx::{AuditHost, ServiceHost};
use crate::time::UnixMillis;

#[derive(Debug, Default)]
pub struct BusState {
    /// (vm_id, name) → queue id.
    pub names: BTreeMap<(String, String), u32>,
    pub queues: BTreeMap<u32, VecDeque<Vec<u8>>>,
    /// (vm_id, key) → value.
    pub shared: BTreeMap<(String, String), Vec<u8>>,
}

pub type Bus = Rc<RefCell<BusState>>;

pub fn bus() -> Bus {
    Rc::default()
}

/// The filter's host: a [`FakeHost`] plus trailers, a millisecond clock and the bus.
#[derive(Debug)]
pub struct FakeAuditHost {
    pub base: FakeHost,
    pub now_ms: Cell<UnixMillis>,
    pub response_trailers: RefCell<Vec<(String, String)>>,
    pub bus: Bus,
    pub vm_id: String,
}

impl FakeAuditHost {
    pub fn new(bus: Bus, vm_id: &str) -> Self {
        Self {
            base: FakeHost::default(),
            now_ms: Cell::new(0),
            response_trailers: RefCell::default(),
            bus,
            vm_id: vm_id.to_string(),
        }
    }

    pub fn with_request_headers(self, headers: &[(&str, &str)]) -> Self {
        *self.base.request_headers.borrow_mut() = pairs(headers);
        self
    }

    pub fn set_response_headers(&self, headers: &[(&str, &str)]) {
        *self.base.response_headers.borrow_mut() = pairs(headers);
    }

    pub fn set_response_trailers(&self, trailers: &[(&str, &str)]) {
        *self.response_trailers.borrow_mut() = pairs(trailers);
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Host for FakeAuditHost {
    fn request_header(&self, name: &str) -> Option<String> {
        self.base.request_header(name)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        self.base.request_headers()
    }
    fn set_request_header(&self, name: &str, value: &str) {
        self.base.set_request_header(name, value)
    }
    fn remove_request_header(&self, name: &str) {
        self.base.remove_request_header(name)
    }
    fn response_header(&self, name: &str) -> Option<String> {
        self.base.response_header(name)
    }
    fn remove_response_header(&self, name: &str) {
        self.base.remove_response_header(name)
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.base.property(path)
    }
    fn set_property(&self, path: &[&str], value: &[u8]) {
        self.base.set_property(path, value)
    }
    fn send_grpc_error(&self, status: GrpcStatus, extra_headers: &[(&str, &str)]) {
        self.base.send_grpc_error(status, extra_headers)
    }
    fn now(&self) -> UnixSeconds {
        self.now_ms.get() / 1000
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.base.log(level, message)
    }
    fn define_counter(&self, name: &str) -> Option<u32> {
        self.base.define_counter(name)
    }
    fn increment_counter(&self, id: u32, by: i64) {
        self.base.increment_counter(id, by)
    }
}

impl AuditHost for FakeAuditHost {
    fn now_ms(&self) -> UnixMillis {
        self.now_ms.get()
    }

    fn response_trailer(&self, name: &str) -> Option<String> {
        self.response_trailers
            .borrow()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
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

    fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        self.bus
            .borrow()
            .shared
            .get(&(self.vm_id.clone(), key.to_string()))
            .cloned()
    }
}

/// One `dispatch_http_call` the service made.
#[derive(Debug, Clone)]
pub struct FakeCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

/// The service's host.
#[derive(Debug)]
pub struct FakeServiceHost {
    pub bus: Bus,
    pub vm_id: String,
    pub now_ms: Cell<UnixMillis>,
    pub env: RefCell<BTreeMap<String, Vec<u8>>>,
    pub calls: RefCell<Vec<FakeCall>>,
    /// When set, `http_call` fails as for an unknown cluster.
    pub refuse_calls: Cell<bool>,
    pub tick_ms: Cell<Option<u64>>,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
    /// name → (is_gauge, value).
    pub metrics: RefCell<Vec<(String, bool, i64)>>,
    next_token: Cell<u32>,
}

impl FakeServiceHost {
    pub fn new(bus: Bus, vm_id: &str) -> Self {
        Self {
            bus,
            vm_id: vm_id.to_string(),
            now_ms: Cell::new(0),
            env: RefCell::default(),
            calls: RefCell::default(),
            refuse_calls: Cell::new(false),
            tick_ms: Cell::new(None),
            logs: RefCell::default(),
            metrics: RefCell::default(),
            next_token: Cell::new(1),
        }
    }

    pub fn set_env(&self, name: &str, value: &[u8]) {
        self.env
            .borrow_mut()
            .insert(name.to_string(), value.to_vec());
    }

    pub fn metric(&self, name: &str) -> i64 {
        self.metrics
            .borrow()
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
            .unwrap_or(0)
    }

    pub fn shared(&self, key: &str) -> Option<Vec<u8>> {
        self.bus
            .borrow()
            .shared
            .get(&(self.vm_id.clone(), key.to_string()))
            .cloned()
    }

    pub fn queued(&self, queue_id: u32) -> usize {
        self.bus
            .borrow()
            .queues
            .get(&queue_id)
            .map_or(0, VecDeque::len)
    }

    pub fn log_text(&self) -> String {
        self.logs
            .borrow()
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn last_call(&self) -> Option<FakeCall> {
        self.calls.borrow().last().cloned()
    }
}

impl ServiceHost for FakeServiceHost {
    fn now_ms(&self) -> UnixMillis {
        self.now_ms.get()
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn env_var(&self, name: &str) -> Option<Vec<u8>> {
        self.env.borrow().get(name).cloned()
    }

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

    fn dequeue(&self, queue_id: u32) -> Option<Vec<u8>> {
        self.bus.borrow_mut().queues.get_mut(&queue_id)?.pop_front()
    }

    fn set_shared_data(&self, key: &str, value: &[u8]) -> bool {
        self.bus
            .borrow_mut()
            .shared
            .insert((self.vm_id.clone(), key.to_string()), value.to_vec());
        true
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        if self.refuse_calls.get() {
            return None;
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.calls.borrow_mut().push(FakeCall {
            token,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
            timeout_ms,
        });
        Some(token)
    }

    fn set_tick_period_ms(&self, ms: u64) {
        self.tick_ms.set(Some(ms));
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        let mut m = self.metrics.borrow_mut();
        m.push((name.to_string(), false, 0));
        Some(m.len() as u32 - 1)
    }

    fn define_gauge(&self, name: &str) -> Option<u32> {
        let mut m = self.metrics.borrow_mut();
        m.push((name.to_string(), true, 0));
        Some(m.len() as u32 - 1)
    }

    fn increment_metric(&self, id: u32, by: i64) {
        if let Some((_, _, v)) = self.metrics.borrow_mut().get_mut(id as usize) {
            *v += by;
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        if let Some((_, _, v)) = self.metrics.borrow_mut().get_mut(id as usize) {
            *v = i64::try_from(value).unwrap_or(i64::MAX);
        }
    }
}
