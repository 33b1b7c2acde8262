//! Helpers the audit integration tests share.

use phi_guard_audit::otlp::{records_from_body, Encoding};
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
            records_from_body(&call.body, call_encoding(call))
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

/// The encoding a call to the collector declared in its `content-type`.
pub fn call_encoding(call: &phi_guard_host::FakeCall) -> Encoding {
    call.header("content-type")
        .and_then(Encoding::from_content_type)
        .expect("an OTLP content-type")
}
