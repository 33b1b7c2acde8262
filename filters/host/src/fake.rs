//! A recording fake host for unit tests of the filter shells.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use crate::{Host, LogLevel, SharedData, SharedDataError};
use phi_guard_common::{GrpcStatus, UnixSeconds};

/// A gRPC error a filter sent: the status and its extra headers.
pub type SentError = (GrpcStatus, Vec<(String, String)>);

#[derive(Debug, Default)]
pub struct FakeHost {
    pub request_headers: RefCell<Vec<(String, String)>>,
    pub response_headers: RefCell<Vec<(String, String)>>,
    /// Properties keyed by their path joined with '.'.
    pub properties: RefCell<BTreeMap<String, Vec<u8>>>,
    /// The gRPC error sent, with its extra headers, if any.
    pub sent: RefCell<Option<SentError>>,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
    pub counters: RefCell<Vec<(String, i64)>>,
    pub clock: Cell<UnixSeconds>,
    /// Shared data: key → (value, CAS token). Share one `FakeHost` (or this map's contents)
    /// between engines to model two Envoy workers.
    pub shared: RefCell<BTreeMap<String, (Vec<u8>, u32)>>,
    /// When set, the next this many CAS writes fail with `CasMismatch` (a concurrent writer).
    pub cas_conflicts: Cell<u32>,
    /// When set, every shared-data call fails.
    pub shared_data_broken: Cell<bool>,
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
    pub fn with_request_headers(headers: &[(&str, &str)]) -> Self {
        let host = FakeHost::default();
        *host.request_headers.borrow_mut() = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        host
    }

    pub fn set_clock(&self, now: UnixSeconds) {
        self.clock.set(now);
    }

    pub fn insert_property(&self, path: &[&str], value: &[u8]) {
        self.properties
            .borrow_mut()
            .insert(path.join("."), value.to_vec());
    }

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
        self.properties.borrow().get(&path.join(".")).cloned()
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
        self.clock.get()
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
    fn records_the_error_sent() {
        let host = FakeHost::default();
        host.send_grpc_error(GrpcStatus::PermissionDenied, &[]);
        assert_eq!(host.sent_status(), Some(GrpcStatus::PermissionDenied));
    }
}
