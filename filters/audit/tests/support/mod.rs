//! Helpers the audit integration tests share.

use phi_guard_audit::otlp::records_from_request;
use phi_guard_audit::verify::Located;
use phi_guard_host::FakeHost;

/// Every OTLP log record the service sent to the collector, in call order, located
/// `call<N>#<i>` for the verifier's messages.
pub fn records(host: &FakeHost) -> Vec<Located> {
    host.calls
        .borrow()
        .iter()
        .enumerate()
        .flat_map(|(c, call)| {
            let doc: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
            records_from_request(&doc)
                .unwrap()
                .into_iter()
                .enumerate()
                .map(move |(i, record)| Located {
                    at: format!("call{c}#{i}"),
                    record,
                })
        })
        .collect()
}
